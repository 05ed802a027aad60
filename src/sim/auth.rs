//! TokenReview (`authentication.k8s.io/v1`) and SubjectAccessReview
//! (`authorization.k8s.io/v1`): create-only, nothing stored; the answer is the request
//! with `status` filled in, as the real server does.
//!
//! Tokens and grants come from the test through [`AuthHandle`]: a token maps to a user
//! (name, groups, extra); a grant allows a user or group one verb on a non-resource path
//! (`/debug/*` matches by prefix, like RBAC's `nonResourceURLs`). `resourceAttributes`
//! reviews are always denied (the simulator has no RBAC for resources).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};

use super::Shared;
use super::status::ApiError;

#[derive(Debug, Clone)]
struct UserInfo {
    username: String,
    uid: String,
    groups: Vec<String>,
    extra: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone)]
struct Grant {
    subject: String,
    verb: String,
    path: String,
}

#[derive(Debug, Default)]
pub(crate) struct AuthTable {
    tokens: Mutex<HashMap<String, UserInfo>>,
    grants: Mutex<Vec<Grant>>,
    /// Permissions denied to the caller presenting a bearer token: (group,
    /// resource[/subresource], verb). Everything else is allowed (the simulator has no RBAC).
    denied: Mutex<HashMap<String, Vec<Permission>>>,
}

/// (group, resource[/subresource], verb).
type Permission = (String, String, String);

/// `resourceclaims/binding` `update`, the permission Kubernetes 1.36 checks on claim
/// status writes that change `allocation` or `reservedFor`.
const CLAIM_BINDING: (&str, &str, &str) = ("resource.k8s.io", "resourceclaims/binding", "update");

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AuthTable {
    /// Whether the caller presenting `token` lacks `resourceclaims/binding`.
    pub(crate) fn lacks_claim_binding(&self, token: &str) -> bool {
        let (g, r, v) = CLAIM_BINDING;
        self.is_denied(token, g, r, v)
    }

    fn is_denied(&self, token: &str, group: &str, resource: &str, verb: &str) -> bool {
        lock(&self.denied).get(token).is_some_and(|d| {
            d.iter()
                .any(|(dg, dr, dv)| dg == group && dr == resource && dv == verb)
        })
    }

    /// SelfSubjectAccessReview: about the caller presenting `token`. Resource attributes
    /// are allowed unless denied to that token (see [`AuthHandle::deny`]); non-resource
    /// attributes are allowed (the simulator has no RBAC).
    pub(crate) fn self_access_review(
        &self,
        token: Option<&str>,
        mut body: Value,
    ) -> Result<Value, ApiError> {
        let spec = body.get("spec").cloned().unwrap_or(Value::Null);
        let (nr, ra) = (
            spec.get("nonResourceAttributes"),
            spec.get("resourceAttributes"),
        );
        if nr.is_some() == ra.is_some() {
            return Err(one_kind_of_attributes("SelfSubjectAccessReview"));
        }
        let denied = ra.is_some_and(|ra| {
            let field = |k: &str| ra.get(k).and_then(Value::as_str).unwrap_or("");
            let resource = match field("subresource") {
                "" => field("resource").to_string(),
                sub => format!("{}/{sub}", field("resource")),
            };
            token.is_some_and(|t| self.is_denied(t, field("group"), &resource, field("verb")))
        });
        body["status"] = if denied {
            json!({ "allowed": false })
        } else {
            json!({ "allowed": true, "reason": "allowed by the simulator (no RBAC)" })
        };
        stamp(
            &mut body,
            "authorization.k8s.io/v1",
            "SelfSubjectAccessReview",
        );
        Ok(body)
    }

    pub(crate) fn token_review(&self, mut body: Value) -> Result<Value, ApiError> {
        let token = body
            .pointer("/spec/token")
            .and_then(Value::as_str)
            .unwrap_or("");
        if token.is_empty() {
            return Err(ApiError::invalid(
                "TokenReview",
                "authentication.k8s.io",
                "",
                vec![super::status::Cause::required("spec.token", "")],
            ));
        }
        let status = match lock(&self.tokens).get(token) {
            Some(u) => json!({
                "authenticated": true,
                "user": {
                    "username": u.username,
                    "uid": u.uid,
                    "groups": u.groups,
                    "extra": u.extra,
                },
                "audiences": ["https://kubernetes.default.svc"],
            }),
            // The real server says as little: no user, no reason.
            None => json!({ "user": {} }),
        };
        body["status"] = status;
        stamp(&mut body, "authentication.k8s.io/v1", "TokenReview");
        Ok(body)
    }

    pub(crate) fn access_review(&self, mut body: Value) -> Result<Value, ApiError> {
        let spec = body.get("spec").cloned().unwrap_or(Value::Null);
        let user = spec.get("user").and_then(Value::as_str).unwrap_or("");
        let groups: Vec<&str> = spec
            .get("groups")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let nr = spec.get("nonResourceAttributes");
        let ra = spec.get("resourceAttributes");
        if user.is_empty() && groups.is_empty() {
            return Err(ApiError::invalid(
                "SubjectAccessReview",
                "authorization.k8s.io",
                "",
                vec![super::status::Cause::invalid(
                    "spec.user",
                    &Value::String(String::new()),
                    "at least one of user or group must be specified",
                )],
            ));
        }
        if nr.is_some() == ra.is_some() {
            return Err(one_kind_of_attributes("SubjectAccessReview"));
        }
        let allowed = nr.is_some_and(|nr| {
            let path = nr.get("path").and_then(Value::as_str).unwrap_or("");
            let verb = nr.get("verb").and_then(Value::as_str).unwrap_or("");
            lock(&self.grants).iter().any(|g| {
                (g.subject == user || groups.contains(&g.subject.as_str()))
                    && (g.verb == verb || g.verb == "*")
                    && path_matches(&g.path, path)
            })
        });
        body["status"] = if allowed {
            json!({ "allowed": true, "reason": "allowed by the simulator's grants" })
        } else {
            json!({ "allowed": false })
        };
        stamp(&mut body, "authorization.k8s.io/v1", "SubjectAccessReview");
        Ok(body)
    }
}

fn stamp(body: &mut Value, api_version: &str, kind: &str) {
    if !body.is_object() {
        *body = json!({});
    }
    body["apiVersion"] = json!(api_version);
    body["kind"] = json!(kind);
    if body.get("metadata").is_none_or(|m| !m.is_object()) {
        body["metadata"] = json!({});
    }
    // The real server answers with an empty creationTimestamp on these.
    body["metadata"]["creationTimestamp"] = Value::Null;
}

/// RBAC's rule for `nonResourceURLs`: exact, or a prefix ending in `*`.
fn path_matches(rule: &str, path: &str) -> bool {
    match rule.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => rule == path,
    }
}

/// Configures which tokens the simulated TokenReview accepts and what the simulated
/// SubjectAccessReview allows. Cheap to clone.
#[derive(Clone)]
pub struct AuthHandle {
    pub(crate) shared: Arc<Shared>,
}

impl AuthHandle {
    /// Accepts `token` as `username` in `groups`.
    pub fn add_token(&self, token: &str, username: &str, groups: &[&str]) {
        self.add_token_with_extra(token, username, groups, BTreeMap::new());
    }

    /// Accepts `token` with user `extra` (e.g. the node name a pod-bound token carries).
    pub fn add_token_with_extra(
        &self,
        token: &str,
        username: &str,
        groups: &[&str],
        extra: BTreeMap<String, Vec<String>>,
    ) {
        lock(&self.shared.auth.tokens).insert(
            token.to_string(),
            UserInfo {
                username: username.to_string(),
                uid: uuid_like(username),
                groups: groups.iter().map(|g| g.to_string()).collect(),
                extra,
            },
        );
    }

    /// Lets a user or group (`subject`) use `verb` on the non-resource `path`.
    pub fn allow_path(&self, subject: &str, verb: &str, path: &str) {
        lock(&self.shared.auth.grants).push(Grant {
            subject: subject.to_string(),
            verb: verb.to_string(),
            path: path.to_string(),
        });
    }

    /// Declares the caller presenting bearer `token` as lacking `update` on the synthetic
    /// `resourceclaims/binding`: its ResourceClaim status writes that change `allocation` or
    /// `reservedFor` are refused with 422, like Kubernetes 1.36 does.
    pub fn deny_claim_binding(&self, token: &str) {
        let (g, r, v) = CLAIM_BINDING;
        self.deny(token, g, r, v);
    }

    /// Denies the caller presenting bearer `token` one permission (`resource` with its
    /// `/subresource`): its SelfSubjectAccessReviews answer `allowed: false` for it. Only
    /// `resourceclaims/binding` is also enforced on writes ([`Self::deny_claim_binding`]).
    pub fn deny(&self, token: &str, group: &str, resource: &str, verb: &str) {
        lock(&self.shared.auth.denied)
            .entry(token.to_string())
            .or_default()
            .push((group.to_string(), resource.to_string(), verb.to_string()));
    }

    /// Forgets every token and grant.
    pub fn clear(&self) {
        lock(&self.shared.auth.tokens).clear();
        lock(&self.shared.auth.grants).clear();
    }
}

fn uuid_like(s: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    let x = h.finish();
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        x >> 32,
        (x >> 16) & 0xffff,
        x & 0xfff,
        (x >> 20) & 0xfff,
        x & 0xffff_ffff_ffff
    )
}

/// kube-apiserver's answer to an access review with both or neither of
/// `resourceAttributes` and `nonResourceAttributes`.
fn one_kind_of_attributes(kind: &str) -> ApiError {
    ApiError::invalid(
        kind,
        "authorization.k8s.io",
        "",
        vec![super::status::Cause::invalid(
            "spec.resourceAttributes",
            &Value::Null,
            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_resource_url_rules() {
        assert!(path_matches("/metrics", "/metrics"));
        assert!(!path_matches("/metrics", "/metrics/x"));
        assert!(path_matches("/debug/*", "/debug/state"));
        assert!(!path_matches("/debug/*", "/debug"));
        assert!(path_matches("*", "/anything"));
    }
}
