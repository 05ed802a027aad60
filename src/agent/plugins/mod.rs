//! Built-in plugins. Adding one is a module here and one line in [`standard`].

pub mod dra;
pub mod extended_resources;
pub mod gpu;
pub mod gpu_sharing;
pub mod node;
pub mod numa;
pub mod volumes;

use crate::binding::Registry;

pub use crate::binding::CheckMode;

/// Settings the built-in plugins read.
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

/// The standard pipeline, in order.
pub fn standard(settings: &PluginSettings) -> Registry {
    Registry::new()
        .with(node::NodePlugin::new(settings.node_checks).with_memory(&settings.memory))
        .with(gpu::GpuPlugin::new(&settings.gpu))
        .with(numa::NumaPlugin::new(
            &settings.numa,
            settings.gpu.runtime.clone(),
            settings.gpu.args.kubelet_pod_resources_socket.clone(),
        ))
        .with(gpu_sharing::GpuSharingPlugin::new(
            &settings.sharing,
            &settings.gpu,
        ))
        .with(volumes::VolumesPlugin::new(&settings.volumes))
        .with(dra::DraPlugin::new(
            &settings.dra,
            settings.gpu.runtime.clone(),
        ))
        .with(extended_resources::ExtendedResourcesPlugin::new(
            &settings.dra,
            settings.gpu.runtime.clone(),
        ))
}

impl PluginSettings {
    /// Gives the plugins that read or write API objects their client and per-call timeout.
    pub fn with_api(
        mut self,
        client: kube::Client,
        node: &str,
        timeout: std::time::Duration,
        diag: std::sync::Arc<crate::diag::Recorder>,
    ) -> Self {
        self.sharing.api = Some(gpu_sharing::SharingApi::new(
            client.clone(),
            node,
            timeout,
            diag.clone(),
            self.gpu.args.kubelet_pod_resources_socket.clone(),
        ));
        self.dra.api = Some(dra::DraApi::new(client.clone(), timeout, diag.clone()));
        self.numa.timeout = timeout;
        self.volumes.api = Some(volumes::ApiAccess {
            kube: crate::kubeapi::Kube::new(client, timeout, diag),
        });
        self
    }
}
