//! This node's GPUs: owned snapshot types, the [`GpuInventory`] trait, the NVML and
//! file-described backends, the health tracker, and the pure verdict logic the `gpu`
//! plugin applies at bind time.
//!
//! Only `nvml` and `file` touch the outside world (the driver library, the filesystem);
//! `health` and `verdict` are pure functions over the snapshots they produce.

pub mod file;
pub mod health;
pub mod inspect;
pub mod nvml;
pub mod podresources;
pub mod sharing;
pub mod verdict;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use health::{HealthConfig, HealthTracker, Transition};

/// One probe of the node's GPUs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuSnapshot {
    /// Which backend answered (e.g. `nvml libnvidia-ml.so.1`, `file gpus.yaml`).
    pub source: String,
    pub state: InventoryState,
    /// RFC 3339 time of the probe.
    pub taken_at: String,
    pub gpus: Vec<Gpu>,
}

impl GpuSnapshot {
    pub fn unavailable(source: impl Into<String>, error: impl Into<String>) -> Self {
        GpuSnapshot {
            source: source.into(),
            state: InventoryState::Unavailable {
                error: error.into(),
            },
            taken_at: jiff::Timestamp::now().to_string(),
            gpus: Vec::new(),
        }
    }

    pub fn healthy(&self) -> impl Iterator<Item = &Gpu> {
        self.gpus.iter().filter(|g| g.health.healthy)
    }

    pub fn by_uuid(&self, uuid: &str) -> Option<&Gpu> {
        self.gpus.iter().find(|g| g.uuid == uuid)
    }
}

/// Whether the backend could be asked at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum InventoryState {
    Available,
    /// No driver, no library, no permission...: carries the backend's own error text.
    Unavailable {
        error: String,
    },
}

/// One physical GPU as last probed. `None` fields could not be read (not supported by the
/// device, or the query failed); the reason for a lost device is in `lost`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Gpu {
    pub index: u32,
    /// Empty only when the device was lost before its UUID was ever read.
    pub uuid: String,
    pub minor_number: Option<u32>,
    pub pci_bus_id: Option<String>,
    pub name: Option<String>,
    pub memory: Option<GpuMemory>,
    #[serde(default)]
    pub mig: MigState,
    pub ecc_uncorrectable_volatile: Option<u64>,
    pub pages_pending_retirement: Option<bool>,
    pub remapped_rows_pending: Option<bool>,
    pub remapped_rows_failed: Option<bool>,
    #[serde(default)]
    pub processes: Vec<GpuProcess>,
    /// Set when the device did not answer (fallen off the bus, gone from the list).
    pub lost: Option<String>,
    /// Filled in by the [`HealthTracker`].
    #[serde(default)]
    pub health: Health,
}

impl Gpu {
    /// A short name for messages: the UUID, else the index.
    pub fn label(&self) -> String {
        if self.uuid.is_empty() {
            format!("GPU {}", self.index)
        } else {
            format!("GPU {} ({})", self.index, self.uuid)
        }
    }
}

/// Framebuffer memory in bytes, as NVML's `nvmlMemory_v2_t` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuMemory {
    pub total: u64,
    pub used: u64,
    /// Set aside by the driver; never available to pods.
    pub reserved: u64,
}

impl GpuMemory {
    /// What a new pod could still get.
    pub fn available(&self) -> u64 {
        self.total
            .saturating_sub(self.used)
            .saturating_sub(self.reserved)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigState {
    pub enabled: bool,
    #[serde(default)]
    pub devices: Vec<MigDevice>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigDevice {
    pub index: u32,
    pub uuid: String,
    pub memory_total: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuProcess {
    pub pid: u32,
    pub used_memory: Option<u64>,
}

/// Health as judged by the tracker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub healthy: bool,
    /// Why unhealthy (or, when healthy, what it recovered from); empty when never unhealthy.
    pub reason: String,
    /// RFC 3339 time of the last transition; `None` when healthy since first seen.
    pub since: Option<String>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            healthy: true,
            reason: String::new(),
            since: None,
        }
    }
}

/// A source of GPU snapshots. `snapshot` blocks (it may wait for the NVML thread); async
/// callers run it on a blocking thread.
pub trait GpuInventory: Send + Sync {
    /// A fresh probe, with health applied.
    fn snapshot(&self) -> GpuSnapshot;
    /// A short description of the backend (for logs and `inspect`).
    fn describe(&self) -> String;
}

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

/// XIDs that usually mean an application fault, not a broken GPU: 13 (graphics engine
/// exception), 31 (MMU fault), 43 (reset channel), 45 (preemptive cleanup), 68 (video
/// processor exception), 109 (context switch timeout).
pub const DEFAULT_IGNORED_XIDS: [u64; 6] = [13, 31, 43, 45, 68, 109];

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
    fn default() -> Self {
        GpuArgs {
            gpu_verification: crate::binding::CheckMode::Enforce,
            nvml_library: PathBuf::from("libnvidia-ml.so.1"),
            gpu_inventory_file: None,
            gpu_ignored_xids: DEFAULT_IGNORED_XIDS.to_vec(),
            gpu_recovery_after: Duration::from_secs(300),
            gpu_recheck: Duration::from_secs(30),
            kubelet_pod_resources_socket: None,
        }
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
