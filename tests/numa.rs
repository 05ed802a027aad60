//! KAI's predicted NUMA placement checked on the node, and the observed placement
//! published after admission: a node with two NUMA zones of two GPUs each (a sysfs tree
//! and a GPU file), a simulated kubelet that reports each GPU's NUMA node, and the agent.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use bindlet::api::{Phase, VerdictOutcome};
use bindlet::plugins::CheckMode;
use bindlet::sim::kubelet::{self, KubeletConfig};
use common::{TestEnv, reason};
use serde_json::{Value, json};

const OBSERVED: &str = "kai.scheduler/numa-placement-observed";

/// GPU UUID, NVML bus id, NUMA node.
const GPUS: [(&str, &str, i64); 4] = [
    ("GPU-0", "00000000:1A:00.0", 0),
    ("GPU-1", "00000000:1B:00.0", 0),
    ("GPU-2", "00000000:9A:00.0", 1),
    ("GPU-3", "00000000:9B:00.0", 1),
];

struct Setup {
    env: TestEnv,
    node: String,
    agent: bindlet::agent::AgentHandle,
    _kubelet: kubelet::Kubelet,
    _dir: tempfile::TempDir,
}

async fn setup(test: &str, mode: CheckMode) -> Setup {
    let env = TestEnv::new(test).await;
    let node = env.node_name("n1");
    env.create_node(&node, json!({})).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sysfs = dir.path().join("sys");
    bindlet::numa::sysfs::write_fake(
        &sysfs,
        &[(0, "0-7", 64 << 20), (1, "8-15", 64 << 20)],
        &GPUS.map(|(_, bus, n)| (bus, n)),
    )
    .expect("sysfs");
    let mut yaml = String::from("gpus:\n");
    for (uuid, bus, _) in GPUS {
        yaml.push_str(&format!("  - {{ uuid: {uuid}, pciBusId: \"{bus}\" }}\n"));
    }
    let file: PathBuf = dir.path().join("gpus.yaml");
    std::fs::write(&file, yaml).expect("write inventory");
    let sock = dir.path().join("kubelet.sock");
    let kubelet = kubelet::spawn(
        env.client.clone(),
        KubeletConfig {
            node: node.clone(),
            gpus: GPUS.iter().map(|g| g.0.to_string()).collect(),
            socket: Some(sock.clone()),
            gpu_numa_nodes: GPUS.iter().map(|g| (g.0.to_string(), g.2)).collect(),
            ..Default::default()
        },
    )
    .expect("kubelet");
    let mut cfg = env.agent_config(&node);
    cfg.plugins.gpu.args.gpu_inventory_file = Some(file);
    cfg.plugins.gpu.args.kubelet_pod_resources_socket = Some(sock);
    cfg.plugins.numa.args.numa_checks = mode;
    cfg.plugins.numa.args.sysfs_root = sysfs;
    cfg.plugins.numa.args.publish_numa_placement = true;
    cfg.plugins.numa.args.numa_placement_period = Duration::from_millis(100);
    let agent = env.start_agent(cfg).await;
    Setup {
        env,
        node,
        agent,
        _kubelet: kubelet,
        _dir: dir,
    }
}

impl Setup {
    /// A pod asking for `gpus` whole GPUs and its request with this predicted placement.
    async fn gpu_pod(&self, name: &str, gpus: u32, predicted: Value) {
        let spec = json!({ "containers": [{
            "name": "main",
            "image": "registry.k8s.io/pause:3.10",
            "resources": { "limits": { "nvidia.com/gpu": gpus.to_string() } }
        }]});
        let pod = self.env.create_pod(name, spec).await;
        let mut request = json!({
            "receivedResourceType": "Regular",
            "receivedGPU": { "count": gpus, "portion": "1.00" },
            "backoffLimit": 1
        });
        if !predicted.is_null() {
            request["predictedNUMAZones"] = predicted;
        }
        self.env
            .create_request(name, &self.node, pod.metadata.uid.as_deref(), request)
            .await;
    }

    /// A one-GPU pod with this prediction, which must end Failed and unbound: the reason.
    async fn refused(&self, name: &str, predicted: Value) -> String {
        self.gpu_pod(name, 1, predicted).await;
        let br = self.env.wait_phase(name, Phase::Failed).await;
        assert_eq!(self.env.pod_node(name).await, None, "{name} not bound");
        reason(&br)
    }

    /// The numa plugin's verdict on a settled request.
    fn numa_verdict(&self, br: &bindlet::api::BindRequest) -> bindlet::api::Verdict {
        let v = self.env.verification(&self.agent, br);
        v.verdicts
            .into_iter()
            .find(|v| v.plugin == "numa")
            .expect("numa verdict recorded")
    }

    async fn observed(&self, name: &str) -> Option<String> {
        let pod = self.env.pods().get(name).await.expect("pod");
        pod.metadata.annotations?.get(OBSERVED).cloned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prediction_that_fits_binds_and_one_that_does_not_is_refused_with_figures() {
    let s = setup("numa-enforce", CheckMode::Enforce).await;

    // Zone node-1 has two free healthy GPUs: bound, with the figures in the verdict.
    s.gpu_pod(
        "fits",
        2,
        json!([{ "zone": "node-1", "amount": { "nvidia.com/gpu": 2 } }]),
    )
    .await;
    let br = s.env.wait_phase("fits", Phase::Succeeded).await;
    let numa = s.numa_verdict(&br);
    assert_eq!(numa.outcome, VerdictOutcome::Pass, "{}", numa.message);
    assert!(
        numa.message
            .contains("node-1 nvidia.com/gpu: predicted 2, free 2 of 2"),
        "{}",
        numa.message
    );

    // The simulated kubelet hands out GPU-0 and GPU-1 (zone node-0), not what was
    // predicted: the observed placement says so, in KAI's format.
    let seen = common::poll(Duration::from_secs(15), || async {
        s.observed("fits").await.is_some()
    })
    .await;
    assert!(seen, "the observed placement is published after admission");
    let observed = s.observed("fits").await;
    assert_eq!(
        observed.as_deref(),
        Some(r#"[{"zone":"node-0","amount":{"nvidia.com/gpu":"2"}}]"#)
    );

    // Zone node-0's GPUs are now held: a prediction of one there is refused, although
    // the node as a whole has two free GPUs.
    let r = s
        .refused(
            "crowded",
            json!([{ "zone": "node-0", "amount": { "nvidia.com/gpu": "1" } }]),
        )
        .await;
    assert!(
        r.starts_with("numa: predicted NUMA placement does not fit this node"),
        "{r}"
    );
    assert!(
        r.contains("node-0 nvidia.com/gpu: predicted 1, free 0 of 2"),
        "{r}"
    );

    // A zone the node does not have.
    let r = s
        .refused(
            "nowhere",
            json!([{ "zone": "node-7", "amount": { "cpu": "2" } }]),
        )
        .await;
    assert!(
        r.contains(
            "predicted NUMA zone(s) node-7 do not exist on this node (it has node-0, node-1)"
        ),
        "{r}"
    );

    // A request without a prediction is not affected.
    s.gpu_pod("plain", 1, Value::Null).await;
    s.env.wait_phase("plain", Phase::Succeeded).await;

    s.agent.stop().await.expect("stop");
    s.env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warn_mode_binds_a_mismatch_and_says_so() {
    let s = setup("numa-warn", CheckMode::Warn).await;
    s.gpu_pod(
        "too-many",
        1,
        json!([{ "zone": "node-0", "amount": { "cpu": "12" } }]),
    )
    .await;
    let br = s.env.wait_phase("too-many", Phase::Succeeded).await;
    assert!(s.env.pod_node("too-many").await.is_some(), "bound");
    let numa = s.numa_verdict(&br);
    assert_eq!(numa.outcome, VerdictOutcome::Warn);
    assert!(
        numa.message
            .contains("node-0 cpu: predicted 12, free 8 of 8"),
        "{}",
        numa.message
    );
    s.agent.stop().await.expect("stop");
    s.env.cleanup().await;
}
