//! `locvtp-flow bench --exchange`: the data-parallel gradient exchange of
//! the released model (every parameter that gets a gradient; C3D's unused
//! fc7/fc8 stay home) between two processes on loopback, as training does
//! it (timely exchange: each worker's gradient in shards to their owners,
//! summed in micro-batch order, the mean sent back to every worker), next
//! to torch.distributed's gloo `all_reduce` of as many floats in the same
//! run. A round is timed from the gradient lying flat in memory to every
//! worker holding every chunk of the mean gradient, checked and in order:
//! what training's optimiser step reads (in place, without gathering them
//! into one vector), as gloo's all-reduce leaves its sum in place.

use super::BenchArgs;
use crate::run::handshake::{ClusterSecret, SECRET_ENV};
use crate::run::Cluster;
use anyhow::{bail, Context, Result};
use locvtp_model::train::GradientLayout;
use locvtp_model::{LocVtp, ModelConfig};
use locvtp_operators::accumulate::PerTime;
use locvtp_operators::bulk::{Floats, Unbatched};
use locvtp_operators::samples::StepInfo;
use locvtp_operators::train::exchange::{chunk_range, chunks, reduce, AssembledMean, GradPart, MeanShard};
use serde_json::{json, Value};
use std::cell::RefCell;
use std::path::Path;
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::ExchangeCore;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Probe;
use timely::dataflow::{InputHandle, ProbeHandle};

/// Floats of the released model's gradient (T = 5, D = 256, fc7/fc8 left
/// out).
fn released_gradient_floats() -> usize {
    let cfg = ModelConfig { num_segments: 5, ..ModelConfig::default() };
    let model = LocVtp::new(&cfg, tch::Device::Cpu, 0);
    GradientLayout::of(&model).total
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// One process of the exchange cluster; prints its round times as JSON.
pub(super) fn exchange_process(args: &BenchArgs, process: usize, hosts: &Path) -> Result<()> {
    let secret = ClusterSecret::resolve(None, std::env::var_os(SECRET_ENV)).map_err(anyhow::Error::msg)?;
    let cluster = Cluster {
        threads: 1,
        processes: 2,
        process,
        hostfile: Some(hosts.to_path_buf()),
        connect_timeout: Duration::from_secs(60),
        secret,
    };
    let (floats, rounds) = (args.exchange_floats, args.exchange_rounds);
    let guards = cluster.execute(&|| false, move |worker: &mut timely::worker::Worker| {
        let index = worker.index();
        let mut input = InputHandle::<u64, CapacityContainerBuilder<Unbatched<GradPart>>>::new();
        let probe = ProbeHandle::new();
        let checked = Rc::new(RefCell::new(Vec::new()));
        worker.dataflow::<u64, _, _>(|scope| {
            let sums = checked.clone();
            reduce(input.to_stream(scope), 2)
                .unary_frontier::<CapacityContainerBuilder<Vec<u8>>, _, _, _>(
                    ExchangeCore::new(|m: &MeanShard| u64::from(m.target)),
                    "AssembleMean",
                    move |_, _| {
                        let mut open: PerTime<Vec<MeanShard>> = PerTime::default();
                        move |(input, frontier), _output| {
                            input.for_each(|cap, data| open.entry(&cap).append(data));
                            for (_, shards) in open.drain_complete(frontier) {
                                // What training has before its optimiser step
                                // reads the pieces; the check reads the ends
                                // only, a full pass would be timed too.
                                let outcome = AssembledMean::gather(shards, floats).map(|mean| {
                                    let pieces = mean.pieces();
                                    let ends =
                                        [pieces.first().and_then(|p| p.first()), pieces.last().and_then(|p| p.last())];
                                    ends.iter().all(|v| v.is_some_and(|v| *v == 1.5))
                                });
                                sums.borrow_mut().push(outcome);
                            }
                        }
                    },
                )
                .probe_with(&probe);
        });
        // Worker i's gradient is all i + 1: the mean is 1.5 everywhere.
        let gradient = std::sync::Arc::new(vec![(index + 1) as f32; floats]);
        let mut seconds = Vec::new();
        for round in 0..=rounds as u64 {
            let start = Instant::now();
            for c in 0..chunks(floats) {
                let values = Floats::view(&gradient, chunk_range(floats, c));
                input.send(GradPart {
                    at: StepInfo { step: round, epoch: 0, epoch_end: false, steps_total: rounds as u64 + 1 },
                    part: index as u32,
                    chunk: c as u32,
                    samples: 1,
                    values,
                    terms: Vec::new(),
                });
            }
            input.advance_to(round + 1);
            while probe.less_than(&(round + 1)) {
                worker.step_or_park(None);
            }
            if round > 0 {
                seconds.push(start.elapsed().as_secs_f64());
            }
        }
        let checked = checked.borrow().clone();
        (seconds, checked)
    })?;
    for result in guards.join() {
        let (seconds, checked) = result.map_err(|e| anyhow::anyhow!("{e}"))?;
        for outcome in checked {
            match outcome {
                Ok(true) => {}
                Ok(false) => bail!("the exchange's mean is not 1.5 at both ends"),
                Err(e) => bail!("the exchange delivered {e}"),
            }
        }
        println!("{}", json!({ "process": process, "seconds": seconds }));
    }
    Ok(())
}

/// Our exchange: two processes, `rounds` timed rounds; process 0's times.
fn run_ours(exe: &Path, dir: &Path, floats: usize, rounds: usize) -> Result<Vec<f64>> {
    let hosts = dir.join("exchange-hosts.txt");
    let ports: Vec<u16> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").map(|l| l.local_addr().map(|a| a.port())))
        .collect::<std::io::Result<std::io::Result<Vec<u16>>>>()??;
    std::fs::write(&hosts, ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect::<String>())?;
    // The two processes prove this run's secret to each other.
    let secret: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
    let spawned: Vec<_> = (0..2)
        .map(|p| {
            Command::new(exe)
                .args(["bench", "--exchange-process", &p.to_string()])
                .arg("--exchange-hosts")
                .arg(&hosts)
                .args(["--exchange-floats", &floats.to_string(), "--exchange-rounds", &rounds.to_string()])
                .env(SECRET_ENV, &secret)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
        })
        .collect::<std::io::Result<_>>()?;
    let children: Vec<_> = spawned.into_iter().map(|c| c.wait_with_output()).collect::<std::io::Result<_>>()?;
    let mut reports = Vec::new();
    for (p, out) in children.iter().enumerate() {
        if !out.status.success() {
            bail!("exchange process {p} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or_default();
        let v: Value = serde_json::from_str(line).with_context(|| format!("process {p}: {stdout}"))?;
        reports.push(v);
    }
    Ok(reports[0]["seconds"].as_array().into_iter().flatten().filter_map(Value::as_f64).collect())
}

/// gloo's all-reduce of as many floats: its round times and torch's
/// version, or why it could not run.
fn run_gloo(python: &Path, script: &Path, floats: usize, rounds: usize) -> Result<(Vec<f64>, String), String> {
    let out = Command::new(python)
        .arg(script)
        .args(["--floats", &floats.to_string(), "--rounds", &rounds.to_string()])
        .output()
        .map_err(|e| format!("running {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("").to_string());
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("gloo's report: {e}"))?;
    let seconds = v["seconds"].as_array().into_iter().flatten().filter_map(Value::as_f64).collect();
    Ok((seconds, v["torch"].as_str().unwrap_or("?").to_string()))
}

/// Ours and gloo's, alternately `pairs` times: this machine's load drifts
/// over a run, and a ratio taken within each pair is fairer than one
/// between two blocks minutes apart.
pub(super) fn bench_exchange(args: &BenchArgs) -> Result<Value> {
    let floats = args.exchange_floats_or(released_gradient_floats());
    let (rounds, pairs) = (args.exchange_rounds, args.exchange_pairs.max(1));
    let dir = std::path::absolute(&args.out)?;
    std::fs::create_dir_all(&dir)?;
    println!(
        "gradient exchange, 2 processes on loopback: {floats} floats ({:.0} MB), {pairs} pairs of {rounds} rounds after a warm-up, ours then gloo's",
        floats as f64 * 4.0 / 1e6
    );
    let exe = std::env::current_exe()?;
    let python = super::python_for(args);
    let script = dir.join("gloo_allreduce.py");
    std::fs::write(&script, include_str!("../../../benches/gloo_allreduce.py"))?;
    let (mut ours_all, mut gloo_all, mut pair_reports, mut ratios) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut gloo_missing = None;
    for pair in 0..pairs {
        let ours = run_ours(&exe, &dir, floats, rounds)?;
        let ours_median = median(ours.clone());
        let mut line = format!("  pair {}: locvtp-flow (timely exchange) median {ours_median:.3} s a round", pair + 1);
        let mut report = json!({ "ours_seconds": ours, "ours_median_s": ours_median });
        match run_gloo(&python, &script, floats, rounds) {
            Ok((gloo, torch)) => {
                let gloo_median = median(gloo.clone());
                let ratio = ours_median / gloo_median;
                line += &format!(", gloo all_reduce (torch {torch}) {gloo_median:.3} s: ours / gloo = {ratio:.2}");
                report["gloo_seconds"] = json!(gloo);
                report["gloo_median_s"] = json!(gloo_median);
                report["ratio"] = json!(ratio);
                report["torch"] = json!(torch);
                gloo_all.extend(gloo);
                ratios.push(ratio);
            }
            Err(e) => {
                line += &format!(", gloo unavailable: {e}");
                gloo_missing = Some(e);
            }
        }
        println!("{line}");
        ours_all.extend(ours);
        pair_reports.push(report);
    }
    let mut summary = json!({
        "floats": floats, "rounds": rounds, "processes": 2, "pairs": pair_reports,
        "ours_median_s": median(ours_all),
    });
    if gloo_missing.is_none() {
        let (low, high) = ratios.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), r| (l.min(*r), h.max(*r)));
        let ratio = median(ratios);
        println!("  ours / gloo: median {ratio:.2} over {pairs} pairs (from {low:.2} to {high:.2})");
        summary["gloo_median_s"] = json!(median(gloo_all));
        summary["ratio_median"] = json!(ratio);
        summary["ratio_range"] = json!([low, high]);
    }
    Ok(summary)
}
