//! Behaviour of the simulated API server through kube-rs and raw HTTP: optimistic
//! concurrency, watches (resume, 410, bookmarks, selectors), paging, faults, restart, and
//! kube-rs's watcher.

use std::time::Duration;

use bindlet::sim::{FaultRule, SimOptions, Simulator};
use futures::{StreamExt, TryStreamExt};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::{Value, json};

async fn sim() -> Simulator {
    Simulator::start(SimOptions {
        bookmark_interval: Duration::from_millis(150),
        ..SimOptions::default()
    })
    .await
    .expect("start")
}

fn pod(name: &str, labels: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    }))
    .expect("pod")
}

async fn raw(
    client: &kube::Client,
    method: &str,
    uri: &str,
    ctype: &str,
    body: Value,
) -> (u16, Value) {
    let bytes = if body.is_null() {
        vec![]
    } else {
        serde_json::to_vec(&body).expect("json")
    };
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", ctype)
        .body(kube::client::Body::from(bytes))
        .expect("req");
    let resp = client.send(req).await.expect("send");
    let code = resp.status().as_u16();
    let b = resp.into_body().collect().await.expect("body").to_bytes();
    (code, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

/// An open watch: reads newline-delimited events.
struct RawWatch {
    body: kube::client::Body,
    buf: Vec<u8>,
}

impl RawWatch {
    async fn open(client: &kube::Client, uri: &str) -> RawWatch {
        let req = http::Request::builder()
            .uri(uri)
            .body(kube::client::Body::empty())
            .expect("req");
        let resp = client.send(req).await.expect("send");
        assert_eq!(resp.status().as_u16(), 200);
        RawWatch {
            body: resp.into_body(),
            buf: vec![],
        }
    }

    /// The next event, None at end of stream (or error), panics after 5 s.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(serde_json::from_slice(&line).expect("event json"));
            }
            let f = tokio::time::timeout(Duration::from_secs(5), self.body.frame())
                .await
                .expect("watch event within 5 s");
            match f {
                Some(Ok(frame)) => {
                    if let Ok(d) = frame.into_data() {
                        self.buf.extend_from_slice(&d);
                    }
                }
                _ => return None,
            }
        }
    }

    /// Next non-bookmark event.
    async fn next_change(&mut self) -> Option<Value> {
        loop {
            let e = self.next().await?;
            if e["type"] != "BOOKMARK" {
                return Some(e);
            }
        }
    }
}

fn rv(o: &Value) -> String {
    o["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn kube_api_crud_and_conflicts() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::default_namespaced(sim.client());
    let p = pods
        .create(&PostParams::default(), &pod("a", json!({"app": "x"})))
        .await
        .expect("create");
    assert_eq!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Pending")
    );
    let got = pods.get("a").await.expect("get");
    assert_eq!(got.metadata.uid, p.metadata.uid);

    // replace with the current rv works; with the stale one conflicts.
    let mut newer = got.clone();
    newer
        .metadata
        .labels
        .get_or_insert_default()
        .insert("v".into(), "2".into());
    let replaced = pods
        .replace("a", &PostParams::default(), &newer)
        .await
        .expect("replace");
    assert_ne!(
        replaced.metadata.resource_version,
        got.metadata.resource_version
    );
    let err = pods
        .replace("a", &PostParams::default(), &newer)
        .await
        .expect_err("stale");
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 409);
            assert!(
                s.message.contains("the object has been modified"),
                "{}",
                s.message
            );
        }
        e => panic!("unexpected {e}"),
    }

    // merge patch with a stale rv conflicts; without one it applies.
    let stale = json!({"metadata": {"resourceVersion": got.metadata.resource_version, "labels": {"p": "1"}}});
    let err = pods
        .patch("a", &PatchParams::default(), &Patch::Merge(&stale))
        .await
        .expect_err("stale patch");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err}"
    );
    let patched = pods
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"p": "1"}}})),
        )
        .await
        .expect("patch");
    assert_eq!(
        patched
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("p"))
            .map(String::as_str),
        Some("1")
    );
    // json patch and strategic merge on status.
    let jp: json_patch::Patch =
        serde_json::from_value(json!([{"op": "add", "path": "/metadata/labels/j", "value": "y"}]))
            .expect("jp");
    pods.patch("a", &PatchParams::default(), &Patch::<()>::Json(jp))
        .await
        .expect("json patch");
    let st = pods
        .patch_status("a", &PatchParams::default(), &Patch::Strategic(json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}, "spec": {"nodeName": "x"}})))
        .await
        .expect("status patch");
    assert_eq!(
        st.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        None,
        "status writes ignore spec"
    );
    // server-side apply on status.
    let applied = pods
        .patch_status("a", &PatchParams::apply("bindlet").force(), &Patch::Apply(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}, "status": {"message": "m"}})))
        .await
        .expect("apply");
    assert_eq!(
        applied.status.as_ref().and_then(|s| s.message.as_deref()),
        Some("m")
    );

    // binding via the subresource, then delete with a uid precondition.
    let (code, body) = raw(&sim.client(), "POST", "/api/v1/namespaces/default/pods/a/binding", "application/json",
        json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "a"}, "target": {"kind": "Node", "name": "n1"}})).await;
    assert_eq!((code, body["status"].as_str()), (201, Some("Success")));
    let bound = pods.get("a").await.expect("get");
    assert_eq!(
        bound.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("n1")
    );
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("wrong".into()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    assert!(matches!(pods.delete("a", &dp).await, Err(kube::Error::Api(ref s)) if s.code == 409));
    pods.delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(matches!(pods.get("a").await, Err(kube::Error::Api(ref s)) if s.code == 404));
    // invalid pod.
    let bad: Pod =
        serde_json::from_value(json!({"metadata": {"name": "bad"}, "spec": {"containers": []}}))
            .expect("pod");
    assert!(
        matches!(pods.create(&PostParams::default(), &bad).await, Err(kube::Error::Api(ref s)) if s.code == 422)
    );
    // missing namespace.
    let other: Api<Pod> = Api::namespaced(sim.client(), "nope");
    match other
        .create(&PostParams::default(), &pod("z", json!({})))
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(
            (s.code, s.message.as_str()),
            (404, "namespaces \"nope\" not found")
        ),
        r => panic!("unexpected {r:?}"),
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn watch_resume_compact_and_bookmarks() {
    let sim = sim().await;
    let c = sim.client();
    let pods: Api<Pod> = Api::default_namespaced(c.clone());
    let a = pods
        .create(&PostParams::default(), &pod("a", json!({})))
        .await
        .expect("create");
    let rv_a = a.metadata.resource_version.clone().unwrap_or_default();
    pods.create(&PostParams::default(), &pod("b", json!({})))
        .await
        .expect("create");
    pods.delete("a", &DeleteParams::default())
        .await
        .expect("delete");

    // Resume from a's rv: b ADDED, a DELETED, then bookmarks.
    let mut w = RawWatch::open(&c, &format!("/api/v1/namespaces/default/pods?watch=1&resourceVersion={rv_a}&allowWatchBookmarks=true")).await;
    let e1 = w.next_change().await.expect("e1");
    assert_eq!(
        (
            e1["type"].as_str(),
            e1["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("b"))
    );
    let e2 = w.next_change().await.expect("e2");
    assert_eq!(
        (
            e2["type"].as_str(),
            e2["object"]["metadata"]["name"].as_str()
        ),
        (Some("DELETED"), Some("a"))
    );
    let bm = w.next().await.expect("bookmark");
    assert_eq!(bm["type"], "BOOKMARK");
    assert_eq!(bm["object"]["kind"], "Pod");
    assert!(
        rv(&bm["object"]).parse::<u64>().expect("rv")
            >= rv(&e2["object"]).parse::<u64>().expect("rv")
    );

    // After compaction, resuming from the old rv is a 410 ERROR event.
    sim.faults().compact();
    let mut old = RawWatch::open(
        &c,
        &format!("/api/v1/namespaces/default/pods?watch=1&resourceVersion={rv_a}"),
    )
    .await;
    let err = old.next().await.expect("error event");
    assert_eq!(err["type"], "ERROR");
    assert_eq!(err["object"]["code"], 410);
    assert_eq!(err["object"]["reason"], "Expired");
    assert!(old.next().await.is_none(), "stream ends after the ERROR");
    // Live events still reach the open watch.
    pods.create(&PostParams::default(), &pod("c", json!({})))
        .await
        .expect("create");
    let e3 = w.next_change().await.expect("e3");
    assert_eq!(e3["object"]["metadata"]["name"], "c");
    // drop_watches ends the stream cleanly.
    sim.faults().drop_watches();
    while let Some(e) = w.next().await {
        assert_eq!(e["type"], "BOOKMARK");
    }
    // A tiny history also expires old resourceVersions.
    let small = Simulator::start(SimOptions {
        watch_history: 2,
        ..SimOptions::default()
    })
    .await
    .expect("start");
    let sp: Api<Pod> = Api::default_namespaced(small.client());
    for n in ["a", "b", "c", "d"] {
        sp.create(&PostParams::default(), &pod(n, json!({})))
            .await
            .expect("create");
    }
    let mut w = RawWatch::open(
        &small.client(),
        "/api/v1/namespaces/default/pods?watch=1&resourceVersion=1",
    )
    .await;
    assert_eq!(w.next().await.expect("err")["object"]["code"], 410);
    small.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn selectors_in_list_and_watch() {
    let sim = sim().await;
    let c = sim.client();
    let pods: Api<Pod> = Api::default_namespaced(c.clone());
    let mut w = RawWatch::open(
        &c,
        "/api/v1/namespaces/default/pods?watch=true&labelSelector=app%3Dx",
    )
    .await;
    let mut fw = RawWatch::open(
        &c,
        "/api/v1/pods?watch=true&fieldSelector=spec.nodeName%3Dn1",
    )
    .await;
    pods.create(&PostParams::default(), &pod("a", json!({"app": "x"})))
        .await
        .expect("create");
    pods.create(&PostParams::default(), &pod("b", json!({"app": "y"})))
        .await
        .expect("create");
    pods.create(
        &PostParams::default(),
        &pod("c", json!({"app": "x", "tier": "t"})),
    )
    .await
    .expect("create");
    // a stops matching: the label watcher sees DELETED.
    pods.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "z"}}})),
    )
    .await
    .expect("patch");
    let seen: Vec<(String, String)> = {
        let mut v = vec![];
        for _ in 0..3 {
            let e = w.next_change().await.expect("event");
            v.push((
                e["type"].as_str().unwrap_or("").to_string(),
                e["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            ));
        }
        v
    };
    assert_eq!(
        seen,
        vec![
            ("ADDED".into(), "a".into()),
            ("ADDED".into(), "c".into()),
            ("DELETED".into(), "a".into())
        ]
    );
    // Binding b makes it match spec.nodeName=n1: ADDED for the field watcher.
    let (code, _) = raw(
        &c,
        "POST",
        "/api/v1/namespaces/default/pods/b/binding",
        "application/json",
        json!({"metadata": {"name": "b"}, "target": {"name": "n1"}}),
    )
    .await;
    assert_eq!(code, 201);
    let e = fw.next_change().await.expect("field event");
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("b"))
    );

    let names = |l: Vec<Pod>| {
        l.into_iter()
            .filter_map(|p| p.metadata.name)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(
            pods.list(&ListParams::default().labels("app in (x,y)"))
                .await
                .expect("list")
                .items
        ),
        vec!["b", "c"]
    );
    assert_eq!(
        names(
            pods.list(&ListParams::default().labels("app=x,tier"))
                .await
                .expect("list")
                .items
        ),
        vec!["c"]
    );
    assert_eq!(
        names(
            pods.list(&ListParams::default().labels("!tier"))
                .await
                .expect("list")
                .items
        ),
        vec!["a", "b"]
    );
    assert_eq!(
        names(
            pods.list(&ListParams::default().labels("app notin (x)"))
                .await
                .expect("list")
                .items
        ),
        vec!["a", "b"]
    );
    assert_eq!(
        names(
            pods.list(&ListParams::default().fields("spec.nodeName=n1"))
                .await
                .expect("list")
                .items
        ),
        vec!["b"]
    );
    assert_eq!(
        names(
            pods.list(&ListParams::default().fields("status.phase=Pending,metadata.name!=a"))
                .await
                .expect("list")
                .items
        ),
        vec!["b", "c"]
    );
    assert!(
        matches!(pods.list(&ListParams::default().labels("app in (x")).await, Err(kube::Error::Api(ref s)) if s.code == 400)
    );
    match pods
        .list(&ListParams::default().fields("spec.bogus=1"))
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(
            (s.code, s.message.as_str()),
            (400, "field label not supported: spec.bogus")
        ),
        r => panic!("unexpected {r:?}"),
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn paging_with_limit_and_continue() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::default_namespaced(sim.client());
    for i in 0..7 {
        pods.create(&PostParams::default(), &pod(&format!("p{i}"), json!({})))
            .await
            .expect("create");
    }
    let mut names = vec![];
    let mut lp = ListParams::default().limit(3);
    let mut pages = 0;
    let mut first_rv = None;
    loop {
        let page = pods.list(&lp).await.expect("list");
        pages += 1;
        first_rv.get_or_insert(page.metadata.resource_version.clone());
        assert_eq!(
            Some(page.metadata.resource_version.clone()),
            first_rv,
            "every page reports the first page's rv"
        );
        names.extend(page.items.into_iter().filter_map(|p| p.metadata.name));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => {
                if pages == 1 {
                    assert_eq!(page.metadata.remaining_item_count, Some(4));
                }
                lp = lp.continue_token(&c);
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names, (0..7).map(|i| format!("p{i}")).collect::<Vec<_>>());
    sim.shutdown().await;
}

/// One request over a fresh TCP connection, without kube-rs's retries: (status, body).
async fn plain_http(sim: &Simulator, method: &str, path: &str) -> (u16, Value, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(sim.addr())
        .await
        .expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: sim\r\nAccept: application/json\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out).to_string();
    let code = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        code,
        serde_json::from_str(body).unwrap_or(Value::Null),
        head.to_string(),
    )
}

#[tokio::test]
async fn fault_rules_latency_and_counts() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::default_namespaced(sim.client());
    // probability 1, times 2: exactly two failures.
    sim.faults().add_rule(FaultRule {
        verb: Some("create".into()),
        resource: Some("pods".into()),
        status: 500,
        probability: 1.0,
        times: Some(2),
    });
    for _ in 0..2 {
        match pods
            .create(&PostParams::default(), &pod("a", json!({})))
            .await
        {
            Err(kube::Error::Api(s)) => {
                assert_eq!((s.code, s.reason.as_str()), (500, "InternalError"))
            }
            r => panic!("unexpected {r:?}"),
        }
    }
    pods.create(&PostParams::default(), &pod("a", json!({})))
        .await
        .expect("third create succeeds");
    // 503 is retried by kube-rs itself: one call, two server-side attempts.
    sim.faults().add_rule(FaultRule {
        verb: Some("get".into()),
        resource: Some("pods".into()),
        status: 503,
        probability: 1.0,
        times: Some(1),
    });
    pods.get("a").await.expect("retried get");
    // 429 carries Retry-After and a TooManyRequests Status.
    sim.faults()
        .add_rule(FaultRule::always("list", "pods", 429));
    let (code, body, head) = plain_http(&sim, "GET", "/api/v1/namespaces/default/pods").await;
    assert_eq!(
        (code, body["reason"].as_str(), body["kind"].as_str()),
        (429, Some("TooManyRequests"), Some("Status"))
    );
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    // probability 0 never fires.
    sim.faults().clear();
    sim.faults().add_rule(FaultRule {
        verb: None,
        resource: None,
        status: 500,
        probability: 0.0,
        times: None,
    });
    pods.get("a").await.expect("p=0 never fails");
    sim.faults().clear();
    sim.faults().set_latency(Duration::from_millis(50));
    let t = std::time::Instant::now();
    pods.get("a").await.expect("get");
    assert!(t.elapsed() >= Duration::from_millis(50));
    sim.faults().clear();
    let counts = sim.request_count();
    assert_eq!(counts.get("create", "pods"), 3);
    assert_eq!(counts.get("get", "pods"), 4);
    assert_eq!(counts.get("list", "pods"), 1);
    assert!(counts.total() >= 8);
    sim.shutdown().await;
}

#[tokio::test]
async fn restart_cuts_watches_and_expires_history() {
    let sim = sim().await;
    let c = sim.client();
    let pods: Api<Pod> = Api::default_namespaced(c.clone());
    let a = pods
        .create(&PostParams::default(), &pod("a", json!({})))
        .await
        .expect("create");
    pods.create(&PostParams::default(), &pod("b", json!({})))
        .await
        .expect("create");
    let mut w = RawWatch::open(&c, "/api/v1/namespaces/default/pods?watch=1").await;
    assert_eq!(w.next().await.expect("initial")["type"], "ADDED");
    sim.restart().await;
    // Whatever was already sent may still arrive; then the stream is cut.
    while let Some(e) = w.next().await {
        assert_eq!(e["type"], "ADDED");
    }
    // Objects survive; old resourceVersions are gone.
    assert!(pods.get("a").await.is_ok());
    let old = a.metadata.resource_version.unwrap_or_default();
    let mut w = RawWatch::open(
        &c,
        &format!("/api/v1/namespaces/default/pods?watch=1&resourceVersion={old}"),
    )
    .await;
    assert_eq!(w.next().await.expect("err")["object"]["code"], 410);
    sim.shutdown().await;
}

async fn next_applied(
    s: &mut (impl futures::Stream<Item = Result<watcher::Event<Pod>, watcher::Error>> + Unpin),
) -> watcher::Event<Pod> {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .expect("watcher event in time");
        match e {
            Some(Ok(ev)) => return ev,
            Some(Err(_)) => continue,
            None => panic!("watcher ended"),
        }
    }
}

async fn wait_for(
    s: &mut (impl futures::Stream<Item = Result<watcher::Event<Pod>, watcher::Error>> + Unpin),
    want: &str,
    name: &str,
) {
    loop {
        let ev = next_applied(s).await;
        let (kind, p) = match &ev {
            watcher::Event::Apply(p) => ("apply", Some(p)),
            watcher::Event::InitApply(p) => ("apply", Some(p)),
            watcher::Event::Delete(p) => ("delete", Some(p)),
            _ => ("other", None),
        };
        if kind == want && p.and_then(|p| p.metadata.name.as_deref()) == Some(name) {
            return;
        }
    }
}

#[tokio::test]
async fn kube_runtime_watcher_recovers() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::default_namespaced(sim.client());
    pods.create(&PostParams::default(), &pod("pre", json!({"app": "w"})))
        .await
        .expect("create");
    let stream = watcher(
        pods.clone(),
        watcher::Config::default().labels("app=w").timeout(30),
    );
    let mut stream = Box::pin(stream.map_err(|e| e));
    wait_for(&mut stream, "apply", "pre").await;
    pods.create(&PostParams::default(), &pod("a", json!({"app": "w"})))
        .await
        .expect("create");
    wait_for(&mut stream, "apply", "a").await;
    pods.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"x": "1"}}})),
    )
    .await
    .expect("patch");
    wait_for(&mut stream, "apply", "a").await;
    pods.delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for(&mut stream, "delete", "a").await;

    // Watch cut: the watcher re-watches from its last rv and sees new changes.
    sim.faults().drop_watches();
    pods.create(&PostParams::default(), &pod("b", json!({"app": "w"})))
        .await
        .expect("create");
    wait_for(&mut stream, "apply", "b").await;

    // History compacted and watch cut: the watcher gets 410, re-lists, and continues.
    sim.faults().compact();
    sim.faults().drop_watches();
    pods.create(&PostParams::default(), &pod("c", json!({"app": "w"})))
        .await
        .expect("create");
    wait_for(&mut stream, "apply", "c").await;
    pods.create(&PostParams::default(), &pod("d", json!({"app": "w"})))
        .await
        .expect("create");
    wait_for(&mut stream, "apply", "d").await;
    sim.shutdown().await;
}

#[tokio::test]
async fn kubeconfig_yaml_builds_a_working_client() {
    let sim = sim().await;
    let kc =
        kube::config::Kubeconfig::from_yaml(&sim.kubeconfig_yaml()).expect("kubeconfig parses");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .expect("config");
    assert_eq!(cfg.default_namespace, "default");
    let client = kube::Client::try_from(cfg).expect("client");
    let v = client.apiserver_version().await.expect("version");
    assert_eq!(v.major, "1");
    let pods: Api<Pod> = Api::default_namespaced(client);
    assert!(
        pods.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
    sim.shutdown().await;
}
