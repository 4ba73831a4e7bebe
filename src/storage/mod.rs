//! PostgreSQL: the connection pool, migrations, and the SQL of each operation.

/// Runs `$body` (with `$conn` bound to the connection) as a read of the
/// call: a pooled connection ([`connect_for_read`]), a read-only
/// repeatable-read transaction scoped to the call ([`Pool::begin_read_sql`]),
/// cancelled in PostgreSQL if `$cancel` fires first ([`cancellable`]). The
/// one path of every customer read. A macro rather than a function taking
/// an async closure: such a closure's future cannot be promised `Send`.
///
/// With `|conn, scope|`, the transaction's start is not awaited first:
/// `scope` is the future of its one batch (`BEGIN`, then the scope's `SET
/// LOCAL`s) on the shared connection, which the body joins with its first
/// queries so that they are pipelined behind it: one round trip for the
/// start and the queries, one for `COMMIT`. With `|conn, scope, commit|`,
/// the body may join `commit.send(conn, read)` ([`PipelinedCommit`]) after
/// the queries of a [`HotRead`]: once the connection has prepared them, the
/// whole read is one round trip. The transaction is begun and ended by
/// hand, not by diesel's transaction manager, which would send `BEGIN`
/// alone; a connection whose `COMMIT` fails leaves the pool.
macro_rules! read {
    ($pool:expr, $ctx:expr, $cancel:expr, |$conn:ident| $body:block) => {
        read!($pool, $ctx, $cancel, |$conn, scope, _commit| {
            scope.await?;
            $body
        })
    };
    ($pool:expr, $ctx:expr, $cancel:expr, |$conn:ident, $scope:ident| $body:block) => {
        read!($pool, $ctx, $cancel, |$conn, $scope, _commit| $body)
    };
    ($pool:expr, $ctx:expr, $cancel:expr, |$conn:ident, $scope:ident, $commit:ident| $body:block) => {{
        let pool: &$crate::storage::Pool = $pool;
        let begin = pool.begin_read_sql($ctx)?;
        let mut pooled = $crate::storage::TxConnection::new(
            $crate::storage::connect_for_read(pool, $ctx, $cancel).await?,
        );
        pooled.in_transaction = true;
        let pg = pooled.cancel_token();
        let commit = $crate::storage::PipelinedCommit::new(pool, &pooled);
        let (result, discard) = $crate::storage::cancellable_read(
            pg,
            $cancel,
            ::tracing::Instrument::instrument(
                async {
                    let $conn: &mut ::diesel_async::AsyncPgConnection = &mut pooled;
                    // A closure, not a block: its return type gives `?` in
                    // the body its error type.
                    #[allow(clippy::redundant_closure_call)]
                    let result = (async || -> ::std::result::Result<_, $crate::error::Error> {
                        let $scope = $crate::storage::begin_shared(&*$conn, &begin);
                        let $commit = &commit;
                        $body
                    })()
                    .await;
                    commit.end(&*$conn, result).await
                },
                $crate::storage::transaction_span("read"),
            ),
        )
        .await;
        // Out of the pool, and closed, if a cancel request was sent (see
        // `cancellable`) or the transaction could not be ended.
        pooled.in_transaction = discard;
        result
    }};
}

/// Runs `$body` as one write transaction of the call on `$conn` (a
/// [`TxConnection`] the caller holds, so that it may retry on it), in
/// `$span`.
/// `$begin` is the batch that starts it ([`Pool::begin_write_sql`]: `BEGIN` and
/// the scope), which the body sends with [`begin_shared`] joined with its
/// first statement, so that both take one round trip. Ends with `COMMIT` if
/// the body succeeded, else `ROLLBACK` ([`end_transaction`]), and evaluates
/// to the result. If the end failed, the result is an error and the
/// connection is lost: the [`TxConnection`] stays `in_transaction`, and
/// leaves the pool when dropped.
macro_rules! write_transaction {
    ($pool:expr, $conn:expr, $ctx:expr, $span:expr, |$c:ident, $begin:ident| $body:block) => {{
        let pool: &$crate::storage::Pool = $pool;
        let guarded: &mut $crate::storage::TxConnection = $conn;
        match pool.begin_write_sql($ctx) {
            Err(e) => Err(e),
            Ok(begin) => {
                guarded.in_transaction = true;
                let conn: &mut ::diesel_async::AsyncPgConnection = &mut *guarded;
                let (result, lost) = ::tracing::Instrument::instrument(
                    async {
                        // A closure, not a block: its return type gives `?`
                        // in the body its error type.
                        #[allow(clippy::redundant_closure_call)]
                        let result =
                            (async || -> ::std::result::Result<_, $crate::error::Error> {
                                let $c: &mut ::diesel_async::AsyncPgConnection = &mut *conn;
                                let $begin: &$crate::storage::Begin = &begin;
                                $body
                            })()
                            .await;
                        $crate::storage::end_transaction(&*conn, result).await
                    },
                    $span,
                )
                .await;
                guarded.in_transaction = lost;
                result
            }
        }
    }};
}

pub mod apps;
mod cached;
mod citus;
pub mod connection;
pub mod customers;
pub mod events;
mod listed;
mod models;
pub mod plans;
pub mod schema;
pub mod search;

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use deadpool::managed::ObjectId;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::{
    AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection,
    async_connection_wrapper::AsyncConnectionWrapper,
    pooled_connection::{
        AsyncDieselConnectionManager, ManagerConfig, PoolError as ManagerError, RecyclingMethod,
        deadpool::{Object, Pool as DeadPool, PoolError},
    },
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::{
    context::RequestContext,
    error::{Error, Key},
};

/// Migrations compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Arbitrary constant key of the advisory lock that serialises migrations of
/// replicas starting together.
const MIGRATION_LOCK_KEY: i64 = 0x0c05_7035_0000_0001;

pub type Connection = Object<AsyncPgConnection>;

/// The connection pool, and which of its connections have prepared which
/// hot reads.
#[derive(Clone)]
pub struct Pool {
    inner: DeadPool<AsyncPgConnection>,
    /// Connections keep their statements prepared (not behind a pooler in
    /// transaction mode, where nothing stays prepared).
    keeps_prepared: bool,
    /// The connections known to have prepared a hot read's statements: a
    /// read of that kind on them may pipeline its `COMMIT`
    /// ([`PipelinedCommit`]). A connection learns a kind by running it once
    /// the ordinary way. Bounded: ids of connections gone are forgotten
    /// when the set outgrows the pool, and the rest learn again.
    prepared: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<(ObjectId, HotRead)>>>,
    /// Which trigrams are common, for searches ([`search`]).
    search: std::sync::Arc<search::SearchStatistics>,
    /// What the connections are, learnt when the first one opens.
    session: std::sync::Arc<std::sync::OnceLock<Session>>,
}

/// What each connection of a pool is once it has opened: all alike, for
/// they log in the same way. It lets a transaction's scope leave out the
/// `SET LOCAL`s that would change nothing ([`scope_sql_for`]), each a
/// statement that PostgreSQL parses and runs in every transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    /// The connection logged in as [`SERVICE_ROLE`] itself.
    pub service_login: bool,
    /// The database has Citus.
    pub citus: bool,
    /// The `statement_timeout` (ms) that the connection set for its whole
    /// session when it opened.
    pub statement_timeout_ms: u128,
}

/// The row of the query that learns a [`Session`].
#[derive(diesel::QueryableByName)]
struct SessionFacts {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    service_login: bool,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    citus: bool,
}

impl std::ops::Deref for Pool {
    type Target = DeadPool<AsyncPgConnection>;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl Pool {
    /// The batch that starts a read transaction of the call on one of this
    /// pool's connections (for [`Self::session`]).
    pub fn begin_read_sql(&self, ctx: &RequestContext) -> Result<Begin, Error> {
        Begin::new(READ_BEGIN, ctx, self.session.get())
    }

    /// The batch that starts a write transaction of the call on one of this
    /// pool's connections (for [`Self::session`]).
    pub fn begin_write_sql(&self, ctx: &RequestContext) -> Result<Begin, Error> {
        Begin::new("BEGIN; ", ctx, self.session.get())
    }

    /// What this pool's connections are, once one has opened.
    pub fn session(&self) -> Option<&Session> {
        self.session.get()
    }

    /// The search statistics ([`search`]). When they are a minute old, the
    /// first caller to notice loads them again in its own read (one more
    /// round trip, once a minute per replica) while the others go on with
    /// the old ones; none at all until the first load has ended. A load
    /// that fails is logged and tried again a minute later (one that this
    /// call's own cancellation or deadline ended, by the next search).
    pub async fn common_trigrams(
        &self,
        ctx: &RequestContext,
        cancel: &CancellationToken,
    ) -> std::sync::Arc<search::CommonTrigrams> {
        let stale = match self.search.fresh() {
            Ok(fresh) => return fresh,
            Err(stale) => stale,
        };
        let Some(_loading) = self.search.try_loading() else {
            return stale.unwrap_or_default();
        };
        // Another caller may have loaded them in the meantime.
        if let Ok(fresh) = self.search.fresh() {
            return fresh;
        }
        let loaded = async {
            read!(self, ctx, cancel, |conn| {
                search::CommonTrigrams::load(conn).await
            })
        }
        .await;
        match loaded {
            Ok(loaded) => self.search.store(Some(loaded)),
            // This call's own end (its caller gone, its deadline passed):
            // the next search loads them.
            Err(Error::Cancelled | Error::DeadlineExceeded) => stale.unwrap_or_default(),
            Err(error) => {
                tracing::warn!(%error, "loading the search statistics failed; searching by whole terms");
                self.search.store(None)
            }
        }
    }

    /// The search statistics this replica holds, fresh or not, without
    /// loading any: for tests.
    #[doc(hidden)]
    pub fn cached_trigrams(&self) -> Option<std::sync::Arc<search::CommonTrigrams>> {
        self.search.fresh().map_or_else(|stale| stale, Some)
    }

    fn has_prepared(&self, conn: ObjectId, read: HotRead) -> bool {
        self.keeps_prepared
            && self
                .prepared
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&(conn, read))
    }

    fn learn_prepared(&self, conn: ObjectId, read: HotRead) {
        if !self.keeps_prepared {
            return;
        }
        let mut prepared = self.prepared.lock().unwrap_or_else(|e| e.into_inner());
        if prepared.len() >= 4 * self.status().max_size.max(1) {
            prepared.clear();
        }
        prepared.insert((conn, read));
    }
}

/// A read whose statements a connection keeps prepared once it ran them,
/// so that the read may pipeline its `COMMIT` behind them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HotRead {
    CustomerById,
    CustomerByExternalId,
    /// The active holder of an email (a repeated CreateCustomer).
    CustomerByEmail,
}

/// The `COMMIT` of a read (see [`read`]): pipelined behind the read's last
/// queries by [`PipelinedCommit::send`] when the connection has them
/// prepared, else sent once they are answered ([`PipelinedCommit::end`]).
pub struct PipelinedCommit<'p> {
    pool: &'p Pool,
    conn: ObjectId,
    /// [`Self::NOT_SENT`], [`Self::SENT`] or [`Self::DONE`].
    state: std::sync::atomic::AtomicU8,
    /// The hot read that ran without a pipelined `COMMIT`, to learn.
    learning: std::sync::Mutex<Option<HotRead>>,
}

impl<'p> PipelinedCommit<'p> {
    const NOT_SENT: u8 = 0;
    const SENT: u8 = 1;
    const DONE: u8 = 2;

    pub fn new(pool: &'p Pool, conn: &TxConnection) -> Self {
        Self {
            pool,
            conn: conn.id(),
            state: Self::NOT_SENT.into(),
            learning: std::sync::Mutex::new(None),
        }
    }

    /// To be joined after the last queries of `read`, which must be all of
    /// its statements: sends `COMMIT` when polled if the connection has
    /// prepared them (their executions went out on their first poll, ahead
    /// of it; a statement not yet prepared sends its execution only after a
    /// round trip of its own, which the `COMMIT` would overtake). Else does
    /// nothing, and [`Self::end`] commits once they are answered.
    pub async fn send(&self, conn: &AsyncPgConnection, read: HotRead) -> Result<(), Error> {
        use std::sync::atomic::Ordering;
        if !self.pool.has_prepared(self.conn, read) {
            *self.learning.lock().unwrap_or_else(|e| e.into_inner()) = Some(read);
            return Ok(());
        }
        self.state.store(Self::SENT, Ordering::Release);
        let mut shared = conn;
        shared.batch_execute("COMMIT").await?;
        self.state.store(Self::DONE, Ordering::Release);
        Ok(())
    }

    /// Ends the read: nothing left to do if its pipelined `COMMIT` was
    /// answered, else [`end_transaction`]. Returns the result, and whether
    /// the connection is lost: a `COMMIT` sent but not answered (it failed,
    /// or the body stopped waiting at a query's error) leaves its state
    /// unknown.
    pub async fn end<T>(
        &self,
        conn: &AsyncPgConnection,
        result: Result<T, Error>,
    ) -> (Result<T, Error>, bool) {
        match std::sync::atomic::AtomicU8::load(&self.state, std::sync::atomic::Ordering::Acquire) {
            Self::DONE => (result, false),
            Self::NOT_SENT => {
                let (result, lost) = end_transaction(conn, result).await;
                let learned = *self.learning.lock().unwrap_or_else(|e| e.into_inner());
                if let (Ok(_), false, Some(read)) = (&result, lost, learned) {
                    self.pool.learn_prepared(self.conn, read);
                }
                (result, lost)
            }
            _ => (result, true),
        }
    }
}

/// A pooled connection whose transactions are begun and ended by hand (see
/// [`read`], [`write_transaction`]): dropped while `in_transaction` (its
/// future dropped or its task panicking halfway, or its `COMMIT` failed),
/// it leaves the pool and closes, so that no other call can inherit its open
/// transaction. (diesel's own transaction manager, which we do not use for
/// these, would have marked such a connection broken.)
pub struct TxConnection {
    conn: Option<Connection>,
    /// Set while a transaction runs; still set after it only if its end
    /// failed (the connection is lost).
    pub in_transaction: bool,
}

impl TxConnection {
    pub fn new(conn: Connection) -> Self {
        Self {
            conn: Some(conn),
            in_transaction: false,
        }
    }

    /// The pool's id of the connection.
    pub fn id(&self) -> ObjectId {
        Object::id(self.conn.as_ref().expect("present until dropped"))
    }
}

impl std::ops::Deref for TxConnection {
    type Target = AsyncPgConnection;

    fn deref(&self) -> &AsyncPgConnection {
        self.conn.as_ref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for TxConnection {
    fn deref_mut(&mut self) -> &mut AsyncPgConnection {
        self.conn.as_mut().expect("present until dropped")
    }
}

impl Drop for TxConnection {
    fn drop(&mut self) {
        if self.in_transaction
            && let Some(conn) = self.conn.take()
        {
            drop(Object::take(conn));
        }
    }
}

/// Sizes and time limits of the connection pool.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Most connections open at once.
    pub max_size: usize,
    /// How long a call waits for a free connection (or a new one to open)
    /// before failing with UNAVAILABLE.
    pub acquire_timeout: Duration,
    /// Server-side limit on any one statement.
    pub statement_timeout: Duration,
    /// The URL leads to a pooler in transaction mode (PgBouncer before
    /// 1.21): no statement stays prepared across transactions.
    pub transaction_pooler: bool,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            max_size: 16,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            transaction_pooler: false,
        }
    }
}

/// Builds the pool. Connections are opened lazily, so this does not touch
/// the database.
pub fn pool(database_url: &str, options: &PoolOptions) -> anyhow::Result<Pool> {
    let statement_timeout_ms = options
        .statement_timeout
        .min(crate::context::MAX_STATEMENT_TIMEOUT)
        .as_millis();
    let mut config = ManagerConfig::default();
    // No query on every checkout: a connection that broke is noticed by its
    // transaction manager (and dropped), or fails its next query; readiness
    // pings the database on a connection of its own.
    config.recycling_method = RecyclingMethod::Fast;
    let transaction_pooler = options.transaction_pooler;
    let session = std::sync::Arc::new(std::sync::OnceLock::new());
    let learnt = session.clone();
    config.custom_setup = Box::new(move |url| {
        let url = url.to_owned();
        let learnt = learnt.clone();
        Box::pin(async move {
            let mut conn = connection::establish_for(&url, transaction_pooler).await?;
            if transaction_pooler {
                // Behind a pooler in transaction mode, each transaction may
                // run on another server connection: keep no statement
                // prepared past its query (diesel then prepares each query
                // anew, inside its transaction, and closes it there), and
                // make no session setting (it would stay on whichever
                // server connection ran it). Every transaction still sets
                // its own statement_timeout (see `scope_sql`).
                diesel_async::AsyncConnection::set_prepared_statement_cache_size(
                    &mut conn,
                    diesel::connection::CacheSize::Disabled,
                );
            } else {
                conn.batch_execute(&format!("SET statement_timeout = {statement_timeout_ms}"))
                    .await
                    .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
                // Learnt here only: behind a pooler the session is not ours
                // to know, and every transaction keeps its whole scope.
                if learnt.get().is_none() {
                    let facts: SessionFacts = diesel::sql_query(format!(
                        "SELECT current_user = '{SERVICE_ROLE}' AS service_login, \
                         EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') AS citus"
                    ))
                    .get_result(&mut conn)
                    .await
                    .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
                    let _ = learnt.set(Session {
                        service_login: facts.service_login,
                        citus: facts.citus,
                        statement_timeout_ms,
                    });
                }
            }
            Ok(conn)
        })
    });
    let manager = AsyncDieselConnectionManager::new_with_config(database_url, config);
    let inner = DeadPool::builder(manager)
        .max_size(options.max_size)
        .wait_timeout(Some(options.acquire_timeout))
        .create_timeout(Some(options.acquire_timeout))
        .recycle_timeout(Some(options.acquire_timeout))
        .runtime(deadpool::Runtime::Tokio1)
        .build()?;
    Ok(Pool {
        inner,
        keeps_prepared: !transaction_pooler,
        prepared: Default::default(),
        search: Default::default(),
        session,
    })
}

/// Takes a connection from the pool, waiting no longer than the pool's
/// acquire timeout or the call's deadline. A database that cannot be reached
/// is UNAVAILABLE.
pub async fn connect(pool: &Pool, deadline: Option<Instant>) -> Result<Connection, Error> {
    let get = pool.get();
    let result = match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, get)
            .await
            .map_err(|_| Error::DeadlineExceeded)?,
        None => get.await,
    };
    result.map_err(|e| match e {
        PoolError::Timeout(_) => Error::Unavailable("timed out waiting for a connection".into()),
        PoolError::Backend(ManagerError::ConnectionError(e)) => Error::Unavailable(e.to_string()),
        PoolError::Backend(ManagerError::QueryError(e)) => Error::Unavailable(e.to_string()),
        PoolError::Closed => Error::Unavailable("the connection pool is closed".into()),
        other => Error::internal(other),
    })
}

/// Takes a connection for a read that `cancel` may call off: a caller that
/// goes away while waiting gives up its place.
pub async fn connect_for_read(
    pool: &Pool,
    ctx: &RequestContext,
    cancel: &CancellationToken,
) -> Result<Connection, Error> {
    tokio::select! {
        conn = connect(pool, ctx.deadline) => conn,
        _ = cancel.cancelled() => Err(Error::Cancelled),
    }
}

/// Runs `work`, a read on the connection that `pg` cancels, to its end. If
/// `cancel` fires first (the caller went away, the server is stopping),
/// PostgreSQL is asked to cancel the running statement, and `work` is still
/// awaited: the transaction ends and its backend is idle. Dropping `work`
/// instead would leave the backend running its query while the pool opened
/// a replacement, so that `--pool-max-size` would no longer bound the
/// backends in use.
///
/// Returns, beside the result, whether a cancel request was sent. Such a
/// connection must not serve again: PostgreSQL handles the request
/// asynchronously, so it may land on whatever that connection runs next.
pub async fn cancellable<T>(
    pg: tokio_postgres::CancelToken,
    cancel: &CancellationToken,
    work: impl Future<Output = Result<T, Error>>,
) -> (Result<T, Error>, bool) {
    tokio::pin!(work);
    tokio::select! {
        result = &mut work => return (result, false),
        _ = cancel.cancelled() => {}
    }
    if let Err(e) = pg.cancel_query(tokio_postgres::NoTls).await {
        tracing::debug!(error = %e, "cancel request failed");
    }
    let _ = work.await;
    (Err(Error::Cancelled), true)
}

/// The span of one database transaction: its kind only, never its data.
pub fn transaction_span(kind: &'static str) -> tracing::Span {
    tracing::info_span!(
        "db.transaction",
        otel.name = format!("transaction {kind}"),
        otel.kind = "client",
        db.system = "postgresql",
        db.operation = kind,
    )
}

/// The database role every service transaction acts as: not the tables'
/// owner, so row-level security applies (see the second migration).
pub const SERVICE_ROLE: &str = "customers_service";

/// The statements that scope the rest of a transaction to a call, all of
/// them (for a connection of unknown [`Session`]): act as
/// [`SERVICE_ROLE`] (a no-op when the service logs in as it), set
/// `customers.app_id` (which row-level security filters on), and bound
/// every statement by the call's deadline, never beyond the server's own
/// limit (PostgreSQL cancels a statement still running when it passes).
///
/// One simple-query batch of `SET LOCAL`s and nothing else: one round trip
/// with no statement to prepare (so it also works through PgBouncer's
/// transaction pooling), and the form that Citus replays on its workers once
/// `citus.propagate_set_commands` is `local` (a `citus.` setting is a
/// harmless placeholder on plain PostgreSQL). Every value is formatted from a
/// typed one (a UUID, an integer), never from caller text.
pub fn scope_sql(ctx: &RequestContext) -> Result<String, Error> {
    scope_sql_for(ctx, None)
}

/// [`scope_sql`] on a connection whose [`Session`] is known: without the
/// statements that would change nothing there. Logged in as
/// [`SERVICE_ROLE`], no `SET LOCAL ROLE`; without Citus, no
/// `citus.propagate_set_commands`; with no deadline nearer than the
/// session's own `statement_timeout`, no `SET LOCAL statement_timeout`.
/// The app is always set: row-level security shows nothing without it.
pub fn scope_sql_for(ctx: &RequestContext, session: Option<&Session>) -> Result<String, Error> {
    Ok(Begin::new("", ctx, session)?.sql)
}

/// The batch that starts a transaction of a call ([`Pool::begin_read_sql`],
/// [`Pool::begin_write_sql`]): its `BEGIN`, then [`scope_sql_for`], written
/// into one string (it is built on every call's path).
#[derive(Debug, Clone)]
pub struct Begin {
    sql: String,
    /// Where Citus may replay the scope: the length of the `BEGIN` (less
    /// its `; `), which goes as a message of its own (see
    /// [`Begin::messages`]).
    citus_split: Option<usize>,
}

impl Begin {
    fn new(head: &str, ctx: &RequestContext, session: Option<&Session>) -> Result<Self, Error> {
        use std::fmt::Write;
        let timeout = ctx.statement_timeout().ok_or(Error::DeadlineExceeded)?;
        let mut sql = String::with_capacity(head.len() + 192);
        sql.push_str(head);
        let mut citus_split = None;
        if session.is_none_or(|s| s.citus) {
            citus_split = head.strip_suffix("; ").map(str::len);
            sql.push_str(CITUS_PROPAGATE);
        }
        if session.is_none_or(|s| !s.service_login) {
            let _ = write!(sql, "SET LOCAL ROLE {SERVICE_ROLE}; ");
        }
        let _ = write!(
            sql,
            "SET LOCAL customers.app_id = '{}'",
            ctx.app.0.hyphenated()
        );
        if session.is_none_or(|s| s.statement_timeout_ms != timeout.as_millis()) {
            let _ = write!(
                sql,
                "; SET LOCAL statement_timeout = {}",
                timeout.as_millis()
            );
        }
        Ok(Self { sql, citus_split })
    }

    /// The whole batch, as one string.
    pub fn as_str(&self) -> &str {
        &self.sql
    }

    /// The messages to send: the whole batch, or, where Citus may replay
    /// the scope, its `BEGIN`, then the scope. Citus replays a `SET LOCAL`
    /// on a worker by sending it the text of the whole message the setting
    /// came in; with the `BEGIN` in that text, every worker would log
    /// "there is already a transaction in progress" for each setting of
    /// each transaction (and the coordinator would log it again).
    fn messages(&self) -> (&str, Option<&str>) {
        match self.citus_split {
            Some(at) => (&self.sql[..at], Some(&self.sql[at + "; ".len()..])),
            None => (&self.sql, None),
        }
    }
}

/// How a read begins: a read-only repeatable-read transaction (one snapshot
/// for all its queries), then the scope.
const READ_BEGIN: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; ";

/// The setting that has Citus replay the scope's `SET LOCAL`s on its
/// workers (see [`Begin::messages`]).
const CITUS_PROPAGATE: &str = "SET LOCAL citus.propagate_set_commands = 'local'; ";

/// Sends `begin` ([`Pool::begin_read_sql`], [`Pool::begin_write_sql`]) on a shared
/// connection, so that the queries after it can be pipelined behind it: its
/// batch is sent when the future is first polled, theirs after, and
/// PostgreSQL runs them in that order. Were the order ever broken,
/// row-level security would show the queries nothing (no app set), not
/// another app's rows.
///
/// Where Citus may replay the scope, the `BEGIN` and the scope go as two
/// messages ([`Begin::messages`]), pipelined: still one round trip.
pub async fn begin_shared(conn: &AsyncPgConnection, begin: &Begin) -> Result<(), Error> {
    let (mut shared, mut again) = (conn, conn);
    match begin.messages() {
        (batch, None) => shared.batch_execute(batch).await?,
        (head, Some(scope)) => {
            futures_util::try_join!(shared.batch_execute(head), again.batch_execute(scope))?;
        }
    }
    Ok(())
}

/// Ends a transaction begun by [`begin_shared`]: `COMMIT` if `result` is a
/// success (the `COMMIT`'s failure is the result then), else `ROLLBACK`
/// (outside a transaction, either only warns). Returns the result, and
/// whether the connection is lost: its end failed, so its state is unknown.
pub async fn end_transaction<T>(
    conn: &AsyncPgConnection,
    result: Result<T, Error>,
) -> (Result<T, Error>, bool) {
    let mut shared = conn;
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    match shared.batch_execute(end).await {
        Ok(()) => (result, false),
        Err(e) => (result.and(Err(e.into())), true),
    }
}

/// [`cancellable`] for a read whose work reports, beside its result,
/// whether its connection is lost ([`end_transaction`]).
pub async fn cancellable_read<T>(
    pg: tokio_postgres::CancelToken,
    cancel: &CancellationToken,
    work: impl Future<Output = (Result<T, Error>, bool)>,
) -> (Result<T, Error>, bool) {
    let mut broken = false;
    let (result, cancel_sent) = cancellable(pg, cancel, async {
        let (result, end_failed) = work.await;
        broken = end_failed;
        result
    })
    .await;
    (result, cancel_sent || broken)
}

/// Lets [`SERVICE_ROLE`] log in with `password`, for a database whose
/// owner is also its administrator (the embedded mode). Elsewhere an
/// administrator does this once: `ALTER ROLE customers_service LOGIN
/// PASSWORD '...'`.
pub async fn enable_service_login(owner_url: &str, password: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        password.bytes().all(|b| b.is_ascii_alphanumeric()),
        "the service password must be alphanumeric"
    );
    let mut conn = connection::establish(owner_url).await?;
    conn.batch_execute(&format!(
        "ALTER ROLE {SERVICE_ROLE} WITH LOGIN PASSWORD '{password}'"
    ))
    .await?;
    Ok(())
}

/// Applies pending migrations, holding an advisory lock so that replicas
/// starting at once take turns (the second finds nothing left to do).
pub async fn migrate(database_url: &str) -> anyhow::Result<Vec<String>> {
    let conn = connection::establish(database_url).await?;
    tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<String>> {
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::from(conn);
        diesel::connection::SimpleConnection::batch_execute(
            &mut conn,
            &format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"),
        )?;
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map(|versions| versions.iter().map(ToString::to_string).collect::<Vec<_>>())
            .map_err(|e| anyhow::anyhow!("migration failed: {e}"))
            .and_then(|mut applied| {
                applied.extend(citus::distribute(&mut conn)?);
                Ok(applied)
            });
        diesel::connection::SimpleConnection::batch_execute(
            &mut conn,
            &format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"),
        )?;
        applied
    })
    .await?
}

/// Whether the database answers a trivial query, on `conn`, a connection
/// outside the pool that is opened (as the pool opens its own) when absent.
pub async fn ping(pool: &Pool, conn: &mut Option<AsyncPgConnection>) -> Result<(), Error> {
    use deadpool::managed::Manager;
    let conn = match conn {
        Some(conn) => conn,
        None => conn.insert(
            pool.manager()
                .create()
                .await
                .map_err(|e| Error::Unavailable(e.to_string()))?,
        ),
    };
    // The simple protocol: nothing to prepare (see `apps::find_key`).
    conn.batch_execute("SELECT 1").await?;
    Ok(())
}

impl From<DieselError> for Error {
    fn from(e: DieselError) -> Error {
        match &e {
            DieselError::NotFound => Error::NotFound,
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
                // On Citus, the error comes from a worker, without the
                // constraint field, and names the shard's index in its
                // message: the name with `_<shard id>` appended.
                let named = info.constraint_name().or_else(|| {
                    let (_, rest) = info.message().split_once("unique constraint \"")?;
                    rest.split_once('"').map(|(name, _)| name)
                });
                let name = named.map(|name| match name.rsplit_once('_') {
                    Some((base, shard))
                        if !shard.is_empty() && shard.bytes().all(|b| b.is_ascii_digit()) =>
                    {
                        base
                    }
                    _ => name,
                });
                let key = match name {
                    Some("customers_email_key") => Key::Email,
                    Some("customers_external_id_key") => Key::ExternalId,
                    Some("customer_provider_ids_key") => Key::ProviderId,
                    _ => return Error::internal(e),
                };
                Error::AlreadyExists { key, holder: None }
            }
            DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => {
                Error::Contention
            }
            DieselError::DatabaseError(
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
                _,
            )
            | DieselError::BrokenTransactionManager => Error::Unavailable(e.to_string()),
            // SQLSTATE 57014 (query_canceled), from statement_timeout: the
            // call's deadline or the server's own limit.
            DieselError::DatabaseError(DatabaseErrorKind::Unknown, info)
                if info.message().contains("statement timeout") =>
            {
                Error::DeadlineExceeded
            }
            // Server shutting down or restarting, or an administrator's
            // pg_cancel_backend (the rest of SQLSTATE class 57), which diesel
            // does not classify: worth a retry.
            DieselError::DatabaseError(DatabaseErrorKind::Unknown, info)
                if info.message().starts_with("terminating connection")
                    || info.message().contains("the database system is")
                    || info
                        .message()
                        .contains("canceling statement due to user request") =>
            {
                Error::Unavailable(info.message().to_owned())
            }
            _ => Error::internal(e),
        }
    }
}

/// Creates database `name` on the server of `admin_url` unless it exists,
/// optionally as a copy of `template`. Names are plain identifiers.
pub async fn create_database(
    admin_url: &str,
    name: &str,
    template: Option<&str>,
) -> anyhow::Result<()> {
    let is_identifier = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    anyhow::ensure!(is_identifier(name), "bad database name {name:?}");
    let mut conn = connection::establish(admin_url).await?;
    let exists: i64 = diesel::sql_query("SELECT count(*) AS n FROM pg_database WHERE datname = $1")
        .bind::<diesel::sql_types::Text, _>(name)
        .get_result::<Count>(&mut conn)
        .await?
        .n;
    if exists == 0 {
        let sql = match template {
            Some(t) => {
                anyhow::ensure!(is_identifier(t), "bad template name {t:?}");
                format!("CREATE DATABASE {name} TEMPLATE {t}")
            }
            None => format!("CREATE DATABASE {name}"),
        };
        conn.batch_execute(&sql).await?;
    }
    Ok(())
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[cfg(test)]
mod tests {
    use diesel::result::{DatabaseErrorInformation, DatabaseErrorKind, Error as DieselError};

    use crate::error::{Error, Key};

    struct Violation(&'static str, bool);

    impl DatabaseErrorInformation for Violation {
        fn message(&self) -> &str {
            self.0
        }
        fn details(&self) -> Option<&str> {
            None
        }
        fn hint(&self) -> Option<&str> {
            None
        }
        fn table_name(&self) -> Option<&str> {
            None
        }
        fn column_name(&self) -> Option<&str> {
            None
        }
        fn constraint_name(&self) -> Option<&str> {
            // As a worker's error reaches the coordinator's client: no field.
            let (_, rest) = self.0.split_once('"')?;
            self.1.then(|| rest.trim_end_matches('"'))
        }
        fn statement_position(&self) -> Option<i32> {
            None
        }
    }

    /// The key of a unique violation of `constraint`, with the constraint
    /// field set and as Citus reports it (in the message only): both must
    /// agree.
    fn key_of(constraint: &'static str) -> Option<Key> {
        let message: &'static str = Box::leak(
            format!("duplicate key value violates unique constraint \"{constraint}\"")
                .into_boxed_str(),
        );
        let [with_field, in_message] = [true, false].map(|field| {
            let e = DieselError::DatabaseError(
                DatabaseErrorKind::UniqueViolation,
                Box::new(Violation(message, field)),
            );
            match Error::from(e) {
                Error::AlreadyExists { key, .. } => Some(key),
                _ => None,
            }
        });
        assert_eq!(with_field, in_message, "{constraint}");
        with_field
    }

    #[test]
    fn unique_keys_are_named_on_plain_postgres_and_on_citus_shards() {
        assert_eq!(key_of("customers_email_key"), Some(Key::Email));
        // A Citus worker names the shard's index.
        assert_eq!(key_of("customers_email_key_102008"), Some(Key::Email));
        assert_eq!(
            key_of("customers_external_id_key_102040"),
            Some(Key::ExternalId)
        );
        assert_eq!(key_of("customer_provider_ids_key_7"), Some(Key::ProviderId));
        assert_eq!(key_of("customers_pkey_102008"), None);
        assert_eq!(key_of("customers_email_key_x1"), None);
    }

    #[test]
    fn a_known_session_leaves_out_only_the_settings_that_change_nothing() {
        use std::time::Duration;

        use super::{Begin, READ_BEGIN, Session, scope_sql, scope_sql_for};
        use crate::{context::RequestContext, domain::AppId};

        let ctx = RequestContext::new(AppId::DEFAULT, Duration::from_secs(30));
        let app = format!("SET LOCAL customers.app_id = '{}'", AppId::DEFAULT.0);
        // Unknown: every setting.
        let full = scope_sql(&ctx).unwrap();
        assert_eq!(
            full,
            format!(
                "SET LOCAL citus.propagate_set_commands = 'local'; \
                 SET LOCAL ROLE customers_service; {app}; SET LOCAL statement_timeout = 30000"
            )
        );
        // The service's own login, no Citus, the same timeout: the app only.
        let plain = Session {
            service_login: true,
            citus: false,
            statement_timeout_ms: 30_000,
        };
        assert_eq!(scope_sql_for(&ctx, Some(&plain)).unwrap(), app);
        // Each fact that differs brings its setting back.
        let owner = Session {
            service_login: false,
            ..plain
        };
        let citus = Session {
            citus: true,
            ..plain
        };
        let longer = Session {
            statement_timeout_ms: 60_000,
            ..plain
        };
        for (session, expected) in [
            (owner, format!("SET LOCAL ROLE customers_service; {app}")),
            (
                citus,
                format!("SET LOCAL citus.propagate_set_commands = 'local'; {app}"),
            ),
            (
                longer,
                format!("{app}; SET LOCAL statement_timeout = 30000"),
            ),
        ] {
            assert_eq!(scope_sql_for(&ctx, Some(&session)).unwrap(), expected);
        }
        // A pool that has not opened a connection yet begins with all of it,
        // its BEGIN a message apart from the scope (Citus may be there).
        let pool = super::pool("postgres://u@127.0.0.1:1/db", &Default::default()).unwrap();
        let read_head = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY";
        for (begin, head) in [
            (pool.begin_read_sql(&ctx).unwrap(), read_head),
            (pool.begin_write_sql(&ctx).unwrap(), "BEGIN"),
        ] {
            assert_eq!(begin.as_str(), format!("{head}; {full}"));
            assert_eq!(begin.messages(), (head, Some(full.as_str())));
        }
        // With Citus known, the same; without it, the batch is one message.
        let citus_read = Begin::new(READ_BEGIN, &ctx, Some(&citus)).unwrap();
        let citus_scope = scope_sql_for(&ctx, Some(&citus)).unwrap();
        assert_eq!(
            citus_read.messages(),
            (read_head, Some(citus_scope.as_str()))
        );
        let plain_read = Begin::new(READ_BEGIN, &ctx, Some(&plain)).unwrap();
        assert_eq!(plain_read.as_str(), format!("{read_head}; {app}"));
        assert_eq!(plain_read.messages(), (plain_read.as_str(), None));
        // A deadline nearer than the session's timeout is set.
        let mut near = ctx;
        near.deadline = Some(tokio::time::Instant::now() + Duration::from_secs(2));
        let scoped = scope_sql_for(&near, Some(&plain)).unwrap();
        assert!(scoped.starts_with(&format!("{app}; SET LOCAL statement_timeout = ")));
        assert_ne!(
            scoped,
            format!("{app}; SET LOCAL statement_timeout = 30000")
        );
    }
}
