//! The pod metadata the rest of KAI-Scheduler reads, end to end: the annotations KAI's
//! binder writes before binding (here carried by the Binding itself), the `PodBound`
//! condition and the `Bound` / `BindingError` Events as tools watching for KAI's binder
//! expect them (core/v1, `source.component: binder`).

mod common;

use std::time::Duration;

use bindlet::api::Phase;
use common::TestEnv;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Pod, PodCondition};
use serde_json::{Value, json};

fn pod_bound(pod: &Pod) -> Option<PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodBound")
        .cloned()
}

fn annotation(pod: &Pod, key: &str) -> Option<String> {
    pod.metadata.annotations.as_ref()?.get(key).cloned()
}

/// The core/v1 Events with `reason` about pod `name`.
async fn core_events(env: &TestEnv, name: &str, reason: &str) -> Vec<CoreEvent> {
    env.core_events()
        .await
        .into_iter()
        .filter(|e| {
            e.involved_object.kind.as_deref() == Some("Pod")
                && e.involved_object.name.as_deref() == Some(name)
                && e.reason.as_deref() == Some(reason)
        })
        .collect()
}

async fn wait_core_event(env: &TestEnv, name: &str, reason: &str) -> CoreEvent {
    let start = tokio::time::Instant::now();
    loop {
        if let Some(e) = core_events(env, name, reason).await.into_iter().next() {
            return e;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no {reason} Event on pod {name}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (up to 10 s) for the pod's PodBound condition with `status`.
async fn wait_pod_bound(env: &TestEnv, name: &str, status: &str) -> PodCondition {
    let start = tokio::time::Instant::now();
    loop {
        let got = pod_bound(&pod_now(env, name).await);
        if let Some(c) = got.filter(|c| c.status == status) {
            return c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "pod {name} never had PodBound={status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The agent's API requests so far, from its own metrics (real cluster and simulator alike).
fn agent_calls(agent: &bindlet::agent::AgentHandle, verb: &str, resource: &str) -> u64 {
    bindlet::bench::parse_api_requests(&agent.stats.diag.encode_metrics(&agent.stats))
        .get(verb, resource)
}

async fn pod_now(env: &TestEnv, name: &str) -> Pod {
    env.pods().get(name).await.expect("pod")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_pod_carries_kai_s_annotations_condition_and_event() {
    let env = TestEnv::new("kai-meta-bound").await;
    let node = env.node_name("n1");
    env.create_node(&node, json!({})).await;
    let mut cfg = env.agent_config(&node);
    // Copying the prediction does not depend on checking it against the topology of the
    // machine the test runs on (the `numa` plugin's job, tested in tests/numa.rs).
    cfg.plugins.numa.args.numa_checks = bindlet::plugins::CheckMode::Off;
    let agent = env.start_agent(cfg).await;

    let numa = json!([
        { "zone": "node-0", "amount": { "cpu": "4", "memory": "16Gi" } },
        { "zone": "node-1", "amount": { "cpu": "2" } }
    ]);
    let pod = env.create_pod("numa", json!({})).await;
    env.create_request(
        "numa",
        &node,
        pod.metadata.uid.as_deref(),
        json!({ "predictedNUMAZones": numa }),
    )
    .await;
    let plain = env.pod_and_request("plain", &node).await;
    env.wait_phase("numa", Phase::Succeeded).await;
    env.wait_phase("plain", Phase::Succeeded).await;

    // The annotations KAI's scheduler and podgroup controller read.
    let bound = pod_now(&env, "numa").await;
    assert_eq!(
        bound.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some(node.as_str())
    );
    assert_eq!(
        annotation(&bound, "received-resource-type").as_deref(),
        Some("Regular")
    );
    let placed: Value = serde_json::from_str(
        &annotation(&bound, "kai.scheduler/numa-placement-predicted")
            .expect("numa-placement-predicted annotation"),
    )
    .expect("the annotation is JSON");
    assert_eq!(placed, numa, "the scheduler's prediction, as it sent it");
    let other = pod_now(&env, "plain").await;
    assert_eq!(
        annotation(&other, "received-resource-type").as_deref(),
        Some("Regular")
    );
    assert_eq!(
        annotation(&other, "kai.scheduler/numa-placement-predicted"),
        None,
        "no prediction, no annotation"
    );
    assert_eq!(plain.metadata.uid, other.metadata.uid);

    // The condition and the Event of KAI's binder.
    let cond = pod_bound(&bound).expect("PodBound condition");
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_deref()),
        ("True", Some("Bound"))
    );
    assert_eq!(
        cond.message.as_deref(),
        Some(format!("Pod bound successfully to node {node}").as_str())
    );
    assert!(cond.last_transition_time.is_some());
    let scheduled = bound
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "PodScheduled" && c.status == "True")
        });
    assert!(scheduled, "the Binding's own condition is kept");
    let event = wait_core_event(&env, "numa", "Bound").await;
    assert_eq!(event.type_.as_deref(), Some("Normal"));
    assert_eq!(
        event.source.as_ref().and_then(|s| s.component.as_deref()),
        Some("binder")
    );
    assert_eq!(event.reporting_component.as_deref(), Some("binder"));
    assert_eq!(
        event.message.as_deref(),
        Some(format!("Pod bound successfully to node {node}").as_str())
    );
    // One Bound Event per bind, whichever API lists it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all = env.events_for("Pod", "numa").await;
    assert_eq!(
        all.iter()
            .filter(|e| e.reason.as_deref() == Some("Bound"))
            .count(),
        1,
        "{all:?}"
    );

    // The annotations cost no request: no pod patch at all, one status patch per bind.
    assert_eq!(agent_calls(&agent, "patch", "pods"), 0);
    assert_eq!(agent_calls(&agent, "patch", "pods/status"), 2);
    agent.stop().await.expect("stop");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_is_pod_bound_false_then_true_once_bound() {
    let env = TestEnv::new("kai-meta-failed").await;
    let node = env.node_name("n1");
    env.create_node(
        &node,
        json!({ "taints": [ { "key": "dedicated", "value": "infra", "effect": "NoSchedule" } ] }),
    )
    .await;
    let agent = env.start_agent(env.agent_config(&node)).await;
    let pod = env.create_pod("waits", json!({})).await;
    env.create_request(
        "waits",
        &node,
        pod.metadata.uid.as_deref(),
        json!({ "backoffLimit": 100 }),
    )
    .await;

    // A refusal that will be retried: False (KAI would write True here), with the reason.
    let cond = wait_pod_bound(&env, "waits", "False").await;
    assert_eq!(cond.reason.as_deref(), Some("BindingError"));
    let message = cond.message.clone().unwrap_or_default();
    let ns = &env.namespace;
    assert!(
        message.starts_with(&format!("Failed to bind pod {ns}/waits to node {node}: "))
            && message.contains("dedicated"),
        "{message}"
    );
    let br = env.get_request("waits").await.expect("request");
    assert_eq!(br.phase(), Some(Phase::Pending), "still retrying");
    // Later attempts fail the same way: the pod already says so, nothing more is written.
    let start = tokio::time::Instant::now();
    while env
        .get_request("waits")
        .await
        .and_then(|b| b.status)
        .and_then(|s| s.failed_attempts)
        .unwrap_or(0)
        < 3
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no third attempt"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(agent_calls(&agent, "patch", "pods/status"), 1);
    let again = wait_pod_bound(&env, "waits", "False").await;
    assert_eq!(again.last_transition_time, cond.last_transition_time);
    let event = wait_core_event(&env, "waits", "BindingError").await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(
        event.source.as_ref().and_then(|s| s.component.as_deref()),
        Some("binder")
    );
    assert!(
        event
            .message
            .as_deref()
            .is_some_and(|m| m.contains("dedicated")),
        "{event:?}"
    );
    assert_eq!(
        annotation(&pod_now(&env, "waits").await, "received-resource-type"),
        None,
        "a failed bind leaves no annotation behind"
    );

    // The taint goes; the next attempt binds and the condition turns True.
    env.patch_node(&node, json!({ "spec": { "taints": null } }))
        .await;
    env.wait_phase("waits", Phase::Succeeded).await;
    let cond = wait_pod_bound(&env, "waits", "True").await;
    assert_eq!(cond.reason.as_deref(), Some("Bound"));

    // A pod another binder put on another node is not written on.
    let other = env.node_name("n2");
    env.create_node(&other, json!({})).await;
    let elsewhere = env
        .create_pod("elsewhere", json!({ "nodeName": other }))
        .await;
    env.create_request(
        "elsewhere",
        &node,
        elsewhere.metadata.uid.as_deref(),
        json!({}),
    )
    .await;
    env.wait_phase("elsewhere", Phase::Failed).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let p = pod_now(&env, "elsewhere").await;
    assert_eq!(pod_bound(&p), None, "{:?}", p.status);
    assert!(
        core_events(&env, "elsewhere", "BindingError")
            .await
            .is_empty()
    );
    agent.stop().await.expect("stop");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_bound_condition_can_be_turned_off() {
    let env = TestEnv::new("kai-meta-off").await;
    let node = env.node_name("n1");
    env.create_node(&node, json!({})).await;
    let mut cfg = env.agent_config(&node);
    cfg.pod_bound_condition = false;
    let agent = env.start_agent(cfg).await;
    env.pod_and_request("quiet", &node).await;
    env.wait_phase("quiet", Phase::Succeeded).await;
    let p = pod_now(&env, "quiet").await;
    assert_eq!(pod_bound(&p), None);
    assert_eq!(
        annotation(&p, "received-resource-type").as_deref(),
        Some("Regular"),
        "the annotations still travel with the Binding"
    );
    assert_eq!(agent_calls(&agent, "patch", "pods/status"), 0);
    agent.stop().await.expect("stop");
    env.cleanup().await;
}
