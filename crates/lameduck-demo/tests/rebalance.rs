//! Re-balancing after a rolling restart, behind an L4 balancer: two demo instances behind
//! HAProxy in `mode tcp` (what kube-proxy is to a Kubernetes Service), 32 HTTP/2 clients
//! holding a connection each through it. One instance is restarted: its clients reconnect to
//! the other. With a maximum connection age they spread back to about half and half within
//! age + grace; without one they stay where they went. Each instance's admin listener says
//! how many connections it holds (`lameduck_connections{service="http"}`).
#![cfg(unix)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};

#[path = "../../lameduck/tests/support/tools.rs"]
mod tools;
use tools::{curl_get as curl, free_port};

const DEMO: &str = env!("CARGO_BIN_EXE_lameduck-demo");
const WAIT: Duration = Duration::from_secs(20);
const CLIENTS: usize = 32;

fn temp_dir(name: &str) -> PathBuf {
    tools::fresh_dir("demo-rebalance", name)
}

/// One demo instance, on its own ports, with `flags`; killed when dropped.
struct Instance {
    http: u16,
    admin: u16,
    db: PathBuf,
    flags: Vec<String>,
    child: Option<Child>,
}

impl Instance {
    fn new(dir: &Path, name: &str, flags: &[&str]) -> Instance {
        Instance {
            http: free_port(),
            admin: free_port(),
            db: dir.join(format!("{name}.db")),
            flags: flags.iter().map(|f| f.to_string()).collect(),
            child: None,
        }
    }

    /// Starts it and waits until it is ready.
    fn start(&mut self) {
        let child = Command::new(DEMO)
            .args(["--http", &format!("127.0.0.1:{}", self.http)])
            .args(["--grpc-a", &format!("127.0.0.1:{}", free_port())])
            .args(["--grpc-b", &format!("127.0.0.1:{}", free_port())])
            .args(["--admin", &format!("127.0.0.1:{}", self.admin)])
            .arg("--db")
            .arg(&self.db)
            .args(&self.flags)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let began = Instant::now();
        while curl(&format!("http://127.0.0.1:{}/readyz", self.http)).is_none() {
            assert!(began.elapsed() < WAIT, "the demo did not get ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, and waits for the exit (its drain sends its connections GOAWAY).
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let began = Instant::now();
        while child.try_wait().unwrap().is_none() {
            assert!(began.elapsed() < WAIT, "the demo did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The HTTP connections it holds now (0 when it does not answer).
    fn connections(&self) -> u32 {
        let Some(text) = curl(&format!("http://127.0.0.1:{}/metrics", self.admin)) else {
            return 0;
        };
        text.lines()
            .find(|l| l.starts_with("lameduck_connections{") && l.contains("service=\"http\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0, |v| v as u32)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// HAProxy in `mode tcp` in front of `backends`, on `front`; killed when dropped.
struct Front(Child);

impl Front {
    fn start(haproxy: &Path, dir: &Path, front: u16, backends: &[u16]) -> Front {
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, port)| {
                format!("  server demo{i} 127.0.0.1:{port} check inter 100ms fall 1 rise 1\n")
            })
            .collect();
        let config = format!(
            "global\n  maxconn 1000\n\
             defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 60s\n  \
             timeout server 60s\n  retries 3\n  option redispatch\n\
             frontend front\n  bind 127.0.0.1:{front}\n  default_backend demo\n\
             backend demo\n  balance roundrobin\n{servers}"
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let child = Command::new(haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let began = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", front)).is_err() {
            assert!(began.elapsed() < WAIT, "HAProxy did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Front(child)
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A client: one HTTP/2 connection through the front, a `GET /fast` every 50 ms on it, and a
/// new connection whenever it ends (a GOAWAY, a restart), until `stop`. A request unanswered
/// for 5 s is counted in `hung`, and its connection given up.
async fn client(front: SocketAddr, stop: Arc<AtomicBool>, hung: Arc<AtomicUsize>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(stream) = tokio::net::TcpStream::connect(front).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok((mut send, conn)) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
            TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let conn = tokio::spawn(conn);
        while !stop.load(Ordering::Relaxed) {
            let began = Instant::now();
            let call = async {
                send.ready().await?;
                let request = http::Request::get(format!("http://{front}/fast"))
                    .body(Empty::new())
                    .unwrap();
                let response = send.send_request(request).await?;
                response.into_body().collect().await.map(|_| ())
            };
            match tokio::time::timeout(Duration::from_secs(5), call).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break,
                Err(_) => {
                    eprintln!("a request hung {:?}", began.elapsed());
                    hung.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        conn.abort();
    }
}

/// The split over time: (seconds since B came back, A's connections, B's).
type Split = Vec<(f64, u32, u32)>;

/// Both instances behind the front, the clients on, B restarted; then the split, sampled every
/// 250 ms for `observe`.
async fn restart_one(name: &str, flags: &[&str], observe: Duration) -> Split {
    let haproxy = tools::tool("haproxy", "haproxy").expect("haproxy");
    let dir = temp_dir(name);
    let mut a = Instance::new(&dir, "a", flags);
    let mut b = Instance::new(&dir, "b", flags);
    a.start();
    b.start();
    let front_port = free_port();
    let _front = Front::start(&haproxy, &dir, front_port, &[a.http, b.http]);
    let front: SocketAddr = format!("127.0.0.1:{front_port}").parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let hung = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(client(front, Arc::clone(&stop), Arc::clone(&hung))))
        .collect();
    let began = Instant::now();
    loop {
        let (on_a, on_b) = (a.connections(), b.connections());
        if on_a + on_b >= CLIENTS as u32 {
            break;
        }
        assert!(
            began.elapsed() < WAIT,
            "the clients did not connect: A {on_a}, B {on_b}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The rolling restart's step: B goes (its clients move to A), then comes back.
    tokio::task::block_in_place(|| b.stop());
    let began = Instant::now();
    loop {
        let on_a = a.connections();
        if on_a >= CLIENTS as u32 {
            break;
        }
        assert!(
            began.elapsed() < WAIT,
            "B's clients did not move to A: A {on_a}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::task::block_in_place(|| b.start());
    let back = Instant::now();
    let mut split = Vec::new();
    while back.elapsed() < observe {
        let (on_a, on_b) = (a.connections(), b.connections());
        split.push((back.elapsed().as_secs_f64(), on_a, on_b));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = tokio::time::timeout(Duration::from_secs(5), client).await;
    }
    // A request unanswered for 5 s is one a server lost (the restart is graceful).
    assert_eq!(hung.load(Ordering::Relaxed), 0, "{name}: requests hung");
    eprintln!("{name}: seconds since B was back, connections on A, on B");
    for (at, on_a, on_b) in &split {
        eprintln!("{name}: {at:5.2} {on_a:3} {on_b:3}");
    }
    split
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_maximum_age_clients_spread_again_after_a_restart_and_without_one_they_do_not() {
    if tools::tool("haproxy", "haproxy").is_none() {
        return;
    }
    // Age 2 s (±10 %), grace 1 s: back to about half and half within about 3.3 s.
    let aged = restart_one(
        "aged",
        &[
            "--max-connection-age",
            "2s",
            "--max-connection-age-grace",
            "1s",
        ],
        Duration::from_secs(5),
    )
    .await;
    let late: Vec<_> = aged.iter().filter(|(at, _, _)| *at >= 3.5).collect();
    assert!(!late.is_empty(), "{aged:?}");
    for (at, on_a, on_b) in &late {
        assert!(
            (8..=24).contains(on_b) && (8..=24).contains(on_a),
            "about half and half {at:.2} s after B came back: A {on_a}, B {on_b} ({aged:?})"
        );
    }

    let unaged = restart_one("unaged", &[], Duration::from_secs(5)).await;
    let (_, on_a, on_b) = *unaged.last().unwrap();
    assert!(
        on_b <= 2 && on_a >= CLIENTS as u32 - 2,
        "without an age they stay on A: A {on_a}, B {on_b} ({unaged:?})"
    );
}
