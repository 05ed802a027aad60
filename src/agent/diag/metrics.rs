//! The Prometheus metrics (OpenMetrics text), one registry per agent: no globals.
//! bindlet's own metrics carry the `bindlet_` prefix; the standard `process_*` metrics of
//! the agent's process are collected at scrape time beside them, unprefixed.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::system::{ProcessCollector, SystemProbe};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BindLabels {
    /// bound | already_bound | failed_retrying | failed_final
    pub outcome: String,
    /// The failure code (e.g. `PodBoundElsewhere`); empty on success.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// bound | already_bound | failed | transient | cancelled | parked
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub verb: String,
    pub resource: String,
    /// HTTP status code, or `timeout` / `error` when no answer came.
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GpuLabels {
    pub gpu: String,
    pub uuid: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    pub check: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginErrorLabels {
    pub plugin: String,
    /// The plugin's stable code (`ObjectMissing`, `NotReady`, `Unsatisfiable`,
    /// `InvalidRequest`, `WriteRejected`).
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `NotThisNode` | `StatusWriteRefused`
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WaitLabels {
    /// How the wait ended: bound | failed | gone | other
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HolderLabels {
    pub holder: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~33 s: from a quick bind to one stuck behind retries.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn wait_histogram() -> Histogram {
    // 100 ms .. ~27 min: binding conditions wait up to 600 s by default.
    Histogram::new(exponential_buckets(0.1, 2.0, 15))
}

fn stage_histogram() -> Histogram {
    // 50 µs .. ~3.3 s: most stages are in-memory checks or one API round trip.
    Histogram::new(exponential_buckets(0.00005, 2.0, 17))
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric bindlet exports.
pub struct Metrics {
    pub registry: Registry,
    pub binds: Family<BindLabels, Counter>,
    pub bind_latency: Histogram,
    pub stage_duration: HistogramFamily<StageLabels>,
    pub attempts: Family<ResultLabels, Counter>,
    pub queue_depth: Gauge,
    pub in_flight: Gauge,
    pub api_requests: Family<ApiLabels, Counter>,
    pub gpu_healthy: Family<GpuLabels, Gauge>,
    pub volume_check_failures: Family<CheckLabels, Counter>,
    pub lease_held: Gauge,
    pub lease_holder: Family<HolderLabels, Gauge>,
    pub lease_transitions: Counter,
    pub oldest_pending: Gauge<f64, AtomicU64>,
    pub ready: Gauge,
    pub requests_left_alone: Family<ReasonLabels, Counter>,
    pub plugin_errors: Family<PluginErrorLabels, Counter>,
    pub dra_binding_waits: Gauge,
    pub dra_binding_wait_seconds: HistogramFamily<WaitLabels>,
    pub permissions_missing: Gauge,
    /// This process and the node, read at scrape time (process metrics, /debug/state).
    pub system: Arc<SystemProbe>,
}

impl Default for Metrics {
    fn default() -> Self {
        let system = Arc::new(SystemProbe::own());
        let mut root = Registry::default();
        root.register_collector(Box::new(ProcessCollector::new(system.clone())));
        let registry = root.sub_registry_with_prefix("bindlet");
        let m = Metrics {
            binds: Family::default(),
            bind_latency: latency_histogram(),
            stage_duration: Family::new_with_constructor(stage_histogram as fn() -> Histogram),
            attempts: Family::default(),
            queue_depth: Gauge::default(),
            in_flight: Gauge::default(),
            api_requests: Family::default(),
            gpu_healthy: Family::default(),
            volume_check_failures: Family::default(),
            lease_held: Gauge::default(),
            lease_holder: Family::default(),
            lease_transitions: Counter::default(),
            oldest_pending: Gauge::default(),
            ready: Gauge::default(),
            requests_left_alone: Family::default(),
            plugin_errors: Family::default(),
            dra_binding_waits: Gauge::default(),
            dra_binding_wait_seconds: Family::new_with_constructor(
                wait_histogram as fn() -> Histogram,
            ),
            permissions_missing: Gauge::default(),
            system,
            registry: Registry::default(),
        };
        registry.register(
            "binds",
            "BindRequests settled (status written), by outcome and failure reason",
            m.binds.clone(),
        );
        registry.register(
            "bind_latency_seconds",
            "Time from BindRequest creation to the pod bound by this agent",
            m.bind_latency.clone(),
        );
        registry.register(
            "stage_duration_seconds",
            "Duration of each pipeline stage per attempt",
            m.stage_duration.clone(),
        );
        registry.register("attempts", "Bind attempts, by result", m.attempts.clone());
        registry.register(
            "queue_depth",
            "BindRequests waiting in the work queue (ready or backing off)",
            m.queue_depth.clone(),
        );
        registry.register(
            "in_flight",
            "BindRequests being worked on now",
            m.in_flight.clone(),
        );
        registry.register(
            "api_requests",
            "Kubernetes API requests made by the agent (watches excluded), by verb, resource and status code",
            m.api_requests.clone(),
        );
        registry.register(
            "gpu_healthy",
            "1 when the GPU is healthy, 0 when not; only present while a GPU inventory is loaded",
            m.gpu_healthy.clone(),
        );
        registry.register(
            "volume_check_failures",
            "Failed volume checks, by check",
            m.volume_check_failures.clone(),
        );
        registry.register(
            "lease_held",
            "1 when this agent holds the node Lease",
            m.lease_held.clone(),
        );
        registry.register(
            "lease_holder",
            "The node Lease's holder as last observed (value 1)",
            m.lease_holder.clone(),
        );
        registry.register(
            "lease_transitions",
            "Changes of the node Lease's holder seen by this agent (a release counts as a change to nobody)",
            m.lease_transitions.clone(),
        );
        registry.register(
            "oldest_pending_seconds",
            "Age (since creation) of the oldest BindRequest this agent has attempted and not yet settled; 0 when none or when not holding the Lease",
            m.oldest_pending.clone(),
        );
        registry.register("ready", "1 when /readyz answers ready", m.ready.clone());
        registry.register(
            "requests_left_alone",
            "BindRequest versions this agent stopped working on without writing a status (not this node's, or the status write was refused), by reason",
            m.requests_left_alone.clone(),
        );
        registry.register(
            "plugin_errors",
            "Attempts a plugin's pre-bind step failed, by plugin and the plugin's code",
            m.plugin_errors.clone(),
        );
        registry.register(
            "dra_binding_waits",
            "BindRequests parked until a DRA claim's binding conditions are met",
            m.dra_binding_waits.clone(),
        );
        registry.register(
            "dra_binding_wait_seconds",
            "How long BindRequests waited for DRA binding conditions, by how the wait ended",
            m.dra_binding_wait_seconds.clone(),
        );
        registry.register(
            "permissions_missing",
            "API permissions the agent needs and lacks, per the self-check at start (SelfSubjectAccessReview)",
            m.permissions_missing.clone(),
        );
        Metrics {
            registry: root,
            ..m
        }
    }
}

impl Metrics {
    /// OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
