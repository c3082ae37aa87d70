//! `locvtp-flow inspect`: every intermediate of the LocVTP losses for given
//! inputs and random draws, written to one safetensors file, so that another
//! implementation (the released PyTorch code, say) can be compared tensor by
//! tensor.
//!
//! The inputs file holds:
//! * the video side: `clips` (u8 `[B, T, F, H, W, 3]`) or `fc6`
//!   (`[B, T, fc_dim]`, C3D's output per segment);
//! * the text side: `input_ids` and `attention_mask` (`[B, L]`, each row
//!   `[CLS] ... [SEP]` then padding) run through the frozen text encoder, or
//!   its outputs `sentence` (`[B, H]`), `words` (`[B, N, H]`) and
//!   `word_mask` (`[B, N]`);
//! * the draws `draws.perm`, `draws.cuts`, `draws.neg_words`,
//!   `draws.neg_clips`, `draws.ctx_words`, `draws.ctx_clips` (i64).
//!
//! Dropout is off, so the output is a pure function of weights, inputs and
//! draws.

use anyhow::{bail, Context, Result};
use locvtp_model::loss::{locvtp_losses, splice_samples, Draws, LossInputs, LossWeights};
use locvtp_model::text::{TextBatch, TextEncoder};
use locvtp_model::{normalise_u8_clips, LocVtp, ModelConfig};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

pub struct InspectArgs<'a> {
    pub model: &'a Path,
    pub checkpoint: Option<&'a Path>,
    pub text_encoder: Option<&'a Path>,
    pub inputs: &'a Path,
    pub out: &'a Path,
    pub seed: i64,
    pub weights: LossWeights,
}

fn text_side(inputs: &BTreeMap<String, Tensor>, args: &InspectArgs) -> Result<TextBatch> {
    if let (Some(ids), Some(mask)) = (inputs.get("input_ids"), inputs.get("attention_mask")) {
        let dir = match args.text_encoder {
            Some(d) => d.to_path_buf(),
            None => locvtp_model::text::default_text_encoder_dir()
                .context("input_ids given but no text encoder found: pass --text-encoder")?,
        };
        let enc = TextEncoder::load(&dir, Device::Cpu)?;
        let (b, l) = (ids.size()[0], ids.size()[1]);
        let rows: Vec<Vec<i64>> = (0..b)
            .map(|i| (0..l).filter(|&j| mask.int64_value(&[i, j]) != 0).map(|j| ids.int64_value(&[i, j])).collect())
            .collect();
        return Ok(enc.encode_ids(&rows));
    }
    match (inputs.get("sentence"), inputs.get("words"), inputs.get("word_mask")) {
        (Some(s), Some(w), Some(m)) => {
            let mask = m.to_kind(Kind::Bool);
            let word_lens = (0..mask.size()[0]).map(|i| mask.get(i).sum(Kind::Int64).int64_value(&[])).collect();
            Ok(TextBatch {
                sentence: s.to_kind(Kind::Float),
                words: w.to_kind(Kind::Float),
                word_mask: mask,
                word_lens,
            })
        }
        _ => bail!("{}: needs input_ids + attention_mask, or sentence + words + word_mask", args.inputs.display()),
    }
}

pub fn inspect(args: &InspectArgs) -> Result<usize> {
    let cfg = ModelConfig::from_toml_file(args.model)?;
    let mut model = LocVtp::new(&cfg, Device::Cpu, args.seed);
    if let Some(ck) = args.checkpoint {
        locvtp_model::checkpoint::load_weights(&mut model.vs, ck)?;
    }
    let (tensors, _) = locvtp_model::checkpoint::read_safetensors(args.inputs)?;
    let inputs: BTreeMap<String, Tensor> = tensors.into_iter().collect();
    let draws =
        Draws::from_named_tensors(&inputs.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect::<Vec<_>>())?;
    let text = text_side(&inputs, args)?;
    let mut out: Vec<(String, Tensor)> = Vec::new();
    tch::no_grad(|| -> Result<()> {
        let fc6 = match (inputs.get("clips"), inputs.get("fc6")) {
            (Some(clips), _) => {
                let s = clips.size();
                if s.len() != 6 {
                    bail!("clips must be u8 [B, T, F, H, W, 3], got {s:?}");
                }
                let flat = clips.to_kind(Kind::Uint8).reshape([s[0] * s[1], s[2], s[3], s[4], 3]);
                model.c3d.forward_fc6(&normalise_u8_clips(&flat)).reshape([s[0], s[1], -1])
            }
            (None, Some(fc6)) => fc6.to_kind(Kind::Float),
            (None, None) => bail!("{}: needs clips or fc6", args.inputs.display()),
        };
        let v = model.vid_proj.forward_t(&fc6, false);
        let v_spliced = model.vid_proj.forward_t(&splice_samples(&fc6, &draws), false);
        let s = model.text_proj.forward_t(&text.sentence, false);
        let w = model.text_proj.forward_t(&text.words, false);
        let li = LossInputs { v: &v, s: &s, w: &w, word_mask: &text.word_mask, v_spliced: &v_spliced };
        let terms = locvtp_losses((&model.splice, &model.context), &li, &draws, &args.weights);
        out.push(("fc6".into(), fc6.shallow_clone()));
        out.push(("V".into(), v));
        out.push(("S".into(), s));
        out.push(("W".into(), w));
        out.push(("V_spliced".into(), v_spliced));
        out.push(("word_mask".into(), text.word_mask.to_kind(Kind::Uint8)));
        out.extend(draws.to_named_tensors());
        out.extend(terms.named_tensors());
        Ok(())
    })?;
    let n = out.len();
    let meta = BTreeMap::from([("model_config".to_string(), serde_json::to_string(&cfg)?)]);
    locvtp_model::checkpoint::write_safetensors(args.out, &out, &meta)?;
    Ok(n)
}
