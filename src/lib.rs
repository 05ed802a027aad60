//! bindlet: a node-local binding agent for KAI-Scheduler BindRequests.
//!
//! The agent itself is the `bindlet-agent` crate (re-exported here module by module, its
//! `daemon` as `agent`); this crate adds the command line, the demo, the benchmark and the
//! manual `bind` / `explain` tools on top of it and of the simulated control plane
//! (`bindlet-sim`). README, Architecture.

// Cluster input, files and NVML must never panic the agent: no unwrap/expect outside tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod bench;
pub mod cli;
pub mod demo;
pub mod manual;

pub use bindlet_agent::daemon as agent;
pub use bindlet_agent::{binding, diag, dra, gpu, kubeapi, node, numa, plugins, volume};
pub use bindlet_api as api;
pub use bindlet_sim as sim;
