//! The node's own checks, as pure functions: cordon and taints against the pod's
//! tolerations, the memory check, and the pod's resource requests as kube-scheduler counts
//! them. The `node` plugin applies them at bind time; `bindlet check` shows them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Node, Pod, ResourceRequirements, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::api::quantity::{self, Nanos, QuantityError};
use crate::api::{Verdict, VerdictOutcome};
use crate::binding::{CheckMode, verdict};
use crate::volume::quantity::format_bytes;

const NAME: &str = "node";

/// Requests of a container: `requests`, with `limits` standing in for resources that have no
/// request (the API server's defaulting does the same).
fn container_requests(r: Option<&ResourceRequirements>) -> Result<Resources, QuantityError> {
    let mut out = Resources::new();
    let Some(r) = r else { return Ok(out) };
    if let Some(limits) = &r.limits {
        add_all(&mut out, limits)?;
    }
    if let Some(requests) = &r.requests {
        for (k, q) in requests {
            out.insert(k.clone(), quantity::parse(&q.0)?);
        }
    }
    Ok(out)
}

fn add_all(out: &mut Resources, m: &BTreeMap<String, Quantity>) -> Result<(), QuantityError> {
    for (k, q) in m {
        *out.entry(k.clone()).or_default() += quantity::parse(&q.0)?;
    }
    Ok(())
}

pub fn sum_into(out: &mut Resources, add: &Resources) {
    for (k, v) in add {
        *out.entry(k.clone()).or_default() += v;
    }
}

fn max_into(out: &mut Resources, other: &Resources) {
    for (k, v) in other {
        let e = out.entry(k.clone()).or_default();
        *e = (*e).max(*v);
    }
}

/// Resource name → amount.
pub type Resources = BTreeMap<String, Nanos>;

fn restartable(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// What kube-scheduler counts for a pod: max(app containers + sidecars, each init container
/// plus the sidecars started before it) + overhead; pod-level requests (cpu, memory,
/// hugepages) replace the container sum where set.
pub fn pod_requests(pod: &Pod) -> Result<Resources, QuantityError> {
    let mut reqs = Resources::new();
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(reqs);
    };
    for c in &spec.containers {
        sum_into(&mut reqs, &container_requests(c.resources.as_ref())?);
    }
    let mut sidecars = Resources::new();
    let mut init_max = Resources::new();
    for c in spec.init_containers.as_deref().unwrap_or(&[]) {
        let r = container_requests(c.resources.as_ref())?;
        let effective = if restartable(c) {
            // A sidecar keeps running beside the app containers.
            sum_into(&mut reqs, &r);
            sum_into(&mut sidecars, &r);
            sidecars.clone()
        } else {
            let mut t = r;
            sum_into(&mut t, &sidecars);
            t
        };
        max_into(&mut init_max, &effective);
    }
    max_into(&mut reqs, &init_max);
    if let Some(pod_level) = spec.resources.as_ref() {
        let level = container_requests(Some(pod_level))?;
        for (k, v) in level {
            if k == "cpu" || k == "memory" || k.starts_with("hugepages-") {
                reqs.insert(k, v);
            }
        }
    }
    if let Some(overhead) = &spec.overhead {
        add_all(&mut reqs, overhead)?;
    }
    reqs.retain(|_, v| *v != 0);
    Ok(reqs)
}

/// The pod's memory request in bytes as the scheduler counts it (containers, init
/// containers, sidecars, pod-level resources, overhead); an error names a bad quantity.
pub fn pod_memory_request(pod: &Pod) -> Result<u64, String> {
    let reqs = pod_requests(pod).map_err(|e| e.to_string())?;
    let nanos = reqs.get("memory").copied().unwrap_or(0).max(0);
    // Nano-bytes to bytes, a partial byte counting as one.
    Ok(u64::try_from((nanos + 999_999_999) / 1_000_000_000).unwrap_or(u64::MAX))
}

/// The memory check: `Fail` (enforce) or `Warn` (warn) when the node's available memory is
/// below the pod's requests plus `reserve`; no verdict when off. A figure that cannot be
/// read only warns: an unreadable counter is no reason to refuse a pod.
pub fn memory_verdict(
    requested: Result<u64, String>,
    available: Option<u64>,
    reserve: u64,
    mode: CheckMode,
) -> Option<Verdict> {
    let problem = match mode {
        CheckMode::Off => return None,
        CheckMode::Warn => VerdictOutcome::Warn,
        CheckMode::Enforce => VerdictOutcome::Fail,
    };
    let v = |outcome, message| Some(verdict(NAME, "memory", outcome, message));
    let requested = match requested {
        Ok(r) => r,
        Err(e) => {
            return v(
                VerdictOutcome::Warn,
                format!("memory check skipped: cannot read the pod's memory requests: {e}"),
            );
        }
    };
    let Some(available) = available else {
        return v(
            VerdictOutcome::Warn,
            "memory check skipped: the node's available memory cannot be read".into(),
        );
    };
    let needed = requested.saturating_add(reserve);
    let figures = format!(
        "available {}, pod requests {}, reserve {}",
        format_bytes(available),
        format_bytes(requested),
        format_bytes(reserve)
    );
    if available < needed {
        v(
            problem,
            format!(
                "node memory too low: {figures} (short by {})",
                format_bytes(needed - available)
            ),
        )
    } else {
        v(
            VerdictOutcome::Pass,
            format!("node memory suffices: {figures}"),
        )
    }
}

/// The node checks as verdicts; a problem is `Fail` under `Enforce`, `Warn` under `Warn`.
pub fn node_verdicts(node: &Node, tolerations: &[Toleration], mode: CheckMode) -> Vec<Verdict> {
    let name = node.metadata.name.as_deref().unwrap_or("");
    if mode == CheckMode::Off {
        return vec![verdict(
            NAME,
            "node",
            VerdictOutcome::Skip,
            "node checks are off".into(),
        )];
    }
    let problem = if mode == CheckMode::Warn {
        VerdictOutcome::Warn
    } else {
        VerdictOutcome::Fail
    };
    let spec = node.spec.as_ref();
    let mut out = Vec::new();
    if spec.and_then(|s| s.unschedulable).unwrap_or(false) {
        out.push(verdict(
            NAME,
            "cordon",
            problem,
            format!("node {name} is cordoned (spec.unschedulable=true)"),
        ));
    } else {
        out.push(verdict(
            NAME,
            "cordon",
            VerdictOutcome::Pass,
            format!("node {name} is schedulable"),
        ));
    }
    let taints: Vec<&Taint> = spec
        .and_then(|s| s.taints.as_deref())
        .unwrap_or(&[])
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .collect();
    let untolerated: Vec<String> = taints
        .iter()
        .filter(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
        .map(|t| describe(t))
        .collect();
    if untolerated.is_empty() {
        out.push(verdict(
            NAME,
            "taints",
            VerdictOutcome::Pass,
            format!(
                "pod tolerates all {} NoSchedule/NoExecute taints",
                taints.len()
            ),
        ));
    } else {
        out.push(verdict(
            NAME,
            "taints",
            problem,
            format!(
                "pod does not tolerate taint(s) of node {name}: {}",
                untolerated.join(", ")
            ),
        ));
    }
    out
}

/// Kubernetes toleration matching (`Toleration.ToleratesTaint` in the core API).
pub fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
    let effect = tol.effect.as_deref().unwrap_or("");
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = tol.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match tol.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => {
            // An empty key is only valid with Exists.
            !key.is_empty()
                && tol.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

fn describe(t: &Taint) -> String {
    match t.value.as_deref() {
        Some(v) if !v.is_empty() => format!("{}={}:{}", t.key, v, t.effect),
        _ => format!("{}:{}", t.key, t.effect),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn taint(key: &str, value: Option<&str>, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: value.map(Into::into),
            effect: effect.into(),
            ..Default::default()
        }
    }

    fn tol(
        key: Option<&str>,
        op: Option<&str>,
        value: Option<&str>,
        effect: Option<&str>,
    ) -> Toleration {
        Toleration {
            key: key.map(Into::into),
            operator: op.map(Into::into),
            value: value.map(Into::into),
            effect: effect.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn toleration_table() {
        let gpu = taint("nvidia.com/gpu", Some("present"), "NoSchedule");
        let cases = [
            (
                tol(Some("nvidia.com/gpu"), Some("Exists"), None, None),
                true,
            ),
            (
                tol(Some("nvidia.com/gpu"), None, Some("present"), None),
                true,
            ),
            (
                tol(
                    Some("nvidia.com/gpu"),
                    Some("Equal"),
                    Some("present"),
                    Some("NoSchedule"),
                ),
                true,
            ),
            (
                tol(Some("nvidia.com/gpu"), Some("Equal"), Some("absent"), None),
                false,
            ),
            (
                tol(
                    Some("nvidia.com/gpu"),
                    Some("Exists"),
                    None,
                    Some("NoExecute"),
                ),
                false,
            ),
            (tol(Some("other"), Some("Exists"), None, None), false),
            (tol(None, Some("Exists"), None, None), true),
            (tol(None, Some("Equal"), None, None), false),
            (
                tol(Some("nvidia.com/gpu"), Some("Gt"), Some("1"), None),
                false,
            ),
        ];
        for (i, (t, want)) in cases.iter().enumerate() {
            assert_eq!(tolerates(t, &gpu), *want, "case {i}: {t:?}");
        }
        assert!(tolerates(
            &tol(Some("k"), None, None, None),
            &taint("k", None, "NoSchedule")
        ));
    }

    fn node(unschedulable: bool, taints: Vec<Taint>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                unschedulable: Some(unschedulable),
                taints: Some(taints),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn outcomes(v: &[Verdict]) -> Vec<(&str, VerdictOutcome)> {
        v.iter().map(|v| (v.check.as_str(), v.outcome)).collect()
    }

    #[test]
    fn memory_verdict_table() {
        use VerdictOutcome::*;
        const GI: u64 = 1 << 30;
        let ok = |n: u64| -> Result<u64, String> { Ok(n) };
        // (requested, available, reserve, mode, expected outcome, words in the message)
        type Case = (
            Result<u64, String>,
            Option<u64>,
            u64,
            CheckMode,
            Option<VerdictOutcome>,
            &'static [&'static str],
        );
        let cases: Vec<Case> = vec![
            (
                ok(4 * GI),
                Some(16 * GI),
                GI,
                CheckMode::Enforce,
                Some(Pass),
                &["available 16 GiB", "pod requests 4 GiB", "reserve 1 GiB"],
            ),
            // Exactly enough is enough.
            (
                ok(15 * GI),
                Some(16 * GI),
                GI,
                CheckMode::Enforce,
                Some(Pass),
                &[],
            ),
            (
                ok(15 * GI + 1),
                Some(16 * GI),
                GI,
                CheckMode::Enforce,
                Some(Fail),
                &[
                    "too low",
                    "available 16 GiB",
                    "reserve 1 GiB",
                    "short by 1 B",
                ],
            ),
            (
                ok(15 * GI + 1),
                Some(16 * GI),
                GI,
                CheckMode::Warn,
                Some(Warn),
                &["too low"],
            ),
            (
                ok(1000 << 40),
                Some(16 * GI),
                GI,
                CheckMode::Enforce,
                Some(Fail),
                &["pod requests 1000 TiB"],
            ),
            // No request: the reserve alone must be free.
            (
                ok(0),
                Some(GI / 2),
                GI,
                CheckMode::Enforce,
                Some(Fail),
                &["pod requests 0 B", "available 512 MiB"],
            ),
            (ok(0), Some(2 * GI), 0, CheckMode::Enforce, Some(Pass), &[]),
            // Saturating: an absurd request plus reserve does not wrap around.
            (
                ok(u64::MAX),
                Some(16 * GI),
                GI,
                CheckMode::Enforce,
                Some(Fail),
                &[],
            ),
            // Unreadable figures warn, even under enforce.
            (
                ok(GI),
                None,
                GI,
                CheckMode::Enforce,
                Some(Warn),
                &["cannot be read"],
            ),
            (
                Err("invalid quantity \"lots\"".into()),
                Some(16 * GI),
                GI,
                CheckMode::Enforce,
                Some(Warn),
                &["lots"],
            ),
            // Off: no verdict at all.
            (ok(1000 << 40), Some(GI), GI, CheckMode::Off, None, &[]),
        ];
        for (i, (req, avail, reserve, mode, want, words)) in cases.into_iter().enumerate() {
            let v = memory_verdict(req, avail, reserve, mode);
            assert_eq!(v.as_ref().map(|v| v.outcome), want, "case {i}: {v:?}");
            if let Some(v) = &v {
                assert_eq!((v.plugin.as_str(), v.check.as_str()), ("node", "memory"));
                for w in words {
                    assert!(
                        v.message.contains(w),
                        "case {i}: {w:?} not in {:?}",
                        v.message
                    );
                }
            }
        }
    }

    #[test]
    fn pod_memory_request_counts_like_the_scheduler() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "spec": {
                "containers": [
                    { "name": "a", "resources": { "requests": { "memory": "1Gi" } } },
                    { "name": "b", "resources": { "limits": { "memory": "512Mi" } } },
                    { "name": "c" }
                ],
                "initContainers": [
                    { "name": "i", "resources": { "requests": { "memory": "4Gi" } } }
                ],
                "overhead": { "memory": "1Mi" }
            }
        }))
        .expect("pod");
        // max(1Gi + 512Mi, 4Gi) + 1Mi
        assert_eq!(pod_memory_request(&pod), Ok((4 << 30) + (1 << 20)));
        assert_eq!(pod_memory_request(&Pod::default()), Ok(0));
        let bad: Pod = serde_json::from_value(serde_json::json!({
            "spec": { "containers": [ { "name": "a", "resources": { "requests": { "memory": "lots" } } } ] }
        }))
        .expect("pod");
        assert!(pod_memory_request(&bad).is_err());
    }

    #[test]
    fn node_verdict_table() {
        use VerdictOutcome::*;
        let gpu = taint("nvidia.com/gpu", None, "NoSchedule");
        let soft = taint("soft", None, "PreferNoSchedule");
        let gpu_tol = tol(Some("nvidia.com/gpu"), Some("Exists"), None, None);

        let v = node_verdicts(&node(false, vec![]), &[], CheckMode::Enforce);
        assert_eq!(outcomes(&v), [("cordon", Pass), ("taints", Pass)]);

        let v = node_verdicts(&node(true, vec![]), &[], CheckMode::Enforce);
        assert_eq!(outcomes(&v), [("cordon", Fail), ("taints", Pass)]);
        assert!(v[0].message.contains("cordoned"));

        let v = node_verdicts(
            &node(false, vec![gpu.clone(), soft.clone()]),
            &[],
            CheckMode::Enforce,
        );
        assert_eq!(outcomes(&v), [("cordon", Pass), ("taints", Fail)]);
        assert!(
            v[1].message.contains("nvidia.com/gpu:NoSchedule"),
            "{}",
            v[1].message
        );
        assert!(
            !v[1].message.contains("soft"),
            "PreferNoSchedule is not enforced"
        );

        let v = node_verdicts(
            &node(false, vec![gpu.clone()]),
            std::slice::from_ref(&gpu_tol),
            CheckMode::Enforce,
        );
        assert_eq!(outcomes(&v), [("cordon", Pass), ("taints", Pass)]);

        let v = node_verdicts(&node(true, vec![gpu.clone()]), &[], CheckMode::Warn);
        assert_eq!(outcomes(&v), [("cordon", Warn), ("taints", Warn)]);

        let v = node_verdicts(&node(true, vec![gpu]), &[], CheckMode::Off);
        assert_eq!(outcomes(&v), [("node", Skip)]);
    }
}
