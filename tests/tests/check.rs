//! `locvtp-flow check` rejects a broken pre-training graph before anything
//! runs: exit code 2, each problem with the file, line and key.

use locvtp_tests::{repo, run_flow};
use std::path::Path;

/// A valid pre-training graph over (empty) folders under `dir`.
fn pretrain_graph(dir: &Path) -> String {
    for sub in ["videos", "narration"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    format!(
        r#"[run]
output_dir = "{dir}/out"

[stages.videos]
type = "video_files"
dir = "{dir}/videos"

[stages.narration]
type = "narration"
inputs = ["videos"]
dir = "{dir}/narration"

[stages.meta]
type = "probe"
inputs = ["videos"]

[stages.captions]
type = "align"
inputs = ["narration", "meta"]

[stages.samples]
type = "segment_sampler"
inputs = ["captions"]
num_segments = 3

[stages.train]
type = "train"
inputs = ["samples"]
model = "{model}"
device = "cpu"
batch_size = 4

[stages.checkpoints]
type = "checkpoints"
inputs = ["train"]

[stages.metrics]
type = "metrics"
inputs = ["train"]
"#,
        dir = dir.display(),
        model = repo().join("configs/c3d-tiny.toml").display(),
    )
}

/// The 1-based line of the first line containing `needle`, after `after`.
fn line_of(text: &str, after: &str, needle: &str) -> usize {
    let start = text.lines().position(|l| l.contains(after)).expect("anchor in text");
    start + text.lines().skip(start).position(|l| l.contains(needle)).expect("needle in text") + 1
}

/// Runs `check` on `text` and returns its stderr, asserting exit code 2.
fn rejected(dir: &Path, name: &str, text: &str) -> (String, String) {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, text).unwrap();
    let o = run_flow(dir, &["check", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(2), "{name}: {stderr}");
    (file.display().to_string(), stderr)
}

#[test]
fn dash_h_prints_the_help_of_every_command() {
    let dir = tempfile::tempdir().unwrap();
    for command in ["run", "check", "stages", "inspect", "bench", "demo-data"] {
        let o = run_flow(dir.path(), &[command, "-h"]);
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{command} -h: {}", String::from_utf8_lossy(&o.stderr));
        assert!(stdout.contains(&format!("Usage: locvtp-flow {command}")), "{command} -h: {stdout}");
    }
    let o = run_flow(dir.path(), &["run", "-h"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("-H, --hostfile") && stdout.contains("--secret-file"), "{stdout}");
}

#[test]
fn the_valid_graph_passes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ok.toml");
    std::fs::write(&file, pretrain_graph(dir.path())).unwrap();
    let o = run_flow(dir.path(), &["check", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn an_edge_of_the_wrong_kind() {
    let dir = tempfile::tempdir().unwrap();
    let text = pretrain_graph(dir.path()).replace(
        "[stages.metrics]\ntype = \"metrics\"\ninputs = [\"train\"]",
        "[stages.metrics]\ntype = \"metrics\"\ninputs = [\"samples\"]",
    );
    let (file, stderr) = rejected(dir.path(), "kind", &text);
    let line = line_of(&text, "[stages.metrics]", "inputs");
    assert!(
        stderr.contains(&format!("{file}:{line}: stages.metrics.inputs: `metrics` expects Training, got Samples")),
        "{stderr}"
    );
}

#[test]
fn a_missing_input() {
    let dir = tempfile::tempdir().unwrap();
    let text = pretrain_graph(dir.path()).replace("inputs = [\"narration\", \"meta\"]", "inputs = [\"narration\"]");
    let (file, stderr) = rejected(dir.path(), "missing", &text);
    let line = line_of(&text, "[stages.captions]", "inputs");
    assert!(stderr.contains(&format!("{file}:{line}: stages.captions.inputs: `align` takes 2 inputs")), "{stderr}");
}

#[test]
fn a_dangling_stage() {
    let dir = tempfile::tempdir().unwrap();
    let text = pretrain_graph(dir.path()) + "\n[stages.extra_meta]\ntype = \"probe\"\ninputs = [\"videos\"]\n";
    let (file, stderr) = rejected(dir.path(), "dangling", &text);
    let line = line_of(&text, "[stages.extra_meta]", "[stages.extra_meta]");
    assert!(stderr.contains(&format!("{file}:{line}: stages.extra_meta: the output of `extra_meta`")), "{stderr}");
    assert!(stderr.contains("goes nowhere"), "{stderr}");
}

#[test]
fn a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let text = pretrain_graph(dir.path()).replace(
        "[stages.meta]\ntype = \"probe\"\ninputs = [\"videos\"]",
        "[stages.meta]\ntype = \"probe\"\ninputs = [\"captions\"]",
    );
    let (file, stderr) = rejected(dir.path(), "cycle", &text);
    assert!(stderr.contains("stages form a cycle: meta -> captions -> meta"), "{stderr}");
    assert!(stderr.contains(&format!("{file}:")), "{stderr}");
}

#[test]
fn two_sinks_writing_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let text = pretrain_graph(dir.path()).replace(
        "[stages.metrics]\ntype = \"metrics\"\ninputs = [\"train\"]",
        "[stages.metrics]\ntype = \"metrics\"\ninputs = [\"train\"]\npath = \"checkpoints\"",
    );
    let (file, stderr) = rejected(dir.path(), "duplicate", &text);
    let line = line_of(&text, "[stages.metrics]", "path");
    assert!(stderr.contains(&format!("{file}:{line}: stages.metrics.path:")), "{stderr}");
    assert!(stderr.contains("also written by stages.checkpoints.dir"), "{stderr}");
}

#[test]
fn segments_that_do_not_fit_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let text = pretrain_graph(dir.path()).replace("num_segments = 3", "num_segments = 5");
    let (file, stderr) = rejected(dir.path(), "segments", &text);
    let line = line_of(&text, "[stages.samples]", "num_segments");
    assert!(
        stderr.contains(&format!("{file}:{line}: stages.samples.num_segments: 5, but the model of stages.train.model")),
        "{stderr}"
    );
}
