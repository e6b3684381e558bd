//! `lameduck-bench`: lameduck's overhead and shutdown latencies against bare hyper, axum and
//! tonic, each figure a ratio to a baseline measured in the same run, medians of `--runs`.
//!
//! Every server is a separate `bench-server` process (see `src/bin/bench-server.rs`) serving
//! the same app; the load comes from this process. Run it with `bash scripts/bench.sh`, which
//! builds in release mode first. The output is Markdown, for `docs/BENCHMARKS.md`.
#![forbid(unsafe_code)]

mod deploy;
mod load;
mod server;

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Parser;
use load::Window;
use server::Server;

#[derive(Parser, Debug)]
#[command(about = "lameduck against bare hyper, axum and tonic, measured side by side")]
struct Opts {
    /// Runs of each measurement; figures are medians.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Throughput: how long each measurement counts (after a warm-up of a fifth of it).
    #[arg(long, default_value = "1500", value_name = "MS")]
    duration_ms: u64,
    /// Throughput: client connections.
    #[arg(long, default_value_t = 32)]
    conns: usize,
    /// Idle keep-alive connections held at shutdown (and weighed).
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Connections that never send a request, held at shutdown.
    #[arg(long, default_value_t = 1000)]
    silent: usize,
    /// Slow requests in flight at shutdown (drain at scale).
    #[arg(long, default_value_t = 1000)]
    slow: usize,
    /// The `bench-server` binary (default: beside this one).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The `lameduck-demo` binary (default: beside this one; skipped if missing).
    #[arg(long)]
    demo_bin: Option<PathBuf>,
    /// Only these sections (1 to 7; 6 is measured with 3), comma-separated.
    #[arg(long, value_delimiter = ',')]
    only: Vec<u8>,
}

impl Opts {
    fn wants(&self, section: u8) -> bool {
        self.only.is_empty() || self.only.contains(&section)
    }
}

fn beside_me(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Samples of one figure; `None` is a run that did not finish within its cap.
#[derive(Default, Clone)]
struct Samples(Vec<Option<f64>>);

impl Samples {
    fn push(&mut self, v: Option<f64>) {
        self.0.push(v);
    }

    fn median(&self) -> Option<f64> {
        let mut done: Vec<f64> = self.0.iter().flatten().copied().collect();
        // A run that hit the cap counts as "more than anything": the median is capped too if
        // half of the runs were.
        if done.len() * 2 <= self.0.len() {
            return None;
        }
        done.extend(std::iter::repeat_n(
            f64::INFINITY,
            self.0.len() - done.len(),
        ));
        Some(median(&mut done))
    }

    fn raw(&self, unit: &str) -> String {
        self.0
            .iter()
            .map(|v| v.map_or_else(|| "capped".to_owned(), |v| format!("{v:.1}{unit}")))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn show(v: Option<f64>, unit: &str, cap: &str) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.2} {unit}"),
        _ => format!("> {cap} (killed)"),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a.is_finite() && b.is_finite() && b > 0.0 => format!("{:.2}", a / b),
        _ => "-".to_owned(),
    }
}

const HTTP_KINDS: [&str; 3] = ["hyper", "axum", "lameduck"];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let opts = Opts::parse();
    let fd_limit = server::raise_fd_limit();
    let server_bin = opts
        .server_bin
        .clone()
        .unwrap_or_else(|| beside_me("bench-server"));
    let mut out = String::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "Machine: {} cores ({cpu}), open-file limit {fd_limit}; {} runs per figure, medians.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        opts.runs
    );

    if opts.wants(1) {
        throughput(&opts, &server_bin, &mut out).await;
    }
    if opts.wants(2) {
        exit_lag(&opts, &server_bin, &mut out).await;
    }
    if opts.wants(3) || opts.wants(6) {
        idle_shutdown(&opts, &server_bin, &mut out).await;
    }
    if opts.wants(4) {
        drain_at_scale(&opts, &server_bin, &mut out).await;
    }
    if opts.wants(5) {
        time_to_ready(&opts, &server_bin, &mut out).await;
    }
    if opts.wants(7) {
        deploys(&opts, &server_bin, &mut out).await;
    }
    println!("{out}");
}

/// 1. Requests per second on a trivial handler.
async fn throughput(opts: &Opts, bin: &std::path::Path, out: &mut String) {
    let duration = Duration::from_millis(opts.duration_ms);
    let warmup = duration / 5;
    let cases: [(&str, &[&str]); 3] = [
        ("HTTP/1.1 keep-alive", &HTTP_KINDS),
        ("HTTP/2 (h2c)", &HTTP_KINDS),
        ("gRPC unary", &["tonic", "lameduck-grpc"]),
    ];
    let _ = writeln!(
        out,
        "## 1. Throughput (trivial handler, {} client connections)\n",
        opts.conns
    );
    let _ = writeln!(
        out,
        "| protocol | server | req/s (median) | ratio to bare | runs |\n|---|---|---:|---:|---|"
    );
    for (case, kinds) in cases {
        let mut samples = vec![Samples::default(); kinds.len()];
        for _ in 0..opts.runs {
            // Interleaved, so that a noisy moment of the machine spreads over every kind.
            for (i, kind) in kinds.iter().enumerate() {
                let mut server = Server::start(bin, kind).await;
                let window = Window::new(warmup, duration);
                let rps = match case {
                    "HTTP/1.1 keep-alive" => load::h1_rps(server.addr, opts.conns, window).await,
                    "HTTP/2 (h2c)" => load::h2_rps(server.addr, opts.conns / 4, 8, window).await,
                    _ => load::grpc_rps(server.addr, opts.conns / 4, 8, window).await,
                };
                samples[i].push(Some(rps));
                server.terminate();
                server.exited(Duration::from_secs(10)).await;
            }
        }
        let base = samples[0].median();
        for (kind, s) in kinds.iter().zip(&samples) {
            let _ = writeln!(
                out,
                "| {case} | {kind} | {:.0} | {} | {} |",
                s.median().unwrap_or(f64::NAN),
                ratio(s.median(), base),
                s.raw("")
            );
        }
    }
    let _ = writeln!(out);
}

/// 2. One slow request in flight at SIGTERM: its last byte to the process's exit.
async fn exit_lag(opts: &Opts, bin: &std::path::Path, out: &mut String) {
    // A sub-millisecond figure on a shared machine: more runs than the others.
    let runs = opts.runs * 4 + 1;
    let mut samples = vec![Samples::default(); HTTP_KINDS.len()];
    for _ in 0..runs {
        for (i, kind) in HTTP_KINDS.iter().enumerate() {
            let mut server = Server::start(bin, kind).await;
            let addr = server.addr;
            let mut send = load::h1(addr).await.expect("connect");
            let response = tokio::spawn(async move {
                let ok = load::fetch(&mut send, addr, "/slow?ms=200").await;
                (ok, Instant::now())
            });
            tokio::time::sleep(Duration::from_millis(50)).await;
            server.terminate();
            let (ok, answered) = response.await.expect("the client");
            let exited = server.exited(Duration::from_secs(10)).await;
            samples[i].push(
                exited
                    .filter(|_| ok)
                    .map(|e| ms(e.saturating_duration_since(answered))),
            );
        }
    }
    let _ = writeln!(
        out,
        "## 2. Exit lag: last response byte to process exit ({runs} runs)\n"
    );
    let _ = writeln!(
        out,
        "| server | median | ratio to axum | runs (ms) |\n|---|---:|---:|---|"
    );
    let axum = samples[1].median();
    for (kind, s) in HTTP_KINDS.iter().zip(&samples) {
        let _ = writeln!(
            out,
            "| {kind} | {} | {} | {} |",
            show(s.median(), "ms", "10 s"),
            ratio(s.median(), axum),
            s.raw("")
        );
    }
    let _ = writeln!(out);
}

/// 3. SIGTERM to exit: idle, with idle keep-alive connections, with silent connections; and
/// 6. the memory those idle connections take.
async fn idle_shutdown(opts: &Opts, bin: &std::path::Path, out: &mut String) {
    let cap = Duration::from_secs(5);
    let variants = [
        "no connections".to_owned(),
        format!("{} idle keep-alive connections", opts.idle),
        format!("{} connections that never sent a request", opts.silent),
        format!(
            "{} connections stalled halfway through their request headers",
            opts.silent
        ),
    ];
    let mut exit = vec![vec![Samples::default(); HTTP_KINDS.len()]; variants.len()];
    let mut rss_idle = vec![Samples::default(); HTTP_KINDS.len()];
    let mut rss_base = vec![Samples::default(); HTTP_KINDS.len()];
    for _ in 0..opts.runs {
        for (v, _) in variants.iter().enumerate() {
            for (i, kind) in HTTP_KINDS.iter().enumerate() {
                let mut server = Server::start(bin, kind).await;
                let (mut idle, mut silent) = (Vec::new(), Vec::new());
                match v {
                    1 => {
                        rss_base[i].push(Some(server.rss_kib() as f64));
                        idle = load::idle_keep_alive(server.addr, opts.idle).await;
                        assert!(
                            idle.len() * 10 >= opts.idle * 9,
                            "only {} connections",
                            idle.len()
                        );
                        rss_idle[i].push(Some(server.rss_kib() as f64));
                    }
                    2 => silent = load::silent(server.addr, opts.silent).await,
                    3 => silent = load::half_sent(server.addr, opts.silent).await,
                    _ => {}
                }
                // Held a moment, as idle connections are: a server may treat a connection
                // made in the very instant of the shutdown differently (lameduck gives one
                // that has sent nothing 50 ms to send its first request).
                tokio::time::sleep(Duration::from_millis(100)).await;
                let sent = server.terminate();
                let exited = server.exited(cap).await;
                exit[v][i].push(exited.map(|e| ms(e.saturating_duration_since(sent))));
                drop((idle, silent));
            }
        }
    }
    let _ = writeln!(out, "## 3. Idle shutdown: SIGTERM to exit\n");
    let _ = writeln!(
        out,
        "| connections | server | median | ratio to hyper | runs (ms) |\n|---|---|---:|---:|---|"
    );
    for (v, variant) in variants.iter().enumerate() {
        let base = exit[v][0].median();
        for (kind, s) in HTTP_KINDS.iter().zip(&exit[v]) {
            let _ = writeln!(
                out,
                "| {variant} | {kind} | {} | {} | {} |",
                show(s.median(), "ms", "5 s"),
                ratio(s.median(), base),
                s.raw("")
            );
        }
    }
    let _ = writeln!(
        out,
        "\n## 6. Memory: resident set with {} idle keep-alive connections\n",
        opts.idle
    );
    let _ = writeln!(
        out,
        "| server | RSS idle (MiB) | RSS with connections (MiB) | per connection (KiB) | ratio to hyper |\n|---|---:|---:|---:|---:|"
    );
    let base = rss_idle[0].median();
    for (i, kind) in HTTP_KINDS.iter().enumerate() {
        let (b, w) = (
            rss_base[i].median().unwrap_or(0.0),
            rss_idle[i].median().unwrap_or(0.0),
        );
        let _ = writeln!(
            out,
            "| {kind} | {:.1} | {:.1} | {:.2} | {} |",
            b / 1024.0,
            w / 1024.0,
            (w - b) / opts.idle.max(1) as f64,
            ratio(rss_idle[i].median(), base)
        );
    }
    let _ = writeln!(out);
}

/// 4. `--slow` slow requests in flight at SIGTERM: all complete, and the exit follows the last.
async fn drain_at_scale(opts: &Opts, bin: &std::path::Path, out: &mut String) {
    let mut lag = vec![Samples::default(); HTTP_KINDS.len()];
    let mut completed = vec![Vec::new(); HTTP_KINDS.len()];
    for _ in 0..opts.runs {
        for (i, kind) in HTTP_KINDS.iter().enumerate() {
            let mut server = Server::start(bin, kind).await;
            let addr = server.addr;
            let mut requests = tokio::task::JoinSet::new();
            for _ in 0..opts.slow {
                requests.spawn(async move {
                    let mut send = load::h1(addr).await?;
                    load::fetch(&mut send, addr, "/slow?ms=3000")
                        .await
                        .then(Instant::now)
                });
            }
            // Each request takes 3 s; 1.5 s is ample for all of them to connect and reach the
            // handler, so what is measured is the drain, not the connecting.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            server.terminate();
            let mut ok = 0;
            let mut last = None;
            while let Some(done) = requests.join_next().await {
                if let Ok(Some(at)) = done {
                    ok += 1;
                    last = last.max(Some(at));
                }
            }
            let exited = server.exited(Duration::from_secs(10)).await;
            completed[i].push(ok);
            lag[i].push(
                exited
                    .zip(last)
                    .map(|(e, l)| ms(e.saturating_duration_since(l))),
            );
        }
    }
    let _ = writeln!(
        out,
        "## 4. Drain at scale: {} slow requests (3 s) in flight at SIGTERM\n",
        opts.slow
    );
    let _ = writeln!(
        out,
        "| server | completed (each run) | exit lag after the last response (median) | runs (ms) |\n|---|---|---:|---|"
    );
    for (i, kind) in HTTP_KINDS.iter().enumerate() {
        let done: Vec<String> = completed[i]
            .iter()
            .map(|n| format!("{n}/{}", opts.slow))
            .collect();
        let _ = writeln!(
            out,
            "| {kind} | {} | {} | {} |",
            done.join(", "),
            show(lag[i].median(), "ms", "10 s"),
            lag[i].raw("")
        );
    }
    let _ = writeln!(out);
}

/// 7. A deploy on one host: a restart against an upgrade in place, under the same load.
async fn deploys(opts: &Opts, bin: &std::path::Path, out: &mut String) {
    use deploy::Action;

    let pid_file = std::env::temp_dir().join(format!("lameduck-bench-{}.pid", std::process::id()));
    let bench = bin.display().to_string();
    let tableflip = deploy::tableflip_server(bin);
    // Each command line with `{addr}` where the address goes.
    let pid = pid_file.display().to_string();
    let line = |args: &[&str]| {
        args.iter()
            .map(|a| (*a).to_owned())
            .collect::<Vec<String>>()
    };
    let mut rows: Vec<(&str, Action, Vec<String>)> = vec![
        (
            "axum (`serve` + graceful shutdown)",
            Action::Restart,
            line(&[&bench, "axum", "{addr}"]),
        ),
        (
            "lameduck",
            Action::Restart,
            line(&[&bench, "lameduck", "{addr}"]),
        ),
        (
            "lameduck",
            Action::Upgrade,
            line(&[&bench, "lameduck", "{addr}", "--pid-file", &pid]),
        ),
    ];
    if let Some(tableflip) = &tableflip {
        let exe = tableflip.display().to_string();
        rows.push((
            "Go net/http + cloudflare/tableflip",
            Action::Upgrade,
            line(&[&exe, "-addr", "{addr}", "-pid-file", &pid]),
        ));
    }
    let _ = writeln!(
        out,
        "## 7. A deploy under load (8 fresh-connection and 8 keep-alive clients; the deploy 0.7 s in, 0.7 s more after)\n"
    );
    let _ = writeln!(
        out,
        "| server | deploy | ok | refused | failed | signal to new process serving (median) | its own time to ready (median) | refused per run |\n|---|---|---:|---:|---:|---:|---:|---|"
    );
    for (name, action, command) in &rows {
        let (mut ok, mut refused, mut failed) = (0, 0, 0);
        let (mut handover, mut own) = (Samples::default(), Samples::default());
        let mut per_run = Vec::new();
        for _ in 0..opts.runs {
            let addr = free_addr();
            let command: Vec<String> = command
                .iter()
                .map(|a| a.replace("{addr}", &addr.to_string()))
                .collect();
            let outcome = deploy::once(&command, addr, *action, &pid_file).await;
            ok += outcome.ok;
            refused += outcome.refused;
            failed += outcome.failed;
            per_run.push(outcome.refused.to_string());
            handover.push(outcome.handover_ms);
            own.push(outcome.own_ready_ms);
        }
        let deploy = match action {
            Action::Restart => "restart (SIGTERM, exit, start)",
            Action::Upgrade => "upgrade in place (SIGHUP)",
        };
        let _ = writeln!(
            out,
            "| {name} | {deploy} | {ok} | {refused} | {failed} | {} | {} | {} |",
            show(handover.median(), "ms", "30 s"),
            show(own.median(), "ms", "30 s"),
            per_run.join(", ")
        );
    }
    if tableflip.is_none() {
        let _ = writeln!(
            out,
            "\n(tableflip skipped: no `tableflip-server` beside `bench-server`; `scripts/bench.sh` builds it when Go and the Debian package `golang-github-cloudflare-tableflip-dev` are installed)"
        );
    }
    let _ = writeln!(out);
    let _ = std::fs::remove_file(&pid_file);
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// 5. Start to ready: the demo (three servers and SQLite) against a bare hyper server.
async fn time_to_ready(opts: &Opts, bin: &std::path::Path, out: &mut String) {
    let demo = opts
        .demo_bin
        .clone()
        .unwrap_or_else(|| beside_me("lameduck-demo"));
    if !demo.exists() {
        let _ = writeln!(
            out,
            "## 5. Time to ready\n\nskipped: no {} (build it: `cargo build --release -p lameduck-demo`)\n",
            demo.display()
        );
        return;
    }
    let mut hyper = Samples::default();
    let mut demo_ready = Samples::default();
    for run in 0..opts.runs {
        // The baseline: spawn to the first accepted connection.
        let began = Instant::now();
        let mut child = tokio::process::Command::new(bin)
            .args(["hyper", &free_addr().to_string()])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("bench-server");
        let addr = read_ready(&mut child).await;
        hyper.push(wait_accepting(addr, began).await);
        server::signal_term(child.id());
        let _ = child.wait().await;

        let ports: Vec<String> = (0..3).map(|_| free_addr().to_string()).collect();
        let db =
            std::env::temp_dir().join(format!("lameduck-bench-{}-{run}.db", std::process::id()));
        let began = Instant::now();
        let mut child = tokio::process::Command::new(&demo)
            .args([
                "--http", &ports[0], "--grpc-a", &ports[1], "--grpc-b", &ports[2],
            ])
            .arg("--db")
            .arg(&db)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("lameduck-demo");
        demo_ready.push(wait_readyz(ports[0].parse().expect("addr"), began).await);
        server::signal_term(child.id());
        let _ = child.wait().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
        }
    }
    let _ = writeln!(
        out,
        "## 5. Time to ready (spawn to serving, probed every 0.2 ms)\n"
    );
    let _ = writeln!(
        out,
        "| process | median | ratio to bare hyper | runs (ms) |\n|---|---:|---:|---|"
    );
    let base = hyper.median();
    let _ = writeln!(
        out,
        "| bare hyper (one listener) | {} | 1.00 | {} |",
        show(base, "ms", "10 s"),
        hyper.raw("")
    );
    let _ = writeln!(
        out,
        "| lameduck-demo (HTTP + 2 gRPC + SQLite, `/readyz` 200) | {} | {} | {} |",
        show(demo_ready.median(), "ms", "10 s"),
        ratio(demo_ready.median(), base),
        demo_ready.raw("")
    );
    let _ = writeln!(out);
}

async fn read_ready(child: &mut tokio::process::Child) -> SocketAddr {
    use tokio::io::AsyncBufReadExt;
    let stdout = child.stdout.take().expect("piped");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(addr) = line.strip_prefix("READY ") {
            return addr.parse().expect("an address");
        }
    }
    panic!("no READY line")
}

async fn wait_accepting(addr: SocketAddr, began: Instant) -> Option<f64> {
    while began.elapsed() < Duration::from_secs(10) {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Some(ms(began.elapsed()));
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    None
}

async fn wait_readyz(addr: SocketAddr, began: Instant) -> Option<f64> {
    while began.elapsed() < Duration::from_secs(10) {
        if let Some(mut send) = load::h1(addr).await
            && load::fetch(&mut send, addr, "/readyz").await
        {
            return Some(ms(began.elapsed()));
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    None
}
