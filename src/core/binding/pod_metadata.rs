//! The pod metadata the rest of KAI-Scheduler reads, decided from the BindRequest and the
//! outcome of an attempt (pure; `agent::worker` and `agent::effects` perform it).
//!
//! - Annotations KAI's binder writes before binding (`pkg/binder/binding/binder.go`,
//!   `patchBindAnnotations`): `received-resource-type: <spec.receivedResourceType>`, read by
//!   KAI's scheduler (`pkg/scheduler/api/pod_info/pod_info.go`, once the BindRequest is gone)
//!   and podgroup controller (`pkg/podgroupcontroller/controllers/resources/received.go`);
//!   and, when the scheduler predicted one, `kai.scheduler/numa-placement-predicted: <JSON
//!   of spec.predictedNUMAZones>`, read back by the scheduler
//!   (`pkg/scheduler/plugins/numa/seed_placements.go`). bindlet sends them as the Binding's
//!   own `metadata.annotations`: kube-apiserver merges those into the pod in the same storage
//!   update that sets `spec.nodeName` (`pkg/registry/core/pod/storage/storage.go`,
//!   `setPodNodeAndMetadata`). Nobody can see the pod bound without them (what KAI gets by
//!   patching first), the write carries the Binding's pod-UID precondition, a failed bind
//!   leaves nothing behind, and it costs no request of its own.
//! - The pod condition `PodBound` and its Event, as KAI's binder writes them after every
//!   attempt (`pkg/binder/controllers/bindrequest_controller.go`, `updatePodCondition`):
//!   `True`/`Bound` "Pod bound successfully to node N" with a Normal Event `Bound`, or
//!   `False`/`BindingError` "Failed to bind pod NS/NAME to node N: ERR" with a Warning
//!   Event `BindingError`; core/v1 Events from the component `binder`
//!   (`cmd/binder/app/app.go`, `GetEventRecorderFor("binder")`). Unlike KAI, a failed
//!   attempt that will be retried is `False` (KAI writes `True` when it requeues a retry).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodCondition};

use crate::api::BindRequestSpec;

use super::failure::Failure;
use super::status::Outcome;

/// KAI `pkg/common/constants/constants.go`, `ReceivedResourceType`.
pub const RECEIVED_RESOURCE_TYPE_ANNOTATION: &str = "received-resource-type";
/// KAI `pkg/common/constants/constants.go`, `NumaPlacementPredicted`.
pub const NUMA_PLACEMENT_PREDICTED_ANNOTATION: &str = "kai.scheduler/numa-placement-predicted";
/// KAI `pkg/binder/controllers/bindrequest_controller.go`, `podBoundCondition`.
pub const POD_BOUND_CONDITION: &str = "PodBound";
/// Reasons of the condition, also the Events' reasons (same file, `updatePodCondition`).
pub const BOUND_REASON: &str = "Bound";
pub const BINDING_ERROR_REASON: &str = "BindingError";
/// The component KAI's binder records its Events as (`cmd/binder/app/app.go`).
pub const KAI_BINDER_COMPONENT: &str = "binder";

/// The annotations the Binding carries, as KAI's binder writes them on the pod: the
/// received resource type always (KAI writes it even when empty), the predicted NUMA
/// placement when the scheduler gave one (a JSON list of `{zone, amount}`, amounts as
/// quantity strings, as Go encodes a `ResourceList`).
pub fn bind_annotations(spec: &BindRequestSpec) -> BTreeMap<String, String> {
    let mut out = BTreeMap::from([(
        RECEIVED_RESOURCE_TYPE_ANNOTATION.to_string(),
        spec.received_resource_type.clone().unwrap_or_default(),
    )]);
    if let Some(zones) = spec.predicted_numa_zones.as_ref().filter(|z| !z.is_empty()) {
        let list: Vec<serde_json::Value> = zones
            .iter()
            .map(|z| {
                let amount: serde_json::Map<String, serde_json::Value> = z
                    .amount
                    .iter()
                    .map(|(k, q)| (k.clone(), q.to_quantity_string().into()))
                    .collect();
                serde_json::json!({ "zone": z.zone, "amount": amount })
            })
            .collect();
        out.insert(
            NUMA_PLACEMENT_PREDICTED_ANNOTATION.to_string(),
            serde_json::Value::Array(list).to_string(),
        );
    }
    out
}

/// The `PodBound` condition and Event for one settled attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodBoundReport {
    /// `"True"` or `"False"`.
    pub status: &'static str,
    /// `Bound` or `BindingError`: the condition's reason and the Event's.
    pub reason: &'static str,
    pub message: String,
    /// Whether the Event is a Warning.
    pub warning: bool,
}

/// What to write on the pod after an attempt, or `None` when the pod is not this
/// attempt's to write on: missing, recreated (another UID), bound by someone else to
/// another node, or a request that could not even be read.
pub fn pod_bound_report(
    outcome: &Outcome,
    namespace: &str,
    pod: &str,
    node: &str,
    reason: &str,
) -> Option<PodBoundReport> {
    match outcome {
        Outcome::Bound | Outcome::AlreadyBound => Some(PodBoundReport {
            status: "True",
            reason: BOUND_REASON,
            message: format!("Pod bound successfully to node {node}"),
            warning: false,
        }),
        Outcome::Failed(
            Failure::PodNotFound { .. }
            | Failure::PodUidMismatch { .. }
            | Failure::PodBoundElsewhere { .. }
            | Failure::Malformed(_)
            | Failure::WrongNode { .. },
        ) => None,
        Outcome::Failed(f) => {
            let why = if reason.is_empty() {
                f.to_string()
            } else {
                reason.to_string()
            };
            Some(PodBoundReport {
                status: "False",
                reason: BINDING_ERROR_REASON,
                message: format!("Failed to bind pod {namespace}/{pod} to node {node}: {why}"),
                warning: true,
            })
        }
    }
}

/// The pod's current `PodBound` condition, if any.
pub fn current_pod_bound(pod: &Pod) -> Option<PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == POD_BOUND_CONDITION)
        .cloned()
}

/// The body of the strategic merge patch of `pods/status` that sets the condition, or
/// `None` when the pod already has it (same status, reason and message: nothing to write,
/// no request). The list `status.conditions` merges by `type` (its patch merge key in
/// core/v1), so other conditions stay as they are; `metadata.uid` makes the write fail on a
/// pod that was recreated under the same name (the kubelet guards its own pod status
/// patches this way: `pkg/kubelet/status/status_manager.go`). `lastTransitionTime` moves only
/// when the status changes (as KAI's `podutil.UpdatePodCondition` keeps it).
pub fn pod_bound_patch(
    uid: &str,
    report: &PodBoundReport,
    current: Option<&PodCondition>,
    now: &str,
) -> Option<serde_json::Value> {
    let same_status = current.is_some_and(|c| c.status == report.status);
    if same_status
        && current.is_some_and(|c| {
            c.reason.as_deref() == Some(report.reason)
                && c.message.as_deref() == Some(report.message.as_str())
        })
    {
        return None;
    }
    let mut condition = serde_json::json!({
        "type": POD_BOUND_CONDITION,
        "status": report.status,
        "reason": report.reason,
        "message": report.message,
        "lastProbeTime": null,
        "lastTransitionTime": now,
    });
    if same_status {
        // Left out of the patch, the pod keeps its own.
        if let Some(c) = condition.as_object_mut() {
            c.remove("lastTransitionTime");
        }
    }
    Some(serde_json::json!({
        "metadata": { "uid": uid },
        "status": { "conditions": [condition] }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{NumaZonePlacement, QuantityValue};

    /// name, spec, expected annotations
    type AnnotationCase<'a> = (&'a str, BindRequestSpec, Vec<(&'a str, &'a str)>);
    /// name, outcome, expected (status, reason, warning, message)
    type ReportCase<'a> = (&'a str, Outcome, Option<(&'a str, &'a str, bool, &'a str)>);

    fn spec(kind: Option<&str>, zones: Option<Vec<NumaZonePlacement>>) -> BindRequestSpec {
        BindRequestSpec {
            received_resource_type: kind.map(str::to_string),
            predicted_numa_zones: zones,
            ..Default::default()
        }
    }

    #[test]
    fn annotations_follow_kai_binder() {
        let zone = |z: &str, amounts: &[(&str, QuantityValue)]| NumaZonePlacement {
            zone: z.into(),
            amount: amounts
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        };
        let two_zones = vec![
            zone(
                "node-0",
                &[
                    ("nvidia.com/gpu", QuantityValue::Int(2)),
                    ("cpu", QuantityValue::String("4".into())),
                ],
            ),
            zone(
                "node-1",
                &[("memory", QuantityValue::String("16Gi".into()))],
            ),
        ];
        let cases: Vec<AnnotationCase> = vec![
            (
                "regular, no NUMA prediction",
                spec(Some("Regular"), None),
                vec![("received-resource-type", "Regular")],
            ),
            (
                "fraction",
                spec(Some("Fraction"), Some(vec![])),
                vec![("received-resource-type", "Fraction")],
            ),
            (
                "type unset: written empty, as KAI does",
                spec(None, None),
                vec![("received-resource-type", "")],
            ),
            (
                "NUMA prediction copied as JSON, quantities as strings",
                spec(Some("Regular"), Some(two_zones)),
                vec![
                    (
                        "kai.scheduler/numa-placement-predicted",
                        r#"[{"amount":{"cpu":"4","nvidia.com/gpu":"2"},"zone":"node-0"},{"amount":{"memory":"16Gi"},"zone":"node-1"}]"#,
                    ),
                    ("received-resource-type", "Regular"),
                ],
            ),
        ];
        for (name, spec, want) in cases {
            let got = bind_annotations(&spec);
            let want: BTreeMap<String, String> = want
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn numa_annotation_reads_back_as_kai_placements() {
        let spec = spec(
            Some("Regular"),
            Some(vec![NumaZonePlacement {
                zone: "node-1".into(),
                amount: BTreeMap::from([("cpu".into(), QuantityValue::String("500m".into()))]),
            }]),
        );
        let text = &bind_annotations(&spec)[NUMA_PLACEMENT_PREDICTED_ANNOTATION];
        let back: Vec<NumaZonePlacement> = serde_json::from_str(text).expect("decodes");
        assert_eq!(back, spec.predicted_numa_zones.unwrap_or_default());
    }

    #[test]
    fn pod_bound_condition_per_outcome() {
        let failed = |f: Failure| Outcome::Failed(f);
        let cases: Vec<ReportCase> = vec![
            (
                "bound",
                Outcome::Bound,
                Some(("True", "Bound", false, "Pod bound successfully to node n1")),
            ),
            (
                "already bound here",
                Outcome::AlreadyBound,
                Some(("True", "Bound", false, "Pod bound successfully to node n1")),
            ),
            (
                "refused, will be retried: False (KAI writes True here)",
                failed(Failure::Refused {
                    plugin: "gpu".into(),
                    check: "count".into(),
                    message: "no free GPU".into(),
                }),
                Some((
                    "False",
                    "BindingError",
                    true,
                    "Failed to bind pod ns/p to node n1: the reason",
                )),
            ),
            (
                "binding rejected",
                failed(Failure::BindingRejected("nope".into())),
                Some((
                    "False",
                    "BindingError",
                    true,
                    "Failed to bind pod ns/p to node n1: the reason",
                )),
            ),
            (
                "pod missing: nothing to write on",
                failed(Failure::PodNotFound {
                    namespace: "ns".into(),
                    name: "p".into(),
                }),
                None,
            ),
            (
                "recreated pod: not this request's pod",
                failed(Failure::PodUidMismatch {
                    name: "p".into(),
                    expected: "a".into(),
                    live: "b".into(),
                }),
                None,
            ),
            (
                "bound elsewhere: another binder's pod",
                failed(Failure::PodBoundElsewhere {
                    name: "p".into(),
                    node: "n2".into(),
                }),
                None,
            ),
            (
                "malformed request",
                failed(Failure::Malformed("x".into())),
                None,
            ),
        ];
        for (name, outcome, want) in cases {
            let got = pod_bound_report(&outcome, "ns", "p", "n1", "the reason");
            let got = got
                .as_ref()
                .map(|r| (r.status, r.reason, r.warning, r.message.as_str()));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn failure_without_status_reason_uses_the_failure_text() {
        let r = pod_bound_report(
            &Outcome::Failed(Failure::BindingRejected("nope".into())),
            "ns",
            "p",
            "n1",
            "",
        )
        .expect("a report");
        assert!(
            r.message
                .starts_with("Failed to bind pod ns/p to node n1: ")
                && r.message.contains("nope"),
            "{}",
            r.message
        );
    }

    #[test]
    fn patch_sets_only_the_pod_bound_condition_guarded_by_uid() {
        let bound = pod_bound_report(&Outcome::Bound, "ns", "p", "n1", "").expect("a report");
        let failed = pod_bound_report(
            &Outcome::Failed(Failure::BindingRejected("nope".into())),
            "ns",
            "p",
            "n1",
            "nope",
        )
        .expect("a report");
        let cond = |status: &str, reason: &str, message: &str| PodCondition {
            type_: "PodBound".into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            ..Default::default()
        };
        let now = "2026-01-01T00:00:00Z";
        // name, report, current condition, Some(writes lastTransitionTime) or None (no write)
        let cases: Vec<(&str, &PodBoundReport, Option<PodCondition>, Option<bool>)> = vec![
            ("first attempt", &bound, None, Some(true)),
            (
                "False to True: a transition",
                &bound,
                Some(cond("False", "BindingError", "x")),
                Some(true),
            ),
            (
                "already so: nothing to write",
                &bound,
                Some(cond("True", "Bound", &bound.message)),
                None,
            ),
            (
                "False again with another reason: time kept",
                &failed,
                Some(cond("False", "BindingError", "an earlier reason")),
                Some(false),
            ),
        ];
        for (name, report, current, want) in cases {
            let got = pod_bound_patch("uid-1", report, current.as_ref(), now);
            match (want, got) {
                (None, None) => {}
                (Some(with_time), Some(p)) => {
                    assert_eq!(
                        p["metadata"],
                        serde_json::json!({ "uid": "uid-1" }),
                        "{name}"
                    );
                    let conds = p["status"]["conditions"].as_array().expect("a list");
                    assert_eq!(conds.len(), 1, "{name}");
                    assert_eq!(conds[0]["type"], "PodBound", "{name}");
                    assert_eq!(conds[0]["status"], report.status, "{name}");
                    assert_eq!(conds[0]["reason"], report.reason, "{name}");
                    assert_eq!(conds[0]["message"], report.message.as_str(), "{name}");
                    assert_eq!(
                        conds[0].get("lastTransitionTime").is_some(),
                        with_time,
                        "{name}"
                    );
                    assert_eq!(
                        p.as_object().map(|o| o.len()),
                        Some(2),
                        "{name}: nothing else"
                    );
                }
                (want, got) => panic!("{name}: want {want:?}, got {got:?}"),
            }
        }
    }
}
