//! A simulated dynamic provisioner for node-local volumes, for tests and the demo. It is an
//! ordinary API client (it works against the simulator or a real cluster): it watches
//! claims, and for each unbound one whose StorageClass names this provisioner and that
//! carries `volume.kubernetes.io/selected-node`, it creates a directory under `base_dir`
//! and a `local` PersistentVolume with node affinity to the selected node, pre-bound to the
//! claim. Since the simulator runs no PV controller, it then completes the binding the way
//! the PV controller does (claim `volumeName`, annotations, both phases `Bound`).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;

use bindlet_api::wellknown::{
    BIND_COMPLETED_ANNOTATION, BOUND_BY_CONTROLLER_ANNOTATION, SELECTED_NODE_ANNOTATION,
    claim_class,
};

/// How the simulated provisioner behaves.
#[derive(Debug, Clone)]
pub struct ProvisionerConfig {
    /// The provisioner name StorageClasses refer to.
    pub name: String,
    /// Volumes are directories below this (on the machine the agent checks paths on).
    pub base_dir: PathBuf,
    /// Only claims in this namespace; None = all.
    pub namespace: Option<String>,
    /// Time taken per volume.
    pub delay: Duration,
}

/// Runs until the handle is aborted (or dropped with [`Provisioner`]).
pub struct Provisioner {
    task: JoinHandle<()>,
}

impl Drop for Provisioner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the provisioner on the current runtime.
pub fn spawn(client: Client, cfg: ProvisionerConfig) -> Provisioner {
    Provisioner {
        task: tokio::spawn(run(client, cfg)),
    }
}

async fn run(client: Client, cfg: ProvisionerConfig) {
    let claims: Api<PersistentVolumeClaim> = match &cfg.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut done: HashSet<String> = HashSet::new();
    let stream = watcher::watcher(claims, watcher::Config::default());
    futures::pin_mut!(stream);
    while let Some(ev) = stream.next().await {
        let pvc = match ev {
            Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => p,
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "provisioner watch error");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let uid = pvc.uid().unwrap_or_default();
        let unbound = pvc
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.as_deref())
            .unwrap_or("")
            .is_empty();
        let Some(node) = pvc.annotations().get(SELECTED_NODE_ANNOTATION).cloned() else {
            continue;
        };
        if !unbound || done.contains(&uid) {
            continue;
        }
        let class = claim_class(&pvc).to_string();
        let sc = Api::<StorageClass>::all(client.clone())
            .get_opt(&class)
            .await
            .ok()
            .flatten();
        if sc.is_none_or(|sc| sc.provisioner != cfg.name) {
            continue;
        }
        done.insert(uid);
        let client = client.clone();
        let cfg = cfg.clone();
        tokio::spawn(async move {
            if let Err(e) = provision(&client, &cfg, &pvc, &node, &class).await {
                tracing::warn!(claim = %pvc.name_any(), error = %e, "simulated provisioning failed");
            }
        });
    }
}

async fn provision(
    client: &Client,
    cfg: &ProvisionerConfig,
    pvc: &PersistentVolumeClaim,
    node: &str,
    class: &str,
) -> anyhow::Result<()> {
    tokio::time::sleep(cfg.delay).await;
    let ns = pvc.namespace().unwrap_or_default();
    let uid = pvc.uid().unwrap_or_default();
    let name = format!("pvc-{uid}");
    let dir = cfg.base_dir.join(&name);
    std::fs::create_dir_all(&dir)?;
    let spec = pvc.spec.clone().unwrap_or_default();
    let size = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| q.0.clone())
        .unwrap_or_else(|| "1Gi".into());
    let mut annotations = BTreeMap::new();
    annotations.insert(
        "pv.kubernetes.io/provisioned-by".to_string(),
        cfg.name.clone(),
    );
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": { "name": name, "annotations": annotations },
        "spec": {
            "capacity": { "storage": size },
            "accessModes": spec.access_modes.clone().unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
            "volumeMode": spec.volume_mode.clone().unwrap_or_else(|| "Filesystem".into()),
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": class,
            "local": { "path": dir.to_string_lossy() },
            "nodeAffinity": { "required": { "nodeSelectorTerms": [
                { "matchExpressions": [ { "key": "kubernetes.io/hostname", "operator": "In", "values": [node] } ] }
            ] } },
            "claimRef": {
                "kind": "PersistentVolumeClaim", "apiVersion": "v1",
                "namespace": ns, "name": pvc.name_any(), "uid": uid
            }
        }
    }))?;
    let pvs = Api::<PersistentVolume>::all(client.clone());
    match pvs.create(&PostParams::default(), &pv).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    // The PV controller's part (absent in the simulator; harmless on a real cluster).
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns);
    let pp = PatchParams::default();
    claims
        .patch(
            &pvc.name_any(),
            &pp,
            &Patch::Merge(json!({
                "metadata": { "annotations": {
                    BIND_COMPLETED_ANNOTATION: "yes",
                    BOUND_BY_CONTROLLER_ANNOTATION: "yes"
                } },
                "spec": { "volumeName": name }
            })),
        )
        .await?;
    let _ = claims
        .patch_status(
            &pvc.name_any(),
            &pp,
            &Patch::Merge(
                json!({ "status": { "phase": "Bound", "capacity": { "storage": size } } }),
            ),
        )
        .await;
    let _ = pvs
        .patch_status(
            &name,
            &pp,
            &Patch::Merge(json!({ "status": { "phase": "Bound" } })),
        )
        .await;
    Ok(())
}
