use super::*;
use rcgen::{CertificateParams, DnType, KeyPair, SanType};

fn cert_with(sans: Vec<SanType>, cn: Option<&str>) -> Vec<u8> {
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(cn) = cn {
        params.distinguished_name.push(DnType::CommonName, cn);
    }
    let key = KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().der().to_vec()
}

#[test]
fn names_come_in_precedence_order_uri_dns_cn() {
    let der = cert_with(
        vec![
            SanType::DnsName("Agent.Example.".try_into().unwrap()),
            SanType::URI("spiffe://clawgate.local/agent/a".try_into().unwrap()),
        ],
        Some("a-cn"),
    );
    let id = from_der(&der).unwrap();
    assert_eq!(
        id.names,
        vec![
            PeerName::Uri("spiffe://clawgate.local/agent/a".into()),
            PeerName::Dns("agent.example".into()),
            PeerName::Cn("a-cn".into()),
        ]
    );
    assert_eq!(id.fingerprint.len(), 64);
    assert!(!id.serial.is_empty());
}

#[test]
fn each_name_kind_alone_is_read() {
    let table: Vec<(Vec<SanType>, Option<&str>, Vec<PeerName>)> = vec![
        (
            vec![SanType::URI("spiffe://x/y".try_into().unwrap())],
            None,
            vec![PeerName::Uri("spiffe://x/y".into())],
        ),
        (
            vec![SanType::DnsName("bot.internal".try_into().unwrap())],
            None,
            vec![PeerName::Dns("bot.internal".into())],
        ),
        (
            vec![],
            Some("only-cn"),
            vec![PeerName::Cn("only-cn".into())],
        ),
        (vec![], None, vec![]),
    ];
    for (sans, cn, expected) in table {
        assert_eq!(from_der(&cert_with(sans, cn)).unwrap().names, expected);
    }
}

#[test]
fn garbage_is_unparseable() {
    assert_eq!(from_der(b"not a cert"), Err(IdentityError::Unparseable));
}

#[test]
fn policy_identities_parse_by_form() {
    assert_eq!(
        PeerName::parse_policy("spiffe://clawgate.local/agent/a"),
        Ok(PeerName::Uri("spiffe://clawgate.local/agent/a".into()))
    );
    assert_eq!(
        PeerName::parse_policy("dns:Bot.Example."),
        Ok(PeerName::Dns("bot.example".into()))
    );
    assert_eq!(
        PeerName::parse_policy("cn:Bot"),
        Ok(PeerName::Cn("Bot".into()))
    );
    assert!(matches!(
        PeerName::parse_policy("research"),
        Err(IdentityError::UnknownForm(_))
    ));
    assert!(matches!(
        PeerName::parse_policy("cn:"),
        Err(IdentityError::EmptyName(_))
    ));
    assert!(matches!(
        PeerName::parse_policy("://x"),
        Err(IdentityError::UnknownForm(_))
    ));
}
