//! The NVML backend, on `nvml-wrapper`. The library is loaded at run time from a
//! configurable path; a missing library, driver or permission is an `Unavailable`
//! snapshot carrying NVML's error, and the load is retried at the next probe or re-check.
//!
//! Two threads: `bindlet-nvml` owns the library handle and makes every probe (bind-time
//! probes and the periodic re-check of ECC, retired pages and remapped rows), so no NVML
//! call ever blocks the async runtime; `bindlet-nvml-events` only waits on NVML events
//! (critical XID, double-bit ECC) and forwards them to the first thread, which owns the
//! health tracker.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender, SyncSender};
use std::time::{Duration, Instant};

use nvml_wrapper::Nvml;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError};
use nvml_wrapper::enums::device::{SampleValue, UsedGpuMemory};
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::sys_exports::field_id::{
    NVML_FI_DEV_REMAPPED_FAILURE, NVML_FI_DEV_REMAPPED_PENDING,
};

use super::health::HealthEvent;
use super::{
    Gpu, GpuError, GpuInventory, GpuMemory, GpuProcess, GpuSnapshot, HealthConfig, HealthTracker,
    InventoryState, MigDevice, MigState, TransitionSink,
};

/// How long a caller waits for the NVML thread before reporting it as unresponsive.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one event wait blocks; bounds how fast the event thread notices shutdown.
const EVENT_WAIT_MS: u32 = 500;

enum Cmd {
    Probe(SyncSender<GpuSnapshot>),
    Event(String, HealthEvent),
    /// The event thread saw a lost GPU: probe now.
    Recheck,
    Stop,
}

pub struct NvmlInventory {
    library: PathBuf,
    tx: Sender<Cmd>,
    stopped: Arc<AtomicBool>,
}

impl Drop for NvmlInventory {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Relaxed);
        let _ = self.tx.send(Cmd::Stop);
    }
}

impl NvmlInventory {
    /// Starts the NVML thread. Loading the library happens there; its failure is a state.
    pub fn start(
        library: PathBuf,
        health: HealthConfig,
        recheck: Duration,
        transitions: Option<TransitionSink>,
    ) -> Result<Self, GpuError> {
        let (tx, rx) = mpsc::channel();
        let stopped = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            stopped: stopped.clone(),
            library: library.clone(),
            tracker: HealthTracker::new(health),
            nvml: None,
            load_error: String::new(),
            uuids: BTreeMap::new(),
            transitions,
            self_tx: tx.clone(),
            events_started: false,
        };
        std::thread::Builder::new()
            .name("bindlet-nvml".into())
            .spawn(move || worker.run(rx, recheck.max(Duration::from_millis(100))))
            .map_err(|e| GpuError::Thread(e.to_string()))?;
        Ok(NvmlInventory {
            library,
            tx,
            stopped,
        })
    }
}

impl GpuInventory for NvmlInventory {
    fn describe(&self) -> String {
        format!("nvml {}", self.library.display())
    }

    fn snapshot(&self) -> GpuSnapshot {
        let (reply, answer) = mpsc::sync_channel(1);
        if self.tx.send(Cmd::Probe(reply)).is_err() {
            return GpuSnapshot::unavailable(self.describe(), "the NVML thread has stopped");
        }
        match answer.recv_timeout(PROBE_TIMEOUT) {
            Ok(s) => s,
            Err(_) => GpuSnapshot::unavailable(
                self.describe(),
                format!("NVML did not answer within {PROBE_TIMEOUT:?}"),
            ),
        }
    }
}

struct Worker {
    library: PathBuf,
    tracker: HealthTracker,
    nvml: Option<Arc<Nvml>>,
    load_error: String,
    /// Last UUID seen per index, to name a device that stops answering.
    uuids: BTreeMap<u32, String>,
    transitions: Option<TransitionSink>,
    self_tx: Sender<Cmd>,
    events_started: bool,
    stopped: Arc<AtomicBool>,
}

impl Worker {
    fn run(mut self, rx: mpsc::Receiver<Cmd>, recheck: Duration) {
        let mut next_check = Instant::now();
        loop {
            let wait = next_check.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Cmd::Probe(reply)) => {
                    let s = self.probe();
                    let _ = reply.send(s);
                }
                Ok(Cmd::Event(uuid, ev)) => {
                    let now = jiff::Timestamp::now();
                    if let Some(t) = self.tracker.event(&uuid, ev, now) {
                        self.emit(vec![t]);
                    } else {
                        tracing::info!(gpu = %uuid, event = ?ev, "NVML event (no health change)");
                    }
                }
                Ok(Cmd::Recheck) => {
                    self.probe();
                }
                Ok(Cmd::Stop) => return,
                Err(RecvTimeoutError::Timeout) => {
                    self.probe();
                    next_check = Instant::now() + recheck;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn source(&self) -> String {
        format!("nvml {}", self.library.display())
    }

    fn ensure_loaded(&mut self) -> Option<Arc<Nvml>> {
        if let Some(n) = &self.nvml {
            return Some(n.clone());
        }
        match Nvml::builder().lib_path(self.library.as_os_str()).init() {
            Ok(n) => {
                let n = Arc::new(n);
                tracing::info!(library = %self.library.display(), "NVML loaded");
                self.nvml = Some(n.clone());
                self.start_events(n.clone());
                Some(n)
            }
            Err(e) => {
                let msg = describe_error(&e);
                if msg != self.load_error {
                    tracing::warn!(library = %self.library.display(), error = %msg, "NVML unavailable; GPU requests will be refused");
                    self.load_error = msg;
                }
                None
            }
        }
    }

    fn start_events(&mut self, nvml: Arc<Nvml>) {
        if self.events_started {
            return;
        }
        self.events_started = true;
        let tx = self.self_tx.clone();
        let stopped = self.stopped.clone();
        let spawned = std::thread::Builder::new()
            .name("bindlet-nvml-events".into())
            .spawn(move || watch_events(&nvml, &tx, &stopped));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start the NVML event thread; relying on periodic re-checks");
        }
    }

    fn probe(&mut self) -> GpuSnapshot {
        let source = self.source();
        let Some(nvml) = self.ensure_loaded() else {
            return GpuSnapshot::unavailable(source, self.load_error.clone());
        };
        let count = match nvml.device_count() {
            Ok(c) => c,
            Err(e) => return GpuSnapshot::unavailable(source, describe_error(&e)),
        };
        let mut gpus: Vec<Gpu> = (0..count).map(|i| probe_device(&nvml, i)).collect();
        for g in gpus.iter_mut() {
            if g.uuid.is_empty() {
                g.uuid = self.uuids.get(&g.index).cloned().unwrap_or_default();
            } else {
                self.uuids.insert(g.index, g.uuid.clone());
            }
        }
        let now = jiff::Timestamp::now();
        let transitions = self.tracker.observe(&mut gpus, now);
        self.emit(transitions);
        GpuSnapshot {
            source,
            state: InventoryState::Available,
            taken_at: now.to_string(),
            gpus,
        }
    }

    fn emit(&self, transitions: Vec<super::Transition>) {
        for t in transitions {
            if t.healthy {
                tracing::info!(gpu = %t.uuid, index = t.index, reason = %t.reason, "GPU healthy again");
            } else {
                tracing::warn!(gpu = %t.uuid, index = t.index, reason = %t.reason, "GPU unhealthy");
            }
            if let Some(tx) = &self.transitions {
                let _ = tx.send(t);
            }
        }
    }
}

/// NVML's own name for an error, with the text; a missing library says so plainly.
fn describe_error(e: &NvmlError) -> String {
    match e {
        NvmlError::LibloadingError(inner) => format!("cannot load the NVML library: {inner}"),
        other => format!("{other:?}: {other}"),
    }
}

/// Reads one device. Any `GpuLost` answer marks it lost; other failed reads leave the
/// field unknown (`None`), as NVML's `NotSupported` does on GPUs without the feature.
fn probe_device(nvml: &Nvml, index: u32) -> Gpu {
    let mut g = Gpu {
        index,
        ..Default::default()
    };
    let dev = match nvml.device_by_index(index) {
        Ok(d) => d,
        Err(e) => {
            g.lost = Some(describe_error(&e));
            return g;
        }
    };
    let mut r = Reader::default();
    g.uuid = r.ok(dev.uuid()).unwrap_or_default();
    g.name = r.ok(dev.name());
    g.minor_number = r.ok(dev.minor_number());
    g.pci_bus_id = r.ok(dev.pci_info()).map(|p| p.bus_id);
    g.memory = r.ok(dev.memory_info()).map(|m| GpuMemory {
        total: m.total,
        used: m.used,
        reserved: m.reserved,
    });
    g.ecc_uncorrectable_volatile =
        r.ok(dev.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile));
    g.pages_pending_retirement = r.ok(dev.are_pages_pending_retired());
    // The wrapper has no call for remapped rows: NVML's field values carry them.
    if let Some(values) = r.ok(dev.field_values_for(&[
        FieldId(NVML_FI_DEV_REMAPPED_PENDING),
        FieldId(NVML_FI_DEV_REMAPPED_FAILURE),
    ])) {
        let flag = |i: usize| -> Option<bool> {
            match values.get(i)?.as_ref().ok()?.value.as_ref().ok()? {
                SampleValue::U32(v) => Some(*v != 0),
                SampleValue::U64(v) => Some(*v != 0),
                SampleValue::I64(v) => Some(*v != 0),
                SampleValue::F64(v) => Some(*v != 0.0),
            }
        };
        g.remapped_rows_pending = flag(0);
        g.remapped_rows_failed = flag(1);
    }
    if let Some(mode) = r.ok(dev.mig_mode()) {
        g.mig.enabled = mode.current == 1;
    }
    if g.mig.enabled {
        let max = r.ok(dev.mig_device_count()).unwrap_or(0);
        let mut devices = Vec::new();
        for j in 0..max {
            if let Some(m) = r.ok(dev.mig_device_by_index(j)) {
                devices.push(MigDevice {
                    index: j,
                    uuid: r.ok(m.uuid()).unwrap_or_default(),
                    memory_total: r.ok(m.memory_info()).map(|mi| mi.total),
                });
            }
        }
        g.mig = MigState {
            enabled: true,
            devices,
        };
    }
    g.processes = r
        .ok(dev.running_compute_processes())
        .unwrap_or_default()
        .into_iter()
        .map(|p| GpuProcess {
            pid: p.pid,
            used_memory: match p.used_gpu_memory {
                UsedGpuMemory::Used(b) => Some(b),
                UsedGpuMemory::Unavailable => None,
            },
        })
        .collect();
    g.lost = r.lost;
    g
}

/// Collects the first `GpuLost` among a device's answers.
#[derive(Default)]
struct Reader {
    lost: Option<String>,
}

impl Reader {
    fn ok<T>(&mut self, r: Result<T, NvmlError>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(NvmlError::GpuLost) => {
                self.lost
                    .get_or_insert_with(|| describe_error(&NvmlError::GpuLost));
                None
            }
            Err(_) => None,
        }
    }
}

/// The health monitor: registers every device for critical XID and double-bit ECC
/// events and forwards what arrives. Ends when the inventory is dropped.
fn watch_events(nvml: &Nvml, tx: &Sender<Cmd>, stopped: &AtomicBool) {
    let wanted = EventTypes::CRITICAL_XID_ERROR | EventTypes::DOUBLE_BIT_ECC_ERROR;
    let mut set = match nvml.create_event_set() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %describe_error(&e), "NVML events unavailable; relying on periodic re-checks");
            return;
        }
    };
    let count = nvml.device_count().unwrap_or(0);
    let mut registered = 0;
    for i in 0..count {
        let Ok(dev) = nvml.device_by_index(i) else {
            continue;
        };
        let types = match dev.supported_event_types() {
            Ok(t) => t & wanted,
            Err(_) => continue,
        };
        if types.is_empty() {
            continue;
        }
        match dev.register_events(types, set) {
            Ok(s) => {
                set = s;
                registered += 1;
            }
            Err(e) => {
                // NVML frees the set on failure: events stop, re-checks go on.
                tracing::warn!(index = i, error = %describe_error(&e.error), "registering for NVML events failed; relying on periodic re-checks");
                return;
            }
        }
    }
    if registered == 0 {
        tracing::info!("no GPU supports XID/ECC events; relying on periodic re-checks");
        return;
    }
    loop {
        let cmd = match set.wait(EVENT_WAIT_MS) {
            Ok(ev) => {
                let uuid = ev.device.uuid().unwrap_or_default();
                let he = if ev.event_type.contains(EventTypes::CRITICAL_XID_ERROR) {
                    match ev.event_data {
                        Some(XidError::Value(x)) => HealthEvent::Xid(x),
                        // An XID NVML could not name is still critical.
                        _ => HealthEvent::Xid(999),
                    }
                } else {
                    HealthEvent::DoubleBitEcc
                };
                if uuid.is_empty() {
                    Some(Cmd::Recheck)
                } else {
                    Some(Cmd::Event(uuid, he))
                }
            }
            Err(NvmlError::Timeout) => None,
            Err(NvmlError::GpuLost) => Some(Cmd::Recheck),
            Err(e) => {
                tracing::debug!(error = %describe_error(&e), "NVML event wait failed");
                std::thread::sleep(Duration::from_millis(u64::from(EVENT_WAIT_MS)));
                None
            }
        };
        if let Some(c) = cmd
            && tx.send(c).is_err()
        {
            return;
        }
        if stopped.load(Ordering::Relaxed) {
            return;
        }
    }
}
