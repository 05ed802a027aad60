//! A fake `libnvidia-ml.so` for bindlet's tests: exports the NVML functions bindlet's
//! NVML backend calls and answers from a text file, re-read on every call so a test can
//! change devices and faults while the library is loaded.
//!
//! The file is `$FAKE_NVML_FILE`, else `devices.txt` beside the loaded library (so tests
//! running in parallel each copy the library into their own directory). One item per
//! line; `#` starts a comment:
//!
//! ```text
//! init driver_not_loaded          # nvmlInit_v2 fails with NVML_ERROR_DRIVER_NOT_LOADED
//! driver 550.54.15
//! gpu uuid=GPU-a name=H100 bus=00000000:18:00.0 minor=0 total=85899345920 used=0 reserved=536870912
//!     ecc=0 retire=0 remap_pending=0 remap_failed=0 state=ok procs=4242:1048576 xid=79@3 dbe=5
//! ```
//!
//! (one `gpu` line per device; the second line above is a continuation for reading only.)
//! `state=lost`: getting the handle fails with GPU_IS_LOST; `state=offbus`: the handle is
//! returned but every query fails with GPU_IS_LOST (a GPU fallen off the bus). `xid=79@3`:
//! the 3rd event wait reports XID 79 on this device; `dbe=5`: the 5th reports a
//! double-bit ECC error.

#![allow(non_snake_case, clippy::missing_safety_doc)]

use std::ffi::{CStr, c_char, c_int, c_uint, c_ulonglong, c_void};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

type Ret = c_uint;
const SUCCESS: Ret = 0;
const INVALID_ARGUMENT: Ret = 2;
const NOT_SUPPORTED: Ret = 3;
const NO_PERMISSION: Ret = 4;
const NOT_FOUND: Ret = 6;
const INSUFFICIENT_SIZE: Ret = 7;
const DRIVER_NOT_LOADED: Ret = 9;
const TIMEOUT: Ret = 10;
const GPU_IS_LOST: Ret = 15;
const UNKNOWN: Ret = 999;

const EVENT_DBE: u64 = 2;
const EVENT_XID: u64 = 8;

const FI_REMAPPED_PENDING: c_uint = 144;
const FI_REMAPPED_FAILURE: c_uint = 145;

/// Device handles are small fake pointers: never dereferenced by the caller.
const HANDLE_BASE: usize = 0x1000;
const EVENT_SET: usize = 0x2000;

static WAITS: AtomicU64 = AtomicU64::new(0);

#[derive(Default, Clone)]
struct Dev {
    uuid: String,
    name: String,
    bus: String,
    minor: u32,
    total: u64,
    used: u64,
    reserved: u64,
    ecc: u64,
    retire: bool,
    remap_pending: bool,
    remap_failed: bool,
    state: String,
    procs: Vec<(u32, u64)>,
    xid: Option<(u64, u64)>,
    dbe: Option<u64>,
}

#[derive(Default)]
struct Config {
    init: String,
    driver: String,
    gpus: Vec<Dev>,
}

#[repr(C)]
struct DlInfo {
    fname: *const c_char,
    fbase: *mut c_void,
    sname: *const c_char,
    saddr: *mut c_void,
}

unsafe extern "C" {
    fn dladdr(addr: *const c_void, info: *mut DlInfo) -> c_int;
}

fn config_path() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("FAKE_NVML_FILE") {
        return Some(p.into());
    }
    let mut info = DlInfo {
        fname: std::ptr::null(),
        fbase: std::ptr::null_mut(),
        sname: std::ptr::null(),
        saddr: std::ptr::null_mut(),
    };
    let anchor = nvmlInit_v2 as *const c_void;
    // SAFETY: dladdr only writes into `info`; fname stays valid while the library is loaded.
    let ok = unsafe { dladdr(anchor, &mut info) };
    if ok == 0 || info.fname.is_null() {
        return None;
    }
    let me = unsafe { CStr::from_ptr(info.fname) }
        .to_string_lossy()
        .into_owned();
    Some(std::path::Path::new(&me).parent()?.join("devices.txt"))
}

fn load() -> Config {
    let mut c = Config {
        init: "ok".into(),
        driver: "550.54.15".into(),
        gpus: Vec::new(),
    };
    let Some(text) = config_path().and_then(|p| std::fs::read_to_string(p).ok()) else {
        c.init = "driver_not_loaded".into();
        return c;
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        match words.next() {
            Some("init") => c.init = words.next().unwrap_or("ok").into(),
            Some("driver") => c.driver = words.next().unwrap_or("").into(),
            Some("gpu") => {
                let mut d = Dev {
                    state: "ok".into(),
                    total: 80 << 30,
                    ..Default::default()
                };
                for kv in words {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    let n = || v.parse::<u64>().unwrap_or(0);
                    match k {
                        "uuid" => d.uuid = v.into(),
                        "name" => d.name = v.replace('_', " "),
                        "bus" => d.bus = v.into(),
                        "minor" => d.minor = n() as u32,
                        "total" => d.total = n(),
                        "used" => d.used = n(),
                        "reserved" => d.reserved = n(),
                        "ecc" => d.ecc = n(),
                        "retire" => d.retire = v == "1",
                        "remap_pending" => d.remap_pending = v == "1",
                        "remap_failed" => d.remap_failed = v == "1",
                        "state" => d.state = v.into(),
                        "procs" => {
                            d.procs = v
                                .split(',')
                                .filter_map(|p| {
                                    let (pid, mem) = p.split_once(':')?;
                                    Some((pid.parse().ok()?, mem.parse().ok()?))
                                })
                                .collect()
                        }
                        "xid" => {
                            d.xid = v
                                .split_once('@')
                                .and_then(|(x, at)| Some((x.parse().ok()?, at.parse().ok()?)))
                        }
                        "dbe" => d.dbe = v.parse().ok(),
                        _ => {}
                    }
                }
                c.gpus.push(d);
            }
            _ => {}
        }
    }
    c
}

/// The device behind a handle, or the NVML error a query on it returns.
fn dev(handle: *mut c_void) -> Result<(usize, Dev), Ret> {
    let i = (handle as usize).wrapping_sub(HANDLE_BASE);
    let c = load();
    let d = c.gpus.get(i).cloned().ok_or(INVALID_ARGUMENT)?;
    if d.state != "ok" {
        return Err(GPU_IS_LOST);
    }
    Ok((i, d))
}

macro_rules! try_dev {
    ($h:expr) => {
        match dev($h) {
            Ok(x) => x,
            Err(e) => return e,
        }
    };
}

unsafe fn write_str(s: &str, buf: *mut c_char, len: c_uint) -> Ret {
    if buf.is_null() {
        return INVALID_ARGUMENT;
    }
    let bytes = s.as_bytes();
    if bytes.len() + 1 > len as usize {
        return INSUFFICIENT_SIZE;
    }
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf as *mut u8, bytes.len());
        *buf.add(bytes.len()) = 0;
    }
    SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlInit_v2() -> Ret {
    match load().init.as_str() {
        "ok" => SUCCESS,
        "no_permission" => NO_PERMISSION,
        "unknown" => UNKNOWN,
        _ => DRIVER_NOT_LOADED,
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlShutdown() -> Ret {
    SUCCESS
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(buf: *mut c_char, len: c_uint) -> Ret {
    unsafe { write_str(&load().driver, buf, len) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> Ret {
    unsafe { *count = load().gpus.len() as c_uint };
    SUCCESS
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    out: *mut *mut c_void,
) -> Ret {
    let c = load();
    let Some(d) = c.gpus.get(index as usize) else {
        return INVALID_ARGUMENT;
    };
    if d.state == "lost" {
        return GPU_IS_LOST;
    }
    unsafe { *out = (HANDLE_BASE + index as usize) as *mut c_void };
    SUCCESS
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUUID(h: *mut c_void, buf: *mut c_char, len: c_uint) -> Ret {
    let (_, d) = try_dev!(h);
    unsafe { write_str(&d.uuid, buf, len) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetName(h: *mut c_void, buf: *mut c_char, len: c_uint) -> Ret {
    let (_, d) = try_dev!(h);
    unsafe { write_str(&d.name, buf, len) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMinorNumber(h: *mut c_void, out: *mut c_uint) -> Ret {
    let (_, d) = try_dev!(h);
    unsafe { *out = d.minor };
    SUCCESS
}

#[repr(C)]
pub struct PciInfo {
    bus_id_legacy: [c_char; 16],
    domain: c_uint,
    bus: c_uint,
    device: c_uint,
    pci_device_id: c_uint,
    pci_sub_system_id: c_uint,
    bus_id: [c_char; 32],
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v3(h: *mut c_void, out: *mut PciInfo) -> Ret {
    let (_, d) = try_dev!(h);
    unsafe {
        std::ptr::write_bytes(out, 0, 1);
        write_str(&d.bus, (*out).bus_id.as_mut_ptr(), 32)
    }
}

#[repr(C)]
pub struct MemoryV2 {
    version: c_uint,
    total: c_ulonglong,
    reserved: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(h: *mut c_void, out: *mut MemoryV2) -> Ret {
    let (_, d) = try_dev!(h);
    unsafe {
        (*out).total = d.total;
        (*out).reserved = d.reserved;
        (*out).used = d.used;
        (*out).free = d.total.saturating_sub(d.used).saturating_sub(d.reserved);
    }
    SUCCESS
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTotalEccErrors(
    h: *mut c_void,
    error_type: c_uint,
    counter: c_uint,
    out: *mut c_ulonglong,
) -> Ret {
    let (_, d) = try_dev!(h);
    // Uncorrected (1) volatile (0) is what the fake tracks; the rest are zero.
    unsafe {
        *out = if error_type == 1 && counter == 0 {
            d.ecc
        } else {
            0
        }
    };
    SUCCESS
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetRetiredPagesPendingStatus(
    h: *mut c_void,
    out: *mut c_uint,
) -> Ret {
    let (_, d) = try_dev!(h);
    unsafe { *out = d.retire as c_uint };
    SUCCESS
}

#[repr(C)]
pub struct FieldValue {
    field_id: c_uint,
    scope_id: c_uint,
    timestamp: i64,
    latency_usec: i64,
    value_type: c_uint,
    nvml_return: c_uint,
    value: u64,
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetFieldValues(
    h: *mut c_void,
    count: c_int,
    values: *mut FieldValue,
) -> Ret {
    let (_, d) = try_dev!(h);
    for i in 0..count.max(0) as usize {
        let fv = unsafe { &mut *values.add(i) };
        let v = match fv.field_id {
            FI_REMAPPED_PENDING => Some(d.remap_pending),
            FI_REMAPPED_FAILURE => Some(d.remap_failed),
            _ => None,
        };
        match v {
            Some(b) => {
                fv.value_type = 1; // unsigned int
                fv.nvml_return = SUCCESS;
                fv.value = b as u64;
            }
            None => fv.nvml_return = NOT_SUPPORTED,
        }
    }
    SUCCESS
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMigMode(
    h: *mut c_void,
    current: *mut c_uint,
    pending: *mut c_uint,
) -> Ret {
    let _ = try_dev!(h);
    unsafe {
        *current = 0;
        *pending = 0;
    }
    SUCCESS
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMaxMigDeviceCount(h: *mut c_void, count: *mut c_uint) -> Ret {
    let _ = try_dev!(h);
    unsafe { *count = 0 };
    SUCCESS
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMigDeviceHandleByIndex(
    _h: *mut c_void,
    _index: c_uint,
    _out: *mut *mut c_void,
) -> Ret {
    NOT_FOUND
}

#[repr(C)]
pub struct ProcessInfo {
    pid: c_uint,
    used_gpu_memory: c_ulonglong,
    gpu_instance_id: c_uint,
    compute_instance_id: c_uint,
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    h: *mut c_void,
    count: *mut c_uint,
    infos: *mut ProcessInfo,
) -> Ret {
    let (_, d) = try_dev!(h);
    let have = unsafe { *count } as usize;
    unsafe { *count = d.procs.len() as c_uint };
    if d.procs.is_empty() {
        return SUCCESS;
    }
    if infos.is_null() || have < d.procs.len() {
        return INSUFFICIENT_SIZE;
    }
    for (i, (pid, mem)) in d.procs.iter().enumerate() {
        unsafe {
            *infos.add(i) = ProcessInfo {
                pid: *pid,
                used_gpu_memory: *mem,
                gpu_instance_id: u32::MAX,
                compute_instance_id: u32::MAX,
            }
        };
    }
    SUCCESS
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetCreate(out: *mut *mut c_void) -> Ret {
    unsafe { *out = EVENT_SET as *mut c_void };
    SUCCESS
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetFree(_set: *mut c_void) -> Ret {
    SUCCESS
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetSupportedEventTypes(
    h: *mut c_void,
    out: *mut c_ulonglong,
) -> Ret {
    let _ = try_dev!(h);
    unsafe { *out = EVENT_DBE | EVENT_XID };
    SUCCESS
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceRegisterEvents(
    h: *mut c_void,
    _types: c_ulonglong,
    _set: *mut c_void,
) -> Ret {
    let _ = try_dev!(h);
    SUCCESS
}

#[repr(C)]
pub struct EventData {
    device: *mut c_void,
    event_type: c_ulonglong,
    event_data: c_ulonglong,
    gpu_instance_id: c_uint,
    compute_instance_id: c_uint,
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetWait_v2(
    _set: *mut c_void,
    out: *mut EventData,
    timeout_ms: c_uint,
) -> Ret {
    let n = WAITS.fetch_add(1, Ordering::SeqCst) + 1;
    let c = load();
    for (i, d) in c.gpus.iter().enumerate() {
        let event = match (d.xid, d.dbe) {
            (Some((x, at)), _) if at == n => Some((EVENT_XID, x)),
            (_, Some(at)) if at == n => Some((EVENT_DBE, 0)),
            _ => None,
        };
        if let Some((kind, data)) = event {
            unsafe {
                *out = EventData {
                    device: (HANDLE_BASE + i) as *mut c_void,
                    event_type: kind,
                    event_data: data,
                    gpu_instance_id: u32::MAX,
                    compute_instance_id: u32::MAX,
                };
            }
            return SUCCESS;
        }
    }
    // Nothing this time: wait a little, as the real call blocks, without slowing tests.
    std::thread::sleep(Duration::from_millis(u64::from(timeout_ms.min(50))));
    TIMEOUT
}
