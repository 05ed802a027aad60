//! The simulated kubelet against the embedded simulator (or a real cluster through
//! `BINDLET_TEST_KUBECONFIG`, with fake nodes): admission with GPU devices, refusal when
//! the node is full, release on deletion and completion, the reservation annotation, the
//! pod-resources socket, and no second admission after a watch restart or a restart.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bindlet::gpu::podresources;
use bindlet::sim::FaultRule;
use bindlet::sim::kubelet::{self, Kubelet, KubeletConfig};
use common::{TestEnv, wait_until};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(10);
const RESERVED: &str = "run.ai/reserve_for_gpu_index";

fn gpu_spec(node: Option<&str>, gpus: u32) -> Value {
    let mut resources = json!({});
    if gpus > 0 {
        resources = json!({ "limits": { "nvidia.com/gpu": gpus.to_string() } });
    }
    let mut spec = json!({ "containers": [{
        "name": "main",
        "image": "registry.k8s.io/pause:3.10",
        "resources": resources,
    }] });
    if let Some(node) = node {
        spec["nodeName"] = json!(node);
    }
    spec
}

/// A pod created already assigned to `node` (as a static scheduler would).
async fn pod_on(env: &TestEnv, name: &str, node: &str, gpus: u32) -> Pod {
    env.create_pod(name, gpu_spec(Some(node), gpus)).await
}

/// A pod created unassigned, then bound to `node` through `pods/{name}/binding`.
async fn bound_pod(env: &TestEnv, name: &str, node: &str, gpus: u32) -> Pod {
    let pod = env.create_pod(name, gpu_spec(None, gpus)).await;
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": { "name": name, "uid": pod.uid() },
        "target": { "apiVersion": "v1", "kind": "Node", "name": node },
    });
    let _: Value = env
        .pods()
        .create_subresource("binding", name, &PostParams::default(), &binding)
        .await
        .expect("bind");
    pod
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// Polls the pod until `ok` holds; panics with the last state otherwise.
async fn wait_pod(env: &TestEnv, name: &str, what: &str, ok: impl Fn(&Pod) -> bool) -> Pod {
    let start = tokio::time::Instant::now();
    loop {
        let pod = env.pods().get_opt(name).await.expect("get pod");
        if let Some(p) = &pod
            && ok(p)
        {
            return p.clone();
        }
        assert!(
            start.elapsed() < T,
            "pod {name}: timed out waiting until {what}; last: {:?}",
            pod.and_then(|p| p.status)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_phase(env: &TestEnv, name: &str, want: &str) -> Pod {
    wait_pod(env, name, want, |p| phase(p) == want).await
}

fn key(env: &TestEnv, name: &str) -> String {
    format!("{}/{name}", env.namespace)
}

fn gpus(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// What the socket says: "namespace/name" → device IDs of `nvidia.com/gpu`.
async fn listed(socket: &Path) -> BTreeMap<String, Vec<String>> {
    podresources::list(socket, T)
        .await
        .expect("List on the socket")
        .iter()
        .map(|p| {
            (
                format!("{}/{}", p.namespace, p.name),
                p.device_ids("nvidia.com/gpu").map(str::to_string).collect(),
            )
        })
        .collect()
}

async fn wait_assignments(
    k: &Kubelet,
    what: &str,
    ok: impl Fn(&BTreeMap<String, Vec<String>>) -> bool,
) {
    wait_until(T, what, || async { ok(&k.assignments()) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_gpus_until_the_node_is_full_and_free_them_when_done() {
    let env = TestEnv::new("kubelet-gpus").await;
    let node = env.node_name("n1");
    let other = env.node_name("n2");
    env.create_node(&node, json!({})).await;
    env.create_node(&other, json!({})).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("pod-resources").join("kubelet.sock");
    // Without a node name it would take every unscheduled pod for its own.
    let e = kubelet::spawn(env.client.clone(), KubeletConfig::default()).err();
    assert_eq!(e.map(|e| e.kind()), Some(std::io::ErrorKind::InvalidInput));
    let k = kubelet::spawn(
        env.client.clone(),
        KubeletConfig {
            node: node.clone(),
            gpus: gpus(&["GPU-a", "GPU-b"]),
            socket: Some(socket.clone()),
            ..Default::default()
        },
    )
    .expect("spawn kubelet");
    assert_eq!(k.socket_path(), Some(socket.as_path()));
    // The socket answers at once, before any pod.
    assert_eq!(listed(&socket).await, BTreeMap::new());

    // Assigned at creation and bound through the binding subresource: both run, with the
    // first free GPU each.
    pod_on(&env, "a", &node, 1).await;
    let a = wait_phase(&env, "a", "Running").await;
    bound_pod(&env, "b", &node, 1).await;
    let b = wait_phase(&env, "b", "Running").await;
    for p in [&a, &b] {
        let s = p.status.as_ref().expect("status");
        assert!(s.start_time.is_some(), "startTime");
        let conditions = s.conditions.as_deref().unwrap_or_default();
        for t in ["Initialized", "Ready", "ContainersReady", "PodScheduled"] {
            assert!(
                conditions
                    .iter()
                    .any(|c| c.type_ == t && c.status == "True"),
                "{}: {t} missing in {conditions:?}",
                p.name_any()
            );
        }
    }
    assert_eq!(
        k.assignments(),
        BTreeMap::from([
            (key(&env, "a"), gpus(&["GPU-a"])),
            (key(&env, "b"), gpus(&["GPU-b"])),
        ])
    );

    // A pod on another node is none of this kubelet's business.
    pod_on(&env, "elsewhere", &other, 1).await;
    // The node is full: the third GPU pod is refused the way the kubelet refuses it.
    pod_on(&env, "c", &node, 1).await;
    let c = wait_phase(&env, "c", "Failed").await;
    let s = c.status.as_ref().expect("status");
    assert_eq!(
        s.reason.as_deref(),
        Some(kubelet::UNEXPECTED_ADMISSION_ERROR)
    );
    let message = s.message.as_deref().unwrap_or_default();
    assert!(
        message.contains(
            "Allocate failed due to requested number of devices unavailable for nvidia.com/gpu. \
             Requested: 1, Available: 0, which is unexpected"
        ),
        "{message}"
    );
    // A pod without GPUs still runs, holding nothing.
    pod_on(&env, "cpu", &node, 0).await;
    wait_phase(&env, "cpu", "Running").await;
    // Pods are admitted in the order seen, so "elsewhere" would have been handled by now.
    let elsewhere = env.pods().get("elsewhere").await.expect("get");
    assert_eq!(phase(&elsewhere), "Pending");
    let want = BTreeMap::from([
        (key(&env, "a"), gpus(&["GPU-a"])),
        (key(&env, "b"), gpus(&["GPU-b"])),
        (key(&env, "cpu"), vec![]),
    ]);
    assert_eq!(k.assignments(), want);
    // The socket tells the same, pods without devices included.
    assert_eq!(listed(&socket).await, want);

    // Deleting a pod frees its GPU; the next pod gets it.
    env.pods()
        .delete("a", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete a");
    wait_assignments(&k, "a's GPU is released", |m| {
        !m.contains_key(&key(&env, "a"))
    })
    .await;
    pod_on(&env, "d", &node, 1).await;
    wait_phase(&env, "d", "Running").await;
    assert_eq!(k.assignments()[&key(&env, "d")], gpus(&["GPU-a"]));

    // A pod that completes frees its GPU too.
    env.pods()
        .patch_status(
            "b",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "phase": "Succeeded" } })),
        )
        .await
        .expect("complete b");
    wait_assignments(&k, "b's GPU is released", |m| {
        !m.contains_key(&key(&env, "b"))
    })
    .await;
    bound_pod(&env, "e", &node, 1).await;
    wait_phase(&env, "e", "Running").await;
    let want = BTreeMap::from([
        (key(&env, "cpu"), vec![]),
        (key(&env, "d"), gpus(&["GPU-a"])),
        (key(&env, "e"), gpus(&["GPU-b"])),
    ]);
    assert_eq!(k.assignments(), want);
    assert_eq!(listed(&socket).await, want);
    // The refused pod stayed refused; the completed one was not restarted.
    assert_eq!(phase(&env.pods().get("c").await.expect("get")), "Failed");
    assert_eq!(phase(&env.pods().get("b").await.expect("get")), "Succeeded");

    drop(k);
    assert!(
        !socket.exists(),
        "the socket is removed when the kubelet stops"
    );
    env.cleanup().await;
}

/// The API server keeps a deleted pod that is bound to a node (grace period 30 s here) until
/// that node's kubelet deletes it with grace period 0; the simulated kubelet does, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubelet_finishes_the_graceful_deletion_of_its_pods() {
    let env = TestEnv::new("kubelet-graceful").await;
    let node = env.node_name("n1");
    env.create_node(&node, json!({})).await;
    let k = kubelet::spawn(
        env.client.clone(),
        KubeletConfig {
            node: node.clone(),
            gpus: gpus(&["GPU-a"]),
            ..Default::default()
        },
    )
    .expect("spawn kubelet");
    bound_pod(&env, "a", &node, 1).await;
    wait_phase(&env, "a", "Running").await;
    // A bound pod on a node without a kubelet stays, marked for deletion.
    let elsewhere = env.node_name("n2");
    pod_on(&env, "stuck", &elsewhere, 0).await;
    for name in ["a", "stuck"] {
        env.pods()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    wait_until(T, "a is gone", || async {
        env.pods().get_opt("a").await.expect("get").is_none()
    })
    .await;
    assert!(k.assignments().is_empty());
    let stuck = env.pods().get("stuck").await.expect("still there");
    assert_eq!(stuck.metadata.deletion_grace_period_seconds, Some(30));
    env.pods()
        .delete("stuck", &DeleteParams::default().grace_period(0))
        .await
        .expect("force delete");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservation_pods_are_annotated_with_their_gpu_after_the_admit_delay() {
    let env = TestEnv::new("kubelet-reserve").await;
    let node = env.node_name("n1");
    env.create_node(&node, json!({})).await;
    let admit_delay = Duration::from_millis(500);
    let k = kubelet::spawn(
        env.client.clone(),
        KubeletConfig {
            node: node.clone(),
            gpus: gpus(&["GPU-x", "GPU-y", "GPU-z"]),
            admit_delay,
            reservation_namespace: Some(env.namespace.clone()),
            annotate_delay: Duration::from_millis(50),
            ..Default::default()
        },
    )
    .expect("spawn kubelet");

    let created = tokio::time::Instant::now();
    pod_on(&env, "two", &node, 2).await;
    let early = env.pods().get("two").await.expect("get");
    if created.elapsed() < admit_delay {
        assert_eq!(phase(&early), "Pending", "admitted before admit_delay");
    }
    pod_on(&env, "cpu", &node, 0).await;
    pod_on(&env, "reservation", &node, 1).await;
    let r = wait_pod(&env, "reservation", "annotated", |p| {
        p.annotations().contains_key(RESERVED)
    })
    .await;
    assert_eq!(phase(&r), "Running");
    // The GPU the kubelet gave it. Which one that is depends on the admission order: the
    // pods in creation order when the kubelet's watch saw them being created, by name when
    // its first list found them all (a busy real cluster).
    let assigned = k.assignments();
    assert_eq!(
        assigned.get(&format!("{}/reservation", env.namespace)),
        Some(&vec![r.annotations()[RESERVED].clone()]),
        "{assigned:?}"
    );
    // Only pods with exactly one GPU are reservation pods; theirs would have come first.
    for name in ["two", "cpu"] {
        let p = wait_phase(&env, name, "Running").await;
        assert!(
            !p.annotations().contains_key(RESERVED),
            "{name}: {:?}",
            p.annotations()
        );
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_restart_forgets_deleted_pods_and_admits_nobody_twice() {
    let env = TestEnv::new("kubelet-rewatch").await;
    let Some(sim) = env.sim_or_skip("a_watch_restart_forgets_deleted_pods") else {
        return;
    };
    let faults = sim.faults();
    let node = env.node_name("n1");
    env.create_node(&node, json!({})).await;
    let k = kubelet::spawn(
        env.client.clone(),
        KubeletConfig {
            node: node.clone(),
            gpus: gpus(&["g0", "g1", "g2"]),
            ..Default::default()
        },
    )
    .expect("spawn kubelet");
    pod_on(&env, "a", &node, 1).await;
    let a = wait_phase(&env, "a", "Running").await;
    pod_on(&env, "b", &node, 1).await;
    wait_phase(&env, "b", "Running").await;

    // The watch breaks and cannot come back while b is deleted; then the history is gone,
    // so the kubelet must relist to notice.
    faults.add_rule(FaultRule::always("watch", "pods", 500));
    faults.add_rule(FaultRule::always("list", "pods", 500));
    faults.drop_watches();
    env.pods()
        .delete("b", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete b");
    faults.compact();
    tokio::time::sleep(Duration::from_millis(100)).await;
    faults.clear();

    wait_assignments(&k, "b is forgotten after the relist", |m| {
        !m.contains_key(&key(&env, "b"))
    })
    .await;

    assert_eq!(k.assignments()[&key(&env, "a")], gpus(&["g0"]));
    pod_on(&env, "c", &node, 1).await;
    wait_phase(&env, "c", "Running").await;
    assert_eq!(k.assignments()[&key(&env, "c")], gpus(&["g1"]));
    // a was not admitted again: its status was never rewritten.
    let a_now = env.pods().get("a").await.expect("get");
    assert_eq!(a_now.resource_version(), a.resource_version());
    drop(k);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_kubelet_keeps_running_pods_without_admitting_them_again() {
    let env = TestEnv::new("kubelet-restart").await;
    let node = env.node_name("n1");
    env.create_node(&node, json!({})).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = KubeletConfig {
        node: node.clone(),
        gpus: gpus(&["g0", "g1"]),
        socket: Some(dir.path().join("kubelet.sock")),
        ..Default::default()
    };
    let first = kubelet::spawn(env.client.clone(), cfg.clone()).expect("spawn kubelet");
    pod_on(&env, "a", &node, 1).await;
    let a = wait_phase(&env, "a", "Running").await;
    drop(first);

    // A stale socket file (a crashed kubelet's) does not stop the new one from serving.
    let stale = std::os::unix::net::UnixListener::bind(dir.path().join("kubelet.sock"))
        .expect("stale socket");
    drop(stale);
    let second = kubelet::spawn(env.client.clone(), cfg).expect("respawn kubelet");
    let socket = second.socket_path().expect("socket").to_path_buf();
    wait_assignments(&second, "the running pod is known again", |m| {
        m.contains_key(&key(&env, "a"))
    })
    .await;
    // Its device is unknown to the new instance (no checkpoint): it holds nothing here.
    let want = BTreeMap::from([(key(&env, "a"), vec![])]);
    assert_eq!(second.assignments(), want);
    assert_eq!(listed(&socket).await, want);
    let a_now = env.pods().get("a").await.expect("get");
    assert_eq!(
        a_now.resource_version(),
        a.resource_version(),
        "admitted twice"
    );
    assert_eq!(phase(&a_now), "Running");
    drop(second);
    env.cleanup().await;
}
