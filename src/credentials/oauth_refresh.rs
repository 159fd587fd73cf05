//! The `refresh_token` grant: where the refresh token lives, and how a
//! rotated one is stored back there before the token it came with is used.
//!
//! Invariants: one refresh per store at a time (a store's lock is held from
//! reading the refresh token to storing its successor, so two scopes that
//! share a refresh token never race with it: with rotation on, the loser
//! would present a spent token and the provider would revoke the grant); a
//! rotated refresh token is kept in memory until it is stored, so a failed
//! store never loses the grant; a file is replaced atomically (a temporary
//! file, mode 0600, in the same directory, synced, then renamed over it).

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};

use super::{MintFailure, OAuthSource};
use crate::credentials::broker::{AwsAccess, MintContext};
use crate::credentials::{SecretSource, SecretsManagerRef};

/// Where a refresh token is kept, read from before each refresh and written
/// back to when the provider rotates it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum RefreshStore {
    /// A file holding the token (a trailing newline is ignored).
    File(PathBuf),
    /// A Secrets Manager secret whose whole string is the token.
    SecretsManager(String),
}

impl fmt::Display for RefreshStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefreshStore::File(path) => write!(f, "file:{}", path.display()),
            RefreshStore::SecretsManager(id) => write!(f, "secretsmanager:{id}"),
        }
    }
}

impl fmt::Debug for RefreshStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A refresh the provider answered, before its token is used.
pub(super) struct Rotation {
    /// The refresh token the provider sent in place of the one used.
    pub(super) token: SecretString,
}

type Failed = (MintFailure, String);

impl OAuthSource {
    /// Takes the store's lock, held across the whole refresh.
    pub(super) async fn refresh_lock(
        &self,
        store: &RefreshStore,
    ) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = Arc::clone(
            self.refresh_locks
                .entry(store.to_string())
                .or_default()
                .value(),
        );
        lock.lock_owned().await
    }

    /// The refresh token to present: one not yet stored, else the store's.
    pub(super) async fn current_refresh_token(
        &self,
        store: &RefreshStore,
        ctx: &MintContext,
    ) -> Result<SecretString, Failed> {
        if let Some(pending) = self.unstored.get(&store.to_string()) {
            return Ok(pending.clone());
        }
        let failed = |m: String| (MintFailure::StoreFailed, m);
        match store {
            RefreshStore::File(path) => super::super::read_secret_file(path)
                .filter(|t| !t.is_empty())
                .map(SecretString::from)
                .ok_or_else(|| failed(format!("refresh token `{store}` cannot be read"))),
            RefreshStore::SecretsManager(id) => self
                .aws
                .fetch_secret(&whole_secret(id), ctx)
                .await
                .map_err(|e| failed(e.to_string())),
        }
    }

    /// Keeps a rotated refresh token in memory, then stores it. The caller
    /// holds the store's lock.
    pub(super) async fn store_rotation(
        &self,
        store: &RefreshStore,
        token: SecretString,
    ) -> Result<(), Failed> {
        let key = store.to_string();
        self.unstored.insert(key.clone(), token.clone());
        let written = match store {
            RefreshStore::File(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || replace_file(&path, &token))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r)
            }
            RefreshStore::SecretsManager(id) => put_secret(&self.aws, id, &token).await,
        };
        match written {
            Ok(()) => {
                self.unstored.remove(&key);
                Ok(())
            }
            Err(message) => Err((
                MintFailure::StoreFailed,
                format!("the rotated refresh token could not be stored in `{store}`: {message}"),
            )),
        }
    }
}

impl Rotation {
    /// The rotated token from a token endpoint's answer, when it sent one
    /// other than `used`.
    pub(super) fn from_answer(
        json: Option<&serde_json::Value>,
        used: &SecretString,
    ) -> Option<Rotation> {
        let fresh = json?["refresh_token"].as_str()?;
        (!fresh.is_empty() && fresh != used.expose_secret()).then(|| Rotation {
            token: SecretString::from(fresh.to_owned()),
        })
    }
}

/// `PutSecretValue`: the token becomes the secret's `AWSCURRENT` version.
async fn put_secret(aws: &AwsAccess, id: &str, token: &SecretString) -> Result<(), String> {
    aws.clients()
        .await
        .secrets
        .put_secret_value()
        .secret_id(id)
        .secret_string(token.expose_secret())
        .send()
        .await
        .map(|_| ())
        .map_err(|e| crate::credentials::broker::sdk_error_text(&e))
}

fn whole_secret(id: &str) -> SecretsManagerRef {
    SecretsManagerRef {
        id: id.to_owned(),
        json_key: None,
        version_stage: None,
    }
}

/// Replaces `path` with `token` atomically: a 0600 temporary file in the
/// same directory, written and synced, renamed over the old one, and the
/// directory synced so that the rename survives a crash.
fn replace_file(path: &Path, token: &SecretString) -> Result<(), String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = SecretSource::File(path.to_path_buf()).to_string();
    // tempfile creates with mode 0600 and O_EXCL.
    let mut temp = tempfile::Builder::new()
        .prefix(".clawgate-refresh-")
        .tempfile_in(dir)
        .map_err(|e| format!("cannot create a file beside `{name}`: {}", e.kind()))?;
    temp.write_all(token.expose_secret().as_bytes())
        .and_then(|()| temp.write_all(b"\n"))
        .and_then(|()| temp.as_file().sync_all())
        .map_err(|e| format!("cannot write beside `{name}`: {}", e.kind()))?;
    temp.persist(path)
        .map_err(|e| format!("cannot replace `{name}`: {}", e.error.kind()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_rotated_token_replaces_the_file_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refresh-token");
        std::fs::write(&path, "old-token\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        replace_file(&path, &SecretString::from("new-token".to_owned())).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new-token\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Nothing is left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_store_that_cannot_be_written_is_an_error_naming_no_token() {
        let err = replace_file(
            Path::new("/nonexistent-dir/refresh-token"),
            &SecretString::from("secret-refresh-token".to_owned()),
        )
        .unwrap_err();
        assert!(err.contains("file:/nonexistent-dir/refresh-token"), "{err}");
        assert!(!err.contains("secret-refresh-token"));
    }

    #[test]
    fn only_a_different_refresh_token_is_a_rotation() {
        let used = SecretString::from("a".to_owned());
        let same = serde_json::json!({"refresh_token": "a"});
        assert!(Rotation::from_answer(Some(&same), &used).is_none());
        let none = serde_json::json!({"access_token": "x"});
        assert!(Rotation::from_answer(Some(&none), &used).is_none());
        let rotated = serde_json::json!({"refresh_token": "b"});
        let r = Rotation::from_answer(Some(&rotated), &used).unwrap();
        assert_eq!(r.token.expose_secret(), "b");
    }
}
