//! Shutdown latencies, each against a baseline measured in the same run.
//!
//! ```text
//! cargo bench -p lameduck --bench shutdown
//! ```
//!
//! 1. Drain detection: how long after the last in-flight unit of work ends the drain is known to
//!    be over. lameduck wakes on the event; the baseline is Go's `http.Server.Shutdown` loop
//!    (poll after 1 ms, doubling to 500 ms, with its ±10 % jitter left out).
//! 2. Graceful exit of an idle service: SIGTERM to process exit, against SIGKILL to exit.
//! 3. Forced exit: a second signal during a 60 s hook to process exit, against SIGKILL to exit.
//!
//! Processes are this binary re-run with `LAMEDUCK_BENCH_CHILD` set. Results go to stdout as a
//! Markdown table (see docs/BENCHMARKS.md).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lameduck::{Lifecycle, Phase, StartContext};
use tokio::time::{Instant, sleep};

const DRAIN_ROUNDS: usize = 40;
const UNITS: usize = 20;
const EXIT_ROUNDS: usize = 20;

fn main() {
    if let Ok(mode) = std::env::var("LAMEDUCK_BENCH_CHILD") {
        child(&mode);
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rows = [
        Row::measure(
            "drain detected after last work ends",
            "Go-style polling (1 ms doubling to 500 ms)",
            DRAIN_ROUNDS,
            |round| rt.block_on(lameduck_drain(&work_durations(round as u64))),
            |round| rt.block_on(polling_drain(&work_durations(round as u64))),
        ),
        Row::measure(
            "idle service: signal to exit",
            "SIGKILL to exit",
            EXIT_ROUNDS,
            |_| exit_latency("idle", None, "TERM"),
            |_| exit_latency("idle", None, "KILL"),
        ),
        Row::measure(
            "forced: second signal to exit",
            "SIGKILL to exit",
            EXIT_ROUNDS,
            |_| exit_latency("slow-hook", Some("TERM"), "INT"),
            |_| exit_latency("slow-hook", Some("TERM"), "KILL"),
        ),
    ];

    println!(
        "| measure | lameduck median (p90, max) | baseline | baseline median (p90, max) | ratio of medians |"
    );
    println!("|---|---:|---|---:|---:|");
    for row in rows {
        println!("{row}");
    }
}

/// Deterministic work durations (10 to 150 ms) for a round: the same for both sides.
fn work_durations(seed: u64) -> Vec<Duration> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    (0..UNITS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Duration::from_millis(10 + x % 141)
        })
        .collect()
}

/// Latest of the recorded instants.
#[derive(Clone, Default)]
struct LastEnd(Arc<Mutex<Option<Instant>>>);

impl LastEnd {
    fn mark(&self) {
        let now = Instant::now();
        let mut last = self.0.lock().unwrap();
        *last = Some(last.map_or(now, |l| l.max(now)));
    }
    fn get(&self) -> Instant {
        self.0.lock().unwrap().unwrap()
    }
}

/// The drain ends when a `Phase::FLUSH` hook starts: measure from the last work's end to then.
async fn lameduck_drain(work: &[Duration]) -> Duration {
    let last = LastEnd::default();
    let detected = LastEnd::default();
    let (w, work) = (last.clone(), work.to_vec());
    let d = detected.clone();
    let lifecycle = Lifecycle::new()
        .handle_signals(false)
        .service("work", move |ctx: StartContext| async move {
            let drain = ctx.drain();
            for took in work {
                let w = w.clone();
                drain.spawn(async move {
                    sleep(took).await;
                    w.mark();
                });
            }
            Ok(async move {
                drain.draining().await;
                Ok(())
            })
        })
        .hook(Phase::FLUSH, "mark", move || async move {
            d.mark();
            Ok(())
        });
    let handle = lifecycle.handle();
    let run = tokio::spawn(lifecycle.run());
    handle.wait_ready().await.unwrap();
    handle.shutdown();
    run.await.unwrap();
    detected.get() - last.get()
}

/// Go's `Shutdown`: count work in flight, poll the count with a doubling interval.
async fn polling_drain(work: &[Duration]) -> Duration {
    let last = LastEnd::default();
    let in_flight = Arc::new(AtomicUsize::new(work.len()));
    for &took in work {
        let (last, in_flight) = (last.clone(), Arc::clone(&in_flight));
        tokio::spawn(async move {
            sleep(took).await;
            last.mark();
            in_flight.fetch_sub(1, Ordering::AcqRel);
        });
    }
    let mut interval = Duration::from_millis(1);
    while in_flight.load(Ordering::Acquire) > 0 {
        sleep(interval).await;
        interval = (interval * 2).min(Duration::from_millis(500));
    }
    Instant::now() - last.get()
}

/// Starts a child, waits for `READY`, sends `first` (then waits for `HOOK`), and measures from
/// sending `signal` to the exit.
fn exit_latency(mode: &str, first: Option<&str>, signal: &str) -> Duration {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("LAMEDUCK_BENCH_CHILD", mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut wait_for = |what: &str| {
        lines
            .by_ref()
            .map_while(Result::ok)
            .find(|l| l == what)
            .unwrap_or_else(|| panic!("child never printed {what}"));
    };
    wait_for("READY");
    if let Some(first) = first {
        kill(&child, first);
        wait_for("HOOK");
    }
    let sent = std::time::Instant::now();
    kill(&child, signal);
    child.wait().unwrap();
    sent.elapsed()
}

fn kill(child: &Child, signal: &str) {
    let ok = Command::new("kill")
        .args(["-s", signal, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -s {signal}");
}

/// The child: a service on an OS-chosen port; in `slow-hook` mode, a 60 s hook.
fn child(mode: &str) -> ! {
    let slow_hook = mode == "slow-hook";
    let rt = tokio::runtime::Runtime::new().unwrap();
    let report = rt.block_on(async move {
        let lifecycle = Lifecycle::new()
            .service("idle", |ctx: StartContext| async move {
                let listener = ctx.bind_tcp("127.0.0.1:0").await?;
                let drain = ctx.drain();
                Ok(async move {
                    drain.draining().await;
                    drop(listener);
                    Ok(())
                })
            })
            .hook_with_timeout(
                Phase::FLUSH,
                "slow",
                Duration::from_secs(120),
                move || async move {
                    if slow_hook {
                        println!("HOOK");
                        sleep(Duration::from_secs(60)).await;
                    }
                    Ok(())
                },
            );
        let handle = lifecycle.handle();
        tokio::spawn(async move {
            if handle.wait_ready().await.is_ok() {
                println!("READY");
            }
        });
        lifecycle.run().await
    });
    report.exit()
}

struct Row {
    name: &'static str,
    baseline: &'static str,
    ours: Vec<Duration>,
    base: Vec<Duration>,
}

impl Row {
    /// Alternates the two sides, `rounds` times each, so that drift in the machine's load
    /// affects both alike.
    fn measure(
        name: &'static str,
        baseline: &'static str,
        rounds: usize,
        mut ours: impl FnMut(usize) -> Duration,
        mut base: impl FnMut(usize) -> Duration,
    ) -> Self {
        let (mut o, mut b) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            o.push(ours(round));
            b.push(base(round));
        }
        o.sort();
        b.sort();
        Row {
            name,
            baseline,
            ours: o,
            base: b,
        }
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

impl std::fmt::Display for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stats = |v: &[Duration]| {
            format!(
                "{} ({}, {})",
                ms(quantile(v, 0.5)),
                ms(quantile(v, 0.9)),
                ms(quantile(v, 1.0))
            )
        };
        let ratio =
            quantile(&self.ours, 0.5).as_secs_f64() / quantile(&self.base, 0.5).as_secs_f64();
        write!(
            f,
            "| {} | {} | {} | {} | {:.4} |",
            self.name,
            stats(&self.ours),
            self.baseline,
            stats(&self.base),
            ratio
        )
    }
}
