//! WatchCustomerEvents: the change-event log, end to end.

use std::{collections::HashMap, time::Duration};

use customers::{
    domain::{AppId, ResumeToken},
    pb::{self, customer_event::Type},
    service::EventOptions,
};
use prost::Message;
use tonic::{Code, Streaming};

use crate::common::*;

type Watch = Streaming<pb::WatchCustomerEventsResponse>;

fn options(events: EventOptions) -> Options {
    Options {
        events,
        ..Default::default()
    }
}

/// Opens a watch and reads its first message, which must be a bookmark;
/// returns the stream and the bookmark's token.
async fn watch(client: &mut Client, request: pb::WatchCustomerEventsRequest) -> (Watch, String) {
    let mut stream = client
        .watch_customer_events(request)
        .await
        .expect("opening a watch")
        .into_inner();
    let first = stream.message().await.unwrap().expect("a first message");
    assert!(first.event.is_none(), "the first message is a bookmark");
    assert!(!first.resume_token.is_empty());
    (stream, first.resume_token)
}

fn from_token(token: &str) -> pb::WatchCustomerEventsRequest {
    pb::WatchCustomerEventsRequest {
        resume_token: token.to_owned(),
        ..Default::default()
    }
}

/// The next event of a watch, skipping bookmarks; fails after 10 s.
async fn next_event(stream: &mut Watch) -> (pb::CustomerEvent, String) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let message = stream.message().await.unwrap().expect("the stream ended");
            if let Some(event) = message.event {
                return (event, message.resume_token);
            }
        }
    })
    .await
    .expect("an event within 10 s")
}

fn position(token: &str) -> u64 {
    ResumeToken::parse(token).expect("a token").position
}

#[tokio::test(flavor = "multi_thread")]
async fn each_real_change_makes_one_event_in_order() {
    let mut svc = TestService::start().await;
    let (mut stream, start) = watch(&mut svc.client, Default::default()).await;
    let key_id = customers::auth::ApiKey::parse(&svc.key)
        .unwrap()
        .id
        .to_string();

    let created = create_new(
        &mut svc.client,
        pb::Customer {
            email: "ada@example.com".into(),
            metadata: [("plan".to_owned(), "free".to_owned())].into(),
            ..Default::default()
        },
    )
    .await;
    // A repeat create, an update that changes nothing: no event.
    assert!(
        !create(&mut svc.client, customer("ada@example.com"))
            .await
            .unwrap()
            .created
    );
    let same = update(
        &mut svc.client,
        pb::Customer {
            metadata: [("plan".to_owned(), "free".to_owned())].into(),
            ..patch(&created.id)
        },
        &["metadata.plan"],
    )
    .await
    .unwrap();
    assert_eq!(same.etag, created.etag);
    let updated = update(
        &mut svc.client,
        pb::Customer {
            name: "Ada".into(),
            metadata: [("plan".to_owned(), "pro".to_owned())].into(),
            ..patch(&created.id)
        },
        &["name", "metadata.plan"],
    )
    .await
    .unwrap();
    let archived = archive(&mut svc.client, &created.id, "").await.unwrap();
    // A retried archive changes nothing: no event.
    archive(&mut svc.client, &created.id, "").await.unwrap();

    let (e1, t1) = next_event(&mut stream).await;
    let (e2, t2) = next_event(&mut stream).await;
    let (e3, t3) = next_event(&mut stream).await;
    assert_eq!(position(&t1), position(&start) + 1);
    assert_eq!(position(&t2), position(&t1) + 1);
    assert_eq!(position(&t3), position(&t2) + 1);

    assert_eq!(e1.r#type(), Type::Created);
    assert!(e1.id.starts_with("evt_"));
    assert_eq!(e1.customer_id, created.id);
    assert_eq!(e1.customer.as_ref().unwrap(), &created);
    assert!(e1.changed_fields.is_empty());
    assert_eq!(e1.key_id, key_id);
    assert!(!e1.redacted);
    assert!(e1.create_time.is_some());

    assert_eq!(e2.r#type(), Type::Updated);
    assert_eq!(e2.customer.as_ref().unwrap(), &updated);
    assert_eq!(e2.changed_fields, ["name", "metadata.plan"]);

    assert_eq!(e3.r#type(), Type::Archived);
    assert_eq!(e3.customer.as_ref().unwrap(), &archived);

    // Nothing else was recorded.
    assert_eq!(svc.count("customer_events").await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn resuming_continues_exactly_after_any_message() {
    let mut svc = TestService::start().await;
    let (mut stream, start) = watch(&mut svc.client, Default::default()).await;
    for i in 0..20 {
        create_new(&mut svc.client, customer(&format!("r{i}@example.com"))).await;
    }
    let mut all = Vec::new();
    for _ in 0..20 {
        all.push(next_event(&mut stream).await);
    }
    drop(stream);
    // From the bookmark and from each event: exactly the rest, in order.
    let mut cuts = vec![start.clone()];
    cuts.extend(all.iter().map(|(_, t)| t.clone()));
    for (i, cut) in cuts.iter().enumerate().step_by(3) {
        let (mut resumed, bookmark) = watch(&mut svc.client, from_token(cut)).await;
        assert_eq!(position(&bookmark), position(cut));
        for (expected, token) in &all[i..] {
            let (event, t) = next_event(&mut resumed).await;
            assert_eq!(&event, expected);
            assert_eq!(&t, token);
        }
    }
    // From a time: the first event recorded at or after it.
    let third = all[2].0.create_time;
    let (mut from_time, _) = watch(
        &mut svc.client,
        pb::WatchCustomerEventsRequest {
            start_time: third,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(next_event(&mut from_time).await.0, all[2].0);
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_select_a_customer_and_types_and_bookmarks_keep_positions_fresh() {
    let mut svc = TestService::start_with(options(EventOptions {
        bookmark_interval: Duration::from_millis(300),
        ..Default::default()
    }))
    .await;
    let a = create_new(&mut svc.client, customer("a@example.com")).await;
    let b = create_new(&mut svc.client, customer("b@example.com")).await;
    let (mut only_a, start) = watch(
        &mut svc.client,
        pb::WatchCustomerEventsRequest {
            customer_id: a.id.clone(),
            types: vec![Type::Archived as i32],
            ..Default::default()
        },
    )
    .await;
    // Changes of b, and a non-archive change of a: filtered out, but the
    // next bookmark carries a position past them.
    update(
        &mut svc.client,
        pb::Customer {
            name: "B".into(),
            ..patch(&b.id)
        },
        &["name"],
    )
    .await
    .unwrap();
    update(
        &mut svc.client,
        pb::Customer {
            name: "A".into(),
            ..patch(&a.id)
        },
        &["name"],
    )
    .await
    .unwrap();
    let bookmark = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let message = only_a.message().await.unwrap().unwrap();
            assert!(message.event.is_none(), "only bookmarks so far");
            if position(&message.resume_token) == position(&start) + 2 {
                return message.resume_token;
            }
        }
    })
    .await
    .expect("a bookmark past the filtered-out events");
    archive(&mut svc.client, &b.id, "").await.unwrap();
    archive(&mut svc.client, &a.id, "").await.unwrap();
    let (event, token) = next_event(&mut only_a).await;
    assert_eq!(event.r#type(), Type::Archived);
    assert_eq!(event.customer_id, a.id);
    assert_eq!(position(&token), position(&bookmark) + 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_watch_requests_are_invalid() {
    let mut svc = TestService::start().await;
    let (_other, mut other_client) = other_app(&svc).await;
    let (_, other_token) = watch(&mut other_client, Default::default()).await;
    let cases: Vec<(pb::WatchCustomerEventsRequest, &str)> = vec![
        (from_token("not a token"), "resume_token"),
        (from_token("AQ"), "resume_token"),
        (from_token(&"A".repeat(10_000)), "resume_token"),
        (from_token("a\0b"), "resume_token"),
        (from_token(&other_token), "resume_token"),
        (
            pb::WatchCustomerEventsRequest {
                resume_token: other_token.clone(),
                start_time: Some(prost_types::Timestamp::default()),
                ..Default::default()
            },
            "start_time",
        ),
        (
            pb::WatchCustomerEventsRequest {
                customer_id: "cus_nope".into(),
                ..Default::default()
            },
            "customer_id",
        ),
        (
            pb::WatchCustomerEventsRequest {
                types: vec![0],
                ..Default::default()
            },
            "types[0]",
        ),
        (
            pb::WatchCustomerEventsRequest {
                types: vec![1, 99],
                ..Default::default()
            },
            "types[1]",
        ),
    ];
    for (request, field) in cases {
        let result = svc.client.watch_customer_events(request.clone()).await;
        assert_eq!(bad_fields(result), [field], "{request:?}");
    }
    // A position this app has not reached.
    let ahead = ResumeToken {
        app: AppId::DEFAULT,
        position: 1_000,
    };
    let result = svc
        .client
        .watch_customer_events(from_token(&ahead.encode()))
        .await;
    assert_eq!(bad_fields(result), ["resume_token"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn apps_see_only_their_own_events() {
    let mut svc = TestService::start().await;
    let (_, mut other_client) = other_app(&svc).await;
    let (mut mine, _) = watch(&mut svc.client, Default::default()).await;
    let (mut theirs, _) = watch(&mut other_client, Default::default()).await;
    create_new(&mut svc.client, customer("mine@example.com")).await;
    create_new(&mut other_client, customer("theirs@example.com")).await;
    let (event, _) = next_event(&mut mine).await;
    assert_eq!(event.customer.unwrap().email, "mine@example.com");
    let (event, token) = next_event(&mut theirs).await;
    assert_eq!(event.customer.unwrap().email, "theirs@example.com");
    // Each app's log starts at 1.
    assert_eq!(position(&token), 1);
    // Replayed from the start, each sees one event.
    for (client, email) in [
        (&mut svc.client, "mine@example.com"),
        (&mut other_client, "theirs@example.com"),
    ] {
        let start = ResumeToken::parse(&token).unwrap();
        let mut own = start;
        own.app = ResumeToken::parse(&watch(client, Default::default()).await.1)
            .unwrap()
            .app;
        own.position = 0;
        let (mut replay, _) = watch(client, from_token(&own.encode())).await;
        let (event, _) = next_event(&mut replay).await;
        assert_eq!(event.customer.unwrap().email, email);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn erasure_removes_a_customer_from_every_past_event() {
    let mut svc = TestService::start().await;
    let secret = "erase-me-7f3a@example.com";
    let (_, start) = watch(&mut svc.client, Default::default()).await;
    let created = create_new(
        &mut svc.client,
        pb::Customer {
            email: secret.into(),
            name: "Erase Me".into(),
            external_id: Some("user-erase-7f3a".into()),
            phone: "+33612345678".into(),
            metadata: [("note".to_owned(), "erase-me-7f3a".to_owned())].into(),
            provider_ids: [("stripe".to_owned(), "cus_erase7f3a".to_owned())].into(),
            ..Default::default()
        },
    )
    .await;
    update(
        &mut svc.client,
        pb::Customer {
            name: "Still Me erase-me-7f3a".into(),
            ..patch(&created.id)
        },
        &["name"],
    )
    .await
    .unwrap();
    let kept = create_new(&mut svc.client, customer("kept@example.com")).await;
    let tombstone = delete(&mut svc.client, &created.id, "").await.unwrap();

    // Replayed from the start: ids, types, positions stay; the data is gone.
    let (mut replay, _) = watch(&mut svc.client, from_token(&start)).await;
    let mut bytes = Vec::new();
    let mut events = Vec::new();
    for _ in 0..4 {
        let message = loop {
            let m = replay.message().await.unwrap().unwrap();
            if m.event.is_some() {
                break m;
            }
        };
        bytes.extend(message.encode_to_vec());
        events.push(message.event.unwrap());
    }
    let kinds: Vec<Type> = events.iter().map(|e| e.r#type()).collect();
    assert_eq!(
        kinds,
        [Type::Created, Type::Updated, Type::Created, Type::Deleted]
    );
    for event in [&events[0], &events[1]] {
        assert!(event.redacted);
        assert_eq!(event.customer_id, created.id);
        assert_eq!(
            event.customer.as_ref().unwrap(),
            &pb::Customer {
                id: created.id.clone(),
                ..Default::default()
            }
        );
    }
    assert_eq!(events[1].changed_fields, ["name"]);
    assert!(!events[2].redacted);
    assert_eq!(events[2].customer.as_ref().unwrap().id, kept.id);
    assert!(
        !events[3].redacted,
        "the deleted event carries the tombstone"
    );
    assert_eq!(events[3].customer.as_ref().unwrap(), &tombstone);

    let haystack = String::from_utf8_lossy(&bytes);
    for needle in [
        "erase-me-7f3a",
        "Erase Me",
        "user-erase",
        "+3361",
        "cus_erase7f3a",
    ] {
        assert!(!haystack.contains(needle), "{needle} was streamed");
        let stored = svc
            .count(&format!(
                "customer_events WHERE customer::text LIKE '%{needle}%' \
                 OR changed_fields::text LIKE '%{needle}%'"
            ))
            .await;
        assert_eq!(stored, 0, "{needle} is still stored in an event");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pruned_positions_are_out_of_range_never_a_silent_gap() {
    let mut svc = TestService::start_with(options(EventOptions {
        retention: Duration::from_secs(1),
        prune_interval: Duration::from_millis(200),
        ..Default::default()
    }))
    .await;
    let (_, start) = watch(&mut svc.client, Default::default()).await;
    let before = prost_types::Timestamp::from(std::time::SystemTime::now());
    for i in 0..3 {
        create_new(&mut svc.client, customer(&format!("old{i}@example.com"))).await;
    }
    eventually_async(Duration::from_secs(20), "the events pruned", || async {
        svc.count("customer_events").await == 0
    })
    .await;
    create_new(&mut svc.client, customer("new@example.com")).await;

    let metadata = assert_error(
        svc.client.watch_customer_events(from_token(&start)).await,
        Code::OutOfRange,
        "RESUME_TOKEN_EXPIRED",
    );
    let oldest = &metadata["oldest_resume_token"];
    assert!(position(oldest) >= 3);
    assert_error(
        svc.client
            .watch_customer_events(pb::WatchCustomerEventsRequest {
                start_time: Some(before),
                ..Default::default()
            })
            .await,
        Code::OutOfRange,
        "RESUME_TOKEN_EXPIRED",
    );
    // From the oldest available position: whatever is retained, no gap.
    let (mut resumed, _) = watch(&mut svc.client, from_token(oldest)).await;
    let (event, token) = next_event(&mut resumed).await;
    assert_eq!(position(&token), position(oldest) + 1);
    assert_eq!(event.customer.unwrap().email, "new@example.com");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_replica_resumes_and_notifications_cross_replicas() {
    // No fallback poll to speak of: only notifications can wake a feed.
    let slow_poll = || {
        options(EventOptions {
            poll_interval: Duration::from_secs(3600),
            ..Default::default()
        })
    };
    let mut first = TestService::start_with(slow_poll()).await;
    let mut second = TestService::start_on(first.database_url.clone(), slow_poll()).await;
    second.client = client(second.channel.clone(), &first.key);

    let (mut on_first, _) = watch(&mut first.client, Default::default()).await;
    // Written through the second replica, seen by the first's watch.
    let one = create_new(&mut second.client, customer("one@example.com")).await;
    let (event, token) = next_event(&mut on_first).await;
    assert_eq!(event.customer_id, one.id);
    drop(on_first);

    let two = create_new(&mut first.client, customer("two@example.com")).await;
    // Resumed on the second replica, right after the first's last message.
    let (mut on_second, bookmark) = watch(&mut second.client, from_token(&token)).await;
    assert_eq!(bookmark, token);
    let (event, _) = next_event(&mut on_second).await;
    assert_eq!(event.customer_id, two.id);
    // And a write through the first reaches the second's live watch.
    let three = create_new(&mut first.client, customer("three@example.com")).await;
    let (event, _) = next_event(&mut on_second).await;
    assert_eq!(event.customer_id, three.id);
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_ends_watches_resumably_and_apps_are_held_to_their_limit() {
    let mut svc = TestService::start_with(options(EventOptions {
        max_watches_per_app: std::num::NonZeroU32::new(2),
        ..Default::default()
    }))
    .await;
    let (mut one, _) = watch(&mut svc.client, Default::default()).await;
    let (_two, _) = watch(&mut svc.client, Default::default()).await;
    assert_error(
        svc.client
            .watch_customer_events(pb::WatchCustomerEventsRequest::default())
            .await,
        Code::ResourceExhausted,
        "TOO_MANY_WATCHES",
    );
    create_new(&mut svc.client, customer("s@example.com")).await;
    next_event(&mut one).await;
    let stopping = tokio::spawn(svc.stop());
    let status = final_status(&mut one).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    stopping.await.unwrap();
}

/// What one watcher received: positions and events, across its resumes.
#[derive(Default)]
struct Received {
    events: Vec<(u64, pb::CustomerEvent)>,
    token: Option<String>,
}

/// Watches from `token` until position `until`, cutting the stream at
/// random and resuming from the last token received.
async fn watch_with_cuts(
    mut client: Client,
    token: String,
    until: tokio::sync::watch::Receiver<u64>,
    seed: u64,
) -> Received {
    let mut received = Received {
        token: Some(token),
        ..Default::default()
    };
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    loop {
        let token = received.token.clone().unwrap();
        let target = *until.borrow();
        if target > 0 && position(&token) >= target {
            return received;
        }
        let (mut stream, bookmark) = watch(&mut client, from_token(&token)).await;
        assert_eq!(bookmark, token, "a resumed watch starts where asked");
        let take = 1 + next() % 15;
        for _ in 0..take {
            let message =
                match tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
                    Ok(message) => message.unwrap().unwrap(),
                    Err(_) => break,
                };
            if let Some(event) = message.event {
                received
                    .events
                    .push((position(&message.resume_token), event));
            }
            received.token = Some(message.resume_token);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writers_with_rollbacks_and_cut_watches_lose_nothing_and_invent_nothing() {
    let svc = TestService::start().await;
    let (other, other_client) = other_app(&svc).await;
    let apps = [(AppId::DEFAULT, svc.client.clone()), (other, other_client)];

    // Watchers start at each app's current position.
    let mut watchers = Vec::new();
    let mut starts = HashMap::new();
    let mut done = HashMap::new();
    for (app, client) in &apps {
        let mut c = client.clone();
        let (_, token) = watch(&mut c, Default::default()).await;
        starts.insert(*app, token.clone());
        let (done_tx, done_rx) = tokio::sync::watch::channel(0u64);
        done.insert(*app, done_tx);
        for seed in 1..=3u64 {
            let (c, token, rx) = (client.clone(), token.clone(), done_rx.clone());
            let seed = seed * 7919 + app.0.as_u128() as u64;
            watchers.push((*app, tokio::spawn(watch_with_cuts(c, token, rx, seed))));
        }
    }

    // Writers: service calls (some of which fail and roll back: a taken
    // email), and raw transactions that append as the service does, pause
    // before committing, and sometimes roll back.
    let mut writers = Vec::new();
    for (w, (app, client)) in apps.iter().cycle().take(6).enumerate() {
        let (app, mut client) = (*app, client.clone());
        writers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..12 {
                let email = format!("w{w}-{i}@example.com");
                let created = create_new(&mut client, customer(&email)).await;
                // Taken email: rolled back, no event.
                if i > 0 {
                    let taken = update(
                        &mut client,
                        pb::Customer {
                            email: format!("w{w}-0@example.com"),
                            ..patch(&created.id)
                        },
                        &["email"],
                    )
                    .await;
                    assert_eq!(taken.unwrap_err().code(), Code::AlreadyExists);
                }
                update(
                    &mut client,
                    pb::Customer {
                        name: format!("n{i}"),
                        ..patch(&created.id)
                    },
                    &["name"],
                )
                .await
                .unwrap();
                ids.push(created.id);
            }
            let _ = app;
            ids
        }));
    }
    let url = svc.database_url.clone();
    let mut raw = Vec::new();
    for r in 0..4u64 {
        let (url, app) = (url.clone(), apps[(r % 2) as usize].0);
        raw.push(tokio::spawn(async move {
            use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
            let mut conn = AsyncPgConnection::establish(&url).await.unwrap();
            let mut rolled_back = Vec::new();
            for i in 0..10u64 {
                let event = uuid::Uuid::now_v7();
                let pause = (r * 31 + i * 17) % 40;
                let end = if (r + i) % 3 == 0 {
                    "ROLLBACK"
                } else {
                    "COMMIT"
                };
                // The scope alone in its batch, as the service sends it
                // (Citus replays a propagated SET LOCAL's whole batch).
                conn.batch_execute("BEGIN").await.unwrap();
                conn.batch_execute(&format!(
                    "SET LOCAL citus.propagate_set_commands = 'local'; \
                     SET LOCAL ROLE customers_service; \
                     SET LOCAL customers.app_id = '{app}'",
                    app = app.0,
                ))
                .await
                .unwrap();
                conn.batch_execute(&format!(
                    "INSERT INTO customer_events (app_id, id, type, customer_id) \
                     VALUES ('{app}', '{event}', 'updated', '{customer}'); \
                     SELECT pg_sleep({pause} / 1000.0); {end};",
                    app = app.0,
                    customer = uuid::Uuid::now_v7(),
                ))
                .await
                .unwrap();
                if end == "ROLLBACK" {
                    rolled_back.push(event);
                }
            }
            rolled_back
        }));
    }
    let mut rolled_back = Vec::new();
    for task in raw {
        rolled_back.extend(task.await.unwrap());
    }
    for task in writers {
        task.await.unwrap();
    }

    // The committed truth, per app, in position order, once every event has
    // its position (the raw transactions woke no feed: wake them).
    let mut conn = svc.sql().await;
    for (app, _) in &apps {
        diesel_async::SimpleAsyncConnection::batch_execute(
            &mut conn,
            &format!(
                "SELECT sequence_customer_events('{app}'); \
                 SELECT pg_notify('customer_events', '{app}')",
                app = app.0
            ),
        )
        .await
        .unwrap();
    }
    let mut truth: HashMap<AppId, Vec<(u64, String)>> = HashMap::new();
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        app_id: uuid::Uuid,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        position: i64,
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        id: uuid::Uuid,
    }
    let rows: Vec<Row> = diesel_async::RunQueryDsl::load(
        diesel::sql_query(
            "SELECT app_id, position, id FROM customer_events ORDER BY app_id, position",
        ),
        &mut conn,
    )
    .await
    .unwrap();
    for row in rows {
        let id = customers::domain::EventId(row.id).to_string();
        truth
            .entry(AppId(row.app_id))
            .or_default()
            .push((row.position as u64, id));
    }
    for (app, events) in &truth {
        // Gapless: 1, 2, 3, ...
        for (i, (position, _)) in events.iter().enumerate() {
            assert_eq!(*position, i as u64 + 1, "app {app}");
        }
    }
    let rolled: Vec<String> = rolled_back
        .iter()
        .map(|u| customers::domain::EventId(*u).to_string())
        .collect();
    for events in truth.values() {
        assert!(events.iter().all(|(_, id)| !rolled.contains(id)));
    }

    // Watchers stop once at the last position of their app.
    for (app, tx) in &done {
        let _ = tx.send(truth[app].len() as u64);
    }
    for (app, task) in watchers {
        let expected = &truth[&app];
        let start = position(&starts[&app]);
        let received = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("a watcher finishes")
            .unwrap();
        let got: Vec<(u64, String)> = received
            .events
            .iter()
            .map(|(p, e)| (*p, e.id.clone()))
            .collect();
        let want: Vec<(u64, String)> = expected
            .iter()
            .filter(|(p, _)| *p > start)
            .cloned()
            .collect();
        assert_eq!(got, want, "app {app}: no gap, no duplicate, commit order");
        // Each customer's events in write order (revisions rise).
        let mut revisions: HashMap<String, i64> = HashMap::new();
        for (_, event) in &received.events {
            let Some(customer) = &event.customer else {
                continue;
            };
            if customer.etag.is_empty() {
                continue;
            }
            let revision: i64 = customer.etag.trim_matches('"').parse().unwrap();
            let previous = revisions.insert(event.customer_id.clone(), revision);
            assert!(
                previous.is_none_or(|p| p < revision),
                "a customer's events out of order"
            );
        }
    }
}

/// The value of an unlabelled metric in a scrape.
fn metric(scrape: &str, name: &str) -> u64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in the scrape"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn many_watches_of_an_app_share_one_read_per_change() {
    let mut svc = TestService::start().await;
    let mut watches = Vec::new();
    for _ in 0..50 {
        watches.push(watch(&mut svc.client, Default::default()).await.0);
    }
    let before = scrape(&svc).await;
    let changes = 10;
    for i in 0..changes {
        let created = create_new(&mut svc.client, customer(&format!("m{i}@example.com"))).await;
        for stream in &mut watches {
            let (event, _) = next_event(stream).await;
            assert_eq!(event.customer_id, created.id);
        }
    }
    let after = scrape(&svc).await;
    let watch_reads = metric(&after, "customers_event_watch_reads_total")
        - metric(&before, "customers_event_watch_reads_total");
    let feed_reads = metric(&after, "customers_event_feed_reads_total")
        - metric(&before, "customers_event_feed_reads_total");
    assert_eq!(watch_reads, 0, "no watch read the database itself");
    assert!(
        (1..=2 * changes).contains(&feed_reads),
        "{feed_reads} feed reads for {changes} changes and 50 watches"
    );
    assert_eq!(metric(&after, "customers_open_watches"), 50);
}
