//! Apps and their API keys: the admin commands' SQL and the key lookup of
//! authentication. These tables are not under row-level security: only the
//! admin commands write them, and a key names its own app.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::{dsl::now, prelude::*};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::{
    Pool, connect,
    schema::{api_keys, apps},
};
use crate::{
    domain::{AppId, KeyId},
    error::Error,
};

/// An app, as the admin commands show it.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = apps, check_for_backend(diesel::pg::Pg))]
pub struct App {
    pub id: Uuid,
    pub name: String,
    pub create_time: DateTime<Utc>,
}

impl App {
    pub fn app_id(&self) -> AppId {
        AppId(self.id)
    }
}

/// An API key as stored: never the key itself.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = api_keys, check_for_backend(diesel::pg::Pg))]
pub struct KeyRecord {
    pub id: Uuid,
    pub prefix: String,
    pub secret_hash: Vec<u8>,
    pub create_time: DateTime<Utc>,
    pub expire_time: Option<DateTime<Utc>>,
}

impl KeyRecord {
    pub fn key_id(&self) -> KeyId {
        KeyId(self.id)
    }
}

pub async fn create_app(pool: &Pool, name: &str) -> Result<App, Error> {
    let mut conn = connect(pool, None).await?;
    Ok(diesel::insert_into(apps::table)
        .values((apps::id.eq(Uuid::now_v7()), apps::name.eq(name)))
        .returning(App::as_returning())
        .get_result(&mut conn)
        .await?)
}

pub async fn list_apps(pool: &Pool) -> Result<Vec<App>, Error> {
    let mut conn = connect(pool, None).await?;
    Ok(apps::table
        .order(apps::create_time)
        .select(App::as_select())
        .load(&mut conn)
        .await?)
}

/// Stores a new key of `app`; NOT_FOUND if the app does not exist.
pub async fn insert_key(
    pool: &Pool,
    app: AppId,
    id: KeyId,
    prefix: &str,
    secret_hash: &[u8],
) -> Result<KeyRecord, Error> {
    let mut conn = connect(pool, None).await?;
    let exists: i64 = apps::table
        .find(app.0)
        .count()
        .get_result(&mut conn)
        .await?;
    if exists == 0 {
        return Err(Error::NotFound);
    }
    Ok(diesel::insert_into(api_keys::table)
        .values((
            api_keys::app_id.eq(app.0),
            api_keys::id.eq(id.0),
            api_keys::prefix.eq(prefix),
            api_keys::secret_hash.eq(secret_hash),
        ))
        .returning(KeyRecord::as_returning())
        .get_result(&mut conn)
        .await?)
}

pub async fn list_keys(pool: &Pool, app: AppId) -> Result<Vec<KeyRecord>, Error> {
    let mut conn = connect(pool, None).await?;
    Ok(api_keys::table
        .filter(api_keys::app_id.eq(app.0))
        .order(api_keys::create_time)
        .select(KeyRecord::as_select())
        .load(&mut conn)
        .await?)
}

/// The key authentication checks against, and whether it is still valid by
/// the database's clock (the clock that set its expiry).
pub async fn find_key(
    pool: &Pool,
    app: AppId,
    id: KeyId,
) -> Result<Option<(KeyRecord, bool)>, Error> {
    let mut conn = connect(pool, None).await?;
    // In a transaction of its own, like every query of the service: behind
    // a pooler in transaction mode, a statement's preparation and its
    // execution then reach the same server connection.
    conn.build_transaction()
        .read_only()
        .run::<_, Error, _>(async |conn| key_with_validity(conn, app, id).await)
        .await
}

/// The ids of every API key, of every app (revoked and expired ones too):
/// what authentication checks a presented key against before it costs a
/// lookup of its own.
pub async fn all_key_ids(pool: &Pool) -> Result<Vec<(AppId, KeyId)>, Error> {
    let mut conn = connect(pool, None).await?;
    let rows: Vec<(uuid::Uuid, uuid::Uuid)> = conn
        .build_transaction()
        .read_only()
        .run::<_, Error, _>(async |conn| {
            Ok(api_keys::table
                .select((api_keys::app_id, api_keys::id))
                .load(conn)
                .await?)
        })
        .await?;
    Ok(rows
        .into_iter()
        .map(|(app, id)| (AppId(app), KeyId(id)))
        .collect())
}

async fn key_with_validity(
    conn: &mut AsyncPgConnection,
    app: AppId,
    id: KeyId,
) -> Result<Option<(KeyRecord, bool)>, Error> {
    Ok(api_keys::table
        .find((app.0, id.0))
        .select((
            KeyRecord::as_select(),
            api_keys::expire_time
                .is_null()
                .or(api_keys::expire_time.gt(now))
                .assume_not_null(),
        ))
        .first(conn)
        .await
        .optional()?)
}

/// Makes a key stop working `after` from now (at once for a revocation),
/// unless it already expires sooner. NOT_FOUND if there is no such key.
pub async fn expire_key(
    pool: &Pool,
    app: AppId,
    id: KeyId,
    after: Duration,
) -> Result<KeyRecord, Error> {
    let mut conn = connect(pool, None).await?;
    let after_ms = i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
    let at =
        diesel::dsl::sql::<diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>>("now() + ")
            .bind::<diesel::sql_types::BigInt, _>(after_ms)
            .sql(" * interval '1 millisecond'");
    let updated = diesel::update(api_keys::table.find((app.0, id.0)))
        .filter(
            api_keys::expire_time
                .is_null()
                .or(api_keys::expire_time.gt(at.clone())),
        )
        .set(api_keys::expire_time.eq(at))
        .returning(KeyRecord::as_returning())
        .get_result(&mut conn)
        .await
        .optional()?;
    match updated {
        Some(record) => Ok(record),
        // Already expiring sooner, or no such key.
        None => key_with_validity(&mut conn, app, id)
            .await?
            .map(|(record, _)| record)
            .ok_or(Error::NotFound),
    }
}

/// One app, if it exists.
pub async fn get_app(pool: &Pool, app: AppId) -> Result<Option<App>, Error> {
    let mut conn = connect(pool, None).await?;
    Ok(apps::table
        .find(app.0)
        .select(App::as_select())
        .first(&mut conn)
        .await
        .optional()?)
}
