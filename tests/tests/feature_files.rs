//! The feature outputs as users' Python code reads them: an HDF5 file in
//! the group layout (`f[vid]["c3d_features"]`), one in the flat layout
//! (`f[vid][:]`), and a folder of `<vid>.npy` files (`numpy.load`), all
//! written by one run from the same features; and a killed run writing
//! `.npy` files resumes without redoing the videos already written.

use locvtp_store::npy::read_npy;
use locvtp_store::Layout;
use locvtp_tests::{
    extract_graph, ffprobe_frames, make_video, python_script, read_errors, read_summary, run_flow, spawn_flow,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Per video: the float32 values as bits, and the shape.
type Bits = BTreeMap<String, (Vec<u32>, [usize; 2])>;

fn bits(all: locvtp_store::AllFeatures) -> Bits {
    all.into_iter().map(|(id, (v, shape))| (id, (v.iter().map(|x| x.to_bits()).collect(), shape))).collect()
}

/// Every `.npy` file of `dir`, read by this crate; hidden files (a file
/// being written) aside, the folder holds nothing else.
fn npy_folder(dir: &Path) -> Bits {
    let mut out = Bits::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name.starts_with('.') {
            continue;
        }
        let id = name.strip_suffix(".npy").unwrap_or_else(|| panic!("{name}: not a feature file"));
        let (values, shape) = read_npy(&path).unwrap_or_else(|e| panic!("{e:#}"));
        out.insert(id.to_string(), (values.iter().map(|x| x.to_bits()).collect(), shape));
    }
    out
}

/// Reads the three outputs with h5py and numpy, each as its loader would,
/// and prints per layout and video the dtype, the shape and the float32
/// bits (exact, unlike printed decimals).
const READ_BACK: &str = r#"
import json, os, sys
import h5py, numpy as np
group_path, flat_path, npy_dir = sys.argv[1:4]
def entry(a):
    return {"dtype": str(a.dtype), "shape": list(a.shape), "bits": a.astype(np.float32).view(np.uint32).ravel().tolist()}
out = {"group": {}, "flat": {}, "npy": {}}
with h5py.File(group_path, "r") as f:
    for vid in f:
        out["group"][vid] = entry(f[vid]["c3d_features"][:])
with h5py.File(flat_path, "r") as f:
    for vid in f:
        out["flat"][vid] = entry(f[vid][:])
for name in os.listdir(npy_dir):
    if name.endswith(".npy"):
        out["npy"][name[:-len(".npy")]] = entry(np.load(os.path.join(npy_dir, name)))
print(json.dumps(out))
"#;

fn from_python(value: &serde_json::Value) -> Bits {
    value
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, e)| {
            assert_eq!(e["dtype"], "float32", "{id}");
            let shape = e["shape"].as_array().unwrap();
            assert_eq!(shape.len(), 2, "{id}: {shape:?}");
            let bits = e["bits"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u32).collect();
            (id.clone(), (bits, [shape[0].as_u64().unwrap() as usize, shape[1].as_u64().unwrap() as usize]))
        })
        .collect()
}

#[test]
fn one_run_writes_both_hdf5_layouts_and_npy_files_that_python_reads_alike() {
    let dir = tempfile::tempdir().unwrap();
    let videos = dir.path().join("videos");
    std::fs::create_dir_all(&videos).unwrap();
    let specs = [("a", 1.0), ("b", 0.5), ("c", 2.0)];
    for (id, secs) in specs {
        make_video(&videos.join(format!("{id}.mp4")), 64, 48, (25, 1), secs);
    }
    let out = dir.path().join("out");
    let graph = dir.path().join("three.toml");
    let sinks =
        "\n[stages.flat]\ntype = \"hdf5_writer\"\ninputs = [\"encode\"]\npath = \"flat.h5\"\nlayout = \"flat\"\n\n\
                 [stages.npy]\ntype = \"npy_writer\"\ninputs = [\"encode\"]\n";
    std::fs::write(&graph, extract_graph(&videos, &out, "") + sinks).unwrap();
    let o = run_flow(dir.path(), &["run", graph.to_str().unwrap(), "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let group = bits(locvtp_store::read_all(&out.join("features.h5"), "c3d_features").unwrap());
    let flat = bits(locvtp_store::read_all(&out.join("flat.h5"), Layout::Flat).unwrap());
    let npy = npy_folder(&out.join("features"));
    assert_eq!(group.keys().map(String::as_str).collect::<Vec<_>>(), ["a", "b", "c"]);
    let mut clips = 0;
    for (id, _) in specs {
        let frames = ffprobe_frames(&videos.join(format!("{id}.mp4")));
        assert_eq!(group[id].1, [frames.div_ceil(16) as usize, 16], "{id}: {frames} frames");
        clips += frames.div_ceil(16);
    }
    assert_eq!(flat, group, "the flat layout holds the same features");
    assert_eq!(npy, group, "the .npy files hold the same features");

    // Three sinks of one stream: each video is counted once.
    let summary = read_summary(&out);
    assert_eq!(summary["videos"]["processed"], 3, "{summary}");
    assert_eq!(summary["videos"]["failed"], 0, "{summary}");
    assert_eq!(summary["clips"], clips, "{summary}");
    assert_eq!(summary["outputs"]["npy"]["videos"], 3, "{summary}");
    assert!(summary["outputs"]["flat"]["path"].as_str().unwrap().ends_with("flat.h5"), "{summary}");
    assert!(read_errors(&out).is_empty());

    let printed = python_script(READ_BACK, &[&out.join("features.h5"), &out.join("flat.h5"), &out.join("features")]);
    let read: serde_json::Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(from_python(&read["group"]), group, "h5py: f[vid][\"c3d_features\"][:]");
    assert_eq!(from_python(&read["flat"]), group, "h5py: f[vid][:]");
    assert_eq!(from_python(&read["npy"]), group, "numpy.load(<vid>.npy)");
}

const VIDEOS: usize = 12;

/// An extraction graph whose only sink is an `npy_writer` (its folder is
/// `out/features`).
fn npy_graph(dir: &Path, name: &str, videos: &Path) -> (PathBuf, PathBuf) {
    let out = dir.join(name);
    let text = extract_graph(videos, &out, "").replace("type = \"hdf5_writer\"", "type = \"npy_writer\"");
    let graph = dir.join(format!("{name}.toml"));
    std::fs::write(&graph, text).unwrap();
    (graph, out.join("features"))
}

fn npy_count(folder: &Path) -> usize {
    locvtp_store::npy::videos_in(folder).unwrap().len()
}

#[test]
fn a_killed_npy_run_resumes_without_redoing_the_files_already_written() {
    let dir = tempfile::tempdir().unwrap();
    let videos = dir.path().join("videos");
    std::fs::create_dir_all(&videos).unwrap();
    for i in 0..VIDEOS {
        make_video(&videos.join(format!("v{i:02}.mp4")), 64, 48, (25, 1), 2.0);
    }
    let (reference_graph, reference_folder) = npy_graph(dir.path(), "reference", &videos);
    let o = run_flow(dir.path(), &["run", reference_graph.to_str().unwrap(), "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reference = npy_folder(&reference_folder);
    assert_eq!(reference.len(), VIDEOS);

    // One decoder thread and one video in flight, so that videos finish one
    // after another and the kill lands between (or during) their writes.
    let (graph, folder) = npy_graph(dir.path(), "out", &videos);
    let args =
        ["run", graph.to_str().unwrap(), "-q", "--set", "stages.decode.threads=1", "--set", "run.max_in_flight=1"];
    let log = dir.path().join("killed.log");
    let mut child = spawn_flow(dir.path(), &args, &log);
    let deadline = Instant::now() + Duration::from_secs(300);
    while npy_count(&folder) < 3 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the run ended ({status}) before 3 files were written; it must still be running to be killed: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "no file written");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    assert!(!child.wait().unwrap().success());

    // Whatever the kill interrupted, a file with a final name is complete.
    let kept = npy_folder(&folder);
    let written = kept.len();
    assert!((3..VIDEOS).contains(&written), "{written} files before the kill");
    for (id, features) in &kept {
        assert_eq!(features, &reference[id], "{id}: a file written before the kill differs from the reference");
    }

    let o = run_flow(dir.path(), &args);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let summary = read_summary(&dir.path().join("out"));
    assert_eq!(summary["videos"]["skipped"], written as u64, "{summary}");
    assert_eq!(summary["videos"]["processed"], (VIDEOS - written) as u64, "{summary}");
    assert_eq!(summary["clips"], 4 * (VIDEOS - written) as u64, "clips computed by the second run: {summary}");
    assert_eq!(summary["outputs"]["write"]["written"], (VIDEOS - written) as u64, "{summary}");
    assert_eq!(npy_folder(&folder), reference, "resumed features differ from an uninterrupted run");
    let names: Vec<String> =
        std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    let hidden: Vec<&String> = names.iter().filter(|n| n.starts_with('.')).collect();
    assert_eq!(hidden, [locvtp_store::npy::FINGERPRINT_FILE], "a temporary file was left: {names:?}");
}
