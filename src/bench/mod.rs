//! `bindlet bench`: the real agent (a child `bindlet run` process) against the embedded
//! simulator or a real cluster, compared in the same run with the physical limit of
//! design §8 (a minimal client issuing only the unavoidable requests per pod) at the same
//! concurrency on the same server.
//!
//! Both phases use the same pod and BindRequest shapes, the same load generator (at most
//! `--concurrency` requests created and not yet bound) and the same pod watch to measure
//! latency, from just before the BindRequest create call to the watch seeing
//! `spec.nodeName` set. Each phase is warmed up with `--concurrency` requests first.

pub mod central;
pub mod fleet;
pub mod host;
mod limit;
pub mod plot;
pub mod process;
pub mod report;
mod workload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use thiserror::Error;
use tokio::time::Instant;

use crate::api::{BindRequest, Phase};
use crate::sim::{RequestCounts, SimOptions, Simulator};

use process::{AgentProcess, AgentSpec, ProcSample, TempKubeconfig};
use report::{ApiCost, Latency, Machine, PhaseReport, ProcessReport, ReasonCount, Report};

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// BindRequests per phase (the agent's and the limit's), warm-up not included.
    #[arg(long, env = "BINDLET_BENCH_REQUESTS", default_value_t = 2000)]
    pub requests: usize,
    /// BindRequests in flight at once (created, pod not yet bound); also the agent's
    /// --workers and the number of the limit client's loops.
    #[arg(long, env = "BINDLET_BENCH_CONCURRENCY", default_value_t = 16)]
    pub concurrency: usize,
    /// Direct ResourceClaims per pod (both phases), allocated to the bench node with
    /// devices of a ResourceSlice the bench publishes for it; 0 measures the plain bind.
    #[arg(long, default_value_t = 0)]
    pub dra_claims: usize,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Run against this cluster instead of the embedded simulator (creates its own
    /// namespaces and Node objects, and removes them afterwards).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (with --kubeconfig).
    #[arg(long, requires = "kubeconfig")]
    pub context: Option<String>,
    /// Seconds the agent is left idle after the run to measure its idle CPU.
    #[arg(long, default_value_t = 5.0)]
    pub idle_seconds: f64,
    /// Log filter of the agent process.
    #[arg(long, default_value = "error")]
    pub agent_log_level: String,
    /// Fleet mode: for each N of this comma-separated list, N node agents against one
    /// server, then one central binder with KAI's defaults (QPS 50, burst 300, 10 workers)
    /// serving the same N nodes, under the same load (`--requests`, `--concurrency`).
    #[arg(long, value_delimiter = ',')]
    pub fleet: Option<Vec<usize>>,
    /// Fleet mode: workers per node agent.
    #[arg(long, default_value_t = 16)]
    pub fleet_workers: usize,
    /// Fleet mode: seconds with no request at all, to measure what the binders cost the
    /// server by themselves (several Lease renewals, 15 s each; the GPU-reservation
    /// collector's first round, 30 s after start, falls in the default window).
    #[arg(long, default_value_t = 60.0)]
    pub fleet_idle_seconds: f64,
    /// Fleet mode: also draw binds/s and API requests/s against N, as SVG, to this file.
    #[arg(long, requires = "fleet")]
    pub plot: Option<PathBuf>,
    /// The bindlet binary to run as the agent (default: this executable).
    #[arg(long, hide = true)]
    pub agent_bin: Option<PathBuf>,
}

#[derive(Debug, Error)]
pub enum BenchError {
    #[error("API call failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("simulator: {0}")]
    Sim(#[from] crate::sim::SimError),
    #[error("cannot encode an object: {0}")]
    Json(#[from] serde_json::Error),
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("agent process: {0}")]
    Agent(String),
    #[error("{0}")]
    Io(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("invalid arguments: {0}")]
    Args(String),
    #[error("the agent refused the bench's requests: {0}")]
    AgentRefused(String),
}

/// Where the bench runs: the simulator in this process, or a real cluster.
struct Target {
    sim: Option<Simulator>,
    client: Client,
    kubeconfig: PathBuf,
    _temp: Option<TempKubeconfig>,
    installed_crd: bool,
}

impl Target {
    fn counts(&self) -> Option<RequestCounts> {
        self.sim.as_ref().map(Simulator::request_count)
    }
}

fn diff(after: &RequestCounts, before: &RequestCounts) -> RequestCounts {
    RequestCounts(
        after
            .0
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.saturating_sub(before.0.get(k).copied().unwrap_or(0)),
                )
            })
            .filter(|(_, v)| *v > 0)
            .collect(),
    )
}

/// What the load generator itself sends during a phase, whatever the binder is: the
/// creates, the pod watch, and its own status polling.
fn own_requests(delta: &RequestCounts, polls: u64) -> RequestCounts {
    let mut own = RequestCounts::default();
    for (verb, res) in [
        ("create", "bindrequests"),
        ("list", "pods"),
        ("watch", "pods"),
    ] {
        let n = delta.get(verb, res);
        own.0.insert((verb.into(), res.into()), n);
    }
    own.0.insert(("list".into(), "bindrequests".into()), polls);
    own
}

/// `bench --fleet`: the fleet report (and, with `--plot`, the SVG written).
pub async fn run_fleet(args: BenchArgs) -> Result<fleet::FleetReport, BenchError> {
    let sizes = args.fleet.clone().unwrap_or_default();
    let mut fleet_args = args.clone();
    fleet_args.idle_seconds = args.fleet_idle_seconds;
    let report = fleet::run(&fleet_args, &sizes).await?;
    if let Some(path) = &args.plot {
        std::fs::write(path, plot::svg(&report))
            .map_err(|e| BenchError::Io(format!("writing {}: {e}", path.display())))?;
    }
    Ok(report)
}

pub async fn run(args: BenchArgs) -> Result<Report, BenchError> {
    if args.requests == 0 || args.concurrency == 0 {
        return Err(BenchError::Args(
            "--requests and --concurrency must be at least 1".into(),
        ));
    }
    let exe = match &args.agent_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| BenchError::Agent(format!("cannot find this executable: {e}")))?,
    };
    let target = connect(&args).await?;
    let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let names = Names {
        limit_ns: format!("bindlet-bench-{tag}-limit"),
        agent_ns: format!("bindlet-bench-{tag}-agent"),
        limit_node: format!("bindlet-bench-{tag}-limit"),
        agent_node: format!("bindlet-bench-{tag}-agent"),
    };
    let result = measure(&args, &target, &names, &exe).await;
    cleanup(target, &names).await;
    result
}

struct Names {
    limit_ns: String,
    agent_ns: String,
    limit_node: String,
    agent_node: String,
}

async fn connect(args: &BenchArgs) -> Result<Target, BenchError> {
    match &args.kubeconfig {
        None => {
            let sim = Simulator::start(SimOptions {
                crds: vec![crate::api::crd()],
                ..Default::default()
            })
            .await?;
            let temp = TempKubeconfig::write(&sim.kubeconfig_yaml())?;
            Ok(Target {
                client: sim.client(),
                kubeconfig: temp.path.clone(),
                _temp: Some(temp),
                sim: Some(sim),
                installed_crd: false,
            })
        }
        Some(path) => {
            let client = crate::kubeapi::connect(Some(path), args.context.as_deref())
                .await
                .map_err(|e| BenchError::Kubeconfig(e.to_string()))?;
            let installed_crd = ensure_crd(&client).await?;
            Ok(Target {
                sim: None,
                client,
                kubeconfig: path.clone(),
                _temp: None,
                installed_crd,
            })
        }
    }
}

const CRD_NAME: &str = "bindrequests.scheduling.run.ai";

/// Installs bindlet's CRD when the cluster has no BindRequest CRD; true if it did.
async fn ensure_crd(client: &Client) -> Result<bool, BenchError> {
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    if crds.get_opt(CRD_NAME).await?.is_some() {
        return Ok(false);
    }
    crds.create(&PostParams::default(), &crate::api::crd())
        .await?;
    let t0 = Instant::now();
    loop {
        let established = crds
            .get_opt(CRD_NAME)
            .await?
            .and_then(|c| c.status)
            .and_then(|s| s.conditions)
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        if established {
            return Ok(true);
        }
        if t0.elapsed() > Duration::from_secs(30) {
            return Err(BenchError::Timeout(
                "the BindRequest CRD to be established".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn setup(client: &Client, ns: &str, node: &str, dra: bool) -> Result<(), BenchError> {
    let namespaces = Api::<Namespace>::all(client.clone());
    let obj: Namespace = serde_json::from_value(json!({ "metadata": { "name": ns } }))?;
    namespaces.create(&PostParams::default(), &obj).await?;
    // Pods are refused until their service account exists; a cluster's serviceaccount
    // controller makes `default` shortly after the namespace, so do not race it.
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), ns);
    let default: ServiceAccount =
        serde_json::from_value(json!({ "metadata": { "name": "default" } }))?;
    match accounts.create(&PostParams::default(), &default).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    let nodes = Api::<Node>::all(client.clone());
    let obj: Node = serde_json::from_value(json!({
        "metadata": { "name": node, "labels": {
            "kubernetes.io/hostname": node,
            "bindlet.dev/bench": "true",
            "nvidia.com/gpu.present": "true"
        }},
        "spec": { "taints": [ { "key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule" } ] },
        "status": {
            "capacity": { "cpu": "128", "memory": "2Ti", "nvidia.com/gpu": "8", "pods": "110" },
            "allocatable": { "cpu": "126", "memory": "2000Gi", "nvidia.com/gpu": "8", "pods": "110" },
            "conditions": [ { "type": "Ready", "status": "True" } ]
        }
    }))?;
    let created = nodes.create(&PostParams::default(), &obj).await?;
    // Ready, without the not-ready taint admission added: otherwise a real cluster's agent
    // refuses every bind. Only the bench's own GPU taint stays.
    let gpu_taint: k8s_openapi::api::core::v1::Taint = serde_json::from_value(
        json!({ "key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule" }),
    )?;
    crate::sim::kubelet::report_node_ready(client, node, &[gpu_taint]).await?;
    if dra {
        workload::publish_slice(client, &created).await?;
    }
    Ok(())
}

async fn cleanup(target: Target, names: &Names) {
    if let Some(sim) = target.sim {
        sim.shutdown().await;
        return;
    }
    let client = target.client;
    let namespaces = Api::<Namespace>::all(client.clone());
    let nodes = Api::<Node>::all(client.clone());
    // Bound pods on a node without a kubelet never finish a graceful delete (nobody
    // confirms it), and they would keep the namespace Terminating: force them.
    for ns in [&names.limit_ns, &names.agent_ns] {
        let pods = Api::<Pod>::namespaced(client.clone(), ns);
        let force = DeleteParams::default().grace_period(0);
        if let Err(e) = pods.delete_collection(&force, &ListParams::default()).await {
            eprintln!("bench cleanup: deleting the pods of {ns}: {e}");
        }
    }
    for ns in [&names.limit_ns, &names.agent_ns] {
        if let Err(e) = namespaces.delete(ns, &DeleteParams::default()).await {
            eprintln!("bench cleanup: deleting namespace {ns}: {e}");
        }
    }
    for node in [&names.limit_node, &names.agent_node] {
        if let Err(e) = nodes.delete(node, &DeleteParams::default()).await {
            eprintln!("bench cleanup: deleting node {node}: {e}");
        }
    }
    if target.installed_crd {
        let crds = Api::<CustomResourceDefinition>::all(client);
        if let Err(e) = crds.delete(CRD_NAME, &DeleteParams::default()).await {
            eprintln!("bench cleanup: deleting the CRD: {e}");
        }
    }
}

fn deadline(n: usize) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(20 * n as u64)
}

/// Polls the namespace's BindRequests until those from `first` on are settled (or the
/// deadline passes); returns how many Succeeded and how many lists it made.
async fn wait_settled(
    client: &Client,
    ns: &str,
    first: usize,
    n: usize,
    limit: Duration,
) -> Result<(usize, u64), BenchError> {
    let api = Api::<BindRequest>::namespaced(client.clone(), ns);
    let t0 = Instant::now();
    let mut polls = 0;
    loop {
        polls += 1;
        let list = api.list(&ListParams::default()).await?;
        let mut settled = 0;
        let mut succeeded = 0;
        for br in &list.items {
            let idx = br
                .name_any()
                .rsplit('-')
                .next()
                .and_then(|s| s.parse::<usize>().ok());
            if idx.is_none_or(|i| i < first) {
                continue;
            }
            match br.phase() {
                Some(Phase::Succeeded) => {
                    settled += 1;
                    succeeded += 1;
                }
                Some(Phase::Failed) => settled += 1,
                _ => {}
            }
        }
        if settled >= n || t0.elapsed() > limit {
            return Ok((succeeded, polls));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the server's Event creates stop growing (they are written off the hot
/// path), at most `limit`.
async fn wait_events_quiet(target: &Target, limit: Duration) {
    let Some(_) = &target.sim else {
        tokio::time::sleep(Duration::from_secs(1)).await;
        return;
    };
    let t0 = Instant::now();
    let mut last = target.counts().map(|c| c.get("create", "events"));
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = target.counts().map(|c| c.get("create", "events"));
        if now == last || t0.elapsed() > limit {
            return;
        }
        last = now;
    }
}

fn phase_report(
    created: usize,
    timings: &workload::Timings,
    succeeded: usize,
    api: Option<ApiCost>,
) -> PhaseReport {
    let binds = timings.bound_count();
    let seconds = timings.span().map_or(0.0, |d| d.as_secs_f64());
    PhaseReport {
        created,
        binds,
        errors: created.saturating_sub(binds.min(succeeded)),
        create_errors: timings.create_errors,
        seconds,
        binds_per_s: if seconds > 0.0 {
            binds as f64 / seconds
        } else {
            0.0
        },
        latency_ms: Latency::of(timings.latencies()),
        api,
    }
}

async fn measure(
    args: &BenchArgs,
    target: &Target,
    names: &Names,
    exe: &std::path::Path,
) -> Result<Report, BenchError> {
    let client = &target.client;
    let server_version = client.apiserver_version().await.ok().map(|v| v.git_version);
    let (n, c) = (args.requests, args.concurrency);
    let warm = c;
    let k = args.dra_claims;
    setup(client, &names.limit_ns, &names.limit_node, k > 0).await?;
    setup(client, &names.agent_ns, &names.agent_node, k > 0).await?;
    eprintln!(
        "bench: creating {} pods per phase ({k} ResourceClaims each) ...",
        n + warm
    );
    let mut limit_brs = workload::prepare(
        client,
        &names.limit_ns,
        std::slice::from_ref(&names.limit_node),
        "l",
        0..warm + n,
        k,
    )
    .await?;
    let mut agent_brs = workload::prepare(
        client,
        &names.agent_ns,
        std::slice::from_ref(&names.agent_node),
        "a",
        0..warm + n,
        k,
    )
    .await?;
    let limit_main = limit_brs.split_off(warm);
    let agent_main = agent_brs.split_off(warm);

    // Phase 1: the physical limit.
    eprintln!("bench: limit client, {n} requests at concurrency {c} ...");
    let counts = Arc::new(limit::LimitCounts::default());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut loops = limit::start(
        client.clone(),
        names.limit_node.clone(),
        c,
        rx,
        counts.clone(),
    );
    workload::drive(
        client,
        &names.limit_ns,
        0,
        limit_brs,
        c,
        Some(tx.clone()),
        deadline(warm),
    )
    .await?;
    wait_settled(client, &names.limit_ns, 0, warm, deadline(warm)).await?;
    let before = target.counts();
    let own_before = counts.requests();
    let timings = workload::drive(
        client,
        &names.limit_ns,
        warm,
        limit_main,
        c,
        Some(tx),
        deadline(n),
    )
    .await?;
    // The channel is closed: the loops finish their last status writes and end.
    while loops.join_next().await.is_some() {}
    let (succeeded, polls) = wait_settled(client, &names.limit_ns, warm, n, deadline(n)).await?;
    let limit_api = match (before, target.counts()) {
        (Some(b), Some(a)) => {
            let d = diff(&a, &b);
            Some(ApiCost::from_counts(
                &d,
                &own_requests(&d, polls),
                timings.bound_count(),
            ))
        }
        // On a real cluster the limit client counts its own requests.
        _ => {
            let mut d = diff(&counts.requests(), &own_before);
            d.0.retain(|_, n| *n > 0);
            Some(ApiCost::from_counts(
                &d,
                &RequestCounts::default(),
                timings.bound_count(),
            ))
        }
    };
    let limit_report = phase_report(n, &timings, succeeded, limit_api);

    // Phase 2: the agent, as its own process.
    eprintln!("bench: agent, {n} requests at concurrency {c} ...");
    let mut agent = AgentProcess::start(&AgentSpec {
        exe,
        kubeconfig: &target.kubeconfig,
        context: args.context.as_deref(),
        node: &names.agent_node,
        namespace: &names.agent_ns,
        workers: c,
        log_level: &args.agent_log_level,
        diag_addr: free_loopback_addr()?,
    })?;
    wait_leading(client, &names.agent_ns, &names.agent_node, &mut agent).await?;
    workload::drive(
        client,
        &names.agent_ns,
        0,
        agent_brs,
        c,
        None,
        deadline(warm),
    )
    .await?;
    let (warm_ok, _) = wait_settled(client, &names.agent_ns, 0, warm, deadline(warm)).await?;
    if warm_ok < warm {
        // Every warm-up bind should succeed; when they do not, the main phase would only
        // measure the same refusal 2,000 times.
        let reasons = failure_reasons(client, &names.agent_ns).await?;
        agent.stop();
        return Err(BenchError::AgentRefused(format!(
            "{warm_ok} of {warm} warm-up requests bound; {}",
            describe_reasons(&reasons)
        )));
    }
    wait_events_quiet(target, Duration::from_secs(5)).await;
    agent.check_alive()?;
    let before = target.counts();
    let agent_calls_before = agent_api_requests(&agent).await;
    let cpu0 = agent.sample();
    let timings = workload::drive(
        client,
        &names.agent_ns,
        warm,
        agent_main,
        c,
        None,
        deadline(n),
    )
    .await?;
    let (succeeded, polls) = wait_settled(client, &names.agent_ns, warm, n, deadline(n)).await?;
    wait_events_quiet(target, Duration::from_secs(10)).await;
    let cpu1 = agent.sample();
    let agent_api = match (before, target.counts()) {
        (Some(b), Some(a)) => {
            let d = diff(&a, &b);
            Some(ApiCost::from_counts(
                &d,
                &own_requests(&d, polls),
                timings.bound_count(),
            ))
        }
        // On a real cluster the agent's own metrics count its requests (watches excluded).
        _ => match (agent_calls_before, agent_api_requests(&agent).await) {
            (Some(b), Some(a)) => Some(ApiCost::from_counts(
                &diff(&a, &b),
                &RequestCounts::default(),
                timings.bound_count(),
            )),
            _ => None,
        },
    };
    let agent_report = phase_report(n, &timings, succeeded, agent_api);
    let agent_failures = if agent_report.errors > 0 {
        failure_reasons(client, &names.agent_ns).await?
    } else {
        Vec::new()
    };
    eprintln!("bench: agent idle for {:.0} s ...", args.idle_seconds);
    tokio::time::sleep(Duration::from_secs_f64(args.idle_seconds.max(0.0))).await;
    let cpu2 = agent.sample();
    agent.check_alive()?;
    let pid = agent.pid();
    agent.stop();
    let agent_process =
        process_report(pid, cpu0, cpu1, cpu2, agent_report.binds, args.idle_seconds);

    let mut report = Report {
        target: if target.sim.is_some() {
            "embedded simulator".into()
        } else {
            "cluster (--kubeconfig)".into()
        },
        requests: n,
        concurrency: c,
        dra_claims: k,
        machine: Machine::this(),
        throughput_ratio: (limit_report.binds_per_s > 0.0)
            .then(|| agent_report.binds_per_s / limit_report.binds_per_s),
        p99_delta_ms: (limit_report.binds > 0 && agent_report.binds > 0)
            .then_some(agent_report.latency_ms.p99 - limit_report.latency_ms.p99),
        limit: limit_report,
        agent: agent_report,
        agent_process,
        agent_failures,
        server_version,
        targets: Vec::new(),
    };
    report.judge();
    Ok(report)
}

fn process_report(
    pid: u32,
    start: Option<ProcSample>,
    end: Option<ProcSample>,
    idle_end: Option<ProcSample>,
    binds: usize,
    idle_seconds: f64,
) -> Option<ProcessReport> {
    let (s, e, i) = (start?, end?, idle_end?);
    let mib = |kib: u64| kib as f64 / 1024.0;
    let run = e.cpu_s - s.cpu_s;
    Some(ProcessReport {
        pid,
        peak_rss_mib: mib(i.peak_rss_kib),
        rss_end_mib: mib(i.rss_kib),
        cpu_s_run: run,
        cpu_ms_per_bind: if binds > 0 {
            run * 1000.0 / binds as f64
        } else {
            0.0
        },
        cpu_s_total: i.cpu_s,
        idle_seconds,
        idle_cpu_percent: if idle_seconds > 0.0 {
            (i.cpu_s - e.cpu_s) / idle_seconds * 100.0
        } else {
            0.0
        },
    })
}

/// Waits until the agent holds its node Lease (it then syncs its caches; the warm-up
/// requests absorb that).
async fn wait_leading(
    client: &Client,
    ns: &str,
    node: &str,
    agent: &mut AgentProcess,
) -> Result<(), BenchError> {
    let leases = Api::<Lease>::namespaced(client.clone(), ns);
    let name = crate::agent::lease::lease_name(node);
    let t0 = Instant::now();
    loop {
        agent.check_alive()?;
        let held = leases
            .get_opt(&name)
            .await?
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .is_some_and(|h| !h.is_empty());
        if held {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(30) {
            return Err(BenchError::Timeout(
                "the agent process to acquire its node Lease".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A loopback address with a port free now, for the agent's diagnostics server (read by
/// the bench for the agent's own request counts).
fn free_loopback_addr() -> Result<std::net::SocketAddr, BenchError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| BenchError::Io(format!("no free loopback port: {e}")))
}

/// The agent's API requests so far by (verb, resource), from its `/metrics`
/// (`bindlet_api_requests_total`); `None` when the metrics cannot be read.
async fn agent_api_requests(agent: &AgentProcess) -> Option<RequestCounts> {
    let text = http_get(agent.diag_addr(), "/metrics").await.ok()?;
    Some(parse_api_requests(&text))
}

/// One plain-HTTP GET on loopback, answered with the body text (5 s at most).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<String, String> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioIo;
    let fetch = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        let driver = tokio::spawn(conn);
        let request = http::Request::get(path)
            .header(http::header::HOST, addr.to_string())
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        driver.abort();
        if !status.is_success() {
            return Err(format!("{path} answered {status}"));
        }
        String::from_utf8(body.to_vec()).map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .map_err(|_| format!("{path}: no answer within 5 s"))?
}

/// Sums `bindlet_api_requests_total{verb,resource,code}` samples of an agent's `/metrics`
/// text by verb and resource.
pub fn parse_api_requests(metrics: &str) -> RequestCounts {
    let mut counts = RequestCounts::default();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("bindlet_api_requests_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |key: &str| {
            labels.split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k == key).then(|| v.trim_matches('"').to_string())
            })
        };
        let (Some(verb), Some(resource), Ok(n)) = (
            label("verb"),
            label("resource"),
            value.trim().parse::<f64>(),
        ) else {
            continue;
        };
        *counts.0.entry((verb, resource)).or_insert(0) += n as u64;
    }
    counts
}

/// The reasons of the namespace's BindRequests that did not succeed, most frequent first.
async fn failure_reasons(client: &Client, ns: &str) -> Result<Vec<ReasonCount>, BenchError> {
    let list = Api::<BindRequest>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?;
    let mut by_reason: std::collections::BTreeMap<String, usize> = Default::default();
    for br in &list.items {
        if br.phase() == Some(Phase::Succeeded) {
            continue;
        }
        let reason = br
            .status
            .as_ref()
            .and_then(|s| s.reason.clone())
            .unwrap_or_else(|| "no status written (not picked up by the agent)".into());
        *by_reason.entry(reason).or_insert(0) += 1;
    }
    let mut v: Vec<ReasonCount> = by_reason
        .into_iter()
        .map(|(reason, count)| ReasonCount { reason, count })
        .collect();
    v.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.reason.cmp(&b.reason)));
    v.truncate(5);
    Ok(v)
}

fn describe_reasons(reasons: &[ReasonCount]) -> String {
    if reasons.is_empty() {
        return "no failure reason recorded".into();
    }
    let top: Vec<String> = reasons
        .iter()
        .map(|r| format!("{} x {}", r.count, r.reason))
        .collect();
    format!("top reasons: {}", top.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_requests_are_summed_by_verb_and_resource_over_codes() {
        let text = "# TYPE bindlet_api_requests counter\n\
            bindlet_api_requests_total{verb=\"get\",resource=\"pods\",code=\"200\"} 10\n\
            bindlet_api_requests_total{verb=\"get\",resource=\"pods\",code=\"404\"} 2\n\
            bindlet_api_requests_total{verb=\"create\",resource=\"pods/binding\",code=\"201\"} 9\n\
            bindlet_binds_total{outcome=\"bound\",reason=\"\"} 9\n";
        let c = parse_api_requests(text);
        assert_eq!(c.get("get", "pods"), 12);
        assert_eq!(c.get("create", "pods/binding"), 9);
        assert_eq!(c.total(), 21);
    }
}
