//! bindlet's BindRequest CRD and types against KAI-Scheduler's CRD.
//!
//! KAI's CRD (`../shared/kai/scheduling.run.ai_bindrequests.yaml`) is the contract: every path
//! it declares must exist in bindlet's schema with the same type, every object it accepts must
//! decode into `BindRequest` and serialize back unchanged, and bindlet may only add optional
//! fields. A small structural-schema validator below checks that the sample objects really
//! are valid under KAI's schema, so the round trips cannot pass vacuously.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use bindlet::api::{self, BindRequest};
use serde_json::{Map, Value, json};

// ---------------------------------------------------------------------------------------------
// Loading

fn kai_crd() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/kai/scheduling.run.ai_bindrequests.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "KAI's CRD is missing at {} ({e}); it is the reference this test checks against \
             (shared/kai/scheduling.run.ai_bindrequests.yaml next to the repository)",
            path.display()
        )
    });
    serde_yaml::from_str(&text).expect("KAI's CRD is valid YAML")
}

/// bindlet's CRD as published, read back from the YAML text `bindlet crd` prints.
fn bindlet_crd() -> Value {
    serde_yaml::from_str(&api::crd_yaml().expect("bindlet's CRD serializes"))
        .expect("bindlet's CRD YAML parses")
}

fn version<'a>(crd: &'a Value, name: &str) -> &'a Value {
    crd["spec"]["versions"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("CRD has no version {name}"))
}

fn schema_of(crd: &Value) -> &Value {
    &version(crd, api::VERSION)["schema"]["openAPIV3Schema"]
}

/// A named change applied to a copy of a schema or object, for the negative tests.
type Mutation = Box<dyn Fn(&mut Value)>;

// ---------------------------------------------------------------------------------------------
// Schema paths

/// What matters about one schema node for compatibility.
#[derive(Debug, Default, Clone, PartialEq)]
struct Node {
    type_: Option<String>,
    format: Option<String>,
    int_or_string: bool,
    preserve_unknown: bool,
    required: BTreeSet<String>,
    default: Option<Value>,
    list_type: Option<String>,
    map_type: Option<String>,
    /// Keywords that restrict values, other than type/format/required.
    restrictions: BTreeMap<String, Value>,
}

const RESTRICTING: &[&str] = &[
    "enum",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "x-kubernetes-validations",
    "allOf",
    "oneOf",
    "not",
];

fn node_of(s: &Value) -> Node {
    let str_of = |k: &str| s.get(k).and_then(Value::as_str).map(str::to_owned);
    Node {
        type_: str_of("type"),
        format: str_of("format"),
        int_or_string: s["x-kubernetes-int-or-string"] == true,
        preserve_unknown: s["x-kubernetes-preserve-unknown-fields"] == true,
        required: s["required"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        default: s.get("default").cloned(),
        list_type: str_of("x-kubernetes-list-type"),
        map_type: str_of("x-kubernetes-map-type"),
        restrictions: RESTRICTING
            .iter()
            .filter_map(|k| s.get(*k).map(|v| ((*k).to_owned(), v.clone())))
            .collect(),
    }
}

/// Every node of a schema by path: `.spec.podName`, `[]` for items, `{}` for map values.
fn paths(schema: &Value) -> BTreeMap<String, Node> {
    fn walk(s: &Value, path: String, out: &mut BTreeMap<String, Node>) {
        out.insert(path.clone(), node_of(s));
        if let Some(props) = s["properties"].as_object() {
            for (k, v) in props {
                walk(v, format!("{path}.{k}"), out);
            }
        }
        if s["items"].is_object() {
            walk(&s["items"], format!("{path}[]"), out);
        }
        if s["additionalProperties"].is_object() {
            walk(&s["additionalProperties"], format!("{path}{{}}"), out);
        }
    }
    let mut out = BTreeMap::new();
    walk(schema, String::new(), &mut out);
    out
}

/// Ways in which `ours` would not accept, or would store differently, what `kai` accepts.
fn incompatibilities(kai: &Value, ours: &Value) -> Vec<String> {
    let kai = paths(kai);
    let ours = paths(ours);
    let mut problems = Vec::new();
    for (path, k) in &kai {
        let Some(o) = ours.get(path) else {
            problems.push(format!("{path}: missing in bindlet's schema"));
            continue;
        };
        let shown = if path.is_empty() { "<root>" } else { path };
        if o.type_ != k.type_ {
            problems.push(format!("{shown}: type {:?}, KAI {:?}", o.type_, k.type_));
        }
        // Same format where KAI gives one, and none added where it does not (the server
        // validates formats, so an extra one would reject KAI-valid values).
        if o.format != k.format {
            problems.push(format!(
                "{shown}: format {:?}, KAI {:?}",
                o.format, k.format
            ));
        }
        if o.int_or_string != k.int_or_string {
            problems.push(format!("{shown}: int-or-string differs"));
        }
        if o.preserve_unknown != k.preserve_unknown {
            problems.push(format!("{shown}: preserve-unknown-fields differs"));
        }
        if o.default != k.default {
            problems.push(format!(
                "{shown}: default {:?}, KAI {:?}",
                o.default, k.default
            ));
        }
        if o.list_type != k.list_type || o.map_type != k.map_type {
            problems.push(format!("{shown}: list/map type differs"));
        }
        if !o.required.is_subset(&k.required) {
            let extra: Vec<_> = o.required.difference(&k.required).collect();
            problems.push(format!("{shown}: requires {extra:?}, KAI does not"));
        }
        for (kw, v) in &o.restrictions {
            if k.restrictions.get(kw) != Some(v) {
                problems.push(format!("{shown}: adds restriction {kw}={v}"));
            }
        }
    }
    problems
}

#[test]
fn every_kai_path_exists_in_bindlet_with_the_same_type() {
    let kai = schema_of(&kai_crd()).clone();
    let count = paths(&kai).len();
    assert!(count > 60, "KAI's schema was read ({count} paths)");
    let problems = incompatibilities(&kai, schema_of(&bindlet_crd()));
    assert!(
        problems.is_empty(),
        "incompatibilities:\n{}",
        problems.join("\n")
    );
}

#[test]
fn path_comparison_catches_tampering() {
    let kai = schema_of(&kai_crd()).clone();
    let results = "/properties/spec/properties/resourceClaimAllocations/items/properties/allocation\
                   /properties/devices/properties/results/items";
    let cap = format!("{results}/properties/consumedCapacity/additionalProperties");
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "missing field",
            Box::new(|s| {
                s["properties"]["spec"]["properties"]
                    .as_object_mut()
                    .unwrap()
                    .remove("podName");
            }),
        ),
        (
            "changed type",
            Box::new(|s| {
                s["properties"]["status"]["properties"]["failedAttempts"]["type"] = json!("string")
            }),
        ),
        (
            "added format",
            Box::new(|s| {
                s["properties"]["spec"]["properties"]["receivedGPU"]["properties"]["count"]["format"] =
                    json!("int64")
            }),
        ),
        (
            "added required",
            Box::new(|s| s["properties"]["spec"]["required"] = json!(["podName"])),
        ),
        (
            "added enum",
            Box::new(|s| {
                s["properties"]["status"]["properties"]["phase"]["enum"] = json!(["Pending"])
            }),
        ),
        (
            "lost int-or-string",
            Box::new(move |s| *s.pointer_mut(&cap).unwrap() = json!({"type": "string"})),
        ),
        (
            "lost preserve-unknown-fields",
            Box::new(|s| {
                let p = "/properties/spec/properties/resourceClaimAllocations/items/properties/allocation\
                     /properties/devices/properties/config/items/properties/opaque/properties/parameters";
                s.pointer_mut(p)
                    .unwrap()
                    .as_object_mut()
                    .unwrap()
                    .remove("x-kubernetes-preserve-unknown-fields");
            }),
        ),
        (
            "lost default",
            Box::new(move |s| {
                s.pointer_mut(&format!(
                    "{results}/properties/tolerations/items/properties/operator"
                ))
                .unwrap()
                .as_object_mut()
                .unwrap()
                .remove("default");
            }),
        ),
    ];
    for (what, tamper) in cases {
        let mut ours = kai.clone();
        tamper(&mut ours);
        assert!(
            !incompatibilities(&kai, &ours).is_empty(),
            "not caught: {what}"
        );
    }
}

#[test]
fn bindlet_additions_are_optional() {
    let kai = paths(schema_of(&kai_crd()));
    let ours = paths(schema_of(&bindlet_crd()));
    let added: Vec<&String> = ours.keys().filter(|p| !kai.contains_key(*p)).collect();
    assert!(
        added.iter().any(|p| *p == ".status.nodeVerification"),
        "expected bindlet's nodeVerification addition, got {added:?}"
    );
    for path in added {
        // Only the point where an addition hangs off KAI's schema matters: below it, the
        // addition is a block of its own that may have required members.
        let (parent, field) = match path.rsplit_once('.') {
            Some((parent, field)) if !field.contains(['[', '{']) => (parent, field),
            _ => continue,
        };
        if let Some(k) = kai.get(parent) {
            assert!(
                !ours[parent].required.contains(field) && !k.required.contains(field),
                "{path} is added by bindlet and must be optional"
            );
            assert!(ours[path].default.is_none(), "{path} must not be defaulted");
        }
    }
}

#[test]
fn same_identity_as_kai() {
    let kai = kai_crd();
    let ours = bindlet_crd();
    assert_eq!(ours["apiVersion"], "apiextensions.k8s.io/v1");
    assert_eq!(ours["kind"], "CustomResourceDefinition");
    assert_eq!(ours["metadata"]["name"], kai["metadata"]["name"]);
    assert_eq!(ours["spec"]["group"], kai["spec"]["group"]);
    assert_eq!(ours["spec"]["group"], api::GROUP);
    assert_eq!(ours["spec"]["scope"], kai["spec"]["scope"]);
    assert_eq!(
        ours["spec"]["names"], kai["spec"]["names"],
        "kind, plural, singular, listKind"
    );
    let names = |crd: &Value| -> Vec<Value> {
        crd["spec"]["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .map(|v| v["name"].clone())
            .collect()
    };
    assert_eq!(names(&ours), names(&kai));
    let (o, k) = (version(&ours, api::VERSION), version(&kai, api::VERSION));
    for field in ["served", "storage", "subresources"] {
        assert_eq!(o[field], k[field], "versions[].{field}");
    }
    assert_eq!(o["subresources"], json!({"status": {}}));
    assert_eq!(
        o["selectableFields"],
        json!([{"jsonPath": ".spec.selectedNode"}])
    );
    let columns: Vec<&str> = o["additionalPrinterColumns"]
        .as_array()
        .expect("printer columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(columns, ["Node", "Phase", "Attempts", "Age"]);
}

#[test]
fn generated_yaml_is_the_crd() {
    let from_yaml: Value = bindlet_crd();
    let direct = serde_json::to_value(api::crd()).expect("CRD serializes");
    assert_eq!(from_yaml, direct);
}

// ---------------------------------------------------------------------------------------------
// Structural schema

/// The rules kube-apiserver enforces on a structural schema (the ones a generator can break).
fn structural_problems(schema: &Value) -> Vec<String> {
    fn check(s: &Value, path: &str, in_junctor: bool, out: &mut Vec<String>) {
        let Some(obj) = s.as_object() else {
            out.push(format!("{path}: schema is not an object"));
            return;
        };
        for forbidden in ["$ref", "definitions", "$defs", "$schema", "nullable"] {
            if obj.contains_key(forbidden) {
                out.push(format!("{path}: has {forbidden}"));
            }
        }
        let int_or_string = s["x-kubernetes-int-or-string"] == true;
        let preserve = s["x-kubernetes-preserve-unknown-fields"] == true;
        if in_junctor {
            for k in ["type", "description", "default", "additionalProperties"] {
                if obj.contains_key(k) && !(k == "type" && int_or_string_variant(s)) {
                    out.push(format!("{path}: {k} inside anyOf/allOf/oneOf"));
                }
            }
        } else if !obj.contains_key("type") && !int_or_string && !preserve {
            out.push(format!("{path}: no type"));
        }
        if int_or_string {
            if obj.contains_key("type") {
                out.push(format!("{path}: int-or-string with a type"));
            }
            if let Some(any_of) = obj.get("anyOf")
                && *any_of != json!([{"type": "integer"}, {"type": "string"}])
            {
                out.push(format!(
                    "{path}: int-or-string anyOf must be [integer, string]"
                ));
            }
        } else if obj.contains_key("anyOf") || obj.contains_key("oneOf") {
            out.push(format!("{path}: anyOf/oneOf outside int-or-string"));
        }
        if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
            out.push(format!("{path}: both properties and additionalProperties"));
        }
        if obj.contains_key("x-kubernetes-list-type") && s["type"] != "array" {
            out.push(format!("{path}: list-type on a non-array"));
        }
        if obj.contains_key("x-kubernetes-map-type") && s["type"] != "object" {
            out.push(format!("{path}: map-type on a non-object"));
        }
        if let Some(f) = s["format"].as_str()
            && !["int32", "int64", "date-time", "byte", "double", "float"].contains(&f)
        {
            out.push(format!("{path}: unexpected format {f}"));
        }
        if let Some(d) = s.get("default") {
            let errs = validate(d, s);
            if !errs.is_empty() {
                out.push(format!("{path}: default is invalid: {errs:?}"));
            }
        }
        if s["type"] == "array" && !s["items"].is_object() {
            out.push(format!("{path}: array without a single items schema"));
        }
        if let Some(props) = s["properties"].as_object() {
            for (k, v) in props {
                check(v, &format!("{path}.{k}"), false, out);
            }
        }
        if s["items"].is_object() {
            check(&s["items"], &format!("{path}[]"), false, out);
        }
        if s["additionalProperties"].is_object() {
            check(
                &s["additionalProperties"],
                &format!("{path}{{}}"),
                false,
                out,
            );
        }
        for j in ["anyOf", "allOf", "oneOf"] {
            for sub in s[j].as_array().into_iter().flatten() {
                check(sub, &format!("{path}({j})"), true, out);
            }
        }
    }
    fn int_or_string_variant(s: &Value) -> bool {
        *s == json!({"type": "integer"}) || *s == json!({"type": "string"})
    }
    let mut out = Vec::new();
    check(schema, "", false, &mut out);
    out
}

#[test]
fn bindlet_schema_is_structural() {
    let problems = structural_problems(schema_of(&bindlet_crd()));
    assert!(
        problems.is_empty(),
        "not structural:\n{}",
        problems.join("\n")
    );
}

#[test]
fn structural_checker_accepts_kai_and_rejects_known_mistakes() {
    let problems = structural_problems(schema_of(&kai_crd()));
    assert!(
        problems.is_empty(),
        "KAI's schema flagged:\n{}",
        problems.join("\n")
    );
    for bad in [
        json!({"type": "object", "properties": {"a": {"$ref": "#/definitions/A"}}}),
        json!({"type": "object", "properties": {"a": {"description": "untyped"}}}),
        json!({"type": "object", "properties": {"a": {"type": "string", "nullable": true}}}),
        json!({"anyOf": [{"type": "string"}, {"type": "object"}]}),
        json!({"type": "array"}),
    ] {
        assert!(!structural_problems(&bad).is_empty(), "not flagged: {bad}");
    }
}

// ---------------------------------------------------------------------------------------------
// A small validator for the subset of OpenAPI v3 that CRDs use

/// Errors of `value` against `schema`; unknown fields count as errors (the server would prune
/// them, so a sample carrying one would not be what the server stores).
fn validate(value: &Value, schema: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    validate_at(value, schema, "", &mut errs);
    errs
}

fn validate_at(v: &Value, s: &Value, path: &str, errs: &mut Vec<String>) {
    let mut err = |m: String| {
        errs.push(format!(
            "{}: {m}",
            if path.is_empty() { "<root>" } else { path }
        ))
    };
    if v.is_null() {
        if s["nullable"] != true {
            err("null".into());
        }
        return;
    }
    if s["x-kubernetes-int-or-string"] == true {
        match v {
            Value::String(text) => check_pattern(text, s, &mut err),
            Value::Number(n) if n.is_i64() || n.is_u64() => {}
            other => err(format!("{other} is neither integer nor string")),
        }
        return;
    }
    if let Some(t) = s["type"].as_str() {
        let ok = match t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "boolean" => v.is_boolean(),
            "number" => v.is_number(),
            "integer" => v.is_i64() || v.is_u64(),
            other => panic!("validator does not know type {other}"),
        };
        if !ok {
            err(format!("{v} is not of type {t}"));
            return;
        }
    }
    if let Some(f) = s["format"].as_str() {
        match (f, v) {
            ("date-time", Value::String(t)) => {
                if t.parse::<jiff::Timestamp>().is_err() {
                    err(format!("{t:?} is not a date-time"));
                }
            }
            ("int32", _) => {
                if v.as_i64().and_then(|n| i32::try_from(n).ok()).is_none() {
                    err(format!("{v} is not an int32"));
                }
            }
            ("int64", _) => {
                if v.as_i64().is_none() {
                    err(format!("{v} is not an int64"));
                }
            }
            (other, _) => panic!("validator does not know format {other}"),
        }
    }
    if let Some(allowed) = s["enum"].as_array()
        && !allowed.contains(v)
    {
        err(format!("{v} is not one of {allowed:?}"));
    }
    if let Value::String(text) = v {
        check_pattern(text, s, &mut err);
    }
    match v {
        Value::Object(map) => {
            for r in s["required"].as_array().into_iter().flatten() {
                if let Some(r) = r.as_str()
                    && !map.contains_key(r)
                {
                    err(format!("missing required {r}"));
                }
            }
            // Object metadata is validated by the server itself, not by the CRD schema.
            if path == ".metadata" || s["x-kubernetes-preserve-unknown-fields"] == true {
                return;
            }
            let props = s["properties"].as_object();
            for (k, child) in map {
                let child_path = format!("{path}.{k}");
                if let Some(ps) = props.and_then(|p| p.get(k)) {
                    validate_at(child, ps, &child_path, errs);
                } else if s["additionalProperties"].is_object() {
                    validate_at(child, &s["additionalProperties"], &child_path, errs);
                } else {
                    errs.push(format!("{child_path}: unknown field"));
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                validate_at(item, &s["items"], &format!("{path}[{i}]"), errs);
            }
        }
        _ => {}
    }
}

fn check_pattern(text: &str, s: &Value, err: &mut impl FnMut(String)) {
    let Some(p) = s["pattern"].as_str() else {
        return;
    };
    // Only the quantity pattern occurs in these schemas; anything else is a test gap.
    assert_eq!(
        p,
        api::QUANTITY_PATTERN,
        "validator does not know pattern {p}"
    );
    if !is_quantity(text) {
        err(format!("{text:?} is not a quantity"));
    }
}

/// `^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$`
fn is_quantity(s: &str) -> bool {
    fn number(s: &str) -> Option<&str> {
        let s = s.strip_prefix(['+', '-']).unwrap_or(s);
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let rest = &s[int_len..];
        match rest.strip_prefix('.') {
            Some(frac) => {
                let frac_len = frac.bytes().take_while(u8::is_ascii_digit).count();
                (int_len > 0 || frac_len > 0).then(|| &frac[frac_len..])
            }
            None => (int_len > 0).then_some(rest),
        }
    }
    let Some(suffix) = number(s) else {
        return false;
    };
    matches!(
        suffix,
        "" | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
            | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .and_then(number)
        .is_some_and(str::is_empty)
}

#[test]
fn quantity_matcher() {
    for ok in [
        "1", "-1", "+1.5", ".5", "5.", "10Gi", "100m", "1e3", "1E-3", "2.5e+2", "0",
    ] {
        assert!(is_quantity(ok), "{ok}");
    }
    for bad in [
        "", "Gi", "1.2.3", "1GB", "1e", "e3", "1 Gi", "--1", "1ki", ".",
    ] {
        assert!(!is_quantity(bad), "{bad}");
    }
}

#[test]
fn validator_rejects_invalid_objects() {
    let schema = schema_of(&kai_crd()).clone();
    let base = sample("dra");
    assert_eq!(validate(&base, &schema), Vec::<String>::new());
    let alloc = "/spec/resourceClaimAllocations/0/allocation";
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "count as string",
            Box::new(|v| v["spec"]["receivedGPU"]["count"] = json!("1")),
        ),
        (
            "portion as number",
            Box::new(|v| v["spec"]["receivedGPU"]["portion"] = json!(0.5)),
        ),
        (
            "unknown spec field",
            Box::new(|v| v["spec"]["gpu"] = json!(1)),
        ),
        (
            "backoffLimit over int32",
            Box::new(|v| v["spec"]["backoffLimit"] = json!(1u64 << 40)),
        ),
        (
            "bad timestamp",
            Box::new(move |v| {
                *v.pointer_mut(&format!("{alloc}/allocationTimestamp"))
                    .unwrap() = json!("yesterday")
            }),
        ),
        (
            "missing driver",
            Box::new(move |v| {
                v.pointer_mut(&format!("{alloc}/devices/results/0"))
                    .unwrap()
                    .as_object_mut()
                    .unwrap()
                    .remove("driver");
            }),
        ),
        (
            "bad quantity",
            Box::new(move |v| {
                *v.pointer_mut(&format!(
                    "{alloc}/devices/results/0/consumedCapacity/memory"
                ))
                .unwrap() = json!("8 GB")
            }),
        ),
        (
            "quantity as bool",
            Box::new(move |v| {
                *v.pointer_mut(&format!(
                    "{alloc}/devices/results/0/consumedCapacity/memory"
                ))
                .unwrap() = json!(true)
            }),
        ),
        (
            "parameters as string",
            Box::new(move |v| {
                *v.pointer_mut(&format!("{alloc}/devices/config/0/opaque/parameters"))
                    .unwrap() = json!("x")
            }),
        ),
        (
            "missing nodeSelectorTerms",
            Box::new(move |v| {
                *v.pointer_mut(&format!("{alloc}/nodeSelector")).unwrap() = json!({})
            }),
        ),
        (
            "failedAttempts as string",
            Box::new(|v| v["status"]["failedAttempts"] = json!("2")),
        ),
    ];
    for (what, mutate) in cases {
        let mut v = base.clone();
        mutate(&mut v);
        assert!(
            !validate(&v, &schema).is_empty(),
            "validator accepted: {what}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Sample objects

const META: &str = r#"
apiVersion: scheduling.run.ai/v1alpha2
kind: BindRequest
metadata:
  name: train-0
  namespace: team-a
  labels:
    selected-node: gpu-node-1
    kai.scheduler/node-pool: default
  ownerReferences:
  - apiVersion: v1
    kind: Pod
    name: train-0
    uid: 0f3c7a58-2d8e-4c61-9d7e-3b1a5f0e9c21
"#;

const SAMPLES: &[(&str, &str)] = &[
    (
        "minimal",
        r#"
spec:
  podName: train-0
  selectedNode: gpu-node-1
"#,
    ),
    ("empty-spec", "spec: {}\n"),
    (
        "regular",
        r#"
spec:
  podName: train-0
  selectedNode: gpu-node-1
  receivedResourceType: Regular
  receivedGPU:
    count: 2
    portion: "1.00"
"#,
    ),
    (
        "fraction",
        r#"
spec:
  podName: train-0
  selectedNode: gpu-node-1
  receivedResourceType: Fraction
  receivedGPU:
    count: 1
    portion: "0.50"
  selectedGPUGroups:
  - 5b8a3f0e-7c1d-4e2a-9f6b-0d4c2e8a1b37
  backoffLimit: 3
status:
  phase: Pending
  reason: "binding failed: pod is being deleted"
  failedAttempts: 1
"#,
    ),
    (
        "dra",
        r#"
spec:
  podName: train-0
  selectedNode: gpu-node-1
  receivedResourceType: Regular
  receivedGPU:
    count: 0
  resourceClaimAllocations:
  - name: gpus
    allocation:
      allocationTimestamp: "2025-06-01T10:00:00Z"
      devices:
        config:
        - source: FromClass
          opaque:
            driver: gpu.nvidia.com
            parameters:
              apiVersion: resource.nvidia.com/v1beta1
              kind: GpuConfig
              sharing:
                strategy: TimeSlicing
                timeSlicingConfig: {interval: Long}
              limits: [1, 2.5, "x", true, null, {nested: [[]]}]
        - source: FromClaim
          requests: [gpu, "gpu/small"]
          opaque:
            driver: gpu.nvidia.com
            parameters: {}
        results:
        - request: gpu
          driver: gpu.nvidia.com
          pool: gpu-node-1
          device: gpu-0
          adminAccess: false
          shareID: 7d2f1c8e-0b4a-4e6d-8c1f-2a9b3e5d7f60
          bindingConditions: [DeviceReady]
          bindingFailureConditions: [DeviceFailed]
          consumedCapacity:
            memory: 40Gi
            cores: 8
            bandwidth: "1500m"
            slots: -1
          tolerations:
          - key: nvidia.com/gpu-unhealthy
            operator: Exists
            effect: NoExecute
            tolerationSeconds: 300
          - key: maintenance
            operator: Equal
            value: planned
            effect: NoSchedule
          - {}
        - request: gpu/small
          driver: gpu.nvidia.com
          pool: gpu-node-1
          device: gpu-1
      nodeSelector:
        nodeSelectorTerms:
        - matchExpressions:
          - key: kubernetes.io/hostname
            operator: In
            values: [gpu-node-1]
          - key: nvidia.com/gpu.present
            operator: Exists
          matchFields:
          - key: metadata.name
            operator: In
            values: [gpu-node-1]
        - {}
  - name: nic
    allocation:
      devices:
        config: []
        results: []
  - name: not-yet
  - {}
status:
  phase: Succeeded
  reason: bound
  failedAttempts: 0
"#,
    ),
    (
        "failed",
        r#"
spec:
  podName: train-0
  selectedNode: gpu-node-1
  receivedResourceType: Regular
  receivedGPU:
    count: 1
    portion: "1.00"
  backoffLimit: 5
status:
  phase: Failed
  reason: "node gpu-node-1: 1 GPU requested, 0 healthy and free"
  failedAttempts: 5
"#,
    ),
    (
        // KEP-5004: extended resources backed by DRA, as KAI HEAD writes them.
        "extended-resource-claim",
        r#"
spec:
  podName: train-0
  selectedNode: gpu-node-1
  receivedResourceType: Regular
  extendedResourceClaimAllocation:
    allocation:
      allocationTimestamp: "2026-08-01T10:00:00.123456Z"
      devices:
        results:
        - request: container-0-request-0
          driver: gpu.example.com
          pool: gpu-node-1
          device: gpu-3
          bindingConditions: [Attached]
          bindingFailureConditions: [AttachFailed]
      nodeSelector:
        nodeSelectorTerms:
        - matchFields:
          - key: metadata.name
            operator: In
            values: [gpu-node-1]
    deviceRequests:
    - name: container-0-request-0
      exactly:
        deviceClassName: gpu.example.com
        allocationMode: ExactCount
        count: 2
        selectors:
        - cel:
            expression: device.attributes["gpu.example.com"].model == "H200"
        tolerations:
        - key: example.com/maintenance
          operator: Exists
          effect: NoSchedule
        capacity:
          requests:
            memory: 40Gi
            cores: 8
    - name: container-1-request-0
      firstAvailable:
      - name: big
        deviceClassName: gpu.example.com
        count: 1
      - name: small
        deviceClassName: mig.example.com
        allocationMode: All
        tolerations:
        - operator: Exists
          tolerationSeconds: 300
    containerMappings:
    - containerName: main
      resourceName: example.com/gpu
      requestName: container-0-request-0
    - containerName: sidecar
      resourceName: example.com/gpu
      requestName: container-1-request-0
"#,
    ),
    (
        "numa",
        r#"
spec:
  podName: train-0
  selectedNode: gpu-node-1
  receivedResourceType: Regular
  receivedGPU:
    count: 2
    portion: "1.00"
  predictedNUMAZones:
  - zone: node-0
    amount:
      nvidia.com/gpu: 2
      cpu: 16
      memory: 64Gi
  - zone: node-1
    amount:
      cpu: "500m"
"#,
    ),
    (
        "server-metadata",
        r#"
spec:
  podName: train-0
  selectedNode: gpu-node-1
  selectedGPUGroups: []
status: {}
"#,
    ),
];

/// A sample as the full object a client would read.
fn sample(name: &str) -> Value {
    let body = SAMPLES
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no sample {name}"))
        .1;
    let mut v: Value = serde_yaml::from_str(META).expect("metadata YAML");
    let body: Value = serde_yaml::from_str(body).expect("sample YAML");
    for (k, val) in body.as_object().expect("sample is a map") {
        v[k] = val.clone();
    }
    if name == "server-metadata" {
        // What the server adds on read.
        let meta = v["metadata"].as_object_mut().expect("metadata");
        meta.insert("uid".into(), json!("9a1e6c2b-4f3d-4b8e-a7c5-1d2e3f4a5b6c"));
        meta.insert("resourceVersion".into(), json!("123456"));
        meta.insert("generation".into(), json!(1));
        meta.insert("creationTimestamp".into(), json!("2025-06-01T10:00:00Z"));
    }
    v
}

/// Canonical form for comparison: object keys sorted at every level, nothing else changed.
fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let sorted: BTreeMap<&String, Value> =
                m.iter().map(|(k, v)| (k, normalize(v))).collect();
            Value::Object(
                sorted
                    .into_iter()
                    .map(|(k, v)| (k.clone(), v))
                    .collect::<Map<_, _>>(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        other => other.clone(),
    }
}

#[test]
fn kai_valid_samples_round_trip_losslessly() {
    let kai = schema_of(&kai_crd()).clone();
    let ours = schema_of(&bindlet_crd()).clone();
    for (name, _) in SAMPLES {
        let original = sample(name);
        assert_eq!(
            validate(&original, &kai),
            Vec::<String>::new(),
            "{name}: invalid under KAI's schema"
        );
        assert_eq!(
            validate(&original, &ours),
            Vec::<String>::new(),
            "{name}: invalid under bindlet's schema"
        );
        let br: BindRequest = serde_json::from_value(original.clone())
            .unwrap_or_else(|e| panic!("{name}: does not decode: {e}"));
        let back = serde_json::to_value(&br).expect("serializes");
        assert_eq!(
            normalize(&back),
            normalize(&original),
            "{name}: round trip changed the object"
        );
        // Through YAML as well, the other way objects travel (files, kubectl).
        let yaml = serde_yaml::to_string(&br).expect("to yaml");
        let again: BindRequest = serde_yaml::from_str(&yaml).expect("from yaml");
        assert_eq!(again, br, "{name}: YAML round trip");
    }
}

#[test]
fn dra_sample_decodes_to_the_expected_values() {
    let br: BindRequest = serde_json::from_value(sample("dra")).expect("decodes");
    let claims = br.spec.resource_claim_allocations.as_ref().expect("claims");
    assert_eq!(claims.len(), 4);
    let devices = claims[0]
        .allocation
        .as_ref()
        .and_then(|a| a.devices.as_ref())
        .expect("devices");
    let result = &devices.results.as_ref().expect("results")[0];
    let cap = result.consumed_capacity.as_ref().expect("capacity");
    assert_eq!(cap["cores"], api::QuantityValue::Int(8));
    assert_eq!(cap["memory"], api::QuantityValue::String("40Gi".into()));
    assert_eq!(
        result.share_id.as_deref(),
        Some("7d2f1c8e-0b4a-4e6d-8c1f-2a9b3e5d7f60")
    );
    // Absent and empty lists stay distinct.
    let nic = claims[1]
        .allocation
        .as_ref()
        .and_then(|a| a.devices.as_ref())
        .expect("nic");
    assert_eq!(nic.config.as_deref(), Some(&[][..]));
    assert!(
        devices.results.as_ref().expect("results")[1]
            .tolerations
            .is_none()
    );
    assert_eq!(br.phase(), Some(api::Phase::Succeeded));
    assert_eq!(
        br.owner_pod_uid(),
        Some("0f3c7a58-2d8e-4c61-9d7e-3b1a5f0e9c21")
    );
    // The allocation converts to the k8s-openapi type the DRA code writes into claims.
    let alloc = claims[0].allocation.clone().expect("allocation");
    let k8s = k8s_openapi::api::resource::v1::AllocationResult::try_from(alloc).expect("converts");
    assert_eq!(
        k8s.node_selector
            .expect("selector")
            .node_selector_terms
            .len(),
        2
    );
}

#[test]
fn extended_resource_and_numa_samples_decode_to_the_expected_values() {
    let br: BindRequest =
        serde_json::from_value(sample("extended-resource-claim")).expect("decodes");
    let ext = br
        .spec
        .extended_resource_claim_allocation
        .as_ref()
        .expect("extended allocation");
    let requests = ext.device_requests.as_ref().expect("device requests");
    assert_eq!(requests.len(), 2);
    let exact = requests[0].exactly.as_ref().expect("exactly");
    assert_eq!(exact.count, Some(2));
    let caps = exact
        .capacity
        .as_ref()
        .and_then(|c| c.requests.as_ref())
        .expect("capacity");
    assert_eq!(caps["cores"], api::QuantityValue::Int(8));
    assert_eq!(caps["memory"], api::QuantityValue::String("40Gi".into()));
    let alternatives = requests[1].first_available.as_ref().expect("alternatives");
    assert_eq!(alternatives[1].allocation_mode.as_deref(), Some("All"));
    let mappings = ext.container_mappings.as_ref().expect("mappings");
    assert_eq!(mappings[1].container_name, "sidecar");
    assert_eq!(mappings[1].request_name, "container-1-request-0");
    let alloc = ext.allocation.as_ref().expect("allocation");
    assert_eq!(
        alloc.allocation_timestamp.as_deref(),
        Some("2026-08-01T10:00:00.123456Z"),
        "sub-second precision is kept"
    );
    // The requests convert to the k8s-openapi type a ResourceClaim spec is written with.
    let k8s = k8s_openapi::api::resource::v1::DeviceRequest::from(requests[0].clone());
    let k8s_exact = k8s.exactly.expect("exactly");
    assert_eq!(k8s_exact.device_class_name, "gpu.example.com");
    assert_eq!(
        k8s_exact.capacity.and_then(|c| c.requests).expect("caps")["cores"].0,
        "8"
    );

    let br: BindRequest = serde_json::from_value(sample("numa")).expect("decodes");
    let zones = br.spec.predicted_numa_zones.as_ref().expect("zones");
    assert_eq!(zones.len(), 2);
    assert_eq!(zones[0].zone, "node-0");
    assert_eq!(
        zones[0].amount["nvidia.com/gpu"],
        api::QuantityValue::Int(2)
    );
    assert_eq!(
        zones[1].amount["cpu"],
        api::QuantityValue::String("500m".into())
    );
}

#[test]
fn node_verification_is_kept_by_bindlet_crd_and_pruned_by_kai() {
    let mut v = sample("fraction");
    v["status"]["nodeVerification"] = json!({
        "node": "gpu-node-1",
        "agent": "bindlet-x7k2p",
        "attempt": 2,
        "observedAt": "2025-06-01T10:00:05Z",
        "verdicts": [
            {"plugin": "gpu", "check": "health", "outcome": "Pass", "message": "GPU-5b8a healthy"},
            {"plugin": "gpu", "check": "memory", "outcome": "Fail", "message": "need 40Gi, 12Gi free"},
            {"plugin": "node", "check": "taints", "outcome": "Warn", "message": "PreferNoSchedule"},
            {"plugin": "volumes", "check": "mounts", "outcome": "Skip", "message": "no volumes"}
        ]
    });
    let ours = schema_of(&bindlet_crd()).clone();
    assert_eq!(validate(&v, &ours), Vec::<String>::new());
    let br: BindRequest = serde_json::from_value(v.clone()).expect("decodes");
    let nv = br
        .status
        .as_ref()
        .and_then(|s| s.node_verification.as_ref())
        .expect("kept");
    assert_eq!(nv.verdicts[1].outcome, api::VerdictOutcome::Fail);
    assert_eq!(
        normalize(&serde_json::to_value(&br).expect("ser")),
        normalize(&v)
    );

    // Under KAI's CRD the field is unknown: the server prunes it and bindlet still decodes.
    let kai = schema_of(&kai_crd()).clone();
    assert_eq!(
        validate(&v, &kai),
        vec![".status.nodeVerification: unknown field".to_owned()]
    );
    v["status"]
        .as_object_mut()
        .expect("status")
        .remove("nodeVerification");
    assert_eq!(validate(&v, &kai), Vec::<String>::new());
    let pruned: BindRequest = serde_json::from_value(v).expect("decodes");
    assert_eq!(pruned.failed_attempts(), 1);
    assert!(pruned.status.expect("status").node_verification.is_none());
}

#[test]
fn unknown_values_and_future_fields_still_decode() {
    let mut v = sample("regular");
    v["spec"]["receivedResourceType"] = json!("Quantum");
    v["spec"]["someFutureField"] = json!({"a": 1});
    v["status"] = json!({"phase": "Binding", "futureStatus": true});
    let br: BindRequest = serde_json::from_value(v).expect("decodes");
    assert_eq!(br.spec.received_resource_type.as_deref(), Some("Quantum"));
    assert_eq!(br.phase(), None, "unknown phase is reported as None");
}
