//! The simulator's link model: chunk transfers ("flows") between nodes, each node with an
//! uplink and a downlink of its own rate. A flow moves at its fair share of both ends: the
//! smaller of its sender's uplink split evenly over the flows it sends, and its receiver's
//! downlink split evenly over the flows it receives. When a flow starts or ends, only the flows
//! of its two ends change rate, so each event costs the flows at two nodes, never the swarm.
//! Or (`Sharing::MaxMin`) max-min fair over the whole swarm, as congestion controllers sharing
//! bottlenecks tend to: what a flow cannot use at one end goes to the other flows there. Each
//! event then costs every flow.
//!
//! Max-min sharing can also cap the swarm's total (`Links::with_total`): one more link that
//! every flow crosses, for a lab whose CPUs, not its links, bound what all nodes move at once.
//!
//! Owns flows, rates and when each flow finishes; knows nothing of chunks or peers (a flow
//! carries a caller's tag). Time is simulated: nanoseconds since the simulation began.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// A flow's handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowId(usize);

#[derive(Debug)]
struct Flow<T> {
    src: usize,
    dst: usize,
    /// Bytes left at `at`.
    remaining: f64,
    /// Bytes per second since `at`.
    rate: f64,
    at: u64,
    /// Set whenever the finish time changes, unique over all flows (a freed slot is reused):
    /// heap entries with another are stale.
    version: u64,
    tag: T,
}

/// How the flows through a node share its links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Each flow gets the smaller of its two ends' even shares; a change costs the flows of two
    /// nodes.
    Even,
    /// Max-min fair over the whole swarm (progressive filling), as congestion control tends
    /// to: a flow held back at one end leaves the rest of the other end to its other flows. A
    /// change costs every flow.
    MaxMin,
}

/// Every node's links and the flows between them.
#[derive(Debug)]
pub struct Links<T> {
    sharing: Sharing,
    /// What all flows together may move per second, under max-min (infinite: no cap).
    total: f64,
    up: Vec<f64>,
    down: Vec<f64>,
    sending: Vec<Vec<usize>>,
    receiving: Vec<Vec<usize>>,
    flows: Vec<Option<Flow<T>>>,
    free: Vec<usize>,
    finishes: BinaryHeap<Reverse<(u64, u64, usize)>>,
    versions: u64,
}

impl<T: Copy> Links<T> {
    /// Nodes with uplink rates `up` and downlink rates `down`, in bytes per second, their
    /// flows sharing links as `sharing` says.
    pub fn with_sharing(up: Vec<f64>, down: Vec<f64>, sharing: Sharing) -> Self {
        let n = up.len();
        Links {
            sharing,
            total: f64::INFINITY,
            up,
            down,
            sending: vec![Vec::new(); n],
            receiving: vec![Vec::new(); n],
            flows: Vec::new(),
            free: Vec::new(),
            finishes: BinaryHeap::new(),
            versions: 0,
        }
    }

    /// All flows together move at most `bytes_per_sec` (max-min sharing only: the cap is one
    /// more link that every flow crosses).
    pub fn with_total(mut self, bytes_per_sec: f64) -> Self {
        assert_eq!(
            self.sharing,
            Sharing::MaxMin,
            "a total cap needs max-min sharing"
        );
        self.total = bytes_per_sec;
        self
    }

    /// Start sending `bytes` from `src` to `dst` at `now`.
    pub fn start(&mut self, src: usize, dst: usize, bytes: u64, tag: T, now: u64) -> FlowId {
        let flow = Flow {
            src,
            dst,
            remaining: bytes as f64,
            rate: 0.0,
            at: now,
            version: 0,
            tag,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.flows[id] = Some(flow);
                id
            }
            None => {
                self.flows.push(Some(flow));
                self.flows.len() - 1
            }
        };
        self.sending[src].push(id);
        self.receiving[dst].push(id);
        self.reshare(src, dst, now);
        FlowId(id)
    }

    /// Stop `flow` before it finished (its stream ended); its tag is handed back.
    pub fn cancel(&mut self, flow: FlowId, now: u64) -> Option<T> {
        let f = self.flows.get_mut(flow.0)?.take()?;
        self.free.push(flow.0);
        self.sending[f.src].retain(|&i| i != flow.0);
        self.receiving[f.dst].retain(|&i| i != flow.0);
        self.reshare(f.src, f.dst, now);
        Some(f.tag)
    }

    /// When the next flow finishes, if any flows.
    pub fn next_finish(&mut self) -> Option<u64> {
        while let Some(&Reverse((at, version, id))) = self.finishes.peek() {
            if self.is_current(id, version) {
                return Some(at);
            }
            self.finishes.pop();
        }
        None
    }

    /// The flow that finishes next, ended at its finish time; with that time and its tag.
    pub fn pop_finished(&mut self) -> Option<(u64, FlowId, T)> {
        let at = self.next_finish()?;
        let Reverse((_, _, id)) = self.finishes.pop()?;
        let tag = self.cancel(FlowId(id), at)?;
        Some((at, FlowId(id), tag))
    }

    fn is_current(&self, id: usize, version: u64) -> bool {
        matches!(&self.flows[id], Some(f) if f.version == version)
    }

    /// The flows sent by `src` and received by `dst` take their new shares at `now`.
    fn reshare(&mut self, src: usize, dst: usize, now: u64) {
        if self.sharing == Sharing::MaxMin {
            return self.reshare_max_min(now);
        }
        let ids: Vec<usize> = self.sending[src]
            .iter()
            .chain(&self.receiving[dst])
            .copied()
            .collect();
        for id in ids {
            self.rerate(id, now);
        }
    }

    /// Every flow takes its max-min fair rate at `now` (progressive filling: the link with
    /// the smallest share per unfrozen flow fixes its flows at that share, and so on).
    fn reshare_max_min(&mut self, now: u64) {
        let n = self.up.len();
        // Links 0..n are uplinks, n..2n downlinks, 2n the swarm's total: the capacity left and
        // the flows not fixed.
        let total = 2 * n;
        let mut left: Vec<f64> = self.up.iter().chain(&self.down).copied().collect();
        left.push(self.total);
        let mut open: Vec<usize> = (0..n)
            .map(|u| self.sending[u].len())
            .chain((0..n).map(|v| self.receiving[v].len()))
            .collect();
        // Every live flow crosses the total, when there is one (counted only then).
        let live = || self.flows.iter().filter(|f| f.is_some()).count();
        open.push(if self.total.is_finite() { live() } else { 0 });
        let mut rate: Vec<Option<f64>> = vec![None; self.flows.len()];
        let share = |left: &[f64], open: &[usize], l: usize| left[l].max(0.0) / open[l] as f64;
        let mut heap: BinaryHeap<Reverse<(u64, usize)>> = (0..=total)
            .filter(|&l| open[l] > 0)
            .map(|l| Reverse((share(&left, &open, l).to_bits(), l)))
            .collect();
        while let Some(Reverse((bits, l))) = heap.pop() {
            if open[l] == 0 || share(&left, &open, l).to_bits() != bits {
                continue;
            }
            let r = f64::from_bits(bits);
            // The flows through link `l`: an end's list, or (the total) every slot.
            let (list, slots): (&[usize], usize) = if l < n {
                (&self.sending[l], 0)
            } else if l < total {
                (&self.receiving[l - n], 0)
            } else {
                (&[], self.flows.len())
            };
            for id in list.iter().copied().chain(0..slots) {
                if rate[id].is_some() {
                    continue;
                }
                let Some(f) = self.flows[id].as_ref() else {
                    continue;
                };
                rate[id] = Some(r);
                let ends = [f.src, n + f.dst, total];
                for other in ends {
                    if other == l || open[other] == 0 {
                        continue;
                    }
                    left[other] -= r;
                    open[other] -= 1;
                    if open[other] > 0 {
                        heap.push(Reverse((share(&left, &open, other).to_bits(), other)));
                    }
                }
            }
            open[l] = 0;
        }
        for (id, r) in rate.into_iter().enumerate() {
            if let Some(r) = r {
                self.set_rate(id, r, now);
            }
        }
    }

    fn rerate(&mut self, id: usize, now: u64) {
        let Some(f) = self.flows[id].as_ref() else {
            return;
        };
        let share_up = self.up[f.src] / self.sending[f.src].len() as f64;
        let share_down = self.down[f.dst] / self.receiving[f.dst].len() as f64;
        self.set_rate(id, share_up.min(share_down), now);
    }

    /// `id` moves at `rate` from `now`: what it moved so far is taken off, and its finish time
    /// set anew if the rate changed.
    fn set_rate(&mut self, id: usize, rate: f64, now: u64) {
        let Some(f) = self.flows[id].as_mut() else {
            return;
        };
        let moved = f.rate * (now - f.at) as f64 / 1e9;
        f.remaining = (f.remaining - moved).max(0.0);
        f.at = now;
        // Max-min recomputes every rate; one that moved by rounding alone keeps its finish.
        if (f.rate - rate).abs() <= 1e-9 * rate && f.version > 0 {
            return;
        }
        f.rate = rate;
        self.versions += 1;
        f.version = self.versions;
        if rate <= 0.0 {
            return;
        }
        let finish = now + (f.remaining / rate * 1e9).ceil() as u64;
        self.finishes.push(Reverse((finish, f.version, id)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: f64 = 1_000_000.0;
    const SEC: u64 = 1_000_000_000;

    /// Finish times (in ms) of every flow, in order of finishing.
    fn drain(links: &mut Links<u32>) -> Vec<(u64, u32)> {
        std::iter::from_fn(|| links.pop_finished())
            .map(|(at, _, tag)| ((at + 500_000) / 1_000_000, tag))
            .collect()
    }

    #[test]
    fn a_lone_flow_moves_at_the_slower_of_its_two_ends() {
        let mut links = Links::with_sharing(
            vec![10.0 * MB, 1.0 * MB],
            vec![1.0 * MB, 4.0 * MB],
            Sharing::Even,
        );
        links.start(0, 1, 8_000_000, 7, 0);
        assert_eq!(drain(&mut links), vec![(2_000, 7)], "8 MB at 4 MB/s");
    }

    #[test]
    fn flows_from_one_uplink_share_it_evenly_and_the_survivor_speeds_up() {
        let mut links = Links::with_sharing(
            vec![2.0 * MB, 0.0, 0.0],
            vec![0.0, 10.0 * MB, 10.0 * MB],
            Sharing::Even,
        );
        links.start(0, 1, 1_000_000, 1, 0);
        links.start(0, 2, 3_000_000, 2, 0);
        // 1 MB/s each until the first ends at 1 s (2 MB left), then 2 MB/s for the rest.
        assert_eq!(drain(&mut links), vec![(1_000, 1), (2_000, 2)]);
    }

    #[test]
    fn a_downlink_shared_by_two_senders_caps_each_at_half() {
        let mut links = Links::with_sharing(
            vec![5.0 * MB, 5.0 * MB, 0.0],
            vec![0.0, 0.0, 2.0 * MB],
            Sharing::Even,
        );
        links.start(0, 2, 2_000_000, 1, 0);
        links.start(1, 2, 2_000_000, 2, SEC / 2);
        // Flow 1 alone at 2 MB/s for 0.5 s (1 MB), then both at 1 MB/s: flow 1 ends at 1.5 s,
        // flow 2 has 1 MB left then and finishes it alone at 2 MB/s.
        assert_eq!(drain(&mut links), vec![(1_500, 1), (2_000, 2)]);
    }

    #[test]
    fn a_cancelled_flow_gives_its_share_back_and_never_finishes() {
        let mut links = Links::with_sharing(
            vec![2.0 * MB, 0.0, 0.0],
            vec![0.0, 10.0 * MB, 10.0 * MB],
            Sharing::Even,
        );
        let gone = links.start(0, 1, 4_000_000, 1, 0);
        links.start(0, 2, 3_000_000, 2, 0);
        assert_eq!(links.cancel(gone, SEC), Some(1));
        assert_eq!(links.cancel(gone, SEC), None, "cancelled once");
        // 1 MB moved in the first second, 2 MB left at 2 MB/s.
        assert_eq!(drain(&mut links), vec![(2_000, 2)]);
    }

    #[test]
    fn max_min_gives_what_a_crowded_receiver_leaves_to_the_senders_other_flow() {
        // Node 0 sends to 1 and 2; node 1's downlink (2 MB/s) is shared with node 3's flow.
        let links = |sharing| {
            let up = vec![4.0 * MB, 0.0, 0.0, 4.0 * MB];
            let down = vec![0.0, 2.0 * MB, 10.0 * MB, 0.0];
            let mut l = Links::with_sharing(up, down, sharing);
            l.start(0, 1, 4_000_000, 1, 0);
            l.start(0, 2, 6_000_000, 2, 0);
            l.start(3, 1, 4_000_000, 3, 0);
            l
        };
        // Even: flows into 1 get 1 MB/s each (to 4 s); 0's flow to 2 gets half of 4 MB/s,
        // 2 MB/s, to 3 s.
        let sorted = |mut v: Vec<(u64, u32)>| {
            v.sort();
            v
        };
        assert_eq!(
            sorted(drain(&mut links(Sharing::Even))),
            vec![(3_000, 2), (4_000, 1), (4_000, 3)]
        );
        // Max-min: flows into 1 still 1 MB/s; 0's flow to 2 takes the 3 MB/s left, to 2 s.
        assert_eq!(
            sorted(drain(&mut links(Sharing::MaxMin))),
            vec![(2_000, 2), (4_000, 1), (4_000, 3)]
        );
    }

    #[test]
    fn a_total_cap_holds_every_flow_together_under_it() {
        // The flows of the test above, the swarm's total capped at 3 MB/s: the two into node 1
        // still get 1 MB/s each, and 0's flow to 2 only the 1 MB/s the cap leaves (it had 3)
        // until they end at 4 s; then it alone takes the whole cap, 3 MB/s, for its last 3 MB.
        let up = vec![4.0 * MB, 0.0, 0.0, 4.0 * MB];
        let down = vec![0.0, 2.0 * MB, 10.0 * MB, 0.0];
        let mut l = Links::with_sharing(up, down, Sharing::MaxMin).with_total(3.0 * MB);
        l.start(0, 1, 4_000_000, 1, 0);
        l.start(0, 2, 7_000_000, 2, 0);
        l.start(3, 1, 4_000_000, 3, 0);
        let mut done = drain(&mut l);
        done.sort();
        assert_eq!(done, vec![(4_000, 1), (4_000, 3), (5_000, 2)]);
    }

    #[test]
    fn a_reused_slot_does_not_inherit_the_finish_of_the_flow_before_it() {
        let mut links = Links::with_sharing(
            vec![1.0 * MB, 1.0 * MB],
            vec![1.0 * MB, 1.0 * MB],
            Sharing::Even,
        );
        let first = links.start(0, 1, 1_000_000, 1, 0);
        links.cancel(first, SEC / 2);
        links.start(0, 1, 3_000_000, 2, SEC / 2);
        assert_eq!(
            drain(&mut links),
            vec![(3_500, 2)],
            "not at the first's 1 s"
        );
    }
}
