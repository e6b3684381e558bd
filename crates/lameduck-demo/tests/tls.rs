//! The demo over TLS, as the README shows it: a self-signed pair made by `openssl`, all three
//! ports on TLS (`--tls-cert`, `--tls-key`), `curl --cacert` over HTTP/1.1 and h2, plain HTTP
//! refused, and a clean exit.
#![cfg(unix)]

use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../lameduck/tests/support/tools.rs"]
mod tools;
use tools::free_port;

/// Generous: the machines are shared and noisy.
const WAIT: Duration = Duration::from_secs(30);

/// The demo, killed if the test fails.
struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `curl` over TLS trusting `ca`: its exit code and output.
fn curl(curl: &Path, ca: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(curl)
        .args(["--silent", "--show-error", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn all_three_ports_serve_tls_with_a_self_signed_pair_and_curl_trusts_it() {
    let dir = std::env::temp_dir().join(format!("lameduck-demo-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The README's pair.
    let (Some((cert, key)), Some(curl_bin)) =
        (tools::self_signed(&dir), tools::tool("curl", "curl"))
    else {
        return;
    };
    let ports = [free_port(), free_port(), free_port()];
    let addr = |port: u16| format!("127.0.0.1:{port}");
    let demo = Command::new(env!("CARGO_BIN_EXE_lameduck-demo"))
        .args([
            "--http",
            &addr(ports[0]),
            "--grpc-a",
            &addr(ports[1]),
            "--grpc-b",
        ])
        .arg(addr(ports[2]))
        .arg("--db")
        .arg(dir.join("demo.db"))
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut demo = Demo(demo);
    let began = Instant::now();
    while ports.iter().any(|p| TcpStream::connect(addr(*p)).is_err()) {
        assert!(began.elapsed() < WAIT, "the demo did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("https://localhost:{}/readyz", ports[0]);
    // HTTP/1.1, then h2 by ALPN.
    let (code, text) = curl(&curl_bin, &cert, &["--http1.1", &url]);
    assert_eq!((code, text.as_str()), (0, "ready\n"));
    let (code, text) = curl(
        &curl_bin,
        &cert,
        &["--http2", "-o", "/dev/null", "-w", "%{http_version}", &url],
    );
    assert_eq!((code, text.as_str()), (0, "2"));
    // The gRPC ports speak TLS too (and only h2): a TLS handshake works there.
    for port in &ports[1..] {
        let grpc = format!("https://localhost:{port}/");
        let (code, text) = curl(
            &curl_bin,
            &cert,
            &["--http2", "-o", "/dev/null", "-w", "%{http_version}", &grpc],
        );
        assert_eq!((code, text.as_str()), (0, "2"), "port {port}");
    }
    // Plain HTTP to the TLS port gets no HTTP answer.
    let (code, text) = curl(
        &curl_bin,
        &cert,
        &[&format!("http://localhost:{}/readyz", ports[0])],
    );
    assert_ne!(code, 0, "{text}");

    let pid = demo.0.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let began = Instant::now();
    let status = loop {
        if let Some(status) = demo.0.try_wait().unwrap() {
            break status;
        }
        assert!(began.elapsed() < WAIT, "the demo did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}
