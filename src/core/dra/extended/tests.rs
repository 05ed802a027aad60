use serde_json::{Value, json};

use super::*;

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

const UID: &str = "4ebea256-4420-4d15-9ac4-83fa12504032";

fn pod() -> Pod {
    from(json!({
        "metadata": {"name": "p-gpu", "namespace": "ns", "uid": UID},
        "spec": {
            "initContainers": [{"name": "init", "resources": {"limits": {"example.com/gpu": "1"}}}],
            "containers": [
                {"name": "c", "resources": {"requests": {"example.com/gpu": "1"}, "limits": {"example.com/gpu": "1"}}},
                {"name": "plain"}
            ]
        }
    }))
}

fn alloc_json(request: &str) -> Value {
    json!({
        "devices": {"results": [{"request": request, "driver": "gpu.example.com", "pool": "n1", "device": "gpu-0"}]},
        "nodeSelector": {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]}
    })
}

fn spec(v: Value) -> ExtendedResourceClaimAllocation {
    from(v)
}

fn good_spec() -> Value {
    json!({
        "allocation": alloc_json("container-0-request-0"),
        "deviceRequests": [{"name": "container-0-request-0", "exactly": {"deviceClassName": "gpu"}}],
        "containerMappings": [{"containerName": "c", "requestName": "container-0-request-0", "resourceName": "example.com/gpu"}]
    })
}

fn request() -> ExtendedRequest {
    parse_request(&spec(good_spec()), &pod()).unwrap()
}

#[test]
fn parse_request_checks_the_scheduler_input_against_the_pod() {
    let with = |path: &str, v: Value| {
        let mut s = good_spec();
        *s.pointer_mut(path).unwrap() = v;
        s
    };
    let cases: Vec<(&str, Value, Result<(), &str>)> = vec![
        ("valid", good_spec(), Ok(())),
        (
            "init container mapping",
            with(
                "/containerMappings",
                json!([{"containerName": "init", "requestName": "container-0-request-0", "resourceName": "example.com/gpu"}]),
            ),
            Ok(()),
        ),
        (
            "firstAvailable result names request/sub",
            with("/allocation", alloc_json("container-0-request-0/a100")),
            Ok(()),
        ),
        (
            "no allocation",
            with("/allocation", Value::Null),
            Err("has no allocation"),
        ),
        (
            "no requests",
            with("/deviceRequests", json!([])),
            Err("has no deviceRequests"),
        ),
        (
            "duplicate request",
            with(
                "/deviceRequests",
                json!([{"name": "r", "exactly": {"deviceClassName": "gpu"}}, {"name": "r", "exactly": {"deviceClassName": "gpu"}}]),
            ),
            Err("appears twice"),
        ),
        (
            "device for an unknown request",
            with("/allocation", alloc_json("other")),
            Err("is for request other, which deviceRequests does not have"),
        ),
        (
            "no mappings",
            with("/containerMappings", json!([])),
            Err("has no containerMappings"),
        ),
        (
            "mapping to an unknown request",
            with("/containerMappings/0/requestName", json!("nope")),
            Err("to request nope, which deviceRequests does not have"),
        ),
        (
            "mapping to an unknown container",
            with("/containerMappings/0/containerName", json!("ghost")),
            Err("the pod has no container ghost"),
        ),
        (
            "container without the resource",
            with("/containerMappings/0/containerName", json!("plain")),
            Err("container plain does not request example.com/gpu"),
        ),
        (
            "bad timestamp",
            with("/allocation", {
                let mut a = alloc_json("container-0-request-0");
                a["allocationTimestamp"] = json!("yesterday");
                a
            }),
            Err("invalid allocation"),
        ),
    ];
    for (what, s, want) in cases {
        let got = parse_request(&spec(s), &pod());
        match (want, got) {
            (Ok(()), Ok(r)) => {
                assert_eq!(r.requests.len(), 1, "{what}");
                assert_eq!(r.mappings.len(), 1, "{what}");
            }
            (Err(frag), Err(e)) => assert!(e.contains(frag), "{what}: {e}"),
            (want, got) => panic!("{what}: want {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn claim_names_are_derived_from_the_pod_uid() {
    let a = claim_name("p-gpu", UID);
    assert!(a.starts_with("p-gpu-extended-resources-"), "{a}");
    assert_eq!(a.len(), "p-gpu-extended-resources-".len() + 5);
    assert_eq!(a, claim_name("p-gpu", UID), "stable across calls");
    assert_ne!(
        a,
        claim_name("p-gpu", "another-uid"),
        "a recreated pod gets another name"
    );
    assert!(
        a["p-gpu-extended-resources-".len()..]
            .bytes()
            .all(|b| NAME_ALPHABET.contains(&b))
    );
    // Long pod names are cut like the apiserver's name generator cuts generateName.
    let long = claim_name(&"x".repeat(200), UID);
    assert_eq!(long.len(), 63);
    assert!(long.starts_with(&"x".repeat(58)));
}

fn claim(v: Value) -> ResourceClaim {
    from(v)
}

fn ours() -> Value {
    let mut c = serde_json::to_value(new_claim("ns", "p-gpu", UID, &request())).unwrap();
    c["metadata"]["uid"] = json!("claim-uid");
    c
}

#[test]
fn a_new_claim_is_what_kai_and_kube_scheduler_create() {
    let c = new_claim("ns", "p-gpu", UID, &request());
    assert_eq!(c.metadata.name, Some(claim_name("p-gpu", UID)));
    assert_eq!(c.metadata.namespace.as_deref(), Some("ns"));
    assert_eq!(
        c.metadata.finalizers,
        Some(vec![DELETE_PROTECTION_FINALIZER.to_string()])
    );
    let o = &c.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (o.kind.as_str(), o.uid.as_str(), o.controller),
        ("Pod", UID, Some(true))
    );
    assert_eq!(o.block_owner_deletion, Some(true));
    assert!(belongs_to_pod(&c, UID));
    assert!(!belongs_to_pod(&c, "other-uid"));
    assert_eq!(
        c.spec.devices.unwrap().requests.unwrap()[0].name,
        "container-0-request-0"
    );
}

#[test]
fn plan_claim_decides_create_use_remove_or_refuse() {
    let req = request();
    let with = |path: &str, v: Value| {
        let mut c = ours();
        match c.pointer_mut(path) {
            Some(x) => *x = v,
            None => {
                let (parent, key) = path.rsplit_once('/').unwrap();
                c.pointer_mut(parent).unwrap()[key] = v;
            }
        }
        claim(c)
    };
    let reserved_for =
        |uid: &str| json!({"reservedFor": [{"resource": "pods", "name": "x", "uid": uid}]});
    let mut allocated_here = alloc_json("container-0-request-0");
    allocated_here["allocationTimestamp"] = json!("2026-11-29T16:53:13Z");
    let cases: Vec<(&str, Option<ResourceClaim>, &str)> = vec![
        ("none yet", None, "create"),
        ("ours", Some(claim(ours())), "use"),
        (
            "ours, allocated the same (timestamp aside) and reserved for the pod",
            Some(with(
                "/status",
                json!({"allocation": allocated_here, "reservedFor": [{"resource": "pods", "name": "p-gpu", "uid": UID}]}),
            )),
            "use",
        ),
        (
            "ours with requests written without the defaults the server adds",
            Some(with(
                "/spec/devices/requests/0/exactly",
                json!({"deviceClassName": "gpu", "allocationMode": "ExactCount", "count": 1}),
            )),
            "use",
        ),
        (
            "ours, being deleted",
            Some(with(
                "/metadata/deletionTimestamp",
                json!("2026-11-29T16:53:13Z"),
            )),
            "remove:is being deleted",
        ),
        (
            "ours, other requests",
            Some(with("/spec/devices/requests/0/exactly/count", json!(2))),
            "remove:asks for other devices",
        ),
        (
            "ours, allocated differently",
            Some(with(
                "/status",
                json!({"allocation": alloc_json("container-0-request-0").as_object().map(|o| {
                    let mut o = o.clone();
                    o["devices"]["results"][0]["device"] = json!("gpu-1");
                    Value::Object(o)
                })}),
            )),
            "remove:allocated differently",
        ),
        (
            "ours, reserved for another pod",
            Some(with("/status", reserved_for("someone-else"))),
            "refuse:reserved for other consumers",
        ),
        (
            "no annotation",
            Some(with("/metadata/annotations", json!({}))),
            "refuse:is not the pod's extended-resource claim",
        ),
        (
            "owned by another pod",
            Some(with("/metadata/ownerReferences/0/uid", json!("other"))),
            "refuse:is not the pod's",
        ),
        (
            "owner is not the controller",
            Some(with("/metadata/ownerReferences/0/controller", json!(false))),
            "refuse:is not the pod's",
        ),
    ];
    for (what, found, want) in cases {
        let got = plan_claim(found.as_ref(), "ns", "p-gpu", UID, &req);
        let ok = match (&got, want.split_once(':')) {
            (ClaimPlan::Create(c), None) => want == "create" && belongs_to_pod(c, UID),
            (ClaimPlan::Use, None) => want == "use",
            (ClaimPlan::RemoveStale(why), Some(("remove", frag))) => why.contains(frag),
            (ClaimPlan::Refuse(why), Some(("refuse", frag))) => why.contains(frag),
            _ => false,
        };
        assert!(ok, "{what}: want {want}, got {got:?}");
    }
}

#[test]
fn our_finalizer_is_removed_and_others_kept() {
    let c = claim(ours());
    assert_eq!(without_our_finalizer(&c), Some(vec![]));
    let mut v = ours();
    v["metadata"]["finalizers"] = json!(["example.com/keep", DELETE_PROTECTION_FINALIZER]);
    assert_eq!(
        without_our_finalizer(&claim(v)),
        Some(vec!["example.com/keep".to_string()])
    );
    let mut v = ours();
    v["metadata"]["finalizers"] = json!(["example.com/keep"]);
    assert_eq!(without_our_finalizer(&claim(v)), None, "nothing to remove");
}

#[test]
fn pod_status_is_written_only_when_it_differs() {
    let req = request();
    let mut p = pod();
    let want = plan_pod_status(&p, "c1", &req.mappings).expect("unset: write");
    assert_eq!(want.resource_claim_name, "c1");
    assert_eq!(want.request_mappings, req.mappings);
    assert!(!pod_status_names(&p, "c1"));
    p.status = Some(k8s_openapi::api::core::v1::PodStatus {
        extended_resource_claim_status: Some(want),
        ..Default::default()
    });
    assert_eq!(plan_pod_status(&p, "c1", &req.mappings), None, "already so");
    assert!(pod_status_names(&p, "c1"));
    assert!(
        plan_pod_status(&p, "c2", &req.mappings).is_some(),
        "another claim: rewritten"
    );
    assert!(
        plan_pod_status(&p, "c1", &[]).is_some(),
        "other mappings: rewritten"
    );
}
