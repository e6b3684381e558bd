//! The gRPC services: `demo.v1.Echo` on server A, `demo.v1.Store` on server B (the same store as
//! the HTTP API).

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::proto::echo_server::Echo;
use crate::proto::store_server;
use crate::proto::{
    EchoReply, EchoRequest, GetReply, GetRequest, PutReply, PutRequest, Tick, TicksRequest,
};
use crate::store::Store;

/// The longest an `Echo` waits, or a `Ticks` stream lasts.
const MAX_WAIT: Duration = Duration::from_secs(600);

/// `demo.v1.Echo`.
#[derive(Debug, Default, Clone, Copy)]
pub struct EchoService;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let request = request.into_inner();
        let began = Instant::now();
        tokio::time::sleep(Duration::from_millis(request.delay_ms).min(MAX_WAIT)).await;
        Ok(Response::new(EchoReply {
            message: request.message,
            waited_ms: u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX),
        }))
    }

    type TicksStream = Pin<Box<dyn Stream<Item = Result<Tick, Status>> + Send>>;

    async fn ticks(
        &self,
        request: Request<TicksRequest>,
    ) -> Result<Response<Self::TicksStream>, Status> {
        let request = request.into_inner();
        let interval = Duration::from_millis(request.interval_ms);
        if interval.saturating_mul(request.count) > MAX_WAIT {
            return Err(Status::invalid_argument(format!(
                "count × interval_ms may be at most {} s",
                MAX_WAIT.as_secs()
            )));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            for n in 0..request.count {
                tokio::time::sleep(interval).await;
                if tx.send(Ok(Tick { n })).await.is_err() {
                    return; // the client went away
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// `demo.v1.Store`.
#[derive(Debug, Clone)]
pub struct StoreService {
    /// The write-behind store.
    pub store: Arc<Store>,
}

#[tonic::async_trait]
impl store_server::Store for StoreService {
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutReply>, Status> {
        let PutRequest { key, value } = request.into_inner();
        self.store
            .write(key, value)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(PutReply {}))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetReply>, Status> {
        let key = request.into_inner().key;
        match self.store.get(&key).await {
            Ok(Some(value)) => Ok(Response::new(GetReply { value })),
            Ok(None) => Err(Status::not_found(format!("no key `{key}`"))),
            Err(error) => Err(Status::unavailable(error.to_string())),
        }
    }
}
