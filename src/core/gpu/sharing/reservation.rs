//! KAI's GPU reservation pod for a group, built the way KAI's binder builds it
//! (`pkg/binder/binding/resourcereservation/resource_reservation.go`,
//! `createResourceReservationPod`), so KAI's binder and bindlet create, find and reuse the
//! same object.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, ObjectFieldSelector, Pod, PodSecurityContext, PodSpec,
    ResourceRequirements, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::APP_LABEL;
use crate::gpu::verdict::{GPU_GROUP_LABEL, GPU_RESOURCE};

/// Prefix of every reservation pod's name (KAI `gpuReservationPodPrefix`).
pub const NAME_PREFIX: &str = "gpu-reservation";
/// KAI's container name (`resourceReservation`).
pub const CONTAINER_NAME: &str = "resource-reservation";
/// Keeps Karpenter from consolidating the node under a reservation (KAI sets it too).
pub const DO_NOT_DISRUPT_ANNOTATION: &str = "karpenter.sh/do-not-disrupt";

/// The name of `group`'s reservation pod on `node`: `gpu-reservation-` and the first 16 hex
/// digits (8 bytes) of SHA-256 of `<node>/<group>` (KAI `reservationPodName`). Being the
/// same for every binder, a second create of the group's pod, by a concurrent bind, a
/// retry or KAI's own binder during a migration, answers AlreadyExists instead of
/// reserving a second GPU.
pub fn pod_name(node: &str, group: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, format!("{node}/{group}").as_bytes());
    let hex: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{NAME_PREFIX}-{hex}")
}

/// What the reservation pods are made of (KAI's `--resource-reservation-*` flags).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodSettings {
    pub namespace: String,
    pub app_label: String,
    pub image: String,
    pub service_account: String,
    pub runtime_class: Option<String>,
    /// Added to the one GPU the pod asks for (its own `nvidia.com/gpu` entries are ignored).
    pub resources: Option<ResourceRequirements>,
    pub pod_security_context: Option<PodSecurityContext>,
    pub container_security_context: Option<SecurityContext>,
}

/// `group`'s reservation pod on `node`, for the fractional pod `source`: bound to the node
/// directly, labelled with the app label and the group, asking for one whole GPU (and the
/// configured resources besides), with the fractional pod's tolerations (so it tolerates
/// what the pod tolerates on this node) and the configured security contexts.
pub fn pod(settings: &PodSettings, node: &str, group: &str, source: &Pod) -> Pod {
    let one = || Quantity("1".into());
    let mut limits = BTreeMap::from([(GPU_RESOURCE.to_string(), one())]);
    let mut requests = BTreeMap::from([(GPU_RESOURCE.to_string(), one())]);
    if let Some(extra) = &settings.resources {
        let others = |m: &Option<BTreeMap<String, Quantity>>| {
            m.iter()
                .flatten()
                .filter(|(k, _)| k.as_str() != GPU_RESOURCE)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Vec<_>>()
        };
        limits.extend(others(&extra.limits));
        requests.extend(others(&extra.requests));
    }
    let field_env = |name: &str, path: &str| EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(node, group)),
            namespace: Some(settings.namespace.clone()),
            labels: Some(BTreeMap::from([
                (APP_LABEL.to_string(), settings.app_label.clone()),
                (GPU_GROUP_LABEL.to_string(), group.to_string()),
            ])),
            annotations: Some(BTreeMap::from([(
                DO_NOT_DISRUPT_ANNOTATION.to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.to_string()),
            tolerations: source.spec.as_ref().and_then(|s| s.tolerations.clone()),
            runtime_class_name: settings.runtime_class.clone().filter(|r| !r.is_empty()),
            security_context: settings.pod_security_context.clone(),
            service_account_name: Some(settings.service_account.clone()),
            containers: vec![Container {
                name: CONTAINER_NAME.to_string(),
                image: Some(settings.image.clone()),
                image_pull_policy: Some("IfNotPresent".to_string()),
                resources: Some(ResourceRequirements {
                    limits: Some(limits),
                    requests: Some(requests),
                    ..Default::default()
                }),
                security_context: settings.container_security_context.clone(),
                env: Some(vec![
                    field_env("POD_NAME", "metadata.name"),
                    field_env("POD_NAMESPACE", "metadata.namespace"),
                ]),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_are_kai_s() {
        // Expected values from `printf '<node>/<group>' | sha256sum`, first 16 hex digits.
        let cases = [
            ("node-a", "group-1", "gpu-reservation-bfbf6ae2fb6bd3df"),
            (
                "gpu-node-7",
                "1c2e3f4a-5b6c-4d7e-8f90-a1b2c3d4e5f6",
                "gpu-reservation-c63e886aa50b41f4",
            ),
        ];
        for (node, group, want) in cases {
            assert_eq!(pod_name(node, group), want, "{node}/{group}");
        }
        assert_ne!(pod_name("n1", "g"), pod_name("n2", "g"), "per node");
    }

    #[test]
    fn pod_follows_kai_and_the_settings() {
        let source: Pod = serde_json::from_value(json!({
            "metadata": { "name": "frac" },
            "spec": { "containers": [], "tolerations": [
                { "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule" },
                { "key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300 }
            ] }
        }))
        .expect("pod");
        let base = PodSettings {
            namespace: "kai-resource-reservation".into(),
            app_label: "kai-resource-reservation".into(),
            image: "img".into(),
            service_account: "kai-resource-reservation".into(),
            ..Default::default()
        };
        let p = pod(&base, "node-a", "group-1", &source);
        let v = serde_json::to_value(&p).expect("json");
        assert_eq!(v["metadata"]["name"], json!(pod_name("node-a", "group-1")));
        assert_eq!(
            v["metadata"]["labels"],
            json!({ "app": "kai-resource-reservation", "runai-gpu-group": "group-1" })
        );
        assert_eq!(
            v["metadata"]["annotations"],
            json!({ "karpenter.sh/do-not-disrupt": "true" })
        );
        assert_eq!(v["spec"]["nodeName"], "node-a");
        assert_eq!(
            v["spec"]["tolerations"],
            json!(source.spec.as_ref().unwrap().tolerations)
        );
        let c = &v["spec"]["containers"][0];
        assert_eq!(c["name"], "resource-reservation");
        assert_eq!(
            c["resources"],
            json!({ "limits": { "nvidia.com/gpu": "1" }, "requests": { "nvidia.com/gpu": "1" } }),
            "KAI's default: the GPU alone"
        );
        assert!(v["spec"].get("securityContext").is_none());
        assert!(v["spec"].get("runtimeClassName").is_none());

        let tuned = PodSettings {
            runtime_class: Some("nvidia".into()),
            resources: Some(
                serde_json::from_value(json!({
                    "limits": { "cpu": "50m", "memory": "100Mi", "nvidia.com/gpu": "4" },
                    "requests": { "cpu": "1m" }
                }))
                .expect("resources"),
            ),
            pod_security_context: Some(
                serde_json::from_value(json!({ "runAsNonRoot": true })).expect("psc"),
            ),
            container_security_context: Some(
                serde_json::from_value(json!({ "allowPrivilegeEscalation": false })).expect("csc"),
            ),
            ..base
        };
        let v = serde_json::to_value(pod(&tuned, "node-a", "group-1", &source)).expect("json");
        let c = &v["spec"]["containers"][0];
        assert_eq!(
            c["resources"],
            json!({
                "limits": { "cpu": "50m", "memory": "100Mi", "nvidia.com/gpu": "1" },
                "requests": { "cpu": "1m", "nvidia.com/gpu": "1" }
            }),
            "configured resources added; the GPU stays one"
        );
        assert_eq!(v["spec"]["runtimeClassName"], "nvidia");
        assert_eq!(
            v["spec"]["securityContext"],
            json!({ "runAsNonRoot": true })
        );
        assert_eq!(
            c["securityContext"],
            json!({ "allowPrivilegeEscalation": false })
        );
    }
}
