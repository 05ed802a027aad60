//! bindlet's node agent: the pure decisions (`binding`, `node`, `gpu`, `volume`, `dra`,
//! `numa`), the one door to the API server (`kubeapi`), the plugins' adapters (`plugins`),
//! the diagnostics (`diag`) and the agent that runs them (`daemon`: watches, queue, workers,
//! Lease). The modules form layers (README, Architecture; checked by
//! `tests/module_layers.rs`). The simulated control plane is not a dependency: a change
//! here does not recompile it, and a change to it does not recompile this.

// Cluster input, files and NVML must never panic the agent: no unwrap/expect outside tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod binding;
pub mod daemon;
pub mod diag;
pub mod dra;
pub mod gpu;
pub mod kubeapi;
pub mod node;
pub mod numa;
pub mod plugins;
pub mod volume;

pub use bindlet_api as api;
