//! `/debug`: the same state as `/debug/state`, rendered on the server as one
//! self-contained page (no scripts, no external assets), so it works through
//! `kubectl port-forward` or an authenticating proxy alike.

use std::fmt::Write;

use crate::volume::quantity::format_bytes;

use super::facts::{GpuFacts, VolumeFacts};
use super::recorder::DebugState;

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn opt(s: &Option<String>) -> String {
    s.as_deref().map(esc).unwrap_or_else(|| "-".into())
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;\
text-align:left;vertical-align:top}th{background:#f3f3f3}.ok{color:#176f2c}.bad{color:#b00020}\
small{color:#666}";

/// The page. Every value from the cluster is escaped.
pub fn render(s: &DebugState) -> String {
    let mut h = String::with_capacity(16 * 1024);
    let node = opt(&s.node);
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
         <title>bindlet {node}</title><style>{STYLE}</style></head><body><h1>bindlet on {node}</h1>"
    );
    let (cls, word) = if s.readiness.ready {
        ("ok", "ready")
    } else {
        ("bad", "not ready")
    };
    let _ = write!(
        h,
        "<table><tr><th>readiness</th><td class=\"{cls}\">{word}</td></tr>\
         <tr><th>BindRequest watch synced</th><td>{}</td></tr>\
         <tr><th>Lease</th><td>{} in {} &mdash; held by this agent: {}; holder: {}; identity: {}</td></tr>\
         <tr><th>queue</th><td>{} waiting, {} in flight; oldest pending {:.0} s</td></tr>\
         <tr><th>totals</th><td>{} bound, {} already bound, {} failed attempts, {} given up</td></tr></table>",
        s.readiness.watch_synced,
        opt(&s.lease.name),
        opt(&s.lease.namespace),
        s.lease.held,
        match &s.lease.holder {
            None => "unknown".to_string(),
            Some(x) if x.is_empty() => "nobody".to_string(),
            Some(x) => esc(x),
        },
        opt(&s.lease.identity),
        s.queue_depth,
        s.in_flight,
        s.oldest_pending_seconds,
        s.totals.bound,
        s.totals.already_bound,
        s.totals.failed_attempts,
        s.totals.failed_final,
    );
    h.push_str("<h2>Node and agent process</h2><table>");
    match &s.node_resources {
        Some(n) => {
            let _ = write!(
                h,
                "<tr><th>node memory</th><td>{} available of {}</td></tr>\
                 <tr><th>node CPUs</th><td>{}; load {:.2} / {:.2} / {:.2} <small>(1, 5, 15 min)</small></td></tr>",
                format_bytes(n.memory_available_bytes),
                format_bytes(n.memory_total_bytes),
                n.cpus,
                n.load_average_1m,
                n.load_average_5m,
                n.load_average_15m,
            );
        }
        None => h.push_str("<tr><th>node</th><td>not readable on this platform</td></tr>"),
    }
    match &s.process {
        Some(p) => {
            let fds = match (p.open_fds, p.max_fds) {
                (Some(o), Some(m)) => format!("{o} of {m}"),
                (Some(o), None) => o.to_string(),
                _ => "?".into(),
            };
            let started = i64::try_from(p.start_time_seconds)
                .ok()
                .and_then(|t| jiff::Timestamp::from_second(t).ok())
                .map(|t| t.to_string())
                .unwrap_or_else(|| "?".into());
            let _ = write!(
                h,
                "<tr><th>agent process</th><td>{} resident, {:.2} s CPU, {fds} open files, started {started}</td></tr>",
                format_bytes(p.resident_memory_bytes),
                p.cpu_seconds,
            );
        }
        None => h.push_str("<tr><th>agent process</th><td>not readable</td></tr>"),
    }
    h.push_str("</table><h2>GPUs</h2>");
    match &s.gpus {
        GpuFacts::NotConfigured => h.push_str("<p>No GPU inventory in this agent.</p>"),
        GpuFacts::Loading => h.push_str("<p>GPU inventory loading.</p>"),
        GpuFacts::Unavailable { reason } => {
            let _ = write!(h, "<p class=\"bad\">unavailable: {}</p>", esc(reason));
        }
        GpuFacts::Loaded { devices } => {
            h.push_str("<table><tr><th>#</th><th>UUID</th><th>model</th><th>memory used / total</th><th>health</th></tr>");
            for d in devices {
                let used = d
                    .memory_used_bytes
                    .map(|u| (u >> 20).to_string())
                    .unwrap_or_else(|| "?".into());
                let health = if d.healthy {
                    "<span class=\"ok\">healthy</span>".to_string()
                } else {
                    format!("<span class=\"bad\">unhealthy: {}</span>", opt(&d.reason))
                };
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{used} / {} MiB</td><td>{health}</td></tr>",
                    d.index,
                    esc(&d.uuid),
                    esc(&d.name),
                    d.memory_total_bytes >> 20
                );
            }
            h.push_str("</table>");
        }
    }
    h.push_str("<h2>Volumes</h2>");
    match &s.volumes {
        VolumeFacts::NotConfigured => h.push_str("<p>No volume checks in this agent.</p>"),
        VolumeFacts::Known { volumes } => {
            h.push_str("<table><tr><th>path</th><th>available</th><th>state</th></tr>");
            for v in volumes {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
                    esc(&v.path),
                    v.available_bytes
                        .map(|b| format!("{} MiB", b >> 20))
                        .unwrap_or_else(|| "?".into()),
                    if v.ok { "ok" } else { "bad" },
                    esc(&v.message)
                );
            }
            h.push_str("</table>");
        }
    }
    let _ = write!(
        h,
        "<h2>Recent BindRequests ({})</h2><table><tr><th>request</th><th>phase</th><th>attempts \
         <small>(newest last)</small></th></tr>",
        s.requests.len()
    );
    for r in &s.requests {
        let _ = write!(
            h,
            "<tr><td>{}/{}<br><small>created {}{}</small></td><td>{}<br><small>{}</small></td><td>",
            esc(&r.namespace),
            esc(&r.name),
            opt(&r.created_at),
            r.bind_latency_seconds
                .map(|l| format!("; bound after {l:.3} s"))
                .unwrap_or_default(),
            opt(&r.phase),
            opt(&r.reason),
        );
        for a in &r.attempts {
            let stages: Vec<String> = a
                .stages
                .iter()
                .map(|st| format!("{} {:.1} ms", esc(st.stage), st.seconds * 1e3))
                .collect();
            let verdicts: Vec<String> = a
                .verdicts
                .iter()
                .map(|v| format!("{}/{}: {:?}", esc(&v.plugin), esc(&v.check), v.outcome))
                .collect();
            let _ = write!(
                h,
                "<div><b>{}</b> at {}{}{}<br><small>{}{}{}</small></div>",
                a.result,
                esc(&a.started_at),
                a.seconds
                    .map(|x| format!(" ({:.1} ms)", x * 1e3))
                    .unwrap_or_default(),
                a.reason
                    .as_deref()
                    .map(|x| format!(" &mdash; {}", esc(x)))
                    .unwrap_or_default(),
                stages.join(", "),
                if verdicts.is_empty() { "" } else { "<br>" },
                verdicts.join(", "),
            );
        }
        h.push_str("</td></tr>");
    }
    h.push_str("</table></body></html>\n");
    h
}
