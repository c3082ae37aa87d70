//! The command line's conventions, through the built binary: `-h` is help
//! for every command, the hostfile has a long option and a short one that
//! does not take `-h`, and `RUST_LOG` sets the log level.

use locvtp_tests::{extract_graph, flow_command};
use std::path::Path;
use std::process::Output;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The commands `locvtp-flow -h` lists.
fn commands(cwd: &Path) -> Vec<String> {
    let o = flow_command(cwd, &["-h"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let listed = text.split("Commands:").nth(1).unwrap_or_else(|| panic!("no commands in:\n{text}"));
    listed
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn h_prints_the_help_of_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let names = commands(dir.path());
    for want in ["run", "check", "inspect", "bench", "stages", "demo-data"] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    for name in &names {
        for flag in ["-h", "--help"] {
            let o = flow_command(dir.path(), &[name, flag]).output().unwrap();
            assert_eq!(o.status.code(), Some(0), "`{name} {flag}`: {}", stderr(&o));
            let help = stdout(&o);
            assert!(help.contains(&format!("Usage: locvtp-flow {name}")), "`{name} {flag}`:\n{help}");
        }
    }
    // `run -h` is help even where a hostfile could follow.
    let o = flow_command(dir.path(), &["run", "graph.toml", "-n", "2", "-h"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let help = stdout(&o);
    assert!(help.contains("-H, --hostfile <HOSTFILE>"), "{help}");
}

/// A graph that loads, over an empty folder of videos.
fn graph(dir: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("videos")).unwrap();
    let path = dir.join("extract.toml");
    std::fs::write(&path, extract_graph(&dir.join("videos"), &dir.join("out"), "")).unwrap();
    path
}

#[test]
fn the_hostfile_is_read_with_the_long_and_the_short_option() {
    let dir = tempfile::tempdir().unwrap();
    let graph = graph(dir.path());
    let hosts = dir.path().join("no-such-hosts.txt");
    for flag in ["--hostfile", "-H"] {
        let args = [
            "run",
            graph.to_str().unwrap(),
            "-n",
            "2",
            "-p",
            "0",
            flag,
            hosts.to_str().unwrap(),
            "--connect-timeout",
            "1",
        ];
        let o = flow_command(dir.path(), &args).output().unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{flag}: {err}");
        assert!(err.contains(&format!("{}: cannot read hostfile", hosts.display())), "{flag}: {err}");
    }
}

#[test]
fn rust_log_sets_the_log_level() {
    let dir = tempfile::tempdir().unwrap();
    let graph = graph(dir.path());
    // A torchrun-style environment without a cluster secret: the process
    // logs where its place comes from at info level, then stops (exit 2)
    // before anything starts.
    let run = |rust_log: Option<&str>| {
        let mut command = flow_command(dir.path(), &["run", graph.to_str().unwrap()]);
        command.env("WORLD_SIZE", "2").env("RANK", "0").env_remove("LOCVTP_CLUSTER_SECRET");
        if let Some(filter) = rust_log {
            command.env("RUST_LOG", filter);
        }
        let o = command.output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        stderr(&o)
    };
    let info = "process 0 of 2 (from torchrun's environment)";
    // flow_command logs at LOCVTP_LOG=warn; RUST_LOG comes first.
    assert!(!run(None).contains(info), "{}", run(None));
    let logged = run(Some("info"));
    assert!(logged.contains(info), "{logged}");
    // Written to a pipe, the log has no terminal colours.
    assert!(!logged.contains('\u{1b}'), "{logged:?}");
    let bad = run(Some("=bad["));
    assert!(bad.contains("RUST_LOG=\"=bad[\" is not a log filter"), "{bad}");
}
