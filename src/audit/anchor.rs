//! Signed heads: `serve --anchor-every` writes the SQLite chain's head
//! (seq, hash, time), signed with an Ed25519 key kept apart from the log, to
//! an anchor directory, one small file per anchor. `audit verify --anchors`
//! checks the log against every one of them, which is what catches a cut
//! tail: the chain alone cannot show records removed from its end.
//!
//! Invariants: the private key file is created with mode 0600 and never
//! overwritten; an anchor file appears whole or not at all (temp file,
//! fsync, rename); an anchor whose signature does not verify is refused and
//! named, never trusted.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Head, VerifyError};

/// What is signed, ahead of the head's fields.
const DOMAIN: &str = "clawgate-anchor-v1";

/// Why an anchor could not be made, read or trusted.
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    /// A key or anchor file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A key file does not hold a key of the expected form.
    #[error("{0}: not a clawgate anchor key (made by `clawgate certs anchor-key`)")]
    BadKey(PathBuf),
    /// An anchor file is not an anchor, or its signature does not verify.
    #[error("anchor {0}: refused: {1}")]
    Forged(PathBuf, &'static str),
    /// The log does not hold a signed head.
    #[error("anchor {file}: record {seq}: {why}")]
    Broken {
        /// The anchor file that names the record.
        file: PathBuf,
        /// The anchored record.
        seq: i64,
        /// What is wrong with it.
        why: String,
    },
    /// The log could not be read.
    #[error(transparent)]
    Log(#[from] super::AuditError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AnchorError + '_ {
    move |source| AnchorError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One signed head, as stored in an anchor file.
#[derive(Debug, Serialize, Deserialize)]
struct Anchor {
    seq: i64,
    hash: String,
    /// Unix seconds when the head was read.
    time: u64,
    /// Ed25519 over [`signed_bytes`], hex.
    signature: String,
}

fn signed_bytes(seq: i64, hash: &str, time: u64) -> Vec<u8> {
    format!("{DOMAIN}\n{seq}\n{hash}\n{time}\n").into_bytes()
}

/// Makes a key pair: the private key (PKCS#8, hex) at `path`, mode 0600,
/// refusing to replace a file, and the public key (hex) at `path.pub`.
/// Returns the public key's hex.
pub fn generate_key(path: &Path) -> Result<String, AnchorError> {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| AnchorError::BadKey(path.to_owned()))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| AnchorError::BadKey(path.to_owned()))?;
    let public = hex::encode(pair.public_key().as_ref());
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io(path))?;
    file.write_all(format!("{}\n", hex::encode(pkcs8.as_ref())).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io(path))?;
    let public_path = public_path(path);
    fs::write(&public_path, format!("{public}\n")).map_err(io(&public_path))?;
    Ok(public)
}

/// Where [`generate_key`] writes the public key of the key at `path`.
pub fn public_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// Reads a private key written by [`generate_key`].
pub fn load_key(path: &Path) -> Result<Ed25519KeyPair, AnchorError> {
    let text = fs::read_to_string(path).map_err(io(path))?;
    let bytes = hex::decode(text.trim()).map_err(|_| AnchorError::BadKey(path.to_owned()))?;
    Ed25519KeyPair::from_pkcs8(&bytes).map_err(|_| AnchorError::BadKey(path.to_owned()))
}

/// Reads a public key written by [`generate_key`].
pub fn load_public(path: &Path) -> Result<Vec<u8>, AnchorError> {
    let text = fs::read_to_string(path).map_err(io(path))?;
    match hex::decode(text.trim()) {
        Ok(bytes) if bytes.len() == 32 => Ok(bytes),
        _ => Err(AnchorError::BadKey(path.to_owned())),
    }
}

/// Signs `head` read at `time` and writes it to `dir` atomically; returns
/// the new file.
pub fn write_anchor(
    dir: &Path,
    key: &Ed25519KeyPair,
    head: &Head,
    time: SystemTime,
) -> Result<PathBuf, AnchorError> {
    let time = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let signature = key.sign(&signed_bytes(head.seq, &head.hash, time));
    let anchor = Anchor {
        seq: head.seq,
        hash: head.hash.clone(),
        time,
        signature: hex::encode(signature.as_ref()),
    };
    let text = serde_json::to_string(&anchor).unwrap_or_default() + "\n";
    let path = dir.join(format!("anchor-{:020}-{time}.json", head.seq));
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(io(dir))?;
    temp.write_all(text.as_bytes())
        .and_then(|()| temp.as_file().sync_all())
        .map_err(io(&path))?;
    temp.persist(&path).map_err(|e| AnchorError::Io {
        path: path.clone(),
        source: e.error,
    })?;
    Ok(path)
}

/// Checks every anchor in `dir` (signature, then the record it names);
/// returns how many held. An empty directory holds trivially (0).
pub fn verify_anchors(log: &Path, dir: &Path, public: &[u8]) -> Result<usize, AnchorError> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let key = UnparsedPublicKey::new(&ED25519, public);
    for file in &files {
        let text = fs::read_to_string(file).map_err(io(file))?;
        let anchor: Anchor = serde_json::from_str(&text)
            .map_err(|_| AnchorError::Forged(file.clone(), "not an anchor"))?;
        let signature = hex::decode(&anchor.signature)
            .map_err(|_| AnchorError::Forged(file.clone(), "signature is not hex"))?;
        key.verify(
            &signed_bytes(anchor.seq, &anchor.hash, anchor.time),
            &signature,
        )
        .map_err(|_| {
            AnchorError::Forged(file.clone(), "the signature does not verify with this key")
        })?;
        let head = Head {
            seq: anchor.seq,
            hash: anchor.hash,
        };
        match super::check_anchor(log, &head) {
            Ok(()) => {}
            Err(VerifyError::Broken { seq, why }) => {
                return Err(AnchorError::Broken {
                    file: file.clone(),
                    seq,
                    why,
                });
            }
            Err(VerifyError::Audit(e)) => return Err(e.into()),
        }
    }
    Ok(files.len())
}

/// Writes a signed head of the SQLite log at `log` into `dir` every
/// `every` until `stopped` flips; a head already anchored is not written
/// again. A failure is said on stderr and retried at the next tick.
pub async fn write_on_schedule(
    log: PathBuf,
    dir: PathBuf,
    key: std::sync::Arc<Ed25519KeyPair>,
    every: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut last: Option<Head> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        let (log, dir, key, previous) = (log.clone(), dir.clone(), key.clone(), last.clone());
        let written = tokio::task::spawn_blocking(move || -> Result<Option<Head>, AnchorError> {
            let head = super::head(&log)?;
            if head.seq == 0 || previous.as_ref() == Some(&head) {
                return Ok(None);
            }
            write_anchor(&dir, &key, &head, SystemTime::now())?;
            Ok(Some(head))
        })
        .await;
        match written {
            Ok(Ok(Some(head))) => last = Some(head),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::error!("anchor not written: {e}"),
            Err(e) => tracing::error!("anchor not written: {e}"),
        }
    }
}

#[cfg(test)]
#[path = "anchor_tests.rs"]
mod tests;
