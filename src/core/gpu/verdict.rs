//! The `gpu` plugin's decisions, as pure functions over a GPU snapshot, the pod, and what
//! the pods already on this node hold.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;

use crate::api::{Verdict, VerdictOutcome};
use crate::binding::CheckMode;
use crate::binding::decide::GpuRequest;
use crate::binding::verdict;

use super::{GpuSnapshot, InventoryState};
use crate::api::podresources::PodResources;

pub use crate::api::wellknown::{GPU_RESOURCE, RESERVED_GPU_ANNOTATION};

pub const PLUGIN: &str = "gpu";
/// Label KAI puts on the pods that share a fractional GPU group (reservation pod included).
pub const GPU_GROUP_LABEL: &str = "runai-gpu-group";

/// Where the "already held" numbers came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HolderSource {
    /// Pods bound to this node, listed from the API server, counting their GPU limits.
    NodePods,
    /// The kubelet's pod-resources socket: which devices are assigned to which pod.
    PodResources,
}

impl HolderSource {
    pub fn describe(self) -> &'static str {
        match self {
            HolderSource::NodePods => "limits of the pods bound to this node (API server)",
            HolderSource::PodResources => "kubelet pod-resources device assignments",
        }
    }
}

/// What the pods already on this node hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holders {
    pub source: HolderSource,
    /// Whole GPUs held (the sum of `nvidia.com/gpu` limits of running pods).
    pub whole: u32,
    /// Pods counted in `whole`, for messages.
    pub pods: u32,
    /// With [`HolderSource::PodResources`]: device ID → `namespace/name` of its pod.
    pub assigned: BTreeMap<String, String>,
    /// With [`HolderSource::PodResources`]: GPUs of pods bound to this node that the
    /// kubelet has not assigned devices to yet (just bound, not admitted), by their limits.
    pub pending: u32,
    /// Why the preferred source was not used (e.g. the socket did not answer).
    pub fallback: Option<String>,
}

/// Summarizes the pods bound to this node. Finished pods (Succeeded, Failed) and pods
/// being deleted with no containers left hold nothing.
pub fn holders_from_pods<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> Holders {
    let mut h = Holders {
        source: HolderSource::NodePods,
        whole: 0,
        pods: 0,
        assigned: BTreeMap::new(),
        pending: 0,
        fallback: None,
    };
    for pod in pods {
        if finished(pod) {
            continue;
        }
        // A pod with an unreadable limit is counted as holding nothing here; its own
        // bind was refused for that reason.
        if let Ok(n) = pod_gpu_limit(pod)
            && n > 0
        {
            h.whole = h.whole.saturating_add(n);
            h.pods += 1;
        }
    }
    h
}

fn finished(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded") | Some("Failed"))
}

fn pod_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Summarizes the kubelet's device assignments (`nvidia.com/gpu`), with the pods bound to
/// this node for what the kubelet cannot say: pods that
/// finished (an older kubelet still lists their devices), and pods bound but not yet
/// admitted (no devices yet; counted by their limits so two quick binds do not both get
/// the same free GPU).
pub fn holders_from_pod_resources(answer: &[PodResources], pods: &[Pod]) -> Holders {
    let mut h = holders_from_pods(pods);
    h.source = HolderSource::PodResources;
    h.whole = 0;
    h.pods = 0;
    let done: BTreeSet<String> = pods
        .iter()
        .filter(|p| finished(p))
        .map(|p| {
            let m = &p.metadata;
            pod_key(
                m.namespace.as_deref().unwrap_or_default(),
                m.name.as_deref().unwrap_or_default(),
            )
        })
        .collect();
    let mut with_devices = BTreeSet::new();
    for p in answer {
        let key = pod_key(&p.namespace, &p.name);
        if done.contains(&key) {
            continue;
        }
        let mut any = false;
        for id in p.device_ids(GPU_RESOURCE) {
            h.assigned.insert(id.to_string(), key.clone());
            any = true;
        }
        if any {
            with_devices.insert(key);
        }
    }
    h.whole = h.assigned.len() as u32;
    h.pods = with_devices.len() as u32;
    for p in pods {
        let m = &p.metadata;
        let key = pod_key(
            m.namespace.as_deref().unwrap_or_default(),
            m.name.as_deref().unwrap_or_default(),
        );
        if finished(p) || with_devices.contains(&key) {
            continue;
        }
        if let Ok(n) = pod_gpu_limit(p)
            && n > 0
        {
            h.pending = h.pending.saturating_add(n);
            h.pods += 1;
        }
    }
    h
}

/// The GPU of the snapshot a device ID names: the device plugin's ID is the GPU UUID (or
/// its index, with `DEVICE_ID_STRATEGY=index`); time-slicing replicas add `::<n>`.
fn gpu_of<'a>(snap: &'a GpuSnapshot, id: &str) -> Option<&'a crate::gpu::Gpu> {
    let id = id.split("::").next().unwrap_or(id);
    snap.by_uuid(id).or_else(|| {
        let i: u32 = id.parse().ok()?;
        snap.gpus.iter().find(|g| g.index == i)
    })
}

/// Healthy GPUs free for a whole-GPU request, and a note of what holds the others.
fn free_whole(snap: &GpuSnapshot, holders: &Holders, healthy: u32) -> (u32, String) {
    if holders.source != HolderSource::PodResources {
        return (healthy.saturating_sub(holders.whole), String::new());
    }
    let mut held_healthy: BTreeSet<String> = BTreeSet::new();
    let mut unknown: BTreeSet<&str> = BTreeSet::new();
    let mut named = Vec::new();
    for (id, pod) in &holders.assigned {
        match gpu_of(snap, id) {
            Some(g) => {
                if g.health.healthy {
                    held_healthy.insert(g.uuid.clone());
                }
                named.push(format!("{} by {pod}", g.label()));
            }
            // Cannot tell which GPU it is: assume it takes a healthy one.
            None => {
                unknown.insert(id.split("::").next().unwrap_or(id));
                named.push(format!("unknown device {id} by {pod}"));
            }
        }
    }
    let taken = (held_healthy.len() + unknown.len()) as u32;
    let free = healthy
        .saturating_sub(taken)
        .saturating_sub(holders.pending);
    let mut note = String::new();
    if !named.is_empty() {
        note.push_str(&format!("; assigned: {}", named.join(", ")));
    }
    if holders.pending > 0 {
        note.push_str(&format!(
            "; {} GPU(s) of pods bound but not yet admitted by the kubelet",
            holders.pending
        ));
    }
    (free, note)
}

/// The whole GPUs a pod asks for: the sum of its containers' `nvidia.com/gpu` limits
/// (requests must equal limits for extended resources).
pub fn pod_gpu_limit(pod: &Pod) -> Result<u32, String> {
    let mut total: u32 = 0;
    let containers = pod.spec.as_ref().map(|s| &s.containers[..]).unwrap_or(&[]);
    for c in containers {
        let q = c
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get(GPU_RESOURCE));
        if let Some(q) = q {
            let n: u32 = q.0.trim().parse().map_err(|_| {
                format!(
                    "container {} has an invalid {GPU_RESOURCE} limit \"{}\"",
                    c.name, q.0
                )
            })?;
            total = total.saturating_add(n);
        }
    }
    Ok(total)
}

fn problem(mode: CheckMode) -> VerdictOutcome {
    if mode == CheckMode::Warn {
        VerdictOutcome::Warn
    } else {
        VerdictOutcome::Fail
    }
}

fn v(check: &str, outcome: VerdictOutcome, message: String) -> Verdict {
    verdict(PLUGIN, check, outcome, message)
}

/// Pure checks of the request against the pod (no GPU facts needed).
pub fn request_verdicts(req: &GpuRequest, pod: &Pod, mode: CheckMode) -> Vec<Verdict> {
    if mode == CheckMode::Off || *req == GpuRequest::None {
        return Vec::new();
    }
    let bad = problem(mode);
    let limit = pod_gpu_limit(pod);
    match req {
        GpuRequest::None => Vec::new(),
        GpuRequest::Whole { count } => match limit {
            Err(e) => vec![v("gpu-count", bad, e)],
            Ok(n) if n != *count => vec![v(
                "gpu-count",
                bad,
                format!(
                    "receivedGPU.count is {count} but the pod's {GPU_RESOURCE} limits add up to {n}"
                ),
            )],
            Ok(n) => vec![v(
                "gpu-count",
                VerdictOutcome::Pass,
                format!("receivedGPU.count {count} matches the pod's {GPU_RESOURCE} limits ({n})"),
            )],
        },
        GpuRequest::Fraction {
            portion,
            count,
            groups,
        } => {
            let distinct: BTreeSet<&String> = groups.iter().collect();
            if distinct.len() != groups.len() {
                return vec![v(
                    "gpu-groups",
                    bad,
                    format!("selectedGPUGroups {groups:?} names a group twice"),
                )];
            }
            if groups.len() as u32 != *count {
                return vec![v(
                    "gpu-groups",
                    bad,
                    format!(
                        "a Fraction request for {count} GPU(s) needs {count} selectedGPUGroups, got {}",
                        groups.len()
                    ),
                )];
            }
            vec![v(
                "gpu-groups",
                VerdictOutcome::Pass,
                format!("portion {portion} of {count} GPU(s) in groups {groups:?}"),
            )]
        }
    }
}

/// Checks the request against a fresh snapshot and the node's holders.
pub fn inventory_verdicts(
    req: &GpuRequest,
    snap: &GpuSnapshot,
    holders: &Holders,
    mode: CheckMode,
) -> Vec<Verdict> {
    if mode == CheckMode::Off || *req == GpuRequest::None {
        return Vec::new();
    }
    let bad = problem(mode);
    if let InventoryState::Unavailable { error } = &snap.state {
        return vec![v(
            "inventory",
            bad,
            format!(
                "GPU inventory unavailable ({}): {error}; the pod asks for GPUs",
                snap.source
            ),
        )];
    }
    let healthy = snap.healthy().count() as u32;
    let unhealthy: Vec<String> = snap
        .gpus
        .iter()
        .filter(|g| !g.health.healthy)
        .map(|g| format!("{} ({})", g.label(), g.health.reason))
        .collect();
    let mut out = Vec::new();
    match req {
        GpuRequest::None => {}
        GpuRequest::Whole { count } => {
            let (free, note) = free_whole(snap, holders, healthy);
            let mut msg = format!(
                "needs {count} whole GPU(s): {} GPU(s), {healthy} healthy, {} held by {} pod(s) on this node (source: {}), {free} free",
                snap.gpus.len(),
                holders.whole.saturating_add(holders.pending),
                holders.pods,
                holders.source.describe()
            );
            msg.push_str(&note);
            if let Some(f) = &holders.fallback {
                msg.push_str(&format!("; {f}"));
            }
            if !unhealthy.is_empty() {
                msg.push_str(&format!("; unhealthy: {}", unhealthy.join(", ")));
            }
            let outcome = if free >= *count {
                VerdictOutcome::Pass
            } else {
                bad
            };
            out.push(v("whole-gpus", outcome, msg));
        }
        // Checked by `gpu_sharing` once the group's GPU is known.
        GpuRequest::Fraction { .. } => {}
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::gpu::{Gpu, GpuMemory, Health};
    use serde_json::json;

    const GIB: u64 = 1024 * 1024 * 1024;

    /// An 80 GiB GPU with 512 MiB driver-reserved (shared with the sharing tests).
    pub(crate) fn gpu(i: u32, healthy: bool, used_gib: u64) -> Gpu {
        Gpu {
            index: i,
            uuid: format!("GPU-{i}"),
            memory: Some(GpuMemory {
                total: 80 * GIB,
                used: used_gib * GIB,
                reserved: GIB / 2,
            }),
            health: Health {
                healthy,
                reason: if healthy { "" } else { "XID 79" }.into(),
                since: None,
            },
            ..Default::default()
        }
    }

    pub(crate) fn snap(gpus: Vec<Gpu>) -> GpuSnapshot {
        GpuSnapshot {
            source: "test".into(),
            state: InventoryState::Available,
            taken_at: String::new(),
            gpus,
        }
    }

    fn holders(whole: u32) -> Holders {
        Holders {
            source: HolderSource::NodePods,
            whole,
            pods: whole,
            assigned: BTreeMap::new(),
            pending: 0,
            fallback: None,
        }
    }

    fn pod(limits: &[&str]) -> Pod {
        let containers: Vec<_> = limits
            .iter()
            .enumerate()
            .map(|(i, l)| json!({ "name": format!("c{i}"), "resources": { "limits": { GPU_RESOURCE: l } } }))
            .collect();
        serde_json::from_value(
            json!({ "metadata": { "name": "p" }, "spec": { "containers": containers } }),
        )
        .expect("pod")
    }

    fn outcomes(v: &[Verdict]) -> Vec<(String, VerdictOutcome)> {
        v.iter().map(|v| (v.check.clone(), v.outcome)).collect()
    }

    use VerdictOutcome::*;

    #[test]
    fn whole_gpu_table() {
        let eight = || (0..8).map(|i| gpu(i, i != 3, 0)).collect::<Vec<_>>();
        // (count, held, expected outcome)
        let cases = [
            (1, 0, Pass),
            (7, 0, Pass),
            (8, 0, Fail),
            (4, 3, Pass),
            (5, 3, Fail),
            (1, 7, Fail),
            (1, 9, Fail),
        ];
        for (count, held, want) in cases {
            let v = inventory_verdicts(
                &GpuRequest::Whole { count },
                &snap(eight()),
                &holders(held),
                CheckMode::Enforce,
            );
            assert_eq!(
                outcomes(&v),
                [("whole-gpus".to_string(), want)],
                "count {count} held {held}: {v:?}"
            );
            assert!(v[0].message.contains("7 healthy"), "{}", v[0].message);
            assert!(
                v[0].message.contains("GPU-3"),
                "unhealthy GPU named: {}",
                v[0].message
            );
        }
        let v = inventory_verdicts(
            &GpuRequest::Whole { count: 8 },
            &snap(eight()),
            &holders(0),
            CheckMode::Warn,
        );
        assert_eq!(v[0].outcome, Warn);
        assert!(
            inventory_verdicts(
                &GpuRequest::Whole { count: 8 },
                &snap(eight()),
                &holders(0),
                CheckMode::Off
            )
            .is_empty()
        );
    }

    #[test]
    fn unavailable_inventory_refuses_gpu_requests_only() {
        let s = GpuSnapshot::unavailable("nvml libnvidia-ml.so.1", "DriverNotLoaded");
        let v = inventory_verdicts(
            &GpuRequest::Whole { count: 1 },
            &s,
            &holders(0),
            CheckMode::Enforce,
        );
        assert_eq!(v[0].outcome, Fail);
        assert!(v[0].message.contains("unavailable") && v[0].message.contains("DriverNotLoaded"));
        assert!(
            inventory_verdicts(&GpuRequest::None, &s, &holders(0), CheckMode::Enforce).is_empty()
        );
    }

    #[test]
    fn request_against_pod_table() {
        let whole = |count| GpuRequest::Whole { count };
        let cases: Vec<(GpuRequest, Pod, VerdictOutcome, &str)> = vec![
            (whole(2), pod(&["1", "1"]), Pass, "matches"),
            (whole(2), pod(&["2"]), Pass, "matches"),
            (whole(1), pod(&["2"]), Fail, "count is 1 but"),
            (whole(1), pod(&[]), Fail, "add up to 0"),
            (
                whole(1),
                pod(&["one"]),
                Fail,
                "invalid nvidia.com/gpu limit",
            ),
        ];
        for (req, p, want, text) in cases {
            let v = request_verdicts(&req, &p, CheckMode::Enforce);
            assert_eq!(v[0].outcome, want, "{req:?}: {}", v[0].message);
            assert!(v[0].message.contains(text), "{}", v[0].message);
        }
        let frac = |count, groups: &[&str]| GpuRequest::Fraction {
            portion: 0.5,
            count,
            groups: groups.iter().map(|g| g.to_string()).collect(),
        };
        assert_eq!(
            request_verdicts(&frac(1, &["a"]), &pod(&[]), CheckMode::Enforce)[0].outcome,
            Pass
        );
        assert_eq!(
            request_verdicts(&frac(2, &["a", "a"]), &pod(&[]), CheckMode::Enforce)[0].outcome,
            Fail
        );
        assert_eq!(
            request_verdicts(&frac(2, &["a"]), &pod(&[]), CheckMode::Warn)[0].outcome,
            Warn
        );
        assert!(request_verdicts(&GpuRequest::None, &pod(&["1"]), CheckMode::Enforce).is_empty());
        assert!(request_verdicts(&whole(1), &pod(&[]), CheckMode::Off).is_empty());
    }

    #[test]
    fn holders_count_running_pods_and_reservations() {
        // A fractional group's reservation pod holds its whole GPU like any other pod.
        let mk = |name: &str, limit: &str, phase: &str, group: Option<(&str, &str)>| -> Pod {
            let mut p = pod(&[limit]);
            p.metadata.name = Some(name.into());
            p.status = Some(k8s_openapi::api::core::v1::PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            });
            if let Some((g, u)) = group {
                p.metadata.labels = Some([(GPU_GROUP_LABEL.to_string(), g.to_string())].into());
                p.metadata.annotations =
                    Some([(RESERVED_GPU_ANNOTATION.to_string(), u.to_string())].into());
            }
            p
        };
        let pods = [
            mk("a", "2", "Running", None),
            mk("b", "1", "Pending", None),
            mk("done", "4", "Succeeded", None),
            mk("failed", "4", "Failed", None),
            mk("res", "1", "Running", Some(("g1", "GPU-5"))),
        ];
        let h = holders_from_pods(&pods);
        assert_eq!((h.whole, h.pods), (4, 3));
    }

    fn pr(namespace: &str, name: &str, ids: &[&str]) -> PodResources {
        use crate::api::podresources::{ContainerDevices, ContainerResources};
        PodResources {
            name: name.into(),
            namespace: namespace.into(),
            containers: vec![ContainerResources {
                name: "c".into(),
                devices: vec![
                    ContainerDevices {
                        resource_name: GPU_RESOURCE.into(),
                        device_ids: ids.iter().map(|s| s.to_string()).collect(),
                        ..Default::default()
                    },
                    ContainerDevices {
                        resource_name: "example.com/nic".into(),
                        device_ids: vec!["GPU-7".into()],
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
        }
    }

    fn bound(namespace: &str, name: &str, limit: &str, phase: &str) -> Pod {
        let mut p = pod(&[limit]);
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some(namespace.into());
        p.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some(phase.into()),
            ..Default::default()
        });
        p
    }

    #[test]
    fn holders_from_pod_resources_table() {
        let answer = [
            pr("ml", "a", &["GPU-0", "GPU-3"]),
            pr("ml", "idx", &["1"]),
            pr("ml", "gone", &["GPU-2"]),
            pr("ml", "ts", &["GPU-4::0", "GPU-4::1"]),
            pr("ml", "odd", &["MYSTERY"]),
            pr("kube-system", "dns", &[]),
        ];
        let pods = [
            bound("ml", "a", "2", "Running"),
            bound("ml", "gone", "1", "Succeeded"),
            bound("ml", "new", "1", "Pending"),
            bound("ml", "done", "3", "Failed"),
        ];
        let h = holders_from_pod_resources(&answer, &pods);
        assert_eq!(h.source, HolderSource::PodResources);
        assert_eq!(
            h.source.describe(),
            "kubelet pod-resources device assignments"
        );
        // GPU-2 of the finished pod is not held; "new" is bound but not admitted yet.
        assert_eq!(
            h.assigned.keys().map(String::as_str).collect::<Vec<_>>(),
            ["1", "GPU-0", "GPU-3", "GPU-4::0", "GPU-4::1", "MYSTERY"]
        );
        assert_eq!(h.assigned["GPU-3"], "ml/a");
        assert_eq!((h.pending, h.pods), (1, 5));

        // 8 GPUs, GPU-3 unhealthy: healthy 7; held healthy: 0, 1, 4 (two replicas of
        // one GPU), the unknown device counts as one, pending 1: 7 - 3 - 1 - 1 = 2 free.
        let s = snap((0..8).map(|i| gpu(i, i != 3, 0)).collect());
        for (count, want) in [(2, Pass), (3, Fail)] {
            let v = inventory_verdicts(&GpuRequest::Whole { count }, &s, &h, CheckMode::Enforce);
            assert_eq!(v[0].outcome, want, "{}", v[0].message);
            let m = &v[0].message;
            assert!(m.contains("2 free"), "{m}");
            assert!(
                m.contains("(source: kubelet pod-resources device assignments)"),
                "{m}"
            );
            assert!(m.contains("GPU 3 (GPU-3) by ml/a"), "{m}");
            assert!(m.contains("unknown device MYSTERY by ml/odd"), "{m}");
            assert!(m.contains("not yet admitted"), "{m}");
        }
    }

    #[test]
    fn unhealthy_assigned_gpu_is_not_subtracted_twice() {
        // With counts only, a pod holding the unhealthy GPU makes 6 free; with device
        // assignments, 7 healthy GPUs are all free.
        let s = snap((0..8).map(|i| gpu(i, i != 3, 0)).collect());
        let h = holders_from_pod_resources(
            &[pr("ml", "a", &["GPU-3"])],
            &[bound("ml", "a", "1", "Running")],
        );
        let v = inventory_verdicts(&GpuRequest::Whole { count: 7 }, &s, &h, CheckMode::Enforce);
        assert_eq!(v[0].outcome, Pass, "{}", v[0].message);
        let counted = holders_from_pods(&[bound("ml", "a", "1", "Running")]);
        let v = inventory_verdicts(
            &GpuRequest::Whole { count: 7 },
            &s,
            &counted,
            CheckMode::Enforce,
        );
        assert_eq!(v[0].outcome, Fail, "{}", v[0].message);
    }

    #[test]
    fn fallback_is_said() {
        let mut h = holders(1);
        h.fallback = Some("the kubelet pod-resources socket did not answer".into());
        let s = snap((0..2).map(|i| gpu(i, true, 0)).collect());
        let v = inventory_verdicts(&GpuRequest::Whole { count: 1 }, &s, &h, CheckMode::Enforce);
        assert!(
            v[0].message.contains("(source: limits of the pods"),
            "{}",
            v[0].message
        );
        assert!(v[0].message.contains("did not answer"), "{}", v[0].message);
    }
}
