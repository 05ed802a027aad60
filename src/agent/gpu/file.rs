//! GPUs and scripted faults described in a YAML file (`--gpu-inventory-file`), for the
//! demo and tests. The file is read again on every probe, so editing it changes what the
//! next bind sees.
//!
//! ```yaml
//! gpus:
//!   - uuid: GPU-0
//!     name: NVIDIA H100 80GB HBM3
//!     memoryTotalMiB: 81559
//!     memoryReservedMiB: 512
//!     memoryUsedMiB: 0
//!     eccUncorrectableVolatile: 0
//!   - uuid: GPU-1
//!     lost: fallen off the bus          # any persistent fault field may be set here
//! faults:                               # applied from the Nth probe on (1 = the first)
//!   - gpu: GPU-0
//!     afterProbes: 3
//!     xid: 79                           # or doubleBitEcc: true, or lost / remappedRowsPending ...
//! # unavailable: "driver not loaded"    # the whole inventory is unavailable
//! ```

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::Deserialize;

use super::health::HealthEvent;
use super::{
    Gpu, GpuError, GpuInventory, GpuMemory, GpuProcess, GpuSnapshot, HealthConfig, HealthTracker,
    InventoryState, MigState, TransitionSink,
};

const MIB: u64 = 1024 * 1024;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InventoryFile {
    #[serde(default)]
    pub gpus: Vec<FileGpu>,
    #[serde(default)]
    pub faults: Vec<FileFault>,
    pub unavailable: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileGpu {
    pub uuid: String,
    pub name: Option<String>,
    pub pci_bus_id: Option<String>,
    pub minor: Option<u32>,
    #[serde(default = "default_total")]
    pub memory_total_mi_b: u64,
    #[serde(default)]
    pub memory_used_mi_b: u64,
    #[serde(default)]
    pub memory_reserved_mi_b: u64,
    #[serde(default)]
    pub ecc_uncorrectable_volatile: u64,
    #[serde(default)]
    pub pages_pending_retirement: bool,
    #[serde(default)]
    pub remapped_rows_pending: bool,
    #[serde(default)]
    pub remapped_rows_failed: bool,
    pub lost: Option<String>,
    #[serde(default)]
    pub mig: MigState,
    #[serde(default)]
    pub processes: Vec<GpuProcess>,
}

fn default_total() -> u64 {
    81_559
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileFault {
    /// UUID of the GPU.
    pub gpu: String,
    #[serde(default = "one")]
    pub after_probes: u64,
    pub xid: Option<u64>,
    #[serde(default)]
    pub double_bit_ecc: bool,
    pub lost: Option<String>,
    pub ecc_uncorrectable_volatile: Option<u64>,
    pub pages_pending_retirement: Option<bool>,
    pub remapped_rows_pending: Option<bool>,
    pub remapped_rows_failed: Option<bool>,
}

fn one() -> u64 {
    1
}

impl InventoryFile {
    pub fn parse(path: &str, text: &str) -> Result<Self, GpuError> {
        serde_yaml::from_str(text).map_err(|e| GpuError::FileParse {
            path: path.to_string(),
            error: e.to_string(),
        })
    }

    /// A healthy node of `n` H100-like GPUs, as the demo uses.
    pub fn healthy_node(n: u32) -> String {
        let mut s = String::from("gpus:\n");
        for i in 0..n {
            s.push_str(&format!(
                "  - uuid: GPU-{i:08x}-demo\n    name: NVIDIA H100 80GB HBM3\n    pciBusId: \"00000000:{:02X}:00.0\"\n    minor: {i}\n    memoryTotalMiB: 81559\n    memoryReservedMiB: 512\n",
                0x18 + i
            ));
        }
        s
    }
}

struct State {
    tracker: HealthTracker,
    probes: u64,
    fired: BTreeSet<usize>,
}

pub struct FileInventory {
    path: PathBuf,
    state: Mutex<State>,
    transitions: Option<TransitionSink>,
}

impl FileInventory {
    pub fn new(path: PathBuf, health: HealthConfig, transitions: Option<TransitionSink>) -> Self {
        FileInventory {
            path,
            state: Mutex::new(State {
                tracker: HealthTracker::new(health),
                probes: 0,
                fired: BTreeSet::new(),
            }),
            transitions,
        }
    }

    fn read(&self) -> Result<InventoryFile, GpuError> {
        let p = self.path.display().to_string();
        let text = std::fs::read_to_string(&self.path).map_err(|e| GpuError::FileRead {
            path: p.clone(),
            error: e.to_string(),
        })?;
        InventoryFile::parse(&p, &text)
    }
}

fn to_gpu(i: usize, f: &FileGpu) -> Gpu {
    Gpu {
        index: i as u32,
        uuid: f.uuid.clone(),
        minor_number: f.minor,
        pci_bus_id: f.pci_bus_id.clone(),
        name: f.name.clone(),
        memory: Some(GpuMemory {
            total: f.memory_total_mi_b * MIB,
            used: f.memory_used_mi_b * MIB,
            reserved: f.memory_reserved_mi_b * MIB,
        }),
        mig: f.mig.clone(),
        ecc_uncorrectable_volatile: Some(f.ecc_uncorrectable_volatile),
        pages_pending_retirement: Some(f.pages_pending_retirement),
        remapped_rows_pending: Some(f.remapped_rows_pending),
        remapped_rows_failed: Some(f.remapped_rows_failed),
        processes: f.processes.clone(),
        lost: f.lost.clone(),
        health: Default::default(),
    }
}

fn apply_override(g: &mut Gpu, f: &FileFault) {
    if let Some(l) = &f.lost {
        g.lost = Some(l.clone());
    }
    if let Some(n) = f.ecc_uncorrectable_volatile {
        g.ecc_uncorrectable_volatile = Some(n);
    }
    if let Some(b) = f.pages_pending_retirement {
        g.pages_pending_retirement = Some(b);
    }
    if let Some(b) = f.remapped_rows_pending {
        g.remapped_rows_pending = Some(b);
    }
    if let Some(b) = f.remapped_rows_failed {
        g.remapped_rows_failed = Some(b);
    }
}

impl GpuInventory for FileInventory {
    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    fn snapshot(&self) -> GpuSnapshot {
        let source = self.describe();
        let file = match self.read() {
            Ok(f) => f,
            Err(e) => return GpuSnapshot::unavailable(source, e.to_string()),
        };
        if let Some(why) = &file.unavailable {
            return GpuSnapshot::unavailable(source, why.clone());
        }
        let now = jiff::Timestamp::now();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.probes += 1;
        let probe = st.probes;
        let mut gpus: Vec<Gpu> = file
            .gpus
            .iter()
            .enumerate()
            .map(|(i, g)| to_gpu(i, g))
            .collect();
        let mut transitions = Vec::new();
        // Events fire once, at their probe, before the probe's own facts are applied.
        for (i, f) in file.faults.iter().enumerate() {
            if f.after_probes > probe {
                continue;
            }
            if let Some(g) = gpus.iter_mut().find(|g| g.uuid == f.gpu) {
                apply_override(g, f);
            }
            if st.fired.insert(i) {
                let mut events = Vec::new();
                if let Some(x) = f.xid {
                    events.push(HealthEvent::Xid(x));
                }
                if f.double_bit_ecc {
                    events.push(HealthEvent::DoubleBitEcc);
                }
                for ev in events {
                    // The tracker must know the GPU before an event can be applied to it.
                    if let Some(g) = gpus.iter().find(|g| g.uuid == f.gpu) {
                        let mut seed = vec![g.clone()];
                        transitions.extend(st.tracker.observe(&mut seed, now));
                    }
                    transitions.extend(st.tracker.event(&f.gpu, ev, now));
                }
            }
        }
        transitions.extend(st.tracker.observe(&mut gpus, now));
        drop(st);
        if let Some(tx) = &self.transitions {
            for t in transitions {
                let _ = tx.send(t);
            }
        }
        GpuSnapshot {
            source,
            state: InventoryState::Available,
            taken_at: now.to_string(),
            gpus,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(text: &str) -> (tempfile::TempDir, FileInventory) {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("gpus.yaml");
        std::fs::write(&p, text).expect("write");
        (dir, FileInventory::new(p, HealthConfig::default(), None))
    }

    #[test]
    fn reads_devices_and_memory() {
        let (_d, inv) = inv(&InventoryFile::healthy_node(2));
        let s = inv.snapshot();
        assert_eq!(s.state, InventoryState::Available);
        assert_eq!(s.gpus.len(), 2);
        assert_eq!(s.gpus[1].index, 1);
        assert_eq!(s.gpus[1].memory.map(|m| m.reserved), Some(512 * MIB));
        assert!(s.gpus.iter().all(|g| g.health.healthy));
    }

    #[test]
    fn missing_or_invalid_file_is_unavailable_not_a_crash() {
        let inv = FileInventory::new(
            "/nonexistent/gpus.yaml".into(),
            HealthConfig::default(),
            None,
        );
        let s = inv.snapshot();
        assert!(matches!(s.state, InventoryState::Unavailable { .. }));
        let (_d, inv) = inv_with("gpus: [ { uuid: a, bogus: 1 } ]");
        match inv.snapshot().state {
            InventoryState::Unavailable { error } => assert!(error.contains("bogus"), "{error}"),
            other => panic!("{other:?}"),
        }
    }

    fn inv_with(text: &str) -> (tempfile::TempDir, FileInventory) {
        inv(text)
    }

    #[test]
    fn scripted_faults_apply_from_their_probe() {
        let (_d, inv) = inv(
            "gpus: [ { uuid: A }, { uuid: B } ]\nfaults:\n  - { gpu: A, afterProbes: 2, xid: 79 }\n  - { gpu: B, afterProbes: 3, remappedRowsPending: true }\n  - { gpu: B, afterProbes: 1, xid: 13 }\n",
        );
        let h = |s: GpuSnapshot| s.gpus.iter().map(|g| g.health.healthy).collect::<Vec<_>>();
        assert_eq!(h(inv.snapshot()), [true, true], "XID 13 is ignored");
        let s = inv.snapshot();
        assert_eq!(h(s.clone()), [false, true]);
        assert!(s.gpus[0].health.reason.contains("XID 79"));
        let s = inv.snapshot();
        assert_eq!(h(s.clone()), [false, false]);
        assert!(s.gpus[1].health.reason.contains("pending remapping"));
    }
}
