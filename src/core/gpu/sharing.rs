//! Fractional GPU sharing the way KAI-Scheduler does it, as pure decisions over the pods
//! bound to this node, the kubelet's device assignments and a GPU snapshot. The
//! `gpu_sharing` plugin (the agent's `plugins::gpu_sharing`) performs what these decide.
//!
//! KAI's contract, kept exactly (so pods, reservation pods and ConfigMaps made by KAI's
//! binder and by bindlet are interchangeable):
//! - A GPU group is one physical GPU, held by a *reservation pod*: namespace
//!   `kai-resource-reservation`, labels `runai-gpu-group=<group>` and `app=<app label>`,
//!   `nvidia.com/gpu: 1`, `spec.nodeName` set directly. Its GPU is the device the kubelet
//!   assigned to it, which KAI's reservation image also writes into the pod's annotation
//!   `run.ai/reserve_for_gpu_index` (a GPU UUID despite the name).
//! - Every pod sharing the GPU carries `runai-gpu-group=<group>`, or
//!   `runai-gpu-group/<group>=<group>` when it asks for several fractional devices.
//! - The pod reads its GPU from ConfigMaps named after its annotation
//!   `runai/shared-gpu-configmap`, per GPU container: `<prefix>-<index>` ("capabilities",
//!   `<prefix>-i<index>` for an init container) and `<prefix>-<index>-evar` (plain
//!   environment variables), owned by the pod; see [`configmaps`].

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::api::{Verdict, VerdictOutcome};
use crate::binding::CheckMode;
use crate::binding::verdict;
use crate::gpu::verdict::{GPU_GROUP_LABEL, RESERVED_GPU_ANNOTATION};
use crate::gpu::{GpuSnapshot, InventoryState};

pub const PLUGIN: &str = "gpu_sharing";
/// Label key of the reservation pods' app label (its value is configurable, like KAI's).
pub const APP_LABEL: &str = "app";
/// Pod annotation KAI's admission webhook sets: the prefix of the pod's ConfigMap names.
pub const CONFIGMAP_ANNOTATION: &str = "runai/shared-gpu-configmap";
/// Pod annotations a KAI user sets: a portion of a GPU, or GPU memory in MiB.
pub const FRACTION_ANNOTATION: &str = "gpu-fraction";
pub const GPU_MEMORY_ANNOTATION: &str = "gpu-memory";
/// Pod annotation asking for several fractional devices.
pub const NUM_DEVICES_ANNOTATION: &str = "gpu-fraction-num-devices";
/// The portion bindlet gave a pod, recorded on it so later binds can add up a GPU's shares
/// exactly (the BindRequest that carried it is deleted by the scheduler after success).
pub const PORTION_ANNOTATION: &str = "bindlet.dev/gpu-portion";
/// CDI device name of a GPU, as the NVIDIA device plugin names it.
pub const CDI_PREFIX: &str = "k8s.device-plugin.nvidia.com/gpu=";

pub const VISIBLE_DEVICES: &str = "NVIDIA_VISIBLE_DEVICES";
/// The key's name before KAI renamed it; still read by old pods.
pub const OLD_VISIBLE_DEVICES: &str = "RUNAI-VISIBLE-DEVICES";
/// Pod annotation naming the container that gets the GPU share (KAI
/// `pkg/common/constants/constants.go`, `GpuFractionContainerName`).
pub const FRACTION_CONTAINER_ANNOTATION: &str = "gpu-fraction-container-name";
pub const NUM_OF_GPUS: &str = "RUNAI_NUM_OF_GPUS";
pub const GPU_PORTION: &str = "GPU_PORTION";

/// Where the reservation pods live and how they are recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationScope {
    pub namespace: String,
    pub app_label: String,
}

impl ReservationScope {
    /// A reservation pod is in the reservation namespace with the app label and a group;
    /// the app label lets the namespace be shared with other pods (tests do that).
    pub fn group_of(&self, pod: &Pod) -> Option<String> {
        let m = &pod.metadata;
        if m.namespace.as_deref() != Some(self.namespace.as_str()) {
            return None;
        }
        let labels = m.labels.as_ref()?;
        if labels.get(APP_LABEL) != Some(&self.app_label) {
            return None;
        }
        labels.get(GPU_GROUP_LABEL).cloned()
    }
}

/// The label that ties a pod to `group`: KAI's plain label, or the per-group key for pods
/// with several fractional devices (one pod can then be in several groups).
pub fn group_label(group: &str, multi: bool) -> (String, String) {
    if multi {
        (format!("{GPU_GROUP_LABEL}/{group}"), group.to_string())
    } else {
        (GPU_GROUP_LABEL.to_string(), group.to_string())
    }
}

/// Whether the pod asks for several fractional devices: its annotation says so, else the
/// number of groups the scheduler chose.
pub fn is_multi_fraction(pod: &Pod, groups: usize) -> bool {
    let annotated = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(NUM_DEVICES_ANNOTATION))
        .and_then(|v| v.trim().parse::<u32>().ok());
    match annotated {
        Some(n) => n > 1,
        None => groups > 1,
    }
}

/// How much of its GPU a sharing pod was given.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Share {
    Portion(f64),
    MemoryMiB(u64),
}

impl Share {
    fn bytes(self, total: u64) -> u64 {
        match self {
            Share::Portion(p) => needed(p, total),
            Share::MemoryMiB(m) => m.saturating_mul(MIB),
        }
    }
}

/// The share a pod records or asked for: bindlet's own annotation first, then KAI's.
pub fn pod_share(pod: &Pod) -> Option<Share> {
    let a = pod.metadata.annotations.as_ref()?;
    let portion = |k: &str| {
        a.get(k)
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|p| p.is_finite() && *p > 0.0 && *p <= 1.0)
    };
    if let Some(p) = portion(PORTION_ANNOTATION).or_else(|| portion(FRACTION_ANNOTATION)) {
        return Some(Share::Portion(p));
    }
    a.get(GPU_MEMORY_ANNOTATION)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Share::MemoryMiB)
}

/// A reservation pod as the decisions need it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReservationPod {
    pub name: String,
    pub uid: String,
    /// The GPU its annotation names (KAI's reservation image writes it).
    pub annotated_gpu: Option<String>,
    /// The kubelet refused it (phase Failed), with its message.
    pub refused: Option<String>,
    pub terminating: bool,
    pub created: Option<jiff::Timestamp>,
}

/// A pod sharing a group's GPU.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub share: Option<Share>,
}

/// The groups of this node, from the pods bound to it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeGroups {
    pub reservations: BTreeMap<String, Vec<ReservationPod>>,
    pub members: BTreeMap<String, Vec<Member>>,
}

impl NodeGroups {
    pub fn members_of(&self, group: &str) -> &[Member] {
        self.members.get(group).map_or(&[], Vec::as_slice)
    }
    pub fn reservations_of(&self, group: &str) -> &[ReservationPod] {
        self.reservations.get(group).map_or(&[], Vec::as_slice)
    }
}

fn finished(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded") | Some("Failed"))
}

/// Sorts the node's pods into reservations and members. Finished members share nothing;
/// a refused (Failed) reservation is kept so it can be reported and removed.
pub fn node_groups(pods: &[Pod], scope: &ReservationScope) -> NodeGroups {
    let mut out = NodeGroups::default();
    for pod in pods {
        let m = &pod.metadata;
        let name = m.name.clone().unwrap_or_default();
        let uid = m.uid.clone().unwrap_or_default();
        if let Some(group) = scope.group_of(pod) {
            let refused = pod
                .status
                .as_ref()
                .filter(|s| s.phase.as_deref() == Some("Failed"))
                .map(|s| {
                    format!(
                        "{}: {}",
                        s.reason.as_deref().unwrap_or("Failed"),
                        s.message.as_deref().unwrap_or("no message")
                    )
                });
            out.reservations
                .entry(group)
                .or_default()
                .push(ReservationPod {
                    name,
                    uid,
                    annotated_gpu: m
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(RESERVED_GPU_ANNOTATION))
                        .map(|v| v.trim().to_string())
                        .filter(|v| !v.is_empty() && v != "-1"),
                    refused,
                    terminating: m.deletion_timestamp.is_some(),
                    created: m
                        .creation_timestamp
                        .as_ref()
                        .and_then(|t| t.0.to_string().parse().ok()),
                });
            continue;
        }
        if finished(pod) {
            continue;
        }
        let Some(labels) = m.labels.as_ref() else {
            continue;
        };
        let mut groups = BTreeSet::new();
        for (k, v) in labels {
            if k == GPU_GROUP_LABEL {
                groups.insert(v.clone());
            } else if let Some(g) = k.strip_prefix(&format!("{GPU_GROUP_LABEL}/")) {
                groups.insert(g.to_string());
            }
        }
        for g in groups {
            out.members.entry(g).or_default().push(Member {
                namespace: m.namespace.clone().unwrap_or_default(),
                name: name.clone(),
                uid: uid.clone(),
                share: pod_share(pod),
            });
        }
    }
    out
}

/// Where a group's GPU is known from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuSource {
    PodResources,
    Annotation,
}

impl GpuSource {
    pub fn describe(self) -> &'static str {
        match self {
            GpuSource::PodResources => "kubelet pod-resources",
            GpuSource::Annotation => "annotation run.ai/reserve_for_gpu_index",
        }
    }
}

/// What to do about a group's reservation.
#[derive(Debug, Clone, PartialEq)]
pub enum ReservationStep {
    /// The group's GPU is known.
    Ready {
        pod: String,
        uid: String,
        gpu: String,
        source: GpuSource,
    },
    /// A reservation pod exists; its GPU is not known yet (not admitted yet).
    Wait { pod: String, uid: String },
    /// The kubelet refused the reservation pod: remove it and refuse this attempt.
    Refused {
        pod: String,
        uid: String,
        message: String,
    },
    /// No reservation pod: create one.
    Create,
}

/// The kubelet's device assignments: `namespace/name` → `nvidia.com/gpu` device IDs.
pub type Assignments = BTreeMap<String, Vec<String>>;

/// The GPU of a reservation pod: the kubelet's assignment first (it is what the pod really
/// got), else the annotation.
pub fn reservation_gpu(
    pod: &ReservationPod,
    namespace: &str,
    assigned: Option<&Assignments>,
) -> Option<(String, GpuSource)> {
    let key = format!("{namespace}/{}", pod.name);
    if let Some(id) = assigned
        .and_then(|a| a.get(&key))
        .and_then(|ids| ids.first())
    {
        return Some((id.clone(), GpuSource::PodResources));
    }
    pod.annotated_gpu
        .clone()
        .map(|g| (g, GpuSource::Annotation))
}

/// Decides the next step for `group`: reuse a reservation whose GPU is known (the oldest
/// if there are several), wait for one being admitted, remove a refused one, or create.
pub fn reservation_step(
    group: &str,
    groups: &NodeGroups,
    scope: &ReservationScope,
    assigned: Option<&Assignments>,
) -> ReservationStep {
    let mut live: Vec<&ReservationPod> = groups
        .reservations_of(group)
        .iter()
        .filter(|r| !r.terminating)
        .collect();
    live.sort_by(|a, b| a.created.cmp(&b.created).then(a.name.cmp(&b.name)));
    for r in &live {
        if let Some((gpu, source)) = reservation_gpu(r, &scope.namespace, assigned) {
            return ReservationStep::Ready {
                pod: r.name.clone(),
                uid: r.uid.clone(),
                gpu,
                source,
            };
        }
    }
    if let Some(r) = live.iter().find(|r| r.refused.is_none()) {
        return ReservationStep::Wait {
            pod: r.name.clone(),
            uid: r.uid.clone(),
        };
    }
    if let Some(r) = live.first() {
        return ReservationStep::Refused {
            pod: r.name.clone(),
            uid: r.uid.clone(),
            message: r.refused.clone().unwrap_or_default(),
        };
    }
    ReservationStep::Create
}

const MIB: u64 = 1024 * 1024;

fn needed(portion: f64, total: u64) -> u64 {
    (portion * total as f64).ceil() as u64
}

fn mib(b: u64) -> u64 {
    b / MIB
}

fn problem(mode: CheckMode) -> VerdictOutcome {
    if mode == CheckMode::Warn {
        VerdictOutcome::Warn
    } else {
        VerdictOutcome::Fail
    }
}

/// Checks that `gpu` can take one more share of `portion`: it is healthy, and the shares
/// already placed on it plus this one fit in its memory less what the driver reserves. The
/// memory in use right now is reported, and warned about when less than this share is
/// free (KAI does not enforce shares, so a neighbour may use more than its portion).
/// `others` are the group's members other than the pod being bound.
pub fn share_verdicts(
    group: &str,
    gpu: &str,
    portion: f64,
    others: &[Member],
    snap: &GpuSnapshot,
    mode: CheckMode,
) -> Vec<Verdict> {
    if mode == CheckMode::Off {
        return Vec::new();
    }
    let bad = problem(mode);
    let v = |outcome, message| verdict(PLUGIN, "share", outcome, message);
    if let InventoryState::Unavailable { error } = &snap.state {
        return vec![v(
            bad,
            format!(
                "group {group}: GPU inventory unavailable ({}): {error}",
                snap.source
            ),
        )];
    }
    let Some(g) = snap.by_uuid(gpu) else {
        return vec![v(
            bad,
            format!("group {group} is reserved on GPU {gpu}, which this node does not have"),
        )];
    };
    if !g.health.healthy {
        return vec![v(
            bad,
            format!(
                "group {group} is on {}, which is unhealthy: {}",
                g.label(),
                g.health.reason
            ),
        )];
    }
    let Some(m) = g.memory else {
        return vec![v(
            bad,
            format!(
                "group {group} is on {}, whose memory could not be read",
                g.label()
            ),
        )];
    };
    let usable = m.total.saturating_sub(m.reserved);
    let placed: u64 = others
        .iter()
        .filter_map(|o| o.share)
        .map(|s| s.bytes(m.total))
        .sum();
    let unknown: Vec<String> = others
        .iter()
        .filter(|o| o.share.is_none())
        .map(|o| format!("{}/{}", o.namespace, o.name))
        .collect();
    let need = needed(portion, m.total);
    let fits = placed.saturating_add(need) <= usable;
    let mut msg = format!(
        "group {group} on {}: {} other pod(s) hold {} MiB, portion {portion} needs {} MiB; total {} MiB, driver-reserved {} MiB, {} MiB left for shares",
        g.label(),
        others.len(),
        mib(placed),
        mib(need),
        mib(m.total),
        mib(m.reserved),
        mib(usable.saturating_sub(placed)),
    );
    if !unknown.is_empty() {
        msg.push_str(&format!(
            "; share unknown (no {PORTION_ANNOTATION}, {FRACTION_ANNOTATION} or {GPU_MEMORY_ANNOTATION} annotation), not counted: {}",
            unknown.join(", ")
        ));
    }
    let mut out = vec![v(if fits { VerdictOutcome::Pass } else { bad }, msg)];
    if fits && m.available() < need {
        out.push(verdict(
            PLUGIN,
            "memory-in-use",
            VerdictOutcome::Warn,
            format!(
                "group {group} on {}: {} MiB in use now, {} MiB free, less than the {} MiB of this share (a pod sharing the GPU uses more than its portion)",
                g.label(),
                mib(m.used),
                mib(m.available()),
                mib(need)
            ),
        ));
    }
    out
}

/// One ConfigMap the pod reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigMapPlan {
    pub name: String,
    pub data: BTreeMap<String, String>,
}

/// The container that gets the GPU share, as KAI picks it
/// (`pkg/binder/common/gpu_access.go`, `GetFractionContainerRef`): the one named by the pod
/// annotation `gpu-fraction-container-name` (init containers searched first), else the
/// first container.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FractionContainer<'a> {
    pub container: &'a Container,
    pub index: usize,
    pub init: bool,
}

impl FractionContainer<'_> {
    /// The suffix of its ConfigMap names: `<index>`, or `i<index>` for an init container
    /// (`pkg/binder/common/gpusharingconfigmap/config_map.go`).
    pub fn suffix(&self) -> String {
        if self.init {
            format!("i{}", self.index)
        } else {
            self.index.to_string()
        }
    }
}

/// Finds the container that gets the GPU share (see [`FractionContainer`]).
pub fn fraction_container(pod: &Pod) -> Result<FractionContainer<'_>, String> {
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| "the pod has no spec".to_string())?;
    let named = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(FRACTION_CONTAINER_ANNOTATION));
    let Some(name) = named else {
        return spec
            .containers
            .first()
            .map(|container| FractionContainer {
                container,
                index: 0,
                init: false,
            })
            .ok_or_else(|| "the pod has no containers".to_string());
    };
    let init = spec.init_containers.iter().flatten().enumerate();
    let regular = spec.containers.iter().enumerate();
    init.map(|(i, c)| (i, c, true))
        .chain(regular.map(|(i, c)| (i, c, false)))
        .find(|(_, c, _)| &c.name == name)
        .map(|(index, container, init)| FractionContainer {
            container,
            index,
            init,
        })
        .ok_or_else(|| {
            format!(
                "the pod's {FRACTION_CONTAINER_ANNOTATION} annotation names container {name:?}, which the pod does not have"
            )
        })
}

/// Whether the container reads `key` from a ConfigMap (KAI's webhook wired it so).
fn reads_from_configmap(container: &Container, key: &str) -> bool {
    container.env.iter().flatten().any(|e| {
        e.name == key
            && e.value_from
                .as_ref()
                .and_then(|f| f.config_map_key_ref.as_ref())
                .is_some()
    })
}

/// The ConfigMaps of the pod's GPU container (capabilities first, then env), filled as
/// KAI's binder fills them (`pkg/binder/plugins/gpusharing/gpu_sharing.go` and
/// `pkg/binder/common/gpu_access.go`):
/// - `<prefix>-<suffix>` ("capabilities"; suffix per [`FractionContainer::suffix`]) gets
///   `RUNAI_NUM_OF_GPUS` and `GPU_PORTION`, both the portion: KAI's webhook wires both as
///   non-optional `configMapKeyRef`s to this map
///   (`pkg/admission/webhook/v1alpha2/gpusharing/gpu_sharing.go`, `AddGPUSharingEnvVars`),
///   so a container whose map lacks one cannot start;
/// - `<prefix>-<suffix>-evar` (read through `envFrom`) exists, possibly empty;
/// - `NVIDIA_VISIBLE_DEVICES` goes into the capabilities map when the container reads it
///   from a ConfigMap (what the webhook wires), else into the env map.
///
/// `devices` are GPU UUIDs, written as CDI device names with `cdi`.
pub fn configmaps(
    pod: &Pod,
    devices: &[String],
    portion: &str,
    cdi: bool,
) -> Result<Vec<ConfigMapPlan>, String> {
    let prefix = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONFIGMAP_ANNOTATION))
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .ok_or_else(|| {
            format!(
                "the pod has no {CONFIGMAP_ANNOTATION} annotation (KAI's admission webhook sets it on fractional pods), so it cannot be told which GPU it shares"
            )
        })?;
    let target = fraction_container(pod)?;
    let capabilities = format!("{prefix}-{}", target.suffix());
    let env = format!("{capabilities}-evar");
    let visible = devices
        .iter()
        .map(|d| {
            if cdi {
                format!("{CDI_PREFIX}{d}")
            } else {
                d.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    let mut cap = BTreeMap::from([
        (NUM_OF_GPUS.to_string(), portion.to_string()),
        (GPU_PORTION.to_string(), portion.to_string()),
    ]);
    let mut direct = BTreeMap::new();
    if reads_from_configmap(target.container, VISIBLE_DEVICES) {
        cap.insert(VISIBLE_DEVICES.to_string(), visible);
    } else {
        direct.insert(VISIBLE_DEVICES.to_string(), visible);
    }
    Ok(vec![
        ConfigMapPlan {
            name: capabilities,
            data: cap,
        },
        ConfigMapPlan {
            name: env,
            data: direct,
        },
    ])
}

/// An existing map's data with the plan's written over it. Pods created before KAI renamed
/// the key read `RUNAI-VISIBLE-DEVICES`: where a map has it, it gets the devices too
/// (KAI's `SetNvidiaVisibleDevices` does the same).
pub fn merged_data(
    existing: &BTreeMap<String, String>,
    plan: &ConfigMapPlan,
) -> BTreeMap<String, String> {
    let mut data = existing.clone();
    data.extend(plan.data.clone());
    if let Some(devices) = plan.data.get(VISIBLE_DEVICES)
        && data.contains_key(OLD_VISIBLE_DEVICES)
    {
        data.insert(OLD_VISIBLE_DEVICES.to_string(), devices.clone());
    }
    data
}

/// A reservation pod garbage collection removes, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collect {
    pub group: String,
    pub pod: String,
    pub uid: String,
    pub why: String,
}

/// Reservation pods nothing needs any more: their group has no live member on this node,
/// no pending BindRequest names it, no bind of it is in flight (`busy`), and the pod is at
/// least `grace` old (so a pod that was just labelled, or a watch a moment behind, is not
/// raced). Refused reservations are removed as well once `grace` old.
pub fn collect(
    groups: &NodeGroups,
    pending: &BTreeSet<String>,
    busy: &BTreeSet<String>,
    now: jiff::Timestamp,
    grace: std::time::Duration,
) -> Vec<Collect> {
    let mut out = Vec::new();
    for (group, pods) in &groups.reservations {
        if busy.contains(group) {
            continue;
        }
        let unused = groups.members_of(group).is_empty() && !pending.contains(group);
        for r in pods {
            if r.terminating {
                continue;
            }
            let old = r.created.is_none_or(|c| {
                now.duration_since(c)
                    .try_into()
                    .is_ok_and(|d: std::time::Duration| d >= grace)
            });
            if !old {
                continue;
            }
            let why = if let Some(m) = &r.refused {
                format!("the kubelet refused it ({m})")
            } else if unused {
                format!("no pod on this node uses GPU group {group}")
            } else {
                continue;
            };
            out.push(Collect {
                group: group.clone(),
                pod: r.name.clone(),
                uid: r.uid.clone(),
                why,
            });
        }
    }
    out
}

pub mod hamicore;
pub mod reservation;

#[cfg(test)]
mod tests;
