//! Instants for the `Date*` operators: W3C-profile ISO 8601 or epoch seconds.
//!
//! Accepted forms (§2.4): `YYYY`, `YYYY-MM`, `YYYY-MM-DD`, `YYYY-MM-DDThh:mmTZD`,
//! `YYYY-MM-DDThh:mm:ssTZD`, `YYYY-MM-DDThh:mm:ss.sTZD` where `TZD` is `Z` or `±hh:mm`
//! (dates without a time are midnight UTC), or epoch seconds with an optional fraction
//! and sign. A string of exactly four digits is read as a year, not as epoch second
//! 0–9999. Fractions beyond nanoseconds are truncated. The result is nanoseconds since
//! the Unix epoch, so either form compares with the other.

/// Parses `text` into nanoseconds since 1970-01-01T00:00:00Z; `None` if it is not a
/// date in one of the accepted forms.
pub(crate) fn parse_instant(text: &str) -> Option<i128> {
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (int, frac, has_dot) = match unsigned.split_once('.') {
        Some((int, frac)) => (int, frac, true),
        None => (unsigned, "", false),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let is_year = text.len() == 4 && all_digits(text);
    let is_epoch = !int.is_empty()
        && all_digits(int)
        && all_digits(frac)
        && (!has_dot || !frac.is_empty())
        && !is_year;
    if is_epoch {
        parse_epoch(text.starts_with('-'), int, frac)
    } else {
        parse_iso(text)
    }
}

fn parse_epoch(negative: bool, int: &str, frac: &str) -> Option<i128> {
    if int.len() > 18 {
        return None;
    }
    let seconds: i128 = int.parse().ok()?;
    let nanos = fraction_nanos(frac)?;
    let total = seconds * 1_000_000_000 + nanos;
    Some(if negative { -total } else { total })
}

/// `"5"` → 500 000 000 ns; digits past the ninth are dropped.
fn fraction_nanos(frac: &str) -> Option<i128> {
    let mut nanos: i128 = 0;
    for i in 0..9 {
        let digit = match frac.as_bytes().get(i) {
            Some(b) => i128::from(b.checked_sub(b'0').filter(|d| *d <= 9)?),
            None => 0,
        };
        nanos = nanos * 10 + digit;
    }
    Some(nanos)
}

fn parse_iso(text: &str) -> Option<i128> {
    let mut c = Cursor(text.as_bytes());
    let year = c.digits(4)?;
    let (mut month, mut day) = (1, 1);
    let mut seconds_of_day: i128 = 0;
    let mut nanos: i128 = 0;
    let mut offset_seconds: i128 = 0;
    if c.eat(b'-') {
        month = c.digits(2)?;
        if c.eat(b'-') {
            day = c.digits(2)?;
            if c.eat(b'T') {
                let hour = c.digits(2)?;
                c.expect(b':')?;
                let minute = c.digits(2)?;
                let mut second = 0;
                if c.eat(b':') {
                    second = c.digits(2)?;
                    if c.eat(b'.') {
                        let frac = c.take_digits();
                        if frac.is_empty() {
                            return None;
                        }
                        nanos = fraction_nanos(std::str::from_utf8(frac).ok()?)?;
                    }
                }
                if hour > 23 || minute > 59 || second > 59 {
                    return None;
                }
                seconds_of_day = i128::from(hour * 3600 + minute * 60 + second);
                offset_seconds = c.zone()?;
            }
        }
    }
    if !c.0.is_empty() || !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month)
    {
        return None;
    }
    let days = days_from_civil(i64::from(year), month, day);
    Some((i128::from(days) * 86_400 + seconds_of_day - offset_seconds) * 1_000_000_000 + nanos)
}

/// A tiny byte cursor for the fixed-width ISO forms.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn eat(&mut self, b: u8) -> bool {
        match self.0.split_first() {
            Some((first, rest)) if *first == b => {
                self.0 = rest;
                true
            }
            _ => false,
        }
    }

    fn expect(&mut self, b: u8) -> Option<()> {
        self.eat(b).then_some(())
    }

    /// Exactly `n` ASCII digits as a number.
    fn digits(&mut self, n: usize) -> Option<u32> {
        let (head, rest) = self.0.split_at_checked(n)?;
        let mut value = 0u32;
        for b in head {
            value = value * 10 + u32::from(b.checked_sub(b'0').filter(|d| *d <= 9)?);
        }
        self.0 = rest;
        Some(value)
    }

    fn take_digits(&mut self) -> &[u8] {
        let n = self.0.iter().take_while(|b| b.is_ascii_digit()).count();
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }

    /// `Z` or `±hh:mm`, as seconds east of UTC.
    fn zone(&mut self) -> Option<i128> {
        if self.eat(b'Z') {
            return Some(0);
        }
        let sign = if self.eat(b'+') {
            1
        } else if self.eat(b'-') {
            -1
        } else {
            return None;
        };
        let hours = self.digits(2)?;
        self.expect(b':')?;
        let minutes = self.digits(2)?;
        if hours > 23 || minutes > 59 {
            return None;
        }
        Some(sign * i128::from(hours * 3600 + minutes * 60))
    }
}

fn is_leap(year: u32) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const S: i128 = 1_000_000_000;

    #[test]
    fn iso_forms() {
        assert_eq!(parse_instant("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_instant("1970"), Some(0));
        assert_eq!(parse_instant("1970-01"), Some(0));
        assert_eq!(parse_instant("1970-01-02"), Some(86_400 * S));
        assert_eq!(
            parse_instant("2024-06-30T23:59:59Z"),
            Some(1_719_791_999 * S)
        );
        assert_eq!(parse_instant("2024-06-30T23:59Z"), Some(1_719_791_940 * S));
        assert_eq!(
            parse_instant("2024-07-01T01:59:59+02:00"),
            Some(1_719_791_999 * S)
        );
        assert_eq!(
            parse_instant("2024-06-30T20:59:59.5-03:00"),
            Some(1_719_791_999 * S + S / 2)
        );
        assert_eq!(parse_instant("2000-02-29"), Some(951_782_400 * S));
    }

    #[test]
    fn epoch_forms() {
        assert_eq!(parse_instant("1719791999"), Some(1_719_791_999 * S));
        assert_eq!(parse_instant("0"), Some(0));
        assert_eq!(parse_instant("1.25"), Some(S + S / 4));
        assert_eq!(parse_instant("-86400"), Some(-86_400 * S));
        // Four digits are a year.
        assert_eq!(parse_instant("2024"), parse_instant("2024-01-01T00:00:00Z"));
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            "yesterday",
            "2024-13-01",
            "2023-02-29",
            "2024-06-31",
            "2024-06-30T24:00:00Z",
            "2024-06-30T23:59:59",
            "2024-06-30 23:59:59Z",
            "2024-06-30T23:59:59.Z",
            "2024-06-30T23:59:59+0200",
            "2024-6-30",
            "24-06-30",
            "1.",
            "1e9",
            "${aws:CurrentTime}",
            "2024-06-30T23:59:59Zjunk",
        ] {
            assert_eq!(parse_instant(bad), None, "{bad:?}");
        }
    }
}
