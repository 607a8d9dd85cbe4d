//! Deserializers that accept the forms the sources produce: TOML values, and strings from the environment and
//! the command line.

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::time::Duration;

use serde::de::{Error, MapAccess, SeqAccess, Visitor};
use serde::Deserializer;

/// A visitor that accepts a string (and, if `scalars`, a number or boolean, as text) and parses it.
struct Parse<T> {
    expecting: &'static str,
    scalars: bool,
    parse: fn(&str) -> Result<T, String>,
    _marker: PhantomData<T>,
}

impl<T> Parse<T> {
    fn new(expecting: &'static str, scalars: bool, parse: fn(&str) -> Result<T, String>) -> Self {
        Parse {
            expecting,
            scalars,
            parse,
            _marker: PhantomData,
        }
    }

    fn scalar<E: Error>(&self, text: String) -> Result<T, E> {
        if self.scalars {
            (self.parse)(&text).map_err(E::custom)
        } else {
            Err(E::custom(format!("expected {}, found `{text}`", self.expecting)))
        }
    }
}

impl<'de, T> Visitor<'de> for Parse<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: Error>(self, value: &str) -> Result<T, E> {
        (self.parse)(value).map_err(E::custom)
    }

    fn visit_u64<E: Error>(self, value: u64) -> Result<T, E> {
        self.scalar(value.to_string())
    }

    fn visit_i64<E: Error>(self, value: i64) -> Result<T, E> {
        self.scalar(value.to_string())
    }

    fn visit_f64<E: Error>(self, value: f64) -> Result<T, E> {
        self.scalar(value.to_string())
    }

    fn visit_bool<E: Error>(self, value: bool) -> Result<T, E> {
        self.scalar(value.to_string())
    }
}

/// Optional values: `Some` of the inner parse.
struct Optional<T>(Parse<T>);

impl<'de, T> Visitor<'de> for Optional<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.expecting)
    }

    fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self.0).map(Some)
    }
}

fn text(value: &str) -> Result<String, String> {
    Ok(value.to_owned())
}

fn parse_address(value: &str) -> Result<SocketAddr, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("`{value}` is not an address of the form ip:port (such as 127.0.0.1:5000)"))
}

fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value.trim())
        .map_err(|error| format!("`{value}` is not a duration such as \"200ms\" or \"15s\": {error}"))
}

/// Bytes, or a number with a unit: B, KB, KiB, MB, MiB, GB, GiB.
fn parse_size(value: &str) -> Result<usize, String> {
    let trimmed = value.trim();
    let digits = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(digits);
    let multiplier: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "kib" => 1 << 10,
        "mb" => 1000 * 1000,
        "mib" => 1 << 20,
        "gb" => 1000 * 1000 * 1000,
        "gib" => 1 << 30,
        _ => return Err(format!("`{value}` is not a size such as 65536, \"64KiB\" or \"1MiB\"")),
    };
    number
        .parse::<usize>()
        .ok()
        .and_then(|number| number.checked_mul(multiplier))
        .ok_or_else(|| format!("`{value}` is not a size such as 65536, \"64KiB\" or \"1MiB\""))
}

pub(super) fn lenient_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    deserializer.deserialize_any(Parse::new("a string", true, text))
}

pub(super) fn optional_lenient_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    deserializer.deserialize_option(Optional(Parse::new("a string", true, text)))
}

pub(super) fn address<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    deserializer.deserialize_any(Parse::new(
        "an address such as \"127.0.0.1:5000\"",
        false,
        parse_address,
    ))
}

pub(super) fn optional_address<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<SocketAddr>, D::Error> {
    deserializer.deserialize_option(Optional(Parse::new(
        "an address such as \"127.0.0.1:7001\"",
        false,
        parse_address,
    )))
}

pub(super) fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    deserializer.deserialize_any(Parse::new("a duration such as \"15s\"", false, parse_duration))
}

pub(super) fn optional_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    deserializer.deserialize_option(Optional(Parse::new(
        "a duration such as \"200ms\"",
        false,
        parse_duration,
    )))
}

pub(super) fn size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    deserializer.deserialize_any(Parse::new("a size such as 65536 or \"64KiB\"", true, parse_size))
}

/// The hubs of a node: a table `{ demo = bool }` or a list of hub names.
pub(super) struct Hubs;

/// The hubs the configuration can name.
const HUB_NAMES: &[&str] = &["demo"];

impl<'de> Visitor<'de> for Hubs {
    type Value = super::HubsSection;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a table such as `{ demo = true }` or a list of hub names such as `[\"demo\"]`")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut hubs = super::HubsSection { demo: false };
        while let Some(name) = seq.next_element::<String>()? {
            match name.as_str() {
                "demo" => hubs.demo = true,
                other => return Err(A::Error::unknown_variant(other, HUB_NAMES)),
            }
        }
        Ok(hubs)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut hubs = super::HubsSection::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "demo" => hubs.demo = map.next_value()?,
                other => return Err(A::Error::unknown_field(other, HUB_NAMES)),
            }
        }
        Ok(hubs)
    }
}

/// A list of strings: a sequence, or one string of comma-separated items (as from the environment).
pub(super) fn string_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    struct List;

    impl<'de> Visitor<'de> for List {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of strings, or comma-separated strings")
        }

        fn visit_str<E: Error>(self, value: &str) -> Result<Vec<String>, E> {
            let value = value.trim();
            let value = value
                .strip_prefix('[')
                .and_then(|inner| inner.strip_suffix(']'))
                .unwrap_or(value);
            Ok(value
                .split(',')
                .map(|item| item.trim().trim_matches('"').trim().to_owned())
                .filter(|item| !item.is_empty())
                .collect())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
            while let Some(item) = seq.next_element::<String>()? {
                items.push(item);
            }
            Ok(items)
        }
    }

    deserializer.deserialize_any(List)
}
