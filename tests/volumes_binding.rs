//! The volumes plugin end to end: static local PVs for WaitForFirstConsumer claims, racing
//! pods, dynamic provisioning and its timeout, rollback, and refusals that name what was
//! measured. Local PV paths are temporary directories on this machine, which is the node
//! filesystem of the in-process agent, so these run against a real cluster too (tests that
//! need the simulator say so and are skipped there).

mod common;

use std::time::Duration;

use bindlet::api::{BindRequest, Phase, VerdictOutcome};
use bindlet::sim::provisioner::{self, ProvisionerConfig};
use common::{TestEnv, reason};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};

const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

/// Test storage objects; cluster-scoped ones are deleted by [`Storage::cleanup`].
struct Storage<'a> {
    env: &'a TestEnv,
    pvs: std::sync::Mutex<Vec<String>>,
    classes: std::sync::Mutex<Vec<String>>,
}

impl<'a> Storage<'a> {
    fn new(env: &'a TestEnv) -> Self {
        Storage {
            env,
            pvs: Default::default(),
            classes: Default::default(),
        }
    }

    /// A uniquely named StorageClass (cluster-scoped names are shared on a real cluster).
    async fn class(&self, tag: &str, provisioner: &str, mode: &str) -> String {
        let name = format!("{}-{tag}", self.env.namespace);
        let sc: StorageClass = serde_json::from_value(json!({
            "metadata": { "name": name },
            "provisioner": provisioner,
            "volumeBindingMode": mode
        }))
        .expect("sc");
        Api::<StorageClass>::all(self.env.client.clone())
            .create(&PostParams::default(), &sc)
            .await
            .expect("create StorageClass");
        self.classes.lock().expect("lock").push(name.clone());
        name
    }

    async fn pv(&self, tag: &str, cap: &str, path: &str, node: &str, class: &str) -> String {
        let name = format!("{}-{tag}", self.env.namespace);
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": { "name": name },
            "spec": {
                "capacity": { "storage": cap },
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": class,
                "local": { "path": path },
                "nodeAffinity": { "required": { "nodeSelectorTerms": [
                    { "matchExpressions": [ { "key": "kubernetes.io/hostname", "operator": "In", "values": [node] } ] }
                ] } }
            }
        }))
        .expect("pv");
        Api::<PersistentVolume>::all(self.env.client.clone())
            .create(&PostParams::default(), &pv)
            .await
            .expect("create PV");
        self.pvs.lock().expect("lock").push(name.clone());
        name
    }

    async fn pvc(&self, name: &str, class: &str, request: &str) -> PersistentVolumeClaim {
        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": self.env.namespace },
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": class,
                "resources": { "requests": { "storage": request } }
            }
        }))
        .expect("pvc");
        self.claims()
            .create(&PostParams::default(), &pvc)
            .await
            .expect("create PVC")
    }

    fn claims(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.env.client.clone(), &self.env.namespace)
    }

    async fn get_pv(&self, name: &str) -> PersistentVolume {
        Api::<PersistentVolume>::all(self.env.client.clone())
            .get(name)
            .await
            .expect("get PV")
    }

    async fn get_pvc(&self, name: &str) -> PersistentVolumeClaim {
        self.claims().get(name).await.expect("get PVC")
    }

    async fn cleanup(self) {
        let pvs = Api::<PersistentVolume>::all(self.env.client.clone());
        let names = self.pvs.lock().map(|v| v.clone()).unwrap_or_default();
        for n in names {
            let _ = pvs.delete(&n, &DeleteParams::default()).await;
        }
        // Dynamically provisioned PVs of this namespace's claims.
        if let Ok(list) = pvs.list(&Default::default()).await {
            for pv in list.items {
                let ours = pv
                    .spec
                    .as_ref()
                    .and_then(|s| s.claim_ref.as_ref())
                    .is_some_and(|r| r.namespace.as_deref() == Some(self.env.namespace.as_str()));
                if ours && let Some(n) = pv.metadata.name {
                    let _ = pvs.delete(&n, &DeleteParams::default()).await;
                }
            }
        }
        let scs = Api::<StorageClass>::all(self.env.client.clone());
        let names = self.classes.lock().map(|v| v.clone()).unwrap_or_default();
        for n in names {
            let _ = scs.delete(&n, &DeleteParams::default()).await;
        }
    }
}

fn claim_ref_uid(pv: &PersistentVolume) -> Option<String> {
    pv.spec.as_ref()?.claim_ref.as_ref()?.uid.clone()
}

fn volume_name(pvc: &PersistentVolumeClaim) -> Option<String> {
    pvc.spec
        .as_ref()?
        .volume_name
        .clone()
        .filter(|v| !v.is_empty())
}

fn annotation(pvc: &PersistentVolumeClaim, key: &str) -> Option<String> {
    pvc.metadata.annotations.as_ref()?.get(key).cloned()
}

fn verdict_messages(
    env: &TestEnv,
    agent: &bindlet::agent::AgentHandle,
    br: &BindRequest,
    check: &str,
) -> Vec<(VerdictOutcome, String)> {
    env.verification(agent, br)
        .verdicts
        .iter()
        .filter(|v| v.plugin == "volumes" && v.check == check)
        .map(|v| (v.outcome, v.message.clone()))
        .collect()
}

/// A node labelled with its hostname (what local PV node affinity selects on).
async fn labelled_node(env: &TestEnv, suffix: &str) -> String {
    let node = env.node_name(suffix);
    env.create_node(&node, json!({})).await;
    env.patch_node(
        &node,
        json!({ "metadata": { "labels": { "kubernetes.io/hostname": node } } }),
    )
    .await;
    node
}

async fn pod_with_claims(env: &TestEnv, name: &str, claims: &[&str], backoff_limit: Option<i32>) {
    let volumes: Vec<Value> = claims
        .iter()
        .enumerate()
        .map(|(i, c)| json!({ "name": format!("vol{i}"), "persistentVolumeClaim": { "claimName": c } }))
        .collect();
    let pod = env.create_pod(name, json!({ "volumes": volumes })).await;
    let node = env.node_name("n1");
    let extra = match backoff_limit {
        Some(n) => json!({ "backoffLimit": n }),
        None => json!({}),
    };
    env.create_request(name, &node, pod.metadata.uid.as_deref(), extra)
        .await;
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn path(d: &tempfile::TempDir) -> String {
    d.path().to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_local_pv_is_reserved_checked_and_bound() {
    let env = TestEnv::new("vol-static").await;
    let st = Storage::new(&env);
    let node = labelled_node(&env, "n1").await;
    let other = labelled_node(&env, "n2").await;
    let class = st
        .class(
            "local",
            "kubernetes.io/no-provisioner",
            "WaitForFirstConsumer",
        )
        .await;
    let (small, fit, big, far) = (tempdir(), tempdir(), tempdir(), tempdir());
    st.pv("small", "512Ki", &path(&small), &node, &class).await;
    let fit_pv = st.pv("fit", "2Mi", &path(&fit), &node, &class).await;
    st.pv("big", "10Mi", &path(&big), &node, &class).await;
    st.pv("far", "1Mi", &path(&far), &other, &class).await;
    let pvc = st.pvc("data", &class, "1Mi").await;

    let agent = env.start_agent(env.agent_config(&node)).await;
    pod_with_claims(&env, "db-0", &["data"], None).await;
    let br = env.wait_phase("db-0", Phase::Succeeded).await;
    assert_eq!(env.pod_node("db-0").await.as_deref(), Some(node.as_str()));

    // The smallest fitting PV on this node, reserved for exactly this claim.
    let pv = st.get_pv(&fit_pv).await;
    assert_eq!(claim_ref_uid(&pv), pvc.metadata.uid);
    assert_eq!(
        volume_name(&st.get_pvc("data").await).as_deref(),
        Some(fit_pv.as_str())
    );
    let claim = verdict_messages(&env, &agent, &br, "claim");
    assert!(
        claim[0]
            .1
            .contains(&format!("reserved PersistentVolume {fit_pv} (2 MiB)")),
        "{claim:?}"
    );
    let space = verdict_messages(&env, &agent, &br, "free-space");
    assert_eq!(space.len(), 1, "{space:?}");
    assert_eq!(space[0].0, VerdictOutcome::Pass);
    assert!(
        space[0]
            .1
            .starts_with(&format!("volume vol0: {} has ", path(&fit)))
            && space[0].1.ends_with("free, the claim requests 1 MiB"),
        "{}",
        space[0].1
    );
    assert_eq!(
        verdict_messages(&env, &agent, &br, "writable")[0].0,
        VerdictOutcome::Pass
    );
    agent.stop().await.expect("stop");
    st.cleanup().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_pods_cost_no_storage_requests() {
    let env = TestEnv::new("vol-plain").await;
    let Some(sim) = env.sim_or_skip_because(
        "plain_pods_cost_no_storage_requests",
        "counts requests with the simulator's request counter",
    ) else {
        env.cleanup().await;
        return;
    };
    let node = labelled_node(&env, "n1").await;
    let agent = env.start_agent(env.agent_config(&node)).await;
    env.pod_and_request("plain", &node).await;
    env.wait_phase("plain", Phase::Succeeded).await;
    let counts = sim.request_count();
    for (verb, res) in counts.0.keys() {
        assert!(
            !res.starts_with("persistentvolume") && !res.starts_with("storageclasses"),
            "a plain pod made a storage request: {verb} {res}"
        );
    }
    agent.stop().await.expect("stop");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_racing_for_one_pv_get_one_binding() {
    let env = TestEnv::new("vol-race").await;
    let st = Storage::new(&env);
    let node = labelled_node(&env, "n1").await;
    let class = st
        .class(
            "local",
            "kubernetes.io/no-provisioner",
            "WaitForFirstConsumer",
        )
        .await;
    let d = tempdir();
    let only = st.pv("only", "1Mi", &path(&d), &node, &class).await;
    st.pvc("a", &class, "1Mi").await;
    st.pvc("b", &class, "1Mi").await;

    let agent = env.start_agent(env.agent_config(&node)).await;
    // Both requests at once: the agent works them concurrently.
    tokio::join!(
        pod_with_claims(&env, "pa", &["a"], Some(1)),
        pod_with_claims(&env, "pb", &["b"], Some(1))
    );
    let (ra, rb) = tokio::join!(settle(&env, "pa"), settle(&env, "pb"));
    let phases = [ra.phase(), rb.phase()];
    assert!(
        phases.contains(&Some(Phase::Succeeded)) && phases.contains(&Some(Phase::Failed)),
        "exactly one wins: {phases:?}"
    );
    let (winner, loser, loser_br) = if ra.phase() == Some(Phase::Succeeded) {
        ("a", "b", rb)
    } else {
        ("b", "a", ra)
    };
    assert!(
        reason(&loser_br).contains("no Available PersistentVolume"),
        "{}",
        reason(&loser_br)
    );
    let pv = st.get_pv(&only).await;
    assert_eq!(claim_ref_uid(&pv), st.get_pvc(winner).await.metadata.uid);
    assert_eq!(volume_name(&st.get_pvc(loser).await), None);
    agent.stop().await.expect("stop");
    st.cleanup().await;
    env.cleanup().await;
}

/// Waits until the request is Succeeded or has given up.
async fn settle(env: &TestEnv, name: &str) -> BindRequest {
    let start = tokio::time::Instant::now();
    loop {
        if let Some(br) = env.get_request(name).await
            && (br.phase() == Some(Phase::Succeeded) || bindlet::binding::is_settled(&br, 3))
        {
            return br;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{name} did not settle"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_provisioning_on_selected_node() {
    let env = TestEnv::new("vol-dynamic").await;
    let st = Storage::new(&env);
    let node = labelled_node(&env, "n1").await;
    let prov_name = format!("bindlet.test/{}", env.namespace);
    let class = st.class("dyn", &prov_name, "WaitForFirstConsumer").await;
    let base = tempdir();
    let _prov = provisioner::spawn(
        env.client.clone(),
        ProvisionerConfig {
            name: prov_name.clone(),
            base_dir: base.path().to_path_buf(),
            namespace: Some(env.namespace.clone()),
            delay: Duration::from_millis(200),
        },
    );
    st.pvc("scratch", &class, "1Mi").await;
    let agent = env.start_agent(env.agent_config(&node)).await;
    pod_with_claims(&env, "job-0", &["scratch"], None).await;
    let br = env.wait_phase("job-0", Phase::Succeeded).await;

    let pvc = st.get_pvc("scratch").await;
    assert_eq!(
        annotation(&pvc, SELECTED_NODE).as_deref(),
        Some(node.as_str())
    );
    let pv_name = volume_name(&pvc).expect("bound");
    let pv = st.get_pv(&pv_name).await;
    assert_eq!(claim_ref_uid(&pv), pvc.metadata.uid);
    let claim = verdict_messages(&env, &agent, &br, "claim");
    assert!(
        claim[0].1.contains(&format!(
            "was provisioned by {prov_name} as PersistentVolume {pv_name}"
        )),
        "{claim:?}"
    );
    assert_eq!(
        verdict_messages(&env, &agent, &br, "free-space")[0].0,
        VerdictOutcome::Pass
    );
    agent.stop().await.expect("stop");
    st.cleanup().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_timeout_fails_and_removes_the_annotation() {
    let env = TestEnv::new("vol-timeout").await;
    let st = Storage::new(&env);
    let node = labelled_node(&env, "n1").await;
    // Nobody serves this provisioner.
    let class = st
        .class("never", "bindlet.test/nobody", "WaitForFirstConsumer")
        .await;
    st.pvc("scratch", &class, "1Mi").await;
    let mut cfg = env.agent_config(&node);
    cfg.plugins.volumes.args.volume_binding_timeout = Duration::from_millis(600);
    let agent = env.start_agent(cfg).await;
    pod_with_claims(&env, "job-1", &["scratch"], Some(1)).await;

    // While waiting, the claim asks for this node.
    let claims = st.claims();
    common::wait_until(Duration::from_secs(10), "selected-node set", || async {
        claims
            .get("scratch")
            .await
            .ok()
            .and_then(|p| annotation(&p, SELECTED_NODE))
            == Some(node.clone())
    })
    .await;
    let br = env.wait_phase("job-1", Phase::Failed).await;
    assert!(
        reason(&br).contains("claim")
            && reason(&br).contains("was not provisioned by bindlet.test/nobody within 600ms"),
        "{}",
        reason(&br)
    );
    assert_eq!(env.pod_node("job-1").await, None);
    assert_eq!(
        annotation(&st.get_pvc("scratch").await, SELECTED_NODE),
        None,
        "rolled back"
    );
    agent.stop().await.expect("stop");
    st.cleanup().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_failures_release_reserved_pvs() {
    let env = TestEnv::new("vol-rollback").await;
    // On a real cluster the PV controller completes a reservation at once, after which a
    // claim's volumeName cannot be unset: rollback is only observable on the simulator.
    let Some(sim) = env.sim_or_skip_because(
        "later_failures_release_reserved_pvs",
        "the PV controller completes a reservation at once; rollback is observable only without it",
    ) else {
        env.cleanup().await;
        return;
    };
    let st = Storage::new(&env);
    let node = labelled_node(&env, "n1").await;
    let class = st
        .class(
            "local",
            "kubernetes.io/no-provisioner",
            "WaitForFirstConsumer",
        )
        .await;
    let (d1, d2) = (tempdir(), tempdir());
    let pv1 = st.pv("one", "1Mi", &path(&d1), &node, &class).await;
    st.pvc("first", &class, "1Mi").await;
    st.pvc("missing-pv", &class, "5Gi").await;
    st.pvc("too-big", &class, "800Ti").await;
    let agent = env.start_agent(env.agent_config(&node)).await;

    // 1. The second claim of the pod finds no PV: the first one's reservation is released.
    pod_with_claims(&env, "two", &["first", "missing-pv"], Some(1)).await;
    let br = env.wait_phase("two", Phase::Failed).await;
    assert!(
        reason(&br).contains("volume vol1: claim"),
        "{}",
        reason(&br)
    );
    assert!(
        reason(&br).contains("no Available PersistentVolume"),
        "{}",
        reason(&br)
    );
    assert_eq!(claim_ref_uid(&st.get_pv(&pv1).await), None, "released");

    // 2. The reserved PV's disk has less free space than the claim requests.
    let huge = st.pv("huge", "900Ti", &path(&d2), &node, &class).await;
    pod_with_claims(&env, "short", &["too-big"], Some(1)).await;
    let br = env.wait_phase("short", Phase::Failed).await;
    let r = reason(&br);
    assert!(
        r.contains(&format!("volume vol0: {} has ", path(&d2)))
            && r.contains("free, the claim requests 800 TiB"),
        "{r}"
    );
    assert_eq!(claim_ref_uid(&st.get_pv(&huge).await), None, "released");

    // 3. The bind itself is rejected after pre_bind reserved the PV.
    sim.faults().add_rule(bindlet::sim::FaultRule::always(
        "create",
        "pods/binding",
        422,
    ));
    pod_with_claims(&env, "rejected", &["first"], Some(1)).await;
    let br = env.wait_phase("rejected", Phase::Failed).await;
    assert!(reason(&br).contains("422"), "{}", reason(&br));
    assert_eq!(
        claim_ref_uid(&st.get_pv(&pv1).await),
        None,
        "released after the bind failed"
    );
    assert_eq!(volume_name(&st.get_pvc("first").await), None);
    sim.faults().clear();
    agent.stop().await.expect("stop");
    st.cleanup().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_the_volume_and_what_was_found() {
    let env = TestEnv::new("vol-refuse").await;
    let st = Storage::new(&env);
    let node = labelled_node(&env, "n1").await;
    let other = labelled_node(&env, "n2").await;
    let immediate = st
        .class("imm", "kubernetes.io/no-provisioner", "Immediate")
        .await;
    let wffc = st
        .class(
            "local",
            "kubernetes.io/no-provisioner",
            "WaitForFirstConsumer",
        )
        .await;
    let d = tempdir();
    let far = st.pv("far", "1Mi", &path(&d), &other, &wffc).await;
    // A claim bound (by someone) to a PV of another node.
    let bound = st.pvc("bound-far", &wffc, "1Mi").await;
    let pvs = Api::<PersistentVolume>::all(env.client.clone());
    pvs.patch(
        &far,
        &Default::default(),
        &kube::api::Patch::Merge(json!({ "spec": { "claimRef": {
            "namespace": env.namespace, "name": "bound-far", "uid": bound.metadata.uid } } })),
    )
    .await
    .expect("claimRef");
    st.claims()
        .patch(
            "bound-far",
            &Default::default(),
            &kube::api::Patch::Merge(json!({ "spec": { "volumeName": far } })),
        )
        .await
        .expect("volumeName");
    st.pvc("waiting", &immediate, "1Mi").await;
    let agent = env.start_agent(env.agent_config(&node)).await;

    let file = d.path().join("not-a-dir");
    std::fs::write(&file, b"x").expect("write");
    let hp = env
        .create_pod(
            "hostpath",
            json!({ "volumes": [ { "name": "cfg", "hostPath": { "path": file.to_string_lossy(), "type": "Directory" } } ] }),
        )
        .await;
    env.create_request(
        "hostpath",
        &node,
        hp.metadata.uid.as_deref(),
        json!({ "backoffLimit": 1 }),
    )
    .await;
    pod_with_claims(&env, "nopvc", &["ghost"], Some(1)).await;
    pod_with_claims(&env, "immediate", &["waiting"], Some(1)).await;
    pod_with_claims(&env, "farpv", &["bound-far"], Some(1)).await;

    let cases = [
        (
            "hostpath",
            format!(
                "volume cfg: hostPath {} is a regular file, the pod requires type Directory",
                file.display()
            ),
        ),
        (
            "nopvc",
            format!(
                "volume vol0: PersistentVolumeClaim {}/ghost does not exist",
                env.namespace
            ),
        ),
        (
            "immediate",
            "is not bound yet; it has StorageClass".to_string(),
        ),
        (
            "farpv",
            format!(
                "volume vol0: PersistentVolume {far} cannot be used here: its node affinity (kubernetes.io/hostname In [{other}]) does not match node {node}"
            ),
        ),
    ];
    for (name, want) in cases {
        let br = env.wait_phase(name, Phase::Failed).await;
        assert!(reason(&br).contains(&want), "{name}: {}", reason(&br));
        assert_eq!(env.pod_node(name).await, None, "{name} not bound");
    }
    agent.stop().await.expect("stop");
    st.cleanup().await;
    env.cleanup().await;
}
