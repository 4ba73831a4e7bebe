//! Unit tests of the domain rules.

use super::*;

fn valid() -> CustomerFields {
    CustomerFields {
        email: "alice@example.com".into(),
        ..Default::default()
    }
}

fn violations(fields: CustomerFields) -> Vec<String> {
    match fields.validate("customer.") {
        Err(Invalid { violations, .. }) => violations.into_iter().map(|v| v.field).collect(),
        other => panic!("expected violations, got {other:?}"),
    }
}

#[test]
fn customer_ids_round_trip_and_sort() {
    let a = CustomerId::generate();
    let b = CustomerId::generate();
    let text = a.to_string();
    assert!(text.starts_with("cus_") && text.len() == 30, "{text}");
    assert_eq!(text.parse::<CustomerId>().unwrap(), a);
    assert!(a.to_string() < b.to_string());
    assert!(
        "usr_01h2xcejqtf2nbrexx3vqjhp41"
            .parse::<CustomerId>()
            .is_err()
    );
    assert!("cus_zzz".parse::<CustomerId>().is_err());
}

#[test]
fn phone_is_normalised_to_e164() {
    let mut f = valid();
    f.phone = Some("+1 (415) 555-1234".into());
    assert_eq!(
        f.validate("").unwrap().phone.as_deref(),
        Some("+14155551234")
    );

    let mut f = valid();
    f.phone = Some("01 42 68 53 00".into());
    f.address.country = Some("fr".into());
    let valid = f.validate("").unwrap();
    assert_eq!(valid.phone.as_deref(), Some("+33142685300"));
    assert_eq!(valid.address.country.as_deref(), Some("FR"));
}

#[test]
fn every_bad_field_is_reported() {
    let fields = CustomerFields {
        external_id: Some("  ".into()),
        email: "not-an-email".into(),
        name: Some("x".repeat(513)),
        phone: Some("12345".into()),
        address: Address {
            country: Some("XX".into()),
            ..Default::default()
        },
        timezone: Some("Mars/Olympus".into()),
        metadata: (0..51).map(|i| (format!("k{i}"), "v".into())).collect(),
        provider_ids: [("Stripe".to_owned(), "cus_1".to_owned())].into(),
    };
    let fields = violations(fields);
    for expected in [
        "customer.external_id",
        "customer.email",
        "customer.name",
        "customer.phone",
        "customer.address.country",
        "customer.timezone",
        "customer.metadata",
        "customer.provider_ids[\"Stripe\"]",
    ] {
        assert!(
            fields.iter().any(|f| f == expected),
            "{expected} in {fields:?}"
        );
    }
}

#[test]
fn email_rules() {
    for bad in [
        "",
        "a@b",
        "Alice <a@example.com>",
        "a@[127.0.0.1]",
        "a b@example.com",
    ] {
        let mut f = valid();
        f.email = bad.into();
        assert_eq!(violations(f), ["customer.email"], "{bad:?}");
    }
    let mut f = valid();
    f.email = format!("{}@example.com", "a".repeat(500));
    assert_eq!(violations(f), ["customer.email"]);
    let mut f = valid();
    f.email = "  Alice@Example.COM ".into();
    assert_eq!(f.validate("").unwrap().email, "Alice@Example.COM");
}

#[test]
fn metadata_limits() {
    let mut f = valid();
    f.metadata.insert("k".repeat(41), "v".into());
    f.metadata.insert("ok".into(), "v".repeat(501));
    f.metadata.insert(String::new(), "v".into());
    assert_eq!(violations(f).len(), 3);
    let mut f = valid();
    f.metadata.insert("k".repeat(40), "v".repeat(500));
    assert!(f.validate("").is_ok());
}

#[test]
fn mask_paths_apply_as_documented() {
    let current = CustomerFields {
        email: "a@example.com".into(),
        name: Some("Old".into()),
        address: Address {
            city: Some("Paris".into()),
            country: Some("FR".into()),
            ..Default::default()
        },
        metadata: [("a", "1"), ("b", "2")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into(),
        ..Default::default()
    };
    let values = CustomerFields {
        name: None,
        address: Address {
            city: Some("Lyon".into()),
            ..Default::default()
        },
        metadata: [("a".to_owned(), "9".to_owned())].into(),
        ..Default::default()
    };
    let mask: Vec<String> = ["name", "address.city", "metadata.a", "metadata.b"]
        .map(String::from)
        .into();
    let patched = Patch::new(Some(&mask), values)
        .unwrap()
        .merge(current.clone());
    assert_eq!(patched.name, None);
    assert_eq!(patched.address.city.as_deref(), Some("Lyon"));
    assert_eq!(patched.address.country.as_deref(), Some("FR"));
    assert_eq!(patched.metadata, [("a".to_owned(), "9".to_owned())].into());
    assert_eq!(patched.email, current.email);
}

#[test]
fn no_mask_writes_populated_fields_and_merges_maps() {
    let current = CustomerFields {
        email: "a@example.com".into(),
        name: Some("Old".into()),
        metadata: [("a".to_owned(), "1".to_owned())].into(),
        ..Default::default()
    };
    let values = CustomerFields {
        phone: Some("+14155551234".into()),
        metadata: [("b".to_owned(), "2".to_owned())].into(),
        ..Default::default()
    };
    let patched = Patch::new(None, values).unwrap().merge(current);
    assert_eq!(patched.name.as_deref(), Some("Old"));
    assert_eq!(patched.phone.as_deref(), Some("+14155551234"));
    assert_eq!(patched.metadata.len(), 2);
}

#[test]
fn bad_mask_paths_are_rejected() {
    let mask: Vec<String> = ["id", "create_time", "address.planet", "metadata."]
        .map(String::from)
        .into();
    match Patch::new(Some(&mask), CustomerFields::default()) {
        Err(Invalid { violations, .. }) => assert_eq!(violations.len(), 4),
        other => panic!("{other:?}"),
    }
}

#[test]
fn violations_are_capped_and_counted() {
    let mask: Vec<String> = (0..MAX_MASK_PATHS + 1).map(|i| format!("x{i}")).collect();
    match Patch::new(Some(&mask), CustomerFields::default()) {
        Err(Invalid { violations, .. }) => {
            assert_eq!(violations.len(), 1);
            assert_eq!(violations[0].field, "update_mask");
        }
        other => panic!("{other:?}"),
    }
    let mask: Vec<String> = (0..MAX_MASK_PATHS).map(|i| "y".repeat(1000 + i)).collect();
    match Patch::new(Some(&mask), CustomerFields::default()) {
        Err(Invalid {
            violations,
            omitted,
        }) => {
            assert_eq!(violations.len(), MAX_VIOLATIONS);
            assert_eq!(omitted, MAX_MASK_PATHS - MAX_VIOLATIONS);
            assert!(
                violations
                    .iter()
                    .all(|v| v.description.chars().count() < 100)
            );
        }
        other => panic!("{other:?}"),
    }
}
