//! The service's configuration: command-line flags, each also readable from
//! an environment variable, with defaults that work on a developer machine.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    domain::{AppId, KeyId},
    service::StreamOptions,
    storage::PoolOptions,
};

#[derive(Debug, Parser)]
#[command(
    name = "customers",
    version,
    about = "gRPC service that owns billing customers"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Settings of `serve`, the default command.
    #[command(flatten)]
    pub serve: ServeConfig,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve gRPC (the default).
    Serve(Box<ServeConfig>),
    /// Apply pending database migrations, then exit.
    Migrate(DatabaseConfig),
    /// Manage apps (tenants): an admin path that needs the database, not an
    /// API key.
    #[command(subcommand)]
    Apps(AppsCommand),
    /// Manage an app's API keys (admin path: needs the database).
    #[command(subcommand)]
    Keys(KeysCommand),
}

/// The database of the admin commands.
#[derive(Debug, Clone, Args)]
pub struct AdminDatabase {
    /// PostgreSQL URL of the service's database.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
}

#[derive(Debug, Subcommand)]
pub enum AppsCommand {
    /// Create an app; prints its id.
    Create {
        /// A name for people.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        database: AdminDatabase,
    },
    /// List apps.
    List {
        #[command(flatten)]
        database: AdminDatabase,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an API key for an app; prints the key, the only time it is shown.
    Create {
        /// The app ("app_...").
        #[arg(long)]
        app: AppId,
        #[command(flatten)]
        database: AdminDatabase,
    },
    /// List an app's keys: id, prefix, creation and expiry times.
    List {
        /// The app ("app_...").
        #[arg(long)]
        app: AppId,
        #[command(flatten)]
        database: AdminDatabase,
    },
    /// Revoke a key now (effective within --auth-cache-ttl).
    Revoke {
        /// The app ("app_...").
        #[arg(long)]
        app: AppId,
        /// The key's id ("key_..."), as `keys list` shows it.
        #[arg(long)]
        key: KeyId,
        #[command(flatten)]
        database: AdminDatabase,
    },
    /// Create a new key and make an old one expire after an overlap, so
    /// that clients can switch without downtime.
    Rotate {
        /// The app ("app_...").
        #[arg(long)]
        app: AppId,
        /// The key being replaced ("key_...").
        #[arg(long)]
        key: KeyId,
        /// How long the old key keeps working.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        overlap: Duration,
        #[command(flatten)]
        database: AdminDatabase,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to serve gRPC on.
    #[arg(long, env = "CUSTOMERS_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub database: DatabaseConfig,

    /// Log format: human-readable text, or one JSON object per line.
    #[arg(long, env = "CUSTOMERS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Rows ListCustomers reads per query (fewer when the buffer holds
    /// fewer: see `stream_buffer_bytes`).
    #[arg(long, env = "CUSTOMERS_STREAM_BATCH_SIZE", default_value_t = StreamOptions::DEFAULT_BATCH_SIZE,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub stream_batch_size: u32,

    /// Most bytes of customers one ListCustomers stream buffers for a client
    /// that reads slowly.
    #[arg(long, env = "CUSTOMERS_STREAM_BUFFER_BYTES", default_value_t = StreamOptions::DEFAULT_BUFFER_BYTES,
          value_parser = clap::value_parser!(u32).range(4096..))]
    pub stream_buffer_bytes: u32,

    /// A ListCustomers stream whose client reads nothing for this long is
    /// ended (UNAVAILABLE / STREAM_STALLED; resume with resume_after).
    #[arg(long, env = "CUSTOMERS_STREAM_STALL_TIMEOUT", default_value = "60s",
          value_parser = parse_duration)]
    pub stream_stall_timeout: Duration,

    /// How often an idle connection is probed with an HTTP/2 PING.
    #[arg(long, env = "CUSTOMERS_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s",
          value_parser = parse_duration)]
    pub http2_keepalive_interval: Duration,

    /// How long a PING may go unanswered before the connection (and its
    /// streams) is closed: a peer that vanished frees what it held.
    #[arg(long, env = "CUSTOMERS_HTTP2_KEEPALIVE_TIMEOUT", default_value = "10s",
          value_parser = parse_duration)]
    pub http2_keepalive_timeout: Duration,

    /// Most client connections open at once; a connection past it is
    /// closed as soon as it is accepted.
    #[arg(long, env = "CUSTOMERS_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Most concurrent calls (HTTP/2 streams) on one connection: a client
    /// opening more waits for one to end (SETTINGS_MAX_CONCURRENT_STREAMS).
    #[arg(long, env = "CUSTOMERS_MAX_CONCURRENT_STREAMS", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_streams: u32,

    /// Largest header block of a request, in bytes; a larger one is refused.
    #[arg(long, env = "CUSTOMERS_MAX_HEADER_LIST_SIZE", default_value_t = 16 << 10,
          value_parser = clap::value_parser!(u32).range(1024..))]
    pub max_header_list_size: u32,

    /// A connection that sends nothing for this long after it is accepted
    /// (not even the HTTP/2 preface, or the TLS handshake) is closed.
    #[arg(long, env = "CUSTOMERS_HANDSHAKE_TIMEOUT", default_value = "10s",
          value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Largest request message accepted, in bytes.
    #[arg(long, env = "CUSTOMERS_MAX_RECV_MESSAGE_SIZE", default_value_t = 4 << 20,
          value_parser = clap::value_parser!(u32).range(1024..))]
    pub max_recv_message_size: u32,

    /// Largest response message sent, in bytes.
    #[arg(long, env = "CUSTOMERS_MAX_SEND_MESSAGE_SIZE", default_value_t = 4 << 20,
          value_parser = clap::value_parser!(u32).range(1024..))]
    pub max_send_message_size: u32,

    /// On SIGTERM/SIGINT, how long in-flight calls may take to finish before
    /// the process exits anyway. Keep it below Kubernetes'
    /// terminationGracePeriodSeconds.
    #[arg(long, env = "CUSTOMERS_SHUTDOWN_GRACE", default_value = "20s",
          value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// How often readiness checks that the database answers.
    #[arg(long, env = "CUSTOMERS_HEALTH_CHECK_INTERVAL", default_value = "1s",
          value_parser = parse_duration)]
    pub health_check_interval: Duration,

    /// Address of the Prometheus metrics endpoint (GET /metrics); "off" to
    /// disable it.
    #[arg(long, env = "CUSTOMERS_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    pub metrics_listen: OptionalAddr,

    /// Where the operator console (browser pages under /admin) listens;
    /// "off" to disable it. Unset: 127.0.0.1:8080 in the embedded
    /// development mode, off otherwise.
    #[arg(long, env = "CUSTOMERS_ADMIN_LISTEN")]
    pub admin_listen: Option<OptionalAddr>,

    /// File holding the operator token (at least 32 characters) that opens
    /// the console. Required with --admin-listen when DATABASE_URL is set;
    /// the embedded mode makes one in --data-dir.
    #[arg(long, env = "CUSTOMERS_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// How long a console session lasts after signing in.
    #[arg(long, env = "CUSTOMERS_ADMIN_SESSION_TTL", default_value = "12h",
          value_parser = parse_duration)]
    pub admin_session_ttl: Duration,

    /// How long a verified API key is trusted before the database is asked
    /// again: a revoked key stops working within this time.
    #[arg(long, env = "CUSTOMERS_AUTH_CACHE_TTL", default_value = "10s",
          value_parser = parse_duration)]
    pub auth_cache_ttl: Duration,

    /// Calls per second each app may make, per replica; 0: no limit.
    #[arg(long, env = "CUSTOMERS_APP_RATE_LIMIT", default_value_t = 1000)]
    pub app_rate_limit: u32,

    /// Calls an app may make in a burst above its rate.
    #[arg(long, env = "CUSTOMERS_APP_RATE_BURST", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub app_rate_burst: u32,

    /// ListCustomers streams each app may have open at once, per replica;
    /// 0: no limit.
    #[arg(long, env = "CUSTOMERS_APP_MAX_STREAMS", default_value_t = 16)]
    pub app_max_streams: u32,

    /// WatchCustomerEvents streams each app may have open at once, per
    /// replica; 0: no limit.
    #[arg(long, env = "CUSTOMERS_APP_MAX_WATCHES", default_value_t = 256)]
    pub app_max_watches: u32,

    /// How long change events are kept. A watch resuming from an older
    /// position gets OUT_OF_RANGE (RESUME_TOKEN_EXPIRED).
    #[arg(long, env = "CUSTOMERS_EVENT_RETENTION", default_value = "30days",
          value_parser = parse_duration)]
    pub event_retention: Duration,

    /// How often a replica prunes events past their retention (one replica
    /// at a time does).
    #[arg(long, env = "CUSTOMERS_EVENT_PRUNE_INTERVAL", default_value = "1m",
          value_parser = parse_duration)]
    pub event_prune_interval: Duration,

    /// How often each app with open watches is read without a notification:
    /// the fallback for notifications lost (a dropped listening connection).
    #[arg(long, env = "CUSTOMERS_EVENT_POLL_INTERVAL", default_value = "5s",
          value_parser = parse_duration)]
    pub event_poll_interval: Duration,

    /// A watch with nothing to send gets a bookmark this often.
    #[arg(long, env = "CUSTOMERS_WATCH_BOOKMARK_INTERVAL", default_value = "15s",
          value_parser = parse_duration)]
    pub watch_bookmark_interval: Duration,

    /// Where this replica LISTENs for change notifications: a direct
    /// connection to PostgreSQL (a pooler in transaction mode cannot
    /// LISTEN). Default: the database URL, unless --transaction-pooler is
    /// set (then watches rely on --event-poll-interval alone, plus the
    /// replica's own writes).
    #[arg(long, env = "CUSTOMERS_LISTEN_DATABASE_URL")]
    pub listen_database_url: Option<String>,

    /// PEM certificate chain: serve gRPC over TLS (needs --tls-key).
    #[arg(long, env = "CUSTOMERS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "CUSTOMERS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// PostgreSQL URL the service serves with: a login that does not own
    /// the tables (so row-level security applies), such as the role
    /// `customers_service` given LOGIN. Unset: the service runs its own
    /// PostgreSQL cluster under --data-dir, from the installed server
    /// binaries, and sets both users up itself.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// PostgreSQL URL of the user that owns the tables, for migrations (at
    /// start-up and `customers migrate`). Unset: --database-url.
    #[arg(long, env = "CUSTOMERS_MIGRATE_DATABASE_URL", hide_env_values = true)]
    pub migrate_database_url: Option<String>,

    /// Where the embedded PostgreSQL keeps its data (only without
    /// DATABASE_URL).
    #[arg(long, env = "CUSTOMERS_DATA_DIR", default_value = ".customers-data")]
    pub data_dir: PathBuf,

    /// Most database connections open at once.
    #[arg(long, env = "CUSTOMERS_POOL_MAX_SIZE", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub pool_max_size: u32,

    /// How long a call waits for a database connection before failing with
    /// UNAVAILABLE (e.g. "5s", "500ms").
    #[arg(long, env = "CUSTOMERS_POOL_ACQUIRE_TIMEOUT", default_value = "5s",
          value_parser = parse_duration)]
    pub pool_acquire_timeout: Duration,

    /// DATABASE_URL leads to a connection pooler in transaction mode
    /// (PgBouncer before 1.21, which does not track prepared statements): keep
    /// no statement prepared across transactions and make no session
    /// setting. Costs a statement preparation per query. Migrations must go
    /// straight to PostgreSQL (--migrate-database-url).
    #[arg(long, env = "CUSTOMERS_TRANSACTION_POOLER")]
    pub transaction_pooler: bool,

    /// Server-side limit on any one SQL statement; a client's deadline may
    /// shorten it, never lengthen it. At most 24 days.
    #[arg(long, env = "CUSTOMERS_STATEMENT_TIMEOUT", default_value = "30s",
          value_parser = parse_statement_timeout)]
    pub statement_timeout: Duration,
}

impl DatabaseConfig {
    /// The URL migrations run with, when one is configured.
    pub fn migrate_url(&self) -> Option<&str> {
        self.migrate_database_url
            .as_deref()
            .or(self.database_url.as_deref())
    }

    pub fn pool_options(&self) -> PoolOptions {
        PoolOptions {
            max_size: self.pool_max_size as usize,
            acquire_timeout: self.pool_acquire_timeout,
            statement_timeout: self.statement_timeout,
            transaction_pooler: self.transaction_pooler,
        }
    }
}

/// A setting that cannot work; the process exits with code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A socket address, or "off".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalAddr(pub Option<SocketAddr>);

impl std::str::FromStr for OptionalAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "off" {
            return Ok(Self(None));
        }
        s.parse()
            .map(|a| Self(Some(a)))
            .map_err(|e| format!("{e} (or \"off\")"))
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

/// A duration PostgreSQL's `statement_timeout` accepts (at most `i32::MAX` ms).
fn parse_statement_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d > crate::context::MAX_STATEMENT_TIMEOUT {
        return Err("must be at most 24 days (PostgreSQL's limit)".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_subcommands_parse() {
        let cli = Cli::try_parse_from(["customers"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.listen.port(), 50051);
        assert_eq!(
            cli.serve.database.pool_acquire_timeout,
            Duration::from_secs(5)
        );

        let cli = Cli::try_parse_from(["customers", "migrate", "--database-url", "postgres://x"])
            .unwrap();
        assert!(matches!(cli.command, Some(Command::Migrate(_))));

        let cli = Cli::try_parse_from(["customers", "--metrics-listen", "off"]).unwrap();
        assert_eq!(cli.serve.metrics_listen, OptionalAddr(None));
    }

    #[test]
    fn bad_settings_are_rejected() {
        for args in [
            &["customers", "--listen", "nowhere"][..],
            &["customers", "--pool-acquire-timeout", "0s"],
            &["customers", "--pool-max-size", "0"],
            &["customers", "--tls-cert", "cert.pem"],
            &["customers", "--metrics-listen", "nowhere"],
            &["customers", "--statement-timeout", "30days"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }
}
