//! bindlet: a node-local binding agent for KAI-Scheduler BindRequests.
//!
//! Decisions are pure functions over snapshots (`binding`, `plugins`); the
//! effects layer (`agent`) is the only code that talks to the API server.

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
