//! `node`: the node accepts the pod — not cordoned, and every NoSchedule/NoExecute taint
//! tolerated (the same rules as kube-scheduler's TaintToleration and NodeUnschedulable).

use k8s_openapi::api::core::v1::{Node, Taint, Toleration};

use crate::api::{Verdict, VerdictOutcome};
use crate::binding::{BindContext, Plugin, verdict};

use super::CheckMode;

const NAME: &str = "node";

pub struct NodePlugin {
    mode: CheckMode,
}

impl NodePlugin {
    pub fn new(mode: CheckMode) -> Self {
        NodePlugin { mode }
    }
}

#[async_trait::async_trait]
impl Plugin for NodePlugin {
    fn name(&self) -> &'static str {
        NAME
    }

    fn validate(&self, ctx: &BindContext<'_>) -> Vec<Verdict> {
        let tolerations = ctx
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or(&[]);
        node_verdicts(ctx.node, tolerations, self.mode)
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
