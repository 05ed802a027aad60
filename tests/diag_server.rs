//! The diagnostics server over HTTP: every endpoint's codes and content types, readiness
//! transitions, metrics after a known sequence of binds, access control through the
//! (simulated) TokenReview and SubjectAccessReview, and TLS.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bindlet::agent::{self, Stats};
use bindlet::api::Phase;
use bindlet::diag::{
    self, AuthMode, DiagConfig, GpuDevice, GpuFacts, NodeFacts, Recorder, TlsFiles,
};
use bindlet::sim::FaultRule;
use common::{TestEnv, wait_until};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

struct Answer {
    code: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Answer {
    fn ctype(&self) -> &str {
        self.headers
            .get("content-type")
            .map(String::as_str)
            .unwrap_or("")
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("JSON body")
    }
}

/// A minimal HTTP/1.1 client (one request per connection), so the tests see exactly what
/// goes over the wire.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Answer {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: diag\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8(raw).expect("utf-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let mut lines = head.split("\r\n");
    let code = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        code,
        headers,
        body: body.to_string(),
    }
}

async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Answer {
    let s = TcpStream::connect(addr).await.expect("connect");
    exchange(s, "GET", path, token).await
}

/// The value of one sample line, e.g. `bindlet_binds_total{outcome="bound",reason=""}`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split(' ').next()?.parse().ok())
}

/// GPU facts a test controls, standing in for the GPU inventory.
struct TestFacts(Mutex<GpuFacts>);

impl NodeFacts for TestFacts {
    fn gpus(&self) -> GpuFacts {
        self.0.lock().expect("lock").clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_readiness_and_metrics_after_known_binds() {
    let env = TestEnv::new("diag-endpoints").await;
    let node = env.node_name("n1");
    let other = env.node_name("n2");
    env.create_node(&node, json!({})).await;
    env.create_node(&other, json!({})).await;

    let stats = Arc::new(Stats::with_recorder(Arc::new(Recorder::new(50))));
    let facts = Arc::new(TestFacts(Mutex::new(GpuFacts::Loading)));
    stats.diag.set_facts(facts.clone());
    let stop = CancellationToken::new();
    let server = diag::start(
        DiagConfig::plain(([127, 0, 0, 1], 0).into()),
        stats.clone(),
        None,
        stop.clone(),
    )
    .await
    .expect("diag server");
    let addr = server.addr();

    // Before the agent runs: alive, not ready, and the body says why.
    let a = get(addr, "/livez", None).await;
    assert_eq!((a.code, a.body.as_str()), (200, "ok\n"));
    let a = get(addr, "/readyz", None).await;
    assert_eq!(a.code, 503);
    assert!(
        a.body.contains("BindRequest watch not synced"),
        "{}",
        a.body
    );
    assert!(a.body.contains("Lease"), "{}", a.body);
    assert!(a.body.contains("GPU inventory still loading"), "{}", a.body);

    // This test feeds the GPU facts itself (TestFacts); an agent with GPU verification would
    // plug in its own inventory instead.
    let mut cfg = env.agent_config(&node);
    cfg.plugins.gpu.args.gpu_verification = bindlet::plugins::CheckMode::Off;
    let agent = agent::spawn_with_stats(env.client.clone(), cfg, stats.clone());
    wait_until(Duration::from_secs(20), "agent leads", || async {
        stats.is_leading() && stats.is_synced()
    })
    .await;
    // Synced and leading, but the GPU inventory is still loading.
    let a = get(addr, "/readyz", None).await;
    assert_eq!(a.code, 503, "{}", a.body);
    assert!(!a.body.contains("watch"), "{}", a.body);
    *facts.0.lock().expect("lock") = GpuFacts::Loaded {
        devices: vec![gpu(0, "GPU-aaaa", true), gpu(1, "GPU-bbbb", false)],
    };
    let a = get(addr, "/readyz", None).await;
    assert_eq!((a.code, a.body.as_str()), (200, "ok\n"));

    // A known sequence: three binds, one pod already here, one bound elsewhere.
    for n in ["web-1", "web-2", "web-3"] {
        env.pod_and_request(n, &node).await;
    }
    let p = env.create_pod("here", json!({ "nodeName": node })).await;
    env.create_request("here", &node, p.metadata.uid.as_deref(), json!({}))
        .await;
    let p = env.create_pod("there", json!({ "nodeName": other })).await;
    env.create_request("there", &node, p.metadata.uid.as_deref(), json!({}))
        .await;
    for n in ["web-1", "web-2", "web-3", "here"] {
        env.wait_phase(n, Phase::Succeeded).await;
    }
    env.wait_phase("there", Phase::Failed).await;

    let m = get(addr, "/metrics", None).await;
    assert_eq!(m.code, 200);
    assert!(
        m.ctype().starts_with("application/openmetrics-text"),
        "{}",
        m.ctype()
    );
    assert!(
        m.body.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    let t = &m.body;
    let v = |s: &str| sample(t, s).unwrap_or_else(|| panic!("no sample {s} in\n{t}"));
    assert_eq!(v(r#"bindlet_binds_total{outcome="bound",reason=""}"#), 3.0);
    assert_eq!(
        v(r#"bindlet_binds_total{outcome="already_bound",reason=""}"#),
        1.0
    );
    assert_eq!(
        v(r#"bindlet_binds_total{outcome="failed_final",reason="PodBoundElsewhere"}"#),
        1.0
    );
    assert_eq!(v(r#"bindlet_attempts_total{result="bound"}"#), 3.0);
    assert_eq!(v("bindlet_bind_latency_seconds_count"), 3.0);
    assert!(v("bindlet_bind_latency_seconds_sum") >= 0.0);
    assert_eq!(
        v(r#"bindlet_api_requests_total{verb="create",resource="pods/binding",code="201"}"#),
        3.0
    );
    // Each attempt reads the pod once (the bound-elsewhere one too); three binds and two
    // settled others write five statuses.
    assert_eq!(
        v(r#"bindlet_api_requests_total{verb="get",resource="pods",code="200"}"#),
        5.0
    );
    assert_eq!(
        v(r#"bindlet_api_requests_total{verb="patch",resource="bindrequests/status",code="200"}"#),
        5.0
    );
    assert!(
        v(r#"bindlet_stage_duration_seconds_count{stage="bind"}"#) >= 3.0,
        "{t}"
    );
    assert_eq!(v("bindlet_lease_held"), 1.0);
    assert_eq!(v("bindlet_ready"), 1.0);
    assert_eq!(v("bindlet_queue_depth"), 0.0);
    assert_eq!(v(r#"bindlet_gpu_healthy{gpu="0",uuid="GPU-aaaa"}"#), 1.0);
    assert_eq!(v(r#"bindlet_gpu_healthy{gpu="1",uuid="GPU-bbbb"}"#), 0.0);

    // The timeline, as JSON and as a page.
    let s = get(addr, "/debug/state", None).await;
    assert_eq!(s.code, 200);
    assert_eq!(s.ctype(), "application/json");
    let st = s.json();
    assert_eq!(st["node"], json!(node));
    assert_eq!(st["readiness"]["ready"], json!(true));
    assert_eq!(st["lease"]["held"], json!(true));
    assert_eq!(st["gpus"]["state"], json!("loaded"));
    assert_eq!(st["gpus"]["devices"][1]["healthy"], json!(false));
    assert_eq!(st["volumes"]["state"], json!("not_configured"));
    let reqs = st["requests"].as_array().expect("requests");
    assert_eq!(reqs.len(), 5);
    let web1 = reqs.iter().find(|r| r["name"] == "web-1").expect("web-1");
    assert_eq!(web1["phase"], json!("Succeeded"));
    let att = &web1["attempts"][0];
    assert_eq!(att["result"], json!("bound"));
    let stages: Vec<&str> = att["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .filter_map(|s| s["stage"].as_str())
        .collect();
    assert!(stages.contains(&"bind"), "{stages:?}");
    assert!(
        att["verdicts"]
            .as_array()
            .expect("verdicts")
            .iter()
            .any(|v| v["plugin"] == "node" && v["check"] == "taints"),
        "{att}"
    );
    let there = reqs.iter().find(|r| r["name"] == "there").expect("there");
    assert_eq!(there["phase"], json!("Failed"));
    assert_eq!(there["attempts"][0]["result"], json!("failed"));
    assert!(
        there["attempts"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("PodBoundElsewhere")),
        "{there}"
    );

    let h = get(addr, "/debug", None).await;
    assert_eq!(h.code, 200);
    assert_eq!(h.ctype(), "text/html; charset=utf-8");
    assert!(h.body.contains("web-1") && h.body.contains("GPU-bbbb"));
    assert!(!h.body.contains("<script"), "self-contained, no scripts");

    // Unknown paths and other methods.
    assert_eq!(get(addr, "/nope", None).await.code, 404);
    let s = TcpStream::connect(addr).await.expect("connect");
    let a = exchange(s, "POST", "/metrics", None).await;
    assert_eq!(a.code, 405);
    assert_eq!(
        a.headers.get("allow").map(String::as_str),
        Some("GET, HEAD")
    );

    // The agent's shutdown token stops the server too.
    agent.stop().await.expect("stop");
    stop.cancel();
    server.stopped().await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
    env.cleanup().await;
}

fn gpu(index: u32, uuid: &str, healthy: bool) -> GpuDevice {
    GpuDevice {
        index,
        uuid: uuid.into(),
        name: "Test GPU".into(),
        memory_total_bytes: 80 << 30,
        memory_used_bytes: Some(1 << 30),
        healthy,
        reason: (!healthy).then(|| "XID 79".to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_control_with_token_and_subject_access_reviews() {
    let env = TestEnv::new("diag-auth").await;
    let Some(sim) = env.sim_or_skip_because(
        "access_control",
        "needs the simulator's TokenReview and SubjectAccessReview answers",
    ) else {
        return env.cleanup().await;
    };
    let auth = sim.auth();
    auth.add_token("reader-token", "prom", &["monitoring"]);
    auth.allow_path("monitoring", "get", "/metrics");
    auth.add_token("debugger-token", "alice", &[]);
    auth.allow_path("alice", "get", "/debug");
    auth.allow_path("alice", "get", "/debug/*");
    auth.add_token("nobody-token", "mallory", &["system:authenticated"]);

    let stats = Arc::new(Stats::default());
    let stop = CancellationToken::new();
    let mut cfg = DiagConfig::plain(([127, 0, 0, 1], 0).into());
    cfg.auth = AuthMode::Kubernetes;
    let server = diag::start(cfg, stats.clone(), Some(env.client.clone()), stop.clone())
        .await
        .expect("diag server");
    let addr = server.addr();

    // Probes stay open.
    assert_eq!(get(addr, "/livez", None).await.code, 200);
    assert_eq!(get(addr, "/readyz", None).await.code, 503);

    for path in ["/metrics", "/debug/state", "/debug"] {
        for token in [None, Some("wrong-token")] {
            let a = get(addr, path, token).await;
            assert_eq!(a.code, 401, "{path} with {token:?}");
            assert_eq!(a.body, "Unauthorized\n", "no data in a 401");
            assert_eq!(
                a.headers.get("www-authenticate").map(String::as_str),
                Some("Bearer")
            );
        }
        let a = get(addr, path, Some("nobody-token")).await;
        assert_eq!((a.code, a.body.as_str()), (403, "Forbidden\n"), "{path}");
    }
    // Each user gets exactly the paths granted.
    let a = get(addr, "/metrics", Some("reader-token")).await;
    assert_eq!(a.code, 200);
    assert!(a.body.contains("bindlet_binds_total") || a.body.contains("# EOF"));
    assert_eq!(
        get(addr, "/debug/state", Some("reader-token")).await.code,
        403
    );
    assert_eq!(
        get(addr, "/metrics", Some("debugger-token")).await.code,
        403
    );
    let a = get(addr, "/debug/state", Some("debugger-token")).await;
    assert_eq!((a.code, a.ctype()), (200, "application/json"));
    assert_eq!(get(addr, "/debug", Some("debugger-token")).await.code, 200);

    // The reviews are API calls like any other: counted.
    let m = get(addr, "/metrics", Some("reader-token")).await.body;
    assert!(
        sample(
            &m,
            r#"bindlet_api_requests_total{verb="create",resource="tokenreviews",code="201"}"#
        )
        .is_some_and(|n| n >= 10.0),
        "{m}"
    );

    // An API server that cannot answer: refused, and nothing leaks.
    sim.faults()
        .add_rule(FaultRule::always("create", "tokenreviews", 500));
    let a = get(addr, "/metrics", Some("reader-token")).await;
    assert_eq!(a.code, 503);
    assert!(!a.body.contains("bindlet_"), "{}", a.body);
    sim.faults().clear();

    stop.cancel();
    server.stopped().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_tls_with_the_given_certificate() {
    use tokio_rustls::rustls;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let (cert, key) = (dir.join("diag-test.crt"), dir.join("diag-test.key"));
    let stats = Arc::new(Stats::default());
    let stop = CancellationToken::new();
    let mut cfg = DiagConfig::plain(([127, 0, 0, 1], 0).into());
    cfg.tls = Some(TlsFiles {
        cert: cert.clone(),
        key,
    });
    let server = diag::start(cfg, stats, None, stop.clone())
        .await
        .expect("TLS diag server");
    assert!(server.url().starts_with("https://"));

    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    let ca = dir.join("diag-test-ca.crt");
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&ca).expect("CA") {
        roots.add(c.expect("cert")).expect("root");
    }
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = TcpStream::connect(server.addr()).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = connector.connect(name, tcp).await.expect("handshake");
    let a = exchange(tls, "GET", "/livez", None).await;
    assert_eq!((a.code, a.body.as_str()), (200, "ok\n"));

    // Plain HTTP to the TLS port gets no answer.
    let mut s = TcpStream::connect(server.addr()).await.expect("connect");
    let _ = s
        .write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("ok\n"));

    // A missing key is a clear startup error.
    let mut bad = DiagConfig::plain(([127, 0, 0, 1], 0).into());
    bad.tls = Some(TlsFiles {
        cert,
        key: dir.join("missing.key"),
    });
    let err = diag::start(bad, Arc::new(Stats::default()), None, stop.clone())
        .await
        .err()
        .expect("error");
    assert!(err.to_string().contains("missing.key"), "{err}");
    stop.cancel();
    server.stopped().await;
}
