//! The load both phases share: the same pods and BindRequests, created at the same
//! concurrency, with latency measured by the same pod watch.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use super::BenchError;
use crate::api::{BindRequest, SELECTED_NODE_LABEL};

/// A scheduler name nobody serves, so no real scheduler touches the bench's pods.
pub const SCHEDULER: &str = "bindlet-bench";

pub fn pod_name(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i:06}")
}

fn index_of(name: &str) -> Option<usize> {
    name.rsplit('-').next()?.parse().ok()
}

/// The DRA driver of the bench's ResourceSlices and claims.
pub const DRA_DRIVER: &str = "gpu.bench.bindlet.dev";
/// Devices in the bench's slice (the API's limit per slice). Claims of different pods
/// share them: exclusivity is the scheduler's business, the agent only checks that each
/// device is published for its node, so sharing changes no request the bind makes.
const SLICE_DEVICES: usize = 128;

/// The name of the pod's `j`th claim (pod `spec.resourceClaims[].name` is `c<j>`).
fn claim_name(pod: &str, j: usize) -> String {
    format!("{pod}-c{j}")
}

/// Publishes the node's ResourceSlice (owned by the Node, so a cluster removes it with
/// the Node). Only with `--dra-claims`.
pub async fn publish_slice(client: &Client, node: &Node) -> Result<(), BenchError> {
    let name = node.name_any();
    let devices: Vec<serde_json::Value> = (0..SLICE_DEVICES)
        .map(|g| json!({ "name": format!("gpu-{g}") }))
        .collect();
    let slice: ResourceSlice = serde_json::from_value(json!({
        "metadata": {
            "name": format!("{name}-gpus"),
            "ownerReferences": [ { "apiVersion": "v1", "kind": "Node", "name": name,
                "uid": node.metadata.uid.clone().unwrap_or_default() } ]
        },
        "spec": {
            "driver": DRA_DRIVER, "nodeName": name,
            "pool": { "name": name, "generation": 1, "resourceSliceCount": 1 },
            "devices": devices
        }
    }))?;
    Api::<ResourceSlice>::all(client.clone())
        .create(&PostParams::default(), &slice)
        .await?;
    Ok(())
}

/// The allocation of pod `i`'s `j`th claim: one device of the node's slice, distinct
/// among the pod's claims.
fn allocation(node: &str, i: usize, j: usize, claims: usize) -> serde_json::Value {
    let device = format!("gpu-{}", (i * claims + j) % SLICE_DEVICES);
    json!({
        "devices": { "results": [
            { "request": "gpu", "driver": DRA_DRIVER, "pool": node, "device": device }
        ] },
        "nodeSelector": { "nodeSelectorTerms": [ { "matchFields": [
            { "key": "metadata.name", "operator": "In", "values": [node] }
        ] } ] }
    })
}

/// Plain pods: the benchmark measures the plain bind (GET pod, POST binding, PATCH status).
/// GPU requests add a node-scoped pod LIST and a GPU probe, and a node has only so many
/// GPUs, so thousands of them could not all bind. With `claims` > 0 the pod also uses
/// that many direct ResourceClaims (`c0`, `c1`, ...).
fn pod(ns: &str, name: &str, claims: usize) -> Result<Pod, BenchError> {
    let resources = json!({ "requests": { "cpu": "500m", "memory": "1Gi" } });
    let resource_claims: Vec<serde_json::Value> = (0..claims)
        .map(|j| json!({ "name": format!("c{j}"), "resourceClaimName": claim_name(name, j) }))
        .collect();
    Ok(serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": ns, "labels": { "app": "bindlet-bench" } },
        "spec": {
            "schedulerName": SCHEDULER,
            "tolerations": [{ "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule" }],
            "resourceClaims": resource_claims,
            "containers": [ { "name": "main", "image": "registry.k8s.io/pause:3.10", "resources": resources } ]
        }
    }))?)
}

/// A claim not yet allocated: the bind writes its allocation and reservation, as after a
/// scheduler that leaves the claim writes to the binder.
fn claim(ns: &str, name: &str) -> Result<ResourceClaim, BenchError> {
    Ok(serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": ns, "labels": { "app": "bindlet-bench" } },
        "spec": { "devices": { "requests": [
            { "name": "gpu", "exactly": { "deviceClassName": DRA_DRIVER } }
        ] } }
    }))?)
}

pub fn bind_request(
    ns: &str,
    name: &str,
    pod_uid: &str,
    node: &str,
    (i, claims): (usize, usize),
) -> Result<BindRequest, BenchError> {
    let gpus = json!({ "count": 0, "portion": "0" });
    let allocations: Vec<serde_json::Value> = (0..claims)
        .map(|j| json!({ "name": format!("c{j}"), "allocation": allocation(node, i, j, claims) }))
        .collect();
    let mut br = json!({
        "apiVersion": "scheduling.run.ai/v1alpha2",
        "kind": "BindRequest",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": { SELECTED_NODE_LABEL: node },
            "ownerReferences": [ { "apiVersion": "v1", "kind": "Pod", "name": name, "uid": pod_uid, "controller": true } ]
        },
        "spec": {
            "podName": name,
            "selectedNode": node,
            "receivedResourceType": "Regular",
            "receivedGPU": gpus,
        }
    });
    // A plain run's requests carry no DRA field at all, as before.
    if claims > 0 {
        br["spec"]["resourceClaimAllocations"] = json!(allocations);
    }
    Ok(serde_json::from_value(br)?)
}

/// Creates the pods (before any timing starts, as the scheduler would find them) and
/// returns the BindRequests for them, in order, pod `i` for node `nodes[i % len]`.
pub async fn prepare(
    client: &Client,
    ns: &str,
    nodes: &[String],
    prefix: &str,
    range: std::ops::Range<usize>,
    claims: usize,
) -> Result<Vec<BindRequest>, BenchError> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let claim_api = Api::<ResourceClaim>::namespaced(client.clone(), ns);
    let created: Vec<(usize, String)> = futures::stream::iter(range)
        .map(|i| {
            let (pods, claim_api) = (pods.clone(), claim_api.clone());
            async move {
                let name = pod_name(prefix, i);
                for j in 0..claims {
                    claim_api
                        .create(&PostParams::default(), &claim(ns, &claim_name(&name, j))?)
                        .await?;
                }
                let p = pods
                    .create(&PostParams::default(), &pod(ns, &name, claims)?)
                    .await?;
                Ok::<_, BenchError>((i, p.metadata.uid.unwrap_or_default()))
            }
        })
        .buffered(32)
        .try_collect()
        .await?;
    created
        .into_iter()
        .map(|(i, uid)| {
            // Spread over the nodes, pod i on node i mod N.
            let node = nodes.get(i % nodes.len().max(1)).map_or("", String::as_str);
            bind_request(ns, &pod_name(prefix, i), &uid, node, (i, claims))
        })
        .collect()
}

/// Start and bound instants per request of one run.
pub struct Timings {
    pub start: Vec<Option<Instant>>,
    pub bound: Vec<Option<Instant>>,
    pub create_errors: usize,
}

impl Timings {
    /// Latencies of the requests that were created and bound.
    pub fn latencies(&self) -> Vec<Duration> {
        self.start
            .iter()
            .zip(&self.bound)
            .filter_map(|(s, b)| Some(b.as_ref()?.saturating_duration_since(*s.as_ref()?)))
            .collect()
    }

    /// From the first create to the last bind.
    pub fn span(&self) -> Option<Duration> {
        let first = self.start.iter().flatten().min()?;
        let last = self.bound.iter().flatten().max()?;
        Some(last.saturating_duration_since(*first))
    }

    pub fn bound_count(&self) -> usize {
        self.bound.iter().flatten().count()
    }
}

/// Shared between the pod watch and the driver.
struct Progress {
    first: usize,
    bound: Mutex<Vec<Option<Instant>>>,
    done: AtomicUsize,
    permits: Arc<Semaphore>,
    finished: Notify,
}

impl Progress {
    fn mark_bound(&self, i: usize, at: Instant) {
        let Some(slot) = i.checked_sub(self.first) else {
            return;
        };
        let newly = {
            let mut b = self.bound.lock().unwrap_or_else(|p| p.into_inner());
            match b.get_mut(slot) {
                Some(s @ None) => {
                    *s = Some(at);
                    true
                }
                _ => false,
            }
        };
        if newly {
            self.finish_one();
        }
    }

    /// One request is out of flight (bound, or its create failed): let the next one in.
    fn finish_one(&self) {
        self.permits.add_permits(1);
        self.done.fetch_add(1, Ordering::AcqRel);
        self.finished.notify_one();
    }
}

/// Watches the namespace's pods and records when each is first seen bound. Returns once
/// the watch has delivered its initial list.
async fn watch_binds(
    client: Client,
    ns: String,
    progress: Arc<Progress>,
) -> tokio::task::JoinHandle<()> {
    let (ready_tx, ready_rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        let pods = Api::<Pod>::namespaced(client, &ns);
        let stream = watcher::watcher(pods, watcher::Config::default());
        futures::pin_mut!(stream);
        let mut ready = Some(ready_tx);
        while let Some(ev) = stream.next().await {
            let now = Instant::now();
            match ev {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                    if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
                        && let Some(i) = index_of(&p.name_any())
                    {
                        progress.mark_bound(i, now);
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                _ => {}
            }
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(30), ready_rx).await;
    task
}

/// Creates `requests` keeping at most `concurrency` of them in flight (created, pod not
/// yet bound), and waits until every pod is bound or `deadline` passes. Each created
/// request is also sent to `created` (the limit client's queue) when given.
pub async fn drive(
    client: &Client,
    ns: &str,
    first_index: usize,
    requests: Vec<BindRequest>,
    concurrency: usize,
    created: Option<mpsc::UnboundedSender<BindRequest>>,
    deadline: Duration,
) -> Result<Timings, BenchError> {
    let n = requests.len();
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let progress = Arc::new(Progress {
        first: first_index,
        bound: Mutex::new(vec![None; n]),
        done: AtomicUsize::new(0),
        permits: permits.clone(),
        finished: Notify::new(),
    });
    let watch = watch_binds(client.clone(), ns.to_string(), progress.clone()).await;
    let starts: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; n]));
    let errors = Arc::new(AtomicUsize::new(0));
    let api = Api::<BindRequest>::namespaced(client.clone(), ns);
    let began = Instant::now();
    let mut creates = tokio::task::JoinSet::new();
    for (slot, br) in requests.into_iter().enumerate() {
        let remaining = deadline.saturating_sub(began.elapsed());
        match tokio::time::timeout(remaining, permits.acquire()).await {
            Ok(Ok(p)) => p.forget(),
            _ => break,
        }
        let (api, starts, errors, progress) = (
            api.clone(),
            starts.clone(),
            errors.clone(),
            progress.clone(),
        );
        let created = created.clone();
        creates.spawn(async move {
            let at = Instant::now();
            match api.create(&PostParams::default(), &br).await {
                Ok(obj) => {
                    if let Ok(mut s) = starts.lock()
                        && let Some(x) = s.get_mut(slot)
                    {
                        *x = Some(at);
                    }
                    if let Some(tx) = created {
                        let _ = tx.send(obj);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "creating a BindRequest failed");
                    errors.fetch_add(1, Ordering::Relaxed);
                    progress.finish_one();
                }
            }
        });
        // Reap finished create tasks so the set stays small.
        while creates.try_join_next().is_some() {}
    }
    while creates.join_next().await.is_some() {}
    drop(created);
    // Wait for the binds still in flight.
    loop {
        let notified = progress.finished.notified();
        if progress.done.load(Ordering::Acquire) >= n {
            break;
        }
        let remaining = deadline.saturating_sub(began.elapsed());
        if remaining.is_zero() {
            break;
        }
        let _ = tokio::time::timeout(remaining, notified).await;
    }
    watch.abort();
    let start = starts.lock().map(|s| s.clone()).unwrap_or_default();
    let bound = progress.bound.lock().map(|b| b.clone()).unwrap_or_default();
    Ok(Timings {
        start,
        bound,
        create_errors: errors.load(Ordering::Relaxed),
    })
}
