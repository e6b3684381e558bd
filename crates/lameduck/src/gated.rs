//! Waits that cost nothing while nothing happens. A connection's task is woken by its socket
//! several times a request, and each wake would look again at everything it waits for: the
//! drain's tokens (shared by every connection of the service; a token's check takes its lock)
//! and its timer. Each of those has a sign that it may have fired, cheaper than polling it: a
//! token of the drain's has a gate, an atomic flag set before it is cancelled; a timer says
//! whether it has elapsed. While there is no sign, and the task polling is the one that
//! registered the wait ([`Registered`]), the wait is not polled again: its registration stands,
//! and the task is woken when it fires.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use pin_project_lite::pin_project;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The waker a wait was last registered with.
#[derive(Debug, Default)]
pub(crate) struct Registered(Option<Waker>);

impl Registered {
    /// Whether a wait registered through this must be polled to stay registered for `cx`'s
    /// task: never polled, or polled by another task since.
    #[inline]
    pub(crate) fn stale(&self, cx: &Context<'_>) -> bool {
        !self.0.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
    }

    /// The wait was polled (and is pending) for `cx`'s task.
    #[inline]
    pub(crate) fn note(&mut self, cx: &Context<'_>) {
        if self.stale(cx) {
            self.0 = Some(cx.waker().clone());
        }
    }
}

/// A sign that a token may have been cancelled, cheaper to look at than the token: an atomic
/// flag set before the token is cancelled.
pub(crate) trait Gate {
    /// Whether the token may have been cancelled.
    fn is_open(&self) -> bool;
}

impl Gate for &AtomicBool {
    #[inline]
    fn is_open(&self) -> bool {
        self.load(Ordering::Acquire)
    }
}

impl Gate for Arc<AtomicBool> {
    #[inline]
    fn is_open(&self) -> bool {
        self.load(Ordering::Acquire)
    }
}

/// A gate, or none: then the token is looked at every time.
pub(crate) type MaybeGate = Option<Arc<AtomicBool>>;

impl Gate for MaybeGate {
    #[inline]
    fn is_open(&self) -> bool {
        self.as_ref().is_none_or(Gate::is_open)
    }
}

pin_project! {
    /// Resolves once `token` is cancelled. `gate` must open before the token is cancelled:
    /// until then, a poll by the task already registered is an atomic load.
    #[derive(Debug)]
    pub(crate) struct Gated<G> {
        #[pin]
        wait: WaitForCancellationFutureOwned,
        gate: G,
        registered: Registered,
    }
}

impl<G: Gate> Gated<G> {
    pub(crate) fn new(token: CancellationToken, gate: G) -> Self {
        Gated {
            wait: token.cancelled_owned(),
            gate,
            registered: Registered::default(),
        }
    }
}

impl<G: Gate> Future for Gated<G> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if !this.gate.is_open() && !this.registered.stale(cx) {
            return Poll::Pending;
        }
        let polled = this.wait.poll(cx);
        if polled.is_pending() {
            this.registered.note(cx);
        }
        polled
    }
}

pin_project! {
    /// `work`, unless `stop` resolves first (then `None`); `work` is polled first, so what it
    /// has done by then counts. A named future, not an async block: a block that pins the
    /// future it captured keeps room for both the capture and the pinned copy, which for a
    /// connection's task (2.6 KiB) doubled the task's allocation.
    #[derive(Debug)]
    pub(crate) struct Until<F, G> {
        #[pin]
        work: F,
        #[pin]
        stop: Gated<G>,
    }
}

impl<F: Future, G: Gate> Until<F, G> {
    pub(crate) fn new(work: F, stop: Gated<G>) -> Self {
        Until { work, stop }
    }
}

impl<F: Future, G: Gate> Future for Until<F, G> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.work.poll(cx) {
            return Poll::Ready(Some(out));
        }
        this.stop.poll(cx).map(|()| None)
    }
}

/// A token waited for lazily: registered at the first wait only, so that what never waits costs
/// nothing (the registration takes a lock shared by everything waiting on the token).
#[cfg(feature = "http")]
pub(crate) struct Deadline {
    token: CancellationToken,
    /// Set before the token can be cancelled, if it is one of the drain's (its deadline, its
    /// abort): until then a look at the token, which takes its lock, is not needed. Asked at
    /// every read and write of a connection, which all share the service's token.
    gate: MaybeGate,
    wait: Option<Pin<Box<Gated<MaybeGate>>>>,
}

#[cfg(feature = "http")]
impl Deadline {
    pub(crate) fn new(token: CancellationToken) -> Self {
        Deadline {
            token,
            gate: None,
            wait: None,
        }
    }

    /// A token of the drain's, with its gate (`Drain::deadline_gate`).
    pub(crate) fn gated(token: CancellationToken, gate: Arc<AtomicBool>) -> Self {
        Deadline {
            token,
            gate: Some(gate),
            wait: None,
        }
    }

    /// Whether it has passed (nothing is registered; with a gate, an atomic load until then).
    #[inline]
    pub(crate) fn passed(&self) -> bool {
        self.gate.is_open() && self.token.is_cancelled()
    }

    /// Whether it has passed; if not, the task is woken when it does.
    pub(crate) fn reached(&mut self, cx: &mut Context<'_>) -> bool {
        if self.passed() {
            return true;
        }
        let (token, gate) = (&self.token, &self.gate);
        self.wait
            .get_or_insert_with(|| Box::pin(Gated::new(token.clone(), gate.clone())))
            .as_mut()
            .poll(cx)
            .is_ready()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A waker of its own (two of them are two tasks).
    fn waker() -> Waker {
        struct Noop;
        impl std::task::Wake for Noop {
            fn wake(self: Arc<Self>) {}
        }
        Waker::from(Arc::new(Noop))
    }

    #[tokio::test(start_paused = true)]
    async fn resolves_once_cancelled_after_its_gate() {
        let token = CancellationToken::new();
        let gate = Arc::new(AtomicBool::new(false));
        let wait = tokio::spawn(Gated::new(token.clone(), Arc::clone(&gate)));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!wait.is_finished());
        gate.store(true, Ordering::Release);
        token.cancel();
        tokio::time::timeout(Duration::from_secs(1), wait)
            .await
            .expect("woken by the cancel")
            .unwrap();
    }

    #[test]
    fn until_ends_with_the_work_when_both_are_ready_and_with_none_at_the_stop() {
        let stopped = || {
            let token = CancellationToken::new();
            token.cancel();
            Gated::new(token, MaybeGate::None)
        };
        let waker = waker();
        let mut cx = Context::from_waker(&waker);
        // Work done by the time the stop fires counts.
        let done = std::pin::pin!(Until::new(std::future::ready(7), stopped()));
        assert_eq!(done.poll(&mut cx), Poll::Ready(Some(7)));
        // Work still pending ends with the stop ...
        let cut = std::pin::pin!(Until::new(std::future::pending::<u8>(), stopped()));
        assert_eq!(cut.poll(&mut cx), Poll::Ready(None));
        // ... and goes on without it.
        let token = CancellationToken::new();
        let mut going = std::pin::pin!(Until::new(
            std::future::pending::<u8>(),
            Gated::new(token.clone(), MaybeGate::None)
        ));
        assert!(going.as_mut().poll(&mut cx).is_pending());
        token.cancel();
        assert_eq!(going.poll(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn the_registered_task_looks_at_the_token_only_once_the_gate_is_open() {
        let (token, gate) = (CancellationToken::new(), AtomicBool::new(false));
        let mut wait = std::pin::pin!(Gated::new(token.clone(), &gate));
        let (registered, other) = (waker(), waker());
        assert!(
            wait.as_mut()
                .poll(&mut Context::from_waker(&registered))
                .is_pending()
        );
        // Cancelled behind the gate's back: not seen by the registered task while the gate is
        // closed, which is exactly the lock it saves (the contract is the gate first) ...
        token.cancel();
        assert!(
            wait.as_mut()
                .poll(&mut Context::from_waker(&registered))
                .is_pending()
        );
        // ... but another task registers again, and sees it.
        assert!(
            wait.as_mut()
                .poll(&mut Context::from_waker(&other))
                .is_ready()
        );
    }

    #[test]
    fn an_open_gate_looks_at_the_token() {
        let (token, gate) = (CancellationToken::new(), AtomicBool::new(false));
        let mut wait = std::pin::pin!(Gated::new(token.clone(), &gate));
        let registered = waker();
        let mut cx = Context::from_waker(&registered);
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        gate.store(true, Ordering::Release);
        assert!(
            wait.as_mut().poll(&mut cx).is_pending(),
            "open, not cancelled"
        );
        token.cancel();
        assert!(wait.as_mut().poll(&mut cx).is_ready());
        // No gate at all: always looked at.
        let token = CancellationToken::new();
        let mut wait = std::pin::pin!(Gated::new(token.clone(), None));
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        token.cancel();
        assert!(wait.as_mut().poll(&mut cx).is_ready());
    }
}
