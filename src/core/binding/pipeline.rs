//! The plugin pipeline: validate → pre_bind → bind → post_bind, with rollback of the
//! pre_bind steps in reverse order when a later step fails.
//!
//! Plugins see an immutable [`BindContext`] (the snapshot) and pass data along in the
//! typed [`BindState`]; the only side effects are their own `pre_bind`/`rollback` and
//! the [`Binder`] that posts `pods/binding`.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Node, Pod};
use thiserror::Error;

use crate::api::{BindRequest, Verdict, VerdictOutcome};

use super::decide::ValidRequest;
use super::failure::Failure;

/// Everything a plugin may look at: one consistent snapshot, taken before the attempt.
pub struct BindContext<'a> {
    pub node_name: &'a str,
    pub request: &'a ValidRequest,
    pub bind_request: &'a BindRequest,
    pub pod: &'a Pod,
    pub node: &'a Node,
}

/// Data plugins hand to later steps of the same attempt: one slot per type, so each plugin
/// keeps its own typed state (what it wrote, for its rollback; what it probed, for a later
/// plugin) and the pipeline knows none of them by name. A plugin's state type is private to
/// it unless another plugin is meant to read it (the `gpu` plugin's probe, read by `numa`).
#[derive(Default)]
pub struct BindState {
    slots: HashMap<TypeId, (&'static str, Box<dyn Any + Send + Sync>)>,
}

impl BindState {
    /// The slot of type `T`, created empty (`Default`) on first use.
    pub fn slot<T: Any + Default + Send + Sync>(&mut self) -> &mut T {
        let (_, value) = self
            .slots
            .entry(TypeId::of::<T>())
            .or_insert_with(|| (std::any::type_name::<T>(), Box::new(T::default())));
        value
            .downcast_mut::<T>()
            .unwrap_or_else(|| unreachable!("a slot holds the type it is keyed by"))
    }

    /// Puts `value` in its slot, replacing what was there.
    pub fn put<T: Any + Send + Sync>(&mut self, value: T) {
        self.slots.insert(
            TypeId::of::<T>(),
            (std::any::type_name::<T>(), Box::new(value)),
        );
    }

    /// The slot of type `T`, if a step filled it.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.slots
            .get(&TypeId::of::<T>())
            .and_then(|(_, v)| v.downcast_ref::<T>())
    }

    /// The slot of type `T`, mutable, if a step filled it.
    pub fn get_mut<T: Any>(&mut self) -> Option<&mut T> {
        self.slots
            .get_mut(&TypeId::of::<T>())
            .and_then(|(_, v)| v.downcast_mut::<T>())
    }

    /// Empties the slot of type `T` and returns what it held.
    pub fn take<T: Any>(&mut self) -> Option<T> {
        let (_, v) = self.slots.remove(&TypeId::of::<T>())?;
        v.downcast::<T>().ok().map(|b| *b)
    }
}

impl std::fmt::Debug for BindState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.slots.values().map(|(n, _)| *n).collect();
        names.sort_unstable();
        f.debug_struct("BindState").field("slots", &names).finish()
    }
}

/// A `pre_bind` step that could not complete: a stable code (its [`PluginErrorKind`]),
/// and the text for the status reason, logs and Events.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct PluginError {
    pub kind: PluginErrorKind,
    pub message: String,
    /// Set when the step must wait for someone else (a DRA driver's binding condition):
    /// the attempt ends without binding and without undoing this plugin's writes.
    pub park: Option<Park>,
}

/// Why a plugin step could not complete. Each kind has a stable code ([`Self::code`], a
/// metrics label and a field of the log line) and says whether it is about the request
/// (a failed attempt) or about the infrastructure (retried without counting one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PluginErrorKind {
    /// An object the request needs does not exist or is being deleted (a claim, a
    /// PersistentVolume, a StorageClass, a ResourceClaim).
    ObjectMissing,
    /// Another component has to act first (the PV controller, a provisioner, the kubelet,
    /// a DRA driver); later attempts may succeed.
    NotReady,
    /// This node cannot honour the request as things are (a volume claimed by another
    /// claim, a device already taken, a GPU the kubelet refused).
    Unsatisfiable,
    /// The request carries data this step cannot use (an allocation entry without an
    /// allocation, an invalid extended-resource request).
    InvalidRequest,
    /// The API server refused one of the step's writes (validation, admission, RBAC).
    WriteRejected,
    /// The API server or a local source did not answer: infrastructure, retried without
    /// counting an attempt.
    Unavailable,
    /// The objects kept changing under concurrent writers: retried without counting an
    /// attempt.
    Contention,
    /// The step waits for someone else (see [`Park`]).
    Waiting,
}

impl PluginErrorKind {
    /// Stable CamelCase code, like [`Failure::code`].
    pub fn code(self) -> &'static str {
        match self {
            PluginErrorKind::ObjectMissing => "ObjectMissing",
            PluginErrorKind::NotReady => "NotReady",
            PluginErrorKind::Unsatisfiable => "Unsatisfiable",
            PluginErrorKind::InvalidRequest => "InvalidRequest",
            PluginErrorKind::WriteRejected => "WriteRejected",
            PluginErrorKind::Unavailable => "Unavailable",
            PluginErrorKind::Contention => "Contention",
            PluginErrorKind::Waiting => "Waiting",
        }
    }

    /// Infrastructure, not the request: retried without counting an attempt.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            PluginErrorKind::Unavailable | PluginErrorKind::Contention
        )
    }
}

/// An attempt that waits: on what, and for how long at most. The agent hands the request
/// back to the queue instead of holding a worker, and wakes it when one of `claims`
/// changes or `remaining` has passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Park {
    /// The objects whose change may end the wait (namespace, name, resourceVersion seen).
    pub claims: Vec<ParkedOn>,
    /// What is awaited, for the status reason and `/debug/state`.
    pub waiting_for: String,
    /// The longest the wait may last from now.
    pub remaining: Duration,
}

/// A ResourceClaim a parked attempt waits on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParkedOn {
    pub namespace: String,
    pub name: String,
    /// The version the attempt read: a watch that lists a different one wakes the request.
    pub resource_version: String,
}

impl PluginError {
    pub fn new(kind: PluginErrorKind, message: impl Into<String>) -> Self {
        PluginError {
            kind,
            message: message.into(),
            park: None,
        }
    }

    /// See [`PluginErrorKind::ObjectMissing`].
    pub fn missing(message: impl Into<String>) -> Self {
        Self::new(PluginErrorKind::ObjectMissing, message)
    }

    /// See [`PluginErrorKind::NotReady`].
    pub fn not_ready(message: impl Into<String>) -> Self {
        Self::new(PluginErrorKind::NotReady, message)
    }

    /// See [`PluginErrorKind::Unsatisfiable`].
    pub fn unsatisfiable(message: impl Into<String>) -> Self {
        Self::new(PluginErrorKind::Unsatisfiable, message)
    }

    /// See [`PluginErrorKind::InvalidRequest`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(PluginErrorKind::InvalidRequest, message)
    }

    /// See [`PluginErrorKind::WriteRejected`].
    pub fn rejected(message: impl Into<String>) -> Self {
        Self::new(PluginErrorKind::WriteRejected, message)
    }

    /// See [`PluginErrorKind::Unavailable`].
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(PluginErrorKind::Unavailable, message)
    }

    /// See [`PluginErrorKind::Contention`].
    pub fn contention(message: impl Into<String>) -> Self {
        Self::new(PluginErrorKind::Contention, message)
    }

    /// The step waits on `park` (see [`Park`]).
    pub fn parked(park: Park) -> Self {
        PluginError {
            kind: PluginErrorKind::Waiting,
            message: format!("waiting for {}", park.waiting_for),
            park: Some(park),
        }
    }

    /// Infrastructure trouble: retried without counting an attempt.
    pub fn is_transient(&self) -> bool {
        self.kind.is_transient()
    }
}

#[async_trait]
pub trait Plugin: Send + Sync {
    fn name(&self) -> &'static str;
    /// Pure checks over the snapshot. Any `Fail` verdict refuses the attempt. Plugins that
    /// cannot decide without reading more (claims, the filesystem) do all their work in
    /// `pre_bind` and keep this default.
    fn validate(&self, _ctx: &BindContext<'_>) -> Vec<Verdict> {
        Vec::new()
    }
    /// May write; everything written must be undone by `rollback`. A `Fail` verdict
    /// refuses the attempt like one from `validate` (after this plugin's rollback).
    async fn pre_bind(
        &self,
        _ctx: &BindContext<'_>,
        _state: &mut BindState,
    ) -> Result<Vec<Verdict>, PluginError> {
        Ok(Vec::new())
    }
    /// Best effort after a successful bind.
    async fn post_bind(&self, _ctx: &BindContext<'_>, _state: &BindState) {}
    /// Undo `pre_bind`. Called for every plugin whose `pre_bind` started; must be idempotent.
    async fn rollback(&self, _ctx: &BindContext<'_>, _state: &mut BindState) {}
}

/// The plugins of one agent, in pipeline order.
#[derive(Clone, Default)]
pub struct Registry {
    plugins: Vec<Arc<dyn Plugin>>,
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    pub fn with(mut self, plugin: impl Plugin + 'static) -> Self {
        self.plugins.push(Arc::new(plugin));
        self
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.plugins.iter().map(|p| p.name()).collect()
    }
}

/// How the bind step itself failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindFault {
    /// The pod turned out to be bound to this node already (e.g. an earlier attempt whose
    /// answer was lost): success.
    AlreadyBoundHere,
    /// A failure about the request or pod: counts as a failed attempt.
    Failed(Failure),
    /// Infrastructure trouble: retried without counting an attempt.
    Transient(String),
}

/// Posts the binding. Implemented by the effects layer; faked in tests.
#[async_trait]
pub trait Binder: Send + Sync {
    async fn bind(&self, ctx: &BindContext<'_>, pod_uid: &str) -> Result<(), BindFault>;
}

/// Why an attempt did not bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptError {
    Failed(Failure),
    Transient(String),
    /// The BindRequest disappeared before the irreversible write.
    Cancelled,
    /// A plugin waits for someone else; the attempt is resumed later (see [`Park`]).
    Parked(Park),
}

/// The result of running the pipeline once.
#[derive(Debug)]
pub struct PipelineReport {
    /// `Ok(true)` when this agent bound the pod, `Ok(false)` when it was already bound here.
    pub result: Result<bool, AttemptError>,
    pub verdicts: Vec<Verdict>,
    /// Stage name and how long it took, in order.
    pub stages: Vec<(&'static str, Duration)>,
    /// Plugins whose rollback ran, in the order it ran.
    pub rolled_back: Vec<&'static str>,
}

/// Runs one attempt through the pipeline. `still_wanted` is asked right before the
/// irreversible bind, so a request deleted mid-flight is not bound.
pub async fn run(
    registry: &Registry,
    ctx: &BindContext<'_>,
    pod_uid: &str,
    binder: &dyn Binder,
    still_wanted: &(dyn Fn() -> bool + Send + Sync),
) -> PipelineReport {
    let mut report = PipelineReport {
        result: Ok(false),
        verdicts: Vec::new(),
        stages: Vec::new(),
        rolled_back: Vec::new(),
    };

    if !validate_all(registry, ctx, &mut report) {
        return report;
    }
    let mut state = BindState::default();
    let t = Instant::now();
    let Some(started) = pre_bind_all(registry, ctx, &mut state, &mut report, t).await else {
        return report;
    };
    report.stages.push(("pre_bind", t.elapsed()));

    if !still_wanted() {
        report.result = Err(AttemptError::Cancelled);
        rollback(registry, started, ctx, &mut state, &mut report).await;
        return report;
    }

    let t = Instant::now();
    let bound = binder.bind(ctx, pod_uid).await;
    report.stages.push(("bind", t.elapsed()));
    report.result = match bound {
        Ok(()) => Ok(true),
        Err(BindFault::AlreadyBoundHere) => Ok(false),
        Err(BindFault::Failed(f)) => Err(AttemptError::Failed(f)),
        Err(BindFault::Transient(m)) => Err(AttemptError::Transient(m)),
    };
    if report.result.is_err() {
        rollback(registry, started, ctx, &mut state, &mut report).await;
        return report;
    }

    let t = Instant::now();
    for plugin in &registry.plugins {
        plugin.post_bind(ctx, &state).await;
    }
    report.stages.push(("post_bind", t.elapsed()));
    report
}

/// Every plugin's `validate`, into the report; false (the report says why) when one fails.
fn validate_all(registry: &Registry, ctx: &BindContext<'_>, report: &mut PipelineReport) -> bool {
    let t = Instant::now();
    for plugin in &registry.plugins {
        report.verdicts.extend(plugin.validate(ctx));
    }
    report.stages.push(("validate", t.elapsed()));
    if let Some(fail) = report
        .verdicts
        .iter()
        .find(|v| v.outcome == VerdictOutcome::Fail)
    {
        report.result = Err(AttemptError::Failed(Failure::Refused {
            plugin: fail.plugin.clone(),
            check: fail.check.clone(),
            message: fail.message.clone(),
        }));
        return false;
    }
    true
}

/// Every plugin's `pre_bind`, in order. Returns how many ran, or `None` when one refused,
/// failed or parks the attempt: then what ran before it is rolled back (the parking plugin
/// keeps its own writes) and the report says why.
async fn pre_bind_all(
    registry: &Registry,
    ctx: &BindContext<'_>,
    state: &mut BindState,
    report: &mut PipelineReport,
    t: Instant,
) -> Option<usize> {
    let mut started = 0;
    for plugin in &registry.plugins {
        started += 1;
        match plugin.pre_bind(ctx, state).await {
            Ok(verdicts) => {
                // Checks that need local facts (e.g. a fresh GPU probe) refuse here.
                let refusal = verdicts
                    .iter()
                    .find(|v| v.outcome == VerdictOutcome::Fail)
                    .map(|f| Failure::Refused {
                        plugin: f.plugin.clone(),
                        check: f.check.clone(),
                        message: f.message.clone(),
                    });
                report.verdicts.extend(verdicts);
                if let Some(refusal) = refusal {
                    report.stages.push(("pre_bind", t.elapsed()));
                    report.result = Err(AttemptError::Failed(refusal));
                    rollback(registry, started, ctx, state, report).await;
                    return None;
                }
            }
            Err(PluginError {
                park: Some(park), ..
            }) => {
                // The waiting plugin keeps its writes (they are what the wait is for: a
                // driver acts on the allocation); the plugins before it are undone and redo
                // their work when the request is resumed.
                report.stages.push(("pre_bind", t.elapsed()));
                report.result = Err(AttemptError::Parked(park));
                rollback(registry, started - 1, ctx, state, report).await;
                return None;
            }
            Err(e) => {
                report.stages.push(("pre_bind", t.elapsed()));
                report.result = Err(if e.is_transient() {
                    AttemptError::Transient(format!("{}: {}", plugin.name(), e.message))
                } else {
                    AttemptError::Failed(Failure::PreBindFailed {
                        plugin: plugin.name().to_string(),
                        kind: e.kind,
                        message: e.message,
                    })
                });
                rollback(registry, started, ctx, state, report).await;
                return None;
            }
        }
    }
    Some(started)
}

async fn rollback(
    registry: &Registry,
    started: usize,
    ctx: &BindContext<'_>,
    state: &mut BindState,
    report: &mut PipelineReport,
) {
    let t = Instant::now();
    for plugin in registry.plugins[..started].iter().rev() {
        plugin.rollback(ctx, state).await;
        report.rolled_back.push(plugin.name());
    }
    report.stages.push(("rollback", t.elapsed()));
}

/// Shorthand for building a verdict.
pub fn verdict(plugin: &str, check: &str, outcome: VerdictOutcome, message: String) -> Verdict {
    Verdict {
        plugin: plugin.to_string(),
        check: check.to_string(),
        outcome,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_infrastructure_kinds_are_transient_and_every_code_is_distinct() {
        use PluginErrorKind::*;
        let all = [
            ObjectMissing,
            NotReady,
            Unsatisfiable,
            InvalidRequest,
            WriteRejected,
            Unavailable,
            Contention,
            Waiting,
        ];
        let transient: Vec<_> = all.iter().filter(|k| k.is_transient()).collect();
        assert_eq!(transient, [&Unavailable, &Contention]);
        let codes: std::collections::BTreeSet<_> = all.iter().map(|k| k.code()).collect();
        assert_eq!(codes.len(), all.len());
        assert!(PluginError::unavailable("x").is_transient());
        assert!(!PluginError::missing("x").is_transient());
    }
    use crate::api::{BindRequestSpec, VerdictOutcome::*};
    use crate::binding::decide::GpuRequest;
    use std::sync::Mutex;

    /// Records what happened, in order, across plugins and the binder.
    type Log = Arc<Mutex<Vec<String>>>;

    struct Step {
        name: &'static str,
        check: VerdictOutcome,
        pre_bind_fails: Option<bool>, // Some(transient)
        log: Log,
    }

    #[async_trait]
    impl Plugin for Step {
        fn name(&self) -> &'static str {
            self.name
        }
        fn validate(&self, _: &BindContext<'_>) -> Vec<Verdict> {
            vec![verdict(
                self.name,
                "check",
                self.check,
                format!("{} says {:?}", self.name, self.check),
            )]
        }
        async fn pre_bind(
            &self,
            _: &BindContext<'_>,
            _: &mut BindState,
        ) -> Result<Vec<Verdict>, PluginError> {
            self.log
                .lock()
                .unwrap()
                .push(format!("pre_bind {}", self.name));
            match self.pre_bind_fails {
                Some(true) => Err(PluginError::unavailable("boom")),
                Some(false) => Err(PluginError::unsatisfiable("boom")),
                // The plugin named "waits" waits on a claim.
                None if self.name == "waits" => Err(PluginError::parked(Park {
                    claims: vec![ParkedOn {
                        namespace: "ns".into(),
                        name: "c".into(),
                        resource_version: "7".into(),
                    }],
                    waiting_for: "binding conditions: claim ns/c".into(),
                    remaining: Duration::from_secs(600),
                })),
                None => Ok(vec![]),
            }
        }
        async fn post_bind(&self, _: &BindContext<'_>, _: &BindState) {
            self.log
                .lock()
                .unwrap()
                .push(format!("post_bind {}", self.name));
        }
        async fn rollback(&self, _: &BindContext<'_>, _: &mut BindState) {
            self.log
                .lock()
                .unwrap()
                .push(format!("rollback {}", self.name));
        }
    }

    struct FakeBinder {
        answer: Result<(), BindFault>,
        log: Log,
    }

    #[async_trait]
    impl Binder for FakeBinder {
        async fn bind(&self, ctx: &BindContext<'_>, uid: &str) -> Result<(), BindFault> {
            self.log
                .lock()
                .unwrap()
                .push(format!("bind {uid} to {}", ctx.node_name));
            self.answer.clone()
        }
    }

    fn step(name: &'static str, check: VerdictOutcome, fails: Option<bool>, log: &Log) -> Step {
        Step {
            name,
            check,
            pre_bind_fails: fails,
            log: log.clone(),
        }
    }

    async fn run_case(
        plugins: Vec<Step>,
        answer: Result<(), BindFault>,
        wanted: bool,
        log: &Log,
    ) -> PipelineReport {
        let mut registry = Registry::new();
        for p in plugins {
            registry = registry.with(p);
        }
        let br = BindRequest::new("p", BindRequestSpec::default());
        let req = ValidRequest {
            namespace: "ns".into(),
            pod_name: "p".into(),
            gpu: GpuRequest::None,
        };
        let (pod, node) = (Pod::default(), Node::default());
        let ctx = BindContext {
            node_name: "n1",
            request: &req,
            bind_request: &br,
            pod: &pod,
            node: &node,
        };
        let binder = FakeBinder {
            answer,
            log: log.clone(),
        };
        run(&registry, &ctx, "uid-1", &binder, &move || wanted).await
    }

    fn take(log: &Log) -> Vec<String> {
        std::mem::take(&mut *log.lock().unwrap())
    }

    #[tokio::test]
    async fn happy_path_runs_every_stage_in_order() {
        let log = Log::default();
        let r = run_case(
            vec![step("a", Pass, None, &log), step("b", Warn, None, &log)],
            Ok(()),
            true,
            &log,
        )
        .await;
        assert_eq!(r.result, Ok(true));
        assert_eq!(r.verdicts.len(), 2);
        assert_eq!(
            take(&log),
            [
                "pre_bind a",
                "pre_bind b",
                "bind uid-1 to n1",
                "post_bind a",
                "post_bind b"
            ]
        );
        let stages: Vec<_> = r.stages.iter().map(|s| s.0).collect();
        assert_eq!(stages, ["validate", "pre_bind", "bind", "post_bind"]);
    }

    #[tokio::test]
    async fn failed_validation_writes_nothing() {
        let log = Log::default();
        let r = run_case(
            vec![step("a", Pass, None, &log), step("b", Fail, None, &log)],
            Ok(()),
            true,
            &log,
        )
        .await;
        match r.result {
            Err(AttemptError::Failed(Failure::Refused { plugin, .. })) => assert_eq!(plugin, "b"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(take(&log).is_empty(), "no pre_bind, no bind");
    }

    #[tokio::test]
    async fn pre_bind_failure_rolls_back_in_reverse() {
        let log = Log::default();
        let plugins = vec![
            step("a", Pass, None, &log),
            step("b", Pass, Some(false), &log),
            step("c", Pass, None, &log),
        ];
        let r = run_case(plugins, Ok(()), true, &log).await;
        assert!(matches!(
            r.result,
            Err(AttemptError::Failed(Failure::PreBindFailed { .. }))
        ));
        assert_eq!(
            take(&log),
            ["pre_bind a", "pre_bind b", "rollback b", "rollback a"]
        );
        assert_eq!(r.rolled_back, ["b", "a"]);
    }

    #[tokio::test]
    async fn a_waiting_plugin_keeps_its_writes_and_nothing_is_bound() {
        let log = Log::default();
        let plugins = vec![
            step("a", Pass, None, &log),
            step("waits", Pass, None, &log),
            step("c", Pass, None, &log),
        ];
        let r = run_case(plugins, Ok(()), true, &log).await;
        match r.result {
            Err(AttemptError::Parked(p)) => {
                assert_eq!(p.claims[0].name, "c");
                assert_eq!(p.remaining, Duration::from_secs(600));
            }
            other => panic!("unexpected {other:?}"),
        }
        // The plugins before it are undone (they redo their work when the request is
        // resumed); the waiting one keeps what it wrote; later ones never ran.
        assert_eq!(take(&log), ["pre_bind a", "pre_bind waits", "rollback a"]);
    }

    #[tokio::test]
    async fn transient_pre_bind_error_is_not_a_failure() {
        let log = Log::default();
        let r = run_case(vec![step("a", Pass, Some(true), &log)], Ok(()), true, &log).await;
        assert!(matches!(r.result, Err(AttemptError::Transient(_))));
    }

    #[tokio::test]
    async fn bind_failure_rolls_back_everything() {
        let log = Log::default();
        let fault = BindFault::Failed(Failure::BindingRejected("nope".into()));
        let r = run_case(
            vec![step("a", Pass, None, &log), step("b", Pass, None, &log)],
            Err(fault),
            true,
            &log,
        )
        .await;
        assert!(matches!(
            r.result,
            Err(AttemptError::Failed(Failure::BindingRejected(_)))
        ));
        assert_eq!(
            take(&log),
            [
                "pre_bind a",
                "pre_bind b",
                "bind uid-1 to n1",
                "rollback b",
                "rollback a"
            ]
        );
    }

    #[tokio::test]
    async fn already_bound_here_is_success_without_bind_of_our_own() {
        let log = Log::default();
        let r = run_case(
            vec![step("a", Pass, None, &log)],
            Err(BindFault::AlreadyBoundHere),
            true,
            &log,
        )
        .await;
        assert_eq!(r.result, Ok(false));
        assert_eq!(
            take(&log),
            ["pre_bind a", "bind uid-1 to n1", "post_bind a"]
        );
    }

    #[tokio::test]
    async fn deleted_request_is_not_bound() {
        let log = Log::default();
        let r = run_case(vec![step("a", Pass, None, &log)], Ok(()), false, &log).await;
        assert_eq!(r.result, Err(AttemptError::Cancelled));
        assert_eq!(take(&log), ["pre_bind a", "rollback a"]);
    }

    /// A plugin whose pre_bind checks (local facts) fail.
    struct RefusesAtPreBind(Log);

    #[async_trait]
    impl Plugin for RefusesAtPreBind {
        fn name(&self) -> &'static str {
            "late"
        }
        async fn pre_bind(
            &self,
            _: &BindContext<'_>,
            _: &mut BindState,
        ) -> Result<Vec<Verdict>, PluginError> {
            self.0.lock().unwrap().push("pre_bind late".into());
            Ok(vec![verdict("late", "probe", Fail, "no free GPU".into())])
        }
        async fn rollback(&self, _: &BindContext<'_>, _: &mut BindState) {
            self.0.lock().unwrap().push("rollback late".into());
        }
    }

    #[tokio::test]
    async fn fail_verdict_from_pre_bind_refuses_and_rolls_back() {
        let log = Log::default();
        let mut registry = Registry::new().with(step("a", Pass, None, &log));
        registry = registry.with(RefusesAtPreBind(log.clone()));
        registry = registry.with(step("c", Pass, None, &log));
        let br = BindRequest::new("p", BindRequestSpec::default());
        let req = ValidRequest {
            namespace: "ns".into(),
            pod_name: "p".into(),
            gpu: GpuRequest::Whole { count: 1 },
        };
        let (pod, node) = (Pod::default(), Node::default());
        let ctx = BindContext {
            node_name: "n1",
            request: &req,
            bind_request: &br,
            pod: &pod,
            node: &node,
        };
        let binder = FakeBinder {
            answer: Ok(()),
            log: log.clone(),
        };
        let r = run(&registry, &ctx, "uid-1", &binder, &|| true).await;
        match &r.result {
            Err(AttemptError::Failed(Failure::Refused {
                plugin, message, ..
            })) => {
                assert_eq!(plugin, "late");
                assert_eq!(message, "no free GPU");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            r.verdicts.iter().any(|v| v.check == "probe"),
            "the failing verdict is reported"
        );
        assert_eq!(
            take(&log),
            ["pre_bind a", "pre_bind late", "rollback late", "rollback a"],
            "no bind, no later plugin"
        );
    }
}
