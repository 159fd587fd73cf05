//! One clawgate identity per client certificate.
//!
//! A certificate that carries more than one SPIFFE URI SAN (say an agent's
//! and an admin's, both issued by clawgate's CA) would act as whichever
//! identity each listener looks up first: the agent on the agent listener,
//! an admin on the admin API. Such a certificate is refused in the
//! handshake itself, on every door that verifies client certificates, with
//! an error the accept path records as `identity-ambiguous`.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::identity::{self, PeerName};

/// The scheme that marks a name as a clawgate (SPIFFE) identity.
const SPIFFE: &str = "spiffe://";

/// How many SPIFFE identities `names` hold (the scheme compared without
/// regard to case, as URI schemes are).
pub fn spiffe_identities(names: &[PeerName]) -> usize {
    names
        .iter()
        .filter(|name| match name {
            PeerName::Uri(uri) => uri
                .get(..SPIFFE.len())
                .is_some_and(|scheme| scheme.eq_ignore_ascii_case(SPIFFE)),
            _ => false,
        })
        .count()
}

/// Wraps a verifier: the chain is verified first, then the leaf must carry
/// at most one SPIFFE identity.
#[derive(Debug)]
pub struct OneIdentity(pub Arc<dyn ClientCertVerifier>);

/// The error a certificate with several identities fails the handshake
/// with; rustls answers it with an `access_denied` alert.
pub const AMBIGUOUS: rustls::Error =
    rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure);

impl ClientCertVerifier for OneIdentity {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.0.verify_client_cert(end_entity, intermediates, now)?;
        let peer = identity::from_der(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if spiffe_identities(&peer.names) > 1 {
            return Err(AMBIGUOUS);
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_spiffe_uris() {
        let names = vec![
            PeerName::Uri("spiffe://clawgate.local/agent/a".into()),
            PeerName::Uri("https://example.com/x".into()),
            PeerName::Dns("a.example".into()),
            PeerName::Cn("a".into()),
        ];
        assert_eq!(spiffe_identities(&names), 1);
        let two = vec![
            PeerName::Uri("spiffe://clawgate.local/agent/a".into()),
            PeerName::Uri("SPIFFE://clawgate.local/admin/root".into()),
        ];
        assert_eq!(spiffe_identities(&two), 2);
        assert_eq!(spiffe_identities(&[]), 0);
    }
}
