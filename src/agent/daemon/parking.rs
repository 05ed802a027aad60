//! Requests parked until a ResourceClaim changes (DRA binding conditions), without holding
//! a worker: the worker hands the request back to the queue with a delay (the wait's
//! timeout) and parks it here; a watch on each claim it waits on, by name, queues it again
//! as soon as the claim changes (a driver setting `status.devices[].conditions`).
//!
//! The watches are scoped to the claims themselves (`metadata.name` in their namespace),
//! claims of pods this node binds: nothing else of the cluster is watched. They run only
//! while the request is parked (the worker stops them when it attempts the request again),
//! and a change between the attempt's read and the watch's first list still wakes it: the
//! list shows a newer resourceVersion than the one the attempt read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::resource::v1::ResourceClaim;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use crate::binding::ParkedOn;

use super::WatchBackoff;
use super::queue::{Key, WorkQueue};

struct Parked {
    claims: Vec<(String, String)>,
    stop: CancellationToken,
}

pub(crate) struct ParkingLot {
    client: Client,
    queue: Arc<WorkQueue>,
    stop: CancellationToken,
    parked: Mutex<HashMap<Key, Parked>>,
}

impl ParkingLot {
    pub(crate) fn new(client: Client, queue: Arc<WorkQueue>, stop: CancellationToken) -> Self {
        ParkingLot {
            client,
            queue,
            stop,
            parked: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Parked>> {
        self.parked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Parks `key` on `on`: any change of one of these claims queues it.
    pub(crate) fn park(&self, key: &Key, on: &[ParkedOn]) {
        let mut claims: Vec<(String, String)> = on
            .iter()
            .map(|c| (c.namespace.clone(), c.name.clone()))
            .collect();
        claims.sort();
        claims.dedup();
        let mut parked = self.lock();
        if parked.get(key).is_some_and(|p| p.claims == claims) {
            return;
        }
        if let Some(old) = parked.remove(key) {
            old.stop.cancel();
        }
        let stop = self.stop.child_token();
        for c in on {
            tokio::spawn(watch_claim(
                self.client.clone(),
                c.clone(),
                key.clone(),
                self.queue.clone(),
                stop.clone(),
            ));
        }
        parked.insert(key.clone(), Parked { claims, stop });
    }

    /// `key` no longer waits: its watches stop. Whether it was parked.
    pub(crate) fn unpark(&self, key: &Key) -> bool {
        match self.lock().remove(key) {
            Some(p) => {
                p.stop.cancel();
                true
            }
            None => false,
        }
    }
}

impl Drop for ParkingLot {
    fn drop(&mut self) {
        for p in self.lock().values() {
            p.stop.cancel();
        }
    }
}

/// Watches one claim by name; queues `key` on every change after the version the parked
/// attempt read (the watch's first list shows a newer one when it changed meanwhile).
async fn watch_claim(
    client: Client,
    claim: ParkedOn,
    key: Key,
    queue: Arc<WorkQueue>,
    stop: CancellationToken,
) {
    // api_calls::LIST_RESOURCE_CLAIMS, WATCH_RESOURCE_CLAIMS
    let api: Api<ResourceClaim> = Api::namespaced(client, &claim.namespace);
    let wc = watcher::Config::default().fields(&format!("metadata.name={}", claim.name));
    let stream = watcher::watcher(api, wc).backoff(WatchBackoff::default());
    futures::pin_mut!(stream);
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => return,
            ev = stream.next() => ev,
        };
        match ev {
            Some(Ok(Event::Apply(_) | Event::Delete(_))) => queue.add(key.clone()),
            Some(Ok(Event::InitApply(c)))
                if c.metadata.resource_version.as_deref()
                    != Some(claim.resource_version.as_str()) =>
            {
                queue.add(key.clone())
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::debug!(claim = %format!("{}/{}", claim.namespace, claim.name), error = %e,
                    "ResourceClaim watch error; retrying")
            }
            None => return,
        }
    }
}
