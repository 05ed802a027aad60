//! `bindlet inspect`: the node's GPUs and their health, as a person runs it.

use std::process::Command;

fn inspect(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bindlet"))
        .arg("inspect")
        .args(args)
        .env_remove("BINDLET_GPU_INVENTORY_FILE")
        .output()
        .expect("run bindlet inspect");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
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
