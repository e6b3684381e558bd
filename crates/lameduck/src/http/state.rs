//! One connection's state, as its requests, its timer and the drain see it: whether a request
//! has begun, what the client has read so far (the HTTP/2 preface, a request head's start),
//! when its last request ended, why it closed. Written by the connection's reads and its
//! requests, read by the drain rules in `connection`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::drain::Drain;
use crate::http::clock;
use crate::http::shared::Protocols;
use crate::http::timeouts::Snapshot;
use crate::metrics::{Closed, RequestEnd};

/// How long after its accept a connection that has sent nothing yet may still deliver its first
/// request once the drain has begun: a client that connected just before the drain is most
/// likely sending it. Older silent connections are closed at once.
pub(crate) const FIRST_REQUEST_GRACE: Duration = Duration::from_millis(50);

/// How long after its last response an idle HTTP/1.1 keep-alive connection may still deliver
/// its next request once the drain has begun: a busy client sends it at once, and closing the
/// connection under it would reset it (the keep-alive race). That request is served, with
/// `Connection: close`. Connections idle for longer are closed at once.
pub(crate) const KEEP_ALIVE_GRACE: Duration = Duration::from_millis(50);

/// How long a connection with no request in flight gets, once told to shut down (at the drain:
/// counted from its last response), to close by itself (an HTTP/2 client acknowledging the
/// GOAWAY) before it is closed.
pub(crate) const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// One connection, as its requests and the drain see it.
#[derive(Debug)]
pub(crate) struct ConnState {
    drain: Drain,
    /// The client's address and the server's name, for what is logged about a request.
    peer: SocketAddr,
    service: Arc<str>,
    /// Set at the first request: until then, the drain may close the connection at once.
    request_seen: AtomicBool,
    /// Requests in flight on this connection (HTTP/2 runs several at once).
    active: AtomicUsize,
    /// Set by the drain: the socket's next read goes to the kernel at once (see `ConnIo`).
    read_now: AtomicBool,
    /// Set when a response switches protocols: the socket is about to leave hyper for the
    /// handler's task, which the lifecycle cannot abort.
    upgraded: AtomicBool,
    /// Every byte read so far is the HTTP/2 preface's (and at least one has come).
    h2: AtomicBool,
    /// Bytes came after the preface (the client's SETTINGS, at least its frame's start).
    past_preface: AtomicBool,
    /// The versions the server speaks.
    protocols: Protocols,
    /// Bytes read so far, up to the length of the HTTP/2 preface (it is all that matters).
    prefix_read: AtomicUsize,
    /// A write is waiting for the peer to take data: a response is still on its way out.
    write_blocked: AtomicBool,
    /// When it was accepted (its timers count from it).
    born: Instant,
    /// The same on the coarse clock: what [`last_end_us`](Self::last_end_us) and
    /// [`head_began_us`](Self::head_began_us) count from.
    born_us: u64,
    /// When the last request ended, in microseconds since `born_us` (`u64::MAX`: none yet).
    last_end_us: AtomicU64,
    /// HTTP/1: no request since the last one ended; the next bytes read begin a head.
    between: AtomicBool,
    /// HTTP/1: when the first byte of the coming request head was read, in microseconds since
    /// `born_us` (`u64::MAX`: none is coming).
    head_began_us: AtomicU64,
    /// Why it closed, once known (a [`Closed`]; 0: not said, which at the drop means the
    /// deadline cut it if it has passed, else the client closed it).
    closed: AtomicU8,
    /// Its maximum age (since `born`), if the server has one.
    age: Option<Duration>,
    /// Set once it has reached that age: it is going (an HTTP/1 response says
    /// `Connection: close`).
    aged: AtomicBool,
    /// Cancelled once its age's grace is over: what it still carries ends (gRPC: UNAVAILABLE).
    /// Made only with a maximum age.
    age_cut: Option<CancellationToken>,
    /// The chain the client presented in its TLS handshake.
    #[cfg(feature = "tls")]
    peer_certificates: std::sync::OnceLock<crate::http::tls::PeerCertificates>,
}

/// The HTTP/2 client preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Its length.
const H2_PREFACE_LEN: usize = H2_PREFACE.len();

impl ConnState {
    pub(crate) fn new(
        drain: Drain,
        protocols: Protocols,
        peer: SocketAddr,
        service: Arc<str>,
        age: Option<Duration>,
    ) -> Self {
        ConnState {
            age,
            aged: AtomicBool::new(false),
            age_cut: age.map(|_| CancellationToken::new()),
            drain,
            peer,
            service,
            protocols,
            past_preface: AtomicBool::new(false),
            request_seen: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            read_now: AtomicBool::new(false),
            upgraded: AtomicBool::new(false),
            h2: AtomicBool::new(false),
            prefix_read: AtomicUsize::new(0),
            write_blocked: AtomicBool::new(false),
            born: Instant::now(),
            born_us: clock::now_us(),
            last_end_us: AtomicU64::new(u64::MAX),
            between: AtomicBool::new(true),
            head_began_us: AtomicU64::new(u64::MAX),
            closed: AtomicU8::new(0),
            #[cfg(feature = "tls")]
            peer_certificates: std::sync::OnceLock::new(),
        }
    }

    /// Says why the connection closes (for the metrics).
    #[inline]
    pub(crate) fn close_as(&self, reason: Closed) {
        self.closed.store(reason as u8, Ordering::Relaxed);
    }

    /// Why it closes when the drain ends it gracefully (past the deadline, what is still
    /// open ends because the deadline cut its work).
    pub(crate) fn drained(&self) -> Closed {
        if self.drain.is_deadline_passed() {
            Closed::Deadline
        } else if self.is_h2() {
            Closed::GoAway
        } else {
            Closed::AfterResponse
        }
    }

    /// Notes the chain the client presented in its TLS handshake.
    #[cfg(feature = "tls")]
    pub(crate) fn set_peer_certificates(&self, chain: Option<crate::http::tls::PeerCertificates>) {
        if let Some(chain) = chain {
            let _ = self.peer_certificates.set(chain);
        }
    }

    /// The chain the client presented in its TLS handshake, if it did.
    #[cfg(feature = "tls")]
    #[inline]
    pub(crate) fn peer_certificates(&self) -> Option<&crate::http::tls::PeerCertificates> {
        self.peer_certificates.get()
    }

    /// When it was accepted.
    pub(crate) fn born(&self) -> Instant {
        self.born
    }

    /// Microseconds since it was accepted, on the coarse clock (read per request).
    #[inline]
    fn now_us(&self) -> u64 {
        clock::now_us()
            .saturating_sub(self.born_us)
            .min(u64::MAX - 1)
    }

    /// What its timer judges.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let at = |us: u64| (us != u64::MAX).then(|| Duration::from_micros(us));
        Snapshot {
            handshake_done: self.handshake_done(),
            upgraded: self.upgraded(),
            // Only once the whole preface has come: until then it may still turn out HTTP/1.
            h2: self.is_h2() && self.prefix_read.load(Ordering::Acquire) >= H2_PREFACE_LEN,
            busy: !self.quiet(),
            last_end: at(self.last_end_us.load(Ordering::Acquire)).unwrap_or_default(),
            head_began: at(self.head_began_us.load(Ordering::Acquire)),
            age: self.age.filter(|_| !self.aged()),
        }
    }

    /// With nothing more to come: nothing in flight, and (HTTP/1) no request head begun, nor
    /// a response ended a moment ago (the client's next request may be on its way).
    pub(crate) fn gone_quiet(&self) -> bool {
        self.quiet()
            && (self.is_h2()
                || (self.head_began_us.load(Ordering::Acquire) == u64::MAX
                    && self.keep_alive_grace().is_none()))
    }

    /// How long ago its last request ended (`Duration::MAX`: none has).
    pub(crate) fn since_last_end(&self) -> Duration {
        match self.last_end_us.load(Ordering::Acquire) {
            u64::MAX => Duration::MAX,
            last => Duration::from_micros(self.now_us().saturating_sub(last)),
        }
    }

    /// When to look again at a connection going away, to close it once it has gone quiet.
    pub(crate) fn recheck(&self) -> Duration {
        self.keep_alive_grace().unwrap_or(IDLE_CLOSE_GRACE)
    }

    /// It has reached its maximum age: it is going.
    pub(crate) fn mark_aged(&self) {
        self.aged.store(true, Ordering::Release);
    }

    /// Whether it has reached its maximum age (and is going).
    #[inline]
    pub(crate) fn aged(&self) -> bool {
        self.aged.load(Ordering::Acquire)
    }

    /// The token cancelled when its age's grace is over, if it has a maximum age.
    pub(crate) fn age_cut(&self) -> Option<&CancellationToken> {
        self.age_cut.as_ref()
    }

    /// Whether its age's grace is over (what it carried was cut off).
    pub(crate) fn age_cut_over(&self) -> bool {
        self.age_cut
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
    }

    /// The client's address.
    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The server's name (its service's).
    pub(crate) fn service(&self) -> &str {
        &self.service
    }

    /// Whether it speaks HTTP/2.
    #[inline]
    pub(crate) fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Acquire)
    }

    /// For an idle HTTP/1.1 keep-alive connection that answered less than
    /// [`KEEP_ALIVE_GRACE`] ago: the rest of that grace.
    pub(crate) fn keep_alive_grace(&self) -> Option<Duration> {
        let last = self.last_end_us.load(Ordering::Acquire);
        if last == u64::MAX || self.is_h2() || !self.quiet() {
            return None;
        }
        let since = Duration::from_micros(self.now_us().saturating_sub(last));
        KEEP_ALIVE_GRACE
            .checked_sub(since)
            .filter(|left| !left.is_zero())
    }

    /// Asks the socket to read what the kernel holds at its next read, even before the
    /// reactor has reported it.
    pub(crate) fn read_now(&self) {
        self.read_now.store(true, Ordering::Release);
    }

    /// Whether reads go straight to the kernel (until one finds nothing there).
    #[inline]
    pub(crate) fn reading_now(&self) -> bool {
        self.read_now.load(Ordering::Acquire)
    }

    #[inline]
    pub(crate) fn read_now_done(&self) {
        self.read_now.store(false, Ordering::Release);
    }

    /// Notes the first bytes a connection read: whether they are the HTTP/2 preface so far,
    /// and how much of it has come. `false`: the connection speaks a version this server does
    /// not (HTTP/1 on an HTTP/2-only server as soon as a byte differs from the preface; the
    /// whole preface on an HTTP/1-only one), and must be closed.
    #[inline]
    pub(crate) fn note_read(&self, bytes: &[u8]) -> bool {
        let before = self.prefix_read.load(Ordering::Relaxed);
        if bytes.is_empty() {
            return true;
        }
        if self.between.load(Ordering::Relaxed) {
            // The first bytes of a request head: the header timeout counts from now.
            self.between.store(false, Ordering::Relaxed);
            self.head_began_us.store(self.now_us(), Ordering::Release);
        }
        if before >= H2_PREFACE_LEN {
            // The first frame after the preface (its SETTINGS): the handshake is done.
            if !self.past_preface.load(Ordering::Relaxed) {
                self.past_preface.store(true, Ordering::Release);
            }
            return true;
        }
        let take = bytes.len().min(H2_PREFACE_LEN - before);
        if take < bytes.len() {
            self.past_preface.store(true, Ordering::Release);
        }
        let preface = (before == 0 || self.h2.load(Ordering::Relaxed))
            && bytes[..take] == H2_PREFACE[before..before + take];
        self.h2.store(preface, Ordering::Release);
        self.prefix_read.store(before + take, Ordering::Release);
        match self.protocols {
            Protocols::Both => true,
            Protocols::Http2 => preface,
            Protocols::Http1 => !(preface && before + take == H2_PREFACE_LEN),
        }
    }

    /// Whether the connection can be closed at once at the drain: no request has begun, and it
    /// is not an HTTP/2 connection past its preface (that one gets a GOAWAY, so a request the
    /// client is sending at this moment is retried elsewhere, not lost).
    pub(crate) fn closable_at_once(&self) -> bool {
        let h2_open = self.h2.load(Ordering::Acquire)
            && self.prefix_read.load(Ordering::Acquire) >= H2_PREFACE_LEN;
        !(self.request_seen() || h2_open)
    }

    /// Whether the client has shown it speaks: a first request head (HTTP/1), or the HTTP/2
    /// preface and the start of a frame after it.
    pub(crate) fn handshake_done(&self) -> bool {
        self.request_seen()
            || (self.is_h2()
                && self.prefix_read.load(Ordering::Acquire) >= H2_PREFACE_LEN
                && self.past_preface.load(Ordering::Acquire))
    }

    /// Whether not a byte has come in yet.
    pub(crate) fn nothing_read(&self) -> bool {
        self.prefix_read.load(Ordering::Acquire) == 0
    }

    #[inline]
    pub(crate) fn set_write_blocked(&self, blocked: bool) {
        if self.write_blocked.load(Ordering::Relaxed) != blocked {
            self.write_blocked.store(blocked, Ordering::Release);
        }
    }

    /// Whether nothing is in flight: no request running, and no response still being written.
    #[inline]
    pub(crate) fn quiet(&self) -> bool {
        self.active.load(Ordering::Acquire) == 0 && !self.write_blocked.load(Ordering::Acquire)
    }

    #[inline]
    pub(crate) fn upgraded(&self) -> bool {
        self.upgraded.load(Ordering::Acquire)
    }

    #[inline]
    pub(crate) fn request_seen(&self) -> bool {
        self.request_seen.load(Ordering::Acquire)
    }

    /// A request began: counted for the service (the report) and the connection (the drain).
    #[inline]
    pub(crate) fn request_began(&self) {
        self.request_seen.store(true, Ordering::Release);
        self.head_done();
        self.drain.request_started();
        self.active.fetch_add(1, Ordering::AcqRel);
    }

    /// A request's response has ended (or it was cut off); `body_done`: its body was read to
    /// its end (or had none).
    #[inline]
    pub(crate) fn request_ended(&self, body_done: bool, end: RequestEnd) {
        self.ended_now(body_done);
        self.active.fetch_sub(1, Ordering::AcqRel);
        self.drain.request_finished(end);
    }

    /// A health check or another answer that is not counted still shows that the client
    /// speaks (the connection is no longer silent), and that it is not idle.
    #[inline]
    pub(crate) fn answered(&self) {
        self.request_seen.store(true, Ordering::Release);
        self.head_done();
        self.ended_now(true);
    }

    /// A request head is complete: no header timeout runs until the next one begins.
    #[inline]
    fn head_done(&self) {
        self.between.store(false, Ordering::Relaxed);
        self.head_began_us.store(u64::MAX, Ordering::Release);
    }

    /// A request ended now: the idle time counts from here, and (HTTP/1) if its body was read
    /// to its end, the next bytes begin a head. (If not, hyper may still be reading the rest of
    /// the body: those bytes begin nothing, and the idle timeout bounds the connection.)
    #[inline]
    fn ended_now(&self, body_done: bool) {
        self.last_end_us.store(self.now_us(), Ordering::Release);
        if body_done && !self.is_h2() {
            self.between.store(true, Ordering::Relaxed);
        }
    }

    /// The socket is about to leave hyper for a handler's task (a 101, or a 2xx to CONNECT).
    pub(crate) fn mark_upgraded(&self) {
        if !self.upgraded.swap(true, Ordering::AcqRel) {
            // In flight until it closes (see `Drop`).
            self.drain.metrics().upgraded(true);
        }
    }

    #[inline]
    pub(crate) fn drain(&self) -> &Drain {
        &self.drain
    }
}

impl Drop for ConnState {
    /// The connection is gone: its socket closed, and every request on it ended.
    fn drop(&mut self) {
        let metrics = self.drain.metrics();
        let reason = Closed::from_u8(*self.closed.get_mut()).unwrap_or_else(|| {
            if self.drain.is_deadline_passed() {
                Closed::Deadline
            } else {
                Closed::Client
            }
        });
        metrics.closed(reason);
    }
}
