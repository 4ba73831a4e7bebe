//! The parse steps of ListCustomers and WatchCustomerEvents (their filters
//! and resume positions) on any request bytes: no panic, and every
//! rejection names a field.
#![no_main]

use customers::{
    domain::{Invalid, ListCustomers, WatchEvents},
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

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    if which % 2 == 0 {
        if let Ok(request) = pb::ListCustomersRequest::decode(rest)
            && let Err(invalid) = ListCustomers::try_from(request)
        {
            check_invalid(&invalid);
        }
    } else if let Ok(request) = pb::WatchCustomerEventsRequest::decode(rest)
        && let Err(invalid) = WatchEvents::try_from(request)
    {
        check_invalid(&invalid);
    }
});
