//! The counts of a service's work and requests: started and finished, in flight their
//! difference. Counted on every request, by every worker thread at once, so each thread adds
//! to a stripe of its own (a cache line apart from the others): threads serving at the same
//! time do not pass one line between their cores on every request. A snapshot adds the
//! stripes up.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::report::WorkReport;

/// How many stripes a counter has; threads beyond it share one.
const STRIPES: usize = 16;

/// Two monotonic counts, striped by thread. Counting never takes a lock.
#[derive(Debug, Default)]
pub(crate) struct Counter {
    stripes: [Stripe; STRIPES],
}

/// One thread's share of a counter, alone on its cache line (128 bytes: two lines, which
/// x86's adjacent-line prefetch fetches together).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe {
    started: AtomicU64,
    finished: AtomicU64,
}

impl Counter {
    /// One more started.
    #[inline]
    pub(crate) fn start(&self) {
        self.stripes[stripe()]
            .started
            .fetch_add(1, Ordering::Relaxed);
    }

    /// One more finished (after its start, on this thread or another).
    #[inline]
    pub(crate) fn finish(&self) {
        self.stripes[stripe()]
            .finished
            .fetch_add(1, Ordering::AcqRel);
    }

    /// The counts now.
    pub(crate) fn snapshot(&self) -> Counts {
        // All of `finished` first: a unit counted finished was counted started before it
        // (whichever stripes), and these loads see that start, so a snapshot never shows more
        // finished than started.
        let finished = self.sum(|s| &s.finished);
        Counts {
            started: self.sum(|s| &s.started),
            finished,
        }
    }

    fn sum(&self, count: impl Fn(&Stripe) -> &AtomicU64) -> u64 {
        self.stripes
            .iter()
            .map(|s| count(s).load(Ordering::Acquire))
            .fold(0, u64::wrapping_add)
    }
}

/// This thread's stripe: given at its first count, in turn.
#[inline]
fn stripe() -> usize {
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    STRIPE.with(|stripe| {
        let mut at = stripe.get();
        if at == usize::MAX {
            at = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
            stripe.set(at);
        }
        at
    })
}

/// A snapshot of one counter.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    pub(crate) started: u64,
    pub(crate) finished: u64,
}

impl Counts {
    pub(crate) fn in_flight(self) -> u64 {
        self.started.saturating_sub(self.finished)
    }

    /// The report from snapshots at the drain's start (`None`: there was no drain) and at the
    /// end; with `aborted`, what was in flight at the end was aborted.
    pub(crate) fn report(at_drain: Option<Self>, at_end: Self, aborted: bool) -> WorkReport {
        WorkReport {
            total: at_end.started,
            in_flight_at_drain: at_drain.map_or(0, Self::in_flight),
            drained: at_drain.map_or(0, |d| at_end.finished.saturating_sub(d.finished)),
            aborted: if aborted { at_end.in_flight() } else { 0 },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn counts_from_many_threads_add_up() {
        let counter = Arc::new(Counter::default());
        // More threads than stripes: some share one.
        let threads: Vec<_> = (0..STRIPES + 4)
            .map(|_| {
                let counter = Arc::clone(&counter);
                std::thread::spawn(move || {
                    for _ in 0..1_000 {
                        counter.start();
                    }
                    for _ in 0..400 {
                        counter.finish();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let counts = counter.snapshot();
        let n = (STRIPES as u64 + 4) * 1_000;
        assert_eq!((counts.started, counts.finished), (n, n * 2 / 5));
        assert_eq!(counts.in_flight(), n * 3 / 5);
    }

    #[test]
    fn a_unit_finished_on_another_thread_counts_once() {
        let counter = Arc::new(Counter::default());
        counter.start();
        let other = Arc::clone(&counter);
        std::thread::spawn(move || other.finish()).join().unwrap();
        let counts = counter.snapshot();
        assert_eq!(
            (counts.started, counts.finished, counts.in_flight()),
            (1, 1, 0)
        );
    }
}
