//! swarm-sim: a discrete-event simulator of one publisher and N subscribers that runs the
//! node's own swarm state machines (the fetch scheduler and picker, the seeding policy, session
//! slots, peer-exchange dials) in simulated time over modelled links, and prints, for each N,
//! the slowest completion against the lower bound, the publisher's upload in copies of the tree
//! and control traffic per node per second.
//!
//! Owns the command line, the tree and link-rate draws, and the table; the swarm is in `sim`,
//! the link model in `link`.

mod link;
mod sim;

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

use link::Sharing;
use sim::{Outcome, Rng, Setup, Sim};

/// Simulate a treecast swarm and print how fast it spreads one revision.
#[derive(Debug, Parser)]
#[command(name = "swarm-sim")]
struct Args {
    /// Subscriber counts to simulate, one run each.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000,10000")]
    n: Vec<usize>,
    /// The tree, as COUNTxBYTES groups of files (`1x33554432,200x40000`). A file is cut into
    /// 256 KiB chunks (the last shorter); files under that are one chunk each.
    #[arg(long, default_value = "1x67108864")]
    tree: String,
    /// Subscribers' uplink in Mbit/s: `20` (fixed) or `10-50` (uniform, drawn per node).
    #[arg(long, default_value = "20")]
    up: String,
    /// Subscribers' downlink in Mbit/s, as --up.
    #[arg(long, default_value = "20")]
    down: String,
    /// The publisher's uplink in Mbit/s.
    #[arg(long, default_value_t = 20.0)]
    publisher_up: f64,
    /// One-way latency between any two nodes, in milliseconds.
    #[arg(long, default_value_t = 20.0)]
    latency_ms: f64,
    /// Each node's peer-set bound (the node's --max-peers).
    #[arg(long, default_value_t = 32)]
    max_peers: usize,
    /// Joined subscribers a newcomer dials besides the publisher (the DHT, in the node).
    #[arg(long, default_value_t = 4)]
    bootstrap: usize,
    /// Subscribers join at uniform random times over this many seconds (0: all at the start).
    #[arg(long, default_value_t = 0.0)]
    join_spread: f64,
    /// Fraction of subscribers that leave for good at a uniform random time before the lower
    /// bound; they are not counted in the completions.
    #[arg(long, default_value_t = 0.0)]
    leave: f64,
    /// Subscribers leave as soon as they are done (the node's --once), instead of seeding.
    #[arg(long)]
    once: bool,
    /// The seeding policy's backstop in seconds (default: the node's SEED_HOLD).
    #[arg(long, default_value_t = treecast::config::SEED_HOLD.as_secs_f64())]
    seed_backstop: f64,
    /// Simulated seconds after which a run stops, done or not.
    #[arg(long, default_value_t = 3600.0)]
    max_time: f64,
    /// Seed of the random draws (rates, salts, joins, peer choices).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Experiment: subscribers announce what they gained every this many milliseconds instead
    /// of the node's `HAVE_INTERVAL`.
    #[arg(long)]
    have_ms: Option<f64>,
    /// Experiment: a peer that said it lacks a chunk is asked again after this many
    /// milliseconds instead of the node's `LACK_RETRY`.
    #[arg(long)]
    lack_retry_ms: Option<f64>,
    /// Experiment: end-game second requests after this many milliseconds instead of the
    /// node's `ENDGAME_AFTER`.
    #[arg(long)]
    endgame_ms: Option<f64>,
    /// Experiment, not what the node does: each node sends at most this many chunks at once,
    /// lanes waiting their turn in order (0: all at once, sharing the uplink, as the node's
    /// streams do).
    #[arg(long, default_value_t = 0)]
    upload_slots: usize,
    /// Experiment, not what the node does, with --upload-slots: a node with every slot busy
    /// answers further requests "not found" at once (BitTorrent's choke), so that the asker
    /// turns to another holder, instead of making its lane wait.
    #[arg(long)]
    busy_refuses: bool,
    /// The node's upload budget (`--upload-budget`; the default is the node's, none), in
    /// bytes, 0 for none: the node's own `UploadBudget` decides, a chunk counting from its
    /// first byte sent until its last has left, as the node's wire count says. Give 0 with
    /// --upload-slots.
    #[arg(long, default_value_t = treecast::config::DEFAULT_UPLOAD_BUDGET)]
    upload_budget: u64,
    /// The publisher's upload budget in bytes, when it differs from --upload-budget (0: none).
    #[arg(long)]
    publisher_budget: Option<u64>,
    /// Share links max-min fairly over the whole swarm (as congestion control tends to)
    /// instead of each flow taking the smaller of its two ends' even shares. Costs every flow
    /// at each change: for runs up to a few hundred subscribers.
    #[arg(long)]
    max_min: bool,
    /// Experiment, with --max-min: what all nodes together move, in Mbit/s, is capped at this
    /// (one more link that every flow crosses). For a lab whose CPUs bound the swarm before its
    /// links do: this machine's lab, 41 nodes and their delay daemons on 2 cores.
    #[arg(long)]
    total_mbit: Option<f64>,
    /// Experiment: how long a busy peer is left alone, instead of the node's `BUSY_BACKOFF`
    #[arg(long)]
    busy_backoff_ms: Option<f64>,
    /// Also print, per run, what held it back: refusals, duplicates, when every chunk had left
    /// the publisher, and how long a chunk took on the wire between subscribers.
    #[arg(long)]
    why: bool,
    /// Print the swarm's state every this many simulated milliseconds, to standard error.
    #[arg(long)]
    trace_ms: Option<f64>,
}

/// How a link rate is drawn, in bytes per second.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Rate {
    Fixed(f64),
    Uniform(f64, f64),
}

impl Rate {
    fn parse(s: &str) -> Result<Rate> {
        let mbit = |v: &str| -> Result<f64> {
            let x: f64 = v.trim().parse().with_context(|| format!("rate {v:?}"))?;
            if !(x > 0.0 && x.is_finite()) {
                bail!("rate {v:?} must be a positive number of Mbit/s");
            }
            Ok(x * 1e6 / 8.0)
        };
        match s.split_once('-') {
            Some((a, b)) if mbit(a)? <= mbit(b)? => Ok(Rate::Uniform(mbit(a)?, mbit(b)?)),
            Some(_) => bail!("rate range {s:?} must go from low to high"),
            None => Ok(Rate::Fixed(mbit(s)?)),
        }
    }

    fn draw(self, rng: &mut Rng) -> f64 {
        match self {
            Rate::Fixed(r) => r,
            Rate::Uniform(a, b) => a + (b - a) * rng.unit(),
        }
    }
}

const CHUNK: u64 = treecast::tree::CHUNK_AVG as u64;

/// Chunk sizes of a tree given as `COUNTxBYTES,...`.
fn parse_tree(s: &str) -> Result<Vec<u64>> {
    let mut chunks = Vec::new();
    for group in s.split(',') {
        let (count, bytes) = group
            .split_once('x')
            .with_context(|| format!("tree group {group:?} is not COUNTxBYTES"))?;
        let count: u64 = count
            .trim()
            .parse()
            .with_context(|| format!("count in {group:?}"))?;
        let bytes: u64 = bytes
            .trim()
            .parse()
            .with_context(|| format!("bytes in {group:?}"))?;
        for _ in 0..count {
            let mut left = bytes;
            while left > 0 {
                chunks.push(left.min(CHUNK));
                left -= left.min(CHUNK);
            }
        }
    }
    if chunks.is_empty() {
        bail!("the tree {s:?} holds no bytes");
    }
    Ok(chunks)
}

/// The lower bound on the slowest completion: the publisher must send the tree once, the
/// swarm's uploads must carry N copies, and the slowest downlink must take one.
fn lower_bound(tree: u64, up: &[f64], down: &[f64]) -> f64 {
    let f = tree as f64;
    let subs = (up.len() - 1) as f64;
    let total_up: f64 = up.iter().sum();
    let slowest_down = down[1..].iter().copied().fold(f64::INFINITY, f64::min);
    (f / up[0]).max(subs * f / total_up).max(f / slowest_down)
}

fn setup(args: &Args, n: usize, chunks: &[u64]) -> Result<Setup> {
    let (up_rate, down_rate) = (Rate::parse(&args.up)?, Rate::parse(&args.down)?);
    let publisher = Rate::parse(&args.publisher_up.to_string())?;
    let mut rng = Rng::new(args.seed ^ n as u64);
    let mut up = vec![publisher.draw(&mut rng)];
    let mut down = vec![f64::MAX / 4.0];
    for _ in 0..n {
        up.push(up_rate.draw(&mut rng));
        down.push(down_rate.draw(&mut rng));
    }
    if args.busy_refuses && args.upload_slots == 0 {
        bail!("--busy-refuses needs --upload-slots: a node without slots is never busy");
    }
    let budgets = args.upload_budget > 0 || args.publisher_budget.is_some_and(|b| b > 0);
    if budgets && args.upload_slots > 0 {
        bail!(
            "--upload-budget and --upload-slots are two ways to \
             limit what a node sends at once: give --upload-budget 0 (and no --publisher-budget) \
             with --upload-slots"
        );
    }
    if let Some(m) = args.total_mbit {
        if !args.max_min {
            bail!("--total-mbit needs --max-min: the cap is a link every flow shares");
        }
        if !(m.is_finite() && m > 0.0) {
            bail!("--total-mbit must be a positive number of Mbit/s, not {m}");
        }
    }
    let tree: u64 = chunks.iter().sum();
    let bound = lower_bound(tree, &up, &down);
    let joins = (0..n)
        .map(|_| Duration::from_secs_f64(args.join_spread * rng.unit()))
        .collect();
    let leaves = (0..n)
        .map(|_| (rng.unit() < args.leave).then(|| Duration::from_secs_f64(bound * rng.unit())))
        .collect();
    Ok(Setup {
        chunks: chunks.to_vec(),
        up,
        down,
        latency: Duration::from_secs_f64(args.latency_ms / 1000.0),
        max_peers: args.max_peers,
        bootstrap: args.bootstrap,
        joins,
        leaves,
        once: args.once,
        seed_backstop: Duration::from_secs_f64(args.seed_backstop),
        have_interval: args.have_ms.map(|ms| Duration::from_secs_f64(ms / 1000.0)),
        lack_retry: args
            .lack_retry_ms
            .map(|ms| Duration::from_secs_f64(ms / 1000.0)),
        endgame_after: args
            .endgame_ms
            .map(|ms| Duration::from_secs_f64(ms / 1000.0)),
        upload_slots: args.upload_slots,
        busy_refuses: args.busy_refuses,
        upload_budget: args.upload_budget,
        publisher_budget: args.publisher_budget.unwrap_or(args.upload_budget),
        sharing: if args.max_min {
            Sharing::MaxMin
        } else {
            Sharing::Even
        },
        total: args.total_mbit.map(|m| m * 1e6 / 8.0),
        busy_backoff: args
            .busy_backoff_ms
            .map(|ms| Duration::from_secs_f64(ms / 1000.0)),
        trace_every: args.trace_ms.map(|ms| Duration::from_secs_f64(ms / 1000.0)),
        max_time: Duration::from_secs_f64(args.max_time),
        rng_seed: rng.next_u64(),
    })
}

fn row(n: usize, tree: u64, bound: f64, out: &Outcome, wall: Duration) -> String {
    let mut done: Vec<f64> = out
        .completions
        .iter()
        .flatten()
        .map(|d| d.as_secs_f64())
        .collect();
    done.sort_by(f64::total_cmp);
    let slowest = done.last().copied().unwrap_or(0.0);
    let median = done.get(done.len() / 2).copied().unwrap_or(0.0);
    let stayed = out.completions.len();
    let secs = out.end.as_secs_f64().max(1e-9);
    let per_node = |x: u64| x as f64 / (n + 1) as f64 / secs;
    format!(
        "| {n} | {}/{stayed} | {median:.1} | {slowest:.1} | {bound:.1} | {:.2}x | {:.2} | {:.1} | {:.0} | {:.1} | {:.1} |",
        done.len(),
        slowest / bound,
        out.publisher_sent as f64 / tree as f64,
        per_node(out.control_msgs),
        per_node(out.control_bytes),
        per_node(out.requests),
        wall.as_secs_f64(),
    )
}

/// What held a run back, on one line.
fn why(n: usize, out: &Outcome) -> String {
    format!(
        "  N={n}: refused by the publisher {}, by subscribers {} ({:.1} per subscriber), \
         {} of them busy; duplicates {}; every chunk out of the publisher at {:.2} s; {} chunks between \
         subscribers, {:.3} s each on the wire on average; {} events",
        out.refused_by_publisher,
        out.refused_by_peers,
        out.refused_by_peers as f64 / n as f64,
        out.refused_busy,
        out.duplicates,
        out.all_out.as_secs_f64(),
        out.peer_sends,
        out.peer_send_secs / out.peer_sends.max(1) as f64,
        out.events,
    )
}

fn main() -> Result<()> {
    let args = Args::parse();
    let chunks = parse_tree(&args.tree)?;
    let tree: u64 = chunks.iter().sum();
    println!(
        "tree {} bytes in {} chunks; up {} Mbit/s, down {} Mbit/s, publisher {} Mbit/s, \
         latency {} ms one way, max_peers {}, join spread {} s, leave {}, once {}, \
         upload budget {} B (publisher {} B), links shared {}{}",
        tree,
        chunks.len(),
        args.up,
        args.down,
        args.publisher_up,
        args.latency_ms,
        args.max_peers,
        args.join_spread,
        args.leave,
        args.once,
        args.upload_budget,
        args.publisher_budget.unwrap_or(args.upload_budget),
        if args.max_min { "max-min" } else { "evenly" },
        match args.total_mbit {
            Some(m) => format!(", the swarm's total capped at {m} Mbit/s"),
            None => String::new(),
        },
    );
    println!(
        "| N | done | median s | slowest s | bound s | / bound | publisher copies | ctrl msgs/node/s | \
         ctrl B/node/s | requests/node/s | wall s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for &n in &args.n {
        if n == 0 {
            bail!("--n needs at least one subscriber per run");
        }
        let setup = setup(&args, n, &chunks)?;
        let bound = lower_bound(tree, &setup.up, &setup.down);
        let stayed: Vec<bool> = setup.leaves.iter().map(|l| l.is_none()).collect();
        let started = Instant::now();
        let mut out = Sim::new(setup).run();
        out.completions = out
            .completions
            .into_iter()
            .zip(stayed)
            .filter_map(|(c, stayed)| stayed.then_some(c))
            .collect();
        println!("{}", row(n, tree, bound, &out, started.elapsed()));
        if args.why {
            println!("{}", why(n, &out));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_as_fixed_or_uniform_mbit() {
        assert_eq!(Rate::parse("8").unwrap(), Rate::Fixed(1e6));
        assert_eq!(Rate::parse("8-16").unwrap(), Rate::Uniform(1e6, 2e6));
        assert!(Rate::parse("16-8").is_err());
        assert!(Rate::parse("0").is_err());
        assert!(Rate::parse("fast").is_err());
    }

    #[test]
    fn a_tree_is_cut_into_chunks_and_small_files_stay_whole() {
        let chunks = parse_tree("1x600000,2x40000").unwrap();
        assert_eq!(
            chunks,
            vec![CHUNK, CHUNK, 600_000 - 2 * CHUNK, 40_000, 40_000]
        );
        assert!(parse_tree("3").is_err());
        assert!(parse_tree("1x0").is_err());
    }

    #[test]
    fn the_bound_is_the_largest_of_its_three_terms() {
        // Publisher-bound: F/U_pub.
        assert_eq!(lower_bound(100, &[10.0, 1000.0], &[0.0, 1000.0]), 10.0);
        // Swarm-bound: 3 copies over 20 + 3 × 10 of upload (the publisher alone: 5).
        let up = [20.0, 10.0, 10.0, 10.0];
        assert_eq!(lower_bound(100, &up, &[0.0, 1e9, 1e9, 1e9]), 6.0);
        // Downlink-bound: the slowest subscriber's downlink.
        assert_eq!(lower_bound(100, &[100.0, 100.0], &[0.0, 5.0]), 20.0);
    }

    #[test]
    fn a_small_swarm_finishes_every_mirror_and_the_publisher_sends_at_least_one_copy() {
        let args = Args::parse_from(["swarm-sim", "--tree", "1x8388608", "--latency-ms", "5"]);
        let chunks = parse_tree(&args.tree).unwrap();
        let tree: u64 = chunks.iter().sum();
        let setup = setup(&args, 5, &chunks).unwrap();
        let bound = lower_bound(tree, &setup.up, &setup.down);
        let out = Sim::new(setup).run();
        assert!(out.completions.iter().all(|c| c.is_some()), "{out:?}");
        let slowest = out
            .completions
            .iter()
            .flatten()
            .max()
            .unwrap()
            .as_secs_f64();
        assert!(
            slowest >= bound,
            "no run beats the bound: {slowest} < {bound}"
        );
        assert!(
            out.publisher_sent >= tree,
            "every chunk left the publisher once"
        );
    }

    #[test]
    fn subscribers_that_stay_finish_while_others_join_late_and_leave() {
        let args = Args::parse_from([
            "swarm-sim",
            "--tree",
            "1x4194304",
            "--join-spread",
            "2",
            "--leave",
            "0.5",
            "--once",
        ]);
        let chunks = parse_tree(&args.tree).unwrap();
        let setup = setup(&args, 12, &chunks).unwrap();
        let leaving = setup.leaves.iter().filter(|l| l.is_some()).count();
        assert!(leaving > 0 && leaving < 12, "some leave: {leaving}");
        let stayed: Vec<bool> = setup.leaves.iter().map(|l| l.is_none()).collect();
        let out = Sim::new(setup).run();
        for (done, stayed) in out.completions.iter().zip(stayed) {
            assert!(!stayed || done.is_some(), "{out:?}");
        }
    }

    #[test]
    fn busy_nodes_refuse_and_every_mirror_still_finishes() {
        let args = Args::parse_from(["swarm-sim", "--tree", "1x8388608", "--busy-refuses"]);
        let chunks = parse_tree(&args.tree).unwrap();
        assert!(setup(&args, 5, &chunks).is_err(), "no slots, never busy");
        let args = Args::parse_from([
            "swarm-sim",
            "--tree",
            "1x8388608",
            "--upload-slots",
            "1",
            "--busy-refuses",
            "--upload-budget",
            "0",
        ]);
        let out = Sim::new(setup(&args, 12, &chunks).unwrap()).run();
        assert!(out.completions.iter().all(|c| c.is_some()), "{out:?}");
        assert!(
            out.refused_busy > 0,
            "one slot each: some asks found it busy"
        );
    }

    /// The node's upload budget, run by the simulator: a budget of one chunk refuses some asks
    /// and every mirror still finishes; none is refused without a budget; the default is the
    /// node's; and a budget does not go with upload slots.
    #[test]
    fn the_nodes_upload_budget_refuses_when_full_and_every_mirror_still_finishes() {
        let run = |budget: &str| {
            let args = Args::parse_from([
                "swarm-sim",
                "--tree",
                "1x8388608",
                "--upload-budget",
                budget,
            ]);
            let chunks = parse_tree(&args.tree).unwrap();
            Sim::new(setup(&args, 12, &chunks).unwrap()).run()
        };
        let out = run("262144");
        assert!(out.completions.iter().all(|c| c.is_some()), "{out:?}");
        assert!(
            out.refused_busy > 0,
            "one chunk's budget: some asks refused"
        );
        assert_eq!(run("0").refused_busy, 0);
        let both = Args::parse_from([
            "swarm-sim",
            "--upload-budget",
            "262144",
            "--upload-slots",
            "1",
        ]);
        let chunks = parse_tree(&both.tree).unwrap();
        assert!(setup(&both, 5, &chunks).is_err());
        let default = Args::parse_from(["swarm-sim"]);
        assert_eq!(
            default.upload_budget,
            treecast::config::DEFAULT_UPLOAD_BUDGET,
            "the node's default"
        );
    }

    /// Max-min sharing and a publisher budget of its own reach the simulation, and every
    /// mirror still finishes under them.
    #[test]
    fn max_min_sharing_with_a_publisher_budget_of_its_own_finishes_every_mirror() {
        let args = Args::parse_from([
            "swarm-sim",
            "--tree",
            "1x8388608",
            "--upload-budget",
            "262144",
            "--publisher-budget",
            "0",
            "--max-min",
        ]);
        let chunks = parse_tree(&args.tree).unwrap();
        let setup = setup(&args, 12, &chunks).unwrap();
        assert_eq!(setup.sharing, Sharing::MaxMin);
        assert_eq!((setup.upload_budget, setup.publisher_budget), (262144, 0));
        let out = Sim::new(setup).run();
        assert!(out.completions.iter().all(|c| c.is_some()), "{out:?}");
    }
}
