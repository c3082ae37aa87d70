//! One run at a time per output folder. Two runs writing one folder would
//! append to one spool, remove each other's temporary files and replace
//! each other's results, so a run takes an advisory lock (`flock`) on
//! `.locvtp-flow.lock` in its output folder, and in the folder of every
//! output outside it, before it prepares anything, and holds it until it
//! has written its summary.
//!
//! The operating system releases the lock when the process ends, however
//! it ends (`kill -9` included), so a killed run never blocks the next one.
//! The lock file also records its owner (pid, host, start time, command),
//! so that a second run can name the run it waits for; a run that ends
//! normally empties it. A file that still names an owner although nobody
//! holds the lock was left by a killed run: the next run takes it over and
//! says so in its log.
//!
//! In a cluster only process 0 writes outputs, so only process 0 takes the
//! lock; the other processes write nothing to the output folder.

use crate::graph::{Graph, GraphError};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// The lock file's name in an output folder.
pub const LOCK_FILE: &str = ".locvtp-flow.lock";

/// How long a run that finds the lock held waits for the holder's details,
/// which the holder writes just after taking the lock.
const DETAILS_WAIT: Duration = Duration::from_secs(2);

/// The run that holds a lock, as its lock file records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    pub host: String,
    /// UTC, e.g. `2026-11-26T09:30:00Z`.
    pub started: String,
    pub command: String,
}

impl Owner {
    /// This process, started now.
    pub fn this_process() -> Owner {
        let command: Vec<String> = std::env::args().map(|a| shell_word(&a)).collect();
        Owner { pid: std::process::id(), host: hostname(), started: utc_now(), command: command.join(" ") }
    }

    /// Whether this owner's process is alive, as far as this host can
    /// tell: `None` for a process of another host.
    fn alive(&self) -> Option<bool> {
        if self.host != hostname() {
            return None;
        }
        let Ok(pid) = libc::pid_t::try_from(self.pid) else { return Some(false) };
        // Signal 0 checks that the process exists; EPERM means it exists
        // but belongs to another user.
        let exists =
            unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        Some(exists)
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} on host {}, started {}, command `{}`", self.pid, self.host, self.started, self.command)
    }
}

/// A held lock on one folder; dropping it empties the lock file and
/// releases the lock.
#[derive(Debug)]
pub struct FolderLock {
    file: File,
    path: PathBuf,
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        // Emptied while still held, so that the next run does not mistake
        // a run that ended normally for a killed one. The file stays: a run
        // waiting on the old file would otherwise lock a file nobody else
        // sees, next to a new one.
        if let Err(e) = self.file.set_len(0) {
            tracing::warn!("{}: cannot clear: {e}", self.path.display());
        }
    }
}

/// Why a folder could not be locked.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds the lock; `owner` as its file records it
    /// (`None` when it wrote no details in time).
    Held { lock: PathBuf, owner: Option<Owner> },
    /// The folder or the lock file cannot be made or opened.
    Io(anyhow::Error),
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Held { lock, owner } => {
                let folder = lock.parent().unwrap_or(Path::new("."));
                match owner {
                    Some(owner) => write!(f, "{} is in use by another locvtp-flow run ({owner})", folder.display())?,
                    None => write!(f, "{} is in use by another run, which has not recorded itself", folder.display())?,
                }
                write!(
                    f,
                    ". Wait for that run to finish or stop it, or choose another output folder; the lock ({}) is \
                     released when that process ends, however it ends",
                    lock.display()
                )
            }
            LockError::Io(e) => write!(f, "{e:#}"),
        }
    }
}

/// Takes the lock of `dir` (created if missing) for `owner`, without
/// waiting: a held lock is an error naming its owner.
pub fn lock_folder(dir: &Path, owner: &Owner) -> Result<FolderLock, LockError> {
    use anyhow::Context;
    let io = |e: anyhow::Error| LockError::Io(e);
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create the output folder", dir.display()))
        .map_err(io)?;
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("{}: cannot open the lock file", path.display()))
        .map_err(io)?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(LockError::Held { owner: holder(&path), lock: path });
        }
        return Err(io(anyhow::anyhow!("{}: cannot lock: {e}", path.display())));
    }
    if let Some(earlier) = read_owner(&mut file) {
        let why = match earlier.alive() {
            Some(false) => "its process is no longer running",
            Some(true) => "it no longer holds the lock (its pid now belongs to another process)",
            None => "it no longer holds the lock",
        };
        tracing::warn!(
            "{}: taking over the lock of a run that ended without releasing it, as a killed run does ({earlier}); \
             {why}",
            dir.display()
        );
    }
    let details = serde_json::to_string(owner).expect("an owner serializes") + "\n";
    let written = file
        .set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| file.write_all(details.as_bytes()))
        .and_then(|()| file.sync_data());
    if let Err(e) = written {
        return Err(io(anyhow::anyhow!("{}: cannot record this run: {e}", path.display())));
    }
    Ok(FolderLock { file, path })
}

/// The owner a lock file records, if it records one.
fn read_owner(file: &mut File) -> Option<Owner> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(text.trim()).ok()
}

/// The owner of a held lock, waiting briefly for a holder that has just
/// taken it to record itself.
fn holder(path: &Path) -> Option<Owner> {
    let deadline = Instant::now() + DETAILS_WAIT;
    loop {
        if let Some(owner) = File::open(path).ok().and_then(|mut f| read_owner(&mut f)) {
            return Some(owner);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The locks of a run's output folders.
#[derive(Debug)]
pub struct OutputLocks {
    _held: Vec<FolderLock>,
}

/// Locks the folders `graph` writes into: `run.output_dir`, then the
/// folder of every output of a stage (deduplicated). A folder in use is a
/// problem of the graph's key that names it (exit code 2), naming the run
/// that holds it.
pub fn lock_outputs(graph: &Graph) -> Result<OutputLocks, GraphError> {
    let owner = Owner::this_process();
    let mut folders: Vec<(Vec<String>, PathBuf)> =
        vec![(vec!["run".into(), "output_dir".into()], graph.run.output_dir.clone())];
    for stage in &graph.stages {
        for (key, path) in stage.options.outputs() {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                folders.push((vec!["stages".into(), stage.name.clone(), key.into()], dir.to_path_buf()));
            }
        }
    }
    let mut held = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (key, dir) in folders {
        let _ = std::fs::create_dir_all(&dir);
        if !seen.insert(dir.canonicalize().unwrap_or_else(|_| dir.clone())) {
            continue;
        }
        match lock_folder(&dir, &owner) {
            Ok(lock) => held.push(lock),
            Err(e) => return Err(GraphError::new(vec![graph.problem(&key, e.to_string())])),
        }
    }
    Ok(OutputLocks { _held: held })
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer's length is passed; the name is NUL-terminated
    // when it fits, and the last byte stays 0 otherwise.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) } != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// `word` as a shell would need it quoted.
fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The current time in UTC, to the second: `2026-11-26T09:30:00Z`.
fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    utc(secs)
}

/// Seconds since the Unix epoch as an ISO 8601 UTC time (Howard Hinnant's
/// days-to-civil conversion).
fn utc(secs: u64) -> String {
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rest / 3600, rest % 3600 / 60, rest % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(pid: u32) -> Owner {
        Owner {
            pid,
            host: hostname(),
            started: "2026-01-02T03:04:05Z".into(),
            command: "locvtp-flow run g.toml".into(),
        }
    }

    #[test]
    fn a_held_lock_names_its_owner_and_is_free_again_once_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let first = lock_folder(&out, &owner(std::process::id())).expect("a free folder locks");
        // A second open file description conflicts with the first even in
        // one process, as a second process would.
        let err = lock_folder(&out, &owner(1)).expect_err("the folder is held");
        let LockError::Held { owner: Some(held), .. } = &err else { panic!("{err}") };
        assert_eq!(held.pid, std::process::id());
        let message = err.to_string();
        assert!(message.contains(&format!("pid {} on host {}", std::process::id(), hostname())), "{message}");
        assert!(message.contains("locvtp-flow run g.toml") && message.contains(LOCK_FILE), "{message}");
        drop(first);
        assert_eq!(std::fs::read(out.join(LOCK_FILE)).unwrap(), b"", "a run that ends normally clears its record");
        let second = lock_folder(&out, &owner(7)).expect("free again");
        let recorded: Owner = serde_json::from_slice(&std::fs::read(out.join(LOCK_FILE)).unwrap()).unwrap();
        assert_eq!(recorded.pid, 7);
        drop(second);
    }

    #[test]
    fn a_lock_file_left_by_a_dead_process_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        // A process that has ended: its pid names no running process.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        assert_eq!(owner(dead).alive(), Some(false));
        std::fs::write(dir.path().join(LOCK_FILE), serde_json::to_string(&owner(dead)).unwrap()).unwrap();
        let lock = lock_folder(dir.path(), &owner(std::process::id())).expect("a stale lock is taken over");
        let recorded: Owner = serde_json::from_slice(&std::fs::read(dir.path().join(LOCK_FILE)).unwrap()).unwrap();
        assert_eq!(recorded.pid, std::process::id());
        drop(lock);
    }

    #[test]
    fn times_are_utc_and_words_are_quoted_for_the_shell() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_798_761_599), "2026-12-31T23:59:59Z");
        assert_eq!(shell_word("--set"), "--set");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert!(utc_now().ends_with('Z') && Owner::this_process().pid == std::process::id());
    }
}
