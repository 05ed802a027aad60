//! bindlet's node agent, the effects layer: the one door to the API server (`kubeapi`),
//! the GPU backends (`gpu`: NVML, file, kubelet pod-resources), the node's filesystem
//! (`volume`) and topology (`numa`), the plugins' adapters (`plugins`), the diagnostics
//! (`diag`) and the agent that runs them (`daemon`: watches, queue, workers, Lease). The
//! pure decisions are the `bindlet-core` crate, re-exported here under the same names
//! (`binding`, `node`, `dra`, and inside `gpu`, `volume` and `numa`). The modules form layers (README, Architecture; checked by
//! `tests/module_layers.rs`). The simulated control plane is not a dependency: a change
//! here does not recompile it, and a change to it does not recompile this.

// Cluster input, files and NVML must never panic the agent: no unwrap/expect outside tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod daemon;
pub mod diag;
pub mod gpu;
pub mod kubeapi;
pub mod numa;
pub mod plugins;
pub mod volume;

pub use bindlet_api as api;
pub use bindlet_core::{binding, dra, flags, node};
