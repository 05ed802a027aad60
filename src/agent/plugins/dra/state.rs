//! What one attempt wrote, for the rollback: the claims it reserved and whether it wrote their allocation.

/// A claim this attempt reserved for the pod (or found reserved for it by an earlier
/// attempt), so rollback can undo exactly that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservedClaim {
    pub namespace: String,
    pub name: String,
    pub claim_uid: String,
    /// This attempt set `status.allocation` (it was unset).
    pub allocation_written: bool,
}

/// What this attempt's `pre_bind` wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DraWrites {
    pub reserved: Vec<ReservedClaim>,
}
