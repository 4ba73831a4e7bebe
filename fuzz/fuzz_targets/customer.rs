//! CreateCustomer's parse step on any request bytes: no panic; a rejection
//! names each bad field; what is accepted holds no NUL or control
//! character where none is allowed, and has an email.
#![no_main]

use customers::{
    domain::{CreateCustomer, Invalid},
    pb,
};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn check_invalid(invalid: &Invalid) {
    assert!(!invalid.violations.is_empty(), "a rejection names no field");
    for v in &invalid.violations {
        assert!(!v.field.is_empty(), "a violation without a field: {v:?}");
        assert!(!v.description.is_empty());
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(request) = pb::CreateCustomerRequest::decode(data) else {
        return;
    };
    match CreateCustomer::try_from(request) {
        Ok(command) => {
            let fields = &*command.fields;
            assert!(fields.email.contains('@'));
            let mut texts = vec![&fields.email];
            texts.extend(fields.external_id.iter());
            texts.extend(fields.phone.iter());
            texts.extend(fields.metadata.keys());
            texts.extend(fields.metadata.values());
            texts.extend(fields.provider_ids.keys());
            texts.extend(fields.provider_ids.values());
            for text in texts {
                assert!(!text.contains('\0'), "a NUL was accepted: {text:?}");
            }
            for text in fields.name.iter().chain(fields.address.city.iter()) {
                assert!(!text.contains('\0'), "a NUL was accepted: {text:?}");
            }
        }
        Err(invalid) => check_invalid(&invalid),
    }
});
