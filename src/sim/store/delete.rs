//! DELETE the way kube-apiserver's generic registry store does it (`registry/generic/
//! registry/store.go` `Delete`, `rest.BeforeDelete`, the pod strategy's
//! `CheckGracefulDelete`):
//!
//! - Preconditions (`uid`, `resourceVersion`) are checked first (409).
//! - Pods are deleted gracefully. The grace period is the request's `gracePeriodSeconds`,
//!   else the pod's `terminationGracePeriodSeconds`, else 0; it is 0 for a pod without
//!   `spec.nodeName` and for a `Succeeded`/`Failed` pod; a negative one counts as 1. The
//!   pod is first written with `deletionTimestamp` = now + grace, `deletionGracePeriodSeconds`
//!   = grace and `generation` + 1 (a MODIFIED event); with grace 0 and no finalizers it is
//!   then removed in the same request (DELETED). Otherwise it stays until someone (the
//!   kubelet) deletes it again with a shorter grace period: a later delete may only shorten
//!   it (the timestamp moves by the difference); an equal or longer one changes nothing.
//! - Other resources are deleted at once unless they have finalizers: then they get
//!   `deletionTimestamp` = now and `deletionGracePeriodSeconds: 0` (and `generation` + 1 when
//!   they have one) and stay until an update removes the last finalizer (recordings 45–48).
//! - `propagationPolicy` (or the deprecated `orphanDependents`) adds the garbage collector's
//!   `orphan` or `foregroundDeletion` finalizer, or removes them (`Background`), before
//!   that decision; with no policy the object's own such finalizer stays.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::super::objects::{self, meta, meta_mut, meta_str};
use super::super::registry::{ResourceDef, Special};
use super::super::status::{ApiError, Cause};
use super::gc::{FOREGROUND_FINALIZER, ORPHAN_FINALIZER};
use super::{ObjKey, State, for_version, key_for, rv_of, skey_of};

/// `DeleteOptions.propagationPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Propagation {
    Orphan,
    Background,
    Foreground,
}

/// The parts of `DeleteOptions` the simulator honours.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub propagation: Option<Propagation>,
    pub orphan_dependents: Option<bool>,
}

impl DeleteOptions {
    /// From the request: a `DeleteOptions` body when there is one, else the query
    /// parameters (as the real DELETE handler decides). Invalid combinations are 422.
    pub fn from_request(
        body: Option<&Value>,
        query: &HashMap<String, String>,
    ) -> Result<Self, ApiError> {
        let mut o = DeleteOptions::default();
        let policy: Option<String>;
        match body {
            Some(b) => {
                o.grace_period_seconds = b.get("gracePeriodSeconds").and_then(Value::as_i64);
                if let Some(pre) = b.get("preconditions") {
                    o.uid = pre.get("uid").and_then(Value::as_str).map(str::to_string);
                    o.resource_version = pre
                        .get("resourceVersion")
                        .and_then(Value::as_str)
                        .map(str::to_string);
                }
                policy = b
                    .get("propagationPolicy")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                o.orphan_dependents = b.get("orphanDependents").and_then(Value::as_bool);
            }
            None => {
                if let Some(g) = query.get("gracePeriodSeconds").filter(|g| !g.is_empty()) {
                    o.grace_period_seconds = Some(g.parse().map_err(|_| {
                        ApiError::bad_request(format!("invalid gracePeriodSeconds: {g}"))
                    })?);
                }
                policy = query
                    .get("propagationPolicy")
                    .filter(|p| !p.is_empty())
                    .cloned();
                if let Some(b) = query.get("orphanDependents").filter(|b| !b.is_empty()) {
                    o.orphan_dependents = Some(b.parse().map_err(|_| {
                        ApiError::bad_request(format!("invalid orphanDependents: {b}"))
                    })?);
                }
            }
        }
        // ValidateDeleteOptions.
        let mut causes = Vec::new();
        if let Some(p) = &policy {
            if o.orphan_dependents.is_some() {
                causes.push(Cause::invalid(
                    "propagationPolicy",
                    &Value::String(p.clone()),
                    "orphanDependents and deletionPropagation cannot be both set",
                ));
            }
            o.propagation = match p.as_str() {
                "Orphan" => Some(Propagation::Orphan),
                "Background" => Some(Propagation::Background),
                "Foreground" => Some(Propagation::Foreground),
                _ => {
                    causes.push(Cause::not_supported(
                        "propagationPolicy",
                        &Value::String(p.clone()),
                        &[
                            Value::from("Foreground"),
                            Value::from("Background"),
                            Value::from("Orphan"),
                            Value::from("nil"),
                        ],
                    ));
                    None
                }
            };
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(
                "DeleteOptions",
                "meta.k8s.io",
                "",
                causes,
            ));
        }
        Ok(o)
    }

    /// A deletion with a UID precondition and a policy (the garbage collector's).
    pub fn collector(uid: &str, propagation: Propagation) -> Self {
        DeleteOptions {
            uid: Some(uid.to_string()),
            propagation: Some(propagation),
            ..Default::default()
        }
    }
}

/// What a DELETE did.
#[derive(Debug)]
pub(crate) enum Deletion {
    /// Removed from storage; its last stored state.
    Gone(Arc<Value>),
    /// Still stored (graceful deletion or finalizers pending); its current state.
    Pending(Arc<Value>),
}

/// What `rest.BeforeDelete` decided for a graceful resource.
enum Grace {
    /// Not graceful (already at grace 0): finalizers decide.
    No,
    /// Write the new deletion fields; the grace period in force.
    Yes(i64),
    /// A graceful deletion is pending and this request does not shorten it.
    Pending,
}

fn set_deletion(obj: &mut Value, timestamp: String, grace: i64) {
    if let Some(m) = meta_mut(obj) {
        m.insert("deletionTimestamp".into(), Value::String(timestamp));
        m.insert("deletionGracePeriodSeconds".into(), Value::from(grace));
    }
}

fn bump_generation(obj: &mut Value) {
    let g = meta(obj)
        .and_then(|m| m.get("generation"))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if g > 0
        && let Some(m) = meta_mut(obj)
    {
        m.insert("generation".into(), Value::from(g + 1));
    }
}

fn parse_time(s: &str) -> Option<jiff::Timestamp> {
    s.parse().ok()
}

/// `rest.BeforeDelete` with the pod strategy's `CheckGracefulDelete`.
fn before_graceful_delete(obj: &mut Value, opts: &DeleteOptions, now: jiff::Timestamp) -> Grace {
    // Negative values count as 1 s on the delete path.
    let requested = opts.grace_period_seconds.map(|g| if g < 0 { 1 } else { g });
    if objects::is_deleting(obj) {
        let current = objects::deletion_grace(obj).unwrap_or(0);
        if current <= 0 {
            return Grace::No;
        }
        // Only a shorter grace period may be given once a deletion is pending.
        let Some(p) = requested.filter(|p| *p < current) else {
            return Grace::Pending;
        };
        let old = parse_time(meta_str(obj, "deletionTimestamp")).unwrap_or(now);
        let ts = objects::rfc3339_after(old, p - current);
        set_deletion(obj, ts, p);
        return Grace::Yes(p);
    }
    let spec = obj.get("spec");
    let mut period = requested.unwrap_or_else(|| {
        spec.and_then(|s| s.get("terminationGracePeriodSeconds"))
            .and_then(Value::as_i64)
            .unwrap_or(0)
    });
    // A pod never scheduled, or already finished, is deleted at once.
    let node = spec
        .and_then(|s| s.get("nodeName"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let phase = obj
        .get("status")
        .and_then(|s| s.get("phase"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if node.is_empty() || phase == "Succeeded" || phase == "Failed" {
        period = 0;
    }
    if period < 0 {
        period = 1;
    }
    set_deletion(obj, objects::rfc3339_after(now, period), period);
    bump_generation(obj);
    Grace::Yes(period)
}

/// `deletionFinalizersForGarbageCollection`: the finalizers after applying the request's
/// policy, and whether they changed. An explicit option wins, then the object's own GC
/// finalizer; the default policy (dependents deleted in the background) adds none.
fn gc_finalizers(obj: &Value, opts: &DeleteOptions) -> (bool, Vec<String>) {
    let current = objects::finalizers(obj);
    let existing = current
        .iter()
        .find(|f| *f == ORPHAN_FINALIZER || *f == FOREGROUND_FINALIZER)
        .cloned();
    let (orphan, foreground) = match (opts.orphan_dependents, opts.propagation) {
        (Some(o), _) => (o, false),
        (None, Some(Propagation::Orphan)) => (true, false),
        (None, Some(Propagation::Foreground)) => (false, true),
        (None, Some(Propagation::Background)) => (false, false),
        (None, None) => (
            existing.as_deref() == Some(ORPHAN_FINALIZER),
            existing.as_deref() == Some(FOREGROUND_FINALIZER),
        ),
    };
    let mut next: Vec<String> = current
        .iter()
        .filter(|f| *f != ORPHAN_FINALIZER && *f != FOREGROUND_FINALIZER)
        .cloned()
        .collect();
    if orphan {
        next.push(ORPHAN_FINALIZER.to_string());
    }
    if foreground {
        next.push(FOREGROUND_FINALIZER.to_string());
    }
    let set = |v: &[String]| {
        let mut s: Vec<String> = v.to_vec();
        s.sort();
        s.dedup();
        s
    };
    (set(&current) != set(&next), next)
}

/// `markAsDeleting`: finalizers hold an object that has no graceful deletion.
fn mark_as_deleting(obj: &mut Value, now: jiff::Timestamp) {
    let existing = parse_time(meta_str(obj, "deletionTimestamp"));
    if !objects::is_deleting(obj) {
        bump_generation(obj);
    }
    let ts = match existing {
        Some(t) if t <= now => meta_str(obj, "deletionTimestamp").to_string(),
        _ => objects::rfc3339_after(now, 0),
    };
    if let Some(m) = meta_mut(obj) {
        m.insert("deletionTimestamp".into(), Value::String(ts));
        m.insert("deletionGracePeriodSeconds".into(), Value::from(0));
    }
}

impl State {
    /// DELETE (see the module documentation). Namespaces and CRDs are removed at once with
    /// everything in them.
    pub fn delete(
        &mut self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Deletion, ApiError> {
        let Some(old) = self.lookup(def, ns, name) else {
            return Err(ApiError::not_found(&def.plural, &def.group, name));
        };
        if let Some(uid) = &opts.uid
            && uid != meta_str(&old, "uid")
        {
            return Err(ApiError::precondition(
                &def.plural,
                &def.group,
                name,
                &def.etcd_key(ns, name),
                "UID",
                uid,
                meta_str(&old, "uid"),
            ));
        }
        if let Some(rv) = &opts.resource_version
            && rv != rv_of(&old)
        {
            return Err(ApiError::precondition(
                &def.plural,
                &def.group,
                name,
                &def.etcd_key(ns, name),
                "ResourceVersion",
                rv,
                rv_of(&old),
            ));
        }
        let key = key_for(def, ns, name);
        if matches!(def.special, Special::Namespace | Special::Crd) {
            self.remove_contents(def, &old);
            return self.remove_now(def, &key, name);
        }
        let now = jiff::Timestamp::now();
        let mut obj = (*old).clone();
        let mut graceful = None;
        if def.graceful_delete {
            match before_graceful_delete(&mut obj, opts, now) {
                Grace::Pending => return Ok(Deletion::Pending(for_version(def, &old))),
                Grace::Yes(p) => graceful = Some(p),
                Grace::No => {}
            }
        }
        // Finalizers cannot change through DeleteOptions once a graceful deletion is
        // pending (returned above).
        let (changed, next) = gc_finalizers(&obj, opts);
        if changed {
            objects::set_finalizers(&mut obj, &next);
        }
        let pending_finalizers = !objects::finalizers(&obj).is_empty();
        match graceful {
            None if pending_finalizers => {
                mark_as_deleting(&mut obj, now);
                Ok(Deletion::Pending(self.write_if_changed(def, key, obj, old)))
            }
            None => self.remove_now(def, &key, name),
            Some(grace) => {
                // The deletion fields are written first, even when the object goes at once.
                let cur = self.write_if_changed(def, key.clone(), obj, old);
                if pending_finalizers || grace > 0 {
                    Ok(Deletion::Pending(cur))
                } else {
                    self.remove_now(def, &key, name)
                }
            }
        }
    }

    fn write_if_changed(
        &mut self,
        def: &ResourceDef,
        key: ObjKey,
        obj: Value,
        old: Arc<Value>,
    ) -> Arc<Value> {
        if obj == *old {
            return for_version(def, &old);
        }
        let cur = self.commit(def, key, obj, Some(old));
        for_version(def, &cur)
    }

    fn remove_now(
        &mut self,
        def: &ResourceDef,
        key: &ObjKey,
        name: &str,
    ) -> Result<Deletion, ApiError> {
        let gone = self
            .remove(&skey_of(def), key)
            .ok_or_else(|| ApiError::not_found(&def.plural, &def.group, name))?;
        Ok(Deletion::Gone(for_version(def, &gone)))
    }

    /// Everything a namespace or CRD takes with it (deleted at once, finalizers ignored).
    fn remove_contents(&mut self, def: &ResourceDef, old: &Value) {
        match def.special {
            Special::Namespace => {
                let name = meta_str(old, "name").to_string();
                for skey in self.registry.namespaced_storage_keys() {
                    let keys: Vec<ObjKey> = self
                        .objects
                        .get(skey.as_str())
                        .map(|m| {
                            m.range((name.clone(), String::new())..)
                                .take_while(|(k, _)| k.0 == name)
                                .map(|(k, _)| k.clone())
                                .collect()
                        })
                        .unwrap_or_default();
                    for k in keys {
                        self.remove(&skey, &k);
                    }
                }
            }
            Special::Crd => {
                let spec = old.get("spec");
                let group = spec
                    .and_then(|s| s.get("group"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let plural = spec
                    .and_then(|s| s.get("names"))
                    .and_then(|n| n.get("plural"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let skey = format!("{group}/{plural}");
                let keys: Vec<ObjKey> = self
                    .objects
                    .get(skey.as_str())
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default();
                for k in keys {
                    self.remove(&skey, &k);
                }
                self.registry.remove_resource(&group, &plural);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn opts(grace: Option<i64>) -> DeleteOptions {
        DeleteOptions {
            grace_period_seconds: grace,
            ..Default::default()
        }
    }

    #[test]
    fn bound_pods_get_their_grace_period_unbound_ones_none() {
        let now = jiff::Timestamp::now();
        let mut bound = json!({"metadata": {"generation": 1}, "spec": {"nodeName": "n", "terminationGracePeriodSeconds": 30}, "status": {"phase": "Running"}});
        assert!(matches!(
            before_graceful_delete(&mut bound, &opts(None), now),
            Grace::Yes(30)
        ));
        assert_eq!(bound["metadata"]["deletionGracePeriodSeconds"], 30);
        assert_eq!(bound["metadata"]["generation"], 2);
        // A longer or equal grace period later changes nothing; a shorter one shortens it.
        assert!(matches!(
            before_graceful_delete(&mut bound, &opts(Some(30)), now),
            Grace::Pending
        ));
        assert!(matches!(
            before_graceful_delete(&mut bound, &opts(None), now),
            Grace::Pending
        ));
        assert!(matches!(
            before_graceful_delete(&mut bound, &opts(Some(0)), now),
            Grace::Yes(0)
        ));
        assert_eq!(
            bound["metadata"]["deletionTimestamp"],
            json!(objects::rfc3339_after(now, 0))
        );
        let mut unbound = json!({"spec": {"terminationGracePeriodSeconds": 30}});
        assert!(matches!(
            before_graceful_delete(&mut unbound, &opts(None), now),
            Grace::Yes(0)
        ));
        let mut done = json!({"spec": {"nodeName": "n"}, "status": {"phase": "Succeeded"}});
        assert!(matches!(
            before_graceful_delete(&mut done, &opts(Some(10)), now),
            Grace::Yes(0)
        ));
        let mut negative = json!({"spec": {"nodeName": "n"}});
        assert!(matches!(
            before_graceful_delete(&mut negative, &opts(Some(-5)), now),
            Grace::Yes(1)
        ));
    }

    #[test]
    fn propagation_policy_sets_the_collector_finalizers() {
        let obj = json!({"metadata": {"finalizers": ["a"]}});
        let o = DeleteOptions {
            propagation: Some(Propagation::Orphan),
            ..Default::default()
        };
        assert_eq!(
            gc_finalizers(&obj, &o),
            (true, vec!["a".to_string(), ORPHAN_FINALIZER.to_string()])
        );
        let held = json!({"metadata": {"finalizers": [FOREGROUND_FINALIZER]}});
        assert_eq!(
            gc_finalizers(&held, &DeleteOptions::default()),
            (false, vec![FOREGROUND_FINALIZER.to_string()])
        );
        let bg = DeleteOptions {
            propagation: Some(Propagation::Background),
            ..Default::default()
        };
        assert_eq!(gc_finalizers(&held, &bg), (true, vec![]));
        let q: HashMap<String, String> =
            [("propagationPolicy".to_string(), "Sideways".to_string())]
                .into_iter()
                .collect();
        assert_eq!(
            DeleteOptions::from_request(None, &q)
                .map(|_| ())
                .map_err(|e| e.code),
            Err(422)
        );
    }
}
