//! Faults and handovers: nothing lost, nothing bound twice.

mod common;

use std::time::Duration;

use bindlet::api::Phase;
use bindlet::sim::FaultRule;
use common::{TestEnv, attempts, reason, wait_until};
use serde_json::json;

/// Creates `n` pods with requests named `{prefix}-{i}`.
async fn burst(env: &TestEnv, prefix: &str, n: usize, node: &str) -> Vec<String> {
    let mut names = Vec::new();
    for i in 0..n {
        let name = format!("{prefix}-{i}");
        env.pod_and_request(&name, node).await;
        names.push(name);
    }
    names
}

/// Every request Succeeded, every pod on `node`, and at most one Bound event per pod.
async fn assert_all_bound_once(env: &TestEnv, names: &[String], node: &str) {
    for name in names {
        let br = env.wait_phase(name, Phase::Succeeded).await;
        assert_eq!(attempts(&br), 0, "{name}: {:?}", br.status);
        assert_eq!(env.pod_node(name).await.as_deref(), Some(node), "{name}");
    }
    // Events are written asynchronously; give them a moment before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for name in names {
        let bound = env
            .events_for("Pod", name)
            .await
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("Bound"))
            .count();
        assert!(bound <= 1, "{name}: {bound} Bound events");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_lease_holder_per_node_and_graceful_handover() {
    let env = TestEnv::new("lease").await;
    let node = env.node_name("n1");
    env.create_node(&node, json!({})).await;
    let mut a_cfg = env.agent_config(&node);
    a_cfg.identity = "agent-a".into();
    let a = env.start_agent(a_cfg).await;
    let mut b_cfg = env.agent_config(&node);
    b_cfg.identity = "agent-b".into();
    // A long lease: b can only take over quickly if a releases it.
    b_cfg.lease_duration = Duration::from_secs(30);
    let b = bindlet::agent::spawn(env.client.clone(), b_cfg);
    wait_until(Duration::from_secs(10), "b synced", || async {
        b.stats.is_synced()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        a.stats.is_leading() && !b.stats.is_leading(),
        "exactly one holder"
    );

    let first = burst(&env, "first", 5, &node).await;
    assert_all_bound_once(&env, &first, &node).await;
    assert_eq!(
        b.stats.bound.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the waiting agent bound nothing"
    );

    // Rollout: a stops gracefully and releases; b takes over without waiting for expiry.
    let t = tokio::time::Instant::now();
    a.stop().await.expect("stop a");
    wait_until(
        Duration::from_secs(5),
        "b leads after a released",
        || async { b.stats.is_leading() },
    )
    .await;
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "handover took {:?}",
        t.elapsed()
    );
    let second = burst(&env, "second", 5, &node).await;
    assert_all_bound_once(&env, &second, &node).await;
    b.stop().await.expect("stop b");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_mid_bind_and_restarted_loses_nothing() {
    let env = TestEnv::new("crash").await;
    let Some(sim) = env.sim_or_skip("agent_killed_mid_bind_and_restarted_loses_nothing") else {
        return env.cleanup().await;
    };
    let node = env.node_name("n1");
    env.create_node(&node, json!({})).await;
    let a = env.start_agent(env.agent_config(&node)).await;
    // Slow API: the agent is caught in the middle of binds when it dies.
    sim.faults().set_latency(Duration::from_millis(60));
    let names = burst(&env, "crash", 12, &node).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    a.kill().await;
    sim.faults().clear();

    // A successor with another identity waits for the dead holder's lease to expire.
    let mut cfg = env.agent_config(&node);
    cfg.identity = "successor".into();
    let b = env.start_agent(cfg).await;
    assert_all_bound_once(&env, &names, &node).await;
    b.stop().await.expect("stop");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_are_retried_without_counting_attempts() {
    let env = TestEnv::new("api-errors").await;
    let Some(sim) = env.sim_or_skip("api_errors_are_retried_without_counting_attempts") else {
        return env.cleanup().await;
    };
    let node = env.node_name("n1");
    env.create_node(&node, json!({})).await;
    let agent = env.start_agent(env.agent_config(&node)).await;
    // 500/502 reach the agent directly; kube-rs's client itself retries 429/503/504
    // (honouring Retry-After), which would only make this test slow.
    for (verb, resource, status) in [
        ("get", "pods", 500),
        ("create", "pods/binding", 500),
        ("patch", "bindrequests/status", 502),
    ] {
        sim.faults().add_rule(FaultRule {
            verb: Some(verb.into()),
            resource: Some(resource.into()),
            status,
            probability: 0.3,
            times: None,
        });
    }
    let names = burst(&env, "flaky", 20, &node).await;
    for name in &names {
        let br = env.wait_phase(name, Phase::Succeeded).await;
        assert_eq!(
            attempts(&br),
            0,
            "{name}: infrastructure errors are not failed attempts"
        );
    }
    sim.faults().clear();
    for name in &names {
        assert_eq!(env.pod_node(name).await.as_deref(), Some(node.as_str()));
    }
    agent.stop().await.expect("stop");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_conflict_is_reread_and_recomputed() {
    let env = TestEnv::new("conflict").await;
    let Some(sim) = env.sim_or_skip("status_conflict_is_reread_and_recomputed") else {
        return env.cleanup().await;
    };
    let node = env.node_name("n1");
    env.create_node(&node, json!({})).await;
    let agent = env.start_agent(env.agent_config(&node)).await;
    sim.faults().add_rule(FaultRule {
        verb: Some("patch".into()),
        resource: Some("bindrequests/status".into()),
        status: 409,
        probability: 1.0,
        times: Some(2),
    });
    env.pod_and_request("c1", &node).await;
    env.create_request("c2", &node, None, json!({})).await; // missing pod: counts attempts
    let br = env.wait_phase("c1", Phase::Succeeded).await;
    assert_eq!(attempts(&br), 0);
    let br = env.wait_phase("c2", Phase::Failed).await;
    assert_eq!(
        attempts(&br),
        3,
        "conflicts neither lose nor double-count attempts: {}",
        reason(&br)
    );
    agent.stop().await.expect("stop");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_watches_expired_versions_and_api_restarts_lose_nothing() {
    let env = TestEnv::new("watch-faults").await;
    let Some(sim) =
        env.sim_or_skip("dropped_watches_expired_versions_and_api_restarts_lose_nothing")
    else {
        return env.cleanup().await;
    };
    let node = env.node_name("n1");
    env.create_node(&node, json!({})).await;
    let agent = env.start_agent(env.agent_config(&node)).await;

    let mut all = burst(&env, "w0", 5, &node).await;
    sim.faults().drop_watches();
    all.extend(burst(&env, "w1", 5, &node).await);
    // 410 Gone: history compacted while watches are cut; the agent relists.
    sim.faults().compact();
    sim.faults().drop_watches();
    all.extend(burst(&env, "w2", 5, &node).await);
    sim.restart().await;
    all.extend(burst(&env, "w3", 5, &node).await);
    assert_all_bound_once(&env, &all, &node).await;
    agent.stop().await.expect("stop");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_api_server_at_start_is_waited_out() {
    let env = TestEnv::new("failing-start").await;
    let Some(sim) = env.sim_or_skip("failing_api_server_at_start_is_waited_out") else {
        return env.cleanup().await;
    };
    let node = env.node_name("n1");
    env.create_node(&node, json!({})).await;
    env.pod_and_request("early", &node).await;
    // Every request fails for a while: the agent keeps retrying, then catches up.
    sim.faults().add_rule(FaultRule {
        verb: None,
        resource: None,
        status: 500,
        probability: 1.0,
        times: Some(40),
    });
    let agent = bindlet::agent::spawn(env.client.clone(), env.agent_config(&node));
    let br = env.wait_phase("early", Phase::Succeeded).await;
    assert_eq!(attempts(&br), 0);
    agent.stop().await.expect("stop");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_created_while_the_watch_is_down_are_all_bound_after_the_relist() {
    let env = TestEnv::new("relist").await;
    let Some(sim) =
        env.sim_or_skip("requests_created_while_the_watch_is_down_are_all_bound_after_the_relist")
    else {
        return env.cleanup().await;
    };
    let node = env.node_name("n1");
    env.create_node(&node, json!({})).await;
    let mut cfg = env.agent_config(&node);
    cfg.workers = 8;
    let agent = env.start_agent(cfg).await;
    // The watch stays down for a few retries while requests arrive; history is compacted so
    // the agent must relist (410), and every listed request must then be worked.
    sim.faults().add_rule(FaultRule {
        verb: Some("watch".into()),
        resource: Some("bindrequests".into()),
        status: 500,
        probability: 1.0,
        times: Some(3),
    });
    sim.faults().compact();
    sim.faults().drop_watches();
    let names = burst(&env, "gap", 30, &node).await;
    assert_all_bound_once(&env, &names, &node).await;
    agent.stop().await.expect("stop");
    env.cleanup().await;
}

/// The agent's API requests so far, from its own metrics, by (verb, resource).
fn agent_api_calls(agent: &bindlet::agent::AgentHandle) -> bindlet::sim::RequestCounts {
    bindlet::bench::parse_api_requests(&agent.stats.diag.encode_metrics(&agent.stats))
}

/// A status write that admission refuses (422, as bindlet's own ValidatingAdmissionPolicy
/// answers) cannot succeed by being sent again: over a minute the agent sends it once,
/// reports it once, and leaves the request alone, while other requests keep binding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_status_write_is_sent_once_in_a_minute_not_in_a_loop() {
    let env = TestEnv::new("refused-status").await;
    let Some(sim) =
        env.sim_or_skip("a_refused_status_write_is_sent_once_in_a_minute_not_in_a_loop")
    else {
        return env.cleanup().await;
    };
    let node = env.node_name("n1");
    env.create_node(&node, json!({})).await;
    let agent = env.start_agent(env.agent_config(&node)).await;

    sim.faults()
        .add_rule(FaultRule::always("patch", "bindrequests/status", 422));
    env.pod_and_request("denied", &node).await;
    wait_until(
        Duration::from_secs(10),
        "the refusal is recorded",
        || async {
            agent
                .stats
                .diag
                .debug_state(&agent.stats)
                .left_alone
                .iter()
                .any(|r| r.name == "denied" && r.reason == "StatusWriteRefused")
        },
    )
    .await;
    let calls_after_refusal = sim.request_count().total();
    // The test's backoff is 50 ms .. 400 ms: a retry loop would send ~150 writes a minute.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let writes = agent_api_calls(&agent).get("patch", "bindrequests/status");
    assert_eq!(writes, 1, "status writes in a minute: {writes}");
    let calls_in_the_minute = sim.request_count().total() - calls_after_refusal;
    // Only the Lease renewals (every 200 ms in tests) and Event writes remain.
    let lease_calls =
        sim.request_count().get("update", "leases") + sim.request_count().get("get", "leases");
    assert!(
        calls_in_the_minute <= lease_calls + 5,
        "{calls_in_the_minute} requests in the minute, {lease_calls} of them for the Lease; \
         agent calls: {:?}",
        agent_api_calls(&agent)
    );
    let events = env
        .wait_events("BindRequest", "denied", "StatusWriteRefused", 1)
        .await;
    let refused: Vec<_> = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("StatusWriteRefused"))
        .collect();
    assert_eq!(refused.len(), 1, "one Warning Event: {events:?}");
    assert!(
        refused[0].note.as_deref().unwrap_or("").contains("422"),
        "{:?}",
        refused[0].note
    );
    let metrics = agent.stats.diag.encode_metrics(&agent.stats);
    assert!(
        metrics.contains("bindlet_requests_left_alone_total{reason=\"StatusWriteRefused\"} 1"),
        "{metrics}"
    );

    // The agent goes on: once writes are allowed again, other requests bind as usual.
    sim.faults().clear();
    env.pod_and_request("after", &node).await;
    env.wait_phase("after", Phase::Succeeded).await;
    agent.stop().await.expect("stop");
    env.cleanup().await;
}
