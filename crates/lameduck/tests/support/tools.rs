//! External tools the tests run, found on `PATH`. Shared with the demo's tests (by `#[path]`).
#![allow(dead_code)]

use std::path::PathBuf;

/// systemd's socket-activation tool; see [`tool`].
pub fn socket_activate() -> Option<PathBuf> {
    tool("systemd-socket-activate", "systemd")
}

/// The program `name` on `PATH` (or in `/usr/sbin` and `/sbin`, where Debian puts daemons such
/// as HAProxy, off a user's `PATH`), from the Debian package `package`. CI installs it
/// (`.ci/run`), and a missing one fails there; elsewhere a missing one skips the test, loudly.
pub fn tool(name: &str, package: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&paths)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|path| path.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is missing (Debian package `{package}`; .ci/run installs it)"
        );
        eprintln!("SKIPPED: {name} is not installed (apt-get install {package})");
    }
    found
}

/// Whether process `pid` (one the test did not start, so cannot wait for) still runs: a zombie
/// (dead, its parent yet to reap it) does not. The state follows the command name, which is in
/// parentheses and may hold spaces.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().next())
            != Some("Z")
    })
}

/// A self-signed pair for `localhost` and 127.0.0.1, made by `openssl` in `dir` as the README
/// shows: `(cert, key)`, or `None` (said) without openssl. `CA:FALSE`, as rustls clients want.
pub fn self_signed(dir: &std::path::Path) -> Option<(PathBuf, PathBuf)> {
    let openssl = tool("openssl", "openssl")?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = std::process::Command::new(openssl)
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    assert!(made.success(), "openssl could not make a pair");
    Some((cert, key))
}

/// A port free on loopback now (the OS's choice), for a process that must be told its port
/// before it starts (a demo instance, a Prometheus, a balancer's backend).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on loopback")
}

/// A new, empty directory for one test's files: `lameduck-{test}-{pid}-{name}` in the system's
/// temporary directory (emptied first, should an earlier run have left it).
pub fn fresh_dir(test: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lameduck-{test}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}

/// `curl -sf --max-time 5 URL`'s body, if it answered 2xx in time.
pub fn curl_get(url: &str) -> Option<String> {
    let out = std::process::Command::new("curl")
        .args(["-sf", "--max-time", "5", url])
        .output()
        .expect("curl runs");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
