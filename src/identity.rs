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

impl PeerIdentity {
    /// Every name on the certificate (URI and DNS SANs, subject CN), as a
    /// record's note: a refused certificate says whose it is, not only
    /// its fingerprint.
    pub fn names_note(&self) -> String {
        let names: Vec<String> = self.names.iter().map(ToString::to_string).collect();
        format!("certificate names [{}]", names.join(", "))
    }
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
#[path = "identity_tests.rs"]
mod tests;
