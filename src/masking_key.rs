//! The secret key of the `hash` mask method.
//!
//! `FLOWCTL_MASK_KEY` (any string; hashed to 32 bytes) wins. Otherwise a
//! random key is created once beside the store (`mask.key`, mode 0600) so
//! hashes stay stable across runs and are not guessable from the data.

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Environment variable holding the masking key.
pub const ENV_MASK_KEY: &str = "FLOWCTL_MASK_KEY";

/// The key from `FLOWCTL_MASK_KEY`, if set: the only source with a shared store, since every
/// machine must hash alike.
pub fn from_env() -> Option<[u8; 32]> {
    std::env::var(ENV_MASK_KEY)
        .ok()
        .map(|k| Sha256::digest(k.as_bytes()).into())
}

pub fn load_or_create(db: &Path) -> Result<[u8; 32], String> {
    if let Some(key) = from_env() {
        return Ok(key);
    }
    let path = db.join("mask.key");
    if let Ok(bytes) = std::fs::read(&path) {
        return <[u8; 32]>::try_from(bytes.as_slice())
            .map_err(|_| format!("{} is not a 32-byte key", path.display()));
    }
    std::fs::create_dir_all(db).map_err(|e| format!("cannot create {}: {e}", db.display()))?;
    let key: [u8; 32] = rand::random();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(&path) {
        Ok(mut f) => {
            f.write_all(&key)
                .and_then(|_| f.sync_all())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            Ok(key)
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let bytes =
                std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            <[u8; 32]>::try_from(bytes.as_slice())
                .map_err(|_| format!("{} is not a 32-byte key", path.display()))
        }
        Err(e) => Err(format!("cannot create {}: {e}", path.display())),
    }
}
