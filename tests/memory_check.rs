//! The optional node memory check against this machine's real available memory: a pod
//! requesting far more than any node has (1000 TiB) is refused under `enforce` with the
//! figures in the reason, and bound with a warning under `warn`; a small request passes.

mod common;

use bindlet::api::{Phase, VerdictOutcome};
use bindlet::plugins::CheckMode;
use common::{TestEnv, reason};
use serde_json::json;

fn requesting(memory: &str) -> serde_json::Value {
    json!({ "containers": [ {
        "name": "main",
        "image": "registry.k8s.io/pause:3.10",
        "resources": { "requests": { "memory": memory } }
    } ] })
}

async fn pod_requesting(env: &TestEnv, name: &str, node: &str, memory: &str) {
    let pod = env.create_pod(name, requesting(memory)).await;
    env.create_request(name, node, pod.metadata.uid.as_deref(), json!({}))
        .await;
}

fn memory_verdict(
    env: &TestEnv,
    agent: &bindlet::agent::AgentHandle,
    br: &bindlet::api::BindRequest,
) -> (VerdictOutcome, String) {
    let v = env.verification(agent, br);
    let v = v
        .verdicts
        .iter()
        .find(|v| v.check == "memory")
        .unwrap_or_else(|| panic!("no memory verdict in {v:?}"));
    (v.outcome, v.message.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_refuses_a_pod_the_node_cannot_hold() {
    let env = TestEnv::new("memory-enforce").await;
    let node = env.node_name("n1");
    env.create_node(&node, json!({})).await;
    let mut cfg = env.agent_config(&node);
    cfg.plugins.memory.memory_check = CheckMode::Enforce;
    let agent = env.start_agent(cfg).await;

    pod_requesting(&env, "huge", &node, "1000Ti").await;
    let br = env.wait_phase("huge", Phase::Failed).await;
    let r = reason(&br);
    for w in [
        "memory",
        "available",
        "pod requests 1000 TiB",
        "reserve 1 GiB",
    ] {
        assert!(r.contains(w), "{w:?} not in the reason {r:?}");
    }
    assert_eq!(env.pod_node("huge").await, None);

    // A small request with no reserve fits any machine that runs the tests.
    let other = env.node_name("n2");
    env.create_node(&other, json!({})).await;
    let mut cfg = env.agent_config(&other);
    cfg.plugins.memory.memory_check = CheckMode::Enforce;
    cfg.plugins.memory.memory_reserve = 0;
    let agent2 = env.start_agent(cfg).await;
    pod_requesting(&env, "small", &other, "1Mi").await;
    let br = env.wait_phase("small", Phase::Succeeded).await;
    let (outcome, message) = memory_verdict(&env, &agent2, &br);
    assert_eq!(outcome, VerdictOutcome::Pass, "{message}");
    assert!(message.contains("pod requests 1 MiB"), "{message}");
    agent.stop().await.expect("stop");
    agent2.stop().await.expect("stop");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warn_binds_and_records_the_shortfall() {
    let env = TestEnv::new("memory-warn").await;
    let node = env.node_name("n1");
    env.create_node(&node, json!({})).await;
    let mut cfg = env.agent_config(&node);
    cfg.plugins.memory.memory_check = CheckMode::Warn;
    let agent = env.start_agent(cfg).await;

    pod_requesting(&env, "huge", &node, "1000Ti").await;
    let br = env.wait_phase("huge", Phase::Succeeded).await;
    assert_eq!(env.pod_node("huge").await.as_deref(), Some(node.as_str()));
    let (outcome, message) = memory_verdict(&env, &agent, &br);
    assert_eq!(outcome, VerdictOutcome::Warn);
    assert!(
        message.contains("pod requests 1000 TiB") && message.contains("available"),
        "{message}"
    );
    agent.stop().await.expect("stop");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_by_default_adds_no_verdict() {
    let env = TestEnv::new("memory-off").await;
    let node = env.node_name("n1");
    env.create_node(&node, json!({})).await;
    let agent = env.start_agent(env.agent_config(&node)).await;
    pod_requesting(&env, "huge", &node, "1000Ti").await;
    let br = env.wait_phase("huge", Phase::Succeeded).await;
    let verdicts = br
        .status
        .and_then(|s| s.node_verification)
        .map(|v| v.verdicts)
        .unwrap_or_default();
    assert!(
        !verdicts.iter().any(|v| v.check == "memory"),
        "{verdicts:?}"
    );
    agent.stop().await.expect("stop");
    env.cleanup().await;
}
