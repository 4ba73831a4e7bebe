//! Query plans at scale, taken exactly as the service runs its queries: as
//! its role, under row-level security, with its app setting and its
//! parameters. No shape may scan the whole table.

use customers::{
    context::RequestContext,
    domain::{AppId, CustomerId},
    storage::{self, plans::SampleKeys},
};
use diesel_async::{AsyncConnection, SimpleAsyncConnection};

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn every_query_shape_uses_an_index_under_row_level_security() {
    let mut svc = TestService::start().await;
    seed(&svc.database_url, 100_000).await;
    let mut c = customer("Sample.Person@Example.com");
    c.external_id = Some("sample-7".into());
    c.provider_ids.insert("stripe".into(), "cus_sample".into());
    let sample = create_new(&mut svc.client, c).await;
    let mut conn = svc.sql().await;
    // A provider id for every customer too, so that both tables are large.
    conn.batch_execute(
        "INSERT INTO customer_provider_ids (app_id, customer_id, provider, provider_customer_id)
         SELECT app_id, id, 'stripe', 'cus_' || id FROM customers WHERE email LIKE 'bulk%';
         UPDATE customers AS c SET provider_ids = p.ids
         FROM (SELECT app_id, customer_id, jsonb_object_agg(provider, provider_customer_id) AS ids
               FROM customer_provider_ids GROUP BY app_id, customer_id) AS p
         WHERE c.app_id = p.app_id AND c.id = p.customer_id;
         INSERT INTO customer_event_heads (app_id, position) VALUES
             ('00000000-0000-0000-0000-000000000000', 100001)
         ON CONFLICT (app_id) DO UPDATE SET position = customer_event_heads.position + 100000;
         INSERT INTO customer_events (app_id, position, id, type, customer_id, customer, create_time)
         SELECT app_id, 1 + row_number() OVER (), gen_random_uuid(), 'updated', id, '{}',
                now() - interval '1 day' + row_number() OVER () * interval '1 ms'
         FROM customers WHERE email LIKE 'bulk%';
         ANALYZE customers; ANALYZE customer_provider_ids; ANALYZE customer_events",
    )
    .await
    .unwrap();

    let ctx = RequestContext::new(AppId::DEFAULT, std::time::Duration::from_secs(30));
    let keys = SampleKeys {
        id: sample.id.parse::<CustomerId>().unwrap(),
        email: "sample.person@example.com".into(),
        external_id: "sample-7".into(),
        provider: "stripe".into(),
        provider_id: "cus_sample".into(),
    };
    let plans = conn
        .transaction::<_, customers::error::Error, _>(async |conn| {
            // The statements every service transaction starts with.
            diesel_async::SimpleAsyncConnection::batch_execute(conn, &storage::scope_sql(&ctx)?)
                .await?;
            storage::plans::explain_query_shapes(conn, AppId::DEFAULT, &keys).await
        })
        .await
        .unwrap();
    assert!(plans.len() >= 24, "{plans:?}");
    // The statistics know "bulk" is in every row and "sample" in none: the
    // narrowed shapes ask the index for the rare windows only (not on
    // Citus, whose coordinator has no statistics of its own).
    let narrowed = citus_workers().is_empty();
    for (shape, _) in plans
        .iter()
        .filter(|(s, _)| narrowed && s.contains("rarest windows"))
    {
        assert!(
            shape.contains("email ILIKE $10") && shape.contains("email_lower LIKE $16"),
            "{shape}"
        );
    }
    for (shape, plan) in &plans {
        println!("--- {shape}\n{plan}");
        assert!(
            !plan.contains("Seq Scan"),
            "{shape} scans a whole table:\n{plan}"
        );
        assert!(plan.contains("Index"), "{shape} uses no index:\n{plan}");
        // On Citus, each is a router query: one task, on the app's worker.
        if !citus_workers().is_empty() {
            assert!(
                plan.contains("Task Count: 1"),
                "{shape} is not routed to one shard:\n{plan}"
            );
        }
    }
}
