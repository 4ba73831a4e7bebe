//! WatchCustomerEvents: one stream of an app's change events. It catches up
//! from the database, then follows the app's feed (see `feed`), and goes
//! back to the database whenever what the feed hands it does not follow
//! what it sent: positions are gapless per app, so a gap is always seen.

use std::sync::{Arc, atomic::Ordering};

use tokio::{sync::broadcast, time::Instant};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::{
    CustomerApi,
    feed::Batch,
    stream::{OpenStream, ResponseStream, Stopped, StreamSender},
};
use crate::{
    context::RequestContext,
    domain::{AppId, Event, EventFilter, ResumeToken, WatchEvents, WatchStart},
    error::Error,
    pb,
    storage::{
        Pool,
        events::{self as store, Head},
    },
};

/// WatchCustomerEvents' response stream.
pub type EventStream = ResponseStream<pb::WatchCustomerEventsResponse>;

/// Opens a watch for `ctx`'s app (unless the app is at its limit): finds
/// where it starts (errors here are the call's status), then spawns its
/// reader and returns the response side.
pub(super) async fn start(
    api: &CustomerApi,
    ctx: RequestContext,
    command: WatchEvents,
) -> Result<EventStream, Status> {
    let max = api.events.options().max_watches_per_app;
    let open = OpenStream::open(&api.watch_stats, &api.watches_per_app, max, ctx.app)
        .ok_or(Error::TooManyWatches)?;
    // Subscribed before the start is read: nothing committed after that
    // read can be missed.
    let rx = api.events.subscribe(ctx.app);
    let pool = api.pool.clone();
    let start = command.start;
    let position =
        super::read_to_end(async move |cancel| start_position(&pool, &ctx, start, &cancel).await)
            .await?;
    let (sender, stream) = super::stream::channel(api, &api.watch_stats, ctx.deadline);
    let watch = Watch {
        api: api.clone(),
        ctx,
        filter: command.filter,
        position,
        sender,
        quiet_until: Instant::now(),
    };
    tokio::spawn(tracing::Instrument::instrument(
        watch.run(rx, open),
        tracing::Span::current(),
    ));
    Ok(stream)
}

/// The position a watch starts after.
async fn start_position(
    pool: &Pool,
    ctx: &RequestContext,
    start: WatchStart,
    cancel: &CancellationToken,
) -> Result<u64, Error> {
    match start {
        // Every change committed so far is before the start.
        WatchStart::Now => store::sequence(pool, ctx).await,
        WatchStart::After(token) => {
            if token.app != ctx.app {
                return Err(Error::invalid(
                    "resume_token",
                    "belongs to another app's events",
                ));
            }
            let head = store::head(pool, ctx, cancel).await?;
            if token.position > head.position {
                return Err(Error::invalid(
                    "resume_token",
                    "is ahead of this app's events",
                ));
            }
            if token.position < head.pruned_through {
                return Err(expired(ctx.app, head));
            }
            Ok(token.position)
        }
        WatchStart::At(time) => {
            let (position, head) = store::position_at(pool, ctx, time, cancel).await?;
            if head.pruned_time.is_some_and(|pruned| time <= pruned) {
                return Err(expired(ctx.app, head));
            }
            Ok(position)
        }
    }
}

/// OUT_OF_RANGE, naming the oldest position still available.
fn expired(app: AppId, head: Head) -> Error {
    Error::ResumeTokenExpired {
        oldest: ResumeToken {
            app,
            position: head.pruned_through,
        }
        .encode(),
    }
}

struct Watch {
    api: CustomerApi,
    ctx: RequestContext,
    filter: EventFilter,
    /// Every event at or before this position was sent or filtered out.
    position: u64,
    sender: StreamSender<pb::WatchCustomerEventsResponse>,
    /// When the next bookmark is due if nothing else is sent.
    quiet_until: Instant,
}

impl Watch {
    fn token(&self, position: u64) -> String {
        ResumeToken {
            app: self.ctx.app,
            position,
        }
        .encode()
    }

    /// Sends an event, or a bookmark of the current position.
    async fn send(&mut self, event: Option<Event>) -> Result<(), Stopped> {
        let position = event.as_ref().map_or(self.position, |e| e.position);
        let message = pb::WatchCustomerEventsResponse {
            event: event.map(Into::into),
            resume_token: self.token(position),
        };
        self.sender.send(message).await?;
        self.api
            .events
            .stats()
            .messages
            .fetch_add(1, Ordering::Relaxed);
        self.position = position;
        self.quiet_until = Instant::now() + self.api.events.options().bookmark_interval;
        Ok(())
    }

    async fn run(mut self, mut rx: broadcast::Receiver<Arc<Batch>>, _open: OpenStream) {
        let (cancel, _end) = self.sender.gone(&self.api.shutdown);
        if let Err(why) = self.follow(&mut rx, &cancel).await {
            match why {
                Ended::Stopped(Stopped::Gone) => {}
                Ended::Stopped(Stopped::Stalled) => {
                    tracing::info!(
                        "WatchCustomerEvents client read nothing for too long; ending it"
                    );
                }
                Ended::Failed(_) if cancel.is_cancelled() => {}
                Ended::Failed(e) => self.sender.fail(e).await,
            }
        }
    }

    /// The first bookmark, then, forever: catch up from the database, then
    /// follow the feed until it no longer follows on.
    async fn follow(
        &mut self,
        rx: &mut broadcast::Receiver<Arc<Batch>>,
        cancel: &CancellationToken,
    ) -> Result<(), Ended> {
        self.send(None).await?;
        loop {
            self.catch_up(cancel).await?;
            loop {
                tokio::select! {
                    received = rx.recv() => match received {
                        Ok(batch) => {
                            if batch.after > self.position {
                                break; // a gap: back to the database
                            }
                            for event in &batch.events {
                                if event.position > self.position && self.filter.matches(event) {
                                    self.send(Some(event.clone())).await?;
                                }
                            }
                            self.position = self.position.max(batch.through);
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => {
                            *rx = self.api.events.subscribe(self.ctx.app);
                            break;
                        }
                    },
                    _ = tokio::time::sleep_until(self.quiet_until) => self.send(None).await?,
                    _ = cancel.cancelled() => return Err(Ended::Stopped(Stopped::Gone)),
                }
            }
        }
    }

    /// Reads and sends the events after the current position until the
    /// database has no more.
    async fn catch_up(&mut self, cancel: &CancellationToken) -> Result<(), Ended> {
        let batch = self.api.stream.batch_size.max(1);
        loop {
            let stats = self.api.events.stats();
            stats.watch_reads.fetch_add(1, Ordering::Relaxed);
            let page = store::read_page(
                &self.api.pool,
                &self.ctx,
                self.position,
                &self.filter,
                batch,
                cancel,
            )
            .await?;
            if self.position < page.head.pruned_through {
                return Err(Ended::Failed(expired(self.ctx.app, page.head)));
            }
            let full = page.events.len() >= batch;
            for event in page.events {
                self.send(Some(event)).await?;
            }
            self.position = self.position.max(page.through);
            if !full {
                return Ok(());
            }
        }
    }
}

/// Why a watch ended.
enum Ended {
    Stopped(Stopped),
    Failed(Error),
}

impl From<Stopped> for Ended {
    fn from(s: Stopped) -> Self {
        Ended::Stopped(s)
    }
}

impl From<Error> for Ended {
    fn from(e: Error) -> Self {
        Ended::Failed(e)
    }
}
