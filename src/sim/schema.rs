//! Structural-schema validation and pruning of custom resources (CRD `openAPIV3Schema`).

use serde_json::{Map, Value};

use super::status::Cause;

/// What validating one object produced.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub causes: Vec<Cause>,
    /// `unknown field "spec.x"` texts for the `Warning` header.
    pub warnings: Vec<String>,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn is_integer(v: &Value) -> bool {
    match v {
        Value::Number(n) => {
            n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => false,
    }
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool) == Some(true)
}

/// Validates `obj` (a whole custom resource) against the CRD schema and prunes unknown fields.
/// `apiVersion`, `kind` and `metadata` at the root are never pruned.
pub(crate) fn validate(schema: &Value, obj: &mut Value) -> Outcome {
    let mut out = Outcome::default();
    if let Value::Object(map) = obj {
        walk_object(schema, map, "", true, &mut out);
    }
    out
}

fn walk_object(
    schema: &Value,
    map: &mut Map<String, Value>,
    path: &str,
    root: bool,
    out: &mut Outcome,
) {
    let props = schema.get("properties").and_then(Value::as_object);
    let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");
    let embedded = flag(schema, "x-kubernetes-embedded-resource");
    let additional = schema.get("additionalProperties");
    // Nulls in non-nullable fields are dropped before validation, like the real server.
    let keys: Vec<String> = map.keys().cloned().collect();
    for k in keys {
        if (root || embedded) && (k == "apiVersion" || k == "kind" || k == "metadata") {
            continue;
        }
        let sub = props.and_then(|p| p.get(&k)).or(match additional {
            Some(Value::Object(_)) => additional,
            _ => None,
        });
        match sub {
            Some(sub) => {
                let is_null = map.get(&k).is_some_and(Value::is_null);
                if is_null && !flag(sub, "nullable") {
                    map.remove(&k);
                    continue;
                }
                if let Some(v) = map.get_mut(&k) {
                    walk(sub, v, &child(path, &k), out);
                }
            }
            None => {
                let allowed = preserve || matches!(additional, Some(Value::Bool(true)));
                if !allowed {
                    map.remove(&k);
                    out.warnings
                        .push(format!("unknown field \"{}\"", child(path, &k)));
                }
            }
        }
    }
    if let Some(req) = schema.get("required").and_then(Value::as_array) {
        for r in req.iter().filter_map(Value::as_str) {
            if !map.contains_key(r) {
                out.causes.push(Cause::required(child(path, r), ""));
            }
        }
    }
    if let Some(n) = schema.get("maxProperties").and_then(Value::as_u64)
        && map.len() as u64 > n
    {
        out.causes.push(Cause {
            reason: "FieldValueTooMany",
            message: format!("Too many: {}: must have at most {} items", map.len(), n),
            field: path.to_string(),
        });
    }
}

fn walk(schema: &Value, v: &mut Value, path: &str, out: &mut Outcome) {
    let int_or_string = flag(schema, "x-kubernetes-int-or-string");
    let ty = schema.get("type").and_then(Value::as_str).unwrap_or("");
    if int_or_string {
        if !(is_integer(v) || v.is_string()) {
            let tn = type_name(v);
            out.causes.push(Cause::type_invalid(
                path,
                &Value::String(tn.into()),
                &format!("{path} in body must be of type integer,string: \"{tn}\""),
            ));
        }
        return;
    }
    if v.is_null() && flag(schema, "nullable") {
        return;
    }
    let ok = match ty {
        "" => true,
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => is_integer(v),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => true,
    };
    if !ok {
        let tn = type_name(v);
        out.causes.push(Cause::type_invalid(
            path,
            &Value::String(tn.into()),
            &format!("{path} in body must be of type {ty}: \"{tn}\""),
        ));
        return;
    }
    if let Some(en) = schema.get("enum").and_then(Value::as_array)
        && !en.contains(v)
    {
        out.causes.push(Cause::not_supported(path, v, en));
    }
    match v {
        Value::Object(map) => walk_object(schema, map, path, false, out),
        Value::Array(items) => {
            if let Some(n) = schema.get("maxItems").and_then(Value::as_u64)
                && items.len() as u64 > n
            {
                out.causes.push(Cause {
                    reason: "FieldValueTooMany",
                    message: format!("Too many: {}: must have at most {} items", items.len(), n),
                    field: path.to_string(),
                });
            }
            if let Some(n) = schema.get("minItems").and_then(Value::as_u64)
                && (items.len() as u64) < n
            {
                out.causes.push(Cause::invalid(
                    path,
                    &Value::from(items.len()),
                    &format!("{path} in body should have at least {n} items"),
                ));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, it) in items.iter_mut().enumerate() {
                    walk(item_schema, it, &format!("{path}[{i}]"), out);
                }
            }
        }
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(n) = schema.get("maxLength").and_then(Value::as_u64)
                && len > n
            {
                out.causes.push(Cause {
                    reason: "FieldValueTooLong",
                    message: format!("Too long: may not be more than {n} bytes"),
                    field: path.to_string(),
                });
            }
            if let Some(n) = schema.get("minLength").and_then(Value::as_u64)
                && len < n
            {
                out.causes.push(Cause::invalid(
                    path,
                    &Value::String(s.clone()),
                    &format!("{path} in body should be at least {n} chars long"),
                ));
            }
        }
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(0.0);
            let fmt = schema.get("format").and_then(Value::as_str).unwrap_or("");
            if fmt == "int32" && (f < i32::MIN as f64 || f > i32::MAX as f64) {
                out.causes.push(Cause::type_invalid(
                    path,
                    &Value::Number(n.clone()),
                    &format!("{path} in body must be of type int32: \"{n}\""),
                ));
            }
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                let excl = flag(schema, "exclusiveMinimum");
                if f < min || (excl && f == min) {
                    let word = if excl {
                        "greater than"
                    } else {
                        "greater than or equal to"
                    };
                    out.causes.push(Cause::invalid(
                        path,
                        &Value::Number(n.clone()),
                        &format!("{path} in body should be {word} {min}"),
                    ));
                }
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                let excl = flag(schema, "exclusiveMaximum");
                if f > max || (excl && f == max) {
                    let word = if excl {
                        "less than"
                    } else {
                        "less than or equal to"
                    };
                    out.causes.push(Cause::invalid(
                        path,
                        &Value::Number(n.clone()),
                        &format!("{path} in body should be {word} {max}"),
                    ));
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["podName"], "properties": {
                "podName": {"type": "string"},
                "count": {"type": "integer", "format": "int32"},
                "mode": {"type": "string", "enum": ["A", "B"]},
                "ios": {"x-kubernetes-int-or-string": true},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "m": {"type": "object", "additionalProperties": {"type": "string"}},
                "list": {"type": "array", "items": {"type": "object", "properties": {"a": {"type": "string"}}}}
            }},
            "status": {"type": "object", "properties": {"phase": {"type": "string"}}}
        }})
    }

    #[test]
    fn types_prune_required_enum() {
        let mut o = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a"},
            "spec": {"podName": "p", "count": "two", "mode": "C", "ios": "50%", "madeUp": 1,
                     "free": {"anything": [1]}, "m": {"k": "v"}, "list": [{"a": "x", "b": 2}]},
            "extra": true});
        let out = validate(&schema(), &mut o);
        let reasons: Vec<_> = out
            .causes
            .iter()
            .map(|c| (c.reason, c.field.clone()))
            .collect();
        assert_eq!(
            reasons,
            vec![
                ("FieldValueTypeInvalid", "spec.count".to_string()),
                ("FieldValueNotSupported", "spec.mode".to_string()),
            ]
        );
        assert_eq!(
            out.causes[0].message,
            "Invalid value: \"string\": spec.count in body must be of type integer: \"string\""
        );
        assert!(
            out.warnings
                .contains(&"unknown field \"spec.madeUp\"".to_string())
        );
        assert!(
            out.warnings
                .contains(&"unknown field \"spec.list[0].b\"".to_string())
        );
        assert!(
            out.warnings
                .contains(&"unknown field \"extra\"".to_string())
        );
        assert!(o["spec"].get("madeUp").is_none());
        assert_eq!(o["spec"]["free"]["anything"], json!([1]));
        let mut missing = json!({"spec": {}});
        let out = validate(&schema(), &mut missing);
        assert_eq!(out.causes[0].reason, "FieldValueRequired");
        assert_eq!(out.causes[0].field, "spec.podName");
        let mut big = json!({"spec": {"podName": "p", "count": 5_000_000_000i64}});
        assert_eq!(validate(&schema(), &mut big).causes.len(), 1);
    }
}
