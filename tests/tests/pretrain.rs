//! The pre-training graph on a handful of tiny narrated videos: it trains,
//! checkpoints, resumes to the same losses, and its checkpoint feeds the
//! extract graph unchanged.

use locvtp_media::synth::{narration_webvtt, write_video, Background, Colour, Motion, Scene, Shape, SynthSpec};
use locvtp_tests::{extract_graph, python_script, repo, run_flow};
use std::path::Path;

fn make_dataset(root: &Path) {
    let videos = root.join("videos");
    let narration = root.join("narration");
    std::fs::create_dir_all(&videos).unwrap();
    std::fs::create_dir_all(&narration).unwrap();
    let looks = [
        (Shape::Circle, Colour::Red, Motion::Left, Shape::Square, Colour::Blue, Motion::Up),
        (Shape::Triangle, Colour::Green, Motion::Right, Shape::Cross, Colour::Yellow, Motion::Down),
        (Shape::Square, Colour::White, Motion::Grow, Shape::Circle, Colour::Purple, Motion::Still),
        (Shape::Diamond, Colour::Blue, Motion::Shrink, Shape::Triangle, Colour::Red, Motion::Right),
    ];
    for (i, (s1, c1, m1, s2, c2, m2)) in looks.into_iter().enumerate() {
        let scenes = vec![
            Scene { start_s: 0.0, end_s: 1.2, shape: s1, colour: c1, motion: m1, background: Background::Black },
            Scene { start_s: 1.2, end_s: 2.4, shape: s2, colour: c2, motion: m2, background: Background::Grey },
        ];
        let spec = SynthSpec::new(64, 48, (25, 1), 2.4, scenes.clone());
        write_video(&spec, &videos.join(format!("v{i}.mp4"))).unwrap();
        std::fs::write(narration.join(format!("v{i}.vtt")), narration_webvtt(&scenes)).unwrap();
    }
}

fn pretrain_graph(data: &Path, out: &Path, epochs: usize) -> String {
    format!(
        r#"[run]
output_dir = "{out}"
seed = 3

[stages.videos]
type = "video_files"
dir = "{data}/videos"

[stages.narration]
type = "narration"
inputs = ["videos"]
dir = "{data}/narration"

[stages.meta]
type = "probe"
inputs = ["videos"]

[stages.captions]
type = "align"
inputs = ["narration", "meta"]
min_seconds = 0.5
max_seconds = 1.5

[stages.samples]
type = "segment_sampler"
inputs = ["captions"]
num_segments = 3
frames_per_segment = 16

[stages.train]
type = "train"
inputs = ["samples"]
model = "{model}"
device = "cpu"
epochs = {epochs}
batch_size = 4
milestones = [1]

[stages.checkpoints]
type = "checkpoints"
inputs = ["train"]

[stages.metrics]
type = "metrics"
inputs = ["train"]
"#,
        out = out.display(),
        data = data.display(),
        model = repo().join("configs/c3d-tiny.toml").display(),
    )
}

fn run_pretrain(dir: &Path, name: &str, out: &Path, epochs: usize, extra: &[&str]) -> Vec<serde_json::Value> {
    let graph = dir.join(format!("{name}.toml"));
    std::fs::write(&graph, pretrain_graph(&dir.join("data"), out, epochs)).unwrap();
    let mut args = vec!["run", graph.to_str().unwrap(), "-q"];
    args.extend_from_slice(extra);
    let o = run_flow(dir, &args);
    assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn pretraining_trains_checkpoints_resumes_and_feeds_extraction() {
    let dir = tempfile::tempdir().unwrap();
    make_dataset(&dir.path().join("data"));

    let full_out = dir.path().join("full");
    let full = run_pretrain(dir.path(), "full", &full_out, 2, &[]);
    assert!(!full.is_empty());
    let steps_per_epoch = full.len() / 2;
    assert!(steps_per_epoch >= 1 && full.len() == 2 * steps_per_epoch, "{} steps", full.len());
    for m in &full {
        for term in ["coarse", "splice", "fg_vid", "fg_word", "fg_vid_ctx", "fg_word_ctx", "total"] {
            assert!(m[term].as_f64().unwrap().is_finite(), "{term} in {m}");
        }
    }
    // MultiStepLR with milestone 1: the second epoch runs at a tenth.
    assert_eq!(full[0]["lr"].as_f64().unwrap(), 0.001);
    assert!((full.last().unwrap()["lr"].as_f64().unwrap() - 0.0001).abs() < 1e-12);
    let ckpts = full_out.join("checkpoints");
    assert!(ckpts.join("epoch-001.safetensors").exists() && ckpts.join("epoch-002.safetensors").exists());
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(full_out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["training"]["steps"], full.len());

    // Stop after one epoch, then run the two-epoch command: it resumes from
    // the checkpoint and reproduces the uninterrupted run's losses.
    let split_out = dir.path().join("split");
    let first = run_pretrain(dir.path(), "first", &split_out, 1, &[]);
    assert_eq!(first.len(), steps_per_epoch);
    // Resuming with a setting that changes the steps, or with other data,
    // stops before any step with exit code 2 and says what changed.
    let graph = dir.path().join("changed.toml");
    std::fs::write(&graph, pretrain_graph(&dir.path().join("data"), &split_out, 2)).unwrap();
    let o = run_flow(dir.path(), &["run", graph.to_str().unwrap(), "-q", "--set", "stages.train.lr=0.002"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("stages.train.lr: 0.001 -> 0.002") && stderr.contains("accept_changed_settings"),
        "{stderr}"
    );
    let vtt = dir.path().join("data/narration/v1.vtt");
    let narration = std::fs::read_to_string(&vtt).unwrap();
    let edited = narration.replacen("green", "olive", 1);
    assert_ne!(edited, narration, "the edit changes a caption");
    std::fs::write(&vtt, edited).unwrap();
    let o = run_flow(dir.path(), &["run", graph.to_str().unwrap(), "-q"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("training data differ"), "{stderr}");
    std::fs::write(&vtt, narration).unwrap();
    assert_eq!(std::fs::read_to_string(split_out.join("metrics.jsonl")).unwrap().lines().count(), first.len());

    let resumed = run_pretrain(dir.path(), "resumed", &split_out, 2, &[]);
    assert_eq!(resumed.len(), full.len(), "metrics continue in the same file");
    for (a, b) in full.iter().zip(&resumed) {
        assert_eq!(a["step"], b["step"]);
        let (x, y) = (a["total"].as_f64().unwrap(), b["total"].as_f64().unwrap());
        assert!((x - y).abs() <= 1e-5 * x.abs(), "step {}: {x} vs {y}", a["step"]);
    }
    // TensorBoard, reading the event files of both runs, sees every step
    // once with the losses and learning rates of metrics.jsonl.
    let tensorboard = split_out.join("tensorboard");
    assert_eq!(std::fs::read_dir(&tensorboard).unwrap().count(), 2, "one event file per run");
    let read = python_script(
        r#"
import json, sys
from tensorboard.backend.event_processing import event_accumulator as ea
acc = ea.EventAccumulator(sys.argv[1], size_guidance={ea.SCALARS: 0})
acc.Reload()
print(json.dumps({t: [[e.step, e.value] for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}))
"#,
        &[&tensorboard],
    );
    let scalars: serde_json::Value = serde_json::from_str(read.trim()).unwrap();
    for (tag, key) in [("loss/total", "total"), ("loss/splice", "splice"), ("train/lr", "lr")] {
        let points = scalars[tag].as_array().unwrap_or_else(|| panic!("{tag} in {scalars}"));
        assert_eq!(points.len(), resumed.len(), "{tag}: {points:?}");
        for (point, line) in points.iter().zip(&resumed) {
            assert_eq!(point[0], line["step"], "{tag}");
            let want = line[key].as_f64().unwrap() as f32;
            assert_eq!(point[1].as_f64().unwrap() as f32, want, "{tag} at step {}", line["step"]);
        }
    }

    // The same command once more: the checkpoint has every step, so the
    // run does nothing, says so, and succeeds.
    let graph = dir.path().join("resumed.toml");
    let o = run_flow(dir.path(), &["run", graph.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("training was already complete"), "{stderr}");
    assert_eq!(std::fs::read_to_string(split_out.join("metrics.jsonl")).unwrap().lines().count(), resumed.len());

    // The checkpoint feeds the extract graph as it is.
    let ex_out = dir.path().join("features");
    let extra = format!("checkpoint = \"{}\"\n", ckpts.join("last.safetensors").display());
    let graph = dir.path().join("extract.toml");
    std::fs::write(&graph, extract_graph(&dir.path().join("data/videos"), &ex_out, &extra)).unwrap();
    let o = run_flow(dir.path(), &["run", graph.to_str().unwrap(), "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let feats = locvtp_store::read_all(&ex_out.join("features.h5"), "c3d_features").unwrap();
    assert_eq!(feats.len(), 4);

    // And the evaluate graph scores it: retrieval over the narration's
    // caption clips, grounding on one annotation per scene.
    let grounding = dir.path().join("grounding.txt");
    let lines: String = (0..4)
        .flat_map(|i| [format!("v{i} 0.0 1.2##first scene\n"), format!("v{i} 1.2 2.4##second scene\n")])
        .collect();
    std::fs::write(&grounding, lines).unwrap();
    let eval_out = dir.path().join("eval");
    let graph = dir.path().join("evaluate.toml");
    let text = extract_graph(&dir.path().join("data/videos"), &eval_out, &extra).replace(
        "[stages.write]\ntype = \"hdf5_writer\"",
        &format!(
            "[stages.evaluate]\ntype = \"evaluate\"\nnarration = \"{}\"\nmin_seconds = 0.5\nmax_seconds = 1.5\ngrounding = \"{}\"",
            dir.path().join("data/narration").display(),
            grounding.display()
        ),
    );
    std::fs::write(&graph, text).unwrap();
    let o = run_flow(dir.path(), &["run", graph.to_str().unwrap(), "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(eval_out.join("evaluation.json")).unwrap()).unwrap();
    let queries = r["retrieval"]["queries"].as_u64().unwrap();
    assert!(queries >= 8, "{r}");
    assert!((r["retrieval"]["chance"]["R@1"].as_f64().unwrap() - 1.0 / queries as f64).abs() < 1e-12);
    assert_eq!(r["grounding"]["queries"], 8);
    for (one, five) in [("R@1_IoU0.3", "R@5_IoU0.3"), ("R@1_IoU0.5", "R@5_IoU0.5"), ("R@1_IoU0.7", "R@5_IoU0.7")] {
        for method in [&r["grounding"], &r["grounding"]["random"], &r["grounding"]["whole_video"]] {
            let (a, b) = (method[one].as_f64().unwrap(), method[five].as_f64().unwrap());
            assert!(a <= b, "{one} {a} > {five} {b}: {r}");
        }
    }
    let top5 = r["grounding"]["predictions"][0]["top5"].as_array().unwrap();
    assert!((1..=5).contains(&top5.len()), "{r}");
    for k in ["R@1_IoU0.3", "R@1_IoU0.5", "R@1_IoU0.7", "R@5_IoU0.5", "mIoU"] {
        let (m, rnd) = (r["grounding"][k].as_f64().unwrap(), r["grounding"]["random"][k].as_f64().unwrap());
        assert!((0.0..=1.0).contains(&m) && (0.0..=1.0).contains(&rnd), "{k}: {m} {rnd}");
    }
}

/// Losses of two runs agree to 1e-5, step by step.
fn assert_same_steps(name: &str, one: &[serde_json::Value], other: &[serde_json::Value]) {
    assert_eq!(one.len(), other.len(), "{name}: steps");
    for (a, b) in one.iter().zip(other) {
        assert_eq!(a["step"], b["step"], "{name}");
        for term in ["coarse", "splice", "fg_vid", "fg_word", "fg_vid_ctx", "fg_word_ctx", "total"] {
            let (x, y) = (a[term].as_f64().unwrap(), b[term].as_f64().unwrap());
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1e-6), "{name}: step {} {term}: {x} vs {y}", a["step"]);
        }
    }
}

/// With the shards and micro-batches fixed, the steps do not depend on the
/// cluster: 1, 2, 3 and 4 worker threads, 2 and 3 processes, and 2
/// processes of 2 threads train alike.
#[test]
fn any_number_of_workers_takes_the_same_steps() {
    let dir = tempfile::tempdir().unwrap();
    make_dataset(&dir.path().join("data"));
    let fixed = ["--set", "stages.train.micro_batches=2", "--set", "stages.samples.shards=4"];
    let one = run_pretrain(dir.path(), "one", &dir.path().join("one"), 2, &fixed);
    assert!(one.len() >= 3, "{} steps", one.len());
    let summary = locvtp_tests::read_summary(&dir.path().join("one"));
    let passes = summary["decode_passes"].as_u64().unwrap();
    assert!((4..=4 * 2).contains(&passes), "at most one pass per video and epoch: {summary}");
    assert_eq!(summary["training"]["decode_passes_per_epoch"].as_f64().unwrap(), passes as f64 / 2.0, "{summary}");
    for threads in ["2", "3", "4"] {
        let mut args = fixed.to_vec();
        args.extend_from_slice(&["-w", threads]);
        let name = format!("w{threads}");
        let other = run_pretrain(dir.path(), &name, &dir.path().join(&name), 2, &args);
        assert_same_steps(&name, &one, &other);
    }

    // Loopback clusters of 2 and 3 processes of one worker, and 2 of two
    // (4 workers, the exchange both in-process and between processes): the
    // same steps, one set of outputs.
    for (processes, threads) in [(2, 1), (3, 1), (2, 2)] {
        let name = format!("n{processes}w{threads}");
        let graph = dir.path().join(format!("{name}.toml"));
        let out = dir.path().join(&name);
        let text = pretrain_graph(&dir.path().join("data"), &out, 2)
            .replace("epochs = 2\n", "epochs = 2\nmicro_batches = 2\n")
            .replace("type = \"segment_sampler\"\n", "type = \"segment_sampler\"\nshards = 4\n");
        std::fs::write(&graph, text).unwrap();
        for (p, o) in locvtp_tests::run_cluster(dir.path(), &graph, processes, threads).iter().enumerate() {
            assert!(o.status.success(), "{name}, process {p}: {}", String::from_utf8_lossy(&o.stderr));
        }
        let cluster: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_same_steps(&name, &one, &cluster);
        assert!(out.join("checkpoints/last.safetensors").exists(), "{name}");
    }
}

#[test]
fn bad_videos_and_narration_cost_only_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_dataset(&data);
    let (videos, narration) = (data.join("videos"), data.join("narration"));
    let cue = "WEBVTT\n\n00:00.000 --> 00:01.000\na red ball\n";
    // Videos that cannot be used, each with narration.
    std::fs::write(videos.join("zero.mp4"), b"").unwrap();
    std::fs::write(videos.join("noise.mp4"), (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect::<Vec<_>>()).unwrap();
    for id in ["zero", "noise"] {
        std::fs::write(narration.join(format!("{id}.vtt")), cue).unwrap();
    }
    // A good video without any narration.
    locvtp_tests::make_video(&videos.join("silent.mp4"), 64, 48, (25, 1), 1.0);
    // Narration quirks on good videos: Latin-1 text, an inverted cue, cues
    // past the end, an empty cue; and narration of a video that is missing.
    std::fs::remove_file(narration.join("v0.vtt")).unwrap();
    let mut latin1 =
        b"WEBVTT\n\n00:00.000 --> 00:01.100\na red circle caf\xe9 moves\n\n00:01.200 --> 00:02.400\n".to_vec();
    latin1.extend_from_slice(b"a blue square moves up\n\n00:05.000 --> 00:09.000\npast the end\n");
    std::fs::write(narration.join("v0.vtt"), latin1).unwrap();
    std::fs::remove_file(narration.join("v1.vtt")).unwrap();
    std::fs::write(
        narration.join("v1.srt"),
        "1\r\n00:00:02,000 --> 00:00:01,000\r\ninverted\r\n\r\n2\r\n00:00:00,000 --> 00:00:01,100\r\na green triangle moves right\r\n\r\n3\r\n00:00:01,200 --> 00:00:02,400\r\n[Music]\r\n\r\n4\r\n00:00:01,200 --> 00:00:02,400\r\na yellow cross moves down\r\n",
    )
    .unwrap();
    std::fs::write(narration.join("ghost.vtt"), cue).unwrap();

    let out = dir.path().join("out");
    let metrics = run_pretrain(dir.path(), "bad", &out, 1, &[]);
    assert!(!metrics.is_empty(), "the good items trained");
    let errors = locvtp_tests::read_errors(&out);
    let stage_of =
        |id: &str| errors.iter().find(|e| e["video_id"] == id).map(|e| e["stage"].as_str().unwrap().to_string());
    assert_eq!(stage_of("zero").as_deref(), Some("probe"), "{errors:?}");
    assert_eq!(stage_of("noise").as_deref(), Some("probe"), "{errors:?}");
    assert_eq!(stage_of("silent").as_deref(), Some("narration"), "{errors:?}");
    assert!(
        errors.iter().any(|e| e["video_id"] == "v0" && e["reason"].as_str().unwrap().contains("dropped")),
        "{errors:?}"
    );
    let summary = locvtp_tests::read_summary(&out);
    assert_eq!(summary["videos"]["total"], 7);
    assert_eq!(summary["videos"]["failed"], 3, "{summary}");
    assert!(out.join("checkpoints/last.safetensors").exists());

    // A HowTo100M caption file cut in the middle: the videos before the cut
    // train, the cut is reported.
    let json = "{\"v2\": {\"start\": [0.0, 1.2], \"end\": [1.1, 2.4], \"text\": [\"a white square grows\", \"a purple circle\"]},\n \"v3\": {\"start\": [0.0], \"end\": [1.2], \"text\": [\"a blue dia";
    let caption = dir.path().join("caption.json");
    std::fs::write(&caption, json).unwrap();
    let graph = dir.path().join("json.toml");
    let text = pretrain_graph(&data, &dir.path().join("json-out"), 1)
        .replace(&format!("dir = \"{}/narration\"", data.display()), &format!("file = \"{}\"", caption.display()));
    std::fs::write(&graph, text).unwrap();
    let o = run_flow(dir.path(), &["run", graph.to_str().unwrap(), "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let errors = locvtp_tests::read_errors(&dir.path().join("json-out"));
    assert!(
        errors.iter().any(|e| e["stage"] == "narration" && e["reason"].as_str().unwrap().contains("caption.json")),
        "{errors:?}"
    );
    let summary = locvtp_tests::read_summary(&dir.path().join("json-out"));
    assert!(summary["training"]["caption_clips"].as_u64().unwrap() >= 1, "{summary}");
}

#[test]
fn ctrl_c_stops_training_at_a_step_and_the_same_command_resumes() {
    let dir = tempfile::tempdir().unwrap();
    make_dataset(&dir.path().join("data"));
    let full = run_pretrain(dir.path(), "full", &dir.path().join("full"), 6, &[]);

    let out = dir.path().join("stopped");
    let graph = dir.path().join("stopped.toml");
    std::fs::write(&graph, pretrain_graph(&dir.path().join("data"), &out, 6)).unwrap();
    let log = dir.path().join("stopped.log");
    let mut child = locvtp_tests::spawn_flow(dir.path(), &["run", graph.to_str().unwrap(), "-q"], &log);
    // Wait for a couple of finished steps, then interrupt.
    let metrics = out.join("metrics.jsonl");
    let started = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map(|t| t.lines().count()).unwrap_or(0) < 2 {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be interrupted");
        assert!(started.elapsed().as_secs() < 300, "no progress");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let kill = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    if status.success() {
        // The signal arrived after the last step; nothing to resume.
        assert_eq!(std::fs::read_to_string(&metrics).unwrap().lines().count(), full.len());
        return;
    }
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("run the same command to resume"), "{stderr}");
    let done = std::fs::read_to_string(&metrics).unwrap().lines().count();
    assert!(done < full.len(), "stopped before the end");

    let resumed = run_pretrain(dir.path(), "stopped", &out, 6, &[]);
    assert_eq!(resumed.len(), full.len(), "every step once");
    for (a, b) in full.iter().zip(&resumed) {
        assert_eq!(a["step"], b["step"]);
        let (x, y) = (a["total"].as_f64().unwrap(), b["total"].as_f64().unwrap());
        assert!((x - y).abs() <= 1e-5 * x.abs(), "step {}: {x} vs {y}", a["step"]);
    }
}
