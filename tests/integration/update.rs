//! UpdateCustomer: field masks, maps, etags, taken keys, validation, and
//! writes that name their customer by external id.

use customers::pb;
use tonic::Code;

use crate::common::*;

async fn seeded(svc: &mut TestService) -> pb::Customer {
    let mut c = customer("fay@example.com");
    c.name = "Fay".into();
    c.address = Some(pb::Address {
        city: "Paris".into(),
        country: "FR".into(),
        ..Default::default()
    });
    c.metadata = [("a", "1"), ("b", "2")]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into();
    create_new(&mut svc.client, c).await
}

#[tokio::test(flavor = "multi_thread")]
async fn masked_fields_change_and_nothing_else() {
    let mut svc = TestService::start().await;
    let before = seeded(&mut svc).await;
    let mut p = patch(&before.id);
    p.name = "Fay Valentine".into();
    p.email = "ignored@example.com".into(); // not in the mask
    p.address = Some(pb::Address {
        city: "Lyon".into(),
        ..Default::default()
    });
    let after = update(&mut svc.client, p, &["name", "address.city"])
        .await
        .unwrap();
    assert_eq!(after.name, "Fay Valentine");
    assert_eq!(after.email, before.email);
    let address = after.address.clone().unwrap();
    assert_eq!(address.city, "Lyon");
    assert_eq!(address.country, "FR");
    assert_eq!(after.metadata, before.metadata);
    assert_ne!(after.etag, before.etag);
    let time = |t: Option<prost_types::Timestamp>| t.map(|t| (t.seconds, t.nanos));
    assert!(time(after.update_time) > time(before.update_time));
    assert_eq!(after.create_time, before.create_time);
    assert_eq!(get_by_id(&mut svc.client, &before.id).await.unwrap(), after);
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_merges_by_key_or_is_replaced_whole() {
    let mut svc = TestService::start().await;
    let c = seeded(&mut svc).await;

    // Per key: "a" set, "b" removed (absent from the request), "c" added.
    let mut p = patch(&c.id);
    p.metadata = [("a", "9"), ("c", "3")]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into();
    let after = update(
        &mut svc.client,
        p,
        &["metadata.a", "metadata.b", "metadata.c"],
    )
    .await
    .unwrap();
    assert_eq!(
        after.metadata,
        [("a", "9"), ("c", "3")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into()
    );

    // Without a mask: set fields are written, map entries merged.
    let mut p = patch(&c.id);
    p.metadata = [("d".to_owned(), "4".to_owned())].into();
    let after = update(&mut svc.client, p, &[]).await.unwrap();
    assert_eq!(after.metadata.len(), 3);
    assert_eq!(after.name, "Fay");

    // The whole map.
    let mut p = patch(&c.id);
    p.metadata = [("only".to_owned(), "one".to_owned())].into();
    let after = update(&mut svc.client, p, &["metadata"]).await.unwrap();
    assert_eq!(
        after.metadata,
        [("only".to_owned(), "one".to_owned())].into()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_etag_is_aborted_and_changes_nothing() {
    let mut svc = TestService::start().await;
    let c = seeded(&mut svc).await;
    let mut p = patch(&c.id);
    p.name = "First".into();
    p.etag = c.etag.clone();
    let first = update(&mut svc.client, p, &["name"]).await.unwrap();

    let mut stale = patch(&c.id);
    stale.name = "Second".into();
    stale.etag = c.etag.clone();
    assert_error(
        update(&mut svc.client, stale, &["name"]).await,
        Code::Aborted,
        "ETAG_MISMATCH",
    );
    assert_eq!(get_by_id(&mut svc.client, &c.id).await.unwrap(), first);

    let mut fresh = patch(&c.id);
    fresh.name = "Second".into();
    fresh.etag = first.etag.clone();
    assert_eq!(
        update(&mut svc.client, fresh, &["name"])
            .await
            .unwrap()
            .name,
        "Second"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn taken_keys_are_already_exists() {
    let mut svc = TestService::start().await;
    let mut other = customer("gus@example.com");
    other.external_id = Some("gus".into());
    other.provider_ids.insert("stripe".into(), "cus_gus".into());
    let other = create_new(&mut svc.client, other).await;
    let c = seeded(&mut svc).await;

    let mut p = patch(&c.id);
    p.email = "GUS@example.com".into();
    let meta = assert_error(
        update(&mut svc.client, p, &["email"]).await,
        Code::AlreadyExists,
        "EMAIL_TAKEN",
    );
    assert_eq!(meta["customer_id"], other.id);

    let mut p = patch(&c.id);
    p.external_id = Some("gus".into());
    let meta = assert_error(
        update(&mut svc.client, p, &["external_id"]).await,
        Code::AlreadyExists,
        "EXTERNAL_ID_TAKEN",
    );
    assert_eq!(meta["customer_id"], other.id);

    let mut p = patch(&c.id);
    p.provider_ids.insert("stripe".into(), "cus_gus".into());
    let meta = assert_error(
        update(&mut svc.client, p, &["provider_ids.stripe"]).await,
        Code::AlreadyExists,
        "PROVIDER_ID_TAKEN",
    );
    assert_eq!(meta["customer_id"], other.id);

    // Nothing of the failed updates stuck.
    assert_eq!(get_by_id(&mut svc.client, &c.id).await.unwrap(), c);

    // Changing its own email's case is not a collision.
    let mut p = patch(&c.id);
    p.email = "FAY@example.com".into();
    assert_eq!(
        update(&mut svc.client, p, &["email"]).await.unwrap().email,
        "FAY@example.com"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_ids_are_replaced_and_released() {
    let mut svc = TestService::start().await;
    let mut c = customer("hal@example.com");
    c.provider_ids.insert("stripe".into(), "cus_old".into());
    let c = create_new(&mut svc.client, c).await;

    let mut p = patch(&c.id);
    p.provider_ids.insert("stripe".into(), "cus_new".into());
    p.provider_ids.insert("paddle".into(), "ctm_1".into());
    let after = update(&mut svc.client, p, &["provider_ids"]).await.unwrap();
    assert_eq!(after.provider_ids.len(), 2);
    assert_eq!(after.provider_ids["stripe"], "cus_new");

    // The old id is free again.
    let mut d = customer("ivy@example.com");
    d.provider_ids.insert("stripe".into(), "cus_old".into());
    create_new(&mut svc.client, d).await;

    // Removing one provider by path.
    let after = update(&mut svc.client, patch(&c.id), &["provider_ids.paddle"])
        .await
        .unwrap();
    assert_eq!(
        after.provider_ids,
        [("stripe".to_owned(), "cus_new".to_owned())].into()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_updates_are_rejected() {
    let mut svc = TestService::start().await;
    let c = seeded(&mut svc).await;

    let mut p = patch(&c.id);
    p.phone = "not a phone".into();
    p.timezone = "Nowhere/Special".into();
    assert_eq!(
        bad_fields(update(&mut svc.client, p, &["phone", "timezone", "email"]).await),
        ["customer.email", "customer.phone", "customer.timezone"]
    );
    assert_eq!(
        bad_fields(
            update(
                &mut svc.client,
                patch(&c.id),
                &["create_time", "address.planet"]
            )
            .await
        ),
        ["update_mask", "update_mask"]
    );
    assert_eq!(
        bad_fields(update(&mut svc.client, patch("nope"), &["name"]).await),
        ["customer.id"]
    );
    // No mask and nothing set: nothing to do is a caller's mistake.
    assert_eq!(
        bad_fields(update(&mut svc.client, patch(&c.id), &[]).await),
        ["update_mask"]
    );
    assert_eq!(get_by_id(&mut svc.client, &c.id).await.unwrap(), c);

    assert_error(
        update(
            &mut svc.client,
            patch("cus_01h2xcejqtf2nbrexx3vqjhp41"),
            &["name"],
        )
        .await,
        Code::NotFound,
        "CUSTOMER_NOT_FOUND",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn archived_and_deleted_customers_cannot_be_updated() {
    let mut svc = TestService::start().await;
    let archived = create_new(&mut svc.client, customer("jo@example.com")).await;
    let deleted = create_new(&mut svc.client, customer("kim@example.com")).await;
    archive(&mut svc.client, &archived.id, "").await.unwrap();
    delete(&mut svc.client, &deleted.id, "").await.unwrap();
    let mut p = patch(&archived.id);
    p.name = "x".into();
    assert_error(
        update(&mut svc.client, p, &["name"]).await,
        Code::FailedPrecondition,
        "CUSTOMER_ARCHIVED",
    );
    let mut p = patch(&deleted.id);
    p.name = "x".into();
    assert_error(
        update(&mut svc.client, p, &["name"]).await,
        Code::FailedPrecondition,
        "CUSTOMER_DELETED",
    );
}

/// Writers racing for one email: every loser is told who won.
#[tokio::test(flavor = "multi_thread")]
async fn racing_updates_to_one_email_name_the_holder() {
    let mut svc = TestService::start().await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            create_new(&mut svc.client, customer(&format!("racer{i}@example.com")))
                .await
                .id,
        );
    }
    for round in 0..15 {
        let email = format!("round{round}@example.com");
        let calls = ids.iter().map(|id| {
            let mut client = svc.client.clone();
            let mut p = patch(id);
            p.email = email.clone();
            tokio::spawn(async move { update(&mut client, p, &[]).await })
        });
        let results: Vec<_> = futures_util::future::join_all(calls)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let winners: Vec<&pb::Customer> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        for result in &results {
            if result.is_err() {
                let meta = assert_error(result.clone(), Code::AlreadyExists, "EMAIL_TAKEN");
                assert_eq!(
                    meta.get("customer_id"),
                    Some(&winners[0].id),
                    "round {round}"
                );
            }
        }
    }
}

/// Update, Archive and Delete may name their customer by the caller's own
/// id instead of ours.
#[tokio::test(flavor = "multi_thread")]
async fn writes_may_name_their_customer_by_external_id() {
    let mut svc = TestService::start().await;
    let mut c = customer("ext@example.com");
    c.external_id = Some("user-7".into());
    let c = create_new(&mut svc.client, c).await;
    let by_external = |customer: pb::Customer, paths: &[&str]| pb::UpdateCustomerRequest {
        external_id: "user-7".into(),
        ..update_request(customer, paths)
    };

    let renamed = svc
        .client
        .update_customer(by_external(
            pb::Customer {
                name: "Renamed".into(),
                ..Default::default()
            },
            &["name"],
        ))
        .await
        .unwrap()
        .into_inner()
        .customer
        .unwrap();
    assert_eq!(
        (renamed.id.as_str(), renamed.name.as_str()),
        (c.id.as_str(), "Renamed")
    );

    // Exactly one of the two references.
    let mut both = by_external(patch(&c.id), &["name"]);
    both.customer.as_mut().unwrap().name = "x".into();
    assert_eq!(
        bad_fields(svc.client.update_customer(both).await),
        ["external_id"]
    );
    assert_eq!(
        bad_fields(update(&mut svc.client, patch(""), &["name"]).await),
        ["customer.id"]
    );
    let mut unknown = by_external(pb::Customer::default(), &["name"]);
    unknown.external_id = "nobody".into();
    assert_error(
        svc.client.update_customer(unknown).await,
        Code::NotFound,
        "CUSTOMER_NOT_FOUND",
    );

    let archive_external = |etag: &str| pb::ArchiveCustomerRequest {
        external_id: "user-7".into(),
        etag: etag.into(),
        ..Default::default()
    };
    let archived = svc
        .client
        .archive_customer(archive_external(&renamed.etag))
        .await
        .unwrap()
        .into_inner()
        .customer
        .unwrap();
    assert_eq!(archived.state, pb::customer::State::Archived as i32);
    // A retry finds the archived customer, which no longer holds the id.
    let again = svc
        .client
        .archive_customer(archive_external(&renamed.etag))
        .await
        .unwrap()
        .into_inner()
        .customer;
    assert_eq!(again, Some(archived.clone()));
    assert_error(
        svc.client
            .update_customer(by_external(
                pb::Customer {
                    name: "Late".into(),
                    ..Default::default()
                },
                &["name"],
            ))
            .await,
        Code::FailedPrecondition,
        "CUSTOMER_ARCHIVED",
    );

    // A new customer takes the id: writes by it reach the new one.
    let mut successor = customer("next@example.com");
    successor.external_id = Some("user-7".into());
    let successor = create_new(&mut svc.client, successor).await;
    let deleted = svc
        .client
        .delete_customer(pb::DeleteCustomerRequest {
            external_id: "user-7".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .customer
        .unwrap();
    assert_eq!(deleted.id, successor.id);
    assert_eq!(deleted.state, pb::customer::State::Deleted as i32);
    // Erasure removed the id from the tombstone: the archived one answers.
    let after = svc
        .client
        .delete_customer(pb::DeleteCustomerRequest {
            external_id: "user-7".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .customer
        .unwrap();
    assert_eq!(after.id, c.id);
    assert_eq!(after.state, pb::customer::State::Deleted as i32);
}
