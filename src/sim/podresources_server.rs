//! The server side of the kubelet's PodResourcesLister v1 API for the simulated kubelet:
//! gRPC over HTTP/2 cleartext on a unix socket, `List` only. Like the client
//! (the agent's `gpu::podresources`) it avoids a gRPC stack: a unary call is one HTTP/2 POST
//! whose body is one length-prefixed message and whose answer ends with a `grpc-status`
//! trailer.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use bindlet_api::podresources::{LIST_PATH, encode, grpc_frame, grpc_unframe};

/// The service the socket serves (the part of the path before the method).
const SERVICE: &str = "v1.PodResourcesLister";
/// `ListPodResourcesRequest` has no fields; anything much larger than a frame header is
/// not a request this server needs to read.
const MAX_REQUEST: usize = 64 * 1024;

/// gRPC status codes used here.
const OK: &str = "0";
pub const INTERNAL: &str = "13";
pub const UNIMPLEMENTED: &str = "12";

/// One pod of a `List` answer: namespace, name, and per container its name and GPU ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedPod {
    pub namespace: String,
    pub name: String,
    pub containers: Vec<(String, Vec<String>)>,
}

/// Encodes a `ListPodResourcesResponse`: every pod with every container; a container with
/// devices has one `ContainerDevices` entry for `resource`, or, when `numa` knows the
/// devices' NUMA nodes, one entry per device with its topology (the kubelet reports
/// topology per device instance).
impl ListedPod {
    /// A pod with `containers` as (name, device IDs) pairs.
    pub fn new(namespace: &str, name: &str, containers: &[(&str, &[&str])]) -> Self {
        ListedPod {
            namespace: namespace.into(),
            name: name.into(),
            containers: containers
                .iter()
                .map(|(c, ids)| (c.to_string(), ids.iter().map(|s| s.to_string()).collect()))
                .collect(),
        }
    }
}

pub fn list_response(
    resource: &str,
    pods: &[ListedPod],
    numa: &std::collections::BTreeMap<String, i64>,
) -> Vec<u8> {
    let pods: Vec<Vec<u8>> = pods
        .iter()
        .map(|p| {
            let containers: Vec<Vec<u8>> = p
                .containers
                .iter()
                .map(|(name, ids)| {
                    let devices = if ids.is_empty() {
                        Vec::new()
                    } else if !numa.is_empty() {
                        ids.iter()
                            .map(|id| match numa.get(id) {
                                Some(n) => encode::devices_on(resource, &[id], &[*n]),
                                None => encode::devices(resource, &[id]),
                            })
                            .collect()
                    } else {
                        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                        vec![encode::devices(resource, &ids)]
                    };
                    encode::container(name, &devices)
                })
                .collect();
            encode::pod(&p.namespace, &p.name, &containers)
        })
        .collect();
    encode::list_response(&pods)
}

/// Produces the encoded `List` answer at the time of each call.
pub type Answer = Arc<dyn Fn() -> Vec<u8> + Send + Sync>;

type Body = BoxBody<Bytes, Infallible>;

/// Accepts connections until `shutdown`; each connection is served until it ends or
/// `shutdown`.
pub async fn serve(listener: UnixListener, answer: Answer, shutdown: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::debug!(error = %e, "pod-resources accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let answer = answer.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| respond(req, answer.clone()));
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                r = conn => if let Err(e) = r {
                    tracing::debug!(error = %e, "pod-resources connection ended with an error");
                },
            }
        });
    }
}

/// A trailers-only answer (HEADERS with END_STREAM), how gRPC servers report an error
/// before any message.
fn trailers_only(code: &str, message: &str) -> http::Response<Body> {
    http::Response::builder()
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("grpc-status", code)
        .header("grpc-message", message)
        .body(Empty::new().boxed())
        .unwrap_or_else(|_| http::Response::new(Empty::new().boxed()))
}

async fn respond(
    req: http::Request<Incoming>,
    answer: Answer,
) -> Result<http::Response<Body>, Infallible> {
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct == "application/grpc" || ct.starts_with("application/grpc+"));
    if !grpc || req.method() != http::Method::POST {
        // What grpc-go answers to a request that is not gRPC at all.
        let mut resp = http::Response::new(Empty::new().boxed());
        *resp.status_mut() = http::StatusCode::UNSUPPORTED_MEDIA_TYPE;
        return Ok(resp);
    }
    let path = req.uri().path().to_string();
    if path != LIST_PATH {
        // grpc-go's wording for unknown methods and services.
        let message = match path.trim_start_matches('/').split_once('/') {
            Some((SERVICE, method)) => format!("unknown method {method} for service {SERVICE}"),
            Some((service, _)) => format!("unknown service {service}"),
            None => format!("malformed method name: \"{path}\""),
        };
        return Ok(trailers_only(UNIMPLEMENTED, &message));
    }
    let body = match Limited::new(req.into_body(), MAX_REQUEST).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Ok(trailers_only(
                INTERNAL,
                &format!("reading the request: {e}"),
            ));
        }
    };
    // The request message has no fields, so only its framing is checked.
    if let Err(e) = grpc_unframe(&body) {
        return Ok(trailers_only(INTERNAL, &format!("malformed request: {e}")));
    }
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static(OK));
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
        Ok(Frame::data(Bytes::from(grpc_frame(&answer())))),
        Ok(Frame::trailers(trailers)),
    ];
    let body = StreamBody::new(futures::stream::iter(frames)).boxed();
    Ok(http::Response::builder()
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(body)
        .unwrap_or_else(|_| trailers_only(INTERNAL, "building the answer")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bindlet_api::podresources::decode_list_response;

    fn pod(ns: &str, name: &str, containers: &[(&str, &[&str])]) -> ListedPod {
        ListedPod::new(ns, name, containers)
    }

    #[test]
    fn the_answer_decodes_to_what_was_encoded() {
        let pods = [
            pod("ml", "a", &[("main", &["GPU-0", "GPU-1"]), ("side", &[])]),
            pod("web", "b", &[("nginx", &[])]),
        ];
        let decoded =
            decode_list_response(&list_response("nvidia.com/gpu", &pods, &Default::default()))
                .unwrap();
        assert_eq!(decoded.len(), 2);
        assert_eq!(decoded[0].containers.len(), 2);
        assert_eq!(
            decoded[0].device_ids("nvidia.com/gpu").collect::<Vec<_>>(),
            ["GPU-0", "GPU-1"]
        );
        // A container without devices has no ContainerDevices entry, like the kubelet's.
        assert!(decoded[0].containers[1].devices.is_empty());
        assert_eq!(
            (decoded[1].namespace.as_str(), decoded[1].name.as_str()),
            ("web", "b")
        );
        assert!(decoded[1].containers[0].devices.is_empty());
    }
}
