//! The periodic flush: the background task that moves acknowledged writes from the cache to
//! SQLite every `--flush-interval`, and what it does when SQLite refuses.
//!
//! A failed flush keeps every write in the cache (still readable, flushed by the next attempt:
//! nothing acknowledged is dropped), and is retried sooner than the next interval, with a
//! backoff ([`retry_delay`]: 100 ms, doubling, at most 5 s, and never longer than the flush
//! interval). Each failure is logged at WARN with the error, the attempt and the next delay.
//! From the first failure to the first success the task holds an [`Impairment`] named `store`
//! (`flush failing: <error>`): `/readyz` answers 503 naming it and gRPC health says
//! NOT_SERVING, so load balancers send writes elsewhere while this process cannot make them
//! durable; the process serves on, and its acknowledged writes wait in the cache. The first
//! success drops it and logs, at INFO, how many attempts failed and for how long.
//!
//! The retry's wait is short next to SQLite's own: a flush that finds another writer's lock
//! waits the store's busy timeout (5 s) before it fails, so under a lock the attempts come
//! every 5 s or so whatever the backoff, and a flush that fails at once (the disk, the file)
//! is not retried more than ten times a second.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lameduck::{Impairment, LifecycleHandle};
use tokio::time::Instant;

use crate::store::Store;

/// The wait after the first failed flush.
pub const FIRST_RETRY: Duration = Duration::from_millis(100);
/// The longest wait between two attempts.
pub const MAX_RETRY: Duration = Duration::from_secs(5);

/// The wait after failed attempt number `attempt` (1 for the first): [`FIRST_RETRY`], doubling
/// at each failure, at most [`MAX_RETRY`], and at most `interval` (failing, the store is not
/// flushed less often than when it works); at least a millisecond.
///
/// ```
/// use std::time::Duration;
/// use lameduck_demo::flusher::retry_delay;
///
/// let ms = |n| Duration::from_millis(n);
/// let second = Duration::from_secs(1);
/// let waits: Vec<Duration> = (1..=7).map(|n| retry_delay(n, second)).collect();
/// assert_eq!(waits, [ms(100), ms(200), ms(400), ms(800), second, second, second]);
/// assert_eq!(retry_delay(40, Duration::from_secs(60)), Duration::from_secs(5));
/// assert_eq!(retry_delay(1, ms(50)), ms(50));
/// ```
pub fn retry_delay(attempt: u32, interval: Duration) -> Duration {
    let doubled = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .map_or(MAX_RETRY, |factor| FIRST_RETRY.saturating_mul(factor));
    doubled
        .min(MAX_RETRY)
        .min(interval)
        .max(Duration::from_millis(1))
}

/// A run of failed flushes, from the first failure to the next success.
struct Failing {
    /// Holds readiness down while it lasts.
    impairment: Impairment,
    attempts: u32,
    since: Instant,
}

/// Flushes `store` every `interval` until `stop` resolves, retrying a failed flush with a
/// backoff and holding `store` impaired on `handle` while it fails (see the module's docs). A
/// flush in progress is never cut off: `stop` is looked at between flushes. Everything still
/// unflushed at the stop is the final flush's (the shutdown hook).
pub async fn run(
    store: Arc<Store>,
    interval: Duration,
    handle: LifecycleHandle,
    stop: impl Future<Output = ()>,
) {
    let interval = interval.max(Duration::from_millis(1));
    tokio::pin!(stop);
    let mut failing: Option<Failing> = None;
    let mut next = Instant::now() + interval;
    loop {
        tokio::select! {
            biased;
            () = &mut stop => break,
            () = tokio::time::sleep_until(next) => {}
        }
        match store.flush().await {
            Ok(flushed) => {
                if let Some(failed) = failing.take() {
                    tracing::info!(
                        failed_attempts = failed.attempts,
                        failing_ms = failed.since.elapsed().as_millis() as u64,
                        flushed,
                        "periodic flush recovered after {} failed attempts",
                        failed.attempts
                    );
                }
                // As an interval that delays missed ticks: on time, or a full interval later.
                let now = Instant::now();
                next = if next + interval > now {
                    next + interval
                } else {
                    now + interval
                };
            }
            Err(error) => {
                let reason = format!("flush failing: {error}");
                let failed = match &mut failing {
                    Some(failed) => {
                        failed.impairment.set_reason(reason);
                        failed
                    }
                    None => failing.insert(Failing {
                        impairment: handle.impair("store", reason),
                        attempts: 0,
                        since: Instant::now(),
                    }),
                };
                failed.attempts += 1;
                let delay = retry_delay(failed.attempts, interval);
                tracing::warn!(
                    attempt = failed.attempts,
                    retry_in_ms = delay.as_millis() as u64,
                    unflushed = store.unflushed(),
                    "periodic flush failed (attempt {}), retrying in {delay:?}, not ready \
                     meanwhile: {error}",
                    failed.attempts
                );
                next = Instant::now() + delay;
            }
        }
    }
    if let Some(failed) = failing {
        tracing::warn!(
            failed_attempts = failed.attempts,
            unflushed = store.unflushed(),
            "stopping with the periodic flush failing; the final flush tries once more"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_from_100ms_to_5s_and_never_past_the_interval() {
        let ms = Duration::from_millis;
        let minute = Duration::from_secs(60);
        let waits: Vec<Duration> = (1..=9).map(|n| retry_delay(n, minute)).collect();
        assert_eq!(
            waits,
            [
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(3200),
                ms(5000),
                ms(5000),
                ms(5000)
            ]
        );
        assert_eq!(retry_delay(u32::MAX, minute), MAX_RETRY, "no overflow");
        assert_eq!(retry_delay(0, minute), FIRST_RETRY);
        assert_eq!(retry_delay(3, ms(300)), ms(300));
        assert_eq!(retry_delay(1, Duration::ZERO), ms(1), "never a busy loop");
    }

    fn temp_db(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "lameduck-demo-flusher-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("store.db");
        let _ = std::fs::remove_file(&path);
        path
    }

    /// Waits (bounded, in real time: the flush runs on a blocking thread) for `what`.
    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let began = std::time::Instant::now();
        while !done() {
            assert!(began.elapsed() < Duration::from_secs(30), "never: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn failing_it_impairs_the_store_and_retries_until_it_works() {
        let lifecycle = lameduck::Lifecycle::new().handle_signals(false);
        let handle = lifecycle.handle();
        // Not open yet: every flush fails, and the write waits in the cache.
        let store = Store::new(temp_db("retry"));
        store.put("k".into(), "v".into());
        let stop = stop_signal();
        let task = tokio::spawn(run(
            Arc::clone(&store),
            Duration::from_millis(20),
            handle.clone(),
            stop.1,
        ));
        until("impaired", || handle.is_impaired()).await;
        let impaired = handle.impairments();
        assert_eq!(impaired[0].who, "store");
        assert!(
            impaired[0].reason.starts_with("flush failing: database ")
                && impaired[0].reason.ends_with("is not open"),
            "{impaired:?}"
        );
        assert_eq!(store.unflushed(), 1, "kept");
        store.open().await.unwrap();
        until("recovered", || !handle.is_impaired()).await;
        assert_eq!(store.unflushed(), 0);
        assert_eq!(store.get("k").await.unwrap().as_deref(), Some("v"));
        let _ = stop.0.send(());
        task.await.unwrap();
        drop(lifecycle);
    }

    /// A stop signal: a oneshot, whose receiving end resolves when sent to (or dropped).
    fn stop_signal() -> (
        tokio::sync::oneshot::Sender<()>,
        impl Future<Output = ()> + Send + 'static,
    ) {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        (tx, async move {
            let _ = rx.await;
        })
    }
}
