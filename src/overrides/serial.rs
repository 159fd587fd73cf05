//! Certificate serials in the one form overrides store and compare.

use super::OverrideError;

/// The one form a serial is stored and compared in: lowercase hex, without
/// colons or leading zeros (`0` for zero). The input must be hex digits,
/// optionally in groups separated by single colons (`3A:F2:01`, `3af201`),
/// at most 20 octets as X.509 allows.
pub fn normalise_serial(serial: &str) -> Result<String, OverrideError> {
    let invalid = || {
        OverrideError::Invalid(format!(
            "serial `{serial}` must be hex, colons allowed between digits (for example `3a:f2:01`)"
        ))
    };
    if serial.is_empty()
        || serial.starts_with(':')
        || serial.ends_with(':')
        || serial.contains("::")
        || !serial.chars().all(|c| c.is_ascii_hexdigit() || c == ':')
    {
        return Err(invalid());
    }
    let hex: String = serial
        .chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let trimmed = hex.trim_start_matches('0');
    if trimmed.len() > 40 {
        return Err(OverrideError::Invalid(format!(
            "serial `{serial}` is longer than the 20 octets a certificate serial may have"
        )));
    }
    Ok(if trimmed.is_empty() {
        "0".into()
    } else {
        trimmed.to_owned()
    })
}

/// A peer certificate's serial (lowercase hex from the certificate) in the
/// form overrides store.
pub fn peer_serial(serial: &str) -> String {
    normalise_serial(serial).unwrap_or_else(|_| serial.to_ascii_lowercase())
}
