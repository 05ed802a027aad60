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

mod api;
mod args;
mod gc;
mod state;

pub use api::*;
pub use args::*;
pub use gc::*;
pub use state::*;

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

/// After the kubelet refuses a reservation pod, no new one is created on this node for
/// this long: the refusal means the kubelet sees no free GPU even if the inventory does.
const REFUSAL_COOL_DOWN: Duration = Duration::from_secs(30);

const CONFLICT_TRIES: usize = 5;

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
        PluginError::unsatisfiable(format!(
            "group {group}: the kubelet refused reservation pod {ns}/{pod} ({message}); {removed}"
        ))
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
                PluginError::unavailable(format!("reading reservation pod {key}: {e}"))
            })?;
            let Some(current) = current.filter(|p| p.metadata.uid.as_deref() == Some(uid)) else {
                return Err(PluginError::missing(format!(
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
                return Err(PluginError::not_ready(format!(
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
                    PluginError::missing(format!("{m} (the pod was recreated)"))
                } else {
                    PluginError::unavailable(m)
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

        let pods = api.pods.list().await.map_err(PluginError::unavailable)?;
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
            .map_err(PluginError::invalid)?;
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
        api.delete_configmaps(ns, std::mem::take(&mut w.configmaps_created))
            .await;
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
