//! `gpu`: the node's GPUs can serve the request, checked on the node right before binding.
//!
//! `validate` cross-checks the request with the pod (pure). `pre_bind` takes a fresh
//! probe of the GPUs and lists the pods already bound to this node (only for requests
//! that ask for GPUs, so a plain bind costs no extra API request), then applies the pure
//! verdicts of [`crate::gpu::verdict`]. GPU binds on one node are serialized from the
//! probe until the bind is done, so two binds cannot both count the same free GPU.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{Api, ListParams};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio_util::sync::CancellationToken;

use crate::api::{Verdict, VerdictOutcome};
use crate::binding::decide::GpuRequest;
use crate::binding::{BindContext, BindState, Plugin, PluginError, verdict};
use crate::gpu::podresources::{self, PodResources};
use crate::gpu::verdict::{self as gv, PLUGIN};
use crate::gpu::{GpuArgs, GpuInventory, GpuSnapshot, Transition};
use crate::kubeapi::events::{EventSink, EventSpec, EventType};

use super::CheckMode;

/// The `gpu` plugin's settings: its flags (they also configure the GPU runtime that the
/// agent starts once and every GPU-reading plugin shares).
#[derive(Debug, Clone, Default)]
pub struct GpuSettings {
    pub args: GpuArgs,
}

/// The pods bound to this node, as the GPU checks need them.
#[async_trait::async_trait]
pub trait NodePods: Send + Sync {
    async fn list(&self) -> Result<Vec<Pod>, String>;
}

/// Lists `spec.nodeName=<node>` pods from the API server: one request, this node only.
pub struct ApiNodePods {
    pub kube: crate::kubeapi::Kube,
    pub node: String,
}

#[async_trait::async_trait]
impl NodePods for ApiNodePods {
    async fn list(&self) -> Result<Vec<Pod>, String> {
        let api: Api<Pod> = Api::all(self.kube.client.clone());
        let lp = ListParams::default().fields(&format!("spec.nodeName={}", self.node));
        let what = crate::kubeapi::calls::LIST_PODS;
        self.kube
            .call(what, api.list(&lp))
            .await
            .map(|l| l.items)
            .map_err(|e| format!("listing the pods on this node: {e}"))
    }
}

/// The kubelet's device assignments, as the GPU checks need them.
#[async_trait::async_trait]
pub trait DeviceAssignments: Send + Sync {
    async fn list(&self) -> Result<Vec<PodResources>, String>;
}

/// Asks the kubelet's pod-resources socket (`List`), each call within `timeout`.
pub struct SocketAssignments {
    pub path: PathBuf,
    pub timeout: Duration,
}

#[async_trait::async_trait]
impl DeviceAssignments for SocketAssignments {
    async fn list(&self) -> Result<Vec<PodResources>, String> {
        podresources::list(&self.path, self.timeout)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Something for the node's Events.
#[derive(Debug, Clone)]
pub enum GpuNotice {
    Health(Transition),
    Verdict {
        pod: ObjectReference,
        ok: bool,
        message: String,
    },
}

/// One verdict kept for the debug state.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerdictRecord {
    pub request: String,
    pub at: String,
    pub verdicts: Vec<Verdict>,
}

const KEEP_VERDICTS: usize = 32;

/// The inventory, the pod source and the lock shared by every GPU bind of this agent.
pub struct GpuRuntime {
    inventory: Arc<dyn GpuInventory>,
    pods: Arc<dyn NodePods>,
    assignments: Option<Arc<dyn DeviceAssignments>>,
    notices: Option<UnboundedSender<GpuNotice>>,
    bind_lock: Arc<tokio::sync::Mutex<()>>,
    last_snapshot: Mutex<Option<GpuSnapshot>>,
    last_verdicts: Mutex<VecDeque<VerdictRecord>>,
}

impl GpuRuntime {
    pub fn new(
        inventory: Arc<dyn GpuInventory>,
        pods: Arc<dyn NodePods>,
        notices: Option<UnboundedSender<GpuNotice>>,
    ) -> Self {
        GpuRuntime {
            inventory,
            pods,
            assignments: None,
            notices,
            bind_lock: Arc::default(),
            last_snapshot: Mutex::new(None),
            last_verdicts: Mutex::new(VecDeque::new()),
        }
    }

    /// Uses the kubelet's device assignments for whole-GPU checks.
    pub fn with_assignments(mut self, assignments: Arc<dyn DeviceAssignments>) -> Self {
        self.assignments = Some(assignments);
        self
    }

    pub fn describe(&self) -> String {
        self.inventory.describe()
    }

    /// What the node's pods hold. Whole-GPU requests use the kubelet's device assignments
    /// when configured and answering, else (saying why) the pods' limits. The pod list is
    /// needed either way: for reservations (fractions) and for pods the kubelet has not
    /// admitted yet.
    async fn holders(&self, req: &GpuRequest) -> Result<gv::Holders, PluginError> {
        let answer = match (&self.assignments, req) {
            (Some(a), GpuRequest::Whole { .. }) => Some(a.list().await),
            _ => None,
        };
        let pods = self.pods.list().await.map_err(PluginError::transient)?;
        Ok(match answer {
            Some(Ok(answer)) => gv::holders_from_pod_resources(&answer, &pods),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "kubelet pod-resources socket unavailable; counting pod limits");
                let mut h = gv::holders_from_pods(&pods);
                h.fallback = Some(format!(
                    "the kubelet pod-resources socket did not answer ({e}), so the pods' limits were counted"
                ));
                h
            }
            None => gv::holders_from_pods(&pods),
        })
    }

    /// Serializes GPU binds on this node: held from the probe until the bind is done.
    pub(crate) async fn lock_binds(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.bind_lock.clone().lock_owned().await
    }

    /// Whether one more whole GPU is free, given the node's `pods` (for a new fractional
    /// GPU group's reservation pod). Call with [`Self::lock_binds`] held.
    pub(crate) async fn whole_gpu_verdict(&self, pods: &[Pod]) -> Result<Verdict, PluginError> {
        let req = GpuRequest::Whole { count: 1 };
        let snap = self.snapshot().await;
        let holders = match &self.assignments {
            Some(a) => match a.list().await {
                Ok(answer) => gv::holders_from_pod_resources(&answer, pods),
                Err(e) => {
                    let mut h = gv::holders_from_pods(pods);
                    h.fallback = Some(format!(
                        "the kubelet pod-resources socket did not answer ({e}), so the pods' limits were counted"
                    ));
                    h
                }
            },
            None => gv::holders_from_pods(pods),
        };
        gv::inventory_verdicts(&req, &snap, &holders, CheckMode::Enforce)
            .into_iter()
            .next()
            .ok_or_else(|| PluginError::transient("no whole-GPU verdict"))
    }

    /// What the agent's debug state shows: the last probe and the last verdicts.
    pub fn debug_state(&self) -> serde_json::Value {
        let snap = lock(&self.last_snapshot).clone();
        let verdicts: Vec<VerdictRecord> = lock(&self.last_verdicts).iter().cloned().collect();
        serde_json::json!({ "inventory": snap, "verdicts": verdicts })
    }

    pub(crate) async fn snapshot(&self) -> GpuSnapshot {
        let inv = self.inventory.clone();
        let source = inv.describe();
        let snap = tokio::task::spawn_blocking(move || inv.snapshot())
            .await
            .unwrap_or_else(|e| GpuSnapshot::unavailable(source, format!("probe failed: {e}")));
        *lock(&self.last_snapshot) = Some(snap.clone());
        snap
    }

    fn record(&self, request: String, verdicts: &[Verdict]) {
        let mut q = lock(&self.last_verdicts);
        if q.len() >= KEEP_VERDICTS {
            q.pop_front();
        }
        q.push_back(VerdictRecord {
            request,
            at: jiff::Timestamp::now().to_string(),
            verdicts: verdicts.to_vec(),
        });
    }
}

/// What the diagnostics server shows about the GPUs: the last probe (at start, at every
/// bind that asked for GPUs, and every `--gpu-recheck`, see [`refresh_facts`]).
impl crate::diag::NodeFacts for GpuRuntime {
    fn gpus(&self) -> crate::diag::GpuFacts {
        use crate::diag::{GpuDevice, GpuFacts};
        let snap = lock(&self.last_snapshot);
        let Some(s) = snap.as_ref() else {
            return GpuFacts::Loading;
        };
        match &s.state {
            crate::gpu::InventoryState::Unavailable { error } => GpuFacts::Unavailable {
                reason: format!("{}: {error}", s.source),
            },
            crate::gpu::InventoryState::Available => GpuFacts::Loaded {
                devices: s
                    .gpus
                    .iter()
                    .map(|g| GpuDevice {
                        index: g.index,
                        uuid: g.uuid.clone(),
                        name: g.name.clone().unwrap_or_default(),
                        memory_total_bytes: g.memory.as_ref().map_or(0, |m| m.total),
                        memory_used_bytes: g.memory.as_ref().map(|m| m.used),
                        healthy: g.health.healthy,
                        reason: (!g.health.healthy).then(|| g.health.reason.clone()),
                    })
                    .collect(),
            },
        }
    }
}

/// Probes once at start and then every `period`, so readiness and the GPU metrics reflect
/// the inventory even before the first GPU bind.
pub async fn refresh_facts(rt: Arc<GpuRuntime>, period: Duration, stop: CancellationToken) {
    loop {
        rt.snapshot().await;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period.max(Duration::from_secs(1))) => {}
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts the inventory named by `args` (the NVML thread or the file), with the pod
/// source and the kubelet's socket, unless GPU checks are off; its background tasks go in
/// `tasks`: the periodic re-read of health facts, and the health and verdict notices turned
/// into Events until `stop`. Shared by every plugin that reads GPUs and by the diagnostics.
pub fn start_runtime(
    args: &GpuArgs,
    kube: &crate::kubeapi::Kube,
    node: &str,
    events: &EventSink,
    stop: &CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Option<Arc<GpuRuntime>> {
    if args.gpu_verification == CheckMode::Off {
        return None;
    }
    let (tx, rx) = unbounded_channel();
    let (ttx, mut trx) = unbounded_channel::<Transition>();
    let (forward, forward_stop) = (tx.clone(), stop.clone());
    tasks.spawn(async move {
        // Stops with the agent: the sender lives in the inventory, which outlives this.
        while let Some(t) = tokio::select! {
            t = trx.recv() => t,
            _ = forward_stop.cancelled() => None,
        } {
            if forward.send(GpuNotice::Health(t)).is_err() {
                return;
            }
        }
    });
    let inventory =
        match crate::gpu::open(&args.source(), args.health(), args.gpu_recheck, Some(ttx)) {
            Ok(i) => i,
            Err(e) => Arc::new(Unavailable(e.to_string())) as Arc<dyn GpuInventory>,
        };
    let pods = Arc::new(ApiNodePods {
        kube: kube.clone(),
        node: node.to_string(),
    });
    let mut rt = GpuRuntime::new(inventory, pods, Some(tx));
    if let Some(path) = &args.kubelet_pod_resources_socket {
        rt = rt.with_assignments(Arc::new(SocketAssignments {
            path: path.clone(),
            timeout: kube.timeout,
        }));
    }
    let rt = Arc::new(rt);
    tasks.spawn(refresh_facts(rt.clone(), args.gpu_recheck, stop.clone()));
    tasks.spawn(forward_notices(
        rx,
        events.clone(),
        node.to_string(),
        stop.clone(),
    ));
    Some(rt)
}

/// Turns notices into Events until `stop`: health changes on the Node, verdicts on the pod.
pub async fn forward_notices(
    mut rx: UnboundedReceiver<GpuNotice>,
    events: EventSink,
    node: String,
    stop: CancellationToken,
) {
    loop {
        let n = tokio::select! {
            n = rx.recv() => n,
            _ = stop.cancelled() => return,
        };
        let Some(n) = n else { return };
        events.emit(notice_event(n, &node));
    }
}

pub fn notice_event(n: GpuNotice, node: &str) -> EventSpec {
    match n {
        GpuNotice::Health(t) => EventSpec {
            regarding: crate::api::refs::reference_to::<k8s_openapi::api::core::v1::Node>(
                None,
                Some(node.to_string()),
                None,
            ),
            type_: if t.healthy {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: if t.healthy {
                "GpuHealthy"
            } else {
                "GpuUnhealthy"
            }
            .into(),
            note: t.message(),
        },
        GpuNotice::Verdict { pod, ok, message } => EventSpec {
            regarding: pod,
            type_: if ok {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: if ok { "GpuVerified" } else { "GpuRefused" }.into(),
            note: message,
        },
    }
}

/// An inventory that could not even be started.
struct Unavailable(String);

impl GpuInventory for Unavailable {
    fn snapshot(&self) -> GpuSnapshot {
        GpuSnapshot::unavailable("none", self.0.clone())
    }
    fn describe(&self) -> String {
        "unavailable".into()
    }
}

/// What `pre_bind` leaves for the rest of the attempt: the verdicts, and the node's GPU
/// bind lock, held until the attempt ends (the state is dropped after the bind).
#[derive(Debug, Default)]
pub struct GpuBindState {
    pub snapshot: Option<GpuSnapshot>,
    pub verdicts: Vec<Verdict>,
    pub guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

pub struct GpuPlugin {
    mode: CheckMode,
    runtime: Option<Arc<GpuRuntime>>,
}

/// The `gpu` plugin over the shared GPU runtime (`None`: GPU checks are off).
pub fn setup(settings: &GpuSettings, env: &super::PluginEnv) -> GpuPlugin {
    GpuPlugin {
        mode: settings.args.gpu_verification,
        runtime: env.gpu.clone(),
    }
}

#[async_trait::async_trait]
impl Plugin for GpuPlugin {
    fn name(&self) -> &'static str {
        PLUGIN
    }

    fn validate(&self, ctx: &BindContext<'_>) -> Vec<Verdict> {
        let mut out = gv::request_verdicts(&ctx.request.gpu, ctx.pod, self.mode);
        if ctx.bind_request.spec.received_resource_type.as_deref() == Some("MigInstance") {
            out.push(verdict(
                PLUGIN,
                "mig",
                VerdictOutcome::Skip,
                "MIG instances are not verified on the node; the device plugin assigns them".into(),
            ));
        }
        out
    }

    async fn pre_bind(
        &self,
        ctx: &BindContext<'_>,
        state: &mut BindState,
    ) -> Result<Vec<Verdict>, PluginError> {
        // Fractions are checked by `gpu_sharing`, once it knows the group's GPU.
        if matches!(
            ctx.request.gpu,
            GpuRequest::None | GpuRequest::Fraction { .. }
        ) {
            return Ok(Vec::new());
        }
        if self.mode == CheckMode::Off {
            return Ok(vec![verdict(
                PLUGIN,
                "gpu",
                VerdictOutcome::Skip,
                "GPU verification is off".into(),
            )]);
        }
        let Some(rt) = &self.runtime else {
            let bad = if self.mode == CheckMode::Warn {
                VerdictOutcome::Warn
            } else {
                VerdictOutcome::Fail
            };
            return Ok(vec![verdict(
                PLUGIN,
                "inventory",
                bad,
                "GPU inventory unavailable: no GPU backend is running".into(),
            )]);
        };
        let guard = rt.bind_lock.clone().lock_owned().await;
        let snap = rt.snapshot().await;
        let holders = rt.holders(&ctx.request.gpu).await?;
        let verdicts = gv::inventory_verdicts(&ctx.request.gpu, &snap, &holders, self.mode);
        let request = format!("{}/{}", ctx.request.namespace, ctx.request.pod_name);
        rt.record(request, &verdicts);
        let failed: Vec<&Verdict> = verdicts
            .iter()
            .filter(|v| v.outcome == VerdictOutcome::Fail)
            .collect();
        if let Some(tx) = &rt.notices {
            let ok = failed.is_empty();
            let shown: Vec<&Verdict> = if ok {
                verdicts.iter().collect()
            } else {
                failed
            };
            let message = shown
                .iter()
                .map(|v| v.message.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            let _ = tx.send(GpuNotice::Verdict {
                pod: crate::api::refs::object_ref(ctx.pod),
                ok,
                message,
            });
        }
        state.put(GpuBindState {
            snapshot: Some(snap),
            verdicts: verdicts.clone(),
            guard: Some(guard),
        });
        Ok(verdicts)
    }

    async fn rollback(&self, _ctx: &BindContext<'_>, state: &mut BindState) {
        // Nothing was written; releasing the lock lets the next GPU bind probe.
        if let Some(s) = state.get_mut::<GpuBindState>() {
            s.guard = None;
        }
    }
}
