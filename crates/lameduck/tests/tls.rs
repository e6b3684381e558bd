//! TLS, with real clients: rustls (tokio-rustls) under hyper's HTTP/1.1 and HTTP/2 clients, by
//! ALPN; tonic's TLS channel for gRPC; client certificates accepted and refused; a certificate
//! rotated under a running server while an open connection keeps working, a broken
//! replacement ignored with a log line; a client stalled in its ClientHello closed at the
//! handshake timeout and at the drain; a slow response finished across the shutdown.
//! Certificates are made here, with rcgen.
#![cfg(all(feature = "tls", feature = "grpc"))]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use lameduck::grpc::GrpcServer;
use lameduck::http::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use lameduck::http::rustls::{self, ClientConfig, RootCertStore};
use lameduck::http::{HttpServer, PeerCertificates, Tls};
use lameduck::{ExitCode, Lifecycle};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Generous: the machines are shared and noisy. Speed is measured in benchmarks.
const WAIT: Duration = Duration::from_secs(10);

mod support;
use support::InProcess;

/// A CA, and what it signs.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
}

/// A certificate and its key, in PEM.
struct Pair {
    cert: String,
    key: String,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = std::env::temp_dir().join(format!(
            "lameduck-tls-{name}-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Pki { ca, dir }
    }

    /// A certificate for `names`, signed by the CA.
    fn issue(&self, names: &[&str]) -> Pair {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let params = CertificateParams::new(names).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// Writes `text` to `name` in the directory, replacing it by a rename (as certbot and
    /// Kubernetes do): readers see the old file or the new one, never half of one.
    fn put(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        let staged = self.dir.join(format!(".{name}.new"));
        let mut file = std::fs::File::create(&staged).unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file.sync_all().unwrap();
        std::fs::rename(&staged, &path).unwrap();
        path
    }

    /// The server's pair on disk: `(cert, key)` paths.
    fn put_pair(&self, pair: &Pair) -> (PathBuf, PathBuf) {
        (
            self.put("tls.crt", &pair.cert),
            self.put("tls.key", &pair.key),
        )
    }

    /// A client that trusts the CA, offering `alpn`, with a client certificate if given.
    fn client(&self, alpn: &[&[u8]], identity: Option<&Pair>) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.ca.der().to_vec()))
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match identity {
            Some(pair) => {
                use rustls::pki_types::pem::PemObject;
                let chain = vec![CertificateDer::from_pem_slice(pair.cert.as_bytes()).unwrap()];
                let key = PrivateKeyDer::from_pem_slice(pair.key.as_bytes()).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn app() -> Router {
    Router::new()
        .route("/fast", get(|| async { "fast\n" }))
        .route("/sleep/{ms}", support::sleep())
        .route(
            "/whoami",
            get(
                |certs: Option<axum::Extension<PeerCertificates>>| async move {
                    match certs {
                        Some(certs) => {
                            format!("client certificate, {} in the chain\n", certs.chain().len())
                        }
                        None => "anonymous\n".to_owned(),
                    }
                },
            ),
        )
}

async fn connect(addr: SocketAddr, tls: &TlsConnector) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    tls.connect(name, tcp).await
}

type H1 = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;
type H2 = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

async fn h1(stream: TlsStream<TcpStream>) -> (H1, JoinHandle<hyper::Result<()>>) {
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    (send, tokio::spawn(conn))
}

async fn h2(stream: TlsStream<TcpStream>) -> H2 {
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

fn get_req(path: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(format!("https://localhost{path}"))
        .body(Empty::new())
        .unwrap()
}

async fn fetch_h1(
    send: &mut H1,
    path: &str,
) -> hyper::Result<(StatusCode, http::HeaderMap, String)> {
    send.ready().await?;
    let response = send.send_request(get_req(path)).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok((
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into(),
    ))
}

async fn fetch_h2(send: &mut H2, path: &str) -> hyper::Result<(StatusCode, String)> {
    send.ready().await?;
    let response = send.send_request(get_req(path)).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into()))
}

/// The leaf certificate the server presented on `stream`.
fn server_leaf(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// The test app over TLS with a certificate for localhost from `pki`, once ready.
async fn serving(pki: &Pki) -> InProcess {
    let (cert, key) = pki.put_pair(&pki.issue(&["localhost"]));
    InProcess::start(HttpServer::bind("127.0.0.1:0", app()).tls(Tls::from_pem_files(&cert, &key)))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_over_http1_and_h2_by_alpn_and_client_certificates_required() {
    let pki = Pki::new("alpn");
    let running = serving(&pki).await;

    // ALPN picks the protocol: HTTP/1.1, then h2; a client offering both gets h2.
    let stream = connect(running.addr, &pki.client(&[b"http/1.1"], None))
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut send, _) = h1(stream).await;
    let (status, _, body) = fetch_h1(&mut send, "/whoami").await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "anonymous\n"));
    let stream = connect(running.addr, &pki.client(&[b"h2", b"http/1.1"], None))
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut send = h2(stream).await;
    assert_eq!(
        fetch_h2(&mut send, "/fast").await.unwrap(),
        (StatusCode::OK, "fast\n".into())
    );
    // A client that does not trust the server fails its handshake; it is counted.
    let stranger = Pki::new("stranger");
    assert!(
        connect(running.addr, &stranger.client(&[b"h2"], None))
            .await
            .is_err()
    );
    let report = running.report().await;
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");

    // mTLS: a client certificate from the CA is required, and the handler sees it.
    let clients = Pki::new("clients");
    let ca = clients.put("clients-ca.crt", &clients.ca_pem());
    let (cert, key) = pki.put_pair(&pki.issue(&["localhost"]));
    let tls = Tls::from_pem_files(&cert, &key).client_ca(&ca);
    let running = InProcess::start(HttpServer::bind("127.0.0.1:0", app()).tls(tls)).await;
    let member = clients.issue(&["client-1"]);
    let stream = connect(running.addr, &pki.client(&[b"h2"], Some(&member)))
        .await
        .unwrap();
    let mut send = h2(stream).await;
    assert_eq!(
        fetch_h2(&mut send, "/whoami").await.unwrap(),
        (
            StatusCode::OK,
            "client certificate, 1 in the chain\n".into()
        )
    );
    // Without one, or with one from another CA: refused (TLS 1.3 says so after the client's
    // half of the handshake, at its first read).
    for identity in [None, Some(stranger.issue(&["intruder"]))] {
        let refused =
            match connect(running.addr, &pki.client(&[b"http/1.1"], identity.as_ref())).await {
                Err(_) => true,
                Ok(mut stream) => {
                    let _ = stream
                        .write_all(b"GET /fast HTTP/1.1\r\nHost: localhost\r\n\r\n")
                        .await;
                    let mut buf = [0u8; 64];
                    !matches!(stream.read(&mut buf).await, Ok(n) if n > 0)
                }
            };
        assert!(refused, "served without a valid client certificate");
    }
    let report = running.report().await;
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
    assert_eq!(
        report.services[0].serving.tls_handshake_failures, 2,
        "{report}"
    );
}

/// Log lines, captured for the current thread (the test's runtime is on it).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into()
    }
}

/// Opens connections until one is presented a leaf other than `old` (bounded).
async fn until_new_leaf(addr: SocketAddr, client: &TlsConnector, old: &[u8]) -> Vec<u8> {
    let began = Instant::now();
    loop {
        let leaf = server_leaf(&connect(addr, client).await.unwrap());
        if leaf != old {
            return leaf;
        }
        assert!(began.elapsed() < WAIT, "still the old certificate");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_rotated_certificate_is_served_to_the_next_handshake_and_a_broken_one_is_ignored() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);

    let pki = Pki::new("rotate");
    let (cert, key) = pki.put_pair(&pki.issue(&["localhost"]));
    let tls = Tls::from_pem_files(&cert, &key).reload_every(Duration::from_millis(100));
    let running = InProcess::start(HttpServer::bind("127.0.0.1:0", app()).tls(tls.clone())).await;
    let client = pki.client(&[b"http/1.1"], None);
    let open = connect(running.addr, &client).await.unwrap();
    let first = server_leaf(&open);
    let (mut kept, _) = h1(open).await;
    assert_eq!(
        fetch_h1(&mut kept, "/fast").await.unwrap().0,
        StatusCode::OK
    );

    // Replaced by renames: the next handshakes get the new pair; the open connection goes on.
    pki.put_pair(&pki.issue(&["localhost", "second.example"]));
    let second = until_new_leaf(running.addr, &client, &first).await;
    assert_eq!(
        fetch_h1(&mut kept, "/fast").await.unwrap().0,
        StatusCode::OK
    );
    assert!(
        logs.text().contains("TLS certificate reloaded"),
        "{}",
        logs.text()
    );

    // A broken replacement (a key that is not PEM): logged, and the second pair kept.
    pki.put("tls.key", "not a key\n");
    let began = Instant::now();
    while !logs.text().contains("did not load") {
        assert!(began.elapsed() < WAIT, "no log line: {}", logs.text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(logs.text().contains("tls.key"), "{}", logs.text());
    assert_eq!(
        server_leaf(&connect(running.addr, &client).await.unwrap()),
        second
    );
    // On demand: the same error, naming the file.
    let error = tls.reload().await.unwrap_err().to_string();
    assert!(
        error.contains("private key") && error.contains("tls.key"),
        "{error}"
    );
    // A pair whose key is another certificate's: refused too.
    let other = pki.issue(&["localhost"]);
    pki.put("tls.key", &other.key);
    let error = tls.reload().await.unwrap_err().to_string();
    assert!(error.contains("tls.crt"), "{error}");
    assert_eq!(
        server_leaf(&connect(running.addr, &client).await.unwrap()),
        second
    );

    let report = running.report().await;
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_pair_fails_the_start_naming_the_file_and_nothing_is_bound() {
    let pki = Pki::new("bad");
    let good = pki.issue(&["localhost"]);
    let other = pki.issue(&["localhost"]);
    let cert = pki.put("tls.crt", &good.cert);
    let key = pki.put("tls.key", &other.key);
    let missing = pki.dir.join("missing.key");
    for (key, expected) in [(&key, "tls.crt"), (&missing, "missing.key")] {
        let lifecycle = Lifecycle::new().handle_signals(false).service(
            "web",
            HttpServer::bind("127.0.0.1:0", app()).tls(Tls::from_pem_files(&cert, key)),
        );
        let handle = lifecycle.handle();
        let report = tokio::time::timeout(WAIT, lifecycle.run()).await.unwrap();
        assert_ne!(report.exit_code, ExitCode::Clean, "{report}");
        let text = report.to_string();
        assert!(text.contains("web") && text.contains(expected), "{text}");
        assert!(handle.addresses("web").is_empty(), "bound anyway");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalled_in_its_client_hello_is_closed_at_the_handshake_timeout_and_at_the_drain()
{
    let pki = Pki::new("stall");
    let (cert, key) = pki.put_pair(&pki.issue(&["localhost"]));
    // Half a ClientHello: a TLS handshake record's header, and nothing after it.
    let half_hello: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01];
    let timeout = Duration::from_millis(400);
    let running = InProcess::start(
        HttpServer::bind("127.0.0.1:0", app())
            .tls(Tls::from_pem_files(&cert, &key))
            .handshake_timeout(timeout),
    )
    .await;
    let began = Instant::now();
    let mut stalled = TcpStream::connect(running.addr).await.unwrap();
    stalled.write_all(half_hello).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(WAIT, stalled.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed: {read:?}");
    assert!(began.elapsed() >= timeout);
    let report = running.report().await;
    assert_eq!(report.services[0].serving.handshake_timeouts, 1, "{report}");

    // With the default timeout (10 s), the drain closes it at once.
    let running = InProcess::start(
        HttpServer::bind("127.0.0.1:0", app()).tls(Tls::from_pem_files(&cert, &key)),
    )
    .await;
    let mut stalled = TcpStream::connect(running.addr).await.unwrap();
    stalled.write_all(half_hello).await.unwrap();
    // Past the grace of a connection accepted just before the drain.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let shutdown = Instant::now();
    running.handle.shutdown();
    let read = tokio::time::timeout(WAIT, stalled.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed: {read:?}");
    assert!(
        shutdown.elapsed() < Duration::from_secs(5),
        "closed by the drain, not the timeout"
    );
    let report = running.report().await;
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_https_response_completes_across_the_shutdown_with_connection_close() {
    let pki = Pki::new("slow");
    let running = serving(&pki).await;
    let stream = connect(running.addr, &pki.client(&[b"http/1.1"], None))
        .await
        .unwrap();
    let (mut send, conn) = h1(stream).await;
    let slow = tokio::spawn(async move { fetch_h1(&mut send, "/sleep/600").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    running.handle.shutdown();
    let (status, headers, body) = slow.await.unwrap().unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "slept\n"));
    assert_eq!(headers["connection"], "close");
    // The connection then ends cleanly (close_notify, then the close), not with an error.
    let ended = tokio::time::timeout(WAIT, conn).await.unwrap().unwrap();
    assert!(ended.is_ok(), "{ended:?}");
    let report = running.report().await;
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
    assert_eq!(report.services[0].requests.aborted, 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls_with_a_tonic_client() {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig};
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let pki = Pki::new("grpc");
    let (cert, key) = pki.put_pair(&pki.issue(&["localhost"]));
    let running =
        InProcess::start(GrpcServer::bind("127.0.0.1:0").tls(Tls::from_pem_files(&cert, &key)))
            .await;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.ca_pem()))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{}", running.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().status, 1, "SERVING");
    // Plain HTTP/2 to a TLS port is not served.
    let mut plain = TcpStream::connect(running.addr).await.unwrap();
    plain
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(WAIT, plain.read(&mut buf))
        .await
        .unwrap();
    assert!(
        !matches!(read, Ok(n) if n > 0 && buf[..n].starts_with(b"\x00\x00")),
        "{read:?}"
    );
    let report = running.report().await;
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
    let _: &Path = &pki.dir;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tls_source_serves_each_server_its_own_alpn_protocols() {
    let pki = Pki::new("shared");
    let (cert, key) = pki.put_pair(&pki.issue(&["localhost"]));
    let tls = Tls::from_pem_files(&cert, &key);
    // The gRPC server (h2 only) starts first, then an HTTP server with the same source.
    let grpc = InProcess::start(GrpcServer::bind("127.0.0.1:0").tls(tls.clone())).await;
    let web = InProcess::start(HttpServer::bind("127.0.0.1:0", app()).tls(tls)).await;
    let stream = connect(web.addr, &pki.client(&[b"http/1.1"], None)).await;
    let stream = stream.expect("the HTTP server offers http/1.1");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut send, _) = h1(stream).await;
    assert_eq!(
        fetch_h1(&mut send, "/fast").await.unwrap().0,
        StatusCode::OK
    );
    // And the gRPC server still offers h2 only.
    assert!(
        connect(grpc.addr, &pki.client(&[b"http/1.1"], None))
            .await
            .is_err()
    );
    let stream = connect(grpc.addr, &pki.client(&[b"h2", b"http/1.1"], None))
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    for running in [web, grpc] {
        assert_eq!(running.report().await.exit_code, ExitCode::Clean);
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_style_symlink_swap_is_seen_by_the_next_handshake() {
    use std::os::unix::fs::symlink;

    // A secret volume: tls.crt -> ..data/tls.crt, ..data -> ..2026_1; an update writes
    // ..2026_2 and swaps ..data by a rename.
    let pki = Pki::new("symlink");
    let write_version = |name: &str, pair: &Pair| {
        let dir = pki.dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tls.crt"), &pair.cert).unwrap();
        std::fs::write(dir.join("tls.key"), &pair.key).unwrap();
    };
    write_version("..2026_1", &pki.issue(&["localhost"]));
    symlink("..2026_1", pki.dir.join("..data")).unwrap();
    symlink("..data/tls.crt", pki.dir.join("tls.crt")).unwrap();
    symlink("..data/tls.key", pki.dir.join("tls.key")).unwrap();
    let tls = Tls::from_pem_files(pki.dir.join("tls.crt"), pki.dir.join("tls.key"))
        .reload_every(Duration::from_millis(100));
    let running = InProcess::start(HttpServer::bind("127.0.0.1:0", app()).tls(tls)).await;
    let client = pki.client(&[b"h2"], None);
    let first = server_leaf(&connect(running.addr, &client).await.unwrap());

    write_version("..2026_2", &pki.issue(&["localhost", "v2.example"]));
    symlink("..2026_2", pki.dir.join("..data_tmp")).unwrap();
    std::fs::rename(pki.dir.join("..data_tmp"), pki.dir.join("..data")).unwrap();
    let second = until_new_leaf(running.addr, &client, &first).await;
    assert_ne!(second, first);
    let report = running.report().await;
    assert_eq!(report.exit_code, ExitCode::Clean, "{report}");
}
