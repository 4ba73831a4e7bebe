//! ArchiveCustomer and DeleteCustomer.

use customers::pb;
use diesel_async::RunQueryDsl;
use tonic::Code;

use crate::common::*;

fn full_customer(email: &str, external_id: &str, stripe: &str) -> pb::Customer {
    pb::Customer {
        external_id: Some(external_id.into()),
        email: email.into(),
        name: "Lou Reed".into(),
        phone: "+442071838750".into(),
        address: Some(pb::Address {
            line1: "1 Main St".into(),
            city: "London".into(),
            country: "GB".into(),
            ..Default::default()
        }),
        timezone: "Europe/London".into(),
        metadata: [("tier".to_owned(), "gold".to_owned())].into(),
        provider_ids: [("stripe".to_owned(), stripe.to_owned())].into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn archiving_keeps_data_and_releases_keys() {
    let mut svc = TestService::start().await;
    let c = create_new(
        &mut svc.client,
        full_customer("lou@example.com", "lou", "cus_lou"),
    )
    .await;
    let archived = archive(&mut svc.client, &c.id, &c.etag).await.unwrap();
    assert_eq!(archived.state(), pb::customer::State::Archived);
    assert!(archived.archive_time.is_some());
    assert_ne!(archived.etag, c.etag);
    // Data kept.
    assert_eq!(archived.email, c.email);
    assert_eq!(archived.metadata, c.metadata);
    assert_eq!(archived.provider_ids, c.provider_ids);
    assert_eq!(get_by_id(&mut svc.client, &c.id).await.unwrap(), archived);

    // Again: unchanged.
    assert_eq!(archive(&mut svc.client, &c.id, "").await.unwrap(), archived);

    // The keys are free: the same sign-up creates a new customer.
    let again = create(
        &mut svc.client,
        full_customer("lou@example.com", "lou", "cus_lou"),
    )
    .await
    .unwrap();
    assert!(again.created);
    let again = again.customer.unwrap();
    assert_ne!(again.id, c.id);

    // External and provider ids now resolve to the new customer.
    let found = svc
        .client
        .get_customer(pb::GetCustomerRequest {
            lookup: Some(pb::get_customer_request::Lookup::ExternalId("lou".into())),
        })
        .await
        .unwrap()
        .into_inner()
        .customer
        .unwrap();
    assert_eq!(found.id, again.id);

    // Out of the default listing, in the archived one.
    let listed = list(&mut svc.client, Default::default()).await.unwrap();
    assert_eq!(
        listed.iter().map(|c| &c.id).collect::<Vec<_>>(),
        [&again.id]
    );
    let listed = list(
        &mut svc.client,
        pb::ListCustomersRequest {
            include_archived: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(listed.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn archive_errors() {
    let mut svc = TestService::start().await;
    let c = create_new(&mut svc.client, customer("mo@example.com")).await;
    assert_error(
        archive(&mut svc.client, &c.id, "\"999\"").await,
        Code::Aborted,
        "ETAG_MISMATCH",
    );
    assert_eq!(get_by_id(&mut svc.client, &c.id).await.unwrap(), c);
    assert_error(
        archive(&mut svc.client, "cus_01h2xcejqtf2nbrexx3vqjhp41", "").await,
        Code::NotFound,
        "CUSTOMER_NOT_FOUND",
    );
    assert_eq!(bad_fields(archive(&mut svc.client, "", "").await), ["id"]);
    delete(&mut svc.client, &c.id, "").await.unwrap();
    assert_error(
        archive(&mut svc.client, &c.id, "").await,
        Code::FailedPrecondition,
        "CUSTOMER_DELETED",
    );
}

/// State is checked before the etag, for every write: a retried archive or
/// delete gets its result, and a stale request about a deleted customer says
/// so rather than ETAG_MISMATCH.
#[tokio::test(flavor = "multi_thread")]
async fn retried_conditional_archives_and_deletes_succeed() {
    let mut svc = TestService::start().await;
    let c = create_new(&mut svc.client, customer("retry@example.com")).await;
    let archived = archive(&mut svc.client, &c.id, &c.etag).await.unwrap();
    // The first response was lost; the identical request again.
    assert_eq!(
        archive(&mut svc.client, &c.id, &c.etag).await.unwrap(),
        archived
    );

    let deleted = delete(&mut svc.client, &c.id, &archived.etag)
        .await
        .unwrap();
    assert_eq!(
        delete(&mut svc.client, &c.id, &archived.etag)
            .await
            .unwrap(),
        deleted
    );
    assert_eq!(
        delete(&mut svc.client, &c.id, "\"1\"").await.unwrap(),
        deleted
    );
    assert_eq!(get_by_id(&mut svc.client, &c.id).await.unwrap(), deleted);

    for stale in [c.etag.as_str(), archived.etag.as_str(), "\"999\""] {
        assert_error(
            archive(&mut svc.client, &c.id, stale).await,
            Code::FailedPrecondition,
            "CUSTOMER_DELETED",
        );
        let mut renaming = patch(&c.id);
        renaming.name = "x".into();
        renaming.etag = stale.into();
        assert_error(
            update(&mut svc.client, renaming, &[]).await,
            Code::FailedPrecondition,
            "CUSTOMER_DELETED",
        );
    }
}

#[derive(diesel::QueryableByName, Debug)]
struct RawRow {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pii: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Text)]
    metadata: String,
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_erases_personal_data_and_leaves_a_tombstone() {
    let mut svc = TestService::start().await;
    let c = create_new(
        &mut svc.client,
        full_customer("ned@example.com", "ned", "cus_ned"),
    )
    .await;
    let keep = create_new(
        &mut svc.client,
        full_customer("other@example.com", "o", "cus_o"),
    )
    .await;

    let tombstone = delete(&mut svc.client, &c.id, &c.etag).await.unwrap();
    assert_eq!(tombstone.state(), pb::customer::State::Deleted);
    assert_eq!(tombstone.id, c.id);
    assert!(tombstone.delete_time.is_some());
    assert_eq!(tombstone.create_time, c.create_time);
    assert_eq!(
        pb::Customer {
            id: String::new(),
            state: 0,
            create_time: None,
            update_time: None,
            delete_time: None,
            etag: String::new(),
            ..tombstone.clone()
        },
        pb::Customer::default(),
        "only the id, state, times and etag remain"
    );
    // The id still resolves; deleting again returns the same tombstone.
    assert_eq!(get_by_id(&mut svc.client, &c.id).await.unwrap(), tombstone);
    assert_eq!(delete(&mut svc.client, &c.id, "").await.unwrap(), tombstone);

    // In the database itself, nothing personal is left.
    let mut conn = svc.sql().await;
    let row: RawRow = diesel::sql_query(
        "SELECT concat_ws(',', external_id, email, name, phone, address_line1, address_line2,
                address_city, address_state, address_postal_code, address_country, timezone)
                    AS pii,
                metadata::text AS metadata
         FROM customers WHERE email IS NULL",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(row.pii.as_deref(), Some(""));
    assert_eq!(row.metadata, "{}");
    assert_eq!(svc.count("customer_provider_ids").await, 1);
    // Nor in the row's copy of the provider ids; the kept customer's copy
    // is its key.
    assert_eq!(
        svc.count("customers WHERE email IS NULL AND provider_ids <> '{}'")
            .await,
        0
    );
    assert_eq!(svc.provider_id_copies_out_of_step().await, 0);
    // The other customer is untouched; tombstones are never listed.
    assert_eq!(get_by_id(&mut svc.client, &keep.id).await.unwrap(), keep);
    let listed = list(
        &mut svc.client,
        pb::ListCustomersRequest {
            include_archived: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(listed, [keep]);
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_errors() {
    let mut svc = TestService::start().await;
    let c = create_new(&mut svc.client, customer("ola@example.com")).await;
    assert_error(
        delete(&mut svc.client, &c.id, "\"0\"").await,
        Code::Aborted,
        "ETAG_MISMATCH",
    );
    assert_eq!(get_by_id(&mut svc.client, &c.id).await.unwrap(), c);
    assert_error(
        delete(&mut svc.client, "cus_01h2xcejqtf2nbrexx3vqjhp41", "").await,
        Code::NotFound,
        "CUSTOMER_NOT_FOUND",
    );
    assert_eq!(
        bad_fields(delete(&mut svc.client, "cus_", "").await),
        ["id"]
    );
    // Archived customers can be erased too.
    archive(&mut svc.client, &c.id, "").await.unwrap();
    let gone = delete(&mut svc.client, &c.id, "").await.unwrap();
    assert_eq!(gone.state(), pb::customer::State::Deleted);
    assert!(gone.archive_time.is_some());
}
