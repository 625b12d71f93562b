//! Atomic file replacement on the host filesystem.
//!
//! Owns: [`write_atomic`], the one way this project replaces a file's contents (storage
//! values, the signaling service's channel list, its CA certificate and key), so that a reader
//! or a crash sees the old bytes or the new ones, never a mix, and concurrent writers never
//! share a temporary file.
//!
//! Must not touch: what the bytes mean, where files live, or ordering between writers (when two
//! write one path at once, the last rename wins; both results are whole files).

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Temporary names tried before giving up: a name is only taken by a file a crashed process
/// with the same id left behind, so a second try all but always succeeds.
const TEMP_NAME_ATTEMPTS: u32 = 16;

/// Replaces the contents of `path` with `bytes` atomically and durably.
///
/// The bytes go to a temporary file of a name unique to this call (process id and a counter)
/// in the same directory, which is flushed to disk and then renamed over `path`; the directory
/// is flushed too where the platform allows it. On failure the temporary file is removed and
/// `path` keeps its old contents.
///
/// `mode` (unix permission bits, e.g. `0o600` for a private key) is applied when the temporary
/// file is created, so the data is never readable more widely than asked, and then set exactly
/// (independent of the umask). `None` leaves the platform default; the mode is ignored where
/// there are no unix permissions.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: Option<u32>) -> io::Result<()> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let (file, tmp) = create_temp(dir, name, mode)?;
    let result = fill(file, bytes, mode).and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir);
    Ok(())
}

/// Creates a new, exclusively ours temporary file beside the target. It starts with `.` so
/// directory listings and key validation (which refuses leading dots) skip it.
fn create_temp(
    dir: &Path,
    name: &OsStr,
    mode: Option<u32>,
) -> io::Result<(File, std::path::PathBuf)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut attempt = 0;
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut tmp_name = OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.{n}.tmp", std::process::id()));
        let tmp = dir.join(tmp_name);
        let mut options = OpenOptions::new();
        // create_new: never write through a file or link someone else put there.
        options.write(true).create_new(true);
        #[cfg(unix)]
        if let Some(mode) = mode {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(mode);
        }
        #[cfg(not(unix))]
        let _ = mode;
        match options.open(&tmp) {
            Ok(file) => return Ok((file, tmp)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < TEMP_NAME_ATTEMPTS => {
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

fn fill(mut file: File, bytes: &[u8], mode: Option<u32>) -> io::Result<()> {
    #[cfg(unix)]
    if let Some(mode) = mode {
        // The umask may have narrowed the mode given at creation.
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    file.write_all(bytes)?;
    // Flushed before the rename, or a crash could leave the new name on empty data.
    file.sync_all()
}

/// Makes the rename itself durable. Best effort: not every platform or filesystem can flush a
/// directory, and the data is already safe in the file.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn temp_dir(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("kvs-platform-fs-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn leftovers(dir: &Path) -> Vec<OsString> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp"))
            .collect()
    }

    #[test]
    fn writes_and_replaces_without_leaving_temp_files() {
        let dir = temp_dir("replace");
        let path = dir.0.join("value");
        write_atomic(&path, b"first", None).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"first");
        write_atomic(&path, b"second, longer", None).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second, longer");
        write_atomic(&path, b"", None).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"");
        assert!(leftovers(&dir.0).is_empty());
    }

    #[test]
    fn failure_keeps_the_old_file_and_removes_the_temp_file() {
        let dir = temp_dir("fail");
        // Renaming a file over a non-empty directory fails on every platform.
        let target = dir.0.join("occupied");
        fs::create_dir_all(target.join("inside")).unwrap();
        assert!(write_atomic(&target, b"data", None).is_err());
        assert!(target.join("inside").is_dir());
        assert!(leftovers(&dir.0).is_empty());
        // A directory that does not exist: nothing is created.
        assert!(write_atomic(&dir.0.join("missing/value"), b"data", None).is_err());
        assert!(!dir.0.join("missing").exists());
        assert!(write_atomic(Path::new("/"), b"data", None).is_err());
    }

    #[test]
    fn concurrent_writers_never_leave_a_torn_or_missing_file() {
        const WRITERS: usize = 6;
        const WRITES: usize = 25;
        const LEN: usize = 16 * 1024;
        let dir = temp_dir("race");
        let path = Arc::new(dir.0.join("shared"));
        write_atomic(&path, &[0xff; LEN], None).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        // Every version is one byte repeated: a torn file would mix bytes or be short.
        let check = |bytes: &[u8]| {
            assert_eq!(bytes.len(), LEN);
            assert!(bytes.iter().all(|&b| b == bytes[0]), "torn file");
        };
        let reader = {
            let (path, done) = (Arc::clone(&path), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut reads = 0u32;
                while !done.load(Ordering::Relaxed) {
                    check(&fs::read(&*path).expect("the file is always there"));
                    reads += 1;
                }
                reads
            })
        };
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let path = Arc::clone(&path);
                std::thread::spawn(move || {
                    for i in 0..WRITES {
                        write_atomic(&path, &[(w * WRITES + i) as u8; LEN], None).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
        check(&fs::read(&*path).unwrap());
        assert!(leftovers(&dir.0).is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn mode_is_applied_when_asked() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = temp_dir("mode");
        let path = dir.0.join("private.key");
        // A wider-open file of that name is replaced by one only its owner can read.
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_atomic(&path, b"secret", Some(0o600)).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read(&path).unwrap(), b"secret");
    }
}
