//! Local volume facts and the pure decisions over them.
//!
//! - [`facts`]: what the node's filesystem says about a path (file type, the mount it is on,
//!   free space and inodes from statvfs), behind the [`facts::VolumeFacts`] trait; the only
//!   module here that touches the filesystem.
//! - [`check`]: verdicts over those facts (local PV paths, inline `hostPath` types).
//! - [`claims`]: pure PersistentVolume / PVC / StorageClass logic (node affinity, picking a
//!   static PV for a WaitForFirstConsumer claim).
//! - [`quantity`]: Kubernetes resource quantities as bytes, and bytes for humans.

pub mod check;
pub mod claims;
pub mod facts;
pub mod quantity;

pub use facts::{FileKind, FsStats, HostFs, MountEntry, PathFacts, VolumeFacts};
