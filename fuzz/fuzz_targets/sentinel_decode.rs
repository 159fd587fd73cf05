//! Any bytes through the decodings sentinels are scanned in (percent, JSON
//! escapes, quoted-printable, base64 runs): never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = clawgate::credentials::decode::variants(data);
});
