//! TEMPORARY stand-in for the BindRequest types while the real module is written on its own branch.
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "scheduling.run.ai";
pub const VERSION: &str = "v1alpha2";
pub const SELECTED_NODE_LABEL: &str = "selected-node";
pub const NODE_POOL_LABEL: &str = "kai.scheduler/node-pool";
pub const FIELD_MANAGER: &str = "bindlet";

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(group = "scheduling.run.ai", version = "v1alpha2", kind = "BindRequest", namespaced, status = "BindRequestStatus")]
#[serde(rename_all = "camelCase")]
pub struct BindRequestSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selected_node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received_resource_type: Option<String>,
    #[serde(rename = "receivedGPU", skip_serializing_if = "Option::is_none")]
    pub received_gpu: Option<ReceivedGpu>,
    #[serde(rename = "selectedGPUGroups", skip_serializing_if = "Option::is_none")]
    pub selected_gpu_groups: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_claim_allocations: Option<Vec<ResourceClaimAllocation>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff_limit: Option<i32>,
}
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ReceivedGpu {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub portion: Option<String>,
}
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ResourceClaimAllocation {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocation: Option<serde_json::Value>,
}
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BindRequestStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_attempts: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_verification: Option<NodeVerification>,
}
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeVerification {
    pub node: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    pub attempt: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<String>,
    pub verdicts: Vec<Verdict>,
}
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct Verdict {
    pub plugin: String,
    pub check: String,
    pub outcome: VerdictOutcome,
    pub message: String,
}
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum VerdictOutcome {
    Pass,
    Warn,
    Fail,
    Skip,
}
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Succeeded,
    Failed,
}
impl Phase {
    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }
    pub fn parse(s: &str) -> Option<Phase> {
        match s {
            "Pending" => Some(Phase::Pending),
            "Succeeded" => Some(Phase::Succeeded),
            "Failed" => Some(Phase::Failed),
            _ => None,
        }
    }
}
impl BindRequest {
    pub fn phase(&self) -> Option<Phase> {
        self.status.as_ref()?.phase.as_deref().and_then(Phase::parse)
    }
    pub fn failed_attempts(&self) -> i32 {
        self.status.as_ref().and_then(|s| s.failed_attempts).unwrap_or(0)
    }
    pub fn owner_pod_uid(&self) -> Option<&str> {
        self.metadata
            .owner_references
            .as_ref()?
            .iter()
            .find(|o| o.kind == "Pod" && o.api_version == "v1")
            .map(|o| o.uid.as_str())
    }
}
pub fn crd() -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use kube::CustomResourceExt;
    BindRequest::crd()
}
pub fn crd_yaml() -> String {
    serde_yaml::to_string(&crd()).unwrap_or_default()
}
