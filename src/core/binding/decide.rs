//! Pure decisions over the BindRequest and the live pod, before any plugin runs.

use k8s_openapi::api::core::v1::Pod;

use crate::api::BindRequest;

use super::failure::Failure;

/// What the request asks for, after validation.
#[derive(Debug, Clone, PartialEq)]
pub enum GpuRequest {
    /// No GPU in the request (or `receivedGPU.count` 0).
    None,
    /// Whole GPUs.
    Whole { count: u32 },
    /// A portion of each of `count` GPUs, in the named GPU groups.
    Fraction {
        portion: f64,
        count: u32,
        groups: Vec<String>,
    },
}

/// A BindRequest that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRequest {
    pub namespace: String,
    pub pod_name: String,
    pub gpu: GpuRequest,
}

/// Checks the request itself: required fields, known values, that it is for this node.
/// Anything wrong here is terminal: retrying cannot fix a request's own content.
/// The node a request's spec selects when that is another node than `node_name`. Such a
/// request is not this node's, whatever its `selected-node` label says: only the selected
/// node's agent may write its status. An empty `spec.selectedNode` is a malformed request
/// of this node (the label brought it here), not another node's.
pub fn selected_elsewhere<'a>(br: &'a BindRequest, node_name: &str) -> Option<&'a str> {
    br.spec
        .selected_node
        .as_deref()
        .filter(|s| !s.is_empty() && *s != node_name)
}

pub fn validate_request(br: &BindRequest, node_name: &str) -> Result<ValidRequest, Failure> {
    let malformed = |m: String| Err(Failure::Malformed(m));
    let namespace = match br.metadata.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => ns.to_string(),
        _ => return malformed("metadata.namespace is empty".into()),
    };
    let spec = &br.spec;
    let selected = spec.selected_node.as_deref().unwrap_or("");
    if selected.is_empty() {
        return malformed("spec.selectedNode is empty".into());
    }
    if selected != node_name {
        return Err(Failure::WrongNode {
            selected: selected.to_string(),
            me: node_name.to_string(),
        });
    }
    let pod_name = spec.pod_name.as_deref().unwrap_or("");
    if pod_name.is_empty() {
        return malformed("spec.podName is empty".into());
    }
    if !is_dns_subdomain(pod_name) {
        return malformed(format!(
            "spec.podName \"{pod_name}\" is not a valid pod name"
        ));
    }
    if let Some(limit) = spec.backoff_limit
        && limit < 0
    {
        return malformed(format!("spec.backoffLimit {limit} is negative"));
    }
    if let Some(allocs) = &spec.resource_claim_allocations
        && let Some(i) = allocs
            .iter()
            .position(|a| a.name.as_deref().unwrap_or("").is_empty())
    {
        return malformed(format!("spec.resourceClaimAllocations[{i}].name is empty"));
    }
    let count = spec
        .received_gpu
        .as_ref()
        .and_then(|g| g.count)
        .unwrap_or(0);
    let count = match u32::try_from(count) {
        Ok(c) => c,
        Err(_) => return malformed(format!("spec.receivedGPU.count {count} is out of range")),
    };
    let gpu = match spec.received_resource_type.as_deref().unwrap_or("") {
        "" | "Regular" => {
            if count == 0 {
                GpuRequest::None
            } else {
                GpuRequest::Whole { count }
            }
        }
        // KAI's scheduler sends `MigInstance` for pods asking for MIG devices
        // (`nvidia.com/mig-*`; pkg/scheduler/api/node_info/node_info.go,
        // setAcceptedResources), and KAI's binder binds them like any non-shared pod. The
        // device plugin assigns the MIG instance; bindlet does not verify it (the `gpu`
        // plugin says so in a verdict).
        "MigInstance" => GpuRequest::None,
        "Fraction" => {
            let raw = spec
                .received_gpu
                .as_ref()
                .and_then(|g| g.portion.as_deref())
                .unwrap_or("");
            let portion = parse_portion(raw)?;
            let groups = spec.selected_gpu_groups.clone().unwrap_or_default();
            if groups.is_empty() || groups.iter().any(String::is_empty) {
                return malformed(
                    "a Fraction request needs non-empty spec.selectedGPUGroups".into(),
                );
            }
            GpuRequest::Fraction {
                portion,
                count: count.max(1),
                groups,
            }
        }
        other => {
            return malformed(format!(
                "spec.receivedResourceType \"{other}\" is none of Regular, Fraction, MigInstance"
            ));
        }
    };
    Ok(ValidRequest {
        namespace,
        pod_name: pod_name.to_string(),
        gpu,
    })
}

/// A GPU portion is a decimal string strictly between 0 and 1, e.g. "0.50".
pub fn parse_portion(raw: &str) -> Result<f64, Failure> {
    let bad = || {
        Failure::Malformed(format!(
            "invalid GPU portion \"{raw}\": must be a decimal number between 0 and 1 (exclusive)"
        ))
    };
    let p: f64 = raw.trim().parse().map_err(|_| bad())?;
    if p.is_finite() && p > 0.0 && p < 1.0 {
        Ok(p)
    } else {
        Err(bad())
    }
}

/// Where the live pod stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodState {
    /// Not bound yet: the pipeline may run.
    Unbound { uid: String },
    /// Already bound to this node: the request succeeded (idempotent).
    BoundHere,
}

/// Checks the live pod against the request: exists, same UID as the request's owner,
/// not terminating, not bound elsewhere.
pub fn check_pod(
    br: &BindRequest,
    req: &ValidRequest,
    pod: Option<&Pod>,
    node_name: &str,
) -> Result<PodState, Failure> {
    let Some(pod) = pod else {
        return Err(Failure::PodNotFound {
            namespace: req.namespace.clone(),
            name: req.pod_name.clone(),
        });
    };
    let live_uid = pod.metadata.uid.clone().unwrap_or_default();
    if let Some(expected) = br.owner_pod_uid()
        && expected != live_uid
    {
        return Err(Failure::PodUidMismatch {
            name: req.pod_name.clone(),
            expected: expected.to_string(),
            live: live_uid,
        });
    }
    let bound_to = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("");
    if bound_to == node_name {
        return Ok(PodState::BoundHere);
    }
    if !bound_to.is_empty() {
        return Err(Failure::PodBoundElsewhere {
            name: req.pod_name.clone(),
            node: bound_to.to_string(),
        });
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return Err(Failure::PodTerminating {
            name: req.pod_name.clone(),
        });
    }
    Ok(PodState::Unbound { uid: live_uid })
}

/// RFC 1123 subdomain: what the API server accepts as a pod name.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BindRequestSpec, ReceivedGpu};
    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

    #[test]
    fn a_request_whose_spec_selects_another_node_is_not_ours() {
        let cases: &[(Option<&str>, Option<&str>)] = &[
            (Some("n1"), None),
            (Some("n2"), Some("n2")),
            (Some(""), None),
            (None, None),
        ];
        for (selected, want) in cases {
            let br = BindRequest::new(
                "p",
                BindRequestSpec {
                    selected_node: selected.map(str::to_string),
                    ..Default::default()
                },
            );
            assert_eq!(selected_elsewhere(&br, "n1"), *want, "{selected:?}");
        }
    }

    fn spec(kind: Option<&str>, count: Option<i64>, portion: Option<&str>) -> BindRequestSpec {
        BindRequestSpec {
            pod_name: Some("p".into()),
            selected_node: Some("n1".into()),
            received_resource_type: kind.map(str::to_string),
            received_gpu: Some(ReceivedGpu {
                count,
                portion: portion.map(str::to_string),
            }),
            selected_gpu_groups: portion.map(|_| vec!["g1".to_string()]),
            ..Default::default()
        }
    }

    fn br_with(spec: BindRequestSpec) -> BindRequest {
        let mut br = BindRequest::new("p", spec);
        br.metadata.namespace = Some("ns".into());
        br
    }

    #[test]
    fn request_validation_table() {
        let ok = |s: BindRequestSpec| validate_request(&br_with(s), "n1");
        assert_eq!(
            ok(spec(None, None, None)).map(|r| r.gpu),
            Ok(GpuRequest::None)
        );
        assert_eq!(
            ok(spec(Some("Regular"), Some(2), None)).map(|r| r.gpu),
            Ok(GpuRequest::Whole { count: 2 })
        );
        assert_eq!(
            ok(spec(Some("MigInstance"), Some(1), Some("0.00"))).map(|r| r.gpu),
            Ok(GpuRequest::None),
            "KAI's MIG pods are bound, not refused as malformed"
        );
        assert_eq!(
            ok(spec(Some("Fraction"), Some(1), Some("0.50"))).map(|r| r.gpu),
            Ok(GpuRequest::Fraction {
                portion: 0.5,
                count: 1,
                groups: vec!["g1".into()]
            })
        );

        // (spec mutation, expected error code, text the reason must contain)
        type Mutate = fn(&mut BindRequestSpec);
        let bad: Vec<(Mutate, &str, &str)> = vec![
            (
                |s| s.pod_name = None,
                "MalformedRequest",
                "spec.podName is empty",
            ),
            (
                |s| s.pod_name = Some("Bad_Name".into()),
                "MalformedRequest",
                "not a valid pod name",
            ),
            (
                |s| s.selected_node = None,
                "MalformedRequest",
                "spec.selectedNode is empty",
            ),
            (
                |s| s.selected_node = Some("n2".into()),
                "WrongNode",
                "\"n2\"",
            ),
            (
                |s| s.received_resource_type = Some("Shared".into()),
                "MalformedRequest",
                "\"Shared\"",
            ),
            (
                |s| {
                    s.received_gpu = Some(ReceivedGpu {
                        count: Some(-1),
                        portion: None,
                    })
                },
                "MalformedRequest",
                "-1",
            ),
            (
                |s| s.backoff_limit = Some(-2),
                "MalformedRequest",
                "backoffLimit",
            ),
            (
                |s| {
                    s.received_resource_type = Some("Fraction".into());
                    s.received_gpu = Some(ReceivedGpu {
                        count: Some(1),
                        portion: Some("1.5".into()),
                    });
                    s.selected_gpu_groups = Some(vec!["g".into()]);
                },
                "MalformedRequest",
                "invalid GPU portion \"1.5\"",
            ),
            (
                |s| {
                    s.received_resource_type = Some("Fraction".into());
                    s.received_gpu = Some(ReceivedGpu {
                        count: Some(1),
                        portion: Some("0.3".into()),
                    });
                    s.selected_gpu_groups = None;
                },
                "MalformedRequest",
                "selectedGPUGroups",
            ),
        ];
        for (i, (mutate, code, text)) in bad.into_iter().enumerate() {
            let mut s = spec(None, None, None);
            mutate(&mut s);
            let err = ok(s).expect_err(&format!("case {i} should fail"));
            assert_eq!(err.code(), code, "case {i}: {err}");
            assert!(err.to_string().contains(text), "case {i}: {err}");
        }
    }

    #[test]
    fn portions() {
        for good in ["0.5", "0.01", " 0.99 ", "0.50"] {
            assert!(parse_portion(good).is_ok(), "{good}");
        }
        for bad in ["0", "1", "1.0", "-0.5", "abc", "", "NaN", "inf"] {
            assert!(parse_portion(bad).is_err(), "{bad}");
        }
    }

    fn pod(uid: &str, node: Option<&str>, deleting: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                uid: Some(uid.into()),
                deletion_timestamp: deleting.then_some(Time(jiff::Timestamp::UNIX_EPOCH)),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pod_table() {
        let mut br = br_with(spec(None, None, None));
        br.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: "p".into(),
            uid: "u1".into(),
            ..Default::default()
        }]);
        let req = validate_request(&br, "n1").expect("valid");
        let check = |p: Option<Pod>| check_pod(&br, &req, p.as_ref(), "n1");
        assert_eq!(
            check(Some(pod("u1", None, false))),
            Ok(PodState::Unbound { uid: "u1".into() })
        );
        assert_eq!(
            check(Some(pod("u1", Some("n1"), false))),
            Ok(PodState::BoundHere)
        );
        assert_eq!(check(None).map_err(|e| e.code()), Err("PodNotFound"));
        assert_eq!(
            check(Some(pod("u2", None, false))).map_err(|e| e.code()),
            Err("PodUIDMismatch")
        );
        assert_eq!(
            check(Some(pod("u1", Some("n2"), false))).map_err(|e| e.code()),
            Err("PodBoundElsewhere")
        );
        assert_eq!(
            check(Some(pod("u1", None, true))).map_err(|e| e.code()),
            Err("PodTerminating")
        );
        // Without an owner reference any uid is accepted.
        br.metadata.owner_references = None;
        assert_eq!(
            check_pod(&br, &req, Some(&pod("u9", None, false)), "n1"),
            Ok(PodState::Unbound { uid: "u9".into() })
        );
    }
}
