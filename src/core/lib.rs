//! bindlet's pure decisions: each verdict the agent reports is one function here over
//! snapshots (pod, node, BindRequest, GPU inventory, volume facts, DRA objects), returning
//! a plan or a verdict, with its table test beside it. Nothing here talks to the API
//! server, NVML or the filesystem, and the crate has no kube, tokio or hyper in its
//! dependency tree: the agent crate performs what these decide.
//!
//! Layers (checked by `tests/module_layers.rs`): `binding` and `volume` at the bottom,
//! `gpu` and `node` on them, `dra` and `numa` on top.

// Cluster input must never panic the agent: no unwrap/expect outside tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod binding;
pub mod dra;
pub mod flags;
pub mod gpu;
pub mod node;
pub mod numa;
pub mod volume;

pub use bindlet_api as api;
