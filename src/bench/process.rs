//! The agent under test as a child process, so that its memory and CPU figures are its
//! own and not the simulator's or the load generator's.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::diag::SystemProbe;

use super::BenchError;

/// A `bindlet run` child; killed when dropped.
pub struct AgentProcess {
    child: Child,
    diag_addr: std::net::SocketAddr,
}

/// What to start.
pub struct AgentSpec<'a> {
    pub exe: &'a Path,
    pub kubeconfig: &'a Path,
    pub context: Option<&'a str>,
    pub node: &'a str,
    pub namespace: &'a str,
    pub workers: usize,
    pub log_level: &'a str,
    /// Where the agent's diagnostics server listens (the bench reads its `/metrics`).
    pub diag_addr: std::net::SocketAddr,
}

impl AgentProcess {
    /// Where the agent's diagnostics server listens.
    pub fn diag_addr(&self) -> std::net::SocketAddr {
        self.diag_addr
    }

    pub fn start(spec: &AgentSpec<'_>) -> Result<AgentProcess, BenchError> {
        let mut cmd = Command::new(spec.exe);
        cmd.arg("--log-level")
            .arg(spec.log_level)
            .arg("run")
            .arg("--node-name")
            .arg(spec.node)
            .arg("--kubeconfig")
            .arg(spec.kubeconfig)
            .arg("--namespace")
            .arg(spec.namespace)
            .arg("--lease-namespace")
            .arg(spec.namespace)
            .arg("--identity")
            .arg(format!("bindlet-bench-{}", spec.node))
            .arg("--workers")
            .arg(spec.workers.to_string())
            // KAI's PodBound pod condition is one more write per bind that the limit client
            // does not make: left out so both binders issue the same requests.
            .arg("--pod-bound-condition=false")
            // Its diagnostics server runs as in production, on a free loopback port so that
            // it cannot collide with anything else listening here.
            .arg("--diag-addr")
            .arg(spec.diag_addr.to_string());
        if let Some(ctx) = spec.context {
            cmd.arg("--context").arg(ctx);
        }
        // The child must not pick up settings meant for the bench from the environment.
        for var in [
            "BINDLET_NAMESPACE",
            "BINDLET_WORKERS",
            "BINDLET_LOG",
            "BINDLET_CONTEXT",
            "BINDLET_POD_BOUND_CONDITION",
        ] {
            cmd.env_remove(var);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| BenchError::Agent(format!("cannot start {}: {e}", spec.exe.display())))?;
        Ok(AgentProcess {
            child,
            diag_addr: spec.diag_addr,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Err` with the exit status when the child is no longer running.
    pub fn check_alive(&mut self) -> Result<(), BenchError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(BenchError::Agent(format!(
                "the agent process exited early ({status})"
            ))),
            Err(e) => Err(BenchError::Agent(format!("cannot poll the agent: {e}"))),
        }
    }

    pub fn sample(&self) -> Option<ProcSample> {
        ProcSample::read(self.pid())
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Memory and CPU of a process (Linux only; `None` elsewhere or once it is gone).
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    /// Peak resident set size (VmHWM), KiB.
    pub peak_rss_kib: u64,
    /// Current resident set size, KiB.
    pub rss_kib: u64,
    /// User plus system CPU time, seconds.
    pub cpu_s: f64,
}

impl ProcSample {
    pub fn read(pid: u32) -> Option<ProcSample> {
        // The same reader as the agent's own `process_*` metrics, so the bench's figures
        // and a scrape of /metrics agree.
        let p = SystemProbe::of(pid).process()?;
        let rss_kib = p.resident_memory_bytes / 1024;
        Some(ProcSample {
            // A sample can only come after the peak, so the peak is at least the current.
            peak_rss_kib: peak_rss_kib(pid)?.max(rss_kib),
            rss_kib,
            cpu_s: p.cpu_seconds,
        })
    }
}

/// The kernel's high-water mark of the process's resident set. sysinfo does not report it
/// and sampling would miss short peaks, so this one figure is still read from
/// `/proc/<pid>/status` (its `VmHWM:` line); everything else comes from sysinfo.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    vm_hwm_kib(&status)
}

fn vm_hwm_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// A kubeconfig file for the child, removed when dropped.
pub struct TempKubeconfig {
    pub path: PathBuf,
}

impl TempKubeconfig {
    pub fn write(contents: &str) -> Result<TempKubeconfig, BenchError> {
        let path = std::env::temp_dir().join(format!(
            "bindlet-bench-{}-{:08x}.kubeconfig",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::write(&path, contents)
            .map_err(|e| BenchError::Io(format!("writing {}: {e}", path.display())))?;
        Ok(TempKubeconfig { path })
    }
}

impl Drop for TempKubeconfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_high_water_mark_line() {
        let status = "Name:\tbindlet\nVmPeak:\t  900 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(vm_hwm_kib(status), Some(12345));
        assert_eq!(vm_hwm_kib("Name:\tx\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_own_process() {
        let s = ProcSample::read(std::process::id()).expect("linux /proc");
        assert!(s.peak_rss_kib >= s.rss_kib && s.rss_kib > 0);
        assert!(s.cpu_s >= 0.0);
    }
}
