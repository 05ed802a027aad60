//! `bindlet inspect`: this node's GPU inventory and health, as a table or JSON.

use std::fmt::Write;

use super::{GpuArgs, GpuSnapshot, InventoryState};

#[derive(clap::Args, Debug, Clone)]
pub struct InspectArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub gpu: GpuArgs,
}

/// Probes once and prints. A missing driver prints as `unavailable`; it is not an error.
pub fn run(args: &InspectArgs) -> anyhow::Result<()> {
    print!("{}", render(args)?);
    Ok(())
}

/// What `run` prints.
pub fn render(args: &InspectArgs) -> anyhow::Result<String> {
    let a = &args.gpu;
    let inv = super::open(&a.source(), a.health(), a.gpu_recheck, None)?;
    let snap = inv.snapshot();
    Ok(if args.json {
        serde_json::to_string_pretty(&snap)? + "\n"
    } else {
        table(&snap)
    })
}

fn gib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1024.0 * 1024.0 * 1024.0))
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map(|v| v.to_string())
        .unwrap_or_else(|| "-".into())
}

/// The human table. Unknown values (not supported, not readable) print as `-`.
pub fn table(s: &GpuSnapshot) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "source: {}   probed: {}", s.source, s.taken_at);
    if let InventoryState::Unavailable { error } = &s.state {
        let _ = writeln!(out, "GPU inventory: unavailable: {error}");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<3} {:<42} {:<24} {:<14} {:>5} {:>22} {:>4} {:>7} {:>7} {:>5} {:<7} HEALTH",
        "IDX",
        "UUID",
        "NAME",
        "PCI",
        "MINOR",
        "MEM GiB used/rsvd/total",
        "MIG",
        "ECC-UNC",
        "RETIRE",
        "REMAP",
        "PROCS",
    );
    for g in &s.gpus {
        let mem = g
            .memory
            .map(|m| format!("{}/{}/{}", gib(m.used), gib(m.reserved), gib(m.total)))
            .unwrap_or_else(|| "-".into());
        let remap = match (g.remapped_rows_pending, g.remapped_rows_failed) {
            (Some(true), _) => "pend".to_string(),
            (_, Some(true)) => "fail".to_string(),
            (Some(false), Some(false)) | (Some(false), None) => "ok".to_string(),
            _ => "-".to_string(),
        };
        let mig = if g.mig.enabled {
            format!("{}", g.mig.devices.len())
        } else {
            "off".into()
        };
        let health = if g.health.healthy {
            if g.health.reason.is_empty() {
                "healthy".to_string()
            } else {
                format!("healthy ({})", g.health.reason)
            }
        } else {
            format!(
                "UNHEALTHY since {}: {}",
                g.health.since.as_deref().unwrap_or("start"),
                g.health.reason
            )
        };
        let _ = writeln!(
            out,
            "{:<3} {:<42} {:<24} {:<14} {:>5} {:>22} {:>4} {:>7} {:>7} {:>5} {:<7} {health}",
            g.index,
            if g.uuid.is_empty() { "?" } else { &g.uuid },
            g.name.as_deref().unwrap_or("-"),
            g.pci_bus_id.as_deref().unwrap_or("-"),
            opt(&g.minor_number),
            mem,
            mig,
            opt(&g.ecc_uncorrectable_volatile),
            match g.pages_pending_retirement {
                Some(true) => "pend",
                Some(false) => "ok",
                None => "-",
            },
            remap,
            g.processes.len(),
        );
    }
    let healthy = s.healthy().count();
    let _ = writeln!(out, "{} GPU(s), {healthy} healthy", s.gpus.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{Gpu, Health};

    #[test]
    fn table_shows_unhealthy_reason_and_unavailable_state() {
        let s = GpuSnapshot {
            source: "test".into(),
            state: InventoryState::Available,
            taken_at: "t".into(),
            gpus: vec![
                Gpu {
                    uuid: "GPU-a".into(),
                    ..Default::default()
                },
                Gpu {
                    index: 1,
                    uuid: "GPU-b".into(),
                    health: Health {
                        healthy: false,
                        reason: "XID 79".into(),
                        since: Some("T1".into()),
                    },
                    ..Default::default()
                },
            ],
        };
        let t = table(&s);
        assert!(
            t.contains("GPU-a") && t.contains("UNHEALTHY since T1: XID 79"),
            "{t}"
        );
        assert!(t.contains("2 GPU(s), 1 healthy"), "{t}");
        let t = table(&GpuSnapshot::unavailable("nvml x", "DriverNotLoaded"));
        assert!(t.contains("unavailable: DriverNotLoaded"), "{t}");
    }
}
