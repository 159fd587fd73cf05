//! Agent identity from the peer certificate.
//!
//! The TLS layer has already verified the certificate chain; this module only
//! reads names out of the verified leaf. Names are returned in precedence
//! order: URI SANs, then DNS SANs, then the subject CN. The policy maps the
//! first name it knows to an agent (see `Policy::agent_for`).
//!
//! Names are typed so that a CN can never satisfy an identity written as a URI
//! or DNS name in policy, and the other way round.

use std::fmt;

use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// One name a certificate proves, tagged with where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerName {
    /// A URI SAN, such as `spiffe://clawgate.local/agent/research`.
    Uri(String),
    /// A DNS SAN, lowercased.
    Dns(String),
    /// The subject common name.
    Cn(String),
}

impl PeerName {
    /// Parses an identity as written in policy: a URI (`spiffe://…`), or
    /// `dns:NAME`, or `cn:NAME`.
    pub fn parse_policy(text: &str) -> Result<PeerName, IdentityError> {
        if let Some(name) = text.strip_prefix("dns:") {
            if name.is_empty() {
                return Err(IdentityError::EmptyName(text.to_owned()));
            }
            return Ok(PeerName::Dns(
                name.trim_end_matches('.').to_ascii_lowercase(),
            ));
        }
        if let Some(name) = text.strip_prefix("cn:") {
            if name.is_empty() {
                return Err(IdentityError::EmptyName(text.to_owned()));
            }
            return Ok(PeerName::Cn(name.to_owned()));
        }
        match text.split_once("://") {
            Some((scheme, rest))
                if !scheme.is_empty()
                    && !rest.is_empty()
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) =>
            {
                Ok(PeerName::Uri(text.to_owned()))
            }
            _ => Err(IdentityError::UnknownForm(text.to_owned())),
        }
    }
}

impl fmt::Display for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerName::Uri(uri) => f.write_str(uri),
            PeerName::Dns(name) => write!(f, "dns:{name}"),
            PeerName::Cn(name) => write!(f, "cn:{name}"),
        }
    }
}

/// What a verified client certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Names in precedence order: URI SANs, DNS SANs, CN.
    pub names: Vec<PeerName>,
    /// SHA-256 of the leaf certificate's DER, lowercase hex.
    pub fingerprint: String,
    /// The certificate serial number, lowercase hex.
    pub serial: String,
}

/// Why names could not be read from a certificate or policy entry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// The DER could not be parsed as an X.509 certificate.
    #[error("client certificate could not be parsed")]
    Unparseable,
    /// A policy identity is in none of the accepted forms.
    #[error("identity `{0}` must be a URI (spiffe://…), `dns:NAME` or `cn:NAME`")]
    UnknownForm(String),
    /// A policy identity names nothing.
    #[error("identity `{0}` names nothing")]
    EmptyName(String),
}

/// Reads the names, fingerprint and serial of a DER-encoded certificate.
pub fn from_der(der: &[u8]) -> Result<PeerIdentity, IdentityError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| IdentityError::Unparseable)?;
    let mut uris = Vec::new();
    let mut dns = Vec::new();
    // A SAN extension that does not parse rejects the peer: falling back to
    // the CN would let a weaker name stand in for the one that failed.
    let san = cert
        .subject_alternative_name()
        .map_err(|_| IdentityError::Unparseable)?;
    if let Some(san) = san {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(uri) => uris.push(PeerName::Uri((*uri).to_owned())),
                GeneralName::DNSName(name) => dns.push(PeerName::Dns(
                    name.trim_end_matches('.').to_ascii_lowercase(),
                )),
                _ => {}
            }
        }
    }
    let mut names = uris;
    names.extend(dns);
    for cn in cert.subject().iter_common_name() {
        if let Ok(cn) = cn.as_str() {
            names.push(PeerName::Cn(cn.to_owned()));
        }
    }
    Ok(PeerIdentity {
        names,
        fingerprint: hex::encode(Sha256::digest(der)),
        serial: hex::encode(cert.raw_serial()),
    })
}

#[cfg(test)]
mod tests {
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
}
