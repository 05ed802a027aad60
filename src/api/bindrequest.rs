//! The `BindRequest` custom resource as KAI-Scheduler writes it, plus bindlet's optional
//! status additions.

#[cfg(feature = "kube")]
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use super::allocation::{AllocationResult, QuantityValue};
use super::device_request::{ContainerExtendedResourceRequest, DeviceRequest};
use super::schema;

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[cfg_attr(feature = "kube", derive(CustomResource))]
#[cfg_attr(
    feature = "kube",
    kube(
        crates(kube_core = "::kube_core"),
        group = "scheduling.run.ai",
        version = "v1alpha2",
        kind = "BindRequest",
        plural = "bindrequests",
        singular = "bindrequest",
        namespaced,
        status = "BindRequestStatus",
        derive = "PartialEq",
        derive = "Default",
        doc = "BindRequest asks the binder to bind one pod to the node the scheduler selected.",
        selectable = ".spec.selectedNode",
        printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.selectedNode"}"#,
        printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
        printcolumn = r#"{"name":"Attempts","type":"integer","jsonPath":".status.failedAttempts"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )
)]
#[serde(rename_all = "camelCase")]
/// What the scheduler decided for the pod.
pub struct BindRequestSpec {
    /// Name of the pod to bind (same namespace).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// The node the pod must be bound to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selected_node: Option<String>,
    /// `Regular` or `Fraction`.
    // A string, not an enum: an unknown value must be reported, not make the object undecodable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received_resource_type: Option<String>,
    /// GPUs the pod received.
    #[serde(rename = "receivedGPU", skip_serializing_if = "Option::is_none")]
    pub received_gpu: Option<ReceivedGpu>,
    /// GPU groups chosen for a fractional request.
    #[serde(rename = "selectedGPUGroups", skip_serializing_if = "Option::is_none")]
    pub selected_gpu_groups: Option<Vec<String>>,
    /// DRA allocations to write into the pod's ResourceClaims before binding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_claim_allocations: Option<Vec<ResourceClaimAllocation>>,
    /// Failed attempts allowed before the request is given up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff_limit: Option<i32>,
    /// The allocation of the pod's synthetic claim for extended resources backed by DRA
    /// (KEP-5004); the binder creates that claim.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extended_resource_claim_allocation: Option<ExtendedResourceClaimAllocation>,
    /// The scheduler's predicted NUMA placement on the selected node; KAI's binder copies it
    /// to the pod annotation `kai.scheduler/numa-placement-predicted`.
    #[serde(rename = "predictedNUMAZones", skip_serializing_if = "Option::is_none")]
    pub predicted_numa_zones: Option<Vec<NumaZonePlacement>>,
}

/// The allocation for the pod's extended-resource claim (KEP-5004).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExtendedResourceClaimAllocation {
    /// The allocation result from the DRA allocator.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocation: Option<AllocationResult>,
    /// The claim's requests, one per extended resource.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_requests: Option<Vec<DeviceRequest>>,
    /// Which container's extended resource each request backs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_mappings: Option<Vec<ContainerExtendedResourceRequest>>,
}

/// Resources placed on one NUMA zone: the NodeResourceTopology zone id and the amounts.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NumaZonePlacement {
    /// Zone id from the node's NodeResourceTopology (e.g. `node-0`).
    pub zone: String,
    /// Amount per resource name placed in the zone.
    pub amount: BTreeMap<String, QuantityValue>,
}

/// GPUs the pod received.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReceivedGpu {
    /// Number of GPU devices.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(transform = schema::drop_format)]
    pub count: Option<i64>,
    /// Share of each device, a decimal string such as `"0.50"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub portion: Option<String>,
}

/// One DRA claim allocation.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceClaimAllocation {
    /// The pod's `spec.resourceClaims[].name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The allocation to record in the claim's status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocation: Option<AllocationResult>,
}

/// The BindRequest object without the `kube` feature: the same fields as the derived
/// custom resource, as plain data, so the pure decisions (bindlet-core) build without kube.
/// With the feature (the agent, the simulator, the CLI) the derive above defines it instead.
#[cfg(not(feature = "kube"))]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct BindRequest {
    #[serde(default)]
    pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    pub spec: BindRequestSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<BindRequestStatus>,
}

#[cfg(not(feature = "kube"))]
impl BindRequest {
    /// Like the derive's constructor: `name` in the metadata, no status.
    pub fn new(name: &str, spec: BindRequestSpec) -> Self {
        BindRequest {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            spec,
            status: None,
        }
    }
}

/// Observed state of a BindRequest.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BindRequestStatus {
    /// `Pending`, `Succeeded` or `Failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Why the request is in its phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Failed binding attempts so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_attempts: Option<i32>,
    /// Added by bindlet: the node's checks for the latest attempt. Absent when only KAI's CRD
    /// is installed (the API server prunes it), so nothing relies on reading it back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_verification: Option<NodeVerification>,
}

/// The checks a node agent ran for one attempt.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeVerification {
    /// The node that ran the checks.
    pub node: String,
    /// The agent instance (pod name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The attempt these verdicts belong to.
    pub attempt: i32,
    /// When the checks ran (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub observed_at: Option<String>,
    /// One verdict per check.
    pub verdicts: Vec<Verdict>,
}

/// The outcome of one check.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    /// The plugin that ran the check.
    pub plugin: String,
    /// The check's name.
    pub check: String,
    /// Pass, Warn, Fail or Skip.
    pub outcome: VerdictOutcome,
    /// Human-readable detail.
    pub message: String,
}

/// Outcome of a check.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum VerdictOutcome {
    Pass,
    Warn,
    Fail,
    Skip,
}

/// The phases KAI defines for `status.phase`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Phase {
    Pending,
    Succeeded,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }

    /// The phase named exactly `s`; anything else (other case, unknown) is `None`.
    pub fn parse(s: &str) -> Option<Phase> {
        match s {
            "Pending" => Some(Phase::Pending),
            "Succeeded" => Some(Phase::Succeeded),
            "Failed" => Some(Phase::Failed),
            _ => None,
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl BindRequest {
    /// `status.phase` when it is one KAI defines; unset or unknown is `None`.
    pub fn phase(&self) -> Option<Phase> {
        self.status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .and_then(Phase::parse)
    }

    /// `status.failedAttempts`, 0 when unset.
    pub fn failed_attempts(&self) -> i32 {
        self.status
            .as_ref()
            .and_then(|s| s.failed_attempts)
            .unwrap_or(0)
    }

    /// UID of the pod that owns this request (owner reference `v1` `Pod`). When several
    /// claim to be, the controller reference wins.
    pub fn owner_pod_uid(&self) -> Option<&str> {
        let refs = self.metadata.owner_references.as_deref()?;
        let mut pods = refs
            .iter()
            .filter(|r| r.kind == "Pod" && r.api_version == "v1");
        let first = pods.clone().next()?;
        let chosen = pods.find(|r| r.controller == Some(true)).unwrap_or(first);
        Some(chosen.uid.as_str())
    }
}
