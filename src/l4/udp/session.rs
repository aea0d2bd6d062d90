//! The sessions of one udp listener socket: the table from client address to session, and
//! each session's task, which passes the target's answers back and ends the session when it
//! is idle, has answered enough, is closed, or its listener stops.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{Notify, mpsc, watch};

use super::BUFFER;
use crate::health::Outcome;
use crate::observe::udp::UdpListenerMetrics;
use crate::pool::TargetState;
use crate::runtime::{UdpListener, Upstream};

/// Times of activity are kept as milliseconds since this instant, in one atomic.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

/// The most answers passed on in one go, so one busy session cannot hold its worker.
const BATCH: usize = 64;

thread_local! {
    /// The buffer answers are read into, one per worker thread: a session task uses it only
    /// between two awaits, and a worker runs one task at a time.
    static ANSWER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// One flow's session: its socket towards the target.
#[derive(Debug)]
pub(super) struct Session {
    /// Connected to the target.
    socket: UdpSocket,
    /// The target the flow goes to.
    pub(super) target: Arc<TargetState>,
    /// The upstream it was picked from, whose passive checks hear of an unreachable target.
    upstream: Arc<Upstream>,
    /// Last datagram either way, as [`now_ms`].
    last: AtomicU64,
    /// The config generation under which the target was last seen in the listener's upstream.
    checked: AtomicUsize,
    /// Told when the session must end now.
    closed: Notify,
}

impl Session {
    /// A session on `socket` to `target` of `upstream`, as of config generation `snapshot`.
    pub(super) fn new(
        socket: UdpSocket,
        upstream: Arc<Upstream>,
        target: Arc<TargetState>,
        snapshot: usize,
    ) -> Arc<Self> {
        Arc::new(Session {
            socket,
            target,
            upstream,
            last: AtomicU64::new(now_ms()),
            checked: AtomicUsize::new(snapshot),
            closed: Notify::new(),
        })
    }

    /// Records activity now.
    pub(super) fn touch(&self) {
        self.last.store(now_ms(), Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.last.load(Ordering::Relaxed)))
    }

    fn idle_deadline(&self, timeout: Duration) -> tokio::time::Instant {
        let last = *EPOCH + Duration::from_millis(self.last.load(Ordering::Relaxed));
        tokio::time::Instant::from_std(last + timeout)
    }

    /// Whether the flow's next datagram may still take this session under `udp` (of config
    /// generation `snapshot`): its target is still one of the upstream's, and available — or
    /// no other target is.
    pub(super) fn still_fits(&self, udp: &UdpListener, snapshot: usize) -> bool {
        let targets = &udp.upstream.targets;
        if self.checked.load(Ordering::Relaxed) != snapshot {
            if !targets.iter().any(|t| Arc::ptr_eq(t, &self.target)) {
                return false;
            }
            self.checked.store(snapshot, Ordering::Relaxed);
        }
        self.target.health.available()
            || !targets
                .iter()
                .any(|t| !Arc::ptr_eq(t, &self.target) && t.health.available())
    }

    /// Sends a client's datagram to the target.
    pub(super) async fn send(&self, datagram: &[u8]) -> std::io::Result<()> {
        match self.socket.send(datagram).await {
            // The error of an earlier datagram (an ICMP port unreachable) is reported by this
            // send, which then did not send: once more.
            Err(err) if err.kind() == ErrorKind::ConnectionRefused => {
                self.observe(Outcome::Failure);
                self.socket.send(datagram).await.map(drop)
            }
            other => other.map(drop),
        }
    }

    /// Reads the socket's pending error (an ICMP port unreachable wakes it with an error
    /// alone, which a read does not see) and forgets its error readiness.
    fn take_error(&self) {
        if let Ok(Some(err)) = self.socket.take_error()
            && err.kind() == ErrorKind::ConnectionRefused
        {
            self.observe(Outcome::Failure);
        }
        // Only an operation that would block forgets a readiness; this one always does.
        let _ = self.socket.try_io(Interest::ERROR, || {
            Err::<(), _>(ErrorKind::WouldBlock.into())
        });
    }

    /// Tells the upstream's passive checks what the target did: an ICMP port unreachable
    /// counts as a connection that could not be made, an answer as a success.
    fn observe(&self, outcome: Outcome) {
        let Some(policy) = &self.upstream.passive else {
            return;
        };
        if matches!(outcome, Outcome::Success) && self.target.health.clean() {
            return;
        }
        self.upstream.record_outcome(&self.target, policy, outcome);
    }

    /// Ends the session at its task's next poll.
    pub(super) fn close(&self) {
        self.closed.notify_one();
    }
}

/// The sessions of one listener socket, by client address and port.
#[derive(Debug, Default)]
pub(super) struct Table {
    sessions: Mutex<HashMap<SocketAddr, Arc<Session>>>,
}

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<Session>>> {
        // A panic while holding it leaves a map that is still whole.
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The session of `client`'s flow.
    pub(super) fn find(&self, client: SocketAddr) -> Option<Arc<Session>> {
        self.lock().get(&client).cloned()
    }

    /// `client`'s flow now takes `session`.
    pub(super) fn insert(&self, client: SocketAddr, session: Arc<Session>) {
        self.lock().insert(client, session);
    }

    /// Forgets `session`, unless the flow has another one by now.
    fn remove(&self, client: SocketAddr, session: &Arc<Session>) {
        let mut sessions = self.lock();
        if sessions
            .get(&client)
            .is_some_and(|s| Arc::ptr_eq(s, session))
        {
            sessions.remove(&client);
        }
    }

    /// Ends every session.
    pub(super) fn close_all(&self) {
        for (_, session) in self.lock().drain() {
            session.close();
        }
    }
}

/// A session's task: answers back to the client, and the end of the session.
pub(super) struct Reply {
    pub(super) session: Arc<Session>,
    pub(super) client: SocketAddr,
    /// The listener's socket, which answers are sent from.
    pub(super) listener: Arc<UdpSocket>,
    pub(super) table: Arc<Table>,
    pub(super) metrics: UdpListenerMetrics,
    pub(super) timeout: Duration,
    pub(super) responses: Option<u32>,
    pub(super) stopped: watch::Receiver<bool>,
    /// The listener's session count.
    pub(super) open: Arc<AtomicUsize>,
    /// Dropped when the task ends, which the listener waits for.
    pub(super) _alive: mpsc::Sender<std::convert::Infallible>,
}

/// What one pass over the session socket came to.
enum Passed {
    /// Nothing more to read now.
    Drained,
    /// More may be waiting.
    More,
    /// The listener socket's send buffer is full: this answer waits for room.
    Blocked(Vec<u8>),
    /// The session has given its `responses` answers.
    Done,
    /// The session socket failed.
    Failed,
}

impl Reply {
    /// Runs until the session ends, then takes it out of the table and the counts.
    pub(super) async fn run(mut self) {
        let mut answers = 0u32;
        loop {
            let idle_until = self.session.idle_deadline(self.timeout);
            tokio::select! {
                biased;
                _ = self.stopped.changed() => break,
                () = self.session.closed.notified() => break,
                () = tokio::time::sleep_until(idle_until) => {
                    if self.session.idle_for() >= self.timeout {
                        break;
                    }
                }
                // ERROR too: an ICMP port unreachable wakes the socket with an error only.
                ready = self.session.socket.ready(Interest::READABLE | Interest::ERROR) => {
                    let Ok(ready) = ready else {
                        break;
                    };
                    if ready.is_error() {
                        self.session.take_error();
                    }
                    match self.pass_on(&mut answers) {
                        Passed::Drained | Passed::More => {}
                        Passed::Blocked(answer) => {
                            self.send_waiting(&answer).await;
                            if self.responses.is_some_and(|r| answers >= r) {
                                break;
                            }
                        }
                        Passed::Done | Passed::Failed => break,
                    }
                }
            }
        }
        self.table.remove(self.client, &self.session);
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.metrics.active.dec();
        self.session.target.inflight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Passes what the target sent on to the client, without waiting.
    fn pass_on(&self, answers: &mut u32) -> Passed {
        ANSWER.with_borrow_mut(|buf| {
            if buf.len() < BUFFER {
                buf.resize(BUFFER, 0);
            }
            for _ in 0..BATCH {
                let len = match self.session.socket.try_recv(buf) {
                    Ok(len) => len,
                    Err(err) if err.kind() == ErrorKind::WouldBlock => return Passed::Drained,
                    // An ICMP port unreachable for an earlier datagram: that one is lost; the
                    // session stays, unless passive checks take the target out.
                    Err(err) if err.kind() == ErrorKind::ConnectionRefused => {
                        self.session.observe(Outcome::Failure);
                        continue;
                    }
                    Err(err) => {
                        tracing::debug!(client = %self.client, error = %err, "udp session socket failed");
                        return Passed::Failed;
                    }
                };
                self.session.touch();
                self.session.observe(Outcome::Success);
                *answers = answers.saturating_add(1);
                match self.listener.try_send_to(&buf[..len], self.client) {
                    Ok(_) => self.sent(len),
                    Err(err) if err.kind() == ErrorKind::WouldBlock => {
                        return Passed::Blocked(buf[..len].to_vec());
                    }
                    Err(_) => {
                        self.metrics.send_failed.inc();
                    }
                }
                if self.responses.is_some_and(|r| *answers >= r) {
                    return Passed::Done;
                }
            }
            Passed::More
        })
    }

    /// Sends an answer that found the listener's send buffer full, once there is room.
    async fn send_waiting(&self, answer: &[u8]) {
        match self.listener.send_to(answer, self.client).await {
            Ok(_) => self.sent(answer.len()),
            Err(_) => {
                self.metrics.send_failed.inc();
            }
        }
    }

    fn sent(&self, len: usize) {
        self.metrics.datagrams_out.inc();
        self.metrics.bytes_out.inc_by(len as u64);
    }
}
