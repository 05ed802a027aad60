//! `numa`: KAI's predicted NUMA placement (`spec.predictedNUMAZones`) checked on the node
//! before binding, and, when turned on, the placement the kubelet made published on each
//! pod of this node (`kai.scheduler/numa-placement-observed`), the job of KAI's separate
//! NUMA placement exporter DaemonSet (`pkg/npe/`).
//!
//! The check reads sysfs (NUMA nodes, GPUs' PCI affinity), the GPU probe of this attempt
//! and the kubelet's pod-resources answer (what other pods hold per zone); the verdicts are
//! [`crate::numa::verify`]. Requests without a prediction cost nothing. The publisher reads
//! only the local socket while idle and patches a pod only when its placement changed.

mod args;
mod publisher;

pub use args::*;
pub use publisher::*;

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

pub struct NumaPlugin {
    args: NumaArgs,
    runtime: Option<Arc<GpuRuntime>>,
    socket: Option<PathBuf>,
    timeout: Duration,
}

/// The socket the placement publisher reads, when `--publish-numa-placement` is on; it
/// cannot work without `--kubelet-pod-resources-socket`.
pub(super) fn placement_socket(
    args: &NumaArgs,
    gpu: &GpuArgs,
) -> Result<Option<PathBuf>, super::SetupError> {
    if !args.publish_numa_placement {
        return Ok(None);
    }
    gpu.kubelet_pod_resources_socket
        .clone()
        .map(Some)
        .ok_or(super::SetupError::NumaPlacementWithoutSocket)
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
    if let Some(socket) = placement_socket(args, gpu)? {
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
