//! Development certificates, made with rcgen, so a first run needs no openssl
//! recipe. Production brings its own CA.
//!
//! Invariants: private keys are written 0600; nothing existing is overwritten
//! unless the caller passed `force`; all keys are ECDSA P-256.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;

/// The trust domain of agent SPIFFE ids.
pub const TRUST_DOMAIN: &str = "clawgate.local";
/// Agent certificates last this many days unless told otherwise.
pub const DEFAULT_AGENT_DAYS: u32 = 30;

/// File names inside a certificate directory.
pub mod files {
    /// The CA that signs the server and agent certificates.
    pub const CA: &str = "ca.pem";
    /// Its key.
    pub const CA_KEY: &str = "ca-key.pem";
    /// The agent listener's certificate.
    pub const SERVER: &str = "server.pem";
    /// Its key.
    pub const SERVER_KEY: &str = "server-key.pem";
    /// The CA that will mint interception leaves (forward-proxy mode).
    pub const INTERCEPT_CA: &str = "intercept-ca.pem";
    /// Its key.
    pub const INTERCEPT_CA_KEY: &str = "intercept-ca-key.pem";
    /// The ES256 key that signs run tokens (`clawgate token issue`).
    pub const TOKEN_KEY: &str = "token-key.pem";
    /// Its public half, which verifies them.
    pub const TOKEN_PUB: &str = "token-pub.pem";
}

/// Why certificates could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file exists and `--force` was not given.
    #[error("`{0}` exists; pass --force to replace it")]
    Exists(PathBuf),
    /// Reading or writing a file failed.
    #[error("cannot write `{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The CA could not be read (run `certs init` first).
    #[error("cannot read `{path}`: {why}; run `clawgate certs init --dir {dir}` first")]
    MissingCa {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
        /// The certificate directory.
        dir: String,
    },
    /// An agent name outside the accepted alphabet.
    #[error("agent name `{0}` must be 1 to 64 of a-z, 0-9, `.`, `_`, `-`")]
    BadName(String),
    /// A subject alternative name rcgen refused.
    #[error("invalid subject alternative name `{0}`")]
    BadSan(String),
    /// rcgen failed.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A serial that is not hexadecimal.
    #[error("serial `{0}` must be hexadecimal (colons allowed), or a certificate file")]
    BadSerial(String),
}

/// A certificate and key in PEM.
#[derive(Debug)]
pub struct Pem {
    /// The certificate.
    pub cert: String,
    /// The private key (PKCS#8). Written 0600, never logged.
    key: String,
}

impl Pem {
    /// The private key in PEM.
    pub fn key_pem(&self) -> &str {
        &self.key
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // SystemRandom only fails when the OS has no entropy source at all; a
    // zeroed serial would then still be a valid (if unlucky) serial.
    let _ = SystemRandom::new().fill(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::from_secs(300);
    params.not_after = now + Duration::from_secs(u64::from(days) * 86_400);
}

/// Makes a self-signed CA.
pub fn new_ca(common_name: &str, days: u32) -> Result<Pem, CertError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "clawgate");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    params.key_identifier_method = KeyIdMethod::Sha256;
    validity(&mut params, days);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// What a leaf certificate is for.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    /// Subject common name.
    pub common_name: String,
    /// Subject alternative names.
    pub sans: Vec<SanType>,
    /// Server or client authentication.
    pub usage: ExtendedKeyUsagePurpose,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

/// Signs a leaf certificate with the CA in `ca`.
pub fn issue(ca: &Pem, spec: &LeafSpec) -> Result<(Pem, String), CertError> {
    let ca_key = KeyPair::from_pem(&ca.key)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, spec.common_name.as_str());
    params.subject_alt_names = spec.sans.clone();
    params.extended_key_usages = vec![spec.usage.clone()];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    let serial = random_serial();
    let serial_hex = hex::encode(serial.to_bytes());
    params.serial_number = Some(serial);
    params.not_before = spec.not_before;
    params.not_after = spec.not_after;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((
        Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        },
        serial_hex,
    ))
}

/// The SPIFFE id of an agent.
pub fn agent_spiffe_id(name: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/agent/{name}")
}

/// A client certificate spec for agent `name`, valid for `days`.
pub fn agent_spec(name: &str, days: u32) -> Result<LeafSpec, CertError> {
    let uri = agent_spiffe_id(name);
    let san = SanType::URI(uri.clone().try_into().map_err(|_| CertError::BadSan(uri))?);
    let now = OffsetDateTime::now_utc();
    Ok(LeafSpec {
        common_name: name.to_owned(),
        sans: vec![san],
        usage: ExtendedKeyUsagePurpose::ClientAuth,
        not_before: now - Duration::from_secs(300),
        not_after: now + Duration::from_secs(u64::from(days) * 86_400),
    })
}

/// A server certificate spec for `localhost`, `127.0.0.1`, `::1` and `extra`.
pub fn server_spec(extra: &[String], days: u32) -> Result<LeafSpec, CertError> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    names.extend(extra.iter().cloned());
    let mut sans = Vec::with_capacity(names.len());
    for name in names {
        let san = match name.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                name.clone()
                    .try_into()
                    .map_err(|_| CertError::BadSan(name.clone()))?,
            ),
        };
        sans.push(san);
    }
    let now = OffsetDateTime::now_utc();
    Ok(LeafSpec {
        common_name: "clawgate".into(),
        sans,
        usage: ExtendedKeyUsagePurpose::ServerAuth,
        not_before: now - Duration::from_secs(300),
        not_after: now + Duration::from_secs(u64::from(days) * 86_400),
    })
}

/// A CRL signed by `ca` that revokes the given serials (lowercase hex).
pub fn crl(ca: &Pem, revoked_serials: &[String]) -> Result<String, CertError> {
    let ca_key = KeyPair::from_pem(&ca.key)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key)?;
    let now = OffsetDateTime::now_utc();
    let revoked = revoked_serials
        .iter()
        .filter_map(|s| hex::decode(s).ok())
        .map(|bytes| RevokedCertParams {
            serial_number: SerialNumber::from_slice(&bytes),
            revocation_time: now - Duration::from_secs(60),
            reason_code: Some(RevocationReason::KeyCompromise),
            invalidity_date: None,
        })
        .collect();
    let params = CertificateRevocationListParams {
        this_update: now - Duration::from_secs(60),
        next_update: now + Duration::from_secs(86_400),
        crl_number: SerialNumber::from_slice(&[1]),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    Ok(params.signed_by(&issuer)?.pem()?)
}

/// A serial as the CRL and the records write it: lowercase hex, no
/// colons, an even number of digits.
pub fn normalise_serial_hex(serial: &str) -> Result<String, CertError> {
    let hex: String = serial
        .trim()
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(CertError::BadSerial(serial.to_owned()));
    }
    Ok(if hex.len() % 2 == 1 {
        format!("0{hex}")
    } else {
        hex
    })
}

/// `clawgate certs revoke`: adds `serial` (when given) to the serials revoked so far
/// (kept beside the CRL, in `CRL.serials`) and rewrites the CRL, signed by
/// the CA in `dir`, through a rename, so `serve --crl CRL` reloads a whole
/// file. Returns every serial the CRL now lists.
pub fn revoke(dir: &Path, crl_path: &Path, serial: Option<&str>) -> Result<Vec<String>, CertError> {
    let serial = serial.map(normalise_serial_hex).transpose()?;
    let ca = read_pair(dir, files::CA, files::CA_KEY)?;
    let mut list_name = crl_path.as_os_str().to_owned();
    list_name.push(".serials");
    let list_path = PathBuf::from(list_name);
    let mut serials: Vec<String> = match std::fs::read_to_string(&list_path) {
        Ok(text) => text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(CertError::Io {
                path: list_path,
                source,
            });
        }
    };
    if let Some(serial) = serial
        && !serials.contains(&serial)
    {
        serials.push(serial);
    }
    let pem = crl(&ca, &serials)?;
    let mut tmp_name = crl_path.as_os_str().to_owned();
    tmp_name.push(".next");
    let tmp = PathBuf::from(tmp_name);
    write_file(&tmp, &pem, false, true)?;
    write_file(
        &list_path,
        &format!("{}\n", serials.join("\n")),
        false,
        true,
    )?;
    std::fs::rename(&tmp, crl_path).map_err(|source| CertError::Io {
        path: crl_path.to_path_buf(),
        source,
    })?;
    Ok(serials)
}

/// Reads a certificate and key pair from `dir`.
pub fn read_pair(dir: &Path, cert: &str, key: &str) -> Result<Pem, CertError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|e| CertError::MissingCa {
            path,
            why: e.to_string(),
            dir: dir.display().to_string(),
        })
    };
    Ok(Pem {
        cert: read(cert)?,
        key: read(key)?,
    })
}

/// Writes `contents` to `path`; keys get mode 0600. Refuses to replace an
/// existing file unless `force`.
pub fn write_file(
    path: &Path,
    contents: &str,
    private: bool,
    force: bool,
) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() {
        if !force {
            return Err(CertError::Exists(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

fn check_free(paths: &[PathBuf], force: bool) -> Result<(), CertError> {
    if force {
        return Ok(());
    }
    match paths.iter().find(|p| p.exists()) {
        Some(p) => Err(CertError::Exists(p.clone())),
        None => Ok(()),
    }
}

/// `clawgate certs init`: the CA, the server certificate and the interception
/// CA. Returns the files written.
pub fn init(dir: &Path, extra_sans: &[String], force: bool) -> Result<Vec<PathBuf>, CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let names = [
        files::CA,
        files::CA_KEY,
        files::SERVER,
        files::SERVER_KEY,
        files::INTERCEPT_CA,
        files::INTERCEPT_CA_KEY,
        files::TOKEN_KEY,
        files::TOKEN_PUB,
    ];
    let paths: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
    // Check everything first, so a refusal writes nothing at all.
    check_free(&paths, force)?;
    let ca = new_ca("clawgate development CA", 3650)?;
    let (server, _) = issue(&ca, &server_spec(extra_sans, 825)?)?;
    let intercept = new_ca("clawgate interception CA", 3650)?;
    let (token_key, token_pub) = token_key_pair()?;
    let contents = [
        (&ca.cert, false),
        (&ca.key, true),
        (&server.cert, false),
        (&server.key, true),
        (&intercept.cert, false),
        (&intercept.key, true),
        (&token_key, true),
        (&token_pub, false),
    ];
    for (path, (text, private)) in paths.iter().zip(contents) {
        write_file(path, text, private, force)?;
    }
    Ok(paths)
}

/// `clawgate certs agent NAME`: a client certificate for one agent.
pub fn agent(dir: &Path, name: &str, days: u32, force: bool) -> Result<Vec<PathBuf>, CertError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if !valid {
        return Err(CertError::BadName(name.to_owned()));
    }
    let ca = read_pair(dir, files::CA, files::CA_KEY)?;
    let agents = dir.join("agents");
    std::fs::create_dir_all(&agents).map_err(|source| CertError::Io {
        path: agents.clone(),
        source,
    })?;
    let cert_path = agents.join(format!("{name}.pem"));
    let key_path = agents.join(format!("{name}-key.pem"));
    check_free(&[cert_path.clone(), key_path.clone()], force)?;
    let (leaf, _) = issue(&ca, &agent_spec(name, days)?)?;
    write_file(&cert_path, &leaf.cert, false, force)?;
    write_file(&key_path, &leaf.key, true, force)?;
    Ok(vec![cert_path, key_path])
}

/// A fresh ES256 key pair for signing run tokens, as PKCS#8 and SPKI PEM
/// (`certs init` writes it; the run token module only reads it).
pub fn token_key_pair() -> Result<(String, String), rcgen::Error> {
    let pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    Ok((pair.serialize_pem(), pair.public_key_pem()))
}

#[cfg(test)]
#[path = "certs_tests.rs"]
mod tests;
