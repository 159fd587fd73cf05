//! Any bytes as a policy file: loading never panics, and a policy that loads
//! reports a summary.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    if std::fs::write(dir.path().join("fuzz.toml"), text).is_err() {
        return;
    }
    let options = clawgate::policy::LoadOptions::new(&|_| None);
    if let Ok((policy, _)) = clawgate::policy::load(dir.path(), &options) {
        let _ = policy.summary();
    }
});
