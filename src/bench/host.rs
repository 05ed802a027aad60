//! `bindlet bench-host` (hidden): the binders of one `bench --fleet` phase, in a process of
//! their own so that their memory and CPU are measured apart from the simulator and the
//! load generator. Either N node agents (each with its own kube client, so its own
//! connections, watches, Lease and workers, as N DaemonSet pods would have; they share
//! one thread, as lightweight instances) or one central binder. Prints `ready` on stdout
//! once every agent leads its node and has synced (or the central binder has listed), then
//! runs until killed.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tokio::time::Instant;

use super::BenchError;
use crate::agent::{self, AgentConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One node agent per node.
    Fleet,
    /// One central binder for all nodes, with KAI's defaults.
    Central,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Fleet => "fleet",
            Mode::Central => "central",
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct HostArgs {
    #[arg(long)]
    pub kubeconfig: PathBuf,
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// Node names are `<prefix>-00000` .. (see [`node_name`]).
    #[arg(long)]
    pub node_prefix: String,
    #[arg(long)]
    pub nodes: usize,
    /// Namespace of the agents' Leases.
    #[arg(long)]
    pub lease_namespace: String,
    /// Workers per node agent.
    #[arg(long, default_value_t = 16)]
    pub workers: usize,
}

/// The name of the bench's `i`th node.
pub fn node_name(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i:05}")
}

pub async fn run(args: HostArgs) -> Result<(), BenchError> {
    let kc = kube::config::Kubeconfig::read_from(&args.kubeconfig)
        .map_err(|e| BenchError::Kubeconfig(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| BenchError::Kubeconfig(e.to_string()))?;
    match args.mode {
        Mode::Fleet => {
            let mut agents = Vec::with_capacity(args.nodes);
            for i in 0..args.nodes {
                let node = node_name(&args.node_prefix, i);
                let mut cfg = AgentConfig::for_node(&node);
                cfg.lease_namespace = args.lease_namespace.clone();
                cfg.identity = format!("bindlet-{node}");
                cfg.workers = args.workers;
                // Like the central model and the single-agent bench: neither side writes
                // KAI's PodBound condition (one more request per bind for each).
                cfg.pod_bound_condition = false;
                // Its own client: its own connection pool, as a pod of its own would have.
                let client = kube::Client::try_from(config.clone())?;
                agents.push(agent::spawn(client, cfg));
            }
            let t0 = Instant::now();
            loop {
                let ready = agents
                    .iter()
                    .filter(|a| a.stats.is_leading() && a.stats.is_synced())
                    .count();
                if ready == agents.len() {
                    break;
                }
                if t0.elapsed() > Duration::from_secs(600) {
                    return Err(BenchError::Timeout(format!(
                        "{} of {} agents ready",
                        ready,
                        agents.len()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            say_ready()?;
            std::future::pending::<()>().await;
            Ok(())
        }
        Mode::Central => {
            let client = kube::Client::try_from(config)?;
            let (tx, mut rx) = tokio::sync::mpsc::channel(1);
            let binder = tokio::spawn(super::central::run(
                client,
                super::central::KAI_QPS,
                super::central::KAI_BURST,
                super::central::KAI_WORKERS,
                tx,
            ));
            if rx.recv().await.is_some() {
                say_ready()?;
            }
            let _ = binder.await;
            Err(BenchError::Agent("the central binder's watch ended".into()))
        }
    }
}

fn say_ready() -> Result<(), BenchError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")
        .and_then(|()| out.flush())
        .map_err(|e| BenchError::Io(format!("stdout: {e}")))
}
