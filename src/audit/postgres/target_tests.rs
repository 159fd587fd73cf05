#![allow(clippy::unwrap_used, reason = "tests")]

use super::{PgTarget, split};

#[test]
fn tls_keys_leave_the_string_and_the_rest_stays() {
    let (rest, own) = split(
        "postgres://clawgate@db.example:5432/clawgate?sslmode=verify-full&sslrootcert=/ca.pem&application_name=x",
    );
    assert_eq!(
        rest,
        "postgres://clawgate@db.example:5432/clawgate?application_name=x"
    );
    assert_eq!(own.sslmode.as_deref(), Some("verify-full"));
    assert_eq!(own.sslrootcert.unwrap().to_str(), Some("/ca.pem"));
    let (rest, own) = split("host=db user=clawgate sslmode=disable dbname=clawgate");
    assert_eq!(rest, "host=db user=clawgate dbname=clawgate");
    assert_eq!(own.sslmode.as_deref(), Some("disable"));
}

#[test]
fn a_tcp_host_gets_verify_full_by_default_and_a_socket_none() {
    let tcp: PgTarget = "postgres://clawgate@db.example/clawgate".parse().unwrap();
    assert!(tcp.tls());
    let plain: PgTarget = "postgres://clawgate@db.example/clawgate?sslmode=disable"
        .parse()
        .unwrap();
    assert!(!plain.tls());
    let socket: PgTarget = "host=/run/postgresql dbname=clawgate".parse().unwrap();
    assert!(!socket.tls());
}

#[test]
fn modes_that_do_not_verify_are_refused_and_errors_never_quote_a_password() {
    for mode in ["require", "prefer", "verify-ca", "allow"] {
        let e = format!("postgres://u:hunter2@db/clawgate?sslmode={mode}")
            .parse::<PgTarget>()
            .unwrap_err();
        assert!(e.contains(mode) && e.contains("verify-full"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }
    let e = "postgres://u:hunter2@db/clawgate?port=x"
        .parse::<PgTarget>()
        .unwrap_err();
    assert!(!e.contains("hunter2"), "{e}");
    let e = "host=/run/pg sslmode=verify-full"
        .parse::<PgTarget>()
        .unwrap_err();
    assert!(e.contains("TCP"), "{e}");
    let e = "postgres://u@db/c?sslcert=/c.pem"
        .parse::<PgTarget>()
        .unwrap_err();
    assert!(e.contains("together"), "{e}");
}

#[test]
fn the_password_comes_from_its_file_and_never_shows_in_debug() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "canary-pw-7731\n").unwrap();
    let target: PgTarget = format!(
        "postgres://clawgate@db.example/clawgate?sslmode=disable&password_file={}",
        file.display()
    )
    .parse()
    .unwrap();
    assert_eq!(target.config().get_password(), Some(&b"canary-pw-7731"[..]));
    let debug = format!("{target:?}");
    assert!(!debug.contains("canary"), "{debug}");
    assert!(debug.contains("db.example"), "{debug}");
    let missing = format!(
        "postgres://clawgate@db/clawgate?password_file={}",
        dir.path().join("nope").display()
    )
    .parse::<PgTarget>()
    .unwrap_err();
    assert!(missing.contains("password_file"), "{missing}");
}
