//! ListCustomers: filters, order, limits, large streams, resumption,
//! cancellation and backpressure.

use std::{collections::HashSet, time::Duration};

use customers::{
    domain::CustomerId,
    pb::{self, list_customers_request::Order},
    service::StreamOptions,
    storage::{
        PoolOptions,
        search::{Column, CommonTrigrams},
    },
};
use std::sync::atomic::Ordering;

use crate::common::*;

fn position(c: &pb::Customer) -> (i64, i32, String) {
    let t = c.create_time.unwrap();
    let uuid = c.id.parse::<CustomerId>().unwrap().uuid().to_string();
    (t.seconds, t.nanos, uuid)
}

fn assert_strictly_ordered(customers: &[pb::Customer], descending: bool) {
    for pair in customers.windows(2) {
        let (a, b) = (position(&pair[0]), position(&pair[1]));
        if descending {
            assert!(a > b, "{a:?} then {b:?}");
        } else {
            assert!(a < b, "{a:?} then {b:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_ten_thousand_customers_in_order() {
    let mut svc = TestService::start().await;
    seed(&svc.database_url, 10_500).await;
    for order in [Order::CreateTimeAsc, Order::CreateTimeDesc] {
        let all = list(
            &mut svc.client,
            pb::ListCustomersRequest {
                order: order as i32,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(all.len(), 10_500);
        let ids: HashSet<&String> = all.iter().map(|c| &c.id).collect();
        assert_eq!(ids.len(), 10_500, "no repeats");
        assert_strictly_ordered(&all, order == Order::CreateTimeDesc);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_stream_resumes_without_gaps_or_repeats() {
    let mut svc = TestService::start_with(Options {
        stream: StreamOptions {
            batch_size: 100,
            ..StreamOptions::default()
        },
        ..Default::default()
    })
    .await;
    seed(&svc.database_url, 1_000).await;
    for order in [Order::CreateTimeAsc, Order::CreateTimeDesc] {
        let request = pb::ListCustomersRequest {
            order: order as i32,
            ..Default::default()
        };
        let full = list(&mut svc.client, request.clone()).await.unwrap();

        // Read 333 customers, then drop the stream mid-batch.
        let mut received = Vec::new();
        {
            let mut stream = svc
                .client
                .list_customers(request.clone())
                .await
                .unwrap()
                .into_inner();
            while received.len() < 333 {
                received.push(stream.message().await.unwrap().unwrap().customer.unwrap());
            }
        }
        let rest = list(
            &mut svc.client,
            pb::ListCustomersRequest {
                resume_after: received.last().unwrap().id.clone(),
                ..request
            },
        )
        .await
        .unwrap();
        received.extend(rest);
        assert_eq!(received, full);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_stream_stops_querying() {
    let mut svc = TestService::start_with(Options {
        stream: StreamOptions {
            batch_size: 50,
            ..StreamOptions::default()
        },
        ..Default::default()
    })
    .await;
    seed(&svc.database_url, 5_000).await;
    let stream = open_listing(&mut svc.client).await;
    assert_eq!(svc.stats.open.load(Ordering::Relaxed), 1);
    drop(stream);
    let stats = svc.stats.clone();
    eventually(
        Duration::from_secs(10),
        "the stream's reader to stop",
        || stats.open.load(Ordering::Relaxed) == 0,
    )
    .await;
    let batches = svc.stats.batches.load(Ordering::Relaxed);
    assert!(batches < 100, "read {batches} of 100 batches");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(svc.stats.batches.load(Ordering::Relaxed), batches);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_client_holds_the_server_back() {
    let svc = TestService::start_with(Options {
        stream: StreamOptions {
            batch_size: 50,
            ..StreamOptions::default()
        },
        ..Default::default()
    })
    .await;
    seed(&svc.database_url, 5_000).await;
    let mut client = small_window_client(&svc).await;
    let mut stream = open_listing(&mut client).await;
    // The client reads nothing more: the server fills the channel and the
    // HTTP/2 window, then waits.
    let stats = svc.stats.clone();
    let mut last = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = stats.batches.load(Ordering::Relaxed);
        if now == last && now > 0 {
            break;
        }
        last = now;
    }
    let read_ahead = stats.messages.load(Ordering::Relaxed);
    assert!(
        read_ahead < 2_000,
        "the server raced ahead: {read_ahead} sent of 5000"
    );
    println!("a stalled client let the server read {read_ahead} customers ahead");
    // Reading on finishes the stream.
    let mut n = 1;
    while stream.message().await.unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 5_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_hold_no_connection_between_batches() {
    // One connection for everything: a stream that held it while waiting for
    // its client would starve the second stream and the Get below.
    let mut svc = TestService::start_with(Options {
        stream: StreamOptions {
            batch_size: 20,
            ..StreamOptions::default()
        },
        pool: PoolOptions {
            max_size: 1,
            acquire_timeout: Duration::from_secs(2),
            ..PoolOptions::default()
        },
        ..Default::default()
    })
    .await;
    seed(&svc.database_url, 300).await;
    let mut first = svc
        .client
        .list_customers(pb::ListCustomersRequest::default())
        .await
        .unwrap()
        .into_inner();
    let head = first.message().await.unwrap().unwrap().customer.unwrap();
    let second = list(&mut svc.client, Default::default()).await.unwrap();
    assert_eq!(second.len(), 300);
    get_by_id(&mut svc.client, &head.id).await.unwrap();
    let mut n = 1;
    while first.message().await.unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 300);
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_narrow_the_stream() {
    let mut svc = TestService::start().await;
    let mut ids = Vec::new();
    for (email, name, team) in [
        ("ann@acme.com", "Ann Archer", "red"),
        ("ben@acme.com", "Ben 100%_Bold", "blue"),
        ("cat@globex.com", "Cat Acme-Fan", "red"),
        ("dee@globex.com", "Dee", "blue"),
    ] {
        let mut c = customer(email);
        c.name = name.into();
        c.metadata.insert("team".into(), team.into());
        c.metadata.insert("env".into(), "prod".into());
        ids.push(create_new(&mut svc.client, c).await);
        // Distinct create times for the time filters.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let default = pb::ListCustomersRequest::default;
    let cases: Vec<(&str, pb::ListCustomersRequest, &[&str])> = vec![
        (
            "exact email, case-insensitive",
            pb::ListCustomersRequest {
                email: "BEN@ACME.COM".into(),
                ..default()
            },
            &["ben@acme.com"],
        ),
        (
            "query over email or name, case-insensitive",
            pb::ListCustomersRequest {
                query: "ACME".into(),
                ..default()
            },
            &["ann@acme.com", "ben@acme.com", "cat@globex.com"],
        ),
        (
            "LIKE wildcards in a query match literally",
            pb::ListCustomersRequest {
                query: "0%_b".into(),
                ..default()
            },
            &["ben@acme.com"],
        ),
        (
            "a lone wildcard too",
            pb::ListCustomersRequest {
                query: "%".into(),
                ..default()
            },
            &["ben@acme.com"],
        ),
        (
            "every metadata pair",
            pb::ListCustomersRequest {
                metadata: [("team", "red"), ("env", "prod")]
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .into(),
                ..default()
            },
            &["ann@acme.com", "cat@globex.com"],
        ),
        (
            "created strictly between",
            pb::ListCustomersRequest {
                created_after: ids[0].create_time,
                created_before: ids[3].create_time,
                ..default()
            },
            &["ben@acme.com", "cat@globex.com"],
        ),
        (
            "newest first, limited",
            pb::ListCustomersRequest {
                order: Order::CreateTimeDesc as i32,
                limit: 2,
                ..default()
            },
            &["dee@globex.com", "cat@globex.com"],
        ),
        (
            "resumed, limited",
            pb::ListCustomersRequest {
                limit: 1,
                resume_after: ids[1].id.clone(),
                ..default()
            },
            &["cat@globex.com"],
        ),
    ];
    for (what, request, expected) in cases {
        let emails: Vec<String> = list(&mut svc.client, request)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.email)
            .collect();
        assert_eq!(emails, expected, "{what}");
    }
}

/// The ids of the active customers whose email or name contains the
/// request's whole query, in its order and limit, read as the tables' owner.
async fn whole_term_matches(
    conn: &mut diesel_async::AsyncPgConnection,
    request: &pb::ListCustomersRequest,
) -> Vec<String> {
    use diesel::{QueryableByName, sql_types};
    use diesel_async::RunQueryDsl;

    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = sql_types::Uuid)]
        id: uuid::Uuid,
    }
    let direction = if request.order == Order::CreateTimeDesc as i32 {
        "DESC"
    } else {
        "ASC"
    };
    let limit = match request.limit {
        0 => "ALL".to_owned(),
        n => n.to_string(),
    };
    diesel::sql_query(format!(
        "SELECT id FROM customers WHERE state = 'active' \
         AND (email ILIKE '%' || $1 || '%' OR name ILIKE '%' || $1 || '%') \
         ORDER BY create_time {direction}, id {direction} LIMIT {limit}"
    ))
    .bind::<sql_types::Text, _>(&request.query)
    .load::<Id>(conn)
    .await
    .unwrap()
    .into_iter()
    .map(|row| CustomerId(row.id).to_string())
    .collect()
}

/// The ids a listing streams.
async fn listed_ids(client: &mut Client, request: pb::ListCustomersRequest) -> Vec<String> {
    list(client, request)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect()
}

/// Once the planner's statistics know which trigrams are common, a query
/// asks the trigram index for its term's rarest windows only and checks the
/// whole term on each row (`storage::search`). It must find exactly what the
/// whole term finds.
#[tokio::test(flavor = "multi_thread")]
async fn a_search_narrowed_to_rare_trigrams_finds_what_the_whole_term_finds() {
    use diesel_async::SimpleAsyncConnection;

    let mut svc = TestService::start().await;
    // bulk<n>@example.com, "Bulk <n>": "bul", "ulk", "exa", "com" are in
    // every row.
    seed(&svc.database_url, 20_000).await;
    for (email, name) in [
        ("zed@other.org", "Mr BULK1234 Jr"),
        ("bulk1234-2@example.com", "Second"),
        ("amy@example.com", "Amy Bulk 1234"),
        ("archived@example.com", "Bulk1234 Gone"),
    ] {
        let mut c = customer(email);
        c.name = name.into();
        let created = create_new(&mut svc.client, c).await;
        if email.starts_with("archived") {
            archive(&mut svc.client, &created.id, &created.etag)
                .await
                .unwrap();
        }
    }
    let mut conn = svc.sql().await;
    conn.batch_execute("ANALYZE customers").await.unwrap();

    // The statistics leave the common trigrams out.
    let trigrams = CommonTrigrams::load(&mut conn).await.unwrap();
    let windows = trigrams.windows(Column::Email, "bulk1234");
    if citus_workers().is_empty() {
        assert!(!windows.is_empty() && windows.len() <= 3, "{windows:?}");
        for common in ["bul", "ulk"] {
            assert!(!windows.iter().any(|w| w == common), "{windows:?}");
        }
    } else {
        // A Citus coordinator has no statistics of its own (its shards do):
        // whole terms there.
        assert!(trigrams.is_empty(), "{trigrams:?}");
    }

    for term in [
        "bulk1234",
        "BULK1234",
        "k1234@",
        "ulk 123",
        "Bulk 19999",
        "1234",
        "bulk1234 jr",
        "4-2@example",
        "mple.com",
        "no such term",
    ] {
        let request = pb::ListCustomersRequest {
            query: term.into(),
            ..Default::default()
        };
        let expected = whole_term_matches(&mut conn, &request).await;
        let found = listed_ids(&mut svc.client, request).await;
        assert_eq!(found.len(), expected.len(), "{term}");
        assert_eq!(found, expected, "{term}");
    }
    // The service searched with the same statistics: it loaded them for
    // its first search.
    let cached = svc.pool.cached_trigrams().expect("loaded by the searches");
    assert_eq!(cached.windows(Column::Email, "bulk1234"), windows);

    // The page function uses only windows of three letters or digits found
    // in the term: any other given to it (not in the term, a wildcard, too
    // short) is left out, and loses no row.
    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        id: uuid::Uuid,
    }
    conn.batch_execute(
        "BEGIN; SET LOCAL customers.app_id = '00000000-0000-0000-0000-000000000000'",
    )
    .await
    .unwrap();
    let paged: Vec<String> = diesel_async::RunQueryDsl::load::<Id>(
        diesel::sql_query(
            "SELECT id FROM customers_page(NULL, '%bulk1234%', NULL, NULL, NULL, false, false, \
             NULL, NULL, 1000, ARRAY['zzz', '%', 'bu', '123'], ARRAY['999', 'k12'])",
        ),
        &mut conn,
    )
    .await
    .unwrap()
    .into_iter()
    .map(|row| CustomerId(row.id).to_string())
    .collect();
    conn.batch_execute("COMMIT").await.unwrap();
    let request = pb::ListCustomersRequest {
        query: "bulk1234".into(),
        ..Default::default()
    };
    assert_eq!(paged, whole_term_matches(&mut conn, &request).await);
}

/// A query the index cannot narrow is first looked for among the nearest
/// rows in the listing's order; when they hold too few matches, the page is
/// read through the trigram index instead of walking the order. Either way
/// the page is the one the whole term gives.
#[tokio::test(flavor = "multi_thread")]
async fn a_search_finds_its_page_whether_the_matches_are_near_or_far() {
    use diesel::{QueryableByName, sql_types};
    use diesel_async::{RunQueryDsl, SimpleAsyncConnection};

    let mut svc = TestService::start().await;
    let mut conn = svc.sql().await;
    // 3,000 old customers "far-<n>", then 3,000 newer "near-<n>": "far",
    // "ear" and "exa" are common, so no window narrows "far-" or "near-1".
    conn.batch_execute(
        "INSERT INTO customers (app_id, id, email, name, create_time, update_time)
         SELECT '00000000-0000-0000-0000-000000000000', gen_random_uuid(),
                kind || '-' || n || '@example.com', initcap(kind) || ' ' || n,
                now() - interval '1 day' * (CASE kind WHEN 'far' THEN 2 ELSE 1 END)
                      + n * interval '1 second', now()
         FROM generate_series(1, 3000) AS n, (VALUES ('far'), ('near')) AS kinds(kind);
         ANALYZE customers",
    )
    .await
    .unwrap();
    let trigrams = CommonTrigrams::load(&mut conn).await.unwrap();
    for term in ["far-", "near-1"] {
        assert!(trigrams.windows(Column::Email, term).is_empty(), "{term}");
    }

    for (term, order, limit) in [
        // Newest first: "far-" is nowhere among the nearest rows.
        ("far-", Order::CreateTimeDesc, 20),
        ("far-29", Order::CreateTimeDesc, 20),
        ("far-", Order::CreateTimeDesc, 0),
        // Among them.
        ("near-1", Order::CreateTimeDesc, 20),
        ("far-1", Order::CreateTimeAsc, 20),
        ("near-", Order::CreateTimeAsc, 20),
        ("nowhere", Order::CreateTimeAsc, 20),
    ] {
        let request = pb::ListCustomersRequest {
            query: term.into(),
            order: order as i32,
            limit,
            ..Default::default()
        };
        let expected = whole_term_matches(&mut conn, &request).await;
        let found = listed_ids(&mut svc.client, request).await;
        assert_eq!(found.len(), expected.len(), "{term} {order:?} {limit}");
        assert_eq!(found, expected, "{term} {order:?} {limit}");
    }
    // Reading past the nearest rows leaves the planner as it was for the
    // rest of the transaction (the provider ids are read after the page).
    #[derive(QueryableByName)]
    struct Found {
        #[diesel(sql_type = sql_types::BigInt)]
        found: i64,
    }
    #[derive(QueryableByName)]
    struct Settings {
        #[diesel(sql_type = sql_types::Text)]
        index_scans: String,
        #[diesel(sql_type = sql_types::Text)]
        sequential_scans: String,
    }
    conn.batch_execute(
        "BEGIN; SET LOCAL customers.app_id = '00000000-0000-0000-0000-000000000000'",
    )
    .await
    .unwrap();
    let Found { found } = diesel::sql_query(
        "SELECT count(*) AS found FROM customers_page(NULL, '%far-%', NULL, NULL, NULL, false, \
         true, NULL, NULL, 20, NULL, NULL)",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    let settings: Settings = diesel::sql_query(
        "SELECT current_setting('enable_indexscan') AS index_scans, \
                current_setting('enable_seqscan') AS sequential_scans",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    conn.batch_execute("COMMIT").await.unwrap();
    assert_eq!(found, 20);
    assert_eq!(
        (
            settings.index_scans.as_str(),
            settings.sequential_scans.as_str()
        ),
        ("on", "on")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_list_requests_are_invalid() {
    let mut svc = TestService::start().await;
    let default = pb::ListCustomersRequest::default;
    for (request, field) in [
        (
            pb::ListCustomersRequest {
                resume_after: "cus_01h2xcejqtf2nbrexx3vqjhp41".into(),
                ..default()
            },
            "resume_after",
        ),
        (
            pb::ListCustomersRequest {
                resume_after: "garbage".into(),
                ..default()
            },
            "resume_after",
        ),
        (
            pb::ListCustomersRequest {
                query: "q".repeat(201),
                ..default()
            },
            "query",
        ),
        (
            pb::ListCustomersRequest {
                order: 9,
                ..default()
            },
            "order",
        ),
        (
            pb::ListCustomersRequest {
                created_after: Some(prost_types::Timestamp {
                    seconds: -8_000_000_000_000,
                    nanos: 0,
                }),
                ..default()
            },
            "created_after",
        ),
        (
            pb::ListCustomersRequest {
                // 10000-01-01T00:00:00Z
                created_before: Some(prost_types::Timestamp {
                    seconds: 253_402_300_800,
                    nanos: 0,
                }),
                ..default()
            },
            "created_before",
        ),
    ] {
        assert_eq!(bad_fields(list(&mut svc.client, request).await), [field]);
    }
    // The edges of the range are valid.
    let edges = pb::ListCustomersRequest {
        created_after: Some(prost_types::Timestamp {
            seconds: -62_135_596_800,
            nanos: 0,
        }),
        created_before: Some(prost_types::Timestamp {
            seconds: 253_402_300_799,
            nanos: 999_999_999,
        }),
        ..default()
    };
    assert_eq!(list(&mut svc.client, edges).await.unwrap(), []);
}

/// The stream encodes each customer straight from its row; GetCustomer
/// reads the same row through the typed path. Both must give the same
/// customer, field for field, whatever the fields hold.
#[tokio::test(flavor = "multi_thread")]
async fn a_listed_customer_is_the_customer_get_returns() {
    let mut svc = TestService::start().await;
    let client = &mut svc.client;
    let metadata = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let full = pb::Customer {
        external_id: Some("user-α/1".into()),
        email: "full@example.com".into(),
        name: "Zoë \"Quoted\" O'Brien \\ 🦀".into(),
        phone: "+14155550100".into(),
        address: Some(pb::Address {
            line1: "1 Main St".into(),
            line2: "Suite 2".into(),
            city: "Zürich".into(),
            state: "ZH".into(),
            postal_code: "8001".into(),
            country: "CH".into(),
        }),
        timezone: "Europe/Zurich".into(),
        metadata: metadata(&[
            ("plan", "pro"),
            ("quote\"d", "back\\slash"),
            ("unicode_é", "line\nbreak ✓"),
            ("a", ""),
            ("seats", "12"),
            ("zz", "\u{1F980}"),
        ]),
        provider_ids: metadata(&[("stripe", "cus_1"), ("chargebee", "cb-2")]),
        ..Default::default()
    };
    let partial_address = pb::Customer {
        email: "partial@example.com".into(),
        address: Some(pb::Address {
            city: "Paris".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut ids = Vec::new();
    for c in [full, partial_address, customer("bare@example.com")] {
        ids.push(create_new(client, c).await.id);
    }
    // A later revision, and an archived customer (its archive time set).
    let renamed = update(
        client,
        pb::Customer {
            name: "Renamed".into(),
            ..patch(&ids[1])
        },
        &["name"],
    )
    .await
    .unwrap();
    assert_eq!(renamed.etag, "\"2\"");
    let bare = get_by_id(client, &ids[2]).await.unwrap();
    archive(client, &ids[2], &bare.etag).await.unwrap();

    let listed = list(
        client,
        pb::ListCustomersRequest {
            include_archived: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(listed.len(), 3);
    for (listed, id) in listed.iter().zip(&ids) {
        assert_eq!(&listed.id, id, "listed in creation order");
        let got = get_by_id(client, id).await.unwrap();
        assert_eq!(listed, &got);
    }
    assert!(listed[2].archive_time.is_some());
    assert_eq!(listed[0].metadata.len(), 6);
    assert_eq!(listed[0].metadata["quote\"d"], "back\\slash");
}
