//! GetCustomer by id, by external id and by a provider's id.

use customers::pb::{self, get_customer_request::Lookup};
use tonic::Code;

use crate::common::*;

async fn get(svc: &mut TestService, lookup: Option<Lookup>) -> Result<pb::Customer, tonic::Status> {
    svc.client
        .get_customer(pb::GetCustomerRequest { lookup })
        .await
        .map(|r| r.into_inner().customer.unwrap())
}

fn provider(provider: &str, id: &str) -> Option<Lookup> {
    Some(Lookup::ProviderId(pb::ProviderId {
        provider: provider.into(),
        id: id.into(),
    }))
}

#[tokio::test(flavor = "multi_thread")]
async fn finds_by_id_external_id_and_provider_id() {
    let mut svc = TestService::start().await;
    let mut c = customer("dan@example.com");
    c.external_id = Some("user-7".into());
    c.provider_ids.insert("stripe".into(), "cus_dan".into());
    let created = create_new(&mut svc.client, c).await;

    let by_id = get(&mut svc, Some(Lookup::Id(created.id.clone())))
        .await
        .unwrap();
    let by_external = get(&mut svc, Some(Lookup::ExternalId("user-7".into())))
        .await
        .unwrap();
    let by_provider = get(&mut svc, provider("stripe", "cus_dan")).await.unwrap();
    assert_eq!(by_id, created);
    assert_eq!(by_external, created);
    assert_eq!(by_provider, created);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_keys_are_not_found() {
    let mut svc = TestService::start().await;
    create_new(&mut svc.client, customer("erin@example.com")).await;
    for lookup in [
        Lookup::Id("cus_01h2xcejqtf2nbrexx3vqjhp41".into()),
        Lookup::ExternalId("nobody".into()),
        Lookup::ProviderId(pb::ProviderId {
            provider: "stripe".into(),
            id: "cus_none".into(),
        }),
    ] {
        assert_error(
            get(&mut svc, Some(lookup)).await,
            Code::NotFound,
            "CUSTOMER_NOT_FOUND",
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_lookups_are_invalid() {
    let mut svc = TestService::start().await;
    assert_eq!(
        bad_fields(get(&mut svc, Some(Lookup::Id("42".into()))).await),
        ["id"]
    );
    assert_eq!(
        bad_fields(
            get(
                &mut svc,
                Some(Lookup::Id("usr_01h2xcejqtf2nbrexx3vqjhp41".into()))
            )
            .await
        ),
        ["id"]
    );
    assert_eq!(bad_fields(get(&mut svc, None).await), ["lookup"]);
    assert_eq!(
        bad_fields(get(&mut svc, provider("", "")).await),
        ["provider_id.id", "provider_id.provider"]
    );
}
