//! The plugin's API adapter: the only code that reads or writes claims, PersistentVolumes and StorageClasses for it, each write guarded by resourceVersion and retried on conflict.

use super::*;

#[derive(Clone, Debug)]
pub struct ApiAccess {
    pub(super) kube: Kube,
}

pub(super) fn bound_volume(pvc: &PersistentVolumeClaim) -> Option<&str> {
    pvc.spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// Removes this attempt's claimRef from a PV, unless the binding has meanwhile been
/// completed (the claim's volumeName names it: that cannot be undone) or the PV changed
/// hands.
pub(super) async fn release_pv(api: &ApiAccess, r: &ReservedPv) -> Result<(), PluginError> {
    for _ in 0..CONFLICT_TRIES {
        let Some(pv) = api.get_pv(&r.pv).await? else {
            return Ok(());
        };
        let ours = pv
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .is_some_and(|c| c.uid.as_deref() == Some(r.claim_uid.as_str()));
        if !ours {
            return Ok(());
        }
        if let Some(pvc) = api.get_pvc(&r.namespace, &r.claim).await?
            && bound_volume(&pvc) == Some(r.pv.as_str())
        {
            tracing::info!(pv = %r.pv, claim = %r.claim, "binding already completed; leaving it");
            return Ok(());
        }
        let body = json!({
            "metadata": {
                "resourceVersion": pv.metadata.resource_version,
                "annotations": { BOUND_BY_CONTROLLER_ANNOTATION: null }
            },
            "spec": { "claimRef": null }
        });
        if api.patch_pv(&r.pv, &body).await?.is_some() {
            return Ok(());
        }
    }
    Err(PluginError::contention(format!(
        "PersistentVolume {} kept changing",
        r.pv
    )))
}

/// Removes the selected-node annotation this attempt set, while the claim is still unbound.
pub(super) async fn unselect_node(
    api: &ApiAccess,
    ns: &str,
    name: &str,
    node: &str,
) -> Result<(), PluginError> {
    for _ in 0..CONFLICT_TRIES {
        let Some(pvc) = api.get_pvc(ns, name).await? else {
            return Ok(());
        };
        if claims::annotation(&pvc.metadata, SELECTED_NODE_ANNOTATION) != Some(node)
            || bound_volume(&pvc).is_some()
        {
            return Ok(());
        }
        let body = json!({ "metadata": {
            "resourceVersion": pvc.metadata.resource_version,
            "annotations": { SELECTED_NODE_ANNOTATION: null }
        } });
        if api.patch_pvc(ns, name, &body).await?.is_some() {
            return Ok(());
        }
    }
    Err(PluginError::contention(format!(
        "claim {ns}/{name} kept changing"
    )))
}

/// Sets the claim's volumeName and the PV controller's completion annotations.
pub(super) async fn complete_claim(api: &ApiAccess, r: &ReservedPv) -> Result<(), PluginError> {
    for _ in 0..CONFLICT_TRIES {
        let Some(pvc) = api.get_pvc(&r.namespace, &r.claim).await? else {
            return Ok(());
        };
        if bound_volume(&pvc).is_some() || pvc.metadata.uid.as_deref() != Some(&r.claim_uid) {
            return Ok(());
        }
        let body = json!({
            "metadata": {
                "resourceVersion": pvc.metadata.resource_version,
                "annotations": {
                    BIND_COMPLETED_ANNOTATION: "yes",
                    BOUND_BY_CONTROLLER_ANNOTATION: "yes"
                }
            },
            "spec": { "volumeName": r.pv }
        });
        if api
            .patch_pvc(&r.namespace, &r.claim, &body)
            .await?
            .is_some()
        {
            return Ok(());
        }
    }
    Err(PluginError::contention(format!(
        "claim {}/{} kept changing",
        r.namespace, r.claim
    )))
}

pub(super) fn api_failure(what: &str, e: ApiError) -> PluginError {
    PluginError::unavailable(format!("{what}: {e}"))
}

impl ApiAccess {
    pub(super) async fn get_pvc(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<PersistentVolumeClaim>, PluginError> {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.kube.client.clone(), ns);
        self.kube
            .call(calls::GET_PVC, api.get_opt(name))
            .await
            .map_err(|e| api_failure(&format!("reading claim {ns}/{name}"), e))
    }

    pub(super) async fn get_pv(&self, name: &str) -> Result<Option<PersistentVolume>, PluginError> {
        let api: Api<PersistentVolume> = Api::all(self.kube.client.clone());
        self.kube
            .call(calls::GET_PV, api.get_opt(name))
            .await
            .map_err(|e| api_failure(&format!("reading PersistentVolume {name}"), e))
    }

    pub(super) async fn get_class(&self, name: &str) -> Result<Option<StorageClass>, PluginError> {
        let api: Api<StorageClass> = Api::all(self.kube.client.clone());
        self.kube
            .call(calls::GET_STORAGE_CLASS, api.get_opt(name))
            .await
            .map_err(|e| api_failure(&format!("reading StorageClass {name}"), e))
    }

    pub(super) async fn list_pvs(&self) -> Result<Vec<PersistentVolume>, PluginError> {
        let api: Api<PersistentVolume> = Api::all(self.kube.client.clone());
        self.kube
            .call(calls::LIST_PVS, api.list(&ListParams::default()))
            .await
            .map(|l| l.items)
            .map_err(|e| api_failure("listing PersistentVolumes", e))
    }

    /// A guarded merge patch; `None` when the object changed (409) or vanished (404).
    pub(super) async fn patch_pv(
        &self,
        name: &str,
        body: &Value,
    ) -> Result<Option<PersistentVolume>, PluginError> {
        let api: Api<PersistentVolume> = Api::all(self.kube.client.clone());
        guarded(
            self.kube
                .call(
                    calls::PATCH_PV,
                    api.patch(name, &PatchParams::default(), &Patch::Merge(body)),
                )
                .await,
            &format!("writing PersistentVolume {name}"),
        )
    }

    pub(super) async fn patch_pvc(
        &self,
        ns: &str,
        name: &str,
        body: &Value,
    ) -> Result<Option<PersistentVolumeClaim>, PluginError> {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.kube.client.clone(), ns);
        guarded(
            self.kube
                .call(
                    calls::PATCH_PVC,
                    api.patch(name, &PatchParams::default(), &Patch::Merge(body)),
                )
                .await,
            &format!("writing claim {ns}/{name}"),
        )
    }
}

pub(super) fn guarded<T>(res: Result<T, ApiError>, what: &str) -> Result<Option<T>, PluginError> {
    match res {
        Ok(v) => Ok(Some(v)),
        Err(ApiError::Status {
            code: 409 | 404, ..
        }) => Ok(None),
        Err(e) => Err(api_failure(what, e)),
    }
}
