//! A minimal client of the kubelet's PodResourcesLister v1 API (`List` only): gRPC over
//! HTTP/2 cleartext on a unix socket. The messages, their decoder and the framing are
//! [`bindlet_api::podresources`]; topology, CPU ids and memory feed the observed NUMA
//! placement ([`crate::numa`]).

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};

pub use bindlet_api::podresources::*;

/// Calls `List` on the socket at `path`, all of it (connecting included) within `timeout`.
pub async fn list(path: &Path, timeout: Duration) -> Result<Vec<PodResources>, PodResourcesError> {
    match tokio::time::timeout(timeout, list_unbounded(path)).await {
        Ok(r) => r,
        Err(_) => Err(PodResourcesError::Timeout {
            path: path.to_path_buf(),
            after: timeout,
        }),
    }
}

/// Aborts the connection task when the call ends, timeouts included.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn list_unbounded(path: &Path) -> Result<Vec<PodResources>, PodResourcesError> {
    let http = |e: &dyn std::fmt::Display| PodResourcesError::Http {
        path: path.to_path_buf(),
        error: e.to_string(),
    };
    let stream = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|error| PodResourcesError::Connect {
            path: path.to_path_buf(),
            error,
        })?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| http(&e))?;
    let _conn = AbortOnDrop(tokio::spawn(async move {
        // Errors surface through the request; nothing to add here.
        let _ = conn.await;
    }));
    // The authority is not used over a unix socket, but HTTP/2 requires one.
    let req = http::Request::post(format!("http://localhost{LIST_PATH}"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(Full::new(Bytes::from(grpc_frame(&[]))))
        .map_err(|e| http(&e))?;
    let resp = sender.send_request(req).await.map_err(|e| http(&e))?;
    let status = resp.status();
    if status != http::StatusCode::OK {
        return Err(PodResourcesError::HttpStatus {
            path: path.to_path_buf(),
            status: status.as_u16(),
        });
    }
    let (parts, body) = resp.into_parts();
    let collected = Limited::new(body, MAX_ANSWER + 5)
        .collect()
        .await
        .map_err(|e| http(&*e))?;
    // A "trailers-only" answer (an error, usually) carries the status in the headers.
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let header = |name: &str| {
        trailers
            .get(name)
            .or_else(|| parts.headers.get(name))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let code = header("grpc-status");
    if code.as_deref() != Some("0") {
        return Err(PodResourcesError::GrpcStatus {
            path: path.to_path_buf(),
            code: code.unwrap_or_else(|| "missing".into()),
            message: header("grpc-message").unwrap_or_default(),
        });
    }
    let body = collected.to_bytes();
    let msg = grpc_unframe(&body).map_err(|reason| PodResourcesError::Frame {
        path: path.to_path_buf(),
        reason,
    })?;
    decode_list_response(msg).map_err(|error| PodResourcesError::Decode {
        path: path.to_path_buf(),
        error,
    })
}

#[cfg(test)]
mod tests {
    //! The client against the simulated kubelet's server (the sim crate), which is why this
    //! test lives with the client rather than with the server.
    use super::*;
    use crate::gpu::podresources;
    use bindlet_sim::podresources_server::{
        Answer, INTERNAL, ListedPod, UNIMPLEMENTED, list_response, serve,
    };
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use std::sync::Arc;
    use tokio::net::UnixListener;
    use tokio_util::sync::CancellationToken;

    fn pod(ns: &str, name: &str, containers: &[(&str, &[&str])]) -> ListedPod {
        ListedPod::new(ns, name, containers)
    }

    fn start(dir: &std::path::Path, answer: Answer) -> (std::path::PathBuf, CancellationToken) {
        let path = dir.join("kubelet.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let token = CancellationToken::new();
        tokio::spawn(serve(listener, answer, token.clone()));
        (path, token)
    }

    /// Calls `path` on the socket; returns the HTTP status and grpc-status/grpc-message
    /// from headers or trailers.
    async fn call(
        socket: &std::path::Path,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, Option<String>, Option<String>) {
        let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        let conn = tokio::spawn(conn);
        let req = http::Request::post(format!("http://localhost{path}"))
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let (parts, body) = resp.into_parts();
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let get = |name: &str| {
            trailers
                .get(name)
                .or_else(|| parts.headers.get(name))
                .map(|v| v.to_str().unwrap().to_string())
        };
        let out = (status, get("grpc-status"), get("grpc-message"));
        conn.abort();
        out
    }

    #[tokio::test]
    async fn answers_list_and_refuses_other_methods() {
        let dir = tempfile::tempdir().unwrap();
        let pods = vec![pod("ml", "a", &[("main", &["GPU-0"])])];
        let (socket, token) = start(
            dir.path(),
            Arc::new(move || list_response("nvidia.com/gpu", &pods, &Default::default())),
        );
        let listed = podresources::list(&socket, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            listed[0].device_ids("nvidia.com/gpu").collect::<Vec<_>>(),
            ["GPU-0"]
        );

        let (status, code, message) = call(
            &socket,
            "/v1.PodResourcesLister/GetAllocatableResources",
            "application/grpc",
            grpc_frame(&[]),
        )
        .await;
        assert_eq!((status, code.as_deref()), (200, Some(UNIMPLEMENTED)));
        assert_eq!(
            message.as_deref(),
            Some("unknown method GetAllocatableResources for service v1.PodResourcesLister")
        );
        let (_, code, message) = call(
            &socket,
            "/v1alpha1.PodResourcesLister/List",
            "application/grpc",
            grpc_frame(&[]),
        )
        .await;
        assert_eq!(code.as_deref(), Some(UNIMPLEMENTED));
        assert_eq!(
            message.as_deref(),
            Some("unknown service v1alpha1.PodResourcesLister")
        );
        // A body that is not one gRPC frame.
        let (_, code, _) = call(&socket, LIST_PATH, "application/grpc", vec![0, 0]).await;
        assert_eq!(code.as_deref(), Some(INTERNAL));
        // Not gRPC at all.
        let (status, code, _) = call(&socket, LIST_PATH, "application/json", Vec::new()).await;
        assert_eq!((status, code), (415, None));

        // After shutdown the socket no longer answers.
        token.cancel();
        tokio::task::yield_now().await;
        let r = podresources::list(&socket, Duration::from_millis(500)).await;
        assert!(
            matches!(
                r,
                Err(PodResourcesError::Http { .. }
                    | PodResourcesError::Timeout { .. }
                    | PodResourcesError::Connect { .. })
            ),
            "{r:?}"
        );
    }
}
