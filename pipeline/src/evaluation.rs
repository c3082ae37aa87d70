//! Evaluation of a checkpoint on held-out videos: text-to-video retrieval
//! over caption clips and zero-shot temporal grounding, both scored by the
//! cosine between a projected sentence and mean projected clip features,
//! each metric next to its chance level.

use crate::stage_types::evaluate::Evaluate as EvaluateOptions;
use anyhow::{Context, Result};
use locvtp_model::moments::{
    nms, score, whole_video, FixedMethod, Method, Moment, Predictions, RandomWindow, Ranked, INTERVAL_METHOD,
};
use locvtp_model::text::TextEncoder;
use locvtp_model::{LocVtp, ModelConfig};
use locvtp_narration::align::{align_video, AlignConfig};
use locvtp_narration::VideoCues;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

/// Clip features of one video as the encoder produced them.
pub use locvtp_operators::collect::CollectedVideo as VideoFeatures;

/// What the evaluation needs from the encoder that produced the features.
#[derive(Debug, Clone)]
pub struct EvalModel {
    pub model: ModelConfig,
    pub checkpoint: Option<PathBuf>,
    pub seed: i64,
    pub clip_frames: usize,
    pub stride: usize,
    /// Hugging Face folder of the frozen text encoder.
    pub text_encoder: PathBuf,
}

struct Geometry {
    clip_frames: f64,
    stride: f64,
}

impl Geometry {
    /// Time span `[start, end)` of clips `i..=j` of a video.
    fn span(&self, v: &VideoFeatures, i: usize, j: usize) -> (f64, f64) {
        let fps = v.fps.max(1e-9);
        let duration = v.frames as f64 / fps;
        ((i as f64 * self.stride) / fps, ((j as f64 * self.stride + self.clip_frames) / fps).min(duration))
    }
}

fn iou(a: (f64, f64), b: (f64, f64)) -> f64 {
    let inter = (a.1.min(b.1) - a.0.max(b.0)).max(0.0);
    let union = a.1.max(b.1) - a.0.min(b.0);
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Projected, L2-normalised sentence embeddings, `[n, D]`.
fn embed_sentences(model: &LocVtp, text: &TextEncoder, sentences: &[String]) -> Result<Tensor> {
    let mut parts = Vec::new();
    for chunk in sentences.chunks(64) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let batch = text.encode(&refs)?;
        let s = tch::no_grad(|| model.text_proj.forward_t(&batch.sentence.to_device(model.device()), false));
        parts.push(s.to_device(Device::Cpu));
    }
    let s = Tensor::cat(&parts, 0).to_kind(Kind::Double);
    Ok(&s / s.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12))
}

fn video_tensor(v: &VideoFeatures) -> Tensor {
    Tensor::from_slice(&v.values).reshape([v.clips as i64, v.dim as i64]).to_kind(Kind::Double)
}

/// Normalised mean of rows `i..=j`.
fn window_embedding(rows: &Tensor, i: usize, j: usize) -> Tensor {
    let m = rows.narrow(0, i as i64, (j - i + 1) as i64).mean_dim([0i64].as_slice(), false, Kind::Double);
    &m / m.norm().clamp_min(1e-12)
}

/// Scores of windows `(i, j)` (clips `i..=j`) of one video for one
/// sentence, all on one scale: the cosine between the sentence and the mean
/// of the clips inside the window, minus the cosine with the mean of the
/// clips it leaves out. A window is scored by how much better it matches
/// than the rest of its video (the inside alone peaks on single clips, since
/// averaging the clips of a whole matching scene can only blur the best
/// one). The whole video leaves nothing out: its rest is taken to be the
/// video itself, so it scores 0 and wins only when no window matches better
/// than what it leaves out.
fn window_scores(sentence: &Tensor, rows: &Tensor, windows: &[(usize, usize)]) -> Vec<f64> {
    let n = rows.size()[0] as usize;
    let cosine = |m: Tensor| sentence.dot(&(&m / m.norm().clamp_min(1e-12))).double_value(&[]);
    // Prefix sums: every window's inside and outside sums in O(D).
    let cum = Tensor::cat(&[rows.zeros_like().narrow(0, 0, 1), rows.cumsum(0, Kind::Double)], 0);
    let total = cum.get(n as i64);
    windows
        .iter()
        .map(|&(i, j)| {
            let inside = cum.get(j as i64 + 1) - cum.get(i as i64);
            let left_out = n - (j - i + 1);
            let rest = if left_out == 0 { total.shallow_clone() } else { &total - &inside };
            cosine(inside) - cosine(rest)
        })
        .collect()
}

/// The candidate windows of a video of `clips` clips: every window of up to
/// `max_clips` clips, and the whole video.
fn candidate_windows(clips: usize, max_clips: usize) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> =
        (0..clips).flat_map(|i| (i..(i + max_clips.max(1)).min(clips)).map(move |j| (i, j))).collect();
    if clips > 0 && !out.contains(&(0, clips - 1)) {
        out.push((0, clips - 1));
    }
    out
}

fn retrieval(
    opts: &EvaluateOptions,
    geo: &Geometry,
    model: &LocVtp,
    text: &TextEncoder,
    features: &BTreeMap<String, VideoFeatures>,
) -> Result<serde_json::Value> {
    let Some(dir) = &opts.narration else { return Ok(serde_json::Value::Null) };
    let align = AlignConfig {
        min_seconds: opts.min_seconds,
        max_seconds: opts.max_seconds,
        max_words: opts.max_words,
        ..AlignConfig::default()
    };
    let mut sentences = Vec::new();
    let mut videos = Vec::new();
    for (id, v) in features {
        let mut found = None;
        for ext in ["vtt", "srt"] {
            let p = dir.join(format!("{id}.{ext}"));
            if p.exists() {
                found = Some(p);
                break;
            }
        }
        let Some(path) = found else { continue };
        let (cues, _) = locvtp_narration::read_subtitle_file(&path).with_context(|| path.display().to_string())?;
        let duration = v.frames as f64 / v.fps.max(1e-9);
        let clips = align_video(&VideoCues { video_id: id.clone(), cues }, duration, &align).kept;
        let rows = video_tensor(v);
        for c in clips {
            // Clips overlapping the caption's span; at least the nearest one.
            let overlapping: Vec<usize> = (0..v.clips)
                .filter(|&i| {
                    let (s, e) = geo.span(v, i, i);
                    e > c.start_s && s < c.end_s
                })
                .collect();
            let (i, j) = match (overlapping.first(), overlapping.last()) {
                (Some(&i), Some(&j)) => (i, j),
                _ => {
                    let k = ((c.start_s * v.fps / geo.stride) as usize).min(v.clips - 1);
                    (k, k)
                }
            };
            videos.push(window_embedding(&rows, i, j));
            sentences.push(c.text);
        }
    }
    let n = sentences.len();
    if n == 0 {
        return Ok(json!({"queries": 0}));
    }
    let s = embed_sentences(model, text, &sentences)?;
    let v = Tensor::stack(&videos, 0);
    let sims = s.matmul(&v.tr());
    let mut ranks = Vec::with_capacity(n);
    for q in 0..n as i64 {
        let row = sims.get(q);
        let own = row.double_value(&[q]);
        // Rank 1 is best; ties count against the query.
        let better = row.ge(own).sum(Kind::Int64).int64_value(&[]);
        ranks.push(better as usize);
    }
    ranks.sort_unstable();
    let recall = |k: usize| ranks.iter().filter(|&&r| r <= k).count() as f64 / n as f64;
    Ok(json!({
        "queries": n,
        "R@1": recall(1), "R@5": recall(5), "R@10": recall(10),
        "median_rank": ranks[n / 2],
        "chance": {"R@1": 1.0 / n as f64, "R@5": (5.0 / n as f64).min(1.0), "R@10": (10.0 / n as f64).min(1.0), "median_rank": n.div_ceil(2)},
    }))
}

fn grounding(
    opts: &EvaluateOptions,
    geo: &Geometry,
    model: &LocVtp,
    text: &TextEncoder,
    features: &BTreeMap<String, VideoFeatures>,
) -> Result<serde_json::Value> {
    let Some(path) = &opts.grounding else { return Ok(serde_json::Value::Null) };
    let parsed = locvtp_narration::grounding::read_file(path, opts.grounding_format)
        .with_context(|| path.display().to_string())?;
    let queries: Vec<_> = parsed.items.into_iter().filter(|q| features.contains_key(&q.video_id)).collect();
    if queries.is_empty() {
        return Ok(json!({"queries": 0}));
    }
    let s = embed_sentences(model, text, &queries.iter().map(|q| q.sentence.clone()).collect::<Vec<_>>())?;
    let thresholds = [0.3, 0.5, 0.7];
    let mut predictions = Vec::with_capacity(queries.len());
    let mut ranked = Vec::with_capacity(queries.len());
    let mut candidates: Vec<Vec<Moment>> = Vec::with_capacity(queries.len());
    for (qi, q) in queries.iter().enumerate() {
        let v = &features[&q.video_id];
        let rows = video_tensor(v);
        let windows = candidate_windows(v.clips, opts.max_window_clips);
        let scores = window_scores(&s.get(qi as i64), &rows, &windows);
        // Best first; ties keep the earlier candidate.
        let mut order: Vec<usize> = (0..windows.len()).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        let best = order[0];
        let spans: Vec<Moment> = windows.iter().map(|&(i, j)| geo.span(v, i, j)).collect();
        let gt = (q.start_s, q.end_s);
        let top = spans[best];
        let sorted: Vec<Moment> = order.iter().map(|&k| spans[k]).collect();
        let top5 = nms(&sorted, opts.nms_threshold, 5);
        predictions.push(json!({"video": q.video_id, "sentence": q.sentence, "truth": [gt.0, gt.1], "predicted": [top.0, top.1], "top5": top5, "score": scores[best], "iou": iou(top, gt)}));
        ranked.push(Ranked { truth: gt, duration: v.frames as f64 / v.fps.max(1e-9), moments: top5 });
        candidates.push(spans);
    }
    let n = queries.len();
    let truths: Vec<(Moment, f64)> = ranked.iter().map(|r| (r.truth, r.duration)).collect();
    let recalls = [1, 5];
    let whole = whole_video(&recalls, &thresholds);
    let random =
        RandomWindow { queries: candidates.iter().zip(&ranked).map(|(c, r)| (c.as_slice(), r.truth)).collect() };
    let methods: [(&str, &dyn Method); 3] = [
        ("model", &Predictions(&ranked)),
        ("random", &random),
        ("whole_video", &FixedMethod { queries: &truths, windows: &whole }),
    ];
    let mut out = json!({
        "queries": n,
        "score": "cosine(sentence, mean inside the window) - cosine(sentence, mean of the clips left out; the whole video for the whole video), one scale for every candidate",
        "candidates": format!("every window of up to {} clips, and the whole video", opts.max_window_clips),
        "top5": format!("the five best candidates after non-maximum suppression at IoU {}", opts.nms_threshold),
        "intervals": INTERVAL_METHOD,
    });
    for (name, method) in methods {
        let (mut values, mut intervals) = (serde_json::Map::new(), serde_json::Map::new());
        for (key, e) in score(method, n, &recalls, &thresholds, 0) {
            values.insert(key.clone(), json!(e.value));
            intervals.insert(key, json!([e.low, e.high]));
        }
        values.insert("interval".into(), intervals.into());
        if name == "model" {
            out.as_object_mut().expect("an object").extend(values);
        } else {
            out[name] = values.into();
        }
    }
    out["predictions"] = json!(predictions);
    Ok(out)
}

/// Runs both evaluations and writes the results JSON.
pub fn evaluate(
    opts: &EvaluateOptions,
    enc: &EvalModel,
    features: &BTreeMap<String, VideoFeatures>,
) -> Result<serde_json::Value> {
    let mut model = LocVtp::new(&enc.model, Device::Cpu, enc.seed);
    if let Some(ck) = &enc.checkpoint {
        locvtp_model::checkpoint::load_weights(&mut model.vs, ck)?;
    }
    let text = TextEncoder::load(&enc.text_encoder, Device::Cpu)?;
    let geo = Geometry { clip_frames: enc.clip_frames as f64, stride: enc.stride as f64 };
    let result = json!({
        "checkpoint": enc.checkpoint.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| format!("random-init:{}", enc.seed)),
        "videos": features.len(),
        "retrieval": retrieval(opts, &geo, &model, &text, features)?,
        "grounding": grounding(opts, &geo, &model, &text, features)?,
    });
    let mut bytes = serde_json::to_vec_pretty(&result)?;
    bytes.push(b'\n');
    locvtp_model::checkpoint::atomic_write(&opts.output, &bytes)?;
    Ok(result)
}

/// The results as a table for the terminal.
pub fn print_table(r: &serde_json::Value) {
    let f = |v: &serde_json::Value| v.as_f64().map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into());
    eprintln!("evaluation of {} on {} videos", r["checkpoint"].as_str().unwrap_or("?"), r["videos"]);
    let ret = &r["retrieval"];
    if ret.is_object() {
        eprintln!("  text->video retrieval ({} queries)     model   chance", ret["queries"]);
        for k in ["R@1", "R@5", "R@10", "median_rank"] {
            eprintln!("    {k:<36} {:>6}   {:>6}", f(&ret[k]), f(&ret["chance"][k]));
        }
    }
    let g = &r["grounding"];
    if g.is_object() {
        eprintln!("  temporal grounding ({} queries)        model   random window   whole video", g["queries"]);
        for k in ["R@1_IoU0.3", "R@1_IoU0.5", "R@1_IoU0.7", "R@5_IoU0.3", "R@5_IoU0.5", "R@5_IoU0.7", "mIoU"] {
            eprintln!("    {k:<36} {:>6}   {:>13}   {:>11}", f(&g[k]), f(&g["random"][k]), f(&g["whole_video"][k]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_of_overlapping_nested_and_disjoint_windows() {
        assert!((iou((0.0, 2.0), (1.0, 3.0)) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(iou((1.0, 2.0), (0.0, 4.0)), 0.25);
        assert_eq!(iou((0.0, 1.0), (2.0, 3.0)), 0.0);
        assert_eq!(iou((1.0, 1.0), (1.0, 1.0)), 0.0);
    }

    #[test]
    fn clip_spans_follow_stride_and_stop_at_the_video_end() {
        let geo = Geometry { clip_frames: 16.0, stride: 8.0 };
        let v = VideoFeatures { values: vec![], clips: 5, dim: 1, fps: 8.0, frames: 40 };
        assert_eq!(geo.span(&v, 0, 0), (0.0, 2.0));
        assert_eq!(geo.span(&v, 1, 2), (1.0, 4.0));
        assert_eq!(geo.span(&v, 4, 4), (4.0, 5.0));
    }

    #[test]
    fn every_candidate_is_scored_on_one_scale_the_whole_video_included() {
        // Three clips; the sentence matches the middle one.
        let rows = Tensor::from_slice(&[1.0f64, 0.0, 0.0, 1.0, 1.0, 0.0]).reshape([3, 2]);
        let sentence = Tensor::from_slice(&[0.0f64, 1.0]);
        let windows = candidate_windows(3, 1);
        assert_eq!(windows, [(0, 0), (1, 1), (2, 2), (0, 2)], "the whole video is always a candidate");
        let scores = window_scores(&sentence, &rows, &windows);
        // Inside minus the rest, from the means as window_embedding takes them.
        let by_hand = |i: usize, j: usize| {
            let inside = sentence.dot(&window_embedding(&rows, i, j)).double_value(&[]);
            let rest: Vec<usize> = (0..3).filter(|k| *k < i || *k > j).collect();
            let rest = if rest.is_empty() { vec![0, 1, 2] } else { rest };
            let m = rest.iter().map(|&k| rows.get(k as i64)).fold(rows.get(0).zeros_like(), |a, b| a + b);
            inside - sentence.dot(&(&m / m.norm())).double_value(&[])
        };
        for (k, &(i, j)) in windows.iter().enumerate() {
            assert!((scores[k] - by_hand(i, j)).abs() < 1e-12, "window {i}..={j}: {} vs {}", scores[k], by_hand(i, j));
        }
        assert_eq!(scores[3], 0.0, "the whole video leaves nothing out");
        assert!(scores[1] > scores[3] && scores[3] > scores[0], "{scores:?}");
        // A sentence matching every clip alike: no window beats the whole video.
        let flat = Tensor::from_slice(&[1.0f64, 0.0, 1.0, 0.0, 1.0, 0.0]).reshape([3, 2]);
        let scores = window_scores(&Tensor::from_slice(&[1.0f64, 0.0]), &flat, &candidate_windows(3, 3));
        assert!(scores.iter().all(|s| s.abs() < 1e-12), "{scores:?}");
    }

    #[test]
    fn window_embedding_is_the_normalised_mean() {
        let rows = Tensor::from_slice(&[3.0f64, 0.0, 0.0, 4.0]).reshape([2, 2]);
        let e = window_embedding(&rows, 0, 1);
        assert!((e.double_value(&[0]) - 0.6).abs() < 1e-12 && (e.double_value(&[1]) - 0.8).abs() < 1e-12);
    }
}
