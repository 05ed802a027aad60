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
//! Kubernetes 1.36 additions, checked at bind time (`crate::dra::{taints, capacity,
//! conditions}`): device taints against the allocation's tolerations; for shared devices
//! and partitions, the capacity and counters used by the claims already allocated on them
//! (one LIST of claims, only for such devices, under a node-local lock up to the
//! reservation); and binding conditions after the reservation: while not all True, the
//! attempt parks (`PluginError::parked`, no worker held, woken by a watch of the claim); a
//! True failure condition or the timeout refuses, and the rollback clears the allocation
//! this agent wrote.
//!
//! Requests without claim allocations cost no API request; claims whose devices have none
//! of these fields cost none more than before.

mod api;
mod args;
mod state;

pub use api::*;
pub use args::*;
pub use state::*;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::{AllocationResult, ResourceClaim, ResourceSlice};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::reflector::Store;

use crate::api::{Verdict, VerdictOutcome};
use crate::binding::{BindContext, BindState, Park, ParkedOn, Plugin, PluginError, verdict};
use crate::dra::conditions::BindingConditions;
use crate::dra::{self as decide, Reservation};
use crate::gpu::GpuSnapshot;
use crate::kubeapi::calls;
use crate::kubeapi::{ApiError, Kube, send_unread};
use crate::plugins::gpu::GpuRuntime;

const NAME: &str = "dra";

/// Re-reads after a 409 before giving up for this attempt (retried later, not counted).
const CONFLICT_TRIES: usize = 8;

pub struct DraPlugin {
    api: DraApi,
    gpu: Option<Arc<GpuRuntime>>,
    binding_timeout: Duration,
    /// Claims reserved by an attempt that then waited for binding conditions, by (claim UID,
    /// pod UID): a resumed attempt finds the claim already reserved, yet must still know
    /// whether this agent wrote the allocation (to clear it on failure or timeout) and since
    /// when it waits (for allocations without `allocationTimestamp`). Kept in memory: after
    /// a restart only the pod's `reservedFor` entry is undone on failure.
    waits: Mutex<HashMap<(String, String), Waiting>>,
    /// Held from the capacity/counter check of a shared device or partition to its
    /// reservation, so that two binds on this node cannot both take the last share.
    capacity_lock: tokio::sync::Mutex<()>,
}

#[derive(Debug, Clone, Copy)]
struct Waiting {
    allocation_written: bool,
    since: std::time::Instant,
}

/// The `dra` plugin, reading claims and this node's slices through the agent's API handle
/// and slice cache.
pub fn setup(settings: &DraSettings, env: &super::PluginEnv) -> DraPlugin {
    DraPlugin {
        api: DraApi::new(env.kube.clone(), env.node_slices.clone()),
        gpu: env.gpu.clone(),
        binding_timeout: settings.args.dra_binding_timeout,
        waits: Mutex::default(),
        capacity_lock: tokio::sync::Mutex::new(()),
    }
}

impl DraPlugin {
    fn waits(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Waiting>> {
        self.waits.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn forget_waits(&self, state: &BindState, pod_uid: &str) {
        let mut w = self.waits();
        for r in state.get::<DraWrites>().map_or(&[][..], |d| &d.reserved) {
            w.remove(&(r.claim_uid.clone(), pod_uid.to_string()));
        }
    }
}

impl DraPlugin {
    /// The checks of one allocation before anything is written: the allocation is for this
    /// node and its devices are published and healthy, no untolerated device taint, and
    /// shared devices and partitions stay within capacity (under the capacity lock, held
    /// until the attempt's reservations are written).
    #[allow(clippy::too_many_arguments)]
    async fn check_entry<'p>(
        &'p self,
        api: &DraApi,
        ctx: &BindContext<'_>,
        label: &str,
        claim: &str,
        requested: &AllocationResult,
        checks: &mut EntryChecks<'p>,
        out: &mut Vec<Verdict>,
    ) -> Result<(), PluginError> {
        let checked = self
            .verify_here(
                api,
                label,
                requested,
                ctx.node,
                &mut checks.slices,
                &mut checks.gpus,
            )
            .await?;
        out.extend(
            checked
                .into_iter()
                .map(|line| verdict(NAME, "allocation", VerdictOutcome::Pass, line)),
        );
        // Taints may have come after scheduling (a driver marking a device unhealthy).
        // DeviceTaintRules are not read (see README, DRA): only the slices' taints.
        let tainted = decide::taints::check_device_taints(
            label,
            requested,
            ctx.node,
            &checks.slices.items,
            &[],
        )
        .map_err(PluginError::unsatisfiable)?;
        out.extend(
            tainted
                .into_iter()
                .map(|line| verdict(NAME, "taints", VerdictOutcome::Pass, line)),
        );
        if checks.capacity_guard.is_none()
            && decide::capacity::needs_capacity_check(requested, ctx.node, &checks.slices.items)
        {
            checks.capacity_guard = Some(self.capacity_lock.lock().await);
            checks.others = api.list_claims().await?;
        }
        if checks.capacity_guard.is_some() {
            let ns = ctx.request.namespace.as_str();
            let uid = checks
                .others
                .iter()
                .find(|c| {
                    c.metadata.namespace.as_deref() == Some(ns)
                        && c.metadata.name.as_deref() == Some(claim)
                })
                .and_then(|c| c.metadata.uid.clone())
                .unwrap_or_default();
            let within = decide::capacity::check_capacity(
                label,
                &uid,
                requested,
                ctx.node,
                &checks.slices.items,
                &checks.others,
            )
            .map_err(PluginError::unsatisfiable)?;
            out.extend(
                within
                    .into_iter()
                    .map(|line| verdict(NAME, "capacity", VerdictOutcome::Pass, line)),
            );
        }
        Ok(())
    }

    /// Remembers that the pod's attempt waits on this claim (and whether it wrote the
    /// allocation), so the resumed attempt counts the timeout from the first wait.
    fn remember_wait(
        &self,
        key: (String, String),
        allocation_written: bool,
        since: std::time::Instant,
    ) {
        let mut waits = self.waits();
        // Entries of requests deleted while they waited are never resumed: forget them
        // once no wait can last that long.
        let keep = self.binding_timeout * 2 + Duration::from_secs(60);
        waits.retain(|_, w| w.since.elapsed() < keep);
        waits.insert(
            key,
            Waiting {
                allocation_written,
                since,
            },
        );
    }
}

/// What the checks of one attempt's allocations share.
struct EntryChecks<'a> {
    gpus: Option<GpuSnapshot>,
    slices: Slices,
    /// Set once an allocation names a shared device or a partition: the lock, and every
    /// claim of the cluster (claims carry no node to select them by).
    capacity_guard: Option<tokio::sync::MutexGuard<'a, ()>>,
    others: Vec<ResourceClaim>,
}

/// Claims whose binding conditions are not all True yet, for the attempt's [`Park`].
#[derive(Default)]
struct Waits {
    waiting: Vec<String>,
    park_on: Vec<ParkedOn>,
    shortest: Option<Duration>,
}

impl Waits {
    fn add(
        &mut self,
        label: &str,
        ns: &str,
        claim: &str,
        live: &ResourceClaim,
        pending: &[String],
        remaining: Duration,
    ) {
        self.waiting
            .push(format!("claim {label} ({})", pending.join(", ")));
        self.park_on.push(ParkedOn {
            namespace: ns.to_string(),
            name: claim.to_string(),
            resource_version: live.metadata.resource_version.clone().unwrap_or_default(),
        });
        self.shortest = Some(self.shortest.map_or(remaining, |s| s.min(remaining)));
    }

    fn into_park(self) -> Option<Park> {
        let remaining = self.shortest?;
        Some(Park {
            claims: self.park_on,
            waiting_for: format!("binding conditions: {}", self.waiting.join("; ")),
            remaining,
        })
    }
}

/// One `resourceClaimAllocations` entry: its name, its allocation, and the claim it names.
fn parse_entry<'e>(
    e: &'e crate::api::ResourceClaimAllocation,
    pod: &k8s_openapi::api::core::v1::Pod,
) -> Result<(&'e str, AllocationResult, String), PluginError> {
    let entry = e.name.as_deref().unwrap_or("");
    let Some(mirror) = e.allocation.clone() else {
        return Err(PluginError::invalid(format!(
            "resourceClaimAllocations entry {entry} has no allocation"
        )));
    };
    let requested = AllocationResult::try_from(mirror).map_err(|err| {
        PluginError::invalid(format!(
            "resourceClaimAllocations entry {entry}: invalid allocation: {err}"
        ))
    })?;
    let claim = decide::claim_name(pod, entry)
        .map_err(|why| PluginError::not_ready(format!("claim {entry}: {why} (will retry)")))?;
    Ok((entry, requested, claim))
}

/// This plugin's verdict about a reservation.
fn reserved_verdict(label: &str, wrote: bool, r: &ReservedClaim) -> Verdict {
    reservation_verdict(NAME, label, wrote, r.allocation_written)
}

/// The reservation's verdict, for `plugin`.
pub(crate) fn reservation_verdict(
    plugin: &str,
    label: &str,
    wrote: bool,
    allocation_written: bool,
) -> Verdict {
    verdict(
        plugin,
        "reservation",
        VerdictOutcome::Pass,
        format!(
            "claim {label} {}",
            match (wrote, allocation_written) {
                (false, _) => "was already reserved for the pod",
                (true, true) => "allocated and reserved for the pod",
                (true, false) => "reserved for the pod",
            }
        ),
    )
}

/// The ResourceSlices seen so far: this node's first (from the agent's watch cache, no
/// request); all slices are listed only when a device is not found there (all-nodes,
/// node-selector or per-device pools, or a slice the cache has not seen yet). Those are
/// rare and cluster-wide, so they get a LIST on demand rather than a second cache of
/// every slice in the cluster: the common case costs no request.
pub(crate) struct Slices {
    pub(crate) items: Vec<Arc<ResourceSlice>>,
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
        let api = &self.api;
        let ns = ctx.request.namespace.as_str();
        let pod_name = ctx.pod.metadata.name.as_deref().unwrap_or("");
        let pod_uid = ctx.pod.metadata.uid.as_deref().unwrap_or("");
        let mut checks = EntryChecks {
            // Taken at the first allocation that names a GPU, then shared by the others.
            gpus: None,
            slices: Slices::of_node(api, ctx.node_name).await?,
            capacity_guard: None,
            others: Vec::new(),
        };
        let mut out = Vec::new();
        let mut waits = Waits::default();
        for e in entries {
            let (entry, requested, claim) = parse_entry(e, ctx.pod)?;
            let label = format!("{ns}/{claim}");
            self.check_entry(api, ctx, &label, &claim, &requested, &mut checks, &mut out)
                .await?;
            let (mut r, wrote, live) =
                reserve(api, ns, &claim, entry, &requested, pod_name, pod_uid).await?;
            let wait_key = (r.claim_uid.clone(), pod_uid.to_string());
            let earlier = self.waits().get(&wait_key).copied();
            if let Some(w) = earlier {
                r.allocation_written |= w.allocation_written;
            }
            out.push(reserved_verdict(&label, wrote, &r));
            let since = earlier.map_or_else(std::time::Instant::now, |w| w.since);
            let conditions =
                binding_conditions(&label, &live, &requested, since, self.binding_timeout);
            let written = r.allocation_written;
            state.slot::<DraWrites>().reserved.push(r);
            match conditions {
                BindingConditions::NotDeclared => {}
                BindingConditions::Met(lines) => {
                    out.extend(lines.into_iter().map(|line| {
                        verdict(NAME, "binding conditions", VerdictOutcome::Pass, line)
                    }));
                }
                // The rollback that follows clears the allocation this agent wrote, so the
                // scheduler can allocate again (kube-scheduler does the same on giving up).
                BindingConditions::Failed(why) | BindingConditions::TimedOut(why) => {
                    return Err(PluginError::unsatisfiable(format!(
                        "{why}; the reservation is undone{}",
                        if written {
                            " and the allocation this agent wrote is cleared"
                        } else {
                            ""
                        }
                    )));
                }
                BindingConditions::Waiting { pending, remaining } => {
                    self.remember_wait(wait_key, written, since);
                    waits.add(&label, ns, &claim, &live, &pending, remaining);
                }
            }
        }
        match waits.into_park() {
            Some(park) => Err(PluginError::parked(park)),
            None => Ok(out),
        }
    }

    async fn post_bind(&self, ctx: &BindContext<'_>, state: &BindState) {
        self.forget_waits(state, ctx.pod.metadata.uid.as_deref().unwrap_or(""));
    }

    async fn rollback(&self, ctx: &BindContext<'_>, state: &mut BindState) {
        let api = &self.api;
        let pod_uid = ctx.pod.metadata.uid.as_deref().unwrap_or("");
        self.forget_waits(state, pod_uid);
        let w = state.take::<DraWrites>().unwrap_or_default();
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
        checked.map_err(PluginError::unsatisfiable)
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

/// The claim's binding conditions, with the wait counted from the allocation's timestamp
/// (the claim's, else the BindRequest's), or from `since` when neither has one.
fn binding_conditions(
    label: &str,
    live: &ResourceClaim,
    requested: &AllocationResult,
    since: std::time::Instant,
    timeout: Duration,
) -> BindingConditions {
    let status = live.status.as_ref();
    let alloc = status
        .and_then(|s| s.allocation.as_ref())
        .unwrap_or(requested);
    let stamp = alloc
        .allocation_timestamp
        .as_ref()
        .or(requested.allocation_timestamp.as_ref());
    let waited = match stamp {
        // A timestamp ahead of this node's clock counts as no wait yet.
        Some(t) => {
            Duration::try_from(jiff::Timestamp::now().duration_since(t.0)).unwrap_or(Duration::ZERO)
        }
        None => since.elapsed(),
    };
    let devices = status.and_then(|s| s.devices.as_deref()).unwrap_or(&[]);
    decide::conditions::evaluate(label, alloc, devices, waited, timeout)
}
