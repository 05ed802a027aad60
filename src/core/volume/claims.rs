//! Pure PersistentVolume / PersistentVolumeClaim / StorageClass logic, following the PV
//! controller and kube-scheduler's VolumeBinding: PV node affinity, and which Available PV
//! a WaitForFirstConsumer claim gets on this node (the smallest that fits).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSelectorTerm, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::api::selector;

use super::check::VolumeMode;
use super::quantity::{format_bytes, parse_bytes};

pub use crate::api::wellknown::{
    BIND_COMPLETED_ANNOTATION, BOUND_BY_CONTROLLER_ANNOTATION, NO_PROVISIONER,
    SELECTED_NODE_ANNOTATION, claim_class,
};

/// The node-local source of a PV, when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PvSource<'a> {
    Local(&'a str),
    HostPath(&'a str),
    /// Not node-local (CSI, NFS, ...): nothing on this node to check.
    Remote,
}

pub fn pv_source(pv: &PersistentVolume) -> PvSource<'_> {
    let spec = pv.spec.as_ref();
    if let Some(l) = spec.and_then(|s| s.local.as_ref()) {
        PvSource::Local(&l.path)
    } else if let Some(h) = spec.and_then(|s| s.host_path.as_ref()) {
        PvSource::HostPath(&h.path)
    } else {
        PvSource::Remote
    }
}

/// The claim's `resources.requests.storage` in bytes.
pub fn claim_request(pvc: &PersistentVolumeClaim) -> Option<u64> {
    pvc.spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
        .and_then(|q| parse_bytes(&q.0))
}

/// The PV's `capacity.storage` in bytes.
pub fn pv_capacity(pv: &PersistentVolume) -> Option<u64> {
    pv.spec
        .as_ref()?
        .capacity
        .as_ref()?
        .get("storage")
        .and_then(|q| parse_bytes(&q.0))
}

pub fn annotation<'a>(
    meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// Whether the PV may be used on `node` (its `nodeAffinity.required`); `Err` says why not.
pub fn node_affinity_matches(pv: &PersistentVolume, node: &Node) -> Result<(), String> {
    let Some(sel) = pv
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
    else {
        return Ok(());
    };
    // Terms are ORed; an empty list matches no node.
    if sel
        .node_selector_terms
        .iter()
        .any(|t| selector::term_matches(t, node).is_ok())
    {
        return Ok(());
    }
    let terms: Vec<String> = sel.node_selector_terms.iter().map(describe_term).collect();
    Err(format!(
        "its node affinity ({}) does not match node {}",
        if terms.is_empty() {
            "no terms".to_string()
        } else {
            terms.join(" or ")
        },
        node.metadata.name.as_deref().unwrap_or("")
    ))
}

fn describe_term(t: &NodeSelectorTerm) -> String {
    let reqs = t
        .match_expressions
        .iter()
        .flatten()
        .chain(t.match_fields.iter().flatten());
    reqs.map(|r| {
        let v = r.values.as_deref().unwrap_or(&[]).join(",");
        match r.operator.as_str() {
            "Exists" | "DoesNotExist" => format!("{} {}", r.key, r.operator),
            op => format!("{} {op} [{v}]", r.key),
        }
    })
    .collect::<Vec<_>>()
    .join(", ")
}

/// Whether the PV's claimRef points at this claim (by namespace, name and, when set, UID).
pub fn claim_ref_is(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> bool {
    let Some(r) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return false;
    };
    r.namespace == pvc.metadata.namespace
        && r.name == pvc.metadata.name
        && r.uid
            .as_deref()
            .is_none_or(|u| Some(u) == pvc.metadata.uid.as_deref())
}

fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_label = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expr = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or(&[]);
        let have = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        }
    });
    by_label && by_expr
}

/// Why a PV was passed over; counted for the refusal message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Skip {
    Claimed,
    Class,
    Mode,
    AccessModes,
    TooSmall,
    Selector,
    OtherNode,
}

impl Skip {
    fn describe(self) -> &'static str {
        match self {
            Skip::Claimed => "already claimed or not Available",
            Skip::Class => "of another StorageClass",
            Skip::Mode => "of another volumeMode",
            Skip::AccessModes => "lacking the access modes",
            Skip::TooSmall => "too small",
            Skip::Selector => "not matching the claim's selector",
            Skip::OtherNode => "for other nodes",
        }
    }
}

/// Picks the PV for an unbound WaitForFirstConsumer claim on `node`: a PV already pre-bound
/// to the claim, else the smallest Available PV matching class, access modes, volume mode,
/// capacity, the claim's selector and node affinity (ties by name, so the choice is
/// stable). `Err` explains why none fits.
pub fn pick_static_pv<'a>(
    pvc: &PersistentVolumeClaim,
    pvs: &'a [PersistentVolume],
    node: &Node,
) -> Result<&'a PersistentVolume, String> {
    let class = claim_class(pvc);
    let spec = pvc.spec.as_ref();
    let mode = VolumeMode::parse(spec.and_then(|s| s.volume_mode.as_deref()));
    let modes = spec.and_then(|s| s.access_modes.as_deref()).unwrap_or(&[]);
    let request = claim_request(pvc).unwrap_or(0);
    let selector = spec.and_then(|s| s.selector.as_ref());
    let mut skipped: BTreeMap<Skip, usize> = BTreeMap::new();
    let mut best: Option<(&PersistentVolume, u64)> = None;
    for pv in pvs {
        let s = pv.spec.as_ref();
        let pre_bound = claim_ref_is(pv, pvc);
        let phase = pv.status.as_ref().and_then(|st| st.phase.as_deref());
        let why = if pv.metadata.deletion_timestamp.is_some()
            || (!pre_bound && s.and_then(|s| s.claim_ref.as_ref()).is_some())
            || matches!(phase, Some("Bound" | "Released" | "Failed")) && !pre_bound
        {
            Some(Skip::Claimed)
        } else if s
            .and_then(|s| s.storage_class_name.as_deref())
            .unwrap_or("")
            != class
        {
            Some(Skip::Class)
        } else if VolumeMode::parse(s.and_then(|s| s.volume_mode.as_deref())) != mode {
            Some(Skip::Mode)
        } else if !modes.iter().all(|m| {
            s.and_then(|s| s.access_modes.as_deref())
                .unwrap_or(&[])
                .contains(m)
        }) {
            Some(Skip::AccessModes)
        } else if pv_capacity(pv).unwrap_or(0) < request {
            Some(Skip::TooSmall)
        } else if selector.is_some_and(|sel| {
            !selector_matches(sel, pv.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()))
        }) {
            Some(Skip::Selector)
        } else if node_affinity_matches(pv, node).is_err() {
            Some(Skip::OtherNode)
        } else {
            None
        };
        if let Some(w) = why {
            *skipped.entry(w).or_default() += 1;
            continue;
        }
        if pre_bound {
            return Ok(pv);
        }
        let cap = pv_capacity(pv).unwrap_or(0);
        let name = pv.metadata.name.as_deref().unwrap_or("");
        let better = best.is_none_or(|(b, bcap)| {
            cap < bcap || (cap == bcap && name < b.metadata.name.as_deref().unwrap_or(""))
        });
        if better {
            best = Some((pv, cap));
        }
    }
    if let Some((pv, _)) = best {
        return Ok(pv);
    }
    let class_text = if class.is_empty() {
        "without a StorageClass".to_string()
    } else {
        format!("of StorageClass {class}")
    };
    let reasons: Vec<String> = skipped
        .iter()
        .filter(|(k, _)| **k != Skip::Class)
        .map(|(k, n)| format!("{n} {}", k.describe()))
        .collect();
    Err(format!(
        "no Available PersistentVolume {class_text} with {} fits on node {}{}",
        format_bytes(request),
        node.metadata.name.as_deref().unwrap_or(""),
        if reasons.is_empty() {
            String::new()
        } else {
            format!(" ({})", reasons.join(", "))
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, labels: serde_json::Value) -> Node {
        serde_json::from_value(json!({ "metadata": { "name": name, "labels": labels } }))
            .expect("node")
    }

    fn pv(name: &str, cap: &str, extra: serde_json::Value) -> PersistentVolume {
        let mut v = json!({
            "metadata": { "name": name },
            "spec": {
                "capacity": { "storage": cap },
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "local-ssd",
                "local": { "path": format!("/mnt/disks/{name}") },
                "nodeAffinity": { "required": { "nodeSelectorTerms": [
                    { "matchExpressions": [ { "key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"] } ] }
                ] } }
            },
            "status": { "phase": "Available" }
        });
        merge(&mut v, extra);
        serde_json::from_value(v).expect("pv")
    }

    fn pvc(req: &str, extra: serde_json::Value) -> PersistentVolumeClaim {
        let mut v = json!({
            "metadata": { "name": "data", "namespace": "ns", "uid": "u-1" },
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "local-ssd",
                "resources": { "requests": { "storage": req } }
            }
        });
        merge(&mut v, extra);
        serde_json::from_value(v).expect("pvc")
    }

    fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
        match (base, extra) {
            (serde_json::Value::Object(b), serde_json::Value::Object(e)) => {
                for (k, v) in e {
                    merge(b.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (b, e) => *b = e,
        }
    }

    #[test]
    fn node_affinity_operators() {
        let n = node(
            "n1",
            json!({ "kubernetes.io/hostname": "n1", "gen": "5", "zone": "a" }),
        );
        let with = |term: serde_json::Value| {
            pv(
                "p",
                "1Gi",
                json!({ "spec": { "nodeAffinity": { "required": { "nodeSelectorTerms": [term] } } } }),
            )
        };
        let cases = [
            (
                json!({ "matchExpressions": [ { "key": "zone", "operator": "In", "values": ["a", "b"] } ] }),
                true,
            ),
            (
                json!({ "matchExpressions": [ { "key": "zone", "operator": "NotIn", "values": ["a"] } ] }),
                false,
            ),
            (
                json!({ "matchExpressions": [ { "key": "rack", "operator": "NotIn", "values": ["a"] } ] }),
                true,
            ),
            (
                json!({ "matchExpressions": [ { "key": "zone", "operator": "Exists" } ] }),
                true,
            ),
            (
                json!({ "matchExpressions": [ { "key": "zone", "operator": "DoesNotExist" } ] }),
                false,
            ),
            (
                json!({ "matchExpressions": [ { "key": "gen", "operator": "Gt", "values": ["4"] } ] }),
                true,
            ),
            (
                json!({ "matchExpressions": [ { "key": "gen", "operator": "Lt", "values": ["4"] } ] }),
                false,
            ),
            (
                json!({ "matchExpressions": [ { "key": "gen", "operator": "Gt", "values": ["x"] } ] }),
                false,
            ),
            (
                json!({ "matchFields": [ { "key": "metadata.name", "operator": "In", "values": ["n1"] } ] }),
                true,
            ),
            (
                json!({ "matchFields": [ { "key": "metadata.name", "operator": "In", "values": ["n2"] } ] }),
                false,
            ),
            (json!({}), false),
            (
                json!({ "matchExpressions": [
                { "key": "zone", "operator": "In", "values": ["a"] },
                { "key": "gen", "operator": "In", "values": ["4"] } ] }),
                false,
            ),
        ];
        for (i, (term, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                node_affinity_matches(&with(term), &n).is_ok(),
                want,
                "case {i}"
            );
        }
        let none = pv("p", "1Gi", json!({ "spec": { "nodeAffinity": null } }));
        assert!(
            node_affinity_matches(&none, &n).is_ok(),
            "no affinity: any node"
        );
        let err =
            node_affinity_matches(&pv("p", "1Gi", json!({})), &node("n2", json!({}))).unwrap_err();
        assert_eq!(
            err,
            "its node affinity (kubernetes.io/hostname In [n1]) does not match node n2"
        );
    }

    #[test]
    fn picks_the_smallest_fitting_pv_on_this_node() {
        let n1 = node("n1", json!({ "kubernetes.io/hostname": "n1" }));
        let pvs = vec![
            pv("big", "100Gi", json!({})),
            pv("small", "5Gi", json!({})),
            pv("fit-b", "20Gi", json!({})),
            pv("fit-a", "20Gi", json!({})),
            pv(
                "taken",
                "10Gi",
                json!({ "spec": { "claimRef": { "namespace": "ns", "name": "other" } } }),
            ),
            pv(
                "elsewhere",
                "10Gi",
                json!({ "spec": { "nodeAffinity": { "required": { "nodeSelectorTerms": [
                { "matchExpressions": [ { "key": "kubernetes.io/hostname", "operator": "In", "values": ["n2"] } ] } ] } } } }),
            ),
            pv(
                "slow",
                "10Gi",
                json!({ "spec": { "storageClassName": "hdd" } }),
            ),
            pv(
                "rox",
                "10Gi",
                json!({ "spec": { "accessModes": ["ReadOnlyMany"] } }),
            ),
            pv("raw", "10Gi", json!({ "spec": { "volumeMode": "Block" } })),
            pv(
                "released",
                "10Gi",
                json!({ "status": { "phase": "Released" } }),
            ),
        ];
        let claim = pvc("10Gi", json!({}));
        let got = pick_static_pv(&claim, &pvs, &n1).expect("a PV");
        assert_eq!(got.metadata.name.as_deref(), Some("fit-a"));

        // A PV pre-bound to this claim wins even when a smaller one fits.
        let mut with_pre = pvs.clone();
        with_pre.push(pv(
            "mine",
            "50Gi",
            json!({ "spec": { "claimRef": { "namespace": "ns", "name": "data", "uid": "u-1" } } }),
        ));
        assert_eq!(
            pick_static_pv(&claim, &with_pre, &n1)
                .expect("pv")
                .metadata
                .name
                .as_deref(),
            Some("mine")
        );

        // Selector.
        let labelled = vec![
            pv(
                "l",
                "10Gi",
                json!({ "metadata": { "labels": { "tier": "fast" } } }),
            ),
            pv("u", "10Gi", json!({})),
        ];
        let sel = pvc(
            "1Gi",
            json!({ "spec": { "selector": { "matchLabels": { "tier": "fast" } } } }),
        );
        assert_eq!(
            pick_static_pv(&sel, &labelled, &n1)
                .expect("pv")
                .metadata
                .name
                .as_deref(),
            Some("l")
        );

        let huge = pvc("1Ti", json!({}));
        let err = pick_static_pv(&huge, &pvs, &n1).unwrap_err();
        assert!(
            err.starts_with(
                "no Available PersistentVolume of StorageClass local-ssd with 1 TiB fits on node n1"
            ),
            "{err}"
        );
        assert!(err.contains("5 too small"), "{err}");
        let only_elsewhere = vec![pvs[5].clone(), pvs[4].clone()];
        let err = pick_static_pv(&claim, &only_elsewhere, &n1).unwrap_err();
        assert!(
            err.ends_with("(1 already claimed or not Available, 1 for other nodes)"),
            "{err}"
        );
    }

    #[test]
    fn requests_and_sources() {
        let c = pvc("1.5Gi", json!({}));
        assert_eq!(claim_request(&c), Some(3 << 29));
        let p = pv("a", "10Gi", json!({}));
        assert_eq!(pv_capacity(&p), Some(10 << 30));
        assert_eq!(pv_source(&p), PvSource::Local("/mnt/disks/a"));
        let h = pv(
            "h",
            "1Gi",
            json!({ "spec": { "local": null, "hostPath": { "path": "/data" } } }),
        );
        assert_eq!(pv_source(&h), PvSource::HostPath("/data"));
        let r = pv(
            "r",
            "1Gi",
            json!({ "spec": { "local": null, "csi": { "driver": "x", "volumeHandle": "y" } } }),
        );
        assert_eq!(pv_source(&r), PvSource::Remote);
    }
}
