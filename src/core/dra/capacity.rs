//! Consumable capacity (KEP-5075) and partitionable devices (KEP-4815), both beta in
//! Kubernetes 1.36, checked from this node's own view before a claim is reserved.
//!
//! - A device with `allowMultipleAllocations: true` is shared by several claims; each
//!   allocation result says how much of the device's `capacity` it takes in
//!   `consumedCapacity` (with a `shareID`). The sum over every claim allocated on the device
//!   must stay within each capacity's value.
//! - A device with `consumesCounters` draws on a counter set its pool publishes in
//!   `sharedCounters` (a ResourceSlice of the same driver and pool). The sum over the
//!   allocated devices of the pool must stay within each counter's value; a device shared by
//!   several claims draws once (the scheduler's allocator counts a device, not its shares:
//!   kubernetes `staging/src/k8s.io/dynamic-resource-allocation/structured`).
//!
//! Only allocations that name such devices are checked ([`needs_capacity_check`]), so a
//! plain claim costs nothing more.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::{
    AllocationResult, Device, DeviceRequestAllocationResult, ResourceClaim, ResourceSlice,
};

use super::find_device;
use crate::api::quantity::{self, Nanos};

/// `driver/pool/device`.
type DeviceId = (String, String, String);

fn results(alloc: &AllocationResult) -> &[DeviceRequestAllocationResult] {
    alloc
        .devices
        .as_ref()
        .and_then(|d| d.results.as_deref())
        .unwrap_or(&[])
}

fn id(r: &DeviceRequestAllocationResult) -> DeviceId {
    (r.driver.clone(), r.pool.clone(), r.device.clone())
}

fn shared(d: &Device) -> bool {
    d.allow_multiple_allocations == Some(true)
}

fn consumes(d: &Device) -> bool {
    d.consumes_counters.as_ref().is_some_and(|c| !c.is_empty())
}

/// Whether `alloc` names a shared device or a partition (found in `slices`), so that the
/// other claims on this node's devices must be read to check it.
pub fn needs_capacity_check<S: Borrow<ResourceSlice>>(
    alloc: &AllocationResult,
    node: &Node,
    slices: &[S],
) -> bool {
    results(alloc).iter().any(|r| {
        find_device(slices, &r.driver, &r.pool, &r.device, node)
            .is_ok_and(|d| shared(d) || consumes(d))
    })
}

fn parse(what: &str, q: &str) -> Result<Nanos, String> {
    quantity::parse(q).map_err(|_| format!("{what}: invalid quantity \"{q}\""))
}

fn show(v: Nanos) -> String {
    // Capacities are mostly bytes; `format` shows binary suffixes only when exact.
    quantity::format("memory", v)
}

/// Checks that the claims already allocated on the devices `alloc` names (`others`, the
/// claim itself excluded by `claim_uid`) plus `alloc` stay within the shared devices'
/// capacity and the pools' counters. `Ok`: one line per checked figure; `Err`: the
/// refusal with the figures.
pub fn check_capacity<S: Borrow<ResourceSlice>, C: Borrow<ResourceClaim>>(
    claim: &str,
    claim_uid: &str,
    alloc: &AllocationResult,
    node: &Node,
    slices: &[S],
    others: &[C],
) -> Result<Vec<String>, String> {
    let other_results: Vec<(&str, &DeviceRequestAllocationResult)> = others
        .iter()
        .map(Borrow::borrow)
        .filter(|c| c.metadata.uid.as_deref() != Some(claim_uid))
        .filter_map(|c| {
            let name = c.metadata.name.as_deref().unwrap_or("");
            c.status.as_ref()?.allocation.as_ref().map(|a| (name, a))
        })
        .flat_map(|(name, a)| results(a).iter().map(move |r| (name, r)))
        .collect();
    let mut lines = Vec::new();
    let mut checked_devices = BTreeSet::new();
    let mut pools = BTreeSet::new();
    for r in results(alloc) {
        let Ok(device) = find_device(slices, &r.driver, &r.pool, &r.device, node) else {
            continue;
        };
        if consumes(device) {
            pools.insert((r.driver.clone(), r.pool.clone()));
        }
        if !shared(device) || !checked_devices.insert(id(r)) {
            continue;
        }
        let label = format!("{}/{}/{}", r.driver, r.pool, r.device);
        let mine: Vec<&DeviceRequestAllocationResult> =
            results(alloc).iter().filter(|x| id(x) == id(r)).collect();
        let theirs: Vec<&(&str, &DeviceRequestAllocationResult)> = other_results
            .iter()
            .filter(|(_, x)| id(x) == id(r))
            .collect();
        let holders: BTreeSet<&str> = theirs.iter().map(|(n, _)| *n).collect();
        for (cap_name, cap) in device.capacity.iter().flatten() {
            let limit = parse(&format!("device {label} capacity {cap_name}"), &cap.value.0)?;
            let sum = |rs: &mut dyn Iterator<Item = &DeviceRequestAllocationResult>| {
                rs.filter_map(|x| x.consumed_capacity.as_ref()?.get(cap_name))
                    .map(|q| parse(&format!("consumedCapacity {cap_name}"), &q.0))
                    .sum::<Result<Nanos, String>>()
            };
            let used = sum(&mut theirs.iter().map(|(_, x)| *x))?;
            let wanted = sum(&mut mine.iter().copied())?;
            let total = used + wanted;
            let figures = format!(
                "{} used by {} other claim(s) + {} for this claim = {} of {}",
                show(used),
                holders.len(),
                show(wanted),
                show(total),
                show(limit)
            );
            if total > limit {
                return Err(format!(
                    "claim {claim}: device {label} capacity {cap_name} exceeded: {figures}"
                ));
            }
            lines.push(format!(
                "claim {claim}: device {label} capacity {cap_name}: {figures}"
            ));
        }
    }
    for (driver, pool) in pools {
        lines.extend(check_counters(
            claim,
            &driver,
            &pool,
            alloc,
            &other_results,
            node,
            slices,
        )?);
    }
    Ok(lines)
}

/// The counters of one pool: every distinct device allocated in it (by the others or by
/// `alloc`) draws its `consumesCounters` once.
fn check_counters<S: Borrow<ResourceSlice>>(
    claim: &str,
    driver: &str,
    pool: &str,
    alloc: &AllocationResult,
    others: &[(&str, &DeviceRequestAllocationResult)],
    node: &Node,
    slices: &[S],
) -> Result<Vec<String>, String> {
    let in_pool = |r: &&DeviceRequestAllocationResult| r.driver == driver && r.pool == pool;
    let mine: BTreeSet<DeviceId> = results(alloc).iter().filter(in_pool).map(id).collect();
    let theirs: BTreeSet<DeviceId> = others
        .iter()
        .map(|(_, r)| *r)
        .filter(in_pool)
        .map(id)
        .filter(|d| !mine.contains(d))
        .collect();
    // counter set -> counter -> (limit)
    let mut limits: BTreeMap<(String, String), Nanos> = BTreeMap::new();
    for s in slices {
        let spec = &s.borrow().spec;
        if spec.driver != driver || spec.pool.name != pool {
            continue;
        }
        for set in spec.shared_counters.iter().flatten() {
            for (counter, v) in &set.counters {
                let what = format!("counter set {} counter {counter}", set.name);
                limits.insert(
                    (set.name.clone(), counter.clone()),
                    parse(&what, &v.value.0)?,
                );
            }
        }
    }
    let draw = |ids: &BTreeSet<DeviceId>| -> Result<BTreeMap<(String, String), Nanos>, String> {
        let mut out = BTreeMap::new();
        for (drv, pl, dev) in ids {
            let Ok(d) = find_device(slices, drv, pl, dev, node) else {
                continue;
            };
            for c in d.consumes_counters.iter().flatten() {
                for (counter, v) in &c.counters {
                    let what = format!("device {dev} counter {counter}");
                    *out.entry((c.counter_set.clone(), counter.clone()))
                        .or_insert(0) += parse(&what, &v.value.0)?;
                }
            }
        }
        Ok(out)
    };
    let (used, wanted) = (draw(&theirs)?, draw(&mine)?);
    let mut lines = Vec::new();
    for (key, want) in &wanted {
        let (set, counter) = key;
        let Some(limit) = limits.get(key) else {
            return Err(format!(
                "claim {claim}: pool {driver}/{pool} publishes no counter {counter} in counter set {set} (sharedCounters)"
            ));
        };
        let have = used.get(key).copied().unwrap_or(0);
        let total = have + want;
        let figures = format!(
            "{} drawn by {} other allocated device(s) + {} for this claim = {} of {}",
            show(have),
            theirs.len(),
            show(*want),
            show(total),
            show(*limit)
        );
        if total > *limit {
            return Err(format!(
                "claim {claim}: pool {driver}/{pool} counter {set}/{counter} exceeded: {figures}"
            ));
        }
        lines.push(format!(
            "claim {claim}: pool {driver}/{pool} counter {set}/{counter}: {figures}"
        ));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn node() -> Node {
        serde_json::from_value(json!({ "metadata": { "name": "n1" } })).expect("node")
    }

    fn slices() -> Vec<ResourceSlice> {
        let s = |name: &str, spec: Value| -> ResourceSlice {
            let mut spec = spec;
            spec["driver"] = json!("d");
            spec["nodeName"] = json!("n1");
            spec["pool"] = json!({ "name": "n1", "generation": 1, "resourceSliceCount": 2 });
            serde_json::from_value(json!({ "metadata": { "name": name }, "spec": spec }))
                .expect("slice")
        };
        vec![
            s(
                "counters",
                json!({ "sharedCounters": [
                { "name": "gpu-0-mem", "counters": { "memory": { "value": "80Gi" } } }
            ] }),
            ),
            s(
                "devices",
                json!({ "devices": [
                { "name": "shared", "allowMultipleAllocations": true,
                  "capacity": { "memory": { "value": "64Gi" } } },
                { "name": "part-a", "consumesCounters": [
                    { "counterSet": "gpu-0-mem", "counters": { "memory": { "value": "40Gi" } } } ] },
                { "name": "part-b", "consumesCounters": [
                    { "counterSet": "gpu-0-mem", "counters": { "memory": { "value": "40Gi" } } } ] },
                { "name": "part-c", "consumesCounters": [
                    { "counterSet": "gpu-0-mem", "counters": { "memory": { "value": "20Gi" } } } ] },
                { "name": "plain" }
            ] }),
            ),
        ]
    }

    fn result(device: &str, mem: Option<&str>) -> Value {
        let mut r = json!({ "request": "r", "driver": "d", "pool": "n1", "device": device });
        if let Some(m) = mem {
            r["consumedCapacity"] = json!({ "memory": m });
            r["shareID"] = json!(format!("{:x}", m.len()));
        }
        r
    }

    fn alloc(rs: Vec<Value>) -> AllocationResult {
        serde_json::from_value(json!({ "devices": { "results": rs } })).expect("alloc")
    }

    fn claim(name: &str, rs: Vec<Value>) -> ResourceClaim {
        serde_json::from_value(json!({
            "metadata": { "name": name, "uid": format!("uid-{name}") },
            "spec": {},
            "status": { "allocation": { "devices": { "results": rs } } }
        }))
        .expect("claim")
    }

    #[test]
    fn only_shared_devices_and_partitions_need_the_check() {
        let (n, s) = (node(), slices());
        assert!(!needs_capacity_check(
            &alloc(vec![result("plain", None)]),
            &n,
            &s
        ));
        assert!(needs_capacity_check(
            &alloc(vec![result("shared", Some("1Gi"))]),
            &n,
            &s
        ));
        assert!(needs_capacity_check(
            &alloc(vec![result("part-a", None)]),
            &n,
            &s
        ));
    }

    #[test]
    fn capacity_and_counter_table() {
        let (n, s) = (node(), slices());
        type Case<'a> = (
            &'a str,
            Vec<Value>,
            Vec<ResourceClaim>,
            Result<&'a str, &'a str>,
        );
        let cases: Vec<Case> = vec![
            (
                "fits beside another share",
                vec![result("shared", Some("30Gi"))],
                vec![claim("a", vec![result("shared", Some("30Gi"))])],
                Ok(
                    "capacity memory: 30Gi used by 1 other claim(s) + 30Gi for this claim = 60Gi of 64Gi",
                ),
            ),
            (
                "exceeds with the figures",
                vec![result("shared", Some("40Gi"))],
                vec![
                    claim("a", vec![result("shared", Some("20Gi"))]),
                    claim("b", vec![result("shared", Some("10Gi"))]),
                ],
                Err(
                    "device d/n1/shared capacity memory exceeded: 30Gi used by 2 other claim(s) + 40Gi for this claim = 70Gi of 64Gi",
                ),
            ),
            (
                "the claim itself is not counted twice",
                vec![result("shared", Some("40Gi"))],
                vec![claim("self", vec![result("shared", Some("40Gi"))])],
                Ok("0 used by 0 other claim(s) + 40Gi for this claim = 40Gi of 64Gi"),
            ),
            (
                "partitions within the counter",
                vec![result("part-a", None)],
                vec![claim("a", vec![result("part-b", None)])],
                Ok(
                    "counter gpu-0-mem/memory: 40Gi drawn by 1 other allocated device(s) + 40Gi for this claim = 80Gi of 80Gi",
                ),
            ),
            (
                "partitions over the counter",
                vec![result("part-c", None)],
                vec![
                    claim("a", vec![result("part-a", None)]),
                    claim("b", vec![result("part-b", None)]),
                ],
                Err(
                    "counter gpu-0-mem/memory exceeded: 80Gi drawn by 2 other allocated device(s) + 20Gi for this claim = 100Gi of 80Gi",
                ),
            ),
            (
                "a device held by two claims draws once",
                vec![result("part-c", None)],
                vec![
                    claim("a", vec![result("part-a", None)]),
                    claim("b", vec![result("part-a", None)]),
                ],
                Ok(
                    "40Gi drawn by 1 other allocated device(s) + 20Gi for this claim = 60Gi of 80Gi",
                ),
            ),
            (
                "plain devices: nothing to check",
                vec![result("plain", None)],
                vec![claim("a", vec![result("plain", None)])],
                Ok(""),
            ),
        ];
        for (why, mine, others, want) in cases {
            let got = check_capacity("ns/self", "uid-self", &alloc(mine), &n, &s, &others);
            match (want, got) {
                (Ok(""), Ok(lines)) => assert!(lines.is_empty(), "{why}: {lines:?}"),
                (Ok(part), Ok(lines)) => {
                    assert!(lines.iter().any(|l| l.contains(part)), "{why}: {lines:?}")
                }
                (Err(part), Err(e)) => assert!(e.contains(part), "{why}: {e}"),
                (w, g) => panic!("{why}: want {w:?}, got {g:?}"),
            }
        }
    }
}
