use super::*;
use crate::api::podresources::{ContainerDevices, ContainerMemory, ContainerResources};
use crate::gpu::{Gpu, Health, InventoryState};

fn facts() -> NumaFacts {
    let node = |cpus: std::ops::RangeInclusive<u32>, gib: u64| NumaNode {
        cpus: cpus.collect(),
        memory_bytes: gib << 30,
    };
    NumaFacts {
        nodes: [(0, node(0..=7, 64)), (1, node(8..=15, 64))].into(),
        gpu_nodes: [
            ("GPU-0".to_string(), 0),
            ("GPU-1".to_string(), 0),
            ("GPU-2".to_string(), 1),
            ("GPU-3".to_string(), 1),
        ]
        .into(),
    }
}

fn gpus(unhealthy: &[&str]) -> GpuSnapshot {
    GpuSnapshot {
        source: "test".into(),
        state: InventoryState::Available,
        taken_at: String::new(),
        gpus: (0..4)
            .map(|i| {
                let uuid = format!("GPU-{i}");
                let healthy = !unhealthy.contains(&uuid.as_str());
                Gpu {
                    index: i,
                    uuid,
                    health: Health {
                        healthy,
                        reason: if healthy {
                            String::new()
                        } else {
                            "XID 79".into()
                        },
                        ..Default::default()
                    },
                    ..Default::default()
                }
            })
            .collect(),
    }
}

fn zone(z: &str, amounts: &[(&str, &str)]) -> NumaZonePlacement {
    NumaZonePlacement {
        zone: z.into(),
        amount: amounts
            .iter()
            .map(|(r, q)| (r.to_string(), QuantityValue::String(q.to_string())))
            .collect(),
    }
}

fn pod(
    ns: &str,
    name: &str,
    gpus: &[(&str, &[i64])],
    cpus: &[i64],
    mem: &[(u64, &[i64])],
) -> PodResources {
    PodResources {
        namespace: ns.into(),
        name: name.into(),
        containers: vec![ContainerResources {
            name: "main".into(),
            devices: gpus
                .iter()
                .map(|(id, numa)| ContainerDevices {
                    resource_name: GPU_RESOURCE.into(),
                    device_ids: vec![id.to_string()],
                    numa_nodes: numa.to_vec(),
                })
                .collect(),
            cpu_ids: cpus.to_vec(),
            memory: mem
                .iter()
                .map(|(size, numa)| ContainerMemory {
                    memory_type: "memory".into(),
                    size: *size,
                    numa_nodes: numa.to_vec(),
                })
                .collect(),
        }],
    }
}

#[test]
fn zone_ids_are_node_and_the_numa_id() {
    assert_eq!(zone_id(3), "node-3");
    assert_eq!(parse_zone_id("node-12"), Some(12));
    for bad in ["node-", "node-1a", "socket-0", "Node-0", "node--1", ""] {
        assert_eq!(parse_zone_id(bad), None, "{bad}");
    }
}

#[test]
fn canonical_decimal_matches_kubernetes_quantity_strings() {
    let n = |units: i128| units * UNIT;
    for (v, want) in [
        (n(0), "0"),
        (n(8), "8"),
        (n(1000), "1k"),
        (n(1500), "1500"),
        (n(2_000_000_000), "2G"),
        (n(1 << 30), "1073741824"),
        (UNIT / 2, "500m"),
        (-n(3000), "-3k"),
    ] {
        assert_eq!(canonical_decimal(v), want);
    }
}

#[test]
fn observed_placement_is_written_as_kai_reads_it() {
    // The example of KAI's exporter: two GPUs and eight CPUs on node-0.
    let cpu_nodes = facts().cpu_nodes();
    let p = pod(
        "ml",
        "train",
        &[
            ("GPU-0", &[0]),
            ("GPU-1", &[0]),
            ("GPU-9", &[0, 1]),
            ("GPU-8", &[]),
        ],
        &[0, 1, 2, 3, 4, 5, 6, 7, 99],
        &[(1 << 30, &[1]), (5, &[0, 1])],
    );
    let placement = observed(&p, &cpu_nodes);
    assert_eq!(
        annotation_value(&placement),
        r#"[{"zone":"node-0","amount":{"cpu":"8","nvidia.com/gpu":"2"}},{"zone":"node-1","amount":{"memory":"1073741824"}}]"#,
        "devices and memory on several or no NUMA nodes, and CPUs of no node, are skipped"
    );
    assert!(observed(&pod("a", "b", &[("GPU-8", &[])], &[], &[]), &cpu_nodes).is_empty());
}

#[test]
fn zones_are_sorted_as_strings_like_kai() {
    let mut p = Placement::new();
    for z in ["node-2", "node-10", "node-1"] {
        p.entry(z.into()).or_default().insert("cpu".into(), UNIT);
    }
    let v = annotation_value(&p);
    let order: Vec<usize> = ["node-1\"", "node-10", "node-2"]
        .iter()
        .map(|z| v.find(z).expect("zone written"))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{v}");
}

/// One row of the verdict table: prediction, unhealthy GPUs, other pods, mode → outcome
/// and text the message must hold.
struct Case {
    name: &'static str,
    predicted: Vec<NumaZonePlacement>,
    unhealthy: &'static [&'static str],
    others: Vec<PodResources>,
    mode: CheckMode,
    want: Option<(VerdictOutcome, &'static str)>,
}

#[test]
fn verdicts_over_the_prediction() {
    let cases = [
        Case {
            name: "fits",
            predicted: vec![zone(
                "node-0",
                &[("nvidia.com/gpu", "2"), ("cpu", "4"), ("memory", "32Gi")],
            )],
            unhealthy: &[],
            others: vec![],
            mode: CheckMode::Enforce,
            want: Some((
                VerdictOutcome::Pass,
                "node-0 nvidia.com/gpu: predicted 2, free 2 of 2",
            )),
        },
        Case {
            name: "a zone this node does not have",
            predicted: vec![
                zone("node-0", &[("cpu", "1")]),
                zone("node-3", &[("cpu", "1")]),
            ],
            unhealthy: &[],
            others: vec![],
            mode: CheckMode::Enforce,
            want: Some((
                VerdictOutcome::Fail,
                "zone(s) node-3 do not exist on this node (it has node-0, node-1)",
            )),
        },
        Case {
            name: "GPUs held by another pod on the zone",
            predicted: vec![zone("node-1", &[("nvidia.com/gpu", "2")])],
            unhealthy: &[],
            others: vec![pod("ml", "other", &[("GPU-2", &[1])], &[], &[])],
            mode: CheckMode::Enforce,
            want: Some((
                VerdictOutcome::Fail,
                "node-1 nvidia.com/gpu: predicted 2, free 1 of 2",
            )),
        },
        Case {
            name: "an unhealthy GPU does not count",
            predicted: vec![zone("node-0", &[("nvidia.com/gpu", "2")])],
            unhealthy: &["GPU-1"],
            others: vec![],
            mode: CheckMode::Enforce,
            want: Some((VerdictOutcome::Fail, "predicted 2, free 1 of 1")),
        },
        Case {
            name: "warn mode records the mismatch",
            predicted: vec![zone("node-0", &[("cpu", "9")])],
            unhealthy: &[],
            others: vec![],
            mode: CheckMode::Warn,
            want: Some((VerdictOutcome::Warn, "node-0 cpu: predicted 9, free 8 of 8")),
        },
        Case {
            name: "exclusive CPUs of other pods",
            predicted: vec![zone("node-0", &[("cpu", "6")])],
            unhealthy: &[],
            others: vec![pod("ml", "pinned", &[], &[0, 1, 2, 9], &[])],
            mode: CheckMode::Enforce,
            want: Some((VerdictOutcome::Fail, "node-0 cpu: predicted 6, free 5 of 8")),
        },
        Case {
            name: "the pod's own assignment is not held by others",
            predicted: vec![zone("node-0", &[("nvidia.com/gpu", "2")])],
            unhealthy: &[],
            others: vec![pod(
                "ml",
                "self",
                &[("GPU-0", &[0]), ("GPU-1", &[0])],
                &[],
                &[],
            )],
            mode: CheckMode::Enforce,
            want: Some((VerdictOutcome::Pass, "free 2 of 2")),
        },
        Case {
            name: "resources the node cannot measure are listed",
            predicted: vec![zone("node-1", &[("example.com/nic", "1")])],
            unhealthy: &[],
            others: vec![],
            mode: CheckMode::Enforce,
            want: Some((
                VerdictOutcome::Pass,
                "not measured on this node: example.com/nic",
            )),
        },
        Case {
            name: "an invalid amount",
            predicted: vec![zone("node-1", &[("cpu", "lots")])],
            unhealthy: &[],
            others: vec![],
            mode: CheckMode::Enforce,
            want: Some((
                VerdictOutcome::Fail,
                "invalid predicted amounts: node-1 cpu",
            )),
        },
        Case {
            name: "off",
            predicted: vec![zone("node-9", &[("cpu", "1")])],
            unhealthy: &[],
            others: vec![],
            mode: CheckMode::Off,
            want: None,
        },
        Case {
            name: "no prediction",
            predicted: vec![],
            unhealthy: &[],
            others: vec![],
            mode: CheckMode::Enforce,
            want: None,
        },
    ];
    let f = facts();
    for c in cases {
        let snap = gpus(c.unhealthy);
        let used = used_by_others(&c.others, "ml", "self", &f.cpu_nodes());
        let view = NodeView {
            facts: Ok(&f),
            gpus: Some(&snap),
            used: Ok(&used),
        };
        let got = verify(&c.predicted, &view, c.mode);
        match c.want {
            None => assert!(got.is_empty(), "{}: {got:?}", c.name),
            Some((outcome, text)) => {
                assert_eq!(got.len(), 1, "{}: {got:?}", c.name);
                assert_eq!(got[0].outcome, outcome, "{}: {}", c.name, got[0].message);
                assert!(
                    got[0].message.contains(text),
                    "{}: {}",
                    c.name,
                    got[0].message
                );
            }
        }
    }
}

#[test]
fn unreadable_topology_or_kubelet_answer_is_said() {
    let predicted = vec![zone("node-0", &[("cpu", "1")])];
    let v = verify(
        &predicted,
        &NodeView {
            facts: Err("cannot read /sys/devices/system/node"),
            gpus: None,
            used: Err("unused"),
        },
        CheckMode::Enforce,
    );
    assert_eq!(v[0].outcome, VerdictOutcome::Fail);
    assert!(v[0].message.contains("cannot check"), "{}", v[0].message);

    let f = facts();
    let v = verify(
        &predicted,
        &NodeView {
            facts: Ok(&f),
            gpus: None,
            used: Err("no socket"),
        },
        CheckMode::Enforce,
    );
    assert_eq!(v[0].outcome, VerdictOutcome::Pass);
    assert!(
        v[0].message
            .contains("unknown (no socket), so free is the zone's capacity"),
        "{}",
        v[0].message
    );
}
