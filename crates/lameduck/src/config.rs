//! What a run is configured with, below both the builder that sets it and the run that reads it.

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::BoxError;
use crate::service::BoxFuture;
use crate::upgrade::UpgradeSignal;

/// A background task: gets a token cancelled at the drain, returns when it has wound down.
pub(crate) type TaskFn =
    Box<dyn FnOnce(CancellationToken) -> BoxFuture<Result<(), BoxError>> + Send>;

/// Timings and switches, with the defaults a service wants.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) drain_deadline: Duration,
    pub(crate) last_drain_deadline: Duration,
    pub(crate) last_drain_delay: Duration,
    pub(crate) lame_duck_delay: Duration,
    pub(crate) hook_timeout: Duration,
    pub(crate) force_on_second_signal: bool,
    pub(crate) handle_signals: bool,
    pub(crate) sd_notify: bool,
    pub(crate) inherit_listeners: bool,
    pub(crate) upgrade_signal: Option<UpgradeSignal>,
    pub(crate) upgrade_timeout: Duration,
    pub(crate) pid_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            drain_deadline: Duration::from_secs(30),
            last_drain_deadline: Duration::from_secs(1),
            last_drain_delay: Duration::ZERO,
            lame_duck_delay: Duration::ZERO,
            hook_timeout: Duration::from_secs(5),
            force_on_second_signal: true,
            handle_signals: true,
            sd_notify: true,
            inherit_listeners: true,
            upgrade_signal: Some(UpgradeSignal::Hup),
            upgrade_timeout: Duration::from_secs(60),
            pid_file: None,
        }
    }
}
