//! `bindlet bench`, small: the report's figures are consistent with each other. No timing
//! thresholds: speed targets are judged from the printed figures, not by tests.

use bindlet::cli::{Cli, Command};
use clap::Parser;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_report_is_consistent() {
    let cli = Cli::try_parse_from([
        "bindlet",
        "bench",
        "--requests",
        "50",
        "--concurrency",
        "4",
        "--idle-seconds",
        "0.5",
        "--agent-bin",
        env!("CARGO_BIN_EXE_bindlet"),
    ])
    .expect("args");
    let Command::Bench(args) = cli.command else {
        panic!("not the bench command");
    };
    let report = bindlet::bench::run(args).await.expect("bench runs");

    assert_eq!((report.requests, report.concurrency), (50, 4));
    for (name, phase) in [("limit", &report.limit), ("agent", &report.agent)] {
        assert_eq!(phase.created, 50, "{name}");
        assert_eq!(phase.binds, 50, "{name}: every pod bound");
        assert_eq!(phase.errors, 0, "{name}");
        let l = &phase.latency_ms;
        assert!(
            0.0 < l.p50 && l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.max,
            "{name}: {l:?}"
        );
        assert!(phase.seconds > 0.0);
        let tput = phase.binds as f64 / phase.seconds;
        assert!(
            (phase.binds_per_s - tput).abs() < 1e-6 * tput.max(1.0),
            "{name}"
        );
        let api = phase.api.as_ref().expect("the simulator counts requests");
        let sum: f64 = api.per_bind.values().sum();
        assert!((api.total_per_bind - sum).abs() < 1e-9, "{name}");
        for (verb, res) in [
            ("get", "pods"),
            ("create", "pods/binding"),
            ("patch", "bindrequests/status"),
        ] {
            let k = format!("{verb} {res}");
            assert_eq!(api.per_bind.get(&k), Some(&1.0), "{name}: {k}");
        }
    }
    assert_eq!(
        report.limit.api.as_ref().map(|a| a.events_per_bind),
        Some(0.0)
    );
    let ratio = report.throughput_ratio.expect("ratio");
    assert!((ratio - report.agent.binds_per_s / report.limit.binds_per_s).abs() < 1e-9);
    let delta = report.p99_delta_ms.expect("delta");
    assert!((delta - (report.agent.latency_ms.p99 - report.limit.latency_ms.p99)).abs() < 1e-9);
    if cfg!(target_os = "linux") {
        let p = report
            .agent_process
            .as_ref()
            .expect("/proc figures on Linux");
        assert!(p.peak_rss_mib > 0.0 && p.peak_rss_mib >= p.rss_end_mib);
        assert!(p.cpu_s_total >= p.cpu_s_run && p.cpu_s_run >= 0.0);
    }
    assert_eq!(report.targets.len(), 6);
    let json = serde_json::to_value(&report).expect("json");
    assert!(json["agent"]["latency_ms"]["p99"].is_number());
    assert!(report.table().contains("throughput (binds/s)"));
    // The CPU model is named wherever the OS reports one (figures differ between models).
    let model = &report.machine.cpu_model;
    assert!(json["machine"]["cpu_model"].is_string());
    if !model.is_empty() {
        assert!(
            report.table().contains(model.as_str()),
            "{}",
            report.table()
        );
    }
}

/// `--dra-claims 1`: every bind also reads and reserves its claim, and the per-bind
/// figures add up to 3 + 2 for both binders (no ResourceSlice LIST per bind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_with_dra_claims_counts_add_up() {
    let cli = Cli::try_parse_from([
        "bindlet",
        "bench",
        "--requests",
        "20",
        "--concurrency",
        "4",
        "--idle-seconds",
        "0",
        "--dra-claims",
        "1",
        "--agent-bin",
        env!("CARGO_BIN_EXE_bindlet"),
    ])
    .expect("args");
    let Command::Bench(args) = cli.command else {
        panic!("not the bench command");
    };
    let report = bindlet::bench::run(args).await.expect("bench runs");
    assert_eq!(report.dra_claims, 1);
    for (name, phase) in [("limit", &report.limit), ("agent", &report.agent)] {
        assert_eq!((phase.binds, phase.errors), (20, 0), "{name}");
        let api = phase.api.as_ref().expect("the simulator counts requests");
        for k in [
            "get pods",
            "create pods/binding",
            "patch bindrequests/status",
            "get resourceclaims",
            "update resourceclaims/status",
        ] {
            assert_eq!(api.per_bind.get(k), Some(&1.0), "{name}: {k}");
        }
        assert_eq!(api.per_bind.get("list resourceslices"), None, "{name}");
        assert!((api.total_per_bind - 5.0).abs() < 1e-9, "{name}");
    }
    let dra = report
        .targets
        .iter()
        .find(|t| t.name == "API requests per DRA bind")
        .expect("DRA target");
    assert_eq!(dra.met, Some(true), "{}", dra.value);
}

/// `--fleet 6`: six node agents (one process) against a central binder with KAI's
/// defaults, same load. Both bind everything; the figures add up; idle, the agents send
/// only Lease renewals (one PUT per agent per 13.5..15 s; the 20 s window ends before the
/// GPU-reservation collector's first round at 30 s) and the central binder nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_bench_compares_agents_with_a_central_binder() {
    let cli = Cli::try_parse_from([
        "bindlet",
        "bench",
        "--fleet",
        "6",
        "--requests",
        "30",
        "--concurrency",
        "6",
        "--fleet-workers",
        "2",
        "--fleet-idle-seconds",
        "20",
        "--agent-bin",
        env!("CARGO_BIN_EXE_bindlet"),
    ])
    .expect("args");
    let Command::Bench(args) = cli.command else {
        panic!("not the bench command");
    };
    let report = bindlet::bench::run_fleet(args).await.expect("bench runs");
    assert_eq!(report.points.len(), 2, "one point per mode");
    for p in &report.points {
        let mode = p.mode.as_str();
        assert_eq!(p.nodes, 6, "{mode}");
        assert_eq!((p.created, p.binds, p.errors), (30, 30, 0), "{mode}");
        assert!(p.binds_per_s > 0.0 && p.seconds > 0.0, "{mode}");
        assert!(
            (p.binds_per_s - p.binds as f64 / p.seconds).abs() < 1e-6,
            "{mode}"
        );
        let l = &p.latency_ms;
        assert!(0.0 < l.p50 && l.p50 <= l.p99, "{mode}: {l:?}");
        // Every bind is a GET pod, a POST binding and a status PATCH, whoever binds.
        for k in [
            "get pods",
            "create pods/binding",
            "patch bindrequests/status",
        ] {
            let per_s = p.load.by_request.get(k).copied().unwrap_or(0.0);
            let per_bind = per_s * p.seconds / p.binds as f64;
            assert!(
                (per_bind - 1.0).abs() < 1e-6,
                "{mode}: {k} {per_bind} per bind"
            );
        }
        let parts = p.load.bind_work_per_s + p.load.other_per_s;
        assert!((p.load.total_per_s - parts).abs() < 1e-6, "{mode}");
    }
    let fleet = &report.points[0];
    let central = &report.points[1];
    assert_eq!((fleet.binders, central.binders), (6, 1));
    // Idle: 20 s cover one or two renewals per agent; nothing else.
    let renewals = fleet
        .idle
        .by_request
        .get("update leases")
        .copied()
        .unwrap_or(0.0)
        * report.idle_seconds;
    assert!(
        (5.5..=12.5).contains(&renewals),
        "{renewals} renewals: {:?}",
        fleet.idle.by_request
    );
    assert_eq!(
        fleet.idle.by_request.keys().collect::<Vec<_>>(),
        ["update leases"],
        "idle agents send Lease renewals only"
    );
    assert!(fleet.idle_per_binder_with_watch_restarts_req_s <= 0.1);
    assert_eq!(
        central.idle.total_per_s, 0.0,
        "{:?}",
        central.idle.by_request
    );
    // Three watches per agent (BindRequests, Node, ResourceSlices); one for the central binder.
    assert_eq!(fleet.open_watches, Some(18));
    assert_eq!(central.open_watches, Some(1));
    let idle_target = report
        .targets
        .iter()
        .find(|t| t.name.starts_with("idle API requests/s per agent"))
        .expect("idle target");
    assert_eq!(idle_target.met, Some(true), "{}", idle_target.value);
    let svg = bindlet::bench::plot::svg(&report);
    assert!(
        svg.starts_with("<svg") && svg.contains("polyline") && svg.trim_end().ends_with("</svg>")
    );
    assert!(report.table().contains("central"));
}
