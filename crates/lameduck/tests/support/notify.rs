//! A `NOTIFY_SOCKET` the tests bind, as systemd would: what a child says over sd_notify.
#![allow(dead_code)]

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant, SystemTime};

use super::WAIT;

/// A `NOTIFY_SOCKET` of the test's: every datagram, with when it arrived.
pub struct Notify {
    /// What `NOTIFY_SOCKET` says: `@name` or a path.
    pub address: String,
    messages: Receiver<(Instant, SystemTime, String)>,
    seen: Vec<(Instant, SystemTime, String)>,
    _path: Option<PathBuf>,
}

impl Notify {
    fn unique() -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        format!(
            "lameduck-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// In the abstract namespace (`@name`), as systemd's own socket is.
    pub fn bind_abstract() -> Notify {
        let name = Self::unique();
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        Self::start(
            UnixDatagram::bind_addr(&addr).unwrap(),
            format!("@{name}"),
            None,
        )
    }

    /// At a path in the temporary directory.
    pub fn bind_path() -> Notify {
        let path = std::env::temp_dir().join(format!("{}.sock", Self::unique()));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        Self::start(socket, path.to_str().unwrap().to_owned(), Some(path))
    }

    fn start(socket: UnixDatagram, address: String, path: Option<PathBuf>) -> Notify {
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let (tx, messages) = channel();
        std::thread::spawn(move || {
            let began = Instant::now();
            let mut buf = vec![0u8; 8192];
            // Bounded: ends when the test is done with it, or after a while regardless.
            while began.elapsed() < 3 * WAIT {
                match socket.recv(&mut buf) {
                    Ok(n) => {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        if tx.send((Instant::now(), SystemTime::now(), text)).is_err() {
                            return;
                        }
                    }
                    Err(_) => continue,
                }
            }
        });
        Notify {
            address,
            messages,
            seen: Vec::new(),
            _path: path,
        }
    }

    /// Waits for a message with the line `line` (`READY=1`, or a prefix like `STATUS=`).
    pub fn expect(&mut self, line: &str) -> (Instant, SystemTime, String) {
        let until = Instant::now() + WAIT;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let got = self
                .messages
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no `{line}` message; saw {:?}", self.texts()));
            self.seen.push(got.clone());
            if got.2.lines().any(|l| l.starts_with(line)) {
                return got;
            }
        }
    }

    pub fn texts(&self) -> Vec<&str> {
        self.seen.iter().map(|(_, _, text)| text.as_str()).collect()
    }

    /// When each `WATCHDOG=1` seen so far arrived.
    pub fn pings(&self) -> Vec<Instant> {
        self.seen
            .iter()
            .filter(|(_, _, text)| text.lines().any(|l| l == "WATCHDOG=1"))
            .map(|(at, _, _)| *at)
            .collect()
    }
}

impl Drop for Notify {
    fn drop(&mut self) {
        if let Some(path) = &self._path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The value of `key` in a notify message.
pub fn value<'a>(message: &'a str, key: &str) -> Option<&'a str> {
    message
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}
