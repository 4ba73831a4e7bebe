//! Seeding: `n` customers of the default app, with ids the benchmarks can
//! compute (so that pgbench scripts and callers name the same customers).

use customers::domain::CustomerId;
use uuid::Uuid;

/// The default app (created by the first migration): every customer is
/// seeded there, and the API key is one of its keys.
pub const APP: &str = "00000000-0000-0000-0000-000000000000";

/// Customer `n`'s id in SQL, for an expression `n` of type bigint: the same
/// UUID as [`customer_uuid`], so that pgbench scripts compute the ids the
/// service callers use.
pub fn id_sql(n: &str) -> String {
    format!("('01900000-0000-7000-8000-' || lpad(to_hex({n}), 12, '0'))::uuid")
}

/// Customer `n`'s id: a fixed UUIDv7-shaped prefix and `n` in the last 48
/// bits (see [`id_sql`]).
pub fn customer_uuid(n: u64) -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 | u128::from(n))
}

/// Customer `n`'s id as the service shows it (`cus_...`).
pub fn customer_id(n: u64) -> String {
    CustomerId(customer_uuid(n)).to_string()
}

/// Inserts customers 1 to `n` in the default app, each with a Stripe id (in
/// `customer_provider_ids` and in the row's copy, as the service writes it),
/// created over the past year in the order of `n` (so that listing order is
/// `n` order), in chunks of one transaction each; then VACUUM ANALYZE (the
/// state autovacuum would reach) and a CHECKPOINT, so that the seeding's
/// writes are not flushed during the measurements.
pub async fn seed(db: &tokio_postgres::Client, n: u64) -> anyhow::Result<()> {
    const CHUNK: u64 = 100_000;
    let id = id_sql("n");
    for first in (1..=n).step_by(CHUNK as usize) {
        let last = (first + CHUNK - 1).min(n);
        db.batch_execute(&format!(
            "BEGIN;
             INSERT INTO customers (app_id, id, external_id, email, name, phone,
                                    address_city, address_country, metadata,
                                    provider_ids, create_time, update_time)
             SELECT '{APP}', {id}, 'user_' || n, 'customer' || n || '@example.com',
                    'Customer Number ' || n, '+14155550100', 'San Francisco', 'US',
                    jsonb_build_object('plan', 'pro', 'seat_count', n::text),
                    jsonb_build_object('stripe', 'cus_' || n), t, t
             FROM generate_series({first}::bigint, {last}::bigint) AS n,
                  LATERAL (SELECT now() - interval '365 days' * (({n} - n)::float8 / {n}) AS t)
                      AS created;
             INSERT INTO customer_provider_ids (app_id, customer_id, provider,
                                                provider_customer_id)
             SELECT '{APP}', {id}, 'stripe', 'cus_' || n
             FROM generate_series({first}::bigint, {last}::bigint) AS n;
             COMMIT;"
        ))
        .await?;
    }
    // VACUUM cannot run inside the implicit transaction of a batch.
    db.batch_execute("VACUUM (ANALYZE) customers").await?;
    db.batch_execute("VACUUM (ANALYZE) customer_provider_ids")
        .await?;
    db.batch_execute("CHECKPOINT").await?;

    // The SQL and the Rust ids must agree, or every lookup would miss.
    let stored: String = db
        .query_one(
            &format!("SELECT id::text FROM customers WHERE external_id = 'user_{n}'"),
            &[],
        )
        .await?
        .get(0);
    anyhow::ensure!(
        stored == customer_uuid(n).to_string(),
        "seeded id {stored} is not {}",
        customer_uuid(n)
    );
    Ok(())
}
