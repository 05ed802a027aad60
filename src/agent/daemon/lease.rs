//! One holder per node: a coordination.k8s.io Lease named `bindlet-<node>`.
//!
//! Expiry is judged on this agent's own clock: a holder's lease counts as expired when
//! its record (holder, renewTime) has not changed for `duration` since we first saw it,
//! so clock skew between nodes does not matter (the same rule as client-go's elector).
//! Every write carries the resourceVersion it was computed from; a 409 means someone
//! else wrote first. On shutdown the holder clears `holderIdentity`, so a successor
//! (e.g. the new pod of a DaemonSet rollout with surge) takes over at once.
//!
//! Cost while idle: like a kubelet's node lease (kubelet: 40 s lease, renewed every
//! 10 s, one PUT per renewal carrying the Lease it last wrote; k8s.io/component-helpers
//! `apimachinery/lease/controller.go`), the holder renews with one PUT of the object it
//! last wrote, every `renew_period` (15 s by default, jittered down by up to 10%), and
//! reads the Lease only after a 409. That is about 0.07 requests/s per node instead of
//! a GET and a PUT every 2 s.
//!
//! Safety: the holder stops working (`leading` false) on its own timer, `renew_deadline`
//! (2/3 of `duration`) after it *sent* its last successful write, even while a renewal
//! is still in flight. Another agent takes over only after it has seen the same record
//! unchanged for a full `duration`, which starts no earlier than that write. So the two
//! never lead at the same time, and the holder has `duration / 3` to finish a bind it
//! started (each API call has `api_timeout`). After a crash, a successor waits up to
//! `duration` + `retry_period` (42 s by default); a graceful stop releases the Lease.

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
    /// How often the holder renews while renewals succeed.
    pub renew_period: Duration,
    /// How often a waiting agent looks at the Lease, and how soon a holder retries a
    /// renewal that failed.
    pub retry_period: Duration,
    pub api_timeout: Duration,
    /// Counts API calls and keeps the observed holder for diagnostics.
    pub diag: std::sync::Arc<crate::diag::Recorder>,
}

/// Lease name for a node.
pub fn lease_name(node: &str) -> String {
    format!("bindlet-{node}")
}

/// How long after sending its last successful write the holder keeps working: 2/3 of the
/// lease, so it has stopped a third of the lease before anyone may take over.
pub fn renew_deadline(duration: Duration) -> Duration {
    duration.mul_f64(2.0 / 3.0)
}

/// What an agent does with the Lease it just read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseAction {
    /// It is ours: renew it.
    Renew,
    /// Nobody holds it, or its holder has been silent for its whole duration: take it.
    Take,
    /// Someone else holds it and is alive (as far as we can tell): wait.
    Wait,
}

/// The takeover rule: `holder` is the Lease's holderIdentity, `silent_for` how long we have
/// seen its record (holder, renewTime) unchanged, `their_duration` the holder's lease.
pub fn decide(
    holder: &str,
    me: &str,
    silent_for: Duration,
    their_duration: Duration,
) -> LeaseAction {
    if holder == me {
        LeaseAction::Renew
    } else if holder.is_empty() || silent_for >= their_duration {
        LeaseAction::Take
    } else {
        LeaseAction::Wait
    }
}

/// How long to sleep before the next attempt: a holder whose last renewal succeeded waits
/// `renew_period` less up to 10% (`jitter` in 0..1), so that the agents of a fleet started
/// together do not renew in step; anyone else, or a holder whose renewal failed, retries
/// after `retry_period`.
pub fn next_attempt_in(
    cfg: &LeaseConfig,
    leading: bool,
    last_failed: bool,
    jitter: f64,
) -> Duration {
    if leading && !last_failed {
        cfg.renew_period.mul_f64(1.0 - 0.1 * jitter.clamp(0.0, 1.0))
    } else {
        cfg.retry_period
    }
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
    // The Lease as this agent last wrote it, while it holds it: renewals send it back
    // without reading first.
    let mut written: Option<Lease> = None;
    // While leading: the instant at which to stop working unless a renewal succeeds.
    let mut step_down_at: Option<Instant> = None;
    let step_down = |leading: &watch::Sender<bool>, why: &str| {
        if *leading.borrow() {
            tracing::warn!(lease = %cfg.name, "{why}; stepping down");
        }
        leading.send_replace(false);
    };
    loop {
        let was_leading = *leading.borrow();
        let sent_at = Instant::now();
        let attempt = try_acquire_or_renew(&api, &cfg, &mut observed, &mut written);
        // A renewal that hangs must not keep the holder working past its deadline.
        let result = match step_down_at {
            Some(deadline) => tokio::select! {
                r = attempt => Some(r),
                _ = tokio::time::sleep_until(deadline) => None,
            },
            None => Some(attempt.await),
        };
        let mut last_failed = false;
        match result {
            None => {
                step_down(&leading, "could not renew the node lease in time");
                (step_down_at, written, last_failed) = (None, None, true);
            }
            // Written, but so slowly that the deadline counted from the send has passed.
            Some(Ok(true)) if sent_at + renew_deadline(cfg.duration) <= Instant::now() => {
                step_down(&leading, "the node lease write took too long");
                step_down_at = None;
                last_failed = true;
            }
            Some(Ok(true)) => {
                cfg.diag.lease_observed(&cfg.identity);
                step_down_at = Some(sent_at + renew_deadline(cfg.duration));
                if !was_leading {
                    tracing::info!(lease = %cfg.name, identity = %cfg.identity, "acquired the node lease; this agent now binds for the node");
                }
                leading.send_replace(true);
            }
            Some(Ok(false)) => {
                if was_leading {
                    tracing::warn!(lease = %cfg.name, "lost the node lease to another holder");
                }
                leading.send_replace(false);
                (step_down_at, written) = (None, None);
            }
            Some(Err(e)) => {
                tracing::warn!(lease = %cfg.name, error = %e, "lease update failed");
                last_failed = true;
            }
        }
        let wait = next_attempt_in(&cfg, *leading.borrow(), last_failed, rand::random::<f64>());
        let deadline = step_down_at;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
            _ = async { if let Some(d) = deadline { tokio::time::sleep_until(d).await } }, if deadline.is_some() => {
                step_down(&leading, "could not renew the node lease in time");
                (step_down_at, written) = (None, None);
            }
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

/// Returns whether this agent holds the lease after the call. A holder renews the Lease it
/// last wrote without reading it (one request); a 409 (someone else wrote since) or no
/// such copy means read, decide and write (two).
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
    observed: &mut Option<Observed>,
    written: &mut Option<Lease>,
) -> Result<bool, ApiError> {
    if let Some(mine) = written.take() {
        match write(api, cfg, mine, false).await {
            Ok(lease) => {
                *written = Some(lease);
                return Ok(true);
            }
            // Someone wrote since: re-read and recompute below.
            Err(ApiError::Status { code: 409, .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let duration_secs = i32::try_from(cfg.duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let Some(lease) = get_lease(api, cfg).await? else {
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
            Ok(created) => {
                *written = Some(created);
                Ok(true)
            }
            Err(ApiError::Status { code: 409, .. }) => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let renew = spec.renew_time.as_ref().map(|t| t.0);
    cfg.diag.lease_observed(&holder);
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
    let taking_over = match decide(&holder, &cfg.identity, silent_for, their_duration) {
        LeaseAction::Wait => return Ok(false),
        LeaseAction::Renew => false,
        LeaseAction::Take => {
            if !holder.is_empty() {
                tracing::info!(lease = %cfg.name, previous = %holder, "node lease expired; taking over");
            }
            true
        }
    };
    match write(api, cfg, lease, taking_over).await {
        Ok(lease) => {
            *observed = None;
            *written = Some(lease);
            Ok(true)
        }
        Err(ApiError::Status { code: 409, .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes `lease` with this agent as holder and a fresh renewTime. `replace` sends
/// metadata.resourceVersion: a concurrent writer makes this a 409.
async fn write(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
    mut lease: Lease,
    taking_over: bool,
) -> Result<Lease, ApiError> {
    let duration_secs = i32::try_from(cfg.duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let spec = lease.spec.get_or_insert_with(Default::default);
    if taking_over {
        spec.acquire_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.holder_identity = Some(cfg.identity.clone());
    spec.lease_duration_seconds = Some(duration_secs);
    spec.renew_time = Some(now());
    call_as(
        &cfg.diag,
        UPDATE_LEASE,
        cfg.api_timeout,
        api.replace(&cfg.name, &PostParams::default(), &lease),
    )
    .await
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

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn takeover_rule() {
        // (holder, silent for, their duration) -> action of agent "me"
        let table = [
            ("me", 0, 40, LeaseAction::Renew),
            ("me", 100, 40, LeaseAction::Renew),
            ("", 0, 40, LeaseAction::Take),
            ("other", 0, 40, LeaseAction::Wait),
            ("other", 39, 40, LeaseAction::Wait),
            ("other", 40, 40, LeaseAction::Take),
            // An old agent's short lease is honoured as written by its holder.
            ("other", 15, 15, LeaseAction::Take),
        ];
        for (holder, silent, theirs, want) in table {
            assert_eq!(
                decide(holder, "me", S(silent), S(theirs)),
                want,
                "{holder} silent {silent}s of {theirs}s"
            );
        }
    }

    fn config(duration: u64, renew: u64, retry: u64) -> LeaseConfig {
        LeaseConfig {
            name: "bindlet-n".into(),
            namespace: "ns".into(),
            identity: "me".into(),
            duration: S(duration),
            renew_period: S(renew),
            retry_period: S(retry),
            api_timeout: S(10),
            diag: Default::default(),
        }
    }

    #[test]
    fn attempts_are_spaced_like_a_kubelet_lease_while_healthy() {
        let cfg = config(40, 15, 2);
        // (leading, last attempt failed, jitter) -> wait
        let table = [
            (true, false, 0.0, Duration::from_secs(15)),
            (true, false, 1.0, Duration::from_millis(13_500)),
            (true, false, 7.0, Duration::from_millis(13_500)),
            (true, true, 0.0, S(2)),
            (false, false, 0.0, S(2)),
            (false, true, 0.5, S(2)),
        ];
        for (leading, failed, jitter, want) in table {
            assert_eq!(
                next_attempt_in(&cfg, leading, failed, jitter),
                want,
                "leading {leading}, failed {failed}, jitter {jitter}"
            );
        }
    }

    #[test]
    fn the_holder_stops_a_third_of_the_lease_before_anyone_may_take_over() {
        for d in [2, 15, 40] {
            let deadline = renew_deadline(S(d));
            assert!(deadline < S(d));
            assert!(
                S(d) - deadline >= S(d) / 3 - Duration::from_millis(1),
                "{d}"
            );
        }
        // With the defaults, a holder's last API call (10 s timeout) started before it
        // steps down ends before a successor may start.
        let cfg = config(40, 15, 2);
        assert!(renew_deadline(cfg.duration) + cfg.api_timeout < cfg.duration);
        // At least one renewal (and retries after it) before the deadline.
        assert!(cfg.renew_period < renew_deadline(cfg.duration));
    }
}
