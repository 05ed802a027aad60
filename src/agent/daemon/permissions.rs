//! The permission self-check at start: one SelfSubjectAccessReview per entry of the API
//! call list ([`super::api_calls::API_CALLS`]), so that an agent missing a permission says
//! so at once, in the log and in `/readyz` (not ready, naming the missing verb), instead
//! of failing its first bind that needs it.
//!
//! `resourceclaims/binding` is in that list. In Kubernetes 1.36 it is not an endpoint but
//! an authorization-only ("synthetic") subresource: a write to `resourceclaims/status`
//! that changes `status.allocation` or `status.reservedFor` is also authorized as the same
//! verb (`update` for a PUT) on `resourceclaims/binding`, and refused without it
//! (`DRAResourceClaimGranularStatusAuthorization`, beta and on by default in 1.36;
//! kubernetes PR 134947, `pkg/registry/resource/resourceclaim/strategy.go`). A review is
//! the only way to learn about it before such a write.

use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

use super::api_calls::{self, ApiCall};
use super::effects::call_as;
use crate::diag::{PermissionCheck, Recorder};

/// The review asking whether this agent may make `call`. Leases live in the agent's own
/// namespace (a Role there grants them); every other call is cluster-wide (a ClusterRole),
/// which a review with no namespace asks about.
pub fn review_for(call: &ApiCall, lease_namespace: &str) -> SelfSubjectAccessReview {
    let (resource, subresource) = match call.resource.split_once('/') {
        Some((r, s)) => (r, Some(s.to_string())),
        None => (call.resource, None),
    };
    let namespace = (call.group == "coordination.k8s.io" && resource == "leases")
        .then(|| lease_namespace.to_string());
    SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some(call.group.to_string()),
                resource: Some(resource.to_string()),
                subresource,
                verb: Some(call.verb.to_string()),
                namespace,
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// `verb group/resource`, as the check names a call (core group: `verb resource`).
pub fn describe(call: &ApiCall) -> String {
    if call.group.is_empty() {
        format!("{} {}", call.verb, call.resource)
    } else {
        format!("{} {}/{}", call.verb, call.group, call.resource)
    }
}

/// Reviews in flight at once per agent.
const CONCURRENT_REVIEWS: usize = 4;

/// Asks about every call of the list, a few at a time, and records the result. A review that
/// gets no answer makes the check `unknown` (logged; readiness does not wait on it).
pub async fn check(
    client: kube::Client,
    lease_namespace: &str,
    timeout: Duration,
    diag: &Recorder,
) -> PermissionCheck {
    let api: Api<SelfSubjectAccessReview> = Api::all(client);
    let asks = api_calls::API_CALLS.iter().map(|call| {
        let api = api.clone();
        let review = review_for(call, lease_namespace);
        async move {
            let answer = call_as(
                diag,
                api_calls::CREATE_SELF_SUBJECT_ACCESS_REVIEW,
                timeout,
                async move { api.create(&PostParams::default(), &review).await },
            )
            .await;
            (call, answer)
        }
    });
    // A few at a time: every agent of a DaemonSet rollout asks at once, and one connection
    // per question would be tens of thousands of connections in a large cluster.
    // The first review without an answer ends the check (the rest are dropped unsent), so
    // an API server that does not answer them delays the workers by one timeout, not ten.
    let asks: Vec<_> = asks.collect();
    let mut answers = futures::stream::iter(asks).buffered(CONCURRENT_REVIEWS);
    let mut missing = Vec::new();
    while let Some((call, answer)) = answers.next().await {
        match answer {
            Ok(r) if r.status.as_ref().is_some_and(|s| s.allowed) => {}
            Ok(_) => missing.push(describe(call)),
            Err(e) => {
                return PermissionCheck::Unknown {
                    error: format!("SelfSubjectAccessReview for {}: {e}", describe(call)),
                };
            }
        }
    }
    PermissionCheck::Checked { missing }
}

/// The agent's start-time check: logs and records the result for `/readyz`.
pub async fn check_at_start(
    client: kube::Client,
    lease_namespace: String,
    timeout: Duration,
    diag: Arc<Recorder>,
) {
    let result = check(client, &lease_namespace, timeout, &diag).await;
    match &result {
        PermissionCheck::Checked { missing } if missing.is_empty() => {
            tracing::info!(
                calls = api_calls::API_CALLS.len(),
                "permission self-check: every API call this agent makes is allowed"
            );
        }
        PermissionCheck::Checked { missing } => {
            tracing::error!(missing = %missing.join(", "),
                "permission self-check: this agent lacks permissions it needs; not ready (see daemonset/rbac.yaml)");
        }
        PermissionCheck::Unknown { error } => {
            tracing::warn!(error = %error, "permission self-check could not be made");
        }
        PermissionCheck::Checking => {}
    }
    diag.permissions_checked(result);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reviews_ask_what_rbac_grants() {
        let cases = [
            (
                api_calls::UPDATE_RESOURCE_CLAIM_BINDING,
                (
                    "resource.k8s.io",
                    "resourceclaims",
                    Some("binding"),
                    "update",
                    None,
                ),
                "update resource.k8s.io/resourceclaims/binding",
            ),
            (
                api_calls::CREATE_POD_BINDING,
                ("", "pods", Some("binding"), "create", None),
                "create pods/binding",
            ),
            (
                api_calls::UPDATE_LEASE,
                (
                    "coordination.k8s.io",
                    "leases",
                    None,
                    "update",
                    Some("bindlet-system"),
                ),
                "update coordination.k8s.io/leases",
            ),
            (
                api_calls::LIST_RESOURCE_SLICES,
                ("resource.k8s.io", "resourceslices", None, "list", None),
                "list resource.k8s.io/resourceslices",
            ),
        ];
        for (call, (group, resource, sub, verb, ns), text) in cases {
            let r = review_for(&call, "bindlet-system");
            let a = r.spec.resource_attributes.expect("resource attributes");
            assert_eq!(a.group.as_deref(), Some(group));
            assert_eq!(a.resource.as_deref(), Some(resource));
            assert_eq!(a.subresource.as_deref(), sub);
            assert_eq!(a.verb.as_deref(), Some(verb));
            assert_eq!(a.namespace.as_deref(), ns);
            assert_eq!(describe(&call), text);
        }
    }
}
