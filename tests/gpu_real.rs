//! The NVML backend against a real driver. CI has no GPU, so these tests run only when
//! `BINDLET_TEST_NVML_LIBRARY` names a real `libnvidia-ml.so.1` (on a GPU machine:
//! `BINDLET_TEST_NVML_LIBRARY=libnvidia-ml.so.1 cargo test --test gpu_real`); otherwise
//! each prints why it is skipped. What the backend reads is compared with `nvidia-smi`,
//! which reads the same driver through its own code path.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use bindlet::api::{Phase, VerdictOutcome};
use bindlet::gpu::nvml::NvmlInventory;
use bindlet::gpu::{GpuInventory, HealthConfig, InventoryState};
use common::{TestEnv, reason};
use serde_json::json;

fn real_library(test: &str) -> Option<PathBuf> {
    match std::env::var_os("BINDLET_TEST_NVML_LIBRARY") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            eprintln!("skipping {test}: BINDLET_TEST_NVML_LIBRARY names no real NVML library");
            None
        }
    }
}

/// One GPU as `nvidia-smi` reports it.
#[derive(Debug)]
struct SmiGpu {
    uuid: String,
    name: String,
    pci_bus_id: String,
    memory_total_mib: u64,
}

/// `nvidia-smi`'s view, or `None` when it is not installed (the comparison is then skipped,
/// the backend's own checks still run).
fn nvidia_smi() -> Option<Vec<SmiGpu>> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=uuid,name,pci.bus_id,memory.total",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Some(
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split(',').map(str::trim).collect();
                assert_eq!(f.len(), 4, "unexpected nvidia-smi line: {l}");
                SmiGpu {
                    uuid: f[0].to_string(),
                    name: f[1].to_string(),
                    pci_bus_id: f[2].to_string(),
                    memory_total_mib: f[3].parse().expect("memory.total in MiB"),
                }
            })
            .collect(),
    )
}

fn start(lib: PathBuf) -> NvmlInventory {
    NvmlInventory::start(lib, HealthConfig::default(), Duration::from_secs(30), None)
        .expect("start the NVML backend")
}

#[test]
fn the_real_driver_lists_every_gpu_as_nvidia_smi_does() {
    let Some(lib) = real_library("the_real_driver_lists_every_gpu_as_nvidia_smi_does") else {
        return;
    };
    let inv = start(lib);
    let s = inv.snapshot();
    eprintln!("{s:#?}");
    assert_eq!(s.state, InventoryState::Available, "{s:?}");
    assert!(!s.gpus.is_empty(), "a GPU machine lists GPUs");
    for g in &s.gpus {
        assert!(g.uuid.starts_with("GPU-"), "{g:?}");
        let m = g.memory.expect("memory is read");
        assert!(m.total > 0 && m.used <= m.total, "{g:?}");
        assert!(g.health.healthy, "a fresh GPU is healthy: {g:?}");
        assert!(g.pci_bus_id.is_some() && g.name.is_some(), "{g:?}");
    }
    let Some(smi) = nvidia_smi() else {
        eprintln!("nvidia-smi not available: comparison skipped");
        return;
    };
    eprintln!("nvidia-smi: {smi:#?}");
    assert_eq!(s.gpus.len(), smi.len(), "same GPU count as nvidia-smi");
    for want in &smi {
        let g = s
            .by_uuid(&want.uuid)
            .unwrap_or_else(|| panic!("{} from nvidia-smi is listed: {s:#?}", want.uuid));
        assert_eq!(g.name.as_deref(), Some(want.name.as_str()));
        // nvidia-smi prints the bus id with 8 domain digits, NVML the same; compare
        // case-insensitively as the two have differed in case across driver versions.
        assert_eq!(
            g.pci_bus_id.as_deref().map(str::to_ascii_lowercase),
            Some(want.pci_bus_id.to_ascii_lowercase())
        );
        let mib = g.memory.map(|m| m.total / (1024 * 1024));
        assert_eq!(mib, Some(want.memory_total_mib), "{}", want.uuid);
    }
}

#[test]
fn a_second_probe_of_the_real_driver_agrees_with_the_first() {
    let Some(lib) = real_library("a_second_probe_of_the_real_driver_agrees_with_the_first") else {
        return;
    };
    let inv = start(lib);
    let first = inv.snapshot();
    std::thread::sleep(Duration::from_millis(500));
    let second = inv.snapshot();
    let uuids = |s: &bindlet::gpu::GpuSnapshot| -> Vec<String> {
        s.gpus.iter().map(|g| g.uuid.clone()).collect()
    };
    assert_eq!(uuids(&first), uuids(&second));
    assert!(second.gpus.iter().all(|g| g.health.healthy), "{second:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_binds_on_gpus_the_real_driver_reports_and_refuses_beyond_them() {
    let Some(lib) =
        real_library("the_agent_binds_on_gpus_the_real_driver_reports_and_refuses_beyond_them")
    else {
        return;
    };
    let count = tokio::task::spawn_blocking({
        let lib = lib.clone();
        move || start(lib).snapshot().gpus.len()
    })
    .await
    .expect("probe");
    assert!(count > 0);
    let env = TestEnv::new("gpu-real").await;
    let node = env.node_name("n1");
    env.create_node(&node, json!({})).await;
    let mut cfg = env.agent_config(&node);
    cfg.plugins.gpu.args.nvml_library = lib;
    cfg.plugins.gpu.args.gpu_inventory_file = None;
    let agent = env.start_agent(cfg).await;

    // Every GPU of the machine, whole: verified against the real driver, then bound.
    let all = u32::try_from(count).expect("GPU count");
    env.whole_gpu_pod("all", &node, all, all).await;
    let br = env.wait_phase("all", Phase::Succeeded).await;
    let v = env.verification(&agent, &br);
    let whole = v
        .verdicts
        .iter()
        .find(|v| v.plugin == "gpu" && v.check == "whole-gpus")
        .expect("gpu verdict recorded");
    assert_eq!(whole.outcome, VerdictOutcome::Pass, "{whole:?}");
    let counted = format!("{count} GPU(s), {count} healthy, 0 held");
    assert!(whole.message.contains(&counted), "{}", whole.message);

    // One more whole GPU does not exist free on this machine: refused, with the numbers.
    env.whole_gpu_pod("one-more", &node, 1, 1).await;
    let br = env.wait_phase("one-more", Phase::Failed).await;
    let r = reason(&br);
    assert!(r.starts_with("gpu: needs 1 whole GPU(s)"), "{r}");
    assert_eq!(env.pod_node("one-more").await, None, "not bound");

    agent.stop().await.expect("stop");
    env.cleanup().await;
}
