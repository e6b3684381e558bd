//! Impairments: a part of the process saying "send me no traffic right now, because ...",
//! held as a guard ([`Impairment`], from [`LifecycleHandle::impair`]).
//!
//! While any is held, the lifecycle is not ready: [`LifecycleHandle::is_ready`] is false,
//! `/readyz` answers 503 naming each one, and gRPC health says NOT_SERVING (`Check` and
//! `Watch`). The state does not change: the process serves on, and a shutdown is not started;
//! only the load balancers are told to look elsewhere. Dropping the last guard makes the
//! process ready again (if it is still in [`State::Ready`](crate::State::Ready)).
//!
//! The servers use it too: an HTTP or gRPC server that cannot accept connections (out of file
//! descriptors, say) holds one, named after the server, until it can again.
//!
//! [`LifecycleHandle::impair`]: crate::LifecycleHandle::impair
//! [`LifecycleHandle::is_ready`]: crate::LifecycleHandle::is_ready

use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// At most this many characters in each line of the text that names the impairments.
pub(crate) const MAX_LINE: usize = 200;
/// At most this many impairments named in that text; then "... and N more".
pub(crate) const MAX_LINES: usize = 8;

/// One current impairment, as [`LifecycleHandle::impairments`] lists it.
///
/// [`LifecycleHandle::impairments`]: crate::LifecycleHandle::impairments
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Impaired {
    /// What is impaired: a component of the application (`"store"`), or a server's name.
    pub who: String,
    /// Why, as its guard last said it, unedited (`/readyz` shows it sanitized and cut short).
    pub reason: String,
}

/// A guard that keeps the lifecycle not ready while it lives: from
/// [`LifecycleHandle::impair`](crate::LifecycleHandle::impair). Dropping it withdraws it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let lifecycle = lameduck::Lifecycle::new().handle_signals(false);
/// let handle = lifecycle.handle();
/// let impairment = handle.impair("store", "flush failing: database is locked");
/// impairment.set_reason("flush failing: disk I/O error");
/// assert_eq!(handle.impairments()[0].reason, "flush failing: disk I/O error");
/// drop(impairment);
/// assert!(handle.impairments().is_empty());
/// # drop(lifecycle);
/// # }
/// ```
#[must_use = "the lifecycle is impaired only while the guard lives"]
pub struct Impairment {
    registry: Arc<Impairments>,
    id: u64,
}

impl Impairment {
    /// Replaces the reason (the error changed, say). Readiness does not change: it is still
    /// impaired.
    pub fn set_reason(&self, reason: impl Into<String>) {
        let reason = reason.into();
        let mut entries = self.registry.lock();
        if let Some((_, impaired)) = entries.list.iter_mut().find(|(id, _)| *id == self.id) {
            impaired.reason = reason;
        }
    }
}

impl fmt::Debug for Impairment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries = self.registry.lock();
        let impaired = entries.list.iter().find(|(id, _)| *id == self.id);
        f.debug_struct("Impairment")
            .field("who", &impaired.map(|(_, i)| i.who.as_str()))
            .field("reason", &impaired.map(|(_, i)| i.reason.as_str()))
            .finish()
    }
}

impl Drop for Impairment {
    fn drop(&mut self) {
        self.registry.remove(self.id);
    }
}

/// Everything impaired now, shared by every handle of a lifecycle and every guard.
#[derive(Debug)]
pub(crate) struct Impairments {
    entries: Mutex<Entries>,
    /// How many there are: a watch, so that health streams follow it. Sent to (waking every
    /// receiver) at each addition and removal, with the lock on `entries` held.
    count: watch::Sender<usize>,
}

#[derive(Debug, Default)]
struct Entries {
    next: u64,
    /// In the order they came.
    list: Vec<(u64, Impaired)>,
}

impl Impairments {
    pub(crate) fn new() -> Self {
        Impairments {
            entries: Mutex::default(),
            count: watch::Sender::new(0),
        }
    }

    pub(crate) fn add(self: &Arc<Self>, who: String, reason: String) -> Impairment {
        let mut entries = self.lock();
        let id = entries.next;
        entries.next += 1;
        entries.list.push((id, Impaired { who, reason }));
        self.count.send_replace(entries.list.len());
        drop(entries);
        Impairment {
            registry: Arc::clone(self),
            id,
        }
    }

    fn remove(&self, id: u64) {
        let mut entries = self.lock();
        entries.list.retain(|(held, _)| *held != id);
        self.count.send_replace(entries.list.len());
    }

    /// Whether any is held: no allocation, and only a watch's read lock (a readiness probe asks
    /// it).
    pub(crate) fn any(&self) -> bool {
        *self.count.borrow() != 0
    }

    pub(crate) fn list(&self) -> Vec<Impaired> {
        self.lock().list.iter().map(|(_, i)| i.clone()).collect()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }

    /// One line per impairment, `not ready: <who>: <reason>\n`, each without control
    /// characters and at most [`MAX_LINE`] characters long, at most [`MAX_LINES`] of them and
    /// then `... and N more`; `None` when there is none.
    pub(crate) fn text(&self) -> Option<String> {
        let entries = self.lock();
        if entries.list.is_empty() {
            return None;
        }
        let mut text = String::new();
        for (_, impaired) in entries.list.iter().take(MAX_LINES) {
            line(&mut text, &impaired.who, &impaired.reason);
        }
        let more = entries.list.len().saturating_sub(MAX_LINES);
        if more > 0 {
            // Writing to a `String` cannot fail.
            let _ = writeln!(text, "... and {more} more");
        }
        Some(text)
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Appends `not ready: <who>: <reason>` and a newline to `text`: control characters (CR, LF,
/// ESC...) and line separators each become a space, and a line longer than [`MAX_LINE`]
/// characters is cut to end with `...`.
fn line(text: &mut String, who: &str, reason: &str) {
    const CUT: &str = "...";
    let mut chars = "not ready: "
        .chars()
        .chain(who.chars())
        .chain(": ".chars())
        .chain(reason.chars())
        .map(|c| {
            if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
                ' '
            } else {
                c
            }
        });
    let head: String = chars.by_ref().take(MAX_LINE).collect();
    if chars.next().is_some() {
        text.extend(head.chars().take(MAX_LINE - CUT.len()));
        text.push_str(CUT);
    } else {
        text.push_str(&head);
    }
    text.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Arc<Impairments> {
        Arc::new(Impairments::new())
    }

    #[test]
    fn two_impairments_the_last_one_dropped_ends_it() {
        let registry = registry();
        assert!(!registry.any());
        assert_eq!(registry.text(), None);
        let store = registry.add("store".into(), "flush failing: database is locked".into());
        let http = registry.add("http".into(), "cannot accept connections: EMFILE".into());
        assert!(registry.any());
        assert_eq!(
            registry.text().as_deref(),
            Some(
                "not ready: store: flush failing: database is locked\n\
                 not ready: http: cannot accept connections: EMFILE\n"
            )
        );
        drop(store);
        assert!(registry.any(), "one is left");
        assert_eq!(
            registry.list(),
            [Impaired {
                who: "http".into(),
                reason: "cannot accept connections: EMFILE".into()
            }]
        );
        drop(http);
        assert!(!registry.any());
        assert!(registry.list().is_empty());
    }

    #[test]
    fn set_reason_changes_only_its_own() {
        let registry = registry();
        let a = registry.add("a".into(), "one".into());
        let _b = registry.add("b".into(), "two".into());
        a.set_reason("three");
        let reasons: Vec<String> = registry.list().into_iter().map(|i| i.reason).collect();
        assert_eq!(reasons, ["three", "two"]);
        assert!(format!("{a:?}").contains("three"), "{a:?}");
    }

    #[test]
    fn reasons_are_shown_without_control_characters_and_cut_short() {
        let registry = registry();
        let _crlf = registry.add(
            "st\u{1b}[31more".into(),
            "locked\r\nX-Injected: 1\u{2028}\u{0}".into(),
        );
        let _long = registry.add("big".into(), "é".repeat(1000));
        let text = registry.text().unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(text.matches('\n').count(), 2, "{text:?}");
        assert_eq!(lines[0], "not ready: st [31more: locked  X-Injected: 1  ");
        assert_eq!(lines[1].chars().count(), MAX_LINE);
        assert!(lines[1].starts_with("not ready: big: éé"), "{}", lines[1]);
        assert!(lines[1].ends_with("é..."), "{}", lines[1]);
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'));
    }

    #[test]
    fn a_line_of_exactly_the_cap_is_not_cut() {
        let mut text = String::new();
        let reason = "r".repeat(MAX_LINE - "not ready: w: ".len());
        line(&mut text, "w", &reason);
        assert_eq!(text.trim_end().chars().count(), MAX_LINE);
        assert!(text.trim_end().ends_with('r'), "{text}");
        let mut text = String::new();
        line(&mut text, "w", &format!("{reason}s"));
        assert_eq!(text.trim_end().chars().count(), MAX_LINE);
        assert!(text.trim_end().ends_with("..."), "{text}");
    }

    #[test]
    fn at_most_so_many_lines_then_how_many_more() {
        let registry = registry();
        let held: Vec<Impairment> = (0..MAX_LINES + 3)
            .map(|i| registry.add(format!("w{i}"), "down".into()))
            .collect();
        let text = registry.text().unwrap();
        assert_eq!(text.lines().count(), MAX_LINES + 1, "{text}");
        assert!(text.ends_with("... and 3 more\n"), "{text}");
        assert_eq!(registry.list().len(), held.len());
    }

    #[tokio::test]
    async fn the_watch_wakes_at_each_addition_and_removal() {
        let registry = registry();
        let mut rx = registry.subscribe();
        assert_eq!(*rx.borrow_and_update(), 0);
        let a = registry.add("a".into(), "x".into());
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), 1);
        let b = registry.add("b".into(), "y".into());
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), 2);
        drop(a);
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), 1);
        // A new reason is not a change of readiness.
        b.set_reason("z");
        assert!(!rx.has_changed().unwrap());
        drop(b);
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), 0);
    }
}
