//! External tools the tests run, found on `PATH`. Shared with the demo's tests (by `#[path]`).
#![allow(dead_code)]

use std::path::PathBuf;

/// systemd's socket-activation tool (Debian package `systemd`). CI installs it (`.ci/run`) and
/// a missing one fails there; elsewhere a missing one skips the test, loudly.
pub fn socket_activate() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("systemd-socket-activate"))
            .find(|path| path.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-socket-activate is missing (Debian package `systemd`; .ci/run installs it)"
        );
        eprintln!("SKIPPED: systemd-socket-activate is not installed (apt-get install systemd)");
    }
    found
}
