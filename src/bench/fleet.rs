//! `bindlet bench --fleet N[,N...]`: node agents against a central binder at fleet scale.
//!
//! For each N and each mode, on a fresh server (the embedded simulator, or `--kubeconfig`):
//! N Nodes, the pods of the run spread over them (pod i on node i mod N), then the binders
//! in a process of their own (`bench-host`): N node agents, or one central binder with
//! KAI's defaults (`central.rs`). Then an idle phase (no request at all: what the binders
//! cost the API server by themselves), a warm-up, and the load: `--requests` BindRequests
//! with at most `--concurrency` in flight over the whole cluster, the same load generator
//! and latency measure as the single-agent bench, for both modes.

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::time::Instant;

use super::host::{Mode, node_name};
use super::process::ProcSample;
use super::report::{Latency, Machine, TargetCheck};
use super::{BenchArgs, BenchError, diff, own_requests, wait_settled, workload};
use crate::sim::{RequestCounts, Simulator};

/// kube-rs's watcher asks the server to end each watch after 290 s (`WatchParams`
/// default); the watcher then resumes from its last resourceVersion: one request per watch
/// per 290 s, which an idle phase shorter than that does not see.
pub const WATCH_RESTART_S: f64 = 290.0;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetReport {
    pub target: String,
    pub machine: Machine,
    pub server_version: Option<String>,
    pub requests: usize,
    pub concurrency: usize,
    pub agent_workers: usize,
    pub idle_seconds: f64,
    pub points: Vec<FleetPoint>,
    pub targets: Vec<TargetCheck>,
}

/// One mode at one N.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetPoint {
    pub nodes: usize,
    pub mode: Mode,
    /// Binder instances: N agents, or 1.
    pub binders: usize,
    /// From starting the binders' process to every binder ready.
    pub start_seconds: f64,
    pub created: usize,
    pub binds: usize,
    pub errors: usize,
    pub seconds: f64,
    pub binds_per_s: f64,
    /// BindRequest creation to pod bound.
    pub latency_ms: Latency,
    /// Whether the server's requests were counted (the simulator counts them; on a real
    /// cluster the request figures below are zero and shown as n/a).
    pub counted: bool,
    /// API requests/s of the binders during the load (the load generator's own taken out).
    pub load: Rates,
    /// API requests/s of the binders with no request at all.
    pub idle: Rates,
    /// `idle.total_per_s` per binder.
    pub idle_per_binder_req_s: f64,
    /// Plus the binders' watch restarts (one per watch per 290 s), which an idle phase
    /// shorter than 290 s does not see.
    pub idle_per_binder_with_watch_restarts_req_s: f64,
    /// Watches open on the server while idle (the binders' only).
    pub open_watches: Option<usize>,
    pub process: Option<HostProcess>,
    /// CPU of the bench process (simulator and load generator) during the load, % of one core.
    pub server_cpu_percent: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Rates {
    pub total_per_s: f64,
    /// GET/POST/PATCH/PUT on pods, bindings, BindRequests and claims.
    pub bind_work_per_s: f64,
    /// Leases, watches, lists.
    pub other_per_s: f64,
    /// "verb resource" -> requests/s.
    pub by_request: BTreeMap<String, f64>,
}

impl Rates {
    fn of(counts: &RequestCounts, seconds: f64) -> Rates {
        let per_s = |n: u64| {
            if seconds > 0.0 {
                n as f64 / seconds
            } else {
                0.0
            }
        };
        let mut r = Rates::default();
        for ((verb, res), n) in &counts.0 {
            let v = per_s(*n);
            if is_bind_work(verb, res) {
                r.bind_work_per_s += v;
            } else {
                r.other_per_s += v;
            }
            r.total_per_s += v;
            r.by_request.insert(format!("{verb} {res}"), v);
        }
        r
    }
}

fn is_bind_work(verb: &str, res: &str) -> bool {
    matches!(verb, "get" | "create" | "update" | "patch")
        && (res.starts_with("pods")
            || res.starts_with("bindrequests")
            || res.starts_with("resourceclaims")
            || res == "events")
}

/// The binders' process: peak memory, and CPU per bind and while idle.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostProcess {
    pub peak_rss_mib: f64,
    /// Resident memory while idle, per binder (N agents share one process).
    pub idle_rss_kib_per_binder: f64,
    pub cpu_ms_per_bind: f64,
    /// Percent of one core, all binders together, while idle.
    pub idle_cpu_percent: f64,
    pub idle_cpu_percent_per_binder: f64,
}

struct Host {
    child: Child,
}

impl Host {
    fn start(
        exe: &Path,
        kubeconfig: &Path,
        mode: Mode,
        prefix: &str,
        nodes: usize,
        ns: &str,
        workers: usize,
    ) -> Result<(Host, std::sync::mpsc::Receiver<bool>), BenchError> {
        let mut child = Command::new(exe)
            .arg("--log-level")
            .arg("error")
            .arg("bench-host")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--mode")
            .arg(mode.as_str())
            .arg("--node-prefix")
            .arg(prefix)
            .arg("--nodes")
            .arg(nodes.to_string())
            .arg("--lease-namespace")
            .arg(ns)
            .arg("--workers")
            .arg(workers.to_string())
            .env_remove("BINDLET_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| BenchError::Agent(format!("cannot start {}: {e}", exe.display())))?;
        let out = child
            .stdout
            .take()
            .ok_or_else(|| BenchError::Agent("no stdout of the binders' process".into()))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = std::io::BufReader::new(out).lines();
            let ready = matches!(lines.next(), Some(Ok(l)) if l.trim() == "ready");
            let _ = tx.send(ready);
            // Keep reading so the child never blocks on a full pipe.
            for _ in lines {}
        });
        Ok((Host { child }, rx))
    }

    fn sample(&self) -> Option<ProcSample> {
        ProcSample::read(self.child.id())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_ready(
    host: &mut Host,
    rx: std::sync::mpsc::Receiver<bool>,
) -> Result<(), BenchError> {
    let t0 = Instant::now();
    loop {
        match rx.try_recv() {
            Ok(true) => return Ok(()),
            Ok(false) | Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                return Err(BenchError::Agent(
                    "the binders' process ended before it was ready".into(),
                ));
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => {}
        }
        if let Ok(Some(status)) = host.child.try_wait() {
            return Err(BenchError::Agent(format!(
                "the binders' process exited early ({status})"
            )));
        }
        if t0.elapsed() > Duration::from_secs(900) {
            return Err(BenchError::Timeout("the binders to be ready".into()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn run(args: &BenchArgs, sizes: &[usize]) -> Result<FleetReport, BenchError> {
    if sizes.is_empty() || sizes.contains(&0) || args.requests == 0 || args.concurrency == 0 {
        return Err(BenchError::Args(
            "--fleet sizes, --requests and --concurrency must be at least 1".into(),
        ));
    }
    let exe = match &args.agent_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| BenchError::Agent(format!("cannot find this executable: {e}")))?,
    };
    let mut points = Vec::new();
    let mut server_version = None;
    for &n in sizes {
        for mode in [Mode::Fleet, Mode::Central] {
            eprintln!("bench --fleet: N = {n}, {} ...", mode.as_str());
            let (point, version) = one_point(args, &exe, n, mode).await?;
            eprintln!(
                "bench --fleet: N = {n}, {}: {:.0} binds/s, p99 {:.0} ms, idle {:.3} req/s per binder",
                mode.as_str(),
                point.binds_per_s,
                point.latency_ms.p99,
                point.idle_per_binder_req_s
            );
            server_version = server_version.or(version);
            points.push(point);
        }
    }
    let mut report = FleetReport {
        target: if args.kubeconfig.is_some() {
            "cluster (--kubeconfig)".into()
        } else {
            "embedded simulator".into()
        },
        machine: Machine::this(),
        server_version,
        requests: args.requests,
        concurrency: args.concurrency,
        agent_workers: args.fleet_workers,
        idle_seconds: args.idle_seconds,
        points,
        targets: Vec::new(),
    };
    report.judge();
    Ok(report)
}

async fn one_point(
    args: &BenchArgs,
    exe: &Path,
    n: usize,
    mode: Mode,
) -> Result<(FleetPoint, Option<String>), BenchError> {
    // A fresh simulator per point, or the cluster (reused; the point's own namespace and
    // Nodes are removed afterwards).
    let srv = super::connect(args).await?;
    let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let ns = format!("bindlet-fleet-{tag}");
    let prefix = format!("bf-{tag}");
    let nodes: Vec<String> = (0..n).map(|i| node_name(&prefix, i)).collect();
    let result = measure_point(args, exe, &srv, &ns, &prefix, &nodes, mode).await;
    if srv.sim.is_none() {
        remove(&srv.client, &ns, &nodes).await;
    }
    if let Some(sim) = srv.sim {
        sim.shutdown().await;
    }
    result
}

async fn measure_point(
    args: &BenchArgs,
    exe: &Path,
    srv: &super::Target,
    ns: &str,
    prefix: &str,
    nodes: &[String],
    mode: Mode,
) -> Result<(FleetPoint, Option<String>), BenchError> {
    let client = &srv.client;
    let version = client.apiserver_version().await.ok().map(|v| v.git_version);
    let counts = || srv.sim.as_ref().map(Simulator::request_count);
    let (r, c) = (args.requests, args.concurrency);
    let warm = c;
    create_namespace(client, ns).await?;
    create_nodes(client, nodes).await?;
    let mut brs = workload::prepare(client, ns, nodes, "f", 0..warm + r, 0).await?;
    let main = brs.split_off(warm);

    let t0 = Instant::now();
    let (mut host, ready) = Host::start(
        exe,
        &srv.kubeconfig,
        mode,
        prefix,
        nodes.len(),
        ns,
        args.fleet_workers,
    )?;
    wait_ready(&mut host, ready).await?;
    let start_seconds = t0.elapsed().as_secs_f64();
    // Let the start-up's lists and Lease creations pass before measuring the idle cost.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let binders = match mode {
        Mode::Fleet => nodes.len(),
        Mode::Central => 1,
    };
    let (c0, p0, t_idle) = (counts(), host.sample(), Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(args.idle_seconds.max(0.0))).await;
    let idle_s = t_idle.elapsed().as_secs_f64();
    let (c1, p1) = (counts(), host.sample());
    let open_watches = srv.sim.as_ref().map(Simulator::open_watches);
    let idle = match (&c0, &c1) {
        (Some(b), Some(a)) => Rates::of(&diff(a, b), idle_s),
        _ => Rates::default(),
    };
    let idle_per_binder = idle.total_per_s / binders as f64;
    let watches_per_binder = open_watches.map_or(0.0, |w| w as f64 / binders as f64);

    // Warm-up, then the load.
    let deadline = Duration::from_secs(120) + Duration::from_millis(100 * (warm + r) as u64);
    workload::drive(client, ns, 0, brs, c, None, deadline).await?;
    wait_settled(client, ns, 0, warm, deadline).await?;
    let (c2, p2, s2) = (
        counts(),
        host.sample(),
        ProcSample::read(std::process::id()),
    );
    let timings = workload::drive(client, ns, warm, main, c, None, deadline).await?;
    let span = timings.span().map_or(0.0, |d| d.as_secs_f64());
    let (p3, s3) = (host.sample(), ProcSample::read(std::process::id()));
    // Requests are counted once every status is written (the writes follow the bind the
    // pod watch saw); rates are over the span from the first create to the last bind.
    let (succeeded, polls) = wait_settled(client, ns, warm, r, deadline).await?;
    let c3 = counts();
    let load = match (&c2, &c3) {
        (Some(b), Some(a)) => {
            let d = diff(a, b);
            let own = own_requests(&d, polls);
            let mut binders_only = d.clone();
            for (k, v) in binders_only.0.iter_mut() {
                *v = v.saturating_sub(own.0.get(k).copied().unwrap_or(0));
            }
            binders_only.0.retain(|_, v| *v > 0);
            Rates::of(&binders_only, span)
        }
        _ => Rates::default(),
    };
    let binds = timings.bound_count();
    let process = match (p0, p1, p2, p3) {
        (Some(p0), Some(p1), Some(p2), Some(p3)) => Some(HostProcess {
            peak_rss_mib: p3.peak_rss_kib as f64 / 1024.0,
            idle_rss_kib_per_binder: p1.rss_kib as f64 / binders as f64,
            cpu_ms_per_bind: if binds > 0 {
                (p3.cpu_s - p2.cpu_s) * 1000.0 / binds as f64
            } else {
                0.0
            },
            idle_cpu_percent: (p1.cpu_s - p0.cpu_s) / idle_s.max(1e-9) * 100.0,
            idle_cpu_percent_per_binder: (p1.cpu_s - p0.cpu_s) / idle_s.max(1e-9) * 100.0
                / binders as f64,
        }),
        _ => None,
    };
    let server_cpu_percent = match (s2, s3) {
        (Some(a), Some(b)) if span > 0.0 => Some((b.cpu_s - a.cpu_s) / span * 100.0),
        _ => None,
    };
    drop(host);
    let point = FleetPoint {
        nodes: nodes.len(),
        mode,
        binders,
        start_seconds,
        created: r,
        binds,
        errors: r.saturating_sub(binds.min(succeeded)),
        seconds: span,
        binds_per_s: if span > 0.0 { binds as f64 / span } else { 0.0 },
        latency_ms: Latency::of(timings.latencies()),
        counted: srv.sim.is_some(),
        load,
        idle_per_binder_req_s: idle_per_binder,
        idle_per_binder_with_watch_restarts_req_s: idle_per_binder
            + watches_per_binder / WATCH_RESTART_S,
        idle,
        open_watches,
        process,
        server_cpu_percent,
    };
    Ok((point, version))
}

async fn create_namespace(client: &Client, ns: &str) -> Result<(), BenchError> {
    let obj: Namespace = serde_json::from_value(json!({ "metadata": { "name": ns } }))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &obj)
        .await?;
    let default: ServiceAccount =
        serde_json::from_value(json!({ "metadata": { "name": "default" } }))?;
    match Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &default)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Ready Nodes without the not-ready taint, as a kubelet would leave them.
async fn create_nodes(client: &Client, nodes: &[String]) -> Result<(), BenchError> {
    let api = Api::<Node>::all(client.clone());
    futures::stream::iter(nodes)
        .map(|name| {
            let api = api.clone();
            async move {
                let obj: Node = serde_json::from_value(json!({
                    "metadata": { "name": name, "labels": {
                        "kubernetes.io/hostname": name, "bindlet.dev/bench": "true" } },
                    "status": {
                        "capacity": { "cpu": "128", "memory": "2Ti", "pods": "110" },
                        "allocatable": { "cpu": "126", "memory": "2000Gi", "pods": "110" },
                        "conditions": [ { "type": "Ready", "status": "True" } ]
                    }
                }))?;
                api.create(&PostParams::default(), &obj).await?;
                crate::sim::kubelet::report_node_ready(client, name, &[]).await?;
                Ok::<_, BenchError>(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// On a real cluster: force-delete the pods (no kubelet confirms), then the namespace and
/// the Nodes.
async fn remove(client: &Client, ns: &str, nodes: &[String]) {
    use k8s_openapi::api::core::v1::Pod;
    let force = DeleteParams::default().grace_period(0);
    let _ = Api::<Pod>::namespaced(client.clone(), ns)
        .delete_collection(&force, &Default::default())
        .await;
    let _ = Api::<Namespace>::all(client.clone())
        .delete(ns, &DeleteParams::default())
        .await;
    let api = Arc::new(Api::<Node>::all(client.clone()));
    futures::stream::iter(nodes)
        .for_each_concurrent(32, |n| {
            let api = api.clone();
            async move {
                let _ = api.delete(n, &DeleteParams::default()).await;
            }
        })
        .await;
}

impl FleetReport {
    fn point(&self, n: usize, mode: Mode) -> Option<&FleetPoint> {
        self.points.iter().find(|p| p.nodes == n && p.mode == mode)
    }

    /// The targets: idle cost per agent, and fleet vs central at N = 500.
    pub fn judge(&mut self) {
        let mut t = Vec::new();
        for p in self.points.iter().filter(|p| p.mode == Mode::Fleet) {
            let v = p.idle_per_binder_with_watch_restarts_req_s;
            if !p.counted {
                t.push(TargetCheck {
                    name: format!("idle API requests/s per agent, N = {}", p.nodes),
                    target: "<= 0.1 (watch restarts included)".into(),
                    value: "n/a (requests are counted on the simulator)".into(),
                    met: None,
                });
                continue;
            }
            t.push(TargetCheck {
                name: format!("idle API requests/s per agent, N = {}", p.nodes),
                target: "<= 0.1 (watch restarts included)".into(),
                value: format!(
                    "{:.3} ({:.3} measured + watch restarts)",
                    v, p.idle_per_binder_req_s
                ),
                met: Some(v <= 0.1),
            });
        }
        let goal = "fleet >= 5x central, N = 500";
        t.push(
            match (self.point(500, Mode::Fleet), self.point(500, Mode::Central)) {
                (Some(f), Some(c)) if c.binds_per_s > 0.0 => {
                    let ratio = f.binds_per_s / c.binds_per_s;
                    TargetCheck {
                        name: "cluster binds/s".into(),
                        target: goal.into(),
                        value: format!(
                            "{ratio:.1}x ({:.0} vs {:.1} binds/s)",
                            f.binds_per_s, c.binds_per_s
                        ),
                        met: Some(ratio >= 5.0),
                    }
                }
                _ => TargetCheck {
                    name: "cluster binds/s".into(),
                    target: goal.into(),
                    value: "n/a (run with --fleet 500)".into(),
                    met: None,
                },
            },
        );
        self.targets = t;
    }

    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(
            s,
            "bindlet bench --fleet: {} requests per point, {} in flight over the cluster, {} ({} CPUs {}, {}/{})",
            self.requests, self.concurrency, self.target, m.cpus, m.cpu_model, m.os, m.arch
        );
        if let Some(v) = &self.server_version {
            let _ = writeln!(s, "API server: {v}");
        }
        let _ = writeln!(
            s,
            "binders: fleet = N node agents ({} workers each, one process, one thread); central = 1 binder, QPS {} burst {} workers {} (KAI's defaults)",
            self.agent_workers,
            super::central::KAI_QPS,
            super::central::KAI_BURST,
            super::central::KAI_WORKERS
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:>5} {:<8} {:>9} {:>8} {:>8} {:>7} {:>10} {:>10} {:>9} {:>11} {:>8} {:>9} {:>8} {:>9}",
            "N",
            "mode",
            "binds/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "load req/s",
            "(bind)",
            "idle r/s",
            "idle/binder",
            "watches",
            "RSS/bndr",
            "ms/bind",
            "server%"
        );
        for p in &self.points {
            let (rss, ms) = p.process.as_ref().map_or(("-".into(), "-".into()), |h| {
                (
                    format!("{:.0}K", h.idle_rss_kib_per_binder),
                    format!("{:.3}", h.cpu_ms_per_bind),
                )
            });
            let _ = writeln!(
                s,
                "{:>5} {:<8} {:>9.1} {:>8.1} {:>8.1} {:>7} {:>10} {:>10} {:>9} {:>11} {:>8} {:>9} {:>8} {:>9}",
                p.nodes,
                p.mode.as_str(),
                p.binds_per_s,
                p.latency_ms.p50,
                p.latency_ms.p99,
                p.errors,
                counted(p, p.load.total_per_s, 0),
                counted(p, p.load.bind_work_per_s, 0),
                counted(p, p.idle.total_per_s, 2),
                counted(p, p.idle_per_binder_req_s, 3),
                p.open_watches.map_or("-".into(), |w| w.to_string()),
                rss,
                ms,
                p.server_cpu_percent
                    .map_or("-".into(), |c| format!("{c:.0}")),
            );
        }
        let _ = writeln!(s);
        for p in self.points.iter().filter(|p| p.counted) {
            let idle: Vec<String> = p
                .idle
                .by_request
                .iter()
                .map(|(k, v)| format!("{k} {v:.2}"))
                .collect();
            let _ = writeln!(
                s,
                "N = {} {}: idle requests/s by kind: {}",
                p.nodes,
                p.mode.as_str(),
                if idle.is_empty() {
                    "none".into()
                } else {
                    idle.join(", ")
                }
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "{:<40} {:<36} {:<44} result", "target", "goal", "value");
        for t in &self.targets {
            let mark = match t.met {
                Some(true) => "met",
                Some(false) => "NOT MET",
                None => "-",
            };
            let _ = writeln!(s, "{:<40} {:<36} {:<44} {mark}", t.name, t.target, t.value);
        }
        s
    }
}

/// A request figure of `p` with `decimals`, or n/a where the server did not count.
fn counted(p: &FleetPoint, value: f64, decimals: usize) -> String {
    if p.counted {
        format!("{value:.decimals$}")
    } else {
        "n/a".into()
    }
}
