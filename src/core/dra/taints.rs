//! Device taints at bind time (KEP-5055, `DRADeviceTaints`, beta in Kubernetes 1.36).
//!
//! A ResourceSlice device may carry `taints`, and DeviceTaintRule objects may add more to
//! the devices they select. The scheduler checks them when it allocates, but a driver can
//! taint a device afterwards (marking it unhealthy), so the bind re-checks the allocated
//! devices against the slices as they are now. The allocation result carries a copy of the
//! request's `tolerations`; those are what the pod may tolerate.
//!
//! The matching rule is the one of `k8s.io/api/resource/v1` `DeviceToleration` (the same
//! as a pod's toleration of a node taint, kubernetes `staging/src/k8s.io/api/resource/v1/
//! types.go`): an empty effect matches every effect; operator `Exists` with an empty key
//! matches every taint; `Exists` ignores the value; `Equal` (the default) compares it.
//! Effects `NoSchedule` and `NoExecute` refuse an untolerated device; `None` only informs.

use std::borrow::Borrow;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::{
    AllocationResult, DeviceRequestAllocationResult, DeviceTaint, DeviceToleration, ResourceSlice,
};

use super::find_device;

/// A taint a DeviceTaintRule puts on the devices its selector names (unset fields of the
/// selector match every driver, pool or device).
#[derive(Debug, Clone, PartialEq)]
pub struct RuleTaint {
    /// The DeviceTaintRule's name, to say where a taint comes from.
    pub rule: String,
    pub driver: Option<String>,
    pub pool: Option<String>,
    pub device: Option<String>,
    pub taint: DeviceTaint,
}

impl RuleTaint {
    fn selects(&self, r: &DeviceRequestAllocationResult) -> bool {
        let is = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        is(&self.driver, &r.driver) && is(&self.pool, &r.pool) && is(&self.device, &r.device)
    }
}

/// Whether `tol` tolerates `taint`.
pub fn tolerates(tol: &DeviceToleration, taint: &DeviceTaint) -> bool {
    let effect = tol.effect.as_deref().unwrap_or("");
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = tol.key.as_deref().unwrap_or("");
    match tol.operator.as_deref().unwrap_or("Equal") {
        "Exists" => key.is_empty() || key == taint.key,
        "Equal" => {
            key == taint.key
                && tol.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

/// `key=value:effect`, as kubectl prints a taint.
pub fn describe(t: &DeviceTaint) -> String {
    match t.value.as_deref().filter(|v| !v.is_empty()) {
        Some(v) => format!("{}={v}:{}", t.key, t.effect),
        None => format!("{}:{}", t.key, t.effect),
    }
}

/// Checks every allocated device's taints (its slice's and the rules') against the
/// tolerations the allocation carries. `Ok`: one line per device that has taints (none
/// for untainted devices, so claims without taints add nothing); `Err`: the refusal,
/// naming the device and the taint. Devices not found in `slices` are left to
/// [`super::verify_allocation`], which refuses them.
pub fn check_device_taints<S: Borrow<ResourceSlice>>(
    claim: &str,
    alloc: &AllocationResult,
    node: &Node,
    slices: &[S],
    rules: &[RuleTaint],
) -> Result<Vec<String>, String> {
    let mut lines = Vec::new();
    for r in alloc
        .devices
        .as_ref()
        .and_then(|d| d.results.as_deref())
        .unwrap_or(&[])
    {
        let Ok(device) = find_device(slices, &r.driver, &r.pool, &r.device, node) else {
            continue;
        };
        let tolerations = r.tolerations.as_deref().unwrap_or(&[]);
        let from_slice = device
            .taints
            .iter()
            .flatten()
            .map(|t| (t, "ResourceSlice".to_string()));
        let from_rules = rules
            .iter()
            .filter(|rule| rule.selects(r))
            .map(|rule| (&rule.taint, format!("DeviceTaintRule {}", rule.rule)));
        let mut notes = Vec::new();
        for (taint, source) in from_slice.chain(from_rules) {
            let tolerated = tolerations.iter().any(|tol| tolerates(tol, taint));
            let id = format!("{}/{}/{}", r.driver, r.pool, r.device);
            match (taint.effect.as_str(), tolerated) {
                (_, true) => notes.push(format!("{} ({source}) tolerated", describe(taint))),
                ("NoSchedule" | "NoExecute", false) => {
                    return Err(format!(
                        "claim {claim}: device {id} has taint {} ({source}) that the allocation does not tolerate",
                        describe(taint)
                    ));
                }
                // `None` (and effects this version does not know) inform only.
                _ => notes.push(format!("{} ({source}) is informational", describe(taint))),
            }
        }
        if !notes.is_empty() {
            lines.push(format!(
                "claim {claim}: device {}/{}/{} taints: {}",
                r.driver,
                r.pool,
                r.device,
                notes.join(", ")
            ));
        }
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn taint(key: &str, value: Option<&str>, effect: &str) -> DeviceTaint {
        DeviceTaint {
            key: key.into(),
            value: value.map(str::to_string),
            effect: effect.into(),
            time_added: None,
        }
    }

    fn tol(
        key: Option<&str>,
        op: Option<&str>,
        value: Option<&str>,
        effect: Option<&str>,
    ) -> DeviceToleration {
        DeviceToleration {
            key: key.map(str::to_string),
            operator: op.map(str::to_string),
            value: value.map(str::to_string),
            effect: effect.map(str::to_string),
            toleration_seconds: None,
        }
    }

    #[test]
    fn toleration_matching_table() {
        let t = taint("example.com/unhealthy", Some("true"), "NoSchedule");
        let cases = [
            (
                tol(Some("example.com/unhealthy"), None, Some("true"), None),
                true,
                "Equal by default, any effect",
            ),
            (
                tol(
                    Some("example.com/unhealthy"),
                    Some("Equal"),
                    Some("false"),
                    None,
                ),
                false,
                "value differs",
            ),
            (
                tol(Some("example.com/unhealthy"), Some("Exists"), None, None),
                true,
                "Exists ignores the value",
            ),
            (
                tol(None, Some("Exists"), None, None),
                true,
                "empty key with Exists matches all",
            ),
            (
                tol(None, Some("Exists"), None, Some("NoExecute")),
                false,
                "effect differs",
            ),
            (
                tol(
                    Some("example.com/unhealthy"),
                    Some("Exists"),
                    None,
                    Some("NoSchedule"),
                ),
                true,
                "same effect",
            ),
            (
                tol(Some("other"), Some("Exists"), None, None),
                false,
                "key differs",
            ),
            (
                tol(None, None, None, None),
                false,
                "empty key with Equal matches only an empty key",
            ),
            (
                tol(
                    Some("example.com/unhealthy"),
                    Some("Gt"),
                    Some("true"),
                    None,
                ),
                false,
                "unknown operator",
            ),
        ];
        for (tol, want, why) in cases {
            assert_eq!(tolerates(&tol, &t), want, "{why}");
        }
    }

    fn node(name: &str) -> Node {
        serde_json::from_value(json!({ "metadata": { "name": name } })).expect("node")
    }

    fn slice(taints: serde_json::Value) -> ResourceSlice {
        serde_json::from_value(json!({
            "metadata": { "name": "s" },
            "spec": {
                "driver": "d", "nodeName": "n1",
                "pool": { "name": "n1", "generation": 1, "resourceSliceCount": 1 },
                "devices": [ { "name": "gpu-0", "taints": taints }, { "name": "gpu-1" } ]
            }
        }))
        .expect("slice")
    }

    fn alloc(device: &str, tolerations: serde_json::Value) -> AllocationResult {
        serde_json::from_value(json!({ "devices": { "results": [
            { "request": "r", "driver": "d", "pool": "n1", "device": device, "tolerations": tolerations }
        ] } }))
        .expect("alloc")
    }

    #[test]
    fn bind_time_verdicts() {
        let n = node("n1");
        let unhealthy =
            json!([{ "key": "example.com/unhealthy", "value": "true", "effect": "NoSchedule" }]);
        let evict = json!([{ "key": "example.com/broken", "effect": "NoExecute" }]);
        let info = json!([{ "key": "example.com/degraded", "effect": "None" }]);
        let tolerate_unhealthy = json!([{ "key": "example.com/unhealthy", "operator": "Exists" }]);
        let rule = RuleTaint {
            rule: "maintenance".into(),
            driver: Some("d".into()),
            pool: None,
            device: Some("gpu-1".into()),
            taint: taint("example.com/maintenance", None, "NoExecute"),
        };
        type Case<'a> = (
            &'a str,
            serde_json::Value,
            &'a str,
            serde_json::Value,
            Vec<RuleTaint>,
            Result<&'a str, &'a str>,
        );
        let cases: Vec<Case> = vec![
            (
                "untainted device: no line",
                json!(null),
                "gpu-0",
                json!(null),
                vec![],
                Ok(""),
            ),
            (
                "untolerated NoSchedule refuses, naming the taint",
                unhealthy.clone(),
                "gpu-0",
                json!(null),
                vec![],
                Err(
                    "device d/n1/gpu-0 has taint example.com/unhealthy=true:NoSchedule (ResourceSlice) that the allocation does not tolerate",
                ),
            ),
            (
                "tolerated NoSchedule passes",
                unhealthy.clone(),
                "gpu-0",
                tolerate_unhealthy.clone(),
                vec![],
                Ok("example.com/unhealthy=true:NoSchedule (ResourceSlice) tolerated"),
            ),
            (
                "untolerated NoExecute refuses",
                evict,
                "gpu-0",
                tolerate_unhealthy.clone(),
                vec![],
                Err("example.com/broken:NoExecute"),
            ),
            (
                "None is informational",
                info,
                "gpu-0",
                json!(null),
                vec![],
                Ok("example.com/degraded:None (ResourceSlice) is informational"),
            ),
            (
                "a rule's taint refuses the device it selects",
                json!(null),
                "gpu-1",
                tolerate_unhealthy.clone(),
                vec![rule.clone()],
                Err("example.com/maintenance:NoExecute (DeviceTaintRule maintenance)"),
            ),
            (
                "a rule for another device does not",
                json!(null),
                "gpu-0",
                json!(null),
                vec![rule],
                Ok(""),
            ),
        ];
        for (why, taints, device, tols, rules, want) in cases {
            let got =
                check_device_taints("ns/c", &alloc(device, tols), &n, &[slice(taints)], &rules);
            match (want, got) {
                (Ok(""), Ok(lines)) => assert!(lines.is_empty(), "{why}: {lines:?}"),
                (Ok(part), Ok(lines)) => assert!(
                    lines.len() == 1 && lines[0].contains(part),
                    "{why}: {lines:?}"
                ),
                (Err(part), Err(e)) => assert!(e.contains(part), "{why}: {e}"),
                (w, g) => panic!("{why}: want {w:?}, got {g:?}"),
            }
        }
    }
}
