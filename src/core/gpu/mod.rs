//! This node's GPUs as pure data: owned snapshot types, the [`GpuInventory`] trait the
//! backends implement (NVML and file-described, in the agent), the health tracker, and
//! the pure verdict logic the `gpu` and `gpu-sharing` plugins apply at bind time.
//!
//! Nothing here touches the driver or the filesystem; the agent's backends produce the
//! snapshots these functions judge.

pub mod health;
pub mod sharing;
pub mod verdict;

use serde::{Deserialize, Serialize};

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

/// XIDs that usually mean an application fault, not a broken GPU: 13 (graphics engine
/// exception), 31 (MMU fault), 43 (reset channel), 45 (preemptive cleanup), 68 (video
/// processor exception), 109 (context switch timeout).
pub const DEFAULT_IGNORED_XIDS: [u64; 6] = [13, 31, 43, 45, 68, 109];
