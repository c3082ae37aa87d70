//! What a run's outputs promise: features of one model and preprocessing
//! only (a run that would resume an output made with other weights, layer,
//! model or preprocessing stops before any work, `check` too), one run at a
//! time per output folder (a second one stops at once naming the first; a
//! killed run's lock is taken over), and nothing a finished run wrote is
//! replaced by a run that fails or is interrupted; a model that fails in
//! the middle of a run stops it with the stage and the cause, not a panic.

use locvtp_store::read_attrs;
use locvtp_tests::{extract_graph, make_video, read_summary, run_flow, spawn_flow};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output};
use std::time::{Duration, Instant};

const VIDEOS: usize = 12;

/// Per video: the float32 values as bits, and the shape.
type Bits = BTreeMap<String, (Vec<u32>, [usize; 2])>;

/// A folder of videos of 50 frames (4 clips) each and an extraction graph
/// over it writing to `out`.
struct Setup {
    dir: tempfile::TempDir,
    videos: PathBuf,
    out: PathBuf,
    graph: String,
}

fn setup(videos: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("videos");
    std::fs::create_dir_all(&folder).unwrap();
    for i in 0..videos {
        make_video(&folder.join(format!("v{i:02}.mp4")), 64, 48, (25, 1), 2.0);
    }
    let out = dir.path().join("out");
    let graph = dir.path().join("extract.toml");
    std::fs::write(&graph, extract_graph(&folder, &out, "")).unwrap();
    Setup { graph: graph.to_str().unwrap().to_string(), videos: folder, out, dir }
}

impl Setup {
    /// `run GRAPH` with one decoder thread and one video in flight, so that
    /// videos finish one after another, and `extra` arguments.
    fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args =
            vec!["run", &self.graph, "-q", "--set", "stages.decode.threads=1", "--set", "run.max_in_flight=1"];
        args.extend_from_slice(extra);
        args
    }

    fn run(&self, extra: &[&str]) -> Output {
        run_flow(self.dir.path(), &self.args(extra))
    }

    fn h5(&self) -> PathBuf {
        self.out.join("features.h5")
    }

    fn spool(&self) -> PathBuf {
        self.out.join(".features.h5.spool")
    }

    fn spooled(&self) -> usize {
        spooled(&self.spool())
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts the run and waits until its spool holds at least `n` videos.
    fn start_and_wait_for(&self, n: usize, extra: &[&str], log: &str) -> Child {
        let mut child = spawn_flow(self.dir.path(), &self.args(extra), &self.log(log));
        let deadline = Instant::now() + Duration::from_secs(300);
        while self.spooled() < n {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "the run ended ({status}) before {n} videos were spooled; it must still be running: {}",
                    std::fs::read_to_string(self.log(log)).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "no progress in the spool");
            std::thread::sleep(Duration::from_millis(10));
        }
        child
    }
}

fn spooled(spool: &Path) -> usize {
    if !spool.exists() {
        return 0;
    }
    locvtp_store::spool::read_records(spool).map(|(r, _)| r.len()).unwrap_or(0)
}

fn bits(h5: &Path) -> Bits {
    locvtp_store::read_all(h5, "c3d_features")
        .unwrap()
        .into_iter()
        .map(|(id, (v, shape))| (id, (v.iter().map(|x| x.to_bits()).collect(), shape)))
        .collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Waits for `child` with a deadline.
fn wait(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the run did not end within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The root attribute `fingerprint` of a feature file.
fn fingerprint_attr(h5: &Path) -> String {
    let file = hdf5::File::open(h5).unwrap();
    let value: hdf5::types::VarLenUnicode = file.attr("fingerprint").unwrap().read_scalar().unwrap();
    value.as_str().to_string()
}

#[test]
fn resuming_with_other_weights_layer_or_preprocessing_stops_before_mixing_them() {
    let s = setup(VIDEOS);
    let mut child = s.start_and_wait_for(3, &[], "killed.log");
    let killed = child.id();
    child.kill().unwrap();
    child.wait().unwrap();
    let spooled = s.spooled();
    assert!((3..VIDEOS).contains(&spooled), "{spooled} videos spooled before the kill");
    let spool_bytes = std::fs::read(s.spool()).unwrap();

    // Another seed is another random initialisation: other weights. `check`
    // says so too, before any run.
    let check = run_flow(s.dir.path(), &["check", &s.graph, "--set", "run.seed=1"]);
    let text = stderr(&check);
    assert_eq!(check.status.code(), Some(2), "{text}");
    assert!(text.contains("checkpoint: random-init:0 (earlier run) vs random-init:1 (this run)"), "{text}");
    let cases = [
        ("run.seed=1", "checkpoint: random-init:0 (earlier run) vs random-init:1 (this run)"),
        ("stages.encode.layer=fc6", "layer: projection (earlier run) vs fc6 (this run)"),
        ("stages.clips.stride=8", "stride: 16 (earlier run) vs 8 (this run)"),
        ("stages.clips.tail=drop", "tail: pad (earlier run) vs drop (this run)"),
    ];
    for (i, (set, difference)) in cases.into_iter().enumerate() {
        let o = s.run(&["--set", set]);
        let text = stderr(&o);
        if i == 0 {
            // The killed run's lock (kill -9 leaves its record behind) is
            // taken over, naming it, before the settings are compared.
            let takeover = format!("taking over the lock of a run that ended without releasing it, as a killed run does (pid {killed} on host");
            assert!(text.contains(&takeover) && text.contains("no longer running"), "{text}");
        }
        assert_eq!(o.status.code(), Some(2), "{set}: {text}");
        assert!(text.contains("stages.write.path") && text.contains(difference), "{set}: {text}");
        assert!(text.contains(&format!("holds {spooled} videos")), "{set}: {text}");
        assert!(text.contains(&format!("To start fresh, remove {}", s.spool().display())), "{set}: {text}");
        assert_eq!(std::fs::read(s.spool()).unwrap(), spool_bytes, "{set}: the spool was touched");
        assert!(!s.h5().exists() && !s.out.join("summary.json").exists(), "{set}: work was done");
    }

    // The earlier settings resume it, and the file's attributes are true of
    // every video in it.
    let o = s.run(&[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let summary = read_summary(&s.out);
    assert_eq!(summary["videos"]["skipped"], spooled as u64, "{summary}");
    assert_eq!(summary["videos"]["processed"], (VIDEOS - spooled) as u64, "{summary}");
    let attrs = read_attrs(&s.h5()).unwrap();
    assert_eq!((attrs.checkpoint.as_str(), attrs.layer.as_str()), ("random-init:0", "projection"));
    assert_eq!((attrs.frame_size, attrs.clip_frames, attrs.stride, attrs.tail.as_str()), (112, 16, 16, "pad"));
    assert_eq!(fingerprint_attr(&s.h5()), attrs.fingerprint());
    assert_eq!(bits(&s.h5()).len(), VIDEOS);

    // A fresh start with the other settings, as the message says: the
    // spool is gone once the file is complete, so nothing is mixed.
    let o = s.run(&["--set", "run.seed=1"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(read_summary(&s.out)["videos"]["processed"], VIDEOS as u64);
    assert_eq!(read_attrs(&s.h5()).unwrap().checkpoint, "random-init:1");
}

#[test]
fn npy_files_of_another_model_are_not_joined_by_this_runs() {
    let s = setup(3);
    let graph = s.dir.path().join("npy.toml");
    let text = extract_graph(&s.videos, &s.out, "").replace("type = \"hdf5_writer\"", "type = \"npy_writer\"");
    std::fs::write(&graph, text).unwrap();
    let graph = graph.to_str().unwrap();
    let o = run_flow(s.dir.path(), &["run", graph, "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let folder = s.out.join("features");
    let recorded = locvtp_store::npy::read_fingerprint(&folder).unwrap().expect("the folder records its features");
    assert_eq!((recorded.checkpoint.as_str(), recorded.layer.as_str()), ("random-init:0", "projection"));
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder.join(locvtp_store::npy::FINGERPRINT_FILE)).unwrap()).unwrap();
    assert_eq!(sidecar["fingerprint"], recorded.fingerprint());
    let before: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect();

    // One more video, and a checkpoint of another model: the new video
    // would be written beside files of other weights.
    make_video(&s.videos.join("v99.mp4"), 64, 48, (25, 1), 1.0);
    let o = run_flow(s.dir.path(), &["run", graph, "-q", "--set", "run.seed=5"]);
    let text = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{text}");
    assert!(text.contains("stages.write.dir") && text.contains("holds 3 .npy files"), "{text}");
    assert!(text.contains("checkpoint: random-init:0 (earlier run) vs random-init:5 (this run)"), "{text}");
    for (path, bytes) in &before {
        assert_eq!(&std::fs::read(path).unwrap(), bytes, "{}", path.display());
    }
    assert!(!folder.join("v99.npy").exists());

    let o = run_flow(s.dir.path(), &["run", graph, "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(read_summary(&s.out)["videos"]["skipped"], 3);
    assert!(folder.join("v99.npy").exists());
}

#[test]
fn two_runs_on_one_output_folder_one_stops_at_once_naming_the_other() {
    let s = setup(6);
    let mut first = spawn_flow(s.dir.path(), &s.args(&[]), &s.log("first.log"));
    let mut second = spawn_flow(s.dir.path(), &s.args(&[]), &s.log("second.log"));
    let (a, b) = (wait(&mut first, Duration::from_secs(300)), wait(&mut second, Duration::from_secs(300)));
    let logs = [s.log("first.log"), s.log("second.log")].map(|p| std::fs::read_to_string(p).unwrap());
    let pids = [first.id(), second.id()];
    let (winner, loser) = match (a.code(), b.code()) {
        (Some(0), Some(2)) => (0, 1),
        (Some(2), Some(0)) => (1, 0),
        codes => panic!("expected one run to complete and one to stop with 2, got {codes:?}: {logs:?}"),
    };
    let message = &logs[loser];
    assert!(message.contains("run.output_dir"), "{message}");
    assert!(message.contains(&format!("{} is in use by another locvtp-flow run", s.out.display())), "{message}");
    assert!(message.contains(&format!("pid {} on host", pids[winner])), "{message}");
    assert!(
        message.contains("started ") && message.contains(&format!("command `{}", locvtp_tests::binary().display()))
    );

    let summary = read_summary(&s.out);
    assert_eq!(summary["videos"]["processed"], 6, "{summary}");
    assert_eq!(summary["videos"]["failed"], 0, "{summary}");
    let features = bits(&s.h5());
    assert_eq!(features.len(), 6);
    assert!(features.values().all(|(_, shape)| *shape == [4, 16]));
    assert_eq!(std::fs::read(s.out.join(".locvtp-flow.lock")).unwrap(), b"", "the winner released its lock");
}

#[test]
fn the_lock_of_a_killed_run_is_taken_over() {
    let s = setup(2);
    // A pid that has ended.
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let host = String::from_utf8(Command::new("hostname").output().unwrap().stdout).unwrap().trim().to_string();
    std::fs::create_dir_all(&s.out).unwrap();
    let record = serde_json::json!({
        "pid": dead, "host": host, "started": "2026-01-01T00:00:00Z", "command": "locvtp-flow run extract.toml"
    });
    std::fs::write(s.out.join(".locvtp-flow.lock"), record.to_string()).unwrap();
    let o = s.run(&[]);
    let text = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(text.contains("taking over the lock of a run that ended without releasing it"), "{text}");
    assert!(text.contains(&format!("pid {dead} on host {host}")) && text.contains("no longer running"), "{text}");
    assert_eq!(bits(&s.h5()).len(), 2);
}

#[test]
fn a_failing_or_interrupted_run_leaves_the_finished_file_intact() {
    let s = setup(VIDEOS);
    // A file that is no video: a failed item, which `--strict` makes fatal.
    std::fs::write(s.videos.join("broken.mp4"), b"not a video").unwrap();
    let o = s.run(&[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let reference = bits(&s.h5());
    assert_eq!(reference.len(), VIDEOS);
    // The same bytes in the same file: a file assembled again from equal
    // features and renamed over it would have another inode.
    let identity = |path: &Path| {
        use std::os::unix::fs::MetadataExt;
        (std::fs::metadata(path).unwrap().ino(), std::fs::read(path).unwrap())
    };
    let finished = identity(&s.h5());
    let intact = |what: &str| assert!(identity(&s.h5()) == finished, "{what} replaced features.h5");

    // Interrupted: every video is being extracted again, and the file stays
    // until a run completes.
    let mut child = s.start_and_wait_for(2, &[], "interrupted.log");
    let sent = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(sent.success());
    let status = wait(&mut child, Duration::from_secs(120));
    assert_eq!(status.code(), Some(130), "{}", std::fs::read_to_string(s.log("interrupted.log")).unwrap());
    intact("an interrupted run");
    let spooled = s.spooled();
    assert!((2..VIDEOS).contains(&spooled), "{spooled}");

    // A run whose writer completes, but which fails as a whole.
    let o = s.run(&["--strict"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    intact("a --strict run with a failed item");
    assert_eq!(s.spooled(), VIDEOS, "the finished work is kept for the next run");
    let summary = read_summary(&s.out);
    assert!(summary["outputs"]["write"]["kept_spool"].is_string(), "{summary}");

    // A checkpoint that is no checkpoint.
    let junk = s.dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"no tensors here").unwrap();
    let o = s.run(&["--set", &format!("stages.encode.checkpoint={}", junk.display())]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("stages.encode.checkpoint"), "{}", stderr(&o));
    intact("a run with a bad checkpoint");

    // A file that cannot be assembled: its temporary name is taken.
    let blocker = s.out.join(".features.h5.partial");
    std::fs::create_dir_all(blocker.join("in-the-way")).unwrap();
    let o = s.run(&[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("stage `write`"), "{}", stderr(&o));
    intact("a run whose assembly failed");
    assert_eq!(s.spooled(), VIDEOS);

    // Once the way is clear, the same command completes from the spool.
    std::fs::remove_dir_all(&blocker).unwrap();
    let o = s.run(&[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(read_summary(&s.out)["videos"]["skipped"], VIDEOS as u64);
    assert_eq!(bits(&s.h5()), reference);
    assert!(!s.spool().exists() && !blocker.exists());
}

#[test]
fn a_model_error_mid_run_fails_it_naming_stage_batch_and_cause_and_keeps_the_earlier_file() {
    let s = setup(2);
    let o = s.run(&[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let finished = std::fs::read(s.h5()).unwrap();

    // The tiny model with 8-frame clips loads, but libtorch refuses its
    // first batch (pool5 has nothing left to pool over time).
    let tiny = std::fs::read_to_string(locvtp_tests::repo().join("configs/c3d-tiny.toml")).unwrap();
    let model = s.dir.path().join("tiny-8-frames.toml");
    std::fs::write(&model, tiny.replace("frames_per_segment = 16", "frames_per_segment = 8")).unwrap();
    let model = format!("stages.encode.model={}", model.display());
    let o = s.run(&["--set", &model, "--set", "stages.clips.clip_frames=8"]);
    let text = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(text.contains("error: stage `encode`: the encoder failed on a batch of 4 clips of v0"), "{text}");
    assert!(text.contains("Output size is too small"), "{text}");
    assert!(!text.contains("panicked") && !text.contains("a worker failed"), "{text}");
    let summary = read_summary(&s.out);
    assert_eq!(summary["fatal"]["stage"], "encode", "{summary}");
    assert!(summary["fatal"]["message"].as_str().unwrap().ends_with("Output size is too small"), "{summary}");
    assert_eq!(std::fs::read(s.h5()).unwrap(), finished, "the failed run replaced features.h5");
}
