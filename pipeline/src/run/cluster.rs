//! Timely's own cluster mode: `-w` threads per process, `-n` processes,
//! `-p` this process's index, and a hostfile of `host:port` lines. The
//! connections between processes are opened and authenticated here
//! ([`super::connect`]) and then handed to timely's networking.

use super::connect::{self, Peers};
use super::handshake::{ClusterSecret, Identity, HANDSHAKE_TIMEOUT, SECRET_ENV};
use crate::engine::ClusterShape;
use anyhow::{bail, Result};
use std::path::PathBuf;

/// Timely's own cluster options: `-w` threads per process, `-n` processes,
/// `-p` this process's index, `-H` a hostfile of `host:port` lines.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub threads: usize,
    pub processes: usize,
    pub process: usize,
    pub hostfile: Option<PathBuf>,
    /// How long a process waits for its peers before giving up.
    pub connect_timeout: std::time::Duration,
    /// What every process proves to the others; required with more than
    /// one process.
    pub secret: Option<ClusterSecret>,
}

/// `-n` and `-p` of this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub processes: usize,
    pub process: usize,
    /// The launcher whose environment gave a value the command line did
    /// not, for the log.
    pub launcher: Option<&'static str>,
}

/// Launchers that start one process per rank, and the variables in which
/// they give the number of processes and each one's index: torchrun first,
/// since under SLURM it may run once per node with several ranks each.
const LAUNCHERS: [(&str, &str, &str); 2] =
    [("torchrun", "WORLD_SIZE", "RANK"), ("SLURM", "SLURM_NTASKS", "SLURM_PROCID")];

/// `-n` and `-p` from the command line where given, else from the
/// environment of a launcher (`env` looks a variable up), else one process.
pub fn placement(
    processes: Option<usize>,
    process: Option<usize>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Placement, String> {
    let number = |key: &str| -> Result<Option<usize>, String> {
        match env(key) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<usize>()
                .map(Some)
                .map_err(|_| format!("{key}={v:?} in the environment is not a process count or index")),
        }
    };
    let launcher = match (processes, process) {
        (Some(_), Some(_)) => None,
        _ => LAUNCHERS.iter().find(|(_, size, _)| env(size).is_some()),
    };
    let (n, p, from) = match launcher {
        None => (processes.unwrap_or(1), process.unwrap_or(0), None),
        Some(&(name, size, rank)) => {
            let n = match processes {
                Some(n) => n,
                None => number(size)?.expect("the launcher was chosen by this variable"),
            };
            let p = match process {
                Some(p) => p,
                None => number(rank)?
                    .ok_or_else(|| format!("{size} is set in the environment but {rank} is not: give -p"))?,
            };
            (n, p, Some(name))
        }
    };
    if n == 0 {
        return Err("a cluster needs at least one process (-n 0)".into());
    }
    if p >= n {
        let source = match from {
            Some(name) => format!(" (from {name}'s environment)"),
            None => String::new(),
        };
        return Err(format!("process index {p} is out of range for {n} processes{source}: -p takes 0..{}", n - 1));
    }
    Ok(Placement { processes: n, process: p, launcher: from })
}

/// What a process of a cluster without a secret is told.
pub fn missing_secret(processes: usize) -> String {
    format!(
        "a cluster of {processes} processes needs a secret shared by its processes, so that nothing else can join it: \
         write one to a file only you can read (`(umask 077; openssl rand -hex 32 > ~/.locvtp-secret)`) and give every \
         process `--secret-file ~/.locvtp-secret`, or set {SECRET_ENV} in every process's environment"
    )
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

    /// Everything about the cluster that can be wrong before any work
    /// starts: the index, the secret and the hostfile.
    pub fn check(&self) -> Result<()> {
        if self.process >= self.processes {
            bail!("-p {} is out of range for -n {}", self.process, self.processes);
        }
        if self.processes > 1 {
            if self.secret.is_none() {
                bail!("{}", missing_secret(self.processes));
            }
            self.addresses()?;
        }
        Ok(())
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

    /// Starts timely's workers. With several processes, the connections to
    /// the peers are opened and authenticated first, under a deadline (a
    /// process whose peers never come up stops with a message naming their
    /// addresses instead of hanging) and until `stop()` is true.
    pub fn execute<T, F>(&self, stop: &dyn Fn() -> bool, func: F) -> Result<timely::communication::WorkerGuards<T>>
    where
        T: Send + 'static,
        F: Fn(&mut timely::worker::Worker) -> T + Send + Sync + 'static,
    {
        use timely::communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;
        use timely::communication::allocator::ProcessBuilder;
        use timely::communication::{AllocatorBuilder, Hooks};
        use timely::CommunicationConfig;

        self.check()?;
        let started = |e: String| anyhow::anyhow!("cannot start the workers: {e}");
        if self.processes == 1 {
            let communication =
                if self.threads > 1 { CommunicationConfig::Process(self.threads) } else { CommunicationConfig::Thread };
            let config = timely::Config { communication, worker: timely::WorkerConfig::default() };
            return timely::execute(config, func).map_err(started);
        }
        let secret = self.secret.as_ref().expect("checked above");
        let addresses = self.addresses()?;
        let origin = match &self.hostfile {
            Some(path) => path.display().to_string(),
            None => "the default loopback addresses (no -H)".to_string(),
        };
        let peers = Peers {
            addresses: &addresses,
            origin: &origin,
            me: Identity { processes: self.processes, threads: self.threads, process: self.process },
            secret,
            timeout: self.connect_timeout,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        };
        let sockets = connect::connect(&peers, stop).map_err(anyhow::Error::new)?;
        let hooks = Hooks::default();
        let local = ProcessBuilder::new_typed_vector(self.threads, hooks.refill.clone(), hooks.spill.clone());
        let (network, guard) = initialize_networking_from_sockets(local, sockets, self.process, self.threads, hooks)
            .map_err(|e| anyhow::anyhow!("cannot start timely's networking: {e}"))?;
        let builders = network.into_iter().map(AllocatorBuilder::Tcp).collect();
        timely::execute::execute_from(builders, Box::new(guard), timely::WorkerConfig::default(), func).map_err(started)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| vars.get(k).cloned()
    }

    fn placed(n: usize, p: usize, launcher: Option<&'static str>) -> Result<Placement, String> {
        Ok(Placement { processes: n, process: p, launcher })
    }

    #[test]
    fn processes_and_index_come_from_the_flags_then_torchrun_then_slurm() {
        let torchrun = [("WORLD_SIZE", "8"), ("RANK", "3"), ("LOCAL_RANK", "3")];
        let slurm = [("SLURM_NTASKS", "16"), ("SLURM_PROCID", "9"), ("SLURM_LOCALID", "1")];
        let both = [("WORLD_SIZE", "4"), ("RANK", "2"), ("SLURM_NTASKS", "2"), ("SLURM_PROCID", "1")];
        assert_eq!(placement(None, None, env(&[])), placed(1, 0, None));
        assert_eq!(placement(None, None, env(&torchrun)), placed(8, 3, Some("torchrun")));
        assert_eq!(placement(None, None, env(&slurm)), placed(16, 9, Some("SLURM")));
        // torchrun inside a SLURM allocation: torchrun's ranks count.
        assert_eq!(placement(None, None, env(&both)), placed(4, 2, Some("torchrun")));
        // Flags win, each on its own.
        assert_eq!(placement(Some(2), Some(1), env(&torchrun)), placed(2, 1, None));
        assert_eq!(placement(None, Some(5), env(&torchrun)), placed(8, 5, Some("torchrun")));
        assert_eq!(placement(Some(12), None, env(&slurm)), placed(12, 9, Some("SLURM")));
        assert_eq!(placement(Some(3), None, env(&[])), placed(3, 0, None));
        // With both flags given, the environment is not read at all.
        assert_eq!(placement(Some(2), Some(0), env(&[("WORLD_SIZE", "many")])), placed(2, 0, None));
    }

    #[test]
    fn a_wrong_launcher_environment_is_named() {
        let e = placement(None, None, env(&[("WORLD_SIZE", "eight"), ("RANK", "0")])).unwrap_err();
        assert!(e.contains("WORLD_SIZE=\"eight\""), "{e}");
        let e = placement(None, None, env(&[("SLURM_NTASKS", "2")])).unwrap_err();
        assert!(e.contains("SLURM_PROCID is not"), "{e}");
        let e = placement(None, None, env(&[("WORLD_SIZE", "2"), ("RANK", "2")])).unwrap_err();
        assert!(e.contains("out of range for 2 processes (from torchrun"), "{e}");
        let e = placement(Some(2), Some(2), env(&[])).unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        assert!(placement(Some(0), None, env(&[])).is_err());
    }

    #[test]
    fn a_cluster_without_a_secret_is_a_configuration_error_that_says_how_to_set_one() {
        let cluster = Cluster {
            threads: 1,
            processes: 2,
            process: 0,
            hostfile: None,
            connect_timeout: std::time::Duration::from_secs(1),
            secret: None,
        };
        let e = format!("{:#}", cluster.check().unwrap_err());
        assert!(e.contains("--secret-file") && e.contains(SECRET_ENV), "{e}");
        let single = Cluster { processes: 1, ..cluster };
        assert!(single.check().is_ok(), "one process needs no secret");
    }
}
