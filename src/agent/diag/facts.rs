//! Local node facts shown by the diagnostics server: GPUs and volumes.
//!
//! bindlet's diagnostics do not gather these themselves: the GPU inventory and the volume
//! checks own them and plug in through [`NodeFacts`]. Until a provider is set, both
//! sections say "not configured" and readiness does not wait for them; nothing is made up.

use serde::Serialize;

/// Where the GPU inventory stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum GpuFacts {
    /// No GPU inventory in this agent (no provider set).
    NotConfigured,
    /// The inventory is being loaded: the agent is not ready yet.
    Loading,
    /// Known to be unavailable (no driver, no devices): a reported state, not an error.
    Unavailable {
        reason: String,
    },
    Loaded {
        devices: Vec<GpuDevice>,
    },
}

/// One GPU as the inventory last saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuDevice {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: Option<u64>,
    pub healthy: bool,
    /// Why the GPU is unhealthy (XID, ECC, lost), when it is.
    pub reason: Option<String>,
}

/// Local volume facts.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum VolumeFacts {
    NotConfigured,
    Known { volumes: Vec<VolumeFact> },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VolumeFact {
    pub path: String,
    pub available_bytes: Option<u64>,
    pub ok: bool,
    pub message: String,
}

/// Implemented by the GPU inventory (and the volume checks) to feed `/readyz`,
/// `/debug/state` and the GPU health metrics. Called at request time: keep it cheap.
pub trait NodeFacts: Send + Sync {
    fn gpus(&self) -> GpuFacts;
    fn volumes(&self) -> VolumeFacts {
        VolumeFacts::NotConfigured
    }
}
