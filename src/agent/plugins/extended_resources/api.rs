//! The plugin's API adapter: the only code that creates, finds or removes the pod's claim and writes the pod's status for it.

use super::*;

/// The pod's claim, found or created: how it was obtained ("found", "created") and its
/// UID. A stale claim of the pod's is removed and the attempt retried (transient).
pub(super) async fn obtain_claim(
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
                return Err(PluginError::contention(format!(
                    "{why}; removed it, the next attempt creates it anew"
                )));
            }
            ClaimPlan::Refuse(why) => return Err(PluginError::unsatisfiable(why)),
        }
    }
    let Some((how, uid)) = how else {
        return Err(PluginError::contention(format!(
            "ResourceClaim {label} kept appearing and vanishing while creating it"
        )));
    };
    Ok((how, uid))
}

/// The pod's claim name and the live claim of that name, if any: the claim the pod status
/// already names when it is the pod's (an earlier attempt, possibly by another binder), else
/// the name derived from the pod's UID.
pub(super) async fn find_claim(
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
pub(super) fn written(r: Result<(), ApiError>, what: &str) -> Result<bool, PluginError> {
    match r {
        Ok(()) => Ok(true),
        Err(ApiError::Status {
            code: 409 | 404, ..
        }) => Ok(false),
        Err(e) if e.is_refusal() => Err(PluginError::rejected(format!("{what} was refused: {e}"))),
        Err(e) => Err(PluginError::unavailable(format!("{what}: {e}"))),
    }
}

/// POST of the claim; `None` when one of that name exists already (409).
pub(super) async fn create_claim(
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
pub(super) async fn write_pod_status(
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
            PluginError::missing(format!("pod {ns}/{pod_name} vanished while binding it"))
        })?);
    }
    Err(PluginError::contention(format!(
        "pod {ns}/{pod_name} kept changing while writing its extendedResourceClaimStatus"
    )))
}

/// Clears `status.extendedResourceClaimStatus` if it names `claim`.
pub(super) async fn clear_pod_status(
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
    Err(PluginError::contention(format!(
        "pod {ns}/{pod_name} kept changing while clearing its extendedResourceClaimStatus"
    )))
}

pub(super) async fn get_pod(
    api: &DraApi,
    ns: &str,
    name: &str,
) -> Result<Option<Pod>, PluginError> {
    let pods: Api<Pod> = Api::namespaced(api.kube.client.clone(), ns);
    api.kube
        .call(calls::GET_POD, pods.get_opt(name))
        .await
        .map_err(|e| PluginError::unavailable(format!("reading pod {ns}/{name}: {e}")))
}

/// Merge patch of `status.extendedResourceClaimStatus` (`None`: remove it, as a `null`),
/// guarded by the resourceVersion of `pod`. `false` on 409/404.
pub(super) async fn patch_pod_status(
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
pub(super) async fn remove_claim(
    api: &DraApi,
    ns: &str,
    name: &str,
    uid: &str,
) -> Result<(), PluginError> {
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
    Err(PluginError::contention(format!(
        "ResourceClaim {ns}/{name} kept changing while removing it"
    )))
}
