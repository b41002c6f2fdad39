//! Exact decimal numbers for the `Numeric*` operators.
//!
//! The design says "compare as decimals"; `f64` would call `9007199254740993` equal to
//! `9007199254740992`, so numbers are kept as digit strings and compared exactly.
//! Accepted form: an optional sign, digits, and an optional `.` followed by digits.

use std::cmp::Ordering;

/// A decimal number, normalised so that equal values have equal representations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decimal {
    negative: bool,
    /// Integer digits without leading zeros (empty for zero).
    int: String,
    /// Fraction digits without trailing zeros.
    frac: String,
}

impl Decimal {
    /// Parses `-12`, `3.25`, `+0.5`; `None` for anything else.
    pub(crate) fn parse(text: &str) -> Option<Decimal> {
        let (negative, unsigned) = match text.as_bytes().first()? {
            b'-' => (true, text.get(1..)?),
            b'+' => (false, text.get(1..)?),
            _ => (false, text),
        };
        let (int, frac) = match unsigned.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (unsigned, None),
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(int) || frac.is_some_and(|f| !digits(f)) {
            return None;
        }
        let int = int.trim_start_matches('0').to_owned();
        let frac = frac.unwrap_or_default().trim_end_matches('0').to_owned();
        let zero = int.is_empty() && frac.is_empty();
        Some(Decimal {
            negative: negative && !zero,
            int,
            frac,
        })
    }

    fn cmp_magnitude(&self, other: &Decimal) -> Ordering {
        self.int
            .len()
            .cmp(&other.int.len())
            .then_with(|| self.int.cmp(&other.int))
            // Without trailing zeros, digit strings of a fraction compare lexically.
            .then_with(|| self.frac.cmp(&other.frac))
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self.negative, other.negative) {
            (false, true) => Ordering::Greater,
            (true, false) => Ordering::Less,
            (false, false) => self.cmp_magnitude(other),
            (true, true) => other.cmp_magnitude(self),
        }
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).unwrap()
    }

    #[test]
    fn parses_and_normalises() {
        assert_eq!(d("10"), d("010.000"));
        assert_eq!(d("-0"), d("0"));
        assert_eq!(d("+1.5"), d("1.50"));
        for bad in [
            "", "-", "1.", ".5", "1e3", "0x10", " 1", "1 ", "1.2.3", "--1",
        ] {
            assert_eq!(Decimal::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn orders_exactly() {
        let ordered = [
            "-100",
            "-10.5",
            "-10.25",
            "-1",
            "0",
            "0.05",
            "0.25",
            "0.5",
            "1",
            "9.99",
            "10",
            "9007199254740992",
            "9007199254740993",
        ];
        for pair in ordered.windows(2) {
            assert!(d(pair[0]) < d(pair[1]), "{} < {}", pair[0], pair[1]);
        }
    }
}
