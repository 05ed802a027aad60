//! The kubelet pod-resources client against a fake PodResourcesLister (an HTTP/2 server on
//! a unix socket answering handcrafted protobuf), and the agent using it for whole-GPU
//! checks, falling back to the pods' limits when the socket does not answer.

mod common;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bindlet::api::{Phase, VerdictOutcome};
use bindlet::gpu::podresources::{self, PodResourcesError, encode};
use bytes::Bytes;
use common::TestEnv;
use http_body_util::StreamBody;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;

/// How the fake server answers.
#[derive(Clone)]
enum Answer {
    /// One frame with this message, then `grpc-status: 0`.
    Ok(Vec<u8>),
    /// These raw body bytes, then `grpc-status: 0`.
    Raw(Vec<u8>),
    /// A trailers-only error answer.
    Status(&'static str, &'static str),
    /// Never answers.
    Hang,
}

type Body = StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

async fn respond(
    req: http::Request<Incoming>,
    answer: Answer,
) -> Result<http::Response<Body>, Infallible> {
    let ok_path = req.uri().path() == podresources::LIST_PATH
        && req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            == Some("application/grpc");
    let answer = if ok_path {
        answer
    } else {
        Answer::Status("12", "unknown method")
    };
    let trailers = |code: &str| {
        let mut t = http::HeaderMap::new();
        t.insert(
            "grpc-status",
            http::HeaderValue::from_str(code).expect("header"),
        );
        t
    };
    let (body, frames) = match answer {
        Answer::Hang => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        Answer::Ok(msg) => (
            http::Response::builder(),
            vec![
                Frame::data(Bytes::from(podresources::grpc_frame(&msg))),
                Frame::trailers(trailers("0")),
            ],
        ),
        Answer::Raw(b) => (
            http::Response::builder(),
            vec![Frame::data(Bytes::from(b)), Frame::trailers(trailers("0"))],
        ),
        Answer::Status(code, message) => (
            http::Response::builder()
                .header("grpc-status", code)
                .header("grpc-message", message),
            Vec::new(),
        ),
    };
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = frames.into_iter().map(Ok).collect();
    Ok(body
        .header("content-type", "application/grpc")
        .body(StreamBody::new(futures::stream::iter(frames)))
        .expect("response"))
}

/// Serves `answer` on a new socket in `dir` until the test ends.
fn serve(dir: &Path, answer: Answer) -> PathBuf {
    let path = dir.join("kubelet.sock");
    let listener = tokio::net::UnixListener::bind(&path).expect("bind socket");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| respond(req, answer.clone()));
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    path
}

fn answer(assignments: &[(&str, &str, &[&str])]) -> Vec<u8> {
    let pods: Vec<Vec<u8>> = assignments
        .iter()
        .map(|(ns, name, ids)| {
            encode::pod(
                ns,
                name,
                &[encode::container(
                    "main",
                    &[encode::devices("nvidia.com/gpu", ids)],
                )],
            )
        })
        .collect();
    encode::list_response(&pods)
}

const T: Duration = Duration::from_secs(5);

#[tokio::test]
async fn lists_device_assignments_from_the_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = serve(
        dir.path(),
        Answer::Ok(answer(&[
            ("ml", "a", &["GPU-0", "GPU-1"]),
            ("ml", "b", &[]),
        ])),
    );
    let pods = podresources::list(&path, T).await.expect("list");
    assert_eq!(pods.len(), 2);
    assert_eq!(
        (pods[0].namespace.as_str(), pods[0].name.as_str()),
        ("ml", "a")
    );
    assert_eq!(
        pods[0].device_ids("nvidia.com/gpu").collect::<Vec<_>>(),
        ["GPU-0", "GPU-1"]
    );
    // An empty answer (no pods) is an empty list.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = serve(dir.path(), Answer::Ok(Vec::new()));
    assert_eq!(
        podresources::list(&path, T).await.expect("list"),
        Vec::new()
    );
}

#[tokio::test]
async fn errors_are_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    let absent = dir.path().join("absent.sock");
    let e = podresources::list(&absent, T).await.expect_err("no socket");
    assert!(matches!(e, PodResourcesError::Connect { .. }), "{e:?}");
    assert!(e.to_string().contains("absent.sock"), "{e}");

    type Check = fn(&PodResourcesError) -> bool;
    let cases: Vec<(Answer, Check)> = vec![
        (
            Answer::Status("14", "kubelet is restarting"),
            |e| matches!(e, PodResourcesError::GrpcStatus { code, message, .. } if code == "14" && message == "kubelet is restarting"),
        ),
        (Answer::Raw(vec![0, 0, 0, 0, 9, 1]), |e| {
            matches!(e, PodResourcesError::Frame { .. })
        }),
        (Answer::Raw(podresources::grpc_frame(&[0x0a, 0x05])), |e| {
            matches!(e, PodResourcesError::Decode { .. })
        }),
        (Answer::Hang, |e| {
            matches!(e, PodResourcesError::Timeout { .. })
        }),
    ];
    for (i, (a, ok)) in cases.into_iter().enumerate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = serve(dir.path(), a);
        let r = podresources::list(&path, Duration::from_millis(500)).await;
        assert!(r.as_ref().is_err_and(ok), "case {i}: {r:?}");
    }
}

fn gpu_spec(gpus: u32) -> serde_json::Value {
    json!({ "containers": [{
        "name": "main",
        "image": "registry.k8s.io/pause:3.10",
        "resources": { "limits": { "nvidia.com/gpu": gpus.to_string() } },
    }] })
}

async fn whole_gpu_verdict(
    env: &TestEnv,
    agent: &bindlet::agent::AgentHandle,
    name: &str,
    node: &str,
    gpus: u32,
    phase: Phase,
) -> String {
    let pod = env.create_pod(name, gpu_spec(gpus)).await;
    env.create_request(
        name,
        node,
        pod.metadata.uid.as_deref(),
        json!({ "receivedResourceType": "Regular", "receivedGPU": { "count": gpus, "portion": "1.00" } }),
    )
    .await;
    let br = env.wait_phase(name, phase).await;
    let v = env.verification(agent, &br);
    let whole = v
        .verdicts
        .iter()
        .find(|v| v.plugin == "gpu" && v.check == "whole-gpus")
        .expect("whole-gpus verdict");
    let want = if phase == Phase::Succeeded {
        VerdictOutcome::Pass
    } else {
        VerdictOutcome::Fail
    };
    assert_eq!(whole.outcome, want, "{}", whole.message);
    whole.message.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_uses_the_socket_and_says_so_or_falls_back() {
    let env = TestEnv::new("gpu-podres").await;
    let node = env.node_name("n1");
    env.create_node(&node, json!({})).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("gpus.yaml");
    // GPU-b is unhealthy and held by a pod the API server does not know of (e.g. started
    // before the agent): with assignments, GPU-a and GPU-c are both free.
    std::fs::write(
        &file,
        "gpus:\n  - { uuid: GPU-a }\n  - { uuid: GPU-b, lost: fallen off the bus }\n  - { uuid: GPU-c }\n",
    )
    .expect("write inventory");
    let socket = serve(
        dir.path(),
        Answer::Ok(answer(&[("other", "old", &["GPU-b"])])),
    );
    let mut cfg = env.agent_config(&node);
    cfg.plugins.gpu.args.gpu_inventory_file = Some(file.clone());
    cfg.plugins.gpu.args.kubelet_pod_resources_socket = Some(socket);
    let agent = env.start_agent(cfg).await;
    let m = whole_gpu_verdict(&env, &agent, "two", &node, 2, Phase::Succeeded).await;
    assert!(
        m.contains("(source: kubelet pod-resources device assignments)"),
        "{m}"
    );
    assert!(m.contains("GPU-b) by other/old"), "{m}");
    agent.stop().await.expect("stop");

    // The socket set but absent: the pods' limits are counted ("two" holds 2) and the
    // verdict says why.
    let mut cfg = env.agent_config(&node);
    cfg.plugins.gpu.args.gpu_inventory_file = Some(file);
    cfg.plugins.gpu.args.kubelet_pod_resources_socket = Some(dir.path().join("absent.sock"));
    let agent = env.start_agent(cfg).await;
    let m = whole_gpu_verdict(&env, &agent, "three", &node, 1, Phase::Failed).await;
    assert!(
        m.contains("(source: limits of the pods bound to this node"),
        "{m}"
    );
    assert!(
        m.contains("pod-resources socket did not answer") && m.contains("absent.sock"),
        "{m}"
    );
    agent.stop().await.expect("stop");
    env.cleanup().await;
}
