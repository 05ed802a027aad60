//! Names other Kubernetes components and KAI define, shared by the agent and the simulated
//! control plane (one definition each).

use k8s_openapi::api::core::v1::PersistentVolumeClaim;

/// Set on a claim to ask for provisioning on a node (WaitForFirstConsumer).
pub const SELECTED_NODE_ANNOTATION: &str = "volume.kubernetes.io/selected-node";
/// Set by the PV controller once it has finished binding a claim.
pub const BIND_COMPLETED_ANNOTATION: &str = "pv.kubernetes.io/bind-completed";
/// Marks a binding made by a controller (not pre-bound by a user), so it may be undone.
pub const BOUND_BY_CONTROLLER_ANNOTATION: &str = "pv.kubernetes.io/bound-by-controller";
/// The provisioner name of classes whose PVs are created by hand.
pub const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";

/// The extended resource whole-GPU pods request.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// Annotation of KAI's reservation pod naming the physical GPU (its UUID) of the group.
pub const RESERVED_GPU_ANNOTATION: &str = "run.ai/reserve_for_gpu_index";

/// The claim's class: `""` means "no class" (only class-less PVs match).
pub fn claim_class(pvc: &PersistentVolumeClaim) -> &str {
    pvc.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or("")
}
