//! Wiring: the database (given or embedded), migrations, the gRPC server
//! with health and reflection, and shutdown on SIGTERM / SIGINT.

use std::path::Path;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::{
    config::ServeConfig,
    embedded_pg::{Cluster, ClusterOptions},
    pb::{self, customer_service_server::CustomerServiceServer},
    service::{CustomerApi, StreamOptions},
    storage, telemetry,
};

/// Name of the database the embedded cluster serves.
const EMBEDDED_DATABASE: &str = "customers";

/// Runs the service until SIGTERM or SIGINT.
pub async fn run(config: ServeConfig) -> anyhow::Result<()> {
    telemetry::init(config.log_format);
    let (database_url, cluster) = match &config.database.database_url {
        Some(url) => (url.clone(), None),
        None => {
            let cluster = start_embedded(&config.database.data_dir).await?;
            (cluster.url(EMBEDDED_DATABASE), Some(cluster))
        }
    };

    let applied = storage::migrate(&database_url)
        .await
        .context("applying migrations")?;
    if !applied.is_empty() {
        tracing::info!(?applied, "applied migrations");
    }
    let pool = storage::pool(&database_url, &config.database.pool_options())?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    tracing::info!(address = %config.listen, "serving gRPC");

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let options = StreamOptions {
        batch_size: config.stream_batch_size as usize,
    };
    serve(listener, CustomerApi::new(pool.clone(), options, shutdown)).await?;

    pool.close();
    if let Some(cluster) = cluster {
        tokio::task::spawn_blocking(move || cluster.stop()).await?;
        tracing::info!("embedded PostgreSQL stopped");
    }
    tracing::info!("shut down");
    Ok(())
}

async fn start_embedded(data_dir: &Path) -> anyhow::Result<Cluster> {
    let options = ClusterOptions {
        root: data_dir.to_owned(),
        throwaway: false,
        port: None,
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
/// cancelled.
pub async fn serve(listener: TcpListener, api: CustomerApi) -> anyhow::Result<()> {
    let shutdown = api.shutdown_token();
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<CustomerServiceServer<CustomerApi>>()
        .await;

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc.ErrorInfo and BadRequest, so that grpcurl decodes
            // error details.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };

    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(CustomerServiceServer::new(api))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown.cancelled_owned())
        .await?;
    Ok(())
}
