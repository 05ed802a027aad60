//! Local volume decisions, pure.
//!
//! - [`facts`]: what the node's filesystem says about a path, as plain values behind the
//!   [`facts::VolumeFacts`] trait (the agent's `HostFs` reads the real filesystem).
//! - [`check`]: verdicts over those facts (local PV paths, inline `hostPath` types).
//! - [`claims`]: pure PersistentVolume / PVC / StorageClass logic (node affinity, picking a
//!   static PV for a WaitForFirstConsumer claim).
//! - [`quantity`]: Kubernetes resource quantities as bytes, and bytes for humans.

pub mod check;
pub mod claims;
pub mod facts;
pub mod quantity;

pub use facts::{FileKind, FsStats, MountEntry, PathFacts, VolumeFacts};
