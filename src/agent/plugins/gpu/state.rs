//! What `pre_bind` leaves for the rest of the attempt.

use super::*;

/// What `pre_bind` leaves for the rest of the attempt: the verdicts, and the node's GPU
/// bind lock, held until the attempt ends (the state is dropped after the bind).
#[derive(Debug, Default)]
pub struct GpuBindState {
    pub snapshot: Option<GpuSnapshot>,
    pub verdicts: Vec<Verdict>,
    pub guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}
