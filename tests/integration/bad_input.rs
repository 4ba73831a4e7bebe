//! Malformed input across every RPC: a caller's mistake is INVALID_ARGUMENT
//! naming the field, never INTERNAL, and writes nothing.

use customers::pb::{self, get_customer_request::Lookup};

use crate::common::*;

const NUL: &str = "a\0b";

#[tokio::test(flavor = "multi_thread")]
async fn nul_characters_are_invalid_in_every_string_field() {
    let mut svc = TestService::start().await;
    let c = create_new(&mut svc.client, customer("nul@example.com")).await;

    let with = |f: fn(&mut pb::Customer)| {
        let mut c = customer("fresh@example.com");
        f(&mut c);
        c
    };
    let creates: Vec<(pb::Customer, &str)> = vec![
        (
            with(|c| c.email = "a\0@example.com".into()),
            "customer.email",
        ),
        (with(|c| c.name = NUL.into()), "customer.name"),
        (
            with(|c| c.external_id = Some(NUL.into())),
            "customer.external_id",
        ),
        (with(|c| c.phone = "+1415\0".into()), "customer.phone"),
        (with(|c| c.timezone = NUL.into()), "customer.timezone"),
        (
            with(|c| {
                c.address = Some(pb::Address {
                    city: NUL.into(),
                    ..Default::default()
                })
            }),
            "customer.address.city",
        ),
        (
            with(|c| {
                c.metadata.insert("k".into(), NUL.into());
            }),
            "customer.metadata[\"k\"]",
        ),
        (
            with(|c| {
                c.metadata.insert(NUL.into(), "v".into());
            }),
            "customer.metadata[\"a\\0b\"]",
        ),
        (
            with(|c| {
                c.provider_ids.insert("stripe".into(), NUL.into());
            }),
            "customer.provider_ids[\"stripe\"]",
        ),
    ];
    for (bad, field) in creates {
        let fields = bad_fields(create(&mut svc.client, bad.clone()).await);
        assert_eq!(fields, [field], "{bad:?}");
        // The same values in an update.
        let mut update_to = bad;
        update_to.id = c.id.clone();
        if update_to.email == "fresh@example.com" {
            update_to.email.clear();
        }
        let fields = bad_fields(update(&mut svc.client, update_to, &[]).await);
        assert_eq!(fields, [field]);
    }
    assert_eq!(svc.count("customers").await, 1, "nothing written");

    let gets = [
        (Lookup::Id(NUL.into()), "id"),
        (Lookup::ExternalId(NUL.into()), "external_id"),
        (
            Lookup::ProviderId(pb::ProviderId {
                provider: "stripe".into(),
                id: NUL.into(),
            }),
            "provider_id.id",
        ),
    ];
    for (lookup, field) in gets {
        let result = svc
            .client
            .get_customer(pb::GetCustomerRequest {
                lookup: Some(lookup),
            })
            .await;
        assert_eq!(bad_fields(result), [field]);
    }

    let lists = [
        (
            pb::ListCustomersRequest {
                email: NUL.into(),
                ..Default::default()
            },
            "email",
        ),
        (
            pb::ListCustomersRequest {
                query: NUL.into(),
                ..Default::default()
            },
            "query",
        ),
        (
            pb::ListCustomersRequest {
                metadata: [("k".to_owned(), NUL.to_owned())].into(),
                ..Default::default()
            },
            "metadata[\"k\"]",
        ),
        (
            pb::ListCustomersRequest {
                resume_after: NUL.into(),
                ..Default::default()
            },
            "resume_after",
        ),
    ];
    for (request, field) in lists {
        assert_eq!(bad_fields(list(&mut svc.client, request).await), [field]);
    }

    let archive_by = pb::ArchiveCustomerRequest {
        external_id: NUL.into(),
        ..Default::default()
    };
    assert_eq!(
        bad_fields(svc.client.archive_customer(archive_by).await),
        ["external_id"]
    );
    assert_eq!(bad_fields(delete(&mut svc.client, NUL, "").await), ["id"]);
    assert_eq!(get_by_id(&mut svc.client, &c.id).await.unwrap(), c);
}
