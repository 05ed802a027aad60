//! GPU health over time, as a pure state machine: probes and NVML events go in with the
//! time they were seen, health and transitions come out.
//!
//! A GPU is unhealthy while a persistent fault is present (lost, pages pending
//! retirement, row remapping pending or failed) and for a quiet period after each
//! transient fault (a critical XID that is not ignored, a double-bit ECC event, a rise of
//! the volatile uncorrectable ECC count). Once the quiet period passes with no new fault
//! it is healthy again: device plugins that never recover leave good GPUs idle forever.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use super::{Gpu, Health};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    pub ignored_xids: BTreeSet<u64>,
    pub quiet_period: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            ignored_xids: super::DEFAULT_IGNORED_XIDS.into_iter().collect(),
            quiet_period: Duration::from_secs(300),
        }
    }
}

/// Something NVML reported asynchronously about one GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthEvent {
    Xid(u64),
    DoubleBitEcc,
}

/// A change of one GPU's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    pub uuid: String,
    pub index: u32,
    pub healthy: bool,
    pub reason: String,
    pub at: String,
}

impl Transition {
    /// One line for logs and Node Events.
    pub fn message(&self) -> String {
        let gpu = if self.uuid.is_empty() {
            format!("GPU {}", self.index)
        } else {
            format!("GPU {} ({})", self.index, self.uuid)
        };
        if self.healthy {
            format!("{gpu} is healthy again: {}", self.reason)
        } else {
            format!("{gpu} is unhealthy: {}", self.reason)
        }
    }
}

#[derive(Debug, Clone)]
struct Track {
    index: u32,
    healthy: bool,
    reason: String,
    since: Option<Timestamp>,
    last_fault: Option<(Timestamp, String)>,
    ecc_seen: Option<u64>,
    /// The last probe of this GPU, kept to report it as lost when it disappears.
    last: Gpu,
}

/// Health of every GPU seen so far, keyed by UUID (or `#index` before a UUID is known).
#[derive(Debug, Clone)]
pub struct HealthTracker {
    cfg: HealthConfig,
    gpus: BTreeMap<String, Track>,
}

fn key_of(g: &Gpu) -> String {
    if g.uuid.is_empty() {
        format!("#{}", g.index)
    } else {
        g.uuid.clone()
    }
}

/// What an XID means, for the few that matter most to operators.
pub fn xid_meaning(xid: u64) -> &'static str {
    match xid {
        48 => "double-bit ECC error",
        63 => "ECC page retirement or row remapping recorded",
        64 => "ECC page retirement or row remapping failed",
        74 => "NVLink error",
        79 => "GPU has fallen off the bus",
        92 => "high single-bit ECC error rate",
        94 => "contained ECC error",
        95 => "uncontained ECC error",
        119 | 120 => "GSP firmware error",
        13 | 31 | 43 | 45 | 68 | 109 => "usually an application fault",
        _ => "critical error",
    }
}

/// Faults that last as long as the probe shows them.
pub fn persistent_faults(g: &Gpu) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(lost) = &g.lost {
        out.push(format!("GPU lost: {lost}"));
    }
    if g.pages_pending_retirement == Some(true) {
        out.push("memory pages are pending retirement (reset or reboot needed)".into());
    }
    if g.remapped_rows_failed == Some(true) {
        out.push("row remapping failed".into());
    }
    if g.remapped_rows_pending == Some(true) {
        out.push("memory rows are pending remapping (reset needed)".into());
    }
    out
}

impl HealthTracker {
    pub fn new(cfg: HealthConfig) -> Self {
        HealthTracker {
            cfg,
            gpus: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &HealthConfig {
        &self.cfg
    }

    /// Applies a probe taken at `now`: fills in each GPU's `health`, appends GPUs seen
    /// before but missing now (as lost), and returns the transitions.
    pub fn observe(&mut self, gpus: &mut Vec<Gpu>, now: Timestamp) -> Vec<Transition> {
        let mut out = Vec::new();
        let present: BTreeSet<String> = gpus.iter().map(key_of).collect();
        // A device that was probed by index before its UUID could be read is the same GPU.
        for g in gpus.iter() {
            if !g.uuid.is_empty()
                && let Some(t) = self.gpus.remove(&format!("#{}", g.index))
            {
                self.gpus.insert(g.uuid.clone(), t);
            }
        }
        for (key, t) in &self.gpus {
            if !present.contains(key) && !key.starts_with('#') {
                let mut gone = t.last.clone();
                gone.lost = Some("no longer listed by the driver".into());
                gone.processes.clear();
                gpus.push(gone);
            }
        }
        for g in gpus.iter_mut() {
            let key = key_of(g);
            let cfg = &self.cfg;
            let t = self.gpus.entry(key).or_insert_with(|| Track {
                index: g.index,
                healthy: true,
                reason: String::new(),
                since: None,
                last_fault: None,
                ecc_seen: None,
                last: g.clone(),
            });
            t.index = g.index;
            if g.lost.is_none() {
                t.last = g.clone();
            }
            if let Some(ecc) = g.ecc_uncorrectable_volatile {
                let rose = match t.ecc_seen {
                    None => ecc > 0,
                    Some(seen) => ecc > seen,
                };
                if rose {
                    t.last_fault = Some((now, format!("{ecc} volatile uncorrectable ECC errors")));
                }
                t.ecc_seen = Some(ecc);
            }
            let persistent = persistent_faults(g);
            let (healthy, reason) = if !persistent.is_empty() {
                (false, persistent.join("; "))
            } else if let Some((at, why)) = &t.last_fault {
                let quiet = jiff::SignedDuration::try_from(cfg.quiet_period)
                    .unwrap_or(jiff::SignedDuration::MAX);
                let recovers = at.checked_add(quiet).unwrap_or(Timestamp::MAX);
                if now < recovers {
                    (
                        false,
                        format!("{why} at {at}; healthy again at {recovers} if no new fault"),
                    )
                } else {
                    (true, format!("no fault since {why} at {at}"))
                }
            } else {
                (true, String::new())
            };
            if let Some(tr) = Self::apply(t, g, healthy, reason, now) {
                out.push(tr);
            }
        }
        out
    }

    /// Applies an NVML event for the GPU with `uuid`; ignored XIDs change nothing.
    pub fn event(&mut self, uuid: &str, ev: HealthEvent, now: Timestamp) -> Option<Transition> {
        let why = match ev {
            HealthEvent::Xid(x) if self.cfg.ignored_xids.contains(&x) => return None,
            HealthEvent::Xid(x) => format!("XID {x} ({})", xid_meaning(x)),
            HealthEvent::DoubleBitEcc => "double-bit ECC error event".to_string(),
        };
        if uuid.is_empty() {
            return None;
        }
        // An event may beat the first probe of its GPU: start tracking it here.
        let t = self.gpus.entry(uuid.to_string()).or_insert_with(|| Track {
            index: 0,
            healthy: true,
            reason: String::new(),
            since: None,
            last_fault: None,
            ecc_seen: None,
            last: Gpu {
                uuid: uuid.to_string(),
                ..Default::default()
            },
        });
        t.last_fault = Some((now, why.clone()));
        if !t.healthy {
            return None;
        }
        let mut g = t.last.clone();
        Self::apply(t, &mut g, false, format!("{why} at {now}"), now)
    }

    fn apply(
        t: &mut Track,
        g: &mut Gpu,
        healthy: bool,
        reason: String,
        now: Timestamp,
    ) -> Option<Transition> {
        let changed = healthy != t.healthy;
        if changed {
            t.since = Some(now);
        }
        t.healthy = healthy;
        // A healthy GPU that never failed keeps an empty reason.
        if !healthy || t.since.is_some() {
            t.reason = reason;
        }
        g.health = Health {
            healthy,
            reason: t.reason.clone(),
            since: t.since.map(|s| s.to_string()),
        };
        changed.then(|| Transition {
            uuid: g.uuid.clone(),
            index: t.index,
            healthy,
            reason: t.reason.clone(),
            at: now.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::GpuMemory;

    fn gpu(i: u32) -> Gpu {
        Gpu {
            index: i,
            uuid: format!("GPU-{i}"),
            memory: Some(GpuMemory {
                total: 80,
                used: 0,
                reserved: 1,
            }),
            ecc_uncorrectable_volatile: Some(0),
            pages_pending_retirement: Some(false),
            remapped_rows_pending: Some(false),
            remapped_rows_failed: Some(false),
            ..Default::default()
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).expect("valid")
    }

    fn tracker(quiet: u64) -> HealthTracker {
        HealthTracker::new(HealthConfig {
            quiet_period: Duration::from_secs(quiet),
            ..Default::default()
        })
    }

    fn health(t: &mut HealthTracker, gpus: Vec<Gpu>, now: i64) -> (Vec<bool>, Vec<Transition>) {
        let mut gpus = gpus;
        let tr = t.observe(&mut gpus, at(now));
        (gpus.iter().map(|g| g.health.healthy).collect(), tr)
    }

    #[test]
    fn persistent_faults_table() {
        type Mutate = fn(&mut Gpu);
        let cases: Vec<(Mutate, &str)> = vec![
            (|g| g.lost = Some("GPU is lost".into()), "GPU lost"),
            (
                |g| g.pages_pending_retirement = Some(true),
                "pending retirement",
            ),
            (
                |g| g.remapped_rows_pending = Some(true),
                "pending remapping",
            ),
            (|g| g.remapped_rows_failed = Some(true), "remapping failed"),
        ];
        for (mutate, text) in cases {
            let mut t = tracker(60);
            let mut g = gpu(0);
            mutate(&mut g);
            let mut gpus = vec![g, gpu(1)];
            let tr = t.observe(&mut gpus, at(0));
            assert!(!gpus[0].health.healthy, "{text}");
            assert!(gpus[0].health.reason.contains(text), "{:?}", gpus[0].health);
            assert!(gpus[1].health.healthy);
            assert_eq!(tr.len(), 1, "one transition: {tr:?}");
            assert!(!tr[0].healthy);
            // Still unhealthy long after: persistent faults do not time out.
            let mut again = vec![gpus[0].clone()];
            again[0].health = Health::default();
            t.observe(&mut again, at(10_000));
            assert!(!again[0].health.healthy, "{text} persists");
        }
    }

    #[test]
    fn xid_makes_unhealthy_then_recovers_after_quiet_period() {
        let mut t = tracker(60);
        assert_eq!(health(&mut t, vec![gpu(0)], 0).0, [true]);
        let tr = t
            .event("GPU-0", HealthEvent::Xid(79), at(10))
            .expect("transition");
        assert!(!tr.healthy && tr.reason.contains("XID 79") && tr.reason.contains("fallen off"));
        assert_eq!(
            health(&mut t, vec![gpu(0)], 30).0,
            [false],
            "within quiet period"
        );
        // A new fault restarts the quiet period.
        assert_eq!(t.event("GPU-0", HealthEvent::DoubleBitEcc, at(50)), None);
        assert_eq!(health(&mut t, vec![gpu(0)], 100).0, [false]);
        let (h, tr) = health(&mut t, vec![gpu(0)], 111);
        assert_eq!(h, [true]);
        assert_eq!(tr.len(), 1);
        assert!(
            tr[0].healthy && tr[0].reason.contains("double-bit"),
            "{tr:?}"
        );
        assert!(tr[0].message().contains("healthy again"));
    }

    #[test]
    fn ignored_xids_change_nothing() {
        let mut t = tracker(60);
        health(&mut t, vec![gpu(0)], 0);
        for x in DEFAULT_IGNORED_XIDS {
            assert_eq!(
                t.event("GPU-0", HealthEvent::Xid(x), at(1)),
                None,
                "XID {x}"
            );
        }
        assert_eq!(health(&mut t, vec![gpu(0)], 2).0, [true]);
        let mut custom = HealthTracker::new(HealthConfig {
            ignored_xids: [79].into_iter().collect(),
            quiet_period: Duration::from_secs(60),
        });
        health(&mut custom, vec![gpu(0)], 0);
        assert_eq!(custom.event("GPU-0", HealthEvent::Xid(79), at(1)), None);
        assert!(custom.event("GPU-0", HealthEvent::Xid(13), at(1)).is_some());
    }

    use super::super::DEFAULT_IGNORED_XIDS;

    #[test]
    fn ecc_counter_rise_is_a_fault_a_stable_count_is_not() {
        let mut t = tracker(60);
        let mut g = gpu(0);
        g.ecc_uncorrectable_volatile = Some(2);
        let (h, tr) = health(&mut t, vec![g.clone()], 0);
        assert_eq!(h, [false], "non-zero at first sight");
        assert!(tr[0].reason.contains("2 volatile uncorrectable ECC"));
        assert_eq!(
            health(&mut t, vec![g.clone()], 61).0,
            [true],
            "no rise since"
        );
        g.ecc_uncorrectable_volatile = Some(3);
        assert_eq!(health(&mut t, vec![g], 62).0, [false]);
    }

    #[test]
    fn a_gpu_that_disappears_is_reported_lost() {
        let mut t = tracker(60);
        health(&mut t, vec![gpu(0), gpu(1)], 0);
        let mut now = vec![gpu(0)];
        let tr = t.observe(&mut now, at(5));
        assert_eq!(now.len(), 2);
        assert_eq!(now[1].uuid, "GPU-1");
        assert!(!now[1].health.healthy);
        assert!(now[1].health.reason.contains("no longer listed"));
        assert_eq!(tr.len(), 1);
        // It comes back: healthy again (a lost GPU is a persistent fault, not a timed one).
        let (h, tr) = health(&mut t, vec![gpu(0), gpu(1)], 6);
        assert_eq!(h, [true, true]);
        assert_eq!(tr.len(), 1);
    }

    #[test]
    fn since_is_set_on_transitions_only() {
        let mut t = tracker(60);
        let mut gpus = vec![gpu(0)];
        t.observe(&mut gpus, at(0));
        assert_eq!(gpus[0].health.since, None);
        t.event("GPU-0", HealthEvent::Xid(48), at(5));
        let mut gpus = vec![gpu(0)];
        t.observe(&mut gpus, at(6));
        assert_eq!(gpus[0].health.since, Some(at(5).to_string()));
    }
}
