//! Timely's own cluster mode: `-w` threads per process, `-n` processes,
//! `-p` this process's index, and a hostfile of `host:port` lines.

use crate::engine::ClusterShape;
use anyhow::{bail, Result};
use std::path::PathBuf;

/// Timely's own cluster options: `-w` threads per process, `-n` processes,
/// `-p` this process's index, `-h` a hostfile of `host:port` lines.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub threads: usize,
    pub processes: usize,
    pub process: usize,
    pub hostfile: Option<PathBuf>,
    /// How long a process waits for its peers before giving up.
    pub connect_timeout: std::time::Duration,
}

impl Cluster {
    /// The cluster as this process sees it. A process's rank on its machine
    /// (which GPUs its workers take) comes from the launcher (`LOCAL_RANK`
    /// from torchrun, `SLURM_LOCALID` from SLURM); without one, processes
    /// on loopback addresses share this machine and rank by index.
    pub fn shape(&self) -> ClusterShape {
        let from_env = ["LOCAL_RANK", "SLURM_LOCALID"]
            .iter()
            .find_map(|k| std::env::var(k).ok().and_then(|v| v.trim().parse::<usize>().ok()));
        let local_rank = from_env.unwrap_or(if self.hostfile.is_none() { self.process } else { 0 });
        ClusterShape { threads: self.threads, processes: self.processes, process: self.process, local_rank }
    }

    pub fn is_first_process(&self) -> bool {
        self.process == 0
    }

    pub fn workers(&self) -> usize {
        self.threads * self.processes
    }

    pub fn addresses(&self) -> Result<Vec<String>> {
        match &self.hostfile {
            None => Ok((0..self.processes).map(|i| format!("127.0.0.1:{}", 2101 + i)).collect()),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("{}: cannot read hostfile: {e}", path.display()))?;
                let hosts: Vec<String> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from)
                    .collect();
                if hosts.len() < self.processes {
                    bail!("{}: {} addresses for -n {}", path.display(), hosts.len(), self.processes);
                }
                Ok(hosts.into_iter().take(self.processes).collect())
            }
        }
    }

    /// Starts timely under a deadline for the cluster to connect: timely
    /// itself retries unreachable peers forever, so a process whose peers
    /// never come up stops with a message naming their addresses instead of
    /// hanging.
    pub fn execute<T, F>(&self, func: F) -> Result<timely::communication::WorkerGuards<T>>
    where
        T: Send + 'static,
        F: Fn(&mut timely::worker::Worker) -> T + Send + Sync + 'static,
    {
        let config = self.timely_config()?;
        let connected = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        if self.processes > 1 {
            let (flag, addresses, timeout) = (connected.clone(), self.addresses()?, self.connect_timeout);
            let me = self.process;
            std::thread::spawn(move || {
                let deadline = std::time::Instant::now() + timeout;
                while std::time::Instant::now() < deadline {
                    if flag.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                if !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    let peers: Vec<String> = addresses
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i != me)
                        .map(|(i, a)| format!("process {i} at {a}"))
                        .collect();
                    eprintln!(
                        "error: process {me} could not connect to its peers within {}s: {} (is every process started, with the same -n and hostfile?)",
                        timeout.as_secs(),
                        peers.join(", ")
                    );
                    std::process::exit(1);
                }
            });
        }
        let guards = timely::execute(config, func).map_err(|e| anyhow::anyhow!("cannot start the workers: {e}"))?;
        connected.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(guards)
    }

    pub fn timely_config(&self) -> Result<timely::Config> {
        use timely::CommunicationConfig;
        if self.process >= self.processes {
            bail!("-p {} is out of range for -n {}", self.process, self.processes);
        }
        let communication = if self.processes > 1 {
            CommunicationConfig::Cluster {
                threads: self.threads,
                process: self.process,
                addresses: self.addresses()?,
                report: false,
                zerocopy: false,
            }
        } else if self.threads > 1 {
            CommunicationConfig::Process(self.threads)
        } else {
            CommunicationConfig::Thread
        };
        Ok(timely::Config { communication, worker: timely::WorkerConfig::default() })
    }
}
