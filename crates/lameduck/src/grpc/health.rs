//! `grpc.health.v1`, answered from the lifecycle's state: SERVING once ready, NOT_SERVING
//! before, from the first moment of the shutdown, and while anything is
//! [impaired](crate::LifecycleHandle::impair) (a server that cannot accept included). `Watch`
//! streams end at the shutdown, after saying NOT_SERVING, so that they never hold a drain open.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio_stream::Stream;
use tokio_stream::wrappers::WatchStream;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::Health;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::ready::{LifecycleHandle, State};

/// The health service of one gRPC server.
#[derive(Debug)]
pub(crate) struct LifecycleHealth {
    handle: LifecycleHandle,
    /// The services it answers for; `""` (the whole server) is always one.
    services: Arc<[String]>,
}

impl LifecycleHealth {
    pub(crate) fn new(handle: LifecycleHandle, services: impl IntoIterator<Item = String>) -> Self {
        let services = std::iter::once(String::new()).chain(services).collect();
        LifecycleHealth { handle, services }
    }

    fn known(&self, request: &Request<HealthCheckRequest>) -> Result<(), Status> {
        let service = &request.get_ref().service;
        if self.services.iter().any(|s| s == service) {
            Ok(())
        } else {
            // The caller's string is not echoed raw into `grpc-message` (CR/LF, a megabyte):
            // escaped, and cut short.
            let shown: String = service.escape_debug().take(MAX_ECHO).collect();
            let cut = if service.escape_debug().nth(MAX_ECHO).is_some() {
                "..."
            } else {
                ""
            };
            Err(Status::not_found(format!(
                "service \"{shown}{cut}\" is not served here"
            )))
        }
    }
}

/// How much of an unknown service's name the answer repeats.
const MAX_ECHO: usize = 64;

fn status_of(state: State) -> ServingStatus {
    match state {
        State::Ready => ServingStatus::Serving,
        _ => ServingStatus::NotServing,
    }
}

#[tonic::async_trait]
impl Health for LifecycleHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.known(&request)?;
        Ok(Response::new(HealthCheckResponse {
            // Not serving while impaired (a server out of descriptors, say): as `/readyz`.
            status: if self.handle.is_impaired() {
                ServingStatus::NotServing
            } else {
                status_of(self.handle.state())
            } as i32,
        }))
    }

    type WatchStream = HealthWatch;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthWatch>, Status> {
        // The health protocol: an unknown service is watched too, as SERVICE_UNKNOWN (it may
        // be registered later); here it never is, and the stream ends at the shutdown.
        let unknown = self.known(&request).is_err();
        Ok(Response::new(HealthWatch {
            states: WatchStream::new(self.handle.subscribe()),
            impairments: WatchStream::new(self.handle.subscribe_impaired()),
            state: None,
            impaired: false,
            unknown,
            last: None,
            ended: false,
        }))
    }
}

/// The status now, then every change, until the shutdown's NOT_SERVING: then the stream ends
/// (status OK), so a watching client holds no connection open through the drain. An
/// impairment (a server that cannot accept, one of the application's) makes it NOT_SERVING
/// until the last one is gone.
pub(crate) struct HealthWatch {
    states: WatchStream<State>,
    /// How many impairments there are now, at each change.
    impairments: WatchStream<usize>,
    state: Option<State>,
    impaired: bool,
    unknown: bool,
    last: Option<ServingStatus>,
    ended: bool,
}

impl Stream for HealthWatch {
    type Item = Result<HealthCheckResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.ended {
                return Poll::Ready(None);
            }
            let mut changed = false;
            match Pin::new(&mut self.states).poll_next(cx) {
                Poll::Ready(Some(state)) => {
                    self.state = Some(state);
                    changed = true;
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {}
            }
            if let Poll::Ready(Some(count)) = Pin::new(&mut self.impairments).poll_next(cx) {
                self.impaired = count != 0;
                changed = true;
            }
            if !changed {
                return Poll::Pending;
            }
            let Some(state) = self.state else { continue };
            self.ended = matches!(state, State::Draining | State::Stopped);
            let status = if self.unknown {
                ServingStatus::ServiceUnknown
            } else if self.impaired && state == State::Ready {
                ServingStatus::NotServing
            } else {
                status_of(state)
            };
            if self.last != Some(status) {
                self.last = Some(status);
                return Poll::Ready(Some(Ok(HealthCheckResponse {
                    status: status as i32,
                })));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt as _;
    use tonic_health::pb::health_server::Health as _;

    use super::*;
    use crate::ready::Control;

    #[tokio::test]
    async fn a_watch_follows_readiness_and_impairments() {
        let control = Control::new();
        control.set(State::Ready);
        let health = LifecycleHealth::new(control.handle.clone(), Vec::new());
        let mut watch = health
            .watch(Request::new(HealthCheckRequest::default()))
            .await
            .unwrap()
            .into_inner();
        let mut next = async || watch.next().await.unwrap().unwrap().status;
        assert_eq!(next().await, ServingStatus::Serving as i32);
        let accept = control
            .handle
            .impair("grpc-a", "cannot accept connections: EMFILE");
        assert_eq!(next().await, ServingStatus::NotServing as i32);
        let store = control.handle.impair("store", "flush failing");
        drop(accept);
        // Still impaired: nothing to say until the last one goes.
        let check = || async {
            let request = Request::new(HealthCheckRequest::default());
            health.check(request).await.unwrap().into_inner().status
        };
        assert_eq!(check().await, ServingStatus::NotServing as i32);
        drop(store);
        assert_eq!(check().await, ServingStatus::Serving as i32);
        assert_eq!(next().await, ServingStatus::Serving as i32);
        control.set(State::Draining);
        assert_eq!(next().await, ServingStatus::NotServing as i32);
        assert!(
            watch.next().await.is_none(),
            "the stream ends at the shutdown"
        );
    }
}
