//! Local volumes, the effectful half: [`host::HostFs`] reads the node's filesystem. The
//! decisions over what it reads are pure and live in `bindlet_core::volume`, re-exported
//! here.

pub mod host;

pub use bindlet_core::volume::*;
pub use host::HostFs;
