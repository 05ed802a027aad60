//! The `gpu` plugin's settings (its flags are `crate::gpu::GpuArgs`, shared with `bindlet inspect`).

use super::*;

/// The `gpu` plugin's settings: its flags (they also configure the GPU runtime that the
/// agent starts once and every GPU-reading plugin shares).
#[derive(Debug, Clone, Default)]
pub struct GpuSettings {
    pub args: GpuArgs,
}
