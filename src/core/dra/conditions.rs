//! Binding conditions (KEP-5007, `DRADeviceBindingConditions`, beta and on by default in
//! Kubernetes 1.36).
//!
//! A ResourceSlice device may declare `bindingConditions` and `bindingFailureConditions`;
//! the allocation result copies them per device. The driver then sets
//! `status.devices[].conditions` on the claim. The rule kube-scheduler's
//! `dynamicresources` plugin follows in PreBind (kubernetes
//! `pkg/scheduler/framework/plugins/dynamicresources/dynamicresources.go`), which a binder
//! must follow too:
//! - bind only when every binding condition of every allocated device is `True`;
//! - give up as soon as any failure condition is `True`;
//! - give up after a timeout counted from `allocation.allocationTimestamp` (the
//!   scheduler's `bindingTimeout` defaults to 600 s);
//! - on giving up, clear the allocation so the scheduler can try again.

use std::time::Duration;

use k8s_openapi::api::resource::v1::{AllocatedDeviceStatus, AllocationResult};

/// kube-scheduler's default `bindingTimeout` for binding conditions.
pub const DEFAULT_BINDING_TIMEOUT: Duration = Duration::from_secs(600);

/// Where the allocated devices of one claim stand with their binding conditions.
#[derive(Debug, Clone, PartialEq)]
pub enum BindingConditions {
    /// No allocated device declares binding conditions: bind at once.
    NotDeclared,
    /// Every binding condition is True (one line per device).
    Met(Vec<String>),
    /// Some are not True yet: wait at most `remaining`.
    Waiting {
        /// `device: condition` for each condition not True yet.
        pending: Vec<String>,
        remaining: Duration,
    },
    /// A failure condition is True.
    Failed(String),
    /// The timeout passed since the allocation.
    TimedOut(String),
}

fn condition_true(status: &[AllocatedDeviceStatus], r: &DeviceKey<'_>, cond: &str) -> bool {
    status
        .iter()
        .filter(|s| {
            s.driver == r.driver
                && s.pool == r.pool
                && s.device == r.device
                && (r.share_id.is_none() || s.share_id.as_deref() == r.share_id)
        })
        .flat_map(|s| s.conditions.iter().flatten())
        .any(|c| c.type_ == cond && c.status == "True")
}

struct DeviceKey<'a> {
    driver: &'a str,
    pool: &'a str,
    device: &'a str,
    share_id: Option<&'a str>,
}

/// Evaluates the claim's binding conditions. `alloc` is the claim's allocation (it carries
/// the condition names), `status` the claim's `status.devices`, `waited` the time since the
/// allocation (from `allocationTimestamp`, or since this agent first saw it waiting when the
/// allocation has no timestamp).
pub fn evaluate(
    claim: &str,
    alloc: &AllocationResult,
    status: &[AllocatedDeviceStatus],
    waited: Duration,
    timeout: Duration,
) -> BindingConditions {
    let results = alloc
        .devices
        .as_ref()
        .and_then(|d| d.results.as_deref())
        .unwrap_or(&[]);
    let mut declared = false;
    let mut met = Vec::new();
    let mut pending = Vec::new();
    for r in results {
        let key = DeviceKey {
            driver: &r.driver,
            pool: &r.pool,
            device: &r.device,
            share_id: r.share_id.as_deref(),
        };
        let label = format!("{}/{}/{}", r.driver, r.pool, r.device);
        for f in r.binding_failure_conditions.iter().flatten() {
            if condition_true(status, &key, f) {
                return BindingConditions::Failed(format!(
                    "claim {claim}: device {label} reports binding failure condition {f}"
                ));
            }
        }
        let conds = r.binding_conditions.as_deref().unwrap_or(&[]);
        if conds.is_empty() {
            continue;
        }
        declared = true;
        let missing: Vec<&String> = conds
            .iter()
            .filter(|c| !condition_true(status, &key, c))
            .collect();
        if missing.is_empty() {
            met.push(format!(
                "claim {claim}: device {label} binding conditions met: {}",
                conds.join(", ")
            ));
        } else {
            pending.extend(missing.iter().map(|c| format!("{label}: {c}")));
        }
    }
    if !declared {
        return BindingConditions::NotDeclared;
    }
    if pending.is_empty() {
        return BindingConditions::Met(met);
    }
    if waited >= timeout {
        return BindingConditions::TimedOut(format!(
            "claim {claim}: binding conditions not met within {}s of the allocation: {}",
            timeout.as_secs(),
            pending.join(", ")
        ));
    }
    BindingConditions::Waiting {
        pending,
        remaining: timeout - waited,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn alloc() -> AllocationResult {
        serde_json::from_value(json!({ "devices": { "results": [
            { "request": "r", "driver": "d", "pool": "p", "device": "gpu-0",
              "bindingConditions": ["example.com/ready"],
              "bindingFailureConditions": ["example.com/failed"] },
            { "request": "r", "driver": "d", "pool": "p", "device": "gpu-1" }
        ] } }))
        .expect("alloc")
    }

    fn status(conds: Value) -> Vec<AllocatedDeviceStatus> {
        serde_json::from_value(json!([
            { "driver": "d", "pool": "p", "device": "gpu-0", "conditions": conds }
        ]))
        .expect("status")
    }

    fn cond(t: &str, s: &str) -> Value {
        json!({ "type": t, "status": s, "reason": "R", "message": "", "lastTransitionTime": "2026-11-29T16:53:13Z" })
    }

    #[test]
    fn table() {
        let t = Duration::from_secs(600);
        let s = Duration::from_secs;
        let cases: Vec<(&str, Value, Duration, &str)> = vec![
            ("no status yet: waiting", json!(null), s(5), "waiting 595"),
            (
                "False: waiting",
                json!([cond("example.com/ready", "False")]),
                s(5),
                "waiting 595",
            ),
            (
                "True: met",
                json!([cond("example.com/ready", "True")]),
                s(5),
                "met",
            ),
            (
                "failure wins over ready",
                json!([
                    cond("example.com/ready", "True"),
                    cond("example.com/failed", "True")
                ]),
                s(5),
                "failed",
            ),
            (
                "failure False is ignored",
                json!([cond("example.com/failed", "False")]),
                s(5),
                "waiting 595",
            ),
            (
                "timed out",
                json!([cond("example.com/ready", "False")]),
                s(600),
                "timed out",
            ),
            (
                "met after the timeout still binds",
                json!([cond("example.com/ready", "True")]),
                s(900),
                "met",
            ),
        ];
        for (why, conds, waited, want) in cases {
            let got = evaluate("ns/c", &alloc(), &status(conds), waited, t);
            let ok = match (&got, want) {
                (BindingConditions::Waiting { pending, remaining }, w)
                    if w.starts_with("waiting") =>
                {
                    pending == &["d/p/gpu-0: example.com/ready".to_string()]
                        && remaining.as_secs().to_string() == w["waiting ".len()..]
                }
                (BindingConditions::Met(lines), "met") => lines[0].contains("example.com/ready"),
                (BindingConditions::Failed(m), "failed") => {
                    m.contains("binding failure condition example.com/failed")
                }
                (BindingConditions::TimedOut(m), "timed out") => {
                    m.contains("not met within 600s") && m.contains("example.com/ready")
                }
                _ => false,
            };
            assert!(ok, "{why}: {got:?}");
        }
    }

    #[test]
    fn devices_without_conditions_bind_at_once() {
        let plain: AllocationResult = serde_json::from_value(json!({ "devices": { "results": [
            { "request": "r", "driver": "d", "pool": "p", "device": "gpu-1" }
        ] } }))
        .expect("alloc");
        assert_eq!(
            evaluate("c", &plain, &[], Duration::ZERO, DEFAULT_BINDING_TIMEOUT),
            BindingConditions::NotDeclared
        );
    }
}
