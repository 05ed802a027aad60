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
    // On a real server a bound pod's deletion is graceful: it is gone once the kubelet
    // has finished it, a moment after it stopped counting as a reservation.
    let name = pending_res.metadata.name.clone().unwrap_or_default();
    wait_until(
        Duration::from_secs(10),
        "g6 reservation pod gone",
        || async { s.env.pods().get_opt(&name).await.expect("get").is_none() },
    )
    .await;
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

/// What KAI's admission webhook does to a fractional pod
/// (`pkg/admission/webhook/v1alpha2/gpusharing/gpu_sharing.go` with
/// `pkg/binder/common/gpu_access.go`, `env_vars.go`, `volumes.go`): the container named by
/// `gpu-fraction-container-name` (else the first) reads NVIDIA_VISIBLE_DEVICES,
/// RUNAI_NUM_OF_GPUS and GPU_PORTION from the capabilities map `<prefix>-<index>`
/// (`-i<index>` for an init container) through non-optional configMapKeyRefs, the env map
/// `<prefix>-<index>-evar` through a non-optional envFrom, and the capabilities map is
/// mounted as a volume. Written from those rules for this test.
fn kai_webhook_wiring(spec: &mut Value, prefix: &str, container: &str) -> String {
    let mut target = None;
    for (list, init) in [("initContainers", true), ("containers", false)] {
        for (i, c) in spec[list].as_array_mut().into_iter().flatten().enumerate() {
            if c["name"] == container && target.is_none() {
                let cap = if init {
                    format!("{prefix}-i{i}")
                } else {
                    format!("{prefix}-{i}")
                };
                let key_ref = |key: &str| json!({ "name": key, "valueFrom": { "configMapKeyRef": { "name": cap, "key": key } } });
                c["env"] = json!([
                    key_ref("NVIDIA_VISIBLE_DEVICES"),
                    key_ref("RUNAI_NUM_OF_GPUS"),
                    key_ref("GPU_PORTION")
                ]);
                c["envFrom"] = json!([ { "configMapRef": { "name": format!("{cap}-evar"), "optional": false } } ]);
                target = Some(cap);
            }
        }
    }
    let cap = target.expect("the named container exists");
    spec["volumes"] = json!([ { "name": format!("{cap}-vol"), "configMap": { "name": cap } } ]);
    cap
}

/// Every ConfigMap reference of the pod that a kubelet could not resolve (it would not
/// start that container: `CreateContainerConfigError`), as `container: what`.
async fn unresolved_configmap_refs(s: &Setup, pod: &Pod) -> Vec<String> {
    let spec = pod.spec.clone().expect("spec");
    let mut missing = Vec::new();
    let containers = spec
        .init_containers
        .clone()
        .unwrap_or_default()
        .into_iter()
        .chain(spec.containers.clone());
    for c in containers {
        for e in c.env.iter().flatten() {
            let Some(r) = e
                .value_from
                .as_ref()
                .and_then(|v| v.config_map_key_ref.as_ref())
            else {
                continue;
            };
            if r.optional == Some(true) {
                continue;
            }
            let data = s
                .configmap(&r.name)
                .await
                .and_then(|cm| cm.data)
                .unwrap_or_default();
            if !data.contains_key(&r.key) {
                missing.push(format!("{}: key {} of ConfigMap {}", c.name, r.key, r.name));
            }
        }
        for f in c.env_from.iter().flatten() {
            if let Some(r) = &f.config_map_ref
                && r.optional != Some(true)
                && s.configmap(&r.name).await.is_none()
            {
                missing.push(format!("{}: envFrom ConfigMap {}", c.name, r.name));
            }
        }
    }
    for v in spec.volumes.iter().flatten() {
        if let Some(cm) = &v.config_map
            && cm.optional != Some(true)
            && s.configmap(&cm.name).await.is_none()
        {
            missing.push(format!("volume {}: ConfigMap {}", v.name, cm.name));
        }
    }
    missing
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmaps_match_kai_s_webhook_for_a_multi_container_pod_with_an_init_container() {
    let s = setup("share-kai-wiring", 1, true, |_| {}).await;
    // name, container that gets the share, its capabilities map
    let cases = [
        ("mc", "trainer", "mc-x1y2z3a-shared-gpu-1"),
        ("mi", "warmup", "mi-x1y2z3a-shared-gpu-i1"),
    ];
    for (name, container, want_cap) in cases {
        let prefix = format!("{name}-x1y2z3a-shared-gpu");
        let image = "registry.k8s.io/pause:3.10";
        let mut spec = json!({
            "initContainers": [ { "name": "setup", "image": image }, { "name": "warmup", "image": image } ],
            "containers": [ { "name": "main", "image": image }, { "name": "trainer", "image": image } ]
        });
        let cap = kai_webhook_wiring(&mut spec, &prefix, container);
        assert_eq!(cap, want_cap);
        let pod = s.env.create_pod(name, spec).await;
        s.env
            .pods()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "annotations": {
                    "runai/shared-gpu-configmap": prefix,
                    "gpu-fraction-container-name": container,
                    "gpu-fraction": "0.25"
                }}})),
            )
            .await
            .expect("annotate");
        s.env
            .create_request(
                name,
                &s.node,
                pod.metadata.uid.as_deref(),
                json!({
                    "receivedResourceType": "Fraction",
                    "receivedGPU": { "count": 1, "portion": "0.25" },
                    "selectedGPUGroups": ["g8"],
                    "backoffLimit": 1
                }),
            )
            .await;
        s.env.wait_phase(name, Phase::Succeeded).await;
        let bound = s.pod(name).await;
        let missing = unresolved_configmap_refs(&s, &bound).await;
        assert!(
            missing.is_empty(),
            "{name}: the container could not start: {missing:?}"
        );
        let data = s
            .configmap(&cap)
            .await
            .and_then(|c| c.data)
            .unwrap_or_default();
        assert_eq!(
            data.get("GPU_PORTION").map(String::as_str),
            Some("0.25"),
            "{name}"
        );
        assert_eq!(
            data.get("RUNAI_NUM_OF_GPUS").map(String::as_str),
            Some("0.25"),
            "{name}"
        );
        assert!(
            data.get("NVIDIA_VISIBLE_DEVICES")
                .is_some_and(|d| d.starts_with("GPU-")),
            "{name}: {data:?}"
        );
        assert!(
            s.configmap(&format!("{prefix}-0")).await.is_none(),
            "{name}: no map for a container that does not get the share"
        );
    }
    s.finish().await;
}

/// `gpu-reservation-` and the first 16 hex digits of SHA-256 of `<node>/<group>`, computed
/// here independently of the agent.
fn kai_reservation_name(node: &str, group: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, format!("{node}/{group}").as_bytes());
    let hex: String = d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("gpu-reservation-{hex}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservation_pods_have_kai_s_names_and_the_pod_s_tolerations() {
    let s = setup("share-kai-names", 2, true, |_| {}).await;
    s.fraction(
        "tol",
        "0.5",
        &["g9"],
        json!({ "tolerations": [
            { "key": "node.kubernetes.io/not-ready", "operator": "Exists" },
            { "key": "node.kubernetes.io/unreachable", "operator": "Exists" },
            { "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule" }
        ] }),
    )
    .await;
    s.env.wait_phase("tol", Phase::Succeeded).await;
    let res = s.reservations("g9").await;
    assert_eq!(res.len(), 1);
    assert_eq!(
        res[0].metadata.name.as_deref(),
        Some(kai_reservation_name(&s.node, "g9").as_str())
    );
    let pod_tolerations = s.pod("tol").await.spec.and_then(|s| s.tolerations);
    assert!(pod_tolerations.as_ref().is_some_and(|t| t.len() == 3));
    assert_eq!(
        res[0].spec.as_ref().and_then(|s| s.tolerations.clone()),
        pod_tolerations,
        "the fractional pod's tolerations, as KAI copies them"
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_pod_another_binder_created_meanwhile_is_reused() {
    let s = setup("share-kai-exists", 2, true, |_| {}).await;
    // KAI's binder made the group's reservation pod after this agent looked (here: a pod
    // of KAI's name that the agent's lookup does not list, having no app label).
    let name = kai_reservation_name(&s.node, "g10");
    let theirs: Pod = serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": s.env.namespace, "labels": { "runai-gpu-group": "g10" } },
        "spec": {
            "nodeName": s.node,
            "serviceAccountName": common::RESERVATION_SERVICE_ACCOUNT,
            "tolerations": [ { "operator": "Exists" } ],
            "containers": [ { "name": "resource-reservation", "image": "registry.k8s.io/pause:3.10",
                "resources": { "limits": { "nvidia.com/gpu": "1" } } } ]
        }
    }))
    .expect("pod");
    let theirs = s
        .env
        .pods()
        .create(&Default::default(), &theirs)
        .await
        .expect("create");
    s.fraction("late", "0.5", &["g10"], json!({})).await;
    let br = s.env.wait_phase("late", Phase::Succeeded).await;
    let now = s.env.pods().get(&name).await.expect("still there");
    assert_eq!(
        now.metadata.uid, theirs.metadata.uid,
        "reused, not replaced"
    );
    let key = format!("{}/{name}", s.env.namespace);
    let gpu = s
        .kubelet
        .assignments()
        .get(&key)
        .and_then(|d| d.first().cloned());
    assert!(gpu.is_some());
    assert_eq!(
        s.visible_devices("late").await,
        gpu,
        "the pod shares that GPU"
    );
    assert!(
        s.reservations("g10").await.is_empty(),
        "no second reservation pod"
    );
    let verdicts = s.env.verification(&s.agent, &br).verdicts;
    assert!(
        verdicts
            .iter()
            .any(|v| v.message.contains("created meanwhile by another binder")),
        "{verdicts:?}"
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hamicore_memory_limit_comes_from_the_measured_gpu() {
    let s = setup("share-hamicore", 1, true, |cfg| {
        cfg.plugins.sharing.args.hamicore = true;
    })
    .await;
    // What KAI would use: the nominal 80 GiB of the label.
    s.env
        .patch_node(
            &s.node,
            json!({ "metadata": { "labels": { "nvidia.com/gpu.memory": "81920" } } }),
        )
        .await;
    s.fraction("hc", "0.5", &["g11"], json!({})).await;
    let br = s.env.wait_phase("hc", Phase::Succeeded).await;
    let data = s
        .configmap("hc-abcdefg-shared-gpu-0")
        .await
        .and_then(|c| c.data)
        .unwrap_or_default();
    // (81920 MiB − 512 MiB the driver reserves) × 0.5, where KAI writes 40960m.
    assert_eq!(
        data.get("CUDA_DEVICE_MEMORY_LIMIT").map(String::as_str),
        Some("40704m")
    );
    let verdicts = s.env.verification(&s.agent, &br).verdicts;
    assert!(
        verdicts.iter().any(|v| v.check == "hamicore"
            && v.message.contains("measured on")
            && v.message.contains("81408 MiB")),
        "{verdicts:?}"
    );
    s.finish().await;
}
