//! The physical limit (design §8): a minimal binder that learns of each BindRequest the
//! moment it is created (no watch) and issues only the unavoidable requests: GET the pod,
//! POST its binding, merge-patch the BindRequest's status (guarded like the agent's).
//! With DRA claims it also GETs each claim and PUTs its status (the allocation the
//! BindRequest names, the pod in `reservedFor`) before the binding, as the agent must.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::resource::v1::ResourceClaim;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;

use crate::api::BindRequest;
use crate::sim::RequestCounts;

/// Requests the limit client issued (a failed bind shows as a pod left unbound).
#[derive(Debug, Default)]
pub struct LimitCounts {
    pub get_pods: AtomicU64,
    pub create_binding: AtomicU64,
    pub patch_status: AtomicU64,
    pub get_claims: AtomicU64,
    pub update_claim_status: AtomicU64,
}

impl LimitCounts {
    /// The requests so far, keyed by verb and resource like the simulator's counts.
    pub fn requests(&self) -> RequestCounts {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RequestCounts(
            [
                ("get", "pods", load(&self.get_pods)),
                ("create", "pods/binding", load(&self.create_binding)),
                ("patch", "bindrequests/status", load(&self.patch_status)),
                ("get", "resourceclaims", load(&self.get_claims)),
                (
                    "update",
                    "resourceclaims/status",
                    load(&self.update_claim_status),
                ),
            ]
            .into_iter()
            .map(|(verb, res, n)| ((verb.to_string(), res.to_string()), n))
            .collect(),
        )
    }
}

/// Starts `loops` concurrent binders working the queue until it closes.
pub fn start(
    client: Client,
    node: String,
    loops: usize,
    queue: mpsc::UnboundedReceiver<BindRequest>,
    counts: Arc<LimitCounts>,
) -> JoinSet<()> {
    let queue = Arc::new(Mutex::new(queue));
    let mut set = JoinSet::new();
    for _ in 0..loops.max(1) {
        let (client, node, queue, counts) =
            (client.clone(), node.clone(), queue.clone(), counts.clone());
        set.spawn(async move {
            loop {
                let next = queue.lock().await.recv().await;
                let Some(br) = next else { return };
                if let Err(e) = bind_one(&client, &node, &br, &counts).await {
                    tracing::warn!(request = %br.name_any(), error = %e, "limit client: bind failed");
                }
            }
        });
    }
    set
}

async fn bind_one(
    client: &Client,
    node: &str,
    br: &BindRequest,
    counts: &LimitCounts,
) -> Result<(), kube::Error> {
    let ns = br.namespace().unwrap_or_default();
    let name = br.spec.pod_name.clone().unwrap_or_default();
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    counts.get_pods.fetch_add(1, Ordering::Relaxed);
    let pod = pods.get(&name).await?;
    let uid = pod.metadata.uid.unwrap_or_default();
    let claims = Api::<ResourceClaim>::namespaced(client.clone(), &ns);
    let entries = br.spec.resource_claim_allocations.as_deref().unwrap_or(&[]);
    for e in entries {
        let entry = e.name.as_deref().unwrap_or("");
        // The bench's pods name their claims directly.
        let claim = pod
            .spec
            .as_ref()
            .and_then(|s| s.resource_claims.as_ref())
            .and_then(|rc| rc.iter().find(|c| c.name == entry))
            .and_then(|c| c.resource_claim_name.clone())
            .unwrap_or_default();
        counts.get_claims.fetch_add(1, Ordering::Relaxed);
        let mut live = claims.get(&claim).await?;
        live.status = Some(
            serde_json::from_value(json!({
                "allocation": e.allocation,
                "reservedFor": [ { "resource": "pods", "name": name, "uid": uid } ],
            }))
            .map_err(kube::Error::SerdeError)?,
        );
        counts.update_claim_status.fetch_add(1, Ordering::Relaxed);
        claims
            .replace_status(&claim, &PostParams::default(), &live)
            .await?;
    }
    let binding = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": { "name": name, "namespace": ns, "uid": uid },
        "target": { "apiVersion": "v1", "kind": "Node", "name": node },
    });
    counts.create_binding.fetch_add(1, Ordering::Relaxed);
    let _: serde_json::Value = pods
        .create_subresource("binding", &name, &PostParams::default(), &binding)
        .await?;
    let brs = Api::<BindRequest>::namespaced(client.clone(), &ns);
    let body = json!({
        "metadata": { "resourceVersion": br.resource_version() },
        "status": { "phase": "Succeeded", "reason": format!("bound to node {node}") },
    });
    counts.patch_status.fetch_add(1, Ordering::Relaxed);
    brs.patch_status(
        &br.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&body),
    )
    .await?;
    Ok(())
}
