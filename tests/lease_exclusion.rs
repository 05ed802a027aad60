//! The node Lease: two agents on one node never lead (and so never bind) at the same time,
//! through a rollout, a crash, failing renewals and a slow API server. A sampler watches
//! both agents' `leading` flags every millisecond for the whole test.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bindlet::agent::{AgentHandle, Stats};
use bindlet::api::Phase;
use bindlet::sim::FaultRule;
use common::{TestEnv, attempts, wait_until};
use serde_json::json;

/// Samples the agents' `leading` flags until stopped; counts samples where more than one led.
struct OverlapSampler {
    agents: Arc<Mutex<Vec<Arc<Stats>>>>,
    both: Arc<AtomicU64>,
    samples: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl OverlapSampler {
    fn start(agents: Vec<Arc<Stats>>) -> Self {
        let agents = Arc::new(Mutex::new(agents));
        let (both, samples, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (b, n, s, list) = (both.clone(), samples.clone(), stop.clone(), agents.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                let leaders = list
                    .lock()
                    .expect("sampler list")
                    .iter()
                    .filter(|a| a.is_leading())
                    .count();
                if leaders > 1 {
                    b.fetch_add(1, Ordering::Relaxed);
                }
                n.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        OverlapSampler {
            agents,
            both,
            samples,
            stop,
            task,
        }
    }

    /// A killed agent's flag stays as it was when it died: stop looking at it.
    fn forget(&self, dead: &Arc<Stats>) {
        self.agents
            .lock()
            .expect("sampler list")
            .retain(|a| !Arc::ptr_eq(a, dead));
    }

    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        (
            self.both.load(Ordering::Relaxed),
            self.samples.load(Ordering::Relaxed),
        )
    }
}

fn bound(a: &AgentHandle) -> u64 {
    a.stats.bound.load(Ordering::Relaxed)
}

async fn requests(env: &TestEnv, prefix: &str, n: usize, node: &str) -> Vec<String> {
    let mut names = Vec::new();
    for i in 0..n {
        let name = format!("{prefix}-{i}");
        env.pod_and_request(&name, node).await;
        names.push(name);
    }
    names
}

/// Every request Succeeded on its first attempt and its pod is on `node`.
async fn all_bound(env: &TestEnv, names: &[String], node: &str) {
    for name in names {
        let br = env.wait_phase(name, Phase::Succeeded).await;
        assert_eq!(attempts(&br), 0, "{name}: {:?}", br.status);
        assert_eq!(env.pod_node(name).await.as_deref(), Some(node), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_on_one_node_never_lead_at_once() {
    let env = TestEnv::new("lease-excl").await;
    let Some(sim) = env.sim_or_skip("two_agents_on_one_node_never_lead_at_once") else {
        return env.cleanup().await;
    };
    let node = env.node_name("n1");
    env.create_node(&node, json!({})).await;
    let config = |id: &str| {
        let mut cfg = env.agent_config(&node);
        cfg.identity = id.into();
        cfg
    };
    let a = env.start_agent(config("agent-a")).await;
    let b = bindlet::agent::spawn(env.client.clone(), config("agent-b"));
    let c = bindlet::agent::spawn(env.client.clone(), config("agent-c"));
    let sampler = OverlapSampler::start(vec![a.stats.clone(), b.stats.clone(), c.stats.clone()]);
    wait_until(Duration::from_secs(10), "b and c synced", || async {
        b.stats.is_synced() && c.stats.is_synced()
    })
    .await;

    // 1. a leads; the others keep waiting and bind nothing.
    let first = requests(&env, "first", 5, &node).await;
    all_bound(&env, &first, &node).await;
    assert!(a.stats.is_leading());
    assert_eq!(
        (bound(&b), bound(&c)),
        (0, 0),
        "waiting agents bound nothing"
    );

    // 2. Lease writes fail (reads work): a stops leading on its own deadline; the others
    //    see its record unchanged for the whole lease and would take over, but cannot write
    //    either, so nobody leads. Writes come back after 2.5 s, longer than the lease: a
    //    successor then takes over at once, which is safe only because a stopped first.
    //    Requests created meanwhile wait, then bind once a holder is back.
    let faulted = tokio::time::Instant::now();
    sim.faults()
        .add_rule(FaultRule::always("update", "leases", 500));
    // Its last successful renewal was sent before the fault: 2/3 of the 2 s lease later at
    // the latest, it has stopped.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!a.stats.is_leading(), "a still leads without renewing");
    let during = requests(&env, "during", 3, &node).await;
    tokio::time::sleep(Duration::from_millis(2500).saturating_sub(faulted.elapsed())).await;
    for name in &during {
        assert_eq!(
            env.pod_node(name).await,
            None,
            "{name} bound without a holder"
        );
    }
    sim.faults().clear();
    all_bound(&env, &during, &node).await;

    // 3. A slow API server (each request 300 ms, a renewal takes most of the 1.33 s
    //    deadline): holders may step down and re-acquire, never two at once.
    sim.faults().set_latency(Duration::from_millis(300));
    let slow = requests(&env, "slow", 4, &node).await;
    all_bound(&env, &slow, &node).await;
    sim.faults().clear();

    // 4. Crash: the holder dies without releasing; another takes over after expiry.
    let holders = [&a, &b, &c];
    wait_until(Duration::from_secs(10), "one holder", || async {
        holders.iter().filter(|h| h.stats.is_leading()).count() == 1
    })
    .await;
    let (dead, rest): (Vec<_>, Vec<_>) = [a, b, c].into_iter().partition(|h| h.stats.is_leading());
    let t = tokio::time::Instant::now();
    for d in dead {
        // Killed first, then forgotten: until it is dead its flag still counts.
        let stats = d.stats.clone();
        d.kill().await;
        sampler.forget(&stats);
    }
    wait_until(Duration::from_secs(10), "a successor leads", || async {
        rest.iter().any(|h| h.stats.is_leading())
    })
    .await;
    // Nobody took over before the dead holder's last renewal could have expired.
    assert!(
        t.elapsed() >= Duration::from_millis(1300),
        "takeover after {:?}",
        t.elapsed()
    );
    let after_crash = requests(&env, "crash", 4, &node).await;
    all_bound(&env, &after_crash, &node).await;

    // 5. Rollout: the holder stops gracefully and releases; the other takes over at once.
    let (leader, other): (Vec<_>, Vec<_>) = rest.into_iter().partition(|h| h.stats.is_leading());
    let t = tokio::time::Instant::now();
    for l in leader {
        l.stop().await.expect("stop");
    }
    wait_until(Duration::from_secs(5), "the other agent leads", || async {
        other.iter().any(|h| h.stats.is_leading())
    })
    .await;
    assert!(
        t.elapsed() < Duration::from_millis(1300),
        "handover took {:?}, as long as an expiry",
        t.elapsed()
    );
    let after_rollout = requests(&env, "rollout", 4, &node).await;
    all_bound(&env, &after_rollout, &node).await;

    let (both, samples) = sampler.finish().await;
    assert!(samples > 1000, "sampled {samples} times");
    assert_eq!(
        both, 0,
        "two agents led at once in {both} of {samples} samples"
    );
    // At most one Bound Event per pod: no pod was bound twice.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for name in first
        .iter()
        .chain(&during)
        .chain(&slow)
        .chain(&after_crash)
        .chain(&after_rollout)
    {
        let bound = env
            .events_for("Pod", name)
            .await
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("Bound"))
            .count();
        assert_eq!(bound, 1, "{name}: {bound} Bound events");
    }
    for o in other {
        o.stop().await.expect("stop");
    }
    env.cleanup().await;
}

/// While idle, the holder costs one Lease write per renewal and nothing else: no Lease
/// read, no relist, no extra watch (renewal every 500 ms in this test's config; 15 s in
/// production, so ≤ 0.07 requests/s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_holder_renews_with_one_request_per_renewal() {
    let env = TestEnv::new("lease-idle").await;
    let Some(sim) = env.sim_or_skip("an_idle_holder_renews_with_one_request_per_renewal") else {
        return env.cleanup().await;
    };
    let node = env.node_name("n1");
    env.create_node(&node, json!({})).await;
    let a = env.start_agent(env.agent_config(&node)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = sim.request_count();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = sim.request_count();
    let delta = |verb: &str, res: &str| after.get(verb, res) - before.get(verb, res);
    let renewals = delta("update", "leases");
    // 5 s at one renewal per 450..500 ms.
    assert!((9..=12).contains(&renewals), "{renewals} renewals in 5 s");
    assert_eq!(delta("get", "leases"), 0, "renewals read nothing");
    let total = after.total() - before.total();
    assert_eq!(
        total, renewals,
        "idle requests besides renewals: {:?}",
        after
    );
    assert!(a.stats.is_leading());
    a.stop().await.expect("stop");
    env.cleanup().await;
}
