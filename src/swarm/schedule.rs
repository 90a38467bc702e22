//! The fetch scheduler of one download: which peers it fetches from, which chunk streams
//! ("lanes") it keeps open to each and when it reopens them, which request goes on which lane,
//! how many requests each peer gets in flight, what a reply, a "not found", a bad reply or a
//! closed lane changes, and when this node announces what it holds.
//!
//! Sans-IO: the caller reports peers joining and leaving and what each lane did (`handle_*`,
//! with `now` where time matters), and carries out the [`Action`]s [`Scheduler::poll`] returns
//! (open or close a lane, send a request, ban a peer, broadcast our bitfield). It must not open
//! streams, verify or store chunks, or read a clock: a reply it is told of was verified and
//! stored by the caller.
//!
//! Invariant: every wanted chunk is in exactly one of missing, requested(peer, since) or
//! verified (kept by the [`Picker`]). Every request outstanding (the picker's requested, and
//! its end-game second requests) is on exactly one open lane of its peer, and no other request
//! is on a lane ([`Lanes`]): so a chunk is on at most one lane of a peer, and on two lanes (of
//! two peers) only in the end game. A closing lane gets no requests and holds none, and is
//! forgotten when its end is reported, the last event a lane sends.
//!
//! Policy, beside the picker's:
//! - Each peer in the download gets `lanes_per_peer` lanes; a request goes to its peer's oldest
//!   lane with room (`REQUESTS_PER_STREAM`), so a peer answers in order on one stream and the
//!   others take over when it is full or lost.
//! - A lane that closes while its peer is in the download (the session moved to another
//!   connection, e.g. from a relay to a direct path) is opened again at once, `max_reopens`
//!   times per `reopen_window`; more wait `reopen_delay`. A peer is never given up while it is
//!   in the download.
//! - Each `rate_interval`, every peer's limit follows its measured rate and quickest reply
//!   ([`RateMeter`]): down at once, up at most twofold.
//! - A bad reply drops the peer (its requests go back to missing) and bans it.
//! - What we hold is announced every `have_interval` when it changed, and once more at the end
//!   (a full map first, then what changed; see [`OwnAvailability`]). A peer that asks for our
//!   full map gets it at the next announcement.
//! - Requests are offered to the peers whose options changed since the last offer (a `Have`
//!   to its sender, a reply to the peers whose request ended, a new lane or a raised limit to
//!   its peer), and to every peer when a chunk goes back to missing, at the stall check and,
//!   in the end game, at every timeout; peers are offered in an order fixed by their hash
//!   and this node's salt, the same in every process.
//! - A peer's `Have`s add to what the picker knows it holds, one chunk at a time. A peer that
//!   joins without the revision is asked for its full map; one whose `Have`s do not follow on
//!   (see [`PeerView`]) is asked again, at most every `sync_retry`. A `Have` naming a chunk the
//!   revision does not have gets its peer banned.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Display;
use std::hash::Hash;
use std::time::{Duration, Instant};

use tracing::debug;

use super::availability::{OwnAvailability, PeerView};
use super::lanes::{LaneId, Lanes};
use super::picker::{Availability, Picker, PickerConfig};
use super::window::{RateMeter, MIN_REQUESTS, MIN_SEED_REQUESTS};
use crate::tree::ContentHash;
use crate::wire::Have;

/// Scheduler limits and intervals.
#[derive(Debug, Clone, Copy)]
pub struct ScheduleConfig {
    pub picker: PickerConfig,
    /// Lanes opened to each peer.
    pub lanes_per_peer: usize,
    /// How often each peer's request limit follows its measured rate. Until the first
    /// measurement a peer has only its default limit (the publisher, 1 request), so this is
    /// also how long a download runs at that limit.
    pub rate_interval: Duration,
    /// How often what we hold is announced, if it changed.
    pub have_interval: Duration,
    /// A peer whose `Have`s do not follow on is asked for its full map again after this long.
    pub sync_retry: Duration,
    /// How often requests are checked for a stall.
    pub stall_check: Duration,
    /// Lanes to one peer reopened at once within `reopen_window`; more wait `reopen_delay`.
    pub max_reopens: u32,
    pub reopen_window: Duration,
    pub reopen_delay: Duration,
    /// A peer that said it is busy is asked for nothing for this long.
    pub busy_backoff: Duration,
}

impl ScheduleConfig {
    /// The node's limits, with this node's tie-breaking `salt` for the picker.
    pub fn with_salt(salt: u64) -> Self {
        use crate::config::{
            CHUNK_STREAMS_PER_PEER, CHUNK_TIMEOUT, DEFAULT_IN_FLIGHT, ENDGAME_AFTER, HAVE_INTERVAL,
            LACK_RETRY,
        };
        ScheduleConfig {
            picker: PickerConfig {
                default_in_flight: DEFAULT_IN_FLIGHT,
                seed_in_flight: super::window::MIN_SEED_REQUESTS,
                stall_timeout: CHUNK_TIMEOUT,
                lack_retry: LACK_RETRY,
                endgame_after: ENDGAME_AFTER,
                local_salt: salt,
            },
            lanes_per_peer: CHUNK_STREAMS_PER_PEER,
            rate_interval: Duration::from_millis(100),
            have_interval: HAVE_INTERVAL,
            sync_retry: Duration::from_secs(2),
            stall_check: Duration::from_secs(1),
            max_reopens: 8,
            reopen_window: Duration::from_secs(10),
            reopen_delay: Duration::from_secs(3),
            busy_backoff: crate::config::BUSY_BACKOFF,
        }
    }
}

/// What the download knows about one peer.
#[derive(Debug, Clone, Default)]
pub struct FeedPeer {
    /// The peer holds the target revision completely.
    pub complete: bool,
    /// The publisher: asked only for chunks no other peer has.
    pub last_resort: bool,
    /// The peer holds the target revision's manifest: it is complete, or it sent a `Have` of
    /// the revision (it indexed the revision's chunks, so it verified the manifest, and serves
    /// it). What a download without availability (the manifest's) asks peers on.
    pub has_manifest: bool,
}

/// What the caller is to do, from [`Scheduler::poll`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<P> {
    /// Open a lane to `peer`. It takes requests at once (the caller queues them until its
    /// stream is open); report its end with [`Scheduler::handle_closed`], whatever the cause.
    OpenLane { lane: LaneId, peer: P },
    /// Send nothing more on `lane` and let it end.
    CloseLane(LaneId),
    /// Ask for `hash` on `lane`; if it cannot be queued, say so ([`Scheduler::handle_unsent`]).
    Request { lane: LaneId, hash: ContentHash },
    /// Whether a peer in the download may still ask us for chunks (one that does not hold the
    /// target completely). Told first, then whenever it changes.
    PeersMayAsk(bool),
    /// Tell every peer these, in order (what we hold of the revision); if one cannot be
    /// queued, send no more of them and say so ([`Scheduler::handle_announce_dropped`]).
    Announce(Vec<Have>),
    /// Tell `peer` these, in order: our full map, which it asked for.
    SendHave { peer: P, msgs: Vec<Have> },
    /// Ask `peer` for its full map of `revision`.
    AskSync { peer: P, revision: u64 },
    /// Ban `peer`, already dropped from the download (its lanes are closed first).
    Ban { peer: P, reason: String },
    /// Every wanted chunk is verified.
    Done,
}

#[derive(Debug)]
struct Member {
    /// Holds everything this download wants (the revision, or for a manifest's download the
    /// manifest).
    complete: bool,
    last_resort: bool,
    view: PeerView,
}

/// The scheduling decisions of one download. `P` is the peer identifier.
#[derive(Debug)]
pub struct Scheduler<P> {
    config: ScheduleConfig,
    picker: Picker<P>,
    own: Option<OwnAvailability>,
    /// The peers in the download.
    peers: HashMap<P, Member>,
    lanes: Lanes<P>,
    rates: HashMap<P, RateMeter>,
    /// Lanes reopened per peer since the instant given.
    reopens: HashMap<P, (u32, Instant)>,
    /// A lane to reopen to each of these peers at the instant given, if it is still in.
    reopen_later: Vec<(Instant, P)>,
    /// Peers that said they are busy, asked again from the instant given.
    busy_until: Vec<(Instant, P)>,
    /// Each peer's spell of answering only "busy": since when, and its last such answer. A
    /// chunk from it ends the spell, and so does a gap of `lack_retry` between its answers.
    busy_since: HashMap<P, (Instant, Instant)>,
    measured_at: Instant,
    next_announce: Instant,
    next_stall_check: Instant,
    /// Bytes of chunks verified by this download.
    fetched: u64,
    told_may_ask: Option<bool>,
    actions: VecDeque<Action<P>>,
    /// Something changed for every peer since requests were last handed out (a chunk went back
    /// to missing, time passed).
    assign_due: bool,
    /// Peers whose own options changed (they told of chunks, a request to them ended): only
    /// these are offered requests at the next poll, unless `assign_due`. Offering every peer at
    /// every `Have` cost a big swarm most of its time.
    assign_peers: HashSet<P>,
    /// Peers that asked for our full map since the last announcement.
    sync_wanted: HashSet<P>,
    /// The latest `now` reported.
    now: Instant,
}

impl<P: Clone + Eq + Hash + Display> Scheduler<P> {
    /// A download of `wanted` chunks, of which `present` are held already. With `own`, peers'
    /// bitfields say what they hold and ours is announced; without (a revision's manifest),
    /// peers that hold the manifest ([`FeedPeer::has_manifest`]) are asked.
    pub fn new(
        config: ScheduleConfig,
        wanted: impl IntoIterator<Item = ContentHash>,
        present: &HashSet<ContentHash>,
        mut own: Option<OwnAvailability>,
        now: Instant,
    ) -> Self {
        if let Some(own) = own.as_mut() {
            present.iter().for_each(|h| own.mark(h));
        }
        Scheduler {
            config,
            picker: Picker::new(config.picker, wanted, present),
            own,
            peers: HashMap::new(),
            lanes: Lanes::default(),
            rates: HashMap::new(),
            reopens: HashMap::new(),
            reopen_later: Vec::new(),
            busy_until: Vec::new(),
            busy_since: HashMap::new(),
            measured_at: now,
            next_announce: now,
            next_stall_check: now + config.stall_check,
            fetched: 0,
            told_may_ask: None,
            actions: VecDeque::new(),
            assign_due: true,
            assign_peers: HashSet::new(),
            sync_wanted: HashSet::new(),
            now,
        }
    }

    /// True once every wanted chunk is verified.
    pub fn is_done(&self) -> bool {
        self.picker.is_done()
    }

    /// Bytes of the chunks this download verified, each counted once.
    pub fn fetched_bytes(&self) -> u64 {
        self.fetched
    }

    /// Our availability, handed back at the end of the download.
    pub fn into_own(self) -> Option<OwnAvailability> {
        self.own
    }

    /// The next thing to do, or `None` until something is reported.
    pub fn poll(&mut self, now: Instant) -> Option<Action<P>> {
        if let Some(action) = self.actions.pop_front() {
            return Some(action);
        }
        // In the end game, time passing makes requests old enough for a second peer:
        // `handle_timeout` (every `rate_interval`) sets `assign_due` then. Offering every peer
        // a pick at every poll instead (each event: a `Have`, a chunk) cost O(peers x chunks
        // in flight) per event; in a 40-subscriber lab that starved whole nodes of CPU.
        let all = std::mem::take(&mut self.assign_due);
        if !all && self.assign_peers.is_empty() {
            return None;
        }
        self.tell_peers_may_ask();
        self.assign(now, all);
        if self.picker.is_done() {
            self.announce();
            self.actions.push_back(Action::Done);
        }
        self.actions.pop_front()
    }

    /// When [`Self::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Instant {
        let mut at = self.next_measure().min(self.next_stall_check);
        if self.own.is_some() {
            at = at.min(self.next_announce);
        }
        self.reopen_later
            .iter()
            .chain(&self.busy_until)
            .map(|(t, _)| *t)
            .fold(at, Instant::min)
    }

    /// Do what is due at `now`: measure rates, announce, take back stalled requests, reopen
    /// lanes.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if now >= self.next_measure() {
            self.measure(now);
        }
        if self.own.is_some() && now >= self.next_announce {
            self.announce();
            self.ask_out_of_step(now);
            self.next_announce = now + self.config.have_interval;
        }
        if now >= self.next_stall_check {
            // Stalled requests went back to missing, lacks older than `lack_retry` were
            // forgotten: any peer may have new options.
            self.take_back_stalled(now);
            self.next_stall_check = now + self.config.stall_check;
            self.assign_due = true;
        }
        self.reopen_due(now);
        self.busy_over(now);
        // In the end game, time passing makes requests eligible for a second peer.
        self.assign_due |= self.picker.in_endgame();
    }

    /// `peer` joined the download (or its session was replaced, or it now holds the
    /// revision). One without the revision is asked for its full map (at the next
    /// announcement if it cannot be asked now): until then it is taken to hold nothing.
    pub fn handle_peer_up(&mut self, peer: P, info: &FeedPeer) {
        let mut view = PeerView::default();
        let ask = match &self.own {
            Some(own) if !info.complete => {
                view.ask_due(self.now, self.config.sync_retry);
                Some(own.revision)
            }
            _ => None,
        };
        let holds_all = match self.own {
            Some(_) => info.complete,
            None => info.complete || info.has_manifest,
        };
        let member = Member {
            complete: holds_all,
            last_resort: info.last_resort,
            view,
        };
        self.peers.insert(peer.clone(), member);
        let have = if holds_all {
            Availability::All
        } else {
            Availability::Some(Default::default())
        };
        self.add_peer(peer.clone(), have, info.last_resort);
        if let Some(revision) = ask {
            self.actions.push_back(Action::AskSync { peer, revision });
        }
    }

    /// `peer` says it holds the chunks of `have` (of a revision). Ignored unless it is in the
    /// download (joins are reported first, so an unknown peer has left) and the revision is
    /// ours. A chunk the revision does not have bans the peer; a `Have` that does not follow on
    /// from its last one is applied, and a full map asked for. Without availability (a
    /// manifest's download, whose caller passes only `Have`s of the revision the manifest
    /// belongs to), a `Have` says the peer indexed the revision's chunks, so it holds the
    /// manifest: it is asked from then on.
    pub fn handle_have(&mut self, peer: P, have: &Have, now: Instant) {
        self.now = now;
        if self.own.is_none() {
            return self.holds_manifest(peer);
        }
        let Some(own) = self.own.as_ref().filter(|o| o.revision == have.revision) else {
            return;
        };
        let Some(m) = self.peers.get_mut(&peer) else {
            return;
        };
        if m.complete {
            return;
        }
        let indices = match have.chunks.indices(own.len()) {
            Ok(indices) => indices,
            Err(e) => return self.handle_bad_peer(peer, e.to_string()),
        };
        if !m.view.follow(have) && m.view.ask_due(now, self.config.sync_retry) {
            let revision = have.revision;
            debug!(%peer, seq = have.seq, "availability out of step: asking for a full map");
            self.actions.push_back(Action::AskSync {
                peer: peer.clone(),
                revision,
            });
        }
        let hashes = indices.into_iter().filter_map(|i| own.hash(i));
        for hash in hashes {
            self.picker.peer_has(&peer, hash);
        }
        self.assign_peers.insert(peer);
    }

    /// `peer` asked for our full map of `revision`: it goes out at the next announcement, if
    /// `peer` is in the download and we are downloading that revision.
    pub fn handle_sync_wanted(&mut self, peer: P, revision: u64) {
        let ours = self.own.as_ref().is_some_and(|o| o.revision == revision);
        if ours && self.peers.contains_key(&peer) {
            self.sync_wanted.insert(peer);
        }
    }

    /// `peer` left the download: its lanes close and its requests go back to missing.
    pub fn handle_peer_down(&mut self, peer: &P) {
        self.peers.remove(peer);
        self.busy_since.remove(peer);
        self.drop_peer(peer);
    }

    /// `lane` delivered `hash`, `len` bytes verified and stored, `latency` after asking.
    pub fn handle_reply(&mut self, lane: LaneId, hash: ContentHash, len: usize, latency: Duration) {
        self.lanes.settle(hash);
        if let Some(peer) = self.lanes.peer_of(lane) {
            if self.lanes.heard(lane) {
                self.assign_peers.insert(peer.clone());
            }
            self.busy_since.remove(&peer);
            let meter = self.rates.entry(peer).or_default();
            meter.delivered(len as u64, latency);
        }
        if !self.picker.is_verified(&hash) {
            self.fetched += len as u64;
        }
        // The peers whose requests for it ended have room; nobody else has new options.
        self.assign_peers.extend(self.picker.on_verified(hash));
        if let Some(own) = self.own.as_mut() {
            own.mark(&hash);
        }
    }

    /// `lane`'s peer does not have `hash` (or will not send it now).
    pub fn handle_not_found(&mut self, lane: LaneId, hash: ContentHash, now: Instant) {
        let Some(peer) = self.lanes.peer_of(lane) else {
            return;
        };
        self.lanes.heard(lane);
        self.lanes.unassign(hash, &peer);
        self.picker.on_not_found(&peer, hash, now);
        self.assign_due = true;
    }

    /// `lane`'s peer holds `hash` but will not send anything now (its upload is full): the
    /// chunk goes to another holder, and the peer is left alone for `busy_backoff`. A peer that
    /// has answered nothing but "busy" for `stall_timeout` (as long as a request may take) is
    /// taken at its word no longer: it lacks the chunk, as with "not found" (else a peer listing
    /// a chunk and always busy would keep it from the seed), and is still left alone for the
    /// backoff. An honest peer whose upload is full serves someone at least that often; a
    /// shorter limit (`lack_retry`, 1 s) sent askers of busy subscribers to the publisher
    /// (simulator, 100 subscribers: 1.11 publisher copies against 1.04).
    pub fn handle_busy(&mut self, lane: LaneId, hash: ContentHash, now: Instant) {
        let Some(peer) = self.lanes.peer_of(lane) else {
            return;
        };
        if !self.peers.contains_key(&peer) {
            // A late answer on a lane of a peer that left.
            self.handle_not_found(lane, hash, now);
            return;
        }
        let gap = self.config.picker.lack_retry;
        let spell = self.busy_since.entry(peer.clone()).or_insert((now, now));
        if now.saturating_duration_since(spell.1) >= gap {
            *spell = (now, now);
        }
        spell.1 = now;
        let too_long = now.saturating_duration_since(spell.0) >= self.config.picker.stall_timeout;
        self.lanes.heard(lane);
        self.lanes.unassign(hash, &peer);
        if too_long {
            debug!(%peer, %hash, "peer has been busy too long: taken as lacking the chunk");
            self.picker.on_not_found(&peer, hash, now);
            self.picker.set_busy(&peer, true);
        } else {
            self.picker.on_busy(&peer, hash);
        }
        if !self.busy_until.iter().any(|(_, p)| *p == peer) {
            self.busy_until.push((now + self.config.busy_backoff, peer));
        }
        self.assign_due = true;
    }

    fn busy_over(&mut self, now: Instant) {
        let (due, later): (Vec<_>, Vec<_>) =
            self.busy_until.drain(..).partition(|(at, _)| *at <= now);
        self.busy_until = later;
        for (_, peer) in due {
            self.picker.set_busy(&peer, false);
            self.assign_peers.insert(peer);
        }
    }

    /// `lane`'s peer sent something wrong (a chunk not matching its hash, a malformed reply):
    /// drop it and ban it.
    pub fn handle_bad(&mut self, lane: LaneId, reason: String) {
        let Some(peer) = self.lanes.peer_of(lane) else {
            return;
        };
        self.handle_bad_peer(peer, reason);
    }

    fn handle_bad_peer(&mut self, peer: P, reason: String) {
        self.peers.remove(&peer);
        self.drop_peer(&peer);
        self.actions.push_back(Action::Ban { peer, reason });
    }

    /// `lane` ended (it could not open, its stream failed, or it was told to close). Its
    /// requests go back to missing; a lane of a peer still in the download is reopened.
    pub fn handle_closed(&mut self, lane: LaneId, now: Instant) {
        let Some(ended) = self.lanes.end(lane) else {
            return;
        };
        for hash in ended.lost {
            self.picker.on_failed(&ended.peer, hash);
        }
        self.assign_due = true;
        if ended.was_open && self.peers.contains_key(&ended.peer) {
            self.reopen(ended.peer, now);
        }
    }

    /// The request for `hash` could not be queued on `lane` (its queue is full: its stream
    /// stalled, or its end is on its way): the chunk goes back to missing, and is handed out
    /// again at the next report, not to this lane until it answers again. Offered to the same
    /// lane, a peer ranked first held a chunk that way (handed back at each offer, never old
    /// enough for the end game's second request) until the lane's stall timeout.
    pub fn handle_unsent(&mut self, lane: LaneId, hash: ContentHash) {
        let Some(peer) = self.lanes.peer_of(lane) else {
            return;
        };
        self.lanes.refuse(lane);
        self.lanes.unassign(hash, &peer);
        self.picker.on_failed(&peer, hash);
    }

    /// The last [`Action::Announce`] was not sent: offer it again at the next announce.
    pub fn handle_announce_dropped(&mut self) {
        if let Some(own) = self.own.as_mut() {
            own.unsent();
        }
    }

    /// Tell the picker what `peer` has, opening lanes to it if it has none.
    /// In a manifest's download, `peer` holds the manifest.
    fn holds_manifest(&mut self, peer: P) {
        let Some(m) = self.peers.get_mut(&peer).filter(|m| !m.complete) else {
            return;
        };
        m.complete = true;
        let last_resort = m.last_resort;
        self.picker.set_peer(peer, Availability::All, last_resort);
        self.assign_due = true;
    }

    fn add_peer(&mut self, peer: P, have: Availability, last_resort: bool) {
        self.picker.set_peer(peer.clone(), have, last_resort);
        if self.lanes.open_to(&peer) == 0 {
            for _ in 0..self.config.lanes_per_peer {
                self.open_lane(peer.clone());
            }
        }
        self.assign_peers.insert(peer);
    }

    fn open_lane(&mut self, peer: P) {
        self.assign_peers.insert(peer.clone());
        self.rates.entry(peer.clone()).or_default().path_changed();
        let lane = self.lanes.open(peer.clone());
        self.actions.push_back(Action::OpenLane { lane, peer });
    }

    fn drop_peer(&mut self, peer: &P) {
        self.picker.on_peer_gone(peer);
        let mut closed = self.lanes.close_peer(peer);
        closed.sort_unstable();
        for lane in closed {
            self.actions.push_back(Action::CloseLane(lane));
        }
        self.assign_due = true;
    }

    fn reopen(&mut self, peer: P, now: Instant) {
        let (count, since) = self.reopens.entry(peer.clone()).or_insert((0, now));
        if now.saturating_duration_since(*since) > self.config.reopen_window {
            (*count, *since) = (0, now);
        }
        if *count < self.config.max_reopens {
            *count += 1;
            debug!(%peer, "reopening a chunk lane");
            self.open_lane(peer);
            return;
        }
        debug!(%peer, "chunk lanes keep closing: retrying later");
        let at = now + self.config.reopen_delay;
        self.reopen_later.push((at, peer));
    }

    fn reopen_due(&mut self, now: Instant) {
        let (due, later): (Vec<_>, Vec<_>) =
            self.reopen_later.drain(..).partition(|(at, _)| *at <= now);
        self.reopen_later = later;
        for (_, peer) in due {
            if self.peers.contains_key(&peer)
                && self.lanes.open_to(&peer) < self.config.lanes_per_peer
            {
                self.open_lane(peer);
            }
        }
    }

    fn next_measure(&self) -> Instant {
        self.measured_at + self.config.rate_interval
    }

    fn measure(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.measured_at);
        self.measured_at = now;
        for (peer, meter) in &mut self.rates {
            let seed = self.picker.is_last_resort(peer);
            let floor = if seed {
                MIN_SEED_REQUESTS
            } else {
                MIN_REQUESTS
            };
            let target = meter.measure(elapsed, floor);
            // Up at most twofold per measurement (down at once): requests in flight when a node
            // dies are lost, and a limit that grows with what the peer proved it delivers
            // keeps that small for downloads cut short.
            let old = self.picker.limit(peer);
            let limit = old.map_or(target, |l| target.min(l * 2));
            self.picker.set_limit(peer, limit);
            if old.is_some_and(|old| limit > old) {
                self.assign_peers.insert(peer.clone());
            }
        }
    }

    fn take_back_stalled(&mut self, now: Instant) {
        for (peer, hash) in self.picker.poll_stalled(now) {
            debug!(%peer, %hash, "chunk request stalled: re-issuing elsewhere");
            self.lanes.unassign(hash, &peer);
        }
    }

    fn tell_peers_may_ask(&mut self) {
        let yes = self.peers.values().any(|m| !m.complete);
        if self.told_may_ask.replace(yes) != Some(yes) {
            self.actions.push_back(Action::PeersMayAsk(yes));
        }
    }

    fn announce(&mut self) {
        let Some(own) = self.own.as_mut() else {
            return;
        };
        let msgs = own.take_announcement();
        if !msgs.is_empty() {
            self.actions.push_back(Action::Announce(msgs));
        }
        let mut wanted: Vec<P> = self.sync_wanted.drain().collect();
        wanted.sort_by_cached_key(|p| peer_order(p, self.config.picker.local_salt));
        for peer in wanted {
            if self.peers.contains_key(&peer) {
                let msgs = own.full_map();
                self.actions.push_back(Action::SendHave { peer, msgs });
            }
        }
    }

    /// Ask again for the full map of peers still out of step `sync_retry` after we asked.
    fn ask_out_of_step(&mut self, now: Instant) {
        let Some(revision) = self.own.as_ref().map(|o| o.revision) else {
            return;
        };
        let retry = self.config.sync_retry;
        let salt = self.config.picker.local_salt;
        let mut due: Vec<P> = Vec::new();
        for (peer, m) in &mut self.peers {
            if !m.complete && m.view.ask_due(now, retry) {
                due.push(peer.clone());
            }
        }
        due.sort_by_cached_key(|p| peer_order(p, salt));
        for peer in due {
            self.actions.push_back(Action::AskSync { peer, revision });
        }
    }

    /// Hand out requests: each peer's picks go to its oldest open lane with room (see
    /// [`Lanes::lane_for`]).
    fn assign(&mut self, now: Instant, all: bool) {
        let salt = self.config.picker.local_salt;
        let due = std::mem::take(&mut self.assign_peers);
        let mut by_peer: Vec<(P, Vec<LaneId>)> = if all {
            self.lanes.open_by_peer().into_iter().collect()
        } else {
            due.into_iter()
                .map(|p| {
                    let lanes = self.lanes.open_of(&p);
                    (p, lanes)
                })
                .collect()
        };
        by_peer.sort_by_cached_key(|(p, _)| peer_order(p, salt));
        for (peer, lanes) in by_peer {
            while let Some(lane) = self
                .lanes
                .lane_for(&lanes, crate::config::REQUESTS_PER_STREAM)
            {
                let Some(hash) = self.picker.next_for(&peer, now) else {
                    break;
                };
                self.lanes.assign(hash, peer.clone(), lane);
                self.actions.push_back(Action::Request { lane, hash });
            }
        }
    }
}

/// The order peers are served in when several could be: the same for the same peers and salt
/// in every process (a hash map's own order is drawn per process, which made simulator runs
/// unrepeatable), and different on each node (the salt), so downloaders do not all favour the
/// same peer.
fn peer_order<P: Hash>(peer: &P, salt: u64) -> u64 {
    use std::hash::{DefaultHasher, Hasher};
    // `DefaultHasher::new()` has fixed keys: the same in every process.
    let mut hasher = DefaultHasher::new();
    salt.hash(&mut hasher);
    peer.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swarm::window::in_flight_target;
    use crate::wire::ChunkSet;

    fn h(i: u8) -> ContentHash {
        ContentHash::of(&[i])
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn secs(t: Instant, s: f64) -> Instant {
        t + Duration::from_secs_f64(s)
    }

    fn config() -> ScheduleConfig {
        ScheduleConfig {
            picker: PickerConfig {
                default_in_flight: 4,
                seed_in_flight: 2,
                stall_timeout: Duration::from_secs(10),
                lack_retry: Duration::from_secs(3),
                endgame_after: Duration::from_secs(1),
                local_salt: 0,
            },
            lanes_per_peer: 2,
            rate_interval: ms(100),
            have_interval: ms(250),
            sync_retry: Duration::from_secs(2),
            stall_check: Duration::from_secs(1),
            max_reopens: 2,
            reopen_window: Duration::from_secs(10),
            reopen_delay: Duration::from_secs(3),
            busy_backoff: ms(100),
        }
    }

    fn complete() -> FeedPeer {
        FeedPeer {
            complete: true,
            ..FeedPeer::default()
        }
    }

    /// A download of chunks `0..n`, none held, no availability.
    fn scheduler(n: u8, t0: Instant) -> Scheduler<u8> {
        Scheduler::new(config(), (0..n).map(h), &HashSet::new(), None, t0)
    }

    /// A download of chunks `0..n` of revision `rev`, with our availability.
    fn with_own(rev: u64, n: u8, t0: Instant) -> Scheduler<u8> {
        let own = OwnAvailability::new(rev, (0..n).map(h));
        Scheduler::new(config(), (0..n).map(h), &HashSet::new(), Some(own), t0)
    }

    /// A download of chunks `0..4` of revision 1 with our availability, peers 1 and 2 up
    /// (holding nothing yet), and the lanes opened to them.
    fn two_peers(t0: Instant) -> (Scheduler<u8>, Vec<(LaneId, u8)>) {
        let mut s = with_own(1, 4, t0);
        s.handle_peer_up(1, &FeedPeer::default());
        s.handle_peer_up(2, &FeedPeer::default());
        let lanes = opened(&drain(&mut s, t0));
        (s, lanes)
    }

    /// Every action until none is left; the invariant holds after.
    fn drain(s: &mut Scheduler<u8>, now: Instant) -> Vec<Action<u8>> {
        let actions = std::iter::from_fn(|| s.poll(now)).collect();
        assert_invariant(s);
        actions
    }

    fn requests(actions: &[Action<u8>]) -> Vec<(LaneId, ContentHash)> {
        let request = |a: &Action<u8>| match a {
            Action::Request { lane, hash } => Some((*lane, *hash)),
            _ => None,
        };
        actions.iter().filter_map(request).collect()
    }

    fn hashes(requests: &[(LaneId, ContentHash)]) -> HashSet<ContentHash> {
        requests.iter().map(|(_, h)| *h).collect()
    }

    fn opened(actions: &[Action<u8>]) -> Vec<(LaneId, u8)> {
        let open = |a: &Action<u8>| match a {
            Action::OpenLane { lane, peer } => Some((*lane, *peer)),
            _ => None,
        };
        actions.iter().filter_map(open).collect()
    }

    /// Per announcement, the indices it names.
    fn announced(actions: &[Action<u8>]) -> Vec<Vec<u32>> {
        let announce = |a: &Action<u8>| match a {
            Action::Announce(msgs) => Some(indices(msgs)),
            _ => None,
        };
        actions.iter().filter_map(announce).collect()
    }

    fn indices(msgs: &[Have]) -> Vec<u32> {
        let of = |m: &Have| m.chunks.indices(usize::MAX).expect("valid");
        msgs.iter().flat_map(of).collect()
    }

    fn asked(actions: &[Action<u8>]) -> Vec<u8> {
        let ask = |a: &Action<u8>| match a {
            Action::AskSync { peer, .. } => Some(*peer),
            _ => None,
        };
        actions.iter().filter_map(ask).collect()
    }

    fn have(revision: u64, seq: u32, sync: bool, bits: Vec<u8>) -> Have {
        let chunks = ChunkSet::Bits { first: 0, bits };
        Have {
            revision,
            seq,
            sync,
            chunks,
        }
    }

    /// The chunks of `0..n` in the order bitfields index.
    fn order(n: u8) -> Vec<ContentHash> {
        let mut v: Vec<ContentHash> = (0..n).map(h).collect();
        v.sort();
        v
    }

    /// The module's invariant, against the scheduler's own state.
    fn assert_invariant(s: &Scheduler<u8>) {
        s.lanes.assert_invariant();
        for hash in s.lanes.requested() {
            assert!(
                !s.picker.is_verified(hash),
                "{hash} verified and outstanding"
            );
        }
        for peer in s.peers.keys() {
            let out = s.lanes.requests_to(peer);
            assert_eq!(s.picker.in_flight(peer), out, "requests out to {peer}");
        }
    }

    /// Two downloads with the same salt told the same events hand out the same requests in
    /// the same order (hash maps iterate in an order drawn per map: that made the simulator's
    /// runs unrepeatable).
    #[test]
    fn the_same_events_give_the_same_requests_in_the_same_order() {
        let t0 = Instant::now();
        let run = || {
            let mut config = config();
            config.picker.local_salt = 7;
            let mut s = Scheduler::new(config, (0..40).map(h), &HashSet::new(), None, t0);
            for peer in 1..=8 {
                s.handle_peer_up(peer, &complete());
            }
            let first = drain(&mut s, t0);
            s.handle_peer_down(&3);
            s.handle_timeout(secs(t0, 0.1));
            (first, drain(&mut s, secs(t0, 0.1)))
        };
        let (a, b) = (run(), run());
        assert_eq!(requests(&a.0).len(), 32, "8 peers, 4 each");
        assert_eq!(a, b);
    }

    /// In the end game, a request outstanding for `endgame_after` goes to a second peer at the
    /// next timeout, not at whatever poll comes first: polls follow events (each `Have`, each
    /// chunk), and offering every peer a pick at each one starved nodes of CPU.
    #[test]
    fn end_game_second_requests_go_out_at_the_timer_not_at_every_poll() {
        let t0 = Instant::now();
        let mut s = scheduler(1, t0);
        s.handle_peer_up(1, &complete());
        s.handle_peer_up(2, &complete());
        let first = requests(&drain(&mut s, t0));
        assert_eq!(first.len(), 1, "one chunk, one request");
        let later = secs(t0, 1.5);
        assert!(requests(&drain(&mut s, later)).is_empty(), "no timer yet");
        s.handle_timeout(later);
        let second = requests(&drain(&mut s, later));
        assert_eq!(second.len(), 1, "the end game's second request");
        assert_eq!(hashes(&second), hashes(&first));
        assert_ne!(second[0].0, first[0].0, "on the other peer's lane");
        // The lane's queue was full (its stream stalled): the request comes back. Offered
        // again at once, it came back again, and the node's loop that carries out actions
        // (`carry_out`) never returned: nodes froze near the end of a download (a subscriber
        // behind a relay that died, 40-subscriber labs). It waits for the next timeout.
        s.handle_unsent(second[0].0, second[0].1);
        assert!(
            s.poll(later).is_none(),
            "not offered again before a timeout"
        );
        s.handle_timeout(secs(t0, 1.6));
        let third = requests(&drain(&mut s, secs(t0, 1.6)));
        assert_eq!(hashes(&third), hashes(&second));
        assert_ne!(third[0].0, second[0].0, "not to the lane that refused it");
    }

    /// A lane whose queue refused a request takes none until it answers again; its peer's
    /// other lanes, then other peers, get what it would have. Offered to it again at every
    /// offer, a chunk stayed with a stalled peer ranked first (handed back each time, never
    /// outstanding long enough for the end game's second request) until the lane timed out.
    #[test]
    fn a_lane_that_refused_a_request_is_passed_over_until_it_answers() {
        let t0 = Instant::now();
        let mut s = scheduler(20, t0);
        for peer in 1..=3 {
            s.handle_peer_up(peer, &complete());
        }
        let actions = drain(&mut s, t0);
        let lanes = opened(&actions);
        let peer_of = |l: LaneId| lanes.iter().find(|(x, _)| *x == l).expect("a lane").1;
        let first = requests(&actions);
        assert_eq!(first.len(), 12, "4 to each of 3 peers");
        let (lane, x) = first[0];
        let top = peer_of(lane);
        let on = |rs: &[(LaneId, ContentHash)], l: LaneId| rs.iter().filter(|r| r.0 == l).count();
        let mut at = t0;
        // Outside the end game, every stall check (1 s) offers each peer what it has room for.
        let mut offer = |s: &mut Scheduler<u8>| {
            at += ms(1000);
            s.handle_timeout(at);
            requests(&drain(s, at))
        };
        s.handle_unsent(lane, x);
        let again = offer(&mut s);
        assert_eq!(on(&again, lane), 0, "not to the lane that refused one");
        let other: Vec<_> = again.iter().filter(|r| peer_of(r.0) == top).collect();
        assert_eq!(other.len(), 1, "to the peer's other lane: {again:?}");
        s.handle_unsent(other[0].0, other[0].1);
        let passed = offer(&mut s);
        assert!(
            passed.iter().all(|r| peer_of(r.0) != top),
            "both its lanes refused: {passed:?}"
        );
        // The first lane answers: it takes requests again.
        s.handle_reply(lane, first[1].1, 10, ms(50));
        let back = requests(&drain(&mut s, at));
        assert_eq!(
            on(&back, lane),
            2,
            "room for the refused and the answered: {back:?}"
        );
    }

    /// A `Have` offers requests to its sender; a chunk refused goes to another holder at once.
    #[test]
    fn a_have_offers_its_sender_requests_and_a_refused_chunk_goes_to_another_holder() {
        let t0 = Instant::now();
        let (mut s, lanes) = two_peers(t0);
        let lane_of = |peer: u8| lanes.iter().find(|(_, p)| *p == peer).expect("a lane").0;
        let first = order(4)[0];
        s.handle_have(1, &have(1, 0, true, vec![0b0000_0001]), t0);
        assert_eq!(requests(&drain(&mut s, t0)), [(lane_of(1), first)]);
        s.handle_have(2, &have(1, 0, true, vec![0b0000_0001]), t0);
        assert!(
            requests(&drain(&mut s, t0)).is_empty(),
            "asked of 1 already"
        );
        s.handle_not_found(lane_of(1), first, t0);
        assert_eq!(requests(&drain(&mut s, t0)), [(lane_of(2), first)]);
    }

    /// "Busy" is not "not found": the chunk goes to another holder at once, the busy peer is
    /// asked for nothing until `busy_backoff` has passed, and then for anything it holds,
    /// that chunk included (where "not found" would keep it from being asked for
    /// `lack_retry`).
    #[test]
    fn a_busy_peer_is_left_alone_for_the_backoff_and_still_counts_as_a_holder() {
        let t0 = Instant::now();
        let (mut s, lanes) = two_peers(t0);
        let lane_of = |peer: u8| lanes.iter().find(|(_, p)| *p == peer).expect("a lane").0;
        let (first, second) = (order(4)[0], order(4)[1]);
        s.handle_have(1, &have(1, 0, true, vec![0b0000_0011]), t0);
        let asked = requests(&drain(&mut s, t0));
        assert_eq!(hashes(&asked), HashSet::from([first, second]));
        assert!(asked.iter().all(|(lane, _)| *lane == lane_of(1)));
        s.handle_have(2, &have(1, 0, true, vec![0b0000_0001]), t0);
        assert!(requests(&drain(&mut s, t0)).is_empty(), "asked of 1");

        s.handle_busy(lane_of(1), first, t0);
        s.handle_busy(lane_of(1), second, t0);
        assert_eq!(
            requests(&drain(&mut s, t0)),
            [(lane_of(2), first)],
            "the other holder is asked at once; 1 is not asked for the chunk only it holds"
        );
        let before = t0 + ms(99);
        s.handle_timeout(before);
        assert!(requests(&drain(&mut s, before)).is_empty(), "1 is busy");
        assert!(s.poll_timeout() <= t0 + ms(100));
        let after = t0 + ms(100);
        s.handle_timeout(after);
        assert_eq!(
            requests(&drain(&mut s, after)),
            [(lane_of(1), second)],
            "after the backoff 1 is asked again, well within lack_retry"
        );

        // Busy at every ask since t0, for `stall_timeout` (10 s here): it lacks the chunk after
        // all, and is not asked for it again within `lack_retry` (3 s here).
        s.handle_busy(lane_of(1), second, after);
        let (mut t, mut last_asked) = (after, after);
        while t < t0 + Duration::from_secs(12) {
            t += ms(100);
            s.handle_timeout(t);
            if requests(&drain(&mut s, t)).contains(&(lane_of(1), second)) {
                last_asked = t;
                s.handle_busy(lane_of(1), second, t);
            }
        }
        let (from, to) = (t0 + ms(9_900), t0 + ms(10_300));
        assert!(
            last_asked >= from && last_asked <= to,
            "asked at each backoff until busy for 10 s, then not again: last asked {:?} after t0",
            last_asked - t0
        );
    }

    #[test]
    fn requests_queue_on_the_oldest_lane_of_a_peer_up_to_its_limit() {
        let t0 = Instant::now();
        let mut s = scheduler(10, t0);
        s.handle_peer_up(1, &complete());
        let actions = drain(&mut s, t0);
        assert_eq!(opened(&actions), [(LaneId(0), 1), (LaneId(1), 1)]);
        assert!(actions.contains(&Action::PeersMayAsk(false)));
        let reqs = requests(&actions);
        assert_eq!(reqs.len(), 4, "the default limit");
        assert!(
            reqs.iter().all(|(l, _)| *l == LaneId(0)),
            "one stream, answered in order: {reqs:?}"
        );
        assert!(
            drain(&mut s, t0).is_empty(),
            "nothing more until something happens"
        );
    }

    #[test]
    fn a_chunk_goes_back_to_missing_when_its_lane_closes() {
        let t0 = Instant::now();
        let mut s = scheduler(10, t0);
        s.handle_peer_up(1, &complete());
        let reqs = requests(&drain(&mut s, t0));
        let lost: Vec<_> = reqs.into_iter().filter(|(l, _)| *l == LaneId(0)).collect();
        assert_eq!(lost.len(), 4);
        s.handle_closed(LaneId(0), t0);
        let actions = drain(&mut s, t0);
        assert_eq!(opened(&actions), [(LaneId(2), 1)], "reopened at once");
        let again = requests(&actions);
        assert_eq!(
            hashes(&again),
            hashes(&lost),
            "the rarest again: the lost ones"
        );
        assert!(
            again.iter().all(|(l, _)| *l == LaneId(1)),
            "on the oldest lane left"
        );
    }

    #[test]
    fn a_bad_chunk_bans_the_peer_and_its_chunks_go_to_others() {
        let t0 = Instant::now();
        let mut s = scheduler(8, t0);
        s.handle_peer_up(1, &complete());
        s.handle_peer_up(2, &complete());
        let reqs = requests(&drain(&mut s, t0));
        assert_eq!(reqs.len(), 8);
        let (of_1, of_2): (Vec<_>, Vec<_>) = reqs.into_iter().partition(|(l, _)| l.0 < 2);
        s.handle_bad(LaneId(1), "chunk does not match its hash".into());
        let actions = drain(&mut s, t0);
        let closed: HashSet<LaneId> = actions
            .iter()
            .filter_map(|a| match a {
                Action::CloseLane(lane) => Some(*lane),
                _ => None,
            })
            .collect();
        assert_eq!(closed, [LaneId(0), LaneId(1)].into());
        let ban = Action::Ban {
            peer: 1,
            reason: "chunk does not match its hash".into(),
        };
        assert_eq!(actions.last(), Some(&ban), "after its lanes are closed");
        assert!(requests(&actions).is_empty(), "peer 2 is at its limit");
        for (lane, hash) in &of_2 {
            s.handle_reply(*lane, *hash, 100, ms(5));
        }
        let again = requests(&drain(&mut s, t0));
        assert_eq!(
            hashes(&again),
            hashes(&of_1),
            "peer 1's chunks, from peer 2"
        );
        assert!(again.iter().all(|(l, _)| l.0 >= 2));
        // Its lanes end, and are not reopened.
        s.handle_closed(LaneId(0), t0);
        s.handle_closed(LaneId(1), t0);
        assert!(opened(&drain(&mut s, t0)).is_empty());
    }

    #[test]
    fn lanes_that_keep_closing_are_reopened_after_a_delay() {
        let t0 = Instant::now();
        let mut s = scheduler(10, t0);
        s.handle_peer_up(1, &complete());
        drain(&mut s, t0);
        // Two reopens at once within the window...
        s.handle_closed(LaneId(0), t0);
        s.handle_closed(LaneId(1), t0);
        let reopened = opened(&drain(&mut s, t0));
        assert_eq!(reopened, [(LaneId(2), 1), (LaneId(3), 1)]);
        // ...then the third waits `reopen_delay`, whatever else falls due meanwhile.
        let t1 = secs(t0, 1.0);
        s.handle_closed(LaneId(2), t1);
        assert!(opened(&drain(&mut s, t1)).is_empty());
        let (now, reopened) = loop {
            let now = s.poll_timeout();
            assert!(now <= secs(t1, 3.0), "no reopen in time");
            s.handle_timeout(now);
            let o = opened(&drain(&mut s, now));
            if !o.is_empty() {
                break (now, o);
            }
        };
        assert_eq!((now, reopened), (secs(t1, 3.0), vec![(LaneId(4), 1)]));
        // Once the window is over, a lane reopens at once again.
        let t2 = secs(t0, 10.5);
        s.handle_closed(LaneId(3), t2);
        assert_eq!(opened(&drain(&mut s, t2)), [(LaneId(5), 1)]);
        // Never for a peer that left.
        s.handle_peer_down(&1);
        s.handle_closed(LaneId(4), t2);
        assert!(opened(&drain(&mut s, t2)).is_empty());
    }

    #[test]
    fn the_window_follows_rate_latency_and_chunk_size() {
        let t0 = Instant::now();
        let mut config = config();
        config.picker.default_in_flight = 16;
        let mut s: Scheduler<u8> =
            Scheduler::new(config, (0..=255).map(h), &HashSet::new(), None, t0);
        s.handle_peer_up(1, &complete());
        let mut out: VecDeque<_> = requests(&drain(&mut s, t0)).into();
        let mut now = t0;
        // 16 chunks of 250 kB every 100 ms: 40 MB/s.
        let mut step = |s: &mut Scheduler<u8>, out: &mut VecDeque<_>, latency| {
            for _ in 0..16 {
                let (lane, hash) = out.pop_front().expect("a request out");
                s.handle_reply(lane, hash, 250_000, latency);
            }
            now += ms(100);
            s.handle_timeout(now);
            out.extend(requests(&drain(s, now)));
            s.picker.limit(&1).expect("a limit")
        };
        // A path whose quickest reply takes 100 ms: four round trips at that rate, in requests
        // of the peer's mean chunk, reached by doubling from the default.
        let limits: Vec<usize> = (0..3).map(|_| step(&mut s, &mut out, ms(100))).collect();
        let target = in_flight_target(40e6, Some(ms(100)), Some(250e3), MIN_REQUESTS);
        assert_eq!(target, 64);
        assert_eq!(limits, [32, target, target]);
        assert_eq!(out.len(), target);
        // A reply in 1 ms: a short path, 2 MiB at that rate (the least kept for a busy peer).
        // Down at once.
        let limit = step(&mut s, &mut out, ms(1));
        assert_eq!(
            limit,
            in_flight_target(40e6, Some(ms(1)), Some(250e3), MIN_REQUESTS)
        );
        assert!(limit < target / 4, "{limit} against {target}");
        assert_eq!(out.len(), target - 16, "no request until below the limit");
    }

    #[test]
    fn a_manifest_is_asked_of_peers_that_hold_it_and_of_one_that_shows_it_has_it() {
        // A node the publisher refused (its peer limit) downloads the manifest from the
        // subscribers: those that said (a `Have`) they indexed the revision hold it.
        let t0 = Instant::now();
        let mut s = scheduler(1, t0);
        let holder = FeedPeer {
            has_manifest: true,
            ..FeedPeer::default()
        };
        s.handle_peer_up(1, &FeedPeer::default());
        s.handle_peer_up(2, &holder);
        let out = drain(&mut s, t0);
        let asked: HashSet<u8> = opened(&out).into_iter().map(|(_, p)| p).collect();
        let lane_peer: HashMap<LaneId, u8> = opened(&out).into_iter().collect();
        let to: Vec<u8> = requests(&out).iter().map(|(l, _)| lane_peer[l]).collect();
        assert_eq!(to, [2], "only the peer known to hold the manifest is asked");
        assert!(asked.contains(&1), "lanes are open to both");

        // Peer 2 leaves before it answers; peer 1 then shows it indexed the revision.
        s.handle_peer_down(&2);
        let t1 = secs(t0, 0.5);
        assert!(
            requests(&drain(&mut s, t1)).is_empty(),
            "nobody else holds it"
        );
        s.handle_have(1, &have(7, 0, true, vec![]), t1);
        let out = drain(&mut s, t1);
        let to: Vec<u8> = requests(&out).iter().map(|(l, _)| lane_peer[l]).collect();
        assert_eq!(to, [1], "asked once its `Have` shows it holds the manifest");
    }

    #[test]
    fn a_slow_publisher_is_kept_one_request_deep_and_a_slow_peer_four() {
        let t0 = Instant::now();
        for (info, floor) in [
            (
                FeedPeer {
                    last_resort: true,
                    ..complete()
                },
                1,
            ),
            (complete(), 4),
        ] {
            let mut s = scheduler(64, t0);
            s.handle_peer_up(1, &info);
            let mut out: VecDeque<_> = requests(&drain(&mut s, t0)).into();
            // One 250 kB chunk a second, each 100 ms after it was asked for: a publisher shared
            // by many subscribers.
            let mut now = t0;
            for _ in 0..5 {
                let (lane, hash) = out.pop_front().expect("a request out");
                now += Duration::from_secs(1);
                s.handle_reply(lane, hash, 250_000, ms(100));
                s.handle_timeout(now);
                out.extend(requests(&drain(&mut s, now)));
            }
            assert_eq!(s.picker.limit(&1), Some(floor));
            assert_eq!(out.len(), floor, "requests out: the limit");
        }
    }

    #[test]
    fn the_download_is_done_when_every_chunk_is_verified_each_counted_once() {
        let t0 = Instant::now();
        let own = OwnAvailability::new(7, (0..4).map(h));
        let present: HashSet<ContentHash> = [h(0)].into();
        let mut s = Scheduler::new(config(), (0..4).map(h), &present, Some(own), t0);
        s.handle_peer_up(1, &complete());
        s.handle_peer_up(2, &complete());
        let first = requests(&drain(&mut s, t0));
        assert_eq!(first.len(), 3, "the chunk held is not asked for");
        assert!(!hashes(&first).contains(&h(0)));
        // End game: each chunk outstanding for a second is also asked of the other peer.
        let t1 = secs(t0, 1.0);
        s.handle_timeout(t1);
        let actions = drain(&mut s, t1);
        let second = requests(&actions);
        assert_eq!(hashes(&second), hashes(&first));
        let full = announced(&actions);
        assert_eq!(full.len(), 1);
        assert_eq!(full[0].len(), 1, "a full map: the chunk held");
        for (lane, hash) in first.iter().chain(&second) {
            s.handle_reply(*lane, *hash, 10, ms(1));
        }
        let end = drain(&mut s, t1);
        assert_eq!(s.fetched_bytes(), 30, "three chunks, each counted once");
        let last = announced(&end);
        assert_eq!(last.len(), 1, "once");
        assert_eq!(
            last[0],
            [0, 1, 2, 3],
            "a full map: here smaller than 3 chunks gained"
        );
        assert_eq!(end.last(), Some(&Action::Done));
        assert!(s.is_done());
    }

    #[test]
    fn the_end_of_an_old_lane_leaves_a_returning_peer_alone() {
        let t0 = Instant::now();
        let mut s = scheduler(10, t0);
        s.handle_peer_up(1, &complete());
        drain(&mut s, t0);
        s.handle_peer_down(&1);
        let closing = drain(&mut s, t0);
        assert!(closing.contains(&Action::CloseLane(LaneId(0))));
        assert!(closing.contains(&Action::CloseLane(LaneId(1))));
        assert_eq!(
            s.picker.progress(),
            (0, 10),
            "its requests are missing again"
        );
        s.handle_peer_up(1, &complete());
        let actions = drain(&mut s, t0);
        assert_eq!(opened(&actions), [(LaneId(2), 1), (LaneId(3), 1)]);
        assert_eq!(requests(&actions).len(), 4);
        s.handle_closed(LaneId(0), t0);
        s.handle_closed(LaneId(1), t0);
        assert!(
            drain(&mut s, t0).is_empty(),
            "nothing reopened, nothing taken back"
        );
        assert_eq!(s.picker.in_flight(&1), 4);
    }

    #[test]
    fn peers_are_asked_for_what_their_haves_say_and_the_sink_told_who_may_ask() {
        let t0 = Instant::now();
        let mut s = with_own(3, 16, t0);
        let order = order(16);
        s.handle_peer_up(1, &FeedPeer::default());
        let actions = drain(&mut s, t0);
        assert!(actions.contains(&Action::PeersMayAsk(true)));
        assert_eq!(asked(&actions), [1], "a full map asked of a partial peer");
        assert!(requests(&actions).is_empty(), "it holds nothing yet");
        s.handle_have(1, &have(3, 0, true, vec![0b11, 0]), t0);
        assert_eq!(
            hashes(&requests(&drain(&mut s, t0))),
            order[..2].iter().copied().collect()
        );
        // A Have for another revision says nothing; the next one for ours adds chunks.
        s.handle_have(1, &have(2, 1, false, vec![0xff, 0xff]), t0);
        assert!(requests(&drain(&mut s, t0)).is_empty());
        s.handle_have(1, &have(3, 1, false, vec![0b1100]), t0);
        let actions = drain(&mut s, t0);
        assert!(asked(&actions).is_empty(), "in step");
        assert_eq!(
            hashes(&requests(&actions)),
            order[2..4].iter().copied().collect()
        );
        // A peer not in the download is not asked.
        s.handle_have(5, &have(3, 0, true, vec![0xff, 0xff]), t0);
        assert!(drain(&mut s, t0).is_empty());
        // Only a complete peer left: nobody may ask us.
        s.handle_peer_up(2, &complete());
        s.handle_peer_down(&1);
        assert!(drain(&mut s, t0).contains(&Action::PeersMayAsk(false)));
    }

    /// Hostile and out-of-step `Have`s: one missed (or an update before any full map) is
    /// applied and a full map asked for, at most every `sync_retry`; a chunk past the
    /// revision's end bans the peer and nothing of that `Have` is kept.
    #[test]
    fn haves_out_of_step_ask_for_a_full_map_and_out_of_range_ones_ban() {
        let t0 = Instant::now();
        let mut s = with_own(3, 16, t0);
        let order = order(16);
        s.handle_peer_up(1, &FeedPeer::default());
        s.handle_peer_up(2, &FeedPeer::default());
        drain(&mut s, t0);
        s.handle_have(1, &have(3, 7, false, vec![0b1]), t0);
        let actions = drain(&mut s, t0);
        assert!(
            asked(&actions).is_empty(),
            "asked at its join, not again at once"
        );
        assert_eq!(
            hashes(&requests(&actions)),
            [order[0]].into(),
            "kept: still true"
        );
        let t1 = t0 + ms(2000);
        s.handle_have(1, &have(3, 9, false, vec![0b10]), t1);
        assert_eq!(
            asked(&drain(&mut s, t1)),
            [1],
            "asked again after the retry"
        );
        s.handle_have(1, &have(3, 9, true, vec![0b111]), t1);
        s.handle_have(1, &have(3, 10, false, vec![0b1000]), t1);
        assert!(
            asked(&drain(&mut s, t1)).is_empty(),
            "in step after the full map"
        );
        // Peer 2 asked at its join, never answered: asked again at an announcement.
        s.handle_timeout(t1);
        assert_eq!(asked(&drain(&mut s, t1)), [2]);
        // Chunk 16 of 16: out of range.
        s.handle_have(2, &have(3, 0, true, vec![0, 0, 0b1]), t1);
        let actions = drain(&mut s, t1);
        assert!(actions
            .iter()
            .any(|a| matches!(a, Action::Ban { peer: 2, .. })));
        assert!(requests(&actions).is_empty());
        s.handle_have(2, &have(3, 0, true, vec![0xff]), t1);
        assert!(
            drain(&mut s, t1).is_empty(),
            "banned: no longer in the download"
        );
    }

    #[test]
    fn our_availability_is_announced_when_it_changed_at_most_every_interval() {
        let t0 = Instant::now();
        let mut s = with_own(3, 64, t0);
        s.handle_peer_up(1, &complete());
        let reqs = requests(&drain(&mut s, t0));
        assert_eq!(s.poll_timeout(), t0, "at once: we hold nothing");
        s.handle_timeout(t0);
        let empty: Vec<u32> = Vec::new();
        assert_eq!(announced(&drain(&mut s, t0)), [empty]);
        s.handle_reply(reqs[0].0, reqs[0].1, 10, ms(1));
        let at = |s: &mut Scheduler<u8>, t| {
            s.handle_timeout(t);
            drain(s, t)
        };
        assert!(
            announced(&at(&mut s, t0 + ms(100))).is_empty(),
            "not before the interval"
        );
        let delta = at(&mut s, t0 + ms(250));
        let gained = announced(&delta);
        assert_eq!(gained.len(), 1);
        assert_eq!(gained[0].len(), 1, "the chunk gained, alone");
        assert!(matches!(&delta[0], Action::Announce(m) if !m[0].sync));
        s.handle_announce_dropped();
        let again = at(&mut s, t0 + ms(500));
        assert_eq!(announced(&again), gained, "offered again");
        assert!(
            matches!(&again[0], Action::Announce(m) if m.iter().all(|m| m.sync)),
            "as a full map"
        );
        assert!(announced(&at(&mut s, t0 + ms(750))).is_empty(), "unchanged");
        // A peer that asks for our full map gets it at the next announcement, alone.
        s.handle_sync_wanted(1, 3);
        s.handle_sync_wanted(1, 2);
        let sent = at(&mut s, t0 + ms(1000));
        assert!(announced(&sent).is_empty());
        let to_1: Vec<_> = sent
            .iter()
            .filter_map(|a| match a {
                Action::SendHave { peer: 1, msgs } => Some(indices(msgs)),
                _ => None,
            })
            .collect();
        assert_eq!(to_1, gained, "once, for our revision only");
    }

    /// Track lanes opened and requests sent, as a caller would; true at the end.
    fn carry_out(
        actions: Vec<Action<u8>>,
        out: &mut Vec<(LaneId, ContentHash)>,
        lanes: &mut Vec<LaneId>,
    ) -> bool {
        for a in actions {
            match a {
                Action::OpenLane { lane, .. } => lanes.push(lane),
                Action::Request { lane, hash } => {
                    assert!(lanes.contains(&lane), "a request on a lane not open");
                    out.push((lane, hash));
                }
                Action::Done => return true,
                _ => {}
            }
        }
        false
    }

    /// Peers come, go, lack chunks, send bad ones; requests cannot be queued; lanes close; time
    /// passes: the invariant holds after every step (see `drain`), and a complete peer then
    /// finishes the download.
    #[test]
    fn no_chunk_is_assigned_twice_to_one_peer_whatever_happens() {
        let t0 = Instant::now();
        let mut s = with_own(1, 255, t0);
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut out: Vec<(LaneId, ContentHash)> = Vec::new();
        let mut lanes: Vec<LaneId> = Vec::new();
        let mut now = t0;
        for _ in 0..3000 {
            now += ms(next(300));
            let peer = next(4) as u8;
            let bits = vec![next(256) as u8, next(256) as u8, next(256) as u8, 0];
            let msg = have(1, next(4) as u32, next(2) == 0, bits);
            let pick = |out: &Vec<(LaneId, ContentHash)>, i: u64| {
                (!out.is_empty()).then(|| (i as usize) % out.len())
            };
            match next(9) {
                0 => {
                    let info = FeedPeer {
                        complete: next(3) == 0,
                        last_resort: peer == 0,
                        has_manifest: next(2) == 0,
                    };
                    s.handle_peer_up(peer, &info);
                }
                1 => s.handle_have(peer, &msg, now),
                2 => s.handle_peer_down(&peer),
                3 => {
                    if let Some(i) = pick(&out, next(1000)) {
                        let (lane, hash) = out.swap_remove(i);
                        s.handle_reply(lane, hash, 100, ms(next(50)));
                    }
                }
                4 => {
                    if let Some(i) = pick(&out, next(1000)) {
                        let (lane, hash) = out.swap_remove(i);
                        s.handle_unsent(lane, hash);
                    }
                }
                5 => {
                    if let Some(i) = pick(&out, next(1000)) {
                        let (lane, hash) = out.swap_remove(i);
                        s.handle_not_found(lane, hash, now);
                    }
                }
                6 if !lanes.is_empty() => {
                    let lane = lanes.swap_remove(next(lanes.len() as u64) as usize);
                    out.retain(|(l, _)| *l != lane);
                    s.handle_closed(lane, now);
                }
                7 if !lanes.is_empty() => {
                    let lane = lanes[next(lanes.len() as u64) as usize];
                    s.handle_bad(lane, "bad".into());
                }
                _ => s.handle_timeout(now),
            }
            carry_out(drain(&mut s, now), &mut out, &mut lanes);
        }
        if s.is_done() {
            return;
        }
        s.handle_peer_up(9, &complete());
        for _ in 0..100 {
            if carry_out(drain(&mut s, now), &mut out, &mut lanes) {
                assert!(s.is_done());
                return;
            }
            for (lane, hash) in std::mem::take(&mut out) {
                s.handle_reply(lane, hash, 100, ms(1));
            }
            now += ms(100);
            s.handle_timeout(now);
        }
        panic!("not done: {:?}", s.picker.progress());
    }
}
