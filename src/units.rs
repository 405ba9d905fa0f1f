//! Sizes and durations the human way (read with `parse-size` and `humantime`, printed in binary units and with [`human_ms`]), and UTC timestamps with milliseconds ([`utc_ms`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// K, M, G, T are binary multiples whatever the spelling (`40G` = `40 GiB` = `40GB`), as
/// qemu-img and virsh read them.
const SIZES: parse_size::Config = parse_size::Config::new().with_binary();

/// Parse a size the human way: `123`, `4K`, `512M`, `16G`, `1.5 GiB`, `2TB` (binary multiples
/// whatever the spelling: K, KB, KiB; a decimal point must still give whole bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let bytes = SIZES.parse_size(s).map_err(|e| match e {
        parse_size::Error::PosOverflow => format!("size too large: {s:?}"),
        _ => format!(
            "not a size: {s:?} (bytes, or a number with K, M, G or T, as in 40G or 1.5 GiB)"
        ),
    })?;
    whole_bytes(s, bytes)?;
    Ok(bytes)
}

/// The crate rounds a size to the nearest byte; a disk's size must be exact. With `d` digits
/// after the point, the same text without the point is exactly `10^d` times the size when
/// (and only when) the size is a whole number of bytes.
fn whole_bytes(s: &str, bytes: u64) -> Result<(), String> {
    let Some((_, after)) = s.split_once('.') else {
        return Ok(());
    };
    let d = after
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '_' | ' '))
        .filter(char::is_ascii_digit)
        .count() as u32;
    let undotted = s.replacen('.', "", 1);
    let scaled = SIZES.parse_size(&undotted).map_err(|_| {
        format!("{s:?}: too many decimal places to be sure of a whole number of bytes; give it in a smaller unit")
    })?;
    let whole = 10u128
        .checked_pow(d)
        .is_some_and(|p| u128::from(bytes) * p == u128::from(scaled));
    if whole {
        Ok(())
    } else {
        Err(format!("{s:?} is not a whole number of bytes"))
    }
}

/// Bytes as `512 B`, `8.0 MiB`, `1.5 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    // 1048575 bytes are "1.0 MiB", not "1024.0 KiB".
    while v >= 1023.95 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Bytes as `8.0 GiB (8589934592 bytes)`: the human figure, and the exact one beside it.
pub fn human_bytes_exact(n: u64) -> String {
    format!("{} ({n} bytes)", human_bytes(n))
}

/// Parse a duration: `300` (a bare number is seconds, as these options always took),
/// `300s`, `5m`, `1h 30m`, `1500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| {
        format!("not a duration: {s:?} ({e}; give seconds, or a duration like 300s, 5m, 1h 30m)")
    })
}

/// [`parse_duration`] of a time to wait, which cannot be zero.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!(
            "{:?}: a time to wait must be longer than zero",
            s.trim()
        ));
    }
    Ok(d)
}

/// A duration in milliseconds as `0.4 s`, `12.3 s`, `4 min 05 s`, `2 h 03 min`.
pub fn human_ms(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{:.1} s", ms as f64 / 1000.0),
        60..=3599 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, s / 60 % 60),
    }
}

/// A duration as the operator reads it: `0.4 s`, `4 min 05 s`, `2 h 03 min` ([`human_ms`]).
pub fn human_duration(d: Duration) -> String {
    human_ms(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A remaining time the human way: seconds (rounded up) under a minute, else whole minutes
/// (rounded): `40 s`, `6 min`, `1 h 5 min`.
pub fn human_time_left(d: Duration) -> String {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    let m = (s + 30) / 60;
    match s {
        0..=59 => format!("{s} s"),
        _ if m < 60 => format!("{m} min"),
        _ => format!("{} h {} min", m / 60, m % 60),
    }
}

/// A duration as [`parse_duration`] reads it back: `5m`, `1h 30m`.
pub fn duration_arg(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// `t` as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn utc_ms(t: SystemTime) -> String {
    let ms = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis()) as i64;
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (y, m, d) = civil(days);
    let s = rem / 1000;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        rem % 1000
    )
}

/// Milliseconds since the epoch of a [`utc_ms`] string (or one without milliseconds).
pub fn parse_utc_ms(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, mi, sec) = (t.next()??, t.next()??, t.next()??);
    let ms: i64 = format!("{frac:0<3}").get(..3)?.parse().ok()?;
    let valid = (1..=12).contains(&m) && (1..=31).contains(&day) && h < 24 && mi < 60 && sec < 61;
    valid.then(|| (days_from_civil(y, m, day) * 86_400 + h * 3600 + mi * 60 + sec) * 1000 + ms)
}

/// Days since 1970-01-01 to (year, month, day) (H. Hinnant's algorithm).
pub(crate) fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The inverse of [`civil`].
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("16g").unwrap(), 16 << 30);
        assert!(parse_size("3X").is_err());
        assert_eq!(parse_size("1.5 GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("40G").unwrap(), 40 << 30);
        assert_eq!(parse_size("512MB").unwrap(), 512 << 20);
        assert_eq!(parse_size("0.5k").unwrap(), 512);
        assert!(parse_size("1.3K").is_err(), "not whole bytes");
        assert!(parse_size("1..5G").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn sizes_the_crate_would_round_are_refused() {
        assert_eq!(
            parse_size("1.3K").unwrap_err(),
            "\"1.3K\" is not a whole number of bytes"
        );
        assert!(parse_size("0.1").is_err(), "a tenth of a byte");
        assert_eq!(parse_size("1.50 GiB").unwrap(), 3 << 29, "trailing zeros");
        assert_eq!(parse_size("2.0T").unwrap(), 2 << 40);
        assert_eq!(parse_size("1.25e1 K").unwrap(), 12_800, "scientific");
        assert_eq!(
            parse_size("0.001K").unwrap_err(),
            "\"0.001K\" is not a whole number of bytes"
        );
    }

    #[test]
    fn bad_sizes_say_what_is_wrong() {
        let unit = parse_size("3 parsecs").unwrap_err();
        assert!(
            unit.contains("not a size: \"3 parsecs\"") && unit.contains("40G"),
            "{unit}"
        );
        assert_eq!(
            parse_size("99999999999T").unwrap_err(),
            "size too large: \"99999999999T\""
        );
        assert!(parse_size("17 EiB").unwrap_err().contains("too large"));
        assert!(parse_size("-1G").unwrap_err().contains("not a size"));
    }

    #[test]
    fn sizes_print_the_human_way() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(8 << 20), "8.0 MiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
        assert_eq!(human_bytes_exact(8 << 30), "8.0 GiB (8589934592 bytes)");
    }

    #[test]
    fn bytes_are_shown_in_binary_units_with_one_decimal() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(40 << 30), "40.0 GiB");
        assert_eq!(human_bytes((1 << 20) - 1), "1.0 MiB", "no 1024.0 KiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn durations_take_units_and_bare_seconds() {
        assert_eq!(parse_duration("300").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("300s").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration(" 0 ").unwrap(), Duration::ZERO);
        for bad in ["-5", "5 parsecs", "", "1.5"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(
                e.starts_with("not a duration") && e.contains("5m"),
                "{bad}: {e}"
            );
        }
        assert!(parse_timeout("0s")
            .unwrap_err()
            .contains("longer than zero"));
        assert_eq!(parse_timeout("2").unwrap(), Duration::from_secs(2));
    }

    #[test]
    fn durations_read_the_human_way() {
        assert_eq!(human_ms(420), "0.4 s");
        assert_eq!(human_ms(65_000), "1 min 05 s");
        assert_eq!(human_ms(7_380_000), "2 h 03 min");
    }

    #[test]
    fn remaining_time_is_given_in_seconds_under_a_minute_else_in_whole_minutes() {
        let s = Duration::from_secs;
        assert_eq!(human_time_left(Duration::from_millis(300)), "1 s");
        assert_eq!(human_time_left(s(40)), "40 s");
        assert_eq!(human_time_left(s(60)), "1 min");
        assert_eq!(human_time_left(s(89)), "1 min");
        assert_eq!(human_time_left(s(90)), "2 min");
        assert_eq!(human_time_left(s(3569)), "59 min");
        assert_eq!(human_time_left(s(3570)), "1 h 0 min");
        assert_eq!(human_time_left(s(3600 + 5 * 60 - 30)), "1 h 5 min");
    }

    #[test]
    fn durations_print_and_read_back() {
        assert_eq!(human_duration(Duration::from_millis(420)), "0.4 s");
        assert_eq!(human_duration(Duration::from_secs(5400)), "1 h 30 min");
        let d = Duration::from_secs(5400);
        assert_eq!(duration_arg(d), "1h 30m");
        assert_eq!(parse_duration(&duration_arg(d)).unwrap(), d);
    }

    #[test]
    fn timestamps_round_trip_to_the_millisecond() {
        for ms in [
            0u64,
            1,
            951_782_400_123,
            1_795_000_000_999,
            4_102_444_799_500,
        ] {
            let t = UNIX_EPOCH + Duration::from_millis(ms);
            assert_eq!(parse_utc_ms(&utc_ms(t)), Some(ms as i64), "{}", utc_ms(t));
        }
        assert_eq!(
            utc_ms(UNIX_EPOCH + Duration::from_millis(951_782_400_123)),
            "2000-02-29T00:00:00.123Z"
        );
        assert_eq!(
            parse_utc_ms("2026-11-27T09:12:44Z"),
            Some(1_795_770_764_000)
        );
        assert_eq!(parse_utc_ms("2026-13-27T09:12:44Z"), None);
        assert_eq!(parse_utc_ms("yesterday"), None);
    }
}
