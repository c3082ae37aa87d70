//! Who may join a cluster. Every connection between two processes begins
//! with a mutual challenge-response over a secret that all processes share,
//! before timely reads or writes a byte of it: each side sends a greeting
//! with a fresh random nonce, and each proves that it knows the secret with
//! an HMAC-SHA256 over both greetings (magic and protocol version, cluster
//! size, threads per process, both process indices and both nonces). Fresh
//! nonces on both sides mean that a recorded handshake cannot be replayed,
//! and a different label per side means that one side's proof cannot be
//! reflected back as the other's. Only the start of a connection is
//! authenticated: what follows is neither signed nor encrypted.
//!
//! The process with the higher index connects and speaks first:
//!
//! ```text
//! connector -> listener   greeting (56 bytes)
//! listener  -> connector  greeting (56 bytes), proof (32 bytes)
//! connector -> listener   proof (32 bytes)
//! listener  -> connector  verdict (1 byte): accepted, or already connected
//! ```
//!
//! A greeting is `LOCVTP`, the protocol version (u16), the number of
//! processes, threads per process, the sender's index and the index it
//! addresses (u32 each, big-endian), and a 32-byte nonce. Every read has a
//! deadline, so a connection that says nothing cannot hold the cluster up.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::ffi::OsString;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// The environment variable that may hold the cluster's secret.
pub const SECRET_ENV: &str = "LOCVTP_CLUSTER_SECRET";

/// A secret shorter than this could be guessed offline from one recorded
/// handshake.
const MIN_SECRET_BYTES: usize = 16;

const MAGIC: &[u8; 6] = b"LOCVTP";
/// Raised whenever the handshake changes, so that two builds that cannot
/// talk say so instead of failing in the middle of a run.
const VERSION: u16 = 1;
const NONCE_BYTES: usize = 32;
const PROOF_BYTES: usize = 32;
const GREETING_BYTES: usize = MAGIC.len() + 2 + 4 * 4 + NONCE_BYTES;

const LISTENER_LABEL: &[u8] = b"locvtp-flow cluster handshake: listener";
const CONNECTOR_LABEL: &[u8] = b"locvtp-flow cluster handshake: connector";

const ACCEPTED: u8 = 1;
const ALREADY_CONNECTED: u8 = 2;

/// How long one handshake may take in all. Peers answer within
/// milliseconds; this bounds what a silent or trickling connection costs.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The secret the processes of a cluster share. It never appears in logs
/// or messages, only where it came from.
#[derive(Clone)]
pub struct ClusterSecret {
    key: Vec<u8>,
    origin: String,
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterSecret(from {})", self.origin)
    }
}

impl ClusterSecret {
    /// The secret of `--secret-file`, else of [`SECRET_ENV`] (`env` is that
    /// variable's value), else none. Surrounding whitespace (the newline of
    /// `openssl rand -hex 32 > file`) is not part of the secret.
    pub fn resolve(file: Option<&Path>, env: Option<OsString>) -> Result<Option<ClusterSecret>, String> {
        if let Some(path) = file {
            let bytes = std::fs::read(path)
                .map_err(|e| format!("{}: cannot read the cluster secret (--secret-file): {e}", path.display()))?;
            warn_if_others_can_read(path);
            return ClusterSecret::new(&bytes, path.display().to_string()).map(Some);
        }
        match env {
            Some(value) => ClusterSecret::new(value.as_encoded_bytes(), SECRET_ENV.to_string()).map(Some),
            None => Ok(None),
        }
    }

    fn new(bytes: &[u8], origin: String) -> Result<ClusterSecret, String> {
        let key = bytes.trim_ascii();
        if key.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "{origin}: the cluster secret has {} bytes; use at least {MIN_SECRET_BYTES}, e.g. the output of `openssl rand -hex 32`",
                key.len()
            ));
        }
        Ok(ClusterSecret { key: key.to_vec(), origin })
    }

    /// Where the secret came from: a file's path or the variable's name.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    fn proof(&self, label: &[u8], connector: &[u8; GREETING_BYTES], listener: &[u8; GREETING_BYTES]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(label);
        mac.update(connector);
        mac.update(listener);
        mac
    }
}

type HmacSha256 = Hmac<Sha256>;

/// A secret file that others can read is a secret that others know: said
/// once, not refused, since some shared file systems report modes that do
/// not apply.
fn warn_if_others_can_read(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "{}: the cluster secret is readable by other users (mode {mode:03o}); `chmod 600 {}` keeps it yours",
                path.display(),
                path.display()
            );
        }
    }
}

/// This process's place in the cluster, as every greeting states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub processes: usize,
    pub threads: usize,
    pub process: usize,
}

/// One side's greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Greeting {
    processes: u32,
    threads: u32,
    from: u32,
    to: u32,
    nonce: [u8; NONCE_BYTES],
}

impl Greeting {
    fn new(me: Identity, to: u32) -> Greeting {
        Greeting {
            processes: me.processes as u32,
            threads: me.threads as u32,
            from: me.process as u32,
            to,
            nonce: rand::random(),
        }
    }

    fn encode(&self) -> [u8; GREETING_BYTES] {
        let mut out = [0u8; GREETING_BYTES];
        out[..6].copy_from_slice(MAGIC);
        out[6..8].copy_from_slice(&VERSION.to_be_bytes());
        for (i, v) in [self.processes, self.threads, self.from, self.to].iter().enumerate() {
            out[8 + 4 * i..12 + 4 * i].copy_from_slice(&v.to_be_bytes());
        }
        out[24..].copy_from_slice(&self.nonce);
        out
    }

    fn decode(bytes: &[u8; GREETING_BYTES]) -> Result<Greeting, String> {
        if &bytes[..6] != MAGIC {
            return Err("it is not a locvtp-flow process (wrong greeting)".into());
        }
        let version = u16::from_be_bytes([bytes[6], bytes[7]]);
        if version != VERSION {
            return Err(format!(
                "it speaks version {version} of the cluster handshake and this build version {VERSION}: run the same locvtp-flow build on every machine"
            ));
        }
        let word = |i: usize| u32::from_be_bytes(bytes[8 + 4 * i..12 + 4 * i].try_into().expect("4 bytes"));
        let mut nonce = [0u8; NONCE_BYTES];
        nonce.copy_from_slice(&bytes[24..]);
        Ok(Greeting { processes: word(0), threads: word(1), from: word(2), to: word(3), nonce })
    }

    /// What differs between two authenticated processes' views of the
    /// cluster, if anything.
    fn mismatch(&self, me: Identity) -> Option<String> {
        (self.processes as usize != me.processes || self.threads as usize != me.threads).then(|| {
            format!(
                "it runs with -n {} -w {} and this process with -n {} -w {}: every process of a cluster needs the same -n and -w",
                self.processes, self.threads, me.processes, me.threads
            )
        })
    }
}

/// Why the listening side did not take a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not a peer of this cluster (silence, garbage, a wrong secret): the
    /// connection is closed and the listener goes on waiting. `claimed` is
    /// the process it said it was, when that is a valid index.
    Stranger { reason: String, claimed: Option<usize> },
    /// A process that knows the secret but sees the cluster differently
    /// (another -n, -w or hostfile): the run cannot start.
    Misconfigured(String),
}

/// Why the connecting side did not get through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Worth another attempt until the connect timeout: nobody listening
    /// yet, or the connection dropped.
    Retry(String),
    /// The address answers, but not as this cluster's peer: the run cannot
    /// start.
    Fatal(String),
}

/// The listening side of a handshake on a fresh connection. On success the
/// peer has proved the secret and agrees on the cluster; the caller then
/// sends the verdict with [`accept`] or [`refuse_duplicate`].
/// `timeout` bounds the whole exchange ([`HANDSHAKE_TIMEOUT`] in a run).
pub fn answer(
    stream: &mut TcpStream,
    secret: &ClusterSecret,
    me: Identity,
    timeout: Duration,
) -> Result<usize, Refusal> {
    let deadline = Instant::now() + timeout;
    let silence = |e: &io::Error, what: &str| silence(e, what, timeout);
    let stranger = |reason: String, claimed: Option<usize>| Refusal::Stranger { reason, claimed };
    let mut theirs_bytes = [0u8; GREETING_BYTES];
    read_by(stream, &mut theirs_bytes, deadline).map_err(|e| stranger(silence(&e, "greeting"), None))?;
    let theirs = Greeting::decode(&theirs_bytes).map_err(|reason| stranger(reason, None))?;
    let claimed = theirs.from as usize;
    let claimed = (claimed > me.process && claimed < me.processes).then_some(claimed);
    let mine = Greeting::new(me, theirs.from).encode();
    let mut reply = [0u8; GREETING_BYTES + PROOF_BYTES];
    reply[..GREETING_BYTES].copy_from_slice(&mine);
    reply[GREETING_BYTES..]
        .copy_from_slice(&secret.proof(LISTENER_LABEL, &theirs_bytes, &mine).finalize().into_bytes());
    write_by(stream, &reply, deadline).map_err(|e| stranger(format!("cannot answer it: {e}"), claimed))?;
    let mut proof = [0u8; PROOF_BYTES];
    read_by(stream, &mut proof, deadline).map_err(|e| {
        let reason = match e.kind() {
            io::ErrorKind::UnexpectedEof => {
                "it closed the connection instead of proving the cluster secret (a process with a different secret does that)"
                    .to_string()
            }
            _ => silence(&e, "proof of the cluster secret"),
        };
        stranger(reason, claimed)
    })?;
    if secret.proof(CONNECTOR_LABEL, &theirs_bytes, &mine).verify_slice(&proof).is_err() {
        return Err(stranger("it did not prove that it knows the cluster secret".into(), claimed));
    }
    if let Some(m) = theirs.mismatch(me) {
        return Err(Refusal::Misconfigured(m));
    }
    match claimed {
        Some(peer) if theirs.to as usize == me.process => Ok(peer),
        _ => Err(Refusal::Misconfigured(format!(
            "it connected as process {} to process {}, but this is process {} and only processes {}..{} connect to it: does every process use the same hostfile and a different -p?",
            theirs.from,
            theirs.to,
            me.process,
            me.process + 1,
            me.processes
        ))),
    }
}

/// Tells an authenticated peer that it is in; the connection is then
/// timely's, so the handshake's timeouts are lifted.
pub fn accept(stream: &mut TcpStream) -> io::Result<()> {
    write_by(stream, &[ACCEPTED], Instant::now() + HANDSHAKE_TIMEOUT)?;
    hand_over(stream)
}

/// Tells an authenticated peer that a process with its index is already
/// connected.
pub fn refuse_duplicate(stream: &mut TcpStream) {
    let _ = write_by(stream, &[ALREADY_CONNECTED], Instant::now() + HANDSHAKE_TIMEOUT);
}

/// The connecting side of a handshake with process `to`. On success the
/// connection is ready for timely.
pub fn greet(
    stream: &mut TcpStream,
    secret: &ClusterSecret,
    me: Identity,
    to: usize,
    timeout: Duration,
) -> Result<(), Failure> {
    let deadline = Instant::now() + timeout;
    let silence = |e: &io::Error, what: &str| silence(e, what, timeout);
    let mine = Greeting::new(me, to as u32).encode();
    write_by(stream, &mine, deadline).map_err(|e| Failure::Retry(format!("cannot greet it: {e}")))?;
    let mut reply = [0u8; GREETING_BYTES + PROOF_BYTES];
    read_by(stream, &mut reply, deadline).map_err(|e| Failure::Retry(silence(&e, "answer")))?;
    let theirs_bytes: [u8; GREETING_BYTES] = reply[..GREETING_BYTES].try_into().expect("greeting length");
    let theirs = Greeting::decode(&theirs_bytes).map_err(Failure::Fatal)?;
    if secret.proof(LISTENER_LABEL, &mine, &theirs_bytes).verify_slice(&reply[GREETING_BYTES..]).is_err() {
        return Err(Failure::Fatal(format!(
            "it did not prove that it knows the cluster secret of this process (from {}): every process needs the same secret",
            secret.origin()
        )));
    }
    let proof = secret.proof(CONNECTOR_LABEL, &mine, &theirs_bytes).finalize().into_bytes();
    write_by(stream, &proof, deadline).map_err(|e| Failure::Retry(format!("cannot send the proof: {e}")))?;
    if let Some(m) = theirs.mismatch(me) {
        return Err(Failure::Fatal(m));
    }
    if theirs.from as usize != to || theirs.to as usize != me.process {
        return Err(Failure::Fatal(format!(
            "it answered as process {}, where this process's hostfile has process {to}: does every process use the same hostfile?",
            theirs.from
        )));
    }
    let mut verdict = [0u8; 1];
    read_by(stream, &mut verdict, deadline).map_err(|e| Failure::Retry(silence(&e, "verdict")))?;
    match verdict[0] {
        ACCEPTED => hand_over(stream).map_err(|e| Failure::Retry(e.to_string())),
        ALREADY_CONNECTED => Err(Failure::Fatal(format!(
            "it already has a process {} connected: is -p {} given to two processes?",
            me.process, me.process
        ))),
        other => Err(Failure::Fatal(format!("it answered the handshake with an unknown verdict {other}"))),
    }
}

/// Timely expects blocking sockets without timeouts.
fn hand_over(stream: &mut TcpStream) -> io::Result<()> {
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    stream.set_nonblocking(false)
}

fn silence(e: &io::Error, what: &str, timeout: Duration) -> String {
    match e.kind() {
        io::ErrorKind::TimedOut => format!("it sent no {what} within {:.1}s", timeout.as_secs_f64()),
        io::ErrorKind::UnexpectedEof => format!("it closed the connection before its {what}"),
        _ => format!("reading its {what}: {e}"),
    }
}

/// Fills `buf` from the stream by `deadline`, reading exactly what is asked
/// so that nothing of timely's first bytes is consumed.
fn read_by(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        stream.set_read_timeout(Some(left(deadline)?))?;
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(io::ErrorKind::TimedOut.into()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn write_by(stream: &mut TcpStream, bytes: &[u8], deadline: Instant) -> io::Result<()> {
    stream.set_write_timeout(Some(left(deadline)?))?;
    stream.write_all(bytes).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock => io::ErrorKind::TimedOut.into(),
        _ => e,
    })
}

/// Time left until `deadline`; a zero timeout would mean none at all.
fn left(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::ErrorKind::TimedOut.into())
    } else {
        Ok(left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn secret(s: &str) -> ClusterSecret {
        ClusterSecret::new(s.as_bytes(), "test".into()).unwrap()
    }

    fn identity(process: usize) -> Identity {
        Identity { processes: 2, threads: 1, process }
    }

    const TIMEOUT: Duration = Duration::from_secs(5);

    /// Runs the listening side on one end of a loopback connection and
    /// `connector` on the other; returns both results and, if the listener
    /// took the connection, its end. A refused connection is closed before
    /// the connector's result is awaited, as the listener of a run does.
    fn pair<T: Send + 'static>(
        listener_secret: ClusterSecret,
        listener_me: Identity,
        timeout: Duration,
        connector: impl FnOnce(TcpStream) -> T + Send + 'static,
    ) -> (Result<usize, Refusal>, T, Option<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || connector(TcpStream::connect(addr).unwrap()));
        let (mut stream, _) = listener.accept().unwrap();
        let answered = answer(&mut stream, &listener_secret, listener_me, timeout);
        let kept = match answered {
            Ok(_) => {
                accept(&mut stream).unwrap();
                Some(stream)
            }
            Err(_) => {
                drop(stream);
                None
            }
        };
        (answered, client.join().unwrap(), kept)
    }

    #[test]
    fn peers_with_one_secret_authenticate_and_the_connection_then_carries_data() {
        let (answered, (greeted, mut client), server) =
            pair(secret("0123456789abcdef-one"), identity(0), TIMEOUT, |mut s: TcpStream| {
                let r = greet(&mut s, &secret("0123456789abcdef-one"), identity(1), 0, TIMEOUT);
                (r, s)
            });
        assert_eq!(answered, Ok(1));
        assert_eq!(greeted, Ok(()));
        // Nothing of the handshake is left unread, and no timeout remains.
        client.write_all(b"timely").unwrap();
        let mut server = server.expect("the listener keeps an authenticated connection");
        let mut got = [0u8; 6];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"timely");
        assert_eq!(server.read_timeout().unwrap(), None);
        assert_eq!(client.read_timeout().unwrap(), None);
    }

    #[test]
    fn different_secrets_are_refused_on_both_sides() {
        let (answered, greeted, _) = pair(secret("0123456789abcdef-one"), identity(0), TIMEOUT, |mut s: TcpStream| {
            greet(&mut s, &secret("0123456789abcdef-two"), identity(1), 0, TIMEOUT)
        });
        match answered {
            Err(Refusal::Stranger { reason, claimed: Some(1) }) => assert!(reason.contains("secret"), "{reason}"),
            other => panic!("{other:?}"),
        }
        match greeted {
            Err(Failure::Fatal(reason)) => assert!(reason.contains("secret"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn random_bytes_are_refused_without_an_answer() {
        let (answered, reply, _) = pair(secret("0123456789abcdef-one"), identity(0), TIMEOUT, |mut s: TcpStream| {
            let noise: Vec<u8> = (0..200u32).map(|i| (i * 37 % 251) as u8).collect();
            s.write_all(&noise).unwrap();
            let mut reply = Vec::new();
            let _ = s.read_to_end(&mut reply);
            reply
        });
        match answered {
            Err(Refusal::Stranger { reason, claimed: None }) => {
                assert!(reason.contains("not a locvtp-flow"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert!(reply.is_empty(), "a stranger learns nothing: {} bytes came back", reply.len());
    }

    #[test]
    fn a_replayed_proof_does_not_authenticate() {
        // A stranger who recorded a real connector's greeting and proof
        // sends them again: the listener's fresh nonce changes what the
        // proof must be.
        let s = secret("0123456789abcdef-one");
        let (recorded_greeting, recorded_proof) = {
            let (_, (greeting, proof), _) = pair(s.clone(), identity(0), TIMEOUT, {
                let s = s.clone();
                move |mut stream: TcpStream| {
                    let mine = Greeting::new(identity(1), 0).encode();
                    stream.write_all(&mine).unwrap();
                    let mut reply = [0u8; GREETING_BYTES + PROOF_BYTES];
                    stream.read_exact(&mut reply).unwrap();
                    let theirs: [u8; GREETING_BYTES] = reply[..GREETING_BYTES].try_into().unwrap();
                    let proof = s.proof(CONNECTOR_LABEL, &mine, &theirs).finalize().into_bytes();
                    stream.write_all(&proof).unwrap();
                    (mine, proof.to_vec())
                }
            });
            (greeting, proof)
        };
        let (answered, _, _) = pair(s, identity(0), TIMEOUT, move |mut stream: TcpStream| {
            stream.write_all(&recorded_greeting).unwrap();
            let mut reply = [0u8; GREETING_BYTES + PROOF_BYTES];
            stream.read_exact(&mut reply).unwrap();
            stream.write_all(&recorded_proof).unwrap();
        });
        assert!(matches!(answered, Err(Refusal::Stranger { claimed: Some(1), .. })), "{answered:?}");
    }

    #[test]
    fn a_silent_connection_is_refused_after_the_handshake_timeout() {
        let timeout = Duration::from_millis(300);
        let started = Instant::now();
        let (answered, _, _) = pair(secret("0123456789abcdef-one"), identity(0), timeout, |s: TcpStream| {
            // Holds the connection open, saying nothing, until the
            // listener gives up and closes it.
            let mut s = s;
            let mut buf = [0u8; 1];
            let _ = s.read(&mut buf);
        });
        match answered {
            Err(Refusal::Stranger { reason, .. }) => assert!(reason.contains("sent no greeting"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let waited = started.elapsed();
        assert!(waited >= timeout && waited < TIMEOUT, "{waited:?}");
    }

    #[test]
    fn an_authenticated_peer_with_another_cluster_size_is_a_configuration_error() {
        let (answered, greeted, _) = pair(secret("0123456789abcdef-one"), identity(0), TIMEOUT, |mut s: TcpStream| {
            greet(
                &mut s,
                &secret("0123456789abcdef-one"),
                Identity { processes: 3, threads: 1, process: 1 },
                0,
                TIMEOUT,
            )
        });
        assert!(matches!(&answered, Err(Refusal::Misconfigured(m)) if m.contains("-n 3")), "{answered:?}");
        assert!(matches!(&greeted, Err(Failure::Fatal(m)) if m.contains("-n 2")), "{greeted:?}");
    }

    #[test]
    fn secrets_come_from_the_file_before_the_environment_and_must_be_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "from-the-file-0123456789\n").unwrap();
        let env = Some(OsString::from("from-the-environment-0123"));
        let s = ClusterSecret::resolve(Some(&file), env.clone()).unwrap().unwrap();
        assert_eq!(s.key, b"from-the-file-0123456789");
        assert_eq!(s.origin(), file.display().to_string());
        let s = ClusterSecret::resolve(None, env).unwrap().unwrap();
        assert_eq!(s.key, b"from-the-environment-0123");
        assert_eq!(s.origin(), SECRET_ENV);
        assert!(ClusterSecret::resolve(None, None).unwrap().is_none());
        let short = ClusterSecret::resolve(None, Some(OsString::from("short"))).unwrap_err();
        assert!(short.contains(SECRET_ENV) && short.contains("at least 16"), "{short}");
        let missing = ClusterSecret::resolve(Some(&dir.path().join("absent")), None).unwrap_err();
        assert!(missing.contains("absent") && missing.contains("cannot read"), "{missing}");
        assert!(!format!("{s:?}").contains("environment-0123"), "the secret stays out of messages");
    }
}
