//! Append-only record file for finished videos. Each record is
//! `b"LVF1" | u32 length | u32 crc32 | zstd(payload)`; a reader takes every
//! complete, intact record and stops at the first torn one, so a crash loses
//! at most the record being written.

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"LVF1";

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
    fn encode(&self) -> Vec<u8> {
        let id = self.video_id.as_bytes();
        let mut raw = Vec::with_capacity(32 + id.len() + self.features.len() * 4);
        raw.extend_from_slice(&(id.len() as u32).to_le_bytes());
        raw.extend_from_slice(id);
        raw.extend_from_slice(&self.num_clips.to_le_bytes());
        raw.extend_from_slice(&self.dim.to_le_bytes());
        raw.extend_from_slice(&self.fps.to_le_bytes());
        raw.extend_from_slice(&self.frames.to_le_bytes());
        for v in &self.features {
            raw.extend_from_slice(&v.to_le_bytes());
        }
        raw
    }

    fn decode(raw: &[u8]) -> Option<SpoolRecord> {
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
        Some(SpoolRecord { video_id, num_clips, dim, fps, frames, features })
    }
}

/// The spool of one output file, open for appending.
#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
    file: File,
}

impl Spool {
    /// Opens (or creates) the spool and returns the records already in it.
    /// A torn tail from a crash is cut off so that appends start clean.
    pub fn open(path: &Path) -> Result<(Spool, Vec<SpoolRecord>)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
        }
        let (records, valid_len) = if path.exists() { read_records(path)? } else { (Vec::new(), 0) };
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("{}: cannot open for writing", path.display()))?;
        file.set_len(valid_len)?;
        file.seek(SeekFrom::End(0))?;
        Ok((Spool { path: path.to_path_buf(), file }, records))
    }

    /// Appends one record and makes it durable before returning.
    pub fn append(&mut self, record: &SpoolRecord) -> Result<()> {
        let payload = zstd::bulk::compress(&record.encode(), 1)?;
        let mut buf = Vec::with_capacity(payload.len() + 12);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        buf.extend_from_slice(&payload);
        self.file.write_all(&buf).with_context(|| format!("{}: append failed", self.path.display()))?;
        self.file.sync_data()?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Every intact record, and the byte length they span.
pub fn read_records(path: &Path) -> Result<(Vec<SpoolRecord>, u64)> {
    let f = File::open(path).with_context(|| format!("{}: cannot read spool", path.display()))?;
    let mut r = BufReader::new(f);
    let mut out = Vec::new();
    let mut valid = 0u64;
    loop {
        let mut head = [0u8; 12];
        if r.read_exact(&mut head).is_err() {
            break;
        }
        if &head[..4] != MAGIC {
            if out.is_empty() && valid == 0 {
                bail!("{}: not a feature spool", path.display());
            }
            break;
        }
        let len = u32::from_le_bytes(head[4..8].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(head[8..12].try_into().unwrap());
        let mut payload = vec![0u8; len];
        if r.read_exact(&mut payload).is_err() || crc32fast::hash(&payload) != crc {
            break;
        }
        let Ok(raw) = zstd::stream::decode_all(payload.as_slice()) else { break };
        let Some(rec) = SpoolRecord::decode(&raw) else { break };
        out.push(rec);
        valid += 12 + len as u64;
    }
    Ok((out, valid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, v: f32) -> SpoolRecord {
        SpoolRecord { video_id: id.into(), num_clips: 2, dim: 3, fps: 30.0, frames: 20, features: vec![v; 6] }
    }

    #[test]
    fn records_survive_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".f.h5.spool");
        {
            let (mut s, old) = Spool::open(&path).unwrap();
            assert!(old.is_empty());
            s.append(&rec("a", 1.0)).unwrap();
            s.append(&rec("b", 2.0)).unwrap();
        }
        // Simulate a crash in the middle of a third append.
        let full = std::fs::read(&path).unwrap();
        let mut torn = full.clone();
        torn.extend_from_slice(b"LVF1\x40\x00\x00\x00garbage");
        std::fs::write(&path, &torn).unwrap();
        let (mut s, old) = Spool::open(&path).unwrap();
        assert_eq!(old, vec![rec("a", 1.0), rec("b", 2.0)]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), full.len() as u64);
        s.append(&rec("c", 3.0)).unwrap();
        let (all, _) = read_records(&path).unwrap();
        assert_eq!(all.iter().map(|r| r.video_id.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
    }

    #[test]
    fn a_corrupted_record_ends_the_readable_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let (mut s, _) = Spool::open(&path).unwrap();
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
}
