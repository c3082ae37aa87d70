//! Helpers shared by the integration tests: the built `locvtp-flow` binary,
//! freshly generated videos, graph files written for a temporary folder, and
//! an independent frame count from ffprobe.

use locvtp_media::synth::{Background, Colour, Motion, Scene, Shape, SynthSpec};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ lives in the repository").to_path_buf()
}

/// The `locvtp-flow` binary the tests drive: `LOCVTP_FLOW_BIN` when set
/// (scripts/portable_check.sh runs the suite against the portable build that
/// way), otherwise the one of the same build as the running test.
pub fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("LOCVTP_FLOW_BIN") {
        let bin = PathBuf::from(bin);
        assert!(bin.exists(), "LOCVTP_FLOW_BIN names {}, which does not exist", bin.display());
        return bin;
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/locvtp-flow
    let bin = exe.parent().and_then(Path::parent).expect("target folder").join("locvtp-flow");
    assert!(bin.exists(), "{} is missing: build it first with `cargo build -p locvtp-flow`", bin.display());
    bin
}

/// The cluster secret of the tests' loopback clusters, given through the
/// environment as a launcher would.
pub const TEST_SECRET: &str = "locvtp-flow-test-secret-0123456789";

/// Variables of the test runner's environment that would change what a
/// command does: the log filter, and a launcher's process count and index
/// (a test run inside a SLURM allocation must not turn into a cluster).
const AMBIENT: [&str; 8] = [
    "RUST_LOG",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "LOCVTP_CLUSTER_SECRET",
];

/// `locvtp-flow ARGS` in `cwd`, logging warnings, with [`TEST_SECRET`]
/// and nothing of the test runner's environment that would change it.
pub fn flow_command(cwd: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(binary());
    command.args(args).current_dir(cwd);
    for var in AMBIENT {
        command.env_remove(var);
    }
    command.env("LOCVTP_LOG", "warn").env("LOCVTP_CLUSTER_SECRET", TEST_SECRET);
    command
}

/// Runs the project's virtualenv Python (scripts/setup.sh installs it) with
/// `args`, panicking with its messages if it fails; returns its stdout.
pub fn python(args: &[&dyn AsRef<OsStr>]) -> String {
    let out = Command::new(repo().join(".venv/bin/python"))
        .args(args.iter().map(|a| a.as_ref()))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("the project's virtualenv python");
    assert!(
        out.status.success(),
        "python {:?}: {}",
        args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The JSON summary a script prints as its last line.
pub fn last_json(stdout: &str) -> serde_json::Value {
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("last line {line:?} is not JSON: {e}"))
}

/// Runs `locvtp-flow ARGS` in `cwd` and returns its output.
pub fn run_flow(cwd: &Path, args: &[&str]) -> Output {
    flow_command(cwd, args).output().expect("run locvtp-flow")
}

/// Starts `locvtp-flow ARGS` in `cwd` without waiting for it; its output
/// goes to `log`.
pub fn spawn_flow(cwd: &Path, args: &[&str], log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("create log file");
    flow_command(cwd, args).stdout(Stdio::null()).stderr(log).spawn().expect("start locvtp-flow")
}

/// `summary.json` of a run's output folder.
pub fn read_summary(out: &Path) -> serde_json::Value {
    let path = out.join("summary.json");
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The lines of a run's `errors.jsonl` (none when the file is absent).
pub fn read_errors(out: &Path) -> Vec<serde_json::Value> {
    match std::fs::read_to_string(out.join("errors.jsonl")) {
        Ok(text) => text.lines().map(|l| serde_json::from_str(l).expect("errors.jsonl line is JSON")).collect(),
        Err(_) => Vec::new(),
    }
}

/// Runs the `ffmpeg` command line quietly, panicking with its messages if
/// it fails.
pub fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
        .args(args)
        .output()
        .expect("ffmpeg is installed by scripts/setup.sh");
    assert!(out.status.success(), "ffmpeg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Runs a Python script with the project's virtualenv (`scripts/setup.sh`
/// installs numpy, h5py and tensorboard there), to read outputs the way users' Python
/// code does; returns its standard output, panicking with its messages if
/// it fails.
pub fn python_script(script: &str, args: &[&Path]) -> String {
    let py = repo().join(".venv/bin/python");
    assert!(py.exists(), "{} is missing: run scripts/setup.sh", py.display());
    let out = Command::new(&py).arg("-c").arg(script).args(args).output().expect("run the virtualenv's python");
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("python prints UTF-8")
}

/// One value ffprobe reports about a video's first video stream, e.g.
/// `stream=pix_fmt` (empty when ffprobe reports nothing).
pub fn ffprobe_value(path: &Path, entry: &str) -> String {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries", entry, "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe is installed by scripts/setup.sh");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A short video with one moving shape.
pub fn make_video(path: &Path, width: u32, height: u32, fps: (i32, i32), seconds: f64) -> u64 {
    let scene = Scene {
        start_s: 0.0,
        end_s: seconds,
        shape: Shape::Circle,
        colour: Colour::Red,
        motion: Motion::Right,
        background: Background::Navy,
    };
    let spec = SynthSpec::new(width, height, fps, seconds, vec![scene]);
    locvtp_media::synth::write_video(&spec, path).expect("write test video")
}

/// Frames in a video's first video stream, counted by ffprobe decoding it:
/// a count that owes nothing to this project's decoder.
pub fn ffprobe_frames(path: &Path) -> u64 {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_frames",
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("ffprobe is installed by scripts/setup.sh");
    let text = String::from_utf8_lossy(&out.stdout);
    // Some files add an empty field after the count ("42,").
    let count = text.trim().trim_end_matches(',');
    count.parse().unwrap_or_else(|e| panic!("{}: ffprobe frame count {text:?}: {e}", path.display()))
}

/// An extraction graph over `videos`, writing to `out`, with the tiny model.
pub fn extract_graph(videos: &Path, out: &Path, extra: &str) -> String {
    format!(
        r#"[run]
output_dir = "{out}"
max_in_flight = 3

[stages.videos]
type = "video_files"
dir = "{videos}"

[stages.decode]
type = "decode"
inputs = ["videos"]
threads = 2

[stages.clips]
type = "dense_clips"
inputs = ["decode"]

[stages.encode]
type = "c3d_encode"
inputs = ["clips"]
model = "{model}"
device = "cpu"
batch_size = 4
{extra}
[stages.write]
type = "hdf5_writer"
inputs = ["encode"]
"#,
        out = out.display(),
        videos = videos.display(),
        model = repo().join("configs/c3d-tiny.toml").display(),
    )
}

/// A hostfile of `n` free loopback ports for a local cluster.
pub fn loopback_hostfile(dir: &Path, n: usize) -> PathBuf {
    let listeners: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port")).collect();
    let lines: Vec<String> =
        listeners.iter().map(|l| format!("127.0.0.1:{}", l.local_addr().unwrap().port())).collect();
    let path = dir.join("hosts.txt");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// Runs the processes of a loopback cluster, one `locvtp-flow run` each,
/// with the secret [`TEST_SECRET`] in their environment, and returns their
/// outputs in process order.
pub fn run_cluster(cwd: &Path, graph: &Path, processes: usize, threads: usize) -> Vec<Output> {
    let hosts = loopback_hostfile(cwd, processes);
    let children: Vec<std::process::Child> = (0..processes)
        .map(|p| {
            flow_command(cwd, &["run", graph.to_str().unwrap(), "-q", "--connect-timeout", "60"])
                .args(["-w", &threads.to_string(), "-n", &processes.to_string(), "-p", &p.to_string()])
                .arg("-H")
                .arg(&hosts)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("start a cluster process")
        })
        .collect();
    children.into_iter().map(|c| c.wait_with_output().expect("cluster process")).collect()
}
