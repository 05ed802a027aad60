//! The resource table: every served resource is one `ResourceDef`.
//!
//! Adding a built-in resource (ConfigMaps, PVCs, ResourceClaims, ...) is one entry in
//! [`builtin_resources`]; CRDs add entries at run time through [`defs_from_crd`].

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::selector::FieldLabel;
use super::status::{ApiError, Cause};

/// How `metadata.name` is validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameRule {
    /// RFC 1123 subdomain (most resources).
    Subdomain,
    /// RFC 1123 label (namespaces).
    Label,
    /// Any path segment (custom resources).
    PathSegment,
}

/// Resource-specific behaviour hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Special {
    None,
    Pod,
    Namespace,
    Crd,
    Custom,
    /// `tokenreviews`: create-only, answered from the auth table, not stored.
    TokenReview,
    /// `subjectaccessreviews` and `selfsubjectaccessreviews`: create-only, answered from
    /// the auth table, not stored.
    AccessReview,
    /// `resourceclaims`: status writes are validated (allocation immutable, reservedFor
    /// limit) and may need `resourceclaims/binding` (see `AuthHandle::deny_claim_binding`).
    ResourceClaim,
    /// `nodes`: TaintNodesByCondition admission on create, Go zero-value status fields.
    Node,
    /// `resourceslices`: device taints get a server-set `timeAdded`.
    ResourceSlice,
}

#[derive(Debug, Clone)]
pub(crate) struct ResourceDef {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub list_kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    /// `/status` is served; writes to the main resource keep the stored status.
    pub status_subresource: bool,
    /// `pods/binding`.
    pub binding_subresource: bool,
    /// Keep `.status` from the body on create (nodes); otherwise it is dropped/reset.
    pub keep_status_on_create: bool,
    pub field_labels: Vec<FieldLabel>,
    /// `metadata.generation` is maintained (bumped when anything outside metadata/status changes).
    pub generation: bool,
    /// PUT without `metadata.resourceVersion` is allowed.
    pub unconditional_update: bool,
    /// PUT of a missing object creates it.
    pub create_on_update: bool,
    /// DELETE answers the deleted object (else a Success Status).
    pub return_deleted_object: bool,
    /// DELETE is graceful (pods: `deletionTimestamp` now + grace period, the kubelet
    /// finishes the deletion).
    pub graceful_delete: bool,
    pub name_rule: NameRule,
    pub special: Special,
    /// CRD `openAPIV3Schema`.
    pub schema: Option<Arc<Value>>,
    /// Built-in types: list items carry no kind/apiVersion; strategic merge patch allowed.
    pub builtin: bool,
    /// etcd key prefix, used in precondition messages.
    pub etcd_prefix: String,
    /// Group named in `Invalid` errors (events.k8s.io events validate as core `Event`).
    pub invalid_group: String,
}

impl ResourceDef {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    /// Storage identity: all versions of one group/resource share objects.
    pub fn storage_key(&self) -> String {
        format!("{}/{}", self.group, self.plural)
    }
    pub fn etcd_key(&self, ns: &str, name: &str) -> String {
        if self.namespaced {
            format!("{}/{}/{}", self.etcd_prefix, ns, name)
        } else {
            format!("{}/{}", self.etcd_prefix, name)
        }
    }
    fn base(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) -> Self {
        let prefix = if group.is_empty() || !group.contains('.') || group.ends_with(".k8s.io") {
            format!("/registry/{plural}")
        } else {
            format!("/registry/{group}/{plural}")
        };
        let mut field_labels = vec![FieldLabel::new("metadata.name", "")];
        if namespaced {
            field_labels.push(FieldLabel::new("metadata.namespace", ""));
        }
        ResourceDef {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            kind: kind.into(),
            list_kind: format!("{kind}List"),
            namespaced,
            short_names: vec![],
            status_subresource: false,
            binding_subresource: false,
            keep_status_on_create: false,
            field_labels,
            generation: false,
            unconditional_update: true,
            create_on_update: false,
            return_deleted_object: false,
            graceful_delete: false,
            name_rule: NameRule::Subdomain,
            special: Special::None,
            schema: None,
            builtin: true,
            etcd_prefix: prefix,
            invalid_group: group.into(),
        }
    }
}

fn fl(labels: &[&str]) -> Vec<FieldLabel> {
    labels.iter().map(|l| FieldLabel::new(l, "")).collect()
}

/// The built-in resources, one entry each.
pub(crate) fn builtin_resources() -> Vec<ResourceDef> {
    let mut out = Vec::new();

    let mut ns = ResourceDef::base("", "v1", "namespaces", "Namespace", false);
    ns.status_subresource = true;
    ns.name_rule = NameRule::Label;
    ns.special = Special::Namespace;
    ns.return_deleted_object = true;
    ns.short_names = vec!["ns".into()];
    ns.field_labels = fl(&["metadata.name", "status.phase"]);
    out.push(ns);

    let mut node = ResourceDef::base("", "v1", "nodes", "Node", false);
    node.status_subresource = true;
    node.keep_status_on_create = true;
    node.short_names = vec!["no".into()];
    node.etcd_prefix = "/registry/minions".into();
    node.field_labels = fl(&["metadata.name"]);
    node.field_labels
        .push(FieldLabel::new("spec.unschedulable", "false"));
    node.special = Special::Node;
    out.push(node);

    let mut pod = ResourceDef::base("", "v1", "pods", "Pod", true);
    pod.status_subresource = true;
    pod.binding_subresource = true;
    pod.generation = true;
    pod.special = Special::Pod;
    pod.return_deleted_object = true;
    pod.graceful_delete = true;
    pod.short_names = vec!["po".into()];
    pod.field_labels = fl(&[
        "metadata.name",
        "metadata.namespace",
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ]);
    pod.field_labels
        .push(FieldLabel::new("spec.hostNetwork", "false"));
    out.push(pod);

    let core_event_fields = [
        "metadata.name",
        "metadata.namespace",
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ];
    let mut ev = ResourceDef::base("", "v1", "events", "Event", true);
    ev.create_on_update = true;
    ev.short_names = vec!["ev".into()];
    ev.field_labels = fl(&core_event_fields);
    out.push(ev);

    let mut ev2 = ResourceDef::base("events.k8s.io", "v1", "events", "Event", true);
    ev2.create_on_update = true;
    ev2.invalid_group = String::new();
    ev2.short_names = vec!["ev".into()];
    // The server keeps core field labels for events.k8s.io; map them onto the new field names.
    ev2.field_labels = vec![
        FieldLabel::new("metadata.name", ""),
        FieldLabel::new("metadata.namespace", ""),
        FieldLabel::aliased("involvedObject.kind", "regarding.kind"),
        FieldLabel::aliased("involvedObject.namespace", "regarding.namespace"),
        FieldLabel::aliased("involvedObject.name", "regarding.name"),
        FieldLabel::aliased("involvedObject.uid", "regarding.uid"),
        FieldLabel::aliased("involvedObject.apiVersion", "regarding.apiVersion"),
        FieldLabel::aliased(
            "involvedObject.resourceVersion",
            "regarding.resourceVersion",
        ),
        FieldLabel::aliased("involvedObject.fieldPath", "regarding.fieldPath"),
        FieldLabel::new("reason", ""),
        FieldLabel::aliased("reportingComponent", "reportingController"),
        FieldLabel::new("type", ""),
    ];
    out.push(ev2);

    // ServiceAccounts: what the ServiceAccount admission plugin looks up on pod create; the
    // simulated serviceaccount controller keeps a `default` one in every namespace.
    let mut sa = ResourceDef::base("", "v1", "serviceaccounts", "ServiceAccount", true);
    sa.short_names = vec!["sa".into()];
    out.push(sa);

    // Storage: what the volumes plugin reads and writes (binding is done by clients: the
    // simulator runs no PV controller; see `sim::provisioner`).
    let mut pvc = ResourceDef::base(
        "",
        "v1",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        true,
    );
    pvc.status_subresource = true;
    pvc.short_names = vec!["pvc".into()];
    out.push(pvc);
    let mut pv = ResourceDef::base("", "v1", "persistentvolumes", "PersistentVolume", false);
    pv.status_subresource = true;
    pv.short_names = vec!["pv".into()];
    out.push(pv);
    let mut sc = ResourceDef::base(
        "storage.k8s.io",
        "v1",
        "storageclasses",
        "StorageClass",
        false,
    );
    sc.short_names = vec!["sc".into()];
    out.push(sc);

    // ConfigMaps: what the gpu_sharing plugin writes for fractional pods.
    let mut cm = ResourceDef::base("", "v1", "configmaps", "ConfigMap", true);
    cm.short_names = vec!["cm".into()];
    out.push(cm);

    // DRA (resource.k8s.io/v1): what the dra plugin reads and writes. No resourceclaim
    // controller runs: claims from templates are created by the client (tests, demo).
    let mut rc = ResourceDef::base(
        "resource.k8s.io",
        "v1",
        "resourceclaims",
        "ResourceClaim",
        true,
    );
    rc.status_subresource = true;
    rc.special = Special::ResourceClaim;
    out.push(rc);
    out.push(ResourceDef::base(
        "resource.k8s.io",
        "v1",
        "resourceclaimtemplates",
        "ResourceClaimTemplate",
        true,
    ));
    let mut slice = ResourceDef::base(
        "resource.k8s.io",
        "v1",
        "resourceslices",
        "ResourceSlice",
        false,
    );
    slice.field_labels = fl(&["metadata.name", "spec.nodeName", "spec.driver"]);
    slice.special = Special::ResourceSlice;
    // Both strategies start generation at 1 (recording 38 for slices).
    slice.generation = true;
    out.push(slice);
    let mut class = ResourceDef::base(
        "resource.k8s.io",
        "v1",
        "deviceclasses",
        "DeviceClass",
        false,
    );
    class.generation = true;
    out.push(class);

    let mut lease = ResourceDef::base("coordination.k8s.io", "v1", "leases", "Lease", true);
    lease.create_on_update = true;
    out.push(lease);

    let mut crd = ResourceDef::base(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
    );
    crd.status_subresource = true;
    crd.generation = true;
    crd.unconditional_update = false;
    crd.special = Special::Crd;
    crd.return_deleted_object = true;
    crd.short_names = vec!["crd".into(), "crds".into()];
    crd.etcd_prefix = "/registry/apiextensions.k8s.io/customresourcedefinitions".into();
    out.push(crd);

    let mut tr = ResourceDef::base(
        "authentication.k8s.io",
        "v1",
        "tokenreviews",
        "TokenReview",
        false,
    );
    tr.special = Special::TokenReview;
    out.push(tr);
    let mut sar = ResourceDef::base(
        "authorization.k8s.io",
        "v1",
        "subjectaccessreviews",
        "SubjectAccessReview",
        false,
    );
    sar.special = Special::AccessReview;
    out.push(sar);
    let mut ssar = ResourceDef::base(
        "authorization.k8s.io",
        "v1",
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
        false,
    );
    ssar.special = Special::AccessReview;
    out.push(ssar);

    out
}

/// Verbs listed in discovery for a main resource.
pub(crate) const MAIN_VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// Served resources, by (group, version, plural), plus group order for discovery.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    by_gvr: HashMap<(String, String, String), Arc<ResourceDef>>,
    /// group -> versions (first is preferred), in registration order.
    groups: Vec<(String, Vec<String>)>,
}

impl Registry {
    pub fn new() -> Self {
        let mut r = Registry::default();
        for d in builtin_resources() {
            r.insert(d);
        }
        r
    }

    pub fn insert(&mut self, d: ResourceDef) {
        match self.groups.iter_mut().find(|(g, _)| *g == d.group) {
            Some((_, vs)) => {
                if !vs.contains(&d.version) {
                    vs.push(d.version.clone());
                }
            }
            None => self.groups.push((d.group.clone(), vec![d.version.clone()])),
        }
        self.by_gvr.insert(
            (d.group.clone(), d.version.clone(), d.plural.clone()),
            Arc::new(d),
        );
    }

    /// Removes every version of `group`/`plural`.
    pub fn remove_resource(&mut self, group: &str, plural: &str) {
        self.by_gvr
            .retain(|(g, _, p), _| !(g == group && p == plural));
        let by = &self.by_gvr;
        for (g, vs) in self.groups.iter_mut() {
            if g == group {
                vs.retain(|v| by.keys().any(|(gg, vv, _)| gg == g && vv == v));
            }
        }
        self.groups.retain(|(_, vs)| !vs.is_empty());
    }

    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceDef>> {
        self.by_gvr
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
            .cloned()
    }

    pub fn has_group_version(&self, group: &str, version: &str) -> bool {
        self.groups
            .iter()
            .any(|(g, vs)| g == group && vs.iter().any(|v| v == version))
    }

    pub fn groups(&self) -> &[(String, Vec<String>)] {
        &self.groups
    }

    /// Resources of one group/version, sorted by name.
    pub fn resources(&self, group: &str, version: &str) -> Vec<Arc<ResourceDef>> {
        let mut v: Vec<_> = self
            .by_gvr
            .iter()
            .filter(|((g, vv, _), _)| g == group && vv == version)
            .map(|(_, d)| d.clone())
            .collect();
        v.sort_by(|a, b| a.plural.cmp(&b.plural));
        v
    }

    /// The resource serving `kind` in `apiVersion` (how the garbage collector resolves an
    /// ownerReference; like its REST mapper, an unserved group/version/kind resolves to None).
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceDef>> {
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        // Reviews are never stored, so nothing can be owned by one.
        self.by_gvr
            .values()
            .find(|d| {
                d.group == group
                    && d.version == version
                    && d.kind == kind
                    && !matches!(d.special, Special::TokenReview | Special::AccessReview)
            })
            .cloned()
    }

    /// One served version of the resource stored under `skey` (all versions share storage).
    pub fn by_storage_key(&self, skey: &str) -> Option<Arc<ResourceDef>> {
        let mut defs: Vec<&Arc<ResourceDef>> = self
            .by_gvr
            .values()
            .filter(|d| d.storage_key() == skey)
            .collect();
        // Deterministic choice among versions.
        defs.sort_by(|a, b| a.version.cmp(&b.version));
        defs.first().map(|d| (*d).clone())
    }

    /// Every storage key of a namespaced resource (for namespace deletion).
    pub fn namespaced_storage_keys(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .by_gvr
            .values()
            .filter(|d| d.namespaced)
            .map(|d| d.storage_key())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = Some(v);
    for p in path {
        cur = cur.and_then(|c| c.get(*p));
    }
    cur.and_then(Value::as_str).unwrap_or("")
}

/// Validates a CRD object the way the real server checks what the simulator relies on,
/// and returns one `ResourceDef` per served version.
pub(crate) fn defs_from_crd(crd: &Value) -> Result<Vec<ResourceDef>, ApiError> {
    let name = str_at(crd, &["metadata", "name"]);
    let group = str_at(crd, &["spec", "group"]);
    let plural = str_at(crd, &["spec", "names", "plural"]);
    let kind = str_at(crd, &["spec", "names", "kind"]);
    let scope = str_at(crd, &["spec", "scope"]);
    let mut causes = Vec::new();
    if group.is_empty() {
        causes.push(Cause::required("spec.group", ""));
    } else if !group.contains('.') {
        causes.push(Cause::invalid(
            "spec.group",
            &Value::String(group.into()),
            "should be a domain with at least one dot",
        ));
    }
    if plural.is_empty() {
        causes.push(Cause::required("spec.names.plural", ""));
    }
    if kind.is_empty() {
        causes.push(Cause::required("spec.names.kind", ""));
    }
    if name != format!("{plural}.{group}") {
        causes.push(Cause::invalid(
            "metadata.name",
            &Value::String(name.into()),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    if scope != "Namespaced" && scope != "Cluster" {
        causes.push(Cause::not_supported(
            "spec.scope",
            &Value::String(scope.into()),
            &[Value::from("Cluster"), Value::from("Namespaced")],
        ));
    }
    let versions = crd
        .get("spec")
        .and_then(|s| s.get("versions"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        causes.push(Cause::invalid(
            "spec.versions",
            &Value::Array(vec![]),
            "must have exactly one version marked as storage version",
        ));
    }
    let storage_count = versions
        .iter()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .count();
    if !versions.is_empty() && storage_count != 1 {
        causes.push(Cause::invalid(
            "spec.versions",
            &Value::Array(versions.clone()),
            "must have exactly one version marked as storage version",
        ));
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid(
            "CustomResourceDefinition",
            "apiextensions.k8s.io",
            name,
            causes,
        ));
    }
    let names = crd.get("spec").and_then(|s| s.get("names"));
    let singular = names
        .and_then(|n| n.get("singular"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    let list_kind = names
        .and_then(|n| n.get("listKind"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("{kind}List"));
    let short_names: Vec<String> = names
        .and_then(|n| n.get("shortNames"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let namespaced = scope == "Namespaced";
    let mut out = Vec::new();
    for v in &versions {
        if v.get("served").and_then(Value::as_bool) != Some(true) {
            continue;
        }
        let vname = v.get("name").and_then(Value::as_str).unwrap_or("");
        if vname.is_empty() {
            continue;
        }
        let mut d = ResourceDef::base(group, vname, plural, kind, namespaced);
        d.singular = singular.clone();
        d.list_kind = list_kind.clone();
        d.short_names = short_names.clone();
        d.builtin = false;
        d.generation = true;
        d.unconditional_update = false;
        d.return_deleted_object = true;
        d.name_rule = NameRule::PathSegment;
        d.special = Special::Custom;
        d.etcd_prefix = format!("/registry/{group}/{plural}");
        d.status_subresource = v
            .get("subresources")
            .and_then(|s| s.get("status"))
            .is_some_and(|s| !s.is_null());
        d.schema = v
            .get("schema")
            .and_then(|s| s.get("openAPIV3Schema"))
            .filter(|s| !s.is_null())
            .map(|s| Arc::new(s.clone()));
        if let Some(sel) = v.get("selectableFields").and_then(Value::as_array) {
            for f in sel {
                if let Some(p) = f.get("jsonPath").and_then(Value::as_str) {
                    let label = p.trim_start_matches('.');
                    if !label.is_empty() {
                        d.field_labels.push(FieldLabel::new(label, ""));
                    }
                }
            }
        }
        out.push(d);
    }
    Ok(out)
}
