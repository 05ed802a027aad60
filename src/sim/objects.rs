//! Per-object rules: metadata helpers, name validation, pod defaulting and validation,
//! and the patch formats.

use serde_json::{Map, Value, json};

use super::registry::{NameRule, ResourceDef};
use super::status::{ApiError, Cause};

pub(crate) fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

/// `metadata` as a map, created when missing (None only if `obj` is not an object).
pub(crate) fn meta_mut(obj: &mut Value) -> Option<&mut Map<String, Value>> {
    let o = obj.as_object_mut()?;
    let m = o
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !m.is_object() {
        *m = Value::Object(Map::new());
    }
    m.as_object_mut()
}

pub(crate) fn meta_str<'a>(obj: &'a Value, key: &str) -> &'a str {
    meta(obj)
        .and_then(|m| m.get(key))
        .and_then(Value::as_str)
        .unwrap_or("")
}

pub(crate) fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| jiff::Timestamp::now().to_string())
}

pub(crate) fn new_uid() -> String {
    let b: [u8; 16] = rand::random();
    let mut b = b;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// `generateName` suffix: 5 characters from the apiserver's alphabet.
pub(crate) fn name_suffix() -> String {
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHA[rand::random_range(0..ALPHA.len())] as char)
        .collect()
}

const SUBDOMAIN_MSG: &str = r"a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = r"a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Messages for one name under `rule`; `prefix` is the generateName form (a trailing '-' is fine).
pub(crate) fn name_errors(rule: NameRule, name: &str, prefix: bool) -> Vec<String> {
    let n: String = if prefix && name.ends_with('-') {
        format!("{}a", &name[..name.len() - 1])
    } else {
        name.to_string()
    };
    let mut out = Vec::new();
    match rule {
        NameRule::Subdomain => {
            if n.len() > 253 {
                out.push("must be no more than 253 characters".to_string());
            }
            if !n.split('.').all(is_label) {
                out.push(SUBDOMAIN_MSG.to_string());
            }
        }
        NameRule::Label => {
            if n.len() > 63 {
                out.push("must be no more than 63 characters".to_string());
            }
            if !is_label(&n) {
                out.push(LABEL_MSG.to_string());
            }
        }
        NameRule::PathSegment => {
            if n == "." || n == ".." {
                out.push(format!("may not be '{n}'"));
            }
            for bad in ["/", "%"] {
                if n.contains(bad) {
                    out.push(format!("may not contain '{bad}'"));
                }
            }
        }
    }
    out
}

/// Validates `metadata.name` / `metadata.generateName` (and label values) of a created object.
pub(crate) fn validate_meta(def: &ResourceDef, obj: &Value, generate_name: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = meta_str(obj, "name");
    if !generate_name.is_empty() {
        for m in name_errors(def.name_rule, generate_name, true) {
            causes.push(Cause::invalid(
                "metadata.generateName",
                &Value::String(generate_name.into()),
                &m,
            ));
        }
    }
    if name.is_empty() {
        causes.push(Cause::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        for m in name_errors(def.name_rule, name, false) {
            causes.push(Cause::invalid(
                "metadata.name",
                &Value::String(name.into()),
                &m,
            ));
        }
    }
    if let Some(labels) = meta(obj)
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
    {
        for (k, v) in labels {
            match v.as_str() {
                Some(s) if super::selector::valid_label_value(s) => {}
                _ => causes.push(Cause::invalid(
                    "metadata.labels",
                    v,
                    &format!("invalid label value for key \"{k}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"),
                )),
            }
        }
    }
    causes
}

fn set_default(m: &mut Map<String, Value>, k: &str, v: Value) {
    if !m.contains_key(k) || m.get(k).is_some_and(Value::is_null) {
        m.insert(k.to_string(), v);
    }
}

/// The defaults kube-apiserver fills into a pod spec (the cheap, visible ones).
pub(crate) fn default_pod(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    for list in ["containers", "initContainers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                set_default(c, "resources", json!({}));
                set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
                set_default(c, "terminationMessagePolicy", json!("File"));
                let image = c.get("image").and_then(Value::as_str).unwrap_or("");
                let last = image.rsplit('/').next().unwrap_or("");
                let policy =
                    if image.contains('@') || (last.contains(':') && !last.ends_with(":latest")) {
                        "IfNotPresent"
                    } else {
                        "Always"
                    };
                set_default(c, "imagePullPolicy", json!(policy));
            }
        }
    }
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "enableServiceLinks", json!(true));
    set_default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    set_default(spec, "priority", json!(0));
}

/// The DefaultTolerationSeconds admission: tolerate not-ready/unreachable for 300 s.
pub(crate) fn default_tolerations(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let tols = spec
        .entry("tolerations")
        .or_insert_with(|| Value::Array(vec![]));
    let Some(list) = tols.as_array_mut() else {
        return;
    };
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let present = list.iter().any(|t| {
            t.get("key").and_then(Value::as_str) == Some(key)
                || (t.get("operator").and_then(Value::as_str) == Some("Exists")
                    && t.get("key").is_none_or(|k| k.as_str() == Some("")))
        });
        if !present {
            list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
        }
    }
}

/// Resets a created pod's status the way the pod strategy does.
pub(crate) fn init_pod_status(obj: &mut Value) {
    let qos = qos_class(obj);
    if let Some(m) = obj.as_object_mut() {
        m.insert(
            "status".into(),
            json!({"phase": "Pending", "qosClass": qos}),
        );
    }
}

fn qos_class(obj: &Value) -> &'static str {
    let cs = obj
        .get("spec")
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array);
    let Some(cs) = cs else { return "BestEffort" };
    let mut any = false;
    let mut guaranteed = true;
    for c in cs {
        let req = c
            .get("resources")
            .and_then(|r| r.get("requests"))
            .and_then(Value::as_object);
        let lim = c
            .get("resources")
            .and_then(|r| r.get("limits"))
            .and_then(Value::as_object);
        if req.is_some_and(|r| !r.is_empty()) || lim.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        let full = lim.is_some_and(|l| l.contains_key("cpu") && l.contains_key("memory"));
        let equal = match (req, lim) {
            (Some(r), Some(l)) => r.iter().all(|(k, v)| l.get(k) == Some(v)),
            _ => true,
        };
        if !(full && equal) {
            guaranteed = false;
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// The pod checks the simulator enforces: containers present, each with name and image.
pub(crate) fn validate_pod(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let cs = obj
        .get("spec")
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array);
    match cs {
        None => causes.push(Cause::required("spec.containers", "")),
        Some(cs) if cs.is_empty() => causes.push(Cause::required("spec.containers", "")),
        Some(cs) => {
            let mut seen = std::collections::HashSet::new();
            for (i, c) in cs.iter().enumerate() {
                let name = c.get("name").and_then(Value::as_str).unwrap_or("");
                if name.is_empty() {
                    causes.push(Cause::required(format!("spec.containers[{i}].name"), ""));
                } else if !seen.insert(name.to_string()) {
                    causes.push(Cause {
                        reason: "FieldValueDuplicate",
                        message: format!("Duplicate value: \"{name}\""),
                        field: format!("spec.containers[{i}].name"),
                    });
                }
                if c.get("image")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .is_empty()
                {
                    causes.push(Cause::required(format!("spec.containers[{i}].image"), ""));
                }
            }
        }
    }
    causes
}

const POD_UPDATE_MSG: &str = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// Pod spec immutability on update (only images, deadlines, tolerations, grace period and
/// scheduling gates may change).
pub(crate) fn validate_pod_update(old: &Value, new: &Value) -> Vec<Cause> {
    fn strip(spec: Option<&Value>) -> Value {
        let mut s = spec.cloned().unwrap_or(Value::Null);
        if let Some(m) = s.as_object_mut() {
            for k in [
                "activeDeadlineSeconds",
                "tolerations",
                "terminationGracePeriodSeconds",
                "schedulingGates",
            ] {
                m.remove(k);
            }
            for list in ["containers", "initContainers"] {
                if let Some(cs) = m.get_mut(list).and_then(Value::as_array_mut) {
                    for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                        c.remove("image");
                    }
                }
            }
        }
        s
    }
    if strip(old.get("spec")) != strip(new.get("spec")) {
        vec![Cause::forbidden("spec", POD_UPDATE_MSG)]
    } else {
        vec![]
    }
}

/// Defaults of a new namespace.
pub(crate) fn default_namespace(obj: &mut Value) {
    let name = meta_str(obj, "name").to_string();
    if let Some(m) = meta_mut(obj) {
        let labels = m
            .entry("labels")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(l) = labels.as_object_mut() {
            l.insert("kubernetes.io/metadata.name".into(), Value::String(name));
        }
    }
    if let Some(o) = obj.as_object_mut() {
        o.insert("spec".into(), json!({"finalizers": ["kubernetes"]}));
        o.insert("status".into(), json!({"phase": "Active"}));
    }
}

/// Status the real server converges a CRD to (accepted names, Established).
pub(crate) fn crd_status(obj: &Value) -> Value {
    let now = now_rfc3339();
    let names = obj
        .get("spec")
        .and_then(|s| s.get("names"))
        .cloned()
        .unwrap_or(json!({}));
    let storage: Vec<Value> = obj
        .get("spec")
        .and_then(|s| s.get("versions"))
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                .filter_map(|v| v.get("name").cloned())
                .collect()
        })
        .unwrap_or_default();
    json!({
        "acceptedNames": names,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "lastTransitionTime": now, "reason": "NoConflicts", "message": "no conflicts found"},
            {"type": "Established", "status": "True", "lastTransitionTime": now, "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"}
        ],
        "storedVersions": storage
    })
}

/// The patch formats the server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

/// RFC 7386 JSON merge patch.
pub(crate) fn merge_patch(doc: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !doc.is_object() {
                *doc = Value::Object(Map::new());
            }
            if let Some(d) = doc.as_object_mut() {
                for (k, v) in p {
                    if v.is_null() {
                        d.remove(k);
                    } else {
                        merge_patch(d.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *doc = other.clone(),
    }
}

/// Merge keys of the lists bindlet may strategic-merge (by field name, wherever it appears).
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "conditions" => "type",
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "resourceClaims"
        | "containerStatuses"
        | "initContainerStatuses"
        | "readinessGates"
        | "imagePullSecrets" => "name",
        "ownerReferences" => "uid",
        "volumeMounts" => "mountPath",
        "ports" => "containerPort",
        "addresses" => "type",
        "taints" => "key",
        _ => return None,
    })
}

/// Strategic merge patch: a merge patch where known lists merge by key, primitive lists named
/// `finalizers` merge as sets, and `$patch: delete|replace` and `$retainKeys` are honoured
/// minimally.
pub(crate) fn strategic_patch(doc: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *doc = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut r = patch.clone();
        if let Some(m) = r.as_object_mut() {
            m.remove("$patch");
        }
        *doc = r;
        return;
    }
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let Some(d) = doc.as_object_mut() else { return };
    for (k, v) in p {
        if k.starts_with('$') {
            continue;
        }
        if let Some(kk) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let _ = kk;
            continue;
        }
        if v.is_null() {
            d.remove(k);
            continue;
        }
        match (merge_key(k), v) {
            (Some(mk), Value::Array(items)) if items.iter().all(Value::is_object) => {
                let cur = d.entry(k.clone()).or_insert(Value::Array(vec![]));
                if !cur.is_array() {
                    *cur = Value::Array(vec![]);
                }
                if let Some(list) = cur.as_array_mut() {
                    for item in items {
                        let key = item.get(mk).cloned();
                        let del = item.get("$patch").and_then(Value::as_str) == Some("delete");
                        let pos = key
                            .as_ref()
                            .and_then(|kv| list.iter().position(|e| e.get(mk) == Some(kv)));
                        match (pos, del) {
                            (Some(i), true) => {
                                list.remove(i);
                            }
                            (None, true) => {}
                            (Some(i), false) => strategic_patch(&mut list[i], item),
                            (None, false) => {
                                let mut n = Value::Null;
                                strategic_patch(&mut n, item);
                                list.push(n);
                            }
                        }
                    }
                }
            }
            (_, Value::Array(items)) if k == "finalizers" => {
                let cur = d.entry(k.clone()).or_insert(Value::Array(vec![]));
                if let Some(list) = cur.as_array_mut() {
                    for it in items {
                        if !list.contains(it) {
                            list.push(it.clone());
                        }
                    }
                }
            }
            (_, Value::Object(_)) => strategic_patch(d.entry(k.clone()).or_insert(Value::Null), v),
            _ => {
                d.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Applies a patch body of `pt` to `doc`.
pub(crate) fn apply_patch(pt: PatchType, doc: &mut Value, body: &[u8]) -> Result<(), ApiError> {
    match pt {
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            json_patch::patch(doc, &ops).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })
        }
        PatchType::Merge | PatchType::Strategic => {
            let p: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            if !p.is_object() {
                return Err(ApiError::bad_request(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                ));
            }
            if pt == PatchType::Merge {
                merge_patch(doc, &p);
            } else {
                strategic_patch(doc, &p);
            }
            Ok(())
        }
        PatchType::Apply => {
            let p = parse_yaml_object(body)?;
            merge_patch(doc, &p);
            Ok(())
        }
    }
}

/// Parses an apply body (YAML or JSON) into a JSON object.
pub(crate) fn parse_yaml_object(body: &[u8]) -> Result<Value, ApiError> {
    let p: Value = serde_yaml::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
    if !p.is_object() {
        return Err(ApiError::bad_request(
            "error decoding YAML: the body must be an object",
        ));
    }
    Ok(p)
}

/// ResourceClaim status rules of resource.k8s.io/v1 the agent depends on: `reservedFor`
/// holds at most 256 entries, a set `allocation` cannot be changed (only cleared), and
/// changing `allocation` or `reservedFor` needs `update` on `resourceclaims/binding`.
pub(crate) fn validate_claim_status(old: &Value, new: &Value, lacks_binding: bool) -> Vec<Cause> {
    let get = |o: &Value, k: &str| o.get("status").and_then(|s| s.get(k)).cloned();
    let (old_alloc, new_alloc) = (get(old, "allocation"), get(new, "allocation"));
    let (old_res, new_res) = (get(old, "reservedFor"), get(new, "reservedFor"));
    let mut causes = Vec::new();
    if lacks_binding && (old_alloc != new_alloc || old_res != new_res) {
        causes.push(Cause::forbidden(
            "status",
            "changing allocation or reservedFor requires update permission on resourceclaims/binding",
        ));
        return causes;
    }
    if let (Some(a), Some(b)) = (&old_alloc, &new_alloc)
        && a != b
    {
        causes.push(Cause::invalid("status.allocation", b, "field is immutable"));
    }
    let n = new_res
        .as_ref()
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if n > 256 {
        causes.push(Cause {
            reason: "FieldValueTooMany",
            message: format!("Too many: {n}: must have at most 256 items"),
            field: "status.reservedFor".into(),
        });
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(name_errors(NameRule::Subdomain, "p2.", true).len() == 1);
        assert!(name_errors(NameRule::Subdomain, "p2-", true).is_empty());
        assert!(name_errors(NameRule::Subdomain, "a.b-c", false).is_empty());
        assert!(!name_errors(NameRule::Label, "a.b", false).is_empty());
        assert!(!name_errors(NameRule::Subdomain, "Upper", false).is_empty());
        assert!(name_errors(NameRule::PathSegment, "Any_Thing", false).is_empty());
        assert!(!name_errors(NameRule::PathSegment, "a/b", false).is_empty());
    }

    #[test]
    fn strategic_merges_conditions_by_type() {
        let mut doc = json!({"status": {"conditions": [{"type": "A", "status": "False"}, {"type": "B", "status": "True"}]}});
        strategic_patch(
            &mut doc,
            &json!({"status": {"conditions": [{"type": "A", "status": "True"}, {"type": "C", "status": "True"}]}}),
        );
        assert_eq!(
            doc["status"]["conditions"],
            json!([{"type": "A", "status": "True"}, {"type": "B", "status": "True"}, {"type": "C", "status": "True"}])
        );
    }

    #[test]
    fn uid_format() {
        let u = new_uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }
}
