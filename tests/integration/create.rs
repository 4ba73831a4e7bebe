//! CreateCustomer: every field, idempotency by email and by external id,
//! taken keys, validation, and concurrent identical creates.

use std::collections::HashSet;

use customers::pb;
use tonic::Code;

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn creates_a_customer_with_every_field() {
    let mut svc = TestService::start().await;
    let response = create(
        &mut svc.client,
        pb::Customer {
            external_id: Some("user_42".into()),
            email: "Alice@Example.com".into(),
            name: "Alice Liddell".into(),
            phone: "+1 (415) 555-1234".into(),
            address: Some(pb::Address {
                line1: "123 Wonderland Ave".into(),
                line2: "Apt 4".into(),
                city: "San Francisco".into(),
                state: "CA".into(),
                postal_code: "94110".into(),
                country: "us".into(),
            }),
            timezone: "America/Los_Angeles".into(),
            metadata: [("plan".to_owned(), "pro".to_owned())].into(),
            provider_ids: [("stripe".to_owned(), "cus_xyz".to_owned())].into(),
            // Output-only fields are ignored.
            id: "cus_ignored".into(),
            state: pb::customer::State::Deleted as i32,
            etag: "ignored".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(response.created);
    let c = response.customer.unwrap();
    assert!(c.id.starts_with("cus_") && c.id.len() == 30, "{}", c.id);
    assert_eq!(c.external_id.as_deref(), Some("user_42"));
    assert_eq!(c.email, "Alice@Example.com");
    assert_eq!(c.name, "Alice Liddell");
    assert_eq!(c.phone, "+14155551234");
    let address = c.address.clone().unwrap();
    assert_eq!(address.country, "US");
    assert_eq!(address.line2, "Apt 4");
    assert_eq!(c.timezone, "America/Los_Angeles");
    assert_eq!(c.metadata["plan"], "pro");
    assert_eq!(c.provider_ids["stripe"], "cus_xyz");
    assert_eq!(c.state(), pb::customer::State::Active);
    assert!(c.create_time.is_some() && c.update_time.is_some());
    assert!(c.archive_time.is_none() && c.delete_time.is_none());
    assert!(!c.etag.is_empty());

    // What was stored is what Get returns.
    let fetched = get_by_id(&mut svc.client, &c.id).await.unwrap();
    assert_eq!(fetched, c);
}

#[tokio::test(flavor = "multi_thread")]
async fn create_is_idempotent_by_email_case_insensitively() {
    let mut svc = TestService::start().await;
    let first = create_new(&mut svc.client, customer("bob@example.com")).await;
    let again = create(&mut svc.client, customer("BOB@example.COM"))
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.customer.unwrap().id, first.id);
    assert_eq!(svc.count("customers").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn create_is_idempotent_by_external_id() {
    let mut svc = TestService::start().await;
    let mut c = customer("carol@example.com");
    c.external_id = Some("u1".into());
    let first = create_new(&mut svc.client, c.clone()).await;

    // The external id is the key: a changed email still finds the customer,
    // which is returned unchanged.
    c.email = "carol.new@example.com".into();
    let again = create(&mut svc.client, c).await.unwrap();
    assert!(!again.created);
    let again = again.customer.unwrap();
    assert_eq!(again.id, first.id);
    assert_eq!(again.email, "carol@example.com");
    assert_eq!(svc.count("customers").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_pointing_at_different_customers_are_already_exists() {
    let mut svc = TestService::start().await;
    let mut a = customer("a@example.com");
    a.external_id = Some("ext-a".into());
    let a = create_new(&mut svc.client, a).await;
    let b = create_new(&mut svc.client, customer("b@example.com")).await;

    // External id of A, email of B: the external id decides, so this is A,
    // unchanged (the email of the request is not written).
    let mut both = customer("b@example.com");
    both.external_id = Some("ext-a".into());
    let response = create(&mut svc.client, both).await.unwrap();
    assert!(!response.created);
    assert_eq!(response.customer, Some(a.clone()));
    assert_ne!(a.id, b.id);

    // A new external id with A's email.
    let mut taken = customer("A@example.com");
    taken.external_id = Some("ext-new".into());
    let meta = assert_error(
        create(&mut svc.client, taken).await,
        Code::AlreadyExists,
        "EMAIL_TAKEN",
    );
    assert_eq!(meta["customer_id"], a.id);
    assert_eq!(svc.count("customers").await, 2);
}

/// A signup retried after the customer's email moved to someone else still
/// finds its customer by external id.
#[tokio::test(flavor = "multi_thread")]
async fn a_create_retried_after_its_email_moved_returns_its_customer() {
    let mut svc = TestService::start().await;
    let mut original = customer("a@example.com");
    original.external_id = Some("user-1".into());
    let a = create_new(&mut svc.client, original.clone()).await;

    let mut moving = patch(&a.id);
    moving.email = "a2@example.com".into();
    let moved = update(&mut svc.client, moving, &[]).await.unwrap();
    let b = create_new(&mut svc.client, customer("a@example.com")).await;

    let retry = create(&mut svc.client, original).await.unwrap();
    assert!(!retry.created);
    assert_eq!(retry.customer, Some(moved));
    assert_ne!(b.id, a.id);
    assert_eq!(svc.count("customers").await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_taken_provider_id_writes_nothing() {
    let mut svc = TestService::start().await;
    let mut a = customer("a@example.com");
    a.provider_ids.insert("stripe".into(), "cus_1".into());
    let a = create_new(&mut svc.client, a).await;

    let mut b = customer("b@example.com");
    b.provider_ids.insert("stripe".into(), "cus_1".into());
    b.provider_ids.insert("paddle".into(), "ctm_1".into());
    let meta = assert_error(
        create(&mut svc.client, b).await,
        Code::AlreadyExists,
        "PROVIDER_ID_TAKEN",
    );
    assert_eq!(meta["customer_id"], a.id);
    // No half-written customer: neither the row nor its other provider id.
    assert_eq!(svc.count("customers").await, 1);
    assert_eq!(svc.count("customer_provider_ids").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_input_lists_every_bad_field_and_writes_nothing() {
    let mut svc = TestService::start().await;
    let bad = pb::Customer {
        external_id: Some(" ".into()),
        email: "not an email".into(),
        phone: "555".into(),
        address: Some(pb::Address {
            country: "Narnia".into(),
            ..Default::default()
        }),
        timezone: "Europe/Atlantis".into(),
        metadata: [("k".repeat(41), "v".to_owned())].into(),
        provider_ids: [("Stripe!".to_owned(), "x".to_owned())].into(),
        ..Default::default()
    };
    let fields = bad_fields(create(&mut svc.client, bad).await);
    assert_eq!(
        fields,
        [
            "customer.address.country",
            "customer.email",
            "customer.external_id",
            format!("customer.metadata[{:?}]", "k".repeat(41)).as_str(),
            "customer.phone",
            "customer.provider_ids[\"Stripe!\"]",
            "customer.timezone",
        ]
    );
    assert_eq!(
        bad_fields(
            svc.client
                .create_customer(pb::CreateCustomerRequest { customer: None })
                .await
        ),
        ["customer"]
    );
    assert_eq!(svc.count("customers").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_identical_creates_make_one_customer() {
    let svc = TestService::start().await;
    for keyed_by_external_id in [false, true] {
        let mut c = customer(&format!("race-{keyed_by_external_id}@example.com"));
        if keyed_by_external_id {
            c.external_id = Some("race".into());
        }
        let calls = (0..100).map(|_| {
            let mut client = svc.client.clone();
            let c = c.clone();
            tokio::spawn(async move { create(&mut client, c).await })
        });
        let results: Vec<_> = futures_util::future::join_all(calls)
            .await
            .into_iter()
            .map(|r| r.unwrap().expect("every create succeeds"))
            .collect();
        let ids: HashSet<String> = results
            .iter()
            .map(|r| r.customer.as_ref().unwrap().id.clone())
            .collect();
        assert_eq!(ids.len(), 1, "one id for all");
        assert_eq!(results.iter().filter(|r| r.created).count(), 1);
    }
    assert_eq!(svc.count("customers").await, 2);
}
