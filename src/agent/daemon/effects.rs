//! The agent's own API writes and reads (BindRequest status, pod binding, pod status), on
//! top of [`crate::kubeapi`]'s timed, counted calls. Errors are classified into transient
//! (retry without counting an attempt) and answers about the request.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Error as KubeError};
use serde::Serialize;
use serde_json::json;

use crate::api::{BindRequest, BindRequestStatus};
use crate::binding::{BindFault, Failure};
use crate::kubeapi::calls as api_calls;
use crate::kubeapi::send_unread;
pub use crate::kubeapi::{ApiError, Kube, call, call_as, call_opt_as};

/// The body of a status merge patch, serialized straight from the status.
#[derive(Serialize)]
struct StatusPatch<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<ResourceVersionOnly<'a>>,
    status: &'a BindRequestStatus,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResourceVersionOnly<'a> {
    resource_version: &'a str,
}

/// Result of a guarded status write.
#[derive(Debug)]
pub enum StatusWrite {
    Written,
    /// 409: the object changed since we read it; re-read and recompute.
    Conflict,
    /// 404: the BindRequest is gone.
    Gone,
}

#[derive(Clone)]
pub struct Effects {
    kube: Kube,
}

impl Effects {
    pub fn new(kube: Kube) -> Self {
        Effects { kube }
    }

    pub fn client(&self) -> &Client {
        &self.kube.client
    }

    pub fn timeout(&self) -> Duration {
        self.kube.timeout
    }

    pub async fn get_pod(&self, ns: &str, name: &str) -> Result<Option<Pod>, ApiError> {
        let api: Api<Pod> = Api::namespaced(self.kube.client.clone(), ns);
        let what = api_calls::GET_POD;
        self.kube.call_opt(what, api.get_opt(name)).await
    }

    pub async fn get_bind_request(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<BindRequest>, ApiError> {
        let api: Api<BindRequest> = Api::namespaced(self.kube.client.clone(), ns);
        let what = api_calls::GET_BIND_REQUEST;
        self.kube.call_opt(what, api.get_opt(name)).await
    }

    /// Merge-patches `status`, guarded by the resourceVersion we computed it from.
    pub async fn patch_status(
        &self,
        ns: &str,
        name: &str,
        resource_version: Option<&str>,
        status: &BindRequestStatus,
    ) -> Result<StatusWrite, ApiError> {
        // The answer is not decoded: nothing in it is used, and decoding a whole BindRequest
        // per bind was a measurable share of the agent's CPU. So a request whose content
        // bindlet cannot decode still gets its status written.
        let body = StatusPatch {
            metadata: resource_version.map(|rv| ResourceVersionOnly {
                resource_version: rv,
            }),
            status,
        };
        let api: Api<BindRequest> = Api::namespaced(self.kube.client.clone(), ns);
        let request = kube::core::Request::new(api.resource_url())
            .patch_subresource(
                "status",
                name,
                &PatchParams::default(),
                &Patch::Merge(&body),
            )
            .map_err(KubeError::BuildRequest);
        match self
            .kube
            .call(
                api_calls::PATCH_BIND_REQUEST_STATUS,
                send_unread(&self.kube.client, request),
            )
            .await
        {
            Ok(_) => Ok(StatusWrite::Written),
            Err(ApiError::Status { code: 409, .. }) => Ok(StatusWrite::Conflict),
            Err(ApiError::Status { code: 404, .. }) => Ok(StatusWrite::Gone),
            Err(e) => Err(e),
        }
    }

    /// Writes a status without a resourceVersion guard: only for objects that cannot be
    /// decoded, whose status we cannot read back.
    pub async fn force_status(
        &self,
        ns: &str,
        name: &str,
        status: &BindRequestStatus,
    ) -> Result<StatusWrite, ApiError> {
        self.patch_status(ns, name, None, status).await
    }

    /// Strategic-merge-patches `pods/status` with `body` (built by
    /// [`crate::binding::pod_metadata::pod_bound_patch`]: one condition, merged by type, and
    /// the pod UID, so a recreated pod answers 409). The answer is not decoded.
    pub async fn patch_pod_status(
        &self,
        ns: &str,
        name: &str,
        body: &serde_json::Value,
    ) -> Result<(), ApiError> {
        let api: Api<Pod> = Api::namespaced(self.kube.client.clone(), ns);
        let request = kube::core::Request::new(api.resource_url())
            .patch_subresource(
                "status",
                name,
                &PatchParams::default(),
                &Patch::Strategic(body),
            )
            .map_err(KubeError::BuildRequest);
        self.kube
            .call(
                api_calls::PATCH_POD_STATUS,
                send_unread(&self.kube.client, request),
            )
            .await
    }

    /// POSTs `pods/binding` carrying the pod UID as a precondition, to `node` only.
    /// A 409 is resolved by reading the pod: already on `node` is success.
    pub async fn bind_pod(
        &self,
        ns: &str,
        name: &str,
        uid: &str,
        node: &str,
    ) -> Result<(), BindFault> {
        self.bind_pod_annotated(ns, name, uid, node, &BTreeMap::new())
            .await
    }

    /// [`Effects::bind_pod`] with annotations that kube-apiserver merges into the pod in
    /// the same update that sets `spec.nodeName` (`setPodNodeAndMetadata` in
    /// `pkg/registry/core/pod/storage/storage.go`): they appear exactly when the pod is
    /// bound, under the Binding's UID precondition, at no extra request.
    pub async fn bind_pod_annotated(
        &self,
        ns: &str,
        name: &str,
        uid: &str,
        node: &str,
        annotations: &BTreeMap<String, String>,
    ) -> Result<(), BindFault> {
        let api: Api<Pod> = Api::namespaced(self.kube.client.clone(), ns);
        let mut metadata = json!({ "name": name, "namespace": ns, "uid": uid });
        if !annotations.is_empty() {
            metadata["annotations"] = json!(annotations);
        }
        let binding = json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": metadata,
            "target": { "apiVersion": "v1", "kind": "Node", "name": node },
        });
        // The answer (a Status) carries nothing the agent uses, so it is not decoded.
        let request = serde_json::to_vec(&binding).map_err(KubeError::SerdeError);
        let request = request.and_then(|body| {
            kube::core::Request::new(api.resource_url())
                .create_subresource("binding", name, &PostParams::default(), body)
                .map_err(KubeError::BuildRequest)
        });
        let res = self
            .kube
            .call(
                api_calls::CREATE_POD_BINDING,
                send_unread(&self.kube.client, request),
            )
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(ApiError::Status {
                code: 409, message, ..
            }) => self.explain_conflict(ns, name, uid, node, message).await,
            Err(ApiError::Status { code: 404, .. }) => {
                Err(BindFault::Failed(Failure::PodNotFound {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                }))
            }
            Err(
                e @ ApiError::Status {
                    code: 400..=428, ..
                },
            ) => Err(BindFault::Failed(Failure::BindingRejected(e.to_string()))),
            Err(e) => Err(BindFault::Transient(e.to_string())),
        }
    }

    async fn explain_conflict(
        &self,
        ns: &str,
        name: &str,
        uid: &str,
        node: &str,
        message: String,
    ) -> Result<(), BindFault> {
        let pod = self.get_pod(ns, name).await.map_err(|e| {
            BindFault::Transient(format!("binding conflict ({message}); re-read failed: {e}"))
        })?;
        let Some(pod) = pod else {
            return Err(BindFault::Failed(Failure::PodNotFound {
                namespace: ns.to_string(),
                name: name.to_string(),
            }));
        };
        let live_uid = pod.metadata.uid.unwrap_or_default();
        if live_uid != uid {
            return Err(BindFault::Failed(Failure::PodUidMismatch {
                name: name.to_string(),
                expected: uid.to_string(),
                live: live_uid,
            }));
        }
        match pod.spec.and_then(|s| s.node_name).unwrap_or_default() {
            n if n == node => Err(BindFault::AlreadyBoundHere),
            n if !n.is_empty() => Err(BindFault::Failed(Failure::PodBoundElsewhere {
                name: name.to_string(),
                node: n,
            })),
            _ => Err(BindFault::Failed(Failure::BindingRejected(message))),
        }
    }
}
