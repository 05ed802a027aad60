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

/// The defaults kube-apiserver fills into a pod spec (the cheap, visible ones), on every
/// decode (create and update).
pub(crate) fn default_pod(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    // v1 conversion: the deprecated `serviceAccount` stands in for a missing
    // `serviceAccountName`; on the way out it mirrors the name (see `sync_service_account`).
    let name_missing = spec
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty);
    if name_missing
        && let Some(dep) = spec
            .get("serviceAccount")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    {
        spec.insert("serviceAccountName".into(), Value::String(dep));
    }
    for list in ["containers", "initContainers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                set_default(c, "resources", json!({}));
                default_requests_from_limits(c);
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
    sync_service_account(obj);
}

/// `SetDefaults_Pod`: a limit without a request sets the request, for every resource
/// (recording 49: an extended-resource limit gets the same request).
fn default_requests_from_limits(c: &mut Map<String, Value>) {
    let Some(limits) = c
        .get("resources")
        .and_then(|r| r.get("limits"))
        .and_then(Value::as_object)
        .filter(|l| !l.is_empty())
        .cloned()
    else {
        return;
    };
    let Some(res) = c.get_mut("resources").and_then(Value::as_object_mut) else {
        return;
    };
    let req = res
        .entry("requests")
        .or_insert_with(|| Value::Object(Map::new()));
    if !req.is_object() {
        *req = Value::Object(Map::new());
    }
    if let Some(req) = req.as_object_mut() {
        for (k, v) in limits {
            req.entry(k).or_insert(v);
        }
    }
}

/// v1 conversion of a pod: the deprecated `spec.serviceAccount` always mirrors
/// `spec.serviceAccountName` (recording 33).
pub(crate) fn sync_service_account(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    match spec
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
    {
        Some(n) => {
            spec.insert("serviceAccount".into(), Value::String(n));
        }
        None => {
            spec.remove("serviceAccount");
        }
    }
}

/// The service account every namespace gets from kube-controller-manager's serviceaccount
/// controller, and the one a pod without `serviceAccountName` runs as.
pub(crate) const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// Static pods mirrored by a kubelet carry this; the ServiceAccount plugin leaves them alone.
const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Where the ServiceAccount plugin mounts the token volume (`DefaultAPITokenMountPath`).
const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Prefix of the token volume's generated name (`ServiceAccountVolumeName` + "-").
const TOKEN_VOLUME_PREFIX: &str = "kube-api-access-";

pub(crate) fn is_mirror_pod(obj: &Value) -> bool {
    meta(obj)
        .and_then(|m| m.get("annotations"))
        .and_then(Value::as_object)
        .is_some_and(|a| a.contains_key(MIRROR_POD_ANNOTATION))
}

/// The ServiceAccount admission plugin's first step: an unset `serviceAccountName` becomes
/// `default`. Returns the name to look up.
pub(crate) fn default_service_account_name(obj: &mut Value) -> String {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return DEFAULT_SERVICE_ACCOUNT.to_string();
    };
    let name = spec
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or(DEFAULT_SERVICE_ACCOUNT)
        .to_string();
    spec.insert("serviceAccountName".into(), Value::String(name.clone()));
    name
}

/// The ServiceAccount admission plugin's mutations once the account exists (upstream
/// `plugin/pkg/admission/serviceaccount`): unless the pod, else the account, sets
/// `automountServiceAccountToken: false`, every (init) container without a mount at the
/// token path mounts the projected `kube-api-access-<5 random>` volume read-only, and the
/// volume is added (an existing `kube-api-access-*` volume is reused); a pod without
/// `imagePullSecrets` gets the account's.
pub(crate) fn admit_service_account(obj: &mut Value, sa: &Value) {
    let pod_pref = obj
        .get("spec")
        .and_then(|s| s.get("automountServiceAccountToken"))
        .and_then(Value::as_bool);
    let sa_pref = sa
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool);
    let pull: Vec<Value> = sa
        .get("imagePullSecrets")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.get("name").cloned())
                .map(|n| json!({"name": n}))
                .collect()
        })
        .unwrap_or_default();
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if pod_pref.or(sa_pref).unwrap_or(true) {
        mount_token(spec);
    }
    let has_pull = spec
        .get("imagePullSecrets")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    if !has_pull && !pull.is_empty() {
        spec.insert("imagePullSecrets".into(), Value::Array(pull));
    }
}

fn mount_token(spec: &mut Map<String, Value>) {
    let existing = spec
        .get("volumes")
        .and_then(Value::as_array)
        .and_then(|vs| {
            vs.iter()
                .filter_map(|v| v.get("name").and_then(Value::as_str))
                .find(|n| n.starts_with(TOKEN_VOLUME_PREFIX))
                .map(str::to_string)
        });
    let volume_name = existing
        .clone()
        .unwrap_or_else(|| format!("{TOKEN_VOLUME_PREFIX}{}", name_suffix()));
    let mount = json!({"name": volume_name, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH});
    let mut needs_volume = false;
    // Init containers first, as upstream does; the order only matters for the volume name.
    for list in ["initContainers", "containers"] {
        let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in cs.iter_mut().filter_map(Value::as_object_mut) {
            let mounts = c
                .entry("volumeMounts")
                .or_insert_with(|| Value::Array(vec![]));
            if !mounts.is_array() {
                *mounts = Value::Array(vec![]);
            }
            let Some(mounts) = mounts.as_array_mut() else {
                continue;
            };
            // An existing mount at the token path keeps the token out of that container.
            if mounts
                .iter()
                .any(|m| m.get("mountPath").and_then(Value::as_str) == Some(TOKEN_MOUNT_PATH))
            {
                continue;
            }
            mounts.push(mount.clone());
            needs_volume = true;
        }
    }
    if existing.is_none() && needs_volume {
        let vols = spec
            .entry("volumes")
            .or_insert_with(|| Value::Array(vec![]));
        if !vols.is_array() {
            *vols = Value::Array(vec![]);
        }
        if let Some(vols) = vols.as_array_mut() {
            vols.push(token_volume(&volume_name));
        }
    }
}

/// `TokenVolumeSource()` of upstream kube-apiserver: token (expiration 3607 s, the
/// warn-only bound-token lifetime), the `kube-root-ca.crt` ConfigMap and the namespace.
/// (Recording 33 also shows `openshift-service-ca.crt`: the OpenShift fork adds it.)
fn token_volume(name: &str) -> Value {
    json!({
        "name": name,
        "projected": {
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
            ],
            "defaultMode": 420
        }
    })
}

/// The DefaultTolerationSeconds admission (create and update): tolerate not-ready and
/// unreachable for 300 s unless a toleration already covers that taint, i.e. has the taint's
/// key or no key, and effect NoExecute or no effect (upstream
/// `plugin/pkg/admission/defaulttolerationseconds`).
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
            let k = t.get("key").and_then(Value::as_str).unwrap_or("");
            let e = t.get("effect").and_then(Value::as_str).unwrap_or("");
            (k == key || k.is_empty()) && (e == "NoExecute" || e.is_empty())
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

/// `ComputePodQOS`: only cpu and memory count (an extended resource alone leaves a pod
/// BestEffort, recording 49), summed over containers and init containers, zero quantities
/// ignored; Guaranteed needs cpu and memory limits in every container and requests equal to
/// limits.
fn qos_class(obj: &Value) -> &'static str {
    use bindlet_api::quantity;
    const QOS: [&str; 2] = ["cpu", "memory"];
    let spec = obj.get("spec");
    let mut requests: std::collections::BTreeMap<&str, quantity::Nanos> = Default::default();
    let mut limits: std::collections::BTreeMap<&str, quantity::Nanos> = Default::default();
    let mut guaranteed = true;
    let containers = ["containers", "initContainers"].into_iter().flat_map(|l| {
        spec.and_then(|s| s.get(l))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
    });
    for c in containers {
        let res = c.get("resources");
        let positive = |list: &str| -> Vec<(&'static str, quantity::Nanos)> {
            QOS.iter()
                .filter_map(|name| {
                    let q = res
                        .and_then(|r| r.get(list))
                        .and_then(|l| l.get(*name))
                        .and_then(Value::as_str)?;
                    let n = quantity::parse(q).ok()?;
                    (n > 0).then_some((*name, n))
                })
                .collect()
        };
        for (k, n) in positive("requests") {
            *requests.entry(k).or_insert(0) += n;
        }
        let lim = positive("limits");
        if lim.len() < QOS.len() {
            guaranteed = false;
        }
        for (k, n) in lim {
            *limits.entry(k).or_insert(0) += n;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return "BestEffort";
    }
    if guaranteed
        && requests.iter().all(|(k, r)| limits.get(k) == Some(r))
        && requests.len() == limits.len()
    {
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

/// The taint the TaintNodesByCondition admission plugin puts on every new Node (recording
/// 31); only the node-lifecycle controller removes it, and nothing in the simulator does
/// (recordings 36, 37, 50).
pub(crate) const NOT_READY_TAINT_KEY: &str = "node.kubernetes.io/not-ready";

/// TaintNodesByCondition on create: appends `not-ready:NoSchedule` unless a taint with that
/// key and effect is there already.
pub(crate) fn taint_new_node(obj: &mut Value) {
    let Some(o) = obj.as_object_mut() else { return };
    let spec = o.entry("spec").or_insert_with(|| Value::Object(Map::new()));
    if !spec.is_object() {
        *spec = Value::Object(Map::new());
    }
    let Some(spec) = spec.as_object_mut() else {
        return;
    };
    let taints = spec.entry("taints").or_insert_with(|| Value::Array(vec![]));
    if !taints.is_array() {
        *taints = Value::Array(vec![]);
    }
    let Some(list) = taints.as_array_mut() else {
        return;
    };
    let present = list.iter().any(|t| {
        t.get("key").and_then(Value::as_str) == Some(NOT_READY_TAINT_KEY)
            && t.get("effect").and_then(Value::as_str) == Some("NoSchedule")
    });
    if !present {
        list.push(json!({"key": NOT_READY_TAINT_KEY, "effect": "NoSchedule"}));
    }
}

/// A Node as the real server serializes it: `spec` and `status` always, and the status
/// structs that are not pointers in Go with their zero values (recording 31).
pub(crate) fn node_zero_values(obj: &mut Value) {
    let Some(o) = obj.as_object_mut() else { return };
    for k in ["spec", "status"] {
        let v = o.entry(k).or_insert_with(|| Value::Object(Map::new()));
        if !v.is_object() {
            *v = Value::Object(Map::new());
        }
    }
    let Some(status) = o.get_mut("status").and_then(Value::as_object_mut) else {
        return;
    };
    let de = status.entry("daemonEndpoints").or_insert_with(|| json!({}));
    if let Some(de) = de.as_object_mut() {
        let ke = de.entry("kubeletEndpoint").or_insert_with(|| json!({}));
        if let Some(ke) = ke.as_object_mut() {
            ke.entry("Port").or_insert(json!(0));
        }
    }
    let info = status.entry("nodeInfo").or_insert_with(|| json!({}));
    if let Some(info) = info.as_object_mut() {
        for k in [
            "machineID",
            "systemUUID",
            "bootID",
            "kernelVersion",
            "osImage",
            "containerRuntimeVersion",
            "kubeletVersion",
            "kubeProxyVersion",
            "operatingSystem",
            "architecture",
        ] {
            info.entry(k).or_insert(json!(""));
        }
    }
}

/// resource.k8s.io defaulting of a ResourceSlice: a device taint without `timeAdded` gets
/// the current time (recording 38); a given one is kept.
pub(crate) fn default_device_taints(obj: &mut Value) {
    let Some(devices) = obj
        .get_mut("spec")
        .and_then(|s| s.get_mut("devices"))
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    let now = now_rfc3339();
    for d in devices {
        let Some(taints) = d.get_mut("taints").and_then(Value::as_array_mut) else {
            continue;
        };
        for t in taints.iter_mut().filter_map(Value::as_object_mut) {
            if t.get("timeAdded").is_none_or(Value::is_null) {
                t.insert("timeAdded".into(), Value::String(now.clone()));
            }
        }
    }
}

/// A ResourceClaim's `status` is a struct, not a pointer, in Go: the server always
/// serializes it, `{}` when empty (recording 39).
pub(crate) fn claim_zero_status(obj: &mut Value) {
    if let Some(o) = obj.as_object_mut()
        && o.get("status").is_none_or(|s| !s.is_object())
    {
        o.insert("status".into(), Value::Object(Map::new()));
    }
}

/// `metadata.finalizers` as strings.
pub(crate) fn finalizers(obj: &Value) -> Vec<String> {
    meta(obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Sets `metadata.finalizers` (removed when empty, as the server omits an empty list).
pub(crate) fn set_finalizers(obj: &mut Value, list: &[String]) {
    if let Some(m) = meta_mut(obj) {
        if list.is_empty() {
            m.remove("finalizers");
        } else {
            m.insert("finalizers".into(), json!(list));
        }
    }
}

/// Whether a delete was requested (`metadata.deletionTimestamp` is set).
pub(crate) fn is_deleting(obj: &Value) -> bool {
    meta(obj)
        .and_then(|m| m.get("deletionTimestamp"))
        .is_some_and(|v| !v.is_null())
}

/// `metadata.deletionGracePeriodSeconds`, when set.
pub(crate) fn deletion_grace(obj: &Value) -> Option<i64> {
    meta(obj)
        .and_then(|m| m.get("deletionGracePeriodSeconds"))
        .and_then(Value::as_i64)
}

/// `now` shifted by `secs` seconds, as a Kubernetes `Time` (second precision).
pub(crate) fn rfc3339_after(base: jiff::Timestamp, secs: i64) -> String {
    let t = base
        .checked_add(jiff::SignedDuration::from_secs(secs))
        .unwrap_or(base);
    t.round(jiff::Unit::Second).unwrap_or(t).to_string()
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

/// What kube-apiserver does to a ResourceClaim status write (`dropDeallocatedStatusDevices`
/// in `pkg/registry/resource/resourceclaim/strategy.go`): the `status.devices` entries of
/// devices the old allocation had and the new one no longer has are removed, so a binder
/// that clears an allocation need not (and in 1.36 may not) touch the drivers' entries.
pub(crate) fn drop_deallocated_status_devices(old: &Value, new: &mut Value) {
    let devices_of = |o: &Value| -> Vec<(String, String, String)> {
        o.pointer("/status/allocation/devices/results")
            .and_then(Value::as_array)
            .map(|rs| {
                rs.iter()
                    .map(|r| {
                        let f =
                            |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                        (f("driver"), f("pool"), f("device"))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let (before, after) = (devices_of(old), devices_of(new));
    let Some(list) = new
        .pointer_mut("/status/devices")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    list.retain(|d| {
        let f = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let id = (f("driver"), f("pool"), f("device"));
        !before.contains(&id) || after.contains(&id)
    });
    if list.is_empty()
        && let Some(st) = new.get_mut("status").and_then(Value::as_object_mut)
    {
        st.remove("devices");
    }
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
    fn deallocated_device_statuses_are_dropped() {
        let dev = |d: &str| json!({ "driver": "x", "pool": "p", "device": d, "conditions": [] });
        let alloc = |ds: &[&str]| json!({ "devices": { "results": ds.iter().map(|d| json!({ "request": "r", "driver": "x", "pool": "p", "device": d })).collect::<Vec<_>>() } });
        let old = json!({ "status": { "allocation": alloc(&["a", "b"]), "devices": [dev("a"), dev("b")] } });
        let mut cleared = json!({ "status": { "devices": [dev("a"), dev("b")] } });
        drop_deallocated_status_devices(&old, &mut cleared);
        assert_eq!(
            cleared,
            json!({ "status": {} }),
            "allocation removed: all dropped"
        );
        let mut kept =
            json!({ "status": { "allocation": alloc(&["a", "b"]), "devices": [dev("a")] } });
        drop_deallocated_status_devices(&old, &mut kept);
        assert_eq!(
            kept["status"]["devices"],
            json!([dev("a")]),
            "still allocated: kept"
        );
        let unallocated = json!({ "status": {} });
        let mut early = json!({ "status": { "devices": [dev("z")] } });
        drop_deallocated_status_devices(&unallocated, &mut early);
        assert_eq!(
            early["status"]["devices"],
            json!([dev("z")]),
            "never allocated: left to validation"
        );
    }

    #[test]
    fn uid_format() {
        let u = new_uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }
}
