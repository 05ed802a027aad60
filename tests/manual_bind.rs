//! `bindlet bind` and `bindlet explain` end to end over HTTP: every refusal reason, a dry run,
//! a BindRequest followed to success through the node's agent, a direct bind, a node that does
//! not exist, and the binary's exit codes. Runs against the embedded simulator, or a real
//! cluster with BINDLET_TEST_KUBECONFIG.

mod common;

use std::time::Duration;

use bindlet::api::Phase;
use bindlet::manual::{self, BindArgs, BindOutcome, ClusterArgs, ExplainArgs};
use common::TestEnv;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

fn cluster(env: &TestEnv) -> ClusterArgs {
    ClusterArgs {
        kubeconfig: None,
        context: None,
        namespace: Some(env.namespace.clone()),
        api_timeout: Duration::from_secs(5),
    }
}

fn args(env: &TestEnv, pod: &str, node: &str) -> BindArgs {
    BindArgs {
        pod: pod.to_string(),
        node: node.to_string(),
        dry_run: false,
        direct: false,
        wait: Duration::from_secs(30),
        cluster: cluster(env),
    }
}

async fn run_bind(env: &TestEnv, a: &BindArgs) -> (BindOutcome, String) {
    let mut out = Vec::new();
    let outcome = manual::bind(&env.client, a, &mut out)
        .await
        .expect("bind runs");
    (outcome, String::from_utf8_lossy(&out).into_owned())
}

async fn run_explain(env: &TestEnv, name: &str) -> String {
    let mut out = Vec::new();
    let a = ExplainArgs {
        name: name.to_string(),
        cluster: cluster(env),
    };
    manual::explain(&env.client, &a, &mut out)
        .await
        .expect("explain runs");
    String::from_utf8_lossy(&out).into_owned()
}

/// A Ready node (the Ready condition lives in status, written through the status subresource).
async fn ready_node(env: &TestEnv, suffix: &str, spec: Value, status: Value) -> String {
    let name = env.node_name(suffix);
    env.create_node(&name, spec).await;
    let mut st = json!({ "conditions": [ { "type": "Ready", "status": "True", "reason": "KubeletReady" } ] });
    if let (Value::Object(a), Value::Object(b)) = (&mut st, status) {
        a.extend(b);
    }
    Api::<Node>::all(env.client.clone())
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": st })),
        )
        .await
        .expect("patch node status");
    name
}

fn requests(cpu: &str, mem: &str) -> Value {
    json!({ "containers": [ { "name": "main", "image": "registry.k8s.io/pause:3.10",
        "resources": { "requests": { "cpu": cpu, "memory": mem } } } ] })
}

fn fail_line<'a>(out: &'a str, check: &str) -> Option<&'a str> {
    out.lines()
        .find(|l| l.trim_start().starts_with("FAIL") && l.contains(check))
}

async fn assert_nothing_written(env: &TestEnv, pod: &str) {
    assert!(
        env.get_request(pod).await.is_none(),
        "no BindRequest may be written for {pod}"
    );
    assert_eq!(env.pod_node(pod).await, None, "{pod} must stay unbound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_each_reason_and_writes_nothing() {
    let env = TestEnv::new("manual-refusals").await;
    let gpu_taint = json!({ "taints": [ { "key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule" } ] });
    let plain = ready_node(&env, "plain", json!({}), json!({})).await;
    let tainted = ready_node(&env, "tainted", gpu_taint, json!({})).await;
    let cordoned = ready_node(
        &env,
        "cordoned",
        json!({ "unschedulable": true }),
        json!({}),
    )
    .await;
    let not_ready = env.node_name("notready");
    env.create_node(&not_ready, json!({})).await;
    Api::<Node>::all(env.client.clone())
        .patch_status(
            &not_ready,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": { "conditions": [
                { "type": "Ready", "status": "False", "reason": "KubeletNotReady", "message": "container runtime is down" } ] } })),
        )
        .await
        .expect("patch");
    // A node already holding most of its CPU (64 allocatable): 60 in a running pod, and a
    // finished pod whose requests no longer count.
    let busy = ready_node(&env, "busy", json!({}), json!({})).await;
    let mut hog = requests("60", "1Gi");
    hog["nodeName"] = json!(busy);
    env.create_pod("hog", hog).await;
    let mut done = requests("60", "1Gi");
    done["nodeName"] = json!(busy);
    env.create_pod("finished", done).await;
    env.pods()
        .patch_status(
            "finished",
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": { "phase": "Succeeded" } })),
        )
        .await
        .expect("finish pod");

    // (pod, extra spec, node, check that must fail, text in its line)
    let gpu9 = json!({ "containers": [ { "name": "main", "image": "registry.k8s.io/pause:3.10",
        "resources": { "limits": { "nvidia.com/gpu": "9" } } } ] });
    let cases: Vec<(&str, Value, &str, &str, &str)> = vec![
        (
            "notready",
            json!({}),
            &not_ready,
            "node/ready",
            "KubeletNotReady",
        ),
        ("cordon", json!({}), &cordoned, "node/cordon", "cordoned"),
        (
            "taint",
            json!({}),
            &tainted,
            "node/taints",
            "nvidia.com/gpu=present:NoSchedule",
        ),
        (
            "selector",
            json!({ "nodeSelector": { "pool": "a100" } }),
            &plain,
            "scheduling/nodeSelector",
            "node has no such label, pod wants \"a100\"",
        ),
        (
            "affinity",
            json!({ "affinity": { "nodeAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [ { "matchFields": [ { "key": "metadata.name", "operator": "NotIn", "values": [plain] } ] } ] } } } }),
            &plain,
            "scheduling/nodeAffinity",
            "matches none of the 1 required",
        ),
        (
            "cpu",
            requests("5", "1Gi"),
            &busy,
            "resources/cpu",
            "used by 1 pods 60, free 4",
        ),
        (
            "gpus",
            gpu9,
            &plain,
            "resources/nvidia.com/gpu",
            "insufficient nvidia.com/gpu",
        ),
        (
            "elsewhere",
            json!({ "nodeName": tainted }),
            &plain,
            "pod/unbound",
            "already bound to another node",
        ),
    ];
    for (pod, extra, node, check, text) in cases {
        env.create_pod(pod, extra).await;
        for direct in [false, true] {
            let mut a = args(&env, pod, node);
            a.direct = direct;
            let (outcome, out) = run_bind(&env, &a).await;
            assert_eq!(
                outcome,
                BindOutcome::Refused,
                "{pod} (direct {direct}):\n{out}"
            );
            assert_eq!(outcome.exit_code(), 2);
            let line = fail_line(&out, check)
                .unwrap_or_else(|| panic!("{pod}: no FAIL line for {check}:\n{out}"));
            assert!(line.contains(text), "{pod}: {line:?} lacks {text:?}\n{out}");
            assert!(out.contains("nothing was written"), "{out}");
        }
        if pod != "elsewhere" {
            assert_nothing_written(&env, pod).await;
        }
    }
    // The same CPU request fits once the running pod's share is not needed: 4 are free.
    env.create_pod("cpu-fits", requests("4", "1Gi")).await;
    let mut a = args(&env, "cpu-fits", &busy);
    a.dry_run = true;
    let (outcome, out) = run_bind(&env, &a).await;
    assert_eq!(outcome, BindOutcome::DryRunPassed, "{out}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_that_does_not_exist_is_refused_before_anything_is_written() {
    let env = TestEnv::new("manual-ghost").await;
    env.create_pod("web", json!({})).await;
    let ghost = env.node_name("typo");
    for direct in [false, true] {
        let mut a = args(&env, "web", &ghost);
        a.direct = direct;
        let (outcome, out) = run_bind(&env, &a).await;
        assert_eq!(outcome, BindOutcome::Refused, "{out}");
        let line = fail_line(&out, "node/exists").expect("node/exists fails");
        assert!(line.contains("does not exist"), "{line}");
        assert!(
            out.contains("SKIP"),
            "checks needing the node are skipped:\n{out}"
        );
    }
    assert_nothing_written(&env, "web").await;
    // And a pod that does not exist.
    let (outcome, out) = run_bind(&env, &args(&env, "nope", &ghost)).await;
    assert_eq!(outcome, BindOutcome::Refused);
    assert!(out.contains("not found"), "{out}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_checks_only() {
    let env = TestEnv::new("manual-dry").await;
    let node = ready_node(&env, "n1", json!({}), json!({})).await;
    let mut spec = requests("2", "4Gi");
    spec["nodeSelector"] = json!({ "bindlet-test": env.namespace });
    env.create_pod("web", spec).await;
    let mut a = args(&env, "web", &node);
    a.dry_run = true;
    let (outcome, out) = run_bind(&env, &a).await;
    assert_eq!(outcome, BindOutcome::DryRunPassed, "{out}");
    assert_eq!(outcome.exit_code(), 0);
    for want in [
        "PASS  node/exists",
        "PASS  node/ready",
        "PASS  node/cordon",
        "PASS  node/taints",
        "PASS  scheduling/nodeSelector",
        "PASS  resources/cpu",
        "cpu: requests 2, allocatable 64",
        "memory: requests 4Gi, allocatable 256Gi",
        "dry run: every check passed",
    ] {
        assert!(out.contains(want), "missing {want:?}:\n{out}");
    }
    assert!(!out.contains("FAIL"), "{out}");
    assert_nothing_written(&env, "web").await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_request_followed_to_success_through_the_agent() {
    let env = TestEnv::new("manual-agent").await;
    let node = ready_node(
        &env,
        "n1",
        json!({ "taints": [ { "key": "nvidia.com/gpu", "effect": "NoSchedule" } ] }),
        json!({}),
    )
    .await;
    // The node's GPUs, as the agent's file backend describes them (no NVML here).
    let dir = tempfile::tempdir().expect("tempdir");
    let gpus = dir.path().join("gpus.yaml");
    std::fs::write(&gpus, "gpus:\n  - { uuid: GPU-a }\n  - { uuid: GPU-b }\n").expect("write");
    let mut cfg = env.agent_config(&node);
    cfg.plugins.gpu.args.gpu_inventory_file = Some(gpus);
    let agent = env.start_agent(cfg).await;
    let pod = env
        .create_pod(
            "train",
            json!({
                "tolerations": [ { "key": "nvidia.com/gpu", "operator": "Exists" } ],
                "containers": [ { "name": "main", "image": "registry.k8s.io/pause:3.10",
                    "resources": { "limits": { "nvidia.com/gpu": "2" } } } ]
            }),
        )
        .await;
    let (outcome, out) = run_bind(&env, &args(&env, "train", &node)).await;
    assert_eq!(outcome, BindOutcome::Done, "{out}");
    assert!(out.contains("wrote BindRequest"), "{out}");
    assert!(
        out.contains(&format!("done: bound to node {node}")),
        "{out}"
    );
    assert_eq!(env.pod_node("train").await.as_deref(), Some(node.as_str()));

    // The request looks like KAI's.
    let br = env.get_request("train").await.expect("BindRequest kept");
    assert_eq!(br.phase(), Some(Phase::Succeeded));
    let labels = br.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("selected-node"), Some(&node));
    assert_eq!(br.owner_pod_uid(), pod.metadata.uid.as_deref());
    let owner = &br.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!((owner.kind.as_str(), owner.controller), ("Pod", Some(true)));
    assert_eq!(br.spec.pod_name.as_deref(), Some("train"));
    assert_eq!(br.spec.selected_node.as_deref(), Some(node.as_str()));
    assert_eq!(br.spec.received_resource_type.as_deref(), Some("Regular"));
    assert_eq!(br.spec.received_gpu.as_ref().and_then(|g| g.count), Some(2));

    // A second bind of the same pod: already bound there, nothing to do.
    let (outcome, out) = run_bind(&env, &args(&env, "train", &node)).await;
    assert_eq!(outcome, BindOutcome::Done, "{out}");
    assert!(out.contains("already bound"), "{out}");

    env.wait_events("Pod", "train", "Bound", 1).await;
    let text = run_explain(&env, "train").await;
    // explain reads the verdicts from the BindRequest: KAI's CRD prunes them, and explain
    // says so instead.
    let verdicts = if env.keeps_verification() {
        "PASS  node/taints"
    } else {
        "No checks recorded: the agent's verdicts are kept only with bindlet's CRD"
    };
    for want in [
        "Succeeded: the pod was bound",
        &format!("bound to node {node}"),
        verdicts,
        "Normal   Bound",
    ] {
        assert!(text.contains(want), "missing {want:?}:\n{text}");
    }
    agent.stop().await.expect("stop");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_requests_are_not_clobbered() {
    let env = TestEnv::new("manual-existing").await;
    let node = ready_node(&env, "n1", json!({}), json!({})).await;
    let other = ready_node(&env, "n2", json!({}), json!({})).await;
    // A request for another node: refused, left as it was.
    let p = env.create_pod("elsewhere", json!({})).await;
    env.create_request("elsewhere", &other, p.metadata.uid.as_deref(), json!({}))
        .await;
    let (outcome, out) = run_bind(&env, &args(&env, "elsewhere", &node)).await;
    assert_eq!(outcome, BindOutcome::Refused, "{out}");
    assert!(
        out.contains(&format!("already exists for node {other}")),
        "{out}"
    );
    let br = env.get_request("elsewhere").await.expect("kept");
    assert_eq!(br.spec.selected_node.as_deref(), Some(other.as_str()));
    // --direct does not race the scheduler's pending request either.
    let mut a = args(&env, "elsewhere", &node);
    a.direct = true;
    let (outcome, out) = run_bind(&env, &a).await;
    assert_eq!(outcome, BindOutcome::Refused, "{out}");
    assert!(out.contains("is not settled"), "{out}");
    assert_eq!(env.pod_node("elsewhere").await, None);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_made_for_an_earlier_pod_is_followed_and_its_failure_reported() {
    let test = "a_request_made_for_an_earlier_pod_is_followed_and_its_failure_reported";
    let env = TestEnv::without_garbage_collector("manual-stale").await;
    let why = "a cluster's garbage collector deletes a request whose owner pod is gone within \
               a second, before bind can follow it";
    if env.sim_or_skip_because(test, why).is_none() {
        return env.cleanup().await;
    }
    let node = ready_node(&env, "n1", json!({}), json!({})).await;
    // A request for the same node, made for an earlier pod of that name: the agent refuses it
    // (terminal) and bind, following that request, reports the failure.
    env.create_pod("stale", json!({})).await;
    env.create_request(
        "stale",
        &node,
        Some("00000000-0000-0000-0000-00000000dead"),
        json!({}),
    )
    .await;
    let agent = env.start_agent(env.agent_config(&node)).await;
    let (outcome, out) = run_bind(&env, &args(&env, "stale", &node)).await;
    assert_eq!(outcome, BindOutcome::Failed, "{out}");
    assert_eq!(outcome.exit_code(), 3);
    assert!(out.contains("already exists; following it"), "{out}");
    assert!(out.contains("was recreated"), "{out}");
    assert_eq!(env.pod_node("stale").await, None);

    let text = run_explain(&env, "stale").await;
    assert!(text.contains("earlier pod of this name"), "{text}");
    agent.stop().await.expect("stop");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_when_no_agent_answers() {
    let env = TestEnv::new("manual-noagent").await;
    let node = ready_node(&env, "n1", json!({}), json!({})).await;
    env.create_pod("web", json!({})).await;
    let mut a = args(&env, "web", &node);
    a.wait = Duration::from_millis(600);
    let (outcome, out) = run_bind(&env, &a).await;
    assert_eq!(outcome, BindOutcome::Pending, "{out}");
    assert_eq!(outcome.exit_code(), 4);
    assert!(out.contains("is a bindlet agent running"), "{out}");
    assert!(env.get_request("web").await.is_some());
    let text = run_explain(&env, "web").await;
    assert!(text.contains("no attempt recorded yet"), "{text}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_bind_posts_the_binding_itself() {
    let env = TestEnv::new("manual-direct").await;
    let node = ready_node(&env, "n1", json!({}), json!({})).await;
    let pod = env.create_pod("web", requests("1", "1Gi")).await;
    let mut a = args(&env, "web", &node);
    a.direct = true;
    let (outcome, out) = run_bind(&env, &a).await;
    assert_eq!(outcome, BindOutcome::Done, "{out}");
    assert!(out.contains("Binding posted directly"), "{out}");
    assert_eq!(env.pod_node("web").await.as_deref(), Some(node.as_str()));
    assert!(
        env.get_request("web").await.is_none(),
        "no BindRequest with --direct"
    );
    let live: Pod = env.pods().get("web").await.expect("pod");
    assert_eq!(live.metadata.uid, pod.metadata.uid);

    // The bound pod now counts against the node for the next placement.
    env.create_pod("big", requests("64", "1Gi")).await;
    let mut a = args(&env, "big", &node);
    a.dry_run = true;
    let (outcome, out) = run_bind(&env, &a).await;
    assert_eq!(outcome, BindOutcome::Refused, "{out}");
    assert!(fail_line(&out, "resources/cpu").is_some(), "{out}");

    let events = env.wait_events("Pod", "web", "Bound", 1).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let text = run_explain(&env, "web").await;
    assert!(text.contains("No BindRequest"), "{text}");
    assert!(text.contains(&format!("bound to node {node}")), "{text}");
    assert!(text.contains("bindlet bind --direct"), "{text}");
    env.cleanup().await;
}

/// The binary: exit codes and plain output, through a kubeconfig like a user's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_exit_codes() {
    let env = TestEnv::new("manual-exit").await;
    let node = ready_node(&env, "n1", json!({}), json!({})).await;
    env.create_pod("web", json!({})).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = match (&env.sim, std::env::var_os("BINDLET_TEST_KUBECONFIG")) {
        (Some(sim), _) => {
            let p = dir.path().join("kubeconfig");
            std::fs::write(&p, sim.kubeconfig_yaml()).expect("write kubeconfig");
            p
        }
        (None, Some(p)) => p.into(),
        (None, None) => unreachable!("a test env is the simulator or a kubeconfig"),
    };
    let cmd = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_bindlet"));
        cmd.env_remove("BINDLET_LOG")
            .args(extra)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["-n", &env.namespace]);
        cmd
    };
    let exec = |mut cmd: std::process::Command| async move {
        tokio::task::spawn_blocking(move || cmd.output().expect("run bindlet"))
            .await
            .expect("join")
    };
    let ok = exec(cmd(&["bind", "web", "--node", &node, "--dry-run"])).await;
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(ok.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("dry run: every check passed"), "{stdout}");

    let usage = exec(cmd(&["bind", "web"])).await;
    assert_eq!(
        usage.status.code(),
        Some(1),
        "a usage error is not a refusal"
    );

    let ghost = env.node_name("typo");
    let refused = exec(cmd(&["bind", "web", "--node", &ghost])).await;
    assert_eq!(
        refused.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&refused.stdout)
    );

    let missing = exec(cmd(&["explain", "nothing-here"])).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("no BindRequest or pod named nothing-here")
    );

    let explained = exec(cmd(&["explain", "web"])).await;
    assert_eq!(explained.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&explained.stdout).contains("not bound to a node"));
    assert_nothing_written(&env, "web").await;
    env.cleanup().await;
}
