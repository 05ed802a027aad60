//! This node's GPUs, the effectful half: the NVML and file-described backends behind
//! `bindlet_core::gpu::GpuInventory`, the kubelet pod-resources client, `inspect`, and
//! the `gpu` flags. The snapshot types, the health tracker and the verdicts are pure and
//! live in `bindlet_core::gpu`, re-exported here.

pub mod file;
pub mod inspect;
pub mod nvml;
pub mod podresources;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

pub use bindlet_core::gpu::*;

/// Errors setting up an inventory backend.
#[derive(Debug, Error)]
pub enum GpuError {
    #[error("cannot read the GPU inventory file {path}: {error}")]
    FileRead { path: String, error: String },
    #[error("the GPU inventory file {path} is invalid: {error}")]
    FileParse { path: String, error: String },
    #[error("NVML thread could not be started: {0}")]
    Thread(String),
}

/// Where the inventory comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuSource {
    /// The NVML library at this path (or name for the dynamic loader).
    Nvml(PathBuf),
    /// A YAML file describing devices and scripted faults.
    File(PathBuf),
}

/// The `gpu` family of flags, flattened into `run` and `demo` (and used by `inspect`).
#[derive(clap::Args, Debug, Clone)]
pub struct GpuArgs {
    /// GPU verification before binding: enforce, warn or off.
    #[arg(long, env = "BINDLET_GPU_VERIFICATION", value_enum, default_value_t = crate::binding::CheckMode::Enforce)]
    pub gpu_verification: crate::binding::CheckMode,
    /// The NVML library, loaded at run time (a missing library is reported, not fatal).
    #[arg(
        long,
        env = "BINDLET_NVML_LIBRARY",
        default_value = "libnvidia-ml.so.1"
    )]
    pub nvml_library: PathBuf,
    /// Describe GPUs and faults in a YAML file instead of asking NVML (demo, tests).
    #[arg(long, env = "BINDLET_GPU_INVENTORY_FILE")]
    pub gpu_inventory_file: Option<PathBuf>,
    /// XIDs that do not make a GPU unhealthy (comma-separated).
    #[arg(long, env = "BINDLET_GPU_IGNORED_XIDS", value_delimiter = ',', default_values_t = DEFAULT_IGNORED_XIDS)]
    pub gpu_ignored_xids: Vec<u64>,
    /// A GPU whose last fault is this old, with no fault persisting, is healthy again.
    #[arg(long, env = "BINDLET_GPU_RECOVERY_AFTER", default_value = "5m", value_parser = crate::api::duration::parse_duration)]
    pub gpu_recovery_after: Duration,
    /// How often ECC counts, retired pages and remapped rows are re-read between binds.
    #[arg(long, env = "BINDLET_GPU_RECHECK", default_value = "30s", value_parser = crate::api::duration::parse_duration)]
    pub gpu_recheck: Duration,
    /// The kubelet's pod-resources socket (usually
    /// `/var/lib/kubelet/pod-resources/kubelet.sock`): whole-GPU checks then use its device
    /// assignments instead of counting the limits of the node's pods.
    #[arg(long, env = "BINDLET_KUBELET_POD_RESOURCES_SOCKET")]
    pub kubelet_pod_resources_socket: Option<PathBuf>,
}

impl Default for GpuArgs {
    /// The flags' own defaults (written once, in the `#[arg]`s above).
    fn default() -> Self {
        crate::flags::defaults()
    }
}

impl GpuArgs {
    pub fn source(&self) -> GpuSource {
        match &self.gpu_inventory_file {
            Some(p) => GpuSource::File(p.clone()),
            None => GpuSource::Nvml(self.nvml_library.clone()),
        }
    }

    pub fn health(&self) -> HealthConfig {
        HealthConfig {
            ignored_xids: self.gpu_ignored_xids.iter().copied().collect(),
            quiet_period: self.gpu_recovery_after,
        }
    }
}

/// Starts the configured backend. Never fails for a missing driver: that is a snapshot
/// in state `Unavailable`.
pub fn open(
    source: &GpuSource,
    health: HealthConfig,
    recheck: Duration,
    transitions: Option<TransitionSink>,
) -> Result<Arc<dyn GpuInventory>, GpuError> {
    Ok(match source {
        GpuSource::File(p) => Arc::new(file::FileInventory::new(p.clone(), health, transitions)),
        GpuSource::Nvml(p) => Arc::new(nvml::NvmlInventory::start(
            p.clone(),
            health,
            recheck,
            transitions,
        )?),
    })
}

/// Where health transitions go (the agent turns them into Node Events).
pub type TransitionSink = tokio::sync::mpsc::UnboundedSender<Transition>;
