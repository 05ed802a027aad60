//! What one attempt wrote, for the rollback: PersistentVolumes reserved and claims given this node.

/// A PV whose `claimRef` this attempt wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservedPv {
    pub pv: String,
    pub namespace: String,
    pub claim: String,
    pub claim_uid: String,
}

/// What this attempt's `pre_bind` wrote, so rollback undoes exactly that.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VolumeWrites {
    pub reserved: Vec<ReservedPv>,
    /// Claims (namespace, name) on which this attempt set the selected-node annotation.
    pub selected_node_set: Vec<(String, String)>,
}
