//! Small persistent key/value storage (certificates, channel records, settings).
//!
//! The seed's devices keep these in NVS flash; the host keeps one file per key in a directory.
//! Must not touch: what the values mean (their owners decide), or how a file is replaced
//! atomically ([`crate::fs`] owns that).

use std::fs;
use std::io;
use std::path::PathBuf;

/// Errors from [`Storage`].
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Keys are restricted so they can be file names on any host.
    #[error(
        "invalid storage key {0:?}: use 1-64 characters of [A-Za-z0-9._-], not starting with '.'"
    )]
    InvalidKey(String),
    #[error("storage I/O error for key {key:?}: {source}")]
    Io { key: String, source: io::Error },
}

/// Persistent key/value storage.
pub trait Storage: Send + Sync {
    /// Read a value; `Ok(None)` when the key was never written.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError>;
    /// Write a value atomically (a reader sees the old or the new value, never a mix).
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StorageError>;
    /// Remove a key; removing a missing key is not an error.
    fn remove(&self, key: &str) -> Result<(), StorageError>;
}

/// Host storage: one file per key in a directory, each written with
/// [`crate::fs::write_atomic`] (so concurrent writers of one key never share a temporary file).
#[derive(Debug, Clone)]
pub struct DirStorage {
    dir: PathBuf,
}

impl DirStorage {
    /// Use `dir`, creating it if needed.
    pub fn new(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    fn path(&self, key: &str) -> Result<PathBuf, StorageError> {
        let valid = !key.is_empty()
            && key.len() <= 64
            && !key.starts_with('.')
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if valid {
            Ok(self.dir.join(key))
        } else {
            Err(StorageError::InvalidKey(key.to_owned()))
        }
    }
}

impl Storage for DirStorage {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let path = self.path(key)?;
        match fs::read(path) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StorageError::Io {
                key: key.into(),
                source,
            }),
        }
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        let path = self.path(key)?;
        crate::fs::write_atomic(&path, value, None).map_err(|source| StorageError::Io {
            key: key.into(),
            source,
        })
    }

    fn remove(&self, key: &str) -> Result<(), StorageError> {
        let path = self.path(key)?;
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StorageError::Io {
                key: key.into(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_and_bad_keys() {
        let dir = std::env::temp_dir().join(format!("kvs-storage-test-{}", std::process::id()));
        let s = DirStorage::new(&dir).unwrap();
        assert_eq!(s.get("cert.pem").unwrap(), None);
        s.put("cert.pem", b"abc").unwrap();
        assert_eq!(s.get("cert.pem").unwrap().as_deref(), Some(&b"abc"[..]));
        s.put("cert.pem", b"xyz").unwrap();
        assert_eq!(s.get("cert.pem").unwrap().as_deref(), Some(&b"xyz"[..]));
        s.remove("cert.pem").unwrap();
        s.remove("cert.pem").unwrap();
        assert_eq!(s.get("cert.pem").unwrap(), None);
        assert!(matches!(
            s.get("../etc/passwd"),
            Err(StorageError::InvalidKey(_))
        ));
        assert!(matches!(s.put("", b""), Err(StorageError::InvalidKey(_))));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn concurrent_puts_of_one_key_all_succeed_with_a_whole_value() {
        let dir = std::env::temp_dir().join(format!("kvs-storage-race-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let s = DirStorage::new(&dir).unwrap();
        std::thread::scope(|scope| {
            for w in 0..4u8 {
                let s = &s;
                scope.spawn(move || {
                    for _ in 0..25 {
                        s.put("shared", &[w; 4096]).unwrap();
                    }
                });
            }
        });
        let value = s.get("shared").unwrap().unwrap();
        assert_eq!(value.len(), 4096);
        assert!(value.iter().all(|&b| b == value[0]));
        // Only the key itself is left: no temporary files.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(dir).unwrap();
    }
}
