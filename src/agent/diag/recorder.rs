//! The agent's observer: counts into the metrics and keeps a bounded timeline of the last
//! N BindRequests. The agent calls it at a few points (attempt start and end, pipeline
//! stages, status written, every API call); the server reads snapshots of it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::api::{BindRequest, BindRequestStatus, NodeVerification, VerdictOutcome};
use crate::binding::{AttemptError, Failure, Outcome};
use crate::kubeapi::{ApiCall, ApiError, CallObserver};

use super::facts::{GpuFacts, NodeFacts, VolumeFacts};
use super::metrics::{
    ApiLabels, BindLabels, CheckLabels, GpuLabels, HolderLabels, Metrics, ReasonLabels,
    ResultLabels, StageLabels, WaitLabels,
};
use super::system::{NodeResources, ProcessFacts};
use super::waits::{PermissionCheck, WaitRecord};

/// Requests kept in the timeline unless configured otherwise.
pub const DEFAULT_HISTORY: usize = 256;
/// Attempts kept per request (the oldest are dropped; the count is kept).
const ATTEMPTS_KEPT: usize = 8;
/// Verdicts kept per attempt.
const VERDICTS_KEPT: usize = 32;
/// Longest text (reason, message) kept, in bytes.
const TEXT_MAX: usize = 300;

/// One stage of an attempt.
#[derive(Debug, Clone, Serialize)]
pub struct StageRecord {
    pub stage: &'static str,
    pub seconds: f64,
}

/// One check's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct VerdictRecord {
    pub plugin: String,
    pub check: String,
    pub outcome: VerdictOutcome,
    pub message: String,
}

/// One attempt at binding a request.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptRecord {
    /// Wall-clock start (RFC 3339).
    pub started_at: String,
    /// None while running.
    pub seconds: Option<f64>,
    /// running | bound | already_bound | failed | transient | cancelled | parked
    pub result: &'static str,
    pub reason: Option<String>,
    pub stages: Vec<StageRecord>,
    pub verdicts: Vec<VerdictRecord>,
}

/// What the agent did with one BindRequest.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    pub namespace: String,
    pub name: String,
    pub pod: Option<String>,
    pub created_at: Option<String>,
    /// The status phase and reason last written by this agent.
    pub phase: Option<String>,
    pub reason: Option<String>,
    /// Creation to bound, when this agent bound it.
    pub bind_latency_seconds: Option<f64>,
    pub attempts_total: u32,
    /// The last few attempts, oldest first.
    pub attempts: VecDeque<AttemptRecord>,
    /// The BindRequest was deleted (this agent stopped working on it).
    pub deleted: bool,
    /// For the oldest-pending age: creation time, and when an attempt last started.
    #[serde(skip)]
    created: Option<jiff::Timestamp>,
    #[serde(skip)]
    last_attempt: Option<Instant>,
}

impl RequestRecord {
    /// Still being worked on: not settled, not deleted, and an attempt running or one
    /// started within `window` (a retrying request is attempted at least every retry-max).
    fn pending_at(&self, now: Instant, window: Duration) -> bool {
        let settled = matches!(self.phase.as_deref(), Some("Succeeded") | Some("Failed"));
        let running = self.attempts.back().is_some_and(|a| a.result == "running");
        let recent = self
            .last_attempt
            .is_some_and(|t| now.saturating_duration_since(t) <= window);
        !settled && !self.deleted && (running || recent)
    }
}

/// Returned by [`Recorder::attempt_started`]; hand it back to [`Recorder::attempt_finished`].
#[derive(Debug)]
pub struct AttemptTimer {
    started: Instant,
}

/// Why the agent is or is not ready.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// The BindRequest (and Node) watches delivered their first full list.
    pub watch_synced: bool,
    /// This agent knows who holds the node Lease (itself or another).
    pub lease_known: bool,
    /// not_configured | loading | unavailable | loaded
    pub gpus: &'static str,
    /// The permission self-check: checking | ok | missing | unknown
    pub permissions: &'static str,
    /// The API calls the agent makes but may not (`verb group/resource`).
    pub missing_permissions: Vec<String>,
}

impl Readiness {
    /// What is still missing, for the `/readyz` body.
    pub fn missing(&self) -> Vec<String> {
        let mut v = Vec::new();
        if !self.watch_synced {
            v.push("BindRequest watch not synced".to_string());
        }
        if !self.lease_known {
            v.push("node Lease state not known yet".to_string());
        }
        if self.gpus == "loading" {
            v.push("GPU inventory still loading".to_string());
        }
        if self.permissions == "checking" {
            v.push("permission self-check not done yet".to_string());
        }
        if !self.missing_permissions.is_empty() {
            v.push(format!(
                "missing permissions: {}",
                self.missing_permissions.join(", ")
            ));
        }
        v
    }
}

/// The node Lease as this agent sees it.
#[derive(Debug, Clone, Serialize)]
pub struct LeaseView {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub identity: Option<String>,
    pub held: bool,
    /// The holder last observed (empty: nobody); None until first observed.
    pub holder: Option<String>,
}

/// Everything `/debug/state` shows.
#[derive(Debug, Clone, Serialize)]
pub struct DebugState {
    pub node: Option<String>,
    pub readiness: Readiness,
    pub lease: LeaseView,
    pub queue_depth: usize,
    pub in_flight: usize,
    pub totals: Totals,
    pub gpus: GpuFacts,
    pub volumes: VolumeFacts,
    /// The node's memory, CPUs and load; None where they cannot be read.
    pub node_resources: Option<NodeResources>,
    /// This agent's own process.
    pub process: Option<ProcessFacts>,
    /// Age of the oldest request this agent is still working on (see `oldest_pending_seconds`).
    pub oldest_pending_seconds: f64,
    /// Most recent first.
    pub requests: Vec<RequestRecord>,
    /// Requests this agent left alone (bounded, most recent first).
    pub left_alone: Vec<LeftAloneRecord>,
    /// Requests parked until DRA binding conditions are met.
    pub dra_waits: Vec<WaitRecord>,
    /// The permission self-check made at start.
    pub permissions: PermissionCheck,
}

/// A BindRequest the agent stopped working on without writing its status.
#[derive(Debug, Clone, Serialize)]
pub struct LeftAloneRecord {
    pub namespace: String,
    pub name: String,
    /// `NotThisNode` | `StatusWriteRefused`
    pub reason: String,
    pub detail: String,
    pub at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    pub bound: u64,
    pub already_bound: u64,
    pub failed_attempts: u64,
    pub failed_final: u64,
}

/// What diagnostics read from the running agent. The agent implements it, so diagnostics
/// import nothing of the agent and the dependency runs one way (agent → diag).
pub trait AgentView: Send + Sync {
    /// Whether this agent holds the node Lease.
    fn is_leading(&self) -> bool;
    /// Whether the BindRequest and Node watches have synced.
    fn is_synced(&self) -> bool;
    /// The agent's counters since it started.
    fn totals(&self) -> Totals;
    /// The recorder this agent reports to.
    fn recorder(&self) -> &Arc<Recorder>;
}

/// The agent's work queue, as diagnostics see it.
pub trait QueueView: Send + Sync {
    /// Requests waiting to be worked on.
    fn depth(&self) -> usize;
    /// Requests a worker is on now.
    fn in_flight(&self) -> usize;
}

/// Who the agent is, told once at start.
#[derive(Debug, Clone)]
pub struct AgentIdentity {
    pub node_name: String,
    pub identity: String,
    pub lease_name: String,
    pub lease_namespace: String,
    /// The longest retry delay (`--retry-max`): how long a pending request may go unseen.
    pub retry_max: Duration,
}

#[derive(Default)]
struct Inner {
    requests: VecDeque<RequestRecord>,
    left_alone: VecDeque<LeftAloneRecord>,
    node: Option<String>,
    identity: Option<String>,
    lease: Option<(String, String)>,
    queue: Option<Arc<dyn QueueView>>,
    lease_holder: Option<String>,
    facts: Option<Arc<dyn NodeFacts>>,
    /// The agent's longest retry delay; None until the agent starts.
    retry_max: Option<Duration>,
    waits: std::collections::BTreeMap<(String, String), WaitRecord>,
    permissions: PermissionCheck,
}

impl Inner {
    /// The newest timeline record of `br`, if it is still kept.
    fn latest_record(&mut self, br: &BindRequest) -> Option<&mut RequestRecord> {
        let key = key_of(br);
        self.requests
            .iter_mut()
            .rev()
            .find(|r| r.namespace == key.0 && r.name == key.1)
    }
}

/// How long after its last attempt an unsettled request still counts as pending: two
/// retry delays plus slack for a busy queue. Past that the agent no longer works on it
/// (deleted while the watch was down, or settled by another agent while this one waited
/// for the Lease).
fn pending_window(retry_max: Option<Duration>) -> Duration {
    retry_max.unwrap_or(Duration::from_secs(60)) * 2 + Duration::from_secs(30)
}

/// Age of the oldest pending request, in seconds (0 when none).
fn oldest_pending(
    requests: &VecDeque<RequestRecord>,
    now: Instant,
    wall: jiff::Timestamp,
    window: Duration,
) -> f64 {
    requests
        .iter()
        .filter(|r| r.pending_at(now, window))
        .filter_map(|r| r.created)
        .map(|c| wall.duration_since(c).as_secs_f64().max(0.0))
        .fold(0.0, f64::max)
}

/// Metrics and timelines of one agent. Cheap to call from the hot path: a counter bump
/// and one short lock over a bounded ring.
pub struct Recorder {
    metrics: Metrics,
    history: usize,
    inner: Mutex<Inner>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new(DEFAULT_HISTORY)
    }
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("history", &self.history)
            .finish_non_exhaustive()
    }
}

fn truncate(s: &str) -> String {
    if s.len() <= TEXT_MAX {
        return s.to_string();
    }
    let mut cut = TEXT_MAX;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &s[..cut])
}

fn key_of(br: &BindRequest) -> (String, String) {
    (
        br.metadata.namespace.clone().unwrap_or_default(),
        br.metadata.name.clone().unwrap_or_default(),
    )
}

impl Recorder {
    /// A recorder keeping the last `history` requests (at least 1).
    pub fn new(history: usize) -> Self {
        Recorder {
            metrics: Metrics::default(),
            history: history.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the source of GPU and volume facts (the GPU inventory calls this).
    pub fn set_facts(&self, facts: Arc<dyn NodeFacts>) {
        self.lock().facts = Some(facts);
    }

    /// Called once by the agent at start.
    pub fn agent_started(&self, who: AgentIdentity, queue: Arc<dyn QueueView>) {
        let mut i = self.lock();
        i.node = Some(who.node_name);
        i.identity = Some(who.identity);
        i.lease = Some((who.lease_name, who.lease_namespace));
        i.queue = Some(queue);
        i.retry_max = Some(who.retry_max);
    }

    /// The agent stopped working on a request without writing its status (called once per
    /// version of the object).
    pub fn left_alone(&self, namespace: &str, name: &str, reason: &'static str, detail: &str) {
        self.metrics
            .requests_left_alone
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
        let mut i = self.lock();
        i.left_alone
            .retain(|r| !(r.namespace == namespace && r.name == name));
        if i.left_alone.len() >= self.history {
            i.left_alone.pop_front();
        }
        i.left_alone.push_back(LeftAloneRecord {
            namespace: namespace.to_string(),
            name: name.to_string(),
            reason: reason.to_string(),
            detail: truncate(detail),
            at: jiff::Timestamp::now().to_string(),
        });
    }

    /// The Lease's holder as just read or written (empty: nobody).
    pub fn lease_observed(&self, holder: &str) {
        let mut i = self.lock();
        if i.lease_holder.as_deref() != Some(holder) {
            // The first observation is not a change: nothing was known before.
            if i.lease_holder.is_some() {
                self.metrics.lease_transitions.inc();
            }
            i.lease_holder = Some(holder.to_string());
        }
    }

    /// The BindRequest is gone (deleted): it no longer counts as pending.
    pub fn request_gone(&self, namespace: &str, name: &str) {
        self.unparked(namespace, name, "gone");
        let mut i = self.lock();
        for r in i
            .requests
            .iter_mut()
            .filter(|r| r.namespace == namespace && r.name == name)
        {
            r.deleted = true;
        }
    }

    /// A request was parked on `park` (again: its first park time is kept).
    pub fn parked(&self, namespace: &str, name: &str, park: &crate::binding::Park) {
        let mut i = self.lock();
        let rec = i
            .waits
            .entry((namespace.to_string(), name.to_string()))
            .or_insert_with(|| WaitRecord {
                namespace: namespace.to_string(),
                name: name.to_string(),
                claims: Vec::new(),
                waiting_for: String::new(),
                since: jiff::Timestamp::now().to_string(),
                seconds: 0.0,
                remaining_seconds: 0.0,
                started: Some(Instant::now()),
            });
        rec.claims = park
            .claims
            .iter()
            .map(|c| format!("{}/{}", c.namespace, c.name))
            .collect();
        rec.waiting_for = truncate(&park.waiting_for);
        rec.remaining_seconds = park.remaining.as_secs_f64();
        let n = i.waits.len();
        self.metrics.dra_binding_waits.set(n as i64);
    }

    /// A parked request's wait ended (`outcome`: bound | failed | gone | other); nothing
    /// when it was not parked.
    pub fn unparked(&self, namespace: &str, name: &str, outcome: &'static str) {
        let mut i = self.lock();
        let Some(rec) = i.waits.remove(&(namespace.to_string(), name.to_string())) else {
            return;
        };
        let n = i.waits.len();
        drop(i);
        self.metrics.dra_binding_waits.set(n as i64);
        if let Some(t) = rec.started {
            self.metrics
                .dra_binding_wait_seconds
                .get_or_create(&WaitLabels {
                    outcome: outcome.to_string(),
                })
                .observe(t.elapsed().as_secs_f64());
        }
    }

    /// The result of the permission self-check.
    pub fn permissions_checked(&self, check: PermissionCheck) {
        self.metrics
            .permissions_missing
            .set(check.missing().len() as i64);
        self.lock().permissions = check;
    }

    /// One API call and its answer.
    pub fn api_request(&self, what: ApiCall, result: Result<(), &ApiError>) {
        let code = match result {
            // The API server answers 201 to creates, 200 to everything else we call.
            Ok(()) if what.verb == "create" => "201".to_string(),
            Ok(()) => "200".to_string(),
            Err(e) => error_code(e),
        };
        self.count_api_request(what, code);
    }

    /// A `get_opt` call: `Ok(false)` was a 404 answer.
    pub fn api_request_opt(&self, what: ApiCall, result: Result<bool, &ApiError>) {
        let code = match result {
            Ok(true) => "200".to_string(),
            Ok(false) => "404".to_string(),
            Err(e) => error_code(e),
        };
        self.count_api_request(what, code);
    }

    fn count_api_request(&self, what: ApiCall, code: String) {
        self.metrics
            .api_requests
            .get_or_create(&ApiLabels {
                verb: what.verb.to_string(),
                resource: what.resource.to_string(),
                code,
            })
            .inc();
    }

    /// An attempt begins for `br`.
    pub fn attempt_started(&self, br: &BindRequest) -> AttemptTimer {
        let key = key_of(br);
        let mut i = self.lock();
        let mut rec = match i
            .requests
            .iter()
            .position(|r| r.namespace == key.0 && r.name == key.1)
        {
            // Active requests move to the back so the ring evicts idle ones first.
            Some(pos) => i.requests.remove(pos),
            None => None,
        }
        .unwrap_or_else(|| RequestRecord {
            namespace: key.0,
            name: key.1,
            pod: br.spec.pod_name.clone(),
            created_at: br
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string()),
            phase: None,
            reason: None,
            bind_latency_seconds: None,
            attempts_total: 0,
            attempts: VecDeque::new(),
            deleted: false,
            created: br.metadata.creation_timestamp.as_ref().map(|t| t.0),
            last_attempt: None,
        });
        // A request recreated under the same name is a new one: its own creation time.
        rec.deleted = false;
        rec.created = br.metadata.creation_timestamp.as_ref().map(|t| t.0);
        rec.last_attempt = Some(Instant::now());
        rec.attempts_total = rec.attempts_total.saturating_add(1);
        if rec.attempts.len() >= ATTEMPTS_KEPT {
            rec.attempts.pop_front();
        }
        rec.attempts.push_back(AttemptRecord {
            started_at: jiff::Timestamp::now().to_string(),
            seconds: None,
            result: "running",
            reason: None,
            stages: Vec::new(),
            verdicts: Vec::new(),
        });
        while i.requests.len() >= self.history {
            i.requests.pop_front();
        }
        i.requests.push_back(rec);
        AttemptTimer {
            started: Instant::now(),
        }
    }

    /// The pipeline ran for `br`, with these stage durations.
    pub fn pipeline_ran(&self, br: &BindRequest, stages: &[(&'static str, Duration)]) {
        for (stage, d) in stages {
            self.metrics
                .stage_duration
                .get_or_create(&StageLabels {
                    stage: (*stage).to_string(),
                })
                .observe(d.as_secs_f64());
        }
        self.with_current_attempt(br, |a| {
            a.stages = stages
                .iter()
                .map(|(stage, d)| StageRecord {
                    stage,
                    seconds: d.as_secs_f64(),
                })
                .collect();
        });
    }

    /// The attempt ended (before its status was written).
    pub fn attempt_finished(
        &self,
        br: &BindRequest,
        timer: AttemptTimer,
        result: &Result<Outcome, AttemptError>,
        verification: Option<&NodeVerification>,
    ) {
        let (label, reason) = match result {
            Ok(Outcome::Bound) => ("bound", None),
            Ok(Outcome::AlreadyBound) => ("already_bound", None),
            Ok(Outcome::Failed(f)) | Err(AttemptError::Failed(f)) => {
                if let Failure::PreBindFailed { plugin, kind, .. } = f {
                    self.metrics
                        .plugin_errors
                        .get_or_create(&super::metrics::PluginErrorLabels {
                            plugin: plugin.clone(),
                            code: kind.code().to_string(),
                        })
                        .inc();
                }
                let code = match f.detail_code() {
                    Some(detail) => format!("{}/{detail}", f.code()),
                    None => f.code().to_string(),
                };
                ("failed", Some(format!("{code}: {f}")))
            }
            Err(AttemptError::Transient(m)) => ("transient", Some(m.clone())),
            Err(AttemptError::Cancelled) => ("cancelled", None),
            Err(AttemptError::Parked(p)) => ("parked", Some(p.waiting_for.clone())),
        };
        self.metrics
            .attempts
            .get_or_create(&ResultLabels {
                result: label.to_string(),
            })
            .inc();
        let verdicts = verification.map(|v| v.verdicts.as_slice()).unwrap_or(&[]);
        for check in volume_check_failures(result, verdicts) {
            self.metrics
                .volume_check_failures
                .get_or_create(&CheckLabels { check })
                .inc();
        }
        let seconds = timer.started.elapsed().as_secs_f64();
        self.with_current_attempt(br, |a| {
            a.seconds = Some(seconds);
            a.result = label;
            a.reason = reason.as_deref().map(truncate);
            a.verdicts = verdicts
                .iter()
                .take(VERDICTS_KEPT)
                .map(|v| VerdictRecord {
                    plugin: v.plugin.clone(),
                    check: v.check.clone(),
                    outcome: v.outcome,
                    message: truncate(&v.message),
                })
                .collect();
        });
    }

    /// The status for `outcome` was written.
    pub fn settled(&self, br: &BindRequest, outcome: &Outcome, status: &BindRequestStatus) {
        let phase = status.phase.as_deref().unwrap_or("");
        let (label, reason) = match outcome {
            Outcome::Bound => ("bound", ""),
            Outcome::AlreadyBound => ("already_bound", ""),
            Outcome::Failed(f) if phase == "Failed" => ("failed_final", f.code()),
            Outcome::Failed(f) => ("failed_retrying", f.code()),
        };
        self.metrics
            .binds
            .get_or_create(&BindLabels {
                outcome: label.to_string(),
                reason: reason.to_string(),
            })
            .inc();
        let latency = match (outcome, &br.metadata.creation_timestamp) {
            (Outcome::Bound, Some(created)) => {
                let d = jiff::Timestamp::now().duration_since(created.0);
                // Creation timestamps have 1 s resolution: never report a negative time.
                let secs = d.as_secs_f64().max(0.0);
                self.metrics.bind_latency.observe(secs);
                Some(secs)
            }
            _ => None,
        };
        let mut i = self.lock();
        if let Some(r) = i.latest_record(br) {
            r.phase = status.phase.clone();
            r.reason = status.reason.as_deref().map(truncate);
            if latency.is_some() {
                r.bind_latency_seconds = latency;
            }
        }
    }

    fn with_current_attempt(&self, br: &BindRequest, f: impl FnOnce(&mut AttemptRecord)) {
        let mut i = self.lock();
        if let Some(a) = i.latest_record(br).and_then(|r| r.attempts.back_mut()) {
            f(a);
        }
    }

    fn gpus(&self) -> GpuFacts {
        let facts = self.lock().facts.clone();
        facts.map(|f| f.gpus()).unwrap_or(GpuFacts::NotConfigured)
    }

    /// Readiness now: watches synced, Lease state known, GPU inventory settled.
    pub fn readiness(&self, stats: &dyn AgentView) -> Readiness {
        let gpus = gpu_state(&self.gpus());
        let lease_known = self.lock().lease_holder.is_some();
        let watch_synced = stats.is_synced();
        let permissions = self.lock().permissions.clone();
        Readiness {
            ready: watch_synced && lease_known && gpus != "loading" && permissions.allows_ready(),
            watch_synced,
            lease_known,
            gpus,
            permissions: permissions.word(),
            missing_permissions: permissions.missing().to_vec(),
        }
    }

    /// Everything `/debug/state` shows.
    pub fn debug_state(&self, stats: &dyn AgentView) -> DebugState {
        let readiness = self.readiness(stats);
        let (gpus, volumes) = {
            let facts = self.lock().facts.clone();
            match facts {
                Some(f) => (f.gpus(), f.volumes()),
                None => (GpuFacts::NotConfigured, VolumeFacts::NotConfigured),
            }
        };
        let supported = sysinfo::IS_SUPPORTED_SYSTEM;
        let system = &self.metrics.system;
        let node_resources = supported.then(|| system.node());
        let process = system.process();
        let oldest = self.oldest_pending_seconds(stats);
        let i = self.lock();
        let (depth, in_flight) = i
            .queue
            .as_ref()
            .map(|q| (q.depth(), q.in_flight()))
            .unwrap_or((0, 0));
        DebugState {
            node: i.node.clone(),
            readiness,
            lease: LeaseView {
                name: i.lease.as_ref().map(|l| l.0.clone()),
                namespace: i.lease.as_ref().map(|l| l.1.clone()),
                identity: i.identity.clone(),
                held: stats.is_leading(),
                holder: i.lease_holder.clone(),
            },
            queue_depth: depth,
            in_flight,
            totals: stats.totals(),
            gpus,
            volumes,
            node_resources,
            process,
            oldest_pending_seconds: oldest,
            requests: i.requests.iter().rev().cloned().collect(),
            left_alone: i.left_alone.iter().rev().cloned().collect(),
            dra_waits: i
                .waits
                .values()
                .map(|w| WaitRecord {
                    seconds: w.started.map_or(0.0, |t| t.elapsed().as_secs_f64()),
                    ..w.clone()
                })
                .collect(),
            permissions: i.permissions.clone(),
        }
    }

    /// Age of the oldest request this agent attempted and has not settled; 0 while it
    /// does not hold the Lease (the holder reports it then).
    fn oldest_pending_seconds(&self, stats: &dyn AgentView) -> f64 {
        if !stats.is_leading() {
            return 0.0;
        }
        let i = self.lock();
        oldest_pending(
            &i.requests,
            Instant::now(),
            jiff::Timestamp::now(),
            pending_window(i.retry_max),
        )
    }

    /// OpenMetrics text, with the gauges refreshed from the current state.
    pub fn encode_metrics(&self, stats: &dyn AgentView) -> String {
        let readiness = self.readiness(stats);
        let gpus = self.gpus();
        self.metrics
            .oldest_pending
            .set(self.oldest_pending_seconds(stats));
        {
            let i = self.lock();
            let (depth, in_flight) = i
                .queue
                .as_ref()
                .map(|q| (q.depth(), q.in_flight()))
                .unwrap_or((0, 0));
            let m = &self.metrics;
            m.queue_depth.set(depth as i64);
            m.in_flight.set(in_flight as i64);
            m.lease_held.set(i64::from(stats.is_leading()));
            m.lease_holder.clear();
            if let Some(h) = &i.lease_holder {
                m.lease_holder
                    .get_or_create(&HolderLabels { holder: h.clone() })
                    .set(1);
            }
            m.ready.set(i64::from(readiness.ready));
        }
        // Rebuilt from the inventory each scrape: a GPU that disappears stops being reported.
        self.metrics.gpu_healthy.clear();
        if let GpuFacts::Loaded { devices } = gpus {
            for d in devices {
                self.metrics
                    .gpu_healthy
                    .get_or_create(&GpuLabels {
                        gpu: d.index.to_string(),
                        uuid: d.uuid.clone(),
                    })
                    .set(i64::from(d.healthy));
            }
        }
        self.metrics.encode()
    }
}

/// The failed volume checks of one attempt, by check name. A failed check under `warn` is
/// a `Warn` verdict; under `enforce` the volumes plugin refuses from `pre_bind` without a
/// verdict, so that refusal counts as `refused` (its check name is not kept).
fn volume_check_failures(
    result: &Result<Outcome, AttemptError>,
    verdicts: &[crate::api::Verdict],
) -> Vec<String> {
    let mut out: Vec<String> = verdicts
        .iter()
        .filter(|v| v.plugin == "volumes")
        .filter(|v| matches!(v.outcome, VerdictOutcome::Fail | VerdictOutcome::Warn))
        .map(|v| v.check.clone())
        .collect();
    let refused = match result {
        Ok(Outcome::Failed(f)) | Err(AttemptError::Failed(f)) => {
            matches!(f, Failure::PreBindFailed { plugin, .. } if plugin == "volumes")
        }
        _ => false,
    };
    if refused {
        out.push("refused".to_string());
    }
    out
}

fn error_code(e: &ApiError) -> String {
    match e {
        ApiError::Status { code, .. } => code.to_string(),
        ApiError::Timeout(_) => "timeout".to_string(),
        ApiError::Transport(_) => "error".to_string(),
        ApiError::Decode(_) => "decode_error".to_string(),
    }
}

fn gpu_state(g: &GpuFacts) -> &'static str {
    match g {
        GpuFacts::NotConfigured => "not_configured",
        GpuFacts::Loading => "loading",
        GpuFacts::Unavailable { .. } => "unavailable",
        GpuFacts::Loaded { .. } => "loaded",
    }
}

impl CallObserver for Recorder {
    fn api_request(&self, what: ApiCall, result: Result<(), &ApiError>) {
        Recorder::api_request(self, what, result)
    }
    fn api_request_opt(&self, what: ApiCall, result: Result<bool, &ApiError>) {
        Recorder::api_request_opt(self, what, result)
    }
}

impl<T: AgentView + ?Sized> AgentView for Arc<T> {
    fn is_leading(&self) -> bool {
        (**self).is_leading()
    }
    fn is_synced(&self) -> bool {
        (**self).is_synced()
    }
    fn totals(&self) -> Totals {
        (**self).totals()
    }
    fn recorder(&self) -> &Arc<Recorder> {
        (**self).recorder()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn br(name: &str) -> BindRequest {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "scheduling.run.ai/v1alpha2",
            "kind": "BindRequest",
            "metadata": { "name": name, "namespace": "ns", "creationTimestamp": "2020-01-01T00:00:00Z" },
            "spec": { "podName": name, "selectedNode": "n1" }
        }))
        .expect("BindRequest")
    }

    #[test]
    fn the_timeline_stays_bounded() {
        let r = Recorder::new(10);
        for i in 0..1000 {
            let b = br(&format!("p-{i}"));
            // Many attempts each: kept per request is bounded too.
            for _ in 0..20 {
                let t = r.attempt_started(&b);
                r.pipeline_ran(&b, &[("validate", Duration::from_micros(5))]);
                let failed = Err(AttemptError::Failed(Failure::Malformed("x".repeat(5000))));
                r.attempt_finished(&b, t, &failed, None);
            }
        }
        let i = r.lock();
        assert_eq!(i.requests.len(), 10);
        assert_eq!(i.requests.back().map(|x| x.name.as_str()), Some("p-999"));
        for rec in &i.requests {
            assert_eq!(rec.attempts_total, 20);
            assert_eq!(rec.attempts.len(), ATTEMPTS_KEPT);
            let reason = rec.attempts[0].reason.as_deref().unwrap_or("");
            assert!(reason.len() <= TEXT_MAX + 3, "{}", reason.len());
        }
    }

    #[test]
    fn a_failed_plugin_step_is_counted_and_recorded_with_the_plugin_code() {
        let r = Recorder::new(10);
        let b = br("p");
        let t = r.attempt_started(&b);
        let failed = Err(AttemptError::Failed(Failure::PreBindFailed {
            plugin: "volumes".into(),
            kind: crate::binding::PluginErrorKind::ObjectMissing,
            message: "volume data: PersistentVolumeClaim ns/c does not exist".into(),
        }));
        r.attempt_finished(&b, t, &failed, None);
        let text = r.metrics.encode();
        assert!(
            text.contains(
                r#"bindlet_plugin_errors_total{plugin="volumes",code="ObjectMissing"} 1"#
            ),
            "{text}"
        );
        let i = r.lock();
        let reason = i.requests[0].attempts[0].reason.as_deref().unwrap_or("");
        assert!(
            reason.starts_with("PreBindFailed/ObjectMissing: pre-bind step volumes failed"),
            "{reason}"
        );
    }

    #[test]
    fn an_active_request_is_not_evicted_first() {
        let r = Recorder::new(3);
        let (a, b, c, d) = (br("a"), br("b"), br("c"), br("d"));
        for x in [&a, &b, &c] {
            r.attempt_started(x);
        }
        r.attempt_started(&a); // a retries: now the most recent
        r.attempt_started(&d); // evicts b, the idlest
        let names: Vec<String> = r.lock().requests.iter().map(|x| x.name.clone()).collect();
        assert_eq!(names, ["c", "a", "d"]);
    }

    #[test]
    fn oldest_pending_counts_only_requests_still_worked_on() {
        let now = Instant::now();
        let wall = jiff::Timestamp::now();
        let window = Duration::from_secs(150);
        let rec = |age_s: i64, phase: Option<&str>, since_attempt_s: u64, result, deleted| {
            let created = wall
                .checked_sub(jiff::SignedDuration::from_secs(age_s))
                .ok();
            RequestRecord {
                namespace: "ns".into(),
                name: format!("r{age_s}"),
                pod: None,
                created_at: None,
                phase: phase.map(str::to_string),
                reason: None,
                bind_latency_seconds: None,
                attempts_total: 1,
                attempts: VecDeque::from([AttemptRecord {
                    started_at: String::new(),
                    seconds: None,
                    result,
                    reason: None,
                    stages: Vec::new(),
                    verdicts: Vec::new(),
                }]),
                deleted,
                created,
                last_attempt: now.checked_sub(Duration::from_secs(since_attempt_s)),
            }
        };
        // (records, expected age of the oldest pending)
        let cases: Vec<(Vec<RequestRecord>, f64)> = vec![
            (vec![], 0.0),
            // Retrying (Pending) and attempted recently: counts.
            (vec![rec(900, Some("Pending"), 10, "failed", false)], 900.0),
            // Settled either way: does not count.
            (vec![rec(900, Some("Succeeded"), 10, "bound", false)], 0.0),
            (vec![rec(900, Some("Failed"), 10, "failed", false)], 0.0),
            // Deleted while retrying: does not count.
            (vec![rec(900, Some("Pending"), 10, "failed", true)], 0.0),
            // No attempt for longer than the window: no longer worked on here.
            (vec![rec(900, Some("Pending"), 600, "failed", false)], 0.0),
            // ... unless an attempt is still running (e.g. waiting for a volume).
            (vec![rec(900, None, 600, "running", false)], 900.0),
            // The oldest of several.
            (
                vec![
                    rec(30, None, 1, "running", false),
                    rec(400, Some("Pending"), 5, "transient", false),
                    rec(2000, Some("Succeeded"), 5, "bound", false),
                ],
                400.0,
            ),
        ];
        for (i, (records, want)) in cases.into_iter().enumerate() {
            let got = oldest_pending(&VecDeque::from(records), now, wall, window);
            assert!((got - want).abs() < 1.0, "case {i}: {got} != {want}");
        }
    }

    #[test]
    fn volume_check_failures_are_counted_in_both_modes() {
        use crate::api::Verdict;
        let v = |plugin: &str, check: &str, outcome| Verdict {
            plugin: plugin.into(),
            check: check.into(),
            outcome,
            message: String::new(),
        };
        let warned = [
            v("volumes", "space", VerdictOutcome::Warn),
            v("volumes", "host-path", VerdictOutcome::Pass),
            v("node", "taints", VerdictOutcome::Fail),
        ];
        assert_eq!(
            volume_check_failures(&Ok(Outcome::Bound), &warned),
            ["space"]
        );
        let refused = Err(AttemptError::Failed(Failure::PreBindFailed {
            plugin: "volumes".into(),
            kind: crate::binding::PluginErrorKind::ObjectMissing,
            message: "volume data: hostPath /x does not exist".into(),
        }));
        assert_eq!(volume_check_failures(&refused, &[]), ["refused"]);
        let other = Err(AttemptError::Failed(Failure::PreBindFailed {
            plugin: "dra".into(),
            kind: crate::binding::PluginErrorKind::Unsatisfiable,
            message: String::new(),
        }));
        assert!(volume_check_failures(&other, &[]).is_empty());
    }

    #[test]
    fn lease_transitions_count_holder_changes_after_the_first_observation() {
        let r = Recorder::default();
        for h in ["a", "a", "", "b", "b", "a"] {
            r.lease_observed(h);
        }
        let text = r.metrics.encode();
        assert!(text.contains("bindlet_lease_transitions_total 3"), "{text}");
    }

    #[test]
    fn bind_latency_counts_from_creation() {
        let r = Recorder::default();
        let b = br("old");
        let status = BindRequestStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        };
        r.attempt_started(&b);
        r.settled(&b, &Outcome::Bound, &status);
        let lat = r.lock().requests[0].bind_latency_seconds.unwrap_or(0.0);
        // Created in 2020: years, not milliseconds.
        assert!(lat > 3600.0 * 24.0 * 365.0, "{lat}");
        let text = r.metrics.encode();
        assert!(
            text.contains("bindlet_bind_latency_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains(r#"bindlet_binds_total{outcome="bound",reason=""} 1"#),
            "{text}"
        );
    }
}
