//! NUMA placement, the effectful half: [`sysfs`] reads this node's topology. The decisions
//! are pure and live in `bindlet_core::numa`, re-exported here.

pub mod sysfs;

pub use bindlet_core::numa::*;
