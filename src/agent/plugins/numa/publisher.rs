//! The background publisher of observed NUMA placements (`--publish-numa-placement`), started by `setup`: the plugin's only API writes.

use super::*;

/// What the publisher needs: the API client with the agent's timeout and recorder, and
/// where to read placements from.
pub struct PlacementPublisher {
    pub kube: crate::kubeapi::Kube,
    pub socket: PathBuf,
    pub sysfs_root: PathBuf,
    pub period: Duration,
}

/// Publishes observed placements until `shutdown`: every `period` it reads the socket and
/// patches the pods whose placement is new or changed. A pod gone from the answer is
/// forgotten. Failed patches are tried again on the next read.
pub async fn publish_loop(p: PlacementPublisher, shutdown: CancellationToken) {
    let mut written: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut last_error: Option<String> = None;
    // The CPU→NUMA map does not change while the node runs: read once, again only until
    // a read has succeeded.
    let mut cpu_nodes: Option<BTreeMap<i64, u32>> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(p.period) => {}
        }
        let answer = match podresources::list(&p.socket, p.kube.timeout).await {
            Ok(a) => a,
            Err(e) => {
                let e = e.to_string();
                // Said once per change, not once per second.
                if last_error.as_deref() != Some(e.as_str()) {
                    tracing::warn!(error = %e, "NUMA placement: the kubelet pod-resources socket did not answer");
                    last_error = Some(e);
                }
                continue;
            }
        };
        last_error = None;
        // CPUs cannot be placed without the topology; devices and memory still can.
        if cpu_nodes.is_none() {
            match sysfs::read_facts(&p.sysfs_root, None) {
                Ok(f) => cpu_nodes = Some(f.cpu_nodes()),
                Err(e) => tracing::debug!(error = %e, "NUMA placement: CPUs not attributed"),
            }
        }
        let empty = BTreeMap::new();
        let cpu_nodes = cpu_nodes.as_ref().unwrap_or(&empty);
        let mut seen = BTreeSet::new();
        for pod in &answer {
            let key = (pod.namespace.clone(), pod.name.clone());
            seen.insert(key.clone());
            let placement = numa::observed(pod, cpu_nodes);
            if placement.is_empty() {
                continue;
            }
            let value = numa::annotation_value(&placement);
            if written.get(&key) == Some(&value) {
                continue;
            }
            let api: Api<Pod> = Api::namespaced(p.kube.client.clone(), &pod.namespace);
            let patch = serde_json::json!({
                "metadata": { "annotations": { OBSERVED_ANNOTATION: value } }
            });
            let params = PatchParams::default();
            let merge = Patch::Merge(&patch);
            let sent = api.patch(&pod.name, &params, &merge);
            match p.kube.call(PATCH_POD, sent).await {
                Ok(_) => {
                    tracing::debug!(pod = %format!("{}/{}", pod.namespace, pod.name), placement = %value, "published NUMA placement");
                    written.insert(key, value);
                }
                // Gone since the kubelet answered: nothing to publish.
                Err(e) if e.code() == Some(404) => {
                    written.insert(key, value);
                }
                Err(e) => {
                    tracing::warn!(pod = %format!("{}/{}", pod.namespace, pod.name), error = %e, "NUMA placement not published; trying again");
                }
            }
        }
        written.retain(|k, _| seen.contains(k));
    }
}
