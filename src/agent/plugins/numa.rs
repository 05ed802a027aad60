//! `numa`: KAI's predicted NUMA placement (`spec.predictedNUMAZones`) checked on the node
//! before binding, and, when turned on, the placement the kubelet made published on each
//! pod of this node (`kai.scheduler/numa-placement-observed`), the job of KAI's separate
//! NUMA placement exporter DaemonSet (`pkg/npe/`).
//!
//! The check reads sysfs (NUMA nodes, GPUs' PCI affinity), the GPU probe of this attempt
//! and the kubelet's pod-resources answer (what other pods hold per zone); the verdicts are
//! [`crate::numa::verify`]. Requests without a prediction cost nothing. The publisher reads
//! only the local socket while idle and patches a pod only when its placement changed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use tokio_util::sync::CancellationToken;

use crate::api::{Verdict, VerdictOutcome};
use crate::binding::{BindContext, BindState, Plugin, PluginError, verdict};
use crate::gpu::podresources;
use crate::gpu::{GpuArgs, GpuSnapshot, InventoryState};
use crate::kubeapi::calls::PATCH_POD;
use crate::numa::{self, NodeView, OBSERVED_ANNOTATION, PLUGIN, sysfs};
use crate::plugins::gpu::GpuRuntime;

use super::CheckMode;

/// The `numa` plugin's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct NumaArgs {
    /// Check of the scheduler's predicted NUMA placement (spec.predictedNUMAZones) against this node's topology: enforce, warn or off.
    #[arg(long, env = "BINDLET_NUMA_CHECKS", value_enum, default_value_t = CheckMode::Enforce)]
    pub numa_checks: CheckMode,
    /// Where the host's sysfs is mounted (NUMA nodes, PCI devices).
    #[arg(long, env = "BINDLET_SYSFS_ROOT", default_value = "/sys")]
    pub sysfs_root: PathBuf,
    /// Publish each pod's observed NUMA placement (annotation kai.scheduler/numa-placement-observed), read from the kubelet's pod-resources socket, as KAI's NUMA placement exporter does. Needs --kubelet-pod-resources-socket.
    #[arg(long, env = "BINDLET_PUBLISH_NUMA_PLACEMENT")]
    pub publish_numa_placement: bool,
    /// How often the kubelet's pod-resources socket is read for --publish-numa-placement.
    #[arg(long, env = "BINDLET_NUMA_PLACEMENT_PERIOD", default_value = "1s", value_parser = crate::api::duration::parse_duration)]
    pub numa_placement_period: Duration,
}

impl Default for NumaArgs {
    /// The flags' own defaults (written once, in the `#[arg]`s above).
    fn default() -> Self {
        crate::flags::defaults()
    }
}

/// The plugin's settings: its flags.
#[derive(Debug, Clone, Default)]
pub struct NumaSettings {
    pub args: NumaArgs,
}

pub struct NumaPlugin {
    args: NumaArgs,
    runtime: Option<Arc<GpuRuntime>>,
    socket: Option<PathBuf>,
    timeout: Duration,
}

/// The `numa` plugin; with `--publish-numa-placement`, also the publisher of observed
/// placements (a background task in `tasks`), which needs the kubelet's socket.
pub fn setup(
    settings: &NumaSettings,
    gpu: &GpuArgs,
    env: &super::PluginEnv,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Result<NumaPlugin, super::SetupError> {
    let args = &settings.args;
    let socket = gpu.kubelet_pod_resources_socket.clone();
    if args.publish_numa_placement {
        let Some(socket) = socket.clone() else {
            return Err(super::SetupError::NumaPlacementWithoutSocket);
        };
        let publisher = PlacementPublisher {
            kube: env.kube.clone(),
            socket,
            sysfs_root: args.sysfs_root.clone(),
            period: args.numa_placement_period,
        };
        tasks.spawn(publish_loop(publisher, env.stop.clone()));
    }
    Ok(NumaPlugin {
        args: args.clone(),
        runtime: env.gpu.clone(),
        socket,
        timeout: env.kube.timeout,
    })
}

#[async_trait::async_trait]
impl Plugin for NumaPlugin {
    fn name(&self) -> &'static str {
        PLUGIN
    }

    async fn pre_bind(
        &self,
        ctx: &BindContext<'_>,
        state: &mut BindState,
    ) -> Result<Vec<Verdict>, PluginError> {
        let predicted = ctx
            .bind_request
            .spec
            .predicted_numa_zones
            .as_deref()
            .unwrap_or_default();
        if predicted.is_empty() {
            return Ok(Vec::new());
        }
        if self.args.numa_checks == CheckMode::Off {
            return Ok(vec![verdict(
                PLUGIN,
                "amounts",
                VerdictOutcome::Skip,
                "NUMA checks are off".into(),
            )]);
        }
        // The gpu plugin's probe of this attempt, else a fresh one; none without a backend.
        let probed = state
            .get::<super::gpu::GpuBindState>()
            .and_then(|g| g.snapshot.clone());
        let snap: Option<GpuSnapshot> = match (probed, &self.runtime) {
            (Some(s), _) => Some(s),
            (None, Some(rt)) => Some(rt.snapshot().await),
            (None, None) => None,
        }
        .filter(|s| s.state == InventoryState::Available);
        let facts =
            sysfs::read_facts(&self.args.sysfs_root, snap.as_ref()).map_err(|e| e.to_string());
        let used = match &self.socket {
            Some(path) => match (&facts, podresources::list(path, self.timeout).await) {
                (Ok(f), Ok(answer)) => Ok(numa::used_by_others(
                    &answer,
                    &ctx.request.namespace,
                    &ctx.request.pod_name,
                    &f.cpu_nodes(),
                )),
                (Err(_), Ok(_)) => Ok(numa::Placement::new()),
                (_, Err(e)) => Err(format!(
                    "the kubelet pod-resources socket did not answer: {e}"
                )),
            },
            None => Err("no kubelet pod-resources socket configured".to_string()),
        };
        let view = NodeView {
            facts: facts.as_ref().map_err(String::as_str),
            gpus: snap.as_ref(),
            used: used.as_ref().map_err(String::as_str),
        };
        Ok(numa::verify(predicted, &view, self.args.numa_checks))
    }
}

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
