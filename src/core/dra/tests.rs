use serde_json::{Value, json};

use super::*;
use crate::gpu::{Gpu, Health};

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn node() -> Node {
    from(json!({"metadata": {"name": "n1", "labels": {"zone": "a", "gpus": "8"}}}))
}

fn alloc(node_sel: Value, results: Value) -> AllocationResult {
    from(json!({"nodeSelector": node_sel, "devices": {"results": results}}))
}

fn here() -> Value {
    json!({"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]})
}

fn gpu_result(device: &str) -> Value {
    json!([{"request": "gpu", "driver": "gpu.example.com", "pool": "n1", "device": device}])
}

fn slice(spec: Value) -> ResourceSlice {
    from(json!({"metadata": {"name": "s"}, "spec": spec}))
}

fn local_slice() -> ResourceSlice {
    slice(json!({
        "driver": "gpu.example.com", "nodeName": "n1",
        "pool": {"name": "n1", "generation": 1, "resourceSliceCount": 1},
        "devices": [
            {"name": "gpu-0", "attributes": {"gpu.example.com/uuid": {"string": "GPU-0"}}},
            {"name": "gpu-1", "attributes": {"uuid": {"string": "GPU-1"}}},
            {"name": "nic-0"}
        ]
    }))
}

fn snapshot(healthy: &[(&str, bool)]) -> GpuSnapshot {
    GpuSnapshot {
        source: "test".into(),
        state: InventoryState::Available,
        taken_at: String::new(),
        gpus: healthy
            .iter()
            .enumerate()
            .map(|(i, (uuid, ok))| Gpu {
                index: i as u32,
                uuid: uuid.to_string(),
                health: Health {
                    healthy: *ok,
                    reason: if *ok { String::new() } else { "XID 79".into() },
                    since: None,
                },
                ..Default::default()
            })
            .collect(),
    }
}

#[test]
fn claim_names() {
    let pod: Pod = from(json!({
        "metadata": {"name": "p"},
        "spec": {"containers": [], "resourceClaims": [
            {"name": "direct", "resourceClaimName": "c1"},
            {"name": "tmpl", "resourceClaimTemplateName": "t"},
            {"name": "pending", "resourceClaimTemplateName": "t"},
            {"name": "neither"}
        ]},
        "status": {"resourceClaimStatuses": [{"name": "tmpl", "resourceClaimName": "p-tmpl-x7k2q"}]}
    }));
    let cases: &[(&str, Result<&str, &str>)] = &[
        ("direct", Ok("c1")),
        ("tmpl", Ok("p-tmpl-x7k2q")),
        ("pending", Err("not been generated yet")),
        ("neither", Err("neither a claim nor a template")),
        ("absent", Err("no spec.resourceClaims entry")),
    ];
    for (entry, want) in cases {
        match (claim_name(&pod, entry), want) {
            (Ok(got), Ok(w)) => assert_eq!(got, *w, "{entry}"),
            (Err(got), Err(w)) => assert!(got.contains(w), "{entry}: {got}"),
            (got, w) => panic!("{entry}: got {got:?}, want {w:?}"),
        }
    }
}

#[test]
fn node_selectors() {
    let n = node();
    let cases = [
        (here(), true),
        (
            json!({"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]}]}),
            false,
        ),
        (
            json!({"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}),
            true,
        ),
        (
            json!({"nodeSelectorTerms": [{"matchExpressions": [{"key": "gpus", "operator": "Gt", "values": ["4"]}]}]}),
            true,
        ),
        (
            json!({"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]}, {}]}),
            false,
        ),
        (json!({"nodeSelectorTerms": []}), false),
    ];
    for (sel, want) in cases {
        let s: NodeSelector = from(sel.clone());
        assert_eq!(node_selector_matches(&s, &n), want, "{sel}");
    }
}

#[test]
fn allocation_verification() {
    let n = node();
    let net_slice = slice(json!({
        "driver": "net.example.com", "allNodes": true,
        "pool": {"name": "fabric", "generation": 1, "resourceSliceCount": 1},
        "devices": [{"name": "port-3"}]
    }));
    let other_node_slice = slice(json!({
        "driver": "gpu.example.com", "nodeName": "n2",
        "pool": {"name": "n2", "generation": 1, "resourceSliceCount": 1},
        "devices": [{"name": "gpu-0"}]
    }));
    let per_device = slice(json!({
        "driver": "fpga.example.com", "perDeviceNodeSelection": true,
        "pool": {"name": "rack", "generation": 1, "resourceSliceCount": 1},
        "devices": [{"name": "f0", "nodeName": "n1"}, {"name": "f1", "nodeName": "n2"}]
    }));
    let slices = vec![local_slice(), net_slice, other_node_slice, per_device];
    let healthy = snapshot(&[("GPU-0", true), ("GPU-1", false)]);
    let elsewhere = snapshot(&[("GPU-7", true)]);
    type Case<'a> = (
        &'a str,
        AllocationResult,
        Option<&'a GpuSnapshot>,
        Result<usize, &'a str>,
    );
    let cases: Vec<Case> = vec![
        ("local gpu", alloc(here(), gpu_result("gpu-0")), None, Ok(2)),
        (
            "no selector",
            alloc(Value::Null, gpu_result("gpu-0")),
            None,
            Ok(2),
        ),
        (
            "other node",
            alloc(
                json!({"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]}]}),
                gpu_result("gpu-0"),
            ),
            None,
            Err("does not select node n1"),
        ),
        (
            "absent device",
            alloc(here(), gpu_result("gpu-9")),
            None,
            Err("is not published for node n1"),
        ),
        (
            "unknown pool",
            alloc(
                here(),
                json!([{"request": "r", "driver": "gpu.example.com", "pool": "nope", "device": "gpu-0"}]),
            ),
            None,
            Err("publishes pool nope"),
        ),
        (
            "pool of another node",
            alloc(
                here(),
                json!([{"request": "r", "driver": "gpu.example.com", "pool": "n2", "device": "gpu-0"}]),
            ),
            None,
            Err("is not published for node n1"),
        ),
        (
            "all-nodes pool",
            alloc(
                here(),
                json!([{"request": "r", "driver": "net.example.com", "pool": "fabric", "device": "port-3"}]),
            ),
            None,
            Ok(2),
        ),
        (
            "per-device here",
            alloc(
                here(),
                json!([{"request": "r", "driver": "fpga.example.com", "pool": "rack", "device": "f0"}]),
            ),
            None,
            Ok(2),
        ),
        (
            "per-device elsewhere",
            alloc(
                here(),
                json!([{"request": "r", "driver": "fpga.example.com", "pool": "rack", "device": "f1"}]),
            ),
            None,
            Err("not published"),
        ),
        (
            "healthy gpu",
            alloc(here(), gpu_result("gpu-0")),
            Some(&healthy),
            Ok(2),
        ),
        (
            "unhealthy gpu",
            alloc(here(), gpu_result("gpu-1")),
            Some(&healthy),
            Err("GPU GPU-1 is unhealthy"),
        ),
        (
            "gpu not in inventory",
            alloc(here(), gpu_result("gpu-0")),
            Some(&elsewhere),
            Err("not in this node's GPU inventory"),
        ),
        (
            "no uuid attribute",
            alloc(here(), gpu_result("nic-0")),
            Some(&healthy),
            Ok(2),
        ),
    ];
    for (what, a, gpus, want) in cases {
        match (verify_allocation("c", &a, &n, &slices, gpus), want) {
            (Ok(lines), Ok(k)) => assert_eq!(lines.len(), k, "{what}: {lines:?}"),
            (Err(e), Err(w)) => assert!(e.contains(w), "{what}: {e}"),
            (got, w) => panic!("{what}: got {got:?}, want {w:?}"),
        }
    }
    // An unavailable inventory does not refuse: the slices are the node's word.
    let down = GpuSnapshot::unavailable("test", "no driver");
    assert!(
        verify_allocation(
            "c",
            &alloc(here(), gpu_result("gpu-1")),
            &n,
            &slices,
            Some(&down)
        )
        .is_ok()
    );
}

fn claim(status: Value) -> ResourceClaim {
    from(
        json!({"metadata": {"name": "c", "namespace": "ns", "resourceVersion": "5"}, "spec": {}, "status": status}),
    )
}

fn others(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"resource": "pods", "name": format!("o{i}"), "uid": format!("u{i}")}))
        .collect()
}

#[test]
fn reservations() {
    let a = alloc(here(), gpu_result("gpu-0"));
    let a_json = serde_json::to_value(&a).unwrap();
    let mut stamped = a_json.clone();
    stamped["allocationTimestamp"] = json!("2026-01-01T00:00:00Z");
    let other = serde_json::to_value(alloc(here(), gpu_result("gpu-1"))).unwrap();
    let me = json!({"resource": "pods", "name": "p", "uid": "uid-p"});
    #[derive(Debug)]
    enum Want {
        Already,
        Write { sets: bool, consumers: usize },
        Refuse(&'static str),
    }
    let cases = vec![
        (
            "fresh",
            json!({}),
            Want::Write {
                sets: true,
                consumers: 1,
            },
        ),
        (
            "allocated equal",
            json!({"allocation": a_json}),
            Want::Write {
                sets: false,
                consumers: 1,
            },
        ),
        (
            "timestamp differs only",
            json!({"allocation": stamped}),
            Want::Write {
                sets: false,
                consumers: 1,
            },
        ),
        (
            "shared",
            json!({"allocation": a_json, "reservedFor": others(2)}),
            Want::Write {
                sets: false,
                consumers: 3,
            },
        ),
        (
            "allocated differently",
            json!({"allocation": other}),
            Want::Refuse("allocated differently"),
        ),
        (
            "retry",
            json!({"allocation": a_json, "reservedFor": [me]}),
            Want::Already,
        ),
        (
            "reserved, unallocated",
            json!({"reservedFor": [me]}),
            Want::Refuse("no allocation"),
        ),
        (
            "full",
            json!({"allocation": a_json, "reservedFor": others(256)}),
            Want::Refuse("256"),
        ),
        (
            "one below full",
            json!({"allocation": a_json, "reservedFor": others(255)}),
            Want::Write {
                sets: false,
                consumers: 256,
            },
        ),
    ];
    for (what, status, want) in cases {
        let got = plan_reservation(&claim(status), &a, "p", "uid-p");
        match (&got, &want) {
            (Reservation::AlreadyReserved, Want::Already) => {}
            (
                Reservation::Write {
                    status,
                    sets_allocation,
                },
                Want::Write { sets, consumers },
            ) => {
                assert_eq!(sets_allocation, sets, "{what}");
                let r = status.reserved_for.as_deref().unwrap();
                assert_eq!(r.len(), *consumers, "{what}");
                assert_eq!(r.last().unwrap().uid, "uid-p", "{what}");
                assert!(
                    same_allocation(status.allocation.as_ref().unwrap(), &a),
                    "{what}"
                );
            }
            (Reservation::Refuse(m), Want::Refuse(w)) => assert!(m.contains(w), "{what}: {m}"),
            _ => panic!("{what}: got {got:?}, want {want:?}"),
        }
    }
    let mut deleting = claim(json!({}));
    deleting.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
    );
    assert!(matches!(
        plan_reservation(&deleting, &a, "p", "uid-p"),
        Reservation::Refuse(_)
    ));
}

#[test]
fn releases() {
    let a = serde_json::to_value(alloc(here(), gpu_result("gpu-0"))).unwrap();
    let me = json!({"resource": "pods", "name": "p", "uid": "uid-p"});
    // (case, status, we wrote the allocation, Some((allocation kept, consumers left)) or None)
    let cases = vec![
        (
            "ours alone, wrote alloc",
            json!({"allocation": a, "reservedFor": [me]}),
            true,
            Some((false, 0)),
        ),
        (
            "ours alone, found alloc",
            json!({"allocation": a, "reservedFor": [me]}),
            false,
            Some((true, 0)),
        ),
        (
            "someone joined since",
            json!({"allocation": a, "reservedFor": [me, others(1)[0]]}),
            true,
            Some((true, 1)),
        ),
        (
            "already released",
            json!({"allocation": a, "reservedFor": others(1)}),
            false,
            None,
        ),
        (
            "released, alloc left by us",
            json!({"allocation": a}),
            true,
            Some((false, 0)),
        ),
        ("nothing at all", json!({}), true, None),
    ];
    for (what, status, wrote, want) in cases {
        let got = plan_release(&claim(status), "uid-p", wrote);
        match (got, want) {
            (None, None) => {}
            (Some(s), Some((kept, left))) => {
                assert_eq!(s.allocation.is_some(), kept, "{what}");
                assert_eq!(s.reserved_for.map_or(0, |r| r.len()), left, "{what}");
            }
            (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn gpu_inventory_is_consulted_only_for_devices_with_a_uuid() {
    let n = node();
    let slices = vec![local_slice()];
    let two = |a: &str, b: &str| {
        json!([
            {"request": "a", "driver": "gpu.example.com", "pool": "n1", "device": a},
            {"request": "b", "driver": "gpu.example.com", "pool": "n1", "device": b}
        ])
    };
    let cases = [
        ("prefixed uuid attribute", gpu_result("gpu-0"), true),
        ("plain uuid attribute", gpu_result("gpu-1"), true),
        ("no attributes", gpu_result("nic-0"), false),
        ("device not in the slices", gpu_result("gpu-9"), false),
        ("one of two names a GPU", two("nic-0", "gpu-1"), true),
    ];
    for (what, results, want) in cases {
        assert_eq!(
            names_gpus(&alloc(here(), results), &n, &slices),
            want,
            "{what}"
        );
    }
}
