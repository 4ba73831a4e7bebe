//! Shared test setup: one throwaway PostgreSQL cluster per test run (or the
//! server of `DATABASE_URL` when set), a template database migrated once, a
//! fresh database per test copied from it, and the service on a real socket
//! with a real tonic client.

#![allow(dead_code)]

use std::{
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, OnceLock},
    time::Duration,
};

use customers::{
    domain::{AppId, CustomerId},
    embedded_pg::{Cluster, ClusterOptions, process_alive},
    pb::{self, customer_service_client::CustomerServiceClient},
    server::ServeOptions,
    service::{CustomerApi, EventOptions, StreamOptions, StreamStats},
    storage::{self, Pool, PoolOptions},
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use tokio::{net::TcpListener, sync::OnceCell, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::{
    Code, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, ClientTlsConfig},
};
use tonic_types::StatusExt;

/// The server every test database lives on.
struct TestServerDb {
    /// URL of the server with the database name left as `{db}`.
    url_pattern: String,
    /// Kept alive for the whole run; dies with the process.
    _cluster: Option<Cluster>,
}

static SERVER_DB: OnceLock<TestServerDb> = OnceLock::new();
static TEMPLATE: OnceCell<String> = OnceCell::const_new();

fn server_db() -> &'static TestServerDb {
    SERVER_DB.get_or_init(|| {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            return TestServerDb {
                url_pattern: with_database(&url, "{db}"),
                _cluster: None,
            };
        }
        remove_stale_clusters();
        let root = std::env::temp_dir().join(format!("customers-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let cluster = Cluster::start(&ClusterOptions {
            root,
            throwaway: true,
            port: None,
            tls: None,
        })
        .expect("starting the test PostgreSQL cluster");
        TestServerDb {
            url_pattern: cluster.url("{db}"),
            _cluster: Some(cluster),
        }
    })
}

/// Clusters of earlier runs die with their test process; their directories
/// are removed here.
fn remove_stale_clusters() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("customers-test-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !process_alive(pid) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// `url` with its database name replaced.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{db}", &base[..host_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

pub fn database_url(db: &str) -> String {
    server_db().url_pattern.replace("{db}", db)
}

/// The admin URLs of the Citus workers behind `DATABASE_URL` (the
/// coordinator), from `CITUS_WORKER_URLS` (comma-separated): set by
/// `scripts/citus-check` to run the suite on a Citus cluster.
pub fn citus_workers() -> Vec<String> {
    std::env::var("CITUS_WORKER_URLS")
        .map(|v| {
            v.split(',')
                .filter(|u| !u.trim().is_empty())
                .map(|u| u.trim().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Host and port of a `postgres://user@host:port/db` URL.
fn host_port(url: &str) -> (String, u16) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = host_port.rsplit_once(':').unwrap_or((host_port, "5432"));
    (host.to_owned(), port.parse().expect("a port"))
}

/// A database of one test, dropped (`WITH (FORCE)`) when this is.
pub struct TestDatabase {
    pub url: String,
    name: String,
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        for worker in citus_workers() {
            let admin = with_database(&worker, "postgres");
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async {
                    let mut conn = AsyncPgConnection::establish(&admin).await?;
                    conn.batch_execute(&sql).await?;
                    anyhow::Ok(())
                })
            })
            .join();
        }
        let admin = database_url("postgres");
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // A thread and runtime of its own: drop cannot await, and the test's
        // runtime may be shutting down.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut conn = AsyncPgConnection::establish(&admin).await?;
                conn.batch_execute(&sql).await?;
                anyhow::Ok(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}

/// A new, migrated, empty database, dropped when the result is.
pub async fn fresh_database() -> TestDatabase {
    let workers = citus_workers();
    if !workers.is_empty() {
        return fresh_citus_database(&workers).await;
    }
    let admin = database_url("postgres");
    let template = TEMPLATE
        .get_or_init(|| async {
            let name = format!("customers_template_{}", std::process::id());
            storage::create_database(&admin, &name, None)
                .await
                .expect("creating the template database");
            storage::migrate(&database_url(&name))
                .await
                .expect("migrating the template database");
            name
        })
        .await;
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    storage::create_database(&admin, &name, Some(template))
        .await
        .expect("creating a test database");
    TestDatabase {
        url: database_url(&name),
        name,
    }
}

/// On Citus, a database is a cluster of its own (its metadata lives in it):
/// the database on the coordinator and on every worker, the extension in
/// each, the workers added, then the migrations, which distribute the
/// tables. The service's role must log in to the workers (the coordinator
/// opens its connections there as the current role): `citus-check` creates
/// it with LOGIN on every node and trusts local connections.
async fn fresh_citus_database(workers: &[String]) -> TestDatabase {
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    let coordinator = database_url("postgres");
    for admin in std::iter::once(coordinator.clone()).chain(workers.iter().cloned()) {
        storage::create_database(&with_database(&admin, "postgres"), &name, None)
            .await
            .expect("creating a test database");
        let mut conn = AsyncPgConnection::establish(&with_database(&admin, &name))
            .await
            .expect("connecting to a new test database");
        conn.batch_execute("CREATE EXTENSION citus").await.unwrap();
    }
    let url = database_url(&name);
    let mut conn = AsyncPgConnection::establish(&url).await.unwrap();
    let (host, port) = host_port(&coordinator);
    conn.batch_execute(&format!(
        "SELECT citus_set_coordinator_host('{host}', {port})"
    ))
    .await
    .unwrap();
    for worker in workers {
        let (host, port) = host_port(worker);
        conn.batch_execute(&format!("SELECT citus_add_node('{host}', {port})"))
            .await
            .unwrap();
    }
    {
        // One test database migrates at a time: the migrations grant roles,
        // and role memberships are shared by every database of the cluster
        // (two grants at once collide in pg_auth_members).
        static MIGRATING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _one_at_a_time = MIGRATING.lock().await;
        storage::migrate(&url).await.expect("migrating on Citus");
    }
    // Every app-scoped table is distributed by app, co-located with
    // customers; apps is a reference table.
    let distributed = count_on(
        &mut conn,
        "SELECT count(*) AS n FROM pg_dist_partition p
         WHERE p.partmethod = 'h' AND column_to_column_name(p.logicalrelid, p.partkey) = 'app_id'
           AND p.colocationid = (SELECT colocationid FROM pg_dist_partition
                                 WHERE logicalrelid = 'customers'::regclass)",
    )
    .await;
    assert_eq!(
        distributed, 5,
        "customers, customer_provider_ids, api_keys and the event tables"
    );
    let reference = count_on(
        &mut conn,
        "SELECT count(*) AS n FROM pg_dist_partition
         WHERE logicalrelid = 'apps'::regclass AND partmethod = 'n' AND repmodel = 't'",
    )
    .await;
    assert_eq!(reference, 1, "apps is a reference table");
    TestDatabase { url, name }
}

/// Adds an API key to every call.
#[derive(Clone)]
pub struct WithKey(MetadataValue<Ascii>);

impl Interceptor for WithKey {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A customer-service client that presents an API key.
pub type Client = CustomerServiceClient<InterceptedService<Channel, WithKey>>;

pub fn client(channel: Channel, key: &str) -> Client {
    CustomerServiceClient::with_interceptor(
        channel,
        WithKey(format!("Bearer {key}").parse().expect("an ASCII key")),
    )
}

/// Creates an API key of `app` in the database at `database_url`.
pub async fn create_key(database_url: &str, app: AppId) -> String {
    try_create_key(database_url, app)
        .await
        .expect("creating an API key")
}

async fn try_create_key(database_url: &str, app: AppId) -> Option<String> {
    let pool = storage::pool(database_url, &PoolOptions::default()).unwrap();
    let key = customers::admin::create_key(&pool, app).await.ok();
    pool.close();
    key.map(|k| k.reveal())
}

/// The service under test, on 127.0.0.1 with its own database.
pub struct TestService {
    /// A client of the default app.
    pub client: Client,
    /// The default app's key, which `client` presents.
    pub key: String,
    pub channel: Channel,
    pub address: std::net::SocketAddr,
    /// Where `GET /metrics` answers.
    pub metrics_address: std::net::SocketAddr,
    pub database_url: String,
    pub pool: Pool,
    pub stats: Arc<StreamStats>,
    /// The API the server serves (what the operator console shares).
    pub api: CustomerApi,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    /// The test's own database, dropped last.
    database: Option<TestDatabase>,
}

pub struct Options {
    pub stream: StreamOptions,
    /// Change events; `listen_url` defaults to the test's database.
    pub events: EventOptions,
    pub pool: PoolOptions,
    pub serve: ServeOptions,
    /// How the test client speaks TLS to a TLS server.
    pub client_tls: Option<ClientTlsConfig>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            stream: StreamOptions::default(),
            events: EventOptions::default(),
            pool: PoolOptions {
                max_size: 8,
                ..PoolOptions::default()
            },
            serve: ServeOptions {
                health_check_interval: Duration::from_millis(100),
                ..ServeOptions::default()
            },
            client_tls: None,
        }
    }
}

impl Options {
    /// Calls give up waiting for a database connection after 1 s.
    pub fn fail_fast() -> Self {
        Self {
            pool: PoolOptions {
                acquire_timeout: Duration::from_secs(1),
                ..PoolOptions::default()
            },
            ..Default::default()
        }
    }
}

impl TestService {
    pub async fn start() -> TestService {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> TestService {
        let database = fresh_database().await;
        let mut svc = Self::start_on(database.url.clone(), options).await;
        svc.database = Some(database);
        svc
    }

    /// Serves against any database URL (even one that does not answer).
    pub async fn start_on(database_url: String, options: Options) -> TestService {
        let pool = storage::pool(&database_url, &options.pool).expect("building the pool");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let mut events = options.events;
        events
            .listen_url
            .get_or_insert_with(|| database_url.clone());
        let api = CustomerApi::new(
            pool.clone(),
            options.stream,
            options.pool.statement_timeout,
            shutdown.clone(),
        )
        .with_events(events);
        let stats = api.stream_stats();
        let metrics_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics_address = metrics_listener.local_addr().unwrap();
        let registry = options.serve.metrics.registry(&api);
        tokio::spawn(customers::metrics::serve(
            metrics_listener,
            registry,
            shutdown.clone(),
        ));
        let client_tls = options.client_tls;
        // A database that does not answer gets a well-formed key that is
        // stored nowhere: checking it needs the database, so calls are
        // UNAVAILABLE, not UNAUTHENTICATED.
        let key = match try_create_key(&database_url, AppId::DEFAULT).await {
            Some(key) => key,
            None => customers::auth::ApiKey::generate(AppId::DEFAULT).reveal(),
        };
        let task = tokio::spawn(customers::server::serve(
            listener,
            api.clone(),
            options.serve,
        ));
        let channel = match client_tls {
            Some(tls) => Channel::from_shared(format!("https://localhost:{}", address.port()))
                .unwrap()
                .tls_config(tls)
                .unwrap(),
            None => Channel::from_shared(format!("http://{address}")).unwrap(),
        }
        .connect()
        .await
        .expect("connecting to the test server");
        TestService {
            metrics_address,
            client: client(channel.clone(), &key),
            key,
            channel,
            address,
            database_url,
            pool,
            stats,
            api,
            shutdown,
            task: Some(task),
            database: None,
        }
    }

    /// A direct connection to the test database, for checking what was
    /// stored behind the API.
    pub async fn sql(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.database_url)
            .await
            .expect("connecting to the test database")
    }

    /// `SELECT count(*)` of a query's rows.
    pub async fn count(&self, from_where: &str) -> i64 {
        count_on(
            &mut self.sql().await,
            &format!("SELECT count(*) AS n FROM {from_where}"),
        )
        .await
    }

    /// Customers whose row's copy of their provider ids differs from their
    /// keys in `customer_provider_ids`: none, if every write kept both.
    pub async fn provider_id_copies_out_of_step(&self) -> i64 {
        self.count(
            "customers AS c WHERE c.provider_ids <> coalesce(
                 (SELECT jsonb_object_agg(p.provider, p.provider_customer_id)
                  FROM customer_provider_ids AS p
                  WHERE p.app_id = c.app_id AND p.customer_id = c.id),
                 '{}')",
        )
        .await
    }

    /// Backends of this test's database that the service opened
    /// (`application_name = 'customers'`) and that match `condition`, a SQL
    /// condition on `pg_stat_activity` (`true` for all).
    pub async fn backends(&self, condition: &str) -> i64 {
        self.count(&format!(
            "pg_stat_activity WHERE datname = current_database()
             AND application_name = 'customers' AND pid <> pg_backend_pid() AND ({condition})"
        ))
        .await
    }

    /// The operator console of this service on 127.0.0.1 (pages of
    /// `page_size` customers; keys written through the test's database
    /// URL); returns its address and the operator token.
    pub async fn start_console(&self, page_size: usize) -> (std::net::SocketAddr, String) {
        let token = customers::console::generate_token();
        let key_pool = storage::pool(&self.database_url, &PoolOptions::default()).unwrap();
        let console = customers::console::Console::new(
            self.api.clone(),
            key_pool,
            customers::console::ConsoleOptions {
                token: token.clone(),
                session_ttl: Duration::from_secs(3600),
                page_size,
            },
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(customers::console::serve(
            listener,
            console,
            self.shutdown.clone(),
        ));
        (address, token)
    }

    /// Stops serving and waits for the server to return.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestService {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A second app of the service's database, and a client of it.
pub async fn other_app(svc: &TestService) -> (AppId, Client) {
    let pool = storage::pool(&svc.database_url, &PoolOptions::default()).unwrap();
    let app = customers::storage::apps::create_app(&pool, "other")
        .await
        .unwrap()
        .app_id();
    let key = create_key(&svc.database_url, app).await;
    (app, client(svc.channel.clone(), &key))
}

/// Inserts `n` customers of the default app straight into the table (fast),
/// with create times spread over 97 distinct seconds so that the order
/// depends on both the time and the id.
pub async fn seed(database_url: &str, n: usize) {
    let ids: Vec<uuid::Uuid> = (0..n).map(|_| CustomerId::generate().uuid()).collect();
    let mut conn = AsyncPgConnection::establish(database_url).await.unwrap();
    diesel::sql_query(
        "INSERT INTO customers (app_id, id, email, name, metadata, create_time, update_time)
         SELECT '00000000-0000-0000-0000-000000000000', id, 'bulk' || n || '@example.com',
                'Bulk ' || n, jsonb_build_object('parity', (n % 2)::text),
                now() - (n % 97) * interval '1 second', now()
         FROM unnest($1::uuid[]) WITH ORDINALITY AS t(id, n)",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(ids)
    .execute(&mut conn)
    .await
    .unwrap();
}

/// A client that grants a 64 KiB HTTP/2 window: hyper's default is 2 MiB,
/// which thousands of small customers fit in, so a server stream to the
/// default client can finish while the client reads nothing.
pub async fn small_window_client(svc: &TestService) -> Client {
    client(small_window_channel(svc.address).await, &svc.key)
}

/// A connection that grants a 64 KiB HTTP/2 window (see
/// [`small_window_client`]).
pub async fn small_window_channel(address: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap()
}

/// Opens a default listing and reads its first customer: a stream left
/// open, for tests of slow clients, limits and shutdown.
pub async fn open_listing(client: &mut Client) -> tonic::Streaming<pb::ListCustomersResponse> {
    let mut stream = client
        .list_customers(pb::ListCustomersRequest::default())
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap();
    stream
}

/// Reads a stream that must end in an error: what was sent is delivered
/// first, then the status, which is returned.
pub async fn final_status<T>(stream: &mut tonic::Streaming<T>) -> Status {
    loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended as if complete"),
            Err(status) => return status,
        }
    }
}

/// A customer with just an email.
pub fn customer(email: &str) -> pb::Customer {
    pb::Customer {
        email: email.to_owned(),
        ..Default::default()
    }
}

pub async fn create(
    client: &mut Client,
    customer: pb::Customer,
) -> Result<pb::CreateCustomerResponse, Status> {
    client
        .create_customer(pb::CreateCustomerRequest {
            customer: Some(customer),
        })
        .await
        .map(|r| r.into_inner())
}

/// Creates a customer that must not exist yet.
pub async fn create_new(client: &mut Client, customer: pb::Customer) -> pb::Customer {
    let response = create(client, customer).await.expect("create");
    assert!(response.created, "expected a new customer");
    response.customer.unwrap()
}

pub async fn get_by_id(client: &mut Client, id: &str) -> Result<pb::Customer, Status> {
    client
        .get_customer(pb::GetCustomerRequest {
            lookup: Some(pb::get_customer_request::Lookup::Id(id.to_owned())),
        })
        .await
        .map(|r| r.into_inner().customer.unwrap())
}

/// An UpdateCustomer request: `customer` (with its id) and a mask of
/// `paths` (none: no mask).
pub fn update_request(customer: pb::Customer, paths: &[&str]) -> pb::UpdateCustomerRequest {
    pb::UpdateCustomerRequest {
        customer: Some(customer),
        update_mask: (!paths.is_empty()).then(|| prost_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }),
        ..Default::default()
    }
}

pub async fn update(
    client: &mut Client,
    customer: pb::Customer,
    paths: &[&str],
) -> Result<pb::Customer, Status> {
    client
        .update_customer(update_request(customer, paths))
        .await
        .map(|r| r.into_inner().customer.unwrap())
}

pub async fn archive(client: &mut Client, id: &str, etag: &str) -> Result<pb::Customer, Status> {
    client
        .archive_customer(pb::ArchiveCustomerRequest {
            id: id.into(),
            etag: etag.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().customer.unwrap())
}

pub async fn delete(client: &mut Client, id: &str, etag: &str) -> Result<pb::Customer, Status> {
    client
        .delete_customer(pb::DeleteCustomerRequest {
            id: id.into(),
            etag: etag.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().customer.unwrap())
}

/// The customer of `id` with nothing else set: the base of an update.
pub fn patch(id: &str) -> pb::Customer {
    pb::Customer {
        id: id.to_owned(),
        ..Default::default()
    }
}

/// Drains a ListCustomers stream.
pub async fn list(
    client: &mut Client,
    request: pb::ListCustomersRequest,
) -> Result<Vec<pb::Customer>, Status> {
    let mut stream = client.list_customers(request).await?.into_inner();
    let mut out = Vec::new();
    while let Some(message) = stream.message().await? {
        out.push(message.customer.unwrap());
    }
    Ok(out)
}

/// Asserts a status's code and its `ErrorInfo` reason; returns the
/// `ErrorInfo` metadata.
pub fn assert_error(
    result: Result<impl std::fmt::Debug, Status>,
    code: Code,
    reason: &str,
) -> std::collections::HashMap<String, String> {
    let status = result.expect_err("expected an error");
    assert_eq!(status.code(), code, "{status:?}");
    let details = status.get_error_details();
    let info = details.error_info().expect("an ErrorInfo");
    assert_eq!(info.reason, reason, "{status:?}");
    assert_eq!(info.domain, "customers.v1");
    info.metadata.clone()
}

/// The fields named by the `BadRequest` of an INVALID_ARGUMENT status.
pub fn bad_fields(result: Result<impl std::fmt::Debug, Status>) -> Vec<String> {
    let status = result.expect_err("expected INVALID_ARGUMENT");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let details = status.get_error_details();
    assert_eq!(details.error_info().unwrap().reason, "INVALID_FIELDS");
    let mut fields: Vec<String> = details
        .bad_request()
        .expect("a BadRequest")
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect();
    fields.sort();
    fields
}

/// GET /metrics over a plain TCP connection.
pub async fn scrape(svc: &TestService) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(svc.metrics_address)
        .await
        .unwrap();
    socket
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// The `n` of a query `SELECT count(*) AS n ...` on `conn`.
pub async fn count_on(conn: &mut AsyncPgConnection, sql: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query(sql)
        .get_result::<Count>(conn)
        .await
        .expect("count query")
        .n
}

/// Reads a health `Watch` stream until it reports `want`, failing after
/// `within`.
pub async fn health_becomes(
    watch: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
    want: tonic_health::pb::health_check_response::ServingStatus,
    within: Duration,
) {
    tokio::time::timeout(within, async {
        while watch.message().await.unwrap().unwrap().status() != want {}
    })
    .await
    .unwrap_or_else(|_| panic!("health did not become {want:?} within {within:?}"));
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The service as a child process; killed if the test fails early.
pub struct Process(pub Child);

impl Process {
    /// The real binary with `env` (no DATABASE_URL or metrics listener unless given).
    pub fn start(env: &[(&str, &str)], stderr: Stdio) -> Process {
        let mut command = Command::new(env!("CARGO_BIN_EXE_customers"));
        command
            .env_remove("DATABASE_URL")
            .env("CUSTOMERS_METRICS_LISTEN", "off")
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in env {
            command.env(k, v);
        }
        Process(command.spawn().unwrap())
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), signal).unwrap();
    }

    pub async fn exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "did not exit within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Opens a health Watch once the server accepts connections.
pub async fn watch_health(port: u16) -> tonic::Streaming<tonic_health::pb::HealthCheckResponse> {
    let endpoint =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(channel) = endpoint.connect().await
            && let Ok(watch) = tonic_health::pb::health_client::HealthClient::new(channel)
                .watch(tonic_health::pb::HealthCheckRequest {
                    service: "customers.v1.CustomerService".into(),
                })
                .await
        {
            return watch.into_inner();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until an async `condition` holds, failing after `timeout`.
pub async fn eventually_async<F: Future<Output = bool>>(
    timeout: Duration,
    what: &str,
    mut condition: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `condition` holds, failing after `timeout`.
pub async fn eventually(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
