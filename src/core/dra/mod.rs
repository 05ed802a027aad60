//! Pure DRA decisions for the `dra` plugin: which claim a pod entry names, whether an
//! allocation concerns this node, and what a ResourceClaim's status must become to reserve
//! it for the pod (or to undo that). No I/O: the plugin reads, these decide, the plugin writes.

use std::borrow::Borrow;

use k8s_openapi::api::core::v1::{Node, NodeSelector, Pod};
use k8s_openapi::api::resource::v1::{
    AllocationResult, Device, ResourceClaim, ResourceClaimConsumerReference, ResourceClaimStatus,
    ResourceSlice,
};

use crate::gpu::{GpuSnapshot, InventoryState};

pub mod capacity;
pub mod conditions;
pub mod extended;
pub mod taints;

/// `status.reservedFor` may hold at most this many consumers (resource.k8s.io/v1).
pub const RESERVED_FOR_MAX: usize = 256;

/// The pod's claim for `pod_claim` (its `spec.resourceClaims[].name`): the claim named
/// directly, or for template claims the generated name the resourceclaim controller
/// recorded in `status.resourceClaimStatuses`. `Err` says why it is not known (yet).
pub fn claim_name(pod: &Pod, pod_claim: &str) -> Result<String, String> {
    let entry = pod
        .spec
        .as_ref()
        .and_then(|s| s.resource_claims.as_deref())
        .unwrap_or(&[])
        .iter()
        .find(|c| c.name == pod_claim)
        .ok_or_else(|| format!("the pod has no spec.resourceClaims entry named {pod_claim}"))?;
    if let Some(n) = entry
        .resource_claim_name
        .as_deref()
        .filter(|n| !n.is_empty())
    {
        return Ok(n.to_string());
    }
    if entry.resource_claim_template_name.is_none() {
        return Err(format!(
            "spec.resourceClaims entry {pod_claim} names neither a claim nor a template"
        ));
    }
    let generated = pod
        .status
        .as_ref()
        .and_then(|s| s.resource_claim_statuses.as_deref())
        .unwrap_or(&[])
        .iter()
        .find(|s| s.name == pod_claim)
        .and_then(|s| s.resource_claim_name.clone())
        .filter(|n| !n.is_empty());
    generated.ok_or_else(|| {
        format!(
            "the claim for template entry {pod_claim} has not been generated yet (no status.resourceClaimStatuses entry)"
        )
    })
}

pub use crate::api::selector::node_selector_matches;

/// Whether a slice (or, with per-device node selection, one of its devices) is available
/// on `node`: published for it by name, for all nodes, or through a selector matching it.
fn available_here(
    node_name: Option<&str>,
    all_nodes: Option<bool>,
    selector: Option<&NodeSelector>,
    node: &Node,
) -> bool {
    node_name.is_some_and(|n| Some(n) == node.metadata.name.as_deref())
        || all_nodes == Some(true)
        || selector.is_some_and(|s| node_selector_matches(s, node))
}

/// Finds `device` of `driver`/`pool` in the slices, if it is available on `node`.
fn find_device<'a, S: Borrow<ResourceSlice>>(
    slices: &'a [S],
    driver: &str,
    pool: &str,
    device: &str,
    node: &Node,
) -> Result<&'a Device, String> {
    let mut pool_seen = false;
    for s in slices {
        let spec = &s.borrow().spec;
        if spec.driver != driver || spec.pool.name != pool {
            continue;
        }
        pool_seen = true;
        let per_device = spec.per_device_node_selection == Some(true);
        if !per_device
            && !available_here(
                spec.node_name.as_deref(),
                spec.all_nodes,
                spec.node_selector.as_ref(),
                node,
            )
        {
            continue;
        }
        if let Some(d) = spec
            .devices
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .find(|d| d.name == device)
        {
            if per_device
                && !available_here(
                    d.node_name.as_deref(),
                    d.all_nodes,
                    d.node_selector.as_ref(),
                    node,
                )
            {
                continue;
            }
            return Ok(d);
        }
    }
    let node = node.metadata.name.as_deref().unwrap_or("");
    Err(if pool_seen {
        format!("device {device} of pool {pool} (driver {driver}) is not published for node {node}")
    } else {
        format!("no ResourceSlice of driver {driver} publishes pool {pool} for node {node}")
    })
}

/// The device's UUID attribute (`uuid` or a domain-qualified `.../uuid`), if any.
pub fn device_uuid(d: &Device) -> Option<&str> {
    d.attributes
        .as_ref()?
        .iter()
        .find(|(k, _)| *k == "uuid" || k.ends_with("/uuid"))
        .and_then(|(_, v)| v.string.as_deref())
}

/// Whether any device of `alloc` found in `slices` carries a GPU UUID, i.e. whether
/// `verify_allocation` would consult the GPU inventory. Taking a GPU snapshot costs an
/// NVML probe (or a library load attempt on a node without a driver), so the agent takes
/// one only for allocations that name GPUs.
pub fn names_gpus<S: Borrow<ResourceSlice>>(
    alloc: &AllocationResult,
    node: &Node,
    slices: &[S],
) -> bool {
    alloc
        .devices
        .as_ref()
        .and_then(|d| d.results.as_deref())
        .unwrap_or(&[])
        .iter()
        .any(|r| {
            find_device(slices, &r.driver, &r.pool, &r.device, node)
                .is_ok_and(|d| device_uuid(d).is_some())
        })
}

/// Checks that `alloc` concerns `node`; `Ok` carries one line per passed check, `Err` the
/// reason to refuse. `gpus`: the GPU inventory when one is loaded.
/// `slices` may be owned or shared (`Arc`) slices: the agent's cache hands out `Arc`s, and
/// cloning every device of every slice per bind would cost more than the checks.
pub fn verify_allocation<S: Borrow<ResourceSlice>>(
    claim: &str,
    alloc: &AllocationResult,
    node: &Node,
    slices: &[S],
    gpus: Option<&GpuSnapshot>,
) -> Result<Vec<String>, String> {
    let node_name = node.metadata.name.as_deref().unwrap_or("");
    let mut passed = Vec::new();
    match &alloc.node_selector {
        Some(sel) if !node_selector_matches(sel, node) => {
            return Err(format!(
                "claim {claim}: the allocation's nodeSelector does not select node {node_name}"
            ));
        }
        Some(_) => passed.push(format!(
            "claim {claim}: the allocation's nodeSelector selects node {node_name}"
        )),
        None => passed.push(format!(
            "claim {claim}: the allocation is usable on every node (no nodeSelector)"
        )),
    }
    let gpus = gpus.filter(|g| g.state == InventoryState::Available);
    for r in alloc
        .devices
        .as_ref()
        .and_then(|d| d.results.as_deref())
        .unwrap_or(&[])
    {
        let d = find_device(slices, &r.driver, &r.pool, &r.device, node)
            .map_err(|why| format!("claim {claim}, request {}: {why}", r.request))?;
        let mut line = format!(
            "claim {claim}: device {}/{}/{} is published for this node",
            r.driver, r.pool, r.device
        );
        if let (Some(uuid), Some(snap)) = (device_uuid(d), gpus) {
            gpu_healthy(snap, uuid).map_err(|why| {
                format!(
                    "claim {claim}, device {}/{}/{}: {why}",
                    r.driver, r.pool, r.device
                )
            })?;
            line.push_str(&format!(" and GPU {uuid} is healthy"));
        }
        passed.push(line);
    }
    Ok(passed)
}

/// A UUID names a healthy GPU (or a MIG device of one) of the inventory.
fn gpu_healthy(snap: &GpuSnapshot, uuid: &str) -> Result<(), String> {
    let gpu = snap.by_uuid(uuid).or_else(|| {
        snap.gpus
            .iter()
            .find(|g| g.mig.devices.iter().any(|m| m.uuid == uuid))
    });
    match gpu {
        None => Err(format!("GPU {uuid} is not in this node's GPU inventory")),
        Some(g) if !g.health.healthy => {
            Err(format!("GPU {uuid} is unhealthy: {}", g.health.reason))
        }
        Some(_) => Ok(()),
    }
}

/// The pod as a `reservedFor` consumer.
pub fn consumer(pod_name: &str, pod_uid: &str) -> ResourceClaimConsumerReference {
    ResourceClaimConsumerReference {
        api_group: None,
        resource: "pods".into(),
        name: pod_name.into(),
        uid: pod_uid.into(),
    }
}

fn reserved_for(claim: &ResourceClaim) -> &[ResourceClaimConsumerReference] {
    claim
        .status
        .as_ref()
        .and_then(|s| s.reserved_for.as_deref())
        .unwrap_or(&[])
}

/// Allocations compare by content; the timestamp is the writer's, not the allocation's.
pub fn same_allocation(a: &AllocationResult, b: &AllocationResult) -> bool {
    let strip = |x: &AllocationResult| AllocationResult {
        allocation_timestamp: None,
        ..x.clone()
    };
    strip(a) == strip(b)
}

/// What to do to reserve a claim for the pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Reservation {
    /// The pod is already a consumer with the requested allocation (a retry, or a restart
    /// after the write): nothing to write.
    AlreadyReserved,
    /// Write this status (guarded by the claim's resourceVersion).
    Write {
        status: ResourceClaimStatus,
        /// The allocation was unset and this write sets it.
        sets_allocation: bool,
    },
    /// The claim cannot be reserved for the pod.
    Refuse(String),
}

/// Decides the status write that reserves `claim` for the pod with `requested`.
pub fn plan_reservation(
    claim: &ResourceClaim,
    requested: &AllocationResult,
    pod_name: &str,
    pod_uid: &str,
) -> Reservation {
    let name = claim.metadata.name.as_deref().unwrap_or("");
    if claim.metadata.deletion_timestamp.is_some() {
        return Reservation::Refuse(format!("claim {name} is being deleted"));
    }
    let status = claim.status.clone().unwrap_or_default();
    let sets_allocation = match &status.allocation {
        Some(a) if !same_allocation(a, requested) => {
            return Reservation::Refuse(format!(
                "claim {name} is already allocated differently from the BindRequest's allocation"
            ));
        }
        Some(_) => false,
        None => true,
    };
    let reserved = reserved_for(claim);
    if reserved.iter().any(|c| c.uid == pod_uid) {
        if sets_allocation {
            // Reserved but not allocated cannot come from a valid writer; refuse rather than guess.
            return Reservation::Refuse(format!(
                "claim {name} lists the pod in reservedFor but has no allocation"
            ));
        }
        return Reservation::AlreadyReserved;
    }
    if reserved.len() >= RESERVED_FOR_MAX {
        return Reservation::Refuse(format!(
            "claim {name} is already reserved for {RESERVED_FOR_MAX} consumers (the limit)"
        ));
    }
    let mut new = status;
    if sets_allocation {
        new.allocation = Some(requested.clone());
    }
    let mut list = reserved.to_vec();
    list.push(consumer(pod_name, pod_uid));
    new.reserved_for = Some(list);
    Reservation::Write {
        status: new,
        sets_allocation,
    }
}

/// The status that undoes a reservation: the pod's `reservedFor` entry removed, and the
/// allocation too when this agent set it and no other consumer is left. `None`: nothing
/// to change.
pub fn plan_release(
    claim: &ResourceClaim,
    pod_uid: &str,
    allocation_written: bool,
) -> Option<ResourceClaimStatus> {
    let mut status = claim.status.clone()?;
    let before = reserved_for(claim).len();
    let rest: Vec<_> = reserved_for(claim)
        .iter()
        .filter(|c| c.uid != pod_uid)
        .cloned()
        .collect();
    let removed = rest.len() != before;
    let drop_allocation = allocation_written && rest.is_empty() && status.allocation.is_some();
    if !removed && !drop_allocation {
        return None;
    }
    if drop_allocation {
        // `status.devices` is left as it is: the API server drops the entries of devices
        // that are no longer allocated itself (`dropDeallocatedStatusDevices`, kubernetes
        // `pkg/registry/resource/resourceclaim/strategy.go`), and in 1.36 changing them is
        // the drivers' right (`resourceclaims/driver`), not the binder's.
        status.allocation = None;
    }
    status.reserved_for = if rest.is_empty() { None } else { Some(rest) };
    Some(status)
}

#[cfg(test)]
mod tests;
