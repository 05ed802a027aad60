//! The dra plugin end to end: direct and template claims, a claim shared by several pods
//! reserved concurrently, allocations for another node or for devices this node does not
//! publish, rollback after a failed bind, and an agent restart between the claim write and
//! the bind. Plus the simulator's ResourceClaim status rules (design §2).

mod common;

use std::time::Duration;

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
        let name = format!("{}-{node}", self.env.namespace);
        let devices: Vec<Value> = (0..4)
            .map(|i| json!({ "name": format!("gpu-{i}") }))
            .collect();
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
