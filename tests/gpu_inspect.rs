//! `bindlet inspect`: the node's GPUs and their health, as a person runs it.

use bindlet::cli::{Cli, Command};
use clap::Parser;

/// `bindlet inspect ARGS`, parsed as the binary parses it; returns what it prints.
fn inspect(args: &[&str]) -> (bool, String) {
    let mut argv = vec!["bindlet", "inspect"];
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(argv).expect("arguments parse");
    let Command::Inspect(a) = cli.command else {
        panic!("not the inspect command");
    };
    match bindlet::gpu::inspect::render(&a) {
        Ok(out) => (true, out),
        Err(e) => (false, e.to_string()),
    }
}

#[test]
fn inspect_shows_gpus_health_and_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("gpus.yaml");
    std::fs::write(
        &file,
        "gpus:\n  - { uuid: GPU-good, name: H100, memoryTotalMiB: 81559, memoryReservedMiB: 512 }\n  - { uuid: GPU-bad, remappedRowsPending: true }\n",
    )
    .expect("write");
    let f = file.to_str().expect("utf-8 path");
    let (ok, table) = inspect(&["--gpu-inventory-file", f]);
    assert!(ok, "{table}");
    assert!(
        table.contains("GPU-good") && table.contains("GPU-bad"),
        "{table}"
    );
    assert!(table.contains("UNHEALTHY"), "{table}");
    assert!(table.contains("pending remapping"), "{table}");
    assert!(table.contains("2 GPU(s), 1 healthy"), "{table}");

    let (ok, json) = inspect(&["--json", "--gpu-inventory-file", f]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(v["state"]["state"], "available");
    assert_eq!(v["gpus"][1]["uuid"], "GPU-bad");
    assert_eq!(v["gpus"][1]["health"]["healthy"], false);
    assert_eq!(v["gpus"][0]["memory"]["reserved"], 512 * 1024 * 1024);
}

#[test]
fn inspect_without_a_driver_reports_unavailable_and_exits_zero() {
    let (ok, out) = inspect(&["--nvml-library", "/nonexistent/libnvidia-ml.so.1"]);
    assert!(ok, "a missing driver is a state, not an error: {out}");
    assert!(out.contains("GPU inventory: unavailable"), "{out}");
    assert!(out.contains("cannot load the NVML library"), "{out}");
}
