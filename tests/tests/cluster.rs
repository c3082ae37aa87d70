//! timely's cluster mode on loopback: two processes write the same single
//! feature file as one worker; only processes that prove the cluster's
//! secret join it, and strangers on a cluster port are refused while the
//! run goes on; a process whose peers never come up stops with a message
//! instead of hanging; a signal to any one process stops them all, keeping
//! finished work for the same command to resume; the gradient exchange's
//! benchmark delivers the mean between two processes.

use locvtp_tests::{
    extract_graph, flow_command, loopback_hostfile, make_video, repo, run_cluster, run_flow, spawn_flow,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

fn features(out: &Path) -> std::collections::BTreeMap<String, Vec<u32>> {
    locvtp_store::read_all(&out.join("features.h5"), "c3d_features")
        .unwrap()
        .into_iter()
        .map(|(k, (v, _))| (k, v.iter().map(|x| x.to_bits()).collect()))
        .collect()
}

#[test]
fn two_processes_write_one_file_equal_to_one_worker() {
    let dir = tempfile::tempdir().unwrap();
    let videos = dir.path().join("videos");
    std::fs::create_dir_all(&videos).unwrap();
    for (i, secs) in [0.7, 1.1, 0.4, 1.5, 0.9].iter().enumerate() {
        make_video(&videos.join(format!("c{i}.mp4")), 64 + 16 * i as u32, 48, (25, 1), *secs);
    }
    let single = dir.path().join("single");
    let g1 = dir.path().join("single.toml");
    std::fs::write(&g1, extract_graph(&videos, &single, "")).unwrap();
    let o = run_flow(dir.path(), &["run", g1.to_str().unwrap(), "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let cluster = dir.path().join("cluster");
    let g2 = dir.path().join("cluster.toml");
    std::fs::write(&g2, extract_graph(&videos, &cluster, "")).unwrap();
    for (p, o) in run_cluster(dir.path(), &g2, 2, 1).iter().enumerate() {
        assert!(o.status.success(), "process {p}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let files: Vec<_> = std::fs::read_dir(&cluster)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "h5"))
        .collect();
    assert_eq!(files.len(), 1, "one feature file for the whole cluster");
    assert_eq!(features(&single), features(&cluster));
}

#[test]
fn a_process_without_peers_gives_up_naming_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let videos = dir.path().join("videos");
    std::fs::create_dir_all(&videos).unwrap();
    make_video(&videos.join("only.mp4"), 64, 48, (25, 1), 0.3);
    let graph = dir.path().join("g.toml");
    std::fs::write(&graph, extract_graph(&videos, &dir.path().join("out"), "")).unwrap();
    let hosts = loopback_hostfile(dir.path(), 2);
    let first = std::fs::read_to_string(&hosts).unwrap().lines().next().unwrap().to_string();
    let started = Instant::now();
    // Process 1 alone: process 0, which it must reach, never starts.
    let o = run_flow(
        dir.path(),
        &[
            "run",
            graph.to_str().unwrap(),
            "-q",
            "-n",
            "2",
            "-p",
            "1",
            "-H",
            hosts.to_str().unwrap(),
            "--connect-timeout",
            "2",
        ],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&first), "{err}");
    assert!(started.elapsed().as_secs() < 60, "gave up only after {:?}", started.elapsed());
}

#[test]
fn a_dead_peer_stops_the_other_process_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let videos = dir.path().join("videos");
    std::fs::create_dir_all(&videos).unwrap();
    for i in 0..12 {
        make_video(&videos.join(format!("d{i:02}.mp4")), 96, 64, (25, 1), 2.0);
    }
    let out = dir.path().join("out");
    let graph = dir.path().join("g.toml");
    std::fs::write(&graph, extract_graph(&videos, &out, "")).unwrap();
    let hosts = loopback_hostfile(dir.path(), 2);
    let start = |p: &str| {
        locvtp_tests::spawn_flow(
            dir.path(),
            &[
                "run",
                graph.to_str().unwrap(),
                "-q",
                "-n",
                "2",
                "-p",
                p,
                "-H",
                hosts.to_str().unwrap(),
                "--set",
                "stages.decode.threads=1",
                "--set",
                "run.max_in_flight=1",
            ],
            &dir.path().join(format!("p{p}.log")),
        )
    };
    let mut first = start("0");
    let mut second = start("1");
    // Once the cluster works (a video is finished), process 1 dies.
    let spool = out.join(".features.h5.spool");
    let began = Instant::now();
    while locvtp_store::spool::read_records(&spool).map(|(r, _)| r.len()).unwrap_or(0) < 1 {
        assert!(first.try_wait().unwrap().is_none(), "the run ended before the failure could be injected");
        assert!(began.elapsed().as_secs() < 120, "no progress");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    second.kill().unwrap();
    second.wait().unwrap();
    let killed_at = Instant::now();
    let status = loop {
        if let Some(s) = first.try_wait().unwrap() {
            break s;
        }
        assert!(killed_at.elapsed().as_secs() < 60, "process 0 hangs after its peer died");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    if status.success() {
        // Process 0 may have finished everything before the kill landed.
        assert!(out.join("features.h5").exists());
    } else {
        assert_eq!(status.code(), Some(1), "{status}");
        let log = std::fs::read_to_string(dir.path().join("p0.log")).unwrap();
        assert!(log.contains("error: a peer process stopped"), "{log}");
    }
}

/// Waits for a process to end, failing the test after `limit`.
fn wait_exit(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("{what} still runs after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Connects to `address` as soon as something listens there.
fn connect_when_listening(address: &str, child: &mut Child) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(s) = TcpStream::connect(address) {
            return s;
        }
        assert!(child.try_wait().unwrap().is_none(), "the process ended before listening on {address}");
        assert!(Instant::now() < deadline, "nothing listens on {address}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Intact records in a spool (none when it does not exist yet).
fn spooled(spool: &Path) -> usize {
    if !spool.exists() {
        return 0;
    }
    locvtp_store::spool::read_records(spool).map(|(r, _)| r.len()).unwrap_or(0)
}

/// A folder of `n` videos and an extraction graph over it.
fn videos_and_graph(dir: &Path, n: usize, seconds: f64) -> (PathBuf, PathBuf) {
    let videos = dir.join("videos");
    std::fs::create_dir_all(&videos).unwrap();
    for i in 0..n {
        make_video(&videos.join(format!("v{i:02}.mp4")), 64, 48, (25, 1), seconds);
    }
    let out = dir.join("out");
    let graph = dir.join("g.toml");
    std::fs::write(&graph, extract_graph(&videos, &out, "")).unwrap();
    (out, graph)
}

#[test]
fn a_cluster_without_a_secret_does_not_start_and_says_how_to_set_one() {
    let dir = tempfile::tempdir().unwrap();
    let (out, graph) = videos_and_graph(dir.path(), 1, 0.3);
    let hosts = loopback_hostfile(dir.path(), 2);
    let first = std::fs::read_to_string(&hosts).unwrap().lines().next().unwrap().to_string();
    let o = flow_command(dir.path(), &["run", graph.to_str().unwrap(), "-q", "-n", "2", "-p", "0"])
        .args(["-H", hosts.to_str().unwrap()])
        .env_remove("LOCVTP_CLUSTER_SECRET")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--secret-file") && err.contains("LOCVTP_CLUSTER_SECRET"), "{err}");
    assert!(TcpStream::connect(&first).is_err(), "nothing listens once the command has returned");
    assert!(!out.exists(), "nothing was started");
    // A secret file that cannot be read is named.
    let missing = dir.path().join("no-such-secret");
    let o = flow_command(dir.path(), &["run", graph.to_str().unwrap(), "-q", "-n", "2", "-p", "0"])
        .args(["-H", hosts.to_str().unwrap(), "--secret-file", missing.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("no-such-secret"), "{err}");
}

#[test]
fn strangers_on_the_cluster_port_are_refused_and_the_run_completes() {
    let dir = tempfile::tempdir().unwrap();
    let (out, graph) = videos_and_graph(dir.path(), 4, 0.7);
    let hosts = loopback_hostfile(dir.path(), 2);
    let port0 = std::fs::read_to_string(&hosts).unwrap().lines().next().unwrap().to_string();
    let args = |p: &'static str| {
        vec![
            "run".to_string(),
            graph.display().to_string(),
            "-q".into(),
            "-n".into(),
            "2".into(),
            "-p".into(),
            p.into(),
            "-H".into(),
            hosts.display().to_string(),
        ]
    };
    let start = |p: &'static str| {
        let args = args(p);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        spawn_flow(dir.path(), &args, &dir.path().join(format!("p{p}.log")))
    };
    let mut first = start("0");
    // Before process 1 starts, strangers reach process 0's port: random
    // bytes, a connection that says nothing and stays open, and one that
    // greets as process 1 but cannot prove the secret.
    let mut noise = connect_when_listening(&port0, &mut first);
    noise.write_all(&[0x5a; 300]).unwrap();
    let silent = TcpStream::connect(&port0).unwrap();
    let mut impostor = TcpStream::connect(&port0).unwrap();
    let mut greeting = b"LOCVTP\x00\x01".to_vec();
    for word in [2u32, 1, 1, 0] {
        greeting.extend_from_slice(&word.to_be_bytes());
    }
    greeting.extend_from_slice(&[7u8; 32]);
    impostor.write_all(&greeting).unwrap();
    let mut answer = [0u8; 56 + 32];
    impostor.read_exact(&mut answer).unwrap();
    assert_eq!(&answer[..6], b"LOCVTP", "process 0 answers a well-formed greeting");
    impostor.write_all(&[0u8; 32]).unwrap();

    let mut second = start("1");
    let s0 = wait_exit(&mut first, Duration::from_secs(300), "process 0");
    let s1 = wait_exit(&mut second, Duration::from_secs(60), "process 1");
    let log0 = std::fs::read_to_string(dir.path().join("p0.log")).unwrap();
    let log1 = std::fs::read_to_string(dir.path().join("p1.log")).unwrap();
    assert!(s0.success() && s1.success(), "{s0} {s1}\n{log0}\n{log1}");
    assert!(log0.contains("not a locvtp-flow process"), "{log0}");
    assert!(log0.contains("did not prove that it knows the cluster secret"), "{log0}");
    assert_eq!(locvtp_store::list_videos(&out.join("features.h5")).unwrap().len(), 4);
    // The strangers were closed, without a verdict for the impostor.
    for (name, mut stream) in [("noise", noise), ("impostor", impostor)] {
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut rest = Vec::new();
        let read = stream.read_to_end(&mut rest);
        assert!(rest.is_empty(), "{name}: {read:?} {rest:?}");
        assert!(!matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock), "{name} was left open");
    }
    drop(silent);
}

#[test]
fn a_process_with_another_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (out, graph) = videos_and_graph(dir.path(), 1, 0.3);
    let hosts = loopback_hostfile(dir.path(), 2);
    let port0 = std::fs::read_to_string(&hosts).unwrap().lines().next().unwrap().to_string();
    let command = |p: &str, timeout: &str| {
        flow_command(dir.path(), &["run", graph.to_str().unwrap(), "-q", "-n", "2", "-p", p])
            .args(["-H", hosts.to_str().unwrap(), "--connect-timeout", timeout])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = command("0", "15");
    connect_when_listening(&port0, &mut first);
    let other = dir.path().join("other-secret");
    std::fs::write(&other, "not-the-cluster-secret-987654321\n").unwrap();
    let intruder = flow_command(dir.path(), &["run", graph.to_str().unwrap(), "-q", "-n", "2", "-p", "1"])
        .args(["-H", hosts.to_str().unwrap(), "--secret-file", other.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&intruder.stderr);
    assert_eq!(intruder.status.code(), Some(1), "{err}");
    assert!(err.contains(&port0) && err.contains("secret"), "{err}");

    let status = wait_exit(&mut first, Duration::from_secs(120), "process 0");
    let mut log = String::new();
    first.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("could not connect to its peers"), "{log}");
    assert!(log.contains("that claimed to be process 1 was refused"), "{log}");
    assert!(!out.join("features.h5").exists());
}

/// Two processes extracting features, stopped by a signal to one of them.
struct SignalledCluster {
    dir: tempfile::TempDir,
    out: PathBuf,
    graph: PathBuf,
    hosts: PathBuf,
}

const SIGNAL_VIDEOS: usize = 12;

impl SignalledCluster {
    fn new() -> SignalledCluster {
        let dir = tempfile::tempdir().unwrap();
        let (out, graph) = videos_and_graph(dir.path(), SIGNAL_VIDEOS, 2.0);
        let hosts = loopback_hostfile(dir.path(), 2);
        SignalledCluster { dir, out, graph, hosts }
    }

    /// One decoder thread and one video in flight, so that videos finish
    /// one after another.
    fn start(&self, p: usize, log: &str) -> Child {
        let (graph, hosts, p) = (self.graph.to_str().unwrap(), self.hosts.to_str().unwrap(), p.to_string());
        let args = ["run", graph, "-q", "-n", "2", "-p", &p, "-H", hosts];
        let set = ["--set", "stages.decode.threads=1", "--set", "run.max_in_flight=1"];
        let args: Vec<&str> = args.iter().chain(set.iter()).copied().collect();
        spawn_flow(self.dir.path(), &args, &self.dir.path().join(log))
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    fn spool(&self) -> PathBuf {
        self.out.join(".features.h5.spool")
    }

    /// Starts both processes, waits until `n` videos are spooled, sends
    /// `signal` to process `target` and returns both exit statuses.
    fn interrupt(&self, n: usize, signal: &str, target: usize) -> [ExitStatus; 2] {
        let mut children = [self.start(0, "p0.log"), self.start(1, "p1.log")];
        let deadline = Instant::now() + Duration::from_secs(300);
        while spooled(&self.spool()) < n {
            for (p, child) in children.iter_mut().enumerate() {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!(
                        "process {p} ended ({status}) before {n} videos were spooled; it must still run to be interrupted\n{}\n{}",
                        self.log("p0.log"),
                        self.log("p1.log")
                    );
                }
            }
            assert!(Instant::now() < deadline, "no progress in the spool");
            std::thread::sleep(Duration::from_millis(10));
        }
        let sent = std::process::Command::new("kill")
            .args([format!("-{signal}"), children[target].id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal}");
        let [mut c0, mut c1] = children;
        [
            wait_exit(&mut c0, Duration::from_secs(120), "process 0"),
            wait_exit(&mut c1, Duration::from_secs(120), "process 1"),
        ]
    }

    /// What an interrupted run leaves: the spool with the finished videos,
    /// no feature file, and a summary that says so.
    fn check_interrupted(&self) -> usize {
        let spooled = spooled(&self.spool());
        assert!((2..SIGNAL_VIDEOS).contains(&spooled), "{spooled} videos spooled");
        assert!(!self.out.join("features.h5").exists(), "an interrupted run assembles no feature file");
        let summary = locvtp_tests::read_summary(&self.out);
        assert_eq!(summary["interrupted"], true, "{summary}");
        assert_eq!(summary["processes"], 2, "{summary}");
        assert_eq!(summary["videos"]["processed"], spooled as u64, "{summary}");
        assert_eq!(summary["videos"]["failed"], 0, "{summary}");
        spooled
    }
}

#[test]
fn sigterm_to_one_process_stops_the_cluster_keeping_finished_work_and_the_same_command_resumes() {
    let c = SignalledCluster::new();
    let statuses = c.interrupt(2, "TERM", 1);
    let (log0, log1) = (c.log("p0.log"), c.log("p1.log"));
    for (p, status) in statuses.iter().enumerate() {
        assert_eq!(status.code(), Some(143), "process {p}: {status}\n{log0}\n{log1}");
    }
    assert!(log1.contains("no new work is started"), "{log1}");
    assert!(log0.contains("process 1 is stopping"), "{log0}");
    assert!(log0.contains("run the same command to resume") && log1.contains("run the same command to resume"));
    let spooled = c.check_interrupted();

    // The same two commands finish the run, computing only what is missing.
    let mut children = [c.start(0, "q0.log"), c.start(1, "q1.log")];
    for (p, child) in children.iter_mut().enumerate() {
        let status = wait_exit(child, Duration::from_secs(300), "a resumed process");
        assert!(status.success(), "process {p}: {status}\n{}", c.log(&format!("q{p}.log")));
    }
    let summary = locvtp_tests::read_summary(&c.out);
    assert_eq!(summary["interrupted"], false, "{summary}");
    assert_eq!(summary["videos"]["skipped"], spooled as u64, "{summary}");
    assert_eq!(summary["videos"]["processed"], (SIGNAL_VIDEOS - spooled) as u64, "{summary}");
    assert!(!c.spool().exists(), "the spool is removed once the feature file is assembled");
    let resumed = features(&c.out);
    assert_eq!(resumed.len(), SIGNAL_VIDEOS);

    // Equal to one uninterrupted worker.
    let single = c.dir.path().join("single");
    let g = c.dir.path().join("single.toml");
    std::fs::write(&g, extract_graph(&c.dir.path().join("videos"), &single, "")).unwrap();
    let o = run_flow(c.dir.path(), &["run", g.to_str().unwrap(), "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(features(&single), resumed, "resumed cluster features differ from one uninterrupted worker");
}

#[test]
fn ctrl_c_to_process_0_stops_the_cluster_with_exit_130_everywhere() {
    let c = SignalledCluster::new();
    let statuses = c.interrupt(2, "INT", 0);
    let (log0, log1) = (c.log("p0.log"), c.log("p1.log"));
    for (p, status) in statuses.iter().enumerate() {
        assert_eq!(status.code(), Some(130), "process {p}: {status}\n{log0}\n{log1}");
    }
    assert!(log1.contains("process 0 is stopping"), "{log1}");
    c.check_interrupted();
}

#[test]
fn sigterm_to_process_0_stops_the_cluster_with_exit_143_everywhere() {
    let c = SignalledCluster::new();
    let statuses = c.interrupt(2, "TERM", 0);
    let (log0, log1) = (c.log("p0.log"), c.log("p1.log"));
    for (p, status) in statuses.iter().enumerate() {
        assert_eq!(status.code(), Some(143), "process {p}: {status}\n{log0}\n{log1}");
    }
    assert!(log0.contains("no new work is started"), "{log0}");
    assert!(log1.contains("process 0 is stopping"), "{log1}");
    c.check_interrupted();
}

#[test]
fn ctrl_c_to_process_1_stops_the_cluster_with_exit_130_everywhere() {
    let c = SignalledCluster::new();
    let statuses = c.interrupt(2, "INT", 1);
    let (log0, log1) = (c.log("p0.log"), c.log("p1.log"));
    for (p, status) in statuses.iter().enumerate() {
        assert_eq!(status.code(), Some(130), "process {p}: {status}\n{log0}\n{log1}");
    }
    assert!(log1.contains("no new work is started"), "{log1}");
    assert!(log0.contains("process 1 is stopping"), "{log0}");
    c.check_interrupted();
}

#[test]
fn the_exchange_benchmark_delivers_the_mean_between_two_processes_next_to_gloo() {
    // A gradient that ends in a partial chunk; each process checks that the
    // mean it assembled is 1.5 at both ends and fails the run otherwise.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench");
    let python = repo().join(".venv/bin/python");
    let o = flow_command(
        dir.path(),
        &["bench", "--exchange", "--exchange-floats", "100003", "--exchange-rounds", "2", "--exchange-pairs", "2"],
    )
    .arg("--python")
    .arg(&python)
    .arg("--out")
    .arg(&out)
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("exchange.json")).unwrap()).unwrap();
    let pairs = report["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 2, "{report}");
    for pair in pairs {
        for side in ["ours_seconds", "gloo_seconds"] {
            let seconds: Vec<f64> = pair[side].as_array().unwrap().iter().filter_map(|v| v.as_f64()).collect();
            assert_eq!(seconds.len(), 2, "{side}: {pair}");
            assert!(seconds.iter().all(|s| *s > 0.0), "{side}: {pair}");
        }
        assert!(pair["ratio"].as_f64().is_some_and(|r| r > 0.0), "{pair}");
    }
    assert!(report["ratio_median"].as_f64().is_some(), "{report}");
    assert!(text.contains("ours / gloo: median"), "{text}");
    // Ratios differ between machines of one core count: the report says
    // which machine it is from.
    let machine = &report["machine"];
    assert!(machine["cores"].as_u64().is_some_and(|n| n >= 1), "{report}");
    assert!(machine["cpu"].as_str().is_some_and(|c| !c.is_empty()), "{report}");
    assert!(machine["kernel"].as_str().is_some_and(|k| !k.is_empty()), "{report}");
}
