//! The object store: one global resourceVersion, objects per resource indexed by
//! (namespace, name), a bounded event history for watch resumption, and the registry of
//! open watches (fed with `try_send`, so writers never wait for a watcher).

mod delete;
mod gc;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::objects::{self, PatchType, meta, meta_mut, meta_str};
use super::registry::{self, Registry, ResourceDef, Special};
use super::selector::{FieldSelector, LabelSelector};
use super::status::{ApiError, Cause};

pub(crate) use delete::{DeleteOptions, Deletion};

/// (namespace, name); namespace is "" for cluster-scoped objects.
pub(crate) type ObjKey = (String, String);

/// Events buffered per watch before the watch is ended as too slow.
pub(crate) const WATCH_BUFFER: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as kept in the history and sent to watches.
#[derive(Debug)]
pub(crate) struct Event {
    pub rv: u64,
    pub skey: Arc<str>,
    pub namespace: String,
    pub etype: EventType,
    pub object: Arc<Value>,
    /// The object before the change (MODIFIED, DELETED), for selector transitions.
    pub prev: Option<Arc<Value>>,
    line: OnceLock<Bytes>,
}

impl Event {
    /// The event as one watch-stream line, encoded once and shared by all watchers.
    pub fn line(&self) -> Bytes {
        self.line
            .get_or_init(|| encode_event(self.etype.as_str(), &self.object))
            .clone()
    }
}

pub(crate) fn encode_event(etype: &str, obj: &Value) -> Bytes {
    let mut v = Vec::with_capacity(1024);
    v.extend_from_slice(b"{\"type\":\"");
    v.extend_from_slice(etype.as_bytes());
    v.extend_from_slice(b"\",\"object\":");
    // Serializing a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut v, obj);
    v.extend_from_slice(b"}\n");
    Bytes::from(v)
}

struct WatcherSlot {
    id: u64,
    skey: Arc<str>,
    namespace: Option<String>,
    tx: mpsc::Sender<Arc<Event>>,
}

/// Which part of an object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sub {
    Main,
    Status,
}

/// What a successful write answers.
pub(crate) struct WriteResult {
    pub object: Arc<Value>,
    pub warnings: Vec<String>,
    pub created: bool,
}

/// How a new watch starts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum WatchStart {
    /// Events after this resourceVersion, from history.
    FromRv(u64),
    /// Synthetic ADDED for the current state.
    Snapshot,
}

/// What registering a watch hands to the watch task.
pub(crate) struct WatchInit {
    pub id: u64,
    pub rx: mpsc::Receiver<Arc<Event>>,
    pub replay: Vec<Arc<Event>>,
    pub snapshot: Vec<Arc<Value>>,
    pub start_rv: u64,
}

pub(crate) struct State {
    pub rv: u64,
    pub registry: Registry,
    objects: HashMap<Arc<str>, BTreeMap<ObjKey, Arc<Value>>>,
    history: VecDeque<Arc<Event>>,
    history_cap: usize,
    /// Resuming a watch from any rv >= floor is possible.
    pub floor: u64,
    watchers: Vec<WatcherSlot>,
    next_watcher: u64,
    current_rv: Arc<AtomicU64>,
    /// Set by the HTTP layer for the duration of one write: the caller lacks
    /// `resourceclaims/binding` (design §2).
    pub lacks_claim_binding: bool,
    /// Objects with ownerReferences.
    owned: HashSet<(Arc<str>, ObjKey)>,
    /// Dependents by the owner uid they name, and the owner uids each dependent names
    /// (to keep the first in step).
    dependents: HashMap<String, HashSet<(Arc<str>, ObjKey)>>,
    owner_uids: HashMap<(Arc<str>, ObjKey), Vec<String>>,
    /// Dependents the garbage collector must look at: written since its last pass, or one
    /// of their owners was. Like the real collector's graph, it reacts to changes instead of
    /// rescanning every object each pass (a full scan held the store for tens of ms at
    /// thousands of objects).
    gc_dirty: HashSet<(Arc<str>, ObjKey)>,
    /// Objects being deleted that carry the garbage collector's `orphan` or
    /// `foregroundDeletion` finalizer.
    gc_finalizing: HashSet<(Arc<str>, ObjKey)>,
    /// The resourceVersion the controllers last found nothing to do at.
    controllers_idle_at: Option<u64>,
}

fn skey_of(def: &ResourceDef) -> String {
    def.storage_key()
}

fn key_for(def: &ResourceDef, ns: &str, name: &str) -> ObjKey {
    if def.namespaced {
        (ns.to_string(), name.to_string())
    } else {
        (String::new(), name.to_string())
    }
}

/// Sets `apiVersion` to the version being served (objects of multi-version CRDs).
pub(crate) fn for_version(def: &ResourceDef, obj: &Arc<Value>) -> Arc<Value> {
    let av = def.api_version();
    if obj.get("apiVersion").and_then(Value::as_str) == Some(av.as_str()) {
        return obj.clone();
    }
    let mut o = (**obj).clone();
    if let Some(m) = o.as_object_mut() {
        m.insert("apiVersion".into(), Value::String(av));
    }
    Arc::new(o)
}

fn rv_of(obj: &Value) -> &str {
    meta_str(obj, "resourceVersion")
}

/// Everything outside metadata and status: changes here bump `generation`.
fn spec_part(obj: &Value) -> Map<String, Value> {
    obj.as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// ValidateObjectMetaUpdate: no finalizer may be added to an object being deleted.
fn no_new_finalizers(old: &Value, new: &Value) -> Vec<Cause> {
    if !objects::is_deleting(old) {
        return vec![];
    }
    let before = objects::finalizers(old);
    let mut extra: Vec<String> = objects::finalizers(new)
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    if extra.is_empty() {
        return vec![];
    }
    extra.sort();
    extra.dedup();
    // Go's %#v of the sorted []string.
    let quoted: Vec<String> = extra.iter().map(|f| format!("{f:?}")).collect();
    vec![Cause::forbidden(
        "metadata.finalizers",
        &format!(
            "no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
            quoted.join(", ")
        ),
    )]
}

impl State {
    pub fn new(history_cap: usize, current_rv: Arc<AtomicU64>) -> Self {
        State {
            rv: 0,
            registry: Registry::new(),
            objects: HashMap::new(),
            history: VecDeque::new(),
            history_cap: history_cap.max(1),
            floor: 0,
            watchers: Vec::new(),
            next_watcher: 1,
            current_rv,
            lacks_claim_binding: false,
            owned: HashSet::new(),
            dependents: HashMap::new(),
            owner_uids: HashMap::new(),
            gc_dirty: HashSet::new(),
            gc_finalizing: HashSet::new(),
            controllers_idle_at: None,
        }
    }

    /// Forgets history: resuming from any rv older than now answers 410.
    pub fn compact(&mut self) {
        self.history.clear();
        self.floor = self.rv;
    }

    /// Drops every registered watch sender (their streams then end).
    pub fn drop_watchers(&mut self) {
        self.watchers.clear();
    }

    /// Watches open now (all resources).
    pub fn open_watches(&self) -> usize {
        self.watchers.len()
    }

    pub fn deregister(&mut self, id: u64) {
        self.watchers.retain(|w| w.id != id);
    }

    fn emit(&mut self, ev: Event) {
        let ev = Arc::new(ev);
        if self.history.len() >= self.history_cap
            && let Some(old) = self.history.pop_front()
        {
            self.floor = self.floor.max(old.rv);
        }
        self.history.push_back(ev.clone());
        // A full or closed channel ends that watch; the client resumes from its last rv.
        self.watchers.retain(|w| {
            if *w.skey != *ev.skey {
                return true;
            }
            if let Some(ns) = &w.namespace
                && *ns != ev.namespace
            {
                return true;
            }
            w.tx.try_send(ev.clone()).is_ok()
        });
        self.current_rv.store(self.rv, Ordering::Release);
    }

    fn commit(
        &mut self,
        def: &ResourceDef,
        key: ObjKey,
        mut obj: Value,
        prev: Option<Arc<Value>>,
    ) -> Arc<Value> {
        self.rv += 1;
        let rv = self.rv;
        if let Some(m) = meta_mut(&mut obj) {
            m.insert("resourceVersion".into(), Value::String(rv.to_string()));
        }
        let arc = Arc::new(obj);
        let skey: Arc<str> = Arc::from(skey_of(def));
        self.objects
            .entry(skey.clone())
            .or_default()
            .insert(key.clone(), arc.clone());
        self.index(&skey, &key, Some(&arc));
        self.owner_changed(meta_str(&arc, "uid"));
        let etype = if prev.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.emit(Event {
            rv,
            skey,
            namespace: key.0,
            etype,
            object: arc.clone(),
            prev,
            line: OnceLock::new(),
        });
        arc
    }

    /// Keeps the garbage collector's indexes in step with one stored object (None: removed).
    fn index(&mut self, skey: &Arc<str>, key: &ObjKey, obj: Option<&Arc<Value>>) {
        let entry = (skey.clone(), key.clone());
        let owner_uids: Vec<String> = obj
            .and_then(|o| meta(o))
            .and_then(|m| m.get("ownerReferences"))
            .and_then(Value::as_array)
            .map(|refs| {
                refs.iter()
                    .filter_map(|r| r.get("uid").and_then(Value::as_str).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        for uid in self.owner_uids.remove(&entry).unwrap_or_default() {
            if let Some(set) = self.dependents.get_mut(&uid) {
                set.remove(&entry);
                if set.is_empty() {
                    self.dependents.remove(&uid);
                }
            }
        }
        if owner_uids.is_empty() {
            self.owned.remove(&entry);
            self.gc_dirty.remove(&entry);
        } else {
            for uid in &owner_uids {
                self.dependents
                    .entry(uid.clone())
                    .or_default()
                    .insert(entry.clone());
            }
            self.owner_uids.insert(entry.clone(), owner_uids);
            self.owned.insert(entry.clone());
            self.gc_dirty.insert(entry.clone());
        }
        let finalizing = obj.is_some_and(|o| {
            objects::is_deleting(o)
                && objects::finalizers(o)
                    .iter()
                    .any(|f| f == gc::ORPHAN_FINALIZER || f == gc::FOREGROUND_FINALIZER)
        });
        if finalizing {
            self.gc_finalizing.insert(entry);
        } else {
            self.gc_finalizing.remove(&entry);
        }
    }

    fn remove(&mut self, skey: &str, key: &ObjKey) -> Option<Arc<Value>> {
        let old = self.objects.get_mut(skey)?.remove(key)?;
        let skey_arc: Arc<str> = Arc::from(skey);
        self.index(&skey_arc, key, None);
        self.owner_changed(meta_str(&old, "uid"));
        self.rv += 1;
        let rv = self.rv;
        let mut o = (*old).clone();
        if let Some(m) = meta_mut(&mut o) {
            m.insert("resourceVersion".into(), Value::String(rv.to_string()));
        }
        let arc = Arc::new(o);
        self.emit(Event {
            rv,
            skey: Arc::from(skey),
            namespace: key.0.clone(),
            etype: EventType::Deleted,
            object: arc.clone(),
            prev: Some(old),
            line: OnceLock::new(),
        });
        Some(arc)
    }

    /// The object with `uid` was written or removed: its dependents need another look.
    fn owner_changed(&mut self, uid: &str) {
        if let Some(deps) = self.dependents.get(uid) {
            self.gc_dirty.extend(deps.iter().cloned());
        }
    }

    /// Whether some object names `uid` as its owner.
    pub(super) fn is_owner(&self, uid: &str) -> bool {
        self.dependents.contains_key(uid)
    }

    /// The dependents written, or whose owners were, since the last call.
    pub(super) fn take_gc_dirty(&mut self) -> Vec<(Arc<str>, ObjKey)> {
        let mut v: Vec<_> = self.gc_dirty.drain().collect();
        v.sort();
        v
    }

    pub fn lookup(&self, def: &ResourceDef, ns: &str, name: &str) -> Option<Arc<Value>> {
        self.objects
            .get(skey_of(def).as_str())?
            .get(&key_for(def, ns, name))
            .cloned()
    }

    pub fn get(&self, def: &ResourceDef, ns: &str, name: &str) -> Result<Arc<Value>, ApiError> {
        self.lookup(def, ns, name)
            .map(|o| for_version(def, &o))
            .ok_or_else(|| ApiError::not_found(&def.plural, &def.group, name))
    }

    /// Matching objects in key order after `after`, at most `limit`; also whether more remain
    /// and how many.
    pub fn list(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        lsel: &LabelSelector,
        fsel: &FieldSelector,
        limit: Option<usize>,
        after: Option<&ObjKey>,
    ) -> (Vec<Arc<Value>>, Option<ObjKey>, usize) {
        let Some(map) = self.objects.get(skey_of(def).as_str()) else {
            return (vec![], None, 0);
        };
        let lower = match (after, ns) {
            (Some(k), _) => std::ops::Bound::Excluded(k.clone()),
            (None, Some(ns)) if def.namespaced => {
                std::ops::Bound::Included((ns.to_string(), String::new()))
            }
            _ => std::ops::Bound::Unbounded,
        };
        let mut items = Vec::new();
        let mut next = None;
        let mut last_key: Option<&ObjKey> = None;
        let mut remaining = 0usize;
        let ns_filter = ns.filter(|_| def.namespaced);
        for (k, o) in map.range((lower, std::ops::Bound::Unbounded)) {
            if let Some(ns) = ns_filter
                && k.0 != ns
            {
                break;
            }
            if !lsel.matches(o) || !fsel.matches(o) {
                continue;
            }
            if let Some(l) = limit
                && items.len() >= l
            {
                if next.is_none() {
                    next = last_key.cloned();
                }
                remaining += 1;
                continue;
            }
            last_key = Some(k);
            items.push(for_version(def, o));
        }
        (items, next, remaining)
    }

    pub fn namespace_exists(&self, ns: &str) -> bool {
        self.objects
            .get("/namespaces")
            .is_some_and(|m| m.contains_key(&(String::new(), ns.to_string())))
    }

    /// Create: server-set metadata, defaulting, validation, admission, then commit.
    pub fn create(
        &mut self,
        def: &ResourceDef,
        ns: &str,
        mut obj: Value,
    ) -> Result<WriteResult, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request must be a JSON object",
            ));
        }
        let body_ns = meta_str(&obj, "namespace").to_string();
        if def.namespaced && !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let generate_name = meta_str(&obj, "generateName").to_string();
        // Admission sees the name as sent: empty when the server generates it.
        let requested_name = meta_str(&obj, "name").to_string();
        let now = objects::now_rfc3339();
        if let Some(o) = obj.as_object_mut() {
            o.insert("apiVersion".into(), Value::String(def.api_version()));
            o.insert("kind".into(), Value::String(def.kind.clone()));
        }
        if let Some(m) = meta_mut(&mut obj) {
            if m.get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
            {
                m.remove("name");
                if !generate_name.is_empty() {
                    let n = format!("{}{}", generate_name, objects::name_suffix());
                    m.insert("name".into(), Value::String(n));
                }
            }
            if def.namespaced {
                m.insert("namespace".into(), Value::String(ns.to_string()));
            } else {
                m.remove("namespace");
            }
            for k in [
                "uid",
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "managedFields",
                "selfLink",
                "generation",
            ] {
                m.remove(k);
            }
            m.insert("uid".into(), Value::String(objects::new_uid()));
            m.insert("creationTimestamp".into(), Value::String(now));
            if def.generation {
                m.insert("generation".into(), json!(1));
            }
        }
        let name = meta_str(&obj, "name").to_string();
        if def.status_subresource
            && !def.keep_status_on_create
            && let Some(o) = obj.as_object_mut()
        {
            o.remove("status");
        }
        if def.special == Special::ResourceClaim {
            objects::claim_zero_status(&mut obj);
        }
        let mut warnings = Vec::new();
        let mut causes = objects::validate_meta(def, &obj, &generate_name);
        let mut new_defs = Vec::new();
        match def.special {
            Special::Pod => {
                objects::default_pod(&mut obj);
                // Mutating admission runs before validation: a missing service account is
                // a 403 even for an invalid pod. In a missing namespace NamespaceLifecycle
                // answers instead (below).
                if self.namespace_exists(ns) {
                    self.admit_service_account(ns, &requested_name, &mut obj)?;
                }
                objects::default_tolerations(&mut obj);
                objects::init_pod_status(&mut obj);
                causes.extend(objects::validate_pod(&obj));
            }
            Special::Node => {
                objects::taint_new_node(&mut obj);
                objects::node_zero_values(&mut obj);
            }
            Special::ResourceSlice => objects::default_device_taints(&mut obj),
            Special::Namespace => objects::default_namespace(&mut obj),
            Special::Crd => match registry::defs_from_crd(&obj) {
                Ok(d) => {
                    new_defs = d;
                    let st = objects::crd_status(&obj);
                    if let Some(o) = obj.as_object_mut() {
                        o.insert("status".into(), st);
                    }
                }
                Err(e) => return Err(e),
            },
            Special::Custom => {
                if let Some(schema) = &def.schema {
                    let out = super::schema::validate(schema, &mut obj);
                    causes.extend(out.causes);
                    warnings = out.warnings;
                }
            }
            // Reviews never reach the store (see http.rs).
            Special::None
            | Special::TokenReview
            | Special::AccessReview
            | Special::ResourceClaim => {}
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(
                &def.kind,
                &def.invalid_group,
                &name,
                causes,
            ));
        }
        // NamespaceLifecycle admission.
        if def.namespaced && !self.namespace_exists(ns) {
            return Err(ApiError::not_found("namespaces", "", ns));
        }
        if let Some(existing) = self.lookup(def, ns, &name) {
            let mut e = ApiError::already_exists(&def.plural, &def.group, &name);
            // The generic store says why a name is still taken.
            if objects::is_deleting(&existing) {
                e.message = format!("object is being deleted: {}", e.message);
            }
            return Err(e);
        }
        let key = key_for(def, ns, &name);
        let object = self.commit(def, key, obj, None);
        for d in new_defs {
            self.registry.insert(d);
        }
        if def.special == Special::Namespace {
            // kube-controller-manager's serviceaccount controller; done at once so a pod
            // created right after its namespace is admitted (the real admission plugin
            // retries `default` for about a second, recording 32).
            self.ensure_default_service_account(&name);
        }
        Ok(WriteResult {
            object: for_version(def, &object),
            warnings,
            created: true,
        })
    }

    /// Builds the stored form of an update and commits it unless it changes nothing.
    fn finish_update(
        &mut self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        old: Arc<Value>,
        mut new: Value,
        sub: Sub,
    ) -> Result<WriteResult, ApiError> {
        if !new.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request must be a JSON object",
            ));
        }
        let mut warnings = Vec::new();
        let mut causes = Vec::new();
        let mut new_defs = None;
        if sub == Sub::Status {
            // Only .status is taken from the request.
            let status = new.get("status").cloned();
            let mut merged = (*old).clone();
            if let Some(o) = merged.as_object_mut() {
                match status {
                    Some(s) if !s.is_null() => {
                        o.insert("status".into(), s);
                    }
                    _ => {
                        o.remove("status");
                    }
                }
            }
            new = merged;
            if def.special == Special::ResourceClaim {
                objects::drop_deallocated_status_devices(&old, &mut new);
                objects::claim_zero_status(&mut new);
            }
            if def.special == Special::Node {
                objects::node_zero_values(&mut new);
            }
            if def.special == Special::ResourceClaim {
                causes.extend(objects::validate_claim_status(
                    &old,
                    &new,
                    self.lacks_claim_binding,
                ));
            }
            if def.special == Special::Custom
                && let Some(schema) = &def.schema
            {
                let out = super::schema::validate(schema, &mut new);
                causes.extend(out.causes);
                warnings = out.warnings;
            }
        } else {
            if let Some(o) = new.as_object_mut() {
                o.insert("apiVersion".into(), Value::String(def.api_version()));
                o.insert("kind".into(), Value::String(def.kind.clone()));
                if def.status_subresource {
                    match old.get("status") {
                        Some(s) => {
                            o.insert("status".into(), s.clone());
                        }
                        None => {
                            o.remove("status");
                        }
                    }
                }
            }
            let old_meta = meta(&old).cloned().unwrap_or_default();
            if let Some(m) = meta_mut(&mut new) {
                // An update never sets, changes or clears the deletion fields (rest.BeforeUpdate).
                for k in [
                    "uid",
                    "creationTimestamp",
                    "generation",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "namespace",
                    "name",
                    "resourceVersion",
                ] {
                    match old_meta.get(k) {
                        Some(v) => {
                            m.insert(k.to_string(), v.clone());
                        }
                        None => {
                            m.remove(k);
                        }
                    }
                }
                m.remove("managedFields");
                m.remove("selfLink");
            }
            causes.extend(objects::validate_meta(def, &new, ""));
            causes.extend(no_new_finalizers(&old, &new));
            match def.special {
                Special::Pod => {
                    objects::default_pod(&mut new);
                    // DefaultTolerationSeconds admits updates too.
                    objects::default_tolerations(&mut new);
                    causes.extend(objects::validate_pod(&new));
                    causes.extend(objects::validate_pod_update(&old, &new));
                }
                Special::Node => objects::node_zero_values(&mut new),
                Special::ResourceSlice => objects::default_device_taints(&mut new),
                Special::Custom => {
                    if let Some(schema) = &def.schema {
                        let out = super::schema::validate(schema, &mut new);
                        causes.extend(out.causes);
                        warnings = out.warnings;
                    }
                }
                Special::Crd => new_defs = Some(registry::defs_from_crd(&new)?),
                Special::Namespace
                | Special::None
                | Special::TokenReview
                | Special::AccessReview
                | Special::ResourceClaim => {}
            }
            if def.generation && spec_part(&old) != spec_part(&new) {
                let g = meta(&old)
                    .and_then(|m| m.get("generation"))
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                if let Some(m) = meta_mut(&mut new) {
                    m.insert("generation".into(), json!(g + 1));
                }
            }
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(
                &def.kind,
                &def.invalid_group,
                name,
                causes,
            ));
        }
        // The generic store's ShouldDeleteDuringUpdate: an update that leaves no finalizers
        // on an object deleted with no grace period left deletes it; the answer is the
        // object as written, at its old resourceVersion (recordings 47, 48).
        if objects::finalizers(&new).is_empty()
            && objects::is_deleting(&old)
            && objects::deletion_grace(&old).unwrap_or(0) == 0
        {
            let key = key_for(def, ns, name);
            self.remove(&skey_of(def), &key);
            if let Some(m) = meta_mut(&mut new) {
                m.insert(
                    "resourceVersion".into(),
                    Value::String(rv_of(&old).to_string()),
                );
            }
            return Ok(WriteResult {
                object: for_version(def, &Arc::new(new)),
                warnings,
                created: false,
            });
        }
        // A write that changes nothing is not persisted (same resourceVersion, no event).
        if new == *old {
            return Ok(WriteResult {
                object: for_version(def, &old),
                warnings,
                created: false,
            });
        }
        let key = key_for(def, ns, name);
        let object = self.commit(def, key, new, Some(old));
        if let Some(defs) = new_defs {
            let crd_group = object
                .get("spec")
                .and_then(|s| s.get("group"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let crd_plural = object
                .get("spec")
                .and_then(|s| s.get("names"))
                .and_then(|n| n.get("plural"))
                .and_then(Value::as_str)
                .unwrap_or("");
            self.registry.remove_resource(crd_group, crd_plural);
            for d in defs {
                self.registry.insert(d);
            }
        }
        Ok(WriteResult {
            object: for_version(def, &object),
            warnings,
            created: false,
        })
    }

    fn check_uid(
        def: &ResourceDef,
        ns: &str,
        name: &str,
        old: &Value,
        new: &Value,
    ) -> Result<(), ApiError> {
        let want = meta_str(new, "uid");
        let have = meta_str(old, "uid");
        if !want.is_empty() && want != have {
            return Err(ApiError::precondition(
                &def.plural,
                &def.group,
                name,
                &def.etcd_key(ns, name),
                "UID",
                want,
                have,
            ));
        }
        Ok(())
    }

    /// PUT.
    pub fn update(
        &mut self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        body: Value,
        sub: Sub,
    ) -> Result<WriteResult, ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request must be a JSON object",
            ));
        }
        let body_name = meta_str(&body, "name");
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let body_ns = meta_str(&body, "namespace");
        if def.namespaced && !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(format!(
                "the namespace of the object ({body_ns}) does not match the namespace on the request ({ns})"
            )));
        }
        let Some(old) = self.lookup(def, ns, name) else {
            if def.create_on_update && sub == Sub::Main {
                return self.create(def, ns, body);
            }
            return Err(ApiError::not_found(&def.plural, &def.group, name));
        };
        let want = rv_of(&body);
        if want.is_empty() {
            if !def.unconditional_update {
                return Err(ApiError::invalid(
                    &def.plural,
                    &def.group,
                    name,
                    vec![Cause::invalid(
                        "metadata.resourceVersion",
                        &json!(0),
                        "must be specified for an update",
                    )],
                ));
            }
        } else if want != rv_of(&old) {
            return Err(ApiError::stale(&def.plural, &def.group, name));
        }
        Self::check_uid(def, ns, name, &old, &body)?;
        self.finish_update(def, ns, name, old, body, sub)
    }

    /// PATCH (all four patch types; apply is a merge, and creates a missing object).
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        pt: PatchType,
        body: &[u8],
        sub: Sub,
    ) -> Result<WriteResult, ApiError> {
        let Some(old) = self.lookup(def, ns, name) else {
            if pt == PatchType::Apply && sub == Sub::Main {
                let mut obj = objects::parse_yaml_object(body)?;
                let n = meta_str(&obj, "name").to_string();
                if n != name {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({n}) does not match the name on the URL ({name})"
                    )));
                }
                if let Some(m) = meta_mut(&mut obj) {
                    m.remove("resourceVersion");
                }
                return self.create(def, ns, obj);
            }
            return Err(ApiError::not_found(&def.plural, &def.group, name));
        };
        let mut new = (*old).clone();
        objects::apply_patch(pt, &mut new, body)?;
        if pt == PatchType::Apply
            && let Some(m) = meta_mut(&mut new)
        {
            // Apply carries no resourceVersion precondition unless one is given.
            m.remove("managedFields");
        }
        let want = rv_of(&new);
        if !want.is_empty() && want != rv_of(&old) {
            return Err(ApiError::stale(&def.plural, &def.group, name));
        }
        Self::check_uid(def, ns, name, &old, &new)?;
        if meta_str(&new, "name") != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                meta_str(&new, "name")
            )));
        }
        self.finish_update(def, ns, name, old, new, sub)
    }

    /// The ServiceAccount admission plugin on pod create (recordings 32, 33): the pod's
    /// account (default `default`) must exist in its namespace, else 403; then the token
    /// volume and pull secrets are added. Mirror pods are left alone but may not name an
    /// account.
    fn admit_service_account(&self, ns: &str, name: &str, obj: &mut Value) -> Result<(), ApiError> {
        if objects::is_mirror_pod(obj) {
            let named = obj
                .get("spec")
                .and_then(|s| s.get("serviceAccountName"))
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty());
            if named {
                return Err(ApiError::forbidden(
                    "pods",
                    "",
                    name,
                    "a mirror pod may not reference service accounts",
                ));
            }
            return Ok(());
        }
        let sa_name = objects::default_service_account_name(obj);
        let sa = self
            .registry
            .get("", "v1", "serviceaccounts")
            .and_then(|d| self.lookup(&d, ns, &sa_name));
        let Some(sa) = sa else {
            return Err(ApiError::forbidden(
                "pods",
                "",
                name,
                &format!(
                    "error looking up service account {ns}/{sa_name}: serviceaccount \"{sa_name}\" not found"
                ),
            ));
        };
        objects::admit_service_account(obj, &sa);
        objects::sync_service_account(obj);
        Ok(())
    }

    /// `POST pods/{name}/binding`.
    pub fn bind(
        &mut self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        body: &Value,
    ) -> Result<(), ApiError> {
        let Some(old) = self.lookup(def, ns, name) else {
            return Err(ApiError::not_found(&def.plural, &def.group, name));
        };
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request must be a JSON object",
            ));
        }
        if meta_str(body, "name") != name {
            return Err(ApiError::bad_request(
                "name in URL does not match name in Binding object",
            ));
        }
        let body_ns = meta_str(body, "namespace");
        if !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let target = body.get("target");
        let node = target
            .and_then(|t| t.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let tkind = target
            .and_then(|t| t.get("kind"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let mut causes = Vec::new();
        if node.is_empty() {
            causes.push(Cause::required("target.name", ""));
        }
        if !tkind.is_empty() && tkind != "Node" {
            causes.push(Cause::not_supported(
                "target.kind",
                &Value::String(tkind.into()),
                &[Value::from("Node"), Value::from("<empty>")],
            ));
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid("Binding", "", name, causes));
        }
        Self::check_uid(def, ns, name, &old, body)?;
        let want_rv = rv_of(body);
        if !want_rv.is_empty() && want_rv != rv_of(&old) {
            return Err(ApiError::precondition(
                &def.plural,
                &def.group,
                name,
                &def.etcd_key(ns, name),
                "ResourceVersion",
                want_rv,
                rv_of(&old),
            ));
        }
        let assigned = old
            .get("spec")
            .and_then(|s| s.get("nodeName"))
            .and_then(Value::as_str)
            .unwrap_or("");
        if !assigned.is_empty() {
            return Err(ApiError::conflict(
                "pods/binding",
                "",
                name,
                &format!("pod {name} is already assigned to node \"{assigned}\""),
            ));
        }
        let mut new = (*old).clone();
        if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert("nodeName".into(), Value::String(node.to_string()));
        }
        if let Some(ann) = meta(body)
            .and_then(|m| m.get("annotations"))
            .and_then(Value::as_object)
            && let Some(m) = meta_mut(&mut new)
        {
            let a = m
                .entry("annotations")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(a) = a.as_object_mut() {
                for (k, v) in ann {
                    a.insert(k.clone(), v.clone());
                }
            }
        }
        let cond = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": objects::now_rfc3339()});
        if let Some(o) = new.as_object_mut() {
            let st = o
                .entry("status")
                .or_insert_with(|| Value::Object(Map::new()));
            if !st.is_object() {
                *st = Value::Object(Map::new());
            }
            if let Some(st) = st.as_object_mut() {
                let conds = st
                    .entry("conditions")
                    .or_insert_with(|| Value::Array(vec![]));
                if !conds.is_array() {
                    *conds = Value::Array(vec![]);
                }
                if let Some(list) = conds.as_array_mut() {
                    list.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
                    list.push(cond);
                }
            }
        }
        let key = key_for(def, ns, name);
        self.commit(def, key, new, Some(old));
        Ok(())
    }

    /// Registers a watch atomically with its starting point.
    pub fn register_watch(
        &mut self,
        def: &ResourceDef,
        ns: Option<&str>,
        start: WatchStart,
    ) -> Result<WatchInit, ApiError> {
        let skey: Arc<str> = Arc::from(skey_of(def));
        let ns_filter = ns.filter(|_| def.namespaced).map(str::to_string);
        let mut replay = Vec::new();
        let mut snapshot = Vec::new();
        let start_rv = match start {
            WatchStart::FromRv(r) => {
                if r < self.floor {
                    return Err(ApiError::expired(format!(
                        "too old resource version: {r} ({})",
                        self.floor
                    )));
                }
                let first = self.history.partition_point(|e| e.rv <= r);
                for e in self.history.iter().skip(first) {
                    if *e.skey == *skey && ns_filter.as_ref().is_none_or(|n| *n == e.namespace) {
                        replay.push(e.clone());
                    }
                }
                r
            }
            WatchStart::Snapshot => {
                if let Some(map) = self.objects.get(&skey) {
                    match &ns_filter {
                        Some(n) => snapshot.extend(
                            map.range((n.clone(), String::new())..)
                                .take_while(|(k, _)| k.0 == *n)
                                .map(|(_, o)| o.clone()),
                        ),
                        None => snapshot.extend(map.values().cloned()),
                    }
                }
                self.rv
            }
        };
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let id = self.next_watcher;
        self.next_watcher += 1;
        self.watchers.push(WatcherSlot {
            id,
            skey,
            namespace: ns_filter,
            tx,
        });
        Ok(WatchInit {
            id,
            rx,
            replay,
            snapshot,
            start_rv,
        })
    }
}
