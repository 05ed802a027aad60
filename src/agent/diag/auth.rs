//! Access control for `/metrics` and `/debug*`: a bearer token checked with TokenReview,
//! then authorised with a SubjectAccessReview for the non-resource path and verb `get`
//! (grant it with a ClusterRole rule `nonResourceURLs: ["/metrics", "/debug", "/debug/*"]`).

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};

use crate::kubeapi::Kube;
use crate::kubeapi::calls::{CREATE_SUBJECT_ACCESS_REVIEW, CREATE_TOKEN_REVIEW};

use super::Recorder;

/// The answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// 401: no token, or one the API server does not accept.
    Unauthenticated,
    /// 403: a valid token whose user may not read this path.
    Forbidden,
    /// 503: the API server could not be asked (the reason is logged, not shown).
    Unavailable(String),
}

/// Checks bearer tokens against the API server.
#[derive(Clone)]
pub struct KubeAuth {
    kube: Kube,
}

impl KubeAuth {
    pub fn new(client: Client, timeout: Duration, diag: Arc<Recorder>) -> Self {
        KubeAuth {
            kube: Kube::new(client, timeout, diag),
        }
    }

    pub async fn check(&self, headers: &HeaderMap, path: &str) -> Decision {
        let Some(token) = bearer(headers) else {
            return Decision::Unauthenticated;
        };
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.kube.client.clone());
        let pp = PostParams::default();
        let answer = self
            .kube
            .call(CREATE_TOKEN_REVIEW, api.create(&pp, &review))
            .await;
        let status = match answer {
            Ok(r) => r.status.unwrap_or_default(),
            Err(e) => return Decision::Unavailable(format!("TokenReview: {e}")),
        };
        let user = match (status.authenticated, status.user) {
            (Some(true), Some(u)) if u.username.as_deref().is_some_and(|n| !n.is_empty()) => u,
            _ => return Decision::Unauthenticated,
        };
        let sar = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(path.to_string()),
                    verb: Some("get".to_string()),
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.kube.client.clone());
        let answer = self
            .kube
            .call(CREATE_SUBJECT_ACCESS_REVIEW, api.create(&pp, &sar))
            .await;
        match answer {
            Ok(r) if r.status.as_ref().is_some_and(|s| s.allowed) => Decision::Allowed,
            Ok(_) => Decision::Forbidden,
            Err(e) => Decision::Unavailable(format!("SubjectAccessReview: {e}")),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer abc".parse().expect("header"));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert("authorization", "bearer  abc ".parse().expect("header"));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert("authorization", "Basic abc".parse().expect("header"));
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer ".parse().expect("header"));
        assert_eq!(bearer(&h), None);
    }
}
