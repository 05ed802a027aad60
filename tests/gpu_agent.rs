//! The agent with GPU verification, end to end: GPUs described by a file (the same
//! backend `bindlet demo` uses), requests that bind on healthy free GPUs and end Failed
//! with the right reason on unhealthy, fully used or unavailable ones.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use bindlet::api::{Phase, VerdictOutcome};
use common::{TestEnv, reason};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::json;

const GIB_MIB: u64 = 1024;

fn inventory(dir: &tempfile::TempDir, yaml: &str) -> PathBuf {
    let p = dir.path().join("gpus.yaml");
    std::fs::write(&p, yaml).expect("write inventory");
    p
}

async fn gpu_pod(env: &TestEnv, name: &str, node: &str, gpus: u32, count: u32) {
    env.whole_gpu_pod(name, node, gpus, count).await;
}

async fn start(env: &TestEnv, node: &str, file: PathBuf) -> bindlet::agent::AgentHandle {
    env.create_node(node, json!({})).await;
    let mut cfg = env.agent_config(node);
    cfg.plugins.gpu.args.gpu_inventory_file = Some(file);
    env.start_agent(cfg).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_gpus_bind_while_free_and_healthy_then_fail_with_the_reason() {
    let env = TestEnv::new("gpu-whole").await;
    let node = env.node_name("n1");
    let dir = tempfile::tempdir().expect("tempdir");
    // Three GPUs, one fallen off the bus: two usable.
    let file = inventory(
        &dir,
        "gpus:\n  - { uuid: GPU-a }\n  - { uuid: GPU-b, lost: fallen off the bus }\n  - { uuid: GPU-c }\n",
    );
    let agent = start(&env, &node, file).await;

    gpu_pod(&env, "two", &node, 2, 2).await;
    let br = env.wait_phase("two", Phase::Succeeded).await;
    assert_eq!(env.pod_node("two").await.as_deref(), Some(node.as_str()));
    let v = env.verification(&agent, &br);
    let whole = v
        .verdicts
        .iter()
        .find(|v| v.plugin == "gpu" && v.check == "whole-gpus")
        .expect("gpu verdict recorded");
    assert_eq!(whole.outcome, VerdictOutcome::Pass);
    assert!(
        whole.message.contains("3 GPU(s), 2 healthy, 0 held"),
        "{}",
        whole.message
    );

    // Both healthy GPUs are now held by "two": one more is refused, naming the numbers.
    gpu_pod(&env, "three", &node, 1, 1).await;
    let br = env.wait_phase("three", Phase::Failed).await;
    let r = reason(&br);
    assert!(r.starts_with("gpu: needs 1 whole GPU(s)"), "{r}");
    assert!(r.contains("2 healthy, 2 held by 1 pod(s)"), "{r}");
    assert!(
        r.contains("GPU-b") && r.contains("fallen off the bus"),
        "{r}"
    );
    assert_eq!(env.pod_node("three").await, None, "not bound");
    let evs = env
        .wait_events("BindRequest", "three", "NodeRefused", 1)
        .await;
    assert!(
        evs.iter()
            .any(|e| e.reason.as_deref() == Some("NodeRefused")),
        "{evs:?}"
    );

    // The unhealthy GPU was reported on the Node (events of cluster-scoped objects live in
    // "default").
    let events: Api<Event> = Api::namespaced(env.client.clone(), "default");
    let seen = common::poll(Duration::from_secs(10), || async {
        events.list(&ListParams::default()).await.is_ok_and(|l| {
            l.items.iter().any(|e| {
                e.reason.as_deref() == Some("GpuUnhealthy")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(node.as_str())
                    && e.note.as_deref().unwrap_or("").contains("GPU-b")
            })
        })
    })
    .await;
    assert!(seen, "a GpuUnhealthy Event on the Node names GPU-b");

    // A plain pod is not affected by GPU state.
    env.pod_and_request("plain", &node).await;
    env.wait_phase("plain", Phase::Succeeded).await;

    agent.stop().await.expect("stop");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_mismatch_and_unavailable_inventory_fail_clearly() {
    let env = TestEnv::new("gpu-invalid").await;
    let node = env.node_name("n1");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = inventory(&dir, "unavailable: \"NVML: driver not loaded\"\n");
    let agent = start(&env, &node, file.clone()).await;

    gpu_pod(&env, "mismatch", &node, 1, 2).await;
    let r = reason(&env.wait_phase("mismatch", Phase::Failed).await);
    assert!(
        r.contains("receivedGPU.count is 2 but the pod's nvidia.com/gpu limits add up to 1"),
        "{r}"
    );

    gpu_pod(&env, "nodriver", &node, 1, 1).await;
    let r = reason(&env.wait_phase("nodriver", Phase::Failed).await);
    assert!(
        r.contains("GPU inventory unavailable") && r.contains("driver not loaded"),
        "{r}"
    );

    // The driver is back: the same kind of request binds (the file is read per probe).
    std::fs::write(&file, "gpus:\n  - { uuid: GPU-a }\n").expect("write");
    gpu_pod(&env, "driverback", &node, 1, 1).await;
    env.wait_phase("driverback", Phase::Succeeded).await;

    env.pod_and_request("plain", &node).await;
    env.wait_phase("plain", Phase::Succeeded).await;
    agent.stop().await.expect("stop");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fractions_resolve_reserved_gpus_and_count_driver_reserved_memory() {
    let env = TestEnv::new("gpu-fraction").await;
    let node = env.node_name("n1");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = inventory(
        &dir,
        &format!(
            "gpus:\n  - {{ uuid: GPU-ok, memoryTotalMiB: {t}, memoryUsedMiB: {u}, memoryReservedMiB: {r} }}\n  - {{ uuid: GPU-bad, remappedRowsFailed: true }}\n",
            t = 80 * GIB_MIB,
            u = 40 * GIB_MIB,
            r = GIB_MIB
        ),
    );
    let agent = start(&env, &node, file).await;

    // KAI's reservation pods, bound to this node, name each group's GPU.
    for (group, uuid) in [("g-ok", "GPU-ok"), ("g-bad", "GPU-bad")] {
        let name = format!("reservation-{group}");
        env.create_pod(
            &name,
            json!({ "nodeName": node, "containers": [ { "name": "r", "image": "registry.k8s.io/pause:3.10" } ] }),
        )
        .await;
        env.pods()
            .patch(
                &name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({ "metadata": {
                    "labels": { "runai-gpu-group": group, "app": "kai-resource-reservation" },
                    "annotations": { "run.ai/reserve_for_gpu_index": uuid }
                }})),
            )
            .await
            .expect("label reservation pod");
    }
    let fraction = |portion: &str, group: &str| json!({ "receivedResourceType": "Fraction", "receivedGPU": { "count": 1, "portion": portion }, "selectedGPUGroups": [group] });
    let share = |name: &'static str, portion: &'static str, group: &'static str| {
        let env = &env;
        let node = &node;
        async move {
            let pod = env.create_pod(name, json!({})).await;
            env.pods()
                .patch(
                    name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(json!({ "metadata": { "annotations": {
                        "runai/shared-gpu-configmap": format!("{name}-shared-gpu")
                    }}})),
                )
                .await
                .expect("annotate");
            let mut spec = fraction(portion, group);
            spec["backoffLimit"] = json!(1);
            env.create_request(name, node, pod.metadata.uid.as_deref(), spec)
                .await;
        }
    };
    share("first", "0.45", "g-ok").await;
    env.wait_phase("first", Phase::Succeeded).await;
    // 0.45 + 0.55 is the whole 80 GiB, but the driver keeps 1 GiB of it.
    share("too-much", "0.55", "g-ok").await;
    let r = reason(&env.wait_phase("too-much", Phase::Failed).await);
    assert!(
        r.contains("group g-ok on GPU 0 (GPU-ok)")
            && r.contains("1 other pod(s) hold 36864 MiB")
            && r.contains("driver-reserved 1024 MiB"),
        "{r}"
    );
    // One attempt: a failed attempt removes the group's reservation when no other pod uses
    // it (as KAI's binder does), and the next attempt would reserve another GPU.
    share("on-bad", "0.1", "g-bad").await;
    let r = reason(&env.wait_phase("on-bad", Phase::Failed).await);
    assert!(
        r.contains("GPU-bad") && r.contains("unhealthy") && r.contains("row remapping failed"),
        "{r}"
    );
    agent.stop().await.expect("stop");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inventory_feeds_readiness_debug_state_and_gpu_metrics() {
    use std::sync::Arc;
    let env = TestEnv::new("gpu-diag").await;
    let node = env.node_name("n1");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = inventory(
        &dir,
        "gpus:\n  - { uuid: GPU-a }\n  - { uuid: GPU-b, lost: fallen off the bus }\n",
    );
    env.create_node(&node, json!({})).await;
    let mut cfg = env.agent_config(&node);
    cfg.plugins.gpu.args.gpu_inventory_file = Some(file);
    let stats = Arc::new(bindlet::agent::Stats::with_recorder(Arc::new(
        bindlet::diag::Recorder::new(16),
    )));
    let agent = bindlet::agent::spawn_with_stats(env.client.clone(), cfg, stats.clone());
    common::wait_until(Duration::from_secs(20), "agent leads", || async {
        stats.is_leading() && stats.is_synced()
    })
    .await;
    // Without any GPU bind, the start-up probe alone makes the inventory known.
    let mut state = serde_json::Value::Null;
    common::wait_until(Duration::from_secs(10), "GPUs in the debug state", || {
        state = serde_json::to_value(stats.diag.debug_state(&stats)).unwrap_or_default();
        let loaded = state.pointer("/gpus/state").and_then(|s| s.as_str()) == Some("loaded");
        async move { loaded }
    })
    .await;
    let devices = state
        .pointer("/gpus/devices")
        .and_then(|d| d.as_array())
        .cloned()
        .unwrap_or_default();
    let health: Vec<(String, bool)> = devices
        .iter()
        .map(|d| {
            (
                d["uuid"].as_str().unwrap_or("").to_string(),
                d["healthy"].as_bool().unwrap_or(true),
            )
        })
        .collect();
    assert_eq!(
        health,
        [("GPU-a".to_string(), true), ("GPU-b".to_string(), false)],
        "{state}"
    );
    let metrics = stats.diag.encode_metrics(&stats);
    assert!(metrics.contains("bindlet_gpu_healthy{"), "{metrics}");
    agent.stop().await.expect("stop");
    env.cleanup().await;
}

/// KAI's scheduler sends `receivedResourceType: MigInstance` for pods that ask for MIG
/// devices; KAI's binder binds them like any non-shared pod, and so does bindlet, saying
/// that it did not verify the MIG instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mig_pod_binds_with_the_mig_check_skipped() {
    let env = TestEnv::new("gpu-mig").await;
    let node = env.node_name("n1");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = inventory(&dir, "gpus:\n  - { uuid: GPU-a }\n");
    let agent = start(&env, &node, file).await;

    let spec = json!({ "containers": [{
        "name": "main",
        "image": "registry.k8s.io/pause:3.10",
        "resources": { "limits": { "nvidia.com/mig-1g.10gb": "1" } }
    }]});
    let pod = env.create_pod("mig", spec).await;
    env.create_request(
        "mig",
        &node,
        pod.metadata.uid.as_deref(),
        json!({ "receivedResourceType": "MigInstance", "receivedGPU": { "count": 1, "portion": "0.00" } }),
    )
    .await;
    let br = env.wait_phase("mig", Phase::Succeeded).await;
    assert_eq!(env.pod_node("mig").await.as_deref(), Some(node.as_str()));
    let v = env.verification(&agent, &br);
    let mig = v
        .verdicts
        .iter()
        .find(|v| v.plugin == "gpu" && v.check == "mig")
        .expect("mig verdict recorded");
    assert_eq!(mig.outcome, VerdictOutcome::Skip, "{}", mig.message);

    agent.stop().await.expect("stop");
    env.cleanup().await;
}
