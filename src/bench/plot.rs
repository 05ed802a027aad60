//! The fleet bench's plot, as a small hand-written SVG: cluster binds/s and the binders'
//! API requests/s against N, fleet vs central, on log scales (the two modes differ by
//! orders of magnitude).

use std::fmt::Write as _;

use super::fleet::{FleetPoint, FleetReport};
use super::host::Mode;

const W: f64 = 460.0;
const H: f64 = 300.0;
const LEFT: f64 = 62.0;
const RIGHT: f64 = 14.0;
const TOP: f64 = 36.0;
/// Room below each panel for the axis label and the legend (two entries a row).
const BOTTOM: f64 = 84.0;

struct Series<'a> {
    label: &'a str,
    color: &'a str,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

/// Powers of ten covering `lo..=hi` (both > 0).
fn decades(lo: f64, hi: f64) -> (f64, f64) {
    let lo = 10f64.powf(lo.max(1e-3).log10().floor());
    let hi = 10f64.powf(hi.max(lo * 10.0).log10().ceil());
    (lo, hi)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One panel at horizontal offset `x0`.
fn panel(out: &mut String, x0: f64, title: &str, y_label: &str, series: &[Series], xs: &[f64]) {
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let all_y: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|y| *y > 0.0)
        .collect();
    let (ylo, yhi) = decades(
        all_y.iter().copied().fold(f64::INFINITY, f64::min),
        all_y.iter().copied().fold(0.0, f64::max),
    );
    let xmax = xs.iter().copied().fold(1.0, f64::max);
    let px = |x: f64| x0 + LEFT + x / xmax * pw;
    let py = |y: f64| {
        let t = (y.max(ylo).log10() - ylo.log10()) / (yhi.log10() - ylo.log10());
        TOP + ph - t * ph
    };
    let _ = writeln!(
        out,
        r#"<text x="{}" y="20" font-size="14" font-weight="bold">{}</text>"#,
        x0 + LEFT,
        esc(title)
    );
    let _ = writeln!(
        out,
        r##"<rect x="{}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>"##,
        x0 + LEFT
    );
    let mut d = ylo;
    while d <= yhi * 1.0001 {
        let y = py(d);
        let _ = writeln!(
            out,
            r##"<line x1="{}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            x0 + LEFT,
            x0 + LEFT + pw,
            x0 + LEFT - 4.0,
            y + 4.0,
            if d >= 1.0 {
                format!("{d:.0}")
            } else {
                format!("{d}")
            }
        );
        d *= 10.0;
    }
    for &x in xs {
        let _ = writeln!(
            out,
            r##"<line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{2}" stroke="#ddd"/><text x="{0:.1}" y="{3}" font-size="11" text-anchor="middle">{4}</text>"##,
            px(x),
            TOP,
            TOP + ph,
            TOP + ph + 14.0,
            x
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="12" text-anchor="middle">nodes (N)</text>"#,
        x0 + LEFT + pw / 2.0,
        H - BOTTOM + 32.0
    );
    let _ = writeln!(
        out,
        r#"<text x="{0}" y="{1}" font-size="12" text-anchor="middle" transform="rotate(-90 {0} {1})">{2}</text>"#,
        x0 + 14.0,
        TOP + ph / 2.0,
        esc(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let pts: Vec<String> = s
            .points
            .iter()
            .filter(|p| p.1 > 0.0)
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let dash = if s.dashed {
            r#" stroke-dasharray="5,4""#
        } else {
            ""
        };
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
            pts.join(" "),
            s.color
        );
        for p in &pts {
            let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(
                out,
                r#"<circle cx="{x}" cy="{y}" r="3" fill="{}"/>"#,
                s.color
            );
        }
        // Below the axis, where no data point can hide it.
        let ly = H - BOTTOM + 50.0 + 15.0 * (i / 2) as f64;
        let lx = x0 + LEFT + 190.0 * (i % 2) as f64;
        let _ = writeln!(
            out,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="2"{dash}/><text x="{}" y="{}" font-size="11">{}</text>"#,
            lx + 20.0,
            s.color,
            lx + 24.0,
            ly + 4.0,
            esc(s.label)
        );
    }
}

fn series<'a>(
    report: &FleetReport,
    mode: Mode,
    label: &'a str,
    color: &'a str,
    dashed: bool,
    y: impl Fn(&FleetPoint) -> f64,
) -> Series<'a> {
    Series {
        label,
        color,
        dashed,
        points: report
            .points
            .iter()
            .filter(|p| p.mode == mode)
            .map(|p| (p.nodes as f64, y(p)))
            .collect(),
    }
}

pub fn svg(report: &FleetReport) -> String {
    let mut xs: Vec<f64> = report.points.iter().map(|p| p.nodes as f64).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let (fleet, central) = ("#1f77b4", "#d62728");
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" viewBox="0 0 {} {}" font-family="sans-serif">"#,
        2.0 * W,
        H + 20.0,
        2.0 * W,
        H + 20.0
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    panel(
        &mut out,
        0.0,
        "Cluster binds/s",
        "binds/s (log)",
        &[
            series(
                report,
                Mode::Fleet,
                "fleet (node agents)",
                fleet,
                false,
                |p| p.binds_per_s,
            ),
            series(
                report,
                Mode::Central,
                "central (KAI defaults)",
                central,
                false,
                |p| p.binds_per_s,
            ),
        ],
        &xs,
    );
    panel(
        &mut out,
        W,
        "Binders' API requests/s",
        "requests/s (log)",
        &[
            series(
                report,
                Mode::Fleet,
                "fleet, under load",
                fleet,
                false,
                |p| p.load.total_per_s,
            ),
            series(
                report,
                Mode::Central,
                "central, under load",
                central,
                false,
                |p| p.load.total_per_s,
            ),
            series(report, Mode::Fleet, "fleet, idle", fleet, true, |p| {
                p.idle.total_per_s
            }),
            series(report, Mode::Central, "central, idle", central, true, |p| {
                p.idle.total_per_s
            }),
        ],
        &xs,
    );
    let m = &report.machine;
    let _ = writeln!(
        out,
        r##"<text x="10" y="{}" font-size="10" fill="#555">{} requests per point, {} in flight; {}; {} CPUs {}</text>"##,
        H + 12.0,
        report.requests,
        report.concurrency,
        esc(&report.target),
        m.cpus,
        esc(&m.cpu_model)
    );
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_axes_cover_whole_decades() {
        let table = [
            ((17.0, 3900.0), (10.0, 10000.0)),
            ((0.05, 98.0), (0.01, 100.0)),
            ((100.0, 100.0), (100.0, 1000.0)),
        ];
        for ((lo, hi), want) in table {
            let (a, b) = decades(lo, hi);
            assert!(
                (a - want.0).abs() < 1e-9 && (b - want.1).abs() < 1e-6,
                "{lo}..{hi}: {a}..{b}"
            );
        }
    }
}
