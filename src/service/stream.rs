//! ListCustomers' server stream: keyset batches read into a buffer bounded
//! in messages and bytes, per-app stream limits, and the ways a stream ends
//! early (client gone, shutdown, deadline, a client that stopped reading).

use std::{
    collections::HashMap,
    future::Future,
    num::NonZeroU32,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use futures_util::Stream;
use prost::Message;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::CustomerApi;
use crate::{
    context::RequestContext,
    domain::{AppId, FromCustomerRef, ListFilter},
    error::Error,
    pb,
    storage::customers::{self as store, Position},
    wire::listing::EncodedCustomer,
};

/// How ListCustomers reads.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Most rows per keyset query; also the depth of the channel to the
    /// client.
    pub batch_size: usize,
    /// Streams one app may have open at once in this process.
    pub max_per_app: Option<NonZeroU32>,
    /// Most bytes of encoded customers one stream holds for its client. A
    /// batch asks for no more rows than fit, at the size of an earlier
    /// batch's rows, so a stream that is not read holds about three times
    /// this at most (the buffer, the batch being sent, the batch read
    /// ahead).
    pub buffer_bytes: usize,
    /// A stream whose client takes nothing from its full buffer for this
    /// long is ended (UNAVAILABLE / STREAM_STALLED, resumable), freeing its
    /// slot of the app's stream limit.
    pub stall_timeout: Duration,
}

impl StreamOptions {
    /// Rows per keyset query unless configured. Each query costs PostgreSQL
    /// a plan and the transaction's statements: at 2,000 rows a listing of a
    /// million customers spent a fifth less of PostgreSQL's CPU than at 500
    /// (README, Performance). The byte budget still bounds a batch.
    pub const DEFAULT_BATCH_SIZE: u32 = 2000;
    /// The byte budget of a stream unless configured.
    pub const DEFAULT_BUFFER_BYTES: u32 = 1 << 20;
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            batch_size: Self::DEFAULT_BATCH_SIZE as usize,
            max_per_app: NonZeroU32::new(16),
            buffer_bytes: Self::DEFAULT_BUFFER_BYTES as usize,
            stall_timeout: Duration::from_secs(60),
        }
    }
}

/// Rows of a stream's first batch, before the size of its rows is known.
const FIRST_BATCH_ROWS: usize = 16;

/// Counters of ListCustomers streams in this process.
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Streams whose reader task is running.
    pub open: AtomicU64,
    /// Keyset batches read, over all streams.
    pub batches: AtomicU64,
    /// Customers handed to the transport, over all streams (not those still
    /// buffered).
    pub messages: AtomicU64,
    /// Bytes of encoded customers waiting in stream buffers.
    pub buffered_bytes: AtomicU64,
}

/// Open streams per app, to hold each app to its limit.
pub(super) type StreamsPerApp = Arc<Mutex<HashMap<AppId, u32>>>;

/// A stream counted as open (overall and for its app) while it lives.
pub(super) struct OpenStream {
    stats: Arc<StreamStats>,
    per_app: StreamsPerApp,
    app: AppId,
}

impl OpenStream {
    /// Counts a new stream of `app` in `per_app` and `stats`, unless the app
    /// has `max` open.
    pub(super) fn open(
        stats: &Arc<StreamStats>,
        per_app: &StreamsPerApp,
        max: Option<NonZeroU32>,
        app: AppId,
    ) -> Option<Self> {
        let mut counts = per_app.lock().unwrap_or_else(|e| e.into_inner());
        let open = counts.entry(app).or_default();
        if max.is_some_and(|max| *open >= max.get()) {
            return None;
        }
        *open += 1;
        stats.open.fetch_add(1, Ordering::Relaxed);
        Some(Self {
            stats: stats.clone(),
            per_app: per_app.clone(),
            app,
        })
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
        let mut per_app = self.per_app.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(open) = per_app.get_mut(&self.app) {
            *open -= 1;
            if *open == 0 {
                per_app.remove(&self.app);
            }
        }
    }
}

/// Opens a ListCustomers stream for `ctx`'s app (unless the app is at its
/// limit), starting after `start`: spawns its reader and returns the
/// response side.
pub(super) fn start(
    api: &CustomerApi,
    ctx: RequestContext,
    filter: ListFilter,
    start: Option<Position>,
) -> Result<CustomerStream, Error> {
    let open = OpenStream::open(&api.stats, &api.per_app, api.stream.max_per_app, ctx.app)
        .ok_or(Error::TooManyStreams)?;
    let (sender, stream) = channel(api, &api.stats, ctx.deadline);
    let reader = stream_customers(api.clone(), ctx, filter, start, sender, open);
    // In the call's span: its batches' spans are the call's children.
    tokio::spawn(tracing::Instrument::instrument(
        reader,
        tracing::Span::current(),
    ));
    Ok(stream)
}

/// The two ends of a server stream's buffer, bounded in messages (the batch
/// size) and in bytes (the buffer size).
pub(super) fn channel<M>(
    api: &CustomerApi,
    stats: &Arc<StreamStats>,
    deadline: Option<Instant>,
) -> (StreamSender<M>, ResponseStream<M>) {
    let (tx, rx) = mpsc::channel(api.stream.batch_size.max(1));
    let stalled = CancellationToken::new();
    let budget_bytes = api.stream.buffer_bytes.max(1);
    let sender = StreamSender {
        tx,
        stalled: stalled.clone(),
        budget: Arc::new(Semaphore::new(budget_bytes)),
        budget_bytes,
        stats: stats.clone(),
        stall_timeout: api.stream.stall_timeout,
    };
    let stream = ResponseStream {
        rx,
        stop: Box::pin(stream_stop(api.shutdown.clone(), deadline, stalled)),
        stats: stats.clone(),
        done: false,
    };
    (sender, stream)
}

/// A message waiting in a stream's buffer. It holds its bytes of the
/// stream's budget until the client side takes it (or drops it).
struct Queued<M> {
    item: Option<Result<M, Status>>,
    _permit: Option<OwnedSemaphorePermit>,
    bytes: u64,
    stats: Arc<StreamStats>,
}

impl<M> Drop for Queued<M> {
    fn drop(&mut self) {
        self.stats
            .buffered_bytes
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Why a stream's reader stopped sending.
pub(super) enum Stopped {
    /// The client side is gone (the client went away, or the stream was cut
    /// by shutdown or deadline).
    Gone,
    /// The client took nothing for `stall_timeout`.
    Stalled,
}

/// The reader's side of a stream: a channel bounded in messages and, through
/// `budget`, in bytes.
pub(super) struct StreamSender<M> {
    tx: mpsc::Sender<Queued<M>>,
    stalled: CancellationToken,
    budget: Arc<Semaphore>,
    /// The budget's size.
    budget_bytes: usize,
    stats: Arc<StreamStats>,
    stall_timeout: Duration,
}

impl<M: Message + Send + 'static> StreamSender<M> {
    /// Queues a message once its bytes fit in the budget (a message larger
    /// than the whole budget waits for an empty buffer). A client that takes
    /// nothing for the stall timeout is given up on: the stream ends with
    /// STREAM_STALLED.
    pub(super) async fn send(&self, message: M) -> Result<(), Stopped> {
        let bytes = message.encoded_len();
        self.send_sized(message, bytes).await
    }

    /// [`send`](Self::send) of a message whose encoded length is known.
    pub(super) async fn send_sized(&self, message: M, bytes: usize) -> Result<(), Stopped> {
        let (stats, stall_timeout) = (&self.stats, self.stall_timeout);
        let permits = bytes.clamp(1, self.budget_bytes).min(u32::MAX as usize) as u32;
        let queue = async {
            let permit = self
                .budget
                .clone()
                .acquire_many_owned(permits)
                .await
                .map_err(|_| Stopped::Gone)?;
            let slot = self.tx.reserve().await.map_err(|_| Stopped::Gone)?;
            Ok::<_, Stopped>((slot, permit))
        };
        let (slot, permit) = match tokio::time::timeout(stall_timeout, queue).await {
            Ok(result) => result?,
            Err(_) => {
                self.stalled.cancel();
                return Err(Stopped::Stalled);
            }
        };
        stats
            .buffered_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        slot.send(Queued {
            item: Some(Ok(message)),
            _permit: Some(permit),
            bytes: bytes as u64,
            stats: stats.clone(),
        });
        Ok(())
    }

    /// Ends the stream with `error`, unless the client side is gone; a
    /// client that takes nothing for the stall timeout gets STREAM_STALLED
    /// instead.
    pub(super) async fn fail(&self, error: Error) {
        let send = self.tx.send(Queued {
            item: Some(Err(error.into())),
            _permit: None,
            bytes: 0,
            stats: self.stats.clone(),
        });
        if tokio::time::timeout(self.stall_timeout, send)
            .await
            .is_err()
        {
            self.stalled.cancel();
        }
    }

    /// A token that fires when the client side goes away or `shutdown`
    /// fires, and when the returned guard drops (the reader returned).
    pub(super) fn gone(
        &self,
        shutdown: &CancellationToken,
    ) -> (CancellationToken, tokio_util::sync::DropGuard) {
        let cancel = CancellationToken::new();
        let guard = cancel.clone().drop_guard();
        let (cancel2, tx, shutdown) = (cancel.clone(), self.tx.clone(), shutdown.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = tx.closed() => {}
                _ = shutdown.cancelled() => {}
                _ = cancel2.cancelled() => {}
            }
            cancel2.cancel();
        });
        (cancel, guard)
    }
}

/// The response side of a server stream: what the reader task sends, until
/// the server shuts down, the deadline passes or the reader gives up on a
/// client that stopped reading. Then it ends at once with that error
/// (UNAVAILABLE / SHUTTING_DOWN or STREAM_STALLED, or DEADLINE_EXCEEDED), so
/// that the client knows the stream is cut and can resume; merely closing
/// the channel would end the call with OK and make a cut listing look
/// complete.
pub struct ResponseStream<M> {
    rx: mpsc::Receiver<Queued<M>>,
    stop: Pin<Box<dyn Future<Output = Error> + Send>>,
    stats: Arc<StreamStats>,
    done: bool,
}

/// Resolves to the error that cuts a stream short.
async fn stream_stop(
    shutdown: CancellationToken,
    deadline: Option<Instant>,
    stalled: CancellationToken,
) -> Error {
    let expired = async {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => Error::ShuttingDown,
        _ = stalled.cancelled() => Error::StreamStalled,
        _ = expired => Error::DeadlineExceeded,
    }
}

/// ListCustomers' response stream.
pub type CustomerStream = ResponseStream<pb::ListCustomersResponse>;

impl<M> Stream for ResponseStream<M> {
    type Item = Result<M, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(error) = self.stop.as_mut().poll(cx) {
            self.done = true;
            return Poll::Ready(Some(Err(error.into())));
        }
        let Some(mut queued) = ready!(self.rx.poll_recv(cx)) else {
            self.done = true;
            return Poll::Ready(None);
        };
        let item = queued.item.take();
        if matches!(item, Some(Ok(_))) {
            self.stats.messages.fetch_add(1, Ordering::Relaxed);
        }
        Poll::Ready(item)
    }
}

/// Feeds a ListCustomers stream: one keyset query per batch. While a batch
/// is sent through the bounded buffer, the next one is read (so the
/// database and the encoding work at once), and no further one until the
/// batch is sent: memory stays at about three buffers' worth, and a slow
/// client slows the reads down. Stops as soon as the receiving side is gone
/// (the client went away, or the stream was cut by shutdown or deadline),
/// cancelling a query in flight, or when the client has taken nothing for
/// `stall_timeout`.
async fn stream_customers(
    api: CustomerApi,
    ctx: RequestContext,
    filter: ListFilter,
    after: Option<Position>,
    sender: StreamSender<pb::ListCustomersResponse>,
    _open: OpenStream,
) {
    // Fires when the client side goes away or the server stops, and when
    // this function returns (which ends the watcher).
    let (cancel, _end) = sender.gone(&api.shutdown);
    // A batch is read in a task of its own, so that decoding the next
    // batch and encoding this one can run on two cores. Each read is
    // awaited; were this future dropped during one, `cancel` fires (`_end`)
    // and the read ends by itself.
    let filter = Arc::new(filter);
    let read = |after: Option<Position>, want: u64| {
        let (api, filter, cancel) = (api.clone(), filter.clone(), cancel.clone());
        let read = tokio::spawn(async move {
            let batch = store::list_batch::<EncodedCustomer>(
                &api.pool,
                &ctx,
                &filter,
                after,
                want as i64,
                &cancel,
            )
            .await;
            api.stats.batches.fetch_add(1, Ordering::Relaxed);
            batch
        });
        async move { read.await.unwrap_or_else(|e| Err(Error::internal(e))) }
    };

    let max_rows = api.stream.batch_size.max(1);
    let mut rows = FIRST_BATCH_ROWS.min(max_rows);
    let mut remaining = filter.limit;
    let mut want = remaining.map_or(rows as u64, |r| r.min(rows as u64));
    let mut next = read(after, want).await;
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let batch = match next {
            Ok(batch) => batch,
            Err(e) => {
                sender.fail(e).await;
                return;
            }
        };
        let complete = (batch.len() as u64) < want;
        if let Some(r) = &mut remaining {
            *r -= want.min(*r);
        }
        let last = batch.last().map(EncodedCustomer::position);
        let prefetch = (!complete && remaining != Some(0)).then(|| {
            want = remaining.map_or(rows as u64, |r| r.min(rows as u64));
            read(last, want)
        });
        let send = async {
            let (count, mut bytes) = (batch.len(), 0);
            for customer in batch {
                let message = pb::ListCustomersResponse::from(customer);
                let len = message.encoded_len();
                bytes += len;
                sender.send_sized(message, len).await?;
            }
            Ok::<_, Stopped>((count, bytes))
        };
        let prefetched = async {
            match prefetch {
                Some(read) => Some(read.await),
                None => None,
            }
        };
        let (sent, prefetched) = tokio::join!(send, prefetched);
        let (count, bytes) = match sent {
            Ok(sent) => sent,
            Err(Stopped::Gone) => return,
            Err(Stopped::Stalled) => {
                tracing::info!("ListCustomers client read nothing for too long; ending it");
                return;
            }
        };
        let Some(prefetched) = prefetched else {
            return;
        };
        next = prefetched;
        // The batch after the next one: as many rows as fit in the buffer
        // at this batch's average size.
        let average = (bytes / count.max(1)).max(1);
        rows = (api.stream.buffer_bytes / average).clamp(1, max_rows);
    }
}
