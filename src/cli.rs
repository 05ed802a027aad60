//! Command line: `bindlet run | demo | bind | explain | crd | version`. Every flag can also be set from
//! the environment variable named in its help.

pub use crate::agent::AgentArgs;
pub use crate::api::duration::parse_duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "bindlet",
    version,
    about = "Node-local, GPU-aware binding agent for KAI-Scheduler BindRequests"
)]
pub struct Cli {
    /// Log format.
    #[arg(long, env = "BINDLET_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `bindlet=debug`.
    #[arg(long, env = "BINDLET_LOG", default_value = "info", global = true)]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the node agent against a cluster (kubeconfig or in-cluster config).
    Run(RunArgs),
    /// Run the agent against an embedded simulated control plane with a realistic mix of requests.
    Demo(crate::demo::DemoArgs),
    /// Place a pod on a node by hand, after the checks the scheduler would make.
    Bind(crate::manual::BindArgs),
    /// Explain a BindRequest (or the pod of that name): phase, attempts, verdicts, Events.
    Explain(crate::manual::ExplainArgs),
    /// Measure the agent (throughput, latency, API requests, memory, CPU) against the physical limit.
    Bench(crate::bench::BenchArgs),
    /// The binders of one `bench --fleet` phase, in their own process (used by `bench`).
    #[command(hide = true)]
    BenchHost(crate::bench::host::HostArgs),
    /// Print bindlet's BindRequest CustomResourceDefinition (YAML).
    Crd,
    /// Show this node's GPU inventory and health (NVML or --gpu-inventory-file).
    Inspect(crate::gpu::inspect::InspectArgs),
    /// Print the version.
    Version,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The node this agent serves (normally from the downward API).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Path to a kubeconfig; default: KUBECONFIG, ~/.kube/config, then in-cluster.
    #[arg(long, env = "BINDLET_KUBECONFIG")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long, env = "BINDLET_CONTEXT")]
    pub context: Option<String>,
    #[command(flatten)]
    pub agent: AgentArgs,
    #[command(flatten)]
    pub diag: crate::diag::DiagArgs,
}

fn init_logging(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| anyhow::anyhow!("invalid log filter \"{filter}\": {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// Entry point of the binary.
pub fn main() -> anyhow::Result<()> {
    // Usage errors exit 1, not clap's 2: `bind` uses 2 for "refused by the checks".
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        let _ = e.print();
        std::process::exit(if e.use_stderr() { 1 } else { 0 })
    });
    match cli.command {
        Command::Crd => {
            print!("{}", crate::api::crd_yaml()?);
            Ok(())
        }
        Command::Inspect(args) => {
            init_logging(cli.log_format, &cli.log_level)?;
            crate::gpu::inspect::run(&args)
        }
        Command::Version => {
            println!("bindlet {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Run(args) => {
            init_logging(cli.log_format, &cli.log_level)?;
            agent_runtime()?.block_on(run(args))
        }
        Command::Bind(args) => {
            init_logging(cli.log_format, &quiet_level(&cli.log_level))?;
            let code = runtime()?.block_on(crate::manual::cli::bind(args))?;
            std::process::exit(code)
        }
        Command::Explain(args) => {
            init_logging(cli.log_format, &quiet_level(&cli.log_level))?;
            let code = runtime()?.block_on(crate::manual::cli::explain(args))?;
            std::process::exit(code)
        }
        Command::Demo(args) => {
            // The demo prints a summary; agent logs stay quiet unless asked for.
            init_logging(cli.log_format, &quiet_level(&cli.log_level))?;
            let ok = runtime()?.block_on(crate::demo::run(args))?;
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::BenchHost(args) => {
            init_logging(cli.log_format, &quiet_level(&cli.log_level))?;
            // One thread for all the binders, like one agent's own runtime.
            agent_runtime()?.block_on(crate::bench::host::run(args))?;
            Ok(())
        }
        Command::Bench(args) if args.fleet.is_some() => {
            init_logging(cli.log_format, &quiet_level(&cli.log_level))?;
            let json = args.json.clone();
            let report = runtime()?.block_on(crate::bench::run_fleet(args))?;
            print!("{}", report.table());
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
            }
            Ok(())
        }
        Command::Bench(args) => {
            init_logging(cli.log_format, &quiet_level(&cli.log_level))?;
            let json = args.json.clone();
            let report = runtime()?.block_on(crate::bench::run(args))?;
            print!("{}", report.table());
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
            }
            Ok(())
        }
    }
}

/// Commands that print their own results log only errors unless a level was asked for.
fn quiet_level(level: &str) -> String {
    if std::env::var_os("BINDLET_LOG").is_some() || level != "info" {
        level.to_string()
    } else {
        "error".to_string()
    }
}

/// The agent runs on one thread. Its work is waiting on the API server; every blocking call
/// (NVML, statvfs, file reads) already runs on its own thread or `spawn_blocking`. A
/// work-stealing runtime cost it cross-thread wake-ups per request: measured with `bindlet
/// bench`, 0.21 ms of CPU per bind on two worker threads against 0.13 ms on one.
fn agent_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client =
        crate::kubeapi::connect(args.kubeconfig.as_deref(), args.context.as_deref()).await?;
    let cfg = args.agent.to_config(&args.node_name);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        signal.cancel();
    });
    let recorder = std::sync::Arc::new(crate::diag::Recorder::new(args.diag.diag_history));
    let stats = std::sync::Arc::new(crate::agent::Stats::with_recorder(recorder));
    // Started before the agent so probes answer (not ready) while it syncs; stops with it.
    if let Some(diag) = args
        .diag
        .to_config(crate::diag::DEFAULT_ADDR, cfg.api_timeout)?
    {
        let server =
            crate::diag::start(diag, stats.clone(), Some(client.clone()), shutdown.clone()).await?;
        tracing::info!(url = %server.url(), "diagnostics server listening");
    }
    crate::agent::run(client, cfg, shutdown, stats).await?;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::binding::CheckMode;

    #[test]
    fn parses_bind_and_explain() {
        let cli = Cli::try_parse_from([
            "bindlet",
            "bind",
            "web",
            "--node",
            "n1",
            "-n",
            "team",
            "--dry-run",
            "--wait",
            "5s",
        ])
        .expect("parse bind");
        let Command::Bind(a) = cli.command else {
            panic!("not bind")
        };
        assert_eq!((a.pod.as_str(), a.node.as_str()), ("web", "n1"));
        assert_eq!(a.cluster.namespace.as_deref(), Some("team"));
        assert!(a.dry_run && !a.direct);
        assert_eq!(a.wait, std::time::Duration::from_secs(5));
        assert!(
            Cli::try_parse_from(["bindlet", "bind", "web"]).is_err(),
            "--node is required"
        );

        let cli = Cli::try_parse_from(["bindlet", "explain", "web"]).expect("parse explain");
        let Command::Explain(a) = cli.command else {
            panic!("not explain")
        };
        assert_eq!(a.name, "web");
        assert_eq!(a.cluster.namespace, None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn cli_parses_run_with_env_free_flags() {
        let cli = Cli::try_parse_from([
            "bindlet",
            "run",
            "--node-name",
            "n1",
            "--workers",
            "4",
            "--node-checks",
            "warn",
            "--memory-check",
            "enforce",
            "--memory-reserve",
            "2Gi",
        ])
        .expect("parse");
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        let cfg = args.agent.to_config(&args.node_name);
        assert_eq!(cfg.node_name, "n1");
        assert_eq!(cfg.workers, 4);
        assert_eq!(cfg.plugins.node_checks, CheckMode::Warn);
        assert_eq!(cfg.plugins.memory.memory_check, CheckMode::Enforce);
        assert_eq!(cfg.plugins.memory.memory_reserve, 2 << 30);
        assert_eq!(cfg.default_backoff_limit, 3);
        assert!(
            cfg.pod_bound_condition,
            "KAI's PodBound condition is on by default"
        );
        assert!(
            !cfg.plugins.sharing.args.hamicore,
            "off by default, as in KAI"
        );
    }

    #[test]
    fn kai_reservation_and_metadata_flags() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["bindlet", "run", "--node-name", "n1"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).map(|cli| match cli.command {
                Command::Run(args) => args.agent.to_config(&args.node_name),
                _ => panic!("not run"),
            })
        };
        let cfg = parse(&[
            "--pod-bound-condition=false",
            "--hamicore",
            "--reservation-pod-resources",
            r#"{"requests":{"cpu":"1m","memory":"10Mi"}}"#,
            "--reservation-pod-security-context",
            r#"{"runAsNonRoot":true}"#,
            "--reservation-container-security-context",
            r#"{"allowPrivilegeEscalation":false}"#,
        ])
        .expect("parse");
        assert!(!cfg.pod_bound_condition);
        let s = cfg.plugins.sharing.args.pod_settings();
        assert!(cfg.plugins.sharing.args.hamicore);
        let requests = s.resources.and_then(|r| r.requests).unwrap_or_default();
        assert_eq!(requests.get("cpu").map(|q| q.0.as_str()), Some("1m"));
        assert_eq!(
            s.pod_security_context.and_then(|p| p.run_as_non_root),
            Some(true)
        );
        assert_eq!(
            s.container_security_context
                .and_then(|c| c.allow_privilege_escalation),
            Some(false)
        );
        let bad = parse(&["--reservation-pod-resources", "{not json"]);
        assert!(bad.is_err(), "a malformed JSON setting is refused at start");
    }
}
