//! `CUDA_DEVICE_MEMORY_LIMIT` for HAMi-core, the in-container library that caps a shared
//! GPU's memory (`--hamicore`, off by default as KAI's `hamicore` binder plugin is).
//!
//! KAI (`pkg/binder/plugins/hamicore/hami_core.go`, enabled through the binder's
//! `--plugins` JSON, `{"hamicore":{"enabled":true}}`, default off in
//! `pkg/apis/kai/v1/binder/binder.go`) writes `floor(<node label nvidia.com/gpu.memory, MiB>
//! × portion)` followed by `m` (MiB) into the capabilities ConfigMap; KAI's webhook wires the
//! container's env var to that key, optional (`pkg/admission/webhook/v1alpha2/hamicore/`).
//! The label is the card's nominal memory, which the driver never fully hands out. bindlet
//! measures the GPU it bound the pod to: `floor((total − driver-reserved, MiB) × portion)`
//! from the fresh probe, and only without a usable probe falls back to KAI's label. With
//! several GPUs (several groups) the smallest is used. The result names its source.

use super::MIB;
use crate::gpu::{GpuSnapshot, InventoryState};

/// KAI `pkg/binder/common/constants.go`, `CudaDeviceMemoryLimit`.
pub const CUDA_DEVICE_MEMORY_LIMIT: &str = "CUDA_DEVICE_MEMORY_LIMIT";
/// KAI `pkg/common/constants/constants.go`, `NvidiaGpuMemory`: GPU memory in MiB, set by
/// NVIDIA's GPU feature discovery.
pub const GPU_MEMORY_LABEL: &str = "nvidia.com/gpu.memory";

/// The limit to write and where its memory figure came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLimit {
    /// E.g. `40704m`.
    pub value: String,
    pub source: String,
}

/// The limit for `portion` of each of `devices` (GPU UUIDs): from the probe when every
/// device is in it with its memory, else from the node's `nvidia.com/gpu.memory` label;
/// `Err` says why neither works (KAI then writes nothing, and so does bindlet).
pub fn memory_limit(
    portion: f64,
    devices: &[String],
    snap: Option<&GpuSnapshot>,
    node_label: Option<&str>,
) -> Result<MemoryLimit, String> {
    if !(portion.is_finite() && portion > 0.0) {
        return Err(format!("invalid portion {portion}"));
    }
    let measured = snap.and_then(|s| measured_usable_mib(devices, s));
    let (usable_mib, source) = match (measured, node_label) {
        (Some(Ok((mib, label))), _) => (mib, label),
        (measured, Some(label)) => {
            let mib = label
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|m| *m > 0)
                .ok_or_else(|| format!("invalid node label {GPU_MEMORY_LABEL}={label:?}"))?;
            let why = match measured {
                Some(Err(why)) => format!("; not measured: {why}"),
                _ => "; no GPU probe".to_string(),
            };
            (
                mib,
                format!("node label {GPU_MEMORY_LABEL}={mib} MiB (as KAI){why}"),
            )
        }
        (Some(Err(why)), None) => {
            return Err(format!(
                "{why}, and the node has no {GPU_MEMORY_LABEL} label"
            ));
        }
        (None, None) => {
            return Err(format!(
                "no GPU probe, and the node has no {GPU_MEMORY_LABEL} label"
            ));
        }
    };
    let limit = (usable_mib as f64 * portion).floor() as u64;
    if limit == 0 {
        return Err(format!(
            "portion {portion} of {usable_mib} MiB rounds down to nothing"
        ));
    }
    Ok(MemoryLimit {
        value: format!("{limit}m"),
        source,
    })
}

/// The smallest `total − reserved` (MiB) of the devices, with a description, or why it
/// cannot be measured.
fn measured_usable_mib(
    devices: &[String],
    snap: &GpuSnapshot,
) -> Option<Result<(u64, String), String>> {
    if let InventoryState::Unavailable { error } = &snap.state {
        return Some(Err(format!("GPU inventory unavailable: {error}")));
    }
    if devices.is_empty() {
        return None;
    }
    let mut smallest: Option<(u64, String)> = None;
    for d in devices {
        let Some(g) = snap.by_uuid(d) else {
            return Some(Err(format!("GPU {d} is not in the inventory")));
        };
        let Some(m) = g.memory else {
            return Some(Err(format!(
                "the memory of {} could not be read",
                g.label()
            )));
        };
        let usable = m.total.saturating_sub(m.reserved) / MIB;
        let text = format!(
            "measured on {} ({}): total {} MiB less {} MiB reserved by the driver = {usable} MiB",
            g.label(),
            snap.source,
            m.total / MIB,
            m.reserved / MIB
        );
        if smallest.as_ref().is_none_or(|(s, _)| usable < *s) {
            smallest = Some((usable, text));
        }
    }
    smallest.map(Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::verdict::tests::{gpu, snap};

    /// name, portion, devices, snapshot, node label, `Ok(value)` or `Err(part of reason)`
    type Case<'a> = (
        &'a str,
        f64,
        Vec<String>,
        Option<&'a GpuSnapshot>,
        Option<&'a str>,
        Result<&'a str, &'a str>,
    );

    #[test]
    fn limit_table() {
        // GPU-0: 80 GiB, 512 MiB reserved; GPU-1: 40 GiB, 1 GiB reserved.
        let mut g0 = gpu(0, true, 0);
        let mut g1 = gpu(1, true, 0);
        if let Some(m) = g0.memory.as_mut() {
            m.total = 81920 * MIB;
            m.reserved = 512 * MIB;
        }
        if let Some(m) = g1.memory.as_mut() {
            m.total = 40960 * MIB;
            m.reserved = 1024 * MIB;
        }
        let s = snap(vec![g0, g1]);
        let down = GpuSnapshot::unavailable("nvml", "DriverNotLoaded");
        let dev = |d: &[&str]| d.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // name, portion, devices, snapshot, label, Ok(value) or Err(contains)
        let cases: Vec<Case> = vec![
            (
                "measured: (81920-512) × 0.5",
                0.5,
                dev(&["GPU-0"]),
                Some(&s),
                Some("81920"),
                Ok("40704m"),
            ),
            (
                "floor, not round",
                0.3,
                dev(&["GPU-0"]),
                Some(&s),
                None,
                Ok("24422m"),
            ),
            (
                "several GPUs: the smallest",
                0.5,
                dev(&["GPU-0", "GPU-1"]),
                Some(&s),
                None,
                Ok("19968m"),
            ),
            (
                "no probe: KAI's label",
                0.5,
                dev(&["GPU-0"]),
                None,
                Some("81920"),
                Ok("40960m"),
            ),
            (
                "unknown GPU: label",
                0.25,
                dev(&["GPU-9"]),
                Some(&s),
                Some("16384"),
                Ok("4096m"),
            ),
            (
                "inventory down: label",
                0.5,
                dev(&["GPU-0"]),
                Some(&down),
                Some("1000"),
                Ok("500m"),
            ),
            (
                "neither",
                0.5,
                dev(&["GPU-0"]),
                Some(&down),
                None,
                Err("DriverNotLoaded"),
            ),
            (
                "bad label",
                0.5,
                dev(&["GPU-0"]),
                None,
                Some("80GB"),
                Err("invalid node label"),
            ),
            (
                "rounds to nothing",
                0.0001,
                dev(&["GPU-0"]),
                None,
                Some("100"),
                Err("rounds down"),
            ),
            (
                "bad portion",
                0.0,
                dev(&["GPU-0"]),
                Some(&s),
                None,
                Err("invalid portion"),
            ),
        ];
        for (name, portion, devices, snap, label, want) in cases {
            let got = memory_limit(portion, &devices, snap, label);
            match (want, got) {
                (Ok(v), Ok(l)) => assert_eq!(l.value, v, "{name}"),
                (Err(w), Err(e)) => assert!(e.contains(w), "{name}: {e}"),
                (want, got) => panic!("{name}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn limit_names_its_source() {
        let mut g0 = gpu(0, true, 0);
        if let Some(m) = g0.memory.as_mut() {
            m.total = 81920 * MIB;
            m.reserved = 512 * MIB;
        }
        let s = snap(vec![g0]);
        let l = memory_limit(0.5, &["GPU-0".into()], Some(&s), Some("81920")).expect("limit");
        assert!(
            l.source.contains("measured on") && l.source.contains("81408 MiB"),
            "{}",
            l.source
        );
        let l = memory_limit(0.5, &["GPU-0".into()], None, Some("81920")).expect("limit");
        assert!(
            l.source.contains("node label nvidia.com/gpu.memory=81920"),
            "{}",
            l.source
        );
    }
}
