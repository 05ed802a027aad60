//! Mirror of `resource.k8s.io/v1` `DeviceRequest`, shaped exactly as KAI's CRD carries it in
//! `spec.extendedResourceClaimAllocation.deviceRequests` (KEP-5004).
//!
//! Lossless for the same reason as [`super::allocation`]: a capacity request written as an
//! integer stays an integer. Converts to k8s-openapi's type for the code that creates the
//! pod's extended-resource ResourceClaim.

use std::collections::BTreeMap;

use k8s_openapi::api::resource::v1 as resourcev1;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::allocation::{DeviceToleration, QuantityValue};

/// One request for devices of a claim: either `exactly` one kind, or the first available of a
/// list of alternatives.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRequest {
    /// Unique within the claim; containers refer to it.
    pub name: String,
    /// The one kind of device this request asks for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exactly: Option<ExactDeviceRequest>,
    /// Alternatives, tried in order.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub first_available: Option<Vec<DeviceSubRequest>>,
}

/// A request for one kind of device.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExactDeviceRequest {
    /// The DeviceClass whose devices may satisfy the request.
    pub device_class_name: String,
    /// Devices must satisfy every selector.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub selectors: Option<Vec<DeviceSelector>>,
    /// `ExactCount` (default) or `All`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocation_mode: Option<String>,
    /// Number of devices for `ExactCount`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
    /// Administrative access to devices in use by others.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_access: Option<bool>,
    /// Device taints tolerated.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub tolerations: Option<Vec<DeviceToleration>>,
    /// Capacity asked of each device (consumable capacity).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<CapacityRequirements>,
}

/// One alternative of a `firstAvailable` request.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSubRequest {
    /// Unique within the request; the allocation names it as `<request>/<name>`.
    pub name: String,
    /// The DeviceClass whose devices may satisfy the subrequest.
    pub device_class_name: String,
    /// Devices must satisfy every selector.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub selectors: Option<Vec<DeviceSelector>>,
    /// `ExactCount` (default) or `All`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocation_mode: Option<String>,
    /// Number of devices for `ExactCount`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
    /// Device taints tolerated.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub tolerations: Option<Vec<DeviceToleration>>,
    /// Capacity asked of each device (consumable capacity).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<CapacityRequirements>,
}

/// A device selector.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSelector {
    /// A CEL expression over the device's attributes and capacity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cel: Option<CelDeviceSelector>,
}

/// A CEL device selector.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CelDeviceSelector {
    /// The expression; it must evaluate to true for a device to be selected.
    pub expression: String,
}

/// Capacity asked of a device.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CapacityRequirements {
    /// Minimum amount per capacity name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<BTreeMap<String, QuantityValue>>,
}

/// Maps one container's extended resource to the request that backs it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerExtendedResourceRequest {
    /// The container that requests the extended resource.
    pub container_name: String,
    /// The request in the pod's extended-resource claim.
    pub request_name: String,
    /// The extended resource name (e.g. `example.com/gpu`).
    pub resource_name: String,
}

fn selectors_to_k8s(s: Option<Vec<DeviceSelector>>) -> Option<Vec<resourcev1::DeviceSelector>> {
    s.map(|v| {
        v.into_iter()
            .map(|s| resourcev1::DeviceSelector {
                cel: s.cel.map(|c| resourcev1::CELDeviceSelector {
                    expression: c.expression,
                }),
            })
            .collect()
    })
}

fn capacity_to_k8s(c: Option<CapacityRequirements>) -> Option<resourcev1::CapacityRequirements> {
    c.map(|c| resourcev1::CapacityRequirements {
        requests: c
            .requests
            .map(|m| m.into_iter().map(|(k, v)| (k, v.into())).collect()),
    })
}

fn tolerations_to_k8s(
    t: Option<Vec<DeviceToleration>>,
) -> Option<Vec<resourcev1::DeviceToleration>> {
    t.map(|v| v.into_iter().map(Into::into).collect())
}

impl From<DeviceRequest> for resourcev1::DeviceRequest {
    fn from(r: DeviceRequest) -> Self {
        resourcev1::DeviceRequest {
            name: r.name,
            exactly: r.exactly.map(|e| resourcev1::ExactDeviceRequest {
                device_class_name: e.device_class_name,
                selectors: selectors_to_k8s(e.selectors),
                allocation_mode: e.allocation_mode,
                count: e.count,
                admin_access: e.admin_access,
                tolerations: tolerations_to_k8s(e.tolerations),
                capacity: capacity_to_k8s(e.capacity),
            }),
            first_available: r.first_available.map(|v| {
                v.into_iter()
                    .map(|s| resourcev1::DeviceSubRequest {
                        name: s.name,
                        device_class_name: s.device_class_name,
                        selectors: selectors_to_k8s(s.selectors),
                        allocation_mode: s.allocation_mode,
                        count: s.count,
                        tolerations: tolerations_to_k8s(s.tolerations),
                        capacity: capacity_to_k8s(s.capacity),
                    })
                    .collect()
            }),
        }
    }
}
