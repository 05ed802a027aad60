//! Pure decisions for the pod's extended-resource ResourceClaim (KEP-5004: extended resources
//! backed by DRA). The scheduler allocated devices for the pod's extended resources
//! (`spec.extendedResourceClaimAllocation`); the binder must create the claim that holds
//! that allocation, reserve it for the pod and name it in the pod's
//! `status.extendedResourceClaimStatus`, which is where the kubelet looks for it.
//!
//! The rules followed, and their sources:
//! - KAI's binder (`pkg/binder/plugins/k8s-plugins/dynamicresources/dra.go`): the claim is
//!   the one annotated `resource.kubernetes.io/extended-resource-claim: "true"` with a
//!   controller ownerReference to the pod's UID; a new one carries that annotation, that
//!   ownerReference, the finalizer `resource.kubernetes.io/delete-protection` and
//!   `spec.devices.requests = deviceRequests`; its status gets the allocation (only when
//!   unset) and the pod in `reservedFor`; the pod status gets `{resourceClaimName,
//!   requestMappings: containerMappings}`.
//! - kube-scheduler (`pkg/scheduler/framework/plugins/dynamicresources`): a claim being
//!   deleted or allocated differently is not used, and the finalizer is removed before
//!   the claim is deleted, so a rolled-back claim does not hang in Terminating (KAI's
//!   rollback leaves it there, and its retry then reuses the dying claim).
//!
//! Unlike KAI, the claim's name is derived from the pod's UID (the prefix
//! `<pod>-extended-resources-` the name generator would use, then five characters of a hash
//! of the UID instead of random ones). An agent restarted between creating the claim and
//! recording it in the pod status finds it with one GET, without listing every claim of the
//! namespace (and without the `list` permission that would take).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{
    ContainerExtendedResourceRequest, Pod, PodExtendedResourceClaimStatus,
};
use k8s_openapi::api::resource::v1::{
    AllocationResult, DeviceClaim, DeviceRequest, ResourceClaim, ResourceClaimSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::same_allocation;
use crate::api::ExtendedResourceClaimAllocation;

/// Marks a claim as a pod's extended-resource claim (k8s.io/api resource/v1
/// `ExtendedResourceClaimAnnotation`).
pub const EXTENDED_RESOURCE_CLAIM_ANNOTATION: &str =
    "resource.kubernetes.io/extended-resource-claim";
/// Keeps a claim until its consumers are gone (k8s.io/api resource/v1 `Finalizer`).
pub const DELETE_PROTECTION_FINALIZER: &str = "resource.kubernetes.io/delete-protection";
/// Longest prefix the apiserver's name generator keeps before its five random characters
/// (apiserver `pkg/storage/names`: `maxGeneratedNameLength = 63 - 5`).
const MAX_PREFIX: usize = 58;
/// The characters the name generator draws from (apimachinery `util/rand`), so a derived
/// name looks like a generated one.
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The BindRequest's `extendedResourceClaimAllocation`, checked against the pod and
/// converted to the types written to the API.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtendedRequest {
    pub allocation: AllocationResult,
    pub requests: Vec<DeviceRequest>,
    pub mappings: Vec<ContainerExtendedResourceRequest>,
}

/// Checks the scheduler's input before anything is written: an allocation, at least one
/// device request with unique names, every allocated device and every container mapping
/// naming one of those requests, and every mapping naming a container of the pod that
/// requests that resource (the apiserver refuses a pod status otherwise; refusing here
/// says why before a claim exists).
pub fn parse_request(
    spec: &ExtendedResourceClaimAllocation,
    pod: &Pod,
) -> Result<ExtendedRequest, String> {
    let Some(mirror) = spec.allocation.clone() else {
        return Err("extendedResourceClaimAllocation has no allocation".into());
    };
    let allocation = AllocationResult::try_from(mirror)
        .map_err(|e| format!("extendedResourceClaimAllocation: invalid allocation: {e}"))?;
    let requests: Vec<DeviceRequest> = spec
        .device_requests
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(Into::into)
        .collect();
    if requests.is_empty() {
        return Err("extendedResourceClaimAllocation has no deviceRequests".into());
    }
    let mut names = BTreeSet::new();
    for r in &requests {
        if !names.insert(r.name.as_str()) {
            return Err(format!(
                "extendedResourceClaimAllocation: device request {} appears twice",
                r.name
            ));
        }
    }
    for r in allocation
        .devices
        .as_ref()
        .and_then(|d| d.results.as_deref())
        .unwrap_or(&[])
    {
        // A firstAvailable result names `<request>/<subrequest>`.
        let base = r.request.split('/').next().unwrap_or("");
        if !names.contains(base) {
            return Err(format!(
                "extendedResourceClaimAllocation: allocated device {} is for request {}, which deviceRequests does not have",
                r.device, r.request
            ));
        }
    }
    let mappings: Vec<ContainerExtendedResourceRequest> = spec
        .container_mappings
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|m| ContainerExtendedResourceRequest {
            container_name: m.container_name,
            request_name: m.request_name,
            resource_name: m.resource_name,
        })
        .collect();
    if mappings.is_empty() {
        return Err("extendedResourceClaimAllocation has no containerMappings".into());
    }
    let containers: Vec<_> = pod
        .spec
        .as_ref()
        .map(|s| {
            s.init_containers
                .iter()
                .flatten()
                .chain(s.containers.iter())
                .collect()
        })
        .unwrap_or_default();
    for m in &mappings {
        if !names.contains(m.request_name.as_str()) {
            return Err(format!(
                "extendedResourceClaimAllocation: container {} maps {} to request {}, which deviceRequests does not have",
                m.container_name, m.resource_name, m.request_name
            ));
        }
        let Some(c) = containers.iter().find(|c| c.name == m.container_name) else {
            return Err(format!(
                "extendedResourceClaimAllocation: the pod has no container {}",
                m.container_name
            ));
        };
        let asks = c.resources.as_ref().is_some_and(|r| {
            r.requests
                .as_ref()
                .is_some_and(|q| q.contains_key(&m.resource_name))
                || r.limits
                    .as_ref()
                    .is_some_and(|q| q.contains_key(&m.resource_name))
        });
        if !asks {
            return Err(format!(
                "extendedResourceClaimAllocation: container {} does not request {}",
                m.container_name, m.resource_name
            ));
        }
    }
    Ok(ExtendedRequest {
        allocation,
        requests,
        mappings,
    })
}

/// FNV-1a: small, stable across versions and platforms (unlike std's `DefaultHasher`),
/// which a name that must be found again after a restart or upgrade needs.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The name of the pod's extended-resource claim: `<pod>-extended-resources-` (cut to the
/// name generator's 58 characters) and five characters derived from the pod's UID.
pub fn claim_name(pod_name: &str, pod_uid: &str) -> String {
    let mut name: String = format!("{pod_name}-extended-resources-")
        .chars()
        .take(MAX_PREFIX)
        .collect();
    let mut h = fnv1a(pod_uid);
    for _ in 0..5 {
        let n = NAME_ALPHABET.len() as u64;
        name.push(char::from(NAME_ALPHABET[(h % n) as usize]));
        h /= n;
    }
    name
}

/// Whether `claim` is the extended-resource claim of the pod with `pod_uid`: the annotation
/// and a controller ownerReference to that UID (KAI's `findExtendedResourceClaim`).
pub fn belongs_to_pod(claim: &ResourceClaim, pod_uid: &str) -> bool {
    let annotated = claim
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(EXTENDED_RESOURCE_CLAIM_ANNOTATION))
        .is_some_and(|v| v == "true");
    let owned = claim
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "Pod" && o.uid == pod_uid && o.controller == Some(true));
    annotated && owned
}

/// The claim to create for the pod.
pub fn new_claim(ns: &str, pod_name: &str, pod_uid: &str, req: &ExtendedRequest) -> ResourceClaim {
    ResourceClaim {
        metadata: ObjectMeta {
            name: Some(claim_name(pod_name, pod_uid)),
            namespace: Some(ns.into()),
            annotations: Some(
                [(
                    EXTENDED_RESOURCE_CLAIM_ANNOTATION.to_string(),
                    "true".into(),
                )]
                .into(),
            ),
            finalizers: Some(vec![DELETE_PROTECTION_FINALIZER.into()]),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name: pod_name.into(),
                uid: pod_uid.into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: ResourceClaimSpec {
            devices: Some(DeviceClaim {
                requests: Some(req.requests.clone()),
                ..Default::default()
            }),
        },
        status: None,
    }
}

/// Device requests with the apiserver's defaults filled in (resource.k8s.io/v1
/// `SetDefaults_ExactDeviceRequest` / `SetDefaults_DeviceSubRequest` /
/// `SetDefaults_DeviceToleration`: allocationMode `ExactCount`, count 1 for `ExactCount`,
/// toleration operator `Equal`), so a stored claim compares equal to the request it was
/// created from.
fn with_defaults(requests: &[DeviceRequest]) -> Vec<DeviceRequest> {
    fn mode_and_count(mode: &mut Option<String>, count: &mut Option<i64>) {
        let m = mode.get_or_insert_with(|| "ExactCount".into());
        if m == "ExactCount" && count.is_none() {
            *count = Some(1);
        }
    }
    fn tolerations(t: &mut Option<Vec<k8s_openapi::api::resource::v1::DeviceToleration>>) {
        for t in t.iter_mut().flatten() {
            t.operator.get_or_insert_with(|| "Equal".into());
        }
    }
    let mut out = requests.to_vec();
    for r in &mut out {
        if let Some(e) = &mut r.exactly {
            mode_and_count(&mut e.allocation_mode, &mut e.count);
            tolerations(&mut e.tolerations);
        }
        for s in r.first_available.iter_mut().flatten() {
            mode_and_count(&mut s.allocation_mode, &mut s.count);
            tolerations(&mut s.tolerations);
        }
    }
    out
}

/// Whether the claim asks for exactly the BindRequest's device requests.
pub fn same_requests(claim: &ResourceClaim, requests: &[DeviceRequest]) -> bool {
    let have = claim
        .spec
        .devices
        .as_ref()
        .and_then(|d| d.requests.as_deref())
        .unwrap_or(&[]);
    with_defaults(have) == with_defaults(requests)
}

/// What to do with the claim found under the pod's claim name (or its absence).
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimPlan {
    /// No claim yet: create this one.
    Create(Box<ResourceClaim>),
    /// The pod's claim, with the requested devices: reserve it.
    Use,
    /// The pod's claim, left over by an earlier attempt that did not finish (being deleted,
    /// other requests, or another allocation). The pod is not bound, so nothing runs with it:
    /// remove it, then start over.
    RemoveStale(String),
    /// A claim of that name that is not the pod's, or one other consumers hold.
    Refuse(String),
}

/// Decides about the claim named for the pod. `found`: the live claim of that name, if any.
pub fn plan_claim(
    found: Option<&ResourceClaim>,
    ns: &str,
    pod_name: &str,
    pod_uid: &str,
    req: &ExtendedRequest,
) -> ClaimPlan {
    let Some(claim) = found else {
        return ClaimPlan::Create(Box::new(new_claim(ns, pod_name, pod_uid, req)));
    };
    let name = claim.metadata.name.as_deref().unwrap_or("");
    if !belongs_to_pod(claim, pod_uid) {
        return ClaimPlan::Refuse(format!(
            "ResourceClaim {ns}/{name} exists but is not the pod's extended-resource claim (no {EXTENDED_RESOURCE_CLAIM_ANNOTATION} annotation with a controller ownerReference to pod UID {pod_uid})"
        ));
    }
    let others = claim
        .status
        .as_ref()
        .and_then(|s| s.reserved_for.as_deref())
        .unwrap_or(&[])
        .iter()
        .any(|c| c.uid != pod_uid);
    if others {
        return ClaimPlan::Refuse(format!(
            "extended-resource claim {ns}/{name} is reserved for other consumers than the pod"
        ));
    }
    if claim.metadata.deletion_timestamp.is_some() {
        return ClaimPlan::RemoveStale(format!(
            "extended-resource claim {ns}/{name} is being deleted"
        ));
    }
    if !same_requests(claim, &req.requests) {
        return ClaimPlan::RemoveStale(format!(
            "extended-resource claim {ns}/{name} asks for other devices than the BindRequest's deviceRequests"
        ));
    }
    match claim.status.as_ref().and_then(|s| s.allocation.as_ref()) {
        Some(a) if !same_allocation(a, &req.allocation) => ClaimPlan::RemoveStale(format!(
            "extended-resource claim {ns}/{name} is allocated differently from the BindRequest's allocation"
        )),
        _ => ClaimPlan::Use,
    }
}

/// The finalizers left once ours is removed; `None` when ours is not there.
pub fn without_our_finalizer(claim: &ResourceClaim) -> Option<Vec<String>> {
    let f = claim.metadata.finalizers.as_deref().unwrap_or(&[]);
    if !f.iter().any(|x| x == DELETE_PROTECTION_FINALIZER) {
        return None;
    }
    Some(
        f.iter()
            .filter(|x| *x != DELETE_PROTECTION_FINALIZER)
            .cloned()
            .collect(),
    )
}

/// The pod's `status.extendedResourceClaimStatus` for `claim`; `None` when it already
/// says exactly that (a retry, or a restart after the write).
pub fn plan_pod_status(
    pod: &Pod,
    claim: &str,
    mappings: &[ContainerExtendedResourceRequest],
) -> Option<PodExtendedResourceClaimStatus> {
    let want = PodExtendedResourceClaimStatus {
        resource_claim_name: claim.into(),
        request_mappings: mappings.to_vec(),
    };
    let have = pod
        .status
        .as_ref()
        .and_then(|s| s.extended_resource_claim_status.as_ref());
    (have != Some(&want)).then_some(want)
}

/// Whether the pod's status names `claim` (rollback clears it only then).
pub fn pod_status_names(pod: &Pod, claim: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.extended_resource_claim_status.as_ref())
        .is_some_and(|s| s.resource_claim_name == claim)
}

#[cfg(test)]
mod tests;
