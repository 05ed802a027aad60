//! Kubernetes resource quantities (`500m`, `1Gi`, `2k`, `1e3`, `0.5`), parsed exactly into
//! integer nano-units so requests and allocatable compare without float rounding.

use thiserror::Error;

/// A quantity in nano-units (1 = 10^-9 of the unit), the finest scale Kubernetes has.
pub type Nanos = i128;

const NANO: Nanos = 1_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid quantity \"{0}\"")]
pub struct QuantityError(pub String);

/// Parses a Kubernetes quantity. Precision below 1n is rounded up, the way the API server
/// rounds a quantity to its smallest scale.
pub fn parse(s: &str) -> Result<Nanos, QuantityError> {
    let bad = || QuantityError(s.to_string());
    let t = s.trim();
    let (negative, body) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let num_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(num_end);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
        return Err(bad());
    }
    // value = digits * 10^(exp10 - frac_len) * 2^exp2
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return Err(bad());
    }
    let mantissa: i128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| bad())?
    };
    let (exp10, exp2): (i32, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        other => {
            // Decimal exponent: e or E followed by a signed integer.
            let exp = other
                .strip_prefix('e')
                .or_else(|| other.strip_prefix('E'))
                .ok_or_else(bad)?;
            let digits_only = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits_only.is_empty() || !digits_only.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            (exp.parse::<i32>().map_err(|_| bad())?, 0)
        }
    };
    let frac_len = i32::try_from(frac_part.len()).map_err(|_| bad())?;
    // Scale to nanos: multiply by 10^(exp10 - frac_len + 9), dividing (rounding up) if negative.
    let scale = exp10 - frac_len + 9;
    let mut v = mantissa;
    if scale >= 0 {
        let f = 10i128.checked_pow(scale as u32).ok_or_else(bad)?;
        v = v.checked_mul(f).ok_or_else(bad)?;
    } else {
        let f = 10i128.checked_pow((-scale) as u32).unwrap_or(i128::MAX);
        v = if v == 0 { 0 } else { (v - 1) / f + 1 };
    }
    v = v.checked_mul(1i128 << exp2).ok_or_else(bad)?;
    // Quantities beyond 2^63 units are invalid in Kubernetes too.
    if v / NANO > i64::MAX as i128 {
        return Err(bad());
    }
    Ok(if negative { -v } else { v })
}

/// `a / b` rounded up, for `a >= 0`, `b > 0` (signed `div_ceil` is not stable).
pub fn ceil_div(a: Nanos, b: Nanos) -> Nanos {
    if a <= 0 { a / b } else { (a - 1) / b + 1 }
}

/// Human form of a quantity of `resource`: CPU in cores or millicores, byte-like resources
/// with a binary suffix when exact, everything else as a plain number.
pub fn format(resource: &str, v: Nanos) -> String {
    let sign = if v < 0 { "-" } else { "" };
    let a = v.abs();
    if resource == "cpu" {
        return if a % NANO == 0 {
            format!("{sign}{}", a / NANO)
        } else {
            format!("{sign}{}m", ceil_div(a, NANO / 1000))
        };
    }
    if a % NANO != 0 {
        let milli = ceil_div(a, NANO / 1000);
        return format!("{sign}{milli}m");
    }
    let units = a / NANO;
    let bytes_like = resource == "memory"
        || resource == "ephemeral-storage"
        || resource == "storage"
        || resource.starts_with("hugepages-");
    if bytes_like && units != 0 {
        for (suffix, shift) in [("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
            if units % (1i128 << shift) == 0 {
                return format!("{sign}{}{suffix}", units >> shift);
            }
        }
    }
    format!("{sign}{units}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let cases: &[(&str, Nanos)] = &[
            ("0", 0),
            ("1", NANO),
            ("500m", NANO / 2),
            ("0.5", NANO / 2),
            (".5", NANO / 2),
            ("1.5", 3 * NANO / 2),
            ("100n", 100),
            ("1u", 1000),
            ("2k", 2000 * NANO),
            ("1M", 1_000_000 * NANO),
            ("3G", 3_000_000_000 * NANO),
            ("1Ki", 1024 * NANO),
            ("1Mi", (1 << 20) * NANO),
            ("2Gi", (2i128 << 30) * NANO),
            ("1Ti", (1i128 << 40) * NANO),
            ("1.5Gi", (3i128 << 29) * NANO),
            ("1e3", 1000 * NANO),
            ("1E3", 1000 * NANO),
            ("12e-3", 12 * NANO / 1000),
            ("1e+2", 100 * NANO),
            ("1E", 1_000_000_000_000_000_000 * NANO),
            ("+4", 4 * NANO),
            ("-1", -NANO),
            // Below 1n rounds up.
            ("0.1n", 1),
            ("1.0000000001", NANO + 1),
        ];
        for (s, want) in cases {
            assert_eq!(parse(s), Ok(*want), "{s}");
        }
    }

    #[test]
    fn parse_rejects_garbage() {
        for s in [
            "",
            "m",
            "Gi",
            "1..0",
            "1.2.3",
            "1x",
            "1gi",
            "1 Gi",
            "1e",
            "1e+",
            "1ee3",
            "abc",
            "1Ki2",
            "99999999999999999999999999999999",
            "1e40",
        ] {
            assert!(parse(s).is_err(), "{s} should be rejected");
        }
    }

    #[test]
    fn formats_readably() {
        assert_eq!(format("cpu", parse("2").unwrap()), "2");
        assert_eq!(format("cpu", parse("1500m").unwrap()), "1500m");
        assert_eq!(format("memory", parse("2Gi").unwrap()), "2Gi");
        assert_eq!(format("memory", parse("1536Mi").unwrap()), "1536Mi");
        assert_eq!(format("memory", parse("1G").unwrap()), "1000000000");
        assert_eq!(format("nvidia.com/gpu", parse("8").unwrap()), "8");
        assert_eq!(format("memory", 0), "0");
        assert_eq!(format("cpu", -parse("250m").unwrap()), "-250m");
    }
}
