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
