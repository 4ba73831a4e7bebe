//! The admin path: apps and API keys, managed from the command line against
//! the database. No API key can reach it.

use std::{path::Path, time::Duration};

use anyhow::Context;

use crate::{
    auth::ApiKey,
    config::{AdminDatabase, AppsCommand, ConfigError, KeysCommand},
    domain::AppId,
    error::Error,
    storage::{self, Pool, PoolOptions, apps},
};

fn admin_pool(database: &AdminDatabase) -> anyhow::Result<Pool> {
    storage::pool(
        &database.database_url,
        &PoolOptions {
            max_size: 1,
            ..PoolOptions::default()
        },
    )
}

fn not_found(what: String) -> impl FnOnce(Error) -> anyhow::Error {
    move |e| match e {
        Error::NotFound => ConfigError(format!("no such {what}")).into(),
        e => anyhow::Error::new(e),
    }
}

/// Creates and stores a key; returns it (shown once).
pub async fn create_key(pool: &Pool, app: AppId) -> Result<ApiKey, Error> {
    let key = ApiKey::generate(app);
    apps::insert_key(pool, app, key.id, &key.prefix(), &key.secret_hash()).await?;
    Ok(key)
}

pub async fn apps(command: AppsCommand) -> anyhow::Result<()> {
    match command {
        AppsCommand::Create { name, database } => {
            let app = apps::create_app(&admin_pool(&database)?, &name).await?;
            println!("{}", app.app_id());
        }
        AppsCommand::List { database } => {
            for app in apps::list_apps(&admin_pool(&database)?).await? {
                println!(
                    "{}\t{}\t{}",
                    app.app_id(),
                    app.create_time.to_rfc3339(),
                    app.name
                );
            }
        }
    }
    Ok(())
}

pub async fn keys(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create { app, database } => {
            let key = create_key(&admin_pool(&database)?, app)
                .await
                .map_err(not_found(format!("app {app}")))?;
            eprintln!(
                "key id {}; store the key now, it is not shown again:",
                key.id
            );
            println!("{}", key.reveal());
        }
        KeysCommand::List { app, database } => {
            for key in apps::list_keys(&admin_pool(&database)?, app).await? {
                let expires = key
                    .expire_time
                    .map_or_else(|| "-".to_owned(), |t| t.to_rfc3339());
                println!(
                    "{}\t{}…\tcreated {}\texpires {}",
                    key.key_id(),
                    key.prefix,
                    key.create_time.to_rfc3339(),
                    expires
                );
            }
        }
        KeysCommand::Revoke {
            app,
            key: id,
            database,
        } => {
            apps::expire_key(&admin_pool(&database)?, app, id, Duration::ZERO)
                .await
                .map_err(not_found(format!("key {id} of {app}")))?;
            println!("{id} revoked");
        }
        KeysCommand::Rotate {
            app,
            key: old,
            overlap,
            database,
        } => {
            let pool = admin_pool(&database)?;
            let expiring = apps::expire_key(&pool, app, old, overlap)
                .await
                .map_err(not_found(format!("key {old} of {app}")))?;
            let new = create_key(&pool, app).await?;
            eprintln!(
                "{old} expires at {}; new key id {}; store the key now, it is not shown again:",
                expiring
                    .expire_time
                    .map_or_else(String::new, |t| t.to_rfc3339()),
                new.id
            );
            println!("{}", new.reveal());
        }
    }
    Ok(())
}

/// The embedded development mode's key for the default app: created once,
/// kept in `<data_dir>/dev-api-key` (mode 0600) so that every start prints
/// the same key.
pub async fn development_key(pool: &Pool, data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("dev-api-key");
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Some(key) = ApiKey::parse(text.trim())
        && matches!(
            apps::find_key(pool, key.app, key.id).await?,
            Some((_, true))
        )
    {
        return Ok(key.reveal());
    }
    let key = create_key(pool, AppId::DEFAULT).await?.reveal();
    write_secret(&path, &key)?;
    Ok(key)
}

/// Writes a secret (a key, a token) and a newline to `path`, readable by
/// its owner only (mode 0600).
pub fn write_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(file, "{secret}")?;
    Ok(())
}
