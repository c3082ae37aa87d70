//! The demo set: a fixed recipe of videos, their narration and grounding
//! annotations, written to disk with a manifest.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context as _};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::encode::{partial_path, write_video, VideoCodec};
use super::narration::{narration_webvtt, scene_sentence};
use super::render::SynthSpec;
use super::scene::{Background, Colour, Motion, Scene, Shape};
use super::GENERATOR_VERSION;

/// Which part of the demo set a video belongs to: pre-training and its
/// held-out evaluation, or one of the three splits of the downstream
/// grounding set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Heldout,
    GroundingTrain,
    GroundingVal,
    GroundingTest,
}

impl Split {
    pub const ALL: [Split; 5] =
        [Split::Train, Split::Heldout, Split::GroundingTrain, Split::GroundingVal, Split::GroundingTest];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Heldout => "heldout",
            Split::GroundingTrain => "grounding_train",
            Split::GroundingVal => "grounding_val",
            Split::GroundingTest => "grounding_test",
        }
    }

    /// The folder of its videos and narration under the demo directory:
    /// the grounding splits share one, so that one extraction run covers
    /// them.
    pub fn folder(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Heldout => "heldout",
            Split::GroundingTrain | Split::GroundingVal | Split::GroundingTest => "grounding",
        }
    }

    /// The grounding annotation file of a grounding split, relative to the
    /// demo directory.
    pub fn annotations(self) -> Option<&'static str> {
        match self {
            Split::Train | Split::Heldout => None,
            Split::GroundingTrain => Some("grounding/train.txt"),
            Split::GroundingVal => Some("grounding/val.txt"),
            Split::GroundingTest => Some("grounding/test.txt"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DemoVideo {
    pub id: String,
    pub split: Split,
    pub spec: SynthSpec,
}

/// Number of videos in the demo set, and how many of them are held out.
pub const DEMO_VIDEOS: usize = 32;
pub const DEMO_HELDOUT: usize = 8;

const DEMO_SIZES: [(u32, u32); 4] = [(320, 240), (256, 144), (176, 144), (240, 320)];
const DEMO_RATES: [(i32, i32); 3] = [(24, 1), (25, 1), (30, 1)];

/// Frame size and frame rate of one demo video.
type DemoFormat = ((u32, u32), (i32, i32));

/// The demo set for `seed`: 32 videos of 4-10 s with 2-4 scenes each, 8 of
/// them held out. Every split has every frame size and frame rate, and one
/// video at 30000/1001 fps.
pub fn demo_set(seed: u64) -> Vec<DemoVideo> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..DEMO_VIDEOS).collect();
    order.shuffle(&mut rng);
    let mut split = [Split::Train; DEMO_VIDEOS];
    for &i in &order[..DEMO_HELDOUT] {
        split[i] = Split::Heldout;
    }

    // Balanced, shuffled sizes and rates per split.
    let mut formats: [Option<DemoFormat>; DEMO_VIDEOS] = [None; DEMO_VIDEOS];
    for which in [Split::Train, Split::Heldout] {
        let slots: Vec<usize> = (0..DEMO_VIDEOS).filter(|&i| split[i] == which).collect();
        let mut sizes: Vec<(u32, u32)> = (0..slots.len()).map(|k| DEMO_SIZES[k % DEMO_SIZES.len()]).collect();
        let mut rates: Vec<(i32, i32)> = (0..slots.len()).map(|k| DEMO_RATES[k % DEMO_RATES.len()]).collect();
        sizes.shuffle(&mut rng);
        rates.shuffle(&mut rng);
        if let Some(r) = rates.iter_mut().find(|r| **r == (30, 1)) {
            *r = (30000, 1001);
        }
        for (k, &slot) in slots.iter().enumerate() {
            formats[slot] = Some((sizes[k], rates[k]));
        }
    }

    (0..DEMO_VIDEOS)
        .map(|i| {
            let ((width, height), fps) = formats[i].expect("every slot has a format");
            let seconds = f64::from(rng.random_range(8u32..=20)) * 0.5;
            let max_scenes = ((seconds / 1.5).floor() as usize).clamp(2, 4);
            let n = rng.random_range(2..=max_scenes);
            let scenes = random_scenes(&mut rng, seconds, n);
            DemoVideo {
                id: format!("demo{i:03}"),
                split: split[i],
                spec: SynthSpec::new(width, height, fps, seconds, scenes),
            }
        })
        .collect()
}

/// Videos of the downstream grounding set: train, validation and test.
/// The test split's size is set by the intervals: with
/// `GROUNDING_SCENES` queries a video, 40 test videos give 120 queries,
/// whose 95% Wilson interval is at most +-0.089 wide around any R@1, so a
/// difference of 0.1 lies outside it.
pub const GROUNDING_VIDEOS: [(Split, usize); 3] =
    [(Split::GroundingTrain, 80), (Split::GroundingVal, 16), (Split::GroundingTest, 40)];
/// Scenes, and so grounding queries, per grounding video.
pub const GROUNDING_SCENES: usize = 3;

/// The downstream grounding set for `seed`: videos of 4-7 s at 160x120 and
/// 25 fps with three scenes each, one query per scene. Drawn from its own
/// stream of the seed, so that adding it left the pre-training videos of
/// every seed as they were.
pub fn grounding_set(seed: u64) -> Vec<DemoVideo> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6772_6f75_6e64_696e);
    let mut out = Vec::new();
    for (split, count) in GROUNDING_VIDEOS {
        for _ in 0..count {
            let seconds = f64::from(rng.random_range(8u32..=14)) * 0.5;
            let scenes = random_scenes(&mut rng, seconds, GROUNDING_SCENES);
            out.push(DemoVideo {
                id: format!("ground{:03}", out.len()),
                split,
                spec: SynthSpec::new(160, 120, (25, 1), seconds, scenes),
            });
        }
    }
    out
}

/// `n` scenes tiling `[0, seconds)`, cut at tenths of a second, each
/// differing from the previous one in shape, colour and motion so that
/// every cut is visible.
fn random_scenes(rng: &mut ChaCha8Rng, seconds: f64, n: usize) -> Vec<Scene> {
    let weights: Vec<f64> = (0..n).map(|_| rng.random_range(2.0..3.0)).collect();
    let total: f64 = weights.iter().sum();
    let mut cuts = vec![0.0];
    let mut acc = 0.0;
    for w in &weights[..n - 1] {
        acc += w;
        cuts.push((seconds * acc / total * 10.0).round() / 10.0);
    }
    cuts.push(seconds);

    let mut scenes: Vec<Scene> = Vec::with_capacity(n);
    for k in 0..n {
        let prev = scenes.last().copied();
        let shape = pick(rng, &Shape::ALL, prev.map(|p| p.shape));
        let colour = pick(rng, &Colour::ALL, prev.map(|p| p.colour));
        let motion = pick(rng, &Motion::ALL, prev.map(|p| p.motion));
        let background = Background::ALL[rng.random_range(0..Background::ALL.len())];
        scenes.push(Scene { start_s: cuts[k], end_s: cuts[k + 1], shape, colour, motion, background });
    }
    scenes
}

fn pick<T: Copy + PartialEq>(rng: &mut ChaCha8Rng, all: &[T], not: Option<T>) -> T {
    let choices: Vec<T> = all.iter().copied().filter(|&x| Some(x) != not).collect();
    choices[rng.random_range(0..choices.len())]
}

/// What `write_demo_set` wrote, as stored in `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DemoManifest {
    pub generator_version: u32,
    pub seed: u64,
    /// The FFmpeg encoder used: `libx264` or `mpeg4`.
    pub encoder: String,
    pub videos: Vec<ManifestVideo>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestVideo {
    pub id: String,
    pub split: Split,
    /// Paths relative to the demo directory.
    pub video: String,
    pub narration: String,
    pub width: u32,
    pub height: u32,
    pub fps: (i32, i32),
    pub num_frames: u64,
    pub duration_s: f64,
    pub scenes: Vec<Scene>,
}

impl DemoManifest {
    /// The text of `manifest.json`: pretty-printed JSON with a trailing
    /// newline. It is stable for a given manifest, which is what the check
    /// for an already complete set compares.
    pub fn to_json(&self) -> serde_json::Result<String> {
        let mut json = serde_json::to_string_pretty(self)?;
        json.push('\n');
        Ok(json)
    }
}

/// Writes the demo set for `seed` under `dir`:
///
/// ```text
/// dir/manifest.json
/// dir/train/videos/<id>.mp4      dir/train/narration/<id>.vtt
/// dir/heldout/videos/<id>.mp4    dir/heldout/narration/<id>.vtt
/// dir/heldout/grounding.txt      (Charades-STA: `id start end##sentence`)
/// dir/grounding/videos/<id>.mp4  dir/grounding/narration/<id>.vtt
/// dir/grounding/{train,val,test}.txt   (the downstream grounding splits)
/// ```
///
/// Does nothing when `manifest.json` already matches what would be written
/// and every file it lists exists. The manifest is written last, so an
/// interrupted run is redone in full next time.
pub fn write_demo_set(dir: &Path, seed: u64) -> anyhow::Result<DemoManifest> {
    let mut videos = demo_set(seed);
    videos.extend(grounding_set(seed));
    write_set(dir, seed, &videos)
}

fn write_set(dir: &Path, seed: u64, videos: &[DemoVideo]) -> anyhow::Result<DemoManifest> {
    let encoder = VideoCodec::H264.encoder_name().context("FFmpeg has neither libx264 nor the mpeg4 encoder")?;
    let manifest = DemoManifest {
        generator_version: GENERATOR_VERSION,
        seed,
        encoder: encoder.to_string(),
        videos: videos
            .iter()
            .map(|v| ManifestVideo {
                id: v.id.clone(),
                split: v.split,
                video: format!("{}/videos/{}.mp4", v.split.folder(), v.id),
                narration: format!("{}/narration/{}.vtt", v.split.folder(), v.id),
                width: v.spec.width,
                height: v.spec.height,
                fps: v.spec.fps,
                num_frames: v.spec.num_frames,
                duration_s: v.spec.duration_s(),
                scenes: v.spec.scenes.clone(),
            })
            .collect(),
    };
    let json = manifest.to_json().context("serialising the demo manifest")?;
    let manifest_path = dir.join("manifest.json");
    if is_complete(dir, &manifest, &json) {
        return Ok(manifest);
    }

    for v in videos {
        for sub in ["videos", "narration"] {
            let d = dir.join(v.split.folder()).join(sub);
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
    }
    for (v, m) in videos.iter().zip(&manifest.videos) {
        let frames = write_video(&v.spec, &dir.join(&m.video))?;
        ensure!(frames == v.spec.num_frames, "{}: wrote {frames} frames, expected {}", v.id, v.spec.num_frames);
        write_atomic(&dir.join(&m.narration), &narration_webvtt(&v.spec.scenes))?;
    }
    for (path, text) in annotation_files(videos) {
        write_atomic(&dir.join(path), &text)?;
    }
    write_atomic(&manifest_path, &json)?;
    Ok(manifest)
}

/// Where the grounding annotations of a split go: the held-out videos'
/// zero-shot file, and one file per downstream grounding split.
fn annotation_path(split: Split) -> Option<&'static str> {
    match split {
        Split::Train => None,
        Split::Heldout => Some("heldout/grounding.txt"),
        other => other.annotations(),
    }
}

/// The Charades-STA files of `videos`, one line per scene, in the order of
/// [`Split::ALL`]; a split without videos has no file.
fn annotation_files(videos: &[DemoVideo]) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for split in Split::ALL {
        let Some(path) = annotation_path(split) else { continue };
        let mut text = String::new();
        let mut any = false;
        for v in videos.iter().filter(|v| v.split == split) {
            any = true;
            let duration = v.spec.duration_s();
            for s in &v.spec.scenes {
                let end = s.end_s.min(duration);
                if end <= s.start_s {
                    continue;
                }
                let _ = writeln!(text, "{} {:.2} {:.2}##{}", v.id, s.start_s, end, scene_sentence(s));
            }
        }
        if any {
            out.push((path, text));
        }
    }
    out
}

fn is_complete(dir: &Path, manifest: &DemoManifest, json: &str) -> bool {
    let same = fs::read_to_string(dir.join("manifest.json")).is_ok_and(|old| old == json);
    let non_empty = |p: PathBuf| fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() > 0);
    let splits: std::collections::HashSet<Split> = manifest.videos.iter().map(|v| v.split).collect();
    same && manifest.videos.iter().all(|v| non_empty(dir.join(&v.video)) && dir.join(&v.narration).is_file())
        && splits.iter().filter_map(|s| annotation_path(*s)).all(|p| dir.join(p).is_file())
}

fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let partial = partial_path(path);
    fs::write(&partial, text).with_context(|| format!("writing {}", partial.display()))?;
    fs::rename(&partial, path).with_context(|| format!("renaming to {}", path.display()))
}

/// Writes a narrated training corpus of `videos` videos under `dir`
/// (`videos/<id>.mp4`, `narration/<id>.vtt`), each of `scenes` scenes of
/// about 1.5 s at 64x48 and 10 fps with one narration cue per scene: as
/// many caption clips per video whatever the corpus size, for measuring how
/// a run scales with the corpus. Videos already written are kept.
pub fn write_corpus(dir: &Path, videos: usize, scenes: usize, seed: u64) -> anyhow::Result<usize> {
    let (video_dir, narration_dir) = (dir.join("videos"), dir.join("narration"));
    for d in [&video_dir, &narration_dir] {
        fs::create_dir_all(d).with_context(|| format!("{}: cannot create", d.display()))?;
    }
    let scenes = scenes.max(1);
    for i in 0..videos {
        let id = format!("c{i:06}");
        let (video, narration) = (video_dir.join(format!("{id}.mp4")), narration_dir.join(format!("{id}.vtt")));
        if video.exists() && narration.exists() {
            continue;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let seconds = 1.5 * scenes as f64;
        let spec = SynthSpec::new(64, 48, (10, 1), seconds, random_scenes(&mut rng, seconds, scenes));
        write_video(&spec, &video)?;
        write_atomic(&narration, &narration_webvtt(&spec.scenes))?;
    }
    Ok(videos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::test_support::tiny_spec;

    #[test]
    fn demo_set_is_deterministic_and_balanced() {
        let a = demo_set(7);
        assert_eq!(a, demo_set(7));
        assert_ne!(a, demo_set(8));
        assert_eq!(a.len(), DEMO_VIDEOS);
        let held: Vec<&DemoVideo> = a.iter().filter(|v| v.split == Split::Heldout).collect();
        assert_eq!(held.len(), DEMO_HELDOUT);
        for which in [Split::Train, Split::Heldout] {
            let vs: Vec<&DemoVideo> = a.iter().filter(|v| v.split == which).collect();
            for size in DEMO_SIZES {
                assert!(vs.iter().any(|v| (v.spec.width, v.spec.height) == size));
            }
            for fps in [(24, 1), (25, 1), (30, 1), (30000, 1001)] {
                assert!(vs.iter().any(|v| v.spec.fps == fps), "{which:?} {fps:?}");
            }
        }
        let mut ids: Vec<&str> = a.iter().map(|v| v.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), DEMO_VIDEOS);
        for v in &a {
            v.spec.validate().unwrap();
            let d = v.spec.duration_s();
            assert!((3.9..=10.1).contains(&d), "{} lasts {d}", v.id);
            let n = v.spec.scenes.len();
            assert!((2..=4).contains(&n));
            assert_eq!(v.spec.scenes[0].start_s, 0.0);
            for pair in v.spec.scenes.windows(2) {
                assert_eq!(pair[0].end_s, pair[1].start_s);
                assert!(pair[0].end_s - pair[0].start_s >= 0.8);
                assert_ne!(pair[0].shape, pair[1].shape);
                assert_ne!(pair[0].colour, pair[1].colour);
                assert_ne!(pair[0].motion, pair[1].motion);
            }
            // Every frame falls in a scene.
            let last = v.spec.frame_time_s(v.spec.num_frames - 1);
            assert!(v.spec.scene_at(last).is_some(), "{}", v.id);
        }
    }

    #[test]
    fn the_grounding_set_has_three_splits_and_enough_test_queries() {
        let set = grounding_set(0);
        assert_eq!(set, grounding_set(0));
        assert_ne!(set, grounding_set(1));
        assert_eq!(demo_set(0), demo_set(0), "the pre-training videos do not depend on it");
        let files = annotation_files(&set);
        let paths: Vec<&str> = files.iter().map(|(p, _)| *p).collect();
        assert_eq!(paths, ["grounding/train.txt", "grounding/val.txt", "grounding/test.txt"]);
        let queries: Vec<usize> = files.iter().map(|(_, t)| t.lines().count()).collect();
        assert_eq!(queries, [240, 48, 120]);
        // R@1 near 0.5 on the test split: the 95% Wilson interval is
        // narrower than +-0.1.
        let n = queries[2] as f64;
        assert!(1.96 * (0.25 / n).sqrt() < 0.1);
        // No video in two splits; every line names a video of its own split.
        let mut ids = std::collections::HashSet::new();
        for (path, text) in &files {
            let split = Split::ALL.into_iter().find(|s| s.annotations() == Some(*path)).unwrap();
            for line in text.lines() {
                let id = line.split(' ').next().unwrap();
                assert!(set.iter().any(|v| v.id == id && v.split == split), "{path}: {line}");
            }
            let own: std::collections::HashSet<&str> = text.lines().map(|l| l.split(' ').next().unwrap()).collect();
            for id in own {
                assert!(ids.insert(id.to_string()), "{id} in two splits");
            }
        }
        for v in &set {
            v.spec.validate().unwrap();
            assert_eq!(v.spec.scenes.len(), GROUNDING_SCENES);
            assert!((3.9..=7.1).contains(&v.spec.duration_s()), "{}", v.id);
        }
    }

    #[test]
    fn demo_layout_is_written_once_and_reproducibly() {
        let tiny = |id: &str, split: Split, fps: (i32, i32)| DemoVideo {
            id: id.to_string(),
            split,
            spec: tiny_spec(fps, 0.6),
        };
        let videos = vec![
            tiny("t0", Split::Train, (25, 1)),
            tiny("h0", Split::Heldout, (30000, 1001)),
            tiny("g0", Split::GroundingTrain, (25, 1)),
            tiny("g1", Split::GroundingTest, (25, 1)),
        ];
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let m = write_set(root, 11, &videos).unwrap();
        assert_eq!(m.videos.len(), 4);
        for rel in [
            "train/videos/t0.mp4",
            "train/narration/t0.vtt",
            "heldout/videos/h0.mp4",
            "heldout/narration/h0.vtt",
            "heldout/grounding.txt",
            "grounding/videos/g0.mp4",
            "grounding/videos/g1.mp4",
            "grounding/train.txt",
            "grounding/test.txt",
            "manifest.json",
        ] {
            assert!(root.join(rel).is_file(), "{rel}");
        }
        assert!(!root.join("grounding/val.txt").exists(), "no validation video, no file");
        assert!(fs::read_to_string(root.join("grounding/test.txt")).unwrap().starts_with("g1 0.00 0.30##"));
        let grounding = fs::read_to_string(root.join("heldout/grounding.txt")).unwrap();
        assert_eq!(
            grounding,
            "h0 0.00 0.30##a red circle moves to the right.\n\
             h0 0.30 0.60##a blue square moves down.\n"
        );
        let json = fs::read_to_string(root.join("manifest.json")).unwrap();
        assert_eq!(json, m.to_json().unwrap());
        assert!(json.ends_with("}\n"));
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["generator_version"], serde_json::json!(GENERATOR_VERSION));
        assert_eq!(value["seed"], serde_json::json!(11));
        let h0 = &value["videos"][1];
        assert_eq!(h0["id"], "h0");
        assert_eq!(h0["split"], "heldout");
        assert_eq!(h0["video"], "heldout/videos/h0.mp4");
        assert_eq!(h0["narration"], "heldout/narration/h0.vtt");
        assert_eq!((h0["width"].clone(), h0["height"].clone()), (serde_json::json!(64), serde_json::json!(48)));
        assert_eq!(h0["fps"], serde_json::json!([30000, 1001]));
        assert_eq!(h0["num_frames"], serde_json::json!(18));
        // Times stay JSON floats even when whole.
        assert_eq!(
            h0["scenes"][0],
            serde_json::json!({
                "start_s": 0.0,
                "end_s": 0.3,
                "shape": "circle",
                "colour": "red",
                "motion": "right",
                "background": "grey"
            })
        );

        // A second run with the same inputs touches nothing.
        let video = root.join("train/videos/t0.mp4");
        let before = fs::metadata(&video).unwrap().modified().unwrap();
        let bytes = fs::read(&video).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(write_set(root, 11, &videos).unwrap(), m);
        assert_eq!(fs::metadata(&video).unwrap().modified().unwrap(), before);

        // A missing file makes it regenerate, with the same bytes.
        fs::remove_file(&video).unwrap();
        write_set(root, 11, &videos).unwrap();
        assert_eq!(fs::read(&video).unwrap(), bytes);
    }
}
