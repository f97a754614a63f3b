//! Where each partition's delivery stands, and when to distrust it.
//!
//! A consumer must never move past an offset it has not seen unless the broker shows
//! the offset does not exist. Kafka offsets can have real gaps (transaction markers,
//! compaction), but those only show *inside* continuous delivery. Right after the
//! fetch position is set (assignment, seek, resume after pause), a jump forward is
//! suspect: some Kafka-compatible brokers (Tansu 0.6, measured) answer a fetch that
//! starts inside a stored record batch with the *next* batch, silently skipping the
//! rest of the current one, or with nothing at all when it is the last batch.
//!
//! So after positioning at offset `n`: the first record must be `n`. If it is later,
//! or nothing arrives for a while, the tracker repositions earlier (`n-1`, then
//! `n-16`, `n-256`, ...) until delivery crosses `n` continuously: a record below `n`
//! followed by `n` (all well) or by a later offset (a real gap, accepted). From the
//! start of the log every jump is real. This module is pure; the processing task
//! feeds it records, markers and clock ticks and carries out its seeks.

use std::time::{Duration, Instant};

/// How long a freshly positioned partition may stay silent before it is probed.
pub(crate) const SILENCE: Duration = Duration::from_secs(1);

/// What to do with a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Accept,
    /// Accept; the offsets in between do not exist (a real gap).
    AcceptAfterGap {
        from: i64,
        to: i64,
    },
    /// Already seen, or stale from before a seek.
    Drop,
    /// Drop, and seek the partition to this offset.
    Reposition(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Continuous delivery: any jump is a real gap.
    Flowing,
    /// Positioned at `next`, nothing received yet.
    Fresh { since: Instant },
    /// A recovery seek is on its way; records until it lands are stale.
    Seeking { back: i64 },
    /// Positioned `back` before `next`, waiting for delivery to cross `next`.
    Recovering(Recovery),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Recovery {
    back: i64,
    /// A record below `next` arrived: delivery is continuous up to `next`.
    saw_below: bool,
    /// The seek landed at the start of the log: nothing precedes it to miss.
    from_start: bool,
    since: Instant,
}

#[derive(Debug, Clone)]
pub(crate) struct Tracker {
    next: i64,
    state: State,
}

impl Tracker {
    /// Positioned at `offset` (assignment or a seek to a stored offset).
    pub(crate) fn positioned(offset: i64, now: Instant) -> Self {
        Self {
            next: offset,
            state: State::Fresh { since: now },
        }
    }

    /// The next offset this partition should deliver.
    pub(crate) fn next(&self) -> i64 {
        self.next
    }

    /// The fetch restarted at `next` (resume after pause).
    pub(crate) fn restarted(&mut self, now: Instant) {
        if !matches!(self.state, State::Seeking { .. }) {
            self.state = State::Fresh { since: now };
        }
    }

    /// A recovery seek took effect at `offset`, which may be later than asked when the
    /// log starts later (`at_log_start`).
    pub(crate) fn seek_landed(&mut self, offset: i64, at_log_start: bool, now: Instant) {
        if let State::Seeking { back } = self.state {
            self.state = State::Recovering(Recovery {
                back: back.min(self.next - offset).max(0),
                saw_below: false,
                from_start: at_log_start || offset == 0,
                since: now,
            });
        }
    }

    pub(crate) fn record(&mut self, offset: i64, now: Instant) -> Verdict {
        match self.state.clone() {
            State::Seeking { .. } => Verdict::Drop,
            State::Flowing => {
                if offset < self.next {
                    Verdict::Drop
                } else if offset == self.next {
                    self.next += 1;
                    Verdict::Accept
                } else {
                    self.accept_gap(offset)
                }
            }
            State::Fresh { .. } => {
                if offset < self.next {
                    // Delivery from before our position: it will cross it continuously.
                    self.state = State::Recovering(Recovery {
                        back: 0,
                        saw_below: true,
                        from_start: false,
                        since: now,
                    });
                    Verdict::Drop
                } else if offset == self.next {
                    self.next += 1;
                    self.state = State::Flowing;
                    Verdict::Accept
                } else if self.next == 0 {
                    // Nothing precedes offset 0: the records before `offset` are gone
                    // (retention), not skipped.
                    self.accept_gap(offset)
                } else {
                    self.reposition(1)
                }
            }
            State::Recovering(recovery) => {
                if offset < self.next {
                    self.state = State::Recovering(Recovery {
                        saw_below: true,
                        since: now,
                        ..recovery
                    });
                    Verdict::Drop
                } else if offset == self.next {
                    self.next += 1;
                    self.state = State::Flowing;
                    Verdict::Accept
                } else if recovery.saw_below || recovery.from_start {
                    // Delivered continuously across `next`, or from the start of the log.
                    self.accept_gap(offset)
                } else {
                    self.reposition(recovery.back.max(1).saturating_mul(16))
                }
            }
        }
    }

    /// Called periodically: a positioned partition that stays silent is probed.
    pub(crate) fn tick(&mut self, now: Instant) -> Option<i64> {
        match self.state.clone() {
            State::Fresh { since } if now.duration_since(since) >= SILENCE => {
                if self.next == 0 {
                    self.state = State::Flowing; // nothing before the start to miss
                    None
                } else {
                    self.reposition_offset(1)
                }
            }
            State::Recovering(recovery) if now.duration_since(recovery.since) >= SILENCE => {
                if recovery.saw_below || recovery.from_start {
                    // Delivery reached the end of the partition at or below `next`.
                    self.state = State::Flowing;
                    None
                } else {
                    self.reposition_offset(recovery.back.max(1).saturating_mul(16))
                }
            }
            _ => None,
        }
    }

    fn reposition_offset(&mut self, back: i64) -> Option<i64> {
        match self.reposition(back) {
            Verdict::Reposition(offset) => Some(offset),
            _ => None,
        }
    }

    fn reposition(&mut self, back: i64) -> Verdict {
        let back = back.clamp(1, self.next.max(1));
        self.state = State::Seeking { back };
        Verdict::Reposition((self.next - back).max(0))
    }

    fn accept_gap(&mut self, offset: i64) -> Verdict {
        let from = self.next;
        self.next = offset + 1;
        self.state = State::Flowing;
        Verdict::AcceptAfterGap { from, to: offset }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn later(now: Instant, millis: u64) -> Instant {
        now + Duration::from_millis(millis)
    }

    #[test]
    fn delivery_from_the_position_flows() {
        let now = Instant::now();
        let mut tracker = Tracker::positioned(10, now);
        assert_eq!(tracker.record(10, now), Verdict::Accept);
        assert_eq!(tracker.record(11, now), Verdict::Accept);
        assert_eq!(
            tracker.record(11, now),
            Verdict::Drop,
            "a repeat is dropped"
        );
        assert_eq!(tracker.next(), 12);
    }

    #[test]
    fn a_jump_inside_continuous_delivery_is_a_real_gap() {
        let now = Instant::now();
        let mut tracker = Tracker::positioned(10, now);
        assert_eq!(tracker.record(10, now), Verdict::Accept);
        assert_eq!(
            tracker.record(13, now),
            Verdict::AcceptAfterGap { from: 11, to: 13 }
        );
        assert_eq!(tracker.next(), 14);
    }

    #[test]
    fn a_jump_right_after_positioning_is_distrusted_and_recovered_by_seeking_back() {
        // The broker skipped the rest of the batch holding 1013 (as Tansu 0.6 does).
        let now = Instant::now();
        let mut tracker = Tracker::positioned(1013, now);
        assert_eq!(tracker.record(1028, now), Verdict::Reposition(1012));
        assert_eq!(
            tracker.record(1029, now),
            Verdict::Drop,
            "stale until the seek lands"
        );
        tracker.seek_landed(1012, false, now);
        // 1012 is in the same stored batch, so the broker skips again: go further back.
        assert_eq!(tracker.record(1028, now), Verdict::Reposition(1013 - 16));
        tracker.seek_landed(1013 - 16, false, now);
        // Now delivery starts in the previous batch and crosses 1013.
        assert_eq!(tracker.record(1000, now), Verdict::Drop);
        assert_eq!(tracker.record(1012, now), Verdict::Drop);
        assert_eq!(tracker.record(1013, now), Verdict::Accept);
        assert_eq!(tracker.record(1014, now), Verdict::Accept);
    }

    #[test]
    fn a_gap_seen_while_crossing_the_position_is_real() {
        let now = Instant::now();
        let mut tracker = Tracker::positioned(50, now);
        assert_eq!(tracker.record(60, now), Verdict::Reposition(49));
        tracker.seek_landed(49, false, now);
        assert_eq!(tracker.record(49, now), Verdict::Drop);
        assert_eq!(
            tracker.record(60, now),
            Verdict::AcceptAfterGap { from: 50, to: 60 }
        );
    }

    #[test]
    fn from_the_start_of_the_partition_every_jump_is_real() {
        let now = Instant::now();
        let mut tracker = Tracker::positioned(3, now);
        assert_eq!(tracker.record(9, now), Verdict::Reposition(2));
        tracker.seek_landed(2, false, now);
        assert_eq!(
            tracker.record(9, now),
            Verdict::Reposition(0),
            "back is capped at the start"
        );
        tracker.seek_landed(0, false, now);
        assert_eq!(
            tracker.record(9, now),
            Verdict::AcceptAfterGap { from: 3, to: 9 }
        );
    }

    #[test]
    fn a_seek_clamped_to_the_start_of_a_trimmed_log_makes_a_jump_real() {
        // Retention removed offsets below 500; a seek back to 484 lands at 500.
        let now = Instant::now();
        let mut tracker = Tracker::positioned(600, now);
        assert_eq!(tracker.record(700, now), Verdict::Reposition(599));
        tracker.seek_landed(599, false, now);
        assert_eq!(tracker.record(700, now), Verdict::Reposition(584));
        tracker.seek_landed(584, false, now);
        assert_eq!(tracker.record(700, now), Verdict::Reposition(600 - 256));
        tracker.seek_landed(500, true, now);
        assert_eq!(
            tracker.record(700, now),
            Verdict::AcceptAfterGap { from: 600, to: 700 }
        );
    }

    #[test]
    fn a_silent_fresh_position_is_probed_and_settles_when_the_end_is_reached() {
        // Positioned inside the last stored batch: the broker sends nothing at all.
        let now = Instant::now();
        let mut tracker = Tracker::positioned(2321, now);
        assert_eq!(
            tracker.tick(later(now, 500)),
            None,
            "not silent long enough"
        );
        assert_eq!(tracker.tick(later(now, 1000)), Some(2320));
        assert_eq!(
            tracker.tick(later(now, 1500)),
            None,
            "no second seek while one is pending"
        );
        tracker.seek_landed(2320, false, later(now, 1500));
        // Still silent from 2320: go further back.
        assert_eq!(tracker.tick(later(now, 2600)), Some(2321 - 16));
        tracker.seek_landed(2321 - 16, false, later(now, 2600));
        assert_eq!(tracker.record(2305, later(now, 2700)), Verdict::Drop);
        assert_eq!(tracker.record(2321, later(now, 2700)), Verdict::Accept);
    }

    #[test]
    fn a_silent_partition_at_its_end_settles_after_one_probe() {
        let now = Instant::now();
        let mut tracker = Tracker::positioned(40, now);
        assert_eq!(tracker.tick(later(now, 1000)), Some(39));
        tracker.seek_landed(39, false, later(now, 1000));
        assert_eq!(tracker.record(39, later(now, 1100)), Verdict::Drop);
        assert_eq!(tracker.tick(later(now, 2200)), None);
        // Flowing now: the next record continues the sequence.
        assert_eq!(tracker.record(40, later(now, 3000)), Verdict::Accept);
    }

    #[test]
    fn an_empty_partition_from_offset_zero_is_not_probed() {
        let now = Instant::now();
        let mut tracker = Tracker::positioned(0, now);
        assert_eq!(tracker.tick(later(now, 2000)), None);
        assert_eq!(tracker.record(0, later(now, 3000)), Verdict::Accept);
    }

    #[test]
    fn records_gone_to_retention_before_offset_zero_are_a_real_gap() {
        let now = Instant::now();
        let mut tracker = Tracker::positioned(0, now);
        assert_eq!(
            tracker.record(500, now),
            Verdict::AcceptAfterGap { from: 0, to: 500 }
        );
    }

    #[test]
    fn resuming_after_a_pause_is_a_fresh_position() {
        let now = Instant::now();
        let mut tracker = Tracker::positioned(0, now);
        for offset in 0..5 {
            assert_eq!(tracker.record(offset, now), Verdict::Accept);
        }
        tracker.restarted(now);
        assert_eq!(tracker.record(9, now), Verdict::Reposition(4));
    }
}
