//! `bindlet demo`: the real agent, in-process, against the embedded simulated control
//! plane, with a realistic mix of requests; prints what happened and exits non-zero
//! unless every request reached its expected outcome.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::resource::v1::{DeviceClass, ResourceClaim, ResourceSlice};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::time::Instant;

use crate::agent;
use crate::agent::AgentArgs;
use crate::api::{BindRequest, Phase};
use crate::sim::{SimOptions, Simulator};

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Number of BindRequests to create.
    #[arg(long, env = "BINDLET_DEMO_PODS", default_value_t = 300)]
    pub pods: usize,
    /// Name of the simulated GPU node the agent serves.
    #[arg(long, env = "BINDLET_DEMO_NODE", default_value = "gpu-node-1")]
    pub node_name: String,
    /// Keep the simulated control plane and the agent running after the summary (Ctrl-C to stop).
    #[arg(long, env = "BINDLET_DEMO_KEEP_RUNNING")]
    pub keep_running: bool,
    #[command(flatten)]
    pub agent: AgentArgs,
    #[command(flatten)]
    pub diag: crate::diag::DiagArgs,
}

const NAMESPACE: &str = "bindlet-demo";
const OTHER_NODE: &str = "gpu-node-2";
const GPU_TAINT: &str = "nvidia.com/gpu";
/// The demo node's GPU 5 reports XID 79 (fallen off the bus) at the first probe.
const UNHEALTHY_GPU: &str = "GPU-00000005-demo";
const UNHEALTHY_GROUP: &str = "demo-group-on-gpu-5";
/// A GPU group already holding 0.75 of GPU 7 when the demo starts.
const FULL_GPU: &str = "GPU-00000007-demo";
const FULL_GROUP: &str = "demo-group-on-gpu-7";
/// Fractional pods per new GPU group, and the portion each gets.
const SHARES_PER_GROUP: usize = 4;
const SHARE: &str = "0.2";
/// Fractional pods in new groups (two GPUs' worth of groups).
const SHARE_PODS: usize = 8;

/// The demo node's GPUs: 8 H100s, one of which has a scripted XID 79.
fn demo_inventory() -> String {
    format!(
        "{}faults:\n  - {{ gpu: {UNHEALTHY_GPU}, afterProbes: 1, xid: 79 }}\n",
        crate::gpu::file::InventoryFile::healthy_node(8)
    )
}
const STATIC_CLASS: &str = "local-ssd";
const DYNAMIC_CLASS: &str = "local-dynamic";
const DYNAMIC_PROVISIONER: &str = "bindlet.sim/local-path";

/// The kinds of request the demo creates, each with the outcome it must reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Case {
    Plain,
    Gpu,
    ShareFull,
    AlreadyBoundHere,
    OtherNodeLabel,
    WrongSelectedNode,
    BoundElsewhere,
    PodDeleted,
    Malformed,
    UidMismatch,
    TaintNotTolerated,
    WholeGpus,
    GpuUnhealthy,
    TooManyGpus,
    LocalVolume,
    DynamicVolume,
    VolumeShortOfSpace,
    DraClaim,
    DraUnhealthyGpu,
    DraOtherNode,
    DraTaintedDevice,
    DraWaitsForDriver,
    NumaFits,
    NumaMismatch,
    ExtendedResource,
}

impl Case {
    fn label(self) -> &'static str {
        match self {
            Case::Plain => "plain pod",
            Case::Gpu => "GPU share (0.2 of a GPU, 4 per group)",
            Case::ShareFull => "GPU share on a GPU already 3/4 shared",
            Case::WholeGpus => "GPU pod (2 whole GPUs)",
            Case::GpuUnhealthy => "GPU share on the GPU with XID 79",
            Case::TooManyGpus => "8 whole GPUs, 7 healthy",
            Case::AlreadyBoundHere => "pod already bound to this node",
            Case::OtherNodeLabel => "request for another node",
            Case::WrongSelectedNode => "labelled here, spec.selectedNode elsewhere",
            Case::BoundElsewhere => "pod already bound to another node",
            Case::PodDeleted => "pod deleted before binding",
            Case::Malformed => "malformed request (GPU portion \"1.5\")",
            Case::UidMismatch => "pod recreated (owner UID differs)",
            Case::TaintNotTolerated => "pod does not tolerate the node taint",
            Case::LocalVolume => "pod with a static local PV",
            Case::DynamicVolume => "pod with a provisioned local volume",
            Case::VolumeShortOfSpace => "local volume short of space",
            Case::DraClaim => "DRA claim shared by two pods",
            Case::DraUnhealthyGpu => "DRA claim on the GPU with XID 79",
            Case::DraOtherNode => "DRA claim allocated on another node",
            Case::DraTaintedDevice => "DRA claim on a device its driver tainted",
            Case::DraWaitsForDriver => "DRA claim waiting for the driver's go-ahead",
            Case::NumaFits => "predicted NUMA placement that fits",
            Case::NumaMismatch => "predicted NUMA zone with too few CPUs",
            Case::ExtendedResource => "KEP-5004 extended resource via DRA",
        }
    }

    /// Expected phase (None: this agent must not touch it) and a text the reason must contain.
    fn expected(self) -> (Option<Phase>, &'static str) {
        match self {
            Case::Plain
            | Case::Gpu
            | Case::LocalVolume
            | Case::DynamicVolume
            | Case::DraClaim
            | Case::DraWaitsForDriver => (Some(Phase::Succeeded), "bound to node"),
            Case::VolumeShortOfSpace => (Some(Phase::Failed), "the claim requests 800 TiB"),
            Case::AlreadyBoundHere => (Some(Phase::Succeeded), "already bound"),
            Case::OtherNodeLabel => (None, ""),
            Case::WrongSelectedNode => (None, ""),
            Case::BoundElsewhere => (Some(Phase::Failed), "already bound to another node"),
            Case::PodDeleted => (Some(Phase::Failed), "not found"),
            Case::Malformed => (Some(Phase::Failed), "invalid GPU portion"),
            Case::UidMismatch => (Some(Phase::Failed), "was recreated"),
            Case::TaintNotTolerated => (Some(Phase::Failed), "does not tolerate"),
            Case::WholeGpus => (Some(Phase::Succeeded), "bound to node"),
            Case::GpuUnhealthy => (Some(Phase::Failed), "which is unhealthy: XID 79"),
            Case::ShareFull => (Some(Phase::Failed), "1 other pod(s) hold 61169 MiB"),
            Case::TooManyGpus => (Some(Phase::Failed), "needs 8 whole GPU(s)"),
            Case::DraUnhealthyGpu => (Some(Phase::Failed), "is unhealthy"),
            Case::DraOtherNode => (Some(Phase::Failed), "does not select node"),
            Case::DraTaintedDevice => {
                (Some(Phase::Failed), "that the allocation does not tolerate")
            }
            Case::NumaFits => (Some(Phase::Succeeded), "bound to node"),
            Case::NumaMismatch => (
                Some(Phase::Failed),
                "node-0 cpu: predicted 48, free 32 of 32",
            ),
            Case::ExtendedResource => (Some(Phase::Succeeded), "bound to node"),
        }
    }

    fn expected_text(self) -> String {
        match self.expected().0 {
            None => "untouched".into(),
            Some(p) => p.as_str().into(),
        }
    }
}

/// The mix for `n` requests: two of every special case, the rest plain and GPU pods.
fn plan(n: usize) -> Vec<Case> {
    let special = [
        Case::AlreadyBoundHere,
        Case::OtherNodeLabel,
        Case::WrongSelectedNode,
        Case::BoundElsewhere,
        Case::PodDeleted,
        Case::Malformed,
        Case::UidMismatch,
        Case::TaintNotTolerated,
        Case::WholeGpus,
        Case::GpuUnhealthy,
        Case::ShareFull,
        Case::TooManyGpus,
        Case::LocalVolume,
        Case::DynamicVolume,
        Case::VolumeShortOfSpace,
        Case::DraClaim,
        Case::DraUnhealthyGpu,
        Case::DraOtherNode,
        Case::DraTaintedDevice,
        Case::DraWaitsForDriver,
        Case::NumaFits,
        Case::NumaMismatch,
        Case::ExtendedResource,
    ];
    let mut cases: Vec<Case> = special.iter().flat_map(|c| [*c, *c]).collect();
    let rest = n.saturating_sub(cases.len()).max(4);
    let mut shares = 0;
    for i in 0..rest {
        let share = i % 10 < 3 && shares < SHARE_PODS;
        shares += usize::from(share);
        cases.push(if share { Case::Gpu } else { Case::Plain });
    }
    cases
}

struct Item {
    case: Case,
    name: String,
    /// The GPU group of a fractional pod.
    group: Option<String>,
    created_at: Option<Instant>,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<bool> {
    let sim = Simulator::start(SimOptions {
        crds: vec![crate::api::crd()],
        // No garbage collector: it would remove the BindRequests of deleted and recreated
        // pods (their owners) within a second, before the demo reads how the agent failed them.
        controller_period: None,
        ..Default::default()
    })
    .await?;
    let client = sim.client();
    let node = args.node_name.clone();
    let mut args = args;
    let scratch = std::env::temp_dir().join(format!("bindlet-demo-{}", std::process::id()));
    let (demo_file, kubelet_socket) = prepare_node_files(&mut args, &scratch)?;
    let mut cfg = args.agent.to_config(&node);
    if args.agent.identity.is_none() {
        cfg.identity = format!("bindlet-demo-{node}");
    }
    let cases = plan(args.pods);
    println!(
        "bindlet demo: simulated control plane at {}; agent for node {node} with {} workers; {} BindRequests",
        sim.url(),
        cfg.workers,
        cases.len()
    );

    let (kubelet, provisioner) =
        start_node_services(&client, &node, &cfg, kubelet_socket, &scratch).await?;
    let bound_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let pod_watch = tokio::spawn(record_bind_times(client.clone(), bound_at.clone()));

    let recorder = Arc::new(crate::diag::Recorder::new(args.diag.diag_history));
    let stats = Arc::new(agent::Stats::with_recorder(recorder));
    let agent = agent::spawn_with_stats(client.clone(), cfg.clone(), stats);
    let diag = start_diag(&args, &sim, &agent, cfg.api_timeout).await?;
    let t0 = Instant::now();
    while !(agent.stats.is_leading() && agent.stats.is_synced()) {
        if t0.elapsed() > Duration::from_secs(30) {
            anyhow::bail!("the agent did not acquire its node lease and sync within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut items = items_of(&cases);
    setup_storage(&client, &node, &items, &scratch).await?;
    setup_dra(&client, &node, &items).await?;
    setup_extended_resources(&client).await?;
    let (brs, start) = create_requests(&client, &node, &mut items).await?;
    let driver = tokio::spawn(play_dra_driver(client.clone(), node.clone()));

    let results = wait_settled(&brs, &items, cfg.default_backoff_limit, start).await?;
    let elapsed = start.elapsed();
    let extended_ok = report_extended_resources(&client, &items).await?;
    let ok = summarize(&items, &results, &bound_at, agent.stats.as_ref(), elapsed) && extended_ok;

    if args.keep_running {
        keep_running(&sim, diag.as_ref()).await?;
    }
    agent.stop().await?;
    pod_watch.abort();
    driver.abort();
    // Every client of the simulator stops before it does.
    drop(provisioner);
    drop(kubelet);
    tokio::task::yield_now().await;
    let _ = std::fs::remove_dir_all(&scratch);
    sim.shutdown().await;
    if let Some(p) = demo_file {
        let _ = std::fs::remove_file(p);
    }
    Ok(ok)
}

/// The simulated node's local files: the GPU inventory (unless one is given), the kubelet's
/// pod-resources socket path and a fake sysfs with two NUMA zones (unless a sysfs is given).
/// Returns the inventory file to remove at the end, if the demo wrote it, and the socket.
fn prepare_node_files(
    args: &mut DemoArgs,
    scratch: &std::path::Path,
) -> anyhow::Result<(Option<std::path::PathBuf>, std::path::PathBuf)> {
    // The demo node's GPUs come from a file unless one is given.
    let demo_file = if args.agent.gpu.gpu_inventory_file.is_none() {
        let p = std::env::temp_dir().join(format!("bindlet-demo-{}-gpus.yaml", std::process::id()));
        std::fs::write(&p, demo_inventory())?;
        args.agent.gpu.gpu_inventory_file = Some(p.clone());
        Some(p)
    } else {
        None
    };
    // The simulated kubelet serves its device assignments here (unless a socket is given).
    std::fs::create_dir_all(scratch)?;
    let kubelet_socket = scratch.join("kubelet.sock");
    if args.agent.gpu.kubelet_pod_resources_socket.is_none() {
        args.agent.gpu.kubelet_pod_resources_socket = Some(kubelet_socket.clone());
    }
    // The simulated node's NUMA topology (unless a sysfs is given): two zones of 32 CPUs,
    // 256 GiB and four GPUs each; the agent publishes the placements the kubelet makes.
    if args.agent.numa.sysfs_root == std::path::Path::new("/sys") {
        let root = scratch.join("sys");
        let buses: Vec<(String, i64)> = (0..8)
            .map(|i| (format!("00000000:{:02X}:00.0", 0x18 + i), i64::from(i / 4)))
            .collect();
        let buses: Vec<(&str, i64)> = buses.iter().map(|(b, n)| (b.as_str(), *n)).collect();
        crate::numa::sysfs::write_fake(
            &root,
            &[(0, "0-31", 256 << 20), (1, "32-63", 256 << 20)],
            &buses,
        )?;
        args.agent.numa.sysfs_root = root;
        args.agent.numa.publish_numa_placement = true;
    }
    Ok((demo_file, kubelet_socket))
}

/// The cluster around the node: namespaces, the reservation service account KAI installs,
/// the existing shared GPU groups, the node's simulated kubelet and a volume provisioner.
async fn start_node_services(
    client: &Client,
    node: &str,
    cfg: &agent::AgentConfig,
    kubelet_socket: std::path::PathBuf,
    scratch: &std::path::Path,
) -> anyhow::Result<(
    crate::sim::kubelet::Kubelet,
    crate::sim::provisioner::Provisioner,
)> {
    let reservation_ns = cfg.plugins.sharing.args.reservation_namespace.clone();
    setup_cluster(client, node, &[&cfg.lease_namespace, &reservation_ns]).await?;
    // KAI installs its reservation pods' service account; without it the API server's
    // ServiceAccount admission refuses those pods.
    let sa: k8s_openapi::api::core::v1::ServiceAccount = serde_json::from_value(
        json!({ "metadata": { "name": cfg.plugins.sharing.args.reservation_service_account } }),
    )?;
    Api::namespaced(client.clone(), &reservation_ns)
        .create(&PostParams::default(), &sa)
        .await?;
    create_shared_groups(client, node, &cfg.plugins.sharing.args).await?;
    // The node's kubelet: admits pods, hands out the GPUs the device plugin would report
    // healthy and free (not the faulty GPU 5, not GPU 7 held by the existing group).
    let kubelet = crate::sim::kubelet::spawn(
        client.clone(),
        crate::sim::kubelet::KubeletConfig {
            node: node.to_string(),
            gpus: (0..8)
                .map(|i| format!("GPU-{i:08x}-demo"))
                .filter(|u| u != UNHEALTHY_GPU && u != FULL_GPU)
                .collect(),
            socket: Some(kubelet_socket),
            admit_delay: Duration::from_millis(20),
            reservation_namespace: Some(reservation_ns),
            gpu_numa_nodes: (0..8)
                .map(|i| (format!("GPU-{i:08x}-demo"), i64::from(i / 4)))
                .collect(),
            ..Default::default()
        },
    )?;
    // Local volumes live in a scratch directory on this machine (the simulated node's disk).
    let provisioner = crate::sim::provisioner::spawn(
        client.clone(),
        crate::sim::provisioner::ProvisionerConfig {
            name: DYNAMIC_PROVISIONER.into(),
            base_dir: scratch.join("provisioned"),
            namespace: Some(NAMESPACE.into()),
            delay: Duration::from_millis(100),
        },
    );
    Ok((kubelet, provisioner))
}

/// One item per planned case, the GPU-sharing ones spread over groups.
fn items_of(cases: &[Case]) -> Vec<Item> {
    let mut items: Vec<Item> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| Item {
            case: *c,
            name: format!("{}-{i:05}", short(*c)),
            group: None,
            created_at: None,
        })
        .collect();
    for (k, it) in items
        .iter_mut()
        .filter(|it| it.case == Case::Gpu)
        .enumerate()
    {
        it.group = Some(format!("demo-group-{}", k / SHARES_PER_GROUP));
    }
    items
}

/// Creates the pods (as the scheduler sees them, the deleted case removed again), then the
/// BindRequests in one burst, recording when each was created. Returns when the burst began.
async fn create_requests(
    client: &Client,
    node: &str,
    items: &mut [Item],
) -> anyhow::Result<(Api<BindRequest>, Instant)> {
    let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE);
    let uids: HashMap<String, String> = futures::stream::iter(items.iter())
        .map(|it| create_pod(&pods, it, node))
        .buffer_unordered(32)
        .try_collect()
        .await?;
    for it in items.iter().filter(|it| it.case == Case::PodDeleted) {
        pods.delete(&it.name, &DeleteParams::default()).await?;
    }
    let brs = Api::<BindRequest>::namespaced(client.clone(), NAMESPACE);
    let start = Instant::now();
    let created: Vec<(usize, Instant)> = futures::stream::iter(items.iter().enumerate())
        .map(|(i, it)| {
            let uid = uids.get(&it.name).cloned().unwrap_or_default();
            let brs = brs.clone();
            let node = node.to_string();
            async move {
                let at = Instant::now();
                brs.create(&PostParams::default(), &bind_request(it, &uid, &node)?)
                    .await?;
                anyhow::Ok((i, at))
            }
        })
        .buffer_unordered(32)
        .try_collect()
        .await?;
    for (i, at) in created {
        items[i].created_at = Some(at);
    }
    Ok((brs, start))
}

/// Polls until every request the agent should settle has settled, or the deadline.
async fn wait_settled(
    brs: &Api<BindRequest>,
    items: &[Item],
    default_backoff_limit: i32,
    start: Instant,
) -> anyhow::Result<HashMap<String, BindRequest>> {
    // Wait until everything this agent should settle has settled.
    let deadline = Duration::from_secs(60) + Duration::from_millis(20 * items.len() as u64);
    let mut last_progress = Instant::now();
    let results = loop {
        let list = brs.list(&Default::default()).await?;
        let by_name: HashMap<String, BindRequest> =
            list.items.into_iter().map(|b| (b.name_any(), b)).collect();
        let settled = items
            .iter()
            .filter(|it| match it.case.expected().0 {
                None => true,
                Some(_) => by_name
                    .get(&it.name)
                    .is_some_and(|b| crate::binding::is_settled(b, default_backoff_limit)),
            })
            .count();
        if settled == items.len() || start.elapsed() > deadline {
            break by_name;
        }
        if last_progress.elapsed() > Duration::from_secs(1) {
            eprint!("\r  settled {settled}/{} ...", items.len());
            let _ = std::io::stderr().flush();
            last_progress = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprint!("\r");
    Ok(results)
}

/// `--keep-running`: prints where the control plane and diagnostics are, writes a
/// kubeconfig for `bindlet bind` / `explain`, and waits for Ctrl-C.
async fn keep_running(
    sim: &Simulator,
    diag: Option<&crate::diag::DiagServer>,
) -> anyhow::Result<()> {
    println!(
        "\nkeep-running: the simulated control plane stays up at {}{} (Ctrl-C to stop)",
        sim.url(),
        diag.as_ref()
            .map(|d| format!(", diagnostics at {}/debug", d.url()))
            .unwrap_or_default()
    );
    // A kubeconfig for it, so `bindlet bind` / `bindlet explain` can be tried against the demo.
    let kubeconfig =
        std::env::temp_dir().join(format!("bindlet-demo-{}.kubeconfig", std::process::id()));
    std::fs::write(&kubeconfig, sim.kubeconfig_yaml())?;
    println!(
        "kubeconfig: {} (e.g. bindlet explain --kubeconfig {} -n {NAMESPACE} <name>)",
        kubeconfig.display(),
        kubeconfig.display()
    );
    let _ = tokio::signal::ctrl_c().await;
    let _ = std::fs::remove_file(&kubeconfig);
    Ok(())
}

/// Serves diagnostics for the demo's agent (stopped with it) and prints the address.
async fn start_diag(
    args: &DemoArgs,
    sim: &Simulator,
    agent: &agent::AgentHandle,
    api_timeout: Duration,
) -> anyhow::Result<Option<crate::diag::DiagServer>> {
    let Some(cfg) = args.diag.to_config("127.0.0.1:0", api_timeout)? else {
        return Ok(None);
    };
    let auth = cfg.auth;
    let server = crate::diag::start(
        cfg,
        agent.stats.clone(),
        Some(sim.client()),
        agent.shutdown_token(),
    )
    .await?;
    println!(
        "diagnostics: {url}/debug (also /metrics, /debug/state, /readyz, /livez)",
        url = server.url()
    );
    if auth == crate::diag::AuthMode::Kubernetes {
        // The simulated API server accepts one demo token, allowed to read diagnostics.
        let token = format!("demo-{:016x}", rand::random::<u64>());
        let a = sim.auth();
        a.add_token(&token, "demo-viewer", &["bindlet:diag-readers"]);
        for path in ["/metrics", "/debug", "/debug/*"] {
            a.allow_path("bindlet:diag-readers", "get", path);
        }
        println!("diagnostics token: Authorization: Bearer {token}");
    }
    Ok(Some(server))
}

fn short(c: Case) -> &'static str {
    match c {
        Case::Plain => "plain",
        Case::Gpu => "gpu",
        Case::ShareFull => "sharefull",
        Case::AlreadyBoundHere => "prebound",
        Case::OtherNodeLabel => "othernode",
        Case::WrongSelectedNode => "wrongnode",
        Case::BoundElsewhere => "elsewhere",
        Case::PodDeleted => "deleted",
        Case::Malformed => "malformed",
        Case::UidMismatch => "recreated",
        Case::TaintNotTolerated => "untolerated",
        Case::WholeGpus => "whole",
        Case::GpuUnhealthy => "xid",
        Case::TooManyGpus => "toomany",
        Case::LocalVolume => "localpv",
        Case::DynamicVolume => "dynpv",
        Case::VolumeShortOfSpace => "shortpv",
        Case::DraClaim => "dra",
        Case::DraUnhealthyGpu => "draxid",
        Case::DraOtherNode => "draelsewhere",
        Case::DraTaintedDevice => "drataint",
        Case::DraWaitsForDriver => "drawait",
        Case::NumaFits => "numa",
        Case::NumaMismatch => "numamismatch",
        Case::ExtendedResource => "extres",
    }
}

async fn setup_cluster(client: &Client, node: &str, extra_ns: &[&str]) -> anyhow::Result<()> {
    let namespaces = Api::<Namespace>::all(client.clone());
    for ns in [NAMESPACE].iter().chain(extra_ns) {
        let obj: Namespace = serde_json::from_value(json!({ "metadata": { "name": ns } }))?;
        match namespaces.create(&PostParams::default(), &obj).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let nodes = Api::<Node>::all(client.clone());
    for (name, gpus) in [(node, 8), (OTHER_NODE, 8)] {
        let obj: Node = serde_json::from_value(json!({
            "metadata": { "name": name, "labels": {
                "kubernetes.io/hostname": name,
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"
            }},
            "spec": { "taints": [ { "key": GPU_TAINT, "value": "present", "effect": "NoSchedule" } ] },
            "status": {
                "capacity": { "cpu": "128", "memory": "2Ti", "nvidia.com/gpu": gpus.to_string(), "pods": "250" },
                "allocatable": { "cpu": "126", "memory": "2000Gi", "nvidia.com/gpu": gpus.to_string(), "pods": "250" },
                "conditions": [ { "type": "Ready", "status": "True" } ]
            }
        }))?;
        nodes.create(&PostParams::default(), &obj).await?;
        // The node reports Ready, and the not-ready taint the API server put on the new Node
        // goes: what its kubelet and the node lifecycle controller would do.
        let own: Vec<k8s_openapi::api::core::v1::Taint> = serde_json::from_value(
            json!([ { "key": GPU_TAINT, "value": "present", "effect": "NoSchedule" } ]),
        )?;
        crate::sim::kubelet::report_node_ready(client, name, &own).await?;
    }
    Ok(())
}

/// Two GPU groups already running when the demo starts, each a KAI reservation pod and a
/// pod sharing its GPU: one on GPU 5 (which then reports XID 79), one with 0.75 of GPU 7.
/// They are Running before the kubelet starts, so it takes them as admitted earlier.
async fn create_shared_groups(
    client: &Client,
    node: &str,
    sharing: &crate::plugins::gpu_sharing::SharingArgs,
) -> anyhow::Result<()> {
    use crate::gpu::sharing::{APP_LABEL, FRACTION_ANNOTATION};
    use crate::gpu::verdict::{GPU_GROUP_LABEL, RESERVED_GPU_ANNOTATION};
    let toleration = json!([{ "key": GPU_TAINT, "operator": "Exists", "effect": "NoSchedule" }]);
    // (group, GPU, the reservation's GPU limit, the sharing pod's portion). The faulty GPU's
    // reservation holds no GPU the node could still count as healthy.
    for (group, gpu, limit, portion) in [
        (UNHEALTHY_GROUP, UNHEALTHY_GPU, None, "0.25"),
        (FULL_GROUP, FULL_GPU, Some("1"), "0.75"),
    ] {
        let resources = match limit {
            Some(l) => json!({ "limits": { "nvidia.com/gpu": l } }),
            None => json!({}),
        };
        let reservation: Pod = serde_json::from_value(json!({
            "metadata": {
                "name": format!("gpu-reservation-{group}"), "namespace": sharing.reservation_namespace,
                "labels": { APP_LABEL: sharing.reservation_app_label, GPU_GROUP_LABEL: group },
                "annotations": { RESERVED_GPU_ANNOTATION: gpu }
            },
            "spec": {
                "nodeName": node,
                "tolerations": toleration,
                "containers": [ { "name": "resource-reservation", "image": sharing.reservation_image, "resources": resources } ]
            }
        }))?;
        let member: Pod = serde_json::from_value(json!({
            "metadata": {
                "name": format!("running-on-{group}"), "namespace": NAMESPACE,
                "labels": { GPU_GROUP_LABEL: group },
                "annotations": { FRACTION_ANNOTATION: portion }
            },
            "spec": {
                "nodeName": node,
                "tolerations": toleration,
                "containers": [ { "name": "main", "image": "nvcr.io/nvidia/cuda:12.4.1-base-ubuntu22.04" } ]
            }
        }))?;
        for pod in [reservation, member] {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            let api = Api::<Pod>::namespaced(client.clone(), &ns);
            api.create(&PostParams::default(), &pod).await?;
            api.patch_status(
                &name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({ "status": { "phase": "Running" } })),
            )
            .await?;
        }
    }
    Ok(())
}

/// StorageClasses, one static local PV per static-volume pod (the short-of-space ones are
/// declared far larger than the disk really has free), and each volume pod's claim.
async fn setup_storage(
    client: &Client,
    node: &str,
    items: &[Item],
    scratch: &std::path::Path,
) -> anyhow::Result<()> {
    let classes = Api::<StorageClass>::all(client.clone());
    for (name, provisioner) in [
        (STATIC_CLASS, "kubernetes.io/no-provisioner"),
        (DYNAMIC_CLASS, DYNAMIC_PROVISIONER),
    ] {
        let sc: StorageClass = serde_json::from_value(json!({
            "metadata": { "name": name },
            "provisioner": provisioner,
            "volumeBindingMode": "WaitForFirstConsumer"
        }))?;
        classes.create(&PostParams::default(), &sc).await?;
    }
    let pvs = Api::<PersistentVolume>::all(client.clone());
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), NAMESPACE);
    for it in items {
        let (class, capacity, request) = match it.case {
            Case::LocalVolume => (STATIC_CLASS, "1Gi", "100Mi"),
            Case::VolumeShortOfSpace => (STATIC_CLASS, "900Ti", "800Ti"),
            Case::DynamicVolume => (DYNAMIC_CLASS, "", "100Mi"),
            _ => continue,
        };
        if class == STATIC_CLASS {
            let path = scratch.join("disks").join(&it.name);
            std::fs::create_dir_all(&path)?;
            let pv: PersistentVolume = serde_json::from_value(json!({
                "metadata": { "name": format!("local-{}", it.name) },
                "spec": {
                    "capacity": { "storage": capacity },
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": class,
                    "local": { "path": path.to_string_lossy() },
                    "nodeAffinity": { "required": { "nodeSelectorTerms": [ { "matchExpressions": [
                        { "key": "kubernetes.io/hostname", "operator": "In", "values": [node] } ] } ] } }
                }
            }))?;
            pvs.create(&PostParams::default(), &pv).await?;
        }
        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": { "name": format!("{}-data", it.name), "namespace": NAMESPACE },
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": class,
                "resources": { "requests": { "storage": request } }
            }
        }))?;
        claims.create(&PostParams::default(), &pvc).await?;
    }
    Ok(())
}

const DRA_DRIVER: &str = "gpu.nvidia.com";
/// This node's device its driver tainted after the scheduler allocated it.
const TAINTED_DEVICE: &str = "gpu-4";
/// This node's device that needs its driver's go-ahead before a pod may bind to it.
const CONDITIONED_DEVICE: &str = "gpu-6";
const READY_CONDITION: &str = "gpu.nvidia.com/fabric-attached";

/// A DRA case's claim name, allocated device, and whether the allocation is for this node.
fn dra_claim(it: &Item) -> Option<(String, &'static str, bool)> {
    match it.case {
        // Both pods of this case share one claim.
        Case::DraClaim => Some(("dra-shared".into(), "gpu-0", true)),
        Case::DraUnhealthyGpu => Some((format!("{}-gpu", it.name), "gpu-5", true)),
        Case::DraOtherNode => Some((format!("{}-gpu", it.name), "gpu-1", false)),
        Case::DraTaintedDevice => Some((format!("{}-gpu", it.name), TAINTED_DEVICE, true)),
        // Both pods share one claim; one condition from the driver releases both.
        Case::DraWaitsForDriver => Some(("dra-waits".into(), CONDITIONED_DEVICE, true)),
        _ => None,
    }
}

/// What a DRA driver publishes for each node (one slice per node, its GPUs with their
/// UUIDs), a DeviceClass, and the DRA pods' claims (as users or the claim controller create them).
async fn setup_dra(client: &Client, node: &str, items: &[Item]) -> anyhow::Result<()> {
    let class: DeviceClass = serde_json::from_value(json!({
        "metadata": { "name": DRA_DRIVER },
        "spec": { "selectors": [ { "cel": { "expression": format!("device.driver == '{DRA_DRIVER}'") } } ] }
    }))?;
    Api::<DeviceClass>::all(client.clone())
        .create(&PostParams::default(), &class)
        .await?;
    let slices = Api::<ResourceSlice>::all(client.clone());
    for (i, n) in [node, OTHER_NODE].iter().enumerate() {
        let devices: Vec<serde_json::Value> = (0..8)
            .map(|g| {
                let uuid = if i == 0 {
                    format!("GPU-{g:08x}-demo")
                } else {
                    format!("GPU-{g:08x}-other")
                };
                let mut d = json!({ "name": format!("gpu-{g}"), "attributes": { "uuid": { "string": uuid } } });
                if i == 0 && d["name"] == TAINTED_DEVICE {
                    d["taints"] = json!([{ "key": "gpu.nvidia.com/unhealthy", "value": "ecc", "effect": "NoSchedule" }]);
                }
                if i == 0 && d["name"] == CONDITIONED_DEVICE {
                    d["bindingConditions"] = json!([READY_CONDITION]);
                    d["bindsToNode"] = json!(true);
                }
                d
            })
            .collect();
        let slice: ResourceSlice = serde_json::from_value(json!({
            "metadata": { "name": format!("{n}-{DRA_DRIVER}") },
            "spec": {
                "driver": DRA_DRIVER, "nodeName": n,
                "pool": { "name": n, "generation": 1, "resourceSliceCount": 1 },
                "devices": devices
            }
        }))?;
        slices.create(&PostParams::default(), &slice).await?;
    }
    let claims = Api::<ResourceClaim>::namespaced(client.clone(), NAMESPACE);
    let mut made = std::collections::BTreeSet::new();
    for it in items {
        let Some((name, _, _)) = dra_claim(it) else {
            continue;
        };
        if !made.insert(name.clone()) {
            continue;
        }
        let claim: ResourceClaim = serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": NAMESPACE },
            "spec": { "devices": { "requests": [
                { "name": "gpu", "exactly": { "deviceClassName": DRA_DRIVER } }
            ] } }
        }))?;
        claims.create(&PostParams::default(), &claim).await?;
    }
    Ok(())
}

async fn create_pod(pods: &Api<Pod>, it: &Item, node: &str) -> anyhow::Result<(String, String)> {
    let mut resources = json!({ "requests": { "cpu": "500m", "memory": "1Gi" } });
    let whole = match it.case {
        Case::WholeGpus => 2,
        Case::TooManyGpus => 8,
        _ => 0,
    };
    if whole > 0 {
        resources["limits"] = json!({ "nvidia.com/gpu": whole.to_string() });
    }
    if it.case == Case::ExtendedResource {
        resources["limits"] = json!({ EXTENDED_RESOURCE: "1" });
    }
    let tolerations = if it.case == Case::TaintNotTolerated {
        json!([])
    } else {
        json!([{ "key": GPU_TAINT, "operator": "Exists", "effect": "NoSchedule" }])
    };
    let node_name = match it.case {
        Case::AlreadyBoundHere => json!(node),
        Case::BoundElsewhere => json!(OTHER_NODE),
        _ => serde_json::Value::Null,
    };
    let volumes = match it.case {
        Case::LocalVolume | Case::DynamicVolume | Case::VolumeShortOfSpace => {
            json!([{ "name": "data", "persistentVolumeClaim": { "claimName": format!("{}-data", it.name) } }])
        }
        _ => json!([]),
    };
    let resource_claims = match dra_claim(it) {
        Some((claim, _, _)) => json!([{ "name": "gpu", "resourceClaimName": claim }]),
        None => json!([]),
    };
    // KAI's admission webhook names the ConfigMaps of fractional pods.
    let annotations = if matches!(it.case, Case::Gpu | Case::GpuUnhealthy | Case::ShareFull) {
        json!({ crate::gpu::sharing::CONFIGMAP_ANNOTATION: format!("{}-demo123-shared-gpu", it.name) })
    } else {
        json!({})
    };
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": it.name, "namespace": NAMESPACE, "labels": { "app": "demo", "case": short(it.case) }, "annotations": annotations },
        "spec": {
            "schedulerName": "kai-scheduler",
            "nodeName": node_name,
            "tolerations": tolerations,
            "volumes": volumes,
            "resourceClaims": resource_claims,
            "containers": [ { "name": "main", "image": "nvcr.io/nvidia/cuda:12.4.1-base-ubuntu22.04", "resources": resources } ]
        }
    }))?;
    let created = pods.create(&PostParams::default(), &pod).await?;
    Ok((it.name.clone(), created.metadata.uid.unwrap_or_default()))
}

fn bind_request(it: &Item, pod_uid: &str, node: &str) -> anyhow::Result<BindRequest> {
    let label_node = if it.case == Case::OtherNodeLabel {
        OTHER_NODE
    } else {
        node
    };
    let selected = match it.case {
        Case::OtherNodeLabel | Case::WrongSelectedNode => OTHER_NODE,
        _ => node,
    };
    let uid = if it.case == Case::UidMismatch {
        "00000000-0000-0000-0000-00000000dead".to_string()
    } else {
        pod_uid.to_string()
    };
    let spec = match it.case {
        // KAI sizes shares by group; each new group gets its reservation pod and GPU.
        Case::Gpu => {
            json!({ "receivedResourceType": "Fraction", "receivedGPU": { "count": 1, "portion": SHARE }, "selectedGPUGroups": [it.group.clone().unwrap_or_default()] })
        }
        Case::ShareFull => {
            json!({ "receivedResourceType": "Fraction", "receivedGPU": { "count": 1, "portion": "0.5" }, "selectedGPUGroups": [FULL_GROUP] })
        }
        Case::GpuUnhealthy => {
            json!({ "receivedResourceType": "Fraction", "receivedGPU": { "count": 1, "portion": "0.25" }, "selectedGPUGroups": [UNHEALTHY_GROUP] })
        }
        Case::WholeGpus => {
            json!({ "receivedResourceType": "Regular", "receivedGPU": { "count": 2, "portion": "1.00" } })
        }
        Case::TooManyGpus => {
            json!({ "receivedResourceType": "Regular", "receivedGPU": { "count": 8, "portion": "1.00" } })
        }
        Case::Malformed => {
            json!({ "receivedResourceType": "Fraction", "receivedGPU": { "count": 1, "portion": "1.5" }, "selectedGPUGroups": ["g-1"] })
        }
        // KAI's NUMA plugin predicts zones of the node's NodeResourceTopology.
        Case::NumaFits => {
            json!({ "receivedResourceType": "Regular", "receivedGPU": { "count": 0, "portion": "0" }, "predictedNUMAZones": [{ "zone": "node-1", "amount": { "cpu": 4, "memory": "16Gi" } }] })
        }
        Case::NumaMismatch => {
            json!({ "receivedResourceType": "Regular", "receivedGPU": { "count": 0, "portion": "0" }, "predictedNUMAZones": [{ "zone": "node-0", "amount": { "cpu": 48 } }] })
        }
        _ => {
            json!({ "receivedResourceType": "Regular", "receivedGPU": { "count": 0, "portion": "0" } })
        }
    };
    let mut spec = spec;
    if let Some((_, device, on)) = dra_claim(it) {
        let on = if on { node } else { OTHER_NODE };
        let mut result =
            json!({ "request": "gpu", "driver": DRA_DRIVER, "pool": on, "device": device });
        if device == CONDITIONED_DEVICE {
            // The scheduler copies the device's binding conditions into the allocation.
            result["bindingConditions"] = json!([READY_CONDITION]);
        }
        spec["resourceClaimAllocations"] = json!([{ "name": "gpu", "allocation": {
            "devices": { "results": [result] },
            "nodeSelector": { "nodeSelectorTerms": [ { "matchFields": [
                { "key": "metadata.name", "operator": "In", "values": [on] }
            ] } ] }
        } }]);
    }
    if it.case == Case::ExtendedResource {
        spec["extendedResourceClaimAllocation"] = extended_allocation(it, node);
    }
    spec["podName"] = json!(it.name);
    spec["selectedNode"] = json!(selected);
    Ok(serde_json::from_value(json!({
        "apiVersion": "scheduling.run.ai/v1alpha2",
        "kind": "BindRequest",
        "metadata": {
            "name": it.name,
            "namespace": NAMESPACE,
            "labels": { "selected-node": label_node, "kai.scheduler/node-pool": "default" },
            "ownerReferences": [ { "apiVersion": "v1", "kind": "Pod", "name": it.name, "uid": uid, "controller": true } ]
        },
        "spec": spec
    }))?)
}

/// What the DRA driver of the demo does: once the agent waits on the claim of
/// [`CONDITIONED_DEVICE`] (its BindRequests say so), wait a moment, then report the device
/// ready on the claim (`status.devices[].conditions`), which lets the agent bind.
async fn play_dra_driver(client: Client, node: String) -> anyhow::Result<()> {
    let brs = Api::<BindRequest>::namespaced(client.clone(), NAMESPACE);
    let waiting = |b: &BindRequest| {
        b.status
            .as_ref()
            .and_then(|s| s.reason.as_deref())
            .is_some_and(|r| r.contains("waiting for binding conditions"))
    };
    loop {
        if brs
            .list(&Default::default())
            .await?
            .items
            .iter()
            .any(waiting)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = json!({ "status": { "devices": [ {
        "driver": DRA_DRIVER, "pool": node, "device": CONDITIONED_DEVICE,
        "conditions": [ { "type": READY_CONDITION, "status": "True", "reason": "FabricAttached",
                          "message": "attached by the demo's driver",
                          "lastTransitionTime": jiff::Timestamp::now().round(jiff::Unit::Second)?.to_string() } ]
    } ] } });
    Api::<ResourceClaim>::namespaced(client, NAMESPACE)
        .patch_status("dra-waits", &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

/// Records when each pod is first seen bound.
async fn record_bind_times(client: Client, bound_at: Arc<Mutex<HashMap<String, Instant>>>) {
    let pods = Api::<Pod>::namespaced(client, NAMESPACE);
    let stream = watcher::watcher(pods, watcher::Config::default());
    futures::pin_mut!(stream);
    while let Some(ev) = stream.next().await {
        let now = Instant::now();
        if let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = ev
            && p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
            && let Ok(mut m) = bound_at.lock()
        {
            m.entry(p.name_any()).or_insert(now);
        }
    }
}

fn summarize(
    items: &[Item],
    results: &HashMap<String, BindRequest>,
    bound_at: &Mutex<HashMap<String, Instant>>,
    stats: &agent::Stats,
    elapsed: Duration,
) -> bool {
    struct Row {
        total: usize,
        ok: usize,
        got: BTreeMap<String, usize>,
        example: Option<String>,
    }
    let mut rows: BTreeMap<Case, Row> = BTreeMap::new();
    let mut latencies = Vec::new();
    let bound = bound_at.lock().map(|m| m.clone()).unwrap_or_default();
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    for it in items {
        let row = rows.entry(it.case).or_insert(Row {
            total: 0,
            ok: 0,
            got: BTreeMap::new(),
            example: None,
        });
        row.total += 1;
        let br = results.get(&it.name);
        let phase = br.and_then(|b| b.phase());
        let reason = br
            .and_then(|b| b.status.as_ref())
            .and_then(|s| s.reason.clone())
            .unwrap_or_default();
        let (want_phase, want_text) = it.case.expected();
        let ok = phase == want_phase && reason.contains(want_text);
        row.ok += usize::from(ok);
        let got = phase
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "untouched".into());
        *row.got.entry(got).or_default() += 1;
        if row.example.is_none() && !reason.is_empty() && phase == Some(Phase::Failed) {
            row.example = Some(reason);
        }
        if matches!(it.case, Case::Plain | Case::Gpu | Case::WholeGpus)
            && let (Some(c), Some(b)) = (it.created_at, bound.get(&it.name))
        {
            latencies.push(b.saturating_duration_since(c));
            first = Some(first.map_or(c, |f| f.min(c)));
            last = Some(last.map_or(*b, |l| l.max(*b)));
        }
    }

    println!();
    println!("{:<44} {:>8}  {:<10} got", "case", "requests", "expected");
    let mut all_ok = true;
    for (case, row) in &rows {
        let got: Vec<String> = row.got.iter().map(|(k, v)| format!("{v} {k}")).collect();
        let mark = if row.ok == row.total {
            "ok"
        } else {
            "MISMATCH"
        };
        all_ok &= row.ok == row.total;
        println!(
            "{:<44} {:>8}  {:<10} {}  {mark}",
            case.label(),
            row.total,
            case.expected_text(),
            got.join(", ")
        );
        if let Some(ex) = &row.example {
            println!("{:<44} {:>8}  reason: {ex}", "", "");
        }
    }
    latencies.sort();
    let pct = |p: f64| -> String {
        if latencies.is_empty() {
            return "-".into();
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        format!("{:.1} ms", latencies[i].as_secs_f64() * 1000.0)
    };
    println!();
    println!(
        "latency, BindRequest created -> pod bound ({} binds): p50 {}, p99 {}, max {}",
        latencies.len(),
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
    if let (Some(f), Some(l)) = (first, last) {
        let span = l.saturating_duration_since(f).as_secs_f64().max(1e-6);
        println!(
            "throughput: {:.0} binds/s ({} binds in {:.2} s)",
            latencies.len() as f64 / span,
            latencies.len(),
            span
        );
    }
    println!(
        "agent: {} bound, {} already bound, {} failed attempts ({} gave up); everything settled in {:.2} s",
        stats.bound.load(std::sync::atomic::Ordering::Relaxed),
        stats
            .already_bound
            .load(std::sync::atomic::Ordering::Relaxed),
        stats
            .failed_attempts
            .load(std::sync::atomic::Ordering::Relaxed),
        stats
            .failed_final
            .load(std::sync::atomic::Ordering::Relaxed),
        elapsed.as_secs_f64()
    );
    if all_ok {
        println!("result: every request reached its expected outcome");
    } else {
        println!("result: SOME REQUESTS DID NOT REACH THEIR EXPECTED OUTCOME");
    }
    all_ok
}

// KEP-5004: a pod asks for `example.com/gpu`, which a DeviceClass maps to the DRA driver's
// GPUs; the scheduler's BindRequest carries the allocation, and the agent creates the pod's
// extended-resource claim, reserves it and names it in the pod status before binding.

const EXTENDED_RESOURCE: &str = "example.com/gpu";
const EXTENDED_REQUEST: &str = "container-0-request-0";

/// The DeviceClass that backs `example.com/gpu` with the DRA driver's GPUs.
async fn setup_extended_resources(client: &Client) -> anyhow::Result<()> {
    let class: DeviceClass = serde_json::from_value(json!({
        "metadata": { "name": format!("{DRA_DRIVER}-extended") },
        "spec": {
            "selectors": [ { "cel": { "expression": format!("device.driver == '{DRA_DRIVER}'") } } ],
            "extendedResourceName": EXTENDED_RESOURCE
        }
    }))?;
    Api::<DeviceClass>::all(client.clone())
        .create(&PostParams::default(), &class)
        .await?;
    Ok(())
}

/// The scheduler's allocation for an extended-resource pod: GPU 2 or 3 of this node (the
/// two pods of the case are created one after the other, so their indices alternate).
fn extended_allocation(it: &Item, node: &str) -> serde_json::Value {
    let index: usize = it
        .name
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let device = format!("gpu-{}", 2 + index % 2);
    json!({
        "allocation": {
            "devices": { "results": [
                { "request": EXTENDED_REQUEST, "driver": DRA_DRIVER, "pool": node, "device": device }
            ] },
            "nodeSelector": { "nodeSelectorTerms": [ { "matchFields": [
                { "key": "metadata.name", "operator": "In", "values": [node] }
            ] } ] }
        },
        "deviceRequests": [
            { "name": EXTENDED_REQUEST, "exactly": { "deviceClassName": format!("{DRA_DRIVER}-extended") } }
        ],
        "containerMappings": [
            { "containerName": "main", "requestName": EXTENDED_REQUEST, "resourceName": EXTENDED_RESOURCE }
        ]
    })
}

/// Prints each extended-resource pod's claim as the kubelet would find it; `false` when a
/// pod's status names no claim, or one that is not allocated and reserved for it.
async fn report_extended_resources(client: &Client, items: &[Item]) -> anyhow::Result<bool> {
    let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE);
    let claims = Api::<ResourceClaim>::namespaced(client.clone(), NAMESPACE);
    let mut ok = true;
    for it in items.iter().filter(|it| it.case == Case::ExtendedResource) {
        let pod = pods.get(&it.name).await?;
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let named = pod
            .status
            .and_then(|s| s.extended_resource_claim_status)
            .map(|s| s.resource_claim_name);
        let claim = match &named {
            Some(n) => claims.get_opt(n).await?,
            None => None,
        };
        let status = claim.as_ref().and_then(|c| c.status.as_ref());
        let device = status
            .and_then(|s| s.allocation.as_ref())
            .and_then(|a| a.devices.as_ref())
            .and_then(|d| d.results.as_ref())
            .and_then(|r| r.first())
            .map(|r| r.device.clone());
        let reserved = status
            .and_then(|s| s.reserved_for.as_ref())
            .is_some_and(|r| r.iter().any(|c| c.uid == uid));
        match (named, device, reserved) {
            (Some(n), Some(d), true) => println!(
                "KEP-5004: pod {} -> claim {n}: {d} allocated and reserved, named in the pod status",
                it.name
            ),
            (n, d, r) => {
                ok = false;
                println!(
                    "KEP-5004: pod {}: pod status names {n:?}, allocated {d:?}, reserved for the pod: {r}",
                    it.name
                );
            }
        }
    }
    Ok(ok)
}
