//! The agent under test as a child process, so that its memory and CPU figures are its
//! own and not the simulator's or the load generator's.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

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

/// Memory and CPU of a process, from `/proc` (Linux only; `None` elsewhere).
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    /// Peak resident set size (VmHWM), KiB.
    pub peak_rss_kib: u64,
    /// Current resident set size (VmRSS), KiB.
    pub rss_kib: u64,
    /// utime + stime, seconds.
    pub cpu_s: f64,
}

impl ProcSample {
    pub fn read(pid: u32) -> Option<ProcSample> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let field = |name: &str| -> Option<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        };
        Some(ProcSample {
            peak_rss_kib: field("VmHWM:")?,
            rss_kib: field("VmRSS:")?,
            cpu_s: cpu_seconds(&stat)?,
        })
    }
}

/// utime + stime from a `/proc/<pid>/stat` line. The command name (field 2) may contain
/// spaces and parentheses, so fields are counted after its last `)`.
fn cpu_seconds(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

/// Clock ticks per second (`getconf CLK_TCK`); 100 on every common Linux.
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
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
    fn parses_stat_with_odd_command_names() {
        let stat = "1234 (bind let) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 1 1 1";
        let s = cpu_seconds(stat).expect("parsed");
        assert!((s - 300.0 / clock_ticks()).abs() < 1e-9);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_own_process() {
        let s = ProcSample::read(std::process::id()).expect("linux /proc");
        assert!(s.peak_rss_kib >= s.rss_kib / 2 && s.rss_kib > 0);
    }
}
