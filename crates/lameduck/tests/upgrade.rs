//! The upgrade in place, end to end: real processes, real signals, real sockets. The child is
//! this test binary (`--ignored --exact upgradable`, see `support`), an `HttpServer` whose `/`
//! answers its PID; its upgrade runs the file at its path with the same arguments and
//! environment, so the new process is the same entry again (or whatever a test put at the path).
//! Every line a child prints carries its PID, since the new process writes to the same pipe.
#![cfg(target_os = "linux")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lameduck::Lifecycle;
use lameduck::http::HttpServer;

mod support;
use support::notify::{Notify, value};
use support::tools::alive;
use support::{Proc, WAIT, child_args};

#[test]
#[ignore = "entry point of the child process, run by the other tests"]
fn upgradable() {
    let env = |k: &str| std::env::var(k).ok();
    let timeout_ms: u64 = env("CHILD_UPGRADE_TIMEOUT_MS").map_or(20_000, |v| v.parse().unwrap());
    let pid = std::process::id();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let report = runtime.block_on(async move {
        let app = axum::Router::new()
            .route(
                "/",
                axum::routing::get(move || async move { format!("{pid}\n") }),
            )
            .route(
                "/slow",
                axum::routing::get(move || async move {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    format!("{pid}\n")
                }),
            );
        let mut lifecycle = Lifecycle::new()
            .upgrade_timeout(Duration::from_millis(timeout_ms))
            .service("web", HttpServer::bind("127.0.0.1:0", app));
        if let Some(path) = env("CHILD_PID_FILE") {
            lifecycle = lifecycle.pid_file(path);
        }
        if env("CHILD_BIND_TCP").is_some() {
            // A listener bound outside the path an upgrade can hand over.
            lifecycle = lifecycle.service(
                "own",
                lameduck::service_fn(|ctx| async move {
                    let listener = ctx.bind_tcp("127.0.0.1:0").await?;
                    Ok(support::accept_lines(listener, ctx.drain()))
                }),
            );
        }
        let handle = lifecycle.handle();
        let trigger = env("CHILD_UPGRADE_TRIGGER");
        tokio::spawn(async move {
            if handle.wait_ready().await.is_ok() {
                println!("LISTENING {pid} {}", handle.addresses("web")[0]);
                println!("READY {pid}");
            }
            // An upgrade through the handle, when the test creates this file (whichever
            // process removes it first takes it).
            let Some(trigger) = trigger else { return };
            loop {
                if std::fs::remove_file(&trigger).is_ok() {
                    handle.upgrade();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        lifecycle.run().await
    });
    println!("REPORT {pid} {}", serde_json::to_string(&report).unwrap());
    report.exit();
}

/// Who answered `GET /`: a PID, or how the request failed.
fn get(addr: SocketAddr, path: &str) -> Result<u32, String> {
    let mut conn = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    conn.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut response = String::new();
    conn.read_to_string(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    if !response.starts_with("HTTP/1.1 200") {
        return Err(format!("response: {response:?}"));
    }
    let body = response.rsplit("\r\n\r\n").next().unwrap_or_default();
    body.trim().parse().map_err(|_| format!("body: {body:?}"))
}

/// Requests in a loop from a thread until stopped: every answer's PID, and every failure.
struct Load {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(Vec<u32>, Vec<String>)>,
}

impl Load {
    fn start(addr: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let (mut pids, mut failures) = (Vec::new(), Vec::new());
            // Bounded, whatever happens to the test.
            let began = Instant::now();
            while !stopping.load(Ordering::Relaxed) && began.elapsed() < 3 * WAIT {
                match get(addr, "/") {
                    Ok(pid) => pids.push(pid),
                    Err(failure) => failures.push(failure),
                }
            }
            (pids, failures)
        });
        Load { stop, thread }
    }

    fn finish(self) -> (Vec<u32>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Stops a process the test did not start, and waits (bounded) until it is gone.
fn terminate(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let began = Instant::now();
    while alive(pid) && began.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!alive(pid), "PID {pid} still runs");
}

/// Kills the upgrade's new processes a failed assertion would leave behind.
struct Reap(Vec<u32>);

impl Drop for Reap {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// A directory of the test's, removed with it.
struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(name: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("lameduck-upgrade-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

fn read_pid(path: &Path) -> u32 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Puts `contents` at `path` the way a deploy does: a new file renamed over the old.
fn replace_with_script(path: &Path, contents: &str) {
    use std::os::unix::fs::PermissionsExt;
    let new = path.with_extension("new");
    std::fs::write(&new, contents).unwrap();
    std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&new, path).unwrap();
}

/// Waits (bounded) until `done`.
fn wait_until(mut done: impl FnMut() -> bool) {
    let began = Instant::now();
    while !done() && began.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Puts at `exe` a binary that never gets ready (it records its PID in `started`), and asks
/// `old` to upgrade to it; returns once it runs.
fn upgrade_to_a_hung_binary(old: &Proc, exe: &Path, started: &Path) {
    let script = format!(
        "#!/bin/sh\necho $$ >> {}\nexec sleep 30\n",
        started.display()
    );
    replace_with_script(exe, &script);
    old.signal("HUP");
    // Until it has written its PID whole.
    wait_until(|| std::fs::read_to_string(started).is_ok_and(|t| t.ends_with('\n')));
}

/// Runs the child from a copy of this test binary at `path` (which a test may replace).
fn spawn_from(path: &Path, env: &[(&str, &str)]) -> Proc {
    std::fs::copy(std::env::current_exe().unwrap(), path).unwrap();
    let args = child_args("upgradable");
    let mut cmd = Command::new(path);
    cmd.args(&args[1..]).env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc::spawn_command(cmd)
}

#[test]
fn sighup_hands_the_port_to_a_new_process_under_load_with_nothing_refused_or_failed() {
    let dir = temp_dir("load");
    let pid_file = dir.join("web.pid");
    // As under systemd: the manager's socket and a watchdog, which must follow the new process.
    let mut notify = Notify::bind_abstract();
    let mut old = Proc::spawn(
        "upgradable",
        &[
            ("CHILD_PID_FILE", pid_file.to_str().unwrap()),
            ("NOTIFY_SOCKET", &notify.address),
            ("WATCHDOG_USEC", "300000"),
        ],
    );
    let old_pid = old.child.id();
    let addr: SocketAddr = old.expect(&format!("LISTENING {old_pid}")).parse().unwrap();
    old.expect(&format!("READY {old_pid}"));
    assert_eq!(read_pid(&pid_file), old_pid);

    let load = Load::start(addr);
    // A request in flight across the handover: the old process finishes it.
    let slow = std::thread::spawn(move || get(addr, "/slow"));
    std::thread::sleep(Duration::from_millis(200));
    old.signal("HUP");
    let report = old.expect(&format!("REPORT {old_pid}"));
    let status = support::wait_exit(&mut old.child, WAIT);
    let new_pid = read_pid(&pid_file);
    let _reap = Reap(vec![new_pid]);
    assert_ne!(new_pid, old_pid, "the new process rewrote the pid file");
    // Load on the new process a while after the old one is gone.
    std::thread::sleep(Duration::from_millis(300));
    let (pids, failures) = load.finish();
    assert_eq!(
        slow.join().unwrap(),
        Ok(old_pid),
        "the request in flight completed"
    );

    assert_eq!(status.code(), Some(0), "{report}");
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(
        report["trigger"],
        serde_json::json!({ "kind": "upgraded", "new_pid": new_pid })
    );
    assert!(failures.is_empty(), "refused or failed: {failures:?}");
    assert!(
        pids.contains(&old_pid) && pids.contains(&new_pid),
        "both served"
    );
    // (For a moment both accept from the one queue: the old until the new says it is ready.)
    assert_eq!(
        pids.last(),
        Some(&new_pid),
        "after the old one, the new one serves"
    );
    // systemd heard the new main PID from the old process, and nothing of its shutdown.
    let (handed_at, _, handed) = notify.expect("MAINPID=");
    assert_eq!(
        value(&handed, "MAINPID"),
        Some(new_pid.to_string().as_str())
    );
    std::thread::sleep(Duration::from_millis(400));
    notify.expect("WATCHDOG=1");
    let before_stop = notify.texts().join("");
    assert!(!before_stop.contains("STOPPING=1"), "{before_stop}");
    let pings_after = notify.pings().iter().filter(|at| **at > handed_at).count();
    assert!(
        pings_after >= 1,
        "the new process pings the watchdog: {before_stop}"
    );

    // The same port, in the new process, which stops as any lameduck service does.
    assert_eq!(get(addr, "/"), Ok(new_pid));
    terminate(new_pid);
    notify.expect("STOPPING=1");
    assert!(!pid_file.exists(), "the last process removes its pid file");
}

#[test]
fn a_broken_or_never_ready_new_binary_is_rolled_back_and_a_good_one_then_takes_over() {
    let dir = temp_dir("rollback");
    let exe = dir.join("service");
    let pid_file = dir.join("service.pid");
    let started = dir.join("started");
    let mut old = spawn_from(
        &exe,
        &[
            ("CHILD_PID_FILE", pid_file.to_str().unwrap()),
            ("CHILD_UPGRADE_TIMEOUT_MS", "2000"),
        ],
    );
    let old_pid = old.child.id();
    let addr: SocketAddr = old.expect(&format!("LISTENING {old_pid}")).parse().unwrap();
    old.expect(&format!("READY {old_pid}"));

    // A new binary that fails at once: the old process serves on.
    let ran = dir.join("broken-ran");
    let broken = format!("#!/bin/sh\ntouch {}\nexit 1\n", ran.display());
    replace_with_script(&exe, &broken);
    let load = Load::start(addr);
    old.signal("HUP");
    wait_until(|| ran.exists());
    assert!(ran.exists(), "the broken binary ran");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        old.child.try_wait().unwrap().is_none(),
        "the old process serves on"
    );
    assert_eq!(get(addr, "/"), Ok(old_pid));

    // One that never gets ready: stopped after the upgrade timeout.
    upgrade_to_a_hung_binary(&old, &exe, &started);
    let hung = read_pid(&started);
    let _reap = Reap(vec![hung]);
    // Stopped once the upgrade timeout (2 s) has passed.
    wait_until(|| !alive(hung));
    assert!(!alive(hung), "the never-ready process was stopped");
    assert!(
        old.child.try_wait().unwrap().is_none(),
        "the old process serves on"
    );
    assert_eq!(read_pid(&pid_file), old_pid);

    // A good binary at the path (a deploy renamed it there): it takes over, and it is the new
    // file that runs.
    let new = exe.with_extension("new");
    std::fs::copy(std::env::current_exe().unwrap(), &new).unwrap();
    std::fs::rename(&new, &exe).unwrap();
    old.signal("HUP");
    old.expect(&format!("REPORT {old_pid}"));
    assert_eq!(support::wait_exit(&mut old.child, WAIT).code(), Some(0));
    let new_pid = read_pid(&pid_file);
    let _reap_new = Reap(vec![new_pid]);
    let running = std::fs::read_link(format!("/proc/{new_pid}/exe")).unwrap();
    assert_eq!(
        running, exe,
        "the new process runs the file now at the path"
    );

    // And again, from the new process: two upgrades in a row.
    let _ = Command::new("kill")
        .args(["-HUP", &new_pid.to_string()])
        .status();
    let began = Instant::now();
    while read_pid(&pid_file) == new_pid && began.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(10));
    }
    let third = read_pid(&pid_file);
    let _reap_third = Reap(vec![third]);
    assert_ne!(third, new_pid);
    let began = Instant::now();
    while alive(new_pid) && began.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !alive(new_pid),
        "the second process exited after its upgrade"
    );
    let (pids, failures) = load.finish();
    assert!(failures.is_empty(), "refused or failed: {failures:?}");
    assert!(pids.contains(&old_pid) && pids.contains(&third));
    assert_eq!(get(addr, "/"), Ok(third));
    terminate(third);
}

#[test]
fn a_second_sighup_during_an_upgrade_is_ignored_and_sigterm_stops_the_new_process_too() {
    let dir = temp_dir("sigterm");
    let exe = dir.join("service");
    let started = dir.join("started");
    let mut old = spawn_from(&exe, &[]);
    let old_pid = old.child.id();
    old.expect(&format!("READY {old_pid}"));
    upgrade_to_a_hung_binary(&old, &exe, &started);
    old.signal("HUP");
    std::thread::sleep(Duration::from_millis(600));
    let lines = std::fs::read_to_string(&started).unwrap();
    assert_eq!(
        lines.lines().count(),
        1,
        "one new process, not two: {lines}"
    );
    let hung = read_pid(&started);
    let _reap = Reap(vec![hung]);

    old.signal("TERM");
    let report = old.expect(&format!("REPORT {old_pid}"));
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    let code = support::wait_exit(&mut old.child, WAIT).code();
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["trigger"]["kind"], "signal", "{report}");
    assert!(!alive(hung), "the new process was stopped with the old one");
}

#[test]
fn an_upgrade_is_refused_while_a_listener_cannot_be_handed_over() {
    let dir = temp_dir("refused");
    let pid_file = dir.join("web.pid");
    let mut old = Proc::spawn(
        "upgradable",
        &[
            ("CHILD_PID_FILE", pid_file.to_str().unwrap()),
            ("CHILD_BIND_TCP", "1"),
        ],
    );
    let old_pid = old.child.id();
    let addr: SocketAddr = old.expect(&format!("LISTENING {old_pid}")).parse().unwrap();
    old.expect(&format!("READY {old_pid}"));
    old.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(read_pid(&pid_file), old_pid, "no new process took over");
    assert_eq!(get(addr, "/"), Ok(old_pid));
    old.signal("TERM");
    let report = old.expect(&format!("REPORT {old_pid}"));
    assert_eq!(
        support::wait_exit(&mut old.child, WAIT).code(),
        Some(0),
        "{report}"
    );
}

#[test]
fn the_handle_upgrades_as_the_signal_does() {
    let dir = temp_dir("handle");
    let pid_file = dir.join("web.pid");
    let trigger = dir.join("upgrade-now");
    let mut old = Proc::spawn(
        "upgradable",
        &[
            ("CHILD_PID_FILE", pid_file.to_str().unwrap()),
            ("CHILD_UPGRADE_TRIGGER", trigger.to_str().unwrap()),
        ],
    );
    let old_pid = old.child.id();
    let addr: SocketAddr = old.expect(&format!("LISTENING {old_pid}")).parse().unwrap();
    old.expect(&format!("READY {old_pid}"));
    std::fs::write(&trigger, "").unwrap();
    let report = old.expect(&format!("REPORT {old_pid}"));
    assert_eq!(
        support::wait_exit(&mut old.child, WAIT).code(),
        Some(0),
        "{report}"
    );
    let new_pid = read_pid(&pid_file);
    let _reap = Reap(vec![new_pid]);
    assert!(
        report.contains(&format!("\"new_pid\":{new_pid}")),
        "{report}"
    );
    assert_eq!(get(addr, "/"), Ok(new_pid));
    terminate(new_pid);
}
