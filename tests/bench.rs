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
