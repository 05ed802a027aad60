//! The node's GPU runtime, started once by the agent and shared by every GPU-reading plugin and the diagnostics: the inventory, the pods on this node (the API adapter: one LIST per GPU bind), the kubelet's device assignments, the bind lock, and the notices turned into Events.

use super::*;

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

pub(super) const KEEP_VERDICTS: usize = 32;

/// The inventory, the pod source and the lock shared by every GPU bind of this agent.
pub struct GpuRuntime {
    pub(super) inventory: Arc<dyn GpuInventory>,
    pub(super) pods: Arc<dyn NodePods>,
    pub(super) assignments: Option<Arc<dyn DeviceAssignments>>,
    pub(super) notices: Option<UnboundedSender<GpuNotice>>,
    pub(super) bind_lock: Arc<tokio::sync::Mutex<()>>,
    pub(super) last_snapshot: Mutex<Option<GpuSnapshot>>,
    pub(super) last_verdicts: Mutex<VecDeque<VerdictRecord>>,
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
    pub(super) async fn holders(&self, req: &GpuRequest) -> Result<gv::Holders, PluginError> {
        let answer = match (&self.assignments, req) {
            (Some(a), GpuRequest::Whole { .. }) => Some(a.list().await),
            _ => None,
        };
        let pods = self.pods.list().await.map_err(PluginError::unavailable)?;
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
            .ok_or_else(|| PluginError::unavailable("no whole-GPU verdict"))
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

    pub(super) fn record(&self, request: String, verdicts: &[Verdict]) {
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

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
    let (ttx, trx) = unbounded_channel::<Transition>();
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
        trx,
        events.clone(),
        node.to_string(),
        stop.clone(),
    ));
    Some(rt)
}

/// Turns notices into Events until `stop`: health transitions (from the inventory) on the
/// Node, verdicts (from the plugins) on the pod.
pub(super) async fn forward_notices(
    mut notices: UnboundedReceiver<GpuNotice>,
    mut transitions: UnboundedReceiver<Transition>,
    events: EventSink,
    node: String,
    stop: CancellationToken,
) {
    loop {
        let n = tokio::select! {
            Some(t) = transitions.recv() => GpuNotice::Health(t),
            Some(n) = notices.recv() => n,
            _ = stop.cancelled() => return,
            else => return,
        };
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
pub(super) struct Unavailable(String);

impl GpuInventory for Unavailable {
    fn snapshot(&self) -> GpuSnapshot {
        GpuSnapshot::unavailable("none", self.0.clone())
    }
    fn describe(&self) -> String {
        "unavailable".into()
    }
}
