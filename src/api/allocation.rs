//! Mirror of `resource.k8s.io/v1` `AllocationResult`, shaped exactly as KAI's CRD carries it.
//!
//! k8s-openapi's types are not used directly because they are lossy for KAI-valid objects:
//! `Quantity` turns an integer `consumedCapacity` value into a string, and `Time` drops
//! sub-second precision. These mirrors keep every value as written and convert to and from the
//! k8s-openapi types for the code that writes ResourceClaim status.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::resource::v1 as resourcev1;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema;

/// The result of allocating resources for one claim.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllocationResult {
    /// When the resources were allocated (RFC 3339); kept as written.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub allocation_timestamp: Option<String>,
    /// The allocated devices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices: Option<DeviceAllocationResult>,
    /// Where the allocated resources are available; unset means everywhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<NodeSelector>,
}

/// The result of allocating devices.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceAllocationResult {
    /// Claim and class configuration parameters for the drivers.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub config: Option<Vec<DeviceAllocationConfiguration>>,
    /// All allocated devices.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub results: Option<Vec<DeviceRequestAllocationResult>>,
}

/// The allocation result for one device of one request.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRequestAllocationResult {
    /// The device was allocated for administrative access.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_access: Option<bool>,
    /// Copy of the ResourceSlice's binding conditions at allocation time.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub binding_conditions: Option<Vec<String>>,
    /// Copy of the ResourceSlice's binding failure conditions at allocation time.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub binding_failure_conditions: Option<Vec<String>>,
    /// Capacity consumed per device, by capacity name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumed_capacity: Option<BTreeMap<String, QuantityValue>>,
    /// The device's name in the driver's resource pool.
    pub device: String,
    /// The DRA driver that handles the device.
    pub driver: String,
    /// The resource pool the device belongs to.
    pub pool: String,
    /// The request in the claim that caused this allocation (`<request>[/<subrequest>]`).
    pub request: String,
    /// Identifies one share of a device that allows multiple allocations.
    #[serde(rename = "shareID", skip_serializing_if = "Option::is_none")]
    pub share_id: Option<String>,
    /// Copy of the request's tolerations at allocation time.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub tolerations: Option<Vec<DeviceToleration>>,
}

/// Configuration for the drivers of an allocation.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceAllocationConfiguration {
    /// Driver-specific configuration parameters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opaque: Option<OpaqueDeviceConfiguration>,
    /// Requests the configuration applies to; empty means all.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub requests: Option<Vec<String>>,
    /// Where the configuration comes from (`FromClass` or `FromClaim`).
    pub source: String,
}

/// Driver-specific configuration parameters.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpaqueDeviceConfiguration {
    /// The driver these parameters are for.
    pub driver: String,
    /// Arbitrary driver data, kept verbatim.
    #[schemars(schema_with = "schema::preserved_object")]
    pub parameters: serde_json::Value,
}

/// A device taint toleration copied from the request.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceToleration {
    /// Taint effect to match; empty matches all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
    /// Taint key to match; empty matches all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `Exists` or `Equal`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "Equal"))]
    pub operator: Option<String>,
    /// How long a `NoExecute` taint is tolerated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub toleration_seconds: Option<i64>,
    /// Taint value to match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// Node selector (`core/v1` NodeSelector): the terms are ORed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-map-type" = "atomic"))]
pub struct NodeSelector {
    /// The terms, ORed.
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub node_selector_terms: Vec<NodeSelectorTerm>,
}

/// One node selector term: its requirements are ANDed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-map-type" = "atomic"))]
pub struct NodeSelectorTerm {
    /// Requirements on node labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub match_expressions: Option<Vec<NodeSelectorRequirement>>,
    /// Requirements on node fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub match_fields: Option<Vec<NodeSelectorRequirement>>,
}

/// A key, an operator and values.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeSelectorRequirement {
    /// The label or field key.
    pub key: String,
    /// `In`, `NotIn`, `Exists`, `DoesNotExist`, `Gt` or `Lt`.
    pub operator: String,
    /// The values; their meaning depends on the operator.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub values: Option<Vec<String>>,
}

/// A resource quantity as KAI's schema allows it: an integer or a quantity string.
///
/// Kept as written so that an integer stays an integer on the way back.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum QuantityValue {
    Int(i64),
    String(String),
}

impl QuantityValue {
    /// The canonical string form (`4`, `"10Gi"`), as a k8s `Quantity` holds it.
    pub fn to_quantity_string(&self) -> String {
        match self {
            QuantityValue::Int(n) => n.to_string(),
            QuantityValue::String(s) => s.clone(),
        }
    }
}

impl JsonSchema for QuantityValue {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "QuantityValue".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schema::quantity()
    }
}

impl From<Quantity> for QuantityValue {
    fn from(q: Quantity) -> Self {
        QuantityValue::String(q.0)
    }
}

impl From<QuantityValue> for Quantity {
    fn from(v: QuantityValue) -> Self {
        Quantity(v.to_quantity_string())
    }
}

/// Why an [`AllocationResult`] cannot become a k8s-openapi one.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AllocationConversionError {
    #[error("allocationTimestamp {0:?} is not an RFC 3339 timestamp")]
    Timestamp(String),
}

/// Formats a timestamp the way k8s-openapi's `Time` serializes it.
fn format_time(t: &Time) -> String {
    jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%SZ", t.0).unwrap_or_else(|_| t.0.to_string())
}

impl From<resourcev1::AllocationResult> for AllocationResult {
    fn from(a: resourcev1::AllocationResult) -> Self {
        AllocationResult {
            allocation_timestamp: a.allocation_timestamp.as_ref().map(format_time),
            devices: a.devices.map(|d| DeviceAllocationResult {
                config: d.config.map(|c| c.into_iter().map(Into::into).collect()),
                results: d.results.map(|r| r.into_iter().map(Into::into).collect()),
            }),
            node_selector: a.node_selector.map(Into::into),
        }
    }
}

impl TryFrom<AllocationResult> for resourcev1::AllocationResult {
    type Error = AllocationConversionError;

    fn try_from(a: AllocationResult) -> Result<Self, Self::Error> {
        let allocation_timestamp = match a.allocation_timestamp {
            None => None,
            Some(s) => {
                Some(Time(s.parse::<jiff::Timestamp>().map_err(|_| {
                    AllocationConversionError::Timestamp(s.clone())
                })?))
            }
        };
        Ok(resourcev1::AllocationResult {
            allocation_timestamp,
            devices: a.devices.map(|d| resourcev1::DeviceAllocationResult {
                config: d.config.map(|c| c.into_iter().map(Into::into).collect()),
                results: d.results.map(|r| r.into_iter().map(Into::into).collect()),
            }),
            node_selector: a.node_selector.map(Into::into),
        })
    }
}

impl From<resourcev1::DeviceAllocationConfiguration> for DeviceAllocationConfiguration {
    fn from(c: resourcev1::DeviceAllocationConfiguration) -> Self {
        DeviceAllocationConfiguration {
            opaque: c.opaque.map(|o| OpaqueDeviceConfiguration {
                driver: o.driver,
                parameters: o.parameters.0,
            }),
            requests: c.requests,
            source: c.source,
        }
    }
}

impl From<DeviceAllocationConfiguration> for resourcev1::DeviceAllocationConfiguration {
    fn from(c: DeviceAllocationConfiguration) -> Self {
        resourcev1::DeviceAllocationConfiguration {
            opaque: c.opaque.map(|o| resourcev1::OpaqueDeviceConfiguration {
                driver: o.driver,
                parameters: RawExtension(o.parameters),
            }),
            requests: c.requests,
            source: c.source,
        }
    }
}

impl From<resourcev1::DeviceRequestAllocationResult> for DeviceRequestAllocationResult {
    fn from(r: resourcev1::DeviceRequestAllocationResult) -> Self {
        DeviceRequestAllocationResult {
            admin_access: r.admin_access,
            binding_conditions: r.binding_conditions,
            binding_failure_conditions: r.binding_failure_conditions,
            consumed_capacity: r
                .consumed_capacity
                .map(|m| m.into_iter().map(|(k, v)| (k, v.into())).collect()),
            device: r.device,
            driver: r.driver,
            pool: r.pool,
            request: r.request,
            share_id: r.share_id,
            tolerations: r
                .tolerations
                .map(|t| t.into_iter().map(Into::into).collect()),
        }
    }
}

impl From<DeviceRequestAllocationResult> for resourcev1::DeviceRequestAllocationResult {
    fn from(r: DeviceRequestAllocationResult) -> Self {
        resourcev1::DeviceRequestAllocationResult {
            admin_access: r.admin_access,
            binding_conditions: r.binding_conditions,
            binding_failure_conditions: r.binding_failure_conditions,
            consumed_capacity: r
                .consumed_capacity
                .map(|m| m.into_iter().map(|(k, v)| (k, v.into())).collect()),
            device: r.device,
            driver: r.driver,
            pool: r.pool,
            request: r.request,
            share_id: r.share_id,
            tolerations: r
                .tolerations
                .map(|t| t.into_iter().map(Into::into).collect()),
        }
    }
}

impl From<resourcev1::DeviceToleration> for DeviceToleration {
    fn from(t: resourcev1::DeviceToleration) -> Self {
        DeviceToleration {
            effect: t.effect,
            key: t.key,
            operator: t.operator,
            toleration_seconds: t.toleration_seconds,
            value: t.value,
        }
    }
}

impl From<DeviceToleration> for resourcev1::DeviceToleration {
    fn from(t: DeviceToleration) -> Self {
        resourcev1::DeviceToleration {
            effect: t.effect,
            key: t.key,
            operator: t.operator,
            toleration_seconds: t.toleration_seconds,
            value: t.value,
        }
    }
}

impl From<corev1::NodeSelector> for NodeSelector {
    fn from(s: corev1::NodeSelector) -> Self {
        NodeSelector {
            node_selector_terms: s.node_selector_terms.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<NodeSelector> for corev1::NodeSelector {
    fn from(s: NodeSelector) -> Self {
        corev1::NodeSelector {
            node_selector_terms: s.node_selector_terms.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<corev1::NodeSelectorTerm> for NodeSelectorTerm {
    fn from(t: corev1::NodeSelectorTerm) -> Self {
        NodeSelectorTerm {
            match_expressions: t
                .match_expressions
                .map(|v| v.into_iter().map(Into::into).collect()),
            match_fields: t
                .match_fields
                .map(|v| v.into_iter().map(Into::into).collect()),
        }
    }
}

impl From<NodeSelectorTerm> for corev1::NodeSelectorTerm {
    fn from(t: NodeSelectorTerm) -> Self {
        corev1::NodeSelectorTerm {
            match_expressions: t
                .match_expressions
                .map(|v| v.into_iter().map(Into::into).collect()),
            match_fields: t
                .match_fields
                .map(|v| v.into_iter().map(Into::into).collect()),
        }
    }
}

impl From<corev1::NodeSelectorRequirement> for NodeSelectorRequirement {
    fn from(r: corev1::NodeSelectorRequirement) -> Self {
        NodeSelectorRequirement {
            key: r.key,
            operator: r.operator,
            values: r.values,
        }
    }
}

impl From<NodeSelectorRequirement> for corev1::NodeSelectorRequirement {
    fn from(r: NodeSelectorRequirement) -> Self {
        corev1::NodeSelectorRequirement {
            key: r.key,
            operator: r.operator,
            values: r.values,
        }
    }
}
