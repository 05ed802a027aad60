//! The parts of kube-controller-manager a client of the simulator can notice, run as one
//! pass over the store (the simulator calls it every `SimOptions::controller_period`):
//!
//! - serviceaccount controller: every namespace has a `default` ServiceAccount (recreated
//!   when deleted).
//! - garbage collector (`pkg/controller/garbagecollector`, `attemptToDeleteItem`): an owner
//!   reference is resolved by apiVersion/kind to a served resource and looked up by name in
//!   the dependent's namespace (cluster-scoped owners: without one); it counts as absent when
//!   not found or its uid differs, and as "waiting for its dependents" when the owner is
//!   being deleted with the `foregroundDeletion` finalizer. A dependent being deleted is left
//!   alone. When no owner is solid the dependent is deleted (UID precondition; policy
//!   Background, or the dependent's own `orphan`/`foregroundDeletion` finalizer, or
//!   Foreground when it has dependents of its own and an owner waits for it); when some
//!   owner is solid, the absent and waiting references are removed from it. A reference the
//!   collector cannot resolve (kind not served, or a namespaced owner of a cluster-scoped
//!   dependent) keeps the dependent: the real collector retries such items forever.
//!   Owners being deleted with `orphan` lose that finalizer once no dependent refers to them
//!   any more (the references are removed first); with `foregroundDeletion` once no
//!   dependent that sets `blockOwnerDeletion` is left.
//!
//! Deletions go through [`State::delete`], so a bound pod collected this way is deleted
//! gracefully and waits for its kubelet, and the usual watch events are sent. The real
//! collector reacts within a second or so (recordings 34, 35).

use std::sync::Arc;

use serde_json::{Value, json};

use super::super::objects::{self, meta, meta_str};
use super::super::registry::ResourceDef;
use super::delete::{DeleteOptions, Propagation};
use super::{ObjKey, State, Sub};

/// Finalizer the server adds for `propagationPolicy: Orphan`.
pub(crate) const ORPHAN_FINALIZER: &str = "orphan";
/// Finalizer the server adds for `propagationPolicy: Foreground`.
pub(crate) const FOREGROUND_FINALIZER: &str = "foregroundDeletion";

/// One owner reference of a dependent.
struct OwnerRef {
    api_version: String,
    kind: String,
    name: String,
    uid: String,
    block: bool,
}

fn owner_refs(obj: &Value) -> Vec<OwnerRef> {
    meta(obj)
        .and_then(|m| m.get("ownerReferences"))
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .map(|r| {
                    let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                    OwnerRef {
                        api_version: s("apiVersion"),
                        kind: s("kind"),
                        name: s("name"),
                        uid: s("uid"),
                        block: r.get("blockOwnerDeletion").and_then(Value::as_bool) == Some(true),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// How the collector sees one owner.
enum OwnerState {
    Solid,
    Absent,
    /// Being deleted in the foreground: its dependents go first.
    Waiting,
    /// Cannot be resolved: the dependent is never collected.
    Unresolvable,
}

impl State {
    /// One pass of the simulated controllers; true when it wrote anything. Nothing is done
    /// while the store is unchanged since a pass that found nothing to do.
    pub fn run_controllers(&mut self) -> bool {
        if self.controllers_idle_at == Some(self.rv) {
            return false;
        }
        let before = self.rv;
        self.ensure_default_service_accounts();
        self.finish_gc_finalizers();
        self.collect_garbage();
        let wrote = self.rv != before;
        if !wrote {
            self.controllers_idle_at = Some(self.rv);
        }
        wrote
    }

    /// The serviceaccount controller for one namespace.
    pub(super) fn ensure_default_service_account(&mut self, ns: &str) {
        let Some(def) = self.registry.get("", "v1", "serviceaccounts") else {
            return;
        };
        if self
            .lookup(&def, ns, objects::DEFAULT_SERVICE_ACCOUNT)
            .is_none()
            && let Err(e) = self.create(
                &def,
                ns,
                json!({"metadata": {"name": objects::DEFAULT_SERVICE_ACCOUNT}}),
            )
        {
            tracing::debug!(namespace = ns, error = %e.message, "simulated serviceaccount controller");
        }
    }

    fn ensure_default_service_accounts(&mut self) {
        let namespaces: Vec<String> = self
            .objects
            .get("/namespaces")
            .map(|m| {
                m.iter()
                    .filter(|(_, o)| !objects::is_deleting(o))
                    .map(|(k, _)| k.1.clone())
                    .collect()
            })
            .unwrap_or_default();
        for ns in namespaces {
            self.ensure_default_service_account(&ns);
        }
    }

    fn stored(&self, skey: &str, key: &ObjKey) -> Option<Arc<Value>> {
        self.objects.get(skey).and_then(|m| m.get(key)).cloned()
    }

    fn owner_state(&self, dependent: &ResourceDef, ns: &str, r: &OwnerRef) -> OwnerState {
        let Some(def) = self.registry.by_kind(&r.api_version, &r.kind) else {
            return OwnerState::Unresolvable;
        };
        if def.namespaced && !dependent.namespaced {
            return OwnerState::Unresolvable;
        }
        let ons = if def.namespaced { ns } else { "" };
        match self.lookup(&def, ons, &r.name) {
            Some(o) if meta_str(&o, "uid") == r.uid => {
                let waiting = objects::is_deleting(&o)
                    && objects::finalizers(&o)
                        .iter()
                        .any(|f| f == FOREGROUND_FINALIZER);
                if waiting {
                    OwnerState::Waiting
                } else {
                    OwnerState::Solid
                }
            }
            _ => OwnerState::Absent,
        }
    }

    /// Removes the references to `uids` from a dependent (the collector's patch).
    fn drop_owner_refs(
        &mut self,
        def: &ResourceDef,
        key: &ObjKey,
        old: Arc<Value>,
        uids: &[String],
    ) {
        let mut new = (*old).clone();
        if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
            let kept: Vec<Value> = m
                .get("ownerReferences")
                .and_then(Value::as_array)
                .map(|refs| {
                    refs.iter()
                        .filter(|r| {
                            !uids
                                .iter()
                                .any(|u| r.get("uid").and_then(Value::as_str) == Some(u.as_str()))
                        })
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            if kept.is_empty() {
                m.remove("ownerReferences");
            } else {
                m.insert("ownerReferences".into(), Value::Array(kept));
            }
        }
        if let Err(e) = self.finish_update(def, &key.0, &key.1, old, new, Sub::Main) {
            tracing::debug!(name = %key.1, error = %e.message, "simulated garbage collector: cannot drop owner references");
        }
    }

    fn collect_garbage(&mut self) {
        for (skey, key) in self.take_gc_dirty() {
            let Some(obj) = self.stored(&skey, &key) else {
                continue;
            };
            if objects::is_deleting(&obj) {
                continue;
            }
            let Some(def) = self.registry.by_storage_key(&skey) else {
                continue;
            };
            let mut solid = 0;
            let mut gone = Vec::new();
            let mut waiting = false;
            let mut unresolvable = false;
            for r in owner_refs(&obj) {
                match self.owner_state(&def, &key.0, &r) {
                    OwnerState::Solid => solid += 1,
                    OwnerState::Absent => gone.push(r.uid),
                    OwnerState::Waiting => {
                        waiting = true;
                        gone.push(r.uid);
                    }
                    OwnerState::Unresolvable => unresolvable = true,
                }
            }
            if unresolvable || gone.is_empty() {
                continue;
            }
            if solid > 0 {
                self.drop_owner_refs(&def, &key, obj, &gone);
                continue;
            }
            let uid = meta_str(&obj, "uid").to_string();
            let fins = objects::finalizers(&obj);
            let policy = if waiting && self.is_owner(&uid) {
                Propagation::Foreground
            } else if fins.iter().any(|f| f == ORPHAN_FINALIZER) {
                Propagation::Orphan
            } else if fins.iter().any(|f| f == FOREGROUND_FINALIZER) {
                Propagation::Foreground
            } else {
                Propagation::Background
            };
            if let Err(e) = self.delete(
                &def,
                &key.0,
                &key.1,
                &DeleteOptions::collector(&uid, policy),
            ) {
                tracing::debug!(name = %key.1, error = %e.message, "simulated garbage collector: delete failed");
            }
        }
    }

    /// Owners deleted with `orphan` or `foregroundDeletion`.
    fn finish_gc_finalizers(&mut self) {
        let mut owners: Vec<(Arc<str>, ObjKey)> = self.gc_finalizing.iter().cloned().collect();
        owners.sort();
        for (skey, key) in owners {
            let Some(owner) = self.stored(&skey, &key) else {
                continue;
            };
            let Some(def) = self.registry.by_storage_key(&skey) else {
                continue;
            };
            let uid = meta_str(&owner, "uid").to_string();
            let mut dependents: Vec<(Arc<str>, ObjKey, Arc<Value>, bool)> = Vec::new();
            for (ds, dk) in self.owned.iter() {
                let Some(d) = self.stored(ds, dk) else {
                    continue;
                };
                let refs = owner_refs(&d);
                if let Some(r) = refs.iter().find(|r| r.uid == uid) {
                    dependents.push((ds.clone(), dk.clone(), d.clone(), r.block));
                }
            }
            dependents.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
            let fins = objects::finalizers(&owner);
            let done = if fins.iter().any(|f| f == ORPHAN_FINALIZER) {
                for (ds, dk, d, _) in dependents {
                    if let Some(ddef) = self.registry.by_storage_key(&ds) {
                        self.drop_owner_refs(&ddef, &dk, d, std::slice::from_ref(&uid));
                    }
                }
                ORPHAN_FINALIZER
            } else {
                // Dependents of a foreground deletion are collected by `collect_garbage`;
                // the owner goes once no blocking one is left.
                if dependents.iter().any(|(_, _, _, block)| *block) {
                    continue;
                }
                FOREGROUND_FINALIZER
            };
            let Some(owner) = self.stored(&skey, &key) else {
                continue;
            };
            let mut new = (*owner).clone();
            let rest: Vec<String> = objects::finalizers(&owner)
                .into_iter()
                .filter(|f| f != done)
                .collect();
            objects::set_finalizers(&mut new, &rest);
            if let Err(e) = self.finish_update(&def, &key.0, &key.1, owner, new, Sub::Main) {
                tracing::debug!(name = %key.1, error = %e.message, "simulated garbage collector: cannot remove its finalizer");
            }
        }
    }
}
