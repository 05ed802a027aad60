//! `gpu_sharing`: fractional GPU requests (`receivedResourceType: Fraction`), done the way
//! KAI-Scheduler's binder does them (see [`crate::gpu::sharing`] for the contract), checked
//! on the node and without KAI's reservation races.
//!
//! For each GPU group of the request, under a per-group lock held until the attempt ends:
//! find the group's reservation pod on this node, or create one (only when the node has a
//! whole GPU free for it, so a full node does not get reservation pods recreated in a
//! loop); learn its GPU from the kubelet's pod-resources socket, else from the pod's
//! `run.ai/reserve_for_gpu_index` annotation, within `--reservation-timeout`; check that
//! GPU is healthy and has memory for every share placed on it plus this one. Then label the
//! pod with its groups and write the ConfigMaps it reads its GPU from. Rollback removes
//! the labels and the ConfigMaps this attempt created, and the group's reservation pod when
//! no other pod uses the group.
//!
//! Garbage collection ([`collect_loop`]) removes reservation pods whose group has no live
//! pod on this node, no pending BindRequest and no bind in flight, and refused ones; it
//! takes the same group locks as binds, re-reads the pods after taking them, deletes with a
//! UID precondition, and runs only while this agent holds the node's Lease.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    ConfigMap, Pod, PodSecurityContext, ResourceRequirements, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::json;
use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;

use crate::api::{Verdict, VerdictOutcome};
use crate::binding::decide::GpuRequest;
use crate::binding::{BindContext, BindState, Plugin, PluginError, verdict};
use crate::gpu::sharing::{
    self as decide, Assignments, GpuSource, NodeGroups, PLUGIN, ReservationScope, ReservationStep,
};
use crate::gpu::verdict::GPU_RESOURCE;
use crate::kubeapi::calls;
use crate::kubeapi::{ApiError, Kube};

use super::CheckMode;
use super::gpu::{DeviceAssignments, GpuRuntime, NodePods};

/// The image KAI's reservation pods run (it writes the GPU's UUID on its own pod).
pub const DEFAULT_RESERVATION_IMAGE: &str =
    "ghcr.io/nvidia/kai-scheduler/resource-reservation:latest";
/// After the kubelet refuses a reservation pod, no new one is created on this node for
/// this long: the refusal means the kubelet sees no free GPU even if the inventory does.
const REFUSAL_COOL_DOWN: Duration = Duration::from_secs(30);
const CONFLICT_TRIES: usize = 5;

/// Flags of the `gpu_sharing` plugin.
#[derive(Debug, Clone, clap::Args)]
pub struct SharingArgs {
    /// Serve fractional GPU requests (KAI `receivedResourceType: Fraction`) with
    /// reservation pods, group labels and ConfigMaps; `false` refuses them.
    #[arg(long, env = "BINDLET_GPU_SHARING", default_value_t = true, action = clap::ArgAction::Set)]
    pub gpu_sharing: bool,
    /// Namespace of the GPU reservation pods (KAI's default).
    #[arg(
        long,
        env = "BINDLET_RESERVATION_NAMESPACE",
        default_value = "kai-resource-reservation"
    )]
    pub reservation_namespace: String,
    /// Image of the reservation pods: use the one of your KAI release.
    #[arg(long, env = "BINDLET_RESERVATION_IMAGE", default_value = DEFAULT_RESERVATION_IMAGE)]
    pub reservation_image: String,
    /// Service account of the reservation pods.
    #[arg(
        long,
        env = "BINDLET_RESERVATION_SERVICE_ACCOUNT",
        default_value = "kai-resource-reservation"
    )]
    pub reservation_service_account: String,
    /// Value of the reservation pods' `app` label.
    #[arg(
        long,
        env = "BINDLET_RESERVATION_APP_LABEL",
        default_value = "kai-resource-reservation"
    )]
    pub reservation_app_label: String,
    /// RuntimeClass of the reservation pods (e.g. `nvidia`), if the node needs one.
    #[arg(long, env = "BINDLET_RESERVATION_RUNTIME_CLASS")]
    pub reservation_runtime_class: Option<String>,
    /// How long a bind waits for a reservation pod to get its GPU.
    #[arg(long, env = "BINDLET_RESERVATION_TIMEOUT", default_value = "40s", value_parser = crate::api::duration::parse_duration)]
    pub reservation_timeout: Duration,
    /// How often unused reservation pods are looked for.
    #[arg(long, env = "BINDLET_RESERVATION_GC_INTERVAL", default_value = "30s", value_parser = crate::api::duration::parse_duration)]
    pub reservation_gc_interval: Duration,
    /// A reservation pod younger than this is never collected.
    #[arg(long, env = "BINDLET_RESERVATION_GC_GRACE", default_value = "30s", value_parser = crate::api::duration::parse_duration)]
    pub reservation_gc_grace: Duration,
    /// The NVIDIA device plugin hands GPUs out as CDI devices: NVIDIA_VISIBLE_DEVICES then
    /// names `k8s.device-plugin.nvidia.com/gpu=<UUID>`.
    #[arg(long, env = "BINDLET_CDI")]
    pub cdi: bool,
    /// Resources of the reservation pods besides their one GPU, as JSON ResourceRequirements
    /// (KAI's `--resource-reservation-pod-resources`), e.g.
    /// `{"requests":{"cpu":"1m","memory":"10Mi"}}`.
    #[arg(long, env = "BINDLET_RESERVATION_POD_RESOURCES", value_parser = json_arg::<ResourceRequirements>)]
    pub reservation_pod_resources: Option<ResourceRequirements>,
    /// Pod security context of the reservation pods, as JSON (KAI's
    /// `--resource-reservation-pod-security-context`).
    #[arg(long, env = "BINDLET_RESERVATION_POD_SECURITY_CONTEXT", value_parser = json_arg::<PodSecurityContext>)]
    pub reservation_pod_security_context: Option<PodSecurityContext>,
    /// Security context of the reservation pods' container, as JSON (KAI's
    /// `--resource-reservation-container-security-context`).
    #[arg(long, env = "BINDLET_RESERVATION_CONTAINER_SECURITY_CONTEXT", value_parser = json_arg::<SecurityContext>)]
    pub reservation_container_security_context: Option<SecurityContext>,
    /// Write CUDA_DEVICE_MEMORY_LIMIT for HAMi-core into the capabilities ConfigMap, as KAI's
    /// `hamicore` binder plugin does (off by default, as there), from the GPU's measured
    /// memory less the driver's reserve.
    #[arg(long, env = "BINDLET_HAMICORE")]
    pub hamicore: bool,
}

/// Parses a flag given as JSON into a Kubernetes type.
fn json_arg<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_json::from_str(text).map_err(|e| format!("not valid JSON for this setting: {e}"))
}

impl Default for SharingArgs {
    /// The flags' own defaults (written once, in the `#[arg]`s above).
    fn default() -> Self {
        crate::flags::defaults()
    }
}

impl SharingArgs {
    /// What reservation pods are made of.
    pub fn pod_settings(&self) -> decide::reservation::PodSettings {
        decide::reservation::PodSettings {
            namespace: self.reservation_namespace.clone(),
            app_label: self.reservation_app_label.clone(),
            image: self.reservation_image.clone(),
            service_account: self.reservation_service_account.clone(),
            runtime_class: self.reservation_runtime_class.clone(),
            resources: self.reservation_pod_resources.clone(),
            pod_security_context: self.reservation_pod_security_context.clone(),
            container_security_context: self.reservation_container_security_context.clone(),
        }
    }

    pub fn scope(&self) -> ReservationScope {
        ReservationScope {
            namespace: self.reservation_namespace.clone(),
            app_label: self.reservation_app_label.clone(),
        }
    }
}

/// Settings of the plugin: its flags.
#[derive(Debug, Clone, Default)]
pub struct SharingSettings {
    pub args: SharingArgs,
}

/// One lock per GPU group, shared by binds and garbage collection.
#[derive(Default)]
pub struct GroupLocks {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl GroupLocks {
    fn entry(&self, group: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 1024 {
            // Forget the locks nobody holds or waits for.
            map.retain(|_, m| Arc::strong_count(m) > 1);
        }
        map.entry(group.to_string()).or_default().clone()
    }

    pub async fn lock(&self, group: &str) -> OwnedMutexGuard<()> {
        self.entry(group).lock_owned().await
    }

    pub fn try_lock(&self, group: &str) -> Option<OwnedMutexGuard<()>> {
        self.entry(group).try_lock_owned().ok()
    }
}

/// The plugin's API access and the node-wide state it shares with garbage collection.
#[derive(Clone)]
pub struct SharingApi {
    kube: Kube,
    node: String,
    pods: Arc<dyn NodePods>,
    assignments: Option<Arc<dyn DeviceAssignments>>,
    pub locks: Arc<GroupLocks>,
    /// The last kubelet refusal of a reservation pod on this node.
    refused: Arc<Mutex<Option<(Instant, String)>>>,
}

impl SharingApi {
    /// The reservation pods on this node: `scope`'s namespace and app label, this node's
    /// `spec.nodeName`.
    async fn reservation_pods(&self, scope: &ReservationScope) -> Result<Vec<Pod>, String> {
        let api: Api<Pod> = Api::namespaced(self.kube.client.clone(), &scope.namespace);
        let lp = ListParams::default()
            .labels(&format!("app={}", scope.app_label))
            .fields(&format!("spec.nodeName={}", self.node));
        let what = crate::kubeapi::calls::LIST_PODS;
        self.kube
            .call(what, api.list(&lp))
            .await
            .map(|l| l.items)
            .map_err(|e| format!("listing the reservation pods on this node: {e}"))
    }
}

impl std::fmt::Debug for SharingApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharingApi")
            .field("node", &self.node)
            .field("kube", &self.kube)
            .finish_non_exhaustive()
    }
}

impl SharingApi {
    pub fn new(kube: Kube, node: &str, socket: Option<std::path::PathBuf>) -> Self {
        let timeout = kube.timeout;
        let pods = Arc::new(super::gpu::ApiNodePods {
            kube: kube.clone(),
            node: node.to_string(),
        });
        let assignments = socket.map(|path| {
            Arc::new(super::gpu::SocketAssignments { path, timeout }) as Arc<dyn DeviceAssignments>
        });
        SharingApi {
            kube,
            node: node.to_string(),
            pods,
            assignments,
            locks: Arc::default(),
            refused: Arc::default(),
        }
    }

    /// The kubelet's GPU assignments, or `None` (with a log line) when there is no socket
    /// or it does not answer: the annotation is then the only source.
    async fn assigned(&self) -> Option<Assignments> {
        let a = self.assignments.as_ref()?;
        match a.list().await {
            Ok(list) => Some(
                list.iter()
                    .map(|p| {
                        (
                            format!("{}/{}", p.namespace, p.name),
                            p.device_ids(GPU_RESOURCE).map(str::to_string).collect(),
                        )
                    })
                    .collect(),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "kubelet pod-resources socket unavailable; reading reservation annotations");
                None
            }
        }
    }

    fn pods_in(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.kube.client.clone(), ns)
    }

    async fn get_pod(&self, ns: &str, name: &str) -> Result<Option<Pod>, ApiError> {
        self.kube
            .call_opt(calls::GET_POD, self.pods_in(ns).get_opt(name))
            .await
    }

    /// Deletes a pod if it is still the one with `uid`; gone already is success.
    async fn delete_pod(&self, ns: &str, name: &str, uid: &str) -> Result<(), ApiError> {
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match self
            .kube
            .call(calls::DELETE_POD, self.pods_in(ns).delete(name, &dp))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.code(), Some(404) | Some(409)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn note_refusal(&self, message: &str) {
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), message.to_string()));
    }

    fn recent_refusal(&self) -> Option<String> {
        let r = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        r.as_ref()
            .filter(|(at, _)| at.elapsed() < REFUSAL_COOL_DOWN)
            .map(|(at, m)| format!("{m} ({} s ago)", at.elapsed().as_secs()))
    }
}

/// What this attempt's `pre_bind` did, for rollback.
#[derive(Debug, Default)]
pub struct SharingWrites {
    guards: Vec<OwnedMutexGuard<()>>,
    /// The groups of the request (set once their locks are held).
    pub groups: Vec<String>,
    /// Reservation pods created by this attempt: name, uid.
    pub created_reservations: Vec<(String, String)>,
    /// Label keys this attempt added to the pod.
    pub labels_added: Vec<String>,
    pub portion_annotated: bool,
    /// ConfigMaps this attempt created: name, uid.
    pub configmaps_created: Vec<(String, String)>,
    /// The GPUs (UUIDs) the pod shares, in request order.
    pub devices: Vec<String>,
}

/// This node's pods as one attempt read them.
#[derive(Clone, Copy)]
struct NodeView<'a> {
    pods: &'a [Pod],
    groups: &'a NodeGroups,
    assigned: Option<&'a Assignments>,
}

pub struct GpuSharingPlugin {
    args: SharingArgs,
    mode: CheckMode,
    api: SharingApi,
    gpu: Option<Arc<GpuRuntime>>,
}

/// The `gpu_sharing` plugin; when sharing is on, also the collector of reservation pods no
/// group needs any more (a background task in `tasks`, acting only while leading).
pub fn setup(
    settings: &SharingSettings,
    gpu: &crate::gpu::GpuArgs,
    env: &super::PluginEnv,
    tasks: &mut tokio::task::JoinSet<()>,
) -> GpuSharingPlugin {
    let api = SharingApi::new(
        env.kube.clone(),
        &env.node,
        gpu.kubelet_pod_resources_socket.clone(),
    );
    if settings.args.gpu_sharing {
        let (store, limit) = (env.requests.clone(), env.default_backoff_limit);
        let pending: PendingGroups = Arc::new(move || {
            store
                .state()
                .iter()
                .filter_map(|r| r.0.as_ref().ok())
                .filter(|br| !crate::binding::is_settled(br, limit))
                .flat_map(|br| br.spec.selected_gpu_groups.clone().unwrap_or_default())
                .collect()
        });
        tasks.spawn(collect_loop(
            api.clone(),
            settings.args.clone(),
            pending,
            env.leading.clone(),
            env.stop.clone(),
        ));
    }
    GpuSharingPlugin {
        args: settings.args.clone(),
        mode: gpu.gpu_verification,
        api,
        gpu: env.gpu.clone(),
    }
}

impl GpuSharingPlugin {
    fn v(check: &str, outcome: VerdictOutcome, message: String) -> Verdict {
        verdict(PLUGIN, check, outcome, message)
    }

    /// Makes sure `group` has a reservation pod with a known GPU on this node; `source` is
    /// the fractional pod being bound.
    async fn reserve(
        &self,
        api: &SharingApi,
        group: &str,
        source: &Pod,
        node: NodeView<'_>,
        w: &mut SharingWrites,
    ) -> Result<(String, Verdict), PluginError> {
        let NodeView {
            pods,
            groups,
            assigned,
        } = node;
        let scope = self.args.scope();
        let ns = &scope.namespace;
        let started = Instant::now();
        let (pod, uid, created) = match decide::reservation_step(group, groups, &scope, assigned) {
            ReservationStep::Ready {
                pod, gpu, source, ..
            } => {
                let msg = format!(
                    "group {group}: reservation pod {ns}/{pod} holds GPU {gpu} (from {})",
                    source.describe()
                );
                return Ok((gpu, Self::v("reservation", VerdictOutcome::Pass, msg)));
            }
            ReservationStep::Refused { pod, uid, message } => {
                return Err(self.refusal(api, group, &pod, &uid, &message).await);
            }
            ReservationStep::Wait { pod, uid } => (pod, uid, false),
            ReservationStep::Create => {
                let (pod, uid, created) = self.create_reservation(api, group, source, pods).await?;
                if created {
                    w.created_reservations.push((pod.clone(), uid.clone()));
                }
                (pod, uid, created)
            }
        };
        let (gpu, source) = self.wait_for_gpu(api, group, &pod, &uid).await?;
        let msg = format!(
            "group {group}: reservation pod {ns}/{pod} ({}) holds GPU {gpu} (from {}), known after {} ms",
            if created {
                "created by this bind"
            } else {
                "found being admitted, or created meanwhile by another binder"
            },
            source.describe(),
            started.elapsed().as_millis()
        );
        Ok((gpu, Self::v("reservation", VerdictOutcome::Pass, msg)))
    }

    /// Removes a reservation pod the kubelet refused and says why the attempt failed.
    async fn refusal(
        &self,
        api: &SharingApi,
        group: &str,
        pod: &str,
        uid: &str,
        message: &str,
    ) -> PluginError {
        let ns = &self.args.reservation_namespace;
        api.note_refusal(&format!(
            "the kubelet refused reservation pod {ns}/{pod}: {message}"
        ));
        let removed = match api.delete_pod(ns, pod, uid).await {
            Ok(()) => "it was removed".to_string(),
            Err(e) => format!("removing it failed ({e}); garbage collection will retry"),
        };
        PluginError::refused(format!(
            "group {group}: the kubelet refused reservation pod {ns}/{pod} ({message}); {removed}"
        ))
    }

    /// Creates the group's reservation pod, after checking (under the node's GPU bind
    /// lock, so a whole-GPU bind cannot take the same GPU meanwhile) that a GPU is free.
    /// Its name is KAI's deterministic one: AlreadyExists means another binder (KAI's, during
    /// a migration) created it since this attempt looked, and it is used as found. Returns
    /// name, uid and whether this attempt created it.
    async fn create_reservation(
        &self,
        api: &SharingApi,
        group: &str,
        source: &Pod,
        pods: &[Pod],
    ) -> Result<(String, String, bool), PluginError> {
        if let Some(last) = api.recent_refusal() {
            return Err(PluginError::refused(format!(
                "group {group} needs a new reservation pod, but none is created on this node for {} s after a refusal: {last}",
                REFUSAL_COOL_DOWN.as_secs()
            )));
        }
        let _guard = match (&self.gpu, self.mode) {
            (Some(rt), CheckMode::Enforce | CheckMode::Warn) => {
                let guard = rt.lock_binds().await;
                let free = rt.whole_gpu_verdict(pods).await?;
                if free.outcome == VerdictOutcome::Fail {
                    return Err(PluginError::refused(format!(
                        "group {group} needs a new reservation pod, which needs a free GPU: {}",
                        free.message
                    )));
                }
                Some(guard)
            }
            _ => None,
        };
        let ns = &self.args.reservation_namespace;
        let pod = decide::reservation::pod(&self.args.pod_settings(), &api.node, group, source);
        let name = pod.metadata.name.clone().unwrap_or_default();
        let created = api
            .kube
            .call(
                calls::CREATE_POD,
                api.pods_in(ns).create(&PostParams::default(), &pod),
            )
            .await;
        match created {
            Ok(created) => {
                tracing::info!(group, pod = %name, "created GPU reservation pod");
                Ok((name, created.metadata.uid.unwrap_or_default(), true))
            }
            Err(ApiError::Status { code: 409, .. }) => {
                let found = api.get_pod(ns, &name).await.map_err(|e| {
                    PluginError::transient(format!(
                        "group {group}: reservation pod {ns}/{name} already exists; reading it: {e}"
                    ))
                })?;
                match found {
                    Some(p) if p.metadata.deletion_timestamp.is_none() => {
                        tracing::info!(group, pod = %name, "GPU reservation pod already exists; using it");
                        Ok((name, p.metadata.uid.unwrap_or_default(), false))
                    }
                    _ => Err(PluginError::transient(format!(
                        "group {group}: reservation pod {ns}/{name} is being deleted; retrying"
                    ))),
                }
            }
            Err(e) => {
                let m = format!("group {group}: creating a reservation pod in {ns}: {e}");
                Err(
                    if e.code().is_some_and(|c| c == 403 || c == 404 || c == 422) {
                        PluginError::refused(m)
                    } else {
                        PluginError::transient(m)
                    },
                )
            }
        }
    }

    /// Polls the kubelet's assignments and the pod until its GPU is known, it is refused,
    /// it disappears, or `--reservation-timeout` passes.
    async fn wait_for_gpu(
        &self,
        api: &SharingApi,
        group: &str,
        pod: &str,
        uid: &str,
    ) -> Result<(String, GpuSource), PluginError> {
        let ns = &self.args.reservation_namespace;
        let timeout = self.args.reservation_timeout;
        let started = Instant::now();
        let mut delay = Duration::from_millis(10);
        let key = format!("{ns}/{pod}");
        loop {
            if let Some(a) = api.assigned().await
                && let Some(id) = a.get(&key).and_then(|ids| ids.first())
            {
                return Ok((id.clone(), GpuSource::PodResources));
            }
            let current = api.get_pod(ns, pod).await.map_err(|e| {
                PluginError::transient(format!("reading reservation pod {key}: {e}"))
            })?;
            let Some(current) = current.filter(|p| p.metadata.uid.as_deref() == Some(uid)) else {
                return Err(PluginError::refused(format!(
                    "group {group}: reservation pod {key} was deleted while waiting for its GPU"
                )));
            };
            let groups = decide::node_groups(std::slice::from_ref(&current), &self.args.scope());
            if let Some(r) = groups.reservations_of(group).first() {
                if let Some(m) = &r.refused {
                    return Err(self.refusal(api, group, pod, uid, m).await);
                }
                if let Some(g) = &r.annotated_gpu {
                    return Ok((g.clone(), GpuSource::Annotation));
                }
            }
            let waited = started.elapsed();
            if waited >= timeout {
                let socket = if api.assignments.is_some() {
                    "the kubelet has not assigned it a GPU"
                } else {
                    "no kubelet pod-resources socket is configured"
                };
                return Err(PluginError::refused(format!(
                    "group {group}: reservation pod {key} got no GPU within {}: {socket}, and its annotation {} is not set; check that it can start on this node",
                    humantime(timeout),
                    crate::gpu::verdict::RESERVED_GPU_ANNOTATION
                )));
            }
            tokio::time::sleep(delay.min(timeout - waited)).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }

    /// Labels the pod with its groups and records its portion, guarded by its UID.
    async fn label(
        &self,
        api: &SharingApi,
        ctx: &BindContext<'_>,
        portion: &str,
        w: &mut SharingWrites,
    ) -> Result<(), PluginError> {
        let GpuRequest::Fraction { groups, .. } = &ctx.request.gpu else {
            return Ok(());
        };
        let multi = decide::is_multi_fraction(ctx.pod, groups.len());
        let current = ctx.pod.metadata.labels.clone().unwrap_or_default();
        let mut labels = serde_json::Map::new();
        for g in groups {
            let (k, v) = decide::group_label(g, multi);
            if current.get(&k) != Some(&v) {
                labels.insert(k.clone(), json!(v));
                w.labels_added.push(k);
            }
        }
        let annotated = ctx
            .pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(decide::PORTION_ANNOTATION))
            .is_some_and(|p| p == portion);
        if labels.is_empty() && annotated {
            return Ok(());
        }
        let mut meta = json!({ "uid": ctx.pod.metadata.uid, "labels": labels });
        if !annotated {
            meta["annotations"] = json!({ decide::PORTION_ANNOTATION: portion });
            w.portion_annotated = true;
        }
        self.patch_pod(api, ctx, json!({ "metadata": meta }))
            .await
            .map_err(|e| {
                let m = format!("labelling the pod with its GPU groups: {e}");
                if e.code() == Some(409) {
                    PluginError::refused(format!("{m} (the pod was recreated)"))
                } else {
                    PluginError::transient(m)
                }
            })
    }

    /// `--hamicore`: adds CUDA_DEVICE_MEMORY_LIMIT to the capabilities map (the first plan)
    /// and says where its memory figure came from; when it cannot be computed nothing is
    /// added (as KAI) and the verdict warns why.
    fn hamicore(
        &self,
        ctx: &BindContext<'_>,
        portion: f64,
        devices: &[String],
        snap: Option<&crate::gpu::GpuSnapshot>,
        plans: &mut [decide::ConfigMapPlan],
    ) -> Verdict {
        use decide::hamicore::{CUDA_DEVICE_MEMORY_LIMIT, GPU_MEMORY_LABEL, memory_limit};
        let label = ctx
            .node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(GPU_MEMORY_LABEL))
            .map(String::as_str);
        match (
            memory_limit(portion, devices, snap, label),
            plans.first_mut(),
        ) {
            (Ok(limit), Some(capabilities)) => {
                capabilities
                    .data
                    .insert(CUDA_DEVICE_MEMORY_LIMIT.to_string(), limit.value.clone());
                Self::v(
                    "hamicore",
                    VerdictOutcome::Pass,
                    format!(
                        "{CUDA_DEVICE_MEMORY_LIMIT}={} in {}: portion {portion} of {}",
                        limit.value, capabilities.name, limit.source
                    ),
                )
            }
            (Ok(_), None) => Self::v(
                "hamicore",
                VerdictOutcome::Warn,
                format!("{CUDA_DEVICE_MEMORY_LIMIT} not written: no capabilities ConfigMap"),
            ),
            (Err(why), _) => Self::v(
                "hamicore",
                VerdictOutcome::Warn,
                format!("{CUDA_DEVICE_MEMORY_LIMIT} not written: {why}"),
            ),
        }
    }

    async fn patch_pod(
        &self,
        api: &SharingApi,
        ctx: &BindContext<'_>,
        body: serde_json::Value,
    ) -> Result<(), ApiError> {
        api.kube
            .call(
                calls::PATCH_POD,
                api.pods_in(&ctx.request.namespace).patch(
                    &ctx.request.pod_name,
                    &PatchParams::default(),
                    &Patch::Merge(body),
                ),
            )
            .await
            .map(|_| ())
    }

    /// Creates the ConfigMap owned by the pod, or brings an existing one up to date (KAI's
    /// binder also takes over one left by an earlier pod of the same name).
    async fn write_configmap(
        &self,
        api: &SharingApi,
        ctx: &BindContext<'_>,
        plan: &decide::ConfigMapPlan,
        w: &mut SharingWrites,
    ) -> Result<(), PluginError> {
        let ns = &ctx.request.namespace;
        let cms: Api<ConfigMap> = Api::namespaced(api.kube.client.clone(), ns);
        let owner = OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: ctx.request.pod_name.clone(),
            uid: ctx.pod.metadata.uid.clone().unwrap_or_default(),
            ..Default::default()
        };
        let fail = |e: ApiError| {
            PluginError::transient(format!("writing ConfigMap {ns}/{}: {e}", plan.name))
        };
        for _ in 0..CONFLICT_TRIES {
            let existing = api
                .kube
                .call_opt(calls::GET_CONFIGMAP, cms.get_opt(&plan.name))
                .await
                .map_err(fail)?;
            let result = match existing {
                None => {
                    let cm = ConfigMap {
                        metadata: ObjectMeta {
                            name: Some(plan.name.clone()),
                            namespace: Some(ns.clone()),
                            owner_references: Some(vec![owner.clone()]),
                            ..Default::default()
                        },
                        data: Some(plan.data.clone()),
                        ..Default::default()
                    };
                    api.kube
                        .call(
                            calls::CREATE_CONFIGMAP,
                            cms.create(&PostParams::default(), &cm),
                        )
                        .await
                        .map(|c| {
                            w.configmaps_created
                                .push((plan.name.clone(), c.metadata.uid.unwrap_or_default()));
                        })
                }
                Some(mut cm) => {
                    let old = cm.data.take().unwrap_or_default();
                    let data = decide::merged_data(&old, plan);
                    let owned = cm
                        .metadata
                        .owner_references
                        .as_ref()
                        .is_some_and(|o| o.len() == 1 && o[0].uid == owner.uid);
                    if owned && data == old {
                        return Ok(());
                    }
                    cm.data = Some(data);
                    cm.metadata.owner_references = Some(vec![owner.clone()]);
                    // The resourceVersion read above guards the write: 409 → read again.
                    api.kube
                        .call(
                            calls::UPDATE_CONFIGMAP,
                            cms.replace(&plan.name, &PostParams::default(), &cm),
                        )
                        .await
                        .map(|_| ())
                }
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) if e.code() == Some(409) => continue,
                Err(e) => return Err(fail(e)),
            }
        }
        Err(PluginError::transient(format!(
            "writing ConfigMap {ns}/{}: it kept changing ({CONFLICT_TRIES} conflicts)",
            plan.name
        )))
    }
}

fn humantime(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[async_trait::async_trait]
impl Plugin for GpuSharingPlugin {
    fn name(&self) -> &'static str {
        PLUGIN
    }

    fn validate(&self, ctx: &BindContext<'_>) -> Vec<Verdict> {
        if !matches!(ctx.request.gpu, GpuRequest::Fraction { .. }) {
            return Vec::new();
        }
        if !self.args.gpu_sharing {
            return vec![Self::v(
                "enabled",
                VerdictOutcome::Fail,
                "the request is for a fraction of a GPU, but GPU sharing is off on this node (--gpu-sharing=false)".into(),
            )];
        }
        // Checked before anything is written: without it the pod cannot learn its GPU.
        match decide::configmaps(ctx.pod, &[], "", false) {
            Ok(_) => Vec::new(),
            Err(e) => vec![Self::v("configmaps", VerdictOutcome::Fail, e)],
        }
    }

    async fn pre_bind(
        &self,
        ctx: &BindContext<'_>,
        state: &mut BindState,
    ) -> Result<Vec<Verdict>, PluginError> {
        let GpuRequest::Fraction {
            portion, groups, ..
        } = &ctx.request.gpu
        else {
            return Ok(Vec::new());
        };
        let api = &self.api;
        let portion_text = ctx
            .bind_request
            .spec
            .received_gpu
            .as_ref()
            .and_then(|g| g.portion.clone())
            .unwrap_or_else(|| portion.to_string());
        let w = state.slot::<SharingWrites>();
        // Sorted, so two multi-group binds cannot each hold a lock the other waits for.
        let mut sorted = groups.clone();
        sorted.sort();
        sorted.dedup();
        for g in &sorted {
            w.guards.push(api.locks.lock(g).await);
        }
        w.groups = groups.clone();

        let pods = api.pods.list().await.map_err(PluginError::transient)?;
        let assigned = api.assigned().await;
        let node_groups = decide::node_groups(&pods, &self.args.scope());
        let mut verdicts = Vec::new();
        let mut devices = Vec::new();
        for g in groups {
            let view = NodeView {
                pods: &pods,
                groups: &node_groups,
                assigned: assigned.as_ref(),
            };
            let (gpu, v) = self.reserve(api, g, ctx.pod, view, w).await?;
            verdicts.push(v);
            devices.push(gpu);
        }
        let mut snapshot = None;
        if let Some(rt) = &self.gpu
            && self.mode != CheckMode::Off
        {
            let snap = snapshot.insert(rt.snapshot().await);
            let me = ctx.pod.metadata.uid.as_deref().unwrap_or_default();
            for (g, gpu) in groups.iter().zip(&devices) {
                let others: Vec<_> = node_groups
                    .members_of(g)
                    .iter()
                    .filter(|m| m.uid != me)
                    .cloned()
                    .collect();
                verdicts.extend(decide::share_verdicts(
                    g, gpu, *portion, &others, snap, self.mode,
                ));
            }
        }
        if verdicts.iter().any(|v| v.outcome == VerdictOutcome::Fail) {
            return Ok(verdicts);
        }
        let mut plans = decide::configmaps(ctx.pod, &devices, &portion_text, self.args.cdi)
            .map_err(PluginError::refused)?;
        if self.args.hamicore {
            if snapshot.is_none()
                && let Some(rt) = &self.gpu
            {
                snapshot = Some(rt.snapshot().await);
            }
            verdicts.push(self.hamicore(ctx, *portion, &devices, snapshot.as_ref(), &mut plans));
        }
        self.label(api, ctx, &portion_text, w).await?;
        for plan in &plans {
            self.write_configmap(api, ctx, plan, w).await?;
        }
        let names: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
        verdicts.push(Self::v(
            "configmaps",
            VerdictOutcome::Pass,
            format!(
                "ConfigMaps {} tell the pod its GPU(s): {}",
                names.join(", "),
                devices.join(",")
            ),
        ));
        w.devices = devices;
        Ok(verdicts)
    }

    async fn rollback(&self, ctx: &BindContext<'_>, state: &mut BindState) {
        let api = &self.api;
        let w = state.slot::<SharingWrites>();
        let ns = &ctx.request.namespace;
        let cms: Api<ConfigMap> = Api::namespaced(api.kube.client.clone(), ns);
        for (name, uid) in std::mem::take(&mut w.configmaps_created) {
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..Default::default()
            };
            let r = api
                .kube
                .call(calls::DELETE_CONFIGMAP, cms.delete(&name, &dp))
                .await;
            if let Err(e) = r
                && !matches!(e.code(), Some(404) | Some(409))
            {
                tracing::warn!(configmap = %name, error = %e, "rollback: could not delete ConfigMap");
            }
        }
        let labels = std::mem::take(&mut w.labels_added);
        if !labels.is_empty() || w.portion_annotated {
            let mut meta = json!({ "uid": ctx.pod.metadata.uid });
            if !labels.is_empty() {
                let nulls: serde_json::Map<_, _> =
                    labels.into_iter().map(|k| (k, json!(null))).collect();
                meta["labels"] = json!(nulls);
            }
            if w.portion_annotated {
                meta["annotations"] = json!({ decide::PORTION_ANNOTATION: null });
            }
            w.portion_annotated = false;
            if let Err(e) = self.patch_pod(api, ctx, json!({ "metadata": meta })).await
                && !matches!(e.code(), Some(404) | Some(409))
            {
                tracing::warn!(error = %e, "rollback: could not remove the pod's GPU group labels");
            }
        }
        // A reservation no other pod uses goes now (the group lock is still held, so no
        // other bind of the group can be between its lookup and its label).
        let groups = std::mem::take(&mut w.groups);
        if !groups.is_empty() {
            self.release_unused(api, ctx, &groups, &w.created_reservations)
                .await;
        }
        w.created_reservations.clear();
        w.guards.clear();
    }
}

impl GpuSharingPlugin {
    async fn release_unused(
        &self,
        api: &SharingApi,
        ctx: &BindContext<'_>,
        groups: &[String],
        created: &[(String, String)],
    ) {
        let ns = &self.args.reservation_namespace;
        let me = ctx.pod.metadata.uid.as_deref().unwrap_or_default();
        let pods = match api.pods.list().await {
            Ok(p) => p,
            Err(e) => {
                // What this attempt created goes anyway; the rest is left to collection.
                tracing::warn!(error = %e, "rollback: cannot list this node's pods");
                for (name, uid) in created {
                    let _ = api.delete_pod(ns, name, uid).await;
                }
                return;
            }
        };
        let node_groups = decide::node_groups(&pods, &self.args.scope());
        for g in groups {
            if node_groups.members_of(g).iter().any(|m| m.uid != me) {
                continue;
            }
            for r in node_groups.reservations_of(g) {
                if let Err(e) = api.delete_pod(ns, &r.name, &r.uid).await {
                    tracing::warn!(pod = %r.name, error = %e, "rollback: could not delete reservation pod");
                } else {
                    tracing::info!(group = %g, pod = %r.name, "removed unused GPU reservation pod");
                }
            }
        }
    }
}

/// Groups named by this node's BindRequests that are not settled yet.
pub type PendingGroups = Arc<dyn Fn() -> BTreeSet<String> + Send + Sync>;

/// Removes unused and refused reservation pods every `--reservation-gc-interval`, while
/// `leading()` says this agent holds the node's Lease. Returns what it removed per round
/// through the log; errors wait for the next round.
pub async fn collect_loop(
    api: SharingApi,
    args: SharingArgs,
    pending: PendingGroups,
    leading: Arc<dyn Fn() -> bool + Send + Sync>,
    stop: CancellationToken,
) {
    let interval = args.reservation_gc_interval.max(Duration::from_millis(100));
    let mut wait = interval;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        if !leading() {
            continue;
        }
        let pending = pending();
        let busy = match collect_once(&api, &args, &pending).await {
            Ok(removed) => !removed.is_empty() || !pending.is_empty(),
            Err(e) => {
                tracing::warn!(error = %e, "GPU reservation garbage collection failed; retrying next round");
                true
            }
        };
        wait = next_gc_wait(interval, wait, busy);
    }
}

/// Rounds on a node with nothing to collect and no fraction request pending back off, up to
/// this many intervals: every round is a LIST per node, and on an idle fleet it was a third
/// of each agent's idle API requests (one per 30 s against the Lease's one per 15 s).
const GC_IDLE_BACKOFF: u32 = 8;

/// The wait before the next garbage-collection round: `interval` after a round that removed
/// a pod or saw a pending fraction request (or failed), else double the last wait, capped
/// at `GC_IDLE_BACKOFF` intervals. An unused reservation pod is then removed within
/// 8 intervals (4 min by default) plus the grace period on an otherwise idle node.
pub fn next_gc_wait(interval: Duration, previous: Duration, busy: bool) -> Duration {
    if busy {
        interval
    } else {
        (previous * 2).clamp(interval, interval * GC_IDLE_BACKOFF)
    }
}

/// One round of garbage collection; returns the reservation pods removed.
pub async fn collect_once(
    api: &SharingApi,
    args: &SharingArgs,
    pending: &BTreeSet<String>,
) -> Result<Vec<decide::Collect>, String> {
    let scope = args.scope();
    let grace = args.reservation_gc_grace;
    // Most rounds find no reservation pod at all: ask for those alone first (a label and
    // node selector in one namespace), and read every pod of the node only when there is
    // one to judge. A node's full pod list decoded every round was most of the agent's
    // memory on a node with thousands of pods.
    if api.reservation_pods(&scope).await?.is_empty() {
        return Ok(Vec::new());
    }
    let first = decide::node_groups(&api.pods.list().await?, &scope);
    let candidates = decide::collect(&first, pending, &BTreeSet::new(), now(), grace);
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    // Take the groups' locks (skipping groups with a bind in flight), then decide again
    // on a fresh read: a bind may have labelled a pod between the first read and now.
    let mut guards = BTreeMap::new();
    let mut busy = BTreeSet::new();
    for c in &candidates {
        if guards.contains_key(&c.group) || busy.contains(&c.group) {
            continue;
        }
        match api.locks.try_lock(&c.group) {
            Some(g) => {
                guards.insert(c.group.clone(), g);
            }
            None => {
                busy.insert(c.group.clone());
            }
        }
    }
    let fresh = decide::node_groups(&api.pods.list().await?, &scope);
    let mut removed = Vec::new();
    for c in decide::collect(&fresh, pending, &busy, now(), grace) {
        if !guards.contains_key(&c.group) {
            continue;
        }
        match api.delete_pod(&scope.namespace, &c.pod, &c.uid).await {
            Ok(()) => {
                tracing::info!(group = %c.group, pod = %c.pod, why = %c.why, "removed GPU reservation pod");
                removed.push(c);
            }
            Err(e) => tracing::warn!(pod = %c.pod, error = %e, "could not delete reservation pod"),
        }
    }
    Ok(removed)
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

#[cfg(test)]
mod gc_wait_tests {
    use super::*;

    #[test]
    fn idle_garbage_collection_backs_off_and_work_resets_it() {
        let s = Duration::from_secs;
        // (previous wait, busy) -> next wait, with a 30 s interval
        let table = [
            (s(30), false, s(60)),
            (s(60), false, s(120)),
            (s(120), false, s(240)),
            (s(240), false, s(240)),
            (s(240), true, s(30)),
            (s(60), true, s(30)),
            (s(30), true, s(30)),
        ];
        for (previous, busy, want) in table {
            assert_eq!(
                next_gc_wait(s(30), previous, busy),
                want,
                "{previous:?} {busy}"
            );
        }
    }
}
