//! The maximum connection age: after a rolling restart, HTTP/2 and gRPC clients behind an L4
//! balancer keep their connections to the instances that stayed up, and the restarted one gets
//! nothing until they reconnect. A connection that has lived its age is told to go (GOAWAY,
//! or `Connection: close` on HTTP/1; closed at once if idle), its work gets a grace, and what
//! is left then ends as at the drain's deadline (gRPC: status UNAVAILABLE, which clients
//! retry). Each connection's age is moved at random by the jitter, so that connections opened
//! together (after a restart) do not all go together. grpc-go's `MaxConnectionAge` and
//! `MaxConnectionAgeGrace`, Envoy's `max_connection_duration`.

use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::time::Duration;

use crate::http::limits::{Limits, on};

/// A server's maximum connection age, as its connections take it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MaxAge {
    age: Duration,
    /// After the age, before what is left is cut off.
    pub(crate) grace: Duration,
    /// At most this fraction of `age`, up or down.
    jitter: f64,
}

impl MaxAge {
    /// `None`: connections live as long as they like.
    pub(crate) fn new(limits: &Limits) -> Option<MaxAge> {
        Some(MaxAge {
            age: on(limits.max_connection_age)?,
            grace: limits.max_connection_age_grace,
            jitter: match limits.max_connection_age_jitter {
                j if j.is_finite() => j.clamp(0.0, 0.5),
                _ => crate::http::limits::MAX_CONNECTION_AGE_JITTER,
            },
        })
    }

    /// The age of a connection from `peer`, accepted now: the maximum age moved by a random
    /// fraction of the jitter, up or down.
    pub(crate) fn of(&self, peer: SocketAddr) -> Duration {
        // A random u64 without a dependency: std's hasher is keyed at random for each new
        // state (per thread, then incremented), and the peer tells connections apart.
        let random = RandomState::new().hash_one(peer);
        self.jittered(random as f64 / u64::MAX as f64)
    }

    /// The age for `unit` in [0, 1]: 0 is the shortest, 1 the longest.
    fn jittered(&self, unit: f64) -> Duration {
        let factor = 1.0 + self.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        // At least a millisecond: an age of zero would be due before the timer is armed.
        self.age.mul_f64(factor).max(Duration::from_millis(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_age(age: u64, jitter: f64) -> MaxAge {
        MaxAge::new(&Limits {
            max_connection_age: Duration::from_secs(age),
            max_connection_age_jitter: jitter,
            ..Limits::default()
        })
        .unwrap()
    }

    #[test]
    fn off_by_default_and_at_zero() {
        assert!(MaxAge::new(&Limits::default()).is_none());
    }

    #[test]
    fn the_jitter_moves_each_age_within_its_bounds_and_spreads_them() {
        let m = max_age(100, 0.1);
        assert_eq!(m.jittered(0.0), Duration::from_secs(90));
        assert_eq!(m.jittered(0.5), Duration::from_secs(100));
        assert_eq!(m.jittered(1.0), Duration::from_secs(110));
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let ages: Vec<Duration> = (0..200).map(|_| m.of(peer)).collect();
        assert!(
            ages.iter()
                .all(|a| (90.0..=110.0).contains(&a.as_secs_f64()))
        );
        let (low, high) = (ages.iter().min().unwrap(), ages.iter().max().unwrap());
        assert!(
            (*high - *low) > Duration::from_secs(10),
            "the ages spread: {low:?} to {high:?}"
        );
        // No jitter: the age itself; too much is held to half.
        assert_eq!(max_age(100, 0.0).of(peer), Duration::from_secs(100));
        assert_eq!(max_age(100, 3.0).jittered(0.0), Duration::from_secs(50));
        // Not a number: the default jitter.
        assert_eq!(
            max_age(100, f64::NAN).jittered(1.0),
            Duration::from_secs(110)
        );
    }
}
