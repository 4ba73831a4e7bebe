//! API keys, tenant isolation, row-level security, per-app limits, and the
//! admin commands.

use std::{num::NonZeroU32, time::Duration};

use customers::{
    auth::{ApiKey, AuthOptions},
    domain::{AppId, KeyId},
    pb::{self, get_customer_request::Lookup},
    server::ServeOptions,
    service::StreamOptions,
    storage::{self, PoolOptions, apps},
};
use diesel_async::SimpleAsyncConnection;
use tonic::{Code, Request};

use crate::common::*;

/// The same key with its secret in upper-case hex.
fn non_canonical(key: &str) -> String {
    let (head, secret) = key.split_at(key.len() - 40);
    let upper = format!("{head}{}", secret.to_uppercase());
    assert_ne!(upper, key, "a secret of 40 decimal digits (p < 1e-8)");
    upper
}

fn with_auth(auth: AuthOptions) -> Options {
    Options {
        serve: ServeOptions {
            auth,
            ..Options::default().serve
        },
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_without_a_valid_key_are_refused_before_any_handler_runs() {
    let svc = TestService::start().await;
    let plain = || pb::customer_service_client::CustomerServiceClient::new(svc.channel.clone());
    let attempt = |key: Option<(&'static str, String)>| {
        let mut client = plain();
        async move {
            let mut request = Request::new(pb::CreateCustomerRequest {
                customer: Some(customer("intruder@example.com")),
            });
            if let Some((header, value)) = key {
                request
                    .metadata_mut()
                    .insert(header, value.parse().unwrap());
            }
            client.create_customer(request).await
        }
    };
    let real = ApiKey::parse(&svc.key).unwrap();
    let mut wrong_secret = svc.key.clone();
    let last = if wrong_secret.ends_with('0') {
        "1"
    } else {
        "0"
    };
    wrong_secret.replace_range(wrong_secret.len() - 1.., last);
    let unknown = ApiKey::generate(real.app).reveal();

    assert_error(
        attempt(None).await,
        Code::Unauthenticated,
        "API_KEY_MISSING",
    );
    for (key, reason) in [
        ("Bearer not-a-key".to_owned(), "API_KEY_INVALID"),
        (format!("Bearer {unknown}"), "API_KEY_INVALID"),
        (format!("Bearer {wrong_secret}"), "API_KEY_INVALID"),
        (format!("Basic {}", svc.key), "API_KEY_MISSING"),
        // The same key in other spellings is not the key.
        (
            format!("Bearer {}", non_canonical(&svc.key)),
            "API_KEY_INVALID",
        ),
    ] {
        assert_error(
            attempt(Some(("authorization", key))).await,
            Code::Unauthenticated,
            reason,
        );
    }
    assert_eq!(svc.count("customers").await, 0, "no handler ran");

    // Both headers carry a key; an `authorization` of another scheme (added
    // by a proxy) does not hide `x-api-key`.
    attempt(Some(("x-api-key", svc.key.clone()))).await.unwrap();
    let mut request = Request::new(pb::GetCustomerRequest {
        lookup: Some(Lookup::ExternalId("nobody".into())),
    });
    request
        .metadata_mut()
        .insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
    request
        .metadata_mut()
        .insert("x-api-key", svc.key.parse().unwrap());
    assert_error(
        plain().get_customer(request).await,
        Code::NotFound,
        "CUSTOMER_NOT_FOUND",
    );
    attempt(Some(("authorization", format!("bearer {}", svc.key))))
        .await
        .unwrap();

    let text = scrape(&svc).await;
    assert!(
        text.contains(r#"customers_auth_failures_total{reason="API_KEY_INVALID"} 4"#),
        "{text}"
    );
    assert!(
        text.contains(r#"customers_auth_failures_total{reason="API_KEY_MISSING"} 2"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_key_stops_working_within_the_cache_ttl() {
    let mut svc = TestService::start_with(with_auth(AuthOptions {
        cache_ttl: Duration::from_millis(200),
        ..AuthOptions::default()
    }))
    .await;
    // Used once, so that the key is in the cache when it is revoked.
    create_new(&mut svc.client, customer("rev@example.com")).await;
    let key = ApiKey::parse(&svc.key).unwrap();
    let pool = storage::pool(&svc.database_url, &PoolOptions::default()).unwrap();
    apps::expire_key(&pool, key.app, key.id, Duration::ZERO)
        .await
        .unwrap();
    until_revoked(&mut svc.client, Duration::from_secs(5)).await;
}

/// Calls with `client` until its key is refused as revoked, within `within`.
async fn until_revoked(client: &mut Client, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match get_by_id(client, "cus_01h2xcejqtf2nbrexx3vqjhp41").await {
            Err(status) if status.code() == Code::Unauthenticated => {
                assert_error(
                    Err::<(), _>(status),
                    Code::Unauthenticated,
                    "API_KEY_REVOKED",
                );
                return;
            }
            _ => assert!(
                tokio::time::Instant::now() < deadline,
                "the key still works"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_key_keeps_working_for_the_overlap() {
    let mut svc = TestService::start_with(with_auth(AuthOptions {
        cache_ttl: Duration::from_millis(100),
        ..AuthOptions::default()
    }))
    .await;
    let old = ApiKey::parse(&svc.key).unwrap();
    let pool = storage::pool(&svc.database_url, &PoolOptions::default()).unwrap();
    let expiring = apps::expire_key(&pool, old.app, old.id, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(expiring.expire_time.is_some());
    let new_key = customers::admin::create_key(&pool, old.app).await.unwrap();
    let mut new_client = client(svc.channel.clone(), &new_key.reveal());

    // During the overlap both keys work.
    create_new(&mut svc.client, customer("old@example.com")).await;
    create_new(&mut new_client, customer("new@example.com")).await;
    // After it, only the new one.
    until_revoked(&mut svc.client, Duration::from_secs(5)).await;
    create_new(&mut new_client, customer("later@example.com")).await;

    // Listing shows both, by prefix and creation time.
    let keys = apps::list_keys(&pool, old.app).await.unwrap();
    let ids: Vec<KeyId> = keys.iter().map(|k| k.key_id()).collect();
    assert_eq!(ids, [old.id, new_key.id]);
    assert_eq!(keys[1].prefix, new_key.prefix());
    assert!(keys[0].expire_time.is_some() && keys[1].expire_time.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_sees_and_changes_nothing_of_another_app() {
    let mut svc = TestService::start().await;
    let (_, mut b) = other_app(&svc).await;

    // The same email and external id make two customers in two apps.
    let shared = || {
        let mut c = customer("same@example.com");
        c.external_id = Some("user-1".into());
        c.name = "Shared Name".into();
        c.metadata.insert("team".into(), "red".into());
        c.provider_ids.insert("stripe".into(), "cus_shared".into());
        c
    };
    let mine = create_new(&mut svc.client, shared()).await;
    let theirs = create_new(&mut b, shared()).await;
    assert_ne!(mine.id, theirs.id);

    // A's view of B's customer: nothing, by any key.
    let a = &mut svc.client;
    let lookups = [
        Lookup::Id(theirs.id.clone()),
        Lookup::ExternalId("user-2".into()),
        Lookup::ProviderId(pb::ProviderId {
            provider: "stripe".into(),
            id: "cus_theirs".into(),
        }),
    ];
    // Give B's customer keys A does not have.
    let mut patch = pb::Customer {
        id: theirs.id.clone(),
        external_id: Some("user-2".into()),
        ..Default::default()
    };
    patch
        .provider_ids
        .insert("stripe".into(), "cus_theirs".into());
    let theirs = update(&mut b, patch, &["external_id", "provider_ids"])
        .await
        .unwrap();
    for lookup in lookups {
        assert_error(
            a.get_customer(pb::GetCustomerRequest {
                lookup: Some(lookup),
            })
            .await,
            Code::NotFound,
            "CUSTOMER_NOT_FOUND",
        );
    }
    let mut hijack = crate::common::patch(&theirs.id);
    hijack.name = "Hijacked".into();
    let external = theirs.external_id.clone().unwrap();
    for result in [
        update(a, hijack, &[]).await,
        archive(a, &theirs.id, "").await,
        delete(a, &theirs.id, "").await,
        // By their external id too.
        a.archive_customer(pb::ArchiveCustomerRequest {
            external_id: external.clone(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().customer.unwrap()),
        a.delete_customer(pb::DeleteCustomerRequest {
            external_id: external,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().customer.unwrap()),
    ] {
        assert_error(result, Code::NotFound, "CUSTOMER_NOT_FOUND");
    }
    for request in [
        pb::ListCustomersRequest {
            include_archived: true,
            ..Default::default()
        },
        pb::ListCustomersRequest {
            email: "same@example.com".into(),
            ..Default::default()
        },
        pb::ListCustomersRequest {
            query: "Shared".into(),
            ..Default::default()
        },
        pb::ListCustomersRequest {
            metadata: [("team".to_owned(), "red".to_owned())].into(),
            ..Default::default()
        },
    ] {
        let ids: Vec<String> = list(a, request)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(ids, std::slice::from_ref(&mine.id));
    }
    assert_eq!(
        bad_fields(
            list(
                a,
                pb::ListCustomersRequest {
                    resume_after: theirs.id.clone(),
                    ..Default::default()
                }
            )
            .await
        ),
        ["resume_after"]
    );

    // B's customer is exactly as B left it; A's is untouched by B's writes.
    assert_eq!(get_by_id(&mut b, &theirs.id).await.unwrap(), theirs);
    assert_eq!(get_by_id(a, &mine.id).await.unwrap(), mine);
}

#[tokio::test(flavor = "multi_thread")]
async fn row_level_security_alone_blocks_cross_app_access() {
    let mut svc = TestService::start().await;
    let (b_app, mut b) = other_app(&svc).await;
    create_new(&mut svc.client, customer("a@example.com")).await;
    create_new(&mut b, customer("b@example.com")).await;
    let a_app = AppId::DEFAULT;

    let mut conn = svc.sql().await;
    let count = count_on;
    // As the service's role, with app A in scope, and queries that "forget"
    // to filter by app or ask for B outright.
    // Scoped exactly as the service scopes its transactions.
    let ctx = customers::context::RequestContext::new(a_app, Duration::from_secs(30));
    conn.batch_execute(&format!("BEGIN; {}", storage::scope_sql(&ctx).unwrap()))
        .await
        .unwrap();
    assert_eq!(
        count(&mut conn, "SELECT count(*) AS n FROM customers").await,
        1
    );
    assert_eq!(
        count(
            &mut conn,
            &format!(
                "SELECT count(*) AS n FROM customers WHERE app_id = '{}'",
                b_app.0
            )
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &mut conn,
            &format!(
                "WITH changed AS (UPDATE customers SET name = 'x' WHERE app_id = '{}' RETURNING 1)
                 SELECT count(*) AS n FROM changed",
                b_app.0
            )
        )
        .await,
        0
    );
    let insert = conn
        .batch_execute(&format!(
            "INSERT INTO customers (app_id, id, email) VALUES ('{}', gen_random_uuid(), 'x@y.z')",
            b_app.0
        ))
        .await;
    assert!(insert.is_err(), "row-level security let a write into app B");
    conn.batch_execute("ROLLBACK").await.unwrap();

    // With no app in scope, nothing at all.
    conn.batch_execute("BEGIN; SET LOCAL ROLE customers_service")
        .await
        .unwrap();
    assert_eq!(
        count(&mut conn, "SELECT count(*) AS n FROM customers").await,
        0
    );
    conn.batch_execute("ROLLBACK").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_noisy_app_is_rate_limited_and_others_are_not() {
    let mut svc = TestService::start_with(with_auth(AuthOptions {
        rate_per_second: NonZeroU32::new(1),
        rate_burst: NonZeroU32::new(3).unwrap(),
        ..AuthOptions::default()
    }))
    .await;
    let (_, mut b) = other_app(&svc).await;
    let missing = "cus_01h2xcejqtf2nbrexx3vqjhp41";
    for _ in 0..3 {
        assert_eq!(
            get_by_id(&mut svc.client, missing)
                .await
                .unwrap_err()
                .code(),
            Code::NotFound
        );
    }
    assert_error(
        get_by_id(&mut svc.client, missing).await,
        Code::ResourceExhausted,
        "RATE_LIMITED",
    );
    assert_eq!(
        get_by_id(&mut b, missing).await.unwrap_err().code(),
        Code::NotFound
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_may_only_hold_so_many_streams() {
    let mut svc = TestService::start_with(Options {
        stream: StreamOptions {
            batch_size: 10,
            max_per_app: NonZeroU32::new(1),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    seed(&svc.database_url, 500).await;
    let (_, mut b) = other_app(&svc).await;
    let first = open_listing(&mut small_window_client(&svc).await).await;
    assert_error(
        list(&mut svc.client, Default::default()).await,
        Code::ResourceExhausted,
        "TOO_MANY_STREAMS",
    );
    // Another app is not held back.
    assert!(list(&mut b, Default::default()).await.unwrap().is_empty());
    // The slot frees when the stream ends.
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while list(&mut svc.client, Default::default()).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs an admin command of the binary against `database_url`.
fn admin(database_url: &str, args: &[&str]) -> (i32, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_customers"))
        .args(args)
        .env("DATABASE_URL", database_url)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn apps_and_keys_are_managed_from_the_command_line() {
    let svc = TestService::start_with(with_auth(AuthOptions {
        cache_ttl: Duration::from_millis(100),
        ..AuthOptions::default()
    }))
    .await;
    let url = svc.database_url.clone();
    let run = move |args: &[&str]| admin(&url, args);

    let (code, app, _) = run(&["apps", "create", "--name", "Acme"]);
    assert_eq!(code, 0);
    assert!(app.starts_with("app_"), "{app}");
    let (_, listed, _) = run(&["apps", "list"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(&app) && l.ends_with("Acme")),
        "{listed}"
    );

    let (code, key, note) = run(&["keys", "create", "--app", &app]);
    assert_eq!(code, 0, "{note}");
    assert!(key.starts_with("ck_"), "{key}");
    let mut acme = client(svc.channel.clone(), &key);
    let c = create_new(&mut acme, customer("acme@example.com")).await;

    let key_id = ApiKey::parse(&key).unwrap().id.to_string();
    let (_, keys, _) = run(&["keys", "list", "--app", &app]);
    assert!(
        keys.contains(&key_id) && keys.contains(&key[..19]),
        "{keys}"
    );
    assert!(!keys.contains(&key), "a listing never shows a whole key");

    let (code, rotated, _) = run(&[
        "keys",
        "rotate",
        "--app",
        &app,
        "--key",
        &key_id,
        "--overlap",
        "1h",
    ]);
    assert_eq!(code, 0);
    assert_ne!(rotated, key);
    let mut rotated_client = client(svc.channel.clone(), &rotated);
    assert_eq!(
        get_by_id(&mut rotated_client, &c.id).await.unwrap().id,
        c.id
    );
    assert_eq!(
        get_by_id(&mut acme, &c.id).await.unwrap().id,
        c.id,
        "overlap"
    );

    let (code, _, _) = run(&["keys", "revoke", "--app", &app, "--key", &key_id]);
    assert_eq!(code, 0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_error(
        get_by_id(&mut acme, &c.id).await,
        Code::Unauthenticated,
        "API_KEY_REVOKED",
    );

    // Mistakes are one-line errors with exit code 2.
    for args in [
        &["keys", "create", "--app", "acme"][..],
        &[
            "keys",
            "revoke",
            "--app",
            &app,
            "--key",
            "key_01h2xcejqtf2nbrexx3vqjhp41",
        ],
    ] {
        let (code, _, stderr) = run(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    let (code, _, stderr) = admin("", &["apps", "list"]);
    assert_ne!(code, 0, "{stderr}");
}
