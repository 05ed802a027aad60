//! Reads this node's NUMA topology from sysfs: the NUMA nodes with their CPUs and memory
//! (`devices/system/node/node<N>/{cpulist,meminfo}`), and each GPU's NUMA node from its
//! PCI device (`bus/pci/devices/<bus id>/numa_node`, the file the NVIDIA device plugin
//! reads to report device topology to the kubelet).

use std::path::{Path, PathBuf};

use thiserror::Error;

use super::{NumaFacts, NumaNode};
use crate::gpu::GpuSnapshot;

#[derive(Debug, Error)]
pub enum SysfsError {
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path} has no NUMA nodes")]
    NoNodes { path: PathBuf },
    #[error("malformed {path}: {reason}")]
    Malformed { path: PathBuf, reason: String },
}

fn read(path: PathBuf) -> Result<String, SysfsError> {
    std::fs::read_to_string(&path).map_err(|error| SysfsError::Read { path, error })
}

/// The NUMA nodes under `root` (usually `/sys`), and the NUMA node of each GPU of `gpus`
/// whose PCI bus id is known and whose device reports one.
pub fn read_facts(root: &Path, gpus: Option<&GpuSnapshot>) -> Result<NumaFacts, SysfsError> {
    let dir = root.join("devices/system/node");
    let entries = std::fs::read_dir(&dir).map_err(|error| SysfsError::Read {
        path: dir.clone(),
        error,
    })?;
    let mut facts = NumaFacts::default();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_prefix("node"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let path = entry.path();
        let cpulist = read(path.join("cpulist"))?;
        let cpus = parse_cpulist(cpulist.trim()).map_err(|reason| SysfsError::Malformed {
            path: path.join("cpulist"),
            reason,
        })?;
        let meminfo = read(path.join("meminfo"))?;
        let memory_bytes = parse_mem_total(&meminfo).ok_or_else(|| SysfsError::Malformed {
            path: path.join("meminfo"),
            reason: "no MemTotal line".into(),
        })?;
        facts.nodes.insert(id, NumaNode { cpus, memory_bytes });
    }
    if facts.nodes.is_empty() {
        return Err(SysfsError::NoNodes { path: dir });
    }
    for g in gpus.map(|s| s.gpus.as_slice()).unwrap_or_default() {
        let Some(bus) = g.pci_bus_id.as_deref().and_then(sysfs_pci_address) else {
            continue;
        };
        let file = root.join("bus/pci/devices").join(bus).join("numa_node");
        // -1 (no affinity) or an unreadable file: the GPU's zone is unknown.
        if let Ok(n) = read(file)
            && let Ok(node) = n.trim().parse::<u32>()
        {
            facts.gpu_nodes.insert(g.uuid.clone(), node);
        }
    }
    Ok(facts)
}

/// `0-3,8,10-11` → {0,1,2,3,8,10,11}; an empty list is a node without CPUs.
pub fn parse_cpulist(s: &str) -> Result<std::collections::BTreeSet<u32>, String> {
    let mut out = std::collections::BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b) = (
            a.parse::<u32>()
                .map_err(|_| format!("bad CPU range {part:?}"))?,
            b.parse::<u32>()
                .map_err(|_| format!("bad CPU range {part:?}"))?,
        );
        if a > b || b - a > 65_536 {
            return Err(format!("bad CPU range {part:?}"));
        }
        out.extend(a..=b);
    }
    Ok(out)
}

/// `Node 0 MemTotal:  32768 kB` → bytes.
pub fn parse_mem_total(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let rest = l.split_once("MemTotal:")?.1.trim();
        let kb = rest.strip_suffix("kB").unwrap_or(rest).trim();
        kb.parse::<u64>().ok()?.checked_mul(1024)
    })
}

/// NVML's bus id (`00000000:3B:00.0`, an 8-digit domain) as sysfs names the device
/// (`0000:3b:00.0`, a 4-digit domain, lower case).
pub fn sysfs_pci_address(nvml_bus_id: &str) -> Option<String> {
    let (domain, rest) = nvml_bus_id.trim().split_once(':')?;
    if domain.is_empty() || rest.is_empty() || !domain.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let domain = u32::from_str_radix(domain, 16).ok()?;
    if domain > 0xffff {
        return None;
    }
    Some(format!("{domain:04x}:{}", rest.to_ascii_lowercase()))
}

/// Writes a sysfs tree with these NUMA nodes and GPU PCI devices under `root`, for tests
/// and the demo: `nodes` is (id, cpulist, MemTotal in kB); `gpus` is (NVML bus id, node).
pub fn write_fake(
    root: &Path,
    nodes: &[(u32, &str, u64)],
    gpus: &[(&str, i64)],
) -> std::io::Result<()> {
    for (id, cpus, kb) in nodes {
        let dir = root.join(format!("devices/system/node/node{id}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("cpulist"), format!("{cpus}\n"))?;
        std::fs::write(
            dir.join("meminfo"),
            format!("Node {id} MemTotal:       {kb} kB\nNode {id} MemFree:        {kb} kB\n"),
        )?;
    }
    for (bus, node) in gpus {
        let Some(addr) = sysfs_pci_address(bus) else {
            continue;
        };
        let dir = root.join("bus/pci/devices").join(addr);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("numa_node"), format!("{node}\n"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{Gpu, GpuSnapshot, InventoryState};

    #[test]
    fn cpulists_and_meminfo_parse_like_the_kernel_writes_them() {
        let cpus = parse_cpulist("0-3,8,10-11").expect("parses");
        assert_eq!(
            cpus.into_iter().collect::<Vec<_>>(),
            [0, 1, 2, 3, 8, 10, 11]
        );
        assert!(parse_cpulist("").expect("empty").is_empty());
        assert!(parse_cpulist("3-1").is_err());
        assert!(parse_cpulist("x").is_err());
        assert_eq!(
            parse_mem_total("Node 1 MemTotal:       65536 kB\nNode 1 MemFree: 1 kB\n"),
            Some(65536 * 1024)
        );
        assert_eq!(parse_mem_total("Node 1 MemFree: 1 kB\n"), None);
    }

    #[test]
    fn nvml_bus_ids_map_to_sysfs_addresses() {
        assert_eq!(
            sysfs_pci_address("00000000:3B:00.0").as_deref(),
            Some("0000:3b:00.0")
        );
        assert_eq!(
            sysfs_pci_address("0001:af:00.0").as_deref(),
            Some("0001:af:00.0")
        );
        assert_eq!(sysfs_pci_address("3B:00.0x").as_deref(), Some("003b:00.0x"));
        assert_eq!(sysfs_pci_address("nonsense"), None);
        assert_eq!(sysfs_pci_address("100000000:00:00.0"), None);
    }

    #[test]
    fn reads_nodes_and_gpu_affinity_from_a_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_fake(
            dir.path(),
            &[(0, "0-3", 1024), (1, "4-7", 2048)],
            &[
                ("00000000:3B:00.0", 0),
                ("00000000:AF:00.0", 1),
                ("00000000:C0:00.0", -1),
            ],
        )
        .expect("write");
        let gpu = |uuid: &str, bus: Option<&str>| Gpu {
            uuid: uuid.into(),
            pci_bus_id: bus.map(str::to_string),
            ..Default::default()
        };
        let snap = GpuSnapshot {
            source: "test".into(),
            state: InventoryState::Available,
            taken_at: String::new(),
            gpus: vec![
                gpu("GPU-a", Some("00000000:3B:00.0")),
                gpu("GPU-b", Some("00000000:AF:00.0")),
                gpu("GPU-c", Some("00000000:C0:00.0")),
                gpu("GPU-d", None),
            ],
        };
        let facts = read_facts(dir.path(), Some(&snap)).expect("reads");
        assert_eq!(facts.nodes.len(), 2);
        assert_eq!(facts.nodes[&1].cpus.len(), 4);
        assert_eq!(facts.nodes[&1].memory_bytes, 2048 * 1024);
        assert_eq!(
            facts
                .gpu_nodes
                .iter()
                .map(|(u, n)| (u.as_str(), *n))
                .collect::<Vec<_>>(),
            [("GPU-a", 0), ("GPU-b", 1)],
            "no affinity (-1) and no bus id leave the GPU's zone unknown"
        );
        let err = read_facts(&dir.path().join("absent"), None).expect_err("no tree");
        assert!(err.to_string().starts_with("cannot read"), "{err}");
    }
}
