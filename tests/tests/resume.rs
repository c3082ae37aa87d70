//! Crashes and interruptions lose nothing: an extraction killed with
//! SIGKILL, or stopped with Ctrl-C (SIGINT), and then started again with the
//! same command ends with every video exactly once, with the values of an
//! uninterrupted run, and without redoing the videos finished before.

use locvtp_tests::{extract_graph, make_video, read_errors, read_summary, run_flow, spawn_flow};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

const VIDEOS: usize = 12;

type Bits = BTreeMap<String, (Vec<u32>, [usize; 2])>;

/// A folder of videos of 50 frames (4 clips) each, and a graph over it.
struct Setup {
    dir: tempfile::TempDir,
    out: PathBuf,
    graph: String,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let videos = dir.path().join("videos");
    std::fs::create_dir_all(&videos).unwrap();
    for i in 0..VIDEOS {
        make_video(&videos.join(format!("v{i:02}.mp4")), 64, 48, (25, 1), 2.0);
    }
    let out = dir.path().join("out");
    let graph = dir.path().join("extract.toml");
    std::fs::write(&graph, extract_graph(&videos, &out, "")).unwrap();
    Setup { graph: graph.to_str().unwrap().to_string(), out, dir }
}

impl Setup {
    /// The command under test: one decoder thread and one video in flight,
    /// so that videos finish one after another.
    fn args(&self) -> Vec<&str> {
        vec!["run", &self.graph, "-q", "--set", "stages.decode.threads=1", "--set", "run.max_in_flight=1"]
    }

    fn spool(&self) -> PathBuf {
        self.out.join(".features.h5.spool")
    }

    fn h5(&self) -> PathBuf {
        self.out.join("features.h5")
    }

    fn spooled(&self) -> usize {
        spooled(&self.spool())
    }

    /// Features of an uninterrupted run of the same graph.
    fn reference(&self) -> Bits {
        let out = self.dir.path().join("reference");
        let graph = self.dir.path().join("reference.toml");
        std::fs::write(&graph, extract_graph(&self.dir.path().join("videos"), &out, "")).unwrap();
        let o = run_flow(self.dir.path(), &["run", graph.to_str().unwrap(), "-q"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        features(&out.join("features.h5"))
    }

    /// Starts the run and waits until its spool holds at least `n`
    /// finished videos.
    fn start_and_wait_for(&self, n: usize, log: &str) -> Child {
        let mut child = spawn_flow(self.dir.path(), &self.args(), &self.dir.path().join(log));
        let deadline = Instant::now() + Duration::from_secs(300);
        while self.spooled() < n {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "the run ended ({status}) before {n} videos were spooled; it must still be running to be interrupted: {}",
                    std::fs::read_to_string(self.dir.path().join(log)).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "no progress in the spool");
            std::thread::sleep(Duration::from_millis(10));
        }
        child
    }

    /// Runs the same command again to completion and checks the result
    /// against the reference: all videos once, equal values, and only the
    /// videos missing from the spool recomputed.
    fn resume_and_check(&self, spooled_before: usize, reference: &Bits) {
        let o = run_flow(self.dir.path(), &self.args());
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{stderr}");
        let summary = read_summary(&self.out);
        assert_eq!(summary["videos"]["skipped"], spooled_before as u64, "{summary}");
        assert_eq!(summary["videos"]["processed"], (VIDEOS - spooled_before) as u64, "{summary}");
        assert_eq!(summary["videos"]["failed"], 0, "{summary}");
        assert_eq!(summary["interrupted"], false, "{summary}");
        assert_eq!(
            summary["clips"],
            4 * (VIDEOS - spooled_before) as u64,
            "clips computed by the second run: {summary}"
        );
        let ids = locvtp_store::list_videos(&self.h5()).unwrap();
        assert_eq!(ids.len(), VIDEOS, "{ids:?}");
        assert_eq!(&features(&self.h5()), reference, "resumed features differ from an uninterrupted run");
        assert!(!self.spool().exists(), "the spool is removed once the HDF5 file is assembled");
        assert!(read_errors(&self.out).is_empty());
    }
}

/// Intact records in a spool (none when it does not exist yet).
fn spooled(spool: &Path) -> usize {
    if !spool.exists() {
        return 0;
    }
    locvtp_store::spool::read_records(spool).map(|(r, _)| r.len()).unwrap_or(0)
}

fn features(h5: &Path) -> Bits {
    locvtp_store::read_all(h5, "c3d_features")
        .unwrap()
        .into_iter()
        .map(|(id, (v, shape))| (id, (v.iter().map(|x| x.to_bits()).collect(), shape)))
        .collect()
}

fn signal(child: &Child, name: &str) {
    let ok = Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status().unwrap();
    assert!(ok.success(), "kill -{name}");
}

fn wait(mut child: Child) -> ExitStatus {
    child.wait().unwrap()
}

#[test]
fn a_run_killed_midway_resumes_without_redoing_finished_videos() {
    let s = setup();
    let reference = s.reference();
    assert_eq!(reference.len(), VIDEOS);

    let mut child = s.start_and_wait_for(3, "killed.log");
    child.kill().unwrap();
    let status = wait(child);
    assert!(!status.success(), "SIGKILL: {status}");
    let spooled = s.spooled();
    assert!((3..VIDEOS).contains(&spooled), "{spooled} videos spooled before the kill");
    assert!(!s.h5().exists(), "no HDF5 file before the run completes");

    s.resume_and_check(spooled, &reference);
}

#[test]
fn ctrl_c_keeps_finished_work_and_the_same_command_resumes() {
    let s = setup();
    let reference = s.reference();

    let child = s.start_and_wait_for(2, "interrupted.log");
    signal(&child, "INT");
    let status = wait(child);
    let log = std::fs::read_to_string(s.dir.path().join("interrupted.log")).unwrap();
    assert_eq!(status.code(), Some(130), "{log}");
    assert!(log.contains("run the same command to resume"), "{log}");
    // The videos in flight were finished and spooled, not dropped, and the
    // rest were never started.
    let spooled = s.spooled();
    assert!((2..VIDEOS).contains(&spooled), "{spooled} videos spooled");
    let summary = read_summary(&s.out);
    assert_eq!(summary["interrupted"], true, "{summary}");
    assert_eq!(summary["videos"]["processed"], spooled as u64, "{summary}");
    assert_eq!(summary["videos"]["failed"], 0, "{summary}");
    let kept = summary["outputs"]["write"]["kept_spool"].as_str().unwrap_or_default();
    assert!(kept.ends_with(".features.h5.spool"), "the summary names the kept spool: {summary}");
    assert!(!s.h5().exists(), "an interrupted run assembles no HDF5 file");

    s.resume_and_check(spooled, &reference);
}

#[test]
fn a_second_ctrl_c_aborts_at_once_and_still_leaves_a_resumable_state() {
    let s = setup();
    let reference = s.reference();

    let child = s.start_and_wait_for(2, "aborted.log");
    signal(&child, "INT");
    // The second signal must come after the run has taken in the first.
    let log = s.dir.path().join("aborted.log");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("no new work is started") {
        assert!(Instant::now() < deadline, "the run did not take in SIGINT");
        std::thread::sleep(Duration::from_millis(5));
    }
    signal(&child, "INT");
    let status = wait(child);
    assert_eq!(status.code(), Some(130), "{status}");
    assert!(!s.out.join("summary.json").exists(), "the second Ctrl-C should end the run before its summary");
    assert!(!s.h5().exists());
    let spooled = s.spooled();
    assert!((2..VIDEOS).contains(&spooled), "{spooled} videos spooled");

    s.resume_and_check(spooled, &reference);
}
