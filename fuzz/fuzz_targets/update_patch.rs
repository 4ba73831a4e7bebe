//! UpdateCustomer's parse step, then its patch applied to a stored
//! customer: no panic; every rejection names a field; a patch that applies
//! gives fields that validate again unchanged (validation is idempotent).
#![no_main]

use customers::{
    domain::{Address, CustomerFields, Invalid, UpdateCustomer},
    pb,
};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn check_invalid(invalid: &Invalid) {
    assert!(!invalid.violations.is_empty(), "a rejection names no field");
    for v in &invalid.violations {
        assert!(!v.field.is_empty(), "a violation without a field: {v:?}");
    }
}

fn stored() -> CustomerFields {
    CustomerFields {
        external_id: Some("user-1".into()),
        email: "ada@example.com".into(),
        name: Some("Ada".into()),
        phone: Some("+33612345678".into()),
        address: Address {
            city: Some("Paris".into()),
            country: Some("FR".into()),
            ..Default::default()
        },
        timezone: Some("Europe/Paris".into()),
        metadata: [("plan".to_owned(), "pro".to_owned())].into(),
        provider_ids: [("stripe".to_owned(), "cus_1".to_owned())].into(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(request) = pb::UpdateCustomerRequest::decode(data) else {
        return;
    };
    match UpdateCustomer::try_from(request) {
        Ok(command) => match command.patch.apply(stored()) {
            Ok(valid) => {
                let again = (*valid).clone().validate("customer.");
                assert_eq!(again.ok().as_deref(), Some(&*valid), "validation moved");
            }
            Err(invalid) => check_invalid(&invalid),
        },
        Err(invalid) => check_invalid(&invalid),
    }
});
