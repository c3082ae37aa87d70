//! Opening the connections of a cluster, in timely's own topology (process
//! `i` connects to every process `j < i` and listens for the others), with
//! the handshake of [`super::handshake`] on each, so that timely is given
//! only connections from processes that proved the cluster's secret.
//!
//! Each incoming connection is answered on its own thread, so a stranger
//! that connects and says nothing delays nobody; strangers are refused with
//! a warning and the listener goes on waiting for the real peer. Outgoing
//! connections are retried until the connect timeout, since peers start in
//! any order.

use super::handshake::{self, ClusterSecret, Failure, Identity, Refusal};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Handshakes answered at once; connections beyond are closed unanswered.
const MAX_PENDING: usize = 64;
/// How often the listener looks for new connections, and the waiting
/// thread for a stop request.
const POLL: Duration = Duration::from_millis(20);
/// The longest pause between two attempts to reach a peer.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// The cluster as one of its processes connects to it.
pub struct Peers<'a> {
    /// `host:port` of every process, by index.
    pub addresses: &'a [String],
    /// Where the addresses come from (a hostfile's path), for messages.
    pub origin: &'a str,
    pub me: Identity,
    pub secret: &'a ClusterSecret,
    /// How long to wait for every peer.
    pub timeout: Duration,
    /// How long one handshake may take.
    pub handshake_timeout: Duration,
}

/// Why the cluster could not be connected.
#[derive(Debug)]
pub enum ConnectError {
    /// `stop` asked to give up (a signal).
    Stopped,
    Failed(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Stopped => write!(f, "stopped while waiting for the cluster's processes to connect"),
            ConnectError::Failed(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for ConnectError {}

enum Event {
    Peer(usize, TcpStream),
    Fatal(String),
}

/// What the threads of one connection attempt share.
struct Shared {
    /// Set once the waiting is over, either way: threads stop trying.
    done: AtomicBool,
    /// Why each peer has not connected yet, for the message at the deadline.
    notes: Mutex<Vec<Option<String>>>,
    /// Peers taken in by the listener: a second process with the same index
    /// is turned away.
    taken: Mutex<Vec<bool>>,
    pending: AtomicUsize,
}

/// What every thread of one process's connection attempt needs.
#[derive(Clone)]
struct Side {
    me: Identity,
    secret: ClusterSecret,
    handshake_timeout: Duration,
    deadline: Instant,
    shared: Arc<Shared>,
    events: Sender<Event>,
}

impl Shared {
    fn note(&self, peer: usize, note: String) {
        self.notes.lock().unwrap_or_else(|e| e.into_inner())[peer] = Some(note);
    }
}

impl Peers<'_> {
    fn describe(&self, peer: usize) -> String {
        format!("process {peer} at {}", self.addresses[peer])
    }
}

/// Connects this process to every other process of the cluster: one
/// authenticated connection per peer, indexed by process, with `None` at
/// this process's own index, as timely's networking takes them. Gives up at
/// the connect timeout naming the peers that are missing, or as soon as
/// `stop()` is true.
pub fn connect(peers: &Peers<'_>, stop: &dyn Fn() -> bool) -> Result<Vec<Option<TcpStream>>, ConnectError> {
    let n = peers.addresses.len();
    let me = peers.me.process;
    let deadline = Instant::now() + peers.timeout;
    let shared = Arc::new(Shared {
        done: AtomicBool::new(false),
        notes: Mutex::new(vec![None; n]),
        taken: Mutex::new(vec![false; n]),
        pending: AtomicUsize::new(0),
    });
    let (events, received) = channel::<Event>();
    let side = Side {
        me: peers.me,
        secret: peers.secret.clone(),
        handshake_timeout: peers.handshake_timeout,
        deadline,
        shared: shared.clone(),
        events: events.clone(),
    };
    if me + 1 < n {
        let address = &peers.addresses[me];
        let listener = TcpListener::bind(address).map_err(|e| {
            ConnectError::Failed(format!(
                "cannot listen on {address}, the address of process {me} in {}: {e}",
                peers.origin
            ))
        })?;
        listener.set_nonblocking(true).map_err(|e| ConnectError::Failed(format!("{address}: {e}")))?;
        let side = side.clone();
        std::thread::Builder::new()
            .name("cluster-listen".into())
            .spawn(move || listen(listener, side))
            .map_err(|e| ConnectError::Failed(format!("cannot start the listener: {e}")))?;
    }
    for peer in 0..me {
        let (side, address) = (side.clone(), peers.addresses[peer].clone());
        std::thread::Builder::new()
            .name(format!("cluster-dial-{peer}"))
            .spawn(move || dial(peer, &address, &side))
            .map_err(|e| ConnectError::Failed(format!("cannot start a connecting thread: {e}")))?;
    }
    drop(side);
    let mut sockets: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
    let mut missing = n - 1;
    let result = loop {
        if missing == 0 {
            break Ok(());
        }
        match received.recv_timeout(POLL) {
            Ok(Event::Peer(peer, stream)) => {
                if sockets[peer].replace(stream).is_none() {
                    missing -= 1;
                }
            }
            Ok(Event::Fatal(message)) => break Err(ConnectError::Failed(message)),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                if stop() {
                    break Err(ConnectError::Stopped);
                }
                if Instant::now() >= deadline {
                    break Err(ConnectError::Failed(missing_peers(peers, &sockets, &shared)));
                }
            }
        }
    };
    shared.done.store(true, Ordering::SeqCst);
    drop(events);
    result.map(|()| sockets)
}

fn missing_peers(peers: &Peers<'_>, sockets: &[Option<TcpStream>], shared: &Shared) -> String {
    let me = peers.me.process;
    let notes = shared.notes.lock().unwrap_or_else(|e| e.into_inner());
    let missing: Vec<String> = (0..sockets.len())
        .filter(|&p| p != me && sockets[p].is_none())
        .map(|p| match &notes[p] {
            Some(note) => format!("{} ({note})", peers.describe(p)),
            None => peers.describe(p),
        })
        .collect();
    format!(
        "process {me} could not connect to its peers within {}s: {} (is every process started, with the same -n, hostfile and secret?)",
        peers.timeout.as_secs(),
        missing.join(", ")
    )
}

/// Takes connections until every higher process is in, or the deadline.
fn listen(listener: TcpListener, side: Side) {
    let shared = &side.shared;
    while !shared.done.load(Ordering::SeqCst) && Instant::now() < side.deadline {
        match listener.accept() {
            Ok((stream, from)) => {
                if shared.pending.load(Ordering::SeqCst) >= MAX_PENDING {
                    tracing::warn!("refused a connection from {from}: {MAX_PENDING} handshakes are already under way");
                    continue;
                }
                shared.pending.fetch_add(1, Ordering::SeqCst);
                let side = side.clone();
                let spawned = std::thread::Builder::new().name("cluster-handshake".into()).spawn(move || {
                    answer(stream, from, &side);
                    side.shared.pending.fetch_sub(1, Ordering::SeqCst);
                });
                if let Err(e) = spawned {
                    shared.pending.fetch_sub(1, Ordering::SeqCst);
                    tracing::warn!("refused a connection from {from}: cannot start its handshake: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(e) => {
                tracing::warn!("accepting a connection: {e}");
                std::thread::sleep(POLL);
            }
        }
    }
}

/// The listening side of one connection.
fn answer(mut stream: TcpStream, from: SocketAddr, side: &Side) {
    // Accepted sockets may inherit the listener's non-blocking mode.
    let prepared = stream.set_nonblocking(false).and_then(|()| stream.set_nodelay(true));
    if let Err(e) = prepared {
        tracing::warn!("refused a connection from {from}: {e}");
        return;
    }
    match handshake::answer(&mut stream, &side.secret, side.me, side.handshake_timeout) {
        Ok(peer) => {
            let mut taken = side.shared.taken.lock().unwrap_or_else(|e| e.into_inner());
            if taken[peer] {
                handshake::refuse_duplicate(&mut stream);
                tracing::warn!(
                    "refused a connection from {from} as process {peer}: process {peer} is already connected (is -p {peer} given to two processes?)"
                );
                return;
            }
            match handshake::accept(&mut stream) {
                Ok(()) => {
                    taken[peer] = true;
                    let _ = side.events.send(Event::Peer(peer, stream));
                }
                Err(e) => tracing::warn!("lost the connection from process {peer} at {from}: {e}"),
            }
        }
        Err(Refusal::Stranger { reason, claimed }) => {
            tracing::warn!("refused a connection from {from}: {reason}");
            if let Some(peer) = claimed {
                side.shared.note(
                    peer,
                    format!("a connection from {from} that claimed to be process {peer} was refused: {reason}"),
                );
            }
        }
        Err(Refusal::Misconfigured(message)) => {
            let _ = side.events.send(Event::Fatal(format!("the process connecting from {from}: {message}")));
        }
    }
}

/// Reaches process `peer` and authenticates, retrying until the deadline.
fn dial(peer: usize, address: &str, side: &Side) {
    let mut pause = Duration::from_millis(50);
    while !side.shared.done.load(Ordering::SeqCst) && Instant::now() < side.deadline {
        match attempt(peer, address, side) {
            Ok(stream) => {
                let _ = side.events.send(Event::Peer(peer, stream));
                return;
            }
            Err(Failure::Fatal(reason)) => {
                let _ = side.events.send(Event::Fatal(format!("process {peer} at {address}: {reason}")));
                return;
            }
            Err(Failure::Retry(reason)) => side.shared.note(peer, reason),
        }
        std::thread::sleep(pause.min(side.deadline.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(MAX_RETRY_PAUSE);
    }
}

fn attempt(peer: usize, address: &str, side: &Side) -> Result<TcpStream, Failure> {
    let targets: Vec<SocketAddr> =
        address.to_socket_addrs().map_err(|e| Failure::Retry(format!("cannot resolve {address}: {e}")))?.collect();
    let mut last = Failure::Retry(format!("{address} resolves to no address"));
    for target in targets {
        let left = side.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut stream = match TcpStream::connect_timeout(&target, left.min(side.handshake_timeout)) {
            Ok(s) => s,
            Err(e) => {
                last = Failure::Retry(e.to_string());
                continue;
            }
        };
        stream.set_nodelay(true).map_err(|e| Failure::Retry(e.to_string()))?;
        match handshake::greet(&mut stream, &side.secret, side.me, peer, side.handshake_timeout) {
            Ok(()) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn secret(s: &str) -> ClusterSecret {
        ClusterSecret::resolve(None, Some(s.into())).unwrap().unwrap()
    }

    fn free_addresses(n: usize) -> Vec<String> {
        let listeners: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        listeners.iter().map(|l| l.local_addr().unwrap().to_string()).collect()
    }

    /// Connects process `process` of `addresses` on its own thread.
    fn start(
        addresses: &[String],
        process: usize,
        secret: ClusterSecret,
        timeout: Duration,
    ) -> std::thread::JoinHandle<Result<Vec<Option<TcpStream>>, ConnectError>> {
        let addresses = addresses.to_vec();
        std::thread::spawn(move || {
            let peers = Peers {
                addresses: &addresses,
                origin: "the test's addresses",
                me: Identity { processes: addresses.len(), threads: 1, process },
                secret: &secret,
                timeout,
                handshake_timeout: Duration::from_secs(2),
            };
            connect(&peers, &|| false)
        })
    }

    /// Connects to `address` as soon as something listens there.
    fn connect_when_listening(address: &str) -> TcpStream {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match TcpStream::connect(address) {
                Ok(s) => return s,
                Err(e) => assert!(Instant::now() < deadline, "{address} never listened: {e}"),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn three_processes_connect_each_pair_once_and_strangers_are_turned_away() {
        let addresses = free_addresses(3);
        let s = secret("a-secret-of-the-test-0123");
        let p0 = start(&addresses, 0, s.clone(), Duration::from_secs(30));
        // Strangers reach process 0 before its peers: noise, and a
        // connection that says nothing and stays open.
        let mut noise = connect_when_listening(&addresses[0]);
        noise.write_all(&[0xAB; 100]).unwrap();
        let silent = TcpStream::connect(&addresses[0]).unwrap();
        let p1 = start(&addresses, 1, s.clone(), Duration::from_secs(30));
        let p2 = start(&addresses, 2, s, Duration::from_secs(30));
        let mut sockets: Vec<Vec<Option<TcpStream>>> =
            [p0, p1, p2].into_iter().map(|h| h.join().unwrap().expect("the cluster connects")).collect();
        for (me, row) in sockets.iter().enumerate() {
            for (peer, socket) in row.iter().enumerate() {
                assert_eq!(socket.is_some(), peer != me, "process {me}, peer {peer}");
            }
        }
        // Each connection links the two processes it claims to: what one
        // end writes, the other end reads.
        for (a, b) in [(0, 1), (0, 2), (1, 2)] {
            let mut from = sockets[a][b].take().unwrap();
            let mut to = sockets[b][a].take().unwrap();
            from.write_all(&[a as u8, b as u8]).unwrap();
            let mut got = [0u8; 2];
            to.read_exact(&mut got).unwrap();
            assert_eq!(got, [a as u8, b as u8]);
        }
        // The noisy stranger was closed without an answer.
        noise.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut reply = Vec::new();
        let read = noise.read_to_end(&mut reply);
        assert!(reply.is_empty(), "{read:?}: {reply:?}");
        drop(silent);
    }

    #[test]
    fn a_peer_with_another_secret_is_refused_and_the_listener_names_it_at_the_deadline() {
        let addresses = free_addresses(2);
        let p0 = start(&addresses, 0, secret("a-secret-of-the-test-0123"), Duration::from_secs(3));
        connect_when_listening(&addresses[0]);
        let p1 = start(&addresses, 1, secret("another-secret-entirely-45"), Duration::from_secs(30));
        let started = Instant::now();
        match p1.join().unwrap() {
            Err(ConnectError::Failed(m)) => {
                assert!(m.contains(&addresses[0]) && m.contains("secret"), "{m}");
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the wrong secret is found at once");
        match p0.join().unwrap() {
            Err(ConnectError::Failed(m)) => {
                assert!(m.contains("process 1 at") && m.contains(&addresses[1]), "{m}");
                assert!(m.contains("that claimed to be process 1 was refused"), "{m}");
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn a_stop_request_ends_the_wait() {
        let addresses = free_addresses(2);
        let peers = Peers {
            addresses: &addresses,
            origin: "the test's addresses",
            me: Identity { processes: 2, threads: 1, process: 1 },
            secret: &secret("a-secret-of-the-test-0123"),
            timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(2),
        };
        let started = Instant::now();
        let asked = Instant::now() + Duration::from_millis(200);
        let result = connect(&peers, &|| Instant::now() >= asked);
        assert!(matches!(result, Err(ConnectError::Stopped)));
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
