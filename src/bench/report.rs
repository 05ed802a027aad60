//! The bench's figures: computed from the measured values only, printed as a table and
//! serialised as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::sim::RequestCounts;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: String,
    pub requests: usize,
    pub concurrency: usize,
    /// ResourceClaims per pod (`--dra-claims`); 0 for the plain bind.
    pub dra_claims: usize,
    pub machine: Machine,
    pub limit: PhaseReport,
    pub agent: PhaseReport,
    /// agent throughput / limit throughput.
    pub throughput_ratio: Option<f64>,
    /// agent p99 − limit p99, ms.
    pub p99_delta_ms: Option<f64>,
    pub agent_process: Option<ProcessReport>,
    /// Why the agent's requests that did not bind failed, most frequent first.
    pub agent_failures: Vec<ReasonCount>,
    /// The API server's `gitVersion` (`/version`).
    pub server_version: Option<String>,
    pub targets: Vec<TargetCheck>,
}

/// A failure reason and how many requests ended with it.
#[derive(Debug, Clone, Serialize)]
pub struct ReasonCount {
    pub reason: String,
    pub count: usize,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Machine {
    pub cpus: usize,
    /// The CPU's brand string (e.g. "AMD EPYC 7B13"); figures do not carry over between
    /// CPU models, so every report names it. Empty when unknown.
    pub cpu_model: String,
    pub os: String,
    pub arch: String,
}

impl Machine {
    pub fn this() -> Machine {
        let cpus = sysinfo::System::new_with_specifics(
            sysinfo::RefreshKind::nothing().with_cpu(sysinfo::CpuRefreshKind::nothing()),
        );
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: cpus
                .cpus()
                .first()
                .map(|c| c.brand().trim().to_string())
                .unwrap_or_default(),
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    /// Requests the phase created.
    pub created: usize,
    /// Pods seen bound.
    pub binds: usize,
    /// Creates that failed, binds that did not happen, requests not Succeeded at the end.
    pub errors: usize,
    /// BindRequest creates that failed (part of `errors`).
    pub create_errors: usize,
    pub seconds: f64,
    pub binds_per_s: f64,
    pub latency_ms: Latency,
    /// API requests per bind; `None` where the server cannot count them.
    pub api: Option<ApiCost>,
}

#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    pub fn of(mut samples: Vec<Duration>) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        // Nearest-rank percentile.
        let pct = |p: f64| {
            let i = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
            ms(samples[i])
        };
        let mean = samples.iter().map(|d| ms(*d)).sum::<f64>() / samples.len() as f64;
        Latency {
            p50: pct(0.50),
            p90: pct(0.90),
            p99: pct(0.99),
            max: pct(1.0),
            mean,
        }
    }
}

/// The requests a phase's binder made, per bind.
#[derive(Debug, Clone, Serialize)]
pub struct ApiCost {
    /// "verb resource" → requests per bind, for the requests each bind needs.
    pub per_bind: BTreeMap<String, f64>,
    /// Sum of `per_bind`.
    pub total_per_bind: f64,
    /// `create events` per bind (written off the hot path, counted apart).
    pub events_per_bind: f64,
    /// Requests not tied to a bind (Lease renewals, watches, bookmarks), absolute.
    pub other: BTreeMap<String, u64>,
}

impl ApiCost {
    /// From the server's request counts over a phase, less what the load generator
    /// itself issued (`own`).
    pub fn from_counts(delta: &RequestCounts, own: &RequestCounts, binds: usize) -> ApiCost {
        let per = |n: u64| {
            if binds == 0 {
                0.0
            } else {
                n as f64 / binds as f64
            }
        };
        let mut per_bind = BTreeMap::new();
        let mut other = BTreeMap::new();
        let mut events = 0;
        for ((verb, resource), n) in &delta.0 {
            let n = n.saturating_sub(own.get(verb, resource));
            if n == 0 {
                continue;
            }
            let key = format!("{verb} {resource}");
            match (verb.as_str(), resource.as_str()) {
                ("create", "events") => events += n,
                ("get" | "create" | "update" | "patch", r)
                    if r.starts_with("pods")
                        || r.starts_with("bindrequests")
                        || r.starts_with("resourceclaims") =>
                {
                    per_bind.insert(key, per(n));
                }
                // Slices are read for DRA binds (the agent's slice watch is `watch`, and
                // its initial list precedes the measured window): a LIST here is a bind's.
                ("list", "resourceslices") => {
                    per_bind.insert(key, per(n));
                }
                _ => {
                    other.insert(key, n);
                }
            }
        }
        ApiCost {
            total_per_bind: per_bind.values().sum(),
            per_bind,
            events_per_bind: per(events),
            other,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessReport {
    pub pid: u32,
    pub peak_rss_mib: f64,
    pub rss_end_mib: f64,
    /// CPU seconds from the first create to the last status write of the agent phase.
    pub cpu_s_run: f64,
    pub cpu_ms_per_bind: f64,
    /// CPU seconds over the whole life of the agent, start-up and idle included.
    pub cpu_s_total: f64,
    pub idle_seconds: f64,
    /// CPU time per wall time while idle after the run, percent of one core.
    pub idle_cpu_percent: f64,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TargetCheck {
    pub name: String,
    pub target: String,
    pub value: String,
    /// `None` when it could not be measured here.
    pub met: Option<bool>,
}

fn check(name: &str, target: &str, value: String, met: Option<bool>) -> TargetCheck {
    TargetCheck {
        name: name.into(),
        target: target.into(),
        value,
        met,
    }
}

impl Report {
    /// Judges the targets from the measured figures.
    pub fn judge(&mut self) {
        let mut t = Vec::new();
        t.push(match self.throughput_ratio {
            Some(r) => check(
                "throughput",
                ">= 90% of the limit",
                format!("{:.1}%", r * 100.0),
                Some(r >= 0.90),
            ),
            None => check("throughput", ">= 90% of the limit", "n/a".into(), None),
        });
        const PLAIN: (&str, &str) = ("API requests per plain bind", "<= 3 (Events apart)");
        const DRA: (&str, &str) = ("API requests per DRA bind", "<= 3 + 2 per claim");
        let k = self.dra_claims;
        let total = self.agent.api.as_ref().map(|a| a.total_per_bind);
        // A run measures one kind of bind: the other target is left unjudged.
        let (plain, dra) = match (k, total) {
            (_, None) => (
                check(PLAIN.0, PLAIN.1, "n/a".into(), None),
                check(DRA.0, DRA.1, "n/a".into(), None),
            ),
            (0, Some(v)) => (
                check(PLAIN.0, PLAIN.1, format!("{v:.2}"), Some(v <= 3.0 + 1e-9)),
                check(DRA.0, DRA.1, "n/a (run with --dra-claims K)".into(), None),
            ),
            (k, Some(v)) => {
                let goal = 3.0 + 2.0 * k as f64;
                (
                    check(
                        PLAIN.0,
                        PLAIN.1,
                        format!("n/a (K = {k} claims per pod)"),
                        None,
                    ),
                    check(
                        DRA.0,
                        DRA.1,
                        format!("{v:.2} at K = {k} (goal {goal})"),
                        Some(v <= goal + 1e-9),
                    ),
                )
            }
        };
        t.push(plain);
        t.push(dra);
        t.push(match self.p99_delta_ms {
            Some(d) => check(
                "p99 latency",
                "within 10 ms of the limit",
                format!("{d:+.1} ms"),
                Some(d <= 10.0),
            ),
            None => check(
                "p99 latency",
                "within 10 ms of the limit",
                "n/a".into(),
                None,
            ),
        });
        let rss_target = if self.requests >= 10_000 {
            "<= 40 MiB after 10,000 requests"
        } else {
            "<= 40 MiB (judged at 10,000 requests)"
        };
        t.push(match &self.agent_process {
            Some(p) => check(
                "agent peak RSS",
                rss_target,
                format!("{:.1} MiB", p.peak_rss_mib),
                Some(p.peak_rss_mib <= 40.0),
            ),
            None => check("agent peak RSS", rss_target, "n/a".into(), None),
        });
        t.push(match &self.agent_process {
            Some(p) => check(
                "agent idle CPU",
                "near zero (< 1% of a core)",
                format!("{:.2}%", p.idle_cpu_percent),
                Some(p.idle_cpu_percent < 1.0),
            ),
            None => check("agent idle CPU", "near zero", "n/a".into(), None),
        });
        self.targets = t;
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "bindlet bench: {} requests, concurrency {}, DRA claims per pod {}, {} ({} CPUs{}, {}/{})",
            self.requests,
            self.concurrency,
            self.dra_claims,
            self.target,
            self.machine.cpus,
            if self.machine.cpu_model.is_empty() {
                String::new()
            } else {
                format!(" {}", self.machine.cpu_model)
            },
            self.machine.os,
            self.machine.arch
        );
        if let Some(v) = &self.server_version {
            let _ = writeln!(s, "API server: {v}");
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<32} {:>12} {:>12} {:>10}",
            "", "limit", "agent", "agent/limit"
        );
        let (l, a) = (&self.limit, &self.agent);
        let ratio = |x: f64, y: f64| {
            if y > 0.0 {
                format!("{:.2}", x / y)
            } else {
                "-".into()
            }
        };
        let _ = writeln!(
            s,
            "{:<32} {:>12.0} {:>12.0} {:>10}",
            "throughput (binds/s)",
            l.binds_per_s,
            a.binds_per_s,
            ratio(a.binds_per_s, l.binds_per_s)
        );
        for (name, lv, av) in [
            ("latency p50 (ms)", l.latency_ms.p50, a.latency_ms.p50),
            ("latency p90 (ms)", l.latency_ms.p90, a.latency_ms.p90),
            ("latency p99 (ms)", l.latency_ms.p99, a.latency_ms.p99),
            ("latency max (ms)", l.latency_ms.max, a.latency_ms.max),
        ] {
            let _ = writeln!(s, "{name:<32} {lv:>12.1} {av:>12.1} {:>10}", ratio(av, lv));
        }
        let _ = writeln!(
            s,
            "{:<32} {:>12} {:>12}",
            "binds / errors",
            format!("{} / {}", l.binds, l.errors),
            format!("{} / {}", a.binds, a.errors)
        );
        let fmt_api = |api: &Option<ApiCost>| match api {
            Some(c) => format!("{:.2}", c.total_per_bind),
            None => "n/a".into(),
        };
        let _ = writeln!(
            s,
            "{:<32} {:>12} {:>12}",
            "API requests per bind",
            fmt_api(&l.api),
            fmt_api(&a.api)
        );
        let mut verbs: Vec<&String> = Vec::new();
        for api in [&l.api, &a.api].into_iter().flatten() {
            verbs.extend(api.per_bind.keys());
        }
        verbs.sort();
        verbs.dedup();
        let get = |api: &Option<ApiCost>, k: &str| match api {
            Some(c) => format!("{:.2}", c.per_bind.get(k).copied().unwrap_or(0.0)),
            None => "n/a".into(),
        };
        for k in verbs {
            let _ = writeln!(
                s,
                "{:<32} {:>12} {:>12}",
                format!("  {k}"),
                get(&l.api, k),
                get(&a.api, k)
            );
        }
        let ev = |api: &Option<ApiCost>| match api {
            Some(c) => format!("{:.2}", c.events_per_bind),
            None => "n/a".into(),
        };
        let _ = writeln!(
            s,
            "{:<32} {:>12} {:>12}",
            "  Events (apart)",
            ev(&l.api),
            ev(&a.api)
        );
        for r in &self.agent_failures {
            let _ = writeln!(s, "  agent failures: {} x {}", r.count, r.reason);
        }
        if let Some(api) = &a.api
            && !api.other.is_empty()
        {
            let other: Vec<String> = api.other.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(s, "  agent, not per bind: {}", other.join(", "));
        }
        let _ = writeln!(s);
        match &self.agent_process {
            Some(p) => {
                let _ = writeln!(
                    s,
                    "agent process: peak RSS {:.1} MiB (end {:.1} MiB); CPU {:.2} s during the run ({:.3} ms/bind), {:.2} s in all; idle {:.2}% of a core over {:.0} s",
                    p.peak_rss_mib,
                    p.rss_end_mib,
                    p.cpu_s_run,
                    p.cpu_ms_per_bind,
                    p.cpu_s_total,
                    p.idle_cpu_percent,
                    p.idle_seconds
                );
            }
            None => {
                let _ = writeln!(s, "agent process: RSS and CPU n/a on this platform");
            }
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "{:<30} {:<40} {:<36} result", "target", "goal", "value");
        for t in &self.targets {
            let mark = match t.met {
                Some(true) => "met",
                Some(false) => "NOT MET",
                None => "-",
            };
            let _ = writeln!(s, "{:<30} {:<40} {:<36} {mark}", t.name, t.target, t.value);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(items: &[(&str, &str, u64)]) -> RequestCounts {
        RequestCounts(
            items
                .iter()
                .map(|(v, r, n)| ((v.to_string(), r.to_string()), *n))
                .collect(),
        )
    }

    #[test]
    fn percentiles_nearest_rank() {
        let l = Latency::of((1..=100).map(Duration::from_millis).collect());
        assert_eq!((l.p50, l.p90, l.p99, l.max), (50.0, 90.0, 99.0, 100.0));
        assert!((l.mean - 50.5).abs() < 1e-9);
        assert_eq!(Latency::of(vec![]).max, 0.0);
    }

    #[test]
    fn api_cost_separates_events_and_own_requests() {
        let delta = counts(&[
            ("get", "pods", 100),
            ("create", "pods/binding", 100),
            ("patch", "bindrequests/status", 100),
            ("create", "bindrequests", 100),
            ("create", "events", 200),
            ("update", "leases", 3),
            ("watch", "pods", 1),
        ]);
        let own = counts(&[("create", "bindrequests", 100), ("watch", "pods", 1)]);
        let c = ApiCost::from_counts(&delta, &own, 100);
        assert_eq!(c.total_per_bind, 3.0);
        assert_eq!(c.events_per_bind, 2.0);
        assert_eq!(c.other.get("update leases"), Some(&3));
        assert!(!c.per_bind.contains_key("create bindrequests"));
    }
}
