//! A connection's timers in normal serving (the handshake, header and idle timeouts), judged
//! lazily: the connection keeps one timer, set for the earliest moment one of them could
//! expire. When it fires, what the connection has stored (a few timestamps, kept by its
//! requests without touching any timer) says whether one has expired, and what follows (a
//! close, or a GOAWAY), or when to look again. An idle connection wakes at most once a header
//! timeout; a request costs a clock read, never a timer.

use std::time::Duration;

use crate::events::Event;
use crate::http::limits::{Limits, on};

/// The timeouts a connection's timer watches (`None`: off).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    handshake: Option<Duration>,
    header: Option<Duration>,
    idle: Option<Duration>,
}

/// What a connection looks like when its timer fires. Times are since its accept.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Snapshot {
    /// A first request head came (HTTP/1), or the HTTP/2 preface and a frame.
    pub(crate) handshake_done: bool,
    /// The socket has left hyper (a WebSocket, a tunnel): no timer applies any more.
    pub(crate) upgraded: bool,
    pub(crate) h2: bool,
    /// A request in flight, or a response still being written.
    pub(crate) busy: bool,
    /// When the last request ended (its response sent), or the accept.
    pub(crate) last_end: Duration,
    /// HTTP/1: when the first byte of a request head came, if one is coming.
    pub(crate) head_began: Option<Duration>,
    /// When it reaches its maximum age, if it has one and has not reached it yet.
    pub(crate) age: Option<Duration>,
}

/// What the timer's firing means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing has expired: look again at this time (since the accept).
    At(Duration),
    /// Nothing can expire any more: the timer is not polled again.
    Off,
    /// Close the connection, counted as this event.
    Close(Event),
    /// Idle HTTP/2: send GOAWAY (counted as an idle timeout), then close.
    GoAway,
    /// Its maximum age: GOAWAY (HTTP/2) or `Connection: close` (HTTP/1), then the grace.
    Age,
}

impl Timeouts {
    pub(crate) fn new(limits: &Limits) -> Self {
        Timeouts {
            handshake: on(limits.handshake_timeout),
            header: on(limits.header_timeout),
            idle: on(limits.idle_timeout),
        }
    }

    /// The handshake timeout (`None`: off).
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) fn handshake(&self) -> Option<Duration> {
        self.handshake
    }

    /// The verdict at `now` for a connection in the state `s`: a timeout's, or its maximum
    /// age's (which comes first when both are due: it ends the connection more gently).
    pub(crate) fn judge(&self, s: &Snapshot, now: Duration) -> Verdict {
        let verdict = self.timeouts(s, now);
        let Some(age) = s.age.filter(|_| !s.upgraded) else {
            return verdict;
        };
        if now >= age {
            return match verdict {
                // A connection that never showed it speaks HTTP is not given a grace.
                Verdict::Close(Event::HandshakeTimeout) => verdict,
                _ => Verdict::Age,
            };
        }
        match verdict {
            Verdict::At(at) => Verdict::At(at.min(age)),
            Verdict::Off => Verdict::At(age),
            other => other,
        }
    }

    /// The verdict of the timeouts alone.
    fn timeouts(&self, s: &Snapshot, now: Duration) -> Verdict {
        if s.upgraded {
            return Verdict::Off;
        }
        if !s.handshake_done
            && let Some(handshake) = self.handshake
        {
            if now >= handshake {
                return Verdict::Close(Event::HandshakeTimeout);
            }
            // The handshake may be done in a moment, and the other timeouts begin: look again
            // by the first of them, if it comes before the handshake's.
            let others = [self.idle, self.header].into_iter().flatten().min();
            return Verdict::At(others.map_or(handshake, |o| handshake.min(now + o)));
        }
        if s.busy {
            // A request ends without touching the timer: look again later.
            let recheck = [self.idle, self.header].into_iter().flatten().min();
            return recheck.map_or(Verdict::Off, |r| Verdict::At(now + r));
        }
        if s.h2 {
            return match self.idle {
                Some(idle) if now >= s.last_end + idle => Verdict::GoAway,
                Some(idle) => Verdict::At(s.last_end + idle),
                None => Verdict::Off,
            };
        }
        let mut next: Option<Duration> = None;
        let mut sooner = |at: Duration| next = Some(next.map_or(at, |n| n.min(at)));
        match (s.head_began, self.header, self.idle) {
            (Some(began), header, idle) => {
                if let Some(header) = header {
                    if now >= began + header {
                        return Verdict::Close(Event::HeaderTimeout);
                    }
                    sooner(began + header);
                }
                // The head may be done in a moment, its request answered, and the idle time
                // begin: look again by then.
                if let Some(idle) = idle {
                    sooner(now + idle);
                }
            }
            (None, header, idle) => {
                if let Some(idle) = idle {
                    if now >= s.last_end + idle {
                        return Verdict::Close(Event::IdleTimeout);
                    }
                    sooner(s.last_end + idle);
                }
                // A head may begin at any moment, and its timeout must not wait for the idle
                // one: look again by then.
                if let Some(header) = header {
                    sooner(now + header);
                }
            }
        }
        next.map_or(Verdict::Off, Verdict::At)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn timeouts(handshake: u64, header: u64, idle: u64) -> Timeouts {
        Timeouts::new(&Limits {
            handshake_timeout: S * handshake as u32,
            header_timeout: S * header as u32,
            idle_timeout: S * idle as u32,
            ..Limits::default()
        })
    }

    fn served() -> Snapshot {
        Snapshot {
            handshake_done: true,
            ..Snapshot::default()
        }
    }

    #[test]
    fn the_maximum_age_is_looked_at_in_time_and_comes_before_a_timeout_due_with_it() {
        let t = timeouts(10, 30, 120);
        let busy = Snapshot {
            busy: true,
            age: Some(50 * S),
            ..served()
        };
        // A busy connection is looked at by its age, even with its timeouts far off.
        assert_eq!(t.judge(&busy, 10 * S), Verdict::At(40 * S));
        assert_eq!(t.judge(&busy, 40 * S), Verdict::At(50 * S));
        assert_eq!(t.judge(&busy, 50 * S), Verdict::Age);
        // Idle past its idle timeout and its age: the age's gentler end.
        let idle = Snapshot {
            age: Some(100 * S),
            ..served()
        };
        assert_eq!(t.judge(&idle, 130 * S), Verdict::Age);
        // With every timeout off, the age alone sets the timer.
        let off = timeouts(0, 0, 0);
        assert_eq!(off.judge(&idle, S), Verdict::At(100 * S));
        // No age for one that never spoke: its handshake timeout closes it.
        let silent = Snapshot {
            age: Some(5 * S),
            ..Snapshot::default()
        };
        assert_eq!(t.judge(&silent, 5 * S), Verdict::Age);
        assert_eq!(
            t.judge(&silent, 10 * S),
            Verdict::Close(Event::HandshakeTimeout)
        );
        // Upgraded: no timer, no age.
        let upgraded = Snapshot {
            upgraded: true,
            ..idle
        };
        assert_eq!(t.judge(&upgraded, 200 * S), Verdict::Off);
    }

    #[test]
    fn the_handshake_comes_first() {
        let t = timeouts(10, 30, 120);
        let silent = Snapshot::default();
        assert_eq!(t.judge(&silent, Duration::ZERO), Verdict::At(10 * S));
        assert_eq!(t.judge(&silent, 9 * S), Verdict::At(10 * S));
        assert_eq!(
            t.judge(&silent, 10 * S),
            Verdict::Close(Event::HandshakeTimeout)
        );
        // Shorter timeouts after it are looked at in time, should the handshake be done
        // meanwhile.
        let t = timeouts(10, 2, 120);
        assert_eq!(t.judge(&silent, Duration::ZERO), Verdict::At(2 * S));
        assert_eq!(t.judge(&silent, 9 * S), Verdict::At(10 * S));
        // Without one, a silent connection is idle from its accept.
        let t = timeouts(0, 30, 120);
        assert_eq!(t.judge(&silent, Duration::ZERO), Verdict::At(30 * S));
        assert_eq!(
            t.judge(&silent, 120 * S),
            Verdict::Close(Event::IdleTimeout)
        );
    }

    #[test]
    fn an_idle_http1_connection_closes_at_the_idle_timeout_not_the_header_one() {
        let t = timeouts(10, 30, 120);
        let idle = Snapshot {
            last_end: 5 * S,
            ..served()
        };
        // Woken every header timeout, in case a head began; closed at the idle timeout.
        assert_eq!(t.judge(&idle, 10 * S), Verdict::At(40 * S));
        assert_eq!(t.judge(&idle, 100 * S), Verdict::At(125 * S));
        assert_eq!(t.judge(&idle, 125 * S), Verdict::Close(Event::IdleTimeout));
    }

    #[test]
    fn a_head_partway_has_the_header_timeout_from_its_first_byte() {
        let t = timeouts(10, 30, 120);
        let head = Snapshot {
            last_end: 5 * S,
            head_began: Some(100 * S),
            ..served()
        };
        // Past the idle timeout, but a head is coming: it has its own time.
        assert_eq!(t.judge(&head, 126 * S), Verdict::At(130 * S));
        assert_eq!(
            t.judge(&head, 130 * S),
            Verdict::Close(Event::HeaderTimeout)
        );
        // Without a header timeout it is not timed, but looked at again by the idle time.
        let t = timeouts(10, 0, 120);
        assert_eq!(t.judge(&head, 1000 * S), Verdict::At(1120 * S));
        // A header timeout longer than the idle one does not delay the idle one's next look.
        let t = timeouts(10, 300, 5);
        assert_eq!(t.judge(&head, 126 * S), Verdict::At(131 * S));
        assert_eq!(timeouts(10, 0, 0).judge(&head, 1000 * S), Verdict::Off);
    }

    #[test]
    fn a_busy_connection_is_looked_at_again_later() {
        let t = timeouts(10, 30, 120);
        let busy = Snapshot {
            busy: true,
            ..served()
        };
        assert_eq!(t.judge(&busy, 500 * S), Verdict::At(530 * S));
        assert_eq!(
            timeouts(10, 0, 120).judge(&busy, Duration::ZERO),
            Verdict::At(120 * S)
        );
        assert_eq!(
            timeouts(10, 0, 0).judge(&busy, Duration::ZERO),
            Verdict::Off
        );
    }

    #[test]
    fn an_idle_http2_connection_gets_goaway() {
        let t = timeouts(10, 30, 120);
        let h2 = Snapshot {
            h2: true,
            last_end: 7 * S,
            ..served()
        };
        assert_eq!(t.judge(&h2, 10 * S), Verdict::At(127 * S));
        assert_eq!(t.judge(&h2, 127 * S), Verdict::GoAway);
        assert_eq!(timeouts(10, 30, 0).judge(&h2, 1000 * S), Verdict::Off);
    }

    #[test]
    fn an_upgraded_connection_is_not_timed() {
        let t = timeouts(10, 30, 120);
        let upgraded = Snapshot {
            upgraded: true,
            ..Snapshot::default()
        };
        assert_eq!(t.judge(&upgraded, 1000 * S), Verdict::Off);
    }

    #[test]
    fn all_off_is_off() {
        let t = timeouts(0, 0, 0);
        assert_eq!(t.judge(&Snapshot::default(), 1000 * S), Verdict::Off);
        assert_eq!(t.judge(&served(), 1000 * S), Verdict::Off);
    }
}
