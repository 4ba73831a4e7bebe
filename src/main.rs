use std::process::ExitCode;

use clap::Parser;
use customers::{
    config::{Cli, Command, LogFormat},
    server, storage, telemetry,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Some(Command::Migrate(database)) => {
                telemetry::init(LogFormat::Text);
                let url = database.database_url.ok_or_else(|| {
                    anyhow::anyhow!("migrate needs DATABASE_URL (or --database-url)")
                })?;
                let applied = storage::migrate(&url).await?;
                tracing::info!(?applied, "migrations applied");
                Ok(())
            }
            Some(Command::Serve(config)) => server::run(config).await,
            None => server::run(cli.serve).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
