//! The channel list on disk, so channels (and their ARNs) survive restarts of the service.
//!
//! Owns: `<state dir>/channels.json` (a snapshot of every channel) and
//! `<state dir>/channels.journal` (one JSON line per create or delete since that snapshot).
//! A change costs one appended line, whatever the number of channels; once the journal holds
//! more records than there are channels (and at least [`COMPACT_MIN_RECORDS`]) it is folded
//! into a new snapshot, written atomically with [`kvs_platform::fs::write_atomic`], and
//! emptied. Loading reads the snapshot and replays the journal; replay is idempotent, so a
//! crash between writing a snapshot and emptying the journal loses nothing.
//!
//! Ordering: the caller records a change with [`ChannelStore::record`] while it holds the lock
//! under which the change was made (so records are numbered in the order the changes
//! happened), then calls [`ChannelStore::commit`] after releasing it. Commits write whatever is
//! queued, in order, under the store's own I/O lock, and return once the caller's record is
//! on disk. The service's state lock is never held during file I/O.
//!
//! Must not touch: routing, connections, HTTP.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::routing::ChannelInfo;

/// The snapshot's file name inside the state directory.
pub const CHANNELS_FILE: &str = "channels.json";
/// The journal's file name inside the state directory.
pub const JOURNAL_FILE: &str = "channels.journal";
/// A snapshot larger than this is refused rather than read. A channel record is well under
/// 1 KiB (names ≤ 256 bytes, ARNs ≤ 400), so this holds far more than the service's channel
/// limit allows; anything bigger is damage, not data.
const MAX_SNAPSHOT_BYTES: u64 = 256 * 1024 * 1024;
/// The longest journal line we accept (one record).
const MAX_JOURNAL_LINE: usize = 8 * 1024;
/// The journal is compacted once it holds more records than this and than there are channels,
/// so the work of compacting is spread over at least as many cheap appends.
pub const COMPACT_MIN_RECORDS: usize = 1024;

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ChannelRepr {
    name: String,
    arn: String,
    created_ms: u64,
    message_ttl_secs: u64,
    version: String,
}

impl ChannelRepr {
    fn from_info(c: &ChannelInfo) -> Self {
        ChannelRepr {
            name: c.name.clone(),
            arn: c.arn.clone(),
            created_ms: millis(c.created_at),
            message_ttl_secs: c.message_ttl.as_secs(),
            version: c.version.clone(),
        }
    }

    fn to_info(&self) -> ChannelInfo {
        ChannelInfo {
            name: self.name.clone(),
            arn: self.arn.clone(),
            created_at: UNIX_EPOCH + Duration::from_millis(self.created_ms),
            message_ttl: Duration::from_secs(self.message_ttl_secs),
            version: self.version.clone(),
        }
    }
}

/// One journal line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum JournalLine {
    Create(ChannelRepr),
    Delete { name: String, arn: String },
}

/// A change to the channel list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Created(ChannelInfo),
    Deleted(ChannelInfo),
}

impl Record {
    fn line(&self) -> JournalLine {
        match self {
            Record::Created(info) => JournalLine::Create(ChannelRepr::from_info(info)),
            Record::Deleted(info) => JournalLine::Delete {
                name: info.name.clone(),
                arn: info.arn.clone(),
            },
        }
    }
}

/// Applies a journal line to the channel map (by name). Idempotent.
fn apply(channels: &mut BTreeMap<String, ChannelRepr>, line: JournalLine) {
    match line {
        JournalLine::Create(c) => {
            channels.insert(c.name.clone(), c);
        }
        JournalLine::Delete { name, arn } => {
            if channels.get(&name).is_some_and(|c| c.arn == arn) {
                channels.remove(&name);
            }
        }
    }
}

/// A recorded change's place in the commit order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[must_use = "commit the ticket, or the change may only reach disk with a later one"]
pub struct Ticket(u64);

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

/// Changes recorded and not yet written. Locked briefly, possibly under the caller's lock.
#[derive(Debug, Default)]
struct Queue {
    next: u64,
    pending: VecDeque<(u64, Record)>,
    /// Every record numbered up to this has been written (or its write has failed).
    written: u64,
}

/// The files. Locked for the duration of file I/O, never under the caller's lock.
#[derive(Debug, Default)]
struct Files {
    journal: Option<File>,
    /// Records in the journal file now.
    journal_records: usize,
    /// The channel list as written so far (what a compaction writes).
    channels: BTreeMap<String, ChannelRepr>,
    /// A write failed: the next commit rewrites the snapshot rather than trusting the journal.
    damaged: bool,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    snapshot: PathBuf,
    journal: PathBuf,
    queue: Mutex<Queue>,
    files: Mutex<Files>,
}

/// The channel list of one state directory. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct ChannelStore {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data under these locks stays consistent between statements; a panic elsewhere must
    // not stop persistence.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ChannelStore {
    /// The store in `dir` (created on first write). Nothing is read until [`Self::load`].
    pub fn new(dir: &Path) -> Self {
        ChannelStore {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                snapshot: dir.join(CHANNELS_FILE),
                journal: dir.join(JOURNAL_FILE),
                queue: Mutex::new(Queue::default()),
                files: Mutex::new(Files::default()),
            }),
        }
    }

    /// The snapshot's path.
    pub fn path(&self) -> &Path {
        &self.inner.snapshot
    }

    /// The journal's path.
    pub fn journal_path(&self) -> &Path {
        &self.inner.journal
    }

    /// The saved channels (snapshot plus journal); none when nothing was saved yet. A journal
    /// whose last line was cut short by a crash is trimmed back to its last whole record.
    pub fn load(&self) -> Result<Vec<ChannelInfo>, StoreError> {
        let mut files = lock(&self.inner.files);
        let mut channels = self.read_snapshot()?;
        let records = self.replay_journal(&mut channels)?;
        let list = channels.values().map(ChannelRepr::to_info).collect();
        files.channels = channels;
        files.journal_records = records;
        files.journal = None;
        Ok(list)
    }

    fn read_snapshot(&self) -> Result<BTreeMap<String, ChannelRepr>, StoreError> {
        let path = &self.inner.snapshot;
        let read_err = |source| StoreError::Read {
            path: path.clone(),
            source,
        };
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(read_err(e)),
        };
        let len = file.metadata().map_err(read_err)?.len();
        if len > MAX_SNAPSHOT_BYTES {
            return Err(StoreError::Corrupt {
                path: path.clone(),
                reason: format!("{len} bytes is more than any channel list"),
            });
        }
        let mut bytes = Vec::with_capacity(len as usize);
        file.take(MAX_SNAPSHOT_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        let repr: FileRepr = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if repr.version != 1 {
            return Err(StoreError::Corrupt {
                path: path.clone(),
                reason: format!("unknown format version {}", repr.version),
            });
        }
        Ok(repr
            .channels
            .into_iter()
            .map(|c| (c.name.clone(), c))
            .collect())
    }

    /// Applies the journal to `channels`; returns the number of records in it.
    fn replay_journal(
        &self,
        channels: &mut BTreeMap<String, ChannelRepr>,
    ) -> Result<usize, StoreError> {
        let path = &self.inner.journal;
        let read_err = |source| StoreError::Read {
            path: path.clone(),
            source,
        };
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(read_err(e)),
        };
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        let mut good_len: u64 = 0;
        let mut records = 0;
        loop {
            line.clear();
            let n = (&mut reader)
                .take(MAX_JOURNAL_LINE as u64 + 1)
                .read_until(b'\n', &mut line)
                .map_err(read_err)?;
            if n == 0 {
                break;
            }
            if line.last() != Some(&b'\n') {
                if n > MAX_JOURNAL_LINE {
                    return Err(StoreError::Corrupt {
                        path: path.clone(),
                        reason: format!(
                            "record {} is longer than {MAX_JOURNAL_LINE} bytes",
                            records + 1
                        ),
                    });
                }
                // The last append was cut short (a crash mid-write): that change never
                // completed, so it was never acknowledged. Trim it so the next append starts on
                // a fresh line.
                warn!(path = %path.display(), "dropping an incomplete last journal record");
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(read_err)?;
                f.set_len(good_len).map_err(read_err)?;
                break;
            }
            let parsed: JournalLine =
                serde_json::from_slice(&line).map_err(|e| StoreError::Corrupt {
                    path: path.clone(),
                    reason: format!("record {}: {e}", records + 1),
                })?;
            apply(channels, parsed);
            records += 1;
            good_len += n as u64;
        }
        Ok(records)
    }

    /// Numbers a change for [`Self::commit`]. Call it under the lock the change was made
    /// under, so the journal's order is the order of the changes. Does no I/O.
    pub fn record(&self, record: Record) -> Ticket {
        let mut q = lock(&self.inner.queue);
        q.next += 1;
        let seq = q.next;
        q.pending.push_back((seq, record));
        Ticket(seq)
    }

    /// Writes every queued change up to and including `ticket` (and any queued after it),
    /// in order, and syncs them to disk. Blocking; call it outside the caller's lock.
    pub fn commit(&self, ticket: Ticket) -> Result<(), StoreError> {
        let mut files = lock(&self.inner.files);
        let batch: Vec<(u64, Record)> = {
            let mut q = lock(&self.inner.queue);
            if q.written >= ticket.0 {
                // Another commit wrote it meanwhile.
                return Ok(());
            }
            q.pending.drain(..).collect()
        };
        let Some(&(last, _)) = batch.last() else {
            return Ok(());
        };
        for (_, r) in &batch {
            apply(&mut files.channels, r.line());
        }
        let result = if files.damaged {
            self.write_snapshot(&mut files)
        } else {
            self.append(&mut files, &batch).and_then(|()| {
                let threshold = COMPACT_MIN_RECORDS.max(files.channels.len());
                if files.journal_records > threshold {
                    self.write_snapshot(&mut files)
                } else {
                    Ok(())
                }
            })
        };
        files.damaged = result.is_err();
        lock(&self.inner.queue).written = last;
        result
    }

    fn append(&self, files: &mut Files, batch: &[(u64, Record)]) -> Result<(), StoreError> {
        let path = &self.inner.journal;
        let write_err = |source| StoreError::Write {
            path: path.clone(),
            source,
        };
        let mut text = Vec::new();
        for (_, r) in batch {
            serde_json::to_writer(&mut text, &r.line()).map_err(|e| write_err(e.into()))?;
            text.push(b'\n');
        }
        if files.journal.is_none() {
            std::fs::create_dir_all(&self.inner.dir).map_err(write_err)?;
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(write_err)?;
            files.journal = Some(f);
        }
        let f = files.journal.as_mut().expect("opened above");
        f.write_all(&text).map_err(write_err)?;
        // Durable before the caller answers: a created channel must survive a power cut.
        f.sync_data().map_err(write_err)?;
        files.journal_records += batch.len();
        Ok(())
    }

    /// Writes the snapshot of `files.channels` and empties the journal.
    fn write_snapshot(&self, files: &mut Files) -> Result<(), StoreError> {
        let write_err = |path: &Path, source| StoreError::Write {
            path: path.to_path_buf(),
            source,
        };
        let repr = FileRepr {
            version: 1,
            channels: files.channels.values().cloned().collect(),
        };
        // Compact JSON: at 10,000 channels the pretty form is twice the size for nobody.
        let json =
            serde_json::to_vec(&repr).map_err(|e| write_err(&self.inner.snapshot, e.into()))?;
        std::fs::create_dir_all(&self.inner.dir).map_err(|e| write_err(&self.inner.dir, e))?;
        kvs_platform::fs::write_atomic(&self.inner.snapshot, &json, None)
            .map_err(|e| write_err(&self.inner.snapshot, e))?;
        // The snapshot holds everything the journal did; replaying the journal on top of it
        // would change nothing, so emptying it second is safe against a crash in between.
        files.journal = None;
        let f = File::create(&self.inner.journal).map_err(|e| write_err(&self.inner.journal, e))?;
        f.sync_all()
            .map_err(|e| write_err(&self.inner.journal, e))?;
        files.journal_records = 0;
        Ok(())
    }

    /// Folds the journal into a fresh snapshot now (after loading, say).
    pub fn compact(&self) -> Result<(), StoreError> {
        let mut files = lock(&self.inner.files);
        let result = self.write_snapshot(&mut files);
        files.damaged = result.is_err();
        result
    }

    /// Replaces the saved list with `channels` (a new snapshot, empty journal), atomically.
    pub fn save(&self, channels: &[ChannelInfo]) -> Result<(), StoreError> {
        let mut files = lock(&self.inner.files);
        files.channels = channels
            .iter()
            .map(|c| (c.name.clone(), ChannelRepr::from_info(c)))
            .collect();
        let result = self.write_snapshot(&mut files);
        files.damaged = result.is_err();
        result
    }

    /// Records in the journal file now (for tests and diagnostics).
    pub fn journal_records(&self) -> usize {
        lock(&self.inner.files).journal_records
    }
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn temp_dir(tag: &str) -> TempDir {
        let n: u64 = rand::random();
        let dir =
            std::env::temp_dir().join(format!("kvs-store-{tag}-{}-{n:x}", std::process::id()));
        TempDir(dir)
    }

    fn info(name: &str, ms: u64) -> ChannelInfo {
        ChannelInfo {
            name: name.into(),
            arn: format!("arn:aws:kinesisvideo:us-west-2:000000000000:channel/{name}/{ms:013}"),
            created_at: UNIX_EPOCH + Duration::from_millis(ms),
            message_ttl: Duration::from_secs(42),
            version: format!("v{ms}"),
        }
    }

    fn sorted(mut v: Vec<ChannelInfo>) -> Vec<ChannelInfo> {
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    #[test]
    fn round_trip_and_damage_is_reported() {
        let dir = temp_dir("rt");
        let store = ChannelStore::new(&dir.0);
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
    }

    #[test]
    fn journal_records_creates_and_deletes_and_replays_them() {
        let dir = temp_dir("journal");
        let store = ChannelStore::new(&dir.0);
        store.load().unwrap();
        let (a, b) = (info("a", 1), info("b", 2));
        let t = store.record(Record::Created(a.clone()));
        store.commit(t).unwrap();
        let t1 = store.record(Record::Created(b.clone()));
        let t2 = store.record(Record::Deleted(a.clone()));
        // One commit writes everything queued before it, in order.
        store.commit(t2).unwrap();
        store.commit(t1).unwrap();
        assert_eq!(store.journal_records(), 3);
        assert!(!store.path().exists(), "no snapshot needed yet");
        let again = ChannelStore::new(&dir.0);
        assert_eq!(again.load().unwrap(), vec![b.clone()]);
        // Compaction folds the journal into the snapshot; the result is the same.
        again.compact().unwrap();
        assert_eq!(std::fs::metadata(again.journal_path()).unwrap().len(), 0);
        assert_eq!(ChannelStore::new(&dir.0).load().unwrap(), vec![b]);
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_later_appends_stay_readable() {
        let dir = temp_dir("torn");
        let store = ChannelStore::new(&dir.0);
        store.load().unwrap();
        let t = store.record(Record::Created(info("a", 1)));
        store.commit(t).unwrap();
        // A crash in the middle of the next append.
        let mut f = OpenOptions::new()
            .append(true)
            .open(store.journal_path())
            .unwrap();
        f.write_all(br#"{"op":"create","name":"b","ar"#).unwrap();
        drop(f);
        let again = ChannelStore::new(&dir.0);
        assert_eq!(again.load().unwrap(), vec![info("a", 1)]);
        let t = again.record(Record::Created(info("c", 3)));
        again.commit(t).unwrap();
        assert_eq!(
            sorted(ChannelStore::new(&dir.0).load().unwrap()),
            vec![info("a", 1), info("c", 3)]
        );
        // A damaged record in the middle is an error, not silently skipped.
        let text = std::fs::read_to_string(again.journal_path()).unwrap();
        std::fs::write(again.journal_path(), format!("garbage\n{text}")).unwrap();
        let err = ChannelStore::new(&dir.0).load().unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn replay_over_a_snapshot_that_already_has_the_changes_is_harmless() {
        // A crash after the snapshot was written but before the journal was emptied.
        let dir = temp_dir("idem");
        let store = ChannelStore::new(&dir.0);
        store.load().unwrap();
        let (a, b) = (info("a", 1), info("b", 2));
        for r in [
            Record::Created(a.clone()),
            Record::Created(b.clone()),
            Record::Deleted(a.clone()),
        ] {
            let t = store.record(r);
            store.commit(t).unwrap();
        }
        let journal = std::fs::read(store.journal_path()).unwrap();
        store.compact().unwrap();
        std::fs::write(store.journal_path(), journal).unwrap();
        assert_eq!(ChannelStore::new(&dir.0).load().unwrap(), vec![b]);
    }

    #[test]
    fn the_journal_is_compacted_once_it_outgrows_the_channel_list() {
        let dir = temp_dir("compact");
        let store = ChannelStore::new(&dir.0);
        store.load().unwrap();
        let a = info("a", 1);
        for _ in 0..(COMPACT_MIN_RECORDS / 2 + 1) {
            let t = store.record(Record::Created(a.clone()));
            store.commit(t).unwrap();
            let t = store.record(Record::Deleted(a.clone()));
            store.commit(t).unwrap();
        }
        assert!(store.journal_records() <= COMPACT_MIN_RECORDS);
        assert!(store.path().exists(), "compaction wrote a snapshot");
        assert!(ChannelStore::new(&dir.0).load().unwrap().is_empty());
    }
}
