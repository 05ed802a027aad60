//! The plugin's API adapter: the only code that reads claims and slices or writes claim status for it (resourceVersion-guarded, re-read on conflict).

use super::*;

/// The API client the plugin uses, with the agent's per-call timeout.
#[derive(Clone)]
pub struct DraApi {
    pub(crate) kube: Kube,
    /// The agent's watch-backed cache of this node's ResourceSlices (`spec.nodeName`), so a
    /// bind reads them for free; until it has synced, binds list them.
    pub(super) node_slices: Store<ResourceSlice>,
}

impl DraApi {
    pub fn new(kube: Kube, node_slices: Store<ResourceSlice>) -> Self {
        DraApi { kube, node_slices }
    }

    /// This node's slices: from the cache once it has synced, else one LIST as before.
    /// A cache a moment behind costs nothing in correctness: a device it does not show
    /// yet sends the caller to the LIST of all slices, as any unfound device does.
    pub(super) async fn node_slices(
        &self,
        node: &str,
    ) -> Result<Vec<Arc<ResourceSlice>>, PluginError> {
        if self
            .node_slices
            .wait_until_ready()
            .now_or_never()
            .is_some_and(|r| r.is_ok())
        {
            return Ok(self.node_slices.state());
        }
        self.list_slices(Some(node)).await
    }
}

impl std::fmt::Debug for DraApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DraApi")
            .field("kube", &self.kube)
            .finish_non_exhaustive()
    }
}

/// Reserves one claim; returns what was recorded, whether this call wrote, and the claim
/// as read (with the written status when this call wrote).
pub(crate) async fn reserve(
    api: &DraApi,
    ns: &str,
    claim: &str,
    entry: &str,
    requested: &AllocationResult,
    pod_name: &str,
    pod_uid: &str,
) -> Result<(ReservedClaim, bool, ResourceClaim), PluginError> {
    for _ in 0..CONFLICT_TRIES {
        let Some(mut live) = api.get_claim(ns, claim).await? else {
            return Err(PluginError::missing(format!(
                "claim {entry}: ResourceClaim {ns}/{claim} does not exist (will retry)"
            )));
        };
        let mut rec = ReservedClaim {
            namespace: ns.into(),
            name: claim.into(),
            claim_uid: live.metadata.uid.clone().unwrap_or_default(),
            allocation_written: false,
        };
        match decide::plan_reservation(&live, requested, pod_name, pod_uid) {
            Reservation::AlreadyReserved => return Ok((rec, false, live)),
            Reservation::Refuse(why) => return Err(PluginError::unsatisfiable(why)),
            Reservation::Write {
                status,
                sets_allocation,
            } => {
                live.status = Some(status);
                if api.replace_status(ns, claim, &live).await? {
                    rec.allocation_written = sets_allocation;
                    return Ok((rec, true, live));
                }
            }
        }
    }
    Err(PluginError::contention(format!(
        "ResourceClaim {ns}/{claim} kept changing while reserving it"
    )))
}

/// Undoes one reservation, re-reading on conflicts; a claim replaced by another of the
/// same name (different UID) is left alone.
pub(super) async fn release(
    api: &DraApi,
    r: &ReservedClaim,
    pod_uid: &str,
) -> Result<(), PluginError> {
    for _ in 0..CONFLICT_TRIES {
        let Some(mut live) = api.get_claim(&r.namespace, &r.name).await? else {
            return Ok(());
        };
        if live.metadata.uid.as_deref() != Some(r.claim_uid.as_str()) {
            return Ok(());
        }
        let Some(status) = decide::plan_release(&live, pod_uid, r.allocation_written) else {
            return Ok(());
        };
        live.status = Some(status);
        if api.replace_status(&r.namespace, &r.name, &live).await? {
            return Ok(());
        }
    }
    Err(PluginError::contention(format!(
        "ResourceClaim {}/{} kept changing",
        r.namespace, r.name
    )))
}

impl DraApi {
    /// Every ResourceClaim (the capacity check needs the claims allocated on this node's
    /// shared devices; a claim names no node to select it by).
    pub(super) async fn list_claims(&self) -> Result<Vec<ResourceClaim>, PluginError> {
        let api: Api<ResourceClaim> = Api::all(self.kube.client.clone());
        self.kube
            .call(
                calls::LIST_RESOURCE_CLAIMS,
                api.list(&ListParams::default()),
            )
            .await
            .map(|l| l.items)
            .map_err(|e| PluginError::unavailable(format!("listing ResourceClaims: {e}")))
    }

    pub(crate) async fn get_claim(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<ResourceClaim>, PluginError> {
        let api: Api<ResourceClaim> = Api::namespaced(self.kube.client.clone(), ns);
        self.kube
            .call(calls::GET_RESOURCE_CLAIM, api.get_opt(name))
            .await
            .map_err(|e| {
                PluginError::unavailable(format!("reading ResourceClaim {ns}/{name}: {e}"))
            })
    }

    /// This node's slices (`spec.nodeName`), or all of them.
    pub(super) async fn list_slices(
        &self,
        node: Option<&str>,
    ) -> Result<Vec<Arc<ResourceSlice>>, PluginError> {
        let api: Api<ResourceSlice> = Api::all(self.kube.client.clone());
        let lp = match node {
            Some(n) => ListParams::default().fields(&format!("spec.nodeName={n}")),
            None => ListParams::default(),
        };
        self.kube
            .call(calls::LIST_RESOURCE_SLICES, api.list(&lp))
            .await
            .map(|l| l.items.into_iter().map(Arc::new).collect())
            .map_err(|e| PluginError::unavailable(format!("listing ResourceSlices: {e}")))
    }

    /// PUT of the claim's status, guarded by the resourceVersion it carries. `false` when the
    /// claim changed (409) or vanished (404); other answers about the write (422: e.g. no
    /// `resourceclaims/binding` permission, or an admission policy) refuse.
    pub(super) async fn replace_status(
        &self,
        ns: &str,
        name: &str,
        claim: &ResourceClaim,
    ) -> Result<bool, PluginError> {
        let api: Api<ResourceClaim> = Api::namespaced(self.kube.client.clone(), ns);
        // The updated claim in the answer is not needed (a retry re-reads), so it is not
        // decoded.
        let request = serde_json::to_vec(claim)
            .map_err(kube::Error::SerdeError)
            .and_then(|body| {
                kube::core::Request::new(api.resource_url())
                    .replace_subresource("status", name, &PostParams::default(), body)
                    .map_err(kube::Error::BuildRequest)
            });
        match self
            .kube
            .call(
                calls::UPDATE_RESOURCE_CLAIM_STATUS,
                send_unread(&self.kube.client, request),
            )
            .await
        {
            Ok(()) => Ok(true),
            Err(ApiError::Status {
                code: 409 | 404, ..
            }) => Ok(false),
            Err(ApiError::Status {
                code: code @ (400 | 403 | 422),
                message,
                ..
            }) => Err(PluginError::rejected(format!(
                "writing ResourceClaim {ns}/{name} status was refused ({code}): {message}"
            ))),
            Err(e) => Err(PluginError::unavailable(format!(
                "writing ResourceClaim {ns}/{name} status: {e}"
            ))),
        }
    }
}
