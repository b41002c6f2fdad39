//! Dates as SigV4 writes them: `X-Amz-Date` (`20150830T123600Z`) and, as a fallback for
//! verification, the HTTP `Date` header (`Sun, 30 Aug 2015 12:36:00 GMT`).
//!
//! Parsing is strict and done by hand so that no input can panic and no lenient variant (a sign, a
//! fraction, an offset) slips through: the date string is part of what is signed.

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

use crate::SigV4Error;

/// Formats a time as `X-Amz-Date` (basic ISO 8601, UTC, whole seconds), e.g. `20150830T123600Z`.
///
/// Used for the `x-amz-date` header, the string to sign, and the times in error messages.
pub fn amz_date(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Parses an `X-Amz-Date` value (`YYYYMMDD'T'HHMMSS'Z'`, exactly 16 characters, UTC).
///
/// Anything else is [`SigV4Error::BadDate`], which carries the value as received.
pub fn parse_amz_date(s: &str) -> Result<OffsetDateTime, SigV4Error> {
    let bad = || SigV4Error::BadDate(s.to_owned());
    let b = s.as_bytes();
    if b.len() != 16 || b.get(8) != Some(&b'T') || b.get(15) != Some(&b'Z') {
        return Err(bad());
    }
    let num = |from: usize, to: usize| -> Result<u32, SigV4Error> {
        let digits = b.get(from..to).ok_or_else(bad)?;
        digits.iter().try_fold(0u32, |acc, &d| {
            if d.is_ascii_digit() {
                Ok(acc * 10 + u32::from(d - b'0'))
            } else {
                Err(bad())
            }
        })
    };
    let year = i32::try_from(num(0, 4)?).map_err(|_| bad())?;
    let month = u8::try_from(num(4, 6)?).map_err(|_| bad())?;
    let day = u8::try_from(num(6, 8)?).map_err(|_| bad())?;
    let hour = u8::try_from(num(9, 11)?).map_err(|_| bad())?;
    let minute = u8::try_from(num(11, 13)?).map_err(|_| bad())?;
    let second = u8::try_from(num(13, 15)?).map_err(|_| bad())?;
    let month = Month::try_from(month).map_err(|_| bad())?;
    let date = Date::from_calendar_date(year, month, day).map_err(|_| bad())?;
    let time = Time::from_hms(hour, minute, second).map_err(|_| bad())?;
    Ok(PrimitiveDateTime::new(date, time).assume_utc())
}

/// Parses an HTTP `Date` header in the IMF-fixdate form of RFC 9110
/// (`Sun, 30 Aug 2015 12:36:00 GMT`), the form every SDK writes.
///
/// Only used when a request has no `X-Amz-Date`, as AWS allows.
pub(crate) fn parse_http_date(s: &str) -> Result<OffsetDateTime, SigV4Error> {
    let bad = || SigV4Error::BadDate(s.to_owned());
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    PrimitiveDateTime::parse(s.trim(), &format)
        .map(PrimitiveDateTime::assume_utc)
        .map_err(|_| bad())
}

/// How AWS writes an allowed skew in its messages: `5 min.`, or seconds when not whole minutes.
pub(crate) fn skew_text(skew: std::time::Duration) -> String {
    let secs = skew.as_secs();
    let (minutes, rest) = (secs / 60, secs % 60);
    if rest == 0 {
        format!("{minutes} min.")
    } else {
        format!("{secs} sec.")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use time::macros::datetime;

    #[test]
    fn formats_and_parses() {
        let t = datetime!(2015-08-30 12:36:00 UTC);
        assert_eq!(amz_date(t), "20150830T123600Z");
        assert_eq!(parse_amz_date("20150830T123600Z").unwrap(), t);
        let other_offset = datetime!(2015-08-30 14:36:00 +02:00);
        assert_eq!(amz_date(other_offset), "20150830T123600Z");
    }

    #[test]
    fn rejects_malformed_dates() {
        for bad in [
            "",
            "20150830T123600",
            "20150830T123600z",
            "2015-08-30T12:36:00Z",
            "20150830 123600Z",
            "20151330T123600Z",
            "20150230T123600Z",
            "20150830T246000Z",
            "+2015830T123600Z",
            "20150830T123600ZZ",
        ] {
            assert_eq!(
                parse_amz_date(bad),
                Err(SigV4Error::BadDate(bad.to_owned())),
                "{bad}"
            );
        }
    }

    #[test]
    fn parses_http_date() {
        assert_eq!(
            parse_http_date("Sun, 30 Aug 2015 12:36:00 GMT").unwrap(),
            datetime!(2015-08-30 12:36:00 UTC)
        );
        assert!(parse_http_date("Sun, 30 Aug 2015 12:36:00 +0000").is_err());
    }

    #[test]
    fn skew_wording() {
        assert_eq!(skew_text(std::time::Duration::from_secs(300)), "5 min.");
        assert_eq!(skew_text(std::time::Duration::from_secs(90)), "90 sec.");
    }
}
