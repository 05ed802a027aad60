//! `dra`: reserves the pod's DRA ResourceClaims for it, after checking on this node that
//! each allocation the scheduler chose really concerns this node.
//!
//! For each `spec.resourceClaimAllocations` entry: the pod's claim is found (direct, or the
//! claim generated from a template, named in the pod's `status.resourceClaimStatuses`); the
//! allocation's nodeSelector must select this node, each device must be published for this
//! node by a ResourceSlice (by node name, all-nodes, node selector or per-device
//! selection), and devices with a `uuid` attribute must be healthy GPUs of the inventory
//! when one is loaded (`crate::dra`). The claim's status then gets the allocation (only
//! when unset; a different one refuses) and the pod in `reservedFor`, with a PUT guarded
//! by resourceVersion (409 → re-read and recompute). Rollback removes the pod's entry, and
//! the allocation when this attempt wrote it and nobody else reserved the claim since.
//!
//! Requests without claim allocations cost no API request.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::{AllocationResult, ResourceClaim, ResourceSlice};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::reflector::Store;

use crate::agent::api_calls as calls;
use crate::agent::effects::{ApiError, call_as, send_unread};
use crate::api::{Verdict, VerdictOutcome};
use crate::binding::{BindContext, BindState, Plugin, PluginError, verdict};
use crate::dra::{self as decide, Reservation};
use crate::gpu::GpuSnapshot;
use crate::plugins::gpu::GpuRuntime;

const NAME: &str = "dra";
/// Re-reads after a 409 before giving up for this attempt (retried later, not counted).
const CONFLICT_TRIES: usize = 8;

/// Settings of the dra plugin.
#[derive(Debug, Clone, Default)]
pub struct DraSettings {
    /// API access; attached by the agent (see `PluginSettings::with_api`).
    pub api: Option<DraApi>,
}

/// The API client the plugin uses, with the agent's per-call timeout.
#[derive(Clone)]
pub struct DraApi {
    pub(crate) client: kube::Client,
    pub(crate) timeout: Duration,
    pub(crate) diag: Arc<crate::diag::Recorder>,
    /// The agent's watch-backed cache of this node's ResourceSlices (`spec.nodeName`), so a
    /// bind reads them for free; `None` (e.g. outside the agent) lists them per bind.
    node_slices: Option<Store<ResourceSlice>>,
}

impl DraApi {
    pub fn new(client: kube::Client, timeout: Duration, diag: Arc<crate::diag::Recorder>) -> Self {
        DraApi {
            client,
            timeout,
            diag,
            node_slices: None,
        }
    }

    /// Reads this node's slices from `store` (kept by a watch with field selector
    /// `spec.nodeName=<node>`) instead of listing them per bind.
    pub fn with_node_slices(mut self, store: Store<ResourceSlice>) -> Self {
        self.node_slices = Some(store);
        self
    }

    /// This node's slices: from the cache once it has synced, else one LIST as before.
    /// A cache a moment behind costs nothing in correctness: a device it does not show
    /// yet sends the caller to the LIST of all slices, as any unfound device does.
    async fn node_slices(&self, node: &str) -> Result<Vec<Arc<ResourceSlice>>, PluginError> {
        if let Some(store) = &self.node_slices
            && store
                .wait_until_ready()
                .now_or_never()
                .is_some_and(|r| r.is_ok())
        {
            return Ok(store.state());
        }
        self.list_slices(Some(node)).await
    }
}

impl std::fmt::Debug for DraApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DraApi")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

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

pub struct DraPlugin {
    api: Option<DraApi>,
    gpu: Option<Arc<GpuRuntime>>,
}

impl DraPlugin {
    pub fn new(settings: &DraSettings, gpu: Option<Arc<GpuRuntime>>) -> Self {
        DraPlugin {
            api: settings.api.clone(),
            gpu,
        }
    }
}

/// The ResourceSlices seen so far: this node's first (from the agent's watch cache, no
/// request); all slices are listed only when a device is not found there (all-nodes,
/// node-selector or per-device pools, or a slice the cache has not seen yet). Those are
/// rare and cluster-wide, so they get a LIST on demand rather than a second cache of
/// every slice in the cluster: the common case costs no request.
pub(crate) struct Slices {
    items: Vec<Arc<ResourceSlice>>,
    complete: bool,
}

impl Slices {
    /// This node's slices, to start with.
    pub(crate) async fn of_node(api: &DraApi, node: &str) -> Result<Self, PluginError> {
        Ok(Slices {
            items: api.node_slices(node).await?,
            complete: false,
        })
    }
}

#[async_trait::async_trait]
impl Plugin for DraPlugin {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn pre_bind(
        &self,
        ctx: &BindContext<'_>,
        state: &mut BindState,
    ) -> Result<Vec<Verdict>, PluginError> {
        let entries = ctx
            .bind_request
            .spec
            .resource_claim_allocations
            .as_deref()
            .unwrap_or(&[]);
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let Some(api) = &self.api else {
            return Err(PluginError::transient(
                "the dra plugin has no API access to read the pod's claims",
            ));
        };
        let ns = ctx.request.namespace.as_str();
        let pod_name = ctx.pod.metadata.name.as_deref().unwrap_or("");
        let pod_uid = ctx.pod.metadata.uid.as_deref().unwrap_or("");
        // Taken at the first allocation that names a GPU, and then shared by the others.
        let mut gpus: Option<GpuSnapshot> = None;
        let mut slices = Slices::of_node(api, ctx.node_name).await?;
        let mut out = Vec::new();
        for e in entries {
            let entry = e.name.as_deref().unwrap_or("");
            let Some(mirror) = e.allocation.clone() else {
                return Err(PluginError::refused(format!(
                    "resourceClaimAllocations entry {entry} has no allocation"
                )));
            };
            let requested = AllocationResult::try_from(mirror).map_err(|err| {
                PluginError::refused(format!(
                    "resourceClaimAllocations entry {entry}: invalid allocation: {err}"
                ))
            })?;
            let claim = decide::claim_name(ctx.pod, entry).map_err(|why| {
                PluginError::refused(format!("claim {entry}: {why} (will retry)"))
            })?;
            let label = format!("{ns}/{claim}");
            let checked = self
                .verify_here(api, &label, &requested, ctx.node, &mut slices, &mut gpus)
                .await?;
            for line in checked {
                out.push(verdict(NAME, "allocation", VerdictOutcome::Pass, line));
            }
            let r = reserve(api, ns, &claim, entry, &requested, pod_name, pod_uid).await?;
            out.push(verdict(
                NAME,
                "reservation",
                VerdictOutcome::Pass,
                format!(
                    "claim {label} {}",
                    match (r.1, r.0.allocation_written) {
                        (false, _) => "was already reserved for the pod",
                        (true, true) => "allocated and reserved for the pod",
                        (true, false) => "reserved for the pod",
                    }
                ),
            ));
            state.dra.reserved.push(r.0);
        }
        Ok(out)
    }

    async fn rollback(&self, ctx: &BindContext<'_>, state: &mut BindState) {
        let Some(api) = &self.api else { return };
        let pod_uid = ctx.pod.metadata.uid.as_deref().unwrap_or("");
        let w = std::mem::take(&mut state.dra);
        for r in w.reserved.iter().rev() {
            if let Err(e) = release(api, r, pod_uid).await {
                tracing::warn!(claim = %format!("{}/{}", r.namespace, r.name), error = %e.message,
                    "could not undo a ResourceClaim reservation");
            }
        }
    }
}

impl DraPlugin {
    /// Checks on this node that `requested` concerns it (`decide::verify_allocation`):
    /// against this node's slices first, and all slices when a device is not among them.
    /// `Ok`: one line per passed check. Also used by the `extended_resources` plugin.
    pub(crate) async fn verify_here(
        &self,
        api: &DraApi,
        label: &str,
        requested: &AllocationResult,
        node: &Node,
        slices: &mut Slices,
        gpus: &mut Option<GpuSnapshot>,
    ) -> Result<Vec<String>, PluginError> {
        self.snapshot_if_gpus(gpus, requested, node, &slices.items)
            .await;
        let mut checked =
            decide::verify_allocation(label, requested, node, &slices.items, gpus.as_ref());
        if checked.is_err() && !slices.complete {
            slices.items = api.list_slices(None).await?;
            slices.complete = true;
            self.snapshot_if_gpus(gpus, requested, node, &slices.items)
                .await;
            checked =
                decide::verify_allocation(label, requested, node, &slices.items, gpus.as_ref());
        }
        checked.map_err(PluginError::refused)
    }

    /// Takes the GPU snapshot into `gpus` the first time an allocation names a GPU.
    async fn snapshot_if_gpus(
        &self,
        gpus: &mut Option<GpuSnapshot>,
        requested: &AllocationResult,
        node: &Node,
        slices: &[Arc<ResourceSlice>],
    ) {
        if gpus.is_some() || !decide::names_gpus(requested, node, slices) {
            return;
        }
        if let Some(rt) = &self.gpu {
            *gpus = Some(rt.snapshot().await);
        }
    }
}

/// Reserves one claim; returns what was recorded and whether this call wrote.
pub(crate) async fn reserve(
    api: &DraApi,
    ns: &str,
    claim: &str,
    entry: &str,
    requested: &AllocationResult,
    pod_name: &str,
    pod_uid: &str,
) -> Result<(ReservedClaim, bool), PluginError> {
    for _ in 0..CONFLICT_TRIES {
        let Some(mut live) = api.get_claim(ns, claim).await? else {
            return Err(PluginError::refused(format!(
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
            Reservation::AlreadyReserved => return Ok((rec, false)),
            Reservation::Refuse(why) => return Err(PluginError::refused(why)),
            Reservation::Write {
                status,
                sets_allocation,
            } => {
                live.status = Some(status);
                if api.replace_status(ns, claim, &live).await? {
                    rec.allocation_written = sets_allocation;
                    return Ok((rec, true));
                }
            }
        }
    }
    Err(PluginError::transient(format!(
        "ResourceClaim {ns}/{claim} kept changing while reserving it"
    )))
}

/// Undoes one reservation, re-reading on conflicts; a claim replaced by another of the
/// same name (different UID) is left alone.
async fn release(api: &DraApi, r: &ReservedClaim, pod_uid: &str) -> Result<(), PluginError> {
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
    Err(PluginError::transient(format!(
        "ResourceClaim {}/{} kept changing",
        r.namespace, r.name
    )))
}

impl DraApi {
    pub(crate) async fn get_claim(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<ResourceClaim>, PluginError> {
        let api: Api<ResourceClaim> = Api::namespaced(self.client.clone(), ns);
        call_as(
            &self.diag,
            calls::GET_RESOURCE_CLAIM,
            self.timeout,
            api.get_opt(name),
        )
        .await
        .map_err(|e| PluginError::transient(format!("reading ResourceClaim {ns}/{name}: {e}")))
    }

    /// This node's slices (`spec.nodeName`), or all of them.
    async fn list_slices(
        &self,
        node: Option<&str>,
    ) -> Result<Vec<Arc<ResourceSlice>>, PluginError> {
        let api: Api<ResourceSlice> = Api::all(self.client.clone());
        let lp = match node {
            Some(n) => ListParams::default().fields(&format!("spec.nodeName={n}")),
            None => ListParams::default(),
        };
        call_as(
            &self.diag,
            calls::LIST_RESOURCE_SLICES,
            self.timeout,
            api.list(&lp),
        )
        .await
        .map(|l| l.items.into_iter().map(Arc::new).collect())
        .map_err(|e| PluginError::transient(format!("listing ResourceSlices: {e}")))
    }

    /// PUT of the claim's status, guarded by the resourceVersion it carries. `false` when the
    /// claim changed (409) or vanished (404); other answers about the write (422: e.g. no
    /// `resourceclaims/binding` permission, or an admission policy) refuse.
    async fn replace_status(
        &self,
        ns: &str,
        name: &str,
        claim: &ResourceClaim,
    ) -> Result<bool, PluginError> {
        let api: Api<ResourceClaim> = Api::namespaced(self.client.clone(), ns);
        // The updated claim in the answer is not needed (a retry re-reads), so it is not
        // decoded.
        let request = serde_json::to_vec(claim)
            .map_err(kube::Error::SerdeError)
            .and_then(|body| {
                kube::core::Request::new(api.resource_url())
                    .replace_subresource("status", name, &PostParams::default(), body)
                    .map_err(kube::Error::BuildRequest)
            });
        match call_as(
            &self.diag,
            calls::UPDATE_RESOURCE_CLAIM_STATUS,
            self.timeout,
            send_unread(&self.client, request),
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
            }) => Err(PluginError::refused(format!(
                "writing ResourceClaim {ns}/{name} status was refused ({code}): {message}"
            ))),
            Err(e) => Err(PluginError::transient(format!(
                "writing ResourceClaim {ns}/{name} status: {e}"
            ))),
        }
    }
}
