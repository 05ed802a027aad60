//! What one attempt wrote, for the rollback: the claim it created or found, and the pod status entry.

/// The pod's extended-resource claim as this attempt used it, so rollback can remove it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsedClaim {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// What this attempt's `pre_bind` wrote or adopted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExtendedWrites {
    /// Created by this attempt or found from an earlier one: either way it exists only for
    /// this bind, so a failed bind removes it.
    pub claim: Option<UsedClaim>,
}
