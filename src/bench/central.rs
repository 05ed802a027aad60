//! The peer a user would pick instead of node agents: one central binder for every node,
//! configured like KAI-Scheduler's binder (`cmd/binder/app/options.go`: `--qps 50`,
//! `--burst 300`, `--max-concurrent-reconciles 10`, work-queue failure backoff 1 s to 60 s).
//! It watches every BindRequest of the cluster (no node selector: that is how a central
//! binder works) and binds each pod to the request's `selectedNode`.
//!
//! Per bind it sends the same three requests as the node agent (GET pod, POST binding,
//! PATCH status), each through one client-side token bucket like client-go's rate limiter.
//! KAI's binder also sends three per bind (a pod patch, the binding, the status patch;
//! `pkg/binder/binding/binder.go`, `pkg/binder/controllers/bindrequest_controller.go`), its
//! reads coming from its informer cache, so its ceiling is the same: QPS / 3 binds/s once the
//! burst is spent. Its leader-election Lease is not modelled (one replica runs).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use crate::api::BindRequest;

/// KAI's binder defaults (`cmd/binder/app/options.go`).
pub const KAI_QPS: f64 = 50.0;
pub const KAI_BURST: u32 = 300;
pub const KAI_WORKERS: usize = 10;
const KAI_BACKOFF_BASE: Duration = Duration::from_secs(1);
const KAI_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// client-go's token-bucket rate limiter: `burst` tokens, refilled at `qps` per second;
/// each request takes one, waiting for it when none is left.
pub struct TokenBucket {
    qps: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(qps: f64, burst: u32) -> TokenBucket {
        TokenBucket {
            qps: qps.max(0.001),
            burst: f64::from(burst.max(1)),
            state: Mutex::new((f64::from(burst.max(1)), Instant::now())),
        }
    }

    /// Takes a token now and returns how long its request must wait (tokens may go
    /// negative: each waiter holds its place in line, as client-go's reservations do).
    pub fn reserve(&self, now: Instant) -> Duration {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = *st;
        let refilled =
            (tokens + now.saturating_duration_since(last).as_secs_f64() * self.qps).min(self.burst);
        let left = refilled - 1.0;
        *st = (left, now);
        if left >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-left / self.qps)
        }
    }

    pub async fn acquire(&self) {
        let wait = self.reserve(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// The work queue: each request at most once in line, with per-request failure backoff.
#[derive(Default)]
struct Queue {
    state: Mutex<(std::collections::VecDeque<String>, HashSet<String>)>,
    ready: Notify,
}

impl Queue {
    fn add(&self, key: String) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.1.insert(key.clone()) {
            st.0.push_back(key);
            self.ready.notify_one();
        }
    }

    async fn next(&self) -> String {
        loop {
            let notified = self.ready.notified();
            {
                let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(k) = st.0.pop_front() {
                    st.1.remove(&k);
                    return k;
                }
            }
            notified.await;
        }
    }
}

fn key(br: &BindRequest) -> String {
    format!("{}/{}", br.namespace().unwrap_or_default(), br.name_any())
}

/// Runs the central binder until the future is dropped; `ready` fires once its watch has
/// listed every BindRequest.
pub async fn run(client: Client, qps: f64, burst: u32, workers: usize, ready: mpsc::Sender<()>) {
    let (store, mut writer) = reflector::store::<BindRequest>();
    let queue = Arc::new(Queue::default());
    let bucket = Arc::new(TokenBucket::new(qps, burst));
    let failures: Arc<Mutex<std::collections::HashMap<String, u32>>> = Default::default();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let (client, store, queue, bucket, failures) = (
            client.clone(),
            store.clone(),
            queue.clone(),
            bucket.clone(),
            failures.clone(),
        );
        tasks.spawn(async move {
            loop {
                let k = queue.next().await;
                match bind(&client, &store, &bucket, &k).await {
                    Ok(()) => {
                        failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&k);
                    }
                    Err(e) => {
                        let n = {
                            let mut f = failures.lock().unwrap_or_else(|p| p.into_inner());
                            let n = f.entry(k.clone()).or_insert(0);
                            *n += 1;
                            *n
                        };
                        let delay = KAI_BACKOFF_BASE
                            .saturating_mul(1 << n.min(7).saturating_sub(1))
                            .min(KAI_BACKOFF_MAX);
                        tracing::debug!(request = %k, error = %e, "central binder: retry in {delay:?}");
                        let queue = queue.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            queue.add(k);
                        });
                    }
                }
            }
        });
    }
    // Every BindRequest of the cluster: no label or field selector.
    let stream = watcher::watcher(Api::<BindRequest>::all(client), watcher::Config::default());
    futures::pin_mut!(stream);
    let mut ready = Some(ready);
    while let Ok(Some(ev)) = stream.try_next().await {
        writer.apply_watcher_event(&ev);
        match &ev {
            watcher::Event::Apply(br) | watcher::Event::InitApply(br)
                if !crate::binding::is_settled(br, 3) =>
            {
                queue.add(key(br));
            }
            watcher::Event::InitDone => {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(()).await;
                }
            }
            _ => {}
        }
    }
    tasks.abort_all();
}

/// One reconcile: GET the pod, POST its binding to the selected node, PATCH the status
/// (guarded by the resourceVersion the decision was made on), each after a token.
async fn bind(
    client: &Client,
    store: &Store<BindRequest>,
    bucket: &TokenBucket,
    k: &str,
) -> Result<(), kube::Error> {
    let Some((ns, name)) = k.split_once('/') else {
        return Ok(());
    };
    let Some(br) = store.get(&ObjectRef::new(name).within(ns)) else {
        return Ok(());
    };
    if crate::binding::is_settled(&br, 3) {
        return Ok(());
    }
    let pod_name = br.spec.pod_name.clone().unwrap_or_default();
    let node = br.spec.selected_node.clone().unwrap_or_default();
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    bucket.acquire().await;
    let pod = pods.get(&pod_name).await?;
    let bound = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    if bound.is_none() {
        let binding = json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": { "name": pod_name, "namespace": ns, "uid": pod.metadata.uid },
            "target": { "apiVersion": "v1", "kind": "Node", "name": node },
        });
        bucket.acquire().await;
        let _: serde_json::Value = pods
            .create_subresource("binding", &pod_name, &PostParams::default(), &binding)
            .await?;
    }
    let body = json!({
        "metadata": { "resourceVersion": br.resource_version() },
        "status": { "phase": "Succeeded", "reason": format!("bound to node {node}") },
    });
    bucket.acquire().await;
    Api::<BindRequest>::namespaced(client.clone(), ns)
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_spends_its_burst_then_paces_at_qps() {
        let t0 = Instant::now();
        let b = TokenBucket::new(50.0, 300);
        // (requests taken at t0 so far) -> wait of the next one
        for i in 0..300 {
            assert_eq!(
                b.reserve(t0),
                Duration::ZERO,
                "request {i} within the burst"
            );
        }
        let w1 = b.reserve(t0);
        let w2 = b.reserve(t0);
        assert!((w1.as_secs_f64() - 0.02).abs() < 1e-9, "{w1:?}");
        assert!((w2.as_secs_f64() - 0.04).abs() < 1e-9, "{w2:?}");
        // A second later 50 tokens came back, of which two were promised already.
        let later = t0 + Duration::from_secs(1);
        for _ in 0..48 {
            assert_eq!(b.reserve(later), Duration::ZERO);
        }
        assert!(b.reserve(later) > Duration::ZERO);
        // Idle for long: never more than the burst.
        let much_later = later + Duration::from_secs(3600);
        for _ in 0..300 {
            assert_eq!(b.reserve(much_later), Duration::ZERO);
        }
        assert!(b.reserve(much_later) > Duration::ZERO);
    }
}
