//! Built-in plugins. Each is one folder: its flags and settings, its API adapter (the only
//! code that calls the server for it), its rollback state, and the plugin itself over the
//! pure decisions of `bindlet-core`. A plugin is built once, complete, by its `setup` from
//! its settings and the [`PluginEnv`]; `setup` also starts the plugin's background tasks.
//! Adding one is a folder here and one line in [`standard`].

pub mod dra;
pub mod extended_resources;
pub mod gpu;
pub mod gpu_sharing;
pub mod node;
pub mod numa;
pub mod volumes;

use std::sync::Arc;

use k8s_openapi::api::resource::v1::ResourceSlice;
use kube::runtime::reflector::Store;
use thiserror::Error;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::{BindRequest, Lenient};
use crate::binding::Registry;
use crate::kubeapi::Kube;

pub use crate::binding::CheckMode;

/// The plugins' settings: their flags, nothing else (no slot is filled in later).
#[derive(Debug, Clone, Default)]
pub struct PluginSettings {
    pub node_checks: CheckMode,
    /// The optional memory check of the `node` plugin (off by default).
    pub memory: node::MemoryArgs,
    pub gpu: gpu::GpuSettings,
    pub volumes: volumes::VolumeSettings,
    pub dra: dra::DraSettings,
    pub sharing: gpu_sharing::SharingSettings,
    pub numa: numa::NumaSettings,
}

/// What every plugin is built from: the API handle (client, per-call timeout, observer),
/// this node, the node's GPU runtime (`None` when GPU checks are off), what the agent's
/// watches keep, and when background tasks stop.
#[derive(Clone)]
pub struct PluginEnv {
    pub kube: Kube,
    pub node: String,
    pub gpu: Option<Arc<gpu::GpuRuntime>>,
    /// This node's ResourceSlices, kept by the agent's watch (`spec.nodeName`).
    pub node_slices: Store<ResourceSlice>,
    /// This node's BindRequests, kept by the agent's watch.
    pub requests: Store<Lenient<BindRequest>>,
    /// The agent's `--default-backoff-limit` (when a request counts as settled).
    pub default_backoff_limit: i32,
    /// Whether this agent holds the node Lease (background writers act only then).
    pub leading: Arc<dyn Fn() -> bool + Send + Sync>,
    /// Background tasks stop when this fires.
    pub stop: CancellationToken,
}

/// Settings that cannot work together, found while building the plugins.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SetupError {
    #[error("--publish-numa-placement needs --kubelet-pod-resources-socket")]
    NumaPlacementWithoutSocket,
}

/// Settings the plugins cannot work with, checked before the agent starts anything (a
/// Lease taken and then dropped by a failing agent would hold the node back).
pub fn check(s: &PluginSettings) -> Result<(), SetupError> {
    numa::placement_socket(&s.numa.args, &s.gpu.args).map(|_| ())
}

/// The standard pipeline, in order, each plugin with its background tasks in `tasks`.
pub fn standard(
    s: &PluginSettings,
    env: &PluginEnv,
    tasks: &mut JoinSet<()>,
) -> Result<Registry, SetupError> {
    Ok(Registry::new()
        .with(node::setup(s.node_checks, &s.memory))
        .with(gpu::setup(&s.gpu, env))
        .with(numa::setup(&s.numa, &s.gpu.args, env, tasks)?)
        .with(gpu_sharing::setup(&s.sharing, &s.gpu.args, env, tasks))
        .with(volumes::setup(&s.volumes, env))
        .with(dra::setup(&s.dra, env))
        .with(extended_resources::setup(&s.dra, env)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_publishing_without_the_kubelet_socket_is_refused_up_front() {
        let mut s = PluginSettings::default();
        assert_eq!(check(&s), Ok(()));
        s.numa.args.publish_numa_placement = true;
        let e = check(&s).expect_err("no socket");
        assert_eq!(
            e.to_string(),
            "--publish-numa-placement needs --kubelet-pod-resources-socket"
        );
        s.gpu.args.kubelet_pod_resources_socket =
            Some("/var/lib/kubelet/pod-resources/kubelet.sock".into());
        assert_eq!(check(&s), Ok(()));
    }
}
