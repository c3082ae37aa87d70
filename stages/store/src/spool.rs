//! Append-only record file for finished videos. Each record is
//! `b"LVF1" | u32 length | u32 crc32 | zstd(payload)`; a reader takes every
//! complete, intact record and stops at the first torn one, so a crash loses
//! at most the record being written.
//!
//! The file starts with a header, `b"LVH1" | u32 length | u32 crc32 |
//! payload`, written when the spool is created: the [`RunAttrs`] of its
//! features as JSON (weights, layer, model, preprocessing and their
//! fingerprint), so that a run that would resume with other settings can
//! tell before it mixes its videos with the spooled ones. Every record also
//! ends with the fingerprint of the run that wrote it (64 hex digits after
//! the features), so that a file assembled from the spool can check each
//! video it takes. Spools written before either existed have neither.

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::RunAttrs;

const MAGIC: &[u8; 4] = b"LVF1";
const HEADER: &[u8; 4] = b"LVH1";
/// Length of a record's fingerprint: SHA-256 in hex.
const FINGERPRINT_LEN: usize = 64;

/// One video's features.
#[derive(Debug, Clone, PartialEq)]
pub struct SpoolRecord {
    pub video_id: String,
    pub num_clips: u32,
    pub dim: u32,
    pub fps: f64,
    pub frames: u64,
    pub features: Vec<f32>,
}

impl SpoolRecord {
    /// The record's bytes, ending with `fingerprint`.
    fn encode(&self, fingerprint: &str) -> Vec<u8> {
        let id = self.video_id.as_bytes();
        let mut raw = Vec::with_capacity(32 + id.len() + self.features.len() * 4 + fingerprint.len());
        raw.extend_from_slice(&(id.len() as u32).to_le_bytes());
        raw.extend_from_slice(id);
        raw.extend_from_slice(&self.num_clips.to_le_bytes());
        raw.extend_from_slice(&self.dim.to_le_bytes());
        raw.extend_from_slice(&self.fps.to_le_bytes());
        raw.extend_from_slice(&self.frames.to_le_bytes());
        for v in &self.features {
            raw.extend_from_slice(&v.to_le_bytes());
        }
        raw.extend_from_slice(fingerprint.as_bytes());
        raw
    }

    /// The record and the fingerprint it ends with (`None` for a record
    /// written before records carried one).
    fn decode(raw: &[u8]) -> Option<(SpoolRecord, Option<String>)> {
        let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
            let s = raw.get(*at..*at + n)?;
            *at += n;
            Some(s)
        };
        let mut at = 0;
        let id_len = u32::from_le_bytes(take(&mut at, 4)?.try_into().ok()?) as usize;
        let video_id = String::from_utf8(take(&mut at, id_len)?.to_vec()).ok()?;
        let num_clips = u32::from_le_bytes(take(&mut at, 4)?.try_into().ok()?);
        let dim = u32::from_le_bytes(take(&mut at, 4)?.try_into().ok()?);
        let fps = f64::from_le_bytes(take(&mut at, 8)?.try_into().ok()?);
        let frames = u64::from_le_bytes(take(&mut at, 8)?.try_into().ok()?);
        let n = num_clips as usize * dim as usize;
        let body = take(&mut at, n * 4)?;
        let features = body.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        let fingerprint = match &raw[at..] {
            [] => None,
            rest if rest.len() == FINGERPRINT_LEN => Some(String::from_utf8(rest.to_vec()).ok()?),
            _ => return None,
        };
        Some((SpoolRecord { video_id, num_clips, dim, fps, frames, features }, fingerprint))
    }
}

/// The spool of one output file, open for appending.
#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
    file: File,
    /// Bytes of intact records; the file is cut back to this length when an
    /// append fails, so that later records are not stranded behind a torn one.
    len: u64,
    /// What each appended record ends with.
    fingerprint: String,
}

/// Where an intact record lies in a spool, and whose it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRef {
    pub video_id: String,
    pub offset: u64,
    /// The fingerprint of the run that wrote it (`None` in a spool written
    /// before records carried one).
    pub fingerprint: Option<String>,
}

impl Spool {
    /// Opens (or creates) the spool and returns the records already in it.
    /// A torn tail from a crash is cut off so that appends start clean. A
    /// new spool (or one without an intact record or header) starts with
    /// `attrs` as its header; an existing one keeps its own, which the
    /// caller compares first (see [`read_header_and_index`]). Records
    /// appended end with `attrs`' fingerprint.
    pub fn open(path: &Path, attrs: &RunAttrs) -> Result<(Spool, Vec<SpoolRecord>)> {
        let (records, valid_len) = if path.exists() { read_records(path)? } else { (Vec::new(), 0) };
        Ok((Spool::open_at(path, valid_len, attrs)?, records))
    }

    /// Like [`Spool::open`], but returns only where the earlier records are,
    /// so that memory does not grow with the features already spooled.
    pub fn open_index(path: &Path, attrs: &RunAttrs) -> Result<(Spool, Vec<RecordRef>)> {
        let (index, valid_len) = if path.exists() { read_index(path)? } else { (Vec::new(), 0) };
        Ok((Spool::open_at(path, valid_len, attrs)?, index))
    }

    fn open_at(path: &Path, valid_len: u64, attrs: &RunAttrs) -> Result<Spool> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("{}: cannot open for writing", path.display()))?;
        file.set_len(valid_len)?;
        file.seek(SeekFrom::End(0))?;
        let mut spool = Spool { path: path.to_path_buf(), file, len: valid_len, fingerprint: attrs.fingerprint() };
        if valid_len == 0 {
            spool.write_framed(HEADER, attrs.to_json())?;
        }
        Ok(spool)
    }

    /// Appends one record and makes it durable before returning.
    pub fn append(&mut self, record: &SpoolRecord) -> Result<()> {
        let payload = zstd::bulk::compress(&record.encode(&self.fingerprint), 1)?;
        self.write_framed(MAGIC, payload)
    }

    /// Writes `magic | length | crc32 | payload` durably, or leaves the file
    /// as it was.
    fn write_framed(&mut self, magic: &[u8; 4], payload: Vec<u8>) -> Result<()> {
        let mut buf = Vec::with_capacity(payload.len() + 12);
        buf.extend_from_slice(magic);
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        buf.extend_from_slice(&payload);
        let written = self.file.write_all(&buf).and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            let _ = self.file.set_len(self.len);
            let _ = self.file.seek(SeekFrom::Start(self.len));
            return Err(e).with_context(|| format!("{}: append failed", self.path.display()));
        }
        self.len += buf.len() as u64;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Every intact record, and the byte length they span (header included).
pub fn read_records(path: &Path) -> Result<(Vec<SpoolRecord>, u64)> {
    let mut out = Vec::new();
    let (_, valid) = scan(path, |_, rec, _| out.push(rec))?;
    Ok((out, valid))
}

/// The id and offset of every intact record, and the byte length they
/// span. Records are checked as [`read_records`] checks them, but only one
/// is held in memory at a time.
pub fn read_index(path: &Path) -> Result<(Vec<RecordRef>, u64)> {
    let (_, index, valid) = read_header_and_index(path)?;
    Ok((index, valid))
}

/// The spool's header (`None` for a spool written before headers existed,
/// or one whose header a crash tore), and [`read_index`]'s answer.
pub fn read_header_and_index(path: &Path) -> Result<(Option<Vec<u8>>, Vec<RecordRef>, u64)> {
    let mut out = Vec::new();
    let (header, valid) =
        scan(path, |offset, rec, fingerprint| out.push(RecordRef { video_id: rec.video_id, offset, fingerprint }))?;
    Ok((header, out, valid))
}

/// The ids of the records of `index` that were not written with
/// `fingerprint` (with another, or with none), sorted.
pub fn foreign_records(index: &[RecordRef], fingerprint: &str) -> Vec<String> {
    let mut ids: Vec<String> =
        index.iter().filter(|r| r.fingerprint.as_deref() != Some(fingerprint)).map(|r| r.video_id.clone()).collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Reads the record that starts at `offset` (from [`read_index`]).
pub fn read_record_at(file: &mut File, offset: u64) -> Result<SpoolRecord> {
    file.seek(SeekFrom::Start(offset))?;
    let mut r = BufReader::new(file);
    match next_record(&mut r, u64::MAX)? {
        Next::Record(rec, _, _) => Ok(rec),
        _ => bail!("no intact spool record at offset {offset}"),
    }
}

enum Next {
    Record(SpoolRecord, Option<String>, u64),
    Header(Vec<u8>, u64),
    End,
    NotASpool,
}

/// Reads one record; `room` is how many bytes the file has left, so that a
/// damaged length field cannot make the reader allocate more than that.
fn next_record(r: &mut impl Read, room: u64) -> Result<Next> {
    let mut head = [0u8; 12];
    if r.read_exact(&mut head).is_err() {
        return Ok(Next::End);
    }
    let is_header = &head[..4] == HEADER;
    if &head[..4] != MAGIC && !is_header {
        return Ok(Next::NotASpool);
    }
    let len = u32::from_le_bytes(head[4..8].try_into().unwrap()) as u64;
    let crc = u32::from_le_bytes(head[8..12].try_into().unwrap());
    if 12 + len > room {
        return Ok(Next::End);
    }
    let mut payload = vec![0u8; len as usize];
    if r.read_exact(&mut payload).is_err() || crc32fast::hash(&payload) != crc {
        return Ok(Next::End);
    }
    if is_header {
        return Ok(Next::Header(payload, 12 + len));
    }
    let Ok(raw) = zstd::stream::decode_all(payload.as_slice()) else { return Ok(Next::End) };
    let Some((rec, fingerprint)) = SpoolRecord::decode(&raw) else { return Ok(Next::End) };
    Ok(Next::Record(rec, fingerprint, 12 + len))
}

/// Calls `each` with the offset, the record and the fingerprint of every
/// intact record; returns the header and the byte length of the intact
/// prefix.
fn scan(path: &Path, mut each: impl FnMut(u64, SpoolRecord, Option<String>)) -> Result<(Option<Vec<u8>>, u64)> {
    let f = File::open(path).with_context(|| format!("{}: cannot read spool", path.display()))?;
    let size = f.metadata()?.len();
    let mut r = BufReader::new(f);
    let mut valid = 0u64;
    let mut header = None;
    loop {
        match next_record(&mut r, size - valid)? {
            Next::Record(rec, fingerprint, n) => {
                each(valid, rec, fingerprint);
                valid += n;
            }
            Next::Header(payload, n) if valid == 0 => {
                header = Some(payload);
                valid += n;
            }
            Next::NotASpool if valid == 0 => bail!("{}: not a feature spool", path.display()),
            // A header anywhere but at the start is damage, like a torn record.
            Next::Header(..) | Next::NotASpool | Next::End => break,
        }
    }
    Ok((header, valid))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attributes of a run with weights `checkpoint`.
    fn attrs(checkpoint: &str) -> RunAttrs {
        RunAttrs { checkpoint: checkpoint.into(), ..RunAttrs::default() }
    }

    fn rec(id: &str, v: f32) -> SpoolRecord {
        SpoolRecord { video_id: id.into(), num_clips: 2, dim: 3, fps: 30.0, frames: 20, features: vec![v; 6] }
    }

    #[test]
    fn records_survive_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".f.h5.spool");
        {
            let (mut s, old) = Spool::open(&path, &attrs("h")).unwrap();
            assert!(old.is_empty());
            s.append(&rec("a", 1.0)).unwrap();
            s.append(&rec("b", 2.0)).unwrap();
        }
        // Simulate a crash in the middle of a third append.
        let full = std::fs::read(&path).unwrap();
        let mut torn = full.clone();
        torn.extend_from_slice(b"LVF1\x40\x00\x00\x00garbage");
        std::fs::write(&path, &torn).unwrap();
        let (mut s, old) = Spool::open(&path, &attrs("h")).unwrap();
        assert_eq!(old, vec![rec("a", 1.0), rec("b", 2.0)]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), full.len() as u64);
        s.append(&rec("c", 3.0)).unwrap();
        let (all, _) = read_records(&path).unwrap();
        assert_eq!(all.iter().map(|r| r.video_id.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
    }

    #[test]
    fn the_index_finds_each_record_and_ignores_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let (mut s, _) = Spool::open(&path, &attrs("h")).unwrap();
        s.append(&rec("a", 1.0)).unwrap();
        s.append(&rec("b", 2.0)).unwrap();
        drop(s);
        let intact = std::fs::metadata(&path).unwrap().len();
        // A header whose length field claims far more than the file holds.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(b"LVF1\xff\xff\xff\xff\0\0\0\0");
        std::fs::write(&path, &bytes).unwrap();
        let (index, valid) = read_index(&path).unwrap();
        assert_eq!(valid, intact);
        assert_eq!(index.iter().map(|r| r.video_id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let mut f = File::open(&path).unwrap();
        assert_eq!(read_record_at(&mut f, index[1].offset).unwrap(), rec("b", 2.0));
        assert_eq!(read_record_at(&mut f, index[0].offset).unwrap(), rec("a", 1.0));
        assert!(read_record_at(&mut f, 3).is_err());
        let (mut s, ids) = Spool::open_index(&path, &attrs("h")).unwrap();
        assert_eq!(ids, index);
        s.append(&rec("c", 3.0)).unwrap();
        assert_eq!(read_index(&path).unwrap().0.len(), 3);
    }

    #[test]
    fn a_corrupted_record_ends_the_readable_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let (mut s, _) = Spool::open(&path, &attrs("h")).unwrap();
        s.append(&rec("a", 1.0)).unwrap();
        let first = std::fs::metadata(&path).unwrap().len() as usize;
        s.append(&rec("b", 2.0)).unwrap();
        drop(s);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[first + 14] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (recs, valid) = read_records(&path).unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(valid as usize, first);
    }

    #[test]
    fn the_header_is_written_once_every_record_carries_its_fingerprint_and_old_spools_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let (first, second) = (attrs("first run"), attrs("second run"));
        let (mut s, _) = Spool::open_index(&path, &first).unwrap();
        s.append(&rec("a", 1.0)).unwrap();
        drop(s);
        // Reopened with other attributes: the spool keeps the header its
        // first records were written under (the caller compares them before
        // opening), and each record says which run wrote it.
        let (mut s, index) = Spool::open_index(&path, &second).unwrap();
        assert_eq!(index.len(), 1);
        s.append(&rec("b", 2.0)).unwrap();
        let (header, index, _) = read_header_and_index(&path).unwrap();
        assert_eq!(RunAttrs::from_json(&header.unwrap()).unwrap(), first);
        let tags: Vec<(&str, Option<String>)> =
            index.iter().map(|r| (r.video_id.as_str(), r.fingerprint.clone())).collect();
        assert_eq!(tags, [("a", Some(first.fingerprint())), ("b", Some(second.fingerprint()))]);
        assert_eq!(foreign_records(&index, &first.fingerprint()), ["b"]);
        let mut file = File::open(&path).unwrap();
        assert_eq!(read_record_at(&mut file, index[1].offset).unwrap(), rec("b", 2.0));

        // A spool of untagged records only, as written before headers and
        // fingerprints existed.
        let header_len = 12 + first.to_json().len();
        let legacy = dir.path().join("legacy");
        {
            let mut f = File::create(&legacy).unwrap();
            for r in [rec("a", 1.0), rec("b", 2.0)] {
                let payload = zstd::bulk::compress(&r.encode(""), 1).unwrap();
                f.write_all(MAGIC).unwrap();
                f.write_all(&(payload.len() as u32).to_le_bytes()).unwrap();
                f.write_all(&crc32fast::hash(&payload).to_le_bytes()).unwrap();
                f.write_all(&payload).unwrap();
            }
        }
        let (header, index, valid) = read_header_and_index(&legacy).unwrap();
        assert_eq!((header, index.len(), valid), (None, 2, std::fs::metadata(&legacy).unwrap().len()));
        assert_eq!(foreign_records(&index, &first.fingerprint()), ["a", "b"]);
        assert_eq!(read_records(&legacy).unwrap().0, vec![rec("a", 1.0), rec("b", 2.0)]);

        // A crash while the header was written leaves nothing to keep: the
        // spool starts again with the new header.
        let bytes = std::fs::read(&path).unwrap();
        let torn = dir.path().join("torn");
        std::fs::write(&torn, &bytes[..header_len - 3]).unwrap();
        assert_eq!(read_header_and_index(&torn).unwrap(), (None, vec![], 0));
        let (mut s, index) = Spool::open_index(&torn, &second).unwrap();
        assert!(index.is_empty());
        s.append(&rec("c", 3.0)).unwrap();
        let (header, index, _) = read_header_and_index(&torn).unwrap();
        assert_eq!(RunAttrs::from_json(&header.unwrap()).unwrap(), second);
        assert_eq!(index.len(), 1);
    }
}
