//! RFC 3339 timestamps in UTC with millisecond precision, without a
//! date-time dependency.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `2026-11-29T09:13:20.123Z` for `t`.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// RFC 3339 (UTC, milliseconds) for `secs` since the epoch.
pub fn rfc3339_from_secs(secs: f64) -> String {
    rfc3339_millis(UNIX_EPOCH + std::time::Duration::from_secs_f64(secs.max(0.0)))
}

/// Seconds since the epoch of an RFC 3339 UTC timestamp as the agent
/// writes them (`2026-11-29T09:13:20.123Z`; fractional seconds optional).
pub fn parse_rfc3339(ts: &str) -> Option<f64> {
    let b = ts.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| ts.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let rest = ts.get(19..)?.strip_suffix('Z')?;
    let frac = match rest.strip_prefix('.') {
        Some(f) if !f.is_empty() && f.bytes().all(|c| c.is_ascii_digit()) => {
            format!("0.{f}").parse::<f64>().ok()?
        }
        None if rest.is_empty() => 0.0,
        _ => return None,
    };
    let days = days_from_civil(y, m as u32, d as u32);
    Some((days * 86_400 + hh * 3600 + mm * 60 + ss) as f64 + frac)
}

/// (year, month, day) to days since 1970-01-01 (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Parses `250ms`, `10s`, `5m`, `2h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 =
        num.parse().map_err(|_| format!("invalid duration {s:?} (use e.g. 500ms, 10s, 5m)"))?;
    let scale = match unit {
        "ms" => 1e-3,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!("invalid duration unit {unit:?} in {s:?} (use ms, s, m or h)"));
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("duration {s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn known_instants() {
        let at =
            |s: u64, ms: u64| rfc3339_millis(UNIX_EPOCH + Duration::from_millis(s * 1000 + ms));
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_795_944_800, 999), "2026-11-29T09:33:20.999Z");
        assert_eq!(at(4_107_542_399, 0), "2100-02-28T23:59:59.000Z");
    }

    #[test]
    fn parse_inverts_format() {
        for secs in [0.0, 951_782_400.005, 1_795_944_800.999, 4_107_542_399.0] {
            let ts = rfc3339_from_secs(secs);
            assert!((parse_rfc3339(&ts).unwrap() - secs).abs() < 0.0011, "{ts}");
        }
        assert_eq!(
            parse_rfc3339("2026-11-29T09:13:20Z"),
            parse_rfc3339("2026-11-29T09:13:20.000Z")
        );
        for bad in [
            "",
            "2026-13-01T00:00:00Z",
            "2026-11-29 09:13:20Z",
            "2026-11-29T09:13:20.Z",
            "2026-11-29T09:13:20+01:00",
            "x".repeat(30).as_str(),
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
