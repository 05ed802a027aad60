//! `volumes`: the pod's volumes are usable on this node before it is bound.
//!
//! - Inline `hostPath` volumes: the declared type holds.
//! - Bound PVCs: the PV exists, is claimed by this PVC and its node affinity admits this
//!   node; `local` and `hostPath` PVs: the path is really there (Filesystem mode: a writable
//!   directory on a mounted filesystem with free space ≥ the claim's request and free
//!   inodes; Block mode: a block device).
//! - Unbound WaitForFirstConsumer PVCs (what kube-scheduler's VolumeBinding does in
//!   PreBind): a static PV is reserved (its `claimRef`, guarded by resourceVersion), or the
//!   claim is handed to its provisioner with `volume.kubernetes.io/selected-node` and
//!   waited for, bounded by `--volume-binding-timeout`. Rollback releases exactly what this
//!   attempt wrote, recorded in [`VolumeWrites`]. After the pod is bound, `post_bind` sets
//!   the PVC's `volumeName` (what the PV controller would do): a PVC's `volumeName` cannot
//!   be unset, so it is only written once nothing needs undoing.
//!
//! Pods without PVC volumes cost no API request.

mod api;
mod args;
mod state;

pub use api::*;
pub use args::*;
pub use state::*;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

use crate::api::{Verdict, VerdictOutcome};
use crate::binding::{BindContext, BindState, Plugin, PluginError, verdict};
use crate::kubeapi::calls;
use crate::kubeapi::{ApiError, Kube};
use crate::volume::check::{self, Finding, VolumeMode};
use crate::volume::claims::{
    self, BIND_COMPLETED_ANNOTATION, BOUND_BY_CONTROLLER_ANNOTATION, NO_PROVISIONER, PvSource,
    SELECTED_NODE_ANNOTATION,
};
use crate::volume::quantity::format_bytes;
use crate::volume::{HostFs, PathFacts, VolumeFacts};

use super::CheckMode;

const NAME: &str = "volumes";

/// Re-reads after a 409 before giving up for this attempt.
const CONFLICT_TRIES: usize = 5;

/// A PVC-backed pod volume (`persistentVolumeClaim` or generic `ephemeral`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimUse {
    pub volume: String,
    pub claim: String,
}

/// An inline `hostPath` volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPathUse {
    pub volume: String,
    pub path: String,
    pub type_: Option<String>,
}

/// The pod's claim and hostPath volumes (one entry per claim, in spec order).
pub fn pod_volumes(pod: &Pod) -> (Vec<ClaimUse>, Vec<HostPathUse>) {
    let mut claims: Vec<ClaimUse> = Vec::new();
    let mut host = Vec::new();
    let pod_name = pod.metadata.name.as_deref().unwrap_or("");
    for v in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or(&[])
    {
        let claim = if let Some(c) = &v.persistent_volume_claim {
            Some(c.claim_name.clone())
        } else {
            // Generic ephemeral volumes get a PVC named <pod>-<volume>.
            v.ephemeral
                .as_ref()
                .map(|_| format!("{pod_name}-{}", v.name))
        };
        if let Some(claim) = claim {
            if !claims.iter().any(|c| c.claim == claim) {
                claims.push(ClaimUse {
                    volume: v.name.clone(),
                    claim,
                });
            }
        } else if let Some(h) = &v.host_path {
            host.push(HostPathUse {
                volume: v.name.clone(),
                path: h.path.clone(),
                type_: h.type_.clone(),
            });
        }
    }
    (claims, host)
}

pub struct VolumesPlugin {
    checks: CheckMode,
    binding_timeout: Duration,
    api: ApiAccess,
    facts: Arc<dyn VolumeFacts>,
    /// Bound on one filesystem inspection (a hung mount must not hang the worker).
    fs_timeout: Duration,
}

/// The `volumes` plugin: its API access, and the node's filesystem under
/// `--volume-host-root`, each inspection bounded by the agent's per-call timeout.
pub fn setup(settings: &VolumeSettings, env: &super::PluginEnv) -> VolumesPlugin {
    let args = &settings.args;
    VolumesPlugin {
        checks: args.volume_checks,
        binding_timeout: args.volume_binding_timeout,
        fs_timeout: env.kube.timeout,
        api: ApiAccess {
            kube: env.kube.clone(),
        },
        facts: Arc::new(HostFs::new(args.volume_host_root.clone())),
    }
}

impl VolumesPlugin {
    /// Replaces the filesystem source (tests).
    pub fn with_facts(mut self, facts: Arc<dyn VolumeFacts>) -> Self {
        self.facts = facts;
        self
    }

    async fn measure(&self, path: &str) -> Result<PathFacts, PluginError> {
        let facts = self.facts.clone();
        let p = path.to_string();
        match tokio::time::timeout(
            self.fs_timeout,
            tokio::task::spawn_blocking(move || facts.path(&p)),
        )
        .await
        {
            Ok(Ok(f)) => Ok(f),
            Ok(Err(e)) => Err(PluginError::unavailable(format!("inspecting {path}: {e}"))),
            Err(_) => Err(PluginError::not_ready(format!(
                "{path} did not answer within {:?} (a hung mount?)",
                self.fs_timeout
            ))),
        }
    }

    /// Records a finding under the check mode; a failure under `Enforce` refuses.
    fn record(&self, f: Finding, out: &mut Vec<Verdict>) -> Result<(), PluginError> {
        let outcome = match (f.ok, self.checks) {
            (true, _) => VerdictOutcome::Pass,
            (false, CheckMode::Warn) => VerdictOutcome::Warn,
            (false, _) => return Err(PluginError::unsatisfiable(f.message)),
        };
        out.push(verdict(NAME, f.check, outcome, f.message));
        Ok(())
    }

    /// Node affinity and the node-local path of a PV the claim is (or is being) bound to.
    async fn check_pv(
        &self,
        ctx: &BindContext<'_>,
        c: &ClaimUse,
        pvc: &PersistentVolumeClaim,
        pv: &PersistentVolume,
    ) -> Result<Vec<Verdict>, PluginError> {
        let pv_name = pv.metadata.name.as_deref().unwrap_or("");
        let v = &c.volume;
        if let Some(r) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref())
            && !claims::claim_ref_is(pv, pvc)
        {
            return Err(PluginError::unsatisfiable(format!(
                "volume {v}: PersistentVolume {pv_name} is claimed by {}/{}, not by this claim",
                r.namespace.as_deref().unwrap_or(""),
                r.name.as_deref().unwrap_or("")
            )));
        }
        // A PV for another node can never be mounted here, whatever the check mode.
        if let Err(why) = claims::node_affinity_matches(pv, ctx.node) {
            return Err(PluginError::unsatisfiable(format!(
                "volume {v}: PersistentVolume {pv_name} cannot be used here: {why}"
            )));
        }
        let mut out = vec![verdict(
            NAME,
            "node-affinity",
            VerdictOutcome::Pass,
            format!(
                "volume {v}: PersistentVolume {pv_name} may be used on node {}",
                ctx.node_name
            ),
        )];
        let path = match claims::pv_source(pv) {
            PvSource::Local(p) | PvSource::HostPath(p) => p,
            PvSource::Remote => {
                out.push(verdict(
                    NAME,
                    "local-path",
                    VerdictOutcome::Pass,
                    format!("volume {v}: PersistentVolume {pv_name} is not node-local: nothing to measure here"),
                ));
                return Ok(out);
            }
        };
        if self.checks == CheckMode::Off {
            out.push(verdict(
                NAME,
                "local-path",
                VerdictOutcome::Skip,
                format!("volume {v}: local volume checks are off"),
            ));
            return Ok(out);
        }
        let facts = self.measure(path).await?;
        let mode = VolumeMode::parse(pv.spec.as_ref().and_then(|s| s.volume_mode.as_deref()));
        for f in check::local_volume(v, path, mode, claims::claim_request(pvc), &facts) {
            self.record(f, &mut out)?;
        }
        Ok(out)
    }

    /// Everything for one claim; writes are recorded in `w` as they succeed.
    async fn claim(
        &self,
        ctx: &BindContext<'_>,
        api: &ApiAccess,
        c: &ClaimUse,
        w: &mut VolumeWrites,
    ) -> Result<Vec<Verdict>, PluginError> {
        let ns = ctx.request.namespace.as_str();
        let v = &c.volume;
        let Some(pvc) = api.get_pvc(ns, &c.claim).await? else {
            return Err(PluginError::missing(format!(
                "volume {v}: PersistentVolumeClaim {ns}/{} does not exist",
                c.claim
            )));
        };
        if pvc.metadata.deletion_timestamp.is_some() {
            return Err(PluginError::missing(format!(
                "volume {v}: PersistentVolumeClaim {ns}/{} is being deleted",
                c.claim
            )));
        }
        if let Some(pv_name) = bound_volume(&pvc) {
            let Some(pv) = api.get_pv(pv_name).await? else {
                return Err(PluginError::missing(format!(
                    "volume {v}: claim {ns}/{} is bound to PersistentVolume {pv_name}, which does not exist",
                    c.claim
                )));
            };
            let mut out = vec![verdict(
                NAME,
                "claim",
                VerdictOutcome::Pass,
                format!(
                    "volume {v}: claim {ns}/{} is bound to PersistentVolume {pv_name}",
                    c.claim
                ),
            )];
            out.extend(self.check_pv(ctx, c, &pvc, &pv).await?);
            return Ok(out);
        }

        let class_name = claims::claim_class(&pvc);
        let class = if class_name.is_empty() {
            None
        } else {
            match api.get_class(class_name).await? {
                Some(sc) => Some(sc),
                None => {
                    return Err(PluginError::missing(format!(
                        "volume {v}: StorageClass {class_name} of claim {ns}/{} does not exist",
                        c.claim
                    )));
                }
            }
        };
        let wffc = class
            .as_ref()
            .and_then(|sc| sc.volume_binding_mode.as_deref())
            == Some("WaitForFirstConsumer");
        if !wffc {
            // Immediate claims are bound by the PV controller; a later attempt may find it done.
            let class_text = if class_name.is_empty() {
                "has no StorageClass".to_string()
            } else {
                format!("has StorageClass {class_name} with volumeBindingMode Immediate")
            };
            return Err(PluginError::not_ready(format!(
                "volume {v}: claim {ns}/{} is not bound yet; it {class_text}, so the PV controller binds it (will retry)",
                c.claim
            )));
        }
        let provisioner = class.as_ref().map_or("", |sc| sc.provisioner.as_str());
        let selected = claims::annotation(&pvc.metadata, SELECTED_NODE_ANNOTATION);
        if let Some(other) = selected.filter(|s| *s != ctx.node_name) {
            return Err(PluginError::unsatisfiable(format!(
                "volume {v}: claim {ns}/{} is already being provisioned for node {other}",
                c.claim
            )));
        }
        let started = tokio::time::Instant::now();
        let _claim_as_written = if selected.is_none() {
            match self.reserve_static(ctx, api, &pvc, w).await? {
                Ok((pv, written)) => {
                    let pv_name = pv.metadata.name.as_deref().unwrap_or("");
                    let cap = claims::pv_capacity(&pv).map_or("no size".into(), format_bytes);
                    let how = if written {
                        "reserved"
                    } else {
                        "found pre-bound"
                    };
                    let mut out = vec![verdict(
                        NAME,
                        "claim",
                        VerdictOutcome::Pass,
                        format!(
                            "volume {v}: {how} PersistentVolume {pv_name} ({cap}) for claim {ns}/{}",
                            c.claim
                        ),
                    )];
                    out.extend(self.check_pv(ctx, c, &pvc, &pv).await?);
                    return Ok(out);
                }
                Err(why) if provisioner.is_empty() || provisioner == NO_PROVISIONER => {
                    return Err(PluginError::unsatisfiable(format!(
                        "volume {v}: claim {ns}/{}: {why}",
                        c.claim
                    )));
                }
                Err(_) => self.select_node(ctx, api, pvc, w).await?,
            }
        } else {
            pvc
        };
        let (pvc, pv) = self.wait_bound(api, ns, c, provisioner, started).await?;
        let mut out = vec![verdict(
            NAME,
            "claim",
            VerdictOutcome::Pass,
            format!(
                "volume {v}: claim {ns}/{} was provisioned by {provisioner} as PersistentVolume {} in {:.1} s",
                c.claim,
                pv.metadata.name.as_deref().unwrap_or(""),
                started.elapsed().as_secs_f64()
            ),
        )];
        out.extend(self.check_pv(ctx, c, &pvc, &pv).await?);
        Ok(out)
    }

    /// Reserves the best static PV for the claim. `Ok(Err(why))` when none fits.
    /// The PV write is guarded by its resourceVersion: on 409 another binder was faster,
    /// so the PVs are re-read and the choice recomputed.
    async fn reserve_static(
        &self,
        ctx: &BindContext<'_>,
        api: &ApiAccess,
        pvc: &PersistentVolumeClaim,
        w: &mut VolumeWrites,
    ) -> Result<Result<(PersistentVolume, bool), String>, PluginError> {
        for _ in 0..CONFLICT_TRIES {
            let pvs = api.list_pvs().await?;
            let pv = match claims::pick_static_pv(pvc, &pvs, ctx.node) {
                Ok(pv) => pv,
                Err(why) => return Ok(Err(why)),
            };
            if claims::claim_ref_is(pv, pvc) {
                // Pre-bound to this claim already (by a user or an earlier attempt).
                return Ok(Ok((pv.clone(), false)));
            }
            let pv_name = pv.metadata.name.clone().unwrap_or_default();
            let body = json!({
                "metadata": {
                    "resourceVersion": pv.metadata.resource_version,
                    "annotations": { BOUND_BY_CONTROLLER_ANNOTATION: "yes" }
                },
                "spec": { "claimRef": {
                    "kind": "PersistentVolumeClaim",
                    "apiVersion": "v1",
                    "namespace": pvc.metadata.namespace,
                    "name": pvc.metadata.name,
                    "uid": pvc.metadata.uid,
                    "resourceVersion": pvc.metadata.resource_version,
                } }
            });
            if let Some(updated) = api.patch_pv(&pv_name, &body).await? {
                w.reserved.push(ReservedPv {
                    pv: pv_name,
                    namespace: pvc.metadata.namespace.clone().unwrap_or_default(),
                    claim: pvc.metadata.name.clone().unwrap_or_default(),
                    claim_uid: pvc.metadata.uid.clone().unwrap_or_default(),
                });
                return Ok(Ok((updated, true)));
            }
        }
        Err(PluginError::contention(format!(
            "PersistentVolumes kept changing while reserving one for claim {}",
            pvc.metadata.name.as_deref().unwrap_or("")
        )))
    }

    /// Asks the claim's provisioner for a volume on this node (the selected-node annotation),
    /// guarded by the claim's resourceVersion; returns the claim as written.
    async fn select_node(
        &self,
        ctx: &BindContext<'_>,
        api: &ApiAccess,
        mut pvc: PersistentVolumeClaim,
        w: &mut VolumeWrites,
    ) -> Result<PersistentVolumeClaim, PluginError> {
        let ns = pvc.metadata.namespace.clone().unwrap_or_default();
        let name = pvc.metadata.name.clone().unwrap_or_default();
        for _ in 0..CONFLICT_TRIES {
            match claims::annotation(&pvc.metadata, SELECTED_NODE_ANNOTATION) {
                Some(n) if n == ctx.node_name => return Ok(pvc),
                Some(other) => {
                    return Err(PluginError::unsatisfiable(format!(
                        "claim {ns}/{name} is already being provisioned for node {other}"
                    )));
                }
                None if bound_volume(&pvc).is_some() => return Ok(pvc),
                None => {}
            }
            let body = json!({ "metadata": {
                "resourceVersion": pvc.metadata.resource_version,
                "annotations": { SELECTED_NODE_ANNOTATION: ctx.node_name }
            } });
            if let Some(updated) = api.patch_pvc(&ns, &name, &body).await? {
                w.selected_node_set.push((ns, name));
                return Ok(updated);
            }
            match api.get_pvc(&ns, &name).await? {
                Some(live) => pvc = live,
                None => {
                    return Err(PluginError::missing(format!(
                        "claim {ns}/{name} was deleted"
                    )));
                }
            }
        }
        Err(PluginError::contention(format!(
            "claim {ns}/{name} kept changing while selecting this node"
        )))
    }

    /// Polls the claim until it is bound to an existing PV, up to the binding timeout.
    async fn wait_bound(
        &self,
        api: &ApiAccess,
        ns: &str,
        c: &ClaimUse,
        provisioner: &str,
        started: tokio::time::Instant,
    ) -> Result<(PersistentVolumeClaim, PersistentVolume), PluginError> {
        let deadline = started + self.binding_timeout;
        let mut delay = Duration::from_millis(50);
        loop {
            let Some(pvc) = api.get_pvc(ns, &c.claim).await? else {
                return Err(PluginError::missing(format!(
                    "volume {}: claim {ns}/{} was deleted while waiting for provisioning",
                    c.volume, c.claim
                )));
            };
            if let Some(pv_name) = bound_volume(&pvc)
                && let Some(pv) = api.get_pv(pv_name).await?
            {
                return Ok((pvc, pv));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(PluginError::not_ready(format!(
                    "volume {}: claim {ns}/{} was not provisioned by {provisioner} within {:?} (--volume-binding-timeout)",
                    c.volume, c.claim, self.binding_timeout
                )));
            }
            tokio::time::sleep(delay.min(deadline - now)).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}

#[async_trait::async_trait]
impl Plugin for VolumesPlugin {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn pre_bind(
        &self,
        ctx: &BindContext<'_>,
        state: &mut BindState,
    ) -> Result<Vec<Verdict>, PluginError> {
        let (claim_uses, host_paths) = pod_volumes(ctx.pod);
        let mut out = Vec::new();
        if !host_paths.is_empty() && self.checks == CheckMode::Off {
            out.push(verdict(
                NAME,
                "host-path",
                VerdictOutcome::Skip,
                "local volume checks are off".into(),
            ));
        } else {
            for hp in &host_paths {
                let facts = self.measure(&hp.path).await?;
                let f = check::host_path_type(&hp.volume, &hp.path, hp.type_.as_deref(), &facts);
                self.record(f, &mut out)?;
            }
        }
        if claim_uses.is_empty() {
            return Ok(out);
        }
        let api = &self.api;
        for c in &claim_uses {
            out.extend(
                self.claim(ctx, api, c, state.slot::<VolumeWrites>())
                    .await?,
            );
        }
        Ok(out)
    }

    /// Completes the claim side of static bindings (what the PV controller would do), now
    /// that nothing needs undoing. Best effort: the PV's claimRef carries the claim's UID, so
    /// the PV controller finishes the binding if this write is lost.
    async fn post_bind(&self, _ctx: &BindContext<'_>, state: &BindState) {
        let api = &self.api;
        for r in state.get::<VolumeWrites>().map_or(&[][..], |w| &w.reserved) {
            if let Err(e) = complete_claim(api, r).await {
                tracing::warn!(claim = %format!("{}/{}", r.namespace, r.claim), pv = %r.pv, error = %e.message,
                    "could not set the claim's volumeName; the PV controller will");
            }
        }
    }

    async fn rollback(&self, ctx: &BindContext<'_>, state: &mut BindState) {
        let api = &self.api;
        let w = state.take::<VolumeWrites>().unwrap_or_default();
        for r in w.reserved.iter().rev() {
            if let Err(e) = release_pv(api, r).await {
                tracing::warn!(pv = %r.pv, error = %e.message, "could not release a reserved PersistentVolume");
            }
        }
        for (ns, name) in w.selected_node_set.iter().rev() {
            if let Err(e) = unselect_node(api, ns, name, ctx.node_name).await {
                tracing::warn!(claim = %format!("{ns}/{name}"), error = %e.message,
                    "could not remove the selected-node annotation");
            }
        }
    }
}
