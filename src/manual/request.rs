//! The BindRequest `bindlet bind` writes: shaped exactly like KAI-Scheduler's, so the node's
//! agent (and anything else reading BindRequests) treats it like any other.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::api::{BindRequest, BindRequestSpec, ReceivedGpu, SELECTED_NODE_LABEL};

use crate::node::pod_requests;

const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// A `Regular` request for `pod` on `node`, owned by the pod (so it goes away with it).
/// `Err` names what the pod lacks.
pub fn bind_request(pod: &Pod, node: &str) -> Result<BindRequest, String> {
    let name = pod.metadata.name.clone().ok_or("the pod has no name")?;
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .ok_or("the pod has no namespace")?;
    let uid = pod.metadata.uid.clone().ok_or("the pod has no uid")?;
    let gpus = gpu_count(pod)?;
    Ok(BindRequest {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace),
            labels: Some([(SELECTED_NODE_LABEL.to_string(), node.to_string())].into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name: name.clone(),
                uid,
                controller: Some(true),
                ..Default::default()
            }]),
            ..Default::default()
        },
        spec: BindRequestSpec {
            pod_name: Some(name),
            selected_node: Some(node.to_string()),
            received_resource_type: Some("Regular".into()),
            received_gpu: Some(ReceivedGpu {
                count: Some(gpus),
                portion: Some(if gpus > 0 { "1.00" } else { "0" }.into()),
            }),
            ..Default::default()
        },
        status: None,
    })
}

/// Whole GPUs the pod asks for (`nvidia.com/gpu`, limits and requests are equal for it).
fn gpu_count(pod: &Pod) -> Result<i64, String> {
    let reqs = pod_requests(pod).map_err(|e| e.to_string())?;
    let nanos = reqs.get(GPU_RESOURCE).copied().unwrap_or(0);
    let units = super::quantity::ceil_div(nanos, 1_000_000_000);
    i64::try_from(units.max(0)).map_err(|_| format!("{GPU_RESOURCE} count {units} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn looks_like_kai() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": "train", "namespace": "ml", "uid": "u-1" },
            "spec": { "containers": [
                { "name": "a", "image": "x", "resources": { "limits": { "nvidia.com/gpu": "2" } } },
                { "name": "b", "image": "x" }
            ] }
        }))
        .unwrap();
        let br = bind_request(&pod, "gpu-7").unwrap();
        let v = serde_json::to_value(&br).unwrap();
        assert_eq!(v["apiVersion"], "scheduling.run.ai/v1alpha2");
        assert_eq!(v["kind"], "BindRequest");
        assert_eq!(v["metadata"]["name"], "train");
        assert_eq!(v["metadata"]["namespace"], "ml");
        assert_eq!(v["metadata"]["labels"]["selected-node"], "gpu-7");
        assert_eq!(
            v["metadata"]["ownerReferences"],
            json!([{ "apiVersion": "v1", "kind": "Pod", "name": "train", "uid": "u-1", "controller": true }])
        );
        assert_eq!(v["spec"]["podName"], "train");
        assert_eq!(v["spec"]["selectedNode"], "gpu-7");
        assert_eq!(v["spec"]["receivedResourceType"], "Regular");
        assert_eq!(v["spec"]["receivedGPU"]["count"], 2);
        // And the agent's own validation accepts it.
        assert!(crate::binding::validate_request(&br, "gpu-7").is_ok());

        let mut no_gpu = pod.clone();
        if let Some(s) = no_gpu.spec.as_mut() {
            s.containers.truncate(0);
        }
        let br = bind_request(&no_gpu, "n").unwrap();
        assert_eq!(br.spec.received_gpu.as_ref().and_then(|g| g.count), Some(0));
        assert!(crate::binding::validate_request(&br, "n").is_ok());
    }
}
