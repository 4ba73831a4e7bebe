//! Wiring: the database (given or embedded), migrations, the gRPC server
//! with health and reflection, readiness, and the shutdown sequence.

use std::{num::NonZeroU32, path::Path, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Identity, ServerTlsConfig};
use tonic_health::server::HealthReporter;

use crate::{
    admin,
    auth::{AuthLayer, AuthOptions, Authenticator},
    config::{ConfigError, OptionalAddr, ServeConfig},
    console::{self, Console, ConsoleOptions},
    embedded_pg::{Cluster, ClusterOptions},
    metrics::{self, Metrics},
    pb::{self, customer_service_server::CustomerServiceServer},
    service::{CustomerApi, EventOptions, StreamOptions},
    storage::{self, Pool, PoolOptions},
    telemetry,
};

/// Name of the database the embedded cluster serves.
const EMBEDDED_DATABASE: &str = "customers";

type Service = CustomerServiceServer<CustomerApi>;

/// How the gRPC server behaves, beyond the API itself.
#[derive(Clone)]
pub struct ServeOptions {
    /// How long the drain after SIGTERM may take before we exit anyway.
    pub shutdown_grace: Duration,
    /// How often readiness pings the database.
    pub health_check_interval: Duration,
    pub max_recv_message_size: usize,
    pub max_send_message_size: usize,
    /// Certificate and key: serve over TLS.
    pub tls: Option<Identity>,
    pub metrics: Metrics,
    pub auth: AuthOptions,
    /// HTTP/2 PING period on every connection, and how long a PING may go
    /// unanswered before the connection is closed.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Most client connections open at once.
    pub max_connections: usize,
    /// Most concurrent HTTP/2 streams (calls) per connection.
    pub max_concurrent_streams: u32,
    /// Largest request header block, in bytes.
    pub max_header_list_size: u32,
    /// How long a new connection may send nothing.
    pub handshake_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            shutdown_grace: Duration::from_secs(20),
            health_check_interval: Duration::from_secs(1),
            max_recv_message_size: 4 << 20,
            max_send_message_size: 4 << 20,
            tls: None,
            metrics: Metrics::default(),
            auth: AuthOptions::default(),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_concurrent_streams: 200,
            max_header_list_size: 16 << 10,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl ServeOptions {
    /// The options of `config`; reads the TLS files.
    pub fn from_config(config: &ServeConfig) -> Result<Self, ConfigError> {
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                let read = |setting: &str, path: &Path| {
                    std::fs::read(path)
                        .map_err(|e| ConfigError(format!("{setting} {}: {e}", path.display())))
                };
                Some(Identity::from_pem(
                    read("--tls-cert", cert)?,
                    read("--tls-key", key)?,
                ))
            }
            _ => None,
        };
        Ok(Self {
            shutdown_grace: config.shutdown_grace,
            health_check_interval: config.health_check_interval,
            max_recv_message_size: config.max_recv_message_size as usize,
            max_send_message_size: config.max_send_message_size as usize,
            tls,
            metrics: Metrics::default(),
            auth: AuthOptions {
                cache_ttl: config.auth_cache_ttl,
                rate_per_second: NonZeroU32::new(config.app_rate_limit),
                rate_burst: NonZeroU32::new(config.app_rate_burst).unwrap_or(NonZeroU32::MIN),
            },
            keepalive_interval: config.http2_keepalive_interval,
            keepalive_timeout: config.http2_keepalive_timeout,
            max_connections: config.max_connections as usize,
            max_concurrent_streams: config.max_concurrent_streams,
            max_header_list_size: config.max_header_list_size,
            handshake_timeout: config.handshake_timeout,
        })
    }
}

/// Runs the service until SIGTERM or SIGINT, then drains and exits.
pub async fn run(config: ServeConfig) -> anyhow::Result<()> {
    let _telemetry = telemetry::init(config.log_format);
    let options = ServeOptions::from_config(&config)?;
    let metrics_listener = match config.metrics_listen.0 {
        Some(address) => Some(
            TcpListener::bind(address)
                .await
                .map_err(|e| ConfigError(format!("--metrics-listen {address}: {e}")))?,
        ),
        None => None,
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| ConfigError(format!("--listen {}: {e}", config.listen)))?;

    // The service serves with a login that does not own the tables, so that
    // row-level security applies; migrations run as the owner.
    let (database_url, migrate_url, cluster) = match &config.database.database_url {
        Some(url) => {
            let migrate_url = config.database.migrate_url().unwrap_or(url).to_owned();
            (url.clone(), migrate_url, None)
        }
        None => {
            let cluster = start_embedded(&config.database.data_dir).await?;
            let owner = cluster.url(EMBEDDED_DATABASE);
            let (service, password) =
                cluster.service_url(storage::SERVICE_ROLE, EMBEDDED_DATABASE)?;
            (service, owner, Some((cluster, password)))
        }
    };
    let applied = storage::migrate(&migrate_url)
        .await
        .context("applying migrations")?;
    if !applied.is_empty() {
        tracing::info!(?applied, "applied migrations");
    }
    let pool = storage::pool(&database_url, &config.database.pool_options())?;
    if let Some((_, password)) = &cluster {
        storage::enable_service_login(&migrate_url, password).await?;
        // Keys are written by the owner; the service only reads them.
        let owner_pool = storage::pool(&migrate_url, &config.database.pool_options())?;
        let key = admin::development_key(&owner_pool, &config.database.data_dir).await?;
        owner_pool.close();
        tracing::info!(
            "development API key of the default app (also in {}): {key}",
            config.database.data_dir.join("dev-api-key").display()
        );
    }

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let api = CustomerApi::new(
        pool.clone(),
        StreamOptions {
            batch_size: config.stream_batch_size as usize,
            max_per_app: NonZeroU32::new(config.app_max_streams),
            buffer_bytes: config.stream_buffer_bytes as usize,
            stall_timeout: config.stream_stall_timeout,
        },
        config.database.statement_timeout,
        shutdown.clone(),
    )
    .with_events(EventOptions {
        retention: config.event_retention,
        prune_interval: config.event_prune_interval,
        poll_interval: config.event_poll_interval,
        bookmark_interval: config.watch_bookmark_interval,
        max_watches_per_app: NonZeroU32::new(config.app_max_watches),
        listen_url: config
            .listen_database_url
            .clone()
            .or_else(|| (!config.database.transaction_pooler).then(|| database_url.clone())),
    });
    if let Some(console) = start_console(&config, &api, &migrate_url, cluster.is_some()).await? {
        tokio::spawn(console::serve(console.0, console.1, shutdown.clone()));
    }
    if let Some(listener) = metrics_listener {
        tracing::info!(address = %listener.local_addr()?, "serving metrics on /metrics");
        let registry = options.metrics.registry(&api);
        tokio::spawn(metrics::serve(listener, registry, shutdown.clone()));
    }
    tracing::info!(address = %config.listen, tls = options.tls.is_some(), "serving gRPC");
    serve(listener, api, options).await?;

    pool.close();
    if let Some((cluster, _)) = cluster {
        tokio::task::spawn_blocking(move || cluster.stop()).await?;
        tracing::info!("embedded PostgreSQL stopped");
    }
    tracing::info!("shut down");
    Ok(())
}

/// Where the embedded mode's console listens unless told otherwise.
const EMBEDDED_CONSOLE: &str = "127.0.0.1:8080";

/// The operator console's listener and state, when it is on: configured by
/// --admin-listen, or by default in the embedded mode (where a port already
/// taken only costs a warning).
async fn start_console(
    config: &ServeConfig,
    api: &CustomerApi,
    owner_url: &str,
    embedded: bool,
) -> anyhow::Result<Option<(TcpListener, Console)>> {
    let (address, required) = match (config.admin_listen, embedded) {
        (Some(OptionalAddr(Some(address))), _) => (address, true),
        (Some(OptionalAddr(None)), _) | (None, false) => return Ok(None),
        (None, true) => (EMBEDDED_CONSOLE.parse()?, false),
    };
    let token = match &config.admin_token_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("--admin-token-file {}: {e}", path.display())))?,
        None if embedded => development_token(&config.database.data_dir)?,
        None => {
            return Err(ConfigError(
                "--admin-listen needs --admin-token-file (the operator token)".into(),
            )
            .into());
        }
    };
    let listener = match TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(e) if !required => {
            tracing::warn!(%address, error = %e, "console not started (set --admin-listen)");
            return Ok(None);
        }
        Err(e) => return Err(ConfigError(format!("--admin-listen {address}: {e}")).into()),
    };
    // API keys are written by a login that may: the owner (the service's
    // own role only reads them).
    let key_pool = storage::pool(
        owner_url,
        &PoolOptions {
            max_size: 2,
            ..config.database.pool_options()
        },
    )?;
    let console = Console::new(
        api.clone(),
        key_pool,
        ConsoleOptions {
            token: token.clone(),
            session_ttl: config.admin_session_ttl,
            page_size: 50,
        },
    )
    .map_err(|e| ConfigError(format!("--admin-token-file: {e}")))?;
    let address = listener.local_addr()?;
    if embedded && config.admin_token_file.is_none() {
        tracing::info!(
            "operator console: open http://{address}/admin/login?token={}",
            token.trim()
        );
    } else {
        tracing::info!(%address, "serving the operator console on /admin");
    }
    Ok(Some((listener, console)))
}

/// The embedded mode's operator token: made once, kept in
/// `<data_dir>/admin-token` (mode 0600).
fn development_token(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("admin-token");
    if let Ok(token) = std::fs::read_to_string(&path)
        && token.trim().chars().count() >= console::MIN_TOKEN_CHARS
    {
        return Ok(token);
    }
    let token = console::generate_token();
    admin::write_secret(&path, &token)?;
    Ok(token)
}

async fn start_embedded(data_dir: &Path) -> anyhow::Result<Cluster> {
    let options = ClusterOptions {
        root: data_dir.to_owned(),
        throwaway: false,
        port: None,
        tls: None,
    };
    let cluster = tokio::task::spawn_blocking(move || Cluster::start(&options))
        .await?
        .context("starting the embedded PostgreSQL (or set DATABASE_URL)")?;
    storage::create_database(&cluster.url("postgres"), EMBEDDED_DATABASE, None).await?;
    tracing::info!(
        data_dir = %cluster.root().display(),
        "embedded PostgreSQL running; connect with: psql \"{}\"",
        cluster.url(EMBEDDED_DATABASE)
    );
    Ok(cluster)
}

/// Cancels `token` on SIGTERM or SIGINT.
async fn cancel_on_signal(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for signals");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
    }
    token.cancel();
}

/// Serves every gRPC service on `listener` until the API's shutdown token is
/// cancelled, then drains: readiness goes NOT_SERVING, new connections and
/// calls are refused, in-flight unary calls finish, open streams end with
/// UNAVAILABLE (resumable); after `shutdown_grace` we return regardless.
pub async fn serve(
    listener: TcpListener,
    api: CustomerApi,
    options: ServeOptions,
) -> anyhow::Result<()> {
    let shutdown = api.shutdown_token();
    api.events().start();
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_not_serving::<Service>().await;
    let checker = tokio::spawn(check_readiness(
        api.pool().clone(),
        health.clone(),
        options.health_check_interval,
        shutdown.clone(),
    ));
    let drain = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            let _ = checker.await;
            health.set_not_serving::<Service>().await;
            tracing::info!("readiness is NOT_SERVING; draining calls");
        }
    };

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc.ErrorInfo and BadRequest, so that grpcurl decodes
            // error details.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let auth = Authenticator::new(api.pool().clone(), &options.auth, options.metrics.clone());
    let customers = CustomerServiceServer::new(api)
        .max_decoding_message_size(options.max_recv_message_size)
        .max_encoding_message_size(options.max_send_message_size);

    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(options.keepalive_interval))
        .http2_keepalive_timeout(Some(options.keepalive_timeout))
        .max_concurrent_streams(Some(options.max_concurrent_streams))
        .http2_max_header_list_size(Some(options.max_header_list_size));
    if let Some(identity) = options.tls {
        builder = builder.tls_config(ServerTlsConfig::new().identity(identity))?;
    }
    let server = builder
        .layer(
            tower::ServiceBuilder::new()
                .layer(options.metrics.layer())
                .layer(AuthLayer::new(auth)),
        )
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(customers)
        .serve_with_incoming_shutdown(
            incoming(
                listener,
                options.keepalive_interval,
                options.max_connections,
                options.handshake_timeout,
            ),
            drain,
        );
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return Ok(result?),
        _ = shutdown.cancelled() => {}
    }
    // tonic waits for every connection without a limit: bound it.
    match tokio::time::timeout(options.shutdown_grace, server).await {
        Ok(result) => result?,
        Err(_) => tracing::warn!(
            grace = ?options.shutdown_grace,
            "connections still open after the shutdown grace; exiting anyway"
        ),
    }
    Ok(())
}

/// Accepted connections, with TCP keepalive (a peer whose host vanished is
/// noticed even by the kernel) and no Nagle delay; at most `max` open at
/// once (one past it is closed at once, and logged), each closed if it
/// sends nothing for `handshake_timeout` after it is accepted.
fn incoming(
    listener: TcpListener,
    keepalive: Duration,
    max: usize,
    handshake_timeout: Duration,
) -> impl futures_util::Stream<Item = std::io::Result<crate::accept::Limited>> {
    use futures_util::StreamExt;
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    TcpListenerStream::new(listener).filter_map(move |accepted| {
        let slots = slots.clone();
        async move {
            let stream = match accepted {
                Ok(stream) => stream,
                Err(e) => return Some(Err(e)),
            };
            let Ok(slot) = slots.try_acquire_owned() else {
                tracing::warn!(max, "connection limit reached; closing a new connection");
                return None;
            };
            let prepared = (|| {
                let socket = socket2::SockRef::from(&stream);
                socket.set_tcp_keepalive(
                    &socket2::TcpKeepalive::new()
                        .with_time(keepalive)
                        .with_interval(keepalive),
                )?;
                stream.set_nodelay(true)
            })();
            match prepared {
                Ok(()) => Some(Ok(crate::accept::Limited::new(
                    stream,
                    slot,
                    handshake_timeout,
                ))),
                // A connection that died at once is not the listener's error.
                Err(_) => None,
            }
        }
    })
}

/// Keeps the readiness of `customers.v1.CustomerService` in step with the
/// database: SERVING while it answers, NOT_SERVING from the first failed
/// ping. Stops at shutdown.
///
/// The ping has a connection of its own, outside the pool (opened the way
/// the pool opens its connections): a pool busy with slow calls is not a
/// database that does not answer, and must not pull the replica out of its
/// Service.
async fn check_readiness(
    pool: Pool,
    health: HealthReporter,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut serving = None;
    let mut conn = None;
    // A database that is gone refuses or resets at once; this bounds one
    // that hangs, without calling a merely slow answer a failure.
    let ping_timeout = interval.max(Duration::from_secs(1));
    loop {
        let ping = tokio::select! {
            ping = tokio::time::timeout(ping_timeout, storage::ping(&pool, &mut conn)) => {
                ping.unwrap_or_else(|_| Err(crate::error::Error::Unavailable("ping timed out".into())))
            }
            _ = shutdown.cancelled() => return,
        };
        if ping.is_err() {
            // Reconnect next time.
            conn = None;
        }
        let ok = ping.is_ok();
        if serving != Some(ok) {
            if ok {
                health.set_serving::<Service>().await;
                tracing::info!("database answers: readiness SERVING");
            } else {
                health.set_not_serving::<Service>().await;
                tracing::warn!(error = %ping.unwrap_err(), "database unreachable: readiness NOT_SERVING");
            }
            serving = Some(ok);
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
