//! `extended_resources`: the pod's extended-resource ResourceClaim (KEP-5004, extended
//! resources such as `example.com/gpu` backed by a DRA driver through a DeviceClass's
//! `extendedResourceName`). The scheduler allocated devices for them
//! (`spec.extendedResourceClaimAllocation`); before the pod is bound, this plugin
//!
//! 1. checks the input against the pod and the allocation on this node, exactly as the `dra`
//!    plugin checks a claim allocation (nodeSelector, this node's slices, GPU health by UUID);
//! 2. finds the pod's claim or creates it (`crate::dra::extended` decides);
//! 3. reserves it for the pod with the allocation (the `dra` plugin's guarded status write);
//! 4. names it in the pod's `status.extendedResourceClaimStatus`, where the kubelet looks
//!    for it: it must be there before the pod reaches the node.
//!
//! Each step is idempotent, so an agent restarted between two of them completes the rest.
//! Rollback clears the pod status and deletes the claim, removing its `delete-protection`
//! finalizer first (kube-scheduler's order), so no claim is left hanging in Terminating.
//!
//! Requests without `extendedResourceClaimAllocation` cost no API request.

mod api;
mod state;

use api::*;
pub use state::*;

use std::borrow::Cow;

use k8s_openapi::api::core::v1::{Pod, PodExtendedResourceClaimStatus};
use k8s_openapi::api::resource::v1::ResourceClaim;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::json;

use crate::api::{Verdict, VerdictOutcome};
use crate::binding::{BindContext, BindState, Plugin, PluginError, verdict};
use crate::dra::extended::{self as decide, ClaimPlan};
use crate::kubeapi::ApiError;
use crate::kubeapi::calls;
use crate::plugins::dra::{DraApi, DraPlugin, DraSettings, Slices, reservation_verdict, reserve};

const NAME: &str = "extended_resources";

/// Re-reads after a 409 before giving up for this attempt (retried later, not counted).
const CONFLICT_TRIES: usize = 8;

pub struct ExtendedResourcesPlugin {
    /// The `dra` plugin's allocation check, shared so both check claims the same way.
    dra: DraPlugin,
    api: DraApi,
}

/// The `extended_resources` plugin, with its own copy of the `dra` plugin's checks.
pub fn setup(settings: &DraSettings, env: &super::PluginEnv) -> ExtendedResourcesPlugin {
    ExtendedResourcesPlugin {
        dra: super::dra::setup(settings, env),
        api: DraApi::new(env.kube.clone(), env.node_slices.clone()),
    }
}

#[async_trait::async_trait]
impl Plugin for ExtendedResourcesPlugin {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn pre_bind(
        &self,
        ctx: &BindContext<'_>,
        state: &mut BindState,
    ) -> Result<Vec<Verdict>, PluginError> {
        let Some(spec) = ctx
            .bind_request
            .spec
            .extended_resource_claim_allocation
            .as_ref()
        else {
            return Ok(Vec::new());
        };
        let api = &self.api;
        let req = decide::parse_request(spec, ctx.pod).map_err(PluginError::invalid)?;
        let ns = ctx.request.namespace.as_str();
        let pod_name = ctx.pod.metadata.name.as_deref().unwrap_or("");
        let pod_uid = ctx.pod.metadata.uid.as_deref().unwrap_or("");

        // The allocation is checked before any claim is read or written.
        let mut out = self
            .check_allocation(api, ctx, &req, pod_name, pod_uid)
            .await?;
        let (name, found) = find_claim(api, ctx.pod, ns, pod_name, pod_uid).await?;
        let label = format!("{ns}/{name}");

        let (how, uid) = obtain_claim(api, found, ns, &name, pod_name, pod_uid, &req).await?;
        state.slot::<ExtendedWrites>().claim = Some(UsedClaim {
            namespace: ns.into(),
            name: name.clone(),
            uid,
        });
        out.push(verdict(
            NAME,
            "claim",
            VerdictOutcome::Pass,
            format!("extended-resource claim {label} {how}"),
        ));

        let (reserved, wrote, _) = reserve(
            api,
            ns,
            &name,
            "extended resources",
            &req.allocation,
            pod_name,
            pod_uid,
        )
        .await?;
        out.push(reservation_verdict(
            NAME,
            &label,
            wrote,
            reserved.allocation_written,
        ));

        let wrote = write_pod_status(api, ctx.pod, ns, pod_name, &name, &req.mappings).await?;
        let containers: Vec<String> = req
            .mappings
            .iter()
            .map(|m| format!("{} {}", m.container_name, m.resource_name))
            .collect();
        out.push(verdict(
            NAME,
            "pod-status",
            VerdictOutcome::Pass,
            format!(
                "pod status {} claim {name} for {}",
                if wrote { "now names" } else { "already named" },
                containers.join(", ")
            ),
        ));
        Ok(out)
    }

    async fn rollback(&self, ctx: &BindContext<'_>, state: &mut BindState) {
        let api = &self.api;
        let Some(used) = state.slot::<ExtendedWrites>().claim.take() else {
            return;
        };
        let pod_name = ctx.pod.metadata.name.as_deref().unwrap_or("");
        if let Err(e) = clear_pod_status(api, &used.namespace, pod_name, &used.name).await {
            tracing::warn!(pod = %format!("{}/{pod_name}", used.namespace), error = %e.message,
                "could not clear the pod's extendedResourceClaimStatus");
        }
        if let Err(e) = remove_claim(api, &used.namespace, &used.name, &used.uid).await {
            tracing::warn!(claim = %format!("{}/{}", used.namespace, used.name), error = %e.message,
                "could not remove the pod's extended-resource claim");
        }
    }
}

impl ExtendedResourcesPlugin {
    /// The allocation's checks, as for every claim: for this node, devices published and
    /// healthy, and no untolerated device taint (KEP-5055: a driver may taint a device after
    /// scheduling; DeviceTaintRules are not read, see README, DRA).
    async fn check_allocation(
        &self,
        api: &DraApi,
        ctx: &BindContext<'_>,
        req: &decide::ExtendedRequest,
        pod_name: &str,
        pod_uid: &str,
    ) -> Result<Vec<Verdict>, PluginError> {
        let ns = ctx.request.namespace.as_str();
        let mut slices = Slices::of_node(api, ctx.node_name).await?;
        let mut gpus = None;
        let checked = self
            .dra
            .verify_here(
                api,
                &format!("{ns}/{}", decide::claim_name(pod_name, pod_uid)),
                &req.allocation,
                ctx.node,
                &mut slices,
                &mut gpus,
            )
            .await?;
        let mut out: Vec<Verdict> = checked
            .into_iter()
            .map(|line| verdict(NAME, "allocation", VerdictOutcome::Pass, line))
            .collect();
        // Device taints, as for every claim (KEP-5055): a driver may taint a device after
        // scheduling. DeviceTaintRules are not read (see README, DRA).
        let tainted = crate::dra::taints::check_device_taints(
            &format!("{ns}/{}", decide::claim_name(pod_name, pod_uid)),
            &req.allocation,
            ctx.node,
            &slices.items,
            &[],
        )
        .map_err(PluginError::unsatisfiable)?;
        out.extend(
            tainted
                .into_iter()
                .map(|line| verdict(NAME, "taints", VerdictOutcome::Pass, line)),
        );
        Ok(out)
    }
}
