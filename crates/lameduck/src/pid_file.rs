//! The pid file: names the process that serves, for supervisors that follow a file (and for
//! the drill's `--upgrade`). Written atomically once ready, so a reader never sees half a PID;
//! rewritten by the new process of an upgrade; removed at the end only if it still names this
//! process, so that the old process of an upgrade leaves the new one's in place.

use std::io;
use std::path::{Path, PathBuf};

/// This process's pid file.
#[derive(Debug)]
pub(crate) struct PidFile {
    path: PathBuf,
}

impl PidFile {
    pub(crate) fn new(path: PathBuf) -> PidFile {
        PidFile { path }
    }

    /// Writes this process's PID: to a file beside it, then renamed over it.
    pub(crate) fn write(&self) {
        let pid = std::process::id();
        if let Err(error) = write_atomically(&self.path, &format!("{pid}\n")) {
            tracing::error!(target: "lameduck", path = %self.path.display(), "cannot write the pid file: {error}");
        }
    }

    /// After an upgrade's new process `pid` was stopped: if the file names it, this process
    /// serves (or is the one shutting down), so it names this one again.
    pub(crate) fn reclaim(&self, pid: u32) {
        let theirs =
            std::fs::read_to_string(&self.path).is_ok_and(|text| text.trim() == pid.to_string());
        if theirs {
            self.write();
        }
    }

    /// Removes the file if it still names this process.
    pub(crate) fn remove_if_ours(&self) {
        let ours = std::fs::read_to_string(&self.path)
            .is_ok_and(|text| text.trim() == std::process::id().to_string());
        if ours && let Err(error) = std::fs::remove_file(&self.path) {
            tracing::warn!(target: "lameduck", path = %self.path.display(), "cannot remove the pid file: {error}");
        }
    }
}

fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    let mut temporary = name.to_os_string();
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = path.with_file_name(temporary);
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&temporary);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_whole_and_removed_only_while_it_names_this_process() {
        let dir = std::env::temp_dir().join(format!("lameduck-pid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("service.pid");
        let file = PidFile::new(path.clone());
        file.write();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        // Another process (an upgrade's new one) took it over: ours to leave alone.
        std::fs::write(&path, "1\n").unwrap();
        file.remove_if_ours();
        assert!(path.exists());
        file.write();
        file.remove_if_ours();
        assert!(!path.exists());
        let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert!(
            leftovers.is_empty(),
            "no temporary file left: {leftovers:?}"
        );
    }
}
