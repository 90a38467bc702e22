//! One simulated swarm: a publisher and N subscribers as discrete events in simulated time,
//! each node running the node's own state machines — a subscriber's download is a
//! [`Scheduler`], the publisher answers requests through a [`SeedPolicy`], every node admits
//! sessions through [`Slots`] and dials peers it learned by peer exchange through
//! [`PexDials`] — fed `Instant`s made of a base instant and the simulated time.
//!
//! Owns what the node's I/O does around those machines, modelled: lanes (a request travels one
//! latency, a server answers a lane's requests in order, a chunk crosses the [`Links`] and one
//! latency), `Have` deltas broadcast to every session and full maps (`SendHave`, `AskSync`) to
//! one peer, peer exchange on each new session, bootstrap dials (the ticket's publisher and a
//! few joined subscribers, standing in for the DHT), joins and leaves. It decides nothing the
//! node decides.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use treecast::config::{CHUNK_TIMEOUT, LACK_RETRY, SESSION_IDLE, STARVED_AFTER};
use treecast::swarm::{
    dial_target, Action, Admission, Dial, FeedPeer, LaneId, OwnAvailability, PexDials,
    ScheduleConfig, Scheduler, SeedPolicy, Slots, UploadBudget,
};
use treecast::tree::ContentHash;
use treecast::wire::{encode, ControlMsg, Have};

use crate::link::{FlowId, Links, Sharing};

/// The revision every subscriber fetches.
const REVISION: u64 = 1;
/// Peers named in one peer-exchange message.
const PEX_PEERS: usize = 8;
/// Bytes of a peer-exchange entry (id and address).
const PEX_ENTRY: u64 = 48;
/// How often a node short of peers dials its bootstrap peers again.
const REDIAL: Duration = Duration::from_secs(5);
const PUBLISHER: u32 = 0;

/// What one run is given.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Chunk sizes of the tree, in bytes.
    pub chunks: Vec<u64>,
    /// Uplink and downlink of each node in bytes per second, the publisher first.
    pub up: Vec<f64>,
    pub down: Vec<f64>,
    /// One-way latency between any two nodes.
    pub latency: Duration,
    pub max_peers: usize,
    /// Joined subscribers a joining one dials besides the publisher.
    pub bootstrap: usize,
    /// When each subscriber joins, and when it leaves (if it does), from the start.
    pub joins: Vec<Duration>,
    pub leaves: Vec<Option<Duration>>,
    /// A subscriber leaves as soon as it is done (`--once`).
    pub once: bool,
    pub seed_backstop: Duration,
    /// Experiments: the download's `Have` interval and `lack_retry`, instead of the node's.
    pub have_interval: Option<Duration>,
    pub lack_retry: Option<Duration>,
    pub endgame_after: Option<Duration>,
    /// Experiment, not the node: a node sends at most this many chunks at once, the lanes
    /// waiting for a turn in order (0: every lane at once, as the node's streams).
    pub upload_slots: usize,
    /// Experiment, with `upload_slots`: a node with every slot busy refuses further requests
    /// ("not found") instead of making their lanes wait.
    pub busy_refuses: bool,
    /// The node's upload budget in bytes (0: none), decided by its `UploadBudget`.
    pub upload_budget: u64,
    /// The publisher's upload budget in bytes (0: none).
    pub publisher_budget: u64,
    /// How flows share the links.
    pub sharing: Sharing,
    /// What all flows together may move, in bytes per second (max-min only; None: no cap).
    pub total: Option<f64>,
    /// Experiment: how long a peer that said it is busy is left alone, instead of the node's
    /// `BUSY_BACKOFF`.
    pub busy_backoff: Option<Duration>,
    /// Print the swarm's state this often (simulated), to standard error.
    pub trace_every: Option<Duration>,
    /// Simulated time after which the run stops, done or not.
    pub max_time: Duration,
    pub rng_seed: u64,
}

/// A server's answer to one chunk request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Chunk,
    NotFound,
    /// Held, but the server's upload is full: ask someone else.
    Busy,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Completion of each subscriber that did not leave, from the start (None: not done).
    pub completions: Vec<Option<Duration>>,
    pub publisher_sent: u64,
    pub control_msgs: u64,
    pub control_bytes: u64,
    pub requests: u64,
    /// "Not found" replies from the publisher (its hold) and from subscribers.
    pub refused_by_publisher: u64,
    pub refused_by_peers: u64,
    /// Of those, refusals because every upload slot was busy (`busy_refuses`).
    pub refused_busy: u64,
    /// Chunks a subscriber received that it held already (end-game duplicates).
    pub duplicates: u64,
    /// When every chunk had reached some subscriber.
    pub all_out: Duration,
    /// Chunks sent subscriber to subscriber, and their seconds on the wire in all.
    pub peer_sends: u64,
    pub peer_send_secs: f64,
    pub events: u64,
    /// Simulated time at the end of the run.
    pub end: Duration,
}

#[derive(Debug)]
enum Ev {
    Join(u32),
    Leave(u32),
    Timer(u32),
    Redial(u32),
    Trace,
    Request {
        client: u32,
        lane: LaneId,
        chunk: usize,
        asked: u64,
    },
    Reply {
        client: u32,
        lane: LaneId,
        chunk: usize,
        answer: Answer,
        asked: u64,
    },
    Closed {
        client: u32,
        lane: LaneId,
    },
    Have {
        from: u32,
        to: u32,
        have: Rc<Have>,
    },
    AskSync {
        from: u32,
        to: u32,
        revision: u64,
    },
    Pex {
        from: u32,
        to: u32,
        peers: Vec<u32>,
    },
    Dial {
        from: u32,
        to: u32,
    },
    Dialled {
        from: u32,
        to: u32,
        ok: bool,
    },
}

struct Timed {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Timed {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Timed {}
impl PartialOrd for Timed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// A lane as its server sees it: requests answered in order, one chunk on the wire at a time.
struct ServedLane {
    server: u32,
    queue: VecDeque<(usize, u64)>,
    /// The flow, its chunk, when it was asked for and when it started.
    sending: Option<(FlowId, usize, u64, u64)>,
    /// The lane's stream in its server's upload budget, and the id of its last send.
    budget_stream: u64,
    sends: u32,
}

struct Node {
    joined: bool,
    gone: bool,
    sched: Option<Scheduler<u32>>,
    done: Option<u64>,
    holds: Vec<bool>,
    /// Session peers, ordered so that a run is repeatable (messages to them go out in order).
    peers: BTreeSet<u32>,
    /// The session peers this node dialled (they count against its dial target).
    dialled: BTreeSet<u32>,
    slots: Slots<u32>,
    pex: PexDials<u32, u32>,
    /// Chunk bytes moved with each peer, both ways.
    moved: HashMap<u32, u64>,
    timer: Option<u64>,
    /// Lanes this node opened, to their servers.
    lanes: BTreeMap<LaneId, u32>,
    /// Chunks this node is sending, and lanes waiting for an upload slot (`upload_slots`).
    sending: usize,
    waiting: VecDeque<(u32, LaneId)>,
    /// The node's upload budget (`upload_budget`).
    budget: UploadBudget<u32>,
}

impl Node {
    fn downloading(&self) -> bool {
        self.sched.is_some() && self.done.is_none() && !self.gone
    }
}

/// A small deterministic generator (SplitMix64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// The swarm being simulated.
pub struct Sim {
    setup: Setup,
    base: Instant,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Timed>>,
    links: Links<(u32, LaneId)>,
    nodes: Vec<Node>,
    seed: SeedPolicy<u32>,
    hashes: Vec<ContentHash>,
    /// The revision's chunk order (sorted hashes), as bitfields index it.
    order: Vec<ContentHash>,
    index: HashMap<ContentHash, usize>,
    served: HashMap<(u32, LaneId), ServedLane>,
    /// Subscribers that joined and have not left, for bootstrap dials.
    present: Vec<u32>,
    /// Chunks some subscriber holds.
    first: Vec<bool>,
    rng: Rng,
    out: Outcome,
}

impl Sim {
    pub fn new(setup: Setup) -> Self {
        let base = Instant::now();
        let hashes: Vec<ContentHash> = (0..setup.chunks.len() as u64)
            .map(|i| ContentHash::of(&i.to_le_bytes()))
            .collect();
        let mut order = hashes.clone();
        order.sort();
        let index = hashes.iter().enumerate().map(|(i, h)| (*h, i)).collect();
        let n = setup.up.len();
        let n_chunks = setup.chunks.len();
        let nodes = (0..n).map(|i| Self::node(&setup, i == 0, base)).collect();
        let mut links = Links::with_sharing(setup.up.clone(), setup.down.clone(), setup.sharing);
        if let Some(total) = setup.total {
            links = links.with_total(total);
        }
        let out = Outcome {
            completions: vec![None; n - 1],
            publisher_sent: 0,
            control_msgs: 0,
            control_bytes: 0,
            requests: 0,
            refused_by_publisher: 0,
            refused_by_peers: 0,
            refused_busy: 0,
            duplicates: 0,
            all_out: Duration::ZERO,
            peer_sends: 0,
            peer_send_secs: 0.0,
            events: 0,
            end: Duration::ZERO,
        };
        let mut sim = Sim {
            rng: Rng::new(setup.rng_seed),
            seed: SeedPolicy::new(
                setup.seed_backstop,
                treecast::config::SEED_HOLD_UNLISTED.max(setup.seed_backstop),
            ),
            setup,
            base,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            links,
            nodes,
            hashes,
            order,
            index,
            served: HashMap::new(),
            present: Vec::new(),
            first: vec![false; n_chunks],
            out,
        };
        sim.nodes[0].joined = true;
        if sim.setup.trace_every.is_some() {
            sim.push_at(0, Ev::Trace);
        }
        for i in 1..n {
            let join = sim.setup.joins[i - 1];
            sim.push_at(nanos(join), Ev::Join(i as u32));
            if let Some(leave) = sim.setup.leaves[i - 1] {
                sim.push_at(nanos(leave), Ev::Leave(i as u32));
            }
        }
        sim
    }

    fn node(setup: &Setup, publisher: bool, base: Instant) -> Node {
        let chunks = setup.chunks.len();
        Node {
            joined: false,
            gone: false,
            sched: None,
            done: None,
            holds: vec![publisher; chunks],
            peers: BTreeSet::new(),
            dialled: BTreeSet::new(),
            slots: Slots::new(setup.max_peers, SESSION_IDLE),
            pex: PexDials::new(Default::default(), base),
            moved: HashMap::new(),
            timer: None,
            lanes: BTreeMap::new(),
            sending: 0,
            waiting: VecDeque::new(),
            budget: UploadBudget::new(
                if publisher {
                    setup.publisher_budget
                } else {
                    setup.upload_budget
                },
                setup.lack_retry.unwrap_or(LACK_RETRY),
                CHUNK_TIMEOUT,
            ),
        }
    }

    /// Runs until every subscriber that stays is done, or `max_time`.
    pub fn run(mut self) -> Outcome {
        let stop = nanos(self.setup.max_time);
        loop {
            let next_event = self.queue.peek().map(|Reverse(t)| t.at);
            let next_flow = self.links.next_finish();
            let flow_first = match (next_flow, next_event) {
                (Some(f), Some(e)) => f <= e,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let at = if flow_first { next_flow } else { next_event }.unwrap_or(stop);
            if at > stop || self.all_done() {
                break;
            }
            self.now = at;
            self.out.events += 1;
            if flow_first {
                if let Some((_, _, (client, lane))) = self.links.pop_finished() {
                    self.chunk_sent(client, lane);
                }
            } else if let Some(Reverse(t)) = self.queue.pop() {
                self.handle(t.ev);
            }
        }
        self.out.end = Duration::from_nanos(self.now);
        self.out
    }

    /// One line of the swarm's state: subscribers holding something and done, chunks held,
    /// uplinks sending, chunks on the wire.
    fn trace(&mut self) {
        let subs = &self.nodes[1..];
        let holding = subs.iter().filter(|n| n.holds.iter().any(|h| *h)).count();
        let held: usize = subs
            .iter()
            .map(|n| n.holds.iter().filter(|h| **h).count())
            .sum();
        let done = subs.iter().filter(|n| n.done.is_some()).count();
        let busy = subs.iter().filter(|n| n.sending > 0).count();
        let flows: usize = subs.iter().map(|n| n.sending).sum();
        let chunks = self.setup.chunks.len() * subs.len();
        eprintln!(
            "t {:.2} s: holding {holding}, done {done}, chunks held {:.0}%, uplinks busy {busy} \
             ({flows} sends), publisher sends {}",
            self.now as f64 / 1e9,
            100.0 * held as f64 / chunks as f64,
            self.nodes[0].sending,
        );
        if let Some(every) = self.setup.trace_every {
            self.push_at(self.now + nanos(every), Ev::Trace);
        }
    }

    fn all_done(&self) -> bool {
        self.nodes[1..]
            .iter()
            .zip(&self.setup.leaves)
            .all(|(n, leave)| leave.is_some() || n.done.is_some())
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_nanos(self.now)
    }

    fn push_at(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        let seq = self.seq;
        self.queue.push(Reverse(Timed { at, seq, ev }));
    }

    fn push_after_latency(&mut self, ev: Ev) {
        self.push_at(self.now + nanos(self.setup.latency), ev);
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Join(n) => self.join(n),
            Ev::Leave(n) => self.leave(n),
            Ev::Timer(n) => self.timer(n),
            Ev::Redial(n) => self.redial(n),
            Ev::Trace => self.trace(),
            Ev::Request {
                client,
                lane,
                chunk,
                asked,
            } => self.request_arrived(client, lane, chunk, asked),
            Ev::Reply {
                client,
                lane,
                chunk,
                answer,
                asked,
            } => self.reply_arrived(client, lane, chunk, answer, asked),
            Ev::Closed { client, lane } => self.lane_closed(client, lane),
            Ev::Have { from, to, have } => self.have_arrived(from, to, &have),
            Ev::AskSync { from, to, revision } => self.sync_wanted(from, to, revision),
            Ev::Pex { from, to, peers } => self.pex_arrived(from, to, peers),
            Ev::Dial { from, to } => self.dial_arrived(from, to),
            Ev::Dialled { from, to, ok } => self.dialled(from, to, ok),
        }
    }

    // Joins, leaves and sessions.

    fn join(&mut self, n: u32) {
        let now = self.instant();
        let mut config = ScheduleConfig::with_salt(self.rng.next_u64());
        if let Some(every) = self.setup.have_interval {
            config.have_interval = every;
        }
        if let Some(retry) = self.setup.lack_retry {
            config.picker.lack_retry = retry;
        }
        if let Some(after) = self.setup.endgame_after {
            config.picker.endgame_after = after;
        }
        if let Some(backoff) = self.setup.busy_backoff {
            config.busy_backoff = backoff;
        }
        let own = OwnAvailability::new(REVISION, self.hashes.iter().copied());
        let sched = Scheduler::new(config, self.hashes.clone(), &HashSet::new(), Some(own), now);
        let node = &mut self.nodes[n as usize];
        node.joined = true;
        node.sched = Some(sched);
        self.carry_out(n);
        self.redial(n);
        self.present.push(n);
    }

    /// Dial the publisher and a few joined subscribers if short of peers, or starved (the
    /// ticket and the DHT, in the node: `Discovery`'s redial and provider lookups), and look
    /// again in a while.
    fn redial(&mut self, n: u32) {
        let now = self.instant();
        let node = &self.nodes[n as usize];
        if node.gone || node.done.is_some() {
            return;
        }
        if node.peers.len() < self.setup.bootstrap + 1 || Self::starved(node, now) {
            if !node.peers.contains(&PUBLISHER) {
                self.push_after_latency(Ev::Dial {
                    from: n,
                    to: PUBLISHER,
                });
            }
            for _ in 0..self.setup.bootstrap.min(self.present.len()) {
                let to = self.present[self.rng.below(self.present.len())];
                if to != n && !self.nodes[n as usize].peers.contains(&to) {
                    self.push_after_latency(Ev::Dial { from: n, to });
                }
            }
        }
        self.push_at(self.now + nanos(REDIAL), Ev::Redial(n));
    }

    /// As the node's `View::starved`: downloading, and no session moved chunk bytes for
    /// `STARVED_AFTER`.
    fn starved(node: &Node, now: Instant) -> bool {
        node.downloading() && node.slots.idle_for(now, STARVED_AFTER)
    }

    fn leave(&mut self, n: u32) {
        self.nodes[n as usize].gone = true;
        let peers: Vec<u32> = self.nodes[n as usize].peers.iter().copied().collect();
        for p in peers {
            self.disconnect(n, p);
        }
        self.present.retain(|&p| p != n);
    }

    fn dial_arrived(&mut self, from: u32, to: u32) {
        let now = self.instant();
        let target = &self.nodes[to as usize];
        let ok = if !target.joined || target.gone {
            false
        } else if target.peers.contains(&from) {
            true
        } else {
            let bytes = target.moved.get(&from).copied().unwrap_or(0);
            match self.nodes[to as usize].slots.admit(from, bytes, now) {
                Admission::Admitted => true,
                Admission::Evict(victim) => {
                    self.disconnect(to, victim);
                    true
                }
                Admission::Full => false,
            }
        };
        self.push_after_latency(Ev::Dialled { from, to, ok });
    }

    fn dialled(&mut self, from: u32, to: u32, ok: bool) {
        let now = self.instant();
        let dialler = &self.nodes[from as usize];
        let up = ok && !dialler.gone && !self.nodes[to as usize].gone;
        if !up {
            if ok {
                self.nodes[to as usize].slots.leave(&from);
            }
            self.nodes[from as usize].pex.handle_dial_failed(&to);
            return self.dial_learned(from);
        }
        if dialler.peers.contains(&to) {
            self.nodes[from as usize].pex.handle_connected(&to);
            return;
        }
        let bytes = dialler.moved.get(&to).copied().unwrap_or(0);
        match self.nodes[from as usize].slots.admit(to, bytes, now) {
            Admission::Admitted => {}
            Admission::Evict(victim) => self.disconnect(from, victim),
            Admission::Full => {
                self.nodes[to as usize].slots.leave(&from);
                self.nodes[from as usize].pex.handle_dial_failed(&to);
                return;
            }
        }
        self.nodes[from as usize].pex.handle_connected(&to);
        self.nodes[from as usize].dialled.insert(to);
        self.connect(from, to);
    }

    /// A session between `a` and `b` is up: each tells its download and sends the other a
    /// peer exchange.
    fn connect(&mut self, a: u32, b: u32) {
        self.nodes[a as usize].peers.insert(b);
        self.nodes[b as usize].peers.insert(a);
        for (x, y) in [(a, b), (b, a)] {
            self.exchange_peers(x, y);
            if !self.nodes[x as usize].downloading() {
                continue;
            }
            let info = FeedPeer {
                complete: y == PUBLISHER || self.nodes[y as usize].done.is_some(),
                last_resort: y == PUBLISHER,
                has_manifest: true,
            };
            if let Some(s) = self.nodes[x as usize].sched.as_mut() {
                s.handle_peer_up(y, &info);
            }
            self.carry_out(x);
        }
    }

    fn exchange_peers(&mut self, from: u32, to: u32) {
        let mut peers: Vec<u32> = self.nodes[from as usize]
            .peers
            .iter()
            .copied()
            .filter(|&p| p != to && p != PUBLISHER)
            .collect();
        while peers.len() > PEX_PEERS {
            let i = self.rng.below(peers.len());
            peers.swap_remove(i);
        }
        if peers.is_empty() {
            return;
        }
        self.out.control_msgs += 1;
        self.out.control_bytes += PEX_ENTRY * peers.len() as u64;
        self.push_after_latency(Ev::Pex { from, to, peers });
    }

    fn pex_arrived(&mut self, from: u32, to: u32, peers: Vec<u32>) {
        let now = self.instant();
        let node = &mut self.nodes[to as usize];
        if node.gone || !node.peers.contains(&from) {
            return;
        }
        for p in peers {
            if p != to && !node.peers.contains(&p) {
                node.pex.handle_learned(from, p, vec![p], now);
            }
        }
        self.dial_learned(to);
    }

    /// Dial peers learned by peer exchange while there is room in the peer set.
    fn dial_learned(&mut self, n: u32) {
        let now = self.instant();
        let node = &mut self.nodes[n as usize];
        if node.gone || node.done.is_some() {
            return;
        }
        // As the node's SessionTable::dial_room: its dial target, within its slots; starved,
        // its slots alone (SessionTable::starved_room).
        let max = self.setup.max_peers;
        let room = if Self::starved(node, now) {
            max.saturating_sub(node.peers.len()).max(1)
        } else {
            dial_target(max)
                .saturating_sub(node.dialled.len())
                .min(max.saturating_sub(node.peers.len()))
        };
        let mut dials = Vec::new();
        while let Some(Dial { peer, .. }) = node.pex.poll_dial(room, now) {
            dials.push(peer);
        }
        for to in dials {
            self.push_after_latency(Ev::Dial { from: n, to });
        }
    }

    /// The session between `a` and `b` ends: lanes between them close, downloads and the
    /// seeding policy hear it.
    fn disconnect(&mut self, a: u32, b: u32) {
        if !self.nodes[a as usize].peers.remove(&b) {
            return;
        }
        self.nodes[b as usize].peers.remove(&a);
        for (x, y) in [(a, b), (b, a)] {
            self.nodes[x as usize].dialled.remove(&y);
            self.nodes[x as usize].slots.leave(&y);
            let lanes: Vec<LaneId> = self.nodes[x as usize]
                .lanes
                .iter()
                .filter(|(_, &server)| server == y)
                .map(|(lane, _)| *lane)
                .collect();
            for lane in lanes {
                self.end_lane(x, lane);
            }
            if x == PUBLISHER {
                self.seed.peer_left(&y);
            }
            if self.nodes[x as usize].downloading() {
                if let Some(s) = self.nodes[x as usize].sched.as_mut() {
                    s.handle_peer_down(&y);
                }
                self.carry_out(x);
            }
        }
    }

    // The download and its lanes.

    /// Carry out what `n`'s scheduler decided, and keep its timer set.
    fn carry_out(&mut self, n: u32) {
        if !self.nodes[n as usize].downloading() {
            return;
        }
        let now = self.instant();
        while let Some(action) = self.nodes[n as usize]
            .sched
            .as_mut()
            .and_then(|s| s.poll(now))
        {
            match action {
                Action::OpenLane { lane, peer } => self.open_lane(n, lane, peer),
                Action::CloseLane(lane) => self.end_lane(n, lane),
                Action::Request { lane, hash } => self.send_request(n, lane, hash),
                Action::PeersMayAsk(_) => {}
                Action::Announce(msgs) => self.announce(n, msgs),
                Action::SendHave { peer, msgs } => self.send_have(n, peer, msgs),
                Action::AskSync { peer, revision } => self.ask_sync(n, peer, revision),
                Action::Ban { peer, .. } => self.disconnect(n, peer),
                Action::Done => return self.finished(n),
            }
        }
        let node = &mut self.nodes[n as usize];
        let Some(at) = node.sched.as_ref().map(|s| s.poll_timeout()) else {
            return;
        };
        let at = nanos(at.saturating_duration_since(self.base)).max(self.now);
        if node.timer != Some(at) {
            node.timer = Some(at);
            self.push_at(at, Ev::Timer(n));
        }
    }

    fn timer(&mut self, n: u32) {
        let at = self.now;
        let node = &mut self.nodes[n as usize];
        if node.timer != Some(at) || !node.downloading() {
            return;
        }
        node.timer = None;
        let now = self.instant();
        if let Some(s) = self.nodes[n as usize].sched.as_mut() {
            s.handle_timeout(now);
        }
        self.carry_out(n);
    }

    fn finished(&mut self, n: u32) {
        self.nodes[n as usize].done = Some(self.now);
        self.out.completions[n as usize - 1] = Some(Duration::from_nanos(self.now));
        if self.setup.once {
            self.leave(n);
        }
    }

    fn open_lane(&mut self, n: u32, lane: LaneId, server: u32) {
        self.nodes[n as usize].lanes.insert(lane, server);
        let budget_stream = self.nodes[server as usize].budget.open(n);
        let lane_state = ServedLane {
            server,
            queue: VecDeque::new(),
            sending: None,
            budget_stream,
            sends: 0,
        };
        self.served.insert((n, lane), lane_state);
        if !self.nodes[n as usize].peers.contains(&server) {
            self.end_lane(n, lane);
        }
    }

    /// `n`'s lane ends: what its server was sending stops, and the download hears of it.
    fn end_lane(&mut self, n: u32, lane: LaneId) {
        if self.nodes[n as usize].lanes.remove(&lane).is_none() {
            return;
        }
        if let Some(served) = self.served.remove(&(n, lane)) {
            self.nodes[served.server as usize]
                .budget
                .closed(served.budget_stream);
            if let Some((flow, ..)) = served.sending {
                self.links.cancel(flow, self.now);
                self.slot_freed(served.server);
            }
        }
        self.push_at(self.now, Ev::Closed { client: n, lane });
    }

    fn lane_closed(&mut self, client: u32, lane: LaneId) {
        if !self.nodes[client as usize].downloading() {
            return;
        }
        let now = self.instant();
        if let Some(s) = self.nodes[client as usize].sched.as_mut() {
            s.handle_closed(lane, now);
        }
        self.carry_out(client);
    }

    fn send_request(&mut self, n: u32, lane: LaneId, hash: ContentHash) {
        let chunk = self.index.get(&hash).copied();
        let (true, Some(chunk)) = (self.nodes[n as usize].lanes.contains_key(&lane), chunk) else {
            if let Some(s) = self.nodes[n as usize].sched.as_mut() {
                s.handle_unsent(lane, hash);
            }
            return;
        };
        self.out.requests += 1;
        let asked = self.now;
        self.push_after_latency(Ev::Request {
            client: n,
            lane,
            chunk,
            asked,
        });
    }

    fn request_arrived(&mut self, client: u32, lane: LaneId, chunk: usize, asked: u64) {
        let Some(served) = self.served.get_mut(&(client, lane)) else {
            return;
        };
        served.queue.push_back((chunk, asked));
        if served.sending.is_none() {
            self.serve_next(client, lane);
        }
    }

    /// The server of `client`'s `lane` answers the next request: "not found" at once, or the
    /// chunk across the links.
    fn serve_next(&mut self, client: u32, lane: LaneId) {
        let now = self.instant();
        loop {
            let Some(served) = self.served.get_mut(&(client, lane)) else {
                return;
            };
            let server = served.server;
            let Some((chunk, asked)) = served.queue.pop_front() else {
                return;
            };
            let slots = self.setup.upload_slots;
            let held = server == PUBLISHER || self.nodes[server as usize].holds[chunk];
            let budget_stream = served.budget_stream;
            let busy = held
                && if slots > 0 {
                    self.nodes[server as usize].sending >= slots
                } else {
                    !self.nodes[server as usize]
                        .budget
                        .may_send(budget_stream, now, 0)
                };
            if busy && slots > 0 && !self.setup.busy_refuses {
                served.queue.push_front((chunk, asked));
                self.nodes[server as usize]
                    .waiting
                    .push_back((client, lane));
                return;
            }
            let serve = if busy {
                // Every slot busy, and the asker is told so at once (`busy_refuses`).
                self.out.refused_busy += 1;
                false
            } else if server == PUBLISHER {
                self.seed.should_serve(&client, self.hashes[chunk], now)
            } else {
                held
            };
            if serve {
                self.nodes[server as usize].sending += 1;
                let bytes = self.setup.chunks[chunk];
                let tag = (client, lane);
                let flow = self
                    .links
                    .start(server as usize, client as usize, bytes, tag, self.now);
                if let Some(served) = self.served.get_mut(&(client, lane)) {
                    served.sending = Some((flow, chunk, asked, self.now));
                    served.sends = served.sends.wrapping_add(1);
                    let id = served.sends;
                    self.nodes[server as usize]
                        .budget
                        .sent(budget_stream, id, bytes, now, 0);
                }
                return;
            }
            if server == PUBLISHER {
                self.out.refused_by_publisher += 1;
            } else {
                self.out.refused_by_peers += 1;
            }
            let answer = if busy { Answer::Busy } else { Answer::NotFound };
            self.push_after_latency(Ev::Reply {
                client,
                lane,
                chunk,
                answer,
                asked,
            });
        }
    }

    /// The server finished sending a chunk: it arrives one latency later.
    fn chunk_sent(&mut self, client: u32, lane: LaneId) {
        let Some(served) = self.served.get_mut(&(client, lane)) else {
            return;
        };
        let server = served.server;
        let Some((_, chunk, asked, started)) = served.sending.take() else {
            return;
        };
        // Its last byte has left: the node's wire count would say so.
        let (stream, id) = (served.budget_stream, served.sends);
        self.nodes[server as usize].budget.received(stream, id);
        let bytes = self.setup.chunks[chunk];
        if server == PUBLISHER {
            self.out.publisher_sent += bytes;
        } else {
            self.out.peer_sends += 1;
            self.out.peer_send_secs += (self.now - started) as f64 / 1e9;
        }
        self.count_moved(server, client, bytes);
        self.push_after_latency(Ev::Reply {
            client,
            lane,
            chunk,
            answer: Answer::Chunk,
            asked,
        });
        if self.setup.upload_slots == 0 {
            self.nodes[server as usize].sending -= 1;
            return self.serve_next(client, lane);
        }
        self.nodes[server as usize]
            .waiting
            .push_back((client, lane));
        self.slot_freed(server);
    }

    /// A send of `server`'s ended: the lanes waiting for a slot get their turns, in order.
    fn slot_freed(&mut self, server: u32) {
        let node = &mut self.nodes[server as usize];
        node.sending = node.sending.saturating_sub(1);
        if self.setup.upload_slots == 0 {
            return;
        }
        while self.nodes[server as usize].sending < self.setup.upload_slots {
            let Some((client, lane)) = self.nodes[server as usize].waiting.pop_front() else {
                return;
            };
            let idle = self
                .served
                .get(&(client, lane))
                .is_some_and(|l| l.sending.is_none() && !l.queue.is_empty());
            if idle {
                self.serve_next(client, lane);
            }
        }
    }

    fn count_moved(&mut self, a: u32, b: u32, bytes: u64) {
        let now = self.instant();
        for (x, y) in [(a, b), (b, a)] {
            let current = y == PUBLISHER || self.nodes[y as usize].done.is_some();
            let node = &mut self.nodes[x as usize];
            let moved = node.moved.entry(y).or_default();
            *moved += bytes;
            let moved = *moved;
            node.slots.observe(&y, moved, current, now);
        }
    }

    fn reply_arrived(
        &mut self,
        client: u32,
        lane: LaneId,
        chunk: usize,
        answer: Answer,
        asked: u64,
    ) {
        let served = answer == Answer::Chunk;
        let now = self.instant();
        let hash = self.hashes[chunk];
        let latency = Duration::from_nanos(self.now - asked);
        let node = &mut self.nodes[client as usize];
        if !node.downloading() || !node.lanes.contains_key(&lane) {
            return;
        }
        if served && std::mem::replace(&mut node.holds[chunk], true) {
            self.out.duplicates += 1;
        } else if served && !self.first[chunk] {
            self.first[chunk] = true;
            self.out.all_out = Duration::from_nanos(self.now);
        }
        if let Some(s) = node.sched.as_mut() {
            match answer {
                Answer::Chunk => {
                    s.handle_reply(lane, hash, self.setup.chunks[chunk] as usize, latency)
                }
                Answer::NotFound => s.handle_not_found(lane, hash, now),
                Answer::Busy => s.handle_busy(lane, hash, now),
            }
        }
        self.carry_out(client);
    }

    // Availability.

    /// `n` tells every session peer what it gained (as the node broadcasts its `Have`s).
    fn announce(&mut self, n: u32, msgs: Vec<Have>) {
        let peers: Vec<u32> = self.nodes[n as usize].peers.iter().copied().collect();
        for have in msgs {
            let have = Rc::new(have);
            let size = encode(&ControlMsg::Have((*have).clone())).len() as u64;
            for &to in &peers {
                self.out.control_msgs += 1;
                self.out.control_bytes += size;
                let have = have.clone();
                self.push_after_latency(Ev::Have { from: n, to, have });
            }
        }
    }

    /// `n` sends `peer` alone its `Have`s (a full map it was asked for).
    fn send_have(&mut self, n: u32, peer: u32, msgs: Vec<Have>) {
        if !self.nodes[n as usize].peers.contains(&peer) {
            return;
        }
        for have in msgs {
            self.out.control_msgs += 1;
            self.out.control_bytes += encode(&ControlMsg::Have(have.clone())).len() as u64;
            let have = Rc::new(have);
            self.push_after_latency(Ev::Have {
                from: n,
                to: peer,
                have,
            });
        }
    }

    /// `n` asks `peer` for its full map of `revision`.
    fn ask_sync(&mut self, n: u32, peer: u32, revision: u64) {
        if !self.nodes[n as usize].peers.contains(&peer) {
            return;
        }
        self.out.control_msgs += 1;
        self.out.control_bytes += encode(&ControlMsg::HaveSync { revision }).len() as u64;
        self.push_after_latency(Ev::AskSync {
            from: n,
            to: peer,
            revision,
        });
    }

    fn have_arrived(&mut self, from: u32, to: u32, have: &Have) {
        if !self.nodes[to as usize].peers.contains(&from) {
            return;
        }
        if to == PUBLISHER {
            let Ok(indices) = have.chunks.indices(self.order.len()) else {
                return;
            };
            let now = self.instant();
            return self
                .seed
                .have(&from, have.revision, &self.order, &indices, now);
        }
        if !self.nodes[to as usize].downloading() {
            return;
        }
        let now = self.instant();
        if let Some(s) = self.nodes[to as usize].sched.as_mut() {
            s.handle_have(from, have, now);
        }
        self.carry_out(to);
    }

    /// `from` asked `to` for its full map: a download answers it at its next announcement.
    fn sync_wanted(&mut self, from: u32, to: u32, revision: u64) {
        if !self.nodes[to as usize].peers.contains(&from) || !self.nodes[to as usize].downloading()
        {
            return;
        }
        if let Some(s) = self.nodes[to as usize].sched.as_mut() {
            s.handle_sync_wanted(from, revision);
        }
        self.carry_out(to);
    }
}

pub fn nanos(d: Duration) -> u64 {
    d.as_nanos() as u64
}
