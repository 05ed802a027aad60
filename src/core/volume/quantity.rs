//! Kubernetes resource quantities (`10Gi`, `500M`, `1.5Ti`, `2e9`) as whole bytes, on top of
//! the one quantity parser ([`crate::api::quantity`]).

use crate::api::quantity;

/// Parses a quantity into bytes, rounding a fractional byte up (a claim for `0.5` needs one
/// byte). `None` for malformed or negative quantities, or values beyond `u64`.
///
/// ```
/// use bindlet_core::volume::quantity::parse_bytes;
/// assert_eq!(parse_bytes("10Gi"), Some(10 << 30));
/// assert_eq!(parse_bytes("1.5k"), Some(1500));
/// assert_eq!(parse_bytes("2e3"), Some(2000));
/// assert_eq!(parse_bytes("ten"), None);
/// ```
pub fn parse_bytes(q: &str) -> Option<u64> {
    // The one quantity parser (exact, in nano-units), then whole bytes rounded up.
    let nanos = quantity::parse(q).ok()?;
    if nanos < 0 {
        return None;
    }
    u64::try_from(quantity::ceil_div(nanos, 1_000_000_000)).ok()
}

/// Bytes in binary units with one decimal where it matters: `3.1 GiB`, `10 GiB`, `512 B`.
///
/// ```
/// use bindlet_core::volume::quantity::format_bytes;
/// assert_eq!(format_bytes(10 << 30), "10 GiB");
/// assert_eq!(format_bytes(3_328_599_654), "3.1 GiB");
/// assert_eq!(format_bytes(512), "512 B");
/// ```
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    let s = format!("{v:.1}");
    let s = s.strip_suffix(".0").unwrap_or(&s);
    format!("{s} {unit}")
}

/// Counts for humans: `1234567` → `1.2M`.
pub fn format_count(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}k", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.1}G", n as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        let cases = [
            ("1", Some(1)),
            ("0", Some(0)),
            ("1Ki", Some(1024)),
            ("10Gi", Some(10 << 30)),
            ("1.5Gi", Some(3 << 29)),
            ("500M", Some(500_000_000)),
            ("1T", Some(1_000_000_000_000)),
            ("1500m", Some(2)),
            ("1e3", Some(1000)),
            ("1E6", Some(1_000_000)),
            ("5e-1", Some(1)),
            ("+2Mi", Some(2 << 20)),
            (".5Ki", Some(512)),
            ("", None),
            ("-1Gi", None),
            ("1.2.3", None),
            ("10GB", None),
            ("Gi", None),
            ("100Ei", None),
        ];
        for (q, want) in cases {
            assert_eq!(parse_bytes(q), want, "{q}");
        }
    }

    #[test]
    fn formatting() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(1 << 20), "1 MiB");
        assert_eq!(format_bytes(u64::MAX), "16 EiB");
        assert_eq!(format_count(999), "999");
        assert_eq!(format_count(1_234_567), "1.2M");
    }
}
