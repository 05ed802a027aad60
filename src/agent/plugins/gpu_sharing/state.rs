//! What one attempt wrote, for the rollback: reservation pods created, labels and ConfigMaps set.

use super::*;

/// What this attempt's `pre_bind` did, for rollback.
#[derive(Debug, Default)]
pub struct SharingWrites {
    pub(super) guards: Vec<OwnedMutexGuard<()>>,
    /// The groups of the request (set once their locks are held).
    pub groups: Vec<String>,
    /// Reservation pods created by this attempt: name, uid.
    pub created_reservations: Vec<(String, String)>,
    /// Label keys this attempt added to the pod.
    pub labels_added: Vec<String>,
    pub portion_annotated: bool,
    /// ConfigMaps this attempt created: name, uid.
    pub configmaps_created: Vec<(String, String)>,
    /// The GPUs (UUIDs) the pod shares, in request order.
    pub devices: Vec<String>,
}
