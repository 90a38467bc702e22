//! The last ten minutes of chunk throughput for the dashboard's chart, sans-IO: fed the byte
//! totals per source (publisher, peer, relay) about once a second with the time passed in, it
//! keeps one sample of rates per look, up and down, over [`THROUGHPUT_WINDOW_MS`].
//!
//! Must not: read the clock, do I/O, or hold more than [`MAX_SAMPLES`] samples.

use std::collections::{BTreeMap, VecDeque};

use super::traffic::ByteCounts;

/// How far back the chart looks.
pub const THROUGHPUT_WINDOW_MS: u64 = 10 * 60 * 1000;
/// Most samples kept, whatever the pace of the looks.
pub const MAX_SAMPLES: usize = 720;

/// Bytes per second moved between two looks, by source.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ThroughputSample {
    /// The end of the interval.
    pub unix_ms: u64,
    /// Source ("publisher", "peer", "relay") to bytes per second.
    pub up: BTreeMap<String, f64>,
    pub down: BTreeMap<String, f64>,
}

/// The samples of the last [`THROUGHPUT_WINDOW_MS`].
#[derive(Debug, Default)]
pub(crate) struct Throughput {
    last: Option<(u64, BTreeMap<String, ByteCounts>)>,
    samples: VecDeque<ThroughputSample>,
}

impl Throughput {
    /// The byte totals per source at `now_ms`; the sample since the previous look, if there
    /// was one and time moved on.
    pub fn record(
        &mut self,
        now_ms: u64,
        totals: &BTreeMap<String, ByteCounts>,
    ) -> Option<ThroughputSample> {
        let previous = self.last.replace((now_ms, totals.clone()));
        let (then_ms, then) = previous?;
        if now_ms <= then_ms {
            return None;
        }
        let secs = (now_ms - then_ms) as f64 / 1000.0;
        let mut sample = ThroughputSample {
            unix_ms: now_ms,
            up: BTreeMap::new(),
            down: BTreeMap::new(),
        };
        for (source, now) in totals {
            let old = then.get(source).copied().unwrap_or_default();
            let up = now.up.saturating_sub(old.up) as f64 / secs;
            let down = now.down.saturating_sub(old.down) as f64 / secs;
            sample.up.insert(source.clone(), up);
            sample.down.insert(source.clone(), down);
        }
        self.samples.push_back(sample.clone());
        while self.samples.len() > MAX_SAMPLES
            || self
                .samples
                .front()
                .is_some_and(|s| now_ms.saturating_sub(s.unix_ms) > THROUGHPUT_WINDOW_MS)
        {
            self.samples.pop_front();
        }
        Some(sample)
    }

    /// The samples held, oldest first.
    pub fn window(&self) -> Vec<ThroughputSample> {
        self.samples.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(publisher_down: u64, peer_up: u64) -> BTreeMap<String, ByteCounts> {
        BTreeMap::from([
            (
                "publisher".to_string(),
                ByteCounts {
                    up: 0,
                    down: publisher_down,
                },
            ),
            (
                "peer".to_string(),
                ByteCounts {
                    up: peer_up,
                    down: 0,
                },
            ),
        ])
    }

    #[test]
    fn rates_are_the_bytes_between_looks_over_the_time_between_them() {
        let mut t = Throughput::default();
        assert_eq!(
            t.record(1_000, &totals(0, 0)),
            None,
            "the first look is a base"
        );
        let s = t.record(3_000, &totals(4_000, 1_000)).expect("a sample");
        assert_eq!(s.down["publisher"], 2_000.0);
        assert_eq!(s.up["peer"], 500.0);
        assert_eq!(s.up["publisher"], 0.0);
        assert_eq!(t.record(3_000, &totals(9_000, 0)), None, "no time passed");
        let s = t.record(4_000, &totals(9_000, 0)).unwrap();
        assert_eq!(s.up["peer"], 0.0, "a total that shrank is no negative rate");
        assert_eq!(t.window().len(), 2);
    }

    #[test]
    fn the_window_keeps_ten_minutes_and_at_most_max_samples() {
        let mut t = Throughput::default();
        for i in 0..1_000u64 {
            t.record(i * 1_000, &totals(i, 0));
        }
        let w = t.window();
        assert!(w.len() <= MAX_SAMPLES);
        let span = w.last().unwrap().unix_ms - w.first().unwrap().unix_ms;
        assert!(span <= THROUGHPUT_WINDOW_MS, "{span}");
        assert_eq!(w.last().unwrap().unix_ms, 999_000);
        let mut fast = Throughput::default();
        for i in 0..2_000u64 {
            fast.record(i * 10, &totals(i, 0));
        }
        assert_eq!(fast.window().len(), MAX_SAMPLES);
    }
}
