//! timely's cluster mode on loopback: two processes write the same single
//! feature file as one worker, and a process whose peers never come up
//! stops with a message instead of hanging.

use locvtp_tests::{extract_graph, loopback_hostfile, make_video, run_cluster, run_flow};
use std::path::Path;
use std::time::Instant;

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
            "-h",
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
                "-h",
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
