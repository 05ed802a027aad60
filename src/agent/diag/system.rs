//! The agent's own process and the node's resources, read with `sysinfo`: the standard
//! `process_*` metrics (collected at scrape time), and memory, CPUs and load for
//! `/debug/state`, `/debug` and the optional memory check.
//!
//! Every read here is an effect; nothing decides anything. A scrape refreshes only this
//! process (one `/proc/<pid>` read set), never the whole process table.

use std::sync::{Mutex, MutexGuard, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use serde::Serialize;
use sysinfo::{
    CpuRefreshKind, MemoryRefreshKind, Pid, ProcessRefreshKind, ProcessesToUpdate, RefreshKind,
    System,
};

/// One process's figures, as the Prometheus client libraries name them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ProcessFacts {
    pub resident_memory_bytes: u64,
    pub virtual_memory_bytes: u64,
    /// User plus system CPU time.
    pub cpu_seconds: f64,
    /// None where the platform does not tell.
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    /// Unix time the process started, in seconds.
    pub start_time_seconds: u64,
}

/// The node's memory, CPUs and load (the whole machine, not the agent's cgroup).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct NodeResources {
    pub memory_total_bytes: u64,
    /// What the kernel estimates can be allocated without swapping (`MemAvailable`).
    pub memory_available_bytes: u64,
    /// Logical CPUs.
    pub cpus: usize,
    pub load_average_1m: f64,
    pub load_average_5m: f64,
    pub load_average_15m: f64,
}

/// Reads one process's and the node's figures. Holds one `sysinfo::System` so repeated
/// reads reuse its open `/proc` handles.
pub struct SystemProbe {
    sys: Mutex<System>,
    pid: Option<Pid>,
    cpus: OnceLock<usize>,
}

impl std::fmt::Debug for SystemProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemProbe")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl SystemProbe {
    /// A probe of this process.
    pub fn own() -> Self {
        SystemProbe::of(std::process::id())
    }

    /// A probe of process `pid` (the bench measures its child this way).
    pub fn of(pid: u32) -> Self {
        SystemProbe {
            // Nothing is read until asked for: creating a probe is cheap.
            sys: Mutex::new(System::new()),
            pid: Some(Pid::from_u32(pid)),
            cpus: OnceLock::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, System> {
        // A panic mid-refresh leaves at worst stale figures; keep serving them.
        self.sys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The process's figures now; None when it is gone (or on a platform sysinfo does
    /// not support).
    pub fn process(&self) -> Option<ProcessFacts> {
        let pid = self.pid?;
        let mut sys = self.lock();
        // Memory and CPU times only: no command line, environment or task list.
        let kind = ProcessRefreshKind::nothing().with_memory().with_cpu();
        sys.refresh_processes_specifics(ProcessesToUpdate::Some(&[pid]), true, kind);
        let p = sys.process(pid)?;
        Some(ProcessFacts {
            resident_memory_bytes: p.memory(),
            virtual_memory_bytes: p.virtual_memory(),
            cpu_seconds: p.accumulated_cpu_time() as f64 / 1000.0,
            // sysinfo counts the entries of /proc/<pid>/fd and reads the soft limit.
            open_fds: p.open_files().map(|n| n as u64),
            max_fds: p.open_files_limit().map(|n| n as u64),
            start_time_seconds: p.start_time(),
        })
    }

    /// Bytes of memory available on the node now.
    pub fn memory_available(&self) -> u64 {
        let mut sys = self.lock();
        sys.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        sys.available_memory()
    }

    /// The node's memory, CPUs and load now.
    pub fn node(&self) -> NodeResources {
        let cpus = *self.cpus.get_or_init(|| {
            // The CPU list only, once: CPUs are not hot-plugged under a running agent
            // often enough to pay a re-read per request.
            let s = System::new_with_specifics(
                RefreshKind::nothing().with_cpu(CpuRefreshKind::nothing()),
            );
            s.cpus().len()
        });
        let (total, available) = {
            let mut sys = self.lock();
            sys.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
            (sys.total_memory(), sys.available_memory())
        };
        let load = System::load_average();
        NodeResources {
            memory_total_bytes: total,
            memory_available_bytes: available,
            cpus,
            load_average_1m: load.one,
            load_average_5m: load.five,
            load_average_15m: load.fifteen,
        }
    }
}

/// The standard `process_*` metrics of this process, read when scraped. Registered on the
/// root registry: these names carry no `bindlet_` prefix, so the usual dashboards and
/// alerts for any process work unchanged.
#[derive(Debug)]
pub struct ProcessCollector {
    probe: std::sync::Arc<SystemProbe>,
}

impl ProcessCollector {
    pub fn new(probe: std::sync::Arc<SystemProbe>) -> Self {
        ProcessCollector { probe }
    }
}

fn gauge(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    let m = enc.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A process that cannot read itself (non-Linux) reports nothing rather than zeros.
        let Some(p) = self.probe.process() else {
            return Ok(());
        };
        gauge(
            &mut enc,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            p.resident_memory_bytes,
        )?;
        gauge(
            &mut enc,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            p.virtual_memory_bytes,
        )?;
        let cpu = ConstCounter::new(p.cpu_seconds);
        let m = enc.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            cpu.metric_type(),
        )?;
        cpu.encode(m)?;
        if let Some(n) = p.open_fds {
            gauge(
                &mut enc,
                "process_open_fds",
                "Number of open file descriptors.",
                n,
            )?;
        }
        if let Some(n) = p.max_fds {
            gauge(
                &mut enc,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                n,
            )?;
        }
        gauge(
            &mut enc,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            p.start_time_seconds,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process_and_the_node() {
        let probe = SystemProbe::own();
        let p = probe.process().expect("own process");
        assert!(p.resident_memory_bytes > 0);
        assert!(p.virtual_memory_bytes >= p.resident_memory_bytes);
        assert!(p.open_fds.is_some_and(|n| n >= 3), "{p:?}");
        assert!(p.max_fds.is_some_and(|n| n >= p.open_fds.unwrap_or(0)));
        let now = jiff::Timestamp::now().as_second() as u64;
        assert!(p.start_time_seconds <= now && p.start_time_seconds + 86_400 * 365 > now);
        let n = probe.node();
        assert!(n.cpus >= 1);
        assert!(n.memory_total_bytes >= n.memory_available_bytes && n.memory_available_bytes > 0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_gone_process_has_no_figures() {
        // Pid 0 is never a process in /proc.
        assert_eq!(SystemProbe::of(0).process(), None);
    }
}
