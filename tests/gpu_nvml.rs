//! The real NVML backend (nvml-wrapper, loaded at run time) against the fake
//! `libnvidia-ml.so` in tests/fake-nvml, which this test builds once. Every fault kind the
//! fake can play, and recovery.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use bindlet::gpu::nvml::NvmlInventory;
use bindlet::gpu::{GpuInventory, GpuSnapshot, HealthConfig, InventoryState, Transition};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

/// Builds the fake library (offline: it has no dependencies) into the target directory.
fn fake_library() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"))
            .join("fake-nvml");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--offline", "--quiet", "--manifest-path"])
            .arg(root.join("tests/fake-nvml/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .status()
            .expect("run cargo to build the fake NVML library");
        assert!(status.success(), "building tests/fake-nvml failed");
        target.join("debug/libnvidia_ml.so")
    })
}

struct Node {
    dir: tempfile::TempDir,
    inv: NvmlInventory,
    transitions: UnboundedReceiver<Transition>,
}

impl Node {
    /// A private copy of the library (its own counters) with `devices` beside it.
    fn new(devices: &str, quiet: Duration) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let lib = dir.path().join("libnvidia-ml.so.1");
        std::fs::copy(fake_library(), &lib).expect("copy fake library");
        std::fs::write(dir.path().join("devices.txt"), devices).expect("write devices");
        let (tx, rx) = unbounded_channel();
        let health = HealthConfig {
            quiet_period: quiet,
            ..Default::default()
        };
        let inv = NvmlInventory::start(lib, health, Duration::from_secs(3600), Some(tx))
            .expect("start NVML backend");
        Node {
            dir,
            inv,
            transitions: rx,
        }
    }

    /// Replaces the devices file in one step: the fake library re-reads it on every call,
    /// also from the NVML event thread, and a write in place could be read half done (an
    /// empty file reads as every GPU lost).
    fn set(&self, devices: &str) {
        let next = self.dir.path().join("devices.txt.next");
        std::fs::write(&next, devices).expect("write devices");
        std::fs::rename(&next, self.dir.path().join("devices.txt")).expect("replace devices");
    }

    fn snap(&self) -> GpuSnapshot {
        self.inv.snapshot()
    }

    /// Probes until `f` holds (events arrive on their own thread), at most 5 s.
    fn until(&self, what: &str, f: impl Fn(&GpuSnapshot) -> bool) -> GpuSnapshot {
        let start = std::time::Instant::now();
        loop {
            let s = self.snap();
            if f(&s) {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "timed out waiting until {what}: {s:#?}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn drain(&mut self) -> Vec<Transition> {
        let mut v = Vec::new();
        while let Ok(t) = self.transitions.try_recv() {
            v.push(t);
        }
        v
    }
}

const QUIET: Duration = Duration::from_secs(3600);

fn gpu(uuid: &str, extra: &str) -> String {
    format!(
        "gpu uuid={uuid} name=NVIDIA_H100_80GB_HBM3 bus=00000000:18:00.0 minor=3 total=85899345920 used=1073741824 reserved=536870912 {extra}\n"
    )
}

fn healthy(s: &GpuSnapshot) -> Vec<bool> {
    s.gpus.iter().map(|g| g.health.healthy).collect()
}

#[test]
fn healthy_devices_are_read_through_the_real_backend() {
    let n = Node::new(
        &(gpu("GPU-a", "procs=4242:1048576,77:2048") + &gpu("GPU-b", "")),
        QUIET,
    );
    let s = n.snap();
    assert_eq!(s.state, InventoryState::Available, "{s:?}");
    assert_eq!(s.gpus.len(), 2);
    let a = &s.gpus[0];
    assert_eq!(a.uuid, "GPU-a");
    assert_eq!(a.name.as_deref(), Some("NVIDIA H100 80GB HBM3"));
    assert_eq!(a.pci_bus_id.as_deref(), Some("00000000:18:00.0"));
    assert_eq!(a.minor_number, Some(3));
    let m = a.memory.expect("memory");
    assert_eq!(
        (m.total, m.used, m.reserved),
        (85899345920, 1073741824, 536870912)
    );
    assert_eq!(a.ecc_uncorrectable_volatile, Some(0));
    assert_eq!(a.pages_pending_retirement, Some(false));
    assert_eq!(
        (a.remapped_rows_pending, a.remapped_rows_failed),
        (Some(false), Some(false))
    );
    assert!(!a.mig.enabled);
    let pids: Vec<(u32, Option<u64>)> =
        a.processes.iter().map(|p| (p.pid, p.used_memory)).collect();
    assert_eq!(pids, [(4242, Some(1048576)), (77, Some(2048))]);
    assert_eq!(healthy(&s), [true, true]);
    assert!(s.source.contains("libnvidia-ml.so.1"));
}

#[test]
fn missing_library_or_driver_is_a_state_not_a_crash() {
    let (tx, _rx) = unbounded_channel();
    let inv = NvmlInventory::start(
        "/nonexistent/libnvidia-ml.so.1".into(),
        HealthConfig::default(),
        QUIET,
        Some(tx),
    )
    .expect("start");
    match inv.snapshot().state {
        InventoryState::Unavailable { error } => {
            assert!(error.contains("cannot load the NVML library"), "{error}")
        }
        other => panic!("{other:?}"),
    }
    let n = Node::new("init driver_not_loaded\n", QUIET);
    match n.snap().state {
        InventoryState::Unavailable { error } => {
            assert!(error.contains("DriverNotLoaded"), "{error}")
        }
        other => panic!("{other:?}"),
    }
    // The driver comes up later: the next probe loads NVML.
    n.set(&gpu("GPU-a", ""));
    let s = n.snap();
    assert_eq!(s.state, InventoryState::Available);
    assert_eq!(healthy(&s), [true]);
}

#[test]
fn every_persistent_fault_makes_the_gpu_unhealthy() {
    let cases = [
        ("state=lost", "GPU lost"),
        ("state=offbus", "GPU lost: GpuLost"),
        ("ecc=2", "2 volatile uncorrectable ECC errors"),
        ("retire=1", "pending retirement"),
        ("remap_pending=1", "pending remapping"),
        ("remap_failed=1", "row remapping failed"),
    ];
    for (fault, reason) in cases {
        let mut n = Node::new(&(gpu("GPU-a", "") + &gpu("GPU-b", "")), QUIET);
        assert_eq!(healthy(&n.snap()), [true, true], "{fault}");
        n.set(&(gpu("GPU-a", "") + &gpu("GPU-b", fault)));
        let s = n.snap();
        assert_eq!(healthy(&s), [true, false], "{fault}: {s:#?}");
        let b = &s.gpus[1];
        assert_eq!(
            b.uuid, "GPU-b",
            "{fault}: a lost GPU keeps the UUID it was seen with"
        );
        assert!(b.health.reason.contains(reason), "{fault}: {:?}", b.health);
        assert!(b.health.since.is_some());
        let tr = n.drain();
        assert_eq!(tr.len(), 1, "{fault}: {tr:?}");
        assert!(!tr[0].healthy && tr[0].uuid == "GPU-b");
    }
}

#[test]
fn critical_xid_and_double_bit_ecc_events_make_unhealthy_ignored_xids_do_not() {
    let mut n = Node::new(
        &(gpu("GPU-a", "xid=13@1") + &gpu("GPU-b", "xid=79@3") + &gpu("GPU-c", "dbe=4")),
        QUIET,
    );
    let s = n.until("XID 79 and DBE seen", |s| {
        healthy(s) == [true, false, false]
    });
    assert!(
        s.gpus[1].health.reason.contains("XID 79"),
        "{:?}",
        s.gpus[1].health
    );
    assert!(
        s.gpus[2].health.reason.contains("double-bit ECC"),
        "{:?}",
        s.gpus[2].health
    );
    let tr = n.drain();
    let down: Vec<&str> = tr
        .iter()
        .filter(|t| !t.healthy)
        .map(|t| t.uuid.as_str())
        .collect();
    assert!(
        down.contains(&"GPU-b") && down.contains(&"GPU-c") && !down.contains(&"GPU-a"),
        "{tr:?}"
    );
}

#[test]
fn recovers_after_the_quiet_period_and_when_faults_clear() {
    let mut n = Node::new(
        &(gpu("GPU-a", "xid=48@2") + &gpu("GPU-b", "remap_pending=1")),
        Duration::from_millis(400),
    );
    n.until("XID 48 seen", |s| !s.gpus[0].health.healthy);
    assert!(!healthy(&n.snap())[1]);
    // No new fault: GPU-a is healthy again after the quiet period; GPU-b's fault persists.
    let s = n.until("GPU-a recovered", |s| s.gpus[0].health.healthy);
    assert!(!s.gpus[1].health.healthy);
    assert!(
        s.gpus[0].health.reason.contains("no fault since"),
        "{:?}",
        s.gpus[0].health
    );
    // The remap is done (after a reset): healthy at the next probe.
    n.set(&(gpu("GPU-a", "") + &gpu("GPU-b", "")));
    assert_eq!(healthy(&n.snap()), [true, true]);
    let tr: Vec<(String, bool)> = n.drain().into_iter().map(|t| (t.uuid, t.healthy)).collect();
    assert_eq!(
        tr,
        [
            ("GPU-b".to_string(), false),
            ("GPU-a".to_string(), false),
            ("GPU-a".to_string(), true),
            ("GPU-b".to_string(), true)
        ],
        "every transition is reported, in order"
    );
}
