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
    // A bound pod is deleted gracefully (pod strategy's CheckGracefulDelete): it stays, marked,
    // until its kubelet (here: the test) deletes it with grace period 0.
    let pending = pods
        .delete("a", &DeleteParams::default())
        .await
        .expect("delete")
        .left()
        .expect("the pod, still there");
    assert!(pending.metadata.deletion_timestamp.is_some());
    assert_eq!(pending.metadata.deletion_grace_period_seconds, Some(30));
    assert!(
        pods.get("a").await.is_ok(),
        "a bound pod waits for its kubelet"
    );
    pods.delete("a", &DeleteParams::default().grace_period(0))
        .await
        .expect("final delete");
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

    // Resume from a's rv: b ADDED, a MODIFIED (the delete writes deletionTimestamp first, even
    // with grace period 0), a DELETED, then bookmarks.
    let mut w = RawWatch::open(&c, &format!("/api/v1/namespaces/default/pods?watch=1&resourceVersion={rv_a}&allowWatchBookmarks=true")).await;
    let e1 = w.next_change().await.expect("e1");
    assert_eq!(
        (
            e1["type"].as_str(),
            e1["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("b"))
    );
    let marked = w.next_change().await.expect("marked");
    assert_eq!(
        (
            marked["type"].as_str(),
            marked["object"]["metadata"]["name"].as_str(),
            marked["object"]["metadata"]["deletionGracePeriodSeconds"].as_i64()
        ),
        (Some("MODIFIED"), Some("a"), Some(0))
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

// ---------------------------------------------------------------------------------------
// What a real kube-apiserver 1.36 with kube-controller-manager adds (recordings 31–50 in
// ../shared/apiserver-1.36): admission, graceful deletion, finalizers, the garbage collector.

/// Polls `f` every 50 ms until it is true; panics after `secs`.
async fn eventually<F, Fut>(what: &str, secs: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get_code(c: &kube::Client, uri: &str) -> (u16, Value) {
    raw(c, "GET", uri, "application/json", Value::Null).await
}

#[tokio::test]
async fn new_nodes_are_tainted_not_ready_until_a_client_removes_it() {
    let sim = sim().await;
    let c = sim.client();
    let not_ready = json!({"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"});
    let (code, n) = raw(
        &c,
        "POST",
        "/api/v1/nodes",
        "application/json",
        json!({"metadata": {"name": "n1"}}),
    )
    .await;
    assert_eq!(code, 201);
    assert_eq!(n["spec"]["taints"], json!([not_ready]));
    assert_eq!(n["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"], 0);
    // Own taints are kept, the not-ready one appended once.
    let (_, n2) = raw(&c, "POST", "/api/v1/nodes", "application/json",
        json!({"metadata": {"name": "n2"}, "spec": {"taints": [{"key": "x", "effect": "NoExecute"}, not_ready]}})).await;
    assert_eq!(
        n2["spec"]["taints"],
        json!([{"key": "x", "effect": "NoExecute"}, not_ready])
    );

    // Ready=True does not remove it (no node-lifecycle controller).
    let (code, patched) = raw(
        &c,
        "PATCH",
        "/api/v1/nodes/n1/status",
        "application/merge-patch+json",
        json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(patched["spec"]["taints"], json!([not_ready]));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        get_code(&c, "/api/v1/nodes/n1").await.1["spec"]["taints"],
        json!([not_ready])
    );
    // A client removes it.
    let (code, cleared) = raw(
        &c,
        "PATCH",
        "/api/v1/nodes/n1",
        "application/merge-patch+json",
        json!({"spec": {"taints": null}}),
    )
    .await;
    assert_eq!((code, &cleared["spec"]), (200, &json!({})));
    sim.shutdown().await;
}

fn plain_pod(name: &str, spec: Value) -> Value {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    if let (Some(base), Some(extra)) = (p["spec"].as_object_mut(), spec.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    p
}

#[tokio::test]
async fn pods_are_admitted_with_their_service_account() {
    let sim = sim().await;
    let c = sim.client();
    let pods = "/api/v1/namespaces/default/pods";
    // Every namespace has a `default` service account, new ones too.
    let (code, _) = raw(
        &c,
        "POST",
        "/api/v1/namespaces",
        "application/json",
        json!({"metadata": {"name": "fresh"}}),
    )
    .await;
    assert_eq!(code, 201);
    for ns in ["default", "kube-system", "fresh"] {
        let (code, sa) = get_code(
            &c,
            &format!("/api/v1/namespaces/{ns}/serviceaccounts/default"),
        )
        .await;
        assert_eq!(
            (code, sa["kind"].as_str()),
            (200, Some("ServiceAccount")),
            "{ns}"
        );
    }
    let (code, disc) = get_code(&c, "/api/v1").await;
    assert_eq!(code, 200);
    assert!(
        disc["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .any(|r| r["name"] == "serviceaccounts")
    );

    // A missing account: 403 (recording 32).
    let (code, st) = raw(
        &c,
        "POST",
        pods,
        "application/json",
        plain_pod("nosa", json!({"serviceAccountName": "nosuch"})),
    )
    .await;
    assert_eq!(code, 403);
    assert_eq!(st["reason"], "Forbidden");
    assert_eq!(
        st["message"],
        "pods \"nosa\" is forbidden: error looking up service account default/nosuch: serviceaccount \"nosuch\" not found"
    );
    assert_eq!(st["details"], json!({"name": "nosa", "kind": "pods"}));
    // Admission runs before the name is generated.
    let mut generated = plain_pod("", json!({"serviceAccountName": "nosuch"}));
    generated["metadata"] = json!({"generateName": "gen-"});
    let (code, st) = raw(&c, "POST", pods, "application/json", generated).await;
    assert_eq!(
        (code, st["message"].as_str(), &st["details"]),
        (
            403,
            Some(
                "pods is forbidden: error looking up service account default/nosuch: serviceaccount \"nosuch\" not found"
            ),
            &json!({"kind": "pods"})
        )
    );

    // A plain pod (recording 33, upstream sources only).
    let (code, p) = raw(
        &c,
        "POST",
        pods,
        "application/json",
        plain_pod(
            "plain",
            json!({"initContainers": [{"name": "i", "image": "busybox"}]}),
        ),
    )
    .await;
    assert_eq!(code, 201, "{p}");
    assert_eq!(
        (
            p["spec"]["serviceAccountName"].as_str(),
            p["spec"]["serviceAccount"].as_str()
        ),
        (Some("default"), Some("default"))
    );
    let vol = &p["spec"]["volumes"][0];
    let vname = vol["name"].as_str().expect("volume name");
    assert!(
        vname.starts_with("kube-api-access-") && vname.len() == 21,
        "{vname}"
    );
    assert_eq!(vol["projected"]["defaultMode"], 420);
    let sources: Vec<&str> = vol["projected"]["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .filter_map(|s| {
            s.as_object()
                .and_then(|o| o.keys().next())
                .map(String::as_str)
        })
        .collect();
    assert_eq!(sources, ["serviceAccountToken", "configMap", "downwardAPI"]);
    let mount = json!([{"name": vname, "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]);
    assert_eq!(p["spec"]["containers"][0]["volumeMounts"], mount);
    assert_eq!(p["spec"]["initContainers"][0]["volumeMounts"], mount);
    assert_eq!(p["spec"]["tolerations"].as_array().map(Vec::len), Some(2));

    // Opting out: the pod's choice wins over the account's.
    let (_, p) = raw(
        &c,
        "POST",
        pods,
        "application/json",
        plain_pod("optout", json!({"automountServiceAccountToken": false})),
    )
    .await;
    assert!(
        p["spec"]["volumes"].is_null() && p["spec"]["containers"][0]["volumeMounts"].is_null(),
        "{p}"
    );
    let (code, _) = raw(&c, "POST", "/api/v1/namespaces/default/serviceaccounts", "application/json",
        json!({"metadata": {"name": "quiet"}, "automountServiceAccountToken": false, "imagePullSecrets": [{"name": "reg"}]})).await;
    assert_eq!(code, 201);
    let (_, p) = raw(
        &c,
        "POST",
        pods,
        "application/json",
        plain_pod("quiet", json!({"serviceAccountName": "quiet"})),
    )
    .await;
    assert!(p["spec"]["volumes"].is_null(), "{p}");
    assert_eq!(p["spec"]["imagePullSecrets"], json!([{"name": "reg"}]));
    let (_, p) = raw(
        &c,
        "POST",
        pods,
        "application/json",
        plain_pod(
            "loud",
            json!({"serviceAccountName": "quiet", "automountServiceAccountToken": true}),
        ),
    )
    .await;
    assert_eq!(p["spec"]["volumes"].as_array().map(Vec::len), Some(1));
    // A container with its own mount at the token path keeps it.
    let own =
        json!([{"name": "mine", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]);
    let (_, p) = raw(
        &c,
        "POST",
        pods,
        "application/json",
        plain_pod(
            "own",
            json!({
        "volumes": [{"name": "mine", "emptyDir": {}}],
        "containers": [{"name": "c", "image": "busybox", "volumeMounts": own}]}),
        ),
    )
    .await;
    assert_eq!(p["spec"]["containers"][0]["volumeMounts"], own);
    assert_eq!(
        p["spec"]["volumes"].as_array().map(Vec::len),
        Some(1),
        "no token volume nobody mounts"
    );

    // DefaultTolerationSeconds: a key-less toleration without effect covers both taints; a
    // NoSchedule one for not-ready does not.
    let (_, p) = raw(
        &c,
        "POST",
        pods,
        "application/json",
        plain_pod("tolerant", json!({"tolerations": [{"operator": "Exists"}]})),
    )
    .await;
    assert_eq!(p["spec"]["tolerations"], json!([{"operator": "Exists"}]));
    let (_, p) = raw(&c, "POST", pods, "application/json", plain_pod("picky", json!({"tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoSchedule"}]}))).await;
    assert_eq!(p["spec"]["tolerations"].as_array().map(Vec::len), Some(3));

    // Limits fill missing requests; extended resources leave a pod BestEffort (recording 49).
    let (_, p) = raw(&c, "POST", pods, "application/json", plain_pod("ext", json!({
        "containers": [{"name": "c", "image": "busybox", "resources": {"limits": {"example.com/gpu": "1"}}}]}))).await;
    assert_eq!(
        p["spec"]["containers"][0]["resources"]["requests"],
        json!({"example.com/gpu": "1"})
    );
    assert_eq!(p["status"]["qosClass"], "BestEffort");
    let (_, p) = raw(&c, "POST", pods, "application/json", plain_pod("guaranteed", json!({
        "containers": [{"name": "c", "image": "busybox", "resources": {"limits": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"}}}]}))).await;
    assert_eq!(p["status"]["qosClass"], "Guaranteed");
    let (_, p) = raw(&c, "POST", pods, "application/json", plain_pod("burstable", json!({
        "containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": "100m"}}}]}))).await;
    assert_eq!(p["status"]["qosClass"], "Burstable");

    // The serviceaccount controller puts a deleted `default` back.
    let (code, _) = raw(
        &c,
        "DELETE",
        "/api/v1/namespaces/fresh/serviceaccounts/default",
        "application/json",
        Value::Null,
    )
    .await;
    assert_eq!(code, 200);
    eventually("default service account recreated", 3, || async {
        get_code(&c, "/api/v1/namespaces/fresh/serviceaccounts/default")
            .await
            .0
            == 200
    })
    .await;
    let (code, _) = raw(
        &c,
        "POST",
        "/api/v1/namespaces/fresh/pods",
        "application/json",
        plain_pod("p", json!({})),
    )
    .await;
    assert_eq!(code, 201);
    sim.shutdown().await;
}

#[tokio::test]
async fn deleting_pods_is_graceful_once_they_are_bound() {
    let sim = sim().await;
    let c = sim.client();
    let base = "/api/v1/namespaces/default/pods";
    let bind = |name: &str| {
        let c = c.clone();
        let name = name.to_string();
        async move {
            let (code, _) = raw(
                &c,
                "POST",
                &format!("{base}/{name}/binding"),
                "application/json",
                json!({"metadata": {"name": name}, "target": {"kind": "Node", "name": "n1"}}),
            )
            .await;
            assert_eq!(code, 201);
        }
    };
    let del = |name: &str, opts: Value| {
        let c = c.clone();
        let uri = format!("{base}/{name}");
        async move { raw(&c, "DELETE", &uri, "application/json", opts).await }
    };
    // Unbound: gone at once, the answer carries the deletion fields.
    raw(
        &c,
        "POST",
        base,
        "application/json",
        plain_pod("u", json!({})),
    )
    .await;
    let (code, gone) = del("u", Value::Null).await;
    assert_eq!(code, 200);
    assert_eq!(gone["metadata"]["deletionGracePeriodSeconds"], 0);
    assert_eq!(get_code(&c, &format!("{base}/u")).await.0, 404);

    // Bound: terminationGracePeriodSeconds (30) unless given; only shortened later.
    raw(
        &c,
        "POST",
        base,
        "application/json",
        plain_pod("b", json!({})),
    )
    .await;
    bind("b").await;
    let (code, p) = del("b", json!({"gracePeriodSeconds": 10})).await;
    assert_eq!(code, 200);
    assert_eq!(p["metadata"]["deletionGracePeriodSeconds"], 10);
    assert_eq!(
        p["metadata"]["generation"], 2,
        "a graceful deletion bumps generation"
    );
    let rv = rv(&p);
    let (_, again) = del("b", json!({"gracePeriodSeconds": 20})).await;
    assert_eq!(
        (
            again["metadata"]["deletionGracePeriodSeconds"].as_i64(),
            self::rv(&again)
        ),
        (Some(10), rv.clone())
    );
    let (_, again) = del("b", Value::Null).await;
    assert_eq!(
        self::rv(&again),
        rv,
        "no grace period given: nothing changes"
    );
    let (_, shorter) = del("b", json!({"gracePeriodSeconds": 5})).await;
    assert_eq!(shorter["metadata"]["deletionGracePeriodSeconds"], 5);
    assert_eq!(get_code(&c, &format!("{base}/b")).await.0, 200);
    let (code, _) = del("b", json!({"gracePeriodSeconds": 0})).await;
    assert_eq!(code, 200);
    assert_eq!(get_code(&c, &format!("{base}/b")).await.0, 404);

    // A finished pod goes at once.
    raw(
        &c,
        "POST",
        base,
        "application/json",
        plain_pod("done", json!({})),
    )
    .await;
    bind("done").await;
    raw(
        &c,
        "PATCH",
        &format!("{base}/done/status"),
        "application/merge-patch+json",
        json!({"status": {"phase": "Succeeded"}}),
    )
    .await;
    del("done", Value::Null).await;
    assert_eq!(get_code(&c, &format!("{base}/done")).await.0, 404);

    // Finalizers hold it after the final delete, until removed.
    let mut held = plain_pod("held", json!({}));
    held["metadata"]["finalizers"] = json!(["example.com/hold"]);
    raw(&c, "POST", base, "application/json", held).await;
    bind("held").await;
    del("held", json!({"gracePeriodSeconds": 0})).await;
    let (code, p) = get_code(&c, &format!("{base}/held")).await;
    assert_eq!(
        (code, p["metadata"]["deletionGracePeriodSeconds"].as_i64()),
        (200, Some(0))
    );
    let (code, _) = raw(
        &c,
        "PATCH",
        &format!("{base}/held"),
        "application/merge-patch+json",
        json!({"metadata": {"finalizers": null}}),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(get_code(&c, &format!("{base}/held")).await.0, 404);

    // Bad propagation policy: 422.
    raw(
        &c,
        "POST",
        base,
        "application/json",
        plain_pod("x", json!({})),
    )
    .await;
    let (code, st) = del("x", json!({"propagationPolicy": "Sideways"})).await;
    assert_eq!(
        (code, st["reason"].as_str()),
        (422, Some("Invalid")),
        "{st}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn finalizers_hold_a_deleted_object_until_the_last_one_goes() {
    let sim = sim().await;
    let c = sim.client();
    let base = "/api/v1/namespaces/default/configmaps";
    let (code, cm) = raw(&c, "POST", base, "application/json",
        json!({"metadata": {"name": "cm", "finalizers": ["example.com/a", "example.com/b"]}, "data": {"k": "v"}})).await;
    assert_eq!(code, 201);
    let mut w = RawWatch::open(&c, &format!("{base}?watch=1&resourceVersion={}", rv(&cm))).await;
    // A ConfigMap delete answers a Status, but one held by finalizers answers the object.
    let (code, held) = raw(
        &c,
        "DELETE",
        &format!("{base}/cm"),
        "application/json",
        Value::Null,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(held["kind"], "ConfigMap");
    assert!(held["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(held["metadata"]["deletionGracePeriodSeconds"], 0);
    let (code, again) = raw(
        &c,
        "DELETE",
        &format!("{base}/cm"),
        "application/json",
        Value::Null,
    )
    .await;
    assert_eq!(
        (code, rv(&again)),
        (200, rv(&held)),
        "a second delete changes nothing"
    );
    // No new finalizer once deleting; other changes are fine.
    let (code, st) = raw(
        &c,
        "PATCH",
        &format!("{base}/cm"),
        "application/merge-patch+json",
        json!({"metadata": {"finalizers": ["example.com/a", "example.com/b", "example.com/c"]}}),
    )
    .await;
    assert_eq!(code, 422);
    assert_eq!(st["details"]["causes"][0]["field"], "metadata.finalizers");
    let (code, _) = raw(
        &c,
        "PATCH",
        &format!("{base}/cm"),
        "application/merge-patch+json",
        json!({"data": {"k": "w"}}),
    )
    .await;
    assert_eq!(code, 200);
    // The name stays taken.
    let (code, st) = raw(
        &c,
        "POST",
        base,
        "application/json",
        json!({"metadata": {"name": "cm"}}),
    )
    .await;
    assert_eq!(code, 409);
    assert!(
        st["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("object is being deleted: ")),
        "{st}"
    );
    // Removing one finalizer keeps it; removing the last deletes it, answering the object.
    let (code, _) = raw(
        &c,
        "PATCH",
        &format!("{base}/cm"),
        "application/merge-patch+json",
        json!({"metadata": {"finalizers": ["example.com/b"]}}),
    )
    .await;
    assert_eq!(code, 200);
    let (code, last) = raw(
        &c,
        "PATCH",
        &format!("{base}/cm"),
        "application/merge-patch+json",
        json!({"metadata": {"finalizers": null}}),
    )
    .await;
    assert_eq!(code, 200);
    assert!(last["metadata"]["finalizers"].is_null());
    assert_eq!(get_code(&c, &format!("{base}/cm")).await.0, 404);
    let types: Vec<String> = {
        let mut v = Vec::new();
        while v.last().map(String::as_str) != Some("DELETED") {
            let e = w.next_change().await.expect("event");
            v.push(e["type"].as_str().unwrap_or("").to_string());
        }
        v
    };
    assert_eq!(types, ["MODIFIED", "MODIFIED", "MODIFIED", "DELETED"]);
    sim.shutdown().await;
}

#[tokio::test]
async fn the_garbage_collector_deletes_dependents_without_owners() {
    let sim = sim().await;
    let c = sim.client();
    let base = "/api/v1/namespaces/default/configmaps";
    let mk = |name: &str, owners: Value| {
        let c = c.clone();
        let body = json!({"metadata": {"name": name, "ownerReferences": owners}});
        async move {
            let (code, o) = raw(&c, "POST", base, "application/json", body).await;
            assert_eq!(code, 201, "{o}");
            o
        }
    };
    let exists = |name: &str| {
        let c = c.clone();
        let uri = format!("{base}/{name}");
        async move { get_code(&c, &uri).await.0 == 200 }
    };
    let owner = mk("owner", json!([])).await;
    let ouid = owner["metadata"]["uid"].as_str().expect("uid").to_string();
    let oref =
        |uid: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid});
    mk("kept", json!([oref(&ouid)])).await;
    mk(
        "ghost-owner",
        json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "nobody", "uid": "u-1"}]),
    )
    .await;
    mk("recreated-owner", json!([oref("an-older-uid")])).await;
    mk(
        "half",
        json!([oref(&ouid), {"apiVersion": "v1", "kind": "Pod", "name": "gone", "uid": "u-2"}]),
    )
    .await;
    mk(
        "unknown-kind",
        json!([{"apiVersion": "example.com/v1", "kind": "Nothing", "name": "x", "uid": "u-3"}]),
    )
    .await;
    eventually("orphans collected", 3, || async {
        !exists("ghost-owner").await && !exists("recreated-owner").await
    })
    .await;
    eventually("dangling reference dropped", 3, || async {
        get_code(&c, &format!("{base}/half")).await.1["metadata"]["ownerReferences"]
            .as_array()
            .map(Vec::len)
            == Some(1)
    })
    .await;
    assert!(exists("kept").await && exists("unknown-kind").await);

    // Deleting the owner (background) takes its dependents.
    raw(
        &c,
        "DELETE",
        &format!("{base}/owner"),
        "application/json",
        Value::Null,
    )
    .await;
    eventually("dependents of a deleted owner collected", 3, || async {
        !exists("kept").await && !exists("half").await
    })
    .await;

    // Orphan: the owner goes, the dependent stays without the reference.
    let o2 = mk("o2", json!([])).await;
    let uid2 = o2["metadata"]["uid"].as_str().expect("uid").to_string();
    mk(
        "child",
        json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "o2", "uid": uid2}]),
    )
    .await;
    let (code, pending) = raw(
        &c,
        "DELETE",
        &format!("{base}/o2"),
        "application/json",
        json!({"propagationPolicy": "Orphan"}),
    )
    .await;
    assert_eq!(
        (code, &pending["metadata"]["finalizers"]),
        (200, &json!(["orphan"]))
    );
    eventually("orphaning owner gone", 3, || async { !exists("o2").await }).await;
    let (_, child) = get_code(&c, &format!("{base}/child")).await;
    assert!(child["metadata"]["ownerReferences"].is_null(), "{child}");

    // Foreground: the blocking dependent goes first, then the owner.
    let o3 = mk("o3", json!([])).await;
    let uid3 = o3["metadata"]["uid"].as_str().expect("uid").to_string();
    mk("blocker", json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "o3", "uid": uid3, "blockOwnerDeletion": true}])).await;
    let (code, pending) = raw(
        &c,
        "DELETE",
        &format!("{base}/o3"),
        "application/json",
        json!({"propagationPolicy": "Foreground"}),
    )
    .await;
    assert_eq!(
        (code, &pending["metadata"]["finalizers"]),
        (200, &json!(["foregroundDeletion"]))
    );
    eventually("foreground deletion done", 3, || async {
        !exists("o3").await && !exists("blocker").await
    })
    .await;

    // A bound pod owned by a deleted object is deleted gracefully: it waits for its kubelet.
    let o4 = mk("o4", json!([])).await;
    let uid4 = o4["metadata"]["uid"].as_str().expect("uid").to_string();
    let mut p = plain_pod("owned", json!({"nodeName": "n1"}));
    p["metadata"]["ownerReferences"] =
        json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "o4", "uid": uid4}]);
    let (code, _) = raw(
        &c,
        "POST",
        "/api/v1/namespaces/default/pods",
        "application/json",
        p,
    )
    .await;
    assert_eq!(code, 201);
    raw(
        &c,
        "DELETE",
        &format!("{base}/o4"),
        "application/json",
        Value::Null,
    )
    .await;
    eventually("owned pod marked for deletion", 3, || async {
        get_code(&c, "/api/v1/namespaces/default/pods/owned")
            .await
            .1["metadata"]["deletionTimestamp"]
            .is_string()
    })
    .await;
    sim.shutdown().await;

    // Without controllers nothing is collected.
    let quiet = Simulator::start(SimOptions {
        controller_period: None,
        ..SimOptions::default()
    })
    .await
    .expect("start");
    let qc = quiet.client();
    let (code, _) = raw(&qc, "POST", base, "application/json",
        json!({"metadata": {"name": "stays", "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "nobody", "uid": "u-9"}]}})).await;
    assert_eq!(code, 201);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(get_code(&qc, &format!("{base}/stays")).await.0, 200);
    quiet.shutdown().await;
}
