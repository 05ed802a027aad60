//! The dra plugin end to end: direct and template claims, a claim shared by several pods
//! reserved concurrently, allocations for another node or for devices this node does not
//! publish, rollback after a failed bind, and an agent restart between the claim write and
//! the bind. Plus the simulator's ResourceClaim status rules (design §2).

mod common;

use std::time::{Duration, Instant};

use bindlet::api::{BindRequest, Phase};
use bindlet::sim::FaultRule;
use common::{TestEnv, attempts, reason};
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const DRIVER: &str = "gpu.bindlet.test";

struct Dra<'a> {
    env: &'a TestEnv,
    slices: std::sync::Mutex<Vec<String>>,
}

impl<'a> Dra<'a> {
    fn new(env: &'a TestEnv) -> Self {
        Dra {
            env,
            slices: Default::default(),
        }
    }

    fn claims(&self) -> Api<ResourceClaim> {
        Api::namespaced(self.env.client.clone(), &self.env.namespace)
    }

    /// A slice publishing `gpu-0..gpu-3` in pool `<node>` for `node`.
    async fn slice(&self, node: &str) {
        let devices: Vec<Value> = (0..4)
            .map(|i| json!({ "name": format!("gpu-{i}") }))
            .collect();
        self.slice_of(node, Value::Array(devices)).await;
    }

    /// A slice publishing `devices` (ResourceSlice device objects) in pool `<node>`.
    async fn slice_of(&self, node: &str, devices: Value) {
        let name = format!("{}-{node}", self.env.namespace);
        let s: ResourceSlice = serde_json::from_value(json!({
            "metadata": { "name": name },
            "spec": {
                "driver": DRIVER, "nodeName": node,
                "pool": { "name": node, "generation": 1, "resourceSliceCount": 1 },
                "devices": devices
            }
        }))
        .expect("slice");
        Api::<ResourceSlice>::all(self.env.client.clone())
            .create(&PostParams::default(), &s)
            .await
            .expect("create slice");
        self.slices.lock().expect("lock").push(name);
    }

    async fn claim(&self, name: &str, owner: Option<(&str, &str)>) -> ResourceClaim {
        let mut meta = json!({ "name": name, "namespace": self.env.namespace });
        if let Some((pod, uid)) = owner {
            meta["ownerReferences"] = json!([{ "apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid, "controller": true }]);
        }
        let c: ResourceClaim = serde_json::from_value(json!({
            "metadata": meta,
            "spec": { "devices": { "requests": [
                { "name": "gpu", "exactly": { "deviceClassName": "gpu.bindlet.test" } }
            ] } }
        }))
        .expect("claim");
        self.claims()
            .create(&PostParams::default(), &c)
            .await
            .expect("create claim")
    }

    async fn get(&self, name: &str) -> ResourceClaim {
        self.claims().get(name).await.expect("get claim")
    }

    async fn cleanup(self) {
        let api = Api::<ResourceSlice>::all(self.env.client.clone());
        let names: Vec<String> = self.slices.lock().expect("lock").drain(..).collect();
        for s in names {
            let _ = api.delete(&s, &DeleteParams::default()).await;
        }
    }
}

fn allocation(node: &str, device: &str) -> Value {
    json!({
        "devices": { "results": [
            { "request": "gpu", "driver": DRIVER, "pool": node, "device": device }
        ] },
        "nodeSelector": { "nodeSelectorTerms": [ { "matchFields": [
            { "key": "metadata.name", "operator": "In", "values": [node] }
        ] } ] }
    })
}

/// A pod using one claim (direct, or from a template) and its BindRequest.
async fn dra_pod(
    env: &TestEnv,
    name: &str,
    node: &str,
    claim: Value,
    alloc: Value,
    backoff: i32,
) -> String {
    let mut entry = json!({ "name": "gpu" });
    if let Some(o) = entry.as_object_mut()
        && let Some(c) = claim.as_object()
    {
        o.extend(c.clone());
    }
    let pod = env
        .create_pod(name, json!({ "resourceClaims": [entry] }))
        .await;
    let uid = pod.metadata.uid.clone().expect("uid");
    env.create_request(
        name,
        node,
        Some(&uid),
        json!({
            "backoffLimit": backoff,
            "resourceClaimAllocations": [ { "name": "gpu", "allocation": alloc } ]
        }),
    )
    .await;
    uid
}

fn reserved_uids(c: &ResourceClaim) -> Vec<String> {
    c.status
        .as_ref()
        .and_then(|s| s.reserved_for.as_ref())
        .map(|r| r.iter().map(|x| x.uid.clone()).collect())
        .unwrap_or_default()
}

fn allocated(c: &ResourceClaim) -> bool {
    c.status
        .as_ref()
        .and_then(|s| s.allocation.as_ref())
        .is_some()
}

async fn setup(test: &str) -> (TestEnv, String) {
    let env = TestEnv::new(test).await;
    let node = env.node_name("n1");
    env.create_node(&node, json!({})).await;
    (env, node)
}

fn updates(env: &TestEnv) -> u64 {
    env.sim.as_ref().map_or(0, |s| {
        s.request_count().get("update", "resourceclaims/status")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_and_template_claims_are_reserved_then_bound() {
    let (env, node) = setup("dra-direct").await;
    let dra = Dra::new(&env);
    dra.slice(&node).await;
    dra.claim("direct", None).await;
    let agent = env.start_agent(env.agent_config(&node)).await;

    let uid = dra_pod(
        &env,
        "p-direct",
        &node,
        json!({ "resourceClaimName": "direct" }),
        allocation(&node, "gpu-0"),
        3,
    )
    .await;
    let br = env.wait_phase("p-direct", Phase::Succeeded).await;
    assert_eq!(
        env.pod_node("p-direct").await.as_deref(),
        Some(node.as_str())
    );
    let c = dra.get("direct").await;
    assert!(allocated(&c));
    assert_eq!(reserved_uids(&c), [uid]);
    assert!(
        verdict_text(&env, &agent, &br).contains("allocated and reserved for the pod"),
        "{}",
        verdict_text(&env, &agent, &br)
    );

    // A template claim: the claim is not generated yet, so the agent retries with a reason.
    let uid = dra_pod(
        &env,
        "p-tmpl",
        &node,
        json!({ "resourceClaimTemplateName": "gpu-template" }),
        allocation(&node, "gpu-1"),
        1000,
    )
    .await;
    common::wait_until(Duration::from_secs(20), "a retry with a reason", || async {
        env.get_request("p-tmpl").await.is_some_and(|br| {
            attempts(&br) >= 1 && reason(&br).contains("has not been generated yet")
        })
    })
    .await;
    // What the resourceclaim controller does: create the claim, record its name in the pod.
    dra.claim("p-tmpl-gpu-x7k2q", Some(("p-tmpl", &uid))).await;
    env.pods()
        .patch_status(
            "p-tmpl",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "resourceClaimStatuses": [
                { "name": "gpu", "resourceClaimName": "p-tmpl-gpu-x7k2q" }
            ] } })),
        )
        .await
        .expect("pod status");
    env.wait_phase("p-tmpl", Phase::Succeeded).await;
    assert_eq!(reserved_uids(&dra.get("p-tmpl-gpu-x7k2q").await), [uid]);

    agent.stop().await.expect("stop");
    dra.cleanup().await;
    env.cleanup().await;
}

/// The status (phase, reason) and what the agent verified, as one text to search.
fn verdict_text(env: &TestEnv, agent: &bindlet::agent::AgentHandle, br: &BindRequest) -> String {
    let verification = env.verification(agent, br);
    serde_json::to_string(&(&br.status, verification)).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_claim_is_reserved_by_concurrent_writers() {
    let (env, node) = setup("dra-shared").await;
    let dra = Dra::new(&env);
    dra.slice(&node).await;
    dra.claim("shared", None).await;
    if let Some(sim) = &env.sim {
        // Another writer wins some races: each loser re-reads and recomputes.
        sim.faults().add_rule(FaultRule {
            times: Some(3),
            ..FaultRule::always("update", "resourceclaims/status", 409)
        });
    }
    let agent = env.start_agent(env.agent_config(&node)).await;
    let mut uids = Vec::new();
    for i in 0..4 {
        let name = format!("s{i}");
        uids.push(
            dra_pod(
                &env,
                &name,
                &node,
                json!({ "resourceClaimName": "shared" }),
                allocation(&node, "gpu-2"),
                3,
            )
            .await,
        );
    }
    for i in 0..4 {
        env.wait_phase(&format!("s{i}"), Phase::Succeeded).await;
    }
    let c = dra.get("shared").await;
    let mut got = reserved_uids(&c);
    got.sort();
    uids.sort();
    assert_eq!(got, uids, "every pod reserved once");
    assert!(allocated(&c));
    agent.stop().await.expect("stop");
    dra.cleanup().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocations_that_do_not_concern_this_node_are_refused() {
    let (env, node) = setup("dra-refuse").await;
    let dra = Dra::new(&env);
    dra.slice(&node).await;
    for c in ["elsewhere", "absent", "taken"] {
        dra.claim(c, None).await;
    }
    let before = updates(&env);
    let agent = env.start_agent(env.agent_config(&node)).await;
    let other = env.node_name("n2");
    dra_pod(
        &env,
        "elsewhere",
        &node,
        json!({ "resourceClaimName": "elsewhere" }),
        allocation(&other, "gpu-0"),
        1,
    )
    .await;
    dra_pod(
        &env,
        "absent",
        &node,
        json!({ "resourceClaimName": "absent" }),
        allocation(&node, "gpu-9"),
        1,
    )
    .await;
    dra_pod(
        &env,
        "missing",
        &node,
        json!({ "resourceClaimName": "no-such-claim" }),
        allocation(&node, "gpu-0"),
        2,
    )
    .await;
    let cases = [
        ("elsewhere", "does not select node"),
        ("absent", "device gpu-9 of pool"),
        ("missing", "ResourceClaim"),
    ];
    for (pod, why) in cases {
        let br = env.wait_phase(pod, Phase::Failed).await;
        assert!(reason(&br).contains(why), "{pod}: {}", reason(&br));
        assert_eq!(env.pod_node(pod).await, None, "{pod} not bound");
    }
    assert!(reason(&env.get_request("missing").await.expect("br")).contains("does not exist"));
    assert_eq!(updates(&env), before, "no claim was written");

    // A claim already allocated differently is refused and left as it is.
    let a: k8s_openapi::api::resource::v1::AllocationResult =
        serde_json::from_value(allocation(&node, "gpu-3")).expect("alloc");
    let mut c = dra.get("taken").await;
    c.status = Some(k8s_openapi::api::resource::v1::ResourceClaimStatus {
        allocation: Some(a),
        ..Default::default()
    });
    dra.claims()
        .replace_status("taken", &PostParams::default(), &c)
        .await
        .expect("allocate");
    dra_pod(
        &env,
        "taken",
        &node,
        json!({ "resourceClaimName": "taken" }),
        allocation(&node, "gpu-0"),
        1,
    )
    .await;
    let br = env.wait_phase("taken", Phase::Failed).await;
    assert!(
        reason(&br).contains("allocated differently"),
        "{}",
        reason(&br)
    );
    assert!(reserved_uids(&dra.get("taken").await).is_empty());

    agent.stop().await.expect("stop");
    dra.cleanup().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_bind_undoes_exactly_the_reservation() {
    let (env, node) = setup("dra-rollback").await;
    let Some(sim) = env.sim_or_skip("a_failed_bind_undoes_exactly_the_reservation") else {
        return env.cleanup().await;
    };
    let dra = Dra::new(&env);
    dra.slice(&node).await;
    dra.claim("fresh", None).await;
    dra.claim("shared", None).await;
    let agent = env.start_agent(env.agent_config(&node)).await;
    // A first consumer of the shared claim binds normally.
    let first = dra_pod(
        &env,
        "first",
        &node,
        json!({ "resourceClaimName": "shared" }),
        allocation(&node, "gpu-1"),
        1,
    )
    .await;
    env.wait_phase("first", Phase::Succeeded).await;

    sim.faults()
        .add_rule(FaultRule::always("create", "pods/binding", 422));
    dra_pod(
        &env,
        "fresh",
        &node,
        json!({ "resourceClaimName": "fresh" }),
        allocation(&node, "gpu-0"),
        1,
    )
    .await;
    dra_pod(
        &env,
        "second",
        &node,
        json!({ "resourceClaimName": "shared" }),
        allocation(&node, "gpu-1"),
        1,
    )
    .await;
    env.wait_phase("fresh", Phase::Failed).await;
    env.wait_phase("second", Phase::Failed).await;
    sim.faults().clear();

    let fresh = dra.get("fresh").await;
    assert!(
        !allocated(&fresh),
        "the allocation this agent wrote is removed"
    );
    assert!(reserved_uids(&fresh).is_empty());
    let shared = dra.get("shared").await;
    assert!(allocated(&shared), "an allocation others use is kept");
    assert_eq!(
        reserved_uids(&shared),
        [first],
        "only the failed pod's entry is removed"
    );

    agent.stop().await.expect("stop");
    dra.cleanup().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_between_claim_write_and_bind_completes_without_rewriting() {
    let (env, node) = setup("dra-restart").await;
    let dra = Dra::new(&env);
    dra.slice(&node).await;
    dra.claim("c", None).await;
    let uid = dra_pod(
        &env,
        "p",
        &node,
        json!({ "resourceClaimName": "c" }),
        allocation(&node, "gpu-0"),
        3,
    )
    .await;
    // What an agent that died right after its claim write left behind.
    let mut c = dra.get("c").await;
    c.status = Some(
        serde_json::from_value(json!({
            "allocation": allocation(&node, "gpu-0"),
            "reservedFor": [ { "resource": "pods", "name": "p", "uid": uid } ]
        }))
        .expect("status"),
    );
    dra.claims()
        .replace_status("c", &PostParams::default(), &c)
        .await
        .expect("reserve");
    let before = updates(&env);
    let agent = env.start_agent(env.agent_config(&node)).await;
    env.wait_phase("p", Phase::Succeeded).await;
    assert_eq!(updates(&env), before, "nothing rewritten");
    assert_eq!(reserved_uids(&dra.get("c").await), [uid]);
    agent.stop().await.expect("stop");
    dra.cleanup().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_pods_cost_no_dra_requests() {
    let (env, node) = setup("dra-plain").await;
    let Some(sim) = env.sim_or_skip_because(
        "plain_pods_cost_no_dra_requests",
        "counts requests with the simulator's request counter",
    ) else {
        return env.cleanup().await;
    };
    let agent = env.start_agent(env.agent_config(&node)).await;
    let before = sim.request_count();
    env.pod_and_request("plain", &node).await;
    env.wait_phase("plain", Phase::Succeeded).await;
    let after = sim.request_count();
    for (verb, res) in [
        ("get", "resourceclaims"),
        ("list", "resourceslices"),
        ("watch", "resourceslices"),
        ("update", "resourceclaims/status"),
        ("list", "resourceclaims"),
        ("watch", "resourceclaims"),
    ] {
        assert_eq!(after.get(verb, res), before.get(verb, res), "{verb} {res}");
    }
    agent.stop().await.expect("stop");
    env.cleanup().await;
}

/// A bind with one claim costs 3 + 2 requests: GET pod, GET claim, PUT claim status, POST
/// binding, PATCH BindRequest status. This node's slices come from the agent's watch cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_bind_costs_three_plus_two_requests() {
    let (env, node) = setup("dra-cost").await;
    let Some(sim) = env.sim_or_skip_because(
        "a_claim_bind_costs_three_plus_two_requests",
        "counts requests with the simulator's request counter",
    ) else {
        return env.cleanup().await;
    };
    let dra = Dra::new(&env);
    dra.slice(&node).await;
    dra.claim("c", None).await;
    let agent = env.start_agent(env.agent_config(&node)).await;
    let before = sim.request_count();
    dra_pod(
        &env,
        "p",
        &node,
        json!({ "resourceClaimName": "c" }),
        allocation(&node, "gpu-1"),
        3,
    )
    .await;
    env.wait_phase("p", Phase::Succeeded).await;
    let after = sim.request_count();
    let delta = |verb: &str, res: &str| after.get(verb, res) - before.get(verb, res);
    for (verb, res, n) in [
        ("get", "pods", 1),
        ("get", "resourceclaims", 1),
        ("update", "resourceclaims/status", 1),
        ("create", "pods/binding", 1),
        ("patch", "bindrequests/status", 1),
        ("list", "resourceslices", 0),
        // Taints, capacity and binding conditions cost nothing for a claim without them.
        ("list", "resourceclaims", 0),
        ("watch", "resourceclaims", 0),
    ] {
        assert_eq!(delta(verb, res), n, "{verb} {res}");
    }
    agent.stop().await.expect("stop");
    dra.cleanup().await;
    env.cleanup().await;
}

/// The simulator's claim status rules: a caller without `resourceclaims/binding` gets 422
/// for allocation/reservedFor changes; allocation is immutable; reservedFor ≤ 256.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_enforces_claim_status_rules() {
    let (env, node) = setup("dra-sim-rules").await;
    let Some(sim) = env.sim_or_skip_because(
        "simulator_enforces_claim_status_rules",
        "tests the simulator itself",
    ) else {
        return env.cleanup().await;
    };
    let dra = Dra::new(&env);
    dra.claim("c", None).await;
    sim.auth().deny_claim_binding("no-binding");
    let mut cfg = kube::Config::new(sim.url().parse().expect("url"));
    cfg.auth_info.token = Some("no-binding".to_string().into());
    let limited: Api<ResourceClaim> =
        Api::namespaced(kube::Client::try_from(cfg).expect("client"), &env.namespace);
    let status = |s: Value| -> ResourceClaim {
        serde_json::from_value(
            json!({ "metadata": { "name": "c", "namespace": env.namespace }, "status": s }),
        )
        .expect("claim")
    };
    let code = |r: Result<ResourceClaim, kube::Error>| match r {
        Err(kube::Error::Api(s)) => s.code,
        Ok(_) => 200,
        Err(e) => panic!("{e}"),
    };
    let alloc = allocation(&node, "gpu-0");
    let pp = PostParams::default();
    assert_eq!(
        code(
            limited
                .replace_status("c", &pp, &status(json!({ "allocation": alloc })))
                .await
        ),
        422
    );
    assert_eq!(
        code(
            dra.claims()
                .replace_status("c", &pp, &status(json!({ "allocation": alloc })))
                .await
        ),
        200
    );
    let other = allocation(&node, "gpu-1");
    assert_eq!(
        code(
            dra.claims()
                .replace_status("c", &pp, &status(json!({ "allocation": other })))
                .await
        ),
        422
    );
    let many: Vec<Value> = (0..257)
        .map(|i| json!({ "resource": "pods", "name": format!("p{i}"), "uid": format!("u{i}") }))
        .collect();
    assert_eq!(
        code(
            dra.claims()
                .replace_status(
                    "c",
                    &pp,
                    &status(json!({ "allocation": alloc, "reservedFor": many }))
                )
                .await
        ),
        422
    );
    assert_eq!(
        code(
            dra.claims()
                .replace_status(
                    "c",
                    &pp,
                    &status(json!({ "allocation": alloc, "reservedFor": many[..256] }))
                )
                .await
        ),
        200
    );
    dra.cleanup().await;
    env.cleanup().await;
}

/// `allocation(node, device)` with `extra` fields in its one result (tolerations, binding
/// conditions, consumed capacity) and the allocation's timestamp set to now.
fn allocation_with(node: &str, device: &str, extra: Value) -> Value {
    let mut a = allocation(node, device);
    if let (Some(r), Some(x)) = (
        a["devices"]["results"][0].as_object_mut(),
        extra.as_object(),
    ) {
        r.extend(x.clone());
    }
    a["allocationTimestamp"] = json!(now());
    a
}

fn now() -> String {
    // Whole seconds, as the API server stores a timestamp.
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .expect("round")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_taints_are_rechecked_at_bind_time() {
    let (env, node) = setup("dra-taints").await;
    let dra = Dra::new(&env);
    // gpu-0 was tainted by its driver after the scheduler allocated it; gpu-1 carries an
    // informational taint only.
    dra.slice_of(
        &node,
        json!([
            { "name": "gpu-0", "taints": [
                { "key": "example.com/unhealthy", "value": "true", "effect": "NoSchedule" } ] },
            { "name": "gpu-1", "taints": [ { "key": "example.com/degraded", "effect": "None" } ] }
        ]),
    )
    .await;
    for c in ["untolerated", "tolerated", "informational"] {
        dra.claim(c, None).await;
    }
    let before = updates(&env);
    let agent = env.start_agent(env.agent_config(&node)).await;
    dra_pod(
        &env,
        "untolerated",
        &node,
        json!({ "resourceClaimName": "untolerated" }),
        allocation_with(&node, "gpu-0", json!({})),
        1,
    )
    .await;
    let br = env.wait_phase("untolerated", Phase::Failed).await;
    assert!(
        reason(&br).contains("has taint example.com/unhealthy=true:NoSchedule (ResourceSlice)"),
        "{}",
        reason(&br)
    );
    assert_eq!(env.pod_node("untolerated").await, None);
    assert_eq!(updates(&env), before, "a refused claim is not written");

    // The request's tolerations, copied into the allocation, tolerate it.
    let tolerations = json!({ "tolerations": [
        { "key": "example.com/unhealthy", "operator": "Exists", "effect": "NoSchedule" } ] });
    dra_pod(
        &env,
        "tolerated",
        &node,
        json!({ "resourceClaimName": "tolerated" }),
        allocation_with(&node, "gpu-0", tolerations),
        1,
    )
    .await;
    let br = env.wait_phase("tolerated", Phase::Succeeded).await;
    let text = verdict_text(&env, &agent, &br);
    if env.keeps_verification() {
        assert!(
            text.contains("example.com/unhealthy=true:NoSchedule (ResourceSlice) tolerated"),
            "{text}"
        );
    }
    dra_pod(
        &env,
        "informational",
        &node,
        json!({ "resourceClaimName": "informational" }),
        allocation_with(&node, "gpu-1", json!({})),
        1,
    )
    .await;
    env.wait_phase("informational", Phase::Succeeded).await;
    assert_eq!(
        env.pod_node("informational").await.as_deref(),
        Some(node.as_str())
    );

    agent.stop().await.expect("stop");
    dra.cleanup().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_device_beyond_its_capacity_is_refused_with_figures() {
    let (env, node) = setup("dra-capacity").await;
    let dra = Dra::new(&env);
    dra.slice_of(
        &node,
        json!([ { "name": "gpu-0", "allowMultipleAllocations": true,
                  "capacity": { "memory": { "value": "64Gi" } } } ]),
    )
    .await;
    // Another pod's claim already holds 40Gi of the device.
    let mut held = dra.claim("held", None).await;
    held.status = Some(
        serde_json::from_value(json!({
            "allocation": allocation_with(&node, "gpu-0", json!({
                "consumedCapacity": { "memory": "40Gi" },
                "shareID": "4a1e3c9e-0d8b-4f6c-9a51-2f3d1c7b6a10" }))
        }))
        .expect("status"),
    );
    dra.claims()
        .replace_status("held", &PostParams::default(), &held)
        .await
        .expect("allocate held");
    dra.claim("too-big", None).await;
    dra.claim("fits", None).await;
    let agent = env.start_agent(env.agent_config(&node)).await;
    dra_pod(
        &env,
        "too-big",
        &node,
        json!({ "resourceClaimName": "too-big" }),
        allocation_with(
            &node,
            "gpu-0",
            json!({
            "consumedCapacity": { "memory": "30Gi" },
            "shareID": "9b2f6d41-7c3e-4e8a-b0d2-5a6c7e8f9a01" }),
        ),
        1,
    )
    .await;
    let br = env.wait_phase("too-big", Phase::Failed).await;
    assert!(
        reason(&br).contains(
            "capacity memory exceeded: 40Gi used by 1 other claim(s) + 30Gi for this claim = 70Gi of 64Gi"
        ),
        "{}",
        reason(&br)
    );
    assert!(!allocated(&dra.get("too-big").await));
    dra_pod(
        &env,
        "fits",
        &node,
        json!({ "resourceClaimName": "fits" }),
        allocation_with(
            &node,
            "gpu-0",
            json!({
            "consumedCapacity": { "memory": "24Gi" },
            "shareID": "0c8d2e53-1f4a-4b6c-8d7e-9f0a1b2c3d4e" }),
        ),
        1,
    )
    .await;
    let br = env.wait_phase("fits", Phase::Succeeded).await;
    if env.keeps_verification() {
        let text = verdict_text(&env, &agent, &br);
        assert!(text.contains("= 64Gi of 64Gi"), "{text}");
    }
    agent.stop().await.expect("stop");
    dra.cleanup().await;
    env.cleanup().await;
}

/// The device of the binding-condition tests: the driver must report it ready.
fn conditioned_device() -> Value {
    json!([ { "name": "gpu-0", "bindsToNode": true,
              "bindingConditions": ["example.com/ready"],
              "bindingFailureConditions": ["example.com/failed"] } ])
}

fn conditioned_allocation(node: &str) -> Value {
    allocation_with(
        node,
        "gpu-0",
        json!({ "bindingConditions": ["example.com/ready"],
                "bindingFailureConditions": ["example.com/failed"] }),
    )
}

/// What the driver does: report a condition of the device on the claim (recording 41).
async fn report_condition(dra: &Dra<'_>, claim: &str, node: &str, condition: &str) {
    dra.claims()
        .patch_status(
            claim,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "devices": [ {
                "driver": DRIVER, "pool": node, "device": "gpu-0",
                "conditions": [ { "type": condition, "status": "True", "reason": "Reported",
                                  "message": "set by the test's driver", "lastTransitionTime": now() } ]
            } ] } })),
        )
        .await
        .expect("device condition");
}

async fn wait_for_the_wait(env: &TestEnv, name: &str) {
    common::wait_until(Duration::from_secs(20), "the request waits", || async {
        env.get_request(name).await.is_some_and(|br| {
            br.phase() == Some(Phase::Pending)
                && reason(&br).contains("waiting for binding conditions")
                && attempts(&br) == 0
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_waits_for_its_binding_conditions_without_holding_a_worker() {
    let (env, node) = setup("dra-wait").await;
    let dra = Dra::new(&env);
    dra.slice_of(&node, conditioned_device()).await;
    dra.claim("waits", None).await;
    let mut cfg = env.agent_config(&node);
    cfg.workers = 1;
    let agent = env.start_agent(cfg).await;
    dra_pod(
        &env,
        "p-wait",
        &node,
        json!({ "resourceClaimName": "waits" }),
        conditioned_allocation(&node),
        3,
    )
    .await;
    wait_for_the_wait(&env, "p-wait").await;
    let br = env.get_request("p-wait").await.expect("request");
    assert!(
        reason(&br).contains(&format!("{DRIVER}/{node}/gpu-0: example.com/ready")),
        "{}",
        reason(&br)
    );
    let c = dra.get("waits").await;
    assert!(
        allocated(&c),
        "the allocation is written for the driver to act on"
    );
    assert_eq!(env.pod_node("p-wait").await, None, "not bound yet");

    // The only worker is free: another request binds meanwhile.
    env.pod_and_request("plain", &node).await;
    env.wait_phase("plain", Phase::Succeeded).await;
    // The plain request's worker may still be finishing (PodBound, Events) after its
    // status is written; the waiting request must not hold one at all.
    common::wait_until(
        Duration::from_secs(5),
        "no worker holds the waiting request",
        || async { agent.stats.diag.debug_state(&agent.stats).in_flight == 0 },
    )
    .await;
    let state = agent.stats.diag.debug_state(&agent.stats);
    assert_eq!(state.dra_waits.len(), 1, "{:?}", state.dra_waits);
    assert_eq!(
        state.dra_waits[0].claims,
        [format!("{}/waits", env.namespace)]
    );

    // The driver reports the device ready: bound within a second.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    report_condition(&dra, "waits", &node, "example.com/ready").await;
    common::wait_until(Duration::from_secs(10), "the pod is bound", || async {
        env.pod_node("p-wait").await.is_some()
    })
    .await;
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "bound {took:?} after the condition"
    );
    let br = env.wait_phase("p-wait", Phase::Succeeded).await;
    if env.keeps_verification() {
        let text = verdict_text(&env, &agent, &br);
        assert!(
            text.contains("binding conditions met: example.com/ready"),
            "{text}"
        );
    }
    let metrics = agent.stats.diag.encode_metrics(&agent.stats);
    assert!(
        metrics.contains("bindlet_dra_binding_wait_seconds_count{outcome=\"bound\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("bindlet_dra_binding_waits 0"), "{metrics}");
    assert!(
        agent
            .stats
            .diag
            .debug_state(&agent.stats)
            .dra_waits
            .is_empty()
    );

    agent.stop().await.expect("stop");
    dra.cleanup().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_failure_condition_clears_the_allocation_and_fails_the_request() {
    let (env, node) = setup("dra-wait-fail").await;
    let dra = Dra::new(&env);
    dra.slice_of(&node, conditioned_device()).await;
    dra.claim("fails", None).await;
    let agent = env.start_agent(env.agent_config(&node)).await;
    dra_pod(
        &env,
        "p-fail",
        &node,
        json!({ "resourceClaimName": "fails" }),
        conditioned_allocation(&node),
        1,
    )
    .await;
    wait_for_the_wait(&env, "p-fail").await;
    report_condition(&dra, "fails", &node, "example.com/failed").await;
    let br = env.wait_phase("p-fail", Phase::Failed).await;
    assert!(
        reason(&br).contains("reports binding failure condition example.com/failed")
            && reason(&br).contains("the allocation this agent wrote is cleared"),
        "{}",
        reason(&br)
    );
    assert_eq!(env.pod_node("p-fail").await, None, "nothing bound");
    let c = dra.get("fails").await;
    assert!(
        !allocated(&c),
        "the allocation this agent wrote is cleared: {:?}",
        c.status
    );
    assert!(reserved_uids(&c).is_empty());
    assert!(
        c.status.as_ref().and_then(|s| s.devices.as_ref()).is_none(),
        "the server drops the deallocated device's status"
    );
    agent.stop().await.expect("stop");
    dra.cleanup().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_conditions_not_met_in_time_clear_the_allocation() {
    let (env, node) = setup("dra-wait-timeout").await;
    let dra = Dra::new(&env);
    dra.slice_of(&node, conditioned_device()).await;
    dra.claim("slow", None).await;
    let mut cfg = env.agent_config(&node);
    cfg.plugins.dra.args.dra_binding_timeout = Duration::from_secs(3);
    let agent = env.start_agent(cfg).await;
    let t0 = Instant::now();
    dra_pod(
        &env,
        "p-slow",
        &node,
        json!({ "resourceClaimName": "slow" }),
        conditioned_allocation(&node),
        1,
    )
    .await;
    wait_for_the_wait(&env, "p-slow").await;
    let br = env.wait_phase("p-slow", Phase::Failed).await;
    assert!(t0.elapsed() >= Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(
        reason(&br).contains("binding conditions not met within 3s of the allocation"),
        "{}",
        reason(&br)
    );
    assert_eq!(env.pod_node("p-slow").await, None);
    assert!(!allocated(&dra.get("slow").await));
    let metrics = agent.stats.diag.encode_metrics(&agent.stats);
    assert!(
        metrics.contains("bindlet_dra_binding_wait_seconds_count{outcome=\"failed\"} 1"),
        "{metrics}"
    );
    agent.stop().await.expect("stop");
    dra.cleanup().await;
    env.cleanup().await;
}

/// A minimal HTTP GET: status code and body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: diag\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    (code, body.to_string())
}

/// A client whose identity may make every API call of the agent's list except
/// `update resourceclaims/binding`. Simulator: a token on its deny list. Real cluster: a
/// ServiceAccount of the test's namespace bound to a ClusterRole of every other call, with
/// a token from the TokenRequest API (ClusterRole and binding are removed by the caller).
async fn agent_client_without_claim_binding(env: &TestEnv) -> (kube::Client, Option<String>) {
    use bindlet::agent::api_calls::{API_CALLS, UPDATE_RESOURCE_CLAIM_BINDING};
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    if let Some(sim) = &env.sim {
        sim.auth().deny_claim_binding("limited-agent");
        let mut kc = kube::Config::new(sim.url().parse().expect("url"));
        kc.auth_info.token = Some("limited-agent".to_string().into());
        return (kube::Client::try_from(kc).expect("client"), None);
    }
    let ns = env.namespace.as_str();
    let role = format!("{ns}-limited-agent");
    let rules: Vec<Value> = API_CALLS
        .iter()
        .filter(|c| **c != UPDATE_RESOURCE_CLAIM_BINDING)
        .map(|c| json!({ "apiGroups": [c.group], "resources": [c.resource], "verbs": [c.verb] }))
        .collect();
    let cr: ClusterRole =
        serde_json::from_value(json!({ "metadata": { "name": role }, "rules": rules }))
            .expect("role");
    Api::<ClusterRole>::all(env.client.clone())
        .create(&PostParams::default(), &cr)
        .await
        .expect("create ClusterRole");
    let crb: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": { "name": role },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role },
        "subjects": [ { "kind": "ServiceAccount", "name": "limited-agent", "namespace": ns } ]
    }))
    .expect("binding");
    Api::<ClusterRoleBinding>::all(env.client.clone())
        .create(&PostParams::default(), &crb)
        .await
        .expect("create ClusterRoleBinding");
    let sas: Api<ServiceAccount> = Api::namespaced(env.client.clone(), ns);
    let sa: ServiceAccount =
        serde_json::from_value(json!({ "metadata": { "name": "limited-agent" } })).expect("sa");
    sas.create(&PostParams::default(), &sa)
        .await
        .expect("create ServiceAccount");
    let tr: TokenRequest =
        serde_json::from_value(json!({ "spec": { "expirationSeconds": 3600 } })).expect("tr");
    let tr: TokenRequest = sas
        .create_subresource("token", "limited-agent", &PostParams::default(), &tr)
        .await
        .expect("token");
    let path = std::env::var_os("BINDLET_TEST_KUBECONFIG").expect("kubeconfig");
    let kc = kube::config::Kubeconfig::read_from(path).expect("read kubeconfig");
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("kubeconfig");
    cfg.auth_info = kube::config::AuthInfo {
        token: tr.status.and_then(|s| s.token).map(Into::into),
        ..Default::default()
    };
    (kube::Client::try_from(cfg).expect("client"), Some(role))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_claim_binding_permission_is_reported_by_readyz_before_any_bind() {
    let (env, node) = setup("dra-permissions").await;
    let (client, cluster_role) = agent_client_without_claim_binding(&env).await;
    let stats = std::sync::Arc::new(bindlet::agent::Stats::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let server = bindlet::diag::start(
        bindlet::diag::DiagConfig::plain(([127, 0, 0, 1], 0).into()),
        stats.clone(),
        None,
        stop.clone(),
    )
    .await
    .expect("diag server");
    let before = updates(&env);
    let agent = bindlet::agent::spawn_with_stats(client, env.agent_config(&node), stats.clone());
    let start = Instant::now();
    let last = loop {
        let answer = http_get(server.addr(), "/readyz").await;
        let reported = answer.0 == 503
            && answer
                .1
                .contains("missing permissions: update resource.k8s.io/resourceclaims/binding");
        if reported || start.elapsed() > Duration::from_secs(20) {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(last.0, 503, "{}", last.1);
    assert!(
        last.1
            .contains("missing permissions: update resource.k8s.io/resourceclaims/binding"),
        "{}",
        last.1
    );
    let metrics = stats.diag.encode_metrics(&stats);
    assert!(
        metrics.contains("bindlet_permissions_missing 1"),
        "{metrics}"
    );
    assert_eq!(updates(&env), before, "no claim write was tried");
    assert!(
        stats
            .diag
            .debug_state(&stats)
            .requests
            .iter()
            .all(|r| r.attempts_total == 0),
        "reported before any bind"
    );
    agent.stop().await.expect("stop");
    stop.cancel();
    server.stopped().await;
    if let Some(role) = cluster_role {
        use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
        let dp = DeleteParams::default();
        let _ = Api::<ClusterRoleBinding>::all(env.client.clone())
            .delete(&role, &dp)
            .await;
        let _ = Api::<ClusterRole>::all(env.client.clone())
            .delete(&role, &dp)
            .await;
    }
    env.cleanup().await;
}
