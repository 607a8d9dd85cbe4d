//! Latency histograms (log-linear, under 1% error, fixed size) and the payload that carries a sequence number and
//! a send timestamp.

use serde_json::{json, Value};

/// Values below this are counted exactly.
const LINEAR: u64 = 256;
/// Sub-buckets per power of two above [`LINEAR`] (7 significant bits).
const SUB: u64 = 128;
/// The largest value kept (about 12.7 days in microseconds); larger ones count as this.
const MAX_VALUE: u64 = 1 << 40;
const BUCKETS: usize = (LINEAR + (40 - 7) * SUB) as usize;

/// Latencies in microseconds.
#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
    sum: u128,
}

impl Histogram {
    pub(crate) fn new() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
            sum: 0,
        }
    }

    pub(crate) fn record(&mut self, micros: u64) {
        let value = micros.min(MAX_VALUE - 1);
        if let Some(count) = self.counts.get_mut(index(value)) {
            *count += 1;
        }
        self.total += 1;
        self.max = self.max.max(micros);
        self.sum += u128::from(micros);
    }

    pub(crate) fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// The number of values recorded.
    pub(crate) fn count(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (0..=1), in microseconds; 0 when empty.
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return value(index).min(self.max);
            }
        }
        self.max
    }

    /// `{"count", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms"}`.
    pub(crate) fn json(&self) -> Value {
        let mean = if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        };
        json!({
            "count": self.total,
            "mean_ms": ms(mean),
            "p50_ms": ms(self.quantile(0.50) as f64),
            "p90_ms": ms(self.quantile(0.90) as f64),
            "p99_ms": ms(self.quantile(0.99) as f64),
            "max_ms": ms(self.max as f64),
        })
    }

    /// `p50 X ms, p90 …, p99 …, max …`.
    pub(crate) fn summary(&self) -> String {
        format!(
            "p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            self.quantile(0.50) as f64 / 1000.0,
            self.quantile(0.90) as f64 / 1000.0,
            self.quantile(0.99) as f64 / 1000.0,
            self.max as f64 / 1000.0
        )
    }
}

/// Microseconds as milliseconds, rounded to microseconds.
fn ms(micros: f64) -> f64 {
    (micros).round() / 1000.0
}

fn index(value: u64) -> usize {
    if value < LINEAR {
        return value as usize;
    }
    let msb = 63 - u64::from(value.leading_zeros());
    let shift = msb - 7;
    let top = value >> shift;
    (LINEAR + (shift - 1) * SUB + (top - SUB)) as usize
}

/// The middle of bucket `index`.
fn value(index: usize) -> u64 {
    let index = index as u64;
    if index < LINEAR {
        return index;
    }
    let offset = index - LINEAR;
    let shift = offset / SUB + 1;
    let top = offset % SUB + SUB;
    (top << shift) + ((1 << shift) >> 1)
}

/// The smallest payload: 16 hex digits of sequence, `:`, 16 of timestamp, `:`, and some padding.
pub(crate) const MIN_PAYLOAD: usize = 40;

/// A payload string of exactly `size` bytes (`size` >= [`MIN_PAYLOAD`]) carrying `seq` and `micros`; only
/// characters that JSON does not escape.
pub(crate) fn payload(seq: u64, micros: u64, size: usize) -> String {
    let mut text = format!("{seq:016x}:{micros:016x}:");
    while text.len() < size {
        text.push('.');
    }
    text
}

/// The sequence number and timestamp of a [`payload`].
pub(crate) fn parse_payload(text: &str) -> Option<(u64, u64)> {
    let seq = u64::from_str_radix(text.get(..16)?, 16).ok()?;
    let micros = u64::from_str_radix(text.get(17..33)?, 16).ok()?;
    Some((seq, micros))
}

/// One bit per expected sequence number.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    words: Vec<u64>,
    len: u64,
}

impl Seen {
    pub(crate) fn new(len: u64) -> Seen {
        Seen {
            words: vec![0; len.div_ceil(64) as usize],
            len,
        }
    }

    /// Marks everything `other` marked (of the same length).
    pub(crate) fn merge(&mut self, other: &Seen) {
        for (mine, theirs) in self.words.iter_mut().zip(&other.words) {
            *mine |= theirs;
        }
    }

    /// Whether `seq` was marked.
    pub(crate) fn contains(&self, seq: u64) -> bool {
        self.words
            .get((seq / 64) as usize)
            .is_some_and(|word| word & (1u64 << (seq % 64)) != 0)
    }

    /// Marks `seq`; `Some(true)` if new, `Some(false)` if seen before, `None` if out of range.
    pub(crate) fn mark(&mut self, seq: u64) -> Option<bool> {
        if seq >= self.len {
            return None;
        }
        let word = self.words.get_mut((seq / 64) as usize)?;
        let bit = 1u64 << (seq % 64);
        let new = *word & bit == 0;
        *word |= bit;
        Some(new)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_close() {
        let mut last = 0;
        for value_in in (0..5_000_000u64).step_by(7) {
            let bucket = index(value_in);
            assert!(bucket >= last);
            last = bucket;
            let back = value(bucket);
            let error = (back as f64 - value_in as f64).abs() / (value_in.max(1) as f64);
            assert!(error <= 0.01, "{value_in} -> {back}");
        }
        assert!(index(MAX_VALUE - 1) < BUCKETS);
    }

    #[test]
    fn quantiles() {
        let mut histogram = Histogram::new();
        for micros in 1..=1000 {
            histogram.record(micros);
        }
        assert!((histogram.quantile(0.5) as i64 - 500).abs() <= 5);
        assert!((histogram.quantile(0.99) as i64 - 990).abs() <= 8);
        assert_eq!(histogram.quantile(1.0), 1000);
    }

    #[test]
    fn payload_round_trip() {
        let text = payload(42, 123_456, 64);
        assert_eq!(text.len(), 64);
        assert_eq!(parse_payload(&text), Some((42, 123_456)));
        let mut seen = Seen::new(100);
        assert_eq!(seen.mark(5), Some(true));
        assert_eq!(seen.mark(5), Some(false));
        assert_eq!(seen.mark(100), None);
    }
}
