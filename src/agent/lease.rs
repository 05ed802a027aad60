//! One holder per node: a coordination.k8s.io Lease named `bindlet-<node>`.
//!
//! Expiry is judged on this agent's own clock: a holder's lease counts as expired when
//! its record (holder, renewTime) has not changed for `duration` since we first saw it,
//! so clock skew between nodes does not matter (the same rule as client-go's elector).
//! Every write carries the resourceVersion it was computed from; a 409 means someone
//! else wrote first. On shutdown the holder clears `holderIdentity`, so a successor
//! (e.g. the new pod of a DaemonSet rollout with surge) takes over at once.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::api_calls::{CREATE_LEASE, GET_LEASE, UPDATE_LEASE};
use super::effects::{ApiError, call_as, call_opt_as};

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    /// How long a holder's silence is tolerated before others take over.
    pub duration: Duration,
    /// How often the holder renews, and others retry.
    pub retry_period: Duration,
    pub api_timeout: Duration,
    /// Counts API calls and keeps the observed holder for diagnostics.
    pub diag: std::sync::Arc<crate::diag::Recorder>,
}

/// Lease name for a node.
pub fn lease_name(node: &str) -> String {
    format!("bindlet-{node}")
}

struct Observed {
    holder: String,
    renew: Option<jiff::Timestamp>,
    seen_at: Instant,
}

/// Runs until `shutdown`, keeping `leading` up to date; releases the Lease at the end.
pub async fn run(
    client: Client,
    cfg: LeaseConfig,
    leading: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let mut observed: Option<Observed> = None;
    let mut last_renew_ok = Instant::now();
    loop {
        let is_leading = *leading.borrow();
        match try_acquire_or_renew(&api, &cfg, &mut observed).await {
            Ok(true) => {
                cfg.diag.lease_observed(&cfg.identity);
                last_renew_ok = Instant::now();
                if !is_leading {
                    tracing::info!(lease = %cfg.name, identity = %cfg.identity, "acquired the node lease; this agent now binds for the node");
                }
                leading.send_replace(true);
            }
            Ok(false) => {
                if is_leading {
                    tracing::warn!(lease = %cfg.name, "lost the node lease to another holder");
                }
                leading.send_replace(false);
            }
            Err(e) => {
                tracing::warn!(lease = %cfg.name, error = %e, "lease update failed");
                // Step down before anyone else may consider the lease expired.
                if is_leading && last_renew_ok.elapsed() > cfg.duration.mul_f64(2.0 / 3.0) {
                    tracing::warn!(lease = %cfg.name, "could not renew the node lease in time; stepping down");
                    leading.send_replace(false);
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(cfg.retry_period) => {}
        }
    }
    if *leading.borrow() {
        leading.send_replace(false);
        match release(&api, &cfg).await {
            Ok(()) => tracing::info!(lease = %cfg.name, "released the node lease"),
            Err(e) => {
                tracing::warn!(lease = %cfg.name, error = %e, "could not release the node lease; a successor waits for it to expire")
            }
        }
    }
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

/// Returns whether this agent holds the lease after the call.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
    observed: &mut Option<Observed>,
) -> Result<bool, ApiError> {
    let duration_secs = i32::try_from(cfg.duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let Some(mut lease) = get_lease(api, cfg).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                namespace: Some(cfg.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match call_as(
            &cfg.diag,
            CREATE_LEASE,
            cfg.api_timeout,
            api.create(&PostParams::default(), &lease),
        )
        .await
        {
            Ok(_) => Ok(true),
            Err(ApiError::Status { code: 409, .. }) => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let renew = spec.renew_time.as_ref().map(|t| t.0);
    let held_by_me = holder == cfg.identity;
    cfg.diag.lease_observed(&holder);
    if !held_by_me && !holder.is_empty() {
        let changed = observed
            .as_ref()
            .is_none_or(|o| o.holder != holder || o.renew != renew);
        if changed {
            *observed = Some(Observed {
                holder: holder.clone(),
                renew,
                seen_at: Instant::now(),
            });
        }
        let their_duration = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(s.max(1) as u64))
            .unwrap_or(cfg.duration);
        let silent_for = observed
            .as_ref()
            .map(|o| o.seen_at.elapsed())
            .unwrap_or_default();
        if silent_for < their_duration {
            return Ok(false);
        }
        tracing::info!(lease = %cfg.name, previous = %holder, "node lease expired; taking over");
    }
    if !held_by_me {
        spec.acquire_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.holder_identity = Some(cfg.identity.clone());
    spec.lease_duration_seconds = Some(duration_secs);
    spec.renew_time = Some(now());
    // `replace` sends metadata.resourceVersion: a concurrent writer makes this a 409.
    match call_as(
        &cfg.diag,
        UPDATE_LEASE,
        cfg.api_timeout,
        api.replace(&cfg.name, &PostParams::default(), &lease),
    )
    .await
    {
        Ok(_) => {
            *observed = None;
            Ok(true)
        }
        Err(ApiError::Status { code: 409, .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

async fn get_lease(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<Option<Lease>, ApiError> {
    call_opt_as(
        &cfg.diag,
        GET_LEASE,
        cfg.api_timeout,
        api.get_opt(&cfg.name),
    )
    .await
}

async fn release(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<(), ApiError> {
    let Some(mut lease) = get_lease(api, cfg).await? else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.renew_time = Some(now());
    call_as(
        &cfg.diag,
        UPDATE_LEASE,
        cfg.api_timeout,
        api.replace(&cfg.name, &PostParams::default(), &lease),
    )
    .await
    .map(|_| ())
}
