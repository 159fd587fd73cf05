//! Any bytes as the start of a tunnel: the ClientHello parser never panics,
//! never asks for more once it has an answer, and reads the same however
//! the bytes are split (it is called again on the longer prefix).
#![no_main]

use clawgate::client_hello::{Parse, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = parse(data);
    if let Parse::Done(answer) = &whole {
        // Once known, more bytes do not change the answer.
        let mut longer = data.to_vec();
        longer.extend_from_slice(&[0x16, 3, 3, 0, 1, 0]);
        assert_eq!(parse(&longer), Parse::Done(answer.clone()));
    }
});
