//! The grounding graph (`graphs/ground.toml`'s topology) on tiny clip
//! features: it trains a few steps with the loss falling, writes the
//! checkpoints, one metrics line per step and a results file holding every
//! metric next to the three baselines, lists unusable annotations with
//! file and line in `errors.jsonl`, and a second run resumes from the
//! checkpoints to the same test results.

use locvtp_store::{write_hdf5, RunAttrs, SpoolRecord};
use locvtp_tests::{read_errors, repo, run_flow};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::fmt::Write as _;
use std::path::Path;

const CLIPS: usize = 16;
const DIM: usize = 8;
/// Every video lasts 16 s: 400 frames at 25 fps, one clip per second.
const FPS: f64 = 25.0;
const FRAMES: u64 = 400;

/// Two events per video, each a run of clips where one feature channel is
/// high: channel 0 for "a red circle", channel 1 for "a blue square". The
/// sentence says which run is meant, so the task can be learned.
fn make_dataset(root: &Path) {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut records = Vec::new();
    let mut splits = [String::new(), String::new(), String::new()];
    for v in 0..24 {
        let id = format!("vid{v:02}");
        let a_len = rng.random_range(3..7);
        let a_start = rng.random_range(0..CLIPS - a_len - 6);
        let b_start = a_start + a_len + rng.random_range(0..3);
        let b_len = rng.random_range(3..(CLIPS - b_start).min(7) + 1);
        let mut features = vec![0f32; CLIPS * DIM];
        for c in 0..CLIPS {
            for d in 2..DIM {
                features[c * DIM + d] = rng.random_range(-0.1..0.1);
            }
            features[c * DIM] = f32::from(u8::from((a_start..a_start + a_len).contains(&c)));
            features[c * DIM + 1] = f32::from(u8::from((b_start..b_start + b_len).contains(&c)));
        }
        records.push(SpoolRecord {
            video_id: id.clone(),
            num_clips: CLIPS as u32,
            dim: DIM as u32,
            fps: FPS,
            frames: FRAMES,
            features,
        });
        // 16 train videos, 4 validation, 4 test: 32 / 8 / 8 queries.
        let split = &mut splits[if v < 16 {
            0
        } else if v < 20 {
            1
        } else {
            2
        }];
        writeln!(split, "{id} {} {}##a red circle.", a_start, a_start + a_len).unwrap();
        writeln!(split, "{id} {} {}##a blue square.", b_start, b_start + b_len).unwrap();
    }
    // Quirks of real files: a single `#`, a moment past the video's end
    // (clamped, kept), a video without features, an empty moment.
    splits[0]
        .push_str("vid00 1 2#one hash\nvid01 10 17.5##a red circle past the end.\nnofeat 0 1##x\nvid02 3 3##empty\n");
    let run = RunAttrs {
        clip_frames: 16,
        stride: 25,
        layer: "projection".into(),
        checkpoint: "synthetic".into(),
        ..RunAttrs::default()
    };
    write_hdf5(&root.join("features.h5"), "c3d_features", &run, &records).unwrap();
    for (name, text) in ["train", "val", "test"].iter().zip(&splits) {
        std::fs::write(root.join(format!("{name}.txt")), text).unwrap();
    }
}

fn graph(data: &Path, out: &Path, epochs: usize) -> String {
    // graphs/ground.toml with a small model and a short schedule.
    let shipped = std::fs::read_to_string(repo().join("graphs/ground.toml")).unwrap();
    assert!(shipped.contains("type = \"train_grounding\"") && shipped.contains("type = \"grounding_eval\""));
    format!(
        r#"[run]
output_dir = "{out}"
seed = 5

[stages.data]
type = "grounding_data"
features = "{data}/features.h5"
format = "charades_sta"
train = "{data}/train.txt"
val = "{data}/val.txt"
test = "{data}/test.txt"

[stages.train]
type = "train_grounding"
inputs = ["data"]
preset = "charades_sta"
hidden = 32
map_layers = 2
kernel = 3
device = "cpu"
epochs = {epochs}
batch_size = 8
lr = 0.003

[stages.checkpoints]
type = "checkpoints"
inputs = ["train"]

[stages.metrics]
type = "metrics"
inputs = ["train"]

[stages.eval]
type = "grounding_eval"
inputs = ["train"]
"#,
        out = out.display(),
        data = data.display(),
    )
}

fn run_ground(dir: &Path, out: &Path, epochs: usize) -> (Vec<serde_json::Value>, serde_json::Value) {
    let path = dir.join(format!("ground-{epochs}.toml"));
    std::fs::write(&path, graph(&dir.join("data"), out, epochs)).unwrap();
    let o = run_flow(dir, &["run", path.to_str().unwrap(), "-q"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    // The closing line speaks of grounding, not of pre-training's caption clips.
    let done = stderr.lines().find(|l| l.starts_with("done:")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(done.contains("grounding steps") && !done.contains("caption clips"), "{done}");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let results = serde_json::from_slice(&std::fs::read(out.join("grounding.json")).unwrap()).unwrap();
    (metrics, results)
}

#[test]
fn grounding_trains_reports_every_metric_next_to_the_baselines_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    make_dataset(&dir.path().join("data"));
    let out = dir.path().join("out");
    let epochs = 6;
    let (metrics, results) = run_ground(dir.path(), &out, epochs);
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["training"]["kind"], "grounding", "{summary}");
    assert_eq!(summary["training"]["steps"], 5 * epochs, "{summary}");

    // 33 training queries (32 + the clamped one) in batches of 8: 5 steps an epoch.
    assert_eq!(metrics.len(), 5 * epochs, "one line per step");
    let loss = |m: &serde_json::Value| m["total"].as_f64().unwrap();
    let first: f64 = metrics[..5].iter().map(loss).sum::<f64>() / 5.0;
    let last: f64 = metrics[metrics.len() - 5..].iter().map(loss).sum::<f64>() / 5.0;
    assert!(last < 0.6 * first, "the loss falls: first epoch {first}, last {last}");
    let epoch_ends: Vec<&serde_json::Value> = metrics.iter().filter(|m| m.get("val_R@1_IoU0.5").is_some()).collect();
    assert_eq!(epoch_ends.len(), epochs, "the validation metric at each epoch end");

    let ckpts = out.join("checkpoints");
    for e in 1..=epochs {
        assert!(ckpts.join(format!("epoch-{e:03}.safetensors")).exists(), "epoch {e}");
    }
    assert!(ckpts.join("last.safetensors").exists());

    // The results: every metric of the paper, for the model and each baseline.
    let test = &results["test"];
    assert_eq!(test["queries"], 8);
    assert_eq!(results["queries"]["train"], 33);
    assert_eq!(results["queries"]["val"], 8);
    for key in ["R@1_IoU0.3", "R@1_IoU0.5", "R@1_IoU0.7", "R@5_IoU0.3", "R@5_IoU0.5", "R@5_IoU0.7", "mIoU"] {
        for method in ["model", "random_window", "whole_video", "best_fixed_window"] {
            let e = &test["metrics"][key][method];
            let v = e["value"].as_f64().unwrap_or_else(|| panic!("{key} {method}: {e}"));
            let (lo, hi) = (e["low"].as_f64().unwrap(), e["high"].as_f64().unwrap());
            assert!((0.0..=1.0).contains(&v) && lo <= v && v <= hi, "{key} {method}: {e}");
        }
    }
    let curve = results["selection"]["curve"].as_array().unwrap();
    assert_eq!(curve.len(), epochs);
    let chosen = results["selection"]["epoch"].as_u64().unwrap() as usize;
    assert!((1..=epochs).contains(&chosen));
    let best = curve.iter().map(|p| p["R@1_IoU0.5"].as_f64().unwrap()).fold(f64::MIN, f64::max);
    assert_eq!(curve[chosen - 1]["R@1_IoU0.5"].as_f64().unwrap(), best, "the epoch is chosen on validation");
    assert_eq!(test["predictions"].as_array().unwrap().len(), 8);

    // Unusable annotations, each with its file and line.
    let errors = read_errors(&out);
    let line = |e: &serde_json::Value| e.to_string();
    let train = dir.path().join("data/train.txt").display().to_string();
    for (needle, what) in [
        (format!("{train}:33"), "single `#`"),
        (format!("{train}:34"), "clamped to 10-16 s"),
        (format!("{train}:36"), "empty moment"),
    ] {
        assert!(
            errors.iter().any(|e| line(e).contains(&needle) && line(e).contains(what)),
            "{needle} {what}: {errors:?}"
        );
    }
    assert!(errors.iter().any(|e| e["video_id"] == "nofeat"), "{errors:?}");

    // Run again: everything is in the checkpoints, so it trains nothing and
    // scores the test split with the same chosen weights.
    let (again, resumed) = run_ground(dir.path(), &out, epochs);
    assert_eq!(again.len(), metrics.len(), "no step trained twice");
    assert_eq!(resumed["selection"]["epoch"], results["selection"]["epoch"]);
    assert_eq!(resumed["selection"]["curve"], results["selection"]["curve"], "the curve comes with the checkpoint");
    assert_eq!(resumed["test"]["metrics"], results["test"]["metrics"]);
}

/// A results file as `grounding_eval` writes it, with `model` at R@1 IoU 0.5
/// and every other number at 0.2 with an interval of +-0.05.
fn results(model: f64) -> serde_json::Value {
    let e = |v: f64| serde_json::json!({ "value": v, "low": v - 0.05, "high": v + 0.05 });
    let mut metrics = serde_json::Map::new();
    for key in ["R@1_IoU0.5", "mIoU"] {
        let m = if key == "R@1_IoU0.5" { model } else { 0.2 };
        metrics.insert(
            key.into(),
            serde_json::json!({ "model": e(m), "random_window": e(0.2), "whole_video": e(0.2), "best_fixed_window": e(0.3) }),
        );
    }
    serde_json::json!({ "test": { "queries": 120, "metrics": metrics } })
}

#[test]
fn the_seed_report_gives_mean_and_sd_and_judges_against_the_intervals() {
    let dir = tempfile::tempdir().unwrap();
    for (seed, locvtp, random) in [(0, 0.5, 0.3), (1, 0.6, 0.35)] {
        for (features, value) in [("locvtp", locvtp), ("random", random)] {
            let d = dir.path().join(format!("seed{seed}/ground-{features}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("grounding.json"), results(value).to_string()).unwrap();
        }
    }
    let script = repo().join("scripts/demo_report.py");
    let out = locvtp_tests::python(&[&script, &dir.path(), &"0", &"1"]);
    assert!(out.contains("| LocVTP features | 0.550 ± 0.071 | 0.200 ± 0.000 |"), "{out}");
    assert!(out.contains("| random-init C3D features | 0.325 ± 0.035 |"), "{out}");
    let report = locvtp_tests::last_json(&out);
    assert_eq!(report["test_queries"], serde_json::json!([120]));
    assert_eq!(report["strongest_baseline"], "best fixed window (train)");
    let verdicts = &report["verdicts"];
    // 0.55 - 0.325 = 0.225 > 0.05; 0.55 - 0.3 = 0.25 > 0.05.
    assert_eq!(verdicts["random-init C3D features"]["beats"], true);
    assert_eq!(verdicts["best fixed window (train)"]["beats"], true);
    assert!((verdicts["best fixed window (train)"]["difference"].as_f64().unwrap() - 0.25).abs() < 1e-9);
}

#[test]
fn the_seed_report_measures_what_each_feature_set_keeps_of_the_scenes() {
    // Two seeds of results as above, plus each run's grounding features and
    // a demo manifest: 30 videos of 3 scenes (2 s each at 25 fps, clips of
    // 16 frames every 8). The "LocVTP" features are collapsed (every clip
    // on one line, whatever the scene); the "random" ones encode each
    // scene's colour and shape exactly.
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    for (seed, locvtp, random) in [(0, 0.5, 0.3), (1, 0.6, 0.35)] {
        for (features, value) in [("locvtp", locvtp), ("random", random)] {
            let d = runs.join(format!("seed{seed}/ground-{features}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("grounding.json"), results(value).to_string()).unwrap();
        }
    }
    let demo = dir.path().join("demo");
    std::fs::create_dir_all(&demo).unwrap();
    locvtp_tests::python_script(
        r#"
import json, sys, h5py, numpy as np
runs, demo = sys.argv[1], sys.argv[2]
shapes, colours, motions = ["circle", "square", "cross"], ["red", "green", "blue", "white"], ["left", "up"]
videos = []
for v in range(30):
    scenes = [dict(start_s=2.0 * k, end_s=2.0 * (k + 1), shape=shapes[(v + k) % 3], colour=colours[(v * 3 + k) % 4],
                   motion=motions[(v + 2 * k) % 2], background="black") for k in range(3)]
    videos.append(dict(id=f"g{v}", split="grounding_test", fps=[25, 1], scenes=scenes))
json.dump({"videos": videos}, open(f"{demo}/manifest.json", "w"))
rng = np.random.default_rng(0)
for seed in (0, 1):
    for features in ("locvtp", "random"):
        path = f"{runs}/seed{seed}/extract-{features}"
        import os; os.makedirs(path, exist_ok=True)
        with h5py.File(f"{path}/features.h5", "w") as f:
            f.attrs["stride"], f.attrs["clip_frames"] = 8, 16
            for v in videos:
                rows = []
                for i in range((150 - 16) // 8 + 1):
                    centre = (i * 8 + 8) / 25
                    s = next(s for s in v["scenes"] if s["start_s"] <= centre < s["end_s"])
                    if features == "locvtp":
                        rows.append(np.ones(16) * (1 + 0.01 * rng.standard_normal()))
                    else:
                        code = np.zeros(16)
                        code[colours.index(s["colour"])] = 1
                        code[4 + shapes.index(s["shape"])] = 1
                        code[8 + motions.index(s["motion"])] = 1
                        rows.append(code + 0.01 * rng.standard_normal(16))
                f.create_group(v["id"]).create_dataset("c3d_features", data=np.array(rows, dtype=np.float32))
"#,
        &[&runs, &demo],
    );
    let script = repo().join("scripts/demo_report.py");
    let out = locvtp_tests::python(&[&script, &"--demo", &demo, &runs, &"0", &"1"]);
    let report = locvtp_tests::last_json(&out);
    let diagnostics = &report["feature_diagnostics"];
    for seed in 0..2 {
        let collapsed = &diagnostics["LocVTP features"][seed];
        let coded = &diagnostics["random-init C3D features"][seed];
        assert_eq!(collapsed["scenes"], 90, "{out}");
        assert!(collapsed["effective_rank"].as_f64().unwrap() < 2.0, "{out}");
        assert!(coded["effective_rank"].as_f64().unwrap() > 4.0, "{out}");
        for key in ["shape", "colour", "motion"] {
            let chance = coded[format!("{key}_chance")].as_f64().unwrap();
            assert!(coded[key].as_f64().unwrap() > 0.95, "{key}: {out}");
            assert!(collapsed[key].as_f64().unwrap() < chance + 0.25, "{key}: {out}");
        }
    }
    assert!(out.contains("| features | effective rank | shape | colour | motion |"), "{out}");
}
