//! The availability path at a big revision, for `scripts/bench-bigtree` (a benchmark, not a
//! test): the node's own code (`OwnAvailability` on the sending side, the fetch `Scheduler`
//! and its picker on the receiving side, the wire encoding between them) driven with a
//! synthetic revision of N distinct chunks, no sockets.
//!
//! For each N given (default 1,000,000 and 10,000,000) it prints:
//! - the full map of a sender holding half the chunks at random: messages, bytes, the largest
//!   frame against `MAX_CONTROL_FRAME`, and the receiver's time to apply it;
//! - a transfer: the sender gains chunks at each RATE (chunks a second; 2,000 is 500 MB/s of
//!   256 KiB chunks, 30,000 is small files) for 20 s of simulated time, announcing every
//!   `HAVE_INTERVAL`; per `Have`: bytes, the sender's cost (take and encode), the receiver's
//!   (decode and apply to the scheduler and its picker, then poll it as the fetch loop does);
//!   and the control bytes a second the sender sends each peer;
//! - what the whole bitfield every `HAVE_INTERVAL` (protocol 4) would have cost: its frame,
//!   and whether it fits the cap.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use treecast::config::{HAVE_INTERVAL, MAX_CONTROL_FRAME};
use treecast::swarm::{Action, FeedPeer, OwnAvailability, ScheduleConfig, Scheduler};
use treecast::tree::ContentHash;
use treecast::wire::{self, ControlMsg, Have};

const REVISION: u64 = 1;
const SIMULATED: Duration = Duration::from_secs(20);

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// N distinct chunk hashes (distinct by construction; sorted by the order like real ones).
fn chunks(n: u32) -> Vec<ContentHash> {
    (0..n)
        .map(|i| {
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_le_bytes());
            b[4..8].copy_from_slice(&i.to_le_bytes());
            ContentHash(b)
        })
        .collect()
}

fn frames(msgs: &[Have]) -> Vec<Vec<u8>> {
    msgs.iter()
        .map(|m| wire::encode(&ControlMsg::Have(m.clone())))
        .collect()
}

/// The receiving side: one download of the revision, the sender one partial peer in it.
fn receiver(hashes: &[ContentHash]) -> Scheduler<u8> {
    let own = OwnAvailability::new(REVISION, hashes.iter().copied());
    let now = Instant::now();
    let config = ScheduleConfig::with_salt(7);
    let mut s = Scheduler::new(
        config,
        hashes.iter().copied(),
        &HashSet::new(),
        Some(own),
        now,
    );
    s.handle_peer_up(1, &FeedPeer::default());
    drain(&mut s);
    s
}

/// Poll the scheduler dry, as the fetch loop does after each change; panics on a ban.
fn drain(s: &mut Scheduler<u8>) {
    let now = Instant::now();
    while let Some(a) = s.poll(now) {
        if let Action::Ban { reason, .. } = a {
            panic!("the receiver banned an honest sender: {reason}");
        }
    }
}

/// Decode `frames` and apply them, then poll the scheduler (the picks that follow); the time
/// each took.
fn apply(s: &mut Scheduler<u8>, frames: &[Vec<u8>]) -> (Duration, Duration) {
    let (mut applying, mut picking) = (Duration::ZERO, Duration::ZERO);
    for f in frames {
        let start = Instant::now();
        let Ok(ControlMsg::Have(have)) = wire::decode::<ControlMsg>(f) else {
            panic!("not a Have");
        };
        s.handle_have(1, &have, Instant::now());
        applying += start.elapsed();
        let start = Instant::now();
        drain(s);
        picking += start.elapsed();
    }
    (applying, picking)
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn full_map(n: u32, hashes: &[ContentHash], rng: &mut Rng) {
    let mut own = OwnAvailability::new(REVISION, hashes.iter().copied());
    own.take_announcement();
    for _ in 0..n / 2 {
        own.mark(&hashes[rng.below(n as u64) as usize]);
    }
    let mut s = receiver(hashes);
    let start = Instant::now();
    let f = frames(&own.full_map());
    let encode = start.elapsed();
    let (apply, _) = apply(&mut s, &f);
    let bytes: usize = f.iter().map(Vec::len).sum();
    let largest = f.iter().map(Vec::len).max().unwrap_or(0);
    println!(
        "  full map, half held: {} frames, {:.2} MiB, largest {} B (cap {} B, {}); encode {:.1} ms, decode+apply {:.1} ms",
        f.len(),
        mib(bytes),
        largest,
        MAX_CONTROL_FRAME,
        if largest <= MAX_CONTROL_FRAME { "under" } else { "OVER" },
        encode.as_secs_f64() * 1e3,
        apply.as_secs_f64() * 1e3,
    );
}

fn transfer(n: u32, hashes: &[ContentHash], rate: u32, rng: &mut Rng) {
    let mut own = OwnAvailability::new(REVISION, hashes.iter().copied());
    let mut s = receiver(hashes);
    // The first broadcast (a full map of nothing) is not counted: it is once per revision.
    let first = frames(&own.take_announcement());
    apply(&mut s, &first);
    let per_interval = (rate as f64 * HAVE_INTERVAL.as_secs_f64()) as u32;
    let intervals = (SIMULATED.as_secs_f64() / HAVE_INTERVAL.as_secs_f64()) as u32;
    let (mut bytes, mut msgs, mut largest) = (0usize, 0usize, 0usize);
    let (mut send, mut recv, mut picks) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for _ in 0..intervals {
        for _ in 0..per_interval {
            own.mark(&hashes[rng.below(n as u64) as usize]);
        }
        let start = Instant::now();
        let f = frames(&own.take_announcement());
        send += start.elapsed();
        let (applying, picking) = apply(&mut s, &f);
        recv += applying;
        picks += picking;
        msgs += f.len();
        bytes += f.iter().map(Vec::len).sum::<usize>();
        largest = largest.max(f.iter().map(Vec::len).max().unwrap_or(0));
    }
    let haves = intervals as f64;
    println!(
        "  {rate:>6} chunks/s: {:.0} B/Have ({msgs} frames, largest {largest} B); send {:.1} µs/Have; receive (decode, apply to the picker) {:.1} µs/Have, {:.2} µs/chunk; {:.0} B/s to each peer",
        bytes as f64 / haves,
        us(send) / haves,
        us(recv) / haves,
        us(recv) / (haves * per_interval as f64),
        bytes as f64 / SIMULATED.as_secs_f64(),
    );
    println!(
        "                     (then the picks the fetch loop makes: {:.1} ms in all, not availability's cost)",
        picks.as_secs_f64() * 1e3
    );
}

fn main() {
    let sizes: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a chunk count"))
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1_000_000, 10_000_000]
    } else {
        sizes
    };
    for n in sizes {
        let mut rng = Rng(0x2545_F491_4F6C_DD1D ^ n as u64);
        println!("revision of {n} distinct chunks:");
        let whole = n.div_ceil(8) as usize + 12;
        println!(
            "  protocol 4 (the whole bitfield every {} ms): {} B a frame ({} the {} B cap), {:.2} MiB/s to each peer",
            HAVE_INTERVAL.as_millis(),
            whole,
            if whole <= MAX_CONTROL_FRAME { "under" } else { "OVER" },
            MAX_CONTROL_FRAME,
            mib(whole) / HAVE_INTERVAL.as_secs_f64(),
        );
        let hashes = chunks(n);
        full_map(n, &hashes, &mut rng);
        for rate in [2_000, 30_000] {
            transfer(n, &hashes, rate, &mut rng);
        }
    }
}
