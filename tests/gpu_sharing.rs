//! Fractional GPUs end to end (`gpu_sharing`): the agent, a simulated kubelet that admits
//! pods with device assignments and serves them on a pod-resources socket, and GPUs
//! described by a file. Reservation pods go to the test's namespace (see
//! `TestEnv::agent_config`).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bindlet::api::Phase;
use bindlet::sim::kubelet::{self, Kubelet, KubeletConfig};
use common::{TestEnv, reason, wait_until};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

const GIB_MIB: u64 = 1024;

struct Setup {
    env: TestEnv,
    node: String,
    kubelet: Kubelet,
    agent: bindlet::agent::AgentHandle,
    _dir: tempfile::TempDir,
}

/// A node with `gpus` healthy 80 GiB GPUs (GPU-0, GPU-1, ...), its simulated kubelet, and
/// an agent; `tune` adjusts the agent's settings.
async fn setup(
    test: &str,
    gpus: usize,
    socket: bool,
    tune: impl FnOnce(&mut bindlet::agent::AgentConfig),
) -> Setup {
    let env = TestEnv::new(test).await;
    let node = env.node_name("n1");
    env.create_node(&node, json!({})).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let uuids: Vec<String> = (0..gpus).map(|i| format!("GPU-{i}")).collect();
    let mut yaml = String::from("gpus:\n");
    for u in &uuids {
        yaml.push_str(&format!(
            "  - {{ uuid: {u}, memoryTotalMiB: {}, memoryReservedMiB: 512 }}\n",
            80 * GIB_MIB
        ));
    }
    let file: PathBuf = dir.path().join("gpus.yaml");
    std::fs::write(&file, yaml).expect("write inventory");
    let sock = dir.path().join("kubelet.sock");
    let kubelet = kubelet::spawn(
        env.client.clone(),
        KubeletConfig {
            node: node.clone(),
            gpus: uuids,
            socket: socket.then(|| sock.clone()),
            ..Default::default()
        },
    )
    .expect("kubelet");
    let mut cfg = env.agent_config(&node);
    cfg.plugins.gpu.args.gpu_inventory_file = Some(file);
    if socket {
        cfg.plugins.gpu.args.kubelet_pod_resources_socket = Some(sock);
    }
    cfg.plugins.sharing.args.reservation_timeout = Duration::from_secs(10);
    tune(&mut cfg);
    let agent = env.start_agent(cfg).await;
    Setup {
        env,
        node,
        kubelet,
        agent,
        _dir: dir,
    }
}

impl Setup {
    /// A fractional pod the way KAI's webhook leaves it, and its BindRequest.
    async fn fraction(&self, name: &str, portion: &str, groups: &[&str], extra: Value) {
        let pod = self.env.create_pod(name, extra).await;
        self.env
            .pods()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "annotations": {
                    "runai/shared-gpu-configmap": format!("{name}-abcdefg-shared-gpu")
                }}})),
            )
            .await
            .expect("annotate");
        self.env
            .create_request(
                name,
                &self.node,
                pod.metadata.uid.as_deref(),
                json!({
                    "receivedResourceType": "Fraction",
                    "receivedGPU": { "count": groups.len(), "portion": portion },
                    "selectedGPUGroups": groups,
                    "backoffLimit": 1
                }),
            )
            .await;
    }

    async fn pod(&self, name: &str) -> Pod {
        self.env.pods().get(name).await.expect("pod")
    }

    /// The reservation pods of `group` (in the test namespace, with KAI's labels).
    async fn reservations(&self, group: &str) -> Vec<Pod> {
        let lp = ListParams::default().labels(&format!(
            "app=kai-resource-reservation,runai-gpu-group={group}"
        ));
        self.env.pods().list(&lp).await.expect("list").items
    }

    async fn configmap(&self, name: &str) -> Option<ConfigMap> {
        let api: Api<ConfigMap> = Api::namespaced(self.env.client.clone(), &self.env.namespace);
        api.get_opt(name).await.expect("get configmap")
    }

    /// NVIDIA_VISIBLE_DEVICES as the pod would read it.
    async fn visible_devices(&self, name: &str) -> Option<String> {
        let cm = self
            .configmap(&format!("{name}-abcdefg-shared-gpu-0-evar"))
            .await?;
        cm.data?.get("NVIDIA_VISIBLE_DEVICES").cloned()
    }

    async fn finish(self) {
        self.agent.stop().await.expect("stop");
        drop(self.kubelet);
        self.env.cleanup().await;
    }
}

fn labels(p: &Pod) -> BTreeMap<String, String> {
    p.metadata.labels.clone().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fractions_share_a_reserved_gpu_until_it_is_full() {
    let s = setup("share-first", 2, true, |_| {}).await;

    // First fraction of a group: a reservation pod gets a GPU from the kubelet.
    s.fraction("a", "0.5", &["g1"], json!({})).await;
    let br = s.env.wait_phase("a", Phase::Succeeded).await;
    let res = s.reservations("g1").await;
    assert_eq!(res.len(), 1, "one reservation pod for the group");
    let r = &res[0];
    let spec = r.spec.as_ref().expect("spec");
    assert_eq!(spec.node_name.as_deref(), Some(s.node.as_str()));
    let limits = spec.containers[0]
        .resources
        .as_ref()
        .and_then(|r| r.limits.clone())
        .unwrap_or_default();
    assert_eq!(
        limits.get("nvidia.com/gpu").map(|q| q.0.as_str()),
        Some("1")
    );
    let key = format!(
        "{}/{}",
        s.env.namespace,
        r.metadata.name.as_deref().unwrap()
    );
    let gpu = s
        .kubelet
        .assignments()
        .get(&key)
        .and_then(|d| d.first().cloned());
    let gpu = gpu.expect("the kubelet assigned the reservation pod a GPU");
    assert_eq!(s.visible_devices("a").await.as_deref(), Some(gpu.as_str()));
    let a = s.pod("a").await;
    assert_eq!(
        labels(&a).get("runai-gpu-group").map(String::as_str),
        Some("g1")
    );
    assert_eq!(
        a.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some(s.node.as_str())
    );
    let cm = s
        .configmap("a-abcdefg-shared-gpu-0")
        .await
        .expect("capabilities map");
    let data = cm.data.clone().unwrap_or_default();
    assert_eq!(
        data.get("RUNAI_NUM_OF_GPUS").map(String::as_str),
        Some("0.5")
    );
    // GPU_PORTION where KAI's webhook wires it (a non-optional key of the capabilities map).
    assert_eq!(data.get("GPU_PORTION").map(String::as_str), Some("0.5"));
    let owner = &cm.metadata.owner_references.clone().unwrap_or_default()[0];
    assert_eq!(
        (owner.kind.as_str(), Some(owner.uid.as_str())),
        ("Pod", a.metadata.uid.as_deref())
    );
    let evar = s
        .configmap("a-abcdefg-shared-gpu-0-evar")
        .await
        .expect("env map");
    assert_eq!(
        evar.data.unwrap_or_default().keys().collect::<Vec<_>>(),
        ["NVIDIA_VISIBLE_DEVICES"],
        "the env map carries what the container does not read from the capabilities map"
    );
    let verdicts = s.env.verification(&s.agent, &br).verdicts;
    assert!(
        verdicts.iter().any(|v| v.plugin == "gpu_sharing"
            && v.message.contains("created by this bind")
            && v.message.contains("kubelet pod-resources")),
        "{verdicts:?}"
    );

    // A second fraction of the group shares the same GPU and reservation.
    s.fraction("b", "0.25", &["g1"], json!({})).await;
    s.env.wait_phase("b", Phase::Succeeded).await;
    assert_eq!(s.visible_devices("b").await.as_deref(), Some(gpu.as_str()));
    assert_eq!(s.reservations("g1").await.len(), 1);

    // 0.5 + 0.25 + 0.3 is more than the GPU less the driver's 512 MiB.
    s.fraction("c", "0.3", &["g1"], json!({})).await;
    let r = reason(&s.env.wait_phase("c", Phase::Failed).await);
    assert!(
        r.contains("2 other pod(s) hold 61440 MiB") && r.contains("portion 0.3 needs 24576 MiB"),
        "{r}"
    );
    let c = s.pod("c").await;
    assert!(
        !labels(&c).contains_key("runai-gpu-group"),
        "{:?}",
        labels(&c)
    );
    assert!(s.configmap("c-abcdefg-shared-gpu-0").await.is_none());
    assert_eq!(s.reservations("g1").await.len(), 1, "a and b still use it");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_binds_of_a_new_group_share_one_reservation() {
    let s = setup("share-race", 2, true, |_| {}).await;
    let (x, y) = tokio::join!(
        s.fraction("x", "0.25", &["g2"], json!({})),
        s.fraction("y", "0.25", &["g2"], json!({}))
    );
    let _ = (x, y);
    s.env.wait_phase("x", Phase::Succeeded).await;
    s.env.wait_phase("y", Phase::Succeeded).await;
    assert_eq!(s.reservations("g2").await.len(), 1);
    let (dx, dy) = (s.visible_devices("x").await, s.visible_devices("y").await);
    assert!(dx.is_some() && dx == dy, "{dx:?} {dy:?}");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_that_gets_no_gpu_times_out_and_is_removed() {
    // No socket and nothing writes the annotation: the GPU is never known.
    let s = setup("share-timeout", 1, false, |cfg| {
        cfg.plugins.sharing.args.reservation_timeout = Duration::from_millis(700);
    })
    .await;
    s.fraction("t", "0.5", &["g3"], json!({})).await;
    let r = reason(&s.env.wait_phase("t", Phase::Failed).await);
    assert!(r.contains("got no GPU within 700 ms"), "{r}");
    assert!(r.contains("no kubelet pod-resources socket"), "{r}");
    assert!(s.reservations("g3").await.is_empty(), "removed on rollback");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_failure_rolls_back_labels_configmaps_and_the_reservation() {
    let s = setup("share-rollback", 1, true, |_| {}).await;
    // The volumes plugin runs after gpu_sharing and refuses: the claim does not exist.
    s.fraction(
        "rb",
        "0.5",
        &["g4"],
        json!({ "volumes": [ { "name": "data", "persistentVolumeClaim": { "claimName": "missing" } } ] }),
    )
    .await;
    let r = reason(&s.env.wait_phase("rb", Phase::Failed).await);
    assert!(r.contains("missing"), "{r}");
    let p = s.pod("rb").await;
    assert!(
        !labels(&p).contains_key("runai-gpu-group"),
        "{:?}",
        labels(&p)
    );
    let annotations = p.metadata.annotations.clone().unwrap_or_default();
    assert!(
        !annotations.contains_key("bindlet.dev/gpu-portion"),
        "{annotations:?}"
    );
    assert!(s.configmap("rb-abcdefg-shared-gpu-0").await.is_none());
    assert!(s.configmap("rb-abcdefg-shared-gpu-0-evar").await.is_none());
    assert!(s.reservations("g4").await.is_empty());
    assert!(p.spec.and_then(|s| s.node_name).is_none(), "not bound");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_refuses_new_groups_without_creating_reservation_pods() {
    let s = setup("share-full", 1, true, |_| {}).await;
    // A whole-GPU pod already runs here.
    s.env
        .create_pod(
            "whole",
            json!({ "nodeName": s.node, "containers": [ { "name": "main", "image": "registry.k8s.io/pause:3.10",
                "resources": { "limits": { "nvidia.com/gpu": "1" } } } ] }),
        )
        .await;
    wait_until(Duration::from_secs(10), "whole pod admitted", || async {
        !s.kubelet.assignments().is_empty()
    })
    .await;
    s.fraction("f", "0.1", &["g5"], json!({})).await;
    let r = reason(&s.env.wait_phase("f", Phase::Failed).await);
    assert!(
        r.contains("needs a free GPU") && r.contains("0 free"),
        "{r}"
    );
    assert!(s.reservations("g5").await.is_empty(), "nothing was created");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_reservations_are_collected_but_not_those_a_pending_request_needs() {
    let s = setup("share-gc", 2, true, |cfg| {
        cfg.plugins.sharing.args.reservation_gc_interval = Duration::from_millis(200);
        cfg.plugins.sharing.args.reservation_gc_grace = Duration::ZERO;
    })
    .await;
    s.fraction("gc-a", "0.5", &["g6"], json!({})).await;
    s.env.wait_phase("gc-a", Phase::Succeeded).await;
    assert_eq!(s.reservations("g6").await.len(), 1);

    // A group whose BindRequest waits (its pod does not exist yet): its reservation stays.
    let pending_res = s.reservations("g6").await[0].clone();
    s.env
        .create_request(
            "later",
            &s.node,
            None,
            json!({ "receivedResourceType": "Fraction", "receivedGPU": { "count": 1, "portion": "0.5" },
                "selectedGPUGroups": ["g7"], "backoffLimit": 50 }),
        )
        .await;
    s.env
        .create_pod(
            "r-g7",
            json!({ "nodeName": s.node, "containers": [ { "name": "r", "image": "registry.k8s.io/pause:3.10",
                "resources": { "limits": { "nvidia.com/gpu": "1" } } } ] }),
        )
        .await;
    s.env
        .pods()
        .patch(
            "r-g7",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": {
                "app": "kai-resource-reservation", "runai-gpu-group": "g7" } } })),
        )
        .await
        .expect("label");

    // gc-a finishes: g6 is unused and goes; g7 is named by a pending request and stays.
    s.env
        .pods()
        .delete("gc-a", &DeleteParams::default())
        .await
        .expect("delete");
    wait_until(
        Duration::from_secs(10),
        "g6 reservation collected",
        || async { s.reservations("g6").await.is_empty() },
    )
    .await;
    let gone = s
        .env
        .pods()
        .get_opt(pending_res.metadata.name.as_deref().unwrap())
        .await
        .expect("get");
    assert!(gone.is_none());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        s.reservations("g7").await.len(),
        1,
        "the pending request's group stays"
    );

    // Once the request is gone, so is its reservation.
    s.env
        .bind_requests()
        .delete("later", &DeleteParams::default())
        .await
        .expect("delete request");
    wait_until(
        Duration::from_secs(10),
        "g7 reservation collected",
        || async { s.reservations("g7").await.is_empty() },
    )
    .await;
    s.finish().await;
}
