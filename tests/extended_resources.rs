//! Extended resources backed by DRA (KEP-5004) end to end: the agent creates the pod's
//! extended-resource claim, allocates and reserves it, names it in the pod's status and
//! binds; an agent restarted between any two of those steps finishes without a second
//! claim; a failed bind leaves no claim behind (not even one stuck Terminating); an
//! allocation for another node or an unhealthy GPU is refused before anything is written.

mod common;

use std::path::PathBuf;

use bindlet::api::Phase;
use bindlet::dra::extended::{
    DELETE_PROTECTION_FINALIZER, EXTENDED_RESOURCE_CLAIM_ANNOTATION, claim_name,
};
use bindlet::sim::FaultRule;
use common::{TestEnv, reason};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const DRIVER: &str = "gpu.bindlet.test";
const RESOURCE: &str = "example.com/gpu";
const REQUEST: &str = "container-0-request-0";

struct Setup {
    env: TestEnv,
    node: String,
    slice: String,
    _dir: tempfile::TempDir,
    inventory: PathBuf,
}

/// A node whose slice publishes gpu-0 (GPU-a, healthy) and gpu-1 (GPU-b, fallen off the
/// bus in the agent's GPU inventory).
async fn setup(test: &str) -> Setup {
    let env = TestEnv::new(test).await;
    let node = env.node_name("n1");
    env.create_node(&node, json!({})).await;
    let slice = format!("{}-{node}", env.namespace);
    let s: ResourceSlice = serde_json::from_value(json!({
        "metadata": { "name": slice },
        "spec": {
            "driver": DRIVER, "nodeName": node,
            "pool": { "name": node, "generation": 1, "resourceSliceCount": 1 },
            "devices": [
                { "name": "gpu-0", "attributes": { "uuid": { "string": "GPU-a" } } },
                { "name": "gpu-1", "attributes": { "uuid": { "string": "GPU-b" } } },
                { "name": "gpu-2", "taints": [
                    { "key": "example.com/unhealthy", "value": "true", "effect": "NoSchedule" }
                ] }
            ]
        }
    }))
    .expect("slice");
    Api::<ResourceSlice>::all(env.client.clone())
        .create(&PostParams::default(), &s)
        .await
        .expect("create slice");
    let dir = tempfile::tempdir().expect("tempdir");
    let inventory = dir.path().join("gpus.yaml");
    std::fs::write(
        &inventory,
        "gpus:\n  - { uuid: GPU-a }\n  - { uuid: GPU-b, lost: fallen off the bus }\n",
    )
    .expect("write inventory");
    Setup {
        env,
        node,
        slice,
        _dir: dir,
        inventory,
    }
}

impl Setup {
    async fn agent(&self) -> bindlet::agent::AgentHandle {
        let mut cfg = self.env.agent_config(&self.node);
        cfg.plugins.gpu.args.gpu_inventory_file = Some(self.inventory.clone());
        self.env.start_agent(cfg).await
    }

    fn claims(&self) -> Api<ResourceClaim> {
        Api::namespaced(self.env.client.clone(), &self.env.namespace)
    }

    /// The claims owned by the pod with `uid`.
    async fn claims_of(&self, uid: &str) -> Vec<ResourceClaim> {
        self.claims()
            .list(&ListParams::default())
            .await
            .expect("list claims")
            .items
            .into_iter()
            .filter(|c| c.owner_references().iter().any(|o| o.uid == uid))
            .collect()
    }

    /// A pod asking for one `example.com/gpu` and a BindRequest with its extended-resource
    /// allocation of `device` on `alloc_node`; returns the pod's UID.
    async fn pod(&self, name: &str, alloc_node: &str, device: &str, backoff: i32) -> String {
        self.pod_with(name, alloc_node, device, backoff, "main")
            .await
    }

    async fn pod_with(
        &self,
        name: &str,
        alloc_node: &str,
        device: &str,
        backoff: i32,
        mapped_container: &str,
    ) -> String {
        let pod = self
            .env
            .create_pod(
                name,
                json!({ "containers": [{
                    "name": "main", "image": "registry.k8s.io/pause:3.10",
                    "resources": { "limits": { RESOURCE: "1" } }
                }] }),
            )
            .await;
        let uid = pod.metadata.uid.clone().expect("uid");
        self.env
            .create_request(
                name,
                &self.node,
                Some(&uid),
                json!({
                    "backoffLimit": backoff,
                    "extendedResourceClaimAllocation": {
                        "allocation": allocation(alloc_node, device),
                        "deviceRequests": [
                            { "name": REQUEST, "exactly": { "deviceClassName": DRIVER } }
                        ],
                        "containerMappings": [
                            { "containerName": mapped_container, "requestName": REQUEST, "resourceName": RESOURCE }
                        ]
                    }
                }),
            )
            .await;
        uid
    }

    /// What the agent would have created for the pod, as an earlier agent left it.
    async fn leftover_claim(&self, pod: &str, uid: &str) -> ResourceClaim {
        let c: ResourceClaim = serde_json::from_value(json!({
            "metadata": {
                "name": claim_name(pod, uid),
                "annotations": { EXTENDED_RESOURCE_CLAIM_ANNOTATION: "true" },
                "finalizers": [DELETE_PROTECTION_FINALIZER],
                "ownerReferences": [{ "apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid,
                                      "controller": true, "blockOwnerDeletion": true }]
            },
            "spec": { "devices": { "requests": [
                { "name": REQUEST, "exactly": { "deviceClassName": DRIVER } }
            ] } }
        }))
        .expect("claim");
        self.claims()
            .create(&PostParams::default(), &c)
            .await
            .expect("create claim")
    }

    /// Claims keep a finalizer after their pod binds: remove it so the namespace can go.
    async fn cleanup(self) {
        let claims = self.claims();
        if let Ok(list) = claims.list(&ListParams::default()).await {
            for c in list.items {
                let _ = claims
                    .patch(
                        &c.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({ "metadata": { "finalizers": null } })),
                    )
                    .await;
                let _ = claims.delete(&c.name_any(), &DeleteParams::default()).await;
            }
        }
        let _ = Api::<ResourceSlice>::all(self.env.client.clone())
            .delete(&self.slice, &DeleteParams::default())
            .await;
        self.env.cleanup().await;
    }
}

fn allocation(node: &str, device: &str) -> Value {
    json!({
        "devices": { "results": [
            { "request": REQUEST, "driver": DRIVER, "pool": node, "device": device }
        ] },
        "nodeSelector": { "nodeSelectorTerms": [ { "matchFields": [
            { "key": "metadata.name", "operator": "In", "values": [node] }
        ] } ] }
    })
}

fn reserved_uids(c: &ResourceClaim) -> Vec<String> {
    c.status
        .as_ref()
        .and_then(|s| s.reserved_for.as_ref())
        .map(|r| r.iter().map(|x| x.uid.clone()).collect())
        .unwrap_or_default()
}

fn allocated_device(c: &ResourceClaim) -> Option<String> {
    c.status
        .as_ref()?
        .allocation
        .as_ref()?
        .devices
        .as_ref()?
        .results
        .as_ref()?
        .first()
        .map(|r| r.device.clone())
}

/// The pod's `status.extendedResourceClaimStatus` as JSON (`null` when unset).
async fn claim_status(env: &TestEnv, pod: &str) -> Value {
    let p: Pod = env.pods().get(pod).await.expect("get pod");
    serde_json::to_value(p.status.and_then(|s| s.extended_resource_claim_status)).expect("json")
}

fn count(env: &TestEnv, verb: &str, resource: &str) -> u64 {
    env.sim
        .as_ref()
        .map_or(0, |s| s.request_count().get(verb, resource))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_claim_is_created_reserved_and_named_in_the_pod_status_then_the_pod_binds() {
    let s = setup("ext-bind").await;
    let agent = s.agent().await;
    let uid = s.pod("p-gpu", &s.node, "gpu-0", 3).await;
    let br = s.env.wait_phase("p-gpu", Phase::Succeeded).await;
    assert_eq!(
        s.env.pod_node("p-gpu").await.as_deref(),
        Some(s.node.as_str())
    );

    let claims = s.claims_of(&uid).await;
    assert_eq!(claims.len(), 1, "one claim for the pod: {claims:?}");
    let c = &claims[0];
    let name = c.name_any();
    assert_eq!(name, claim_name("p-gpu", &uid));
    assert_eq!(
        c.annotations()
            .get(EXTENDED_RESOURCE_CLAIM_ANNOTATION)
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(c.finalizers(), [DELETE_PROTECTION_FINALIZER.to_string()]);
    let owner = &c.owner_references()[0];
    assert_eq!((owner.kind.as_str(), owner.controller), ("Pod", Some(true)));
    assert_eq!(allocated_device(c).as_deref(), Some("gpu-0"));
    assert_eq!(reserved_uids(c), vec![uid.clone()]);
    let requests = c
        .spec
        .devices
        .as_ref()
        .and_then(|d| d.requests.as_ref())
        .expect("requests");
    assert_eq!(requests[0].name, REQUEST);

    assert_eq!(
        claim_status(&s.env, "p-gpu").await,
        json!({
            "resourceClaimName": name,
            "requestMappings": [
                { "containerName": "main", "requestName": REQUEST, "resourceName": RESOURCE }
            ]
        })
    );
    let verification = s.env.verification(&agent, &br);
    let text = serde_json::to_string(&verification).unwrap_or_default();
    for want in [
        "GPU GPU-a is healthy",
        &format!("extended-resource claim {}/{name} created", s.env.namespace),
        "allocated and reserved for the pod",
        &format!("pod status now names claim {name} for main {RESOURCE}"),
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    agent.stop().await.expect("stop");
    s.cleanup().await;
}

/// What an agent that died after each step left behind; the next one finishes the bind with
/// the same claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_between_steps_finishes_with_the_same_claim() {
    let s = setup("ext-restart").await;
    // Died after creating the claim.
    let created = s.pod("created", &s.node, "gpu-0", 3).await;
    let created_claim = s.leftover_claim("created", &created).await;
    // Died after allocating and reserving it.
    let reserved = s.pod("reserved", &s.node, "gpu-0", 3).await;
    let mut reserved_claim = s.leftover_claim("reserved", &reserved).await;
    reserved_claim.status = Some(
        serde_json::from_value(json!({
            "allocation": allocation(&s.node, "gpu-0"),
            "reservedFor": [ { "resource": "pods", "name": "reserved", "uid": reserved } ]
        }))
        .expect("status"),
    );
    let reserved_claim = s
        .claims()
        .replace_status(
            &reserved_claim.name_any(),
            &PostParams::default(),
            &reserved_claim,
        )
        .await
        .expect("reserve");
    // Died after writing the pod status too (just before the binding).
    let named = s.pod("named", &s.node, "gpu-0", 3).await;
    let mut named_claim = s.leftover_claim("named", &named).await;
    named_claim.status = Some(
        serde_json::from_value(json!({
            "allocation": allocation(&s.node, "gpu-0"),
            "reservedFor": [ { "resource": "pods", "name": "named", "uid": named } ]
        }))
        .expect("status"),
    );
    let named_claim = s
        .claims()
        .replace_status(
            &named_claim.name_any(),
            &PostParams::default(),
            &named_claim,
        )
        .await
        .expect("reserve");
    s.env
        .pods()
        .patch_status(
            "named",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "extendedResourceClaimStatus": {
                "resourceClaimName": named_claim.name_any(),
                "requestMappings": [
                    { "containerName": "main", "requestName": REQUEST, "resourceName": RESOURCE }
                ]
            } } })),
        )
        .await
        .expect("pod status");

    let creates = count(&s.env, "create", "resourceclaims");
    let agent = s.agent().await;
    for (pod, uid, before, reservation, pod_status) in [
        (
            "created",
            &created,
            &created_claim,
            "allocated and reserved for the pod",
            "now names",
        ),
        (
            "reserved",
            &reserved,
            &reserved_claim,
            "was already reserved for the pod",
            "now names",
        ),
        (
            "named",
            &named,
            &named_claim,
            "was already reserved for the pod",
            "already named",
        ),
    ] {
        let br = s.env.wait_phase(pod, Phase::Succeeded).await;
        let text = serde_json::to_string(&s.env.verification(&agent, &br)).unwrap_or_default();
        for want in ["found", reservation, pod_status] {
            assert!(text.contains(want), "{pod}: {want}: {text}");
        }
        assert_eq!(s.env.pod_node(pod).await.as_deref(), Some(s.node.as_str()));
        let claims = s.claims_of(uid).await;
        assert_eq!(claims.len(), 1, "{pod}: still one claim");
        assert_eq!(claims[0].uid(), before.uid(), "{pod}: the same claim");
        assert_eq!(reserved_uids(&claims[0]), vec![uid.to_string()], "{pod}");
        assert_eq!(
            claim_status(&s.env, pod).await["resourceClaimName"],
            json!(before.name_any()),
            "{pod}"
        );
    }
    if s.env.is_sim() {
        assert_eq!(
            count(&s.env, "create", "resourceclaims"),
            creates,
            "no claim was created"
        );
    }
    agent.stop().await.expect("stop");
    s.cleanup().await;
}

/// A claim a rollback left Terminating (what KAI's binder leaves: deleted with its finalizer
/// on) is finished off, and the bind goes on with a new claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_left_terminating_is_removed_and_replaced() {
    let s = setup("ext-terminating").await;
    let uid = s.pod("p", &s.node, "gpu-0", 3).await;
    // KAI reserved it before its rollback deleted it: reservedFor names a live pod, so the
    // resourceclaim controller keeps the finalizer (recording 45).
    let mut old = s.leftover_claim("p", &uid).await;
    old.status = Some(
        serde_json::from_value(json!({
            "allocation": allocation(&s.node, "gpu-0"),
            "reservedFor": [ { "resource": "pods", "name": "p", "uid": uid } ]
        }))
        .expect("status"),
    );
    let old = s
        .claims()
        .replace_status(&old.name_any(), &PostParams::default(), &old)
        .await
        .expect("reserve");
    s.claims()
        .delete(&old.name_any(), &DeleteParams::default())
        .await
        .expect("delete");
    let stuck = s.claims().get(&old.name_any()).await.expect("still there");
    assert!(
        stuck.metadata.deletion_timestamp.is_some(),
        "the finalizer holds it"
    );

    let agent = s.agent().await;
    s.env.wait_phase("p", Phase::Succeeded).await;
    let claims = s.claims_of(&uid).await;
    assert_eq!(claims.len(), 1, "{claims:?}");
    assert_ne!(claims[0].uid(), old.uid(), "a new claim");
    assert!(claims[0].metadata.deletion_timestamp.is_none());
    assert_eq!(reserved_uids(&claims[0]), vec![uid.to_string()]);
    assert_eq!(
        claim_status(&s.env, "p").await["resourceClaimName"],
        json!(claims[0].name_any())
    );
    agent.stop().await.expect("stop");
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_bind_leaves_no_claim_and_no_pod_status_behind() {
    let s = setup("ext-rollback").await;
    let Some(sim) = s.env.sim_or_skip_because(
        "a_failed_bind_leaves_no_claim_and_no_pod_status_behind",
        "makes the binding fail with the simulator's fault injection",
    ) else {
        return s.cleanup().await;
    };
    sim.faults()
        .add_rule(FaultRule::always("create", "pods/binding", 422));
    let agent = s.agent().await;
    let uid = s.pod("p", &s.node, "gpu-0", 2).await;
    let br = s.env.wait_phase("p", Phase::Failed).await;
    sim.faults().clear();
    assert_eq!(
        br.status.as_ref().and_then(|st| st.failed_attempts),
        Some(2)
    );
    assert_eq!(s.env.pod_node("p").await, None, "not bound");
    assert_eq!(
        s.claims_of(&uid).await.len(),
        0,
        "no claim left, not even a Terminating one"
    );
    assert_eq!(claim_status(&s.env, "p").await, Value::Null);
    // Each attempt created its claim and removed it again: finalizer first, then delete.
    assert_eq!(count(&s.env, "create", "resourceclaims"), 2);
    assert_eq!(count(&s.env, "patch", "resourceclaims"), 2);
    assert_eq!(count(&s.env, "delete", "resourceclaims"), 2);
    agent.stop().await.expect("stop");
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_node_an_unhealthy_gpu_a_tainted_device_or_a_wrong_mapping_is_refused_before_any_write()
 {
    let s = setup("ext-refuse").await;
    let agent = s.agent().await;
    let other = s.env.node_name("n2");
    let mut uids = Vec::new();
    uids.push(s.pod("elsewhere", &other, "gpu-0", 1).await);
    uids.push(s.pod("unhealthy", &s.node, "gpu-1", 1).await);
    uids.push(s.pod_with("unmapped", &s.node, "gpu-0", 1, "sidecar").await);
    uids.push(s.pod("tainted", &s.node, "gpu-2", 1).await);
    for (pod, why) in [
        (
            "tainted",
            "has taint example.com/unhealthy=true:NoSchedule (ResourceSlice) that the allocation does not tolerate",
        ),
        ("elsewhere", "does not select node"),
        (
            "unhealthy",
            "GPU GPU-b is unhealthy: GPU lost: fallen off the bus",
        ),
        ("unmapped", "the pod has no container sidecar"),
    ] {
        let br = s.env.wait_phase(pod, Phase::Failed).await;
        assert!(reason(&br).contains(why), "{pod}: {}", reason(&br));
        assert_eq!(s.env.pod_node(pod).await, None, "{pod} not bound");
        assert_eq!(claim_status(&s.env, pod).await, Value::Null, "{pod}");
    }
    for uid in &uids {
        assert!(s.claims_of(uid).await.is_empty(), "no claim created");
    }
    if s.env.is_sim() {
        assert_eq!(
            count(&s.env, "create", "resourceclaims") + count(&s.env, "get", "resourceclaims"),
            0,
            "no claim was read or written"
        );
    }
    agent.stop().await.expect("stop");
    s.cleanup().await;
}

/// One extended-resource bind costs, besides GET pod, POST binding and PATCH BindRequest
/// status: GET claim, POST claim, GET + PUT claim status, and the pod status write (not
/// counted here: other plugins write pod status too; the first test sees it in the
/// verdicts). A plain pod costs none of the claim requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extended_resource_bind_costs_five_requests_more_and_a_plain_one_none() {
    let s = setup("ext-cost").await;
    let Some(sim) = s.env.sim_or_skip_because(
        "an_extended_resource_bind_costs_five_requests_more_and_a_plain_one_none",
        "counts requests with the simulator's request counter",
    ) else {
        return s.cleanup().await;
    };
    let agent = s.agent().await;
    let extra = [
        ("get", "resourceclaims"),
        ("create", "resourceclaims"),
        ("update", "resourceclaims/status"),
        ("patch", "resourceclaims"),
        ("delete", "resourceclaims"),
        ("list", "resourceslices"),
    ];
    let before = sim.request_count();
    s.env.pod_and_request("plain", &s.node).await;
    s.env.wait_phase("plain", Phase::Succeeded).await;
    let after = sim.request_count();
    for (verb, res) in extra {
        assert_eq!(
            after.get(verb, res),
            before.get(verb, res),
            "plain: {verb} {res}"
        );
    }

    let before = sim.request_count();
    s.pod("p", &s.node, "gpu-0", 3).await;
    s.env.wait_phase("p", Phase::Succeeded).await;
    let after = sim.request_count();
    let delta = |verb: &str, res: &str| after.get(verb, res) - before.get(verb, res);
    for (verb, res, n) in [
        ("get", "pods", 1),
        ("get", "resourceclaims", 2),
        ("create", "resourceclaims", 1),
        ("update", "resourceclaims/status", 1),
        ("create", "pods/binding", 1),
        ("patch", "bindrequests/status", 1),
        ("patch", "resourceclaims", 0),
        ("delete", "resourceclaims", 0),
        ("list", "resourceslices", 0),
    ] {
        assert_eq!(delta(verb, res), n, "{verb} {res}");
    }
    agent.stop().await.expect("stop");
    s.cleanup().await;
}

/// A claim another binder (KAI's) created with a generated name and recorded in the pod
/// status before it stopped is the pod's claim: it is used, not duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_named_in_the_pod_status_by_another_binder_is_used() {
    let s = setup("ext-kai-claim").await;
    let uid = s.pod("p", &s.node, "gpu-0", 3).await;
    let c: ResourceClaim = serde_json::from_value(json!({
        "metadata": {
            "generateName": "p-extended-resources-",
            "annotations": { EXTENDED_RESOURCE_CLAIM_ANNOTATION: "true" },
            "finalizers": [DELETE_PROTECTION_FINALIZER],
            "ownerReferences": [{ "apiVersion": "v1", "kind": "Pod", "name": "p", "uid": uid,
                                  "controller": true, "blockOwnerDeletion": true }]
        },
        "spec": { "devices": { "requests": [
            { "name": REQUEST, "exactly": { "deviceClassName": DRIVER } }
        ] } }
    }))
    .expect("claim");
    let kai = s
        .claims()
        .create(&PostParams::default(), &c)
        .await
        .expect("create claim");
    assert_ne!(kai.name_any(), claim_name("p", &uid));
    s.env
        .pods()
        .patch_status(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "extendedResourceClaimStatus": {
                "resourceClaimName": kai.name_any(),
                "requestMappings": [
                    { "containerName": "main", "requestName": REQUEST, "resourceName": RESOURCE }
                ]
            } } })),
        )
        .await
        .expect("pod status");

    let agent = s.agent().await;
    s.env.wait_phase("p", Phase::Succeeded).await;
    let claims = s.claims_of(&uid).await;
    assert_eq!(claims.len(), 1, "{claims:?}");
    assert_eq!(claims[0].uid(), kai.uid(), "KAI's claim");
    assert_eq!(reserved_uids(&claims[0]), vec![uid.clone()]);
    assert_eq!(allocated_device(&claims[0]).as_deref(), Some("gpu-0"));
    assert_eq!(
        claim_status(&s.env, "p").await["resourceClaimName"],
        json!(kai.name_any())
    );
    agent.stop().await.expect("stop");
    s.cleanup().await;
}
