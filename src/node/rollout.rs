//! A publisher's rollouts, sans-IO: for each of its last [`ROLLOUT_HISTORY`] revisions, when
//! it was published, which subscribers came to hold it and when, and when every online
//! subscriber first held it (or when a newer revision took its place before that).
//!
//! Fed what the peer table says each time a report is made (`report`, once a second and on
//! every request), with the time passed in, so its times are as fine as the reports. It lives
//! in memory only: a restarted publisher starts a new log, and the revision it holds at start
//! counts as published when the log first sees it.
//!
//! Must not: read the clock, do I/O, or grow with the peers that pass by (holders are capped
//! at [`MAX_HOLDERS`] per revision).

use std::collections::{BTreeMap, VecDeque};

/// Revisions whose rollout is remembered, the current one included.
pub const ROLLOUT_HISTORY: usize = 10;
/// Subscribers remembered as holding one revision; more are counted but not named.
pub const MAX_HOLDERS: usize = 1024;

/// One revision's rollout.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RevisionRollout {
    pub revision: u64,
    pub published_unix_ms: u64,
    /// Subscriber (peer ID) to when it was first seen holding this revision or a newer one.
    pub holders: BTreeMap<String, u64>,
    /// Online subscribers at the last look while this revision was current, and how many of
    /// them held it.
    pub subscribers: usize,
    pub holding: usize,
    /// The first look at which every online subscriber (at least one) held it.
    pub complete_unix_ms: Option<u64>,
    /// When a newer revision was published, if that came first.
    pub superseded_unix_ms: Option<u64>,
}

impl RevisionRollout {
    fn new(revision: u64, now_ms: u64) -> Self {
        RevisionRollout {
            revision,
            published_unix_ms: now_ms,
            holders: BTreeMap::new(),
            subscribers: 0,
            holding: 0,
            complete_unix_ms: None,
            superseded_unix_ms: None,
        }
    }

    /// Milliseconds from publishing to complete, superseded, or `now_ms` while under way.
    pub fn elapsed_ms(&self, now_ms: u64) -> u64 {
        let end = self
            .complete_unix_ms
            .or(self.superseded_unix_ms)
            .unwrap_or(now_ms);
        end.saturating_sub(self.published_unix_ms)
    }

    fn look(&mut self, now_ms: u64, online: &[(String, Option<u64>)]) {
        let holds = |r: &Option<u64>| r.is_some_and(|r| r >= self.revision);
        let holding: Vec<&String> = online
            .iter()
            .filter(|(_, r)| holds(r))
            .map(|(p, _)| p)
            .collect();
        for peer in &holding {
            if self.holders.len() < MAX_HOLDERS || self.holders.contains_key(*peer) {
                self.holders.entry((*peer).clone()).or_insert(now_ms);
            }
        }
        self.subscribers = online.len();
        self.holding = holding.len();
        if self.complete_unix_ms.is_none() && self.subscribers > 0 && self.holding == online.len() {
            self.complete_unix_ms = Some(now_ms);
        }
    }
}

/// The rollouts of the last revisions, oldest first.
#[derive(Debug, Default)]
pub(crate) struct RolloutLog {
    revisions: VecDeque<RevisionRollout>,
}

impl RolloutLog {
    /// The publisher holds `revision` at `now_ms`; `online` are its online subscribers with
    /// the revision each says it holds. Returns the current revision's rollout.
    pub fn observe(
        &mut self,
        now_ms: u64,
        revision: u64,
        online: &[(String, Option<u64>)],
    ) -> &RevisionRollout {
        if self.revisions.back().map(|r| r.revision) != Some(revision) {
            self.publish(now_ms, revision);
        }
        let current = self.revisions.back_mut().expect("just pushed");
        current.look(now_ms, online);
        current
    }

    fn publish(&mut self, now_ms: u64, revision: u64) {
        if let Some(previous) = self.revisions.back_mut() {
            if previous.complete_unix_ms.is_none() {
                previous.superseded_unix_ms = Some(now_ms);
            }
        }
        self.revisions
            .push_back(RevisionRollout::new(revision, now_ms));
        while self.revisions.len() > ROLLOUT_HISTORY {
            self.revisions.pop_front();
        }
    }

    /// The remembered rollouts, newest first.
    pub fn newest_first(&self) -> impl Iterator<Item = &RevisionRollout> {
        self.revisions.iter().rev()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subs(list: &[(&str, Option<u64>)]) -> Vec<(String, Option<u64>)> {
        list.iter().map(|(p, r)| (p.to_string(), *r)).collect()
    }

    #[test]
    fn a_rollout_completes_when_every_online_subscriber_holds_the_revision() {
        let mut log = RolloutLog::default();
        let r = log.observe(1_000, 1, &subs(&[("a", None), ("b", None)]));
        assert_eq!((r.subscribers, r.holding, r.complete_unix_ms), (2, 0, None));
        let r = log.observe(2_000, 1, &subs(&[("a", Some(1)), ("b", None)]));
        assert_eq!((r.holding, r.complete_unix_ms), (1, None));
        assert_eq!(r.elapsed_ms(2_500), 1_500, "under way: counts to now");
        let r = log.observe(3_000, 1, &subs(&[("a", Some(1)), ("b", Some(1))]));
        assert_eq!((r.holding, r.complete_unix_ms), (2, Some(3_000)));
        assert_eq!(r.holders.get("a"), Some(&2_000), "first seen holding");
        assert_eq!(r.holders.get("b"), Some(&3_000));
        assert_eq!(r.elapsed_ms(9_000), 2_000, "complete: stops counting");
        // A newcomer behind it later does not undo the completion.
        let r = log.observe(4_000, 1, &subs(&[("a", Some(1)), ("c", None)]));
        assert_eq!((r.subscribers, r.holding), (2, 1));
        assert_eq!(r.complete_unix_ms, Some(3_000));
    }

    #[test]
    fn no_online_subscriber_is_no_completion() {
        let mut log = RolloutLog::default();
        assert_eq!(log.observe(1_000, 4, &[]).complete_unix_ms, None);
    }

    #[test]
    fn a_newer_revision_supersedes_an_unfinished_rollout_and_the_history_is_bounded() {
        let mut log = RolloutLog::default();
        log.observe(1_000, 1, &subs(&[("a", Some(1))]));
        log.observe(2_000, 2, &subs(&[("a", Some(1))]));
        let r = log.observe(5_000, 3, &subs(&[("a", Some(3))]));
        assert_eq!(r.complete_unix_ms, Some(5_000));
        let seen: Vec<(u64, Option<u64>, Option<u64>)> = log
            .newest_first()
            .map(|r| (r.revision, r.complete_unix_ms, r.superseded_unix_ms))
            .collect();
        assert_eq!(
            seen,
            vec![
                (3, Some(5_000), None),
                (2, None, Some(5_000)),
                (1, Some(1_000), None)
            ]
        );
        for rev in 4..40 {
            log.observe(rev * 1_000, rev, &[]);
        }
        assert_eq!(log.newest_first().count(), ROLLOUT_HISTORY);
        assert_eq!(log.newest_first().next().map(|r| r.revision), Some(39));
    }

    #[test]
    fn holders_are_capped() {
        let mut log = RolloutLog::default();
        let many: Vec<(String, Option<u64>)> = (0..MAX_HOLDERS + 50)
            .map(|i| (format!("p{i}"), Some(1)))
            .collect();
        let r = log.observe(1_000, 1, &many);
        assert_eq!(r.holders.len(), MAX_HOLDERS);
        assert_eq!(r.holding, MAX_HOLDERS + 50, "still counted");
    }
}
