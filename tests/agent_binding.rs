//! The agent, end to end over HTTP: per-request decisions, KAI status semantics, Events.
//! Runs against the embedded simulator, or a real cluster with BINDLET_TEST_KUBECONFIG.

mod common;

use std::time::Duration;

use bindlet::api::{Phase, VerdictOutcome};
use bindlet::plugins::CheckMode;
use common::{Crd, TestEnv, attempts, reason};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_a_pod_and_reports_verified_status_and_events() {
    let env = TestEnv::new("binds").await;
    let node = env.node_name("n1");
    env.create_node(&node, json!({})).await;
    let agent = env.start_agent(env.agent_config(&node)).await;
    let pod = env.pod_and_request("web-1", &node).await;

    let br = env.wait_phase("web-1", Phase::Succeeded).await;
    assert_eq!(env.pod_node("web-1").await.as_deref(), Some(node.as_str()));
    assert_eq!(attempts(&br), 0);
    assert!(reason(&br).contains(&node), "{}", reason(&br));
    // The scheduler's PodScheduled condition is set by the server on binding.
    let live = env.pods().get("web-1").await.expect("pod");
    let conds = live.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(
        conds
            .iter()
            .any(|c| c.type_ == "PodScheduled" && c.status == "True"),
        "{conds:?}"
    );
    assert_eq!(live.metadata.uid, pod.metadata.uid);

    // What was verified is recorded with bindlet's CRD.
    let v = env.verification(&agent, &br);
    assert_eq!(v.node, node);
    assert!(
        v.verdicts.iter().any(|v| v.plugin == "node"
            && v.check == "taints"
            && v.outcome == VerdictOutcome::Pass)
    );

    // One success Event, on the pod (as KAI's binder writes it); the BindRequest's success
    // is its status. Events are written asynchronously: wait a moment before counting.
    let pod_events = env.wait_events("Pod", "web-1", "Bound", 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let pod_events_later = env.events_for("Pod", "web-1").await;
    assert_eq!(pod_events.len(), 1, "{pod_events:?}");
    assert_eq!(pod_events_later.len(), 1, "{pod_events_later:?}");
    assert_eq!(pod_events[0].type_.as_deref(), Some("Normal"));
    assert!(pod_events[0].note.as_deref().unwrap_or("").contains(&node));
    let br_events = env.events_for("BindRequest", "web-1").await;
    assert!(br_events.is_empty(), "{br_events:?}");
    agent.stop().await.expect("stop");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_about_the_live_pod() {
    let env = TestEnv::new("decisions").await;
    let node = env.node_name("n1");
    let other = env.node_name("n2");
    env.create_node(&node, json!({})).await;
    env.create_node(&other, json!({})).await;
    let agent = env.start_agent(env.agent_config(&node)).await;

    // Already bound here: success, nothing posted.
    let p = env.create_pod("here", json!({ "nodeName": node })).await;
    env.create_request("here", &node, p.metadata.uid.as_deref(), json!({}))
        .await;
    // Bound to another node: terminal failure.
    let p = env.create_pod("there", json!({ "nodeName": other })).await;
    env.create_request("there", &node, p.metadata.uid.as_deref(), json!({}))
        .await;
    // Recreated pod: the request's owner UID is stale. A cluster's garbage collector deletes
    // such a request soon (its owner is gone); until then the agent must refuse it.
    env.create_pod("recreated", json!({})).await;
    env.create_request(
        "recreated",
        &node,
        Some("00000000-0000-0000-0000-000000000001"),
        json!({}),
    )
    .await;
    // Labelled for this node but spec.selectedNode names another.
    let p = env.create_pod("mislabelled", json!({})).await;
    env.create_request(
        "mislabelled",
        &node,
        p.metadata.uid.as_deref(),
        json!({ "selectedNode": other }),
    )
    .await;
    // A request for another node: this agent never sees it.
    let p = env.create_pod("foreign", json!({})).await;
    env.create_request("foreign", &other, p.metadata.uid.as_deref(), json!({}))
        .await;

    let br = env.wait_phase("here", Phase::Succeeded).await;
    assert!(reason(&br).contains("already bound"), "{}", reason(&br));

    let br = env.wait_phase("there", Phase::Failed).await;
    assert!(
        reason(&br).contains(&format!("already bound to another node \"{other}\"")),
        "{}",
        reason(&br)
    );
    assert_eq!(attempts(&br), 1, "terminal at the first attempt");
    assert_eq!(env.pod_node("there").await.as_deref(), Some(other.as_str()));

    // Whichever comes first, the agent's refusal or the collector, nothing is bound.
    let settled = common::poll(Duration::from_secs(30), || async {
        match env.get_request("recreated").await {
            None => true,
            Some(br) => br.phase() == Some(Phase::Failed),
        }
    })
    .await;
    assert!(
        settled,
        "the stale request was neither refused nor collected"
    );
    match env.get_request("recreated").await {
        Some(br) => assert!(reason(&br).contains("was recreated"), "{}", reason(&br)),
        None => eprintln!("recreated: collected by the garbage collector before the agent saw it"),
    }
    assert_eq!(
        env.pod_node("recreated").await,
        None,
        "a stale request binds nothing"
    );

    // Labelled here but selecting another node: not this node's request. The agent leaves
    // its status alone (only the selected node's agent may write it) and says so once.
    let evs = env
        .wait_events("BindRequest", "mislabelled", "NotThisNode", 1)
        .await;
    let notes: Vec<String> = evs
        .iter()
        .filter(|e| e.reason.as_deref() == Some("NotThisNode"))
        .filter_map(|e| e.note.clone())
        .collect();
    assert_eq!(notes.len(), 1, "{evs:?}");
    assert!(
        notes[0].contains(&format!("spec.selectedNode is \"{other}\"")),
        "{notes:?}"
    );
    let br = env.get_request("mislabelled").await.expect("mislabelled");
    assert!(br.status.is_none(), "status written: {:?}", br.status);
    assert_eq!(env.pod_node("mislabelled").await, None);
    let left_alone = agent.stats.diag.debug_state(&agent.stats).left_alone;
    assert!(
        left_alone
            .iter()
            .any(|r| r.name == "mislabelled" && r.reason == "NotThisNode"),
        "{left_alone:?}"
    );

    // By now the agent has long processed everything it can see.
    let foreign = env.get_request("foreign").await.expect("foreign request");
    assert!(
        foreign.status.is_none(),
        "another node's request was touched: {:?}",
        foreign.status
    );
    assert_eq!(env.pod_node("foreign").await, None);
    agent.stop().await.expect("stop");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_pod_is_retried_with_increasing_attempts_then_failed() {
    let env = TestEnv::new("missing").await;
    let node = env.node_name("n1");
    env.create_node(&node, json!({})).await;
    let agent = env.start_agent(env.agent_config(&node)).await;

    // No owner reference: a request owned by a missing pod is deleted by the garbage
    // collector (see `a_request_whose_pod_is_gone_is_collected_and_binds_nothing`).
    env.create_request("ghost", &node, None, json!({})).await;
    env.create_request("ghost5", &node, None, json!({ "backoffLimit": 5 }))
        .await;

    let br = env.wait_phase("ghost", Phase::Failed).await;
    assert_eq!(attempts(&br), 3, "default backoff limit");
    assert!(
        reason(&br).contains("not found") && reason(&br).contains("gave up after 3 attempts"),
        "{}",
        reason(&br)
    );
    let br = env.wait_phase("ghost5", Phase::Failed).await;
    assert_eq!(attempts(&br), 5, "the request's own backoffLimit");

    // One Warning per attempt; the first ones say they will retry, the last gives up.
    let evs = env
        .wait_events("BindRequest", "ghost", "PodNotFound", 3)
        .await;
    let notes: Vec<String> = evs.iter().filter_map(|e| e.note.clone()).collect();
    assert_eq!(notes.len(), 3, "{notes:?}");
    assert!(
        notes[0].contains("attempt 1 of 3 failed, will retry"),
        "{notes:?}"
    );
    assert!(
        notes[1].contains("attempt 2 of 3 failed, will retry"),
        "{notes:?}"
    );
    assert!(notes[2].contains("giving up"), "{notes:?}");
    assert!(evs.iter().all(|e| e.type_.as_deref() == Some("Warning")));
    assert!(
        evs.iter().all(|e| e.reason.as_deref() != Some("Bound")),
        "no success event after a failure"
    );
    agent.stop().await.expect("stop");
    env.cleanup().await;
}

/// KAI deletes nothing when a pod goes away before binding: the garbage collector removes
/// the BindRequest it owned. The agent then drops it with no status write and no Event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_pod_is_gone_is_collected_and_binds_nothing() {
    let env = TestEnv::new("collected").await;
    let node = env.node_name("n1");
    env.create_node(&node, json!({})).await;
    let agent = env.start_agent(env.agent_config(&node)).await;
    let pod = env.create_pod("gone", json!({})).await;
    env.pods()
        .delete("gone", &kube::api::DeleteParams::default().grace_period(0))
        .await
        .expect("delete pod");
    common::wait_until(Duration::from_secs(10), "pod gone", || async {
        env.pods().get_opt("gone").await.ok().flatten().is_none()
    })
    .await;
    env.create_request("gone", &node, pod.metadata.uid.as_deref(), json!({}))
        .await;
    common::wait_until(
        Duration::from_secs(30),
        "the request is garbage-collected",
        || async { env.get_request("gone").await.is_none() },
    )
    .await;
    env.pod_and_request("alive", &node).await;
    env.wait_phase("alive", Phase::Succeeded).await;
    // Nothing about the collected request is left queued or retrying.
    common::wait_until(Duration::from_secs(10), "the queue drains", || async {
        let state = agent.stats.diag.debug_state(&agent.stats);
        state.queue_depth == 0 && state.in_flight == 0
    })
    .await;
    agent.stop().await.expect("stop");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_appears_during_retries_is_bound() {
    let env = TestEnv::new("late-pod").await;
    let node = env.node_name("n1");
    env.create_node(&node, json!({})).await;
    let mut cfg = env.agent_config(&node);
    cfg.backoff.base = Duration::from_millis(400);
    cfg.backoff.max = Duration::from_secs(2);
    let agent = env.start_agent(cfg).await;

    env.create_request("late", &node, None, json!({ "backoffLimit": 10 }))
        .await;
    common::wait_until(
        Duration::from_secs(10),
        "first failed attempt recorded",
        || async {
            env.get_request("late")
                .await
                .is_some_and(|b| attempts(&b) >= 1 && b.phase() == Some(Phase::Pending))
        },
    )
    .await;
    env.create_pod("late", json!({})).await;
    let br = env.wait_phase("late", Phase::Succeeded).await;
    assert!(
        attempts(&br) >= 1,
        "failedAttempts persisted across the success"
    );
    assert_eq!(env.pod_node("late").await.as_deref(), Some(node.as_str()));
    agent.stop().await.expect("stop");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_fail_with_a_reason_and_do_not_block_others() {
    let env = TestEnv::new("malformed").await;
    let node = env.node_name("n1");
    env.create_node(&node, json!({})).await;
    let agent = env.start_agent(env.agent_config(&node)).await;

    let p = env.create_pod("frac", json!({})).await;
    env.create_request(
        "frac",
        &node,
        p.metadata.uid.as_deref(),
        json!({ "receivedResourceType": "Fraction", "receivedGPU": { "count": 1, "portion": "1.5" }, "selectedGPUGroups": ["g"] }),
    )
    .await;
    env.create_request("nopod", &node, None, json!({ "podName": "" }))
        .await;
    env.create_request(
        "kind",
        &node,
        None,
        json!({ "receivedResourceType": "Whole" }),
    )
    .await;
    env.pod_and_request("fine", &node).await;

    for (name, text) in [
        ("frac", "invalid GPU portion \"1.5\""),
        ("nopod", "spec.podName is empty"),
        ("kind", "\"Whole\""),
    ] {
        let br = env.wait_phase(name, Phase::Failed).await;
        assert!(
            reason(&br).contains("malformed BindRequest") && reason(&br).contains(text),
            "{name}: {}",
            reason(&br)
        );
        assert_eq!(attempts(&br), 1, "{name}: terminal at once");
    }
    assert_eq!(env.pod_node("frac").await, None);
    env.wait_phase("fine", Phase::Succeeded).await;
    let evs = env
        .wait_events("BindRequest", "frac", "MalformedRequest", 1)
        .await;
    assert!(
        evs.iter()
            .any(|e| e.note.as_deref().unwrap_or("").contains("1.5"))
    );
    agent.stop().await.expect("stop");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_checks_refuse_taints_and_cordon_and_retry_after_a_change() {
    let env = TestEnv::new("node-checks").await;
    let node = env.node_name("n1");
    env.create_node(&node, json!({ "taints": [ { "key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule" } ] })).await;
    let mut cfg = env.agent_config(&node);
    cfg.backoff.base = Duration::from_millis(300);
    cfg.backoff.max = Duration::from_secs(5);
    let agent = env.start_agent(cfg).await;

    let tolerating = json!({ "tolerations": [
        { "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule" },
        { "key": "node.kubernetes.io/not-ready", "operator": "Exists" },
        { "key": "node.kubernetes.io/unreachable", "operator": "Exists" }
    ] });
    let p = env.create_pod("tolerates", tolerating.clone()).await;
    env.create_request("tolerates", &node, p.metadata.uid.as_deref(), json!({}))
        .await;
    env.pod_and_request("intolerant", &node).await;

    env.wait_phase("tolerates", Phase::Succeeded).await;
    let br = env.wait_phase("intolerant", Phase::Failed).await;
    assert!(
        reason(&br).contains("does not tolerate")
            && reason(&br).contains("nvidia.com/gpu=present:NoSchedule"),
        "{}",
        reason(&br)
    );
    assert_eq!(attempts(&br), 3);
    assert_eq!(env.pod_node("intolerant").await, None);
    let v = env.verification(&agent, &br);
    assert!(
        v.verdicts
            .iter()
            .any(|v| v.check == "taints" && v.outcome == VerdictOutcome::Fail)
    );

    // Cordoned: refused while cordoned; uncordoning re-queues at once and it binds.
    env.patch_node(&node, json!({ "spec": { "unschedulable": true } }))
        .await;
    let p = env.create_pod("cordoned", tolerating).await;
    env.create_request(
        "cordoned",
        &node,
        p.metadata.uid.as_deref(),
        json!({ "backoffLimit": 50 }),
    )
    .await;
    common::wait_until(
        Duration::from_secs(10),
        "refused while cordoned",
        || async {
            env.get_request("cordoned")
                .await
                .is_some_and(|b| attempts(&b) >= 1 && reason(&b).contains("cordoned"))
        },
    )
    .await;
    env.patch_node(&node, json!({ "spec": { "unschedulable": false } }))
        .await;
    let br = env.wait_phase("cordoned", Phase::Succeeded).await;
    assert!(attempts(&br) >= 1);
    agent.stop().await.expect("stop");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_checks_in_warn_mode_bind_and_record_the_warning() {
    let env = TestEnv::new("warn").await;
    let node = env.node_name("n1");
    env.create_node(&node, json!({ "unschedulable": true }))
        .await;
    let mut cfg = env.agent_config(&node);
    cfg.plugins.node_checks = CheckMode::Warn;
    let agent = env.start_agent(cfg).await;
    env.pod_and_request("warned", &node).await;
    let br = env.wait_phase("warned", Phase::Succeeded).await;
    let v = env.verification(&agent, &br);
    assert!(
        v.verdicts
            .iter()
            .any(|v| v.check == "cordon" && v.outcome == VerdictOutcome::Warn)
    );
    agent.stop().await.expect("stop");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_deleted_while_retrying_is_dropped() {
    let env = TestEnv::new("deleted-br").await;
    let node = env.node_name("n1");
    env.create_node(&node, json!({})).await;
    let mut cfg = env.agent_config(&node);
    cfg.backoff.base = Duration::from_millis(500);
    let agent = env.start_agent(cfg).await;

    env.create_request("dropme", &node, None, json!({ "backoffLimit": 20 }))
        .await;
    common::wait_until(Duration::from_secs(10), "first failed attempt", || async {
        env.get_request("dropme")
            .await
            .is_some_and(|b| attempts(&b) >= 1)
    })
    .await;
    env.bind_requests()
        .delete("dropme", &Default::default())
        .await
        .expect("delete request");
    // The pod appears after its request is gone: nobody asked to bind it any more.
    env.create_pod("dropme", json!({})).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.pod_node("dropme").await,
        None,
        "a deleted request must not be bound"
    );
    // The agent is still healthy.
    env.pod_and_request("after", &node).await;
    env.wait_phase("after", Phase::Succeeded).await;
    agent.stop().await.expect("stop");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_with_kais_own_crd() {
    let env = TestEnv::with_crd("kai-crd", Crd::Kai).await;
    let node = env.node_name("n1");
    env.create_node(&node, json!({})).await;
    let agent = env.start_agent(env.agent_config(&node)).await;
    env.pod_and_request("kai", &node).await;
    env.create_request("kai-ghost", &node, None, json!({}))
        .await;
    let br = env.wait_phase("kai", Phase::Succeeded).await;
    assert_eq!(env.pod_node("kai").await.as_deref(), Some(node.as_str()));
    if env.is_sim() {
        // KAI's schema has no nodeVerification: the server prunes it; phase/reason/attempts stay.
        assert!(
            br.status
                .as_ref()
                .is_some_and(|s| s.node_verification.is_none())
        );
    }
    let br = env.wait_phase("kai-ghost", Phase::Failed).await;
    assert_eq!(attempts(&br), 3);
    agent.stop().await.expect("stop");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_request_is_failed_once_and_the_agent_goes_on() {
    // KAI's schema does not require `spec`; bindlet's types do, so this object cannot be
    // decoded. It must still get a Failed status with the reason, exactly once.
    let env = TestEnv::with_crd("undecodable", Crd::Kai).await;
    let node = env.node_name("n1");
    env.create_node(&node, json!({})).await;
    let agent = env.start_agent(env.agent_config(&node)).await;
    let raw = json!({
        "apiVersion": "scheduling.run.ai/v1alpha2",
        "kind": "BindRequest",
        "metadata": { "name": "nospec", "namespace": env.namespace, "labels": { "selected-node": node } }
    });
    let api: kube::Api<kube::core::DynamicObject> = kube::Api::namespaced_with(
        env.client.clone(),
        &env.namespace,
        &kube::core::ApiResource::erase::<bindlet::api::BindRequest>(&()),
    );
    let obj: kube::core::DynamicObject = serde_json::from_value(raw).expect("object");
    api.create(&Default::default(), &obj).await.expect("create");

    let mut status = serde_json::Value::Null;
    let done = common::poll(Duration::from_secs(10), || {
        let api = api.clone();
        async move {
            let o = api.get("nospec").await.expect("get");
            o.data
                .get("status")
                .and_then(|s| s.get("phase"))
                .and_then(|p| p.as_str())
                == Some("Failed")
        }
    })
    .await;
    assert!(done, "the undecodable request was not marked Failed");
    if let Ok(o) = api.get("nospec").await {
        status = o.data.get("status").cloned().unwrap_or_default();
    }
    let reason = status.get("reason").and_then(|r| r.as_str()).unwrap_or("");
    assert!(
        reason.contains("malformed BindRequest: cannot decode"),
        "{status}"
    );
    let evs = env
        .wait_events("BindRequest", "nospec", "MalformedRequest", 1)
        .await;
    // The agent keeps working.
    env.pod_and_request("after", &node).await;
    env.wait_phase("after", Phase::Succeeded).await;
    let count = evs
        .iter()
        .filter(|e| e.reason.as_deref() == Some("MalformedRequest"))
        .count();
    assert_eq!(count, 1, "reported once, not in a loop");
    agent.stop().await.expect("stop");
    env.cleanup().await;
}
