//! bindlet: a node-local binding agent for KAI-Scheduler BindRequests.
//!
//! Decisions are pure functions over snapshots (`binding`, `plugins`); the
//! effects layer (`agent`) is the only code that talks to the API server.

pub mod agent;
pub mod api;
pub mod bench;
pub mod binding;
pub mod cli;
pub mod demo;
pub mod diag;
pub mod dra;
pub mod gpu;
pub mod manual;
pub mod numa;
pub mod plugins;
pub mod sim;
pub mod volume;
