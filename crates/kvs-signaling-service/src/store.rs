//! The channel list on disk, so channels (and their ARNs) survive restarts of the service.
//!
//! Owns: `<state dir>/channels.json` — reading it at start-up and rewriting it atomically
//! ([`kvs_platform::fs::write_atomic`]) after every create or delete.
//! Must not touch: routing, connections, HTTP.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::routing::ChannelInfo;

/// The file name inside the state directory.
pub const CHANNELS_FILE: &str = "channels.json";
/// A channel file larger than this is refused rather than read (it is ours, so a huge one is
/// damage, not data).
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Why the channel list cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a channel list written by this service: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

#[derive(Debug, Serialize, Deserialize)]
struct FileRepr {
    version: u32,
    channels: Vec<ChannelRepr>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ChannelRepr {
    name: String,
    arn: String,
    created_ms: u64,
    message_ttl_secs: u64,
    version: String,
}

/// The default state directory of a named part (`service`, `embedded`):
/// `$XDG_DATA_HOME/kvs-webrtc/<name>`, else `~/.local/share/kvs-webrtc/<name>`; `None` when
/// neither variable is set.
pub fn default_state_dir(name: &str) -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(d) = var("XDG_DATA_HOME") {
        return Some(PathBuf::from(d).join("kvs-webrtc").join(name));
    }
    var("HOME").map(|h| PathBuf::from(h).join(".local/share/kvs-webrtc").join(name))
}

/// The channel list of one state directory.
#[derive(Debug, Clone)]
pub struct ChannelStore {
    path: PathBuf,
}

impl ChannelStore {
    /// The store in `dir` (created on first save).
    pub fn new(dir: &Path) -> Self {
        ChannelStore {
            path: dir.join(CHANNELS_FILE),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved channels; none when the file does not exist yet.
    pub fn load(&self) -> Result<Vec<ChannelInfo>, StoreError> {
        let read_err = |source| StoreError::Read {
            path: self.path.clone(),
            source,
        };
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(read_err(e)),
        };
        if meta.len() > MAX_FILE_BYTES {
            return Err(StoreError::Corrupt {
                path: self.path.clone(),
                reason: format!("{} bytes is more than any channel list", meta.len()),
            });
        }
        let bytes = std::fs::read(&self.path).map_err(read_err)?;
        let repr: FileRepr = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        if repr.version != 1 {
            return Err(StoreError::Corrupt {
                path: self.path.clone(),
                reason: format!("unknown format version {}", repr.version),
            });
        }
        Ok(repr
            .channels
            .into_iter()
            .map(|c| ChannelInfo {
                name: c.name,
                arn: c.arn,
                created_at: UNIX_EPOCH + Duration::from_millis(c.created_ms),
                message_ttl: Duration::from_secs(c.message_ttl_secs),
                version: c.version,
            })
            .collect())
    }

    /// Replaces the saved list with `channels`, atomically.
    pub fn save(&self, channels: &[ChannelInfo]) -> Result<(), StoreError> {
        let write_err = |source| StoreError::Write {
            path: self.path.clone(),
            source,
        };
        let mut channels: Vec<&ChannelInfo> = channels.iter().collect();
        channels.sort_by(|a, b| a.name.cmp(&b.name));
        let repr = FileRepr {
            version: 1,
            channels: channels
                .into_iter()
                .map(|c| ChannelRepr {
                    name: c.name.clone(),
                    arn: c.arn.clone(),
                    created_ms: millis(c.created_at),
                    message_ttl_secs: c.message_ttl.as_secs(),
                    version: c.version.clone(),
                })
                .collect(),
        };
        let json = serde_json::to_vec_pretty(&repr).expect("plain data serialises");
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(write_err)?;
        }
        kvs_platform::fs::write_atomic(&self.path, &json, None).map_err(write_err)
    }
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_is_reported() {
        let dir = std::env::temp_dir().join(format!("kvs-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = ChannelStore::new(&dir);
        assert!(store.load().unwrap().is_empty());
        let info = ChannelInfo {
            name: "cam-1".into(),
            arn: "arn:aws:kinesisvideo:us-west-2:000000000000:channel/cam-1/1700000000000".into(),
            created_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            message_ttl: Duration::from_secs(42),
            version: "abc".into(),
        };
        store.save(std::slice::from_ref(&info)).unwrap();
        assert_eq!(store.load().unwrap(), vec![info]);
        std::fs::write(store.path(), b"{\"version\":1,\"channels\":[{").unwrap();
        let err = store.load().unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
