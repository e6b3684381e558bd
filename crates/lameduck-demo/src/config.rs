//! The command line: every flag also settable as `LAMEDUCK_<NAME>`; durations in human form
//! ("500ms", "30s"). A bad value is a usage error (exit code 2) before anything starts.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// The demo service: an HTTP API, two gRPC servers, and a write-behind store on SQLite.
#[derive(Parser, Debug, Clone)]
#[command(name = "lameduck-demo", version, about)]
pub struct Config {
    /// HTTP API address (`/slow`, `/fast`, `/kv/{key}`, `/livez`, `/readyz`); not bound when
    /// a socket named `http` is passed (systemd socket activation).
    #[arg(long, env = "LAMEDUCK_HTTP", default_value = "127.0.0.1:8080")]
    pub http: String,
    /// gRPC server A address (`demo.v1.Echo`, health, reflection); not bound when a socket
    /// named `grpc-a` is passed.
    #[arg(long, env = "LAMEDUCK_GRPC_A", default_value = "127.0.0.1:50051")]
    pub grpc_a: String,
    /// gRPC server B address (`demo.v1.Store`, health, reflection); not bound when a socket
    /// named `grpc-b` is passed.
    #[arg(long, env = "LAMEDUCK_GRPC_B", default_value = "127.0.0.1:50052")]
    pub grpc_b: String,
    /// Admin listener address (`/metrics` in the Prometheus text format, `/livez`, `/readyz`):
    /// it serves through the whole shutdown (lame duck, drain, hooks) and closes last. Off
    /// when not given. Not bound when a socket named `admin` is passed.
    #[arg(long, env = "LAMEDUCK_ADMIN")]
    pub admin: Option<String>,
    /// How long the admin listener serves on after the last hook, so that a last scrape sees
    /// the end of the shutdown (the drain's duration, each hook's): a little more than the
    /// scrape interval. It delays the exit by as much.
    #[arg(long, env = "LAMEDUCK_ADMIN_LINGER", default_value = "0s", value_parser = duration)]
    pub admin_linger: Duration,
    /// SQLite database file (created if missing).
    #[arg(long, env = "LAMEDUCK_DB", default_value = "lameduck-demo.db")]
    pub db: PathBuf,
    /// How long the drain may take before in-flight requests are cut off.
    #[arg(long, env = "LAMEDUCK_DRAIN_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub drain_timeout: Duration,
    /// How long to keep serving with readiness off before the listeners close.
    #[arg(long, env = "LAMEDUCK_LAME_DUCK", default_value = "0s", value_parser = duration)]
    pub lame_duck: Duration,
    /// How often acknowledged writes are flushed to SQLite; `0s` writes through (each write is
    /// in the database before it is acknowledged).
    #[arg(long, env = "LAMEDUCK_FLUSH_INTERVAL", default_value = "1s", value_parser = duration)]
    pub flush_interval: Duration,
    /// How long a new connection on any of the three servers may take to show it speaks HTTP
    /// (a first request head, or the HTTP/2 preface and a frame) before it is closed; `0s`
    /// turns it off.
    #[arg(long, env = "LAMEDUCK_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub handshake_timeout: Duration,
    /// HTTP/1.1: how long a request head (after the first) may take from its first byte; `0s`
    /// turns it off.
    #[arg(long, env = "LAMEDUCK_HEADER_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub header_timeout: Duration,
    /// How long a connection may stay with nothing in flight before it is closed (HTTP/1.1)
    /// or sent GOAWAY (HTTP/2, gRPC); `0s` turns it off.
    #[arg(long, env = "LAMEDUCK_IDLE_TIMEOUT", default_value = "120s", value_parser = duration)]
    pub idle_timeout: Duration,
    /// How long a request body may go without data while it is read (408, a reset stream, or
    /// gRPC CANCELLED). Unset: 30 s on the HTTP port and off on the gRPC ports (streaming calls
    /// may be quiet for long); set, on all three; `0s` turns it off.
    #[arg(long, env = "LAMEDUCK_BODY_TIMEOUT", value_parser = duration)]
    pub body_timeout: Option<Duration>,
    /// How many connections each of the three servers holds at once; at the cap, newcomers
    /// wait in the kernel's queue.
    #[arg(long, env = "LAMEDUCK_MAX_CONNECTIONS", default_value_t = 16_384,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// How long a connection may live, on all three servers: then GOAWAY (HTTP/2, gRPC) or
    /// `Connection: close` (HTTP/1), jittered ±10 %, so that clients behind an L4 balancer
    /// spread again after a rolling restart. `0s` (the default): no limit.
    #[arg(long, env = "LAMEDUCK_MAX_CONNECTION_AGE", default_value = "0s", value_parser = duration)]
    pub max_connection_age: Duration,
    /// After its maximum age, how long a connection's requests may take before they are cut
    /// off (gRPC: UNAVAILABLE).
    #[arg(long, env = "LAMEDUCK_MAX_CONNECTION_AGE_GRACE", default_value = "30s", value_parser = duration)]
    pub max_connection_age_grace: Duration,
    /// The write-behind cache's bound, in bytes of keys and values (`64MiB`, `500KiB`,
    /// `1048576`): a write that does not fit waits up to 2 s for a flush to make room, then is
    /// refused (503 with `Retry-After`, gRPC UNAVAILABLE), never taken and dropped.
    #[arg(long, env = "LAMEDUCK_CACHE_MAX_BYTES", default_value = "64MiB", value_parser = bytes)]
    pub cache_max_bytes: usize,
    /// Serve all three ports over TLS with this certificate chain (PEM, leaf first), re-read
    /// when it changes; needs `--tls-key`.
    #[arg(long, env = "LAMEDUCK_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, env = "LAMEDUCK_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// With TLS: require client certificates signed by a CA of this PEM bundle (mTLS).
    #[arg(long, env = "LAMEDUCK_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// A file naming the serving process: written once ready, taken over by the new process of
    /// an upgrade (SIGHUP), removed at exit if it still names this one.
    #[arg(long, env = "LAMEDUCK_PID_FILE")]
    pub pid_file: Option<PathBuf>,
    /// Write the shutdown report (JSON) to this file.
    #[arg(long, env = "LAMEDUCK_REPORT_JSON")]
    pub report_json: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "LAMEDUCK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How logs are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line.
    Json,
}

fn bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        other => {
            return Err(format!(
                "`{text}`: unknown unit `{other}` (B, KiB, MiB, GiB)"
            ));
        }
    };
    let number: usize = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size (like 64MiB, 500KiB, 1048576)"))?;
    number
        .checked_mul(1 << shift)
        .filter(|b| *b > 0)
        .ok_or_else(|| format!("`{text}`: out of range (at least 1 byte)"))
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration (like 500ms, 30s, 1m): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_human_durations() {
        let config = Config::try_parse_from(["lameduck-demo"]).unwrap();
        assert_eq!(config.http, "127.0.0.1:8080");
        assert_eq!(config.drain_timeout, Duration::from_secs(30));
        assert_eq!(config.flush_interval, Duration::from_secs(1));
        let config = Config::try_parse_from(["lameduck-demo", "--drain-timeout", "500ms"]).unwrap();
        assert_eq!(config.drain_timeout, Duration::from_millis(500));
    }

    #[test]
    fn a_bad_duration_is_a_usage_error() {
        let error = Config::try_parse_from(["lameduck-demo", "--lame-duck", "soon"]).unwrap_err();
        assert_eq!(error.exit_code(), 2);
        assert!(
            error.to_string().contains("`soon` is not a duration"),
            "{error}"
        );
    }

    #[test]
    fn sizes_read_with_binary_units_and_nonsense_is_a_usage_error() {
        let config = Config::try_parse_from(["lameduck-demo"]).unwrap();
        assert_eq!(config.cache_max_bytes, 64 << 20);
        assert_eq!(config.max_connections, 16_384);
        assert_eq!(bytes("500KiB"), Ok(500 << 10));
        assert_eq!(bytes("1048576"), Ok(1 << 20));
        assert_eq!(bytes("2G"), Ok(2 << 30));
        assert!(bytes("0").is_err());
        assert!(bytes("12 parsecs").unwrap_err().contains("unknown unit"));
        let error =
            Config::try_parse_from(["lameduck-demo", "--cache-max-bytes", "lots"]).unwrap_err();
        assert_eq!(error.exit_code(), 2);
        let error =
            Config::try_parse_from(["lameduck-demo", "--max-connections", "0"]).unwrap_err();
        assert_eq!(error.exit_code(), 2);
    }
}
