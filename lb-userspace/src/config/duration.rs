//! Durations as operators write them in the file: a whole number and a unit, `"200ms"`,
//! `"30s"`, `"15m"`, `"1h"`. Deliberately small: no fractions, no compound forms, so that
//! every value reads one way only.

use std::time::Duration;

/// Longest idle timeout accepted; anything longer is almost certainly a typo in the unit.
pub(super) const MAX: Duration = Duration::from_secs(7 * 24 * 60 * 60);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum DurationError {
    #[error(
        "invalid duration {0:?}: expected a whole number followed by ms, s, m or h, \
         such as \"200ms\", \"30s\", \"15m\" or \"1h\""
    )]
    Syntax(String),
    #[error("duration {0:?} is zero: it must be longer than 0")]
    Zero(String),
    #[error("duration {0:?} is too long: at most 7 days (\"168h\")")]
    TooLong(String),
}

/// Parses `text`, which must be a duration longer than zero and at most [`MAX`].
pub(super) fn parse(text: &str) -> Result<Duration, DurationError> {
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(DurationError::Syntax(text.to_owned())),
    };
    if number.is_empty() {
        return Err(DurationError::Syntax(text.to_owned()));
    }
    // A number too big for u64 milliseconds is far beyond MAX, not malformed.
    let millis = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_ms))
        .ok_or_else(|| DurationError::TooLong(text.to_owned()))?;
    let duration = Duration::from_millis(millis);
    if duration.is_zero() {
        Err(DurationError::Zero(text.to_owned()))
    } else if duration > MAX {
        Err(DurationError::TooLong(text.to_owned()))
    } else {
        Ok(duration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("007s"), Ok(Duration::from_secs(7)));
        assert_eq!(parse("168h"), Ok(MAX));
    }

    #[test]
    fn rejects_malformed() {
        for text in [
            "",
            "s",
            "30",
            "30 s",
            " 30s",
            "30s ",
            "-5s",
            "+5s",
            "1.5s",
            "5 parsecs",
            "30S",
            "1d",
            "1h30m",
            "٣s",
            "30sec",
        ] {
            assert_eq!(
                parse(text),
                Err(DurationError::Syntax(text.into())),
                "{text:?}"
            );
        }
    }

    #[test]
    fn rejects_zero_and_too_long() {
        assert_eq!(parse("0ms"), Err(DurationError::Zero("0ms".into())));
        assert_eq!(parse("169h"), Err(DurationError::TooLong("169h".into())));
        assert_eq!(
            parse("604800001ms"),
            Err(DurationError::TooLong("604800001ms".into()))
        );
        let huge = "99999999999999999999999h";
        assert_eq!(parse(huge), Err(DurationError::TooLong(huge.into())));
        let overflow = "18446744073709551615h";
        assert_eq!(
            parse(overflow),
            Err(DurationError::TooLong(overflow.into()))
        );
    }

    #[test]
    fn message_says_what_is_allowed() {
        let message = parse("5 parsecs").unwrap_err().to_string();
        assert_eq!(
            message,
            "invalid duration \"5 parsecs\": expected a whole number followed by ms, s, m or h, \
             such as \"200ms\", \"30s\", \"15m\" or \"1h\""
        );
    }
}
