//! Waits that cost nothing while nothing happens. A connection's task is woken by its socket
//! several times a request, and each wake would look again at everything it waits for: the
//! drain's tokens (shared by every connection of the service; a token's check takes its lock)
//! and its timer. Each of those has a sign that it may have fired, cheaper than polling it: a
//! token of the drain's has a gate, an atomic flag set before it is cancelled; a timer says
//! whether it has elapsed. While there is no sign, and the task polling is the one that
//! registered the wait ([`Registered`]), the wait is not polled again: its registration stands,
//! and the task is woken when it fires.

use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
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

pin_project! {
    /// Resolves once `token` is cancelled. `gate` must be set before the token is cancelled:
    /// until then, a poll by the task already registered is an atomic load.
    #[derive(Debug)]
    pub(crate) struct Gated<G> {
        #[pin]
        wait: WaitForCancellationFutureOwned,
        gate: G,
        registered: Registered,
    }
}

impl<G: Deref<Target = AtomicBool>> Gated<G> {
    pub(crate) fn new(token: CancellationToken, gate: G) -> Self {
        Gated {
            wait: token.cancelled_owned(),
            gate,
            registered: Registered::default(),
        }
    }
}

impl<G: Deref<Target = AtomicBool>> Future for Gated<G> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if !this.gate.load(Ordering::Acquire) && !this.registered.stale(cx) {
            return Poll::Pending;
        }
        let polled = this.wait.poll(cx);
        if polled.is_pending() {
            this.registered.note(cx);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

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

    #[tokio::test]
    async fn a_wake_without_a_sign_does_not_poll_the_token_and_one_with_does() {
        let token = CancellationToken::new();
        let gate = AtomicBool::new(false);
        let mut wait = std::pin::pin!(Gated::new(token.clone(), &gate));
        let waker = Waker::from(Arc::new(Flag::default()));
        let mut cx = Context::from_waker(&waker);
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        // Cancelled behind the gate's back: not seen while the gate is closed, which is
        // exactly the lock it saves (the contract is the gate first).
        token.cancel();
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        gate.store(true, Ordering::Release);
        assert!(wait.as_mut().poll(&mut cx).is_ready());
    }

    #[tokio::test]
    async fn another_task_polling_registers_again() {
        let token = CancellationToken::new();
        let gate = AtomicBool::new(false);
        let mut wait = std::pin::pin!(Gated::new(token.clone(), &gate));
        let first = Waker::from(Arc::new(Flag::default()));
        assert!(
            wait.as_mut()
                .poll(&mut Context::from_waker(&first))
                .is_pending()
        );
        token.cancel();
        // A waker that is not the registered one: the wait is polled (and the cancel seen).
        let flag = Arc::new(Flag::default());
        let other = Waker::from(Arc::clone(&flag));
        assert!(
            wait.as_mut()
                .poll(&mut Context::from_waker(&other))
                .is_ready()
        );
    }

    #[derive(Default)]
    struct Flag(AtomicBool);

    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::Release);
        }
    }
}
