//! The service beside PostgreSQL itself: for each operation, the calls per
//! second (and latency) the service achieves over real gRPC sockets, next
//! to the transactions per second PostgreSQL alone achieves for the minimal
//! SQL of the same call, on the same server and the same data. The ratio
//! is the cost of everything the service adds: HTTP/2 and protobuf, API key
//! checks, a pooled connection, a transaction scoped to the call (`BEGIN`,
//! the `SET LOCAL` batch, `COMMIT`), row-level security, the provider ids
//! read with every customer.
//!
//! One PostgreSQL cluster with durable settings (fsync on, as the service's
//! own embedded mode runs it, not the throwaway settings of the tests);
//! `BENCH_CUSTOMERS` customers seeded in the default app; the release
//! service binary as its own process, logged in as its own role
//! (`customers_service`, which owns nothing, as in the embedded mode; with
//! `BENCH_DATABASE_URL`, as that URL's user), with its default pool of 16
//! connections, no per-app limits and its default logging (`info`: one
//! access-log line per call, its stderr read through a pipe as a log
//! collector reads it). Then, per operation:
//!
//! - the service: 32 concurrent callers over 4 HTTP/2 connections for
//!   `BENCH_SECONDS` (after a one-second warm-up); calls/s counts successful
//!   calls only, and any non-OK status or wrong answer is an error;
//! - PostgreSQL alone: `pgbench -n -M prepared -c 32 -j 2 -T BENCH_SECONDS`
//!   with a script of the SQL the call cannot do without, right after, on
//!   the cache the service warmed;
//! - for a write (a new customer, an update), a `CHECKPOINT` before each
//!   side, so that both pay the full-page images of the pages they touch
//!   first (see [`Bench::compare`]).
//!
//! Listing every customer is compared with a binary `COPY` of the same rows
//! in the same order, in rows/s, twice: with the stream's messages read as
//! the COPY's bytes are (taken and dropped), then decoded, as an application
//! reads them (the client's decoding shares the machine's two cores).
//!
//! Beside each throughput: latency percentiles (pgbench's from its log of a
//! sample of its transactions), the service's CPU time per call, and the
//! CPU time of every PostgreSQL process per call, while the service ran and
//! while pgbench ran: what the service's transaction costs the database
//! next to the minimal SQL. The WAL written per call is in the notes.
//!
//! ```sh
//! cargo bench --bench versus_postgres          # 1,000,000 customers, 10 s per operation
//! BENCH_CUSTOMERS=100000 BENCH_SECONDS=5 cargo bench --bench versus_postgres   # a quick run
//! BENCH_ONLY=create,update cargo bench --bench versus_postgres   # some operations only
//! BENCH_SERVICE_BIN=/tmp/customers-before cargo bench --bench versus_postgres   # another build
//! ```
//!
//! Everything shares one machine: the callers, the service, PostgreSQL and
//! pgbench compete for its cores, so the figures are a comparison, not a
//! capacity plan. `pgbench` is looked for beside `initdb` (following a
//! symbolic link to the PostgreSQL bin directory), then in
//! `pg_config --bindir`.

#[path = "common/mod.rs"]
mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    str::FromStr,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use common::{
    Auth, Server, authorized, cpu_time, default_app_key, on_durable_cluster, owner_connection,
    postgres_cpu_time, rss_kib,
    seed::{APP, customer_id, id_sql, seed},
    spawn_service,
};
use customers::{
    embedded_pg::{self, Cluster},
    pb::{self, customer_service_client::CustomerServiceClient, get_customer_request::Lookup},
    storage::{
        self,
        search::{Column, CommonTrigrams},
    },
};
use futures_util::StreamExt;
use tonic::transport::Channel;

/// Concurrent callers of each unary measurement, and pgbench's clients.
const CALLERS: usize = 32;
/// HTTP/2 connections the callers share, as a few client replicas would.
const CHANNELS: usize = 4;
/// Calls made before each measurement and not counted.
const WARM_UP: Duration = Duration::from_secs(1);

type Client = CustomerServiceClient<Channel>;

fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    // An existing database instead of a cluster of our own (Citus, for
    // `scripts/citus-check --bench`): migrated and seeded here.
    if let Ok(url) = std::env::var("BENCH_DATABASE_URL") {
        let dir = std::env::temp_dir().join(format!("customers-versus-pg-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let runtime = tokio::runtime::Runtime::new()?;
        let result = runtime.block_on(run_on(&url, &dir, &settings, None));
        let _ = std::fs::remove_dir_all(dir);
        return result;
    }
    on_durable_cluster("versus-pg", async |cluster| run(cluster, &settings).await)
}

/// What to run, from the environment.
struct Settings {
    /// `BENCH_CUSTOMERS`: customers seeded (default 1,000,000).
    customers: u64,
    /// `BENCH_SECONDS`: length of each measurement (default 10).
    seconds: u64,
    /// `BENCH_ONLY`: the operations to measure, as a comma-separated list
    /// of keys (`get,get-external,list,search,create,create-email,
    /// create-external,update`); all when unset.
    only: Option<Vec<String>>,
}

impl Settings {
    /// Whether the operation with this key is measured.
    fn runs(&self, key: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|k| k == key))
    }

    fn from_env() -> anyhow::Result<Self> {
        let number = |name: &str, default: u64| -> anyhow::Result<u64> {
            match std::env::var(name) {
                Ok(value) => value
                    .trim()
                    .replace('_', "")
                    .parse()
                    .map_err(|e| anyhow::anyhow!("{name}={value:?}: {e}")),
                Err(_) => Ok(default),
            }
        };
        let settings = Self {
            customers: number("BENCH_CUSTOMERS", 1_000_000)?,
            seconds: number("BENCH_SECONDS", 10)?,
            only: std::env::var("BENCH_ONLY").ok().map(|list| {
                list.split(',')
                    .map(|key| key.trim().to_owned())
                    .filter(|key| !key.is_empty())
                    .collect()
            }),
        };
        if let Some(only) = &settings.only {
            for key in only {
                anyhow::ensure!(
                    key == LIST_KEY || Call::ALL.iter().any(|call| call.key() == key),
                    "BENCH_ONLY: unknown operation {key:?}"
                );
            }
        }
        anyhow::ensure!(
            settings.customers >= 1000,
            "BENCH_CUSTOMERS must be at least 1000"
        );
        anyhow::ensure!(settings.seconds >= 1, "BENCH_SECONDS must be at least 1");
        Ok(settings)
    }
}

async fn run(cluster: &Cluster, settings: &Settings) -> anyhow::Result<()> {
    storage::create_database(&cluster.url("postgres"), "bench", None).await?;
    // The service logs in as its own role, as in the embedded mode.
    let service = cluster.service_url(storage::SERVICE_ROLE, "bench")?;
    run_on(
        &cluster.url("bench"),
        cluster.root(),
        settings,
        Some(service),
    )
    .await
}

/// Seeds the database at `url` (as its owner) and measures. `service`: the
/// URL and password of the service's own login ([`storage::SERVICE_ROLE`]),
/// which the service then serves with (as in the embedded mode, where it
/// does not own the tables); without it, the service logs in as the owner
/// and acts as the role in each transaction.
async fn run_on(
    url: &str,
    dir: &Path,
    settings: &Settings,
    service: Option<(String, String)>,
) -> anyhow::Result<()> {
    let n = settings.customers;
    let url = url.to_owned();
    storage::migrate(&url).await?;
    let service_url = match service {
        Some((service_url, password)) => {
            storage::enable_service_login(&url, &password).await?;
            service_url
        }
        None => url.clone(),
    };
    let db = owner_connection(&url).await?;

    println!("Seeding {n} customers...");
    let started = Instant::now();
    seed(&db, n).await?;
    let size: i64 = db
        .query_one(
            "SELECT pg_total_relation_size('customers') \
                    + pg_total_relation_size('customer_provider_ids')",
            &[],
        )
        .await?
        .get(0);
    println!(
        "Seeded {n} customers in {:.1} s (with VACUUM ANALYZE and CHECKPOINT); \
         tables and indexes: {} MiB",
        started.elapsed().as_secs_f64(),
        size >> 20
    );

    search_windows(&db, n).await?;
    let auth = default_app_key(&url).await?;

    let (server, endpoint) = start_service(&service_url, &url).await?;
    let mut channels = Vec::new();
    for _ in 0..CHANNELS {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())?
            .connect()
            .await?;
        channels.push(channel);
    }
    let bench = Bench {
        endpoint: endpoint.clone(),
        clients: channels
            .iter()
            .cloned()
            .map(CustomerServiceClient::new)
            .collect(),
        channel: channels[0].clone(),
        auth,
        customers: n,
        duration: Duration::from_secs(settings.seconds),
        pgbench: PgBench::new(&url, dir, settings.seconds)?,
        service_pid: server.0.id(),
        db: owner_connection(&url).await?,
    };
    println!(
        "Service: {CALLERS} callers over {CHANNELS} connections, {} s per operation; \
         PostgreSQL alone: {}\n",
        settings.seconds,
        bench.pgbench.command_line()
    );

    // Reads first, on the freshly seeded table; then the writes.
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for call in [Call::GetById, Call::GetByExternalId] {
        if settings.runs(call.key()) {
            rows.push(bench.compare(call, &mut notes).await?);
        }
    }
    // The same reads from h2load, as the issue that asked for this
    // benchmark measured them.
    for call in [Call::GetById, Call::GetByExternalId] {
        if settings.runs(call.key())
            && let Some(row) = bench.h2load_get(call, &mut notes).await?
        {
            rows.push(row);
        }
    }
    if settings.runs(Call::GetById.key()) {
        bench
            .minimal_lookup_over_socket(&service_url, &rows, &mut notes)
            .await?;
    }
    if settings.runs(LIST_KEY) {
        rows.extend(bench.list_everything(&db, &mut notes).await?);
    }
    for call in [
        Call::Search,
        Call::CreateNew,
        Call::CreateByEmail,
        Call::CreateByExternalId,
        Call::Update,
    ] {
        if settings.runs(call.key()) {
            rows.push(bench.compare(call, &mut notes).await?);
        }
    }
    let peak = rss_kib(server.0.id(), "VmHWM")?;
    drop(server);

    println!(
        "\n{n} customers, {CALLERS} concurrent callers, {} s per operation:\n",
        settings.seconds
    );
    print_table(&rows);
    println!(
        "\nService peak RSS (VmHWM): {:.1} MiB",
        peak as f64 / 1024.0
    );
    for note in notes {
        println!("- {note}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Seeding

/// For pgbench's searches: the windows the service gives the trigram index
/// for each term the benchmark searches for (`bench_search_windows`),
/// chosen from the same statistics by the same function.
async fn search_windows(db: &tokio_postgres::Client, customers: u64) -> anyhow::Result<()> {
    let common = CommonTrigrams::from_rows(
        db.query("SELECT * FROM customers_common_trigrams()", &[])
            .await?
            .into_iter()
            .map(|row| (row.get(0), row.get(1), row.get(2))),
    );
    let (low, high) = search_range(customers);
    let mut qs = Vec::new();
    let (mut email, mut name) = (Vec::new(), Vec::new());
    for q in low..=high {
        let term = format!("customer{q}");
        qs.push(q as i64);
        email.push(common.windows(Column::Email, &term).join(","));
        name.push(common.windows(Column::Name, &term).join(","));
    }
    db.batch_execute(
        "CREATE TABLE bench_search_windows (q bigint PRIMARY KEY, email text[], name text[])",
    )
    .await?;
    db.execute(
        "INSERT INTO bench_search_windows \
         SELECT q, string_to_array(e, ','), string_to_array(n, ',') \
         FROM unnest($1::bigint[], $2::text[], $3::text[]) AS t(q, e, n)",
        &[&qs, &email, &name],
    )
    .await?;
    db.batch_execute("ANALYZE bench_search_windows").await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// The service

/// Starts the release binary on `url` and waits until it is ready.
async fn start_service(url: &str, owner_url: &str) -> anyhow::Result<(Server, String)> {
    // Measure the service, not the per-app limits: no call rate limit, and
    // no limit on open streams (the search runs 32 streams at once, above
    // the default 16).
    let env = [
        ("CUSTOMERS_APP_RATE_LIMIT", "0"),
        ("CUSTOMERS_APP_MAX_STREAMS", "0"),
        ("CUSTOMERS_MIGRATE_DATABASE_URL", owner_url),
    ];
    let (server, endpoint, _) = spawn_service(url, false, &env).await?;
    Ok((server, endpoint))
}

// ---------------------------------------------------------------------------
// The operations

/// A call measured with concurrent callers, with its pgbench counterpart.
#[derive(Debug, Clone, Copy)]
enum Call {
    GetById,
    GetByExternalId,
    /// ListCustomers with a `query` that matches about 11 customers
    /// ("customer12345" matches customer12345 and customer123450 to
    /// customer123459), limit 20.
    Search,
    /// A customer with a new email every call.
    CreateNew,
    /// The idempotent hit: an existing customer's email, no external id.
    CreateByEmail,
    /// The idempotent hit: an existing customer's external id.
    CreateByExternalId,
    /// A new name for an existing customer (always a change, so always a
    /// write: an update to the same name returns early).
    Update,
}

/// Makes every name an update writes unique within the run.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// `BENCH_ONLY`'s key for listing every customer.
const LIST_KEY: &str = "list";

impl Call {
    const ALL: [Call; 7] = [
        Call::GetById,
        Call::GetByExternalId,
        Call::Search,
        Call::CreateNew,
        Call::CreateByEmail,
        Call::CreateByExternalId,
        Call::Update,
    ];

    /// The operation's key in `BENCH_ONLY`.
    fn key(self) -> &'static str {
        match self {
            Call::GetById => "get",
            Call::GetByExternalId => "get-external",
            Call::Search => "search",
            Call::CreateNew => "create",
            Call::CreateByEmail => "create-email",
            Call::CreateByExternalId => "create-external",
            Call::Update => "update",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Call::GetById => "GetCustomer by id",
            Call::GetByExternalId => "GetCustomer by external id",
            Call::Search => "ListCustomers query, limit 20",
            Call::CreateNew => "CreateCustomer, new",
            Call::CreateByEmail => "CreateCustomer again, by email",
            Call::CreateByExternalId => "CreateCustomer again, by external id",
            Call::Update => "UpdateCustomer name",
        }
    }

    /// Whether the call changes rows (an idempotent repeat changes none).
    fn writes(self) -> bool {
        matches!(self, Call::CreateNew | Call::Update)
    }

    /// One call about a random customer of 1 to `customers`. A non-OK
    /// status, or an answer that is not the one expected, is an error.
    async fn once(self, client: &mut Client, auth: &Auth, customers: u64) -> Result<(), String> {
        let n = rand::random_range(1..=customers);
        let expected = customer_id(n);
        let existing = || pb::Customer {
            external_id: matches!(self, Call::CreateByExternalId).then(|| format!("user_{n}")),
            email: format!("customer{n}@example.com"),
            name: format!("Customer Number {n}"),
            ..Default::default()
        };
        match self {
            Call::GetById | Call::GetByExternalId => {
                let lookup = match self {
                    Call::GetById => Lookup::Id(expected.clone()),
                    _ => Lookup::ExternalId(format!("user_{n}")),
                };
                let request = pb::GetCustomerRequest {
                    lookup: Some(lookup),
                };
                let response = client
                    .get_customer(authorized(request, auth))
                    .await
                    .map_err(status)?
                    .into_inner();
                same_customer(response.customer.as_ref(), &expected)
            }
            Call::Search => {
                let (low, high) = search_range(customers);
                let request = pb::ListCustomersRequest {
                    query: format!("customer{}", rand::random_range(low..=high)),
                    limit: 20,
                    ..Default::default()
                };
                let mut stream = client
                    .list_customers(authorized(request, auth))
                    .await
                    .map_err(status)?
                    .into_inner();
                let mut received = 0;
                while stream.message().await.map_err(status)?.is_some() {
                    received += 1;
                }
                match received {
                    1..=20 => Ok(()),
                    _ => Err(format!("the search found {received} customers")),
                }
            }
            // The same data as pgbench's insert: a random UUID in the
            // email, the same name (the trigram indexes' work depends on
            // the text).
            Call::CreateNew => {
                let random = uuid::Uuid::from_u128(rand::random());
                let request = pb::CreateCustomerRequest {
                    customer: Some(pb::Customer {
                        email: format!("svc-new-{random}@example.com"),
                        name: "New Customer".into(),
                        ..Default::default()
                    }),
                };
                let response = client
                    .create_customer(authorized(request, auth))
                    .await
                    .map_err(status)?
                    .into_inner();
                match response.created {
                    true => Ok(()),
                    false => Err("a new customer was not created".into()),
                }
            }
            Call::CreateByEmail | Call::CreateByExternalId => {
                let request = pb::CreateCustomerRequest {
                    customer: Some(existing()),
                };
                let response = client
                    .create_customer(authorized(request, auth))
                    .await
                    .map_err(status)?
                    .into_inner();
                if response.created {
                    return Err(format!("customer {n} was created again"));
                }
                same_customer(response.customer.as_ref(), &expected)
            }
            Call::Update => {
                let name = format!(
                    "Customer Number {n} v{}",
                    SEQUENCE.fetch_add(1, Ordering::Relaxed)
                );
                let request = pb::UpdateCustomerRequest {
                    customer: Some(pb::Customer {
                        id: expected,
                        name: name.clone(),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["name".into()],
                    }),
                    external_id: String::new(),
                };
                let response = client
                    .update_customer(authorized(request, auth))
                    .await
                    .map_err(status)?
                    .into_inner();
                match response.customer {
                    Some(customer) if customer.name == name => Ok(()),
                    _ => Err(format!("customer {n} was not renamed")),
                }
            }
        }
    }

    /// The pgbench script: the SQL that the call cannot do without, as the
    /// tables' owner. `:n` is a random customer, as in [`Call::once`].
    fn script(self, customers: u64) -> String {
        let random_n = format!("\\set n random(1, {customers})\n");
        let id = id_sql("CAST(:n AS bigint)");
        let n = "CAST(:n AS text)";
        match self {
            Call::GetById => {
                format!("{random_n}SELECT * FROM customers WHERE app_id = '{APP}' AND id = {id};\n")
            }
            Call::GetByExternalId => format!(
                "{random_n}SELECT * FROM customers WHERE app_id = '{APP}' \
                 AND external_id = 'user_' || {n} AND state = 'active';\n"
            ),
            // The page function the service calls, with the service's
            // pattern and windows (see `search_windows`); the app comes from
            // the session (see `pgoptions`).
            Call::Search => {
                let (low, high) = search_range(customers);
                format!(
                    "\\set q random({low}, {high})\n\
                     SELECT page.* FROM bench_search_windows AS w, \
                     LATERAL customers_page(NULL, '%customer' || CAST(:q AS text) || '%', \
                     NULL, NULL, NULL, false, false, NULL, NULL, 20, w.email, w.name) AS page \
                     WHERE w.q = :q;\n"
                )
            }
            // A random UUID in the email, as in the service's calls: no
            // collision in practice (and a prefix of its own).
            Call::CreateNew => format!(
                "INSERT INTO customers (app_id, id, email, name) VALUES ('{APP}', \
                 gen_random_uuid(), 'pg-new-' || gen_random_uuid() || '@example.com', \
                 'New Customer');\n"
            ),
            // The insert finds the key taken and does nothing; then the
            // holder is read, as the service does.
            Call::CreateByEmail => format!(
                "{random_n}INSERT INTO customers (app_id, id, email, name) VALUES ('{APP}', \
                 gen_random_uuid(), 'customer' || {n} || '@example.com', \
                 'Customer Number ' || {n}) ON CONFLICT DO NOTHING;\n\
                 SELECT * FROM customers WHERE app_id = '{APP}' AND state = 'active' \
                 AND email_lower = lower('customer' || {n} || '@example.com');\n"
            ),
            Call::CreateByExternalId => format!(
                "{random_n}INSERT INTO customers (app_id, id, external_id, email, name) \
                 VALUES ('{APP}', gen_random_uuid(), 'user_' || {n}, \
                 'customer' || {n} || '@example.com', 'Customer Number ' || {n}) \
                 ON CONFLICT DO NOTHING;\n\
                 SELECT * FROM customers WHERE app_id = '{APP}' AND state = 'active' \
                 AND external_id = 'user_' || {n};\n"
            ),
            Call::Update => format!(
                "{random_n}\\set v random(1, 1000000000)\n\
                 UPDATE customers SET name = 'Customer Number ' || {n} || ' v' || \
                 CAST(:v AS text), revision = revision + 1, update_time = now() \
                 WHERE app_id = '{APP}' AND id = {id};\n"
            ),
        }
    }

    /// `PGOPTIONS` for pgbench: the page function takes its app from the
    /// session's `customers.app_id`, as it takes it from the service's
    /// transaction.
    fn pgoptions(self) -> Option<String> {
        matches!(self, Call::Search).then(|| format!("-c customers.app_id={APP}"))
    }
}

/// The numbers searched for: "customer<q>" with q in the second-lowest
/// decade of 1..=customers matches q and q0 to q9 (about 11 customers).
fn search_range(customers: u64) -> (u64, u64) {
    let low = (customers / 100).max(1);
    (low, (customers / 10 - 1).max(low))
}

fn status(status: tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

fn same_customer(customer: Option<&pb::Customer>, expected: &str) -> Result<(), String> {
    match customer {
        Some(customer) if customer.id == expected => Ok(()),
        Some(customer) => Err(format!("got {} instead of {expected}", customer.id)),
        None => Err("no customer in the response".into()),
    }
}

// ---------------------------------------------------------------------------
// Measuring

/// A `ListCustomersResponse` left undecoded: its one field is skipped, its
/// bytes taken and dropped, as the COPY's rows are.
#[derive(Clone, PartialEq, prost::Message)]
struct Undecoded {}

/// What one listing stream did.
struct Streamed {
    received: u64,
    /// The messages' bytes, as decoded (none when left undecoded).
    bytes: usize,
    seconds: f64,
    /// The service's CPU time, then PostgreSQL's, while it ran.
    cpu: Duration,
    pg_cpu: Duration,
    error: Option<String>,
}

impl Streamed {
    fn rows_per_s(&self) -> f64 {
        self.received as f64 / self.seconds
    }

    fn cpu_us_per_row(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() * 1e6 / self.received.max(1) as f64
    }
}

/// What every measurement shares.
struct Bench {
    /// The service's address (`http://127.0.0.1:<port>`).
    endpoint: String,
    /// Clients over `CHANNELS` connections to the service.
    clients: Vec<Client>,
    /// The first of those connections (for the listing's own clients).
    channel: Channel,
    auth: Auth,
    /// Customers seeded: calls pick one of 1 to this.
    customers: u64,
    /// Length of each measurement.
    duration: Duration,
    pgbench: PgBench,
    /// The service's process, whose CPU time is counted.
    service_pid: u32,
    /// The tables' owner, for the WAL statistics.
    db: tokio_postgres::Client,
}

/// The cluster's WAL written so far, every process's (the checkpointer's
/// and autovacuum's included): its bytes exactly (the insert position), its
/// full-page images as `pg_stat_wal` counts them, which is as each backend
/// reports them, a second or more after the fact for a busy connection (a
/// rough figure).
#[derive(Clone, Copy)]
struct Wal {
    bytes: f64,
    full_page_images: f64,
}

impl Wal {
    async fn now(db: &tokio_postgres::Client) -> anyhow::Result<Self> {
        let row = db
            .query_one(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8, \
                 wal_fpi::float8 FROM pg_stat_wal",
                &[],
            )
            .await?;
        Ok(Self {
            bytes: row.get(0),
            full_page_images: row.get(1),
        })
    }

    /// The WAL written from `self` to `later`, per call, as a phrase.
    fn per_call(self, later: Wal, calls: f64) -> String {
        let calls = calls.max(1.0);
        format!(
            "{:.1} kB ({:.1} full-page images)",
            (later.bytes - self.bytes) / calls / 1000.0,
            (later.full_page_images - self.full_page_images) / calls
        )
    }
}

/// One line of the table.
struct Row {
    operation: &'static str,
    /// Calls/s (or rows/s when `rows` is set): successful calls only.
    service: f64,
    rows: bool,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    errors: u64,
    /// CPU time of the service's process per call (or per row), in µs.
    service_cpu_us: f64,
    /// PostgreSQL's CPU time per call (or per row) while the service ran.
    service_pg_cpu_us: f64,
    /// pgbench's tps (or COPY's rows/s); `None` when it failed.
    postgres: Option<f64>,
    /// pgbench's latency percentiles (from its sampled transaction log).
    postgres_p50_ms: Option<f64>,
    postgres_p99_ms: Option<f64>,
    /// PostgreSQL's CPU time per transaction (or per row) under pgbench
    /// (or the COPY).
    postgres_cpu_us: Option<f64>,
}

/// What the service's callers achieved.
struct Measured {
    /// Calls made, errors included.
    calls: f64,
    calls_per_s: f64,
    /// Latency percentiles of the successful calls; `None` if there were
    /// none.
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    errors: u64,
    first_error: Option<String>,
    /// CPU time of the service's process per call, errors included.
    cpu_us_per_call: f64,
    /// CPU time of PostgreSQL's processes per call, errors included.
    pg_cpu_us_per_call: f64,
}

impl Bench {
    /// When the service reaches PostgreSQL through a Unix-domain socket (the
    /// embedded mode's), pgbench's minimal lookup over that socket too, as a
    /// note: the table's pgbench figures are over TCP, as a client of the
    /// embedded server connects, and a socket costs both ends less.
    async fn minimal_lookup_over_socket(
        &self,
        service_url: &str,
        rows: &[Row],
        notes: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        let config = tokio_postgres::Config::from_str(service_url)?;
        let [tokio_postgres::config::Host::Unix(dir)] = config.get_hosts() else {
            return Ok(());
        };
        let over_socket = PgBench {
            host: dir.display().to_string(),
            ..self.pgbench.clone()
        };
        let result = over_socket
            .run(&Call::GetById.script(self.customers), None)
            .await?;
        let Some(tps) = result.tps else {
            notes.push(format!(
                "pgbench's minimal lookup over the Unix socket failed: {}",
                result.failure.as_deref().unwrap_or("no tps")
            ));
            return Ok(());
        };
        let ratios = rows
            .iter()
            .filter(|row| row.operation.starts_with(Call::GetById.name()))
            .map(|row| format!("{} {:.2}", row.operation, row.service / tps))
            .collect::<Vec<_>>()
            .join(", ");
        notes.push(format!(
            "The service connects through the cluster's Unix socket; the pgbench \
             figures above, over TCP. pgbench's minimal lookup over the socket: \
             {tps:.0} tps; ratio to it: {ratios}"
        ));
        Ok(())
    }

    /// A `CHECKPOINT`, as the tables' owner (it takes a superuser, or
    /// `pg_checkpoint`): noted, not fatal, where the owner may not.
    async fn checkpoint(&self, notes: &mut Vec<String>) {
        if let Err(e) = self.db.batch_execute("CHECKPOINT").await {
            let note = format!("no CHECKPOINT before the writes: {e}");
            if !notes.contains(&note) {
                notes.push(note);
            }
        }
    }

    /// The service's figures for `call` (after a warm-up), then pgbench's.
    ///
    /// A write starts each side from a checkpoint: the first change to a
    /// page after one writes the whole page to the WAL, so whichever side
    /// ran first after the last checkpoint would pay for nearly all of them.
    async fn compare(&self, call: Call, notes: &mut Vec<String>) -> anyhow::Result<Row> {
        self.measure(call, WARM_UP).await?;
        if call.writes() {
            self.checkpoint(notes).await;
        }
        let wal_before = Wal::now(&self.db).await?;
        let service = self.measure(call, self.duration).await?;
        if let Some(error) = &service.first_error {
            notes.push(format!(
                "{}: {} errors; the first: {error}",
                call.name(),
                service.errors
            ));
        }
        if call.writes() {
            self.checkpoint(notes).await;
        }
        let wal_between = Wal::now(&self.db).await?;
        let postgres = self
            .pgbench
            .run(&call.script(self.customers), call.pgoptions().as_deref())
            .await?;
        let wal_after = Wal::now(&self.db).await?;
        notes.push(format!(
            "{}: WAL per call: service {}, pgbench {}",
            call.name(),
            wal_before.per_call(wal_between, service.calls),
            wal_between.per_call(wal_after, postgres.transactions.unwrap_or(0.0))
        ));
        if let Some(failure) = &postgres.failure {
            notes.push(format!("{}: pgbench: {failure}", call.name()));
        }
        println!(
            "{:<38} service {:>8.0} calls/s ({} errors); pgbench {}",
            call.name(),
            service.calls_per_s,
            service.errors,
            postgres
                .tps
                .map_or_else(|| "failed".into(), |tps| format!("{tps:.0} tps"))
        );
        Ok(Row {
            operation: call.name(),
            service: service.calls_per_s,
            rows: false,
            p50_ms: service.p50_ms,
            p99_ms: service.p99_ms,
            errors: service.errors,
            service_cpu_us: service.cpu_us_per_call,
            service_pg_cpu_us: service.pg_cpu_us_per_call,
            postgres: postgres.tps,
            postgres_p50_ms: postgres.p50_ms,
            postgres_p99_ms: postgres.p99_ms,
            postgres_cpu_us: postgres.cpu_us,
        })
    }

    /// `CALLERS` callers, spread over the connections, each making `call`
    /// back to back until `duration` has passed.
    async fn measure(&self, call: Call, duration: Duration) -> anyhow::Result<Measured> {
        let cpu_before = cpu_time(self.service_pid)?;
        let pg_cpu_before = postgres_cpu_time()?;
        let started = Instant::now();
        let deadline = started + duration;
        let mut tasks = Vec::new();
        for caller in 0..CALLERS {
            let mut client = self.clients[caller % self.clients.len()].clone();
            let auth = self.auth.clone();
            let customers = self.customers;
            tasks.push(tokio::spawn(async move {
                let mut latencies_ms = Vec::new();
                let mut errors = 0u64;
                let mut first_error = None;
                while Instant::now() < deadline {
                    let at = Instant::now();
                    match call.once(&mut client, &auth, customers).await {
                        Ok(()) => latencies_ms.push(at.elapsed().as_secs_f64() * 1000.0),
                        Err(error) => {
                            errors += 1;
                            first_error.get_or_insert(error);
                        }
                    }
                }
                (latencies_ms, errors, first_error)
            }));
        }
        let mut latencies_ms = Vec::new();
        let mut errors = 0;
        let mut first_error = None;
        for task in tasks {
            match task.await {
                Ok((latencies, caller_errors, caller_first)) => {
                    latencies_ms.extend(latencies);
                    errors += caller_errors;
                    first_error = first_error.or(caller_first);
                }
                Err(panic) => {
                    errors += 1;
                    first_error.get_or_insert(format!("a caller panicked: {panic}"));
                }
            }
        }
        // Calls still running at the deadline were waited for: the rate is
        // over the whole time taken.
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = cpu_time(self.service_pid)? - cpu_before;
        let pg_cpu = postgres_cpu_time()? - pg_cpu_before;
        let calls = latencies_ms.len() as u64 + errors;
        latencies_ms.sort_by(f64::total_cmp);
        let at = |q: f64| match latencies_ms.len() {
            0 => None,
            len => Some(latencies_ms[((len - 1) as f64 * q) as usize]),
        };
        Ok(Measured {
            calls: calls as f64,
            calls_per_s: latencies_ms.len() as f64 / elapsed,
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            errors,
            first_error,
            cpu_us_per_call: cpu.as_secs_f64() * 1e6 / calls.max(1) as f64,
            pg_cpu_us_per_call: pg_cpu.as_secs_f64() * 1e6 / calls.max(1) as f64,
        })
    }

    /// `call` (a GetCustomer) driven by h2load instead of the benchmark's
    /// tonic callers: the same 32 concurrent calls over 4 connections, from
    /// a client that costs the shared cores much less. h2load sends one
    /// body, so every call reads the same customer (pgbench's reads are
    /// random: both hit the cache). `None` when h2load is not installed
    /// (`scripts/ensure-h2load`).
    ///
    /// h2load sees HTTP statuses, not gRPC ones: every response must carry
    /// the customer's message, checked by the DATA bytes received.
    async fn h2load_get(&self, call: Call, notes: &mut Vec<String>) -> anyhow::Result<Option<Row>> {
        let name = match call {
            Call::GetById => "GetCustomer by id, h2load",
            Call::GetByExternalId => "GetCustomer by external id, h2load",
            _ => anyhow::bail!("h2load drives GetCustomer only"),
        };
        let Some(h2load) = find_on_path("h2load") else {
            notes.push(format!(
                "{name}: h2load is not installed (scripts/ensure-h2load): left out"
            ));
            return Ok(None);
        };
        let n = self.customers / 2;
        let lookup = match call {
            Call::GetById => Lookup::Id(customer_id(n)),
            _ => Lookup::ExternalId(format!("user_{n}")),
        };
        let request = pb::GetCustomerRequest {
            lookup: Some(lookup),
        };
        // The answer every call must get, and its gRPC frame's length.
        let expected = self.clients[0]
            .clone()
            .get_customer(authorized(request.clone(), &self.auth))
            .await?
            .into_inner();
        same_customer(expected.customer.as_ref(), &customer_id(n)).map_err(anyhow::Error::msg)?;
        let response_frame = 5 + prost::Message::encoded_len(&expected) as u64;
        let body = prost::Message::encode_to_vec(&request);
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        let body_path = self.pgbench.dir.join("h2load-request.bin");
        let log_path = self.pgbench.dir.join("h2load-requests.log");
        std::fs::write(&body_path, frame)?;

        let cpu_before = cpu_time(self.service_pid)?;
        let pg_cpu_before = postgres_cpu_time()?;
        let output = tokio::process::Command::new(h2load)
            .arg(format!("-D{}", self.duration.as_secs()))
            .arg(format!("-c{CHANNELS}"))
            .arg(format!("-m{}", CALLERS / CHANNELS))
            .arg("-t1")
            .arg("-d")
            .arg(&body_path)
            .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
            .arg("-H")
            .arg(format!("authorization: {}", self.auth.to_str()?))
            .arg(format!("--log-file={}", log_path.display()))
            .arg(format!(
                "{}/customers.v1.CustomerService/GetCustomer",
                self.endpoint
            ))
            .output()
            .await?;
        let cpu = cpu_time(self.service_pid)? - cpu_before;
        let pg_cpu = postgres_cpu_time()? - pg_cpu_before;
        let stdout = String::from_utf8_lossy(&output.stdout);
        anyhow::ensure!(
            output.status.success(),
            "h2load exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let h2 = H2loadSummary::parse(&stdout)?;
        let mut latencies_ms: Vec<f64> = std::fs::read_to_string(&log_path)?
            .lines()
            .filter_map(|line| line.split('\t').nth(2)?.parse::<f64>().ok())
            .map(|us| us / 1000.0)
            .collect();
        std::fs::remove_file(&log_path)?;
        latencies_ms.sort_by(f64::total_cmp);
        let at = |q: f64| match latencies_ms.len() {
            0 => None,
            len => Some(latencies_ms[((len - 1) as f64 * q) as usize]),
        };
        // A call that failed at the gRPC level has no message: it shows as
        // DATA bytes missing.
        let answered = (h2.data_bytes / response_frame).min(h2.succeeded);
        let errors = h2.requests - answered;
        if errors > 0 {
            notes.push(format!(
                "{name}: {errors} of {} calls without the customer's message \
                 ({} DATA bytes, {response_frame} per answer)",
                h2.requests, h2.data_bytes
            ));
        }
        let postgres = self
            .pgbench
            .run(&call.script(self.customers), call.pgoptions().as_deref())
            .await?;
        println!(
            "{name:<38} service {:>8.0} calls/s ({errors} errors); pgbench {}",
            answered as f64 / h2.seconds,
            postgres
                .tps
                .map_or_else(|| "failed".into(), |tps| format!("{tps:.0} tps"))
        );
        Ok(Some(Row {
            operation: name,
            service: answered as f64 / h2.seconds,
            rows: false,
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            errors,
            service_cpu_us: cpu.as_secs_f64() * 1e6 / h2.requests.max(1) as f64,
            service_pg_cpu_us: pg_cpu.as_secs_f64() * 1e6 / h2.requests.max(1) as f64,
            postgres: postgres.tps,
            postgres_p50_ms: postgres.p50_ms,
            postgres_p99_ms: postgres.p99_ms,
            postgres_cpu_us: postgres.cpu_us,
        }))
    }

    /// Every active customer through one ListCustomers stream (the default
    /// request), then the same rows in the same order through a binary COPY.
    /// Two rows: the stream read as the COPY is (each message's bytes taken
    /// and dropped: like for like), then the stream read by a client that
    /// decodes every message into a `pb::Customer`, as an application does
    /// (the client shares the cores, so its decoding slows the service).
    async fn list_everything(
        &self,
        db: &tokio_postgres::Client,
        notes: &mut Vec<String>,
    ) -> anyhow::Result<[Row; 2]> {
        const NAME: &str = "ListCustomers, every customer";
        const DECODED: &str = "ListCustomers, every customer, decoded";
        let select = format!(
            "SELECT * FROM customers WHERE app_id = '{APP}' AND state = 'active' \
             ORDER BY create_time, id"
        );
        let expected: i64 = db
            .query_one(&format!("SELECT count(*) FROM ({select}) AS every"), &[])
            .await?
            .get(0);
        let expected = expected as u64;

        let undecoded = self.stream_everything::<Undecoded>(expected).await?;
        let decoded = self
            .stream_everything::<pb::ListCustomersResponse>(expected)
            .await?;

        // The COPY's bytes are read and dropped.
        let copy_cpu_before = postgres_cpu_time()?;
        let started = Instant::now();
        let copy = db
            .copy_out(&format!("COPY ({select}) TO STDOUT (FORMAT binary)"))
            .await?;
        futures_util::pin_mut!(copy);
        let mut bytes = 0usize;
        while let Some(chunk) = copy.next().await {
            bytes += chunk?.len();
        }
        let copy_elapsed = started.elapsed().as_secs_f64();
        let copy_cpu = postgres_cpu_time()? - copy_cpu_before;
        let copy_rows_per_s = expected as f64 / copy_elapsed;
        notes.push(format!(
            "{NAME}: {} customers streamed in {:.2} s, and {} in {:.2} s decoded ({} MiB \
             of messages); COPY of {expected} rows ({} MiB) in {copy_elapsed:.2} s",
            undecoded.received,
            undecoded.seconds,
            decoded.received,
            decoded.seconds,
            decoded.bytes >> 20,
            bytes >> 20
        ));
        let rows = [(NAME, undecoded), (DECODED, decoded)].map(|(operation, streamed)| {
            if let Some(error) = &streamed.error {
                notes.push(format!("{operation}: {error}"));
            }
            println!(
                "{operation:<38} service {:>8.0} rows/s; COPY {copy_rows_per_s:.0} rows/s",
                streamed.rows_per_s()
            );
            Row {
                operation,
                service: streamed.rows_per_s(),
                rows: true,
                p50_ms: None,
                p99_ms: None,
                errors: u64::from(streamed.error.is_some()),
                service_cpu_us: streamed.cpu_us_per_row(streamed.cpu),
                service_pg_cpu_us: streamed.cpu_us_per_row(streamed.pg_cpu),
                postgres: Some(copy_rows_per_s),
                postgres_p50_ms: None,
                postgres_p99_ms: None,
                postgres_cpu_us: Some(copy_cpu.as_secs_f64() * 1e6 / expected.max(1) as f64),
            }
        });
        Ok(rows)
    }

    /// One ListCustomers stream of every customer, its messages decoded as
    /// `M` (the default request; `expected` customers).
    async fn stream_everything<M>(&self, expected: u64) -> anyhow::Result<Streamed>
    where
        M: prost::Message + Default + Send + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(
            "/customers.v1.CustomerService/ListCustomers",
        );
        let codec = tonic_prost::ProstCodec::<pb::ListCustomersRequest, M>::default();
        let request = authorized(pb::ListCustomersRequest::default(), &self.auth);

        let cpu_before = cpu_time(self.service_pid)?;
        let pg_cpu_before = postgres_cpu_time()?;
        let started = Instant::now();
        let (mut received, mut bytes) = (0u64, 0usize);
        let mut error = None;
        grpc.ready().await?;
        match grpc.server_streaming(request, path, codec).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(message)) => {
                            received += 1;
                            bytes += message.encoded_len();
                        }
                        Ok(None) => break,
                        Err(e) => {
                            error = Some(status(e));
                            break;
                        }
                    }
                }
            }
            Err(e) => error = Some(status(e)),
        }
        let seconds = started.elapsed().as_secs_f64();
        if error.is_none() && received != expected {
            error = Some(format!("streamed {received} of {expected} customers"));
        }
        Ok(Streamed {
            received,
            bytes,
            seconds,
            cpu: cpu_time(self.service_pid)? - cpu_before,
            pg_cpu: postgres_cpu_time()? - pg_cpu_before,
            error,
        })
    }
}

// ---------------------------------------------------------------------------
// pgbench

/// pgbench against the bench database, with `CALLERS` clients.
#[derive(Clone)]
struct PgBench {
    program: PathBuf,
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
    dbname: String,
    /// Where the scripts are written.
    dir: PathBuf,
    seconds: u64,
}

/// pgbench's transaction logs: `<dir>/<LOG_PREFIX>.<pid>[.<thread>]`.
const LOG_PREFIX: &str = "pgbench-log";
/// The share of transactions pgbench logs.
const LOG_SAMPLING: f64 = 0.2;

/// What one pgbench run reported.
struct PgBenchResult {
    tps: Option<f64>,
    /// Transactions run.
    transactions: Option<f64>,
    /// Latency percentiles of the sampled transactions.
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    /// PostgreSQL's CPU time per transaction.
    cpu_us: Option<f64>,
    /// Why the run did not go cleanly (exit status, failed transactions).
    failure: Option<String>,
}

impl PgBench {
    fn new(url: &str, dir: &Path, seconds: u64) -> anyhow::Result<Self> {
        let config = tokio_postgres::Config::from_str(url)?;
        let host = match config.get_hosts() {
            [tokio_postgres::config::Host::Tcp(host)] => host.clone(),
            _ => anyhow::bail!("expected one TCP host in the database URL"),
        };
        Ok(Self {
            program: find_pgbench()?,
            host,
            port: config.get_ports().first().copied().unwrap_or(5432),
            user: config.get_user().unwrap_or("postgres").to_owned(),
            password: config
                .get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            dbname: config.get_dbname().unwrap_or("postgres").to_owned(),
            dir: dir.to_owned(),
            seconds,
        })
    }

    fn args(&self) -> Vec<String> {
        vec![
            "-n".into(), // no pgbench tables to vacuum
            "-M".into(),
            "prepared".into(),
            "-c".into(),
            CALLERS.to_string(),
            "-j".into(),
            "2".into(),
            "-T".into(),
            self.seconds.to_string(),
            // Every fifth transaction's latency, for the percentiles.
            "--log".into(),
            format!("--sampling-rate={LOG_SAMPLING}"),
        ]
    }

    /// The latencies (ms) in the transaction logs of the last run, whose
    /// files are removed. A line is `client transaction latency_us script
    /// epoch_s epoch_us`.
    fn take_logged_latencies(&self) -> anyhow::Result<Vec<f64>> {
        let mut latencies = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let is_log = path
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(LOG_PREFIX));
            if !is_log {
                continue;
            }
            for line in std::fs::read_to_string(&path)?.lines() {
                if let Some(us) = line
                    .split_whitespace()
                    .nth(2)
                    .and_then(|f| f.parse::<f64>().ok())
                {
                    latencies.push(us / 1000.0);
                }
            }
            std::fs::remove_file(&path)?;
        }
        Ok(latencies)
    }

    /// The command, for the record (scripts and connection left out).
    fn command_line(&self) -> String {
        format!("pgbench {} -f <script>", self.args().join(" "))
    }

    /// Runs `script`; `pgoptions` sets session settings.
    async fn run(&self, script: &str, pgoptions: Option<&str>) -> anyhow::Result<PgBenchResult> {
        let path = self.dir.join("pgbench-script.sql");
        std::fs::write(&path, script)?;
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(self.args())
            .arg("-f")
            .arg(&path)
            .args(["-h", &self.host, "-p", &self.port.to_string()])
            .args(["-U", &self.user, &self.dbname]);
        if let Some(password) = &self.password {
            command.env("PGPASSWORD", password);
        }
        if let Some(options) = pgoptions {
            command.env("PGOPTIONS", options);
        }
        let log_prefix = self.dir.join(LOG_PREFIX);
        command.arg(format!("--log-prefix={}", log_prefix.display()));
        let cpu_before = postgres_cpu_time()?;
        let output = command.output().await?;
        let cpu = postgres_cpu_time()? - cpu_before;
        let mut latencies_ms = self.take_logged_latencies()?;
        latencies_ms.sort_by(f64::total_cmp);
        let at = |q: f64| match latencies_ms.len() {
            0 => None,
            len => Some(latencies_ms[((len - 1) as f64 * q) as usize]),
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        // "tps = 12345.678901 (without initial connection time)",
        // "latency average = 2.590 ms",
        // "number of failed transactions: 0 (0.000%)".
        let value = |prefix: &str| -> Option<f64> {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(prefix))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        };
        let failed = value("number of failed transactions: ").unwrap_or(0.0);
        let failure = if !output.status.success() {
            let reason = stderr
                .lines()
                .find(|l| l.contains("error") || l.contains("ERROR"))
                .unwrap_or("no message");
            Some(format!("exited with {}: {reason}", output.status))
        } else if failed > 0.0 {
            Some(format!("{failed} failed transactions"))
        } else {
            None
        };
        Ok(PgBenchResult {
            tps: value("tps = ").filter(|_| output.status.success()),
            transactions: value("number of transactions actually processed: "),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            cpu_us: value("number of transactions actually processed: ")
                .filter(|&n| n > 0.0)
                .map(|n| cpu.as_secs_f64() * 1e6 / n),
            failure,
        })
    }
}

/// What h2load printed of a run.
struct H2loadSummary {
    /// "finished in 10.00s, ...".
    seconds: f64,
    /// "requests: N total, ..., S succeeded, ...".
    requests: u64,
    succeeded: u64,
    /// "traffic: ... total, ... headers (...), ... (D) data".
    data_bytes: u64,
}

impl H2loadSummary {
    fn parse(stdout: &str) -> anyhow::Result<Self> {
        let line = |prefix: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(prefix))
                .ok_or_else(|| anyhow::anyhow!("h2load printed no {prefix:?} line:\n{stdout}"))
        };
        let number = |text: &str| -> anyhow::Result<u64> {
            text.trim_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .map_err(|e| anyhow::anyhow!("h2load: {text:?}: {e}"))
        };
        let seconds = line("finished in ")?
            .split('s')
            .next()
            .unwrap_or_default()
            .parse()?;
        let requests = line("requests: ")?;
        let field = |name: &str| -> anyhow::Result<u64> {
            let before = requests
                .split(',')
                .find(|part| part.trim().ends_with(name))
                .ok_or_else(|| anyhow::anyhow!("h2load: no {name:?} in {requests:?}"))?;
            number(before.trim().trim_end_matches(name))
        };
        // "... 9.15MB (9598695) data": the exact count is in parentheses.
        let traffic = line("traffic: ")?;
        let data = traffic
            .rsplit_once('(')
            .and_then(|(_, rest)| rest.split_once(')'))
            .map(|(count, _)| count)
            .ok_or_else(|| anyhow::anyhow!("h2load: no data bytes in {traffic:?}"))?;
        Ok(Self {
            seconds,
            requests: field("total")?,
            succeeded: field("succeeded")?,
            data_bytes: number(data)?,
        })
    }
}

/// `program` in one of `PATH`'s directories.
fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

/// pgbench ships beside `initdb` in PostgreSQL's bin directory, which may
/// be reached through a symbolic link (`/usr/local/bin/initdb`).
fn find_pgbench() -> anyhow::Result<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(bin) = embedded_pg::find_bin_dir() {
        if let Some(dir) = bin
            .join("initdb")
            .canonicalize()
            .ok()
            .and_then(|initdb| initdb.parent().map(Path::to_owned))
        {
            dirs.push(dir);
        }
        dirs.push(bin);
    }
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output()
        && output.status.success()
    {
        dirs.push(PathBuf::from(
            String::from_utf8_lossy(&output.stdout).trim(),
        ));
    }
    dirs.into_iter()
        .map(|dir| dir.join("pgbench"))
        .find(|path| path.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!("pgbench not found beside initdb nor in `pg_config --bindir`")
        })
}

// ---------------------------------------------------------------------------
// The table

/// The table: the service's figures, PostgreSQL's, and their ratio (above 1
/// would mean the service outran PostgreSQL alone).
fn print_table(rows: &[Row]) {
    let cell = |value: Option<f64>, decimals: usize| {
        value.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
    };
    // Per row (the listing) the figures are a few µs: one decimal there.
    let micros = |value: Option<f64>| match value {
        None => "-".to_owned(),
        Some(v) if v < 10.0 => format!("{v:.1} µs"),
        Some(v) => format!("{v:.0} µs"),
    };
    println!(
        "{:<37} {:>8} {:<7} {:>6} {:>6} {:>3} {:>7} {:>7} | {:>7} {:<6} {:>6} {:>6} {:>7} | {:>5}",
        "operation",
        "service",
        "",
        "p50 ms",
        "p99 ms",
        "err",
        "svc CPU",
        "PG CPU",
        "pgbench",
        "",
        "p50 ms",
        "p99 ms",
        "PG CPU",
        "ratio"
    );
    for row in rows {
        let (unit, pg_unit) = match row.rows {
            true => ("rows/s", "rows/s"),
            false => ("calls/s", "tps"),
        };
        println!(
            "{:<37} {:>8.0} {:<7} {:>6} {:>6} {:>3} {:>7} {:>7} | {:>7} {:<6} {:>6} {:>6} {:>7} | {:>5}",
            row.operation,
            row.service,
            unit,
            cell(row.p50_ms, 2),
            cell(row.p99_ms, 2),
            row.errors,
            micros(Some(row.service_cpu_us)),
            micros(Some(row.service_pg_cpu_us)),
            cell(row.postgres, 0),
            pg_unit,
            cell(row.postgres_p50_ms, 2),
            cell(row.postgres_p99_ms, 2),
            micros(row.postgres_cpu_us),
            cell(row.postgres.map(|pg| row.service / pg), 2),
        );
    }
    println!(
        "\nsvc CPU: the service process's CPU time per call (per row for the full listing), all \
         threads.\nPG CPU: every PostgreSQL process's CPU time per call (per row), while the service \
         ran, then while pgbench (or the COPY) ran.\npgbench's percentiles come from its log of \
         every {}th transaction. ratio: service / pgbench.",
        (1.0 / LOG_SAMPLING).round()
    );
}
