//! A property test of UpdateCustomer's field masks: for generated masks and
//! values, an update followed by a read gives what the proto's mask
//! semantics promise, computed here by a model written from the proto's
//! comment alone (not from the service's code).

use std::collections::BTreeMap;

use customers::pb;
use proptest::{
    prelude::*,
    test_runner::{Config, TestRunner},
};

use crate::common::*;

/// The paths a mask may hold, as the proto lists them.
const PATHS: [&str; 16] = [
    "external_id",
    "email",
    "name",
    "phone",
    "timezone",
    "address",
    "address.line1",
    "address.city",
    "address.country",
    "metadata",
    "metadata.plan",
    "metadata.seats",
    "provider_ids",
    "provider_ids.stripe",
    "provider_ids.paddle",
    "*",
];

/// Values of one generated request (indices into small pools; an empty
/// string means "not set").
#[derive(Debug, Clone)]
struct Case {
    mask: Vec<&'static str>,
    name: &'static str,
    phone: &'static str,
    timezone: &'static str,
    line1: &'static str,
    city: &'static str,
    country: &'static str,
    plan: Option<&'static str>,
    seats: Option<&'static str>,
    stripe: bool,
    paddle: bool,
    external_id: bool,
    email: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        proptest::sample::subsequence(PATHS.to_vec(), 0..5),
        proptest::sample::select(vec!["", "Ada", "Grace Hopper"]),
        proptest::sample::select(vec!["", "+33612345678"]),
        proptest::sample::select(vec!["", "Europe/Paris"]),
        proptest::sample::select(vec!["", "1 rue de Rivoli"]),
        proptest::sample::select(vec!["", "Lyon"]),
        proptest::sample::select(vec!["", "FR", "DE"]),
        proptest::option::of(proptest::sample::select(vec!["free", "pro"])),
        proptest::option::of(proptest::sample::select(vec!["1", "5"])),
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(mask, name, phone, timezone, line1, city, country, plan, seats, flags)| Case {
                mask,
                name,
                phone,
                timezone,
                line1,
                city,
                country,
                plan,
                seats,
                stripe: flags.0,
                paddle: flags.1,
                external_id: flags.2,
                email: flags.3,
            },
        )
}

/// The customer every case starts from.
fn start(n: u64) -> pb::Customer {
    pb::Customer {
        email: format!("start{n}@example.com"),
        external_id: Some(format!("start-{n}")),
        name: "Start".into(),
        phone: "+4915112345678".into(),
        timezone: "UTC".into(),
        address: Some(pb::Address {
            line1: "Unter den Linden 1".into(),
            city: "Berlin".into(),
            country: "DE".into(),
            ..Default::default()
        }),
        metadata: [
            ("plan".to_owned(), "old".to_owned()),
            ("keep".to_owned(), "yes".to_owned()),
        ]
        .into(),
        provider_ids: [("stripe".to_owned(), format!("cus_old{n}"))].into(),
        ..Default::default()
    }
}

/// The request of a case (unique keys get `n` in them).
fn request(case: &Case, n: u64) -> pb::Customer {
    let mut metadata = BTreeMap::new();
    if let Some(plan) = case.plan {
        metadata.insert("plan".to_owned(), plan.to_owned());
    }
    if let Some(seats) = case.seats {
        metadata.insert("seats".to_owned(), seats.to_owned());
    }
    let mut provider_ids = BTreeMap::new();
    if case.stripe {
        provider_ids.insert("stripe".to_owned(), format!("cus_new{n}"));
    }
    if case.paddle {
        provider_ids.insert("paddle".to_owned(), format!("ctm_{n}"));
    }
    let address = pb::Address {
        line1: case.line1.into(),
        city: case.city.into(),
        country: case.country.into(),
        ..Default::default()
    };
    pb::Customer {
        email: if case.email {
            format!("new{n}@example.com")
        } else {
            String::new()
        },
        external_id: case.external_id.then(|| format!("new-{n}")),
        name: case.name.into(),
        phone: case.phone.into(),
        timezone: case.timezone.into(),
        address: (address != pb::Address::default()).then_some(address),
        metadata,
        provider_ids,
        ..Default::default()
    }
}

/// What the proto promises, from the stored customer and the request.
/// `None`: the request is invalid (an empty email written by the mask).
fn model(before: &pb::Customer, req: &pb::Customer, mask: &[&str]) -> Option<pb::Customer> {
    let mut after = before.clone();
    let empty_address = pb::Address::default();
    let req_address = req.address.clone().unwrap_or_default();
    let mut paths: Vec<&str> = mask.to_vec();
    if paths.contains(&"*") {
        paths = vec![
            "external_id",
            "email",
            "name",
            "phone",
            "timezone",
            "address",
            "metadata",
            "provider_ids",
        ];
    }
    let without_mask = paths.is_empty();
    if without_mask {
        // Every set field is written; map entries merged.
        if req.external_id.is_some() {
            paths.push("external_id");
        }
        for (field, set) in [
            ("email", !req.email.is_empty()),
            ("name", !req.name.is_empty()),
            ("phone", !req.phone.is_empty()),
            ("timezone", !req.timezone.is_empty()),
            ("address.line1", !req_address.line1.is_empty()),
            ("address.city", !req_address.city.is_empty()),
            ("address.country", !req_address.country.is_empty()),
        ] {
            if set {
                paths.push(field);
            }
        }
    }
    let mut address = after.address.clone().unwrap_or_default();
    for path in &paths {
        match *path {
            "external_id" => after.external_id = req.external_id.clone(),
            "email" => {
                if req.email.is_empty() {
                    return None;
                }
                after.email = req.email.clone();
            }
            "name" => after.name = req.name.clone(),
            "phone" => after.phone = req.phone.clone(),
            "timezone" => after.timezone = req.timezone.clone(),
            "address" => address = req_address.clone(),
            "address.line1" => address.line1 = req_address.line1.clone(),
            "address.city" => address.city = req_address.city.clone(),
            "address.country" => address.country = req_address.country.clone(),
            "metadata" => after.metadata = req.metadata.clone(),
            "provider_ids" => after.provider_ids = req.provider_ids.clone(),
            other => {
                let (map, key, source) = match other.split_once('.') {
                    Some(("metadata", key)) => (&mut after.metadata, key, &req.metadata),
                    Some(("provider_ids", key)) => {
                        (&mut after.provider_ids, key, &req.provider_ids)
                    }
                    _ => unreachable!("{other}"),
                };
                match source.get(key) {
                    Some(value) => map.insert(key.to_owned(), value.clone()),
                    None => map.remove(key),
                };
            }
        }
    }
    if without_mask {
        after.metadata.extend(req.metadata.clone());
        after.provider_ids.extend(req.provider_ids.clone());
    }
    after.address = (address != empty_address).then_some(address);
    Some(after)
}

/// The writable fields of a customer, for comparison.
fn writable(c: &pb::Customer) -> pb::Customer {
    pb::Customer {
        external_id: c.external_id.clone(),
        email: c.email.clone(),
        name: c.name.clone(),
        phone: c.phone.clone(),
        timezone: c.timezone.clone(),
        address: c.address.clone().filter(|a| *a != pb::Address::default()),
        metadata: c.metadata.clone(),
        provider_ids: c.provider_ids.clone(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn updates_through_any_mask_do_what_the_proto_promises() {
    let svc = TestService::start().await;
    let runtime = tokio::runtime::Handle::current();
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let n = std::sync::atomic::AtomicU64::new(0);
    let result = tokio::task::block_in_place(|| {
        runner
            .run(&case(), |case| {
                let n = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                let mut client = svc.client.clone();
                runtime.block_on(async {
                    let created = create_new(&mut client, start(n)).await;
                    let req = request(&case, n);
                    let expected = model(&writable(&created), &req, &case.mask);
                    let result = update(
                        &mut client,
                        pb::Customer {
                            id: created.id.clone(),
                            ..req.clone()
                        },
                        &case.mask,
                    )
                    .await;
                    let read = get_by_id(&mut client, &created.id).await.unwrap();
                    match expected {
                        Some(expected) => {
                            let updated = result.map_err(|e| {
                                TestCaseError::fail(format!("update failed: {e:?}"))
                            })?;
                            prop_assert_eq!(writable(&updated), expected.clone());
                            prop_assert_eq!(writable(&read), expected);
                        }
                        None => {
                            let status = result.expect_err("an empty email was written");
                            prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
                            prop_assert_eq!(writable(&read), writable(&created));
                        }
                    }
                    Ok(())
                })
            })
            .map_err(|e| e.to_string())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // Reads take provider ids from the row's copy: every update kept it
    // equal to the keys.
    assert!(svc.count("customer_provider_ids").await > 0);
    assert_eq!(svc.provider_id_copies_out_of_step().await, 0);
}
