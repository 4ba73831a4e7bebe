use std::process::ExitCode;

use clap::Parser;
use customers::{
    admin,
    config::{Cli, Command, ConfigError, LogFormat},
    server, storage, telemetry,
};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help, --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line naming the setting: clap's first paragraph, joined
            // (the rest is a usage hint).
            let text = e.render().to_string();
            let first: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            eprintln!("{}", first.join(" "));
            return ExitCode::from(2);
        }
    };
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
                let _telemetry = telemetry::init(LogFormat::Text);
                let url = database.migrate_url().ok_or_else(|| {
                    ConfigError(
                        "migrate needs --migrate-database-url or --database-url (or \
                         CUSTOMERS_MIGRATE_DATABASE_URL or DATABASE_URL)"
                            .into(),
                    )
                })?;
                let applied = storage::migrate(url).await?;
                tracing::info!(?applied, "migrations applied");
                Ok(())
            }
            Some(Command::Apps(command)) => admin::apps(command).await,
            Some(Command::Keys(command)) => admin::keys(command).await,
            Some(Command::Serve(config)) => server::run(*config).await,
            None => server::run(cli.serve).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<ConfigError>() => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
