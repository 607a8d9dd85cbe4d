//! [`Timestamp`]: a UTC instant, an ISO-8601 string in JSON and the timestamp extension (type −1) in
//! MessagePack.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::{EXT_STRUCT, NANOS_PER_SEC, TIMESTAMP_EXT};

/// A UTC instant with nanosecond precision (.NET `DateTime` in UTC, JS `Date`).
///
/// JSON: an ISO-8601 string such as `"2000-01-01T00:00:00Z"`, with fractional seconds only when nonzero.
/// MessagePack: the timestamp extension (type −1), in its smallest form (timestamp 32, 64 or 96).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    secs: i64,
    nanos: u32,
}

impl Timestamp {
    /// The instant `secs` seconds plus `nanos` nanoseconds after 1970-01-01T00:00:00Z (`nanos` may exceed one
    /// second; it carries into the seconds, saturating at the ends of the range).
    pub fn from_unix(secs: i64, nanos: u32) -> Timestamp {
        Timestamp {
            secs: secs.saturating_add(i64::from(nanos / NANOS_PER_SEC)),
            nanos: nanos % NANOS_PER_SEC,
        }
    }

    /// The current time.
    pub fn now() -> Timestamp {
        Timestamp::from(SystemTime::now())
    }

    /// Whole seconds since the Unix epoch (negative before 1970).
    pub fn unix_secs(&self) -> i64 {
        self.secs
    }

    /// The nanoseconds past [`Timestamp::unix_secs`], below 1,000,000,000.
    pub fn subsec_nanos(&self) -> u32 {
        self.nanos
    }

    /// The MessagePack timestamp extension body (without the type byte), in its smallest form.
    pub(crate) fn to_ext_data(self) -> Vec<u8> {
        let secs = self.secs;
        if (0..1 << 34).contains(&secs) {
            let packed = (u64::from(self.nanos) << 34) | secs.unsigned_abs();
            match u32::try_from(packed) {
                Ok(small) => small.to_be_bytes().to_vec(),
                Err(_) => packed.to_be_bytes().to_vec(),
            }
        } else {
            let mut data = Vec::with_capacity(12);
            data.extend_from_slice(&self.nanos.to_be_bytes());
            data.extend_from_slice(&secs.to_be_bytes());
            data
        }
    }

    /// Reads a timestamp extension body (4, 8 or 12 bytes); `None` if malformed.
    pub(crate) fn from_ext_data(data: &[u8]) -> Option<Timestamp> {
        match data.len() {
            4 => {
                let secs = u32::from_be_bytes(data.try_into().ok()?);
                Some(Timestamp::from_unix(i64::from(secs), 0))
            }
            8 => {
                let packed = u64::from_be_bytes(data.try_into().ok()?);
                let nanos = u32::try_from(packed >> 34).ok()?;
                let secs = i64::try_from(packed & ((1 << 34) - 1)).ok()?;
                (nanos < NANOS_PER_SEC).then_some(Timestamp { secs, nanos })
            }
            12 => {
                let nanos = u32::from_be_bytes(data.get(..4)?.try_into().ok()?);
                let secs = i64::from_be_bytes(data.get(4..)?.try_into().ok()?);
                (nanos < NANOS_PER_SEC).then_some(Timestamp { secs, nanos })
            }
            _ => None,
        }
    }
}

impl From<SystemTime> for Timestamp {
    fn from(time: SystemTime) -> Timestamp {
        match time.duration_since(UNIX_EPOCH) {
            Ok(after) => Timestamp::from_unix(i64::try_from(after.as_secs()).unwrap_or(i64::MAX), after.subsec_nanos()),
            Err(before) => {
                let before = before.duration();
                let secs = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
                match before.subsec_nanos() {
                    0 => Timestamp::from_unix(secs.saturating_neg(), 0),
                    nanos => Timestamp::from_unix(secs.saturating_neg().saturating_sub(1), NANOS_PER_SEC - nanos),
                }
            }
        }
    }
}

impl From<Timestamp> for SystemTime {
    /// Saturates at the limits of `SystemTime` on this platform.
    fn from(time: Timestamp) -> SystemTime {
        let nanos = Duration::from_nanos(u64::from(time.nanos));
        if time.secs >= 0 {
            UNIX_EPOCH
                .checked_add(Duration::from_secs(time.secs.unsigned_abs()) + nanos)
                .unwrap_or(UNIX_EPOCH)
        } else {
            UNIX_EPOCH
                .checked_sub(Duration::from_secs(time.secs.unsigned_abs()))
                .and_then(|t| t.checked_add(nanos))
                .unwrap_or(UNIX_EPOCH)
        }
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // day is in 1..=31 and month in 1..=12, so the casts cannot truncate.
    (year, month as u32, day as u32)
}

/// (year, month, day) to days since 1970-01-01; the inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = i64::from(month);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl fmt::Display for Timestamp {
    /// ISO-8601 in UTC: `2000-01-01T00:00:00Z`, or `2000-01-01T00:00:00.5Z` with a fraction.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.secs.div_euclid(86_400);
        let in_day = self.secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
            in_day / 3600,
            in_day % 3600 / 60,
            in_day % 60
        )?;
        if self.nanos != 0 {
            let fraction = format!("{:09}", self.nanos);
            write!(f, ".{}", fraction.trim_end_matches('0'))?;
        }
        f.write_str("Z")
    }
}

/// Why a string is not an ISO-8601 timestamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an ISO-8601 date and time: {0}")]
pub struct TimestampParseError(&'static str);

impl FromStr for Timestamp {
    type Err = TimestampParseError;

    /// Parses `YYYY-MM-DDTHH:MM:SS[.fraction][Z|±HH:MM]`; without an offset the time is taken as UTC.
    fn from_str(text: &str) -> Result<Timestamp, TimestampParseError> {
        let bytes = text.as_bytes();
        let digits = |from: usize, len: usize| -> Result<u32, TimestampParseError> {
            let part = bytes.get(from..from + len).ok_or(TimestampParseError("too short"))?;
            part.iter().try_fold(0u32, |acc, &b| {
                if b.is_ascii_digit() {
                    Ok(acc * 10 + u32::from(b - b'0'))
                } else {
                    Err(TimestampParseError("expected a digit"))
                }
            })
        };
        let expect = |at: usize, allowed: &[u8]| -> Result<(), TimestampParseError> {
            match bytes.get(at) {
                Some(b) if allowed.contains(b) => Ok(()),
                _ => Err(TimestampParseError("unexpected separator")),
            }
        };
        let year = digits(0, 4)?;
        expect(4, b"-")?;
        let month = digits(5, 2)?;
        expect(7, b"-")?;
        let day = digits(8, 2)?;
        expect(10, b"Tt ")?;
        let hour = digits(11, 2)?;
        expect(13, b":")?;
        let minute = digits(14, 2)?;
        expect(16, b":")?;
        let second = digits(17, 2)?;
        if !(1..=12).contains(&month) || day < 1 || day > days_in_month(i64::from(year), month) {
            return Err(TimestampParseError("date out of range"));
        }
        if hour > 23 || minute > 59 || second > 59 {
            return Err(TimestampParseError("time out of range"));
        }
        let mut at = 19;
        let mut nanos = 0u32;
        if bytes.get(at) == Some(&b'.') {
            at += 1;
            let start = at;
            while let Some(b) = bytes.get(at).filter(|b| b.is_ascii_digit()) {
                // Digits past nanoseconds are dropped (truncation, as .NET does past ticks).
                if at - start < 9 {
                    nanos = nanos * 10 + u32::from(b - b'0');
                }
                at += 1;
            }
            if at == start {
                return Err(TimestampParseError("empty fraction"));
            }
            for _ in (at - start)..9 {
                nanos *= 10;
            }
        }
        let offset_secs: i64 = match bytes.get(at) {
            None => 0,
            Some(b'Z' | b'z') if at + 1 == bytes.len() => 0,
            Some(sign @ (b'+' | b'-')) => {
                let hours = digits(at + 1, 2)?;
                expect(at + 3, b":")?;
                let minutes = digits(at + 4, 2)?;
                if at + 6 != bytes.len() || hours > 23 || minutes > 59 {
                    return Err(TimestampParseError("bad offset"));
                }
                let offset = i64::from(hours * 3600 + minutes * 60);
                if *sign == b'-' {
                    -offset
                } else {
                    offset
                }
            }
            Some(_) => return Err(TimestampParseError("unexpected trailing characters")),
        };
        let days = days_from_civil(i64::from(year), month, day);
        let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_secs;
        Ok(Timestamp { secs, nanos })
    }
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            let data = self.to_ext_data();
            serializer.serialize_newtype_struct(EXT_STRUCT, &(TIMESTAMP_EXT, serde_bytes::Bytes::new(&data)))
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Timestamp, D::Error> {
        struct TimestampVisitor;
        impl<'de> Visitor<'de> for TimestampVisitor {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a date and time (ISO-8601 string or MessagePack timestamp)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Timestamp, E> {
                v.parse().map_err(E::custom)
            }
            // rmp-serde and rmpv hand an extension to `visit_newtype_struct` as a `(i8, bytes)` sequence.
            fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<Timestamp, D::Error> {
                let (kind, data): (i8, serde_bytes::ByteBuf) = Deserialize::deserialize(deserializer)?;
                if kind != TIMESTAMP_EXT {
                    return Err(de::Error::custom(format_args!(
                        "extension type {kind} is not a timestamp"
                    )));
                }
                Timestamp::from_ext_data(&data).ok_or_else(|| de::Error::custom("a malformed MessagePack timestamp"))
            }
        }
        if deserializer.is_human_readable() {
            deserializer.deserialize_str(TimestampVisitor)
        } else {
            // `deserialize_any` so that an ISO string is accepted from MessagePack too.
            deserializer.deserialize_any(TimestampVisitor)
        }
    }
}
