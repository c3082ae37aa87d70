//! TensorBoard event files: the scalars of a training run, for
//! `tensorboard --logdir runs/pretrain/tensorboard` (no TensorFlow needed).
//!
//! An event file is a sequence of records in TFRecord framing: the payload's
//! length (u64, little-endian), the length's masked CRC-32C, the payload, and
//! the payload's masked CRC-32C. Each payload is an `Event` protocol buffer;
//! the few fields written here are encoded directly, with the field numbers
//! of TensorFlow's `event.proto` and `summary.proto`.
//!
//! Each writer starts a new file, named so that it sorts after the files of
//! earlier runs, holding the file version and then a session start at the
//! first step it writes. When TensorBoard reads a folder and meets a session
//! start at step `s` after earlier data, it drops what was recorded for
//! steps `s` and later: a run resumed from a checkpoint trains some steps
//! again, and each of them shows once, with the resumed run's values.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// What an event carries besides its time and step (one of `Event.what`).
enum What<'a> {
    FileVersion(&'a str),
    /// A `SessionLog` with status START.
    SessionStart,
    /// A `Summary` of simple values.
    Scalars(&'a [(&'a str, f32)]),
}

/// Protocol-buffer wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u32, wire: u32) {
    varint(out, u64::from(field << 3 | wire));
}

fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    key(out, field, LEN);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// One serialized `Event`.
fn event(wall_time: f64, step: i64, what: What<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    key(&mut out, 1, FIXED64); // wall_time
    out.extend_from_slice(&wall_time.to_le_bytes());
    if step != 0 {
        key(&mut out, 2, VARINT); // step: int64, two's complement as a varint
        varint(&mut out, step as u64);
    }
    match what {
        What::FileVersion(version) => bytes_field(&mut out, 3, version.as_bytes()),
        What::SessionStart => bytes_field(&mut out, 7, &[0x08, 0x01]), // SessionLog { status: START }
        What::Scalars(values) => {
            let mut summary = Vec::new();
            for (tag, value) in values {
                let mut v = Vec::new();
                bytes_field(&mut v, 1, tag.as_bytes()); // Summary.Value.tag
                key(&mut v, 2, FIXED32); // Summary.Value.simple_value
                v.extend_from_slice(&value.to_le_bytes());
                bytes_field(&mut summary, 1, &v); // Summary.value
            }
            bytes_field(&mut out, 5, &summary);
        }
    }
    out
}

/// CRC-32C as TFRecord stores it: rotated and offset, so that a CRC of data
/// holding CRCs stays well distributed.
fn masked_crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes).rotate_right(15).wrapping_add(0xa282_ead8)
}

/// `payload` framed as one record.
fn record(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(payload.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&masked_crc(payload).to_le_bytes());
    out
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most
    // that many bytes.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = if ok { String::from_utf8_lossy(&buf[..end]).into_owned() } else { String::new() };
    let name: String = name.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')).collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// Appends scalars to one event file.
pub struct EventWriter {
    file: BufWriter<File>,
    path: PathBuf,
}

impl EventWriter {
    /// Starts a new event file in `dir` (created if missing) for a run whose
    /// first step is `first_step`: `events.out.tfevents.<seconds>.<host>.<pid>`,
    /// the name TensorBoard's own writer gives.
    pub fn create(dir: &Path, first_step: i64) -> io::Result<EventWriter> {
        let wall_time = now();
        Self::create_at(dir, first_step, wall_time as u64, wall_time)
    }

    /// [`EventWriter::create`] with the seconds of the file name and the
    /// wall time of its first events given.
    fn create_at(dir: &Path, first_step: i64, secs: u64, wall_time: f64) -> io::Result<EventWriter> {
        std::fs::create_dir_all(dir)?;
        let (host, pid) = (hostname(), std::process::id());
        // TensorBoard reads a folder's files in name order. A name already
        // taken (a second writer of this process within the same second)
        // moves to the next second, which keeps that order the order in
        // which the files were started.
        let mut secs = secs;
        let (file, path) = loop {
            let path = dir.join(format!("events.out.tfevents.{secs:010}.{host}.{pid}"));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => break (file, path),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => secs += 1,
                Err(e) => return Err(e),
            }
        };
        let mut writer = EventWriter { file: BufWriter::new(file), path };
        writer.write(&event(wall_time, 0, What::FileVersion("brain.Event:2")))?;
        writer.write(&event(wall_time, first_step, What::SessionStart))?;
        writer.file.flush()?;
        Ok(writer)
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, payload: &[u8]) -> io::Result<()> {
        self.file.write_all(&record(payload))
    }

    /// Records `scalars` at `step` as one event, flushed at once so that a
    /// TensorBoard watching the folder shows the step.
    pub fn scalars(&mut self, step: i64, scalars: &[(&str, f32)]) -> io::Result<()> {
        self.write(&event(now(), step, What::Scalars(scalars)))?;
        self.file.flush()
    }

    /// Flushes and syncs the file to the disk.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().sync_data()
    }
}

/// The scalars of the event files in `dir` as TensorBoard reads them: each
/// tag's `[step, value]` pairs, from its `EventAccumulator` (the reader of
/// `tensorboard.backend.event_processing`), and the same from the plugin
/// accumulator the TensorBoard server uses, which must agree. Runs the
/// project's virtualenv (scripts/setup.sh installs tensorboard there).
#[cfg(test)]
pub(crate) fn read_with_tensorboard(dir: &Path) -> serde_json::Value {
    const SCRIPT: &str = r#"
import json, sys
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.backend.event_processing import plugin_event_accumulator as pea
from tensorboard.util import tensor_util
acc = ea.EventAccumulator(sys.argv[1], size_guidance={ea.SCALARS: 0})
acc.Reload()
scalars = {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
server = pea.EventAccumulator(sys.argv[1], size_guidance={pea.TENSORS: 0})
server.Reload()
tensors = {t: [[e.step, float(tensor_util.make_ndarray(e.tensor_proto))] for e in server.Tensors(t)]
           for t in server.Tags()["tensors"]}
assert tensors == scalars, (tensors, scalars)
print(json.dumps(scalars))
"#;
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/setup.sh installs it)", python.display()));
    assert!(
        out.status.success(),
        "reading {} with tensorboard: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the reader prints JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_encode_as_protobuf_does() {
        // Bytes of protobuf's own SerializeToString for the same messages.
        let mut want = vec![0x09, 0, 0, 0, 0, 0, 0, 0xf8, 0x3f, 0x1a, 0x0d];
        want.extend_from_slice(b"brain.Event:2");
        assert_eq!(event(1.5, 0, What::FileVersion("brain.Event:2")), want);

        let mut want = vec![0x09, 0, 0, 0, 0, 0, 0, 0xf8, 0x3f, 0x10, 0x07, 0x2a, 0x0d, 0x0a, 0x0b, 0x0a, 0x04];
        want.extend_from_slice(b"loss");
        want.extend_from_slice(&[0x15, 0, 0, 0x80, 0x3e]);
        assert_eq!(event(1.5, 7, What::Scalars(&[("loss", 0.25)])), want);

        let start = event(1.5, 300, What::SessionStart);
        assert_eq!(&start[9..], [0x10, 0xac, 0x02, 0x3a, 0x02, 0x08, 0x01]);
    }

    #[test]
    fn records_carry_their_length_and_checksums() {
        // CRC-32C's check value, then TFRecord's mask of it.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(masked_crc(b"123456789"), 0xe306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8));
        let r = record(b"abc");
        assert_eq!(r.len(), 8 + 4 + 3 + 4);
        assert_eq!(&r[..8], 3u64.to_le_bytes());
        assert_eq!(&r[8..12], masked_crc(&3u64.to_le_bytes()).to_le_bytes());
        assert_eq!(&r[12..15], b"abc");
        assert_eq!(&r[15..], masked_crc(b"abc").to_le_bytes());
    }

    #[test]
    fn tensorboard_reads_the_scalars_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path(), 1).unwrap();
        assert!(w.path().file_name().unwrap().to_string_lossy().starts_with("events.out.tfevents."));
        for step in 1..=3 {
            w.scalars(step, &[("loss/total", 1.0 / step as f32), ("train/lr", 0.001)]).unwrap();
        }
        w.sync().unwrap();
        let read = read_with_tensorboard(dir.path());
        assert_eq!(read["loss/total"], serde_json::json!([[1, 1.0], [2, 0.5], [3, f64::from(1.0f32 / 3.0)]]));
        assert_eq!(
            read["train/lr"],
            serde_json::json!([[1, f64::from(0.001f32)], [2, f64::from(0.001f32)], [3, f64::from(0.001f32)]])
        );
    }

    #[test]
    fn a_resumed_run_replaces_the_steps_it_trains_again() {
        let dir = tempfile::tempdir().unwrap();
        // The first run logged steps 1-4 but its last checkpoint was at step
        // 2; the resumed run, started in the same second, trains 3-5 again.
        let mut first = EventWriter::create_at(dir.path(), 1, 1_700_000_000, 1.0).unwrap();
        for step in 1..=4 {
            first.scalars(step, &[("loss/total", step as f32)]).unwrap();
        }
        drop(first);
        let mut resumed = EventWriter::create_at(dir.path(), 3, 1_700_000_000, 2.0).unwrap();
        for step in 3..=5 {
            resumed.scalars(step, &[("loss/total", 10.0 * step as f32)]).unwrap();
        }
        drop(resumed);
        let names: Vec<String> = {
            let mut n: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into())
                .collect();
            n.sort();
            n
        };
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names[0].contains(".1700000000.") && names[1].contains(".1700000001."), "{names:?}");
        let read = read_with_tensorboard(dir.path());
        assert_eq!(read["loss/total"], serde_json::json!([[1, 1.0], [2, 2.0], [3, 30.0], [4, 40.0], [5, 50.0]]));
    }
}
