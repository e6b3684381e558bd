//! What a gRPC call looks like on the wire: the method's descriptors, from the server's
//! reflection service (v1, falling back to v1alpha) or from a `.proto` file compiled
//! in-process (protox: no `protoc`), and its request built from JSON.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor};

/// A method to call, resolved: its path, its kind, and its request encoded once.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    /// `pkg.Service/Method`, as given.
    pub(crate) name: String,
    /// `/pkg.Service/Method`.
    pub(crate) path: http::uri::PathAndQuery,
    /// Whether the server answers with a stream.
    pub(crate) server_streaming: bool,
    /// The request message, encoded.
    pub(crate) request: Bytes,
    /// The response's type (to read an audit's answers).
    pub(crate) output: MessageDescriptor,
    /// The request's type (to build an audit's requests).
    pub(crate) input: MessageDescriptor,
}

/// Where the descriptors come from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// The server's reflection service, at this address.
    Reflection(String),
    /// A `.proto` file, with the directories its imports are found in.
    Proto {
        file: PathBuf,
        imports: Vec<PathBuf>,
    },
}

/// Splits `pkg.Service/Method` (a leading `/`, or grpcurl's `pkg.Service.Method`, allowed).
fn split(call: &str) -> Result<(&str, &str), String> {
    let trimmed = call.trim_start_matches('/');
    let split = trimmed
        .rsplit_once('/')
        .or_else(|| trimmed.rsplit_once('.'))
        .filter(|(service, method)| !service.is_empty() && !method.is_empty());
    split.ok_or_else(|| {
        format!(
            "--call `{call}`: expected `package.Service/Method` (like grpc.health.v1.Health/Check)"
        )
    })
}

/// The descriptors `source` describes, with every service of `calls` in them; reflection may
/// take `within` (a server that is still starting is waited for).
pub(crate) async fn pool(
    source: &Source,
    calls: &[String],
    within: std::time::Duration,
) -> Result<DescriptorPool, String> {
    match source {
        Source::Proto { file, imports } => compile(file, imports),
        Source::Reflection(addr) => {
            let services: Vec<&str> = calls
                .iter()
                .map(|c| split(c).map(|(service, _)| service))
                .collect::<Result<_, _>>()?;
            reflect(addr, &services, within).await
        }
    }
}

/// Resolves each of `calls` (with the JSON request of the same index, `{}` without one).
pub(crate) fn resolve(
    pool: &DescriptorPool,
    calls: &[String],
    data: &[String],
) -> Result<Vec<Call>, String> {
    if !data.is_empty() && data.len() != calls.len() {
        return Err(format!(
            "{} --data for {} --call: give one per call, in the same order (or none: `{{}}`)",
            data.len(),
            calls.len()
        ));
    }
    calls
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let method = method(pool, name)?;
            let json = data.get(i).map_or("{}", String::as_str);
            if method.is_client_streaming() {
                return Err(format!(
                    "--call {name}: a client-streaming method; the drill calls unary and \
                     server-streaming methods"
                ));
            }
            let request =
                from_json(&method.input(), json).map_err(|e| format!("--data for {name}: {e}"))?;
            let path = format!("/{}/{}", method.parent_service().full_name(), method.name())
                .parse()
                .map_err(|e| format!("--call {name}: {e}"))?;
            Ok(Call {
                name: name.clone(),
                path,
                server_streaming: method.is_server_streaming(),
                request: request.encode_to_vec().into(),
                output: method.output(),
                input: method.input(),
            })
        })
        .collect()
}

fn method(pool: &DescriptorPool, call: &str) -> Result<MethodDescriptor, String> {
    let (service, method) = split(call)?;
    let found = pool
        .get_service_by_name(service)
        .ok_or_else(|| format!("--call {call}: no service `{service}` in the descriptors"))?;
    found.methods().find(|m| m.name() == method).ok_or_else(|| {
        let known: Vec<String> = found.methods().map(|m| m.name().to_owned()).collect();
        format!(
            "--call {call}: `{service}` has no method `{method}` (it has: {})",
            known.join(", ")
        )
    })
}

/// A message of type `desc` from JSON (the protobuf JSON mapping, as grpcurl reads it).
pub(crate) fn from_json(desc: &MessageDescriptor, json: &str) -> Result<DynamicMessage, String> {
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let message = DynamicMessage::deserialize(desc.clone(), &mut deserializer)
        .map_err(|e| format!("not a {} in JSON: {e}", desc.full_name()))?;
    deserializer
        .end()
        .map_err(|e| format!("trailing input after the JSON: {e}"))?;
    Ok(message)
}

/// A message of type `desc`, decoded, as JSON.
pub(crate) fn to_json(desc: &MessageDescriptor, bytes: &[u8]) -> Result<String, String> {
    let message = DynamicMessage::decode(desc.clone(), bytes)
        .map_err(|e| format!("not a {}: {e}", desc.full_name()))?;
    serde_json::to_string(&message).map_err(|e| e.to_string())
}

/// The descriptors of `file` and its imports, compiled by protox.
pub(crate) fn compile(file: &Path, imports: &[PathBuf]) -> Result<DescriptorPool, String> {
    if !file.is_file() {
        return Err(format!("--proto {}: no such file", file.display()));
    }
    let includes: Vec<PathBuf> = if imports.is_empty() {
        vec![
            file.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_owned(),
        ]
    } else {
        imports.to_vec()
    };
    let mut compiler = protox::Compiler::new(&includes)
        .map_err(|e| format!("--import-path {}: {e}", show(&includes)))?;
    compiler.include_imports(true);
    compiler
        .open_file(file)
        .map_err(|e| format!("--proto {}: {e}", file.display()))?;
    Ok(compiler.descriptor_pool())
}

fn show(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    shown.join(", ")
}

/// The files that define `services`, and the files they import, from the reflection service
/// at `addr`: v1 first, v1alpha if the server has only that one.
async fn reflect(
    addr: &str,
    services: &[&str],
    within: std::time::Duration,
) -> Result<DescriptorPool, String> {
    let until = tokio::time::Instant::now() + within;
    let endpoint = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("--grpc {addr}: {e}"))?;
    let channel = loop {
        match endpoint.connect().await {
            Ok(channel) => break channel,
            Err(e) if tokio::time::Instant::now() >= until => {
                return Err(format!(
                    "--grpc {addr}: could not connect within {within:?}: {e}"
                ));
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    };
    let fetched = tokio::time::timeout_at(until, async {
        match fetch_v1(channel.clone(), services).await {
            Err(v1) if v1.code() == tonic::Code::Unimplemented => fetch_v1alpha(channel, services)
                .await
                .map_err(|e| (Some(v1), e)),
            other => other.map_err(|e| (None, e)),
        }
    })
    .await
    .map_err(|_| format!("--grpc {addr}: reflection did not answer within {within:?}"))?;
    let files = match fetched {
        Ok(files) => Ok(files),
        Err((Some(v1), e)) => Err(format!(
            "reflection v1alpha (v1: {}): {}",
            said(&v1),
            said(&e)
        )),
        Err((None, e)) => Err(format!("reflection: {}", said(&e))),
    };
    let hint = "(without reflection, give --proto FILE)";
    files
        .map_err(|e| format!("{e} {hint}"))
        .and_then(build)
        .map_err(|e| format!("--grpc {addr}: {e}"))
}

/// A status as one line: its code's name and its message.
fn said(status: &tonic::Status) -> String {
    format!(
        "{} {}",
        crate::grpc_load::code_name(status.code()),
        status.message()
    )
}

fn build(files: Vec<prost_types::FileDescriptorProto>) -> Result<DescriptorPool, String> {
    let mut pool = DescriptorPool::new();
    pool.add_file_descriptor_protos(files)
        .map_err(|e| format!("the server's descriptors do not fit together: {e}"))?;
    Ok(pool)
}

/// One reflection request after another on one stream, for both protocol versions (the same
/// messages in two packages).
macro_rules! fetch {
    ($name:ident, $pb:path) => {
        async fn $name(
            channel: tonic::transport::Channel,
            services: &[&str],
        ) -> Result<Vec<prost_types::FileDescriptorProto>, tonic::Status> {
            use pb::server_reflection_client::ServerReflectionClient;
            use pb::server_reflection_request::MessageRequest;
            use pb::server_reflection_response::MessageResponse;
            use $pb as pb;

            let (send, receive) = tokio::sync::mpsc::channel(4);
            let requests = tokio_stream::wrappers::ReceiverStream::new(receive);
            let mut responses = ServerReflectionClient::new(channel)
                .server_reflection_info(requests)
                .await?
                .into_inner();
            let mut ask = async |request: MessageRequest| {
                let message = pb::ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(request),
                };
                send.send(message)
                    .await
                    .map_err(|_| tonic::Status::unavailable("the reflection stream closed"))?;
                let answer = responses
                    .message()
                    .await?
                    .ok_or_else(|| tonic::Status::unavailable("the reflection stream ended"))?;
                match answer.message_response {
                    Some(MessageResponse::FileDescriptorResponse(files)) => {
                        Ok(files.file_descriptor_proto)
                    }
                    Some(MessageResponse::ErrorResponse(e)) => Err(tonic::Status::new(
                        tonic::Code::from(e.error_code),
                        e.error_message,
                    )),
                    _ => Err(tonic::Status::internal("an unexpected reflection answer")),
                }
            };
            let mut files = Vec::new();
            let mut seen = HashSet::new();
            let mut wanted: Vec<String> = Vec::new();
            let take = |encoded: Vec<Vec<u8>>,
                        files: &mut Vec<prost_types::FileDescriptorProto>,
                        seen: &mut HashSet<String>,
                        wanted: &mut Vec<String>| {
                for bytes in encoded {
                    let file = prost_types::FileDescriptorProto::decode(bytes.as_slice())
                        .map_err(|e| tonic::Status::internal(format!("a bad descriptor: {e}")))?;
                    if seen.insert(file.name().to_owned()) {
                        wanted.extend(file.dependency.iter().cloned());
                        files.push(file);
                    }
                }
                Ok::<(), tonic::Status>(())
            };
            for service in services {
                let found = ask(MessageRequest::FileContainingSymbol((*service).to_owned()))
                    .await
                    .map_err(|e| {
                        tonic::Status::new(
                            e.code(),
                            format!("service `{service}`: {}", e.message()),
                        )
                    })?;
                take(found, &mut files, &mut seen, &mut wanted)?;
            }
            // The imports the server did not send along, one by one.
            while let Some(name) = wanted.pop() {
                if seen.contains(&name) {
                    continue;
                }
                let found = ask(MessageRequest::FileByFilename(name)).await?;
                take(found, &mut files, &mut seen, &mut wanted)?;
            }
            Ok(files)
        }
    };
}

fetch!(fetch_v1, tonic_reflection::pb::v1);
fetch!(fetch_v1alpha, tonic_reflection::pb::v1alpha);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_the_call_forms_grpcurl_and_ghz_use() {
        assert_eq!(
            split("demo.v1.Echo/Echo").unwrap(),
            ("demo.v1.Echo", "Echo")
        );
        assert_eq!(
            split("/demo.v1.Echo/Echo").unwrap(),
            ("demo.v1.Echo", "Echo")
        );
        assert_eq!(
            split("demo.v1.Echo.Echo").unwrap(),
            ("demo.v1.Echo", "Echo")
        );
        assert!(split("Echo").is_err());
        assert!(split("demo.v1.Echo/").is_err());
    }

    fn demo_pool() -> DescriptorPool {
        let proto =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../lameduck-demo/proto/demo/v1/demo.proto");
        let imports = [Path::new(env!("CARGO_MANIFEST_DIR")).join("../lameduck-demo/proto")];
        compile(&proto, &imports).unwrap()
    }

    #[test]
    fn a_proto_file_resolves_unary_and_streaming_calls_with_their_json() {
        let pool = demo_pool();
        let calls = resolve(
            &pool,
            &["demo.v1.Echo/Echo".into(), "demo.v1.Echo/Ticks".into()],
            &[
                r#"{"message": "hi", "delayMs": 5}"#.into(),
                r#"{"count": 3}"#.into(),
            ],
        )
        .unwrap();
        assert_eq!(calls[0].path.as_str(), "/demo.v1.Echo/Echo");
        assert!(!calls[0].server_streaming);
        assert!(calls[1].server_streaming);
        // Field 1 "hi", field 2 varint 5.
        assert_eq!(&calls[0].request[..], b"\x0a\x02hi\x10\x05");
        let back = to_json(&calls[0].input, &calls[0].request).unwrap();
        assert_eq!(back, r#"{"message":"hi","delayMs":"5"}"#);
    }

    #[test]
    fn bad_calls_and_data_say_what_is_wrong() {
        let pool = demo_pool();
        let err = |calls: &[&str], data: &[&str]| {
            let calls: Vec<String> = calls.iter().map(|s| s.to_string()).collect();
            let data: Vec<String> = data.iter().map(|s| s.to_string()).collect();
            resolve(&pool, &calls, &data).unwrap_err()
        };
        let e = err(&["demo.v1.Nope/Echo"], &[]);
        assert!(e.contains("no service `demo.v1.Nope`"), "{e}");
        let e = err(&["demo.v1.Echo/Nope"], &[]);
        assert!(
            e.contains("has no method `Nope` (it has: Echo, Ticks)"),
            "{e}"
        );
        let e = err(&["demo.v1.Echo/Echo"], &[r#"{"mesage": "typo"}"#]);
        assert!(e.contains("not a demo.v1.EchoRequest in JSON"), "{e}");
        let e = err(&["demo.v1.Echo/Echo", "demo.v1.Echo/Ticks"], &["{}"]);
        assert!(e.contains("1 --data for 2 --call"), "{e}");
        let missing = compile(Path::new("/nonexistent/x.proto"), &[]).unwrap_err();
        assert!(missing.contains("/nonexistent"), "{missing}");
    }
}
