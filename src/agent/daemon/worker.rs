//! One attempt for one BindRequest: snapshot → decide → pipeline → status + Events.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod, PodCondition};
use kube::runtime::reflector::{ObjectRef, Store};

use crate::api::refs::{object_ref, reference_to};
use crate::api::{BindRequest, BindRequestStatus, Lenient, NodeVerification, Phase};
use crate::binding::{
    self, AttemptError, BindContext, BindFault, Binder, Failure, Outcome, PodState, pod_metadata,
};

use super::AgentConfig;
use super::effects::{Effects, StatusWrite};
use super::events::{EventSink, EventSpec, EventType};
use super::queue::{Cancelled, Key, Next};

/// What the workers share.
pub(crate) struct Shared {
    pub cfg: AgentConfig,
    pub effects: Effects,
    pub events: EventSink,
    pub registry: binding::Registry,
    pub requests: Store<Lenient<BindRequest>>,
    pub node: Store<Node>,
    pub stats: Arc<super::Stats>,
    pub diag: Arc<crate::diag::Recorder>,
    /// Requests waiting on DRA binding conditions.
    pub parking: Arc<super::parking::ParkingLot>,
}

const STATUS_WRITE_TRIES: usize = 5;

/// Processes one key; returns when (and whether) it should be looked at again.
pub(crate) async fn process(sh: &Shared, key: &Key, cancelled: &Cancelled) -> Next {
    let oref = ObjectRef::new(&key.name).within(&key.namespace);
    let Some(entry) = sh.requests.get(&oref) else {
        // Deleted (possibly while the watch was down, so no Delete event came).
        sh.stats.forget(key);
        return Next::Forget;
    };
    let br = match &entry.0 {
        Ok(br) => br.clone(),
        Err(invalid) => return report_undecodable(sh, key, &invalid.error).await,
    };
    drop(entry);
    if binding::is_settled(&br, sh.cfg.default_backoff_limit) {
        return Next::Forget;
    }
    let version = br.metadata.resource_version.as_deref().unwrap_or("");
    if sh.stats.is_left_alone(key, version) {
        return Next::Forget;
    }
    // The label brought it here, but the spec names another node: it is that node's request
    // (whose agent alone may write its status, as the shipped admission policy enforces).
    if let Some(selected) = binding::selected_elsewhere(&br, &sh.cfg.node_name) {
        let detail = format!(
            "spec.selectedNode is \"{selected}\" but the {} label names this node \"{}\": \
             not this node's request, left alone",
            crate::api::SELECTED_NODE_LABEL,
            sh.cfg.node_name
        );
        leave_alone(sh, key, &br, LeftAlone::NotThisNode, detail);
        return Next::Forget;
    }
    // A parked request's claim watches stop while it is attempted: the attempt's own claim
    // writes (a rollback) must not wake it again from a cache that has not seen its new
    // status yet. If it still waits, it is parked again (on the version it read).
    sh.parking.unpark(key);
    let retry = sh.stats.local_retries(key);
    let timer = sh.diag.attempt_started(&br);
    let mut pod_bound = None;
    let (result, verification) = attempt(sh, &br, cancelled, &mut pod_bound).await;
    sh.diag
        .attempt_finished(&br, timer, &result, verification.as_ref());
    let wait_ended = match &result {
        Err(AttemptError::Parked(park)) => {
            return park_request(sh, key, &br, park, verification).await;
        }
        Ok(Outcome::Bound | Outcome::AlreadyBound) => Some("bound"),
        Ok(Outcome::Failed(_)) | Err(AttemptError::Failed(_)) => Some("failed"),
        Err(AttemptError::Cancelled) => Some("gone"),
        // A transient error while waiting keeps the wait (and its watches).
        Err(AttemptError::Transient(_)) => None,
    };
    if let Some(how) = wait_ended {
        sh.diag.unparked(&key.namespace, &key.name, how);
    }
    let outcome = match result {
        Err(AttemptError::Transient(msg)) => {
            let n = retry + 1;
            sh.stats.set_local_retries(key, n);
            let delay = sh.cfg.backoff.jittered(n);
            tracing::warn!(request = %key, error = %msg, retry_in = ?delay, "transient error; will retry");
            return Next::After(delay);
        }
        Err(AttemptError::Cancelled) if !cancelled.is_set() => {
            // The Lease was lost, not the request: keep it for when this agent leads again.
            tracing::info!(request = %key, "node lease lost before binding; nothing bound");
            return Next::After(sh.cfg.lease_retry);
        }
        Err(AttemptError::Cancelled) => {
            tracing::info!(request = %key, "BindRequest deleted before binding; nothing bound");
            sh.stats.clear_local_retries(key);
            return Next::Forget;
        }
        Err(AttemptError::Failed(f)) => Outcome::Failed(f),
        // Returned above.
        Err(AttemptError::Parked(_)) => return Next::Forget,
        Ok(outcome) => outcome,
    };
    let next = settle(sh, key, br, outcome, verification, pod_bound).await;
    if next == Next::Forget {
        sh.stats.clear_local_retries(key);
    }
    next
}

/// A plugin waits for someone else (a DRA driver's binding conditions): the request goes
/// back to the queue, woken by a change of the claims it waits on or by the wait's timeout,
/// so no worker is held. The status says what it waits for (phase Pending, attempts
/// unchanged: waiting is not a failed attempt); it is written only when that changes.
async fn park_request(
    sh: &Shared,
    key: &Key,
    br: &BindRequest,
    park: &binding::Park,
    verification: Option<NodeVerification>,
) -> Next {
    sh.parking.park(key, &park.claims);
    sh.diag.parked(&key.namespace, &key.name, park);
    sh.stats.clear_local_retries(key);
    let reason = format!("waiting for {}", park.waiting_for);
    let current = br.status.as_ref();
    let unchanged = current.is_some_and(|s| {
        s.reason.as_deref() == Some(reason.as_str())
            && s.phase.as_deref() == Some(Phase::Pending.as_str())
    });
    tracing::info!(request = %key, waiting_for = %park.waiting_for, at_most = ?park.remaining,
        "parked until the claims change");
    if !unchanged {
        let status = BindRequestStatus {
            phase: Some(Phase::Pending.as_str().to_string()),
            reason: Some(reason),
            failed_attempts: current.and_then(|s| s.failed_attempts),
            node_verification: verification,
        };
        let rv = br.metadata.resource_version.as_deref();
        // A lost race (409) is fine: the next wake writes it again.
        if let Err(e) = sh
            .effects
            .patch_status(&key.namespace, &key.name, rv, &status)
            .await
        {
            tracing::warn!(request = %key, error = %e, "could not record the wait in the status");
        }
    }
    Next::After(park.remaining.max(std::time::Duration::from_millis(100)))
}

/// The attempt's result, and the verdicts when the pipeline ran.
type Attempt = (Result<Outcome, AttemptError>, Option<NodeVerification>);

/// `pod_bound` receives the pod's `PodBound` condition as the attempt read it.
async fn attempt(
    sh: &Shared,
    br: &BindRequest,
    cancelled: &Cancelled,
    pod_bound: &mut Option<PodCondition>,
) -> Attempt {
    match snapshot_and_run(sh, br, cancelled, pod_bound).await {
        Ok(done) => done,
        Err(e) => (Err(e), None),
    }
}

/// Takes the snapshot; `Err` for results reached before the pipeline runs.
async fn snapshot_and_run(
    sh: &Shared,
    br: &BindRequest,
    cancelled: &Cancelled,
    pod_bound: &mut Option<PodCondition>,
) -> Result<Attempt, AttemptError> {
    let me = sh.cfg.node_name.as_str();
    let req = binding::validate_request(br, me).map_err(AttemptError::Failed)?;
    let pod = sh
        .effects
        .get_pod(&req.namespace, &req.pod_name)
        .await
        .map_err(|e| AttemptError::Transient(format!("reading pod: {e}")))?;
    *pod_bound = pod.as_ref().and_then(pod_metadata::current_pod_bound);
    let uid = match binding::check_pod(br, &req, pod.as_ref(), me) {
        Ok(PodState::BoundHere) => return Ok((Ok(Outcome::AlreadyBound), None)),
        Ok(PodState::Unbound { uid }) => uid,
        Err(f) => return Err(AttemptError::Failed(f)),
    };
    let Some(pod) = pod else {
        return Err(AttemptError::Failed(Failure::PodNotFound {
            namespace: req.namespace,
            name: req.pod_name,
        }));
    };
    let Some(node) = sh.node.get(&ObjectRef::new(me)) else {
        return Err(AttemptError::Failed(Failure::NodeNotFound(me.to_string())));
    };
    let ctx = BindContext {
        node_name: me,
        request: &req,
        bind_request: br,
        pod: &pod,
        node: &node,
    };
    let binder = KubeBinder {
        effects: &sh.effects,
    };
    // A holder that lost the node Lease mid-attempt does not bind (lease.rs: it stops with
    // a third of the lease to spare, before anyone may take over).
    let still_wanted = || !cancelled.is_set() && sh.stats.is_leading();
    let report = binding::pipeline::run(&sh.registry, &ctx, &uid, &binder, &still_wanted).await;
    sh.diag.pipeline_ran(br, &report.stages);
    let verification = NodeVerification {
        node: me.to_string(),
        agent: Some(sh.cfg.identity.clone()),
        attempt: br.failed_attempts().saturating_add(1),
        observed_at: Some(jiff::Timestamp::now().to_string()),
        verdicts: report.verdicts,
    };
    let result = match report.result {
        Ok(true) => {
            // Emitted right after the bind: a later status-write failure retries the
            // attempt, which then finds the pod already bound and emits nothing. One Event,
            // on the pod, as KAI's binder records it (core/v1, component `binder`, so tools
            // watching for KAI's binder see bindlet's binds): the BindRequest records the
            // success in its status (phase and what was verified), and `explain` shows the
            // pod's Events with it.
            if let Some(r) = pod_metadata::pod_bound_report(
                &Outcome::Bound,
                &req.namespace,
                &req.pod_name,
                me,
                "",
            ) {
                sh.events.emit_as_component(
                    event(pod_ref(&pod), EventType::Normal, r.reason, r.message),
                    pod_metadata::KAI_BINDER_COMPONENT,
                );
            }
            Ok(Outcome::Bound)
        }
        Ok(false) => Ok(Outcome::AlreadyBound),
        Err(e) => Err(e),
    };
    Ok((result, Some(verification)))
}

/// Writes the status for an attempt's outcome (re-reading and recomputing on 409), emits
/// the failure Events, and returns when to look again.
async fn settle(
    sh: &Shared,
    key: &Key,
    mut br: BindRequest,
    outcome: Outcome,
    verification: Option<NodeVerification>,
    pod_bound: Option<PodCondition>,
) -> Next {
    for _ in 0..STATUS_WRITE_TRIES {
        let status = binding::next_status(
            &br,
            &outcome,
            sh.cfg.default_backoff_limit,
            &sh.cfg.node_name,
            verification.clone(),
        );
        let rv = br.metadata.resource_version.clone();
        match sh
            .effects
            .patch_status(&key.namespace, &key.name, rv.as_deref(), &status)
            .await
        {
            Ok(StatusWrite::Written) => {
                log_and_emit(sh, key, &br, &outcome, &status);
                if sh.cfg.pod_bound_condition {
                    write_pod_bound(sh, key, &br, &outcome, &status, pod_bound.as_ref()).await;
                }
                return next_after(sh, &outcome, &status);
            }
            Ok(StatusWrite::Gone) => return Next::Forget,
            Ok(StatusWrite::Conflict) => {
                match sh.effects.get_bind_request(&key.namespace, &key.name).await {
                    Ok(Some(live)) => {
                        if binding::is_settled(&live, sh.cfg.default_backoff_limit) {
                            return Next::Forget;
                        }
                        br = live;
                    }
                    Ok(None) => return Next::Forget,
                    Err(e) => {
                        let delay = retry_delay(sh, key);
                        tracing::warn!(request = %key, error = %e, retry_in = ?delay, "re-reading after a status conflict failed");
                        return Next::After(delay);
                    }
                }
            }
            Err(e) if e.is_refusal() => {
                let detail = format!("the API server refused this agent's status write: {e}");
                leave_alone(sh, key, &br, LeftAlone::StatusWriteRefused, detail);
                return Next::Forget;
            }
            Err(e) => {
                let delay = retry_delay(sh, key);
                tracing::warn!(request = %key, error = %e, retry_in = ?delay, "status write failed; will retry the request");
                return Next::After(delay);
            }
        }
    }
    Next::After(retry_delay(sh, key))
}

/// The next delay of this object's capped exponential backoff, counting this retry.
fn retry_delay(sh: &Shared, key: &Key) -> std::time::Duration {
    let n = sh.stats.local_retries(key) + 1;
    sh.stats.set_local_retries(key, n);
    sh.cfg.backoff.jittered(n)
}

/// Why the agent leaves a request alone (also its Event reason and metric label).
#[derive(Debug, Clone, Copy)]
pub(crate) enum LeftAlone {
    /// Labelled for this node, but its spec selects another.
    NotThisNode,
    /// A status write answered 400/403/422: the same write would be refused again.
    StatusWriteRefused,
}

impl LeftAlone {
    pub(crate) fn code(self) -> &'static str {
        match self {
            LeftAlone::NotThisNode => "NotThisNode",
            LeftAlone::StatusWriteRefused => "StatusWriteRefused",
        }
    }
}

/// Stops working on this version of the request: logged, counted and shown in
/// `/debug/state` once per resourceVersion, with one Warning Event. A later change to the
/// object (a new resourceVersion) is looked at again, once.
fn leave_alone(sh: &Shared, key: &Key, br: &BindRequest, why: LeftAlone, detail: String) {
    sh.stats.clear_local_retries(key);
    let version = br.metadata.resource_version.as_deref().unwrap_or("");
    if !sh.stats.leave_alone(key, version) {
        return;
    }
    tracing::warn!(request = %key, reason = why.code(), detail = %detail, "leaving this BindRequest alone");
    sh.diag
        .left_alone(&key.namespace, &key.name, why.code(), &detail);
    sh.events.emit(event(
        request_ref(br),
        EventType::Warning,
        why.code(),
        detail,
    ));
}

fn next_after(sh: &Shared, outcome: &Outcome, status: &BindRequestStatus) -> Next {
    match (outcome, status.phase.as_deref().and_then(Phase::parse)) {
        (Outcome::Failed(_), Some(Phase::Pending)) => {
            let attempts = status.failed_attempts.unwrap_or(1).max(1) as u32;
            Next::After(sh.cfg.backoff.jittered(attempts))
        }
        _ => Next::Forget,
    }
}

fn log_and_emit(
    sh: &Shared,
    key: &Key,
    br: &BindRequest,
    outcome: &Outcome,
    status: &BindRequestStatus,
) {
    let phase = status.phase.as_deref().unwrap_or("");
    let attempts = status.failed_attempts.unwrap_or(0);
    let reason = status.reason.as_deref().unwrap_or("");
    sh.diag.settled(br, outcome, status);
    match outcome {
        Outcome::Bound => {
            sh.stats.succeeded(true);
            tracing::info!(request = %key, node = %sh.cfg.node_name, "bound");
        }
        Outcome::AlreadyBound => {
            sh.stats.succeeded(false);
            tracing::info!(request = %key, node = %sh.cfg.node_name, "pod already bound here");
        }
        Outcome::Failed(f) => {
            sh.stats.failed(phase == "Failed");
            tracing::warn!(request = %key, phase, attempts, code = f.code(), detail = f.detail_code().unwrap_or(""), reason, "bind attempt failed");
            let limit = binding::backoff_limit(br, sh.cfg.default_backoff_limit);
            let note = if phase == "Failed" {
                format!("Binding failed, giving up (attempt {attempts}): {reason}")
            } else {
                format!("Binding attempt {attempts} of {limit} failed, will retry: {reason}")
            };
            sh.events.emit(event(
                request_ref(br),
                EventType::Warning,
                f.code(),
                note.clone(),
            ));
            // On the pod, KAI's `BindingError` (core/v1, component `binder`); none on a pod
            // that is not this request's (missing, recreated, bound by another binder).
            if let Some(r) = pod_metadata::pod_bound_report(
                outcome,
                &key.namespace,
                br.spec.pod_name.as_deref().unwrap_or_default(),
                &sh.cfg.node_name,
                reason,
            ) {
                let pod = reference_to::<Pod>(
                    Some(key.namespace.clone()),
                    br.spec.pod_name.clone(),
                    br.owner_pod_uid().map(str::to_string),
                );
                sh.events.emit_as_component(
                    event(pod, EventType::Warning, r.reason, r.message),
                    pod_metadata::KAI_BINDER_COMPONENT,
                );
            }
        }
    }
}

/// A BindRequest whose content cannot be decoded: Failed with the decoder's reason, once.
async fn report_undecodable(sh: &Shared, key: &Key, error: &str) -> Next {
    if !sh.stats.first_undecodable_report(key) {
        return Next::Forget;
    }
    let reason = Failure::Malformed(format!("cannot decode the BindRequest: {error}")).to_string();
    let status = BindRequestStatus {
        phase: Some(Phase::Failed.as_str().to_string()),
        reason: Some(reason.clone()),
        failed_attempts: Some(1),
        node_verification: None,
    };
    tracing::warn!(request = %key, reason = %reason, "malformed BindRequest");
    match sh
        .effects
        .force_status(&key.namespace, &key.name, &status)
        .await
    {
        Ok(_) => {
            let r = reference_to::<BindRequest>(
                Some(key.namespace.clone()),
                Some(key.name.clone()),
                None,
            );
            sh.events
                .emit(event(r, EventType::Warning, "MalformedRequest", reason));
            Next::Forget
        }
        Err(e) if e.is_refusal() => {
            // Left undecodable and unreported: logged once, counted, shown in /debug/state.
            tracing::warn!(request = %key, error = %e, "the API server refused the report of a malformed BindRequest; leaving it alone");
            sh.diag.left_alone(
                &key.namespace,
                &key.name,
                LeftAlone::StatusWriteRefused.code(),
                &format!("{reason}; reporting it was refused: {e}"),
            );
            Next::Forget
        }
        Err(e) => {
            sh.stats.forget_undecodable(key);
            let delay = retry_delay(sh, key);
            tracing::warn!(request = %key, error = %e, retry_in = ?delay, "could not report a malformed BindRequest; will retry");
            Next::After(delay)
        }
    }
}

/// Writes KAI's `PodBound` condition for the attempt on the pod (best effort, like KAI's
/// binder: a failure is logged; the request's status already says what happened), unless
/// the pod read by the attempt (`current`) already has it. Guarded by the pod UID of the
/// request's owner reference; without one nothing is written.
async fn write_pod_bound(
    sh: &Shared,
    key: &Key,
    br: &BindRequest,
    outcome: &Outcome,
    status: &BindRequestStatus,
    current: Option<&PodCondition>,
) {
    let Some(pod) = br.spec.pod_name.as_deref() else {
        return;
    };
    let Some(uid) = br.owner_pod_uid() else {
        return;
    };
    let reason = status.reason.as_deref().unwrap_or_default();
    let Some(report) =
        pod_metadata::pod_bound_report(outcome, &key.namespace, pod, &sh.cfg.node_name, reason)
    else {
        return;
    };
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let Some(body) = pod_metadata::pod_bound_patch(uid, &report, current, &now) else {
        return; // The pod already says so.
    };
    match sh
        .effects
        .patch_pod_status(&key.namespace, pod, &body)
        .await
    {
        Ok(()) => {}
        // Gone or recreated: not this request's pod any more.
        Err(e) if matches!(e.code(), Some(404 | 409)) => {}
        Err(e) => {
            tracing::warn!(request = %key, error = %e, "could not write the pod's PodBound condition")
        }
    }
}

struct KubeBinder<'a> {
    effects: &'a Effects,
}

#[async_trait::async_trait]
impl Binder for KubeBinder<'_> {
    async fn bind(&self, ctx: &BindContext<'_>, pod_uid: &str) -> Result<(), BindFault> {
        // Only ever to this agent's own node.
        // KAI's pod annotations travel on the Binding (see `binding::pod_metadata`).
        let annotations = pod_metadata::bind_annotations(&ctx.bind_request.spec);
        self.effects
            .bind_pod_annotated(
                &ctx.request.namespace,
                &ctx.request.pod_name,
                pod_uid,
                ctx.node_name,
                &annotations,
            )
            .await
    }
}

fn event(regarding: ObjectReference, type_: EventType, reason: &str, note: String) -> EventSpec {
    EventSpec {
        regarding,
        type_,
        reason: reason.to_string(),
        note,
    }
}

fn pod_ref(pod: &Pod) -> ObjectReference {
    object_ref(pod)
}

fn request_ref(br: &BindRequest) -> ObjectReference {
    object_ref(br)
}
