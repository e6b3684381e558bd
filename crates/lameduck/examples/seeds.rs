//! The seed articles' service, on the core alone (no HTTP library: a hand-written accept loop
//! shows that any server fits).
//!
//! Two servers (`web` and `admin`), a write-behind cache flushed by a background task, and the
//! shutdown hooks that flush it after the last request and close the store after the flush.
//!
//! ```text
//! cargo run -p lameduck --example seeds
//! curl localhost:8080/sleep/10 &   # a 10 s request (the seed's worked example)
//! sleep 5; pkill -INT -f examples/seeds   # or Ctrl+C: exits when the request is done, ~10 s in
//! curl localhost:8080/write/hello  # acknowledged writes survive the shutdown (see --store)
//! curl localhost:8081/readyz       # 200 while ready, 503 once shutting down
//! ```
//!
//! A second Ctrl+C during the shutdown exits at once (exit code 7).

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use clap::Parser;
use lameduck::{BoxError, Drain, Lifecycle, LifecycleHandle, Phase, StartContext};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser, Debug)]
#[command(about = "The seed articles' service: two servers, a write-behind cache, ordered hooks")]
struct Args {
    /// Address of the web server (`/`, `/sleep/<secs>`, `/write/<value>`).
    #[arg(long, default_value = "127.0.0.1:8080")]
    web: String,
    /// Address of the admin server (`/readyz`, `/healthz`).
    #[arg(long, default_value = "127.0.0.1:8081")]
    admin: String,
    /// Seconds the drain may take before in-flight requests are aborted.
    #[arg(long, default_value_t = 30.0)]
    drain_deadline: f64,
    /// Seconds to keep serving with readiness off before closing the listeners.
    #[arg(long, default_value_t = 0.0)]
    lame_duck: f64,
    /// The store the write-behind cache flushes to (one value per line).
    #[arg(long, default_value = "lameduck-seeds.store")]
    store: PathBuf,
    /// Print the report as JSON (on stdout) instead of a summary (on stderr).
    #[arg(long)]
    json: bool,
}

/// Acknowledged writes not yet in the store: the seed's local cache in front of a database.
#[derive(Clone, Default)]
struct Cache(Arc<Mutex<Vec<String>>>);

impl Cache {
    fn push(&self, value: String) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(value);
    }

    /// Appends everything cached to the store; returns how many values it wrote. On an error
    /// the values go back into the cache: an acknowledged write is never dropped, the next
    /// flush (or the shutdown hook) tries again.
    fn flush(&self, store: &PathBuf) -> std::io::Result<usize> {
        let values = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        if values.is_empty() {
            return Ok(0);
        }
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(store)
            .and_then(|mut file| {
                // One write for all: a failure leaves the store without a partial batch
                // (barring a short write on a full disk, which a real store would roll back).
                let batch: String = values.iter().map(|v| format!("{v}\n")).collect();
                file.write_all(batch.as_bytes())?;
                file.flush()
            });
        match written {
            Ok(()) => Ok(values.len()),
            Err(e) => {
                let mut cache = self.0.lock().unwrap_or_else(PoisonError::into_inner);
                let newer = std::mem::replace(&mut *cache, values);
                cache.extend(newer);
                Err(e)
            }
        }
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let cache = Cache::default();

    let web_cache = cache.clone();
    let flusher_cache = cache.clone();
    let flusher_store = args.store.clone();
    let hook_cache = cache.clone();
    let hook_store = args.store.clone();
    let close_store = args.store.clone();
    let web_addr = args.web.clone();
    let admin_addr = args.admin.clone();

    let report = Lifecycle::new()
        .drain_deadline(Duration::from_secs_f64(args.drain_deadline))
        .lame_duck_delay(Duration::from_secs_f64(args.lame_duck))
        .service("web", move |ctx: StartContext| async move {
            let listener = ctx.bind_tcp(web_addr.as_str()).await?;
            Ok(serve(listener, ctx.drain(), Routes::Web(web_cache)))
        })
        .service("admin", move |ctx: StartContext| async move {
            let listener = ctx.bind_tcp(admin_addr.as_str()).await?;
            Ok(serve(listener, ctx.drain(), Routes::Admin(ctx.handle())))
        })
        .task("cache-flusher", move |stop| async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tick.tick() => {
                        // A failed flush keeps the values; the next tick (or the hook) retries.
                        if let Err(e) = flusher_cache.flush(&flusher_store) {
                            tracing::warn!(error = %e, "periodic flush failed; will retry");
                        }
                    }
                }
            }
        })
        // After the last request: nothing can be added to the cache any more.
        .hook(Phase::FLUSH, "flush-cache", move || async move {
            let n = hook_cache.flush(&hook_store)?;
            tracing::info!(values = n, "cache flushed");
            Ok(())
        })
        // After the flush: make what it wrote durable.
        .hook(Phase::CLOSE, "close-store", move || async move {
            if close_store.exists() {
                std::fs::File::open(&close_store)?.sync_all()?;
            }
            Ok(())
        })
        .run()
        .await;

    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => eprintln!("cannot serialise the report: {e}"),
        }
    } else {
        eprintln!("{report}");
    }
    report.exit();
}

enum Routes {
    Web(Cache),
    Admin(LifecycleHandle),
}

/// An accept loop: stop accepting at the drain (the listener is dropped on return, freeing the
/// port), and run each connection as tracked work.
async fn serve(listener: TcpListener, drain: Drain, routes: Routes) -> Result<(), BoxError> {
    let routes = Arc::new(routes);
    loop {
        tokio::select! {
            _ = drain.draining() => return Ok(()),
            conn = listener.accept() => {
                let stream = match conn {
                    Ok((stream, _)) => stream,
                    // Out of file descriptors, say: not a reason to stop serving. Back off a
                    // little so the loop does not spin on the same error.
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let routes = Arc::clone(&routes);
                drain.spawn(async move {
                    if let Err(e) = respond(stream, &routes).await {
                        tracing::debug!(error = %e, "connection error");
                    }
                });
            }
        }
    }
}

/// One request per connection (`Connection: close`), enough for curl and a browser.
async fn respond(mut stream: TcpStream, routes: &Routes) -> std::io::Result<()> {
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        if len == buf.len() {
            return reply(&mut stream, 431, "request head too large\n").await;
        }
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (routes, segments.as_slice()) {
        (Routes::Web(_), [""]) => reply(&mut stream, 200, "hello from lameduck\n").await,
        (Routes::Web(_), ["sleep", secs]) => match secs.parse::<f64>() {
            Ok(secs) if (0.0..=3600.0).contains(&secs) => {
                tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                reply(&mut stream, 200, &format!("slept {secs} s\n")).await
            }
            _ => reply(&mut stream, 400, "seconds: 0 to 3600\n").await,
        },
        (Routes::Web(cache), ["write", value]) => {
            cache.push((*value).to_owned());
            reply(&mut stream, 200, "stored\n").await
        }
        (Routes::Admin(handle), ["readyz"]) if handle.is_ready() => {
            reply(&mut stream, 200, "ready\n").await
        }
        (Routes::Admin(handle), ["readyz"]) => {
            let state = format!("{:?}\n", handle.state());
            reply(&mut stream, 503, &state).await
        }
        (Routes::Admin(_), ["healthz"]) => reply(&mut stream, 200, "ok\n").await,
        _ => reply(&mut stream, 404, "not found\n").await,
    }
}

async fn reply(stream: &mut TcpStream, status: u16, body: &str) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
