//! Distribution on Citus: run after every migration, so that tables added
//! by later migrations are distributed too. On plain PostgreSQL (no `citus`
//! extension) it does nothing.
//!
//! `apps` becomes a reference table (a copy on every node); every other
//! table with an `app_id` column is distributed by `app_id`, co-located
//! with `customers`, so that all of an app's rows live on one worker and
//! every query of the service, which filters by its app, is routed to that
//! one worker. A table is distributed once the tables its foreign keys
//! name are (or are `apps`).

use diesel::{
    QueryableByName, RunQueryDsl, connection::SimpleConnection, sql_query, sql_types::Text,
};
use diesel_async::{AsyncPgConnection, async_connection_wrapper::AsyncConnectionWrapper};

type Conn = AsyncConnectionWrapper<AsyncPgConnection>;

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

/// The reference table, and the table the others are co-located with.
const REFERENCE: &str = "apps";
const ANCHOR: &str = "customers";

/// Distributes what is not distributed yet; returns what it did, for the
/// migration log.
pub(super) fn distribute(conn: &mut Conn) -> anyhow::Result<Vec<String>> {
    let citus: Vec<Name> =
        sql_query("SELECT extname AS name FROM pg_extension WHERE extname = 'citus'").load(conn)?;
    if citus.is_empty() {
        return Ok(Vec::new());
    }
    let mut done = Vec::new();
    // Making `apps` a reference table must not turn the local tables that
    // reference it into Citus-local tables, which could not be distributed
    // afterwards.
    conn.batch_execute("SET citus.enable_local_reference_table_foreign_keys = off")?;
    if !is_distributed(conn, REFERENCE)? {
        conn.batch_execute(&format!("SELECT create_reference_table('{REFERENCE}')"))?;
        done.push(format!("citus: {REFERENCE} is a reference table"));
    }
    loop {
        let pending: Vec<Name> = sql_query(
            "SELECT c.relname::text AS name FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
               AND c.relname <> $1
               AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid
                           AND a.attname = 'app_id' AND NOT a.attisdropped)
               AND NOT EXISTS (SELECT 1 FROM pg_dist_partition p WHERE p.logicalrelid = c.oid)
               -- Every table its foreign keys name is distributed (or the reference).
               AND NOT EXISTS (
                   SELECT 1 FROM pg_constraint f
                   WHERE f.conrelid = c.oid AND f.contype = 'f' AND f.confrelid <> c.oid
                     AND NOT EXISTS (SELECT 1 FROM pg_dist_partition p
                                     WHERE p.logicalrelid = f.confrelid))
             ORDER BY (c.relname = $2) DESC, c.relname",
        )
        .bind::<Text, _>(REFERENCE)
        .bind::<Text, _>(ANCHOR)
        .load(conn)?;
        let Some(Name { name }) = pending.into_iter().next() else {
            break;
        };
        anyhow::ensure!(
            name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "unexpected table name {name:?}"
        );
        let colocate = if name == ANCHOR || !is_distributed(conn, ANCHOR)? {
            "default".to_owned()
        } else {
            ANCHOR.to_owned()
        };
        conn.batch_execute(&format!(
            "SELECT create_distributed_table('{name}', 'app_id', colocate_with => '{colocate}')"
        ))?;
        done.push(format!("citus: {name} distributed by app_id"));
    }
    conn.batch_execute("RESET citus.enable_local_reference_table_foreign_keys")?;
    Ok(done)
}

fn is_distributed(conn: &mut Conn, table: &str) -> anyhow::Result<bool> {
    let found: Vec<Name> = sql_query(
        "SELECT logicalrelid::regclass::text AS name FROM pg_dist_partition
         WHERE logicalrelid = $1::regclass",
    )
    .bind::<Text, _>(table)
    .load(conn)?;
    Ok(!found.is_empty())
}
