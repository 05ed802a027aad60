//! Every Kubernetes API call bindlet makes, in one list.
//!
//! This is the single source of truth the shipped RBAC (`daemonset/rbac.yaml`) is checked
//! against in both directions (`tests/diag_manifests.rs`), and the simulator-backed test
//! checks that the agent makes no request outside it. Call sites name one of these
//! constants when they go through [`super::call_as`]; watches name theirs in a
//! comment beside the watcher. Adding an API call means adding it here first.

/// One API call: group (`""` for core), resource (with `/subresource`), verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ApiCall {
    pub group: &'static str,
    pub resource: &'static str,
    pub verb: &'static str,
}

const fn c(group: &'static str, resource: &'static str, verb: &'static str) -> ApiCall {
    ApiCall {
        group,
        resource,
        verb,
    }
}

const KAI: &str = crate::api::GROUP;

pub const GET_POD: ApiCall = c("", "pods", "get");
/// The pods bound to this node (`fieldSelector=spec.nodeName=<node>`), only for requests
/// that ask for GPUs.
pub const LIST_PODS: ApiCall = c("", "pods", "list");
pub const CREATE_POD_BINDING: ApiCall = c("", "pods/binding", "create");
/// The `gpu_sharing` plugin, only for fractional requests: create and delete KAI's GPU
/// reservation pods (reservation namespace), label the pod with its GPU groups, and write
/// the ConfigMaps it reads its GPU from.
pub const CREATE_POD: ApiCall = c("", "pods", "create");
pub const DELETE_POD: ApiCall = c("", "pods", "delete");
pub const PATCH_POD: ApiCall = c("", "pods", "patch");
pub const GET_CONFIGMAP: ApiCall = c("", "configmaps", "get");
pub const CREATE_CONFIGMAP: ApiCall = c("", "configmaps", "create");
pub const UPDATE_CONFIGMAP: ApiCall = c("", "configmaps", "update");
pub const DELETE_CONFIGMAP: ApiCall = c("", "configmaps", "delete");
/// The `volumes` plugin, only for pods with PVC volumes: read claims, PVs, classes; reserve
/// a PV (claimRef) and set a claim's selected-node annotation / volumeName.
pub const GET_PVC: ApiCall = c("", "persistentvolumeclaims", "get");
pub const PATCH_PVC: ApiCall = c("", "persistentvolumeclaims", "patch");
pub const GET_PV: ApiCall = c("", "persistentvolumes", "get");
pub const LIST_PVS: ApiCall = c("", "persistentvolumes", "list");
pub const PATCH_PV: ApiCall = c("", "persistentvolumes", "patch");
pub const GET_STORAGE_CLASS: ApiCall = c("storage.k8s.io", "storageclasses", "get");
/// The `dra` plugin, only for requests with `resourceClaimAllocations`: read the pod's
/// claims and the ResourceSlices published for this node; reserve a claim (write
/// `status.allocation` / `status.reservedFor`), which Kubernetes 1.36 also authorizes as
/// `update` on the synthetic `resourceclaims/binding` (design §2; no request of its own).
pub const GET_RESOURCE_CLAIM: ApiCall = c("resource.k8s.io", "resourceclaims", "get");
/// Only for allocations of shared devices or partitions (capacity and counters: every
/// claim, as claims name no node); watched only by name, for a request waiting on a claim's
/// binding conditions.
pub const LIST_RESOURCE_CLAIMS: ApiCall = c("resource.k8s.io", "resourceclaims", "list");
pub const WATCH_RESOURCE_CLAIMS: ApiCall = c("resource.k8s.io", "resourceclaims", "watch");
/// This node's slices are watched (`spec.nodeName`); all slices are listed only when a
/// device is not among them.
pub const LIST_RESOURCE_SLICES: ApiCall = c("resource.k8s.io", "resourceslices", "list");
pub const WATCH_RESOURCE_SLICES: ApiCall = c("resource.k8s.io", "resourceslices", "watch");
pub const UPDATE_RESOURCE_CLAIM_STATUS: ApiCall =
    c("resource.k8s.io", "resourceclaims/status", "update");
pub const UPDATE_RESOURCE_CLAIM_BINDING: ApiCall =
    c("resource.k8s.io", "resourceclaims/binding", "update");
/// The `extended_resources` plugin, only for requests with `extendedResourceClaimAllocation`
/// (KEP-5004): create the pod's extended-resource claim, and on rollback remove its
/// `delete-protection` finalizer (a patch) and delete it; write the claim's name into the
/// pod's `status.extendedResourceClaimStatus` before binding (and clear it on rollback).
/// `PATCH_POD_STATUS` also writes KAI's `PodBound` condition after each attempt
/// (`--pod-bound-condition`).
pub const CREATE_RESOURCE_CLAIM: ApiCall = c("resource.k8s.io", "resourceclaims", "create");
pub const PATCH_RESOURCE_CLAIM: ApiCall = c("resource.k8s.io", "resourceclaims", "patch");
pub const DELETE_RESOURCE_CLAIM: ApiCall = c("resource.k8s.io", "resourceclaims", "delete");
pub const PATCH_POD_STATUS: ApiCall = c("", "pods/status", "patch");
pub const LIST_NODES: ApiCall = c("", "nodes", "list");
pub const WATCH_NODES: ApiCall = c("", "nodes", "watch");
pub const GET_BIND_REQUEST: ApiCall = c(KAI, "bindrequests", "get");
pub const LIST_BIND_REQUESTS: ApiCall = c(KAI, "bindrequests", "list");
pub const WATCH_BIND_REQUESTS: ApiCall = c(KAI, "bindrequests", "watch");
pub const PATCH_BIND_REQUEST_STATUS: ApiCall = c(KAI, "bindrequests/status", "patch");
pub const GET_LEASE: ApiCall = c("coordination.k8s.io", "leases", "get");
pub const CREATE_LEASE: ApiCall = c("coordination.k8s.io", "leases", "create");
pub const UPDATE_LEASE: ApiCall = c("coordination.k8s.io", "leases", "update");
pub const CREATE_EVENT: ApiCall = c("events.k8s.io", "events", "create");
/// The pod's `Bound` / `BindingError` Events, written as KAI's binder writes them: core/v1,
/// with `source.component: binder` (which the events.k8s.io API cannot set).
pub const CREATE_CORE_EVENT: ApiCall = c("", "events", "create");
/// Only with `--diag-auth=kubernetes`.
pub const CREATE_TOKEN_REVIEW: ApiCall = c("authentication.k8s.io", "tokenreviews", "create");
/// Only with `--diag-auth=kubernetes`.
pub const CREATE_SUBJECT_ACCESS_REVIEW: ApiCall =
    c("authorization.k8s.io", "subjectaccessreviews", "create");
/// The permission self-check at start (`super::permissions`): one review per entry here.
pub const CREATE_SELF_SUBJECT_ACCESS_REVIEW: ApiCall =
    c("authorization.k8s.io", "selfsubjectaccessreviews", "create");

/// What the code calls today.
pub const API_CALLS: &[ApiCall] = &[
    GET_POD,
    LIST_PODS,
    GET_PVC,
    PATCH_PVC,
    GET_PV,
    LIST_PVS,
    PATCH_PV,
    GET_STORAGE_CLASS,
    GET_RESOURCE_CLAIM,
    LIST_RESOURCE_CLAIMS,
    WATCH_RESOURCE_CLAIMS,
    LIST_RESOURCE_SLICES,
    WATCH_RESOURCE_SLICES,
    UPDATE_RESOURCE_CLAIM_STATUS,
    UPDATE_RESOURCE_CLAIM_BINDING,
    CREATE_RESOURCE_CLAIM,
    PATCH_RESOURCE_CLAIM,
    DELETE_RESOURCE_CLAIM,
    PATCH_POD_STATUS,
    CREATE_POD_BINDING,
    CREATE_POD,
    DELETE_POD,
    PATCH_POD,
    GET_CONFIGMAP,
    CREATE_CONFIGMAP,
    UPDATE_CONFIGMAP,
    DELETE_CONFIGMAP,
    LIST_NODES,
    WATCH_NODES,
    GET_BIND_REQUEST,
    LIST_BIND_REQUESTS,
    WATCH_BIND_REQUESTS,
    PATCH_BIND_REQUEST_STATUS,
    GET_LEASE,
    CREATE_LEASE,
    UPDATE_LEASE,
    CREATE_EVENT,
    CREATE_CORE_EVENT,
    CREATE_TOKEN_REVIEW,
    CREATE_SUBJECT_ACCESS_REVIEW,
    CREATE_SELF_SUBJECT_ACCESS_REVIEW,
];

/// Calls granted ahead of the code that makes them (none today); the RBAC test allows
/// exactly these beyond [`API_CALLS`].
pub const PLANNED_API_CALLS: &[ApiCall] = &[];
