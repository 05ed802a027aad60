//! The checks `bindlet bind` runs before anything is written, as a pure function over a
//! snapshot (node, pod, pods on the node). Node cordon and taints reuse the agent's
//! `node_verdicts`; the rest follow kube-scheduler's filters (NodeName, NodeAffinity,
//! NodeResourcesFit) so a manual placement is refused where the scheduler would refuse it.

use k8s_openapi::api::core::v1::{Node, NodeSelectorTerm, Pod};

use crate::api::selector::{describe_requirement, node_label, term_matches};
use crate::api::{Verdict, VerdictOutcome};
use crate::binding::CheckMode;
use crate::binding::verdict;
use crate::node::{Resources, node_verdicts, pod_requests, sum_into};

use super::quantity::{self, Nanos, QuantityError};

/// Everything the checks look at, read once.
pub struct Snapshot<'a> {
    pub node_name: &'a str,
    /// `None`: the node does not exist.
    pub node: Option<&'a Node>,
    pub pod: &'a Pod,
    /// Pods whose `spec.nodeName` is the node (any phase; terminated ones are skipped here).
    pub pods_on_node: &'a [Pod],
}

/// The verdicts, in the order they are printed.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckReport {
    pub verdicts: Vec<Verdict>,
    /// The pod is already bound to this node: nothing to do.
    pub already_bound_here: bool,
}

impl CheckReport {
    pub fn failed(&self) -> Vec<&Verdict> {
        self.verdicts
            .iter()
            .filter(|v| v.outcome == VerdictOutcome::Fail)
            .collect()
    }

    pub fn refused(&self) -> bool {
        !self.failed().is_empty()
    }
}

use VerdictOutcome::{Fail, Pass, Skip};

/// Runs every check. A missing node fails the first check and skips those that need it.
pub fn check(s: &Snapshot<'_>) -> CheckReport {
    let mut v = Vec::new();
    let already_bound_here = pod_verdict(s, &mut v);
    let Some(node) = s.node else {
        v.push(verdict(
            "node",
            "exists",
            Fail,
            format!(
                "node \"{}\" does not exist (the API server would accept a Binding to it anyway)",
                s.node_name
            ),
        ));
        for (plugin, check) in [
            ("node", "ready"),
            ("node", "cordon"),
            ("node", "taints"),
            ("scheduling", "nodeSelector"),
            ("scheduling", "nodeAffinity"),
            ("resources", "fit"),
        ] {
            v.push(verdict(plugin, check, Skip, "no node to check".into()));
        }
        return CheckReport {
            verdicts: v,
            already_bound_here,
        };
    };
    v.push(verdict(
        "node",
        "exists",
        Pass,
        format!("node {} exists", s.node_name),
    ));
    v.push(ready_verdict(node));
    let spec = s.pod.spec.as_ref();
    let tolerations = spec.and_then(|s| s.tolerations.as_deref()).unwrap_or(&[]);
    v.extend(node_verdicts(node, tolerations, CheckMode::Enforce));
    v.push(node_selector_verdict(s.pod, node));
    v.push(affinity_verdict(s.pod, node));
    v.extend(resource_verdicts(s));
    CheckReport {
        verdicts: v,
        already_bound_here,
    }
}

/// The pod itself: not bound elsewhere, not terminating, not finished. Returns whether it is
/// already bound to the node.
fn pod_verdict(s: &Snapshot<'_>, out: &mut Vec<Verdict>) -> bool {
    let pod = s.pod;
    let bound_to = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("");
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("");
    let (outcome, msg) = if bound_to == s.node_name {
        (Pass, format!("pod is already bound to node {bound_to}"))
    } else if !bound_to.is_empty() {
        (
            Fail,
            format!("pod is already bound to another node \"{bound_to}\""),
        )
    } else if pod.metadata.deletion_timestamp.is_some() {
        (Fail, "pod is being deleted".to_string())
    } else if phase == "Succeeded" || phase == "Failed" {
        (Fail, format!("pod has finished (phase {phase})"))
    } else {
        (
            Pass,
            format!(
                "pod is not bound yet (phase {})",
                if phase.is_empty() { "unset" } else { phase }
            ),
        )
    };
    out.push(verdict("pod", "unbound", outcome, msg));
    bound_to == s.node_name
}

fn ready_verdict(node: &Node) -> Verdict {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or(&[])
        .iter()
        .find(|c| c.type_ == "Ready");
    match ready {
        Some(c) if c.status == "True" => verdict("node", "ready", Pass, "Ready=True".into()),
        Some(c) => {
            let why = [c.reason.as_deref(), c.message.as_deref()]
                .into_iter()
                .flatten()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(": ");
            let why = if why.is_empty() {
                String::new()
            } else {
                format!(" ({why})")
            };
            verdict(
                "node",
                "ready",
                Fail,
                format!("node is not ready: Ready={}{why}", c.status),
            )
        }
        None => verdict(
            "node",
            "ready",
            Fail,
            "node reports no Ready condition".into(),
        ),
    }
}

fn node_selector_verdict(pod: &Pod, node: &Node) -> Verdict {
    let selector = pod.spec.as_ref().and_then(|s| s.node_selector.as_ref());
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return verdict(
            "scheduling",
            "nodeSelector",
            Pass,
            "pod has no nodeSelector".into(),
        );
    };
    let mut wrong = Vec::new();
    for (k, want) in selector {
        match node_label(node, k) {
            Some(got) if got == want => {}
            Some(got) => wrong.push(format!("{k}: node has \"{got}\", pod wants \"{want}\"")),
            None => wrong.push(format!("{k}: node has no such label, pod wants \"{want}\"")),
        }
    }
    let all: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if wrong.is_empty() {
        verdict(
            "scheduling",
            "nodeSelector",
            Pass,
            format!("node labels match nodeSelector {}", all.join(", ")),
        )
    } else {
        verdict(
            "scheduling",
            "nodeSelector",
            Fail,
            format!("node does not match nodeSelector: {}", wrong.join("; ")),
        )
    }
}

fn affinity_verdict(pod: &Pod, node: &Node) -> Verdict {
    let required = pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    let Some(required) = required else {
        return verdict(
            "scheduling",
            "nodeAffinity",
            Pass,
            "pod has no required node affinity".into(),
        );
    };
    let terms = &required.node_selector_terms;
    let mut misses = Vec::new();
    for (i, term) in terms.iter().enumerate() {
        match term_matches(term, node) {
            Ok(()) => {
                return verdict(
                    "scheduling",
                    "nodeAffinity",
                    Pass,
                    format!(
                        "node matches required term {} of {}: {}",
                        i + 1,
                        terms.len(),
                        describe_term(term)
                    ),
                );
            }
            Err(why) => misses.push(format!("term {}: {why}", i + 1)),
        }
    }
    let detail = if misses.is_empty() {
        "the pod's required node affinity has no terms".to_string()
    } else {
        misses.join("; ")
    };
    verdict(
        "scheduling",
        "nodeAffinity",
        Fail,
        format!(
            "node matches none of the {} required node affinity terms ({detail})",
            terms.len()
        ),
    )
}

fn describe_term(term: &NodeSelectorTerm) -> String {
    term.match_expressions
        .iter()
        .chain(term.match_fields.iter())
        .flatten()
        .map(describe_requirement)
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn is_terminated(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn same_pod(a: &Pod, b: &Pod) -> bool {
    match (&a.metadata.uid, &b.metadata.uid) {
        (Some(x), Some(y)) => x == y,
        _ => a.metadata.name == b.metadata.name && a.metadata.namespace == b.metadata.namespace,
    }
}

fn resource_verdicts(s: &Snapshot<'_>) -> Vec<Verdict> {
    let want = match pod_requests(s.pod) {
        Ok(r) => r,
        Err(e) => {
            return vec![verdict(
                "resources",
                "fit",
                Fail,
                format!("cannot read the pod's requests: {e}"),
            )];
        }
    };
    let others: Vec<&Pod> = s
        .pods_on_node
        .iter()
        .filter(|p| !is_terminated(p) && !same_pod(p, s.pod))
        .collect();
    let mut used = Resources::new();
    let mut unreadable = 0usize;
    for p in &others {
        // A pod the server stored has valid quantities; one that does not is left out, noted.
        match pod_requests(p) {
            Ok(r) => sum_into(&mut used, &r),
            Err(_) => unreadable += 1,
        }
    }
    let allocatable = s
        .node
        .and_then(|n| n.status.as_ref())
        .and_then(|st| st.allocatable.as_ref());
    let alloc = |r: &str| -> Result<Nanos, QuantityError> {
        allocatable
            .and_then(|a| a.get(r))
            .map_or(Ok(0), |q| quantity::parse(&q.0))
    };
    let note = if unreadable > 0 {
        format!(" ({unreadable} pods with unreadable requests not counted)")
    } else {
        String::new()
    };
    let mut out = Vec::new();
    // The pod count, as kube-scheduler checks it.
    let count = others.len() as Nanos;
    match alloc("pods") {
        Ok(max) => {
            let max_pods = max / 1_000_000_000;
            let msg =
                format!("pods: {count} running or pending on the node, allocatable {max_pods}");
            let ok = count < max_pods;
            out.push(verdict(
                "resources",
                "pods",
                if ok { Pass } else { Fail },
                msg,
            ));
        }
        Err(e) => out.push(verdict(
            "resources",
            "pods",
            Fail,
            format!("node allocatable: {e}"),
        )),
    }
    if want.is_empty() {
        out.push(verdict(
            "resources",
            "requests",
            Pass,
            "pod requests no resources".into(),
        ));
    }
    for (r, need) in &want {
        let f = |v: Nanos| quantity::format(r, v);
        let (outcome, msg) = match alloc(r) {
            Err(e) => (Fail, format!("node allocatable: {e}")),
            Ok(a) => {
                let u = used.get(r).copied().unwrap_or(0);
                let free = a - u;
                let line = format!(
                    "{r}: requests {}, allocatable {}, used by {} pods {}, free {}{note}",
                    f(*need),
                    f(a),
                    others.len(),
                    f(u),
                    f(free)
                );
                if a == 0 && allocatable.is_none_or(|m| !m.contains_key(r)) {
                    (Fail, format!("{line}; the node does not offer {r}"))
                } else if *need <= free {
                    (Pass, line)
                } else {
                    (Fail, format!("{line}; insufficient {r}"))
                }
            }
        };
        out.push(verdict("resources", r, outcome, msg));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn pod(spec: Value) -> Pod {
        let mut base = json!({ "containers": [ { "name": "main", "image": "x" } ] });
        if let (Value::Object(b), Value::Object(s)) = (&mut base, spec) {
            b.extend(s);
        }
        serde_json::from_value(
            json!({ "metadata": { "name": "p", "namespace": "ns", "uid": "u1" }, "spec": base }),
        )
        .unwrap()
    }

    fn node(extra: Value) -> Node {
        let mut n = json!({
            "metadata": { "name": "n1", "labels": { "zone": "a", "gpus": "8" } },
            "spec": {},
            "status": {
                "allocatable": { "cpu": "4", "memory": "8Gi", "nvidia.com/gpu": "2", "pods": "10" },
                "conditions": [ { "type": "Ready", "status": "True" } ]
            }
        });
        merge(&mut n, extra);
        serde_json::from_value(n).unwrap()
    }

    fn merge(base: &mut Value, extra: Value) {
        match (base, extra) {
            (Value::Object(b), Value::Object(e)) => {
                for (k, v) in e {
                    merge(b.entry(k).or_insert(Value::Null), v);
                }
            }
            (b, e) => *b = e,
        }
    }

    fn run(p: &Pod, n: Option<&Node>, others: &[Pod]) -> CheckReport {
        check(&Snapshot {
            node_name: "n1",
            node: n,
            pod: p,
            pods_on_node: others,
        })
    }

    fn outcome(r: &CheckReport, check: &str) -> VerdictOutcome {
        r.verdicts
            .iter()
            .find(|v| v.check == check)
            .map(|v| v.outcome)
            .unwrap_or_else(|| panic!("no check {check}: {:?}", r.verdicts))
    }

    fn cpu_mem(cpu: &str, mem: &str) -> Value {
        json!({ "requests": { "cpu": cpu, "memory": mem } })
    }

    #[test]
    fn requests_follow_the_scheduler() {
        let p = pod(json!({
            "containers": [
                { "name": "a", "image": "x", "resources": cpu_mem("1", "1Gi") },
                { "name": "b", "image": "x", "resources": { "limits": { "cpu": "500m", "nvidia.com/gpu": "1" } } }
            ],
            "initContainers": [
                { "name": "i1", "image": "x", "resources": cpu_mem("2", "100Mi") },
                { "name": "side", "image": "x", "restartPolicy": "Always", "resources": cpu_mem("100m", "10Mi") },
                { "name": "i2", "image": "x", "resources": cpu_mem("250m", "3Gi") }
            ],
            "overhead": { "cpu": "50m", "memory": "1Mi" }
        }));
        let r = pod_requests(&p).unwrap();
        // app: 1.5 cpu + sidecar 0.1 = 1.6; init max: i1 2 cpu, i2 0.25 + 0.1 → 2; + overhead.
        assert_eq!(quantity::format("cpu", r["cpu"]), "2050m");
        // app 1Gi + 10Mi; init i2 3Gi + 10Mi wins; + 1Mi.
        assert_eq!(quantity::format("memory", r["memory"]), "3083Mi");
        assert_eq!(
            r["nvidia.com/gpu"], 1_000_000_000,
            "limits stand in for requests"
        );

        let p = pod(json!({
            "resources": { "requests": { "cpu": "3" } },
            "containers": [ { "name": "a", "image": "x", "resources": cpu_mem("1", "1Gi") } ]
        }));
        let r = pod_requests(&p).unwrap();
        assert_eq!(
            quantity::format("cpu", r["cpu"]),
            "3",
            "pod-level request wins"
        );
        assert_eq!(quantity::format("memory", r["memory"]), "1Gi");
    }

    #[test]
    fn fit_counts_other_pods_but_not_terminated_ones() {
        let want = pod(
            json!({ "containers": [ { "name": "a", "image": "x", "resources": cpu_mem("2", "1Gi") } ] }),
        );
        let mk = |name: &str, cpu: &str, phase: &str| -> Pod {
            serde_json::from_value(json!({
                "metadata": { "name": name, "namespace": "ns", "uid": name },
                "spec": { "nodeName": "n1", "containers": [ { "name": "a", "image": "x", "resources": cpu_mem(cpu, "1Gi") } ] },
                "status": { "phase": phase }
            }))
            .unwrap()
        };
        let n = node(json!({}));
        let r = run(
            &want,
            Some(&n),
            &[mk("a", "1", "Running"), mk("b", "3", "Succeeded")],
        );
        assert_eq!(outcome(&r, "cpu"), Pass, "{:?}", r.verdicts);
        let r = run(
            &want,
            Some(&n),
            &[mk("a", "1", "Running"), mk("b", "1500m", "Pending")],
        );
        assert_eq!(outcome(&r, "cpu"), Fail);
        let msg = &r
            .verdicts
            .iter()
            .find(|v| v.check == "cpu")
            .unwrap()
            .message;
        assert!(
            msg.contains("allocatable 4") && msg.contains("used by 2 pods 2500m"),
            "{msg}"
        );
        assert!(msg.contains("free 1500m"), "{msg}");
    }

    #[test]
    fn extended_resources_and_pod_count() {
        let gpu = |n: &str| {
            pod(
                json!({ "containers": [ { "name": "a", "image": "x", "resources": { "limits": { "nvidia.com/gpu": n } } } ] }),
            )
        };
        let n = node(json!({}));
        assert_eq!(
            outcome(&run(&gpu("2"), Some(&n), &[]), "nvidia.com/gpu"),
            Pass
        );
        assert_eq!(
            outcome(&run(&gpu("3"), Some(&n), &[]), "nvidia.com/gpu"),
            Fail
        );
        let other = |r: &str| {
            pod(
                json!({ "containers": [ { "name": "a", "image": "x", "resources": { "limits": { r: "1" } } } ] }),
            )
        };
        let r = run(&other("example.com/fpga"), Some(&n), &[]);
        assert_eq!(outcome(&r, "example.com/fpga"), Fail);
        let full = node(json!({ "status": { "allocatable": { "pods": "1" } } }));
        let running: Pod = serde_json::from_value(json!({
            "metadata": { "name": "o", "namespace": "ns", "uid": "o" },
            "spec": { "nodeName": "n1", "containers": [ { "name": "a", "image": "x" } ] },
            "status": { "phase": "Running" }
        }))
        .unwrap();
        assert_eq!(
            outcome(&run(&gpu("1"), Some(&full), &[running]), "pods"),
            Fail
        );
    }

    #[test]
    fn node_state_checks() {
        let p = pod(json!({}));
        let r = run(&p, None, &[]);
        assert_eq!(outcome(&r, "exists"), Fail);
        assert_eq!(outcome(&r, "ready"), Skip);
        assert!(r.refused());

        let r = run(&p, Some(&node(json!({}))), &[]);
        assert!(!r.refused(), "{:?}", r.verdicts);

        let not_ready = node(
            json!({ "status": { "conditions": [ { "type": "Ready", "status": "False", "reason": "KubeletNotReady" } ] } }),
        );
        let r = run(&p, Some(&not_ready), &[]);
        assert_eq!(outcome(&r, "ready"), Fail);
        assert!(
            r.verdicts[2].message.contains("KubeletNotReady"),
            "{:?}",
            r.verdicts
        );
        let no_cond = node(json!({ "status": { "conditions": [] } }));
        assert_eq!(outcome(&run(&p, Some(&no_cond), &[]), "ready"), Fail);

        let cordoned = node(json!({ "spec": { "unschedulable": true } }));
        assert_eq!(outcome(&run(&p, Some(&cordoned), &[]), "cordon"), Fail);
        let tainted =
            node(json!({ "spec": { "taints": [ { "key": "gpu", "effect": "NoSchedule" } ] } }));
        assert_eq!(outcome(&run(&p, Some(&tainted), &[]), "taints"), Fail);
        let tol = pod(json!({ "tolerations": [ { "key": "gpu", "operator": "Exists" } ] }));
        assert_eq!(outcome(&run(&tol, Some(&tainted), &[]), "taints"), Pass);
    }

    #[test]
    fn pod_state_checks() {
        let n = node(json!({}));
        let here = pod(json!({ "nodeName": "n1" }));
        let r = run(&here, Some(&n), &[]);
        assert!(r.already_bound_here && !r.refused());
        let there = pod(json!({ "nodeName": "n2" }));
        let r = run(&there, Some(&n), &[]);
        assert_eq!(outcome(&r, "unbound"), Fail);
        assert!(!r.already_bound_here);
    }

    #[test]
    fn node_selector_check() {
        let n = node(json!({}));
        let ok = pod(json!({ "nodeSelector": { "zone": "a" } }));
        assert_eq!(outcome(&run(&ok, Some(&n), &[]), "nodeSelector"), Pass);
        let wrong = pod(json!({ "nodeSelector": { "zone": "b" } }));
        let r = run(&wrong, Some(&n), &[]);
        assert_eq!(outcome(&r, "nodeSelector"), Fail);
        let msg = &r
            .verdicts
            .iter()
            .find(|v| v.check == "nodeSelector")
            .unwrap()
            .message;
        assert!(msg.contains("node has \"a\", pod wants \"b\""), "{msg}");
        let missing = pod(json!({ "nodeSelector": { "rack": "1" } }));
        assert_eq!(outcome(&run(&missing, Some(&n), &[]), "nodeSelector"), Fail);
    }

    fn affinity(terms: Value) -> Pod {
        pod(
            json!({ "affinity": { "nodeAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": { "nodeSelectorTerms": terms } } } }),
        )
    }

    #[test]
    fn node_affinity_table() {
        let n = node(json!({}));
        let expr =
            |k: &str, op: &str, vals: &[&str]| json!({ "key": k, "operator": op, "values": vals });
        let cases = [
            (
                json!([{ "matchExpressions": [expr("zone", "In", &["a", "b"])] }]),
                Pass,
            ),
            (
                json!([{ "matchExpressions": [expr("zone", "In", &["b"])] }]),
                Fail,
            ),
            (
                json!([{ "matchExpressions": [expr("zone", "NotIn", &["b"])] }]),
                Pass,
            ),
            (
                json!([{ "matchExpressions": [expr("absent", "NotIn", &["b"])] }]),
                Pass,
            ),
            (
                json!([{ "matchExpressions": [expr("zone", "Exists", &[])] }]),
                Pass,
            ),
            (
                json!([{ "matchExpressions": [expr("zone", "DoesNotExist", &[])] }]),
                Fail,
            ),
            (
                json!([{ "matchExpressions": [expr("absent", "DoesNotExist", &[])] }]),
                Pass,
            ),
            (
                json!([{ "matchExpressions": [expr("gpus", "Gt", &["4"])] }]),
                Pass,
            ),
            (
                json!([{ "matchExpressions": [expr("gpus", "Gt", &["8"])] }]),
                Fail,
            ),
            (
                json!([{ "matchExpressions": [expr("gpus", "Lt", &["9"])] }]),
                Pass,
            ),
            (
                json!([{ "matchExpressions": [expr("zone", "Lt", &["9"])] }]),
                Fail,
            ),
            (
                json!([{ "matchExpressions": [expr("absent", "Gt", &["1"])] }]),
                Fail,
            ),
            // Expressions are ANDed ...
            (
                json!([{ "matchExpressions": [expr("zone", "In", &["a"]), expr("gpus", "Lt", &["2"])] }]),
                Fail,
            ),
            // ... terms ORed.
            (
                json!([{ "matchExpressions": [expr("zone", "In", &["x"])] }, { "matchExpressions": [expr("gpus", "Gt", &["1"])] }]),
                Pass,
            ),
            (
                json!([{ "matchFields": [expr("metadata.name", "In", &["n1"])] }]),
                Pass,
            ),
            (
                json!([{ "matchFields": [expr("metadata.name", "NotIn", &["n1"])] }]),
                Fail,
            ),
            (
                json!([{ "matchFields": [expr("metadata.name", "In", &["n2"])] }]),
                Fail,
            ),
            (json!([{}]), Fail),
            (json!([]), Fail),
        ];
        for (i, (terms, want)) in cases.into_iter().enumerate() {
            let r = run(&affinity(terms.clone()), Some(&n), &[]);
            assert_eq!(outcome(&r, "nodeAffinity"), want, "case {i}: {terms}");
        }
        let r = run(
            &affinity(json!([{ "matchExpressions": [expr("zone", "In", &["b"])] }])),
            Some(&n),
            &[],
        );
        let msg = &r
            .verdicts
            .iter()
            .find(|v| v.check == "nodeAffinity")
            .unwrap()
            .message;
        assert!(
            msg.contains("label zone is \"a\"") && msg.contains("zone In [b]"),
            "{msg}"
        );
    }
}
