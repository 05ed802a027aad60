//! bindlet: a node-local binding agent for KAI-Scheduler BindRequests.
//!
//! Decisions are pure functions over snapshots (`binding`, `node`, `gpu`, `volume`, `dra`,
//! `numa`); `kubeapi` is the one door to the API server, used by the plugins' adapters
//! (`plugins`), the agent (`agent`) and the diagnostics' own reviews. The modules form
//! layers (README, Architecture; checked by `tests/module_layers.rs`).

pub mod agent;
pub mod bench;
pub mod binding;
pub mod cli;
pub mod demo;
pub mod diag;
pub mod dra;
pub mod gpu;
pub mod kubeapi;
pub mod manual;
pub mod node;
pub mod numa;
pub mod plugins;
pub mod volume;

pub use bindlet_api as api;
pub use bindlet_sim as sim;
