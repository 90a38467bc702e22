//! The request window of one peer: how many chunk requests to keep in flight to it, from the
//! rate at which it delivers verified bytes and its quickest reply.
//!
//! Owns the byte count since the last measurement, the smoothed rate and the quickest reply of
//! one peer. It does not know the peer's current limit nor how fast the limit may grow: the
//! scheduler applies the target it returns. Sans-IO: the caller passes the time elapsed.

use std::time::Duration;

use crate::config::{CHUNK_AVG, MAX_IN_FLIGHT};

/// Measured download rate of one peer, and its quickest reply since its path last changed.
#[derive(Debug, Default)]
pub struct RateMeter {
    bytes: u64,
    ewma: Option<f64>,
    min_latency: Option<Duration>,
}

impl RateMeter {
    /// The peer delivered `len` verified bytes, `latency` after they were asked for.
    pub fn delivered(&mut self, len: u64, latency: Duration) {
        self.bytes += len;
        self.min_latency = Some(self.min_latency.map_or(latency, |m| m.min(latency)));
    }

    /// A new stream may take a new path (a direct connection instead of a relay): learn the
    /// peer's latency again.
    pub fn path_changed(&mut self) {
        self.min_latency = None;
    }

    /// Fold the bytes delivered over the `elapsed` since the last call into the smoothed rate,
    /// and return the window it calls for (see [`in_flight_target`]).
    pub fn measure(&mut self, elapsed: Duration) -> usize {
        let secs = elapsed.as_secs_f64().max(0.001);
        let now = std::mem::take(&mut self.bytes) as f64 / secs;
        // Old rates keep 70% of their weight per second, however often this runs.
        let keep = 0.7f64.powf(secs);
        let ewma = self.ewma.map_or(now, |e| keep * e + (1.0 - keep) * now);
        self.ewma = Some(ewma);
        in_flight_target(ewma, self.min_latency)
    }
}

/// How many requests to keep in flight to a peer that delivers `rate` bytes per second and
/// whose quickest reply took `min_latency`: enough for four times that latency at that rate
/// (the path's round trip, with room for the rate to grow and for jitter), but at least 10 ms
/// and at most 0.5 s of it, and 0.5 s while no reply has come. More than needed only queues
/// chunks in buffers: on a fast, short link that costs both ends CPU (cold caches), and it is
/// what a dying peer takes with it.
pub fn in_flight_target(rate: f64, min_latency: Option<Duration>) -> usize {
    const MIN_QUEUE: f64 = 0.01;
    const MAX_QUEUE: f64 = 0.5;
    const CHUNK: f64 = CHUNK_AVG as f64;
    let queue = min_latency.map_or(MAX_QUEUE, |l| {
        (4.0 * l.as_secs_f64()).clamp(MIN_QUEUE, MAX_QUEUE)
    });
    ((rate * queue / CHUNK).ceil() as usize).clamp(4, MAX_IN_FLIGHT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn chunks(bytes: f64) -> usize {
        (bytes / CHUNK_AVG as f64).ceil() as usize
    }

    #[test]
    fn requests_in_flight_follow_rate_and_latency() {
        // No reply yet: half a second of the rate, as far as the cap allows.
        assert_eq!(in_flight_target(10e6, None), chunks(5e6));
        assert_eq!(in_flight_target(500e6, None), MAX_IN_FLIGHT);
        // A long path: four round trips of data, enough to keep it full as the rate grows.
        assert_eq!(in_flight_target(10e6, Some(ms(100))), chunks(4e6));
        // A short, fast path (loopback, LAN): 10 ms of data, not half a second of it.
        assert_eq!(in_flight_target(500e6, Some(ms(1))), chunks(5e6));
        assert!(in_flight_target(500e6, Some(ms(1))) < MAX_IN_FLIGHT);
        // A slow reply never asks for more than half a second; a trickle keeps a few.
        assert_eq!(in_flight_target(10e6, Some(ms(900))), chunks(5e6));
        assert_eq!(in_flight_target(1e3, Some(ms(5))), 4);
    }

    #[test]
    fn the_meter_smooths_the_rate_and_keeps_the_quickest_reply() {
        let mut m = RateMeter::default();
        // 10 MB in a second, quickest reply 100 ms: four round trips of 10 MB/s.
        m.delivered(6_000_000, ms(300));
        m.delivered(4_000_000, ms(100));
        assert_eq!(m.measure(Duration::from_secs(1)), chunks(4e6));
        // A silent second: the old rate keeps 70% of its weight.
        assert_eq!(m.measure(Duration::from_secs(1)), chunks(0.7 * 4e6));
        // A new path: the latency is learnt again, and until then half a second of the rate.
        m.path_changed();
        let rate = 0.7 * 0.7 * 10e6;
        assert_eq!(m.measure(Duration::from_secs(1)), chunks(rate * 0.5));
        m.delivered(0, ms(1));
        assert_eq!(m.measure(Duration::ZERO), 4, "10 ms at 4.9 MB/s: the floor");
    }
}
