//! The clock of a connection's timestamps: when a request head began, when a request ended.
//! It is read twice per request, so it must cost next to nothing. On Linux it is
//! `CLOCK_MONOTONIC_COARSE`: the kernel's last tick, read from the vDSO without reading a
//! hardware timer, at the tick's resolution (1 to 10 ms; 4 ms on a Debian kernel). What it
//! times is far coarser: header and idle timeouts of seconds, and grace periods of 50 ms,
//! which a few milliseconds either way do not change. Timers still run on tokio's clock.
//! Elsewhere, std's `Instant`.

/// How far a span read on this clock may fall short of the same span on tokio's: its tick
/// (4 ms on Debian), with a margin for kernels with a 100 Hz tick.
pub(crate) const SLACK: std::time::Duration = std::time::Duration::from_millis(11);

/// Microseconds on the coarse monotonic clock, from an origin of its own.
#[cfg(target_os = "linux")]
#[inline]
pub(crate) fn now_us() -> u64 {
    use nix::time::{ClockId, clock_gettime};
    match clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE) {
        Ok(t) => {
            let secs = u64::try_from(t.tv_sec()).unwrap_or_default();
            let nanos = u64::try_from(t.tv_nsec()).unwrap_or_default();
            secs.saturating_mul(1_000_000).saturating_add(nanos / 1_000)
        }
        // Not seen on any Linux since 2.6.32; then the precise clock does.
        Err(_) => precise_us(),
    }
}

/// Microseconds on the coarse monotonic clock, from an origin of its own.
#[cfg(not(target_os = "linux"))]
pub(crate) fn now_us() -> u64 {
    precise_us()
}

/// Microseconds on std's monotonic clock, from the first call.
fn precise_us() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    u64::try_from(origin.elapsed().as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn follows_the_precise_clock_within_its_resolution() {
        // Each coarse reading bracketed by precise ones, so that a pause of the thread between
        // two readings widens the bounds instead of failing the test.
        let (before, start, after) = (Instant::now(), now_us(), Instant::now());
        std::thread::sleep(Duration::from_millis(120));
        let (before_end, end, after_end) = (Instant::now(), now_us(), Instant::now());
        let coarse = Duration::from_micros(end - start);
        // A coarse reading is up to one tick behind.
        let (least, most) = (before_end - after, after_end - before);
        assert!(coarse + SLACK >= least, "{coarse:?}, at least {least:?}");
        assert!(coarse <= most + SLACK, "{coarse:?}, at most {most:?}");
    }
}
