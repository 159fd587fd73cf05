use super::*;
use std::os::unix::fs::PermissionsExt;

#[test]
fn init_writes_keys_0600_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let written = init(dir.path(), &["gw.internal".into()], false).unwrap();
    assert_eq!(written.len(), 8);
    for path in &written {
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let is_key = path.to_string_lossy().ends_with("-key.pem");
        assert_eq!(
            mode,
            if is_key { 0o600 } else { 0o644 },
            "{}",
            path.display()
        );
    }
    let before = std::fs::read_to_string(dir.path().join(files::CA)).unwrap();
    let err = init(dir.path(), &[], false).unwrap_err();
    assert!(matches!(err, CertError::Exists(_)), "{err}");
    assert_eq!(
        before,
        std::fs::read_to_string(dir.path().join(files::CA)).unwrap()
    );
    init(dir.path(), &[], true).unwrap();
    assert_ne!(
        before,
        std::fs::read_to_string(dir.path().join(files::CA)).unwrap()
    );
}

#[test]
fn agent_certificate_carries_the_spiffe_id() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), &[], false).unwrap();
    let paths = agent(dir.path(), "research", 30, false).unwrap();
    let pem = std::fs::read(&paths[0]).unwrap();
    let der = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
        .next()
        .unwrap()
        .unwrap();
    let id = crate::identity::from_der(&der).unwrap();
    assert_eq!(
        id.names[0],
        crate::identity::PeerName::Uri("spiffe://clawgate.local/agent/research".into())
    );
    assert!(matches!(
        agent(dir.path(), "research", 30, false),
        Err(CertError::Exists(_))
    ));
    assert!(matches!(
        agent(dir.path(), "Bad Name", 30, false),
        Err(CertError::BadName(_))
    ));
}

#[test]
fn agent_without_a_ca_says_which_command_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let err = agent(dir.path(), "a", 30, false).unwrap_err().to_string();
    assert!(err.contains("clawgate certs init"), "{err}");
}

use rustls_pki_types::pem::PemObject;
