//! Long-lived responses ended cleanly at the drain's start: a stream (server-sent events, a
//! log tail, any body made of a stream) that would run until the deadline cut it, and its
//! client report an error, instead ends with a last item of the application's (a named event
//! with a `retry:` hint, for `EventSource` clients to reconnect elsewhere) and a clean end of
//! the body.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use pin_project_lite::pin_project;
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::drain::Drain;

pin_project! {
    /// A stream that ends at the drain's start, with a last item: see [`end_at_drain`].
    #[must_use = "streams do nothing unless polled"]
    pub struct EndAtDrain<S, F> {
        #[pin]
        stream: S,
        // Boxed (once per stream): the wrapper is `Unpin` when the stream is.
        draining: Pin<Box<WaitForCancellationFutureOwned>>,
        last: Option<F>,
        done: bool,
    }
}

/// Ends `stream` when `drain` begins (when the listeners close; during the lame-duck delay it
/// goes on): the item `last()` makes is sent, then the stream ends, and with it the response
/// body, cleanly. A stream that ends by itself first ends as it would have, without `last`.
///
/// With axum's server-sent events, a final event that tells `EventSource` clients to
/// reconnect (elsewhere, since this process's listeners are closed) in a second:
///
/// ```
/// use std::convert::Infallible;
/// use std::time::Duration;
///
/// use axum::response::sse::{Event, Sse};
/// use lameduck::Drain;
/// use tokio_stream::{Stream, StreamExt};
///
/// async fn events(drain: Drain) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
///     let ticks = tokio_stream::iter(0u64..)
///         .throttle(Duration::from_millis(500))
///         .map(|n| Ok(Event::default().event("tick").data(n.to_string())));
///     Sse::new(lameduck::http::end_at_drain(ticks, &drain, || {
///         Ok(Event::default()
///             .event("shutdown")
///             .retry(Duration::from_secs(1))
///             .data("server going away"))
///     }))
/// }
/// # let _app: axum::Router = axum::Router::new().route("/events", axum::routing::get(events));
/// ```
pub fn end_at_drain<S, F>(stream: S, drain: &Drain, last: F) -> EndAtDrain<S, F>
where
    S: Stream,
    F: FnOnce() -> S::Item,
{
    EndAtDrain {
        stream,
        draining: Box::pin(drain.token().cancelled_owned()),
        last: Some(last),
        done: false,
    }
}

impl<S, F> Stream for EndAtDrain<S, F>
where
    S: Stream,
    F: FnOnce() -> S::Item,
{
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        if this.draining.as_mut().poll(cx).is_ready() {
            *this.done = true;
            return Poll::Ready(this.last.take().map(|last| last()));
        }
        let next = this.stream.poll_next(cx);
        if let Poll::Ready(None) = next {
            *this.done = true;
        }
        next
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.done {
            (0, Some(0))
        } else {
            // At most one more than the stream's own, perhaps fewer.
            let (_, upper) = self.stream.size_hint();
            (0, upper.and_then(|n| n.checked_add(1)))
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::stage::Stage;

    #[tokio::test]
    async fn at_the_drain_the_last_item_then_the_end_and_before_it_the_stream_as_it_is() {
        let stage = Stage::new();
        let drain = stage.drain("test", &CancellationToken::new());
        // Ends by itself: as it would have, no last item.
        let short = end_at_drain(tokio_stream::iter([1, 2]), &drain, || 99);
        assert_eq!(short.collect::<Vec<_>>().await, [1, 2]);
        // Endless: items until the drain, then the last one, then the end.
        let mut endless = end_at_drain(tokio_stream::iter(0..), &drain, || -1);
        assert_eq!(endless.next().await, Some(0));
        assert_eq!(endless.next().await, Some(1));
        stage.draining.cancel();
        assert_eq!(endless.next().await, Some(-1));
        assert_eq!(endless.next().await, None);
        assert_eq!(endless.next().await, None);
        assert_eq!(endless.size_hint(), (0, Some(0)));
    }
}
