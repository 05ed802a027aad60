//! The node agent: watches this node's BindRequests, holds the node Lease, and runs a
//! bounded pool of workers over a per-object queue. One shutdown token stops it all.

mod args;
pub mod effects;
pub mod lease;
mod parking;
pub mod permissions;
pub mod queue;
mod worker;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::ResourceSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector::store::Writer};
use kube::{Api, Client, ResourceExt};
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::{BindRequest, Lenient, SELECTED_NODE_LABEL};
use crate::binding::{self, Backoff};
use crate::plugins::{self, PluginSettings};

pub use crate::kubeapi::calls as api_calls;
pub use crate::kubeapi::events;
pub use args::AgentArgs;
use effects::Effects;
use events::EventSink;
use queue::{Key, WorkQueue};

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    /// Watch only this namespace; `None` watches all namespaces (still only this node's).
    pub namespace: Option<String>,
    pub lease_namespace: String,
    /// This agent instance (pod name in a cluster).
    pub identity: String,
    pub workers: usize,
    pub default_backoff_limit: i32,
    pub backoff: Backoff,
    pub api_timeout: Duration,
    pub lease_duration: Duration,
    /// How often the holder renews the Lease (one PUT while renewals succeed).
    pub lease_renew: Duration,
    /// How often a waiting agent looks at the Lease, and how soon a failed renewal is retried.
    pub lease_retry: Duration,
    /// Write KAI's `PodBound` condition on the pod after each attempt (`pods/status`).
    pub pod_bound_condition: bool,
    pub plugins: PluginSettings,
}

impl AgentConfig {
    /// Defaults for `node`, as `bindlet run` would use them: the flags' own defaults.
    pub fn for_node(node: &str) -> Self {
        AgentArgs::default().to_config(node)
    }
}

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Counters and flags others (demo, tests, diagnostics) read while the agent runs.
#[derive(Default)]
pub struct Stats {
    /// Whether this agent holds the node Lease: the lease loop's own channel, so a worker
    /// woken by it and `is_leading` can never disagree (no copy that lags behind).
    pub leading: watch::Sender<bool>,
    pub synced: AtomicBool,
    pub bound: AtomicU64,
    pub already_bound: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub failed_final: AtomicU64,
    /// Metrics and per-request timelines for the diagnostics server.
    pub diag: Arc<crate::diag::Recorder>,
    retries: Mutex<HashMap<Key, u32>>,
    undecodable: Mutex<HashSet<Key>>,
    /// Requests this agent leaves alone, with the resourceVersion it decided on: the same
    /// version is not looked at again; a changed object is (once).
    left_alone: Mutex<HashMap<Key, String>>,
}

impl crate::diag::AgentView for Stats {
    fn is_leading(&self) -> bool {
        Stats::is_leading(self)
    }
    fn is_synced(&self) -> bool {
        Stats::is_synced(self)
    }
    fn totals(&self) -> crate::diag::Totals {
        crate::diag::Totals {
            bound: self.bound.load(Ordering::Relaxed),
            already_bound: self.already_bound.load(Ordering::Relaxed),
            failed_attempts: self.failed_attempts.load(Ordering::Relaxed),
            failed_final: self.failed_final.load(Ordering::Relaxed),
        }
    }
    fn recorder(&self) -> &Arc<crate::diag::Recorder> {
        &self.diag
    }
}

impl Stats {
    /// Stats whose diagnostics go to `diag` (e.g. one sized by `--diag-history`).
    pub fn with_recorder(diag: Arc<crate::diag::Recorder>) -> Self {
        Stats {
            diag,
            ..Default::default()
        }
    }
    fn succeeded(&self, bound_now: bool) {
        let c = if bound_now {
            &self.bound
        } else {
            &self.already_bound
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
    fn failed(&self, gave_up: bool) {
        self.failed_attempts.fetch_add(1, Ordering::Relaxed);
        if gave_up {
            self.failed_final.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn local_retries(&self, key: &Key) -> u32 {
        lock(&self.retries).get(key).copied().unwrap_or(0)
    }
    fn set_local_retries(&self, key: &Key, n: u32) {
        lock(&self.retries).insert(key.clone(), n);
    }
    fn clear_local_retries(&self, key: &Key) {
        lock(&self.retries).remove(key);
    }
    fn first_undecodable_report(&self, key: &Key) -> bool {
        lock(&self.undecodable).insert(key.clone())
    }
    fn forget_undecodable(&self, key: &Key) {
        lock(&self.undecodable).remove(key);
    }
    /// Remembers that this version of the request is left alone; false when it already was.
    fn leave_alone(&self, key: &Key, resource_version: &str) -> bool {
        lock(&self.left_alone).insert(key.clone(), resource_version.to_string())
            != Some(resource_version.to_string())
    }
    /// Whether this exact version of the request was left alone before.
    fn is_left_alone(&self, key: &Key, resource_version: &str) -> bool {
        lock(&self.left_alone)
            .get(key)
            .is_some_and(|rv| rv == resource_version)
    }
    /// The object is gone: drop everything kept about it.
    fn forget(&self, key: &Key) {
        self.clear_local_retries(key);
        self.forget_undecodable(key);
        lock(&self.left_alone).remove(key);
        self.diag.request_gone(&key.namespace, &key.name);
    }
    pub fn is_leading(&self) -> bool {
        *self.leading.borrow()
    }
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running agent.
pub struct AgentHandle {
    pub stats: Arc<Stats>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), AgentError>>,
}

impl AgentHandle {
    /// Graceful stop: finish in-flight work, release the Lease.
    pub async fn stop(self) -> Result<(), AgentError> {
        self.shutdown.cancel();
        match self.task.await {
            Ok(r) => r,
            Err(_) => Ok(()),
        }
    }

    /// Abrupt stop, as if the process died: nothing is released.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Starts the agent on the current runtime.
pub fn spawn(client: Client, cfg: AgentConfig) -> AgentHandle {
    spawn_with_stats(client, cfg, Arc::new(Stats::default()))
}

/// [`spawn`] with caller-made stats (e.g. a diagnostics recorder of a chosen size).
pub fn spawn_with_stats(client: Client, cfg: AgentConfig, stats: Arc<Stats>) -> AgentHandle {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(client, cfg, shutdown.clone(), stats.clone()));
    AgentHandle {
        stats,
        shutdown,
        task,
    }
}

/// Runs until `shutdown` fires.
pub async fn run(
    client: Client,
    cfg: AgentConfig,
    shutdown: CancellationToken,
    stats: Arc<Stats>,
) -> Result<(), AgentError> {
    validate_config(&cfg)?;
    tracing::info!(node = %cfg.node_name, identity = %cfg.identity, workers = cfg.workers,
        "bindlet agent starting");

    // Everything spawned here lives in `tasks`: dropping this future (a crash in tests)
    // aborts them all.
    let mut tasks = JoinSet::new();
    let queue = Arc::new(WorkQueue::new());
    stats.diag.agent_started(identity(&cfg), queue.clone());
    stats.leading.send_replace(false);
    // Stopped only after the workers are done, so the Lease is released last.
    let background = CancellationToken::new();

    spawn_lease(&mut tasks, &client, &cfg, &stats, &background);

    let parking = Arc::new(parking::ParkingLot::new(
        client.clone(),
        queue.clone(),
        background.clone(),
    ));
    let checked_rx = spawn_permission_check(&mut tasks, &client, &cfg, &stats);
    let (requests, node_store, node_slices) = spawn_watches(
        &mut tasks,
        &client,
        &cfg,
        &queue,
        &stats,
        &parking,
        &background,
    );

    let (shared, slices_ready, events_task) = assemble(
        &mut tasks,
        Parts {
            client: &client,
            cfg: &cfg,
            stats: &stats,
            requests,
            node_store,
            node_slices,
            parking,
            background: &background,
        },
    )?;

    wait_until_synced(&shared, &stats, &cfg, slices_ready, checked_rx, &shutdown).await;

    let workers = spawn_workers(&shared, &queue, &stats, cfg.workers, &shutdown);

    shutdown.cancelled().await;
    drain(
        queue,
        workers,
        background,
        events_task,
        tasks,
        cfg.api_timeout,
    )
    .await;
    Ok(())
}

/// The workers' shared state, the slice cache and the Event writers' task.
type Assembled = (
    Arc<worker::Shared>,
    Store<ResourceSlice>,
    tokio::task::JoinHandle<()>,
);

/// What the workers' shared state is made of.
struct Parts<'a> {
    client: &'a Client,
    cfg: &'a AgentConfig,
    stats: &'a Arc<Stats>,
    requests: Store<Lenient<BindRequest>>,
    node_store: Store<Node>,
    node_slices: Store<ResourceSlice>,
    parking: Arc<parking::ParkingLot>,
    background: &'a CancellationToken,
}

/// The Event writers, the plugins with their API access and background loops, and the state
/// every worker shares; also the slice cache, whose sync the workers wait for (bounded), and
/// the Event writers' task, which ends once they have flushed.
fn assemble(tasks: &mut JoinSet<()>, p: Parts<'_>) -> Result<Assembled, AgentError> {
    let Parts {
        client,
        cfg,
        stats,
        requests,
        node_store,
        node_slices,
        parking,
        background,
    } = p;
    let (events, events_task) = EventSink::start_with_recorder(
        client.clone(),
        "bindlet".to_string(),
        cfg.identity.clone(),
        cfg.api_timeout,
        background.clone(),
        stats.diag.clone(),
    );
    let kube = crate::kubeapi::Kube::new(client.clone(), cfg.api_timeout, stats.diag.clone());
    // The GPU runtime (NVML thread or file) is shared by the GPU-reading plugins and the
    // diagnostics; its background tasks stop with the other background work.
    let gpu = plugins::gpu::start_runtime(
        &cfg.plugins.gpu.args,
        &kube,
        &cfg.node_name,
        &events,
        background,
        tasks,
    );
    if let Some(rt) = &gpu {
        stats.diag.set_facts(rt.clone());
    }
    let leading = stats.clone();
    let env = plugins::PluginEnv {
        kube,
        node: cfg.node_name.clone(),
        gpu,
        node_slices: node_slices.clone(),
        requests: requests.clone(),
        default_backoff_limit: cfg.default_backoff_limit,
        leading: Arc::new(move || leading.is_leading()),
        stop: background.clone(),
    };
    let registry = plugins::standard(&cfg.plugins, &env, tasks)
        .map_err(|e| AgentError::Config(e.to_string()))?;
    tracing::info!(node = %cfg.node_name, plugins = ?registry.names(), "plugins ready");
    let slices_ready = node_slices;
    let shared = Arc::new(worker::Shared {
        registry,
        effects: Effects::new(env.kube.clone()),
        diag: stats.diag.clone(),
        events,
        requests,
        node: node_store,
        stats: stats.clone(),
        cfg: cfg.clone(),
        parking,
    });
    Ok((shared, slices_ready, events_task))
}

/// Who this agent is, for the diagnostics.
fn identity(cfg: &AgentConfig) -> crate::diag::AgentIdentity {
    crate::diag::AgentIdentity {
        node_name: cfg.node_name.clone(),
        identity: cfg.identity.clone(),
        lease_name: lease::lease_name(&cfg.node_name),
        lease_namespace: cfg.lease_namespace.clone(),
        retry_max: cfg.backoff.max,
    }
}

/// The permission self-check, beside the cache sync: the workers start only once it is
/// done (each review has the API timeout), so a missing permission is reported before any
/// bind. The receiver fires when it is done.
fn spawn_permission_check(
    tasks: &mut JoinSet<()>,
    client: &Client,
    cfg: &AgentConfig,
    stats: &Stats,
) -> tokio::sync::oneshot::Receiver<()> {
    let (checked_tx, checked_rx) = tokio::sync::oneshot::channel::<()>();
    let check = permissions::check_at_start(
        client.clone(),
        cfg.lease_namespace.clone(),
        cfg.api_timeout,
        stats.diag.clone(),
    );
    tasks.spawn(async move {
        check.await;
        let _ = checked_tx.send(());
    });
    checked_rx
}

/// The node Lease loop: keeps `stats.leading` true while this agent holds the Lease.
fn spawn_lease(
    tasks: &mut JoinSet<()>,
    client: &Client,
    cfg: &AgentConfig,
    stats: &Stats,
    background: &CancellationToken,
) {
    tasks.spawn(lease::run(
        client.clone(),
        lease::LeaseConfig {
            name: lease::lease_name(&cfg.node_name),
            namespace: cfg.lease_namespace.clone(),
            identity: cfg.identity.clone(),
            duration: cfg.lease_duration,
            renew_period: cfg.lease_renew,
            retry_period: cfg.lease_retry,
            api_timeout: cfg.api_timeout,
            diag: stats.diag.clone(),
        },
        stats.leading.clone(),
        background.clone(),
    ));
}

/// The watches of this node's BindRequests, its Node and its ResourceSlices, each into a
/// cache; BindRequest events feed the queue.
fn spawn_watches(
    tasks: &mut JoinSet<()>,
    client: &Client,
    cfg: &AgentConfig,
    queue: &Arc<WorkQueue>,
    stats: &Arc<Stats>,
    parking: &Arc<parking::ParkingLot>,
    background: &CancellationToken,
) -> (
    Store<Lenient<BindRequest>>,
    Store<Node>,
    Store<ResourceSlice>,
) {
    let (requests, requests_writer) = reflector::store::<Lenient<BindRequest>>();
    let (node_store, node_writer) = reflector::store::<Node>();
    tasks.spawn(watch_requests(
        client.clone(),
        cfg.clone(),
        requests_writer,
        queue.clone(),
        stats.clone(),
        parking.clone(),
        background.clone(),
    ));
    tasks.spawn(watch_node(
        client.clone(),
        cfg.node_name.clone(),
        node_writer,
        requests.clone(),
        queue.clone(),
        background.clone(),
    ));

    // This node's ResourceSlices, for the dra plugin: a watch instead of a LIST per bind.
    let (node_slices, slices_writer) = reflector::store::<ResourceSlice>();
    tasks.spawn(watch_slices(
        client.clone(),
        cfg.node_name.clone(),
        slices_writer,
        background.clone(),
    ));
    (requests, node_store, node_slices)
}

/// Ends the agent: no new work, in-flight requests finished, then the background tasks
/// (Events flushed, the Lease released last), bounded by twice the API timeout.
async fn drain(
    queue: Arc<WorkQueue>,
    mut workers: JoinSet<()>,
    background: CancellationToken,
    events_task: tokio::task::JoinHandle<()>,
    mut tasks: JoinSet<()>,
    api_timeout: Duration,
) {
    tracing::info!("shutting down: finishing in-flight requests");
    queue.shutdown();
    while workers.join_next().await.is_some() {}
    background.cancel();
    let _ = events_task.await;
    // The lease task releases the Lease now that no worker runs; wait for it, bounded.
    let _ = tokio::time::timeout(api_timeout * 2, async {
        while let Some(t) = tasks.join_next().await {
            let _ = t;
        }
    })
    .await;
    tasks.abort_all();
    tracing::info!("agent stopped");
}

fn validate_config(cfg: &AgentConfig) -> Result<(), AgentError> {
    plugins::check(&cfg.plugins).map_err(|e| AgentError::Config(e.to_string()))?;
    if cfg.node_name.is_empty() {
        return Err(AgentError::Config(
            "the node name is empty (--node-name / NODE_NAME)".into(),
        ));
    }
    if cfg.workers == 0 {
        return Err(AgentError::Config("--workers must be at least 1".into()));
    }
    if cfg.lease_renew >= lease::renew_deadline(cfg.lease_duration) {
        return Err(AgentError::Config(format!(
            "--lease-renew ({:?}) must be below 2/3 of --lease-duration ({:?}): the holder stops binding then",
            cfg.lease_renew, cfg.lease_duration
        )));
    }
    Ok(())
}

/// Waits until both caches hold a full list (a request must not fail with "node not found"
/// only because the Node watch has not delivered yet), the slice cache for a bounded time,
/// and the permission self-check; then marks the agent synced.
async fn wait_until_synced(
    shared: &worker::Shared,
    stats: &Stats,
    cfg: &AgentConfig,
    slices_ready: Store<ResourceSlice>,
    checked_rx: tokio::sync::oneshot::Receiver<()>,
    shutdown: &CancellationToken,
) {
    // Workers start once both caches hold a full list: a request must not fail with
    // "node not found" only because the Node watch has not delivered yet.
    let (requests_ready, node_ready) = (shared.requests.clone(), shared.node.clone());
    let node_name = cfg.node_name.clone();
    let synced = tokio::select! {
        r = async { requests_ready.wait_until_ready().await.and(node_ready.wait_until_ready().await) } => r.is_ok(),
        _ = shutdown.cancelled() => false,
    };
    // The slice cache gets a bounded wait: binds list slices while it is not ready, and
    // a cluster without DRA never makes it ready, so it must not hold the workers back.
    if synced {
        let ready = tokio::select! {
            r = tokio::time::timeout(cfg.api_timeout, slices_ready.wait_until_ready()) => matches!(r, Ok(Ok(()))),
            _ = shutdown.cancelled() => false,
        };
        if !ready {
            tracing::info!(node = %node_name, "ResourceSlice cache not synced yet; DRA binds list slices until it is");
        }
    }
    if synced {
        tokio::select! {
            _ = checked_rx => {}
            _ = shutdown.cancelled() => {}
        }
    }
    if synced {
        stats.synced.store(true, Ordering::Relaxed);
        tracing::info!(node = %node_name, "caches synced (BindRequests and Node)");
    }
}

/// The workers: only the Lease holder's take requests from the queue.
fn spawn_workers(
    shared: &Arc<worker::Shared>,
    queue: &Arc<WorkQueue>,
    stats: &Stats,
    n: usize,
    shutdown: &CancellationToken,
) -> JoinSet<()> {
    let mut workers = JoinSet::new();
    for _ in 0..n {
        let (shared, queue, mut leading) =
            (shared.clone(), queue.clone(), stats.leading.subscribe());
        let stop = shutdown.clone();
        workers.spawn(async move {
            loop {
                // Only the Lease holder works; others keep their cache warm and wait.
                tokio::select! {
                    held = leading.wait_for(|l| *l) => if held.is_err() { return },
                    _ = stop.cancelled() => return,
                }
                let Some((key, cancelled)) = queue.next().await else {
                    return;
                };
                let next = worker::process(&shared, &key, &cancelled).await;
                queue.done(key, next);
            }
        });
    }
    workers
}

/// Backoff for re-establishing watches: capped at a few seconds, because a watch that is
/// down means binds wait (kube-rs's default grows to 30 s). Reset by the first good event.
#[derive(Default)]
struct WatchBackoff {
    failures: u32,
}

impl WatchBackoff {
    const POLICY: Backoff = Backoff {
        base: Duration::from_millis(200),
        max: Duration::from_secs(5),
    };
}

impl Iterator for WatchBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        self.failures = self.failures.saturating_add(1);
        Some(Self::POLICY.jittered(self.failures))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.failures = 0;
    }
}

fn key_of(obj: &Lenient<BindRequest>) -> Option<Key> {
    Some(Key {
        namespace: obj.namespace()?,
        name: obj.name_any(),
    })
}

/// Watches this node's BindRequests (label `selected-node=<node>`), keeping the store
/// current and queueing every change. Errors (410 Gone, API restarts) are retried with
/// backoff by the watcher, which relists and re-delivers everything.
async fn watch_requests(
    client: Client,
    cfg: AgentConfig,
    mut writer: Writer<Lenient<BindRequest>>,
    queue: Arc<WorkQueue>,
    stats: Arc<Stats>,
    parking: Arc<parking::ParkingLot>,
    stop: CancellationToken,
) {
    let store = writer.as_reader();
    let api: Api<Lenient<BindRequest>> = match &cfg.namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    // api_calls::LIST_BIND_REQUESTS, WATCH_BIND_REQUESTS
    let wc = watcher::Config::default()
        .labels(&format!("{SELECTED_NODE_LABEL}={}", cfg.node_name))
        .page_size(500);
    let stream = watcher::watcher(api, wc)
        .backoff(WatchBackoff::default())
        .modify(slim_request);
    futures::pin_mut!(stream);
    // During a (re)list the store keeps showing the previous state until `InitDone`, so the
    // listed keys are queued only then: a worker must never look for an object the store
    // does not show yet (it would take it for deleted and drop the request).
    let mut listed: Vec<(Key, bool)> = Vec::new();
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => return,
            ev = stream.try_next() => ev,
        };
        match ev {
            Ok(Some(ev)) => {
                // A changed spec (or a new object) may change the outcome: retry at once.
                // Anything else, notably our own status writes, must not cut a backoff short.
                let spec_changed = match &ev {
                    Event::Apply(o) | Event::InitApply(o) => {
                        let old = key_of(o).and_then(|k| {
                            store.get(&reflector::ObjectRef::new(&k.name).within(&k.namespace))
                        });
                        match (old.as_deref().map(|g| &g.0), &o.0) {
                            (Some(Ok(old)), Ok(new)) => old.spec != new.spec,
                            _ => true,
                        }
                    }
                    _ => false,
                };
                writer.apply_watcher_event(&ev);
                match &ev {
                    Event::Apply(o) => {
                        if let Some(k) = key_of(o) {
                            enqueue(&queue, k, spec_changed);
                        }
                    }
                    Event::InitApply(o) => {
                        if let Some(k) = key_of(o) {
                            listed.push((k, spec_changed));
                        }
                    }
                    Event::Delete(o) => {
                        if let Some(k) = key_of(o) {
                            queue.remove(&k);
                            parking.unpark(&k);
                            stats.forget(&k);
                        }
                    }
                    Event::Init => listed.clear(),
                    Event::InitDone => {
                        for (k, hard) in listed.drain(..) {
                            enqueue(&queue, k, hard);
                        }
                    }
                }
            }
            Ok(None) => return,
            Err(e) => tracing::warn!(error = %e, "BindRequest watch error; retrying"),
        }
    }
}

fn enqueue(queue: &WorkQueue, key: Key, hard: bool) {
    if hard {
        queue.add(key);
    } else {
        queue.add_soft(key);
    }
}

/// Drops what the agent never reads from its cached copy of a BindRequest: the cache
/// holds every request of the node (settled ones included), so this is most of the
/// agent's memory. `status.nodeVerification` is only ever written (computed afresh per
/// attempt); managedFields and kubectl's last-applied copy of the object are never used.
fn slim_request(o: &mut Lenient<BindRequest>) {
    o.managed_fields_mut().clear();
    if let Some(a) = kube::Resource::meta_mut(o).annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    if let Ok(br) = &mut o.0
        && let Some(st) = br.status.as_mut()
    {
        st.node_verification = None;
    }
    // A settled request is only ever looked at to see that it is settled: keep its identity
    // and phase, drop the rest. (`is_settled` needs no default limit here: a settled request
    // stays settled without its spec.)
    if let Ok(br) = &mut o.0
        && binding::is_settled(br, 1)
    {
        br.spec = Default::default();
        if let Some(st) = br.status.as_mut() {
            st.reason = None;
        }
        let meta = &mut br.metadata;
        meta.labels = None;
        meta.annotations = None;
        meta.owner_references = None;
        meta.finalizers = None;
    }
}

/// Watches this node's Node object only (field selector on its name). A change to what
/// the node checks read (cordon, taints) re-queues every unsettled request at once.
async fn watch_node(
    client: Client,
    node_name: String,
    writer: Writer<Node>,
    requests: Store<Lenient<BindRequest>>,
    queue: Arc<WorkQueue>,
    stop: CancellationToken,
) {
    // api_calls::LIST_NODES, WATCH_NODES
    let fields = format!("metadata.name={node_name}");
    let mut last_spec = None;
    cache_watch(Api::all(client), &fields, writer, stop, "Node", |ev| {
        if let Event::Apply(n) | Event::InitApply(n) = ev {
            let spec = n.spec.clone();
            if last_spec.is_some() && last_spec != Some(spec.clone()) {
                for br in requests.state() {
                    if let (Some(k), Ok(b)) = (key_of(&br), &br.0)
                        && !binding::is_settled(b, 0)
                    {
                        queue.add(k);
                    }
                }
            }
            last_spec = Some(spec);
        }
    })
    .await;
}

/// Keeps the cache of the ResourceSlices published for this node (field selector
/// `spec.nodeName`). Workers do not wait for it: until it has synced (or when the cluster
/// serves no `resource.k8s.io/v1`), the dra plugin lists slices per bind as it would
/// without the cache. Slices for all nodes or by node selector are not cached: the plugin
/// lists them only when a device is not found here (see `plugins::dra`).
async fn watch_slices(
    client: Client,
    node_name: String,
    writer: Writer<ResourceSlice>,
    stop: CancellationToken,
) {
    // api_calls::LIST_RESOURCE_SLICES, WATCH_RESOURCE_SLICES
    let fields = format!("spec.nodeName={node_name}");
    cache_watch(
        Api::all(client),
        &fields,
        writer,
        stop,
        "ResourceSlice",
        |_| {},
    )
    .await;
}

/// Keeps `writer`'s cache of the objects `fields` selects, calling `on_event` after each
/// event is applied, until `stop`. Warns once per run of failures (a cluster without an
/// API group fails such a watch forever), then logs at debug level.
async fn cache_watch<K>(
    api: Api<K>,
    fields: &str,
    mut writer: Writer<K>,
    stop: CancellationToken,
    what: &'static str,
    mut on_event: impl FnMut(&Event<K>),
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let wc = watcher::Config::default().fields(fields);
    let stream = watcher::watcher(api, wc)
        .backoff(WatchBackoff::default())
        .modify(|o| o.managed_fields_mut().clear());
    futures::pin_mut!(stream);
    let mut failing = false;
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => return,
            ev = stream.next() => ev,
        };
        match ev {
            Some(Ok(ev)) => {
                failing = false;
                writer.apply_watcher_event(&ev);
                on_event(&ev);
            }
            Some(Err(e)) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "{what} watch error; retrying");
            }
            Some(Err(e)) => tracing::debug!(error = %e, "{what} watch error; retrying"),
            None => return,
        }
    }
}
