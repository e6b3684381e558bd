//! The command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Verify a service's graceful shutdown under load.
///
/// Starts the command, waits until it is ready, drives HTTP and gRPC load at it (and holds
/// WebSockets open, `--ws`), sends a signal, and watches what happens: every request is classified (ok; refused: never accepted;
/// failed: accepted, then reset, truncated, 5xx, a gRPC status other than OK, or timed out), and
/// the exit is timed. Exits 0 only if no accepted request failed, every WebSocket was closed
/// with a Close frame after the signal, the exit code matched, the
/// restart check (if asked) passed, and no acknowledged write (`--write`) was lost. `--upgrade`
/// drills an upgrade in place, `--rollout N` a rolling restart behind a load balancer.
/// `--metrics-url` adds the service's own view (its readiness, state and requests in flight,
/// scraped from its Prometheus metrics) to the report and the picture.
#[derive(Parser, Debug, Clone)]
#[command(name = "lameduck-drill", version, about, long_about = None)]
#[command(group = clap::ArgGroup::new("ready").multiple(false))]
#[command(group = clap::ArgGroup::new("second_life").multiple(false).args(["restart", "upgrade", "rollout"]))]
pub struct DrillArgs {
    /// Ready when a GET of this URL answers 200.
    #[arg(long, group = "ready", value_name = "URL")]
    pub ready_url: Option<String>,
    /// Ready when this address accepts a TCP connection.
    #[arg(long, group = "ready", value_name = "HOST:PORT")]
    pub ready_tcp: Option<String>,
    /// Ready when this gRPC server's health check (service "") says SERVING.
    #[arg(long, group = "ready", value_name = "HOST:PORT")]
    pub ready_grpc: Option<String>,
    /// A URL to GET as load (repeatable; the workers take them in turn). Without a readiness
    /// option, ready means the first URL's address accepts TCP.
    #[arg(
        long = "url",
        value_name = "URL",
        required_unless_present_any = ["grpc", "front", "write", "ws"]
    )]
    pub urls: Vec<String>,
    /// Speak HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1 (for `--url`, `--write`
    /// and `--read`); over `https://`, offer only `h2` by ALPN (otherwise `h2` and
    /// `http/1.1`, and the server picks).
    #[arg(long)]
    pub http2: bool,
    /// For `https://` URLs (load, audit, `--ready-url`, `--front`, `--metrics-url`): trust the
    /// CAs of this PEM bundle.
    #[arg(long, value_name = "PEM", conflicts_with = "insecure")]
    pub cacert: Option<PathBuf>,
    /// For `https://` URLs: take any certificate (the handshake's signatures are still
    /// checked).
    #[arg(long)]
    pub insecure: bool,
    /// Concurrent HTTP workers, each on its own keep-alive connection.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// A gRPC server to load (cleartext HTTP/2), with `--call`; alongside `--url` load or alone.
    #[arg(long, value_name = "HOST:PORT")]
    pub grpc: Option<String>,
    /// A method to call (`package.Service/Method`, unary or server-streaming; repeatable: the
    /// gRPC workers take them in turn). Its descriptors come from the server's reflection
    /// (v1, or v1alpha), or from `--proto`.
    #[arg(long = "call", value_name = "METHOD", requires = "grpc")]
    pub calls: Vec<String>,
    /// The request of each `--call` as JSON (the protobuf JSON mapping), in the same order;
    /// without it, `{}`.
    #[arg(long = "data", value_name = "JSON", requires = "calls")]
    pub data: Vec<String>,
    /// A `.proto` file that defines the called services (compiled in-process), instead of the
    /// server's reflection.
    #[arg(long, value_name = "FILE", requires = "grpc")]
    pub proto: Option<PathBuf>,
    /// A directory `--proto`'s imports are found in (repeatable; default: the file's own
    /// directory).
    #[arg(long = "import-path", value_name = "DIR", requires = "proto")]
    pub import_paths: Vec<PathBuf>,
    /// Concurrent gRPC workers, each on its own HTTP/2 connection.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub grpc_concurrency: u16,
    /// A WebSocket to hold open through the shutdown (`ws://`, or `wss://` with `--cacert` or
    /// `--insecure`; repeatable; alongside the other load or alone): `--ws-clients` clients
    /// connect before the signal (none is attempted after it) and count the messages they
    /// receive. Each must see the server's Close frame with 1001 "going away", 1012 "service
    /// restart" or 1000 after the signal, and then a clean end; a connection cut without a
    /// Close (what a browser reports as 1006), another code, or a close before the signal fails
    /// the drill. A client that could not connect before the signal counts as refused.
    #[arg(long = "ws", value_name = "URL", conflicts_with = "rollout")]
    pub ws: Vec<String>,
    /// WebSocket clients per `--ws` URL, each on its own connection.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub ws_clients: u16,
    /// Each WebSocket client sends a text message this often (default: never; it only
    /// listens).
    #[arg(long, value_name = "DURATION", value_parser = nonzero_duration, requires = "ws")]
    pub ws_send_every: Option<Duration>,
    /// The audit's writes: `METHOD URL` with `{n}` in the URL, a unique key (`PUT` without a
    /// method); each body is a unique value. Every write answered 2xx is read back with
    /// `--read` from the instance that serves after the restart, the upgrade or the rollout,
    /// and a lost or changed one fails the drill.
    #[arg(
        long,
        value_name = "METHOD URL",
        requires = "read",
        requires = "second_life"
    )]
    pub write: Option<String>,
    /// The audit's reads: `METHOD URL` with `{n}` (`GET` without a method); a 2xx answer's
    /// body must be the value written, a 404 or 410 means the write was lost.
    #[arg(long, value_name = "METHOD URL", requires = "write")]
    pub read: Option<String>,
    /// The audit's writes as gRPC calls on the `--grpc` server (`package.Service/Method`),
    /// instead of `--write`: acknowledged means status OK.
    #[arg(
        long,
        value_name = "METHOD",
        requires = "grpc",
        requires = "write_data",
        requires = "read_call",
        requires = "second_life",
        conflicts_with = "write"
    )]
    pub write_call: Option<String>,
    /// The request of `--write-call` as JSON, with `{n}` (the key) and `{value}` (the value)
    /// in it, like `{"key": "{n}", "value": "{value}"}`.
    #[arg(long, value_name = "JSON", requires = "write_call")]
    pub write_data: Option<String>,
    /// The audit's reads as gRPC calls: the answer must hold the value (as a string field);
    /// NOT_FOUND means the write was lost.
    #[arg(
        long,
        value_name = "METHOD",
        requires = "write_call",
        requires = "read_data"
    )]
    pub read_call: Option<String>,
    /// The request of `--read-call` as JSON, with `{n}` in it, like `{"key": "{n}"}`.
    #[arg(long, value_name = "JSON", requires = "read_call")]
    pub read_data: Option<String>,
    /// Concurrent writers, each on its own keep-alive connection.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    pub write_concurrency: u16,
    /// The signal to send.
    #[arg(long, value_enum, default_value_t = SignalName::Term)]
    pub signal: SignalName,
    /// How long after ready the signal is sent.
    #[arg(long, default_value = "2s", value_parser = duration)]
    pub signal_after: Duration,
    /// Send the signal a second time, this long after the first (a forced exit).
    #[arg(long, value_parser = duration)]
    pub second_signal_after: Option<Duration>,
    /// How long after the (first) signal the command may take to exit; then it is killed.
    #[arg(long, default_value = "60s", value_parser = duration)]
    pub exit_timeout: Duration,
    /// The exit code a correct shutdown gives.
    #[arg(long, default_value_t = 0)]
    pub expect_exit_code: i32,
    /// Start the command again right after it exits, and require it to become ready (the
    /// `address already in use` check).
    #[arg(long)]
    pub restart: bool,
    /// Drill an upgrade in place instead of a stop: send `--upgrade-signal`, follow
    /// `--pid-file` to the new process, wait for the old one to exit, load the new one for
    /// `--after-upgrade`, then stop it with `--signal`. A refused request fails the drill too:
    /// an upgrade refuses nothing.
    #[arg(long, requires = "pid_file", conflicts_with = "second_signal_after")]
    pub upgrade: bool,
    /// The signal that starts the upgrade.
    #[arg(long, value_enum, default_value_t = SignalName::Hup)]
    pub upgrade_signal: SignalName,
    /// The file that names the serving process (the service's `--pid-file`): its PID changes
    /// when the new process is ready.
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<PathBuf>,
    /// How long the load goes on against the new process once the old one has exited.
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub after_upgrade: Duration,
    /// Roll N instances one by one behind a load balancer: the command (with `{i}`, the
    /// instance's number from 1, and `{port}`, its port from `--ports`) starts N times, each
    /// must be ready (the readiness option may use the placeholders too), the load goes
    /// through the balancer (`--front`), and each instance in turn gets `--signal`, must exit
    /// with the expected code, starts again and must be ready, then `--settle`. Through a
    /// balancer a refused request is a failed one: it must hide every restart.
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u16).range(1..=64),
        requires = "front",
        requires = "ready",
        conflicts_with = "second_signal_after"
    )]
    pub rollout: Option<u16>,
    /// The load balancer's URL: the rollout waits until a GET of it answers 2xx before the
    /// load begins, and it is the load without `--url` or `--grpc`.
    #[arg(long, value_name = "URL", requires = "rollout")]
    pub front: Option<String>,
    /// Runs the load balancer too (a shell command, like `haproxy -f haproxy.cfg`): started
    /// before the instances, stopped (SIGTERM) once the load is over.
    #[arg(long, value_name = "COMMAND", requires = "rollout")]
    pub front_command: Option<String>,
    /// Each instance's `{port}`, in order (one per instance).
    #[arg(
        long,
        value_name = "PORT,...",
        value_delimiter = ',',
        requires = "rollout"
    )]
    pub ports: Vec<u16>,
    /// How long the rollout waits after an instance is ready again before it restarts the
    /// next (the balancer's health check must see it up).
    #[arg(long, default_value = "1s", value_parser = duration, requires = "rollout")]
    pub settle: Duration,
    /// Scrape the service's Prometheus metrics at this URL (`http://`, or `https://` with
    /// `--cacert` or `--insecure`) from readiness until the process exits (with `--upgrade`,
    /// the old one), every `--metrics-interval`, and keep the lameduck series
    /// (`lameduck_ready`, `lameduck_state`, `lameduck_lame_duck`, `lameduck_in_flight` and
    /// `lameduck_connections` per service) in the report and the picture. Best served by an
    /// admin listener that stays open through the drain; failed scrapes are counted, never a
    /// failure of the drill (a URL that never answered before the signal is a warning).
    #[arg(long, value_name = "URL", conflicts_with = "rollout")]
    pub metrics_url: Option<String>,
    /// How often `--metrics-url` is scraped.
    #[arg(
        long,
        default_value = "100ms",
        value_parser = nonzero_duration,
        requires = "metrics_url"
    )]
    pub metrics_interval: Duration,
    /// How long the command may take to become ready.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub ready_timeout: Duration,
    /// A request taking longer than this fails.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub request_timeout: Duration,
    /// Write the report as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Write every request (kind, start and end, outcome, status, error) to this file, one
    /// JSON object a line.
    #[arg(long, value_name = "PATH")]
    pub records: Option<PathBuf>,
    /// Write the timeline as an SVG picture to this file.
    #[arg(long, value_name = "PATH")]
    pub svg: Option<PathBuf>,
    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,
    /// The command that runs the service, and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// A shutdown signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[value(rename_all = "UPPER")]
#[serde(rename_all = "UPPERCASE")]
pub enum SignalName {
    /// SIGTERM: what Kubernetes, systemd and Docker send.
    Term,
    /// SIGINT: Ctrl+C.
    Int,
    /// SIGQUIT.
    Quit,
    /// SIGHUP: an upgrade in place (lameduck, nginx's reload, tableflip).
    Hup,
    /// SIGUSR1.
    Usr1,
    /// SIGUSR2: nginx's binary upgrade.
    Usr2,
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration (like 500ms, 2s, 1m): {e}"))
}

fn nonzero_duration(text: &str) -> Result<Duration, String> {
    match duration(text)? {
        Duration::ZERO => Err(format!("`{text}`: must be longer than 0")),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_interface() {
        let args = DrillArgs::try_parse_from([
            "lameduck-drill",
            "--ready-url",
            "http://127.0.0.1:8080/readyz",
            "--url",
            "http://127.0.0.1:8080/slow?ms=200",
            "--url",
            "http://127.0.0.1:8080/fast",
            "--signal",
            "INT",
            "--signal-after",
            "500ms",
            "--second-signal-after",
            "1s",
            "--restart",
            "--",
            "lameduck-demo",
            "--lame-duck",
            "1s",
        ])
        .unwrap();
        assert_eq!(args.urls.len(), 2);
        assert_eq!(args.signal, SignalName::Int);
        assert_eq!(args.signal_after, Duration::from_millis(500));
        assert_eq!(args.command, ["lameduck-demo", "--lame-duck", "1s"]);
        assert_eq!(args.concurrency, 8);
    }

    #[test]
    fn one_readiness_option_at_most() {
        let error = DrillArgs::try_parse_from([
            "lameduck-drill",
            "--ready-tcp",
            "a:1",
            "--ready-grpc",
            "a:2",
            "--url",
            "http://a:1/",
            "--",
            "x",
        ])
        .unwrap_err();
        assert_eq!(error.exit_code(), 2);
    }

    #[test]
    fn an_upgrade_needs_the_pid_file_and_excludes_a_restart() {
        let base = [
            "lameduck-drill",
            "--url",
            "http://127.0.0.1:1/",
            "--upgrade",
        ];
        let without = DrillArgs::try_parse_from(base.iter().chain(&["--", "svc"]));
        assert!(without.is_err(), "--upgrade without --pid-file");
        let both = DrillArgs::try_parse_from(base.iter().chain(&[
            "--pid-file",
            "p",
            "--restart",
            "--",
            "svc",
        ]));
        assert!(both.is_err(), "--upgrade with --restart");
        let args = DrillArgs::try_parse_from(base.iter().chain(&["--pid-file", "p", "--", "svc"]))
            .unwrap();
        assert!(args.upgrade);
        assert_eq!(args.upgrade_signal, SignalName::Hup);
        assert_eq!(args.after_upgrade, Duration::from_secs(1));
    }

    #[test]
    fn websocket_urls_have_their_own_flag_and_defaults() {
        let parse = |extra: &[&str]| {
            DrillArgs::try_parse_from(["lameduck-drill"].iter().chain(extra).chain(&["--", "svc"]))
        };
        let args = parse(&["--ws", "ws://127.0.0.1:1/ws"]).unwrap();
        assert_eq!(args.ws, ["ws://127.0.0.1:1/ws"]);
        assert!(args.urls.is_empty(), "--ws alone is load enough");
        assert_eq!(args.ws_clients, 8);
        assert_eq!(args.ws_send_every, None);
        let args = parse(&[
            "--ws",
            "ws://a/1",
            "--ws",
            "wss://a/2",
            "--ws-clients",
            "3",
            "--ws-send-every",
            "250ms",
        ])
        .unwrap();
        assert_eq!(args.ws.len(), 2);
        assert_eq!(args.ws_clients, 3);
        assert_eq!(args.ws_send_every, Some(Duration::from_millis(250)));
        assert!(parse(&["--ws", "ws://a/", "--ws-clients", "0"]).is_err());
        assert!(parse(&["--url", "http://a/", "--ws-send-every", "1s"]).is_err());
    }

    #[test]
    fn the_metrics_options_default_to_a_tenth_of_a_second_and_refuse_zero() {
        let base = ["lameduck-drill", "--url", "http://127.0.0.1:1/"];
        let with = |extra: &[&str]| {
            DrillArgs::try_parse_from(base.iter().chain(extra).chain(&["--", "svc"]))
        };
        let args = with(&["--metrics-url", "http://127.0.0.1:9/metrics"]).unwrap();
        assert_eq!(
            args.metrics_url.as_deref(),
            Some("http://127.0.0.1:9/metrics")
        );
        assert_eq!(args.metrics_interval, Duration::from_millis(100));
        let args = with(&["--metrics-url", "http://a/m", "--metrics-interval", "1s"]).unwrap();
        assert_eq!(args.metrics_interval, Duration::from_secs(1));
        let zero = with(&["--metrics-url", "http://a/m", "--metrics-interval", "0s"]).unwrap_err();
        assert!(zero.to_string().contains("must be longer than 0"), "{zero}");
        assert!(
            with(&["--metrics-interval", "1s"]).is_err(),
            "needs --metrics-url"
        );
        assert!(with(&[]).unwrap().metrics_url.is_none());
    }
}
