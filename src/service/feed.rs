//! The replica's side of change events: one reader per app with open
//! watches (a feed), woken by PostgreSQL notifications, that reads each new
//! event once and hands it to every watch of the app; the notifications
//! this replica sends after its writes commit; and the pruning of old
//! events.
//!
//! Nothing here is needed for correctness across replicas: a watch always
//! checks that what it receives follows what it sent (positions are gapless
//! per app) and reads the database itself when it does not. Notifications
//! only make delivery fast, and the slow poll covers any that are lost.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::{
    context::RequestContext,
    domain::{AppId, Event, EventFilter},
    storage::{self, Pool, events as store},
};

/// The PostgreSQL channel of change notifications; the payload is the app's
/// UUID, nothing else.
pub const CHANNEL: &str = "customer_events";

/// How change events are delivered, kept and pruned.
#[derive(Debug, Clone)]
pub struct EventOptions {
    /// How long events are kept.
    pub retention: Duration,
    /// How often this replica tries to prune (one replica at a time does).
    pub prune_interval: Duration,
    /// How often a feed reads even without a notification: the fallback
    /// for notifications that were lost.
    pub poll_interval: Duration,
    /// A watch with nothing to send gets a bookmark this often.
    pub bookmark_interval: Duration,
    /// Watches one app may have open at once in this process.
    pub max_watches_per_app: Option<std::num::NonZeroU32>,
    /// Where to LISTEN: a direct connection (a pooler in transaction mode
    /// cannot LISTEN). `None`: no notifications (the poll alone).
    pub listen_url: Option<String>,
}

impl Default for EventOptions {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(30 * 86_400),
            prune_interval: Duration::from_secs(60),
            poll_interval: Duration::from_secs(5),
            bookmark_interval: Duration::from_secs(15),
            max_watches_per_app: std::num::NonZeroU32::new(256),
            listen_url: None,
        }
    }
}

/// Events a feed read in one go: every event after `after` up to and
/// including `through`, in order (so batches of a feed are contiguous).
#[derive(Debug)]
pub struct Batch {
    pub after: u64,
    pub through: u64,
    pub events: Vec<Event>,
}

/// Batches a feed keeps for watches that are behind; a watch further behind
/// reads the database itself.
const FEED_CAPACITY: usize = 64;
/// Most events a feed reads per query.
const FEED_BATCH: usize = 500;
/// Notifications go out at most this often: changes in between share one
/// (a NOTIFY is a transaction of its own in PostgreSQL, queued globally).
/// The replica's own feeds are woken at once, without it.
const NOTIFY_INTERVAL: Duration = Duration::from_millis(5);
/// Most events pruned per app per statement.
const PRUNE_BATCH: i32 = 10_000;

/// Counters of change events in this process.
#[derive(Debug, Default)]
pub struct EventStats {
    /// Database reads by feeds (one per app per wake-up, whatever the
    /// number of watches).
    pub feed_reads: std::sync::atomic::AtomicU64,
    /// Database reads by watches themselves: catching up at the start, or
    /// after falling behind their feed.
    pub watch_reads: std::sync::atomic::AtomicU64,
    /// Events and bookmarks handed to watch streams.
    pub messages: std::sync::atomic::AtomicU64,
}

/// One app's reader.
struct Feed {
    tx: broadcast::Sender<Arc<Batch>>,
    wake: Notify,
}

struct Inner {
    pool: Pool,
    options: EventOptions,
    statement_limit: Duration,
    shutdown: CancellationToken,
    feeds: Mutex<HashMap<AppId, Arc<Feed>>>,
    stats: Arc<EventStats>,
    /// Apps changed by this replica whose notification is not sent yet.
    pending: Mutex<HashSet<AppId>>,
    /// When the last notifications went out.
    last_notify: Mutex<Option<tokio::time::Instant>>,
    notify_pending: Notify,
}

/// This replica's event hub. Cheap to clone.
#[derive(Clone)]
pub struct EventHub {
    inner: Arc<Inner>,
}

impl EventHub {
    pub fn new(
        pool: Pool,
        options: EventOptions,
        statement_limit: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                options,
                statement_limit,
                shutdown,
                feeds: Mutex::default(),
                stats: Arc::default(),
                pending: Mutex::default(),
                last_notify: Mutex::default(),
                notify_pending: Notify::new(),
            }),
        }
    }

    pub fn options(&self) -> &EventOptions {
        &self.inner.options
    }

    pub fn stats(&self) -> &Arc<EventStats> {
        &self.inner.stats
    }

    /// Starts the listener, the notifier and the pruner; they stop at
    /// shutdown.
    pub fn start(&self) {
        match self.inner.options.listen_url.clone() {
            // Notifications go out on the listening connection: no pool slot
            // taken from the calls.
            Some(url) => tokio::spawn(self.clone().listen(url)),
            None => tokio::spawn(self.clone().notify_through_pool()),
        };
        tokio::spawn(self.clone().prune());
    }

    /// After a write of `app` committed: wakes the app's feed here, and
    /// (coalesced) notifies the other replicas.
    pub fn changed(&self, app: AppId) {
        self.wake(app);
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(app);
        self.inner.notify_pending.notify_one();
    }

    fn wake(&self, app: AppId) {
        let feeds = self.inner.feeds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(feed) = feeds.get(&app) {
            feed.wake.notify_one();
        }
    }

    fn wake_all(&self) {
        let feeds = self.inner.feeds.lock().unwrap_or_else(|e| e.into_inner());
        for feed in feeds.values() {
            feed.wake.notify_one();
        }
    }

    /// The batches of `app`'s feed from now on (starting the feed if none
    /// runs).
    pub fn subscribe(&self, app: AppId) -> broadcast::Receiver<Arc<Batch>> {
        let mut feeds = self.inner.feeds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(feed) = feeds.get(&app) {
            return feed.tx.subscribe();
        }
        let (tx, rx) = broadcast::channel(FEED_CAPACITY);
        let feed = Arc::new(Feed {
            tx,
            wake: Notify::new(),
        });
        feeds.insert(app, feed.clone());
        tokio::spawn(self.clone().run_feed(app, feed));
        rx
    }

    fn context(&self, app: AppId) -> RequestContext {
        RequestContext::new(app, self.inner.statement_limit)
    }

    /// Reads `app`'s new events whenever woken (or every poll interval) and
    /// broadcasts them, until no watch of the app is left here.
    async fn run_feed(self, app: AppId, feed: Arc<Feed>) {
        let ctx = self.context(app);
        let never = CancellationToken::new();
        let everything = EventFilter::default();
        // Broadcast through this position (`None`: nothing yet).
        let mut head: Option<u64> = None;
        // The head the sequencer last returned.
        let mut target = 0u64;
        let mut failures = 0u32;
        loop {
            {
                // Under the lock that subscribing takes: no watch can join
                // a feed that is leaving.
                let mut feeds = self.inner.feeds.lock().unwrap_or_else(|e| e.into_inner());
                if feed.tx.receiver_count() == 0 || self.inner.shutdown.is_cancelled() {
                    if feeds.get(&app).is_some_and(|f| Arc::ptr_eq(f, &feed)) {
                        feeds.remove(&app);
                    }
                    return;
                }
            }
            let pass = async {
                // Number the committed events first (one short write per
                // pass, for every watch of the app), unless positions given
                // earlier are still to be read.
                if head.is_none_or(|h| h >= target) {
                    target = store::sequence(&self.inner.pool, &ctx).await?;
                }
                // The first batch is empty, at the head: a watch that
                // subscribed before it and is behind it sees from it that it
                // must catch up from the database.
                let Some(after) = head else {
                    return Ok(Some(Batch {
                        after: target,
                        through: target,
                        events: Vec::new(),
                    }));
                };
                if after >= target {
                    return Ok(None);
                }
                self.inner
                    .stats
                    .feed_reads
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let page = store::read_page(
                    &self.inner.pool,
                    &ctx,
                    after,
                    &everything,
                    FEED_BATCH,
                    &never,
                )
                .await?;
                Ok::<_, crate::error::Error>(Some(Batch {
                    after,
                    through: page.through.max(after),
                    events: page.events,
                }))
            };
            match pass.await {
                Ok(batch) => {
                    failures = 0;
                    if let Some(batch) = batch {
                        head = Some(batch.through);
                        let _ = feed.tx.send(Arc::new(batch));
                        if head.is_some_and(|h| h < target) {
                            continue;
                        }
                    }
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, app = %app, "reading change events failed");
                    let backoff = Duration::from_millis(100 << failures.min(6));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.inner.shutdown.cancelled() => {}
                    }
                    continue;
                }
            }
            tokio::select! {
                _ = feed.wake.notified() => {}
                _ = tokio::time::sleep(self.inner.options.poll_interval) => {}
                _ = self.inner.shutdown.cancelled() => {}
            }
        }
    }

    /// Listens for other replicas' (and our own) notifications, and sends
    /// ours, reconnecting when the connection drops; each (re)connection
    /// wakes every feed, since notifications sent meanwhile were missed.
    async fn listen(self, url: String) {
        let mut failures = 0u32;
        loop {
            let hub = self.clone();
            let connected = std::sync::atomic::AtomicBool::new(false);
            let why = tokio::select! {
                why = storage::connection::listen(
                    &url,
                    CHANNEL,
                    || {
                        connected.store(true, std::sync::atomic::Ordering::Relaxed);
                        hub.wake_all();
                    },
                    |payload| match payload.parse::<uuid::Uuid>() {
                        Ok(app) => hub.wake(AppId(app)),
                        Err(_) => tracing::debug!("ignoring a malformed notification"),
                    },
                    || self.next_notifications(),
                ) => why,
                _ = self.inner.shutdown.cancelled() => return,
            };
            if connected.load(std::sync::atomic::Ordering::Relaxed) {
                failures = 0;
            }
            failures += 1;
            tracing::warn!(error = %why, "the change-notification connection ended; reconnecting");
            let backoff = Duration::from_millis(100 << failures.min(6));
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.inner.shutdown.cancelled() => return,
            }
        }
    }

    /// The apps changed since the last call (waiting for one): one
    /// notification each, after their writes committed. Changes that come
    /// while a send is under way share the next one.
    async fn next_changes(&self) -> Vec<AppId> {
        let last_notify = || {
            self.inner
                .last_notify
                .lock()
                .unwrap_or_else(|e| e.into_inner())
        };
        loop {
            self.inner.notify_pending.notified().await;
            let last = *last_notify();
            if let Some(last) = last {
                tokio::time::sleep_until(last + NOTIFY_INTERVAL).await;
            }
            let apps: Vec<AppId> = self
                .inner
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain()
                .collect();
            if !apps.is_empty() {
                *last_notify() = Some(tokio::time::Instant::now());
                return apps;
            }
        }
    }

    /// The SQL that notifies the next changes (see [`Self::next_changes`]).
    async fn next_notifications(&self) -> String {
        store::notify_sql(CHANNEL, &self.next_changes().await)
    }

    /// Sends the notifications through the pool: when this replica does not
    /// listen (behind a pooler in transaction mode with no direct URL).
    async fn notify_through_pool(self) {
        loop {
            let apps = tokio::select! {
                apps = self.next_changes() => apps,
                _ = self.inner.shutdown.cancelled() => return,
            };
            if let Err(e) = store::notify(&self.inner.pool, CHANNEL, &apps).await {
                // The other replicas' feeds poll: they are late, not wrong.
                tracing::debug!(error = %e, "sending change notifications failed");
            }
        }
    }

    /// Deletes events older than the retention, every prune interval.
    async fn prune(self) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.inner.options.prune_interval) => {}
                _ = self.inner.shutdown.cancelled() => return,
            }
            let Ok(retention) = chrono::Duration::from_std(self.inner.options.retention) else {
                continue;
            };
            let cutoff = chrono::Utc::now() - retention;
            loop {
                match store::prune(&self.inner.pool, cutoff, PRUNE_BATCH).await {
                    Ok(deleted) if deleted > 0 => {
                        tracing::info!(deleted, "pruned change events");
                        if deleted < PRUNE_BATCH as u64 {
                            break;
                        }
                    }
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "pruning change events failed");
                        break;
                    }
                }
            }
        }
    }
}
