//! Plain-language text for `bind` and `explain`, pure so it can be tested with plain values.

use std::fmt::Write as _;

use k8s_openapi::api::core::v1::Pod;

use crate::api::{BindRequest, Phase, Verdict, VerdictOutcome};

/// One Event, reduced to what `explain` prints.
#[derive(Debug, Clone, PartialEq)]
pub struct EventLine {
    pub time: Option<jiff::Timestamp>,
    pub type_: String,
    pub reason: String,
    /// `Kind/name` of the object the Event is about.
    pub regarding: String,
    pub note: String,
    pub count: i32,
}

fn mark(o: VerdictOutcome) -> &'static str {
    match o {
        VerdictOutcome::Pass => "PASS",
        VerdictOutcome::Warn => "WARN",
        VerdictOutcome::Fail => "FAIL",
        VerdictOutcome::Skip => "SKIP",
    }
}

/// One line per verdict: `  PASS  node/ready           Ready=True`.
pub fn verdict_lines(verdicts: &[Verdict], indent: &str) -> String {
    let width = verdicts
        .iter()
        .map(|v| v.plugin.len() + 1 + v.check.len())
        .max()
        .unwrap_or(0);
    let mut s = String::new();
    for v in verdicts {
        let name = format!("{}/{}", v.plugin, v.check);
        let _ = writeln!(
            s,
            "{indent}{}  {name:<width$}  {}",
            mark(v.outcome),
            v.message
        );
    }
    s
}

fn pod_state(pod: Option<&Pod>, namespace: &str, name: &str) -> String {
    let Some(pod) = pod else {
        return format!("pod {namespace}/{name}: not found");
    };
    let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("unknown");
    let deleting = if pod.metadata.deletion_timestamp.is_some() {
        ", being deleted"
    } else {
        ""
    };
    match node {
        Some(n) if !n.is_empty() => {
            format!("pod {namespace}/{name}: bound to node {n} (phase {phase}{deleting})")
        }
        _ => format!("pod {namespace}/{name}: not bound to a node (phase {phase}{deleting})"),
    }
}

/// What the phase means, in words.
pub fn phase_text(br: &BindRequest) -> String {
    let node = br.spec.selected_node.as_deref().unwrap_or("?");
    let attempts = br.failed_attempts();
    let limit = match br.spec.backoff_limit {
        Some(l) => format!("backoffLimit {l}"),
        None => "no backoffLimit set, so the agent's default applies".to_string(),
    };
    match br.phase() {
        None if attempts == 0 => format!(
            "Pending: waiting for the bindlet agent on node {node} (no attempt recorded yet)"
        ),
        None | Some(Phase::Pending) if attempts == 0 => {
            format!("Pending: the agent on node {node} is working on it")
        }
        None | Some(Phase::Pending) => format!(
            "Pending: {attempts} failed attempt(s) so far; the agent on node {node} retries with backoff ({limit})"
        ),
        Some(Phase::Succeeded) => format!("Succeeded: the pod was bound to node {node}"),
        Some(Phase::Failed) => format!(
            "Failed: the agent gave up after {attempts} failed attempt(s); the scheduler deletes such a request and may place the pod again"
        ),
    }
}

/// The full `explain` text.
pub fn explain_text(
    namespace: &str,
    name: &str,
    request: Option<&BindRequest>,
    pod: Option<&Pod>,
    events: &[EventLine],
) -> String {
    let mut s = String::new();
    match request {
        Some(br) => {
            let pod_name = br.spec.pod_name.as_deref().unwrap_or(name);
            let _ = writeln!(s, "BindRequest {namespace}/{name}");
            let _ = writeln!(
                s,
                "  node:     {}",
                br.spec.selected_node.as_deref().unwrap_or("(not set)")
            );
            let _ = writeln!(s, "  phase:    {}", phase_text(br));
            let _ = writeln!(s, "  attempts: {} failed", br.failed_attempts());
            if let Some(r) = br.status.as_ref().and_then(|s| s.reason.as_deref()) {
                let _ = writeln!(s, "  reason:   {r}");
            }
            if let Some(t) = br.metadata.creation_timestamp.as_ref() {
                let _ = writeln!(s, "  created:  {}", t.0);
            }
            let _ = writeln!(s, "  {}", pod_state(pod, namespace, pod_name));
            if let (Some(owner), Some(live)) = (
                br.owner_pod_uid(),
                pod.and_then(|p| p.metadata.uid.as_deref()),
            ) && owner != live
            {
                let _ = writeln!(
                    s,
                    "  note:     the request was made for an earlier pod of this name (uid {owner}); the live pod has uid {live}"
                );
            }
            match br
                .status
                .as_ref()
                .and_then(|s| s.node_verification.as_ref())
            {
                Some(v) => {
                    let at = v.observed_at.as_deref().unwrap_or("unknown time");
                    let by = v.agent.as_deref().unwrap_or("unknown agent");
                    let _ = writeln!(
                        s,
                        "\nChecks recorded by agent {by} on node {} at {at} (attempt {}):",
                        v.node, v.attempt
                    );
                    s.push_str(&verdict_lines(&v.verdicts, "  "));
                }
                None if br.status.as_ref().and_then(|s| s.phase.as_ref()).is_none() => {
                    let _ = writeln!(s, "\nNo checks recorded yet: no agent has worked on it.");
                }
                None => {
                    let _ = writeln!(
                        s,
                        "\nNo checks recorded: the agent's verdicts are kept only with bindlet's CRD (KAI's CRD drops them), or the attempt ended before the checks ran (see reason)."
                    );
                }
            }
        }
        None => {
            let _ = writeln!(s, "No BindRequest {namespace}/{name}.");
            let _ = writeln!(s, "  {}", pod_state(pod, namespace, name));
        }
    }
    let _ = writeln!(s, "\nEvents (oldest first):");
    if events.is_empty() {
        let _ = writeln!(s, "  none");
    }
    for e in events {
        let time = e
            .time
            .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| "(no time)".into());
        let count = if e.count > 1 {
            format!(" (x{})", e.count)
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "  {time}  {:<7}  {:<18} {:<24} {}{count}",
            e.type_, e.reason, e.regarding, e.note
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BindRequestStatus, NodeVerification};
    use serde_json::json;

    fn br(status: Option<BindRequestStatus>) -> BindRequest {
        let mut b: BindRequest = serde_json::from_value(json!({
            "apiVersion": "scheduling.run.ai/v1alpha2", "kind": "BindRequest",
            "metadata": { "name": "p", "namespace": "ns",
                "ownerReferences": [ { "apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "old", "controller": true } ] },
            "spec": { "podName": "p", "selectedNode": "n1" }
        }))
        .unwrap();
        b.status = status;
        b
    }

    #[test]
    fn phase_in_words() {
        assert!(phase_text(&br(None)).contains("no attempt recorded yet"));
        let pending = br(Some(BindRequestStatus {
            phase: Some("Pending".into()),
            failed_attempts: Some(2),
            ..Default::default()
        }));
        let t = phase_text(&pending);
        assert!(
            t.contains("2 failed attempt(s)") && t.contains("retries"),
            "{t}"
        );
        let failed = br(Some(BindRequestStatus {
            phase: Some("Failed".into()),
            failed_attempts: Some(3),
            ..Default::default()
        }));
        assert!(phase_text(&failed).contains("gave up after 3"));
    }

    #[test]
    fn explain_lists_verdicts_events_and_stale_owner() {
        let b = br(Some(BindRequestStatus {
            phase: Some("Failed".into()),
            reason: Some("node: pod does not tolerate taint".into()),
            failed_attempts: Some(1),
            node_verification: Some(NodeVerification {
                node: "n1".into(),
                agent: Some("agent-a".into()),
                attempt: 1,
                observed_at: Some("2025-01-01T00:00:00Z".into()),
                verdicts: vec![crate::binding::verdict(
                    "node",
                    "taints",
                    VerdictOutcome::Fail,
                    "pod does not tolerate taint(s)".into(),
                )],
            }),
        }));
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": "p", "namespace": "ns", "uid": "new" },
            "spec": { "containers": [] }, "status": { "phase": "Pending" }
        }))
        .unwrap();
        let t0: jiff::Timestamp = "2025-01-01T00:00:01Z".parse().unwrap();
        let events = vec![EventLine {
            time: Some(t0),
            type_: "Warning".into(),
            reason: "NodeRefused".into(),
            regarding: "BindRequest/p".into(),
            note: "Binding failed, giving up".into(),
            count: 1,
        }];
        let text = explain_text("ns", "p", Some(&b), Some(&pod), &events);
        for want in [
            "BindRequest ns/p",
            "Failed: the agent gave up after 1",
            "reason:   node: pod does not tolerate taint",
            "not bound to a node (phase Pending)",
            "earlier pod of this name (uid old)",
            "agent agent-a on node n1",
            "FAIL  node/taints",
            "2025-01-01 00:00:01  Warning  NodeRefused",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        let none = explain_text("ns", "p", None, None, &[]);
        assert!(none.contains("No BindRequest ns/p") && none.contains("not found"));
        assert!(none.contains("  none"));
    }
}
