use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::gpu::verdict::tests::{gpu, snap};
use VerdictOutcome::*;

const NS: &str = "kai-resource-reservation";

fn scope() -> ReservationScope {
    ReservationScope {
        namespace: NS.into(),
        app_label: "kai-resource-reservation".into(),
    }
}

fn pod(v: Value) -> Pod {
    serde_json::from_value(v).expect("pod")
}

/// A reservation pod of `group`, created `age_s` seconds before `t0()`.
fn reservation(name: &str, group: &str, age_s: i64, gpu: Option<&str>, phase: &str) -> Pod {
    let mut annotations = json!({});
    if let Some(g) = gpu {
        annotations[RESERVED_GPU_ANNOTATION] = json!(g);
    }
    pod(json!({
        "metadata": {
            "name": name, "namespace": NS, "uid": format!("uid-{name}"),
            "creationTimestamp": t0().checked_sub(jiff::SignedDuration::from_secs(age_s)).unwrap().to_string(),
            "labels": { APP_LABEL: "kai-resource-reservation", GPU_GROUP_LABEL: group },
            "annotations": annotations
        },
        "status": { "phase": phase, "reason": "UnexpectedAdmissionError", "message": "no GPU" }
    }))
}

fn member(name: &str, labels: Value, annotations: Value, phase: &str) -> Pod {
    pod(json!({
        "metadata": { "name": name, "namespace": "team", "uid": format!("uid-{name}"), "labels": labels, "annotations": annotations },
        "status": { "phase": phase }
    }))
}

fn t0() -> jiff::Timestamp {
    "2026-11-23T12:00:00Z".parse().unwrap()
}

#[test]
fn pods_sort_into_reservations_and_members() {
    let pods = vec![
        reservation("r1", "g1", 60, Some("GPU-1"), "Running"),
        // Same namespace, no app label: an ordinary member pod, not a reservation.
        pod(
            json!({ "metadata": { "name": "look-alike", "namespace": NS, "uid": "u-la",
            "labels": { GPU_GROUP_LABEL: "g1" }, "annotations": { FRACTION_ANNOTATION: "0.5" } } }),
        ),
        member(
            "a",
            json!({ GPU_GROUP_LABEL: "g1" }),
            json!({ PORTION_ANNOTATION: "0.25" }),
            "Running",
        ),
        member(
            "multi",
            json!({ "runai-gpu-group/g1": "g1", "runai-gpu-group/g2": "g2" }),
            json!({ GPU_MEMORY_ANNOTATION: "2048" }),
            "Pending",
        ),
        member(
            "done",
            json!({ GPU_GROUP_LABEL: "g1" }),
            json!({}),
            "Succeeded",
        ),
        member("plain", json!({ "app": "x" }), json!({}), "Running"),
    ];
    let g = node_groups(&pods, &scope());
    assert_eq!(g.reservations_of("g1").len(), 1);
    assert_eq!(
        g.reservations_of("g1")[0].annotated_gpu.as_deref(),
        Some("GPU-1")
    );
    let names =
        |grp: &str| -> Vec<String> { g.members_of(grp).iter().map(|m| m.name.clone()).collect() };
    assert_eq!(names("g1"), ["look-alike", "a", "multi"]);
    assert_eq!(names("g2"), ["multi"]);
    let shares: Vec<Option<Share>> = g.members_of("g1").iter().map(|m| m.share).collect();
    assert_eq!(
        shares,
        [
            Some(Share::Portion(0.5)),
            Some(Share::Portion(0.25)),
            Some(Share::MemoryMiB(2048))
        ]
    );
}

#[test]
fn labels_follow_kai_for_single_and_multi_fraction_pods() {
    assert_eq!(
        group_label("g", false),
        ("runai-gpu-group".to_string(), "g".to_string())
    );
    assert_eq!(
        group_label("g", true),
        ("runai-gpu-group/g".to_string(), "g".to_string())
    );
    let p = |a: Value| pod(json!({ "metadata": { "name": "p", "annotations": a } }));
    assert!(!is_multi_fraction(&p(json!({})), 1));
    assert!(is_multi_fraction(&p(json!({})), 2));
    assert!(is_multi_fraction(
        &p(json!({ NUM_DEVICES_ANNOTATION: "2" })),
        1
    ));
    assert!(!is_multi_fraction(
        &p(json!({ NUM_DEVICES_ANNOTATION: "1" })),
        1
    ));
}

#[test]
fn reservation_step_table() {
    let assigned: Assignments = [(format!("{NS}/r-new"), vec!["GPU-7".to_string()])].into();
    // (pods, assigned, expected)
    let ready = |pod: &str, gpu: &str, source| ReservationStep::Ready {
        pod: pod.into(),
        uid: format!("uid-{pod}"),
        gpu: gpu.into(),
        source,
    };
    let cases: Vec<(Vec<Pod>, Option<&Assignments>, ReservationStep)> = vec![
        (vec![], None, ReservationStep::Create),
        (
            vec![reservation("r", "g", 5, Some("GPU-1"), "Running")],
            None,
            ready("r", "GPU-1", GpuSource::Annotation),
        ),
        // The kubelet's answer wins over the annotation (it is what the pod really got).
        (
            vec![reservation("r-new", "g", 5, Some("GPU-1"), "Running")],
            Some(&assigned),
            ready("r-new", "GPU-7", GpuSource::PodResources),
        ),
        (
            vec![reservation("r-new", "g", 5, None, "Pending")],
            Some(&assigned),
            ready("r-new", "GPU-7", GpuSource::PodResources),
        ),
        (
            vec![reservation("r", "g", 5, None, "Pending")],
            Some(&assigned),
            ReservationStep::Wait {
                pod: "r".into(),
                uid: "uid-r".into(),
            },
        ),
        (
            vec![reservation("r", "g", 5, None, "Failed")],
            None,
            ReservationStep::Refused {
                pod: "r".into(),
                uid: "uid-r".into(),
                message: "UnexpectedAdmissionError: no GPU".into(),
            },
        ),
        // A refused one beside a live one: wait for the live one.
        (
            vec![
                reservation("bad", "g", 50, None, "Failed"),
                reservation("r", "g", 5, None, "Pending"),
            ],
            None,
            ReservationStep::Wait {
                pod: "r".into(),
                uid: "uid-r".into(),
            },
        ),
        // Two with GPUs (a past race): the oldest is the group's.
        (
            vec![
                reservation("young", "g", 5, Some("GPU-2"), "Running"),
                reservation("old", "g", 500, Some("GPU-3"), "Running"),
            ],
            None,
            ready("old", "GPU-3", GpuSource::Annotation),
        ),
        // Another group's reservation does not count.
        (
            vec![reservation("r", "other", 5, Some("GPU-1"), "Running")],
            None,
            ReservationStep::Create,
        ),
    ];
    for (i, (pods, assigned, want)) in cases.into_iter().enumerate() {
        let g = node_groups(&pods, &scope());
        assert_eq!(
            reservation_step("g", &g, &scope(), assigned),
            want,
            "case {i}"
        );
    }
    // Being deleted: as good as gone.
    let mut p = reservation("r", "g", 5, Some("GPU-1"), "Running");
    p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let g = node_groups(&[p], &scope());
    assert_eq!(
        reservation_step("g", &g, &scope(), None),
        ReservationStep::Create
    );
}

fn others(shares: &[Option<Share>]) -> Vec<Member> {
    shares
        .iter()
        .enumerate()
        .map(|(i, s)| Member {
            namespace: "team".into(),
            name: format!("m{i}"),
            uid: format!("u{i}"),
            share: *s,
        })
        .collect()
}

#[test]
fn share_table() {
    let s = snap(vec![gpu(0, true, 0), gpu(1, false, 0), gpu(2, true, 70)]);
    let p = |x| Some(Share::Portion(x));
    // (gpu, portion, others, outcomes, text)
    type Case<'a> = (
        &'a str,
        f64,
        Vec<Option<Share>>,
        Vec<VerdictOutcome>,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "GPU-0",
            0.5,
            vec![],
            vec![Pass],
            "0 other pod(s) hold 0 MiB",
        ),
        (
            "GPU-0",
            0.4,
            vec![p(0.25), p(0.25)],
            vec![Pass],
            "hold 40960 MiB",
        ),
        // 0.5 + 0.5 of 80 GiB is all of it, but the driver keeps 512 MiB.
        (
            "GPU-0",
            0.5,
            vec![p(0.5)],
            vec![Fail],
            "driver-reserved 512 MiB",
        ),
        (
            "GPU-0",
            0.49,
            vec![p(0.5)],
            vec![Pass],
            "portion 0.49 needs 40140 MiB",
        ),
        (
            "GPU-0",
            0.5,
            vec![Some(Share::MemoryMiB(50 * 1024))],
            vec![Fail],
            "hold 51200 MiB",
        ),
        // An unknown share is named, not guessed.
        ("GPU-0", 0.5, vec![None], vec![Pass], "share unknown"),
        ("GPU-1", 0.1, vec![], vec![Fail], "unhealthy: XID 79"),
        ("GPU-9", 0.1, vec![], vec![Fail], "does not have"),
        // Fits by shares, but 70 GiB are in use now: a neighbour overuses its share.
        (
            "GPU-2",
            0.5,
            vec![p(0.25)],
            vec![Pass, Warn],
            "hold 20480 MiB",
        ),
    ];
    for (gpu_id, portion, o, want, text) in cases {
        let v = share_verdicts("g", gpu_id, portion, &others(&o), &s, CheckMode::Enforce);
        let got: Vec<VerdictOutcome> = v.iter().map(|v| v.outcome).collect();
        assert_eq!(got, want, "{gpu_id} {portion}: {v:?}");
        assert!(
            v[0].message.contains(text),
            "{gpu_id} {portion}: {}",
            v[0].message
        );
    }
    let v = share_verdicts("g", "GPU-0", 0.5, &others(&[p(0.5)]), &s, CheckMode::Warn);
    assert_eq!(v[0].outcome, Warn);
    assert!(share_verdicts("g", "GPU-0", 0.5, &[], &s, CheckMode::Off).is_empty());
    let down = GpuSnapshot::unavailable("nvml", "DriverNotLoaded");
    let v = share_verdicts("g", "GPU-0", 0.5, &[], &down, CheckMode::Enforce);
    assert_eq!(v[0].outcome, Fail);
    assert!(v[0].message.contains("DriverNotLoaded"), "{}", v[0].message);
}

#[test]
fn configmaps_follow_kai_names_and_keys() {
    let with = |env: Value| {
        pod(json!({
            "metadata": { "name": "p", "annotations": { CONFIGMAP_ANNOTATION: "train-x1y2z3a-shared-gpu" } },
            "spec": { "containers": [ { "name": "c", "env": env } ] }
        }))
    };
    let plain = with(json!([]));
    let got = configmaps(&plain, &["GPU-a".into()], "0.50", false).expect("plans");
    assert_eq!(got[0].name, "train-x1y2z3a-shared-gpu-0");
    assert_eq!(got[1].name, "train-x1y2z3a-shared-gpu-0-evar");
    // GPU_PORTION and RUNAI_NUM_OF_GPUS in the capabilities map, where KAI's webhook wires
    // both (non-optional); the env map gets the devices the container does not read there.
    assert_eq!(
        got[0].data,
        BTreeMap::from([
            (NUM_OF_GPUS.into(), "0.50".into()),
            (GPU_PORTION.into(), "0.50".into())
        ])
    );
    assert_eq!(
        got[1].data,
        BTreeMap::from([(VISIBLE_DEVICES.into(), "GPU-a".into())])
    );
    // The webhook wired NVIDIA_VISIBLE_DEVICES to the capabilities map: it goes there.
    let wired = with(
        json!([{ "name": VISIBLE_DEVICES, "valueFrom": { "configMapKeyRef": {
        "name": "train-x1y2z3a-shared-gpu-0", "key": VISIBLE_DEVICES } } }]),
    );
    let got = configmaps(&wired, &["GPU-a".into(), "GPU-b".into()], "0.5", true).unwrap();
    assert_eq!(
        got[0].data.get(VISIBLE_DEVICES).map(String::as_str),
        Some("k8s.device-plugin.nvidia.com/gpu=GPU-a,k8s.device-plugin.nvidia.com/gpu=GPU-b")
    );
    assert!(!got[1].data.contains_key(VISIBLE_DEVICES));
    let bare = pod(json!({ "metadata": { "name": "p" }, "spec": { "containers": [] } }));
    let e = configmaps(&bare, &[], "0.5", false).unwrap_err();
    assert!(e.contains(CONFIGMAP_ANNOTATION), "{e}");
}

#[test]
fn configmaps_are_per_gpu_container() {
    let with = |annotation: Option<&str>| {
        let mut annotations = json!({ CONFIGMAP_ANNOTATION: "job-x1y2z3a-shared-gpu" });
        if let Some(name) = annotation {
            annotations[FRACTION_CONTAINER_ANNOTATION] = json!(name);
        }
        pod(json!({
            "metadata": { "name": "p", "annotations": annotations },
            "spec": {
                "initContainers": [ { "name": "setup" }, { "name": "warmup" } ],
                "containers": [ { "name": "main" }, { "name": "sidecar" }, { "name": "trainer" } ]
            }
        }))
    };
    // name, gpu-fraction-container-name, capabilities map (the env map adds -evar)
    let cases = [
        (
            "no annotation: the first container",
            None,
            "job-x1y2z3a-shared-gpu-0",
        ),
        (
            "a later container",
            Some("trainer"),
            "job-x1y2z3a-shared-gpu-2",
        ),
        (
            "an init container: -i<index>",
            Some("warmup"),
            "job-x1y2z3a-shared-gpu-i1",
        ),
        (
            "the first init container",
            Some("setup"),
            "job-x1y2z3a-shared-gpu-i0",
        ),
    ];
    for (name, annotation, capabilities) in cases {
        let got = configmaps(&with(annotation), &["GPU-a".into()], "0.5", false)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got[0].name, capabilities, "{name}");
        assert_eq!(got[1].name, format!("{capabilities}-evar"), "{name}");
        assert_eq!(
            got[0].data.get(GPU_PORTION).map(String::as_str),
            Some("0.5"),
            "{name}"
        );
    }
    let e = configmaps(&with(Some("nope")), &[], "0.5", false).unwrap_err();
    assert!(
        e.contains("\"nope\"") && e.contains(FRACTION_CONTAINER_ANNOTATION),
        "{e}"
    );

    // The chosen container's own wiring decides where the devices go.
    let wired_init = pod(json!({
        "metadata": { "name": "p", "annotations": {
            CONFIGMAP_ANNOTATION: "job-shared-gpu", FRACTION_CONTAINER_ANNOTATION: "warmup" } },
        "spec": {
            "initContainers": [ { "name": "warmup", "env": [ { "name": VISIBLE_DEVICES,
                "valueFrom": { "configMapKeyRef": { "name": "job-shared-gpu-i0", "key": VISIBLE_DEVICES } } } ] } ],
            "containers": [ { "name": "main" } ]
        }
    }));
    let got = configmaps(&wired_init, &["GPU-a".into()], "0.5", false).expect("plans");
    assert_eq!(got[0].name, "job-shared-gpu-i0");
    assert_eq!(
        got[0].data.get(VISIBLE_DEVICES).map(String::as_str),
        Some("GPU-a")
    );
    assert!(got[1].data.is_empty());
}

#[test]
fn merged_data_keeps_other_keys_and_the_old_devices_key() {
    let plan = ConfigMapPlan {
        name: "m".into(),
        data: BTreeMap::from([
            (VISIBLE_DEVICES.into(), "GPU-b".into()),
            (GPU_PORTION.into(), "0.5".into()),
        ]),
    };
    let existing = BTreeMap::from([
        ("OTHER".to_string(), "x".to_string()),
        (OLD_VISIBLE_DEVICES.to_string(), "GPU-a".to_string()),
        (GPU_PORTION.to_string(), "0.25".to_string()),
    ]);
    let got = merged_data(&existing, &plan);
    assert_eq!(
        got,
        BTreeMap::from([
            ("OTHER".to_string(), "x".to_string()),
            (OLD_VISIBLE_DEVICES.to_string(), "GPU-b".to_string()),
            (VISIBLE_DEVICES.to_string(), "GPU-b".to_string()),
            (GPU_PORTION.to_string(), "0.5".to_string()),
        ])
    );
    let fresh = merged_data(&BTreeMap::new(), &plan);
    assert!(
        !fresh.contains_key(OLD_VISIBLE_DEVICES),
        "only where the map has it"
    );
}

#[test]
fn collection_table() {
    let grace = Duration::from_secs(30);
    let live = member(
        "user",
        json!({ GPU_GROUP_LABEL: "used" }),
        json!({}),
        "Running",
    );
    let pods = vec![
        reservation("r-unused", "unused", 60, Some("GPU-1"), "Running"),
        reservation("r-young", "young", 10, None, "Pending"),
        reservation("r-used", "used", 60, Some("GPU-2"), "Running"),
        reservation("r-pending", "pending", 60, Some("GPU-3"), "Running"),
        reservation("r-busy", "busy", 60, Some("GPU-4"), "Running"),
        reservation("r-refused", "used", 60, None, "Failed"),
        live,
    ];
    let g = node_groups(&pods, &scope());
    let pending = BTreeSet::from(["pending".to_string()]);
    let busy = BTreeSet::from(["busy".to_string()]);
    let got: Vec<(String, String)> = collect(&g, &pending, &busy, t0(), grace)
        .into_iter()
        .map(|c| (c.pod, c.why))
        .collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].0, "r-unused");
    assert!(
        got[0]
            .1
            .contains("no pod on this node uses GPU group unused")
    );
    assert_eq!(got[1].0, "r-refused");
    assert!(got[1].1.contains("refused"), "{}", got[1].1);
    // Once its pod finished, the used group's reservation goes too.
    let finished: Vec<Pod> = pods
        .iter()
        .map(|p| {
            let mut p = p.clone();
            if p.metadata.name.as_deref() == Some("user") {
                p.status.as_mut().unwrap().phase = Some("Succeeded".into());
            }
            p
        })
        .collect();
    let g = node_groups(&finished, &scope());
    let got: Vec<String> = collect(&g, &pending, &busy, t0(), grace)
        .into_iter()
        .map(|c| c.pod)
        .collect();
    assert_eq!(got, ["r-unused", "r-used", "r-refused"]);
}
