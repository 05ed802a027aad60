//! Replays every recorded kube-apiserver 1.36 exchange against the simulator and compares
//! what must match: codes, kinds, reasons, causes, messages, watch event order, the
//! initial-events-end bookmark, the Warning header and the fields the server sets.

use std::path::PathBuf;
use std::time::Duration;

use bindlet::sim::{SimOptions, Simulator};
use http_body_util::BodyExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Value, json};

fn shared_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

fn kai_crd() -> CustomResourceDefinition {
    let p = shared_dir().join("kai/scheduling.run.ai_bindrequests.yaml");
    let text = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("cannot read KAI's CRD at {}: {e}", p.display()));
    serde_yaml::from_str(&text).expect("KAI's CRD parses")
}

struct Reply {
    code: u16,
    warnings: Vec<String>,
    body: Value,
    /// Watch streams: one value per line.
    events: Vec<Value>,
}

async fn send(
    client: &kube::Client,
    method: &str,
    path: &str,
    params: &[(String, String)],
    ctype: Option<&str>,
    body: Option<&Value>,
) -> Reply {
    let mut uri = path.to_string();
    if !params.is_empty() {
        let q: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        uri = format!("{uri}?{q}");
    }
    let mut b = http::Request::builder().method(method).uri(uri);
    if let Some(ct) = ctype {
        b = b.header("content-type", ct);
    }
    let bytes = match (body, ctype) {
        (Some(v), Some(ct)) if ct.contains("yaml") => {
            serde_yaml::to_string(v).expect("yaml").into_bytes()
        }
        (Some(v), _) => serde_json::to_vec(v).expect("json"),
        (None, _) => vec![],
    };
    let req = b.body(kube::client::Body::from(bytes)).expect("request");
    let resp = client.send(req).await.expect("send");
    let code = resp.status().as_u16();
    let warnings = resp
        .headers()
        .get_all("warning")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    let raw = resp.into_body().collect().await.expect("body").to_bytes();
    let text = String::from_utf8_lossy(&raw).to_string();
    let events: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    Reply {
        code,
        warnings,
        body,
        events,
    }
}

/// Keys whose values differ per run.
const VOLATILE: &[&str] = &[
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "managedFields",
    "lastTransitionTime",
    "continue",
    "deprecatedSource",
    "deprecatedFirstTimestamp",
    "deprecatedLastTimestamp",
    "storageVersionHash",
    "verbs",
];

/// Keys the server sets to a per-run value: they must be there, their values differ.
const PRESENT_ONLY: &[&str] = &["deletionTimestamp", "timeAdded"];

/// Every field of `want` (less volatile keys) must be in `got` with the same value.
fn subset(want: &Value, got: &Value, path: &str, errs: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                if VOLATILE.contains(&k.as_str()) {
                    continue;
                }
                if PRESENT_ONLY.contains(&k.as_str()) {
                    if g.get(k).is_none_or(Value::is_null) {
                        errs.push(format!("{path}.{k}: missing (want a value)"));
                    }
                    continue;
                }
                match g.get(k) {
                    Some(gv) => subset(wv, gv, &format!("{path}.{k}"), errs),
                    None => errs.push(format!("{path}.{k}: missing (want {wv})")),
                }
            }
        }
        (Value::Array(w), Value::Array(g)) => {
            if w.len() != g.len() {
                errs.push(format!("{path}: {} items, want {}", g.len(), w.len()));
                return;
            }
            for (i, (a, b)) in w.iter().zip(g).enumerate() {
                subset(a, b, &format!("{path}[{i}]"), errs);
            }
        }
        (w, g) => {
            if w != g {
                errs.push(format!("{path}: got {g}, want {w}"));
            }
        }
    }
}

fn substitute(v: &Value, subs: &[(String, String)]) -> Value {
    let mut s = v.to_string();
    for (from, to) in subs {
        s = s.replace(from.as_str(), to.as_str());
    }
    serde_json::from_str(&s).expect("substituted JSON")
}

/// What the recording server adds that upstream kube-apiserver 1.36 and
/// kube-controller-manager do not, or what the simulator leaves out on purpose; removed from
/// the wanted answer before comparing.
fn drop_not_upstream(want: &mut Value, got: &Value) {
    // The OpenShift fork the recordings were made with adds an `openshift-service-ca.crt`
    // source to the token volume (README of the recordings); upstream adds three sources.
    if let Some(vols) = want
        .pointer_mut("/spec/volumes")
        .and_then(Value::as_array_mut)
    {
        for v in vols {
            if let Some(srcs) = v
                .pointer_mut("/projected/sources")
                .and_then(Value::as_array_mut)
            {
                srcs.retain(|s| {
                    s.pointer("/configMap/name") != Some(&json!("openshift-service-ca.crt"))
                });
            }
        }
    }
    // The token volume's name ends in 5 random characters: take this run's.
    let token_volume = |v: &Value| -> Option<String> {
        v.pointer("/spec/volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v["name"].as_str())
            .find(|n| n.starts_with("kube-api-access-"))
            .map(str::to_string)
    };
    if let (Some(w), Some(g)) = (token_volume(want), token_volume(got)) {
        *want = substitute(want, &[(format!("\"{w}\""), format!("\"{g}\""))]);
    }
    // `node.alpha.kubernetes.io/ttl` is written by kube-controller-manager's TTL controller,
    // which the simulator does not run.
    if want["kind"] == "Node"
        && let Some(m) = want.pointer_mut("/metadata").and_then(Value::as_object_mut)
    {
        if let Some(a) = m.get_mut("annotations").and_then(Value::as_object_mut) {
            a.remove("node.alpha.kubernetes.io/ttl");
        }
        if m.get("annotations")
            .and_then(Value::as_object)
            .is_some_and(|a| a.is_empty())
        {
            m.remove("annotations");
        }
    }
}

fn str_at<'a>(v: &'a Value, p: &[&str]) -> &'a str {
    let mut c = v;
    for k in p {
        c = &c[*k];
    }
    c.as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_recordings() {
    let dir = shared_dir().join("apiserver-1.36");
    assert!(
        dir.is_dir(),
        "the recordings folder {} is missing: the conformance test needs ../shared/apiserver-1.36 beside the crate",
        dir.display()
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read recordings")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 51,
        "expected at least 51 recordings, found {}",
        files.len()
    );

    let opts = SimOptions {
        crds: vec![kai_crd()],
        bookmark_interval: Duration::from_secs(30),
        ..SimOptions::default()
    };
    let sim = Simulator::start(opts).await.expect("start");
    let client = sim.client();
    let ns = format!("conf-{}", std::process::id());
    let r = send(
        &client,
        "POST",
        "/api/v1/namespaces",
        &[],
        Some("application/json"),
        Some(&json!({"metadata": {"name": ns}})),
    )
    .await;
    assert_eq!(r.code, 201);

    // Recorded uid -> this run's uid, filled as objects are created.
    let node = format!("{ns}-gpu-node");
    let mut subs: Vec<(String, String)> =
        vec![("{ns}".into(), ns.clone()), ("{node}".into(), node.clone())];
    let mut failures = Vec::new();

    for file in &files {
        let rec: Value =
            serde_json::from_str(&std::fs::read_to_string(file).expect("read")).expect("json");
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();
        if name.starts_with("39-") {
            // Created before the recording (its README): the DeviceClass mapping the extended
            // resource, and the pod requesting it that owns the claim.
            let class = json!({"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass",
                "metadata": {"name": format!("{ns}-gpu")},
                "spec": {"selectors": [{"cel": {"expression": format!("device.driver == \"gpu.{ns}.example.com\"")}}],
                         "extendedResourceName": "example.com/gpu-rec"}});
            let r = send(
                &client,
                "POST",
                "/apis/resource.k8s.io/v1/deviceclasses",
                &[],
                Some("application/json"),
                Some(&class),
            )
            .await;
            assert_eq!(r.code, 201, "device class: {}", r.body);
            let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p-gpu"},
                "spec": {"containers": [{"name": "c", "image": "busybox",
                         "resources": {"limits": {"example.com/gpu-rec": "1"}}}]}});
            let r = send(
                &client,
                "POST",
                &format!("/api/v1/namespaces/{ns}/pods"),
                &[],
                Some("application/json"),
                Some(&pod),
            )
            .await;
            assert_eq!(r.code, 201, "pod p-gpu: {}", r.body);
            subs.push((
                "4ebea256-4420-4d15-9ac4-83fa12504032".into(),
                str_at(&r.body, &["metadata", "uid"]).to_string(),
            ));
        }
        if name.starts_with("37-") {
            // Recorded 10 s after Ready=True; a few controller passes show the same.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let req = substitute(&rec["request"], &subs);
        let want = substitute(&rec["response"], &subs);
        let method = req["method"].as_str().unwrap_or("GET").to_string();
        let path = req["path"].as_str().unwrap_or("").to_string();
        let mut params: Vec<(String, String)> = req["params"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let ctype = req["content_type"].as_str();
        let body = if req["body"].is_null() {
            None
        } else {
            Some(&req["body"])
        };
        let mut errs = Vec::new();

        let reply = if name.starts_with("22-") {
            // Watch from "now"; the recorded create / status patch / delete happen meanwhile.
            for p in params.iter_mut() {
                if p.0 == "resourceVersion" {
                    p.1 = sim.resource_version().to_string();
                }
                if p.0 == "timeoutSeconds" {
                    p.1 = "3".into();
                }
            }
            let c2 = client.clone();
            let ns2 = ns.clone();
            let p2_uid = subs
                .iter()
                .find(|(f, _)| f == "290febd5-0c6f-4543-a49d-1872f93d3457")
                .map(|s| s.1.clone())
                .unwrap_or_default();
            let actor = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let base =
                    format!("/apis/scheduling.run.ai/v1alpha2/namespaces/{ns2}/bindrequests");
                let br = json!({"apiVersion": "scheduling.run.ai/v1alpha2", "kind": "BindRequest",
                    "metadata": {"name": "w3", "labels": {"selected-node": format!("{ns2}-node")},
                                 "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "p2", "uid": p2_uid}]},
                    "spec": {"podName": "p2", "selectedNode": format!("{ns2}-node"), "receivedResourceType": "Regular", "receivedGPU": {"count": 1, "portion": "1.00"}}});
                assert_eq!(
                    send(&c2, "POST", &base, &[], Some("application/json"), Some(&br))
                        .await
                        .code,
                    201
                );
                let st = json!({"status": {"phase": "Succeeded"}});
                assert_eq!(
                    send(
                        &c2,
                        "PATCH",
                        &format!("{base}/w3/status"),
                        &[],
                        Some("application/merge-patch+json"),
                        Some(&st)
                    )
                    .await
                    .code,
                    200
                );
                assert_eq!(
                    send(&c2, "DELETE", &format!("{base}/w3"), &[], None, None)
                        .await
                        .code,
                    200
                );
            });
            let r = send(&client, &method, &path, &params, ctype, body).await;
            actor.await.expect("actor");
            r
        } else {
            if name.starts_with("23-") {
                sim.faults().compact();
            }
            if name.starts_with("24-") {
                for p in params.iter_mut() {
                    if p.0 == "timeoutSeconds" {
                        p.1 = "1".into();
                    }
                }
            }
            if name.starts_with("35-") {
                // The recorder polled until the garbage collector had removed the object
                // (within 0.1–1 s); allow 3 s.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
                loop {
                    let r = send(&client, &method, &path, &params, ctype, body).await;
                    if r.code == 404 || tokio::time::Instant::now() > deadline {
                        break r;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            } else {
                send(&client, &method, &path, &params, ctype, body).await
            }
        };

        let want_code = want["code"].as_u64().unwrap_or(0) as u16;
        if reply.code != want_code {
            errs.push(format!(
                "code {} want {want_code}; body {}",
                reply.code, reply.body
            ));
        }
        if let Some(w) = want["warning"].as_str() {
            if reply.warnings != vec![w.to_string()] {
                errs.push(format!("warning {:?} want {w:?}", reply.warnings));
            }
        } else if want.get("warning").is_some() && !reply.warnings.is_empty() {
            errs.push(format!("unexpected warnings {:?}", reply.warnings));
        }

        if let Some(stream) = want["stream"].as_array() {
            let got_types: Vec<&str> = reply
                .events
                .iter()
                .map(|e| e["type"].as_str().unwrap_or(""))
                .collect();
            let want_types: Vec<&str> = stream
                .iter()
                .map(|e| e["type"].as_str().unwrap_or(""))
                .collect();
            if got_types != want_types {
                errs.push(format!("event types {got_types:?} want {want_types:?}"));
            } else {
                for (i, (w, g)) in stream.iter().zip(&reply.events).enumerate() {
                    let mut wobj = w["object"].clone();
                    if w["type"] == "ERROR" {
                        let m = g["object"]["message"].as_str().unwrap_or("");
                        if !m.starts_with("too old resource version: 1 (") {
                            errs.push(format!("ERROR message {m}"));
                        }
                        if let Some(o) = wobj.as_object_mut() {
                            o.remove("message");
                        }
                    }
                    subset(&wobj, &g["object"], &format!("event[{i}]"), &mut errs);
                    let ann = &w["object"]["metadata"]["annotations"];
                    if !ann.is_null() && g["object"]["metadata"]["annotations"] != *ann {
                        errs.push(format!(
                            "event[{i}] annotations {} want {ann}",
                            g["object"]["metadata"]["annotations"]
                        ));
                    }
                }
            }
        } else {
            let mut wb = want["body"].clone();
            let gb = &reply.body;
            if wb["kind"] == "Status" {
                for k in ["kind", "apiVersion", "status", "reason", "code"] {
                    if wb[k] != gb[k] {
                        errs.push(format!("{k}: got {} want {}", gb[k], wb[k]));
                    }
                }
                for k in ["kind", "group"] {
                    if wb["details"][k] != gb["details"][k] {
                        errs.push(format!(
                            "details.{k}: got {} want {}",
                            gb["details"][k], wb["details"][k]
                        ));
                    }
                }
                let wc = wb["details"]["causes"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let gc = gb["details"]["causes"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let shape = |c: &Vec<Value>| {
                    c.iter()
                        .map(|x| (x["reason"].clone(), x["field"].clone()))
                        .collect::<Vec<_>>()
                };
                if shape(&wc) != shape(&gc) {
                    errs.push(format!("causes {gc:?} want {wc:?}"));
                }
                if name.starts_with("28-") {
                    // The generated name differs; the rest of the message must match.
                    let wm = wb["message"].as_str().unwrap_or("");
                    let gm = gb["message"].as_str().unwrap_or("");
                    let tail = |m: &str| {
                        m.split_once("\" is invalid: ")
                            .map(|x| x.1.to_string())
                            .unwrap_or_default()
                    };
                    if tail(wm) != tail(gm) || !gm.starts_with("Event \"p2.") {
                        errs.push(format!("message {gm:?} want {wm:?}"));
                    }
                    if !str_at(gb, &["details", "name"]).starts_with("p2.") {
                        errs.push(format!("details.name {}", gb["details"]["name"]));
                    }
                } else {
                    if wb["message"] != gb["message"] {
                        errs.push(format!("message {} want {}", gb["message"], wb["message"]));
                    }
                    if wb["details"]["name"] != gb["details"]["name"] {
                        errs.push(format!(
                            "details.name {} want {}",
                            gb["details"]["name"], wb["details"]["name"]
                        ));
                    }
                    if wc
                        .iter()
                        .zip(&gc)
                        .any(|(a, b)| a["message"] != b["message"])
                    {
                        errs.push(format!("cause messages {gc:?} want {wc:?}"));
                    }
                }
            } else {
                if name.starts_with("29-")
                    && let Some(m) = wb["metadata"].as_object_mut()
                {
                    m.remove("name");
                    if !str_at(gb, &["metadata", "name"]).starts_with("p2-") {
                        errs.push(format!("generated name {}", gb["metadata"]["name"]));
                    }
                }
                if name.starts_with("39-")
                    && let Some(m) = wb["metadata"].as_object_mut()
                {
                    // generateName: the suffix differs; later recordings use this run's name.
                    m.remove("name");
                    let got = str_at(gb, &["metadata", "name"]);
                    if !got.starts_with("p-gpu-extended-resources-") || got.len() != 30 {
                        errs.push(format!("generated name {got}"));
                    }
                    subs.push(("p-gpu-extended-resources-mzf6p".into(), got.to_string()));
                }
                drop_not_upstream(&mut wb, gb);
                subset(&wb, gb, "body", &mut errs);
                // What the recorded answer shows gone must be gone (a subset cannot tell).
                let absent: &[&str] = match name.get(..3) {
                    Some("44-") => &["/status/extendedResourceClaimStatus"],
                    Some("47-") => &["/metadata/finalizers"],
                    Some("50-") => &["/spec/taints"],
                    _ => &[],
                };
                for p in absent {
                    if let Some(v) = gb.pointer(p) {
                        errs.push(format!("body{p}: {v}, want it absent"));
                    }
                }
                // Record uid mappings for later recordings.
                let wuid = str_at(&wb, &["metadata", "uid"]);
                let guid = str_at(gb, &["metadata", "uid"]);
                if !wuid.is_empty() && !guid.is_empty() && !subs.iter().any(|(f, _)| f == wuid) {
                    subs.push((wuid.to_string(), guid.to_string()));
                }
                // Later requests may carry this object's resourceVersion (lease updates).
                let wrv = str_at(&wb, &["metadata", "resourceVersion"]);
                let grv = str_at(gb, &["metadata", "resourceVersion"]);
                if !wrv.is_empty() && !grv.is_empty() {
                    subs.push((format!("\"{wrv}\""), format!("\"{grv}\"")));
                }
            }
        }
        if !errs.is_empty() {
            failures.push(format!("{name}:\n  {}", errs.join("\n  ")));
        }
    }
    sim.shutdown().await;
    assert!(
        failures.is_empty(),
        "{} recordings differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
