//! `Status` error bodies shaped like kube-apiserver's (`metav1.Status`).

use serde_json::{Map, Value, json};

/// One entry of `details.causes`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Cause {
    pub reason: &'static str,
    pub message: String,
    pub field: String,
}

impl Cause {
    /// `field.Invalid`: `Invalid value: <bad>: <detail>`.
    pub fn invalid(field: impl Into<String>, bad: &Value, detail: &str) -> Self {
        Cause {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {}: {}", render_bad(bad), detail),
            field: field.into(),
        }
    }
    /// `field.Required`: `Required value[: detail]`.
    pub fn required(field: impl Into<String>, detail: &str) -> Self {
        let message = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        Cause {
            reason: "FieldValueRequired",
            message,
            field: field.into(),
        }
    }
    /// `field.TypeInvalid`.
    pub fn type_invalid(field: impl Into<String>, bad: &Value, detail: &str) -> Self {
        Cause {
            reason: "FieldValueTypeInvalid",
            message: format!("Invalid value: {}: {}", render_bad(bad), detail),
            field: field.into(),
        }
    }
    /// `field.NotSupported`.
    pub fn not_supported(field: impl Into<String>, bad: &Value, valid: &[Value]) -> Self {
        let list: Vec<String> = valid.iter().map(render_bad).collect();
        Cause {
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: {}: supported values: {}",
                render_bad(bad),
                list.join(", ")
            ),
            field: field.into(),
        }
    }
    /// `field.Forbidden`.
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        Cause {
            reason: "FieldValueForbidden",
            message: format!("Forbidden: {detail}"),
            field: field.into(),
        }
    }
}

/// Go's `%#v`-ish rendering used by field errors: strings quoted, numbers bare.
pub(crate) fn render_bad(v: &Value) -> String {
    match v {
        Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
        Value::Null => "null".to_string(),
        other => other.to_string(),
    }
}

/// An API error answered as a `Status` body (or, for unknown API groups, plain text).
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// Answer `404 page not found` as text, like the real server for unknown paths.
    pub plain: bool,
    pub retry_after: Option<u64>,
}

/// `"pods"` or `"leases.coordination.k8s.io"`: a qualified resource as Go prints it.
pub(crate) fn qualified(resource: &str, group: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

fn details(name: &str, group: &str, kind: &str) -> Value {
    let mut m = Map::new();
    if !name.is_empty() {
        m.insert("name".into(), Value::String(name.into()));
    }
    if !group.is_empty() {
        m.insert("group".into(), Value::String(group.into()));
    }
    if !kind.is_empty() {
        m.insert("kind".into(), Value::String(kind.into()));
    }
    Value::Object(m)
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
            plain: false,
            retry_after: None,
        }
    }
    pub fn with_details(mut self, d: Value) -> Self {
        self.details = Some(d);
        self
    }
    pub fn not_found(resource: &str, group: &str, name: &str) -> Self {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{}\" not found", qualified(resource, group), name),
        )
        .with_details(details(name, group, resource))
    }
    pub fn already_exists(resource: &str, group: &str, name: &str) -> Self {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{}\" already exists", qualified(resource, group), name),
        )
        .with_details(details(name, group, resource))
    }
    pub fn conflict(resource: &str, group: &str, name: &str, why: &str) -> Self {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{}\": {}",
                qualified(resource, group),
                name,
                why
            ),
        )
        .with_details(details(name, group, resource))
    }
    /// An admission plugin's refusal (`admission.NewForbidden`): `pods "x" is forbidden: why`,
    /// or `pods is forbidden: why` for an object whose name the server generates.
    pub fn forbidden(resource: &str, group: &str, name: &str, why: &str) -> Self {
        let what = if name.is_empty() {
            qualified(resource, group)
        } else {
            format!("{} \"{}\"", qualified(resource, group), name)
        };
        ApiError::new(403, "Forbidden", format!("{what} is forbidden: {why}"))
            .with_details(details(name, group, resource))
    }
    /// The optimistic-lock conflict (`OptimisticLockErrorMsg`).
    pub fn stale(resource: &str, group: &str, name: &str) -> Self {
        Self::conflict(
            resource,
            group,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }
    /// `StatusReasonInvalid` with causes; `kind`/`group` name the qualified kind.
    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<Cause>) -> Self {
        let qk = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let rendered: Vec<String> = causes
            .iter()
            .map(|c| {
                if c.field.is_empty() {
                    c.message.clone()
                } else {
                    format!("{}: {}", c.field, c.message)
                }
            })
            .collect();
        let agg = if rendered.len() == 1 {
            rendered.join("")
        } else {
            format!("[{}]", rendered.join(", "))
        };
        let mut d = details(name, group, kind);
        let list: Vec<Value> = causes
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect();
        if let Some(m) = d.as_object_mut() {
            m.insert("causes".into(), Value::Array(list));
        }
        ApiError::new(422, "Invalid", format!("{qk} \"{name}\" is invalid: {agg}")).with_details(d)
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message)
    }
    /// `the server could not find the requested resource`, as a Status.
    pub fn no_resource() -> Self {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({}))
    }
    /// The plain-text 404 of paths no API group serves.
    pub fn page_not_found() -> Self {
        let mut e = ApiError::new(404, "NotFound", "404 page not found");
        e.plain = true;
        e
    }
    pub fn method_not_allowed() -> Self {
        ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
        .with_details(json!({}))
    }
    pub fn expired(message: impl Into<String>) -> Self {
        ApiError::new(410, "Expired", message)
    }
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        ApiError::new(415, "UnsupportedMediaType", message)
    }
    /// A `Precondition failed` conflict, worded like the etcd3 storage layer.
    pub fn precondition(
        resource: &str,
        group: &str,
        name: &str,
        key: &str,
        what: &str,
        wanted: &str,
        actual: &str,
    ) -> Self {
        let meta = if what == "UID" {
            "UID in object meta"
        } else {
            "ResourceVersion in meta"
        };
        Self::conflict(
            resource,
            group,
            name,
            &format!(
                "StorageError: invalid object, Code: 4, Key: {key}, ResourceVersion: 0, AdditionalErrorMsg: Precondition failed: {what} in precondition: {wanted}, {meta}: {actual}"
            ),
        )
    }
    /// An injected or otherwise generic failure with the usual reason for `code`.
    pub fn for_code(code: u16, message: impl Into<String>) -> Self {
        let reason = match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            405 => "MethodNotAllowed",
            409 => "Conflict",
            410 => "Expired",
            415 => "UnsupportedMediaType",
            422 => "Invalid",
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "InternalError",
        };
        let mut e = ApiError::new(code, reason, message);
        if code == 429 || code == 503 || code == 504 {
            e.retry_after = Some(1);
            e.details = Some(json!({"retryAfterSeconds": 1}));
        }
        e
    }

    /// The `Status` object for this error.
    pub fn to_status(&self) -> Value {
        let mut m = Map::new();
        m.insert("kind".into(), json!("Status"));
        m.insert("apiVersion".into(), json!("v1"));
        m.insert("metadata".into(), json!({}));
        m.insert("status".into(), json!("Failure"));
        m.insert("message".into(), Value::String(self.message.clone()));
        m.insert("reason".into(), json!(self.reason));
        if let Some(d) = &self.details {
            m.insert("details".into(), d.clone());
        }
        m.insert("code".into(), json!(self.code));
        Value::Object(m)
    }
}

/// A `Status` with `status: Success` (binding answers, deletes of most resources).
pub(crate) fn success(code: u16, details: Option<Value>) -> Value {
    let mut m = Map::new();
    m.insert("kind".into(), json!("Status"));
    m.insert("apiVersion".into(), json!("v1"));
    m.insert("metadata".into(), json!({}));
    m.insert("status".into(), json!("Success"));
    if let Some(d) = details {
        m.insert("details".into(), d);
    }
    m.insert("code".into(), json!(code));
    Value::Object(m)
}

pub(crate) fn details_value(name: &str, group: &str, kind: &str, uid: &str) -> Value {
    let mut d = details(name, group, kind);
    if !uid.is_empty()
        && let Some(m) = d.as_object_mut()
    {
        m.insert("uid".into(), Value::String(uid.into()));
    }
    d
}
