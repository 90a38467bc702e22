//! The request window of one peer: how many chunk requests to keep in flight to it, from the
//! rate at which it delivers verified bytes, the mean size of its chunks and its quickest reply.
//! The window is a number of bytes turned into requests of the peer's mean chunk, so a peer
//! serving chunks of 300 B gets as many bytes in flight as one serving chunks of 256 KiB, in
//! many more requests; both bytes (`MAX_IN_FLIGHT_BYTES`) and requests (`MAX_IN_FLIGHT`) are
//! capped.
//!
//! Owns the byte and reply counts since the last measurement, the smoothed rate and mean chunk,
//! and the quickest reply of one peer. It does not know the peer's current limit nor how fast the limit may grow: the
//! scheduler applies the target it returns. Sans-IO: the caller passes the time elapsed.

use std::time::Duration;

use crate::config::{CHUNK_AVG, MAX_IN_FLIGHT, MAX_IN_FLIGHT_BYTES};

/// The fewest requests kept in flight to a peer, whatever its rate: a slow measurement must not
/// leave a peer's path idle between replies.
pub const MIN_REQUESTS: usize = 4;

/// The fewest requests kept in flight to a last-resort seed (the publisher). It serves every
/// subscriber at once, so the requests queued at it add up over the swarm: 4 each, with 40
/// subscribers sharing 10 Mbit/s, was 32 s of its upload, past the chunk timeout, and every
/// chunk it sent was decided that long before it arrived. Its other requests wait at the
/// subscriber, which may still get them from a peer.
pub const MIN_SEED_REQUESTS: usize = 1;

/// Measured download rate of one peer, and its quickest reply since its path last changed.
#[derive(Debug, Default)]
pub struct RateMeter {
    bytes: u64,
    replies: u64,
    ewma: Option<f64>,
    /// Smoothed mean length of the chunks it delivered.
    mean_chunk: Option<f64>,
    min_latency: Option<Duration>,
}

impl RateMeter {
    /// The peer delivered `len` verified bytes, `latency` after they were asked for.
    pub fn delivered(&mut self, len: u64, latency: Duration) {
        self.bytes += len;
        self.replies += 1;
        self.min_latency = Some(self.min_latency.map_or(latency, |m| m.min(latency)));
    }

    /// A new stream may take a new path (a direct connection instead of a relay): learn the
    /// peer's latency again.
    pub fn path_changed(&mut self) {
        self.min_latency = None;
    }

    /// Fold the bytes delivered over the `elapsed` since the last call into the smoothed rate,
    /// and return the window it calls for, at least `floor` requests (see [`in_flight_target`]).
    pub fn measure(&mut self, elapsed: Duration, floor: usize) -> usize {
        let secs = elapsed.as_secs_f64().max(0.001);
        let now = std::mem::take(&mut self.bytes) as f64 / secs;
        // Old rates keep 70% of their weight per second, however often this runs.
        let keep = 0.7f64.powf(secs);
        let ewma = self.ewma.map_or(now, |e| keep * e + (1.0 - keep) * now);
        self.ewma = Some(ewma);
        let replies = std::mem::take(&mut self.replies);
        if replies > 0 {
            let mean = now * secs / replies as f64;
            let smoothed = self
                .mean_chunk
                .map_or(mean, |m| keep * m + (1.0 - keep) * mean);
            self.mean_chunk = Some(smoothed);
        }
        in_flight_target(ewma, self.min_latency, self.mean_chunk, floor)
    }
}

/// The least time of a peer's rate kept in flight, up to [`BUSY_QUEUE_BYTES`], however short
/// its path. A peer that serves from a busy thread (the publisher, answering a million small
/// chunks on one core) replies late because it is busy, not because the path is long: with only
/// 10 ms of its rate in flight its quickest reply grew with the queue and the queue with it, and
/// its window stayed at 90-225 requests of 1 KiB. This lets it reach the request cap and keeps a
/// fast peer fed between the replies it batches.
const BUSY_QUEUE: f64 = 0.1;

/// At most this many bytes in flight from [`BUSY_QUEUE`]: on a gigabit loopback 100 ms would be
/// 50 MB in buffers, which only costs both ends cold caches.
const BUSY_QUEUE_BYTES: f64 = 2.0 * 1024.0 * 1024.0;

/// How many requests to keep in flight to a peer that delivers `rate` bytes per second in
/// chunks of `mean_chunk` bytes (the average chunk while unknown) and whose quickest reply took
/// `min_latency`: enough bytes for four times that latency at that rate (the path's round trip,
/// with room for the rate to grow and for jitter), but at least 10 ms and at most 0.5 s of it,
/// and 0.5 s while no reply has come; at least 100 ms of it up to 2 MiB (see [`BUSY_QUEUE`]); as requests of the mean chunk, at least `floor` (see
/// [`MIN_REQUESTS`]), at most `MAX_IN_FLIGHT` and at most `MAX_IN_FLIGHT_BYTES` of such chunks.
/// More than needed only queues chunks in buffers: on a fast, short link that costs both ends
/// CPU (cold caches), and it is what a dying peer takes with it.
pub fn in_flight_target(
    rate: f64,
    min_latency: Option<Duration>,
    mean_chunk: Option<f64>,
    floor: usize,
) -> usize {
    const MIN_QUEUE: f64 = 0.01;
    const MAX_QUEUE: f64 = 0.5;
    let floor = floor.clamp(1, MAX_IN_FLIGHT);
    let chunk = mean_chunk.unwrap_or(CHUNK_AVG as f64).max(1.0);
    let queue = min_latency.map_or(MAX_QUEUE, |l| {
        (4.0 * l.as_secs_f64()).clamp(MIN_QUEUE, MAX_QUEUE)
    });
    let bytes = (rate * queue).max((rate * BUSY_QUEUE).min(BUSY_QUEUE_BYTES));
    let most = ((MAX_IN_FLIGHT_BYTES as f64 / chunk) as usize).clamp(floor, MAX_IN_FLIGHT);
    ((bytes / chunk).ceil() as usize).clamp(floor, most)
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

    /// The cap in requests of `CHUNK_AVG`: the byte cap.
    const CAP: usize = MAX_IN_FLIGHT_BYTES / CHUNK_AVG as usize;

    #[test]
    fn requests_in_flight_follow_rate_and_latency() {
        // No reply yet: half a second of the rate, as far as the cap allows.
        assert_eq!(
            in_flight_target(10e6, None, None, MIN_REQUESTS),
            chunks(5e6)
        );
        assert_eq!(in_flight_target(500e6, None, None, MIN_REQUESTS), CAP);
        // A long path: four round trips of data, enough to keep it full as the rate grows.
        assert_eq!(
            in_flight_target(10e6, Some(ms(100)), None, MIN_REQUESTS),
            chunks(4e6)
        );
        // A short, fast path (loopback, LAN): 10 ms of data, not half a second of it.
        assert_eq!(
            in_flight_target(500e6, Some(ms(1)), None, MIN_REQUESTS),
            chunks(5e6)
        );
        assert!(in_flight_target(500e6, Some(ms(1)), None, MIN_REQUESTS) < CAP);
        // A short path to a peer busy with small chunks: 100 ms of its rate, not 10 ms, up to
        // 2 MiB, so that its late replies do not shrink its window.
        assert_eq!(
            in_flight_target(10e6, Some(ms(1)), Some(1000.0), MIN_REQUESTS),
            1000
        );
        assert_eq!(
            in_flight_target(50e6, Some(ms(1)), Some(4096.0), MIN_REQUESTS),
            2 * 1024 * 1024 / 4096
        );
        // A slow reply never asks for more than half a second; a trickle keeps a few.
        assert_eq!(
            in_flight_target(10e6, Some(ms(900)), None, MIN_REQUESTS),
            chunks(5e6)
        );
        assert_eq!(in_flight_target(1e3, Some(ms(5)), None, MIN_REQUESTS), 4);
        assert_eq!(
            in_flight_target(1e3, Some(ms(5)), None, MIN_SEED_REQUESTS),
            1,
            "a seed's floor is lower"
        );
    }

    /// The window is bytes: a peer serving chunks of 1 KiB gets as many bytes in flight as one
    /// serving 256 KiB chunks at the same rate, in 256 times the requests, up to the caps.
    #[test]
    fn small_chunks_get_as_many_bytes_in_flight_in_more_requests() {
        let big = in_flight_target(5e6, Some(ms(50)), Some(CHUNK_AVG as f64), MIN_REQUESTS);
        let small = in_flight_target(5e6, Some(ms(50)), Some(1024.0), MIN_REQUESTS);
        assert_eq!(big, chunks(5e6 * 0.2));
        assert_eq!(small, (5e6 * 0.2 / 1024.0f64).ceil() as usize);
        assert!(small >= 256 * (big - 1), "{small} against {big}");
        // Capped in requests, however small, and in bytes, however large.
        assert_eq!(
            in_flight_target(500e6, None, Some(300.0), MIN_REQUESTS),
            MAX_IN_FLIGHT
        );
        let huge = (1 << 20) as f64;
        assert_eq!(
            in_flight_target(500e6, None, Some(huge), MIN_REQUESTS),
            CAP / 4
        );
    }

    #[test]
    fn the_meter_learns_the_mean_chunk() {
        let mut m = RateMeter::default();
        // 1,000 chunks of 1,000 bytes in 10 ms each: 1 MB/s, 100 ms of it in flight (the busy
        // floor; four round trips would be 40 ms).
        for _ in 0..1000 {
            m.delivered(1000, ms(10));
        }
        assert_eq!(m.measure(Duration::from_secs(1), MIN_REQUESTS), 100);
    }

    #[test]
    fn the_meter_smooths_the_rate_and_keeps_the_quickest_reply() {
        let mut m = RateMeter::default();
        // 10 MB in a second in chunks of 250 kB, quickest reply 100 ms: four round trips of
        // 10 MB/s, in requests of 250 kB.
        let mean = Some(250e3);
        (0..24).for_each(|_| m.delivered(250_000, ms(300)));
        (0..16).for_each(|_| m.delivered(250_000, ms(100)));
        let target = |rate, latency| in_flight_target(rate, Some(latency), mean, MIN_REQUESTS);
        assert_eq!(
            m.measure(Duration::from_secs(1), MIN_REQUESTS),
            target(10e6, ms(100))
        );
        assert_eq!(target(10e6, ms(100)), 16);
        // A silent second: the old rate keeps 70% of its weight, the mean chunk all of it.
        assert_eq!(
            m.measure(Duration::from_secs(1), MIN_REQUESTS),
            target(7e6, ms(100))
        );
        // A new path: the latency is learnt again, and until then half a second of the rate.
        m.path_changed();
        let rate = 0.7 * 0.7 * 10e6;
        assert_eq!(
            m.measure(Duration::from_secs(1), MIN_REQUESTS),
            in_flight_target(rate, None, mean, MIN_REQUESTS)
        );
        m.delivered(0, ms(1));
        assert_eq!(
            m.measure(Duration::ZERO, MIN_REQUESTS),
            4,
            "100 ms at 4.9 MB/s is two chunks: the floor of requests"
        );
    }
}
