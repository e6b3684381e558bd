//! A panicking handler, contained: the panic is caught where the request's future or its
//! response body is polled, the client gets the answer the connection's state allows (a 500,
//! with `Connection: close` on HTTP/1; gRPC status INTERNAL; once the body has begun, a reset
//! stream or a cut connection), one ERROR event says which request it was, the report counts
//! it, and the process goes on serving. The process's panic hook still runs (printing the
//! message, and a backtrace if asked): it is the application's to set.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};

use http::header::{CONNECTION, CONTENT_TYPE, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Response, StatusCode};

use crate::events::Event;
use crate::http::state::ConnState;

/// Runs `poll`, catching a panic: its message.
pub(crate) fn catch<T>(poll: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(poll)).map_err(|payload| message(payload.as_ref()))
}

fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic with a payload that is not text".to_owned()
    }
}

/// What a request that panicked before its response answers: 500 (closing an HTTP/1
/// connection, whose state the panic may have left anywhere), or gRPC status INTERNAL.
pub(crate) fn answer<B: Default>(grpc: bool, h2: bool) -> Response<B> {
    let mut response = Response::new(B::default());
    if !grpc {
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    }
    let headers = response.headers_mut();
    if grpc {
        // Trailers-only: the status in the headers.
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from_static("13"));
        headers.insert(
            "grpc-message",
            HeaderValue::from_static("internal error: the handler panicked"),
        );
    } else if !h2 {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// What a panic's event says of its request: the method and the path.
pub(crate) type Asked = (Method, Option<PathAndQuery>);

/// Counts the panic and says which request it was, in one event.
pub(crate) fn report(conn: &ConnState, (method, path): &Asked, message: &str, at: &str) {
    conn.drain().count(Event::Panic);
    tracing::error!(
        target: "lameduck",
        service = %conn.service(),
        peer = %conn.peer(),
        %method,
        path = path.as_ref().map_or("", PathAndQuery::path),
        panic = message,
        "the handler panicked {at}; the request got an error, the server goes on"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_caught_with_its_message() {
        assert_eq!(catch(|| 1), Ok(1));
        let caught = catch(|| -> u8 { panic!("boom {}", 7) });
        assert_eq!(caught, Err("boom 7".to_owned()));
        let caught = catch(|| -> u8 { panic!("static") });
        assert_eq!(caught, Err("static".to_owned()));
        let caught = catch(|| -> u8 { std::panic::panic_any(42_u32) });
        assert!(caught.unwrap_err().contains("not text"));
    }

    #[test]
    fn the_answer_fits_the_protocol() {
        let h1: Response<String> = answer(false, false);
        assert_eq!(h1.status(), 500);
        assert_eq!(h1.headers()[CONNECTION], "close");
        let h2: Response<String> = answer(false, true);
        assert_eq!(h2.status(), 500);
        assert!(h2.headers().get(CONNECTION).is_none());
        let grpc: Response<String> = answer(true, true);
        assert_eq!(grpc.status(), 200);
        assert_eq!(grpc.headers()["grpc-status"], "13");
    }
}
