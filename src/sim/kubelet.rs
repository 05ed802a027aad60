//! A simulated kubelet for one GPU node, for tests and the demo. Like [`super::provisioner`]
//! it is an ordinary API client, so it works against the simulator or against a real
//! cluster whose node has no real kubelet; the simulator knows nothing of it. It plays the
//! parts of the kubelet and of the NVIDIA device plugin that bindlet can observe: pods bound
//! to the node start running and get GPUs, pods the node cannot hold are refused, and the
//! pod-resources socket tells which pod holds which GPU.
//!
//! # What it does as a real kubelet with the NVIDIA device plugin does
//!
//! - It sees only the pods with `spec.nodeName=<node>` (a field-selected watch).
//! - A pod that is not finished is admitted once. Admission goes container by container in
//!   spec order; each takes its `nvidia.com/gpu` count (the limit, or the request when there
//!   is no limit) from the free devices. Devices are the configured device IDs (GPU UUIDs,
//!   as the device plugin reports them).
//! - When a container cannot get enough devices the pod is refused: phase `Failed`, reason
//!   `UnexpectedAdmissionError`, message `Pod was rejected: Allocate failed due to requested
//!   number of devices unavailable for nvidia.com/gpu. Requested: 1, Available: 0, which is
//!   unexpected`. The parts come from kubernetes/kubernetes: the device manager's error
//!   (`pkg/kubelet/cm/devicemanager/manager.go`, `devicesToAllocate`: "requested number of
//!   devices unavailable for %s. Requested: %d, Available: %d", counted for the failing
//!   container, with the devices already taken by earlier containers of the pod counted as
//!   in use), the admission wrapper (`pkg/kubelet/cm/admission/errors.go`: "Allocate failed
//!   due to %v, which is unexpected", reason `UnexpectedAdmissionError`) and `rejectPod`
//!   (`pkg/kubelet/kubelet.go`: "Pod was rejected: " + message; kubelets before 1.3x wrote
//!   "Pod " + message, which is the wording of many public bug reports).
//! - A pod admitted gets phase `Running`, `startTime`, the conditions
//!   `PodReadyToStartContainers`, `Initialized`, `Ready`, `ContainersReady` and (unless the
//!   binding set it already) `PodScheduled`, all `True`, and a running, ready status per
//!   container. Pods without GPUs are admitted the same way.
//! - A pod's devices are released when it is deleted or finishes (`Succeeded`/`Failed`, set
//!   by anyone). A pod being deleted gracefully (`deletionTimestamp` set) has its containers
//!   "stopped" at once: its devices are released and the kubelet's final delete follows
//!   (grace period 0, UID precondition), as the real status manager does once a pod has
//!   terminated. The API server (and the simulator) keeps a deleted pod bound to a node
//!   until that final delete, so without a kubelet such a pod never goes away.
//! - The pod-resources endpoint answers `/v1.PodResourcesLister/List` with every admitted,
//!   unfinished pod and all its containers; a container holding GPUs has one
//!   `ContainerDevices` entry for `nvidia.com/gpu`. Other methods answer gRPC status 12
//!   (UNIMPLEMENTED) with grpc-go's wording.
//!
//! Not the kubelet: with `reservation_namespace` set, a pod in that namespace admitted with
//! exactly one GPU gets the annotation `run.ai/reserve_for_gpu_index: <its GPU's UUID>`
//! `annotate_delay` after it is Running. KAI's GPU-reservation pod writes this itself once
//! it runs; the simulated kubelet does it in its place.
//!
//! # Simplifications
//!
//! - Only the device manager's check runs. A real kubelet first compares the pod's requests
//!   with the Node's allocatable (the resource-fit admission): when the allocatable matches
//!   the healthy devices, an over-committed pod is refused there, with reason
//!   `OutOfnvidia.com/gpu` and "Node didn't have enough resource: nvidia.com/gpu, requested:
//!   1, used: 2, capacity: 2". `UnexpectedAdmissionError` is what a pod gets when the two
//!   views differ (devices that turned unhealthy, devices of gone pods not yet released);
//!   here it stands for every refusal. The Node object is never read, and no resource other
//!   than `nvidia.com/gpu` is checked.
//! - Pods are admitted one at a time in the order first seen, each `admit_delay` after it
//!   was seen (a real kubelet sorts each batch by creation time).
//! - All devices are healthy; there is no topology and no preferred allocation: the free
//!   device listed first in `gpus` goes first.
//! - Init containers are ignored (the real device manager allocates theirs too and lets app
//!   containers reuse them). A GPU count that is not a whole number counts as 0 (the API
//!   server refuses such pods).
//! - No container runs: a pod stays `Running` until someone sets it `Succeeded`/`Failed` or
//!   deletes it.
//! - Assignments live in memory only (no checkpoint file). A watch restart keeps them and
//!   drops those of pods missing from the relist. A new instance (a "restarted kubelet")
//!   takes a `Running` pod it does not know as admitted with no devices, so their devices
//!   look free again (a real kubelet restores them from its checkpoint).
//! - Status writes are strategic merge patches of `/status` guarded by the resourceVersion
//!   last seen (a 409 re-reads the pod), so a phase written by someone else in between is
//!   never overwritten; the real status manager patches with a UID precondition only. Failed
//!   writes are retried with capped backoff until the pod is gone or finished.
//! - No `hostIP`/`podIP`, no Events.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Container, Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::podresources_server::{self, ListedPod};
use bindlet_api::Backoff;
use bindlet_api::quantity;
use bindlet_api::wellknown::{GPU_RESOURCE, RESERVED_GPU_ANNOTATION};

/// Reason of a refused pod, as the kubelet writes it.
pub const UNEXPECTED_ADMISSION_ERROR: &str = "UnexpectedAdmissionError";

/// Retries of API writes and of the watch: fast at first (tests inject faults), capped so a
/// long outage costs little.
const RETRY: Backoff = Backoff {
    base: Duration::from_millis(50),
    max: Duration::from_secs(5),
};

/// How the simulated kubelet behaves.
#[derive(Debug, Clone, Default)]
pub struct KubeletConfig {
    /// The node it plays the kubelet for.
    pub node: String,
    /// Device IDs of `nvidia.com/gpu` on this node (GPU UUIDs, as the NVIDIA device plugin
    /// reports them); earlier ones are handed out first.
    pub gpus: Vec<String>,
    /// Where to serve PodResourcesLister `List` (a unix socket); None = no endpoint.
    pub socket: Option<PathBuf>,
    /// Time between seeing a pod bound here and admitting it.
    pub admit_delay: Duration,
    /// When set, pods in this namespace admitted with one GPU get the
    /// `run.ai/reserve_for_gpu_index` annotation (what KAI's reservation pod does itself).
    pub reservation_namespace: Option<String>,
    /// Extra delay between such a pod running and its annotation.
    pub annotate_delay: Duration,
    /// NUMA node of a device ID, reported as the device's topology in pod-resources
    /// answers (as the NVIDIA device plugin does); devices not listed carry none.
    pub gpu_numa_nodes: BTreeMap<String, i64>,
}

/// A running simulated kubelet; it stops (and removes its socket) when dropped.
pub struct Kubelet {
    state: Arc<Mutex<State>>,
    socket: Option<PathBuf>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Kubelet {
    /// The pod-resources socket, when one is served.
    pub fn socket_path(&self) -> Option<&Path> {
        self.socket.as_deref()
    }

    /// The admitted, unfinished pods ("namespace/name") and the device IDs they hold, in
    /// container order; pods admitted without GPUs map to an empty list (the pod-resources
    /// answer lists them too).
    pub fn assignments(&self) -> BTreeMap<String, Vec<String>> {
        lock(&self.state).table.assignments()
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.shutdown.cancel();
        for t in &self.tasks {
            t.abort();
        }
        if let Some(path) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Starts the kubelet on the current Tokio runtime. The socket (if any) is bound before this
/// returns, so a client may connect at once; a stale socket file at that path is replaced.
/// An empty node name is refused (`InvalidInput`).
pub fn spawn(client: Client, cfg: KubeletConfig) -> std::io::Result<Kubelet> {
    if cfg.node.is_empty() {
        // `spec.nodeName=` would select every unscheduled pod of the cluster.
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the simulated kubelet needs a node name",
        ));
    }
    let listener = cfg.socket.as_deref().map(bind).transpose()?;
    let state = Arc::new(Mutex::new(State::new(&cfg.gpus)));
    let shutdown = CancellationToken::new();
    let (tx, rx) = mpsc::unbounded_channel();
    let socket = cfg.socket.clone();
    let numa = cfg.gpu_numa_nodes.clone();
    let cfg = Arc::new(cfg);
    let mut tasks = vec![
        tokio::spawn(watch(
            client.clone(),
            cfg.clone(),
            state.clone(),
            tx,
            shutdown.clone(),
        )),
        tokio::spawn(admit_loop(client, cfg, state.clone(), rx, shutdown.clone())),
    ];
    if let Some(listener) = listener {
        let st = state.clone();
        let answer: podresources_server::Answer = Arc::new(move || {
            podresources_server::list_response(GPU_RESOURCE, &lock(&st).table.listed(), &numa)
        });
        tasks.push(tokio::spawn(podresources_server::serve(
            listener,
            answer,
            shutdown.clone(),
        )));
    }
    Ok(Kubelet {
        state,
        socket,
        shutdown,
        tasks,
    })
}

fn bind(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    // A socket left by an earlier run would make bind fail; the kubelet replaces it too.
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        std::fs::remove_file(path)?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(listener)
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // The state stays consistent between statements; a panic elsewhere must not stop the
    // kubelet from answering.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------
// The device table and the per-pod bookkeeping (pure, tested synchronously).

/// The GPUs one container asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ContainerRequest {
    name: String,
    gpus: usize,
}

/// The `nvidia.com/gpu` count of a container: its limit, or its request when it has no
/// limit (for extended resources the two must be equal when both are set).
fn container_gpus(c: &Container) -> usize {
    let res = c.resources.as_ref();
    let q = res
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get(GPU_RESOURCE))
        .or_else(|| {
            res.and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get(GPU_RESOURCE))
        });
    let Some(q) = q else { return 0 };
    match quantity::parse(&q.0) {
        Ok(n) if n >= 0 && n % 1_000_000_000 == 0 => {
            usize::try_from(n / 1_000_000_000).unwrap_or(usize::MAX)
        }
        _ => 0,
    }
}

fn container_requests(pod: &Pod) -> Vec<ContainerRequest> {
    pod.spec
        .iter()
        .flat_map(|s| &s.containers)
        .map(|c| ContainerRequest {
            name: c.name.clone(),
            gpus: container_gpus(c),
        })
        .collect()
}

/// The device manager's refusal (its wording, see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "requested number of devices unavailable for {GPU_RESOURCE}. Requested: {requested}, Available: {available}"
)]
struct Refusal {
    requested: usize,
    available: usize,
}

impl Refusal {
    /// The pod's status message.
    fn pod_message(&self) -> String {
        format!("Pod was rejected: Allocate failed due to {self}, which is unexpected")
    }
}

/// An admitted pod: its containers in spec order with the devices each holds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Admitted {
    namespace: String,
    name: String,
    containers: Vec<(String, Vec<String>)>,
}

impl Admitted {
    fn devices(&self) -> impl Iterator<Item = &String> {
        self.containers.iter().flat_map(|(_, ids)| ids)
    }
}

/// Which device is held by which admitted pod (by UID: a pod recreated under the same name
/// is another pod).
#[derive(Debug, Default)]
struct DeviceTable {
    devices: Vec<String>,
    pods: HashMap<String, Admitted>,
}

impl DeviceTable {
    fn new(devices: &[String]) -> Self {
        let mut unique: Vec<String> = Vec::with_capacity(devices.len());
        for d in devices {
            if !unique.contains(d) {
                unique.push(d.clone());
            }
        }
        DeviceTable {
            devices: unique,
            pods: HashMap::new(),
        }
    }

    fn contains(&self, uid: &str) -> bool {
        self.pods.contains_key(uid)
    }

    /// Free devices, in configured order.
    fn free(&self) -> Vec<&str> {
        let used: HashSet<&str> = self
            .pods
            .values()
            .flat_map(Admitted::devices)
            .map(String::as_str)
            .collect();
        self.devices
            .iter()
            .map(String::as_str)
            .filter(|d| !used.contains(d))
            .collect()
    }

    /// Gives each container its devices, the first free ones first, or refuses the whole
    /// pod (nothing is taken then).
    fn admit(
        &mut self,
        uid: &str,
        namespace: &str,
        name: &str,
        requests: &[ContainerRequest],
    ) -> Result<Admitted, Refusal> {
        let mut free: Vec<String> = self.free().into_iter().map(str::to_string).collect();
        let mut containers = Vec::with_capacity(requests.len());
        for r in requests {
            if free.len() < r.gpus {
                return Err(Refusal {
                    requested: r.gpus,
                    available: free.len(),
                });
            }
            containers.push((r.name.clone(), free.drain(..r.gpus).collect()));
        }
        let admitted = Admitted {
            namespace: namespace.to_string(),
            name: name.to_string(),
            containers,
        };
        self.pods.insert(uid.to_string(), admitted.clone());
        Ok(admitted)
    }

    /// Records a pod admitted by an earlier instance, whose devices are unknown.
    fn adopt(&mut self, uid: &str, namespace: &str, name: &str, containers: Vec<String>) {
        self.pods
            .entry(uid.to_string())
            .or_insert_with(|| Admitted {
                namespace: namespace.to_string(),
                name: name.to_string(),
                containers: containers.into_iter().map(|c| (c, Vec::new())).collect(),
            });
    }

    fn release(&mut self, uid: &str) -> Option<Admitted> {
        self.pods.remove(uid)
    }

    fn assignments(&self) -> BTreeMap<String, Vec<String>> {
        self.pods
            .values()
            .map(|a| {
                (
                    format!("{}/{}", a.namespace, a.name),
                    a.devices().cloned().collect(),
                )
            })
            .collect()
    }

    /// The pods of a pod-resources answer, ordered by namespace and name.
    fn listed(&self) -> Vec<ListedPod> {
        let mut pods: Vec<ListedPod> = self
            .pods
            .values()
            .map(|a| ListedPod {
                namespace: a.namespace.clone(),
                name: a.name.clone(),
                containers: a.containers.clone(),
            })
            .collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        pods
    }
}

/// What to do after seeing a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Nothing,
    /// Queue it for admission.
    Admit,
    /// It is being deleted: send the final delete.
    Finish,
}

fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Everything the kubelet remembers about the pods on its node, by UID.
#[derive(Debug, Default)]
struct State {
    table: DeviceTable,
    /// Seen, waiting for admission.
    pending: HashSet<String>,
    /// Refused; the Failed status may not have been written yet.
    refused: HashSet<String>,
    /// Being deleted; the final delete was sent.
    terminating: HashSet<String>,
}

impl State {
    fn new(devices: &[String]) -> Self {
        State {
            table: DeviceTable::new(devices),
            ..Default::default()
        }
    }

    /// Takes in the pod's latest state.
    fn observe(&mut self, pod: &Pod) -> Next {
        let Some(uid) = pod.metadata.uid.as_deref() else {
            return Next::Nothing;
        };
        // A pod being deleted gets the final delete even when it finished: the API server
        // keeps a bound pod until its kubelet deletes it with grace period 0 (only an
        // already finished pod is deleted at once; one finishing during its grace period
        // still waits for the kubelet).
        if pod.metadata.deletion_timestamp.is_some() {
            self.table.release(uid);
            self.pending.remove(uid);
            self.refused.remove(uid);
            return if self.terminating.insert(uid.to_string()) {
                Next::Finish
            } else {
                Next::Nothing
            };
        }
        if is_finished(pod) {
            self.forget(uid);
            return Next::Nothing;
        }
        if self.table.contains(uid) || self.pending.contains(uid) || self.refused.contains(uid) {
            return Next::Nothing;
        }
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if running {
            // Admitted by an earlier instance: never admit twice; its devices are unknown.
            let containers = pod
                .spec
                .iter()
                .flat_map(|s| &s.containers)
                .map(|c| c.name.clone())
                .collect();
            self.table.adopt(
                uid,
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.name.as_deref().unwrap_or_default(),
                containers,
            );
            return Next::Nothing;
        }
        self.pending.insert(uid.to_string());
        Next::Admit
    }

    /// Admits a pending pod; None when it is no longer pending (deleted or finished
    /// meanwhile).
    fn admit(&mut self, pod: &Pod) -> Option<Result<Admitted, Refusal>> {
        let uid = pod.metadata.uid.as_deref()?;
        if !self.pending.remove(uid) {
            return None;
        }
        let r = self.table.admit(
            uid,
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default(),
            &container_requests(pod),
        );
        if r.is_err() {
            self.refused.insert(uid.to_string());
        }
        Some(r)
    }

    /// The pod is gone (or finished): release everything.
    fn forget(&mut self, uid: &str) {
        self.table.release(uid);
        self.pending.remove(uid);
        self.refused.remove(uid);
        self.terminating.remove(uid);
    }

    /// After a relist: forget the pods that are not in it.
    fn retain(&mut self, live: &HashSet<String>) {
        let gone: Vec<String> = self
            .table
            .pods
            .keys()
            .chain(&self.pending)
            .chain(&self.refused)
            .chain(&self.terminating)
            .filter(|uid| !live.contains(*uid))
            .cloned()
            .collect();
        for uid in gone {
            self.forget(&uid);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Effects: the watch, admission in order, and the API writes.

struct Admission {
    due: Instant,
    pod: Pod,
}

async fn watch(
    client: Client,
    cfg: Arc<KubeletConfig>,
    state: Arc<Mutex<State>>,
    admissions: mpsc::UnboundedSender<Admission>,
    shutdown: CancellationToken,
) {
    let api: Api<Pod> = Api::all(client.clone());
    let wc = watcher::Config::default().fields(&format!("spec.nodeName={}", cfg.node));
    let stream = watcher::watcher(api, wc);
    futures::pin_mut!(stream);
    let mut failures: u32 = 0;
    // UIDs of a relist in progress.
    let mut relisted: Option<HashSet<String>> = None;
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => {
                failures = 0;
                ev
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::debug!(node = %cfg.node, error = %e, "simulated kubelet: watch error");
                tokio::time::sleep(RETRY.delay(failures)).await;
                continue;
            }
        };
        let pod = match ev {
            watcher::Event::Init => {
                relisted = Some(HashSet::new());
                continue;
            }
            watcher::Event::InitDone => {
                if let Some(live) = relisted.take() {
                    lock(&state).retain(&live);
                }
                continue;
            }
            watcher::Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    lock(&state).forget(uid);
                }
                continue;
            }
            watcher::Event::InitApply(pod) => {
                if let (Some(live), Some(uid)) = (relisted.as_mut(), pod.metadata.uid.as_ref()) {
                    live.insert(uid.clone());
                }
                pod
            }
            watcher::Event::Apply(pod) => pod,
        };
        let next = lock(&state).observe(&pod);
        match next {
            Next::Nothing => {}
            Next::Admit => {
                let due = Instant::now() + cfg.admit_delay;
                // Fails only once the admission task is gone, i.e. the kubelet is stopping.
                let _ = admissions.send(Admission { due, pod });
            }
            Next::Finish => spawn_until(&shutdown, final_delete(client.clone(), pod)),
        }
    }
}

/// Admits pods one at a time, in the order they were seen.
async fn admit_loop(
    client: Client,
    cfg: Arc<KubeletConfig>,
    state: Arc<Mutex<State>>,
    mut admissions: mpsc::UnboundedReceiver<Admission>,
    shutdown: CancellationToken,
) {
    while let Some(Admission { due, pod }) = admissions.recv().await {
        tokio::time::sleep_until(due).await;
        let outcome = lock(&state).admit(&pod);
        let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
        match outcome {
            None => {}
            Some(Ok(admitted)) => {
                tracing::debug!(pod = %pod.name_any(), devices = ?admitted.containers, "simulated kubelet: admitted");
                let reserve = cfg
                    .reservation_namespace
                    .as_deref()
                    .is_some_and(|ns| pod.metadata.namespace.as_deref() == Some(ns));
                let mut devices = admitted.devices();
                let reserved = match (devices.next(), devices.next()) {
                    (Some(one), None) if reserve => Some(one.clone()),
                    _ => None,
                };
                let annotate_delay = cfg.annotate_delay;
                spawn_until(&shutdown, async move {
                    let status = running_status(&pod, &now());
                    if write_status(&api, &pod, status).await
                        && let Some(uuid) = reserved
                    {
                        tokio::time::sleep(annotate_delay).await;
                        annotate(&api, &pod, &uuid).await;
                    }
                });
            }
            Some(Err(refusal)) => {
                tracing::debug!(pod = %pod.name_any(), %refusal, "simulated kubelet: refused");
                let status = json!({
                    "phase": "Failed",
                    "reason": UNEXPECTED_ADMISSION_ERROR,
                    "message": refusal.pod_message(),
                });
                spawn_until(&shutdown, async move {
                    write_status(&api, &pod, status).await;
                });
            }
        }
    }
}

/// Runs `work` in its own task until it ends or the kubelet stops.
fn spawn_until(shutdown: &CancellationToken, work: impl Future<Output = ()> + Send + 'static) {
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = work => {}
        }
    });
}

fn now() -> String {
    // Kubernetes `Time` has second precision.
    let t = jiff::Timestamp::now();
    t.round(jiff::Unit::Second).unwrap_or(t).to_string()
}

/// The status of a pod whose containers all started.
fn running_status(pod: &Pod, now: &str) -> Value {
    let condition = |t: &str| json!({ "type": t, "status": "True", "lastTransitionTime": now });
    let mut conditions: Vec<Value> = [
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
    ]
    .into_iter()
    .map(condition)
    .collect();
    let scheduled = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "PodScheduled" && c.status == "True")
        });
    if !scheduled {
        conditions.push(condition("PodScheduled"));
    }
    let containers: Vec<Value> = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .map(|c| {
            json!({
                "name": c.name,
                "image": c.image.clone().unwrap_or_default(),
                "imageID": "",
                "ready": true,
                "started": true,
                "restartCount": 0,
                "state": { "running": { "startedAt": now } },
            })
        })
        .collect();
    json!({
        "phase": "Running",
        "startTime": now,
        "conditions": conditions,
        "containerStatuses": containers,
    })
}

/// Whether an API error may go away by itself.
fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 429 || s.code >= 500,
        _ => true,
    }
}

/// Why a write was given up.
#[derive(Debug, Error)]
enum WriteError {
    #[error("the pod is gone, was replaced, or has finished")]
    Moot,
    #[error(transparent)]
    Api(#[from] kube::Error),
}

/// Writes `status` on the pod the kubelet saw, guarded by the resourceVersion last seen;
/// true when written. Gives up when the pod is gone, replaced, finished or being deleted,
/// or on a permanent error.
async fn write_status(api: &Api<Pod>, pod: &Pod, status: Value) -> bool {
    let name = pod.name_any();
    let uid = pod.uid().unwrap_or_default();
    let mut seen_rv = pod.resource_version();
    let mut failures = 0;
    loop {
        let attempt = async {
            let rv = match seen_rv.take() {
                Some(rv) => rv,
                None => {
                    let now = api.get_opt(&name).await?.ok_or(WriteError::Moot)?;
                    let same = now.uid().as_deref() == Some(uid.as_str());
                    if !same || is_finished(&now) || now.metadata.deletion_timestamp.is_some() {
                        return Err(WriteError::Moot);
                    }
                    now.resource_version().unwrap_or_default()
                }
            };
            let patch = json!({
                "metadata": { "uid": uid, "resourceVersion": rv },
                "status": status,
            });
            api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
                .await?;
            Ok::<(), WriteError>(())
        };
        match attempt.await {
            Ok(()) => return true,
            Err(WriteError::Moot) => return false,
            // Stale or replaced: read the pod again.
            Err(WriteError::Api(kube::Error::Api(s))) if s.code == 409 => {}
            Err(WriteError::Api(e)) if transient(&e) => {
                failures += 1;
                tracing::debug!(pod = %name, error = %e, "simulated kubelet: status write failed");
                tokio::time::sleep(RETRY.delay(failures)).await;
            }
            Err(WriteError::Api(e)) => {
                tracing::warn!(pod = %name, error = %e, "simulated kubelet: status write refused");
                return false;
            }
        }
    }
}

/// Puts the reservation annotation on the pod (a merge patch, like the reservation pod's).
async fn annotate(api: &Api<Pod>, pod: &Pod, uuid: &str) {
    let name = pod.name_any();
    let patch = json!({ "metadata": {
        "uid": pod.uid(),
        "annotations": { RESERVED_GPU_ANNOTATION: uuid },
    } });
    let mut failures = 0;
    loop {
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return,
            Err(e) if transient(&e) => {
                failures += 1;
                tokio::time::sleep(RETRY.delay(failures)).await;
            }
            // Gone or replaced (404, 409), or refused.
            Err(_) => return,
        }
    }
}

/// The kubelet's last word on a pod being deleted: delete it for good.
async fn final_delete(client: Client, pod: Pod) {
    let Some(ns) = pod.namespace() else { return };
    let api: Api<Pod> = Api::namespaced(client, &ns);
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..Default::default()
    };
    let mut failures = 0;
    loop {
        match api.delete(&pod.name_any(), &dp).await {
            Ok(_) => return,
            Err(e) if transient(&e) && failures < 10 => {
                failures += 1;
                tokio::time::sleep(RETRY.delay(failures)).await;
            }
            Err(_) => return,
        }
    }
}

/// What a kubelet and the node lifecycle controller do for a healthy node, for a Node a
/// client created with no kubelet behind it (tests, the bench): report `Ready`, then lift
/// the `node.kubernetes.io/not-ready` taint admission puts on every new Node, keeping
/// `taints` (the node's own).
pub async fn report_node_ready(
    client: &Client,
    node: &str,
    taints: &[k8s_openapi::api::core::v1::Taint],
) -> Result<Node, kube::Error> {
    let nodes = Api::<Node>::all(client.clone());
    let now = jiff::Timestamp::now().to_string();
    let ready = serde_json::json!({ "status": { "conditions": [{
        "type": "Ready", "status": "True", "reason": "KubeletReady",
        "message": "kubelet is posting ready status",
        "lastHeartbeatTime": now, "lastTransitionTime": now
    }] } });
    nodes
        .patch_status(node, &PatchParams::default(), &Patch::Merge(&ready))
        .await?;
    let own = if taints.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::to_value(taints).map_err(kube::Error::SerdeError)?
    };
    nodes
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({ "spec": { "taints": own } })),
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn req(name: &str, gpus: usize) -> ContainerRequest {
        ContainerRequest {
            name: name.into(),
            gpus,
        }
    }

    fn pod(uid: &str, name: &str, containers: Value, status: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": "ns", "uid": uid, "resourceVersion": "1" },
            "spec": { "nodeName": "n", "containers": containers },
            "status": status,
        }))
        .unwrap()
    }

    fn gpu_pod(uid: &str, name: &str, gpus: &str) -> Pod {
        pod(
            uid,
            name,
            json!([{ "name": "main", "image": "x", "resources": { "limits": { GPU_RESOURCE: gpus } } }]),
            json!({ "phase": "Pending" }),
        )
    }

    #[test]
    fn hands_out_the_first_free_devices_and_refuses_what_is_not_there() {
        let mut t = DeviceTable::new(&ids(&["GPU-a", "GPU-b", "GPU-c"]));
        let a = t.admit("u1", "ns", "a", &[req("main", 1)]).unwrap();
        assert_eq!(a.containers, [("main".to_string(), ids(&["GPU-a"]))]);
        let b = t.admit("u2", "ns", "b", &[req("main", 1)]).unwrap();
        assert_eq!(b.devices().collect::<Vec<_>>(), ["GPU-b"]);
        // Releasing the first makes it the lowest free again.
        assert!(t.release("u1").is_some());
        assert_eq!(t.free(), ["GPU-a", "GPU-c"]);
        let c = t.admit("u3", "ns", "c", &[req("main", 2)]).unwrap();
        assert_eq!(c.devices().collect::<Vec<_>>(), ["GPU-a", "GPU-c"]);
        let refused = t.admit("u4", "ns", "d", &[req("main", 1)]).unwrap_err();
        assert_eq!(
            refused,
            Refusal {
                requested: 1,
                available: 0
            }
        );
        assert_eq!(
            refused.pod_message(),
            "Pod was rejected: Allocate failed due to requested number of devices unavailable \
             for nvidia.com/gpu. Requested: 1, Available: 0, which is unexpected"
        );
        // A refused pod holds nothing.
        assert!(!t.contains("u4"));
        assert_eq!(
            t.assignments(),
            BTreeMap::from([
                ("ns/b".to_string(), ids(&["GPU-b"])),
                ("ns/c".to_string(), ids(&["GPU-a", "GPU-c"])),
            ])
        );
    }

    #[test]
    fn containers_are_served_in_order_and_a_refusal_takes_nothing() {
        let mut t = DeviceTable::new(&ids(&["g0", "g1", "g2", "g0"]));
        assert_eq!(t.devices.len(), 3, "duplicate device IDs count once");
        let p = t
            .admit(
                "u1",
                "ns",
                "p",
                &[req("a", 1), req("sidecar", 0), req("b", 2)],
            )
            .unwrap();
        assert_eq!(
            p.containers,
            [
                ("a".to_string(), ids(&["g0"])),
                ("sidecar".to_string(), vec![]),
                ("b".to_string(), ids(&["g1", "g2"])),
            ]
        );
        t.release("u1");
        // The second container is the one that cannot be served: the numbers are its own,
        // with the first container's device counted as taken.
        let r = t
            .admit("u2", "ns", "q", &[req("a", 2), req("b", 2)])
            .unwrap_err();
        assert_eq!((r.requested, r.available), (2, 1), "{}", r.pod_message());
        assert_eq!(t.free().len(), 3);
        // No GPUs at all: admitted with none.
        let mut empty = DeviceTable::new(&[]);
        let p = empty.admit("u", "ns", "cpu", &[req("main", 0)]).unwrap();
        assert_eq!(p.devices().count(), 0);
        assert_eq!(empty.assignments()["ns/cpu"], Vec::<String>::new());
    }

    #[test]
    fn gpu_counts_come_from_limits_else_requests() {
        let p = pod(
            "u",
            "p",
            json!([
                { "name": "lim", "image": "x", "resources": {
                    "limits": { GPU_RESOURCE: "2" }, "requests": { GPU_RESOURCE: "2" } } },
                { "name": "req", "image": "x", "resources": { "requests": { GPU_RESOURCE: "1" } } },
                { "name": "none", "image": "x", "resources": { "limits": { "cpu": "1" } } },
                { "name": "milli", "image": "x", "resources": { "limits": { GPU_RESOURCE: "3000m" } } },
                { "name": "half", "image": "x", "resources": { "limits": { GPU_RESOURCE: "0.5" } } },
                { "name": "junk", "image": "x", "resources": { "limits": { GPU_RESOURCE: "lots" } } },
            ]),
            json!({}),
        );
        let got: Vec<(String, usize)> = container_requests(&p)
            .into_iter()
            .map(|r| (r.name, r.gpus))
            .collect();
        assert_eq!(
            got,
            [
                ("lim".to_string(), 2),
                ("req".to_string(), 1),
                ("none".to_string(), 0),
                ("milli".to_string(), 3),
                ("half".to_string(), 0),
                ("junk".to_string(), 0),
            ]
        );
    }

    #[test]
    fn a_pod_is_admitted_once_and_released_when_it_finishes_or_goes() {
        let mut s = State::new(&ids(&["g0", "g1"]));
        let a = gpu_pod("ua", "a", "1");
        assert_eq!(s.observe(&a), Next::Admit);
        // Seen again before admission (e.g. a relist): queued once.
        assert_eq!(s.observe(&a), Next::Nothing);
        assert_eq!(s.admit(&a).unwrap().unwrap().containers[0].1, ids(&["g0"]));
        assert!(s.admit(&a).is_none(), "admitted twice");
        // Its own Running status comes back through the watch: nothing to do.
        let mut running = a.clone();
        running.status = Some(serde_json::from_value(json!({ "phase": "Running" })).unwrap());
        assert_eq!(s.observe(&running), Next::Nothing);

        // Another pod refused: it stays refused until its Failed status shows.
        let big = gpu_pod("ub", "big", "2");
        assert_eq!(s.observe(&big), Next::Admit);
        assert!(s.admit(&big).unwrap().is_err());
        assert_eq!(
            s.observe(&big),
            Next::Nothing,
            "a refused pod is not retried"
        );
        let mut failed = big.clone();
        failed.status = Some(serde_json::from_value(json!({ "phase": "Failed" })).unwrap());
        assert_eq!(s.observe(&failed), Next::Nothing);
        assert!(s.refused.is_empty());

        // A pod deleted before its admission is not admitted.
        let c = gpu_pod("uc", "c", "1");
        assert_eq!(s.observe(&c), Next::Admit);
        s.forget("uc");
        assert!(s.admit(&c).is_none());

        // Finishing releases the device.
        let mut done = running.clone();
        done.status = Some(serde_json::from_value(json!({ "phase": "Succeeded" })).unwrap());
        assert_eq!(s.observe(&done), Next::Nothing);
        assert_eq!(s.table.free(), ["g0", "g1"]);
    }

    #[test]
    fn graceful_deletion_releases_and_finishes_once() {
        let mut s = State::new(&ids(&["g0"]));
        let a = gpu_pod("ua", "a", "1");
        s.observe(&a);
        s.admit(&a).unwrap().unwrap();
        let mut deleting = a.clone();
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
        );
        assert_eq!(s.observe(&deleting), Next::Finish);
        assert_eq!(s.observe(&deleting), Next::Nothing, "one final delete");
        assert_eq!(s.table.free(), ["g0"]);
        s.forget("ua");
        assert!(s.terminating.is_empty());

        // A pod that finished during its grace period still gets its final delete.
        let b = gpu_pod("ub", "b", "1");
        s.observe(&b);
        s.admit(&b).unwrap().unwrap();
        let mut finished = deleting.clone();
        finished.metadata.uid = Some("ub".into());
        finished.status = Some(serde_json::from_value(json!({ "phase": "Succeeded" })).unwrap());
        assert_eq!(s.observe(&finished), Next::Finish);
        assert_eq!(s.table.free(), ["g0"]);
    }

    #[test]
    fn a_relist_keeps_what_is_known_and_forgets_the_missing() {
        let mut s = State::new(&ids(&["g0", "g1"]));
        let (a, b) = (gpu_pod("ua", "a", "1"), gpu_pod("ub", "b", "1"));
        for p in [&a, &b] {
            s.observe(p);
            s.admit(p).unwrap().unwrap();
        }
        // b vanished while the watch was down.
        s.retain(&HashSet::from(["ua".to_string()]));
        assert_eq!(s.table.assignments().keys().collect::<Vec<_>>(), ["ns/a"]);
        assert_eq!(s.table.free(), ["g1"]);
    }

    #[test]
    fn a_running_pod_unknown_to_this_instance_is_kept_without_devices() {
        let mut s = State::new(&ids(&["g0"]));
        let mut p = gpu_pod("ua", "a", "1");
        p.status = Some(serde_json::from_value(json!({ "phase": "Running" })).unwrap());
        assert_eq!(s.observe(&p), Next::Nothing);
        assert_eq!(s.table.assignments()["ns/a"], Vec::<String>::new());
        assert_eq!(s.table.free(), ["g0"]);
        assert_eq!(
            s.table.listed()[0].containers,
            [("main".to_string(), vec![])]
        );
    }

    #[test]
    fn running_status_keeps_the_binding_s_scheduled_condition() {
        let mut p = gpu_pod("u", "a", "1");
        let s = running_status(&p, "2025-01-01T00:00:00Z");
        assert_eq!(s["phase"], "Running");
        let types = |s: &Value| -> Vec<String> {
            s["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["type"].as_str().unwrap().to_string())
                .collect()
        };
        assert!(types(&s).contains(&"PodScheduled".to_string()));
        assert_eq!(s["containerStatuses"][0]["name"], "main");
        assert_eq!(s["containerStatuses"][0]["ready"], true);
        p.status = Some(
            serde_json::from_value(json!({ "phase": "Pending", "conditions": [
                { "type": "PodScheduled", "status": "True" }
            ] }))
            .unwrap(),
        );
        let s = running_status(&p, "2025-01-01T00:00:00Z");
        assert!(!types(&s).contains(&"PodScheduled".to_string()));
        assert!(types(&s).contains(&"Ready".to_string()));
    }
}
