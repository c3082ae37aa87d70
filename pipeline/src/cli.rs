//! The `locvtp-flow` command line: argument parsing and the commands. The
//! exit code of every failure is decided by [`RunError::exit_code`].

use crate::error::RunError;
use crate::run::{self, Cluster, RunFlags};
use crate::{bench, engine, graph, inspect};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

const EXAMPLES: &str = "\
Examples:
  locvtp-flow demo-data                              # generate the demo videos and narration
  locvtp-flow check graphs/extract.toml              # validate a graph and print its topology
  locvtp-flow run graphs/extract.toml                # clip features of a folder of videos -> HDF5
  locvtp-flow run graphs/extract.toml --set stages.encode.device=cpu --set stages.encode.batch_size=4
  locvtp-flow run graphs/extract.toml -w 2           # two worker threads

  A cluster of processes shares a secret (--secret-file, or LOCVTP_CLUSTER_SECRET):
  (umask 077; openssl rand -hex 32 > ~/.locvtp-secret)
  locvtp-flow run graphs/extract.toml -n 2 -p 0 --secret-file ~/.locvtp-secret &   # two processes on
  locvtp-flow run graphs/extract.toml -n 2 -p 1 --secret-file ~/.locvtp-secret     #   this machine
  locvtp-flow run graphs/extract.toml -n 4 -p 2 -H hosts.txt --secret-file ~/.locvtp-secret   # several machines
  torchrun --nproc-per-node 8 --no-python locvtp-flow run graphs/extract.toml --secret-file ~/.locvtp-secret

Exit codes: 0 the run completed (individual bad items are listed in errors.jsonl),
1 the run failed (an earlier run's output is left as it was), 2 the graph, a path in
it or the cluster's configuration is wrong, the output folder is in use by another
run, or an output to resume holds features of other weights or preprocessing
(nothing was started), 130 stopped by Ctrl-C (143 by SIGTERM), on every process of
a cluster: finished work is kept and the same command resumes; a second Ctrl-C
aborts at once.";

#[derive(Parser)]
#[command(name = "locvtp-flow", version, about, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a graph: `locvtp-flow run graphs/extract.toml`.
    #[command(after_help = EXAMPLES)]
    Run(RunArgs),
    /// Validate a graph and print its stages, types and edges.
    Check(GraphArgs),
    /// Write every intermediate of the losses (V, S, W, A, positives,
    /// negatives, V', each term) for given inputs and draws to safetensors.
    Inspect {
        /// Model configuration (TOML).
        #[arg(long)]
        model: PathBuf,
        /// Weights (safetensors); random initialisation with --seed if absent.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Text encoder folder, for inputs given as token ids.
        #[arg(long)]
        text_encoder: Option<PathBuf>,
        /// Inputs and draws (safetensors); see the module documentation.
        #[arg(long)]
        inputs: PathBuf,
        /// Output file (safetensors).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: i64,
        #[arg(long, default_value_t = 1.0)]
        tau: f64,
        #[arg(long, default_value_t = 1.0)]
        w_splice: f64,
        #[arg(long, default_value_t = 10.0)]
        w_fg: f64,
    },
    /// Decode throughput against FFmpeg's CLI and Python loaders, and
    /// extraction end to end against its decode and encode halves.
    Bench(bench::BenchArgs),
    /// List the stage types: ports, options with defaults, and what each
    /// option means.
    Stages {
        /// Only this stage type.
        name: Option<String>,
    },
    /// Write the deterministic demo set (narrated videos of moving shapes).
    DemoData {
        /// Output folder.
        #[arg(long, default_value = "data/demo")]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Instead of the demo set, a training corpus of this many narrated
        /// videos with the same number of caption clips each (`videos/`,
        /// `narration/`), for measuring how a run scales with the corpus.
        #[arg(long)]
        corpus: Option<usize>,
        /// Scenes (caption clips) per video of a corpus.
        #[arg(long, default_value_t = 15)]
        scenes: usize,
    },
}

#[derive(Args)]
struct GraphArgs {
    /// The graph file (TOML).
    graph: PathBuf,
    /// Override an option: `--set stages.encode.batch_size=64` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    graph: GraphArgs,
    /// Worker threads per process (timely's -w).
    #[arg(short = 'w', long = "threads", default_value_t = 1)]
    threads: usize,
    /// Number of processes (timely's -n) [default: WORLD_SIZE from torchrun,
    /// else SLURM_NTASKS from SLURM, else 1].
    #[arg(short = 'n', long = "processes")]
    processes: Option<usize>,
    /// This process's index, 0..n (timely's -p) [default: RANK from
    /// torchrun, else SLURM_PROCID from SLURM, else 0].
    #[arg(short = 'p', long = "process")]
    process: Option<usize>,
    /// File of `host:port` lines, one per process, the same for every
    /// process (timely's -h); defaults to 127.0.0.1:2101, 2102, ... on
    /// loopback.
    #[arg(short = 'H', long = "hostfile")]
    hostfile: Option<PathBuf>,
    /// File holding the secret that every process of a cluster shares
    /// (readable only by you); without it, the LOCVTP_CLUSTER_SECRET
    /// environment variable. Required with more than one process.
    #[arg(long, value_name = "PATH")]
    secret_file: Option<PathBuf>,
    /// Seconds a process waits for its cluster peers to connect.
    #[arg(long, default_value_t = 60)]
    connect_timeout: u64,
    /// Treat any per-item error as a failure of the run.
    #[arg(long)]
    strict: bool,
    /// No progress display.
    #[arg(long, short = 'q')]
    quiet: bool,
}

/// The log filter and where it came from: `RUST_LOG` as in any Rust
/// program, else `LOCVTP_LOG`, else `info`; an empty variable counts as
/// unset.
fn log_filter(rust_log: Option<String>, locvtp_log: Option<String>) -> (&'static str, String) {
    [("RUST_LOG", rust_log), ("LOCVTP_LOG", locvtp_log)]
        .into_iter()
        .find_map(|(name, value)| value.filter(|v| !v.trim().is_empty()).map(|v| (name, v)))
        .unwrap_or(("the default", "info".to_string()))
}

fn init_logging() {
    let (origin, spec) = log_filter(std::env::var("RUST_LOG").ok(), std::env::var("LOCVTP_LOG").ok());
    let filter = tracing_subscriber::EnvFilter::try_new(&spec).unwrap_or_else(|e| {
        eprintln!("warning: {origin}={spec:?} is not a log filter ({e}); logging at `info`");
        tracing_subscriber::EnvFilter::new("info")
    });
    // Colours only on a terminal: a log written to a file or a pipe stays
    // plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .init();
}

/// A panic is a bug, but a panicking worker thread would leave the others
/// waiting forever for its progress: the process ends with exit code 1, and
/// the processes of a cluster see the connection drop and stop in turn.
/// (Timely's network threads panic when a peer's connection breaks.)
/// Panics that an operator catches (libtorch's errors, which tch reports
/// as panics) pass: the operator fails the run with their message.
fn exit_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if locvtp_operators::panic_is_caught() {
            return;
        }
        default(info);
        let cause = if info.to_string().contains("timely communication error") {
            "a peer process stopped or its connection broke"
        } else {
            "a worker failed"
        };
        eprintln!("error: {cause}; stopping the run");
        // `_exit`, not `exit`: other threads are still inside libtorch and
        // FFmpeg, and running the libraries' exit handlers under them can
        // crash the process instead of ending it with this code.
        unsafe { libc::_exit(1) };
    }));
}

fn report(result: Result<(), RunError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn load_graph(args: &GraphArgs) -> Result<graph::Graph, RunError> {
    graph::load(&args.graph, &args.set).map_err(RunError::Config)
}

/// `locvtp-flow check`: every check of a run, nothing started.
fn check(args: &GraphArgs) -> Result<(), RunError> {
    let graph = load_graph(args)?;
    engine::prepare(&graph, &engine::ClusterShape::single(), engine::Mode::Check)?;
    print!("{}", graph.describe());
    Ok(())
}

/// The cluster of `run`'s flags and of the launcher's environment.
fn cluster_of(args: &RunArgs) -> Result<Cluster, RunError> {
    let usage = |e: String| RunError::Usage(anyhow::anyhow!(e));
    let placed = run::cluster::placement(args.processes, args.process, |k| std::env::var(k).ok()).map_err(usage)?;
    if let Some(launcher) = placed.launcher {
        tracing::info!("process {} of {} (from {launcher}'s environment)", placed.process, placed.processes);
    }
    let secret = if placed.processes > 1 {
        let env = std::env::var_os(run::handshake::SECRET_ENV);
        let secret = run::handshake::ClusterSecret::resolve(args.secret_file.as_deref(), env).map_err(usage)?;
        Some(secret.ok_or_else(|| usage(run::cluster::missing_secret(placed.processes)))?)
    } else {
        None
    };
    let cluster = Cluster {
        threads: args.threads.max(1),
        processes: placed.processes,
        process: placed.process,
        hostfile: args.hostfile.clone(),
        connect_timeout: std::time::Duration::from_secs(args.connect_timeout),
        secret,
    };
    cluster.check().map_err(RunError::Usage)?;
    Ok(cluster)
}

/// `locvtp-flow run`.
fn run_graph(args: &RunArgs) -> Result<(), RunError> {
    let graph = load_graph(&args.graph)?;
    let cluster = cluster_of(args)?;
    exit_on_panic();
    let flags = RunFlags { strict: args.strict, quiet: args.quiet };
    let summary = run::run(&graph, &cluster, &flags)?;
    if cluster.is_first_process() {
        summary.print_table();
        match summary.write(&graph.run.output_dir) {
            Ok(p) => eprintln!("summary: {}", p.display()),
            Err(e) => eprintln!("error: cannot write the summary: {e:#}"),
        }
    }
    summary.outcome(flags.strict, cluster.is_first_process())
}

/// `locvtp-flow stages`: what every stage type takes and emits.
fn list_stages(only: Option<&str>) -> Result<(), RunError> {
    let entries: Vec<_> = engine::StageEntry::all().iter().filter(|e| only.is_none_or(|n| n == e.name)).collect();
    if entries.is_empty() {
        let names: Vec<&str> = engine::StageEntry::all().iter().map(|e| e.name).collect();
        return Err(RunError::Setup(anyhow::anyhow!(
            "no stage type `{}`; the types are: {}",
            only.unwrap_or_default(),
            names.join(", ")
        )));
    }
    for e in entries {
        print!("{}", engine::describe_type(e));
    }
    Ok(())
}

/// Runs the command line.
pub fn main() -> ExitCode {
    locvtp_model::memory::keep_freed_memory();
    init_logging();
    let cli = Cli::parse();
    match cli.command {
        Command::Check(args) => report(check(&args)),
        Command::Stages { name } => report(list_stages(name.as_deref())),
        Command::Inspect { model, checkpoint, text_encoder, inputs, out, seed, tau, w_splice, w_fg } => {
            let args = inspect::InspectArgs {
                model: &model,
                checkpoint: checkpoint.as_deref(),
                text_encoder: text_encoder.as_deref(),
                inputs: &inputs,
                out: &out,
                seed,
                weights: locvtp_model::loss::LossWeights { tau, splice: w_splice, fg: w_fg },
            };
            match inspect::inspect(&args) {
                Ok(n) => {
                    eprintln!("{n} tensors written to {}", out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => report(Err(RunError::Setup(e))),
            }
        }
        Command::Bench(args) => report(bench::main(&args).map_err(RunError::Setup)),
        Command::DemoData { out, seed, corpus: Some(videos), scenes } => {
            match locvtp_media::synth::write_corpus(&out, videos, scenes, seed) {
                Ok(n) => {
                    eprintln!("corpus: {n} narrated videos of {scenes} scenes in {}", out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => report(Err(RunError::Setup(e))),
            }
        }
        Command::DemoData { out, seed, corpus: None, .. } => match locvtp_media::synth::write_demo_set(&out, seed) {
            Ok(m) => {
                eprintln!("demo set: {} videos in {}", m.videos.len(), out.display());
                ExitCode::SUCCESS
            }
            Err(e) => report(Err(RunError::Setup(e))),
        },
        Command::Run(args) => report(run_graph(&args)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn rust_log_comes_before_locvtp_log_and_info_is_the_default() {
        let s = |v: &str| Some(v.to_string());
        assert_eq!(log_filter(s("debug"), s("warn")), ("RUST_LOG", "debug".to_string()));
        assert_eq!(log_filter(None, s("warn")), ("LOCVTP_LOG", "warn".to_string()));
        assert_eq!(log_filter(s(" "), s("warn")), ("LOCVTP_LOG", "warn".to_string()));
        assert_eq!(log_filter(None, None), ("the default", "info".to_string()));
    }

    #[test]
    fn h_is_help_for_every_command_and_capital_h_the_hostfile() {
        Cli::command().debug_assert();
        let names: Vec<String> = Cli::command().get_subcommands().map(|c| c.get_name().to_string()).collect();
        assert!(names.len() >= 6 && names.iter().any(|n| n == "run"), "{names:?}");
        for name in names {
            let err = Cli::try_parse_from(["locvtp-flow", &name, "-h"]).err().unwrap_or_else(|| panic!("{name} -h"));
            assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp, "`{name} -h`: {err}");
        }
        let parsed = Cli::try_parse_from(["locvtp-flow", "run", "g.toml", "-H", "hosts.txt", "-n", "2"]).unwrap();
        let Command::Run(args) = parsed.command else { panic!("not run") };
        assert_eq!(args.hostfile, Some(PathBuf::from("hosts.txt")));
        assert_eq!((args.processes, args.process), (Some(2), None));
    }
}
