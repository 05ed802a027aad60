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
        let req = decide::parse_request(spec, ctx.pod).map_err(PluginError::refused)?;
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
        .map_err(PluginError::refused)?;
        out.extend(
            tainted
                .into_iter()
                .map(|line| verdict(NAME, "taints", VerdictOutcome::Pass, line)),
        );
        Ok(out)
    }
}

/// The pod's claim, found or created: how it was obtained ("found", "created") and its
/// UID. A stale claim of the pod's is removed and the attempt retried (transient).
async fn obtain_claim(
    api: &DraApi,
    found: Option<ResourceClaim>,
    ns: &str,
    name: &str,
    pod_name: &str,
    pod_uid: &str,
    req: &decide::ExtendedRequest,
) -> Result<(&'static str, String), PluginError> {
    let label = format!("{ns}/{name}");
    let mut found = found;
    let mut how = None;
    for _ in 0..CONFLICT_TRIES {
        match decide::plan_claim(found.as_ref(), ns, pod_name, pod_uid, req) {
            ClaimPlan::Use => {
                let uid = found
                    .as_ref()
                    .and_then(|c| c.metadata.uid.clone())
                    .unwrap_or_default();
                how = Some(("found", uid));
                break;
            }
            ClaimPlan::Create(claim) => match create_claim(api, ns, &claim).await? {
                Some(created) => {
                    how = Some(("created", created.metadata.uid.unwrap_or_default()));
                    break;
                }
                // Created meanwhile (an answer lost to a timeout, or a restart): re-read.
                None => found = api.get_claim(ns, name).await?,
            },
            ClaimPlan::RemoveStale(why) => {
                let uid = found
                    .as_ref()
                    .and_then(|c| c.metadata.uid.clone())
                    .unwrap_or_default();
                remove_claim(api, ns, name, &uid).await?;
                return Err(PluginError::transient(format!(
                    "{why}; removed it, the next attempt creates it anew"
                )));
            }
            ClaimPlan::Refuse(why) => return Err(PluginError::refused(why)),
        }
    }
    let Some((how, uid)) = how else {
        return Err(PluginError::transient(format!(
            "ResourceClaim {label} kept appearing and vanishing while creating it"
        )));
    };
    Ok((how, uid))
}

/// The pod's claim name and the live claim of that name, if any: the claim the pod status
/// already names when it is the pod's (an earlier attempt, possibly by another binder), else
/// the name derived from the pod's UID.
async fn find_claim(
    api: &DraApi,
    pod: &Pod,
    ns: &str,
    pod_name: &str,
    pod_uid: &str,
) -> Result<(String, Option<ResourceClaim>), PluginError> {
    let derived = decide::claim_name(pod_name, pod_uid);
    let named = pod
        .status
        .as_ref()
        .and_then(|s| s.extended_resource_claim_status.as_ref())
        .map(|s| s.resource_claim_name.as_str())
        .filter(|n| !n.is_empty() && *n != derived);
    if let Some(named) = named
        && let Some(c) = api.get_claim(ns, named).await?
        && decide::belongs_to_pod(&c, pod_uid)
    {
        return Ok((named.to_string(), Some(c)));
    }
    let found = api.get_claim(ns, &derived).await?;
    Ok((derived, found))
}

/// An answer about a write: `Ok(false)` for the ones a re-read can resolve (409 conflict or
/// already exists, 404), a refusal for answers a retry cannot change, else transient.
fn written(r: Result<(), ApiError>, what: &str) -> Result<bool, PluginError> {
    match r {
        Ok(()) => Ok(true),
        Err(ApiError::Status {
            code: 409 | 404, ..
        }) => Ok(false),
        Err(e) if e.is_refusal() => Err(PluginError::refused(format!("{what} was refused: {e}"))),
        Err(e) => Err(PluginError::transient(format!("{what}: {e}"))),
    }
}

/// POST of the claim; `None` when one of that name exists already (409).
async fn create_claim(
    api: &DraApi,
    ns: &str,
    claim: &ResourceClaim,
) -> Result<Option<ResourceClaim>, PluginError> {
    let claims: Api<ResourceClaim> = Api::namespaced(api.kube.client.clone(), ns);
    let name = claim.metadata.name.as_deref().unwrap_or("");
    let mut created = None;
    let r = api
        .kube
        .call(
            calls::CREATE_RESOURCE_CLAIM,
            claims.create(&PostParams::default(), claim),
        )
        .await
        .map(|c| created = Some(c));
    if written(r, &format!("creating ResourceClaim {ns}/{name}"))? {
        Ok(created)
    } else {
        Ok(None)
    }
}

/// Writes `status.extendedResourceClaimStatus` unless the pod already has it; `true` when
/// this call wrote. The merge patch carries the pod's resourceVersion, so it applies only to
/// the pod as read (409: re-read and recompute).
async fn write_pod_status(
    api: &DraApi,
    pod: &Pod,
    ns: &str,
    pod_name: &str,
    claim: &str,
    mappings: &[k8s_openapi::api::core::v1::ContainerExtendedResourceRequest],
) -> Result<bool, PluginError> {
    let mut live = Cow::Borrowed(pod);
    for _ in 0..CONFLICT_TRIES {
        let Some(want) = decide::plan_pod_status(&live, claim, mappings) else {
            return Ok(false);
        };
        if patch_pod_status(api, &live, ns, pod_name, Some(want)).await? {
            return Ok(true);
        }
        live = Cow::Owned(get_pod(api, ns, pod_name).await?.ok_or_else(|| {
            PluginError::refused(format!("pod {ns}/{pod_name} vanished while binding it"))
        })?);
    }
    Err(PluginError::transient(format!(
        "pod {ns}/{pod_name} kept changing while writing its extendedResourceClaimStatus"
    )))
}

/// Clears `status.extendedResourceClaimStatus` if it names `claim`.
async fn clear_pod_status(
    api: &DraApi,
    ns: &str,
    pod_name: &str,
    claim: &str,
) -> Result<(), PluginError> {
    for _ in 0..CONFLICT_TRIES {
        let Some(live) = get_pod(api, ns, pod_name).await? else {
            return Ok(());
        };
        if !decide::pod_status_names(&live, claim) {
            return Ok(());
        }
        if patch_pod_status(api, &live, ns, pod_name, None).await? {
            return Ok(());
        }
    }
    Err(PluginError::transient(format!(
        "pod {ns}/{pod_name} kept changing while clearing its extendedResourceClaimStatus"
    )))
}

async fn get_pod(api: &DraApi, ns: &str, name: &str) -> Result<Option<Pod>, PluginError> {
    let pods: Api<Pod> = Api::namespaced(api.kube.client.clone(), ns);
    api.kube
        .call(calls::GET_POD, pods.get_opt(name))
        .await
        .map_err(|e| PluginError::transient(format!("reading pod {ns}/{name}: {e}")))
}

/// Merge patch of `status.extendedResourceClaimStatus` (`None`: remove it, as a `null`),
/// guarded by the resourceVersion of `pod`. `false` on 409/404.
async fn patch_pod_status(
    api: &DraApi,
    pod: &Pod,
    ns: &str,
    pod_name: &str,
    value: Option<PodExtendedResourceClaimStatus>,
) -> Result<bool, PluginError> {
    let pods: Api<Pod> = Api::namespaced(api.kube.client.clone(), ns);
    let body = json!({
        "metadata": { "resourceVersion": pod.metadata.resource_version },
        "status": { "extendedResourceClaimStatus": value },
    });
    let r = api
        .kube
        .call(
            calls::PATCH_POD_STATUS,
            pods.patch_status(pod_name, &PatchParams::default(), &Patch::Merge(&body)),
        )
        .await
        .map(drop);
    written(r, &format!("writing pod {ns}/{pod_name} status"))
}

/// Removes the claim with `uid`: its `delete-protection` finalizer first (guarded by
/// resourceVersion), then the claim itself (precondition: the same UID). A claim already
/// gone, or replaced by another of the same name, is left alone. Removing the finalizer
/// first is kube-scheduler's order: a claim deleted with it would stay Terminating while
/// reservedFor names the pod, since the resourceclaim controller keeps the finalizer then.
async fn remove_claim(api: &DraApi, ns: &str, name: &str, uid: &str) -> Result<(), PluginError> {
    let claims: Api<ResourceClaim> = Api::namespaced(api.kube.client.clone(), ns);
    for _ in 0..CONFLICT_TRIES {
        let Some(live) = api.get_claim(ns, name).await? else {
            return Ok(());
        };
        if live.metadata.uid.as_deref() != Some(uid) {
            return Ok(());
        }
        let deleting = live.metadata.deletion_timestamp.is_some();
        if let Some(rest) = decide::without_our_finalizer(&live) {
            let body = json!({
                "metadata": {
                    "resourceVersion": live.metadata.resource_version,
                    "finalizers": if rest.is_empty() { None } else { Some(rest) },
                }
            });
            let r = api
                .kube
                .call(
                    calls::PATCH_RESOURCE_CLAIM,
                    claims.patch(name, &PatchParams::default(), &Patch::Merge(&body)),
                )
                .await
                .map(drop);
            if !written(
                r,
                &format!("removing the finalizer of ResourceClaim {ns}/{name}"),
            )? {
                continue;
            }
        }
        if deleting {
            // Gone now, or held only by others' finalizers.
            return Ok(());
        }
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let r = api
            .kube
            .call(calls::DELETE_RESOURCE_CLAIM, claims.delete(name, &dp))
            .await
            .map(drop);
        match r {
            Err(ApiError::Status { code: 404, .. }) => return Ok(()),
            r => {
                if written(r, &format!("deleting ResourceClaim {ns}/{name}"))? {
                    return Ok(());
                }
            }
        }
    }
    Err(PluginError::transient(format!(
        "ResourceClaim {ns}/{name} kept changing while removing it"
    )))
}
