//! The extract graph end to end on freshly generated videos.

use locvtp_tests::{extract_graph, ffprobe_frames, make_video, run_flow};
use std::collections::BTreeMap;
use std::path::Path;

type Features = BTreeMap<String, (Vec<f32>, [usize; 2])>;

fn run_extract(dir: &Path, name: &str, extra_args: &[&str]) -> Features {
    let out = dir.join(name);
    let graph = dir.join(format!("{name}.toml"));
    std::fs::write(&graph, extract_graph(&dir.join("videos"), &out, "")).unwrap();
    let mut args = vec!["run", graph.to_str().unwrap(), "-q"];
    args.extend_from_slice(extra_args);
    let o = run_flow(dir, &args);
    assert!(o.status.success(), "run failed: {}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["videos"]["failed"], 0, "{summary}");
    assert_eq!(summary["decode_passes"], summary["videos"]["processed"], "each video is decoded once: {summary}");
    // A padded partial batch goes out only once its videos have delivered
    // every clip, so at most one per video beyond the full ones (batch_size
    // 4 in extract_graph), however the decoders and the model are timed.
    let (clips, videos) = (summary["clips"].as_u64().unwrap(), summary["videos"]["processed"].as_u64().unwrap());
    let batches = summary["encoder_batches"].as_u64().unwrap();
    assert!(batches >= clips.div_ceil(4) && batches <= clips / 4 + videos, "{batches} batches: {summary}");
    locvtp_store::read_all(&out.join("features.h5"), "c3d_features").unwrap()
}

fn bits(f: &Features) -> BTreeMap<String, Vec<u32>> {
    f.iter().map(|(k, (v, _))| (k.clone(), v.iter().map(|x| x.to_bits()).collect())).collect()
}

#[test]
fn extract_writes_one_feature_row_per_16_frames_deterministically() {
    let dir = tempfile::tempdir().unwrap();
    let videos = dir.path().join("videos");
    std::fs::create_dir_all(&videos).unwrap();
    // Different sizes (landscape, portrait, wide), rates and lengths,
    // including one shorter than a clip and one ending mid-clip.
    let specs = [
        ("wide", 128, 72, (24, 1), 0.5),
        ("land", 96, 64, (25, 1), 1.3),
        ("tall", 64, 96, (30000, 1001), 2.0),
        ("tiny", 48, 48, (30, 1), 0.1),
    ];
    for (id, w, h, fps, secs) in specs {
        make_video(&videos.join(format!("{id}.mp4")), w, h, fps, secs);
    }

    let one = run_extract(dir.path(), "w1", &[]);
    assert_eq!(one.len(), specs.len());
    for (id, ..) in specs {
        let frames = ffprobe_frames(&videos.join(format!("{id}.mp4")));
        let (values, shape) = &one[id];
        assert_eq!(shape[0] as u64, frames.div_ceil(16), "{id}: {frames} frames");
        assert_eq!(shape[1], 16, "{id}: the tiny model's projection is 16-d");
        assert!(values.iter().all(|v| v.is_finite()), "{id}: non-finite feature");
        // LayerNorm output: rows are not constant.
        assert!(values[..16].iter().any(|v| (v - values[0]).abs() > 1e-4), "{id}: degenerate row");
    }

    let again = run_extract(dir.path(), "w1-again", &[]);
    assert_eq!(bits(&one), bits(&again), "two runs differ");
    let two = run_extract(dir.path(), "w2", &["-w", "2"]);
    assert_eq!(bits(&one), bits(&two), "-w 2 differs from -w 1");
}

#[test]
fn graph_errors_exit_2_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let videos = dir.path().join("videos");
    std::fs::create_dir_all(&videos).unwrap();
    let out = dir.path().join("out");
    let graph = dir.path().join("bad.toml");
    let text = extract_graph(&videos, &out, "batchsize = 3\n");
    std::fs::write(&graph, &text).unwrap();
    let o = run_flow(dir.path(), &["run", graph.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    let line = text.lines().position(|l| l.starts_with("batchsize")).unwrap() + 1;
    assert!(err.contains(&format!("bad.toml:{line}")) && err.contains("batchsize"), "{err}");
    assert!(!out.exists(), "nothing may be written for a rejected graph");

    let missing = dir.path().join("missing.toml");
    std::fs::write(&missing, extract_graph(&dir.path().join("no-such-folder"), &out, "")).unwrap();
    let o = run_flow(dir.path(), &["run", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no-such-folder"));
}

#[test]
fn check_prints_the_topology() {
    let dir = tempfile::tempdir().unwrap();
    let graph = dir.path().join("g.toml");
    std::fs::write(&graph, extract_graph(dir.path(), &dir.path().join("out"), "")).unwrap();
    let o = run_flow(dir.path(), &["check", graph.to_str().unwrap()]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    for needle in ["videos", "decode", "dense_clips", "c3d_encode", "hdf5_writer"] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
}
