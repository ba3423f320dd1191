//! Numbers for people: `3.5M` deliveries/s, `120k`, `2.4 µs`, `1.5 ms`.
//!
//! Charts and one-line summaries use these; the tables keep plain digits
//! so they stay aligned and easy to paste into a spreadsheet.

use std::time::Duration;

/// Three significant digits with a `k`/`M`/`G`/`T` suffix: `3500000.0` →
/// `3.5M`, `120000.0` → `120k`, `2.4` → `2.4`, `0.0123` → `0.0123`.
/// Trailing zeros are dropped (`1M`, not `1.00M`) so axis ticks read cleanly.
pub fn human(value: f64) -> String {
    if !value.is_finite() {
        return "n/a".into();
    }
    const SUFFIXES: [&str; 5] = ["", "k", "M", "G", "T"];
    let sign = if value < 0.0 { "-" } else { "" };
    let mut scaled = value.abs();
    let mut suffix = 0;
    // 999.5 and above would round to "1000": show it as "1k" instead.
    while scaled >= 999.5 && suffix < SUFFIXES.len() - 1 {
        scaled /= 1000.0;
        suffix += 1;
    }
    let digits = significant(scaled);
    if digits == "0" {
        return digits;
    }
    format!("{sign}{digits}{}", SUFFIXES[suffix])
}

/// A duration given in microseconds, in the unit that keeps it short:
/// `2.4 µs`, `850 µs`, `1.5 ms`, `3.2 s`.
pub fn human_us(us: f64) -> String {
    if !us.is_finite() {
        return "n/a".into();
    }
    let magnitude = us.abs();
    if magnitude < 999.5 {
        format!("{} µs", human(us))
    } else if magnitude < 999_500.0 {
        format!("{} ms", human(us / 1e3))
    } else {
        format!("{} s", human(us / 1e6))
    }
}

/// A [`Duration`] the way [`human_us`] writes it (`10 s`, `250 ms`).
pub fn human_duration(duration: Duration) -> String {
    human_us(duration.as_secs_f64() * 1e6)
}

/// `value` with three significant digits, trailing zeros removed.
fn significant(value: f64) -> String {
    if value == 0.0 {
        return "0".into();
    }
    let decimals = if value >= 99.95 {
        0
    } else if value >= 9.995 {
        1
    } else if value >= 0.9995 {
        2
    } else {
        // Below one: enough decimals for three significant digits, capped
        // so a stray 1e-12 does not print a wall of zeros.
        (2 - value.log10().floor() as i32).clamp(0, 6) as usize
    };
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_get_suffixes_and_three_significant_digits() {
        assert_eq!(human(3_500_000.0), "3.5M");
        assert_eq!(human(120_000.0), "120k");
        assert_eq!(human(1_234_567.0), "1.23M");
        assert_eq!(human(1_000_000.0), "1M");
        assert_eq!(human(999.0), "999");
        assert_eq!(human(999.7), "1k");
        assert_eq!(human(999_999.0), "1M");
        assert_eq!(human(2.4), "2.4");
        assert_eq!(human(12.26), "12.3");
        assert_eq!(human(0.0123), "0.0123");
        assert_eq!(human(0.0), "0");
        assert_eq!(human(-0.0), "0");
        assert_eq!(human(-45_000.0), "-45k");
        assert_eq!(human(7.2e12), "7.2T");
        assert_eq!(human(f64::NAN), "n/a");
    }

    #[test]
    fn durations_pick_their_unit() {
        assert_eq!(human_us(2.4), "2.4 µs");
        assert_eq!(human_us(0.35), "0.35 µs");
        assert_eq!(human_us(850.0), "850 µs");
        assert_eq!(human_us(999.7), "1 ms");
        assert_eq!(human_us(1_500.0), "1.5 ms");
        assert_eq!(human_us(3_200_000.0), "3.2 s");
        assert_eq!(human_us(0.0), "0 µs");
        assert_eq!(human_duration(Duration::from_secs(10)), "10 s");
        assert_eq!(human_duration(Duration::from_millis(250)), "250 ms");
    }
}
