//! Any bytes as a peer certificate: reading names never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = clawgate::identity::from_der(data);
});
