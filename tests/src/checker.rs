//! The delivery checker: what each client received (across reconnects)
//! against what was published. Reports lost, duplicated and out-of-order
//! events, unannounced gaps, and resets that nothing justified.
//!
//! The rule it enforces is the README's: every event exactly once, in order,
//! or an explicit `sluice.reset`. A reset at seq `s` announces what is gone
//! *up to* `s` (its data is the snapshot of `s`); everything after `s` must
//! then arrive exactly, from `s + 1` on. Nothing else excuses a miss.
//!
//! Two checks:
//! - [`DeliveryLog::check`]: one history, numbered `from..=to` (no store
//!   lost anything; a reset is only excused for what it announces).
//! - [`DeliveryLog::check_histories`]: the store may have lost acknowledged
//!   writes and numbered new events again (Redis restarted empty, a failover
//!   that lost a primary's tail). Each event carries the producer's *mark*
//!   (a number unique to one publish), so every received item is placed in
//!   the history it came from, by content. A reset is justified only when
//!   the client's position is not in the history the reset belongs to (the
//!   store really lost it), and a move to another history without a reset
//!   is a silent switch.

use std::collections::BTreeSet;
use std::fmt;

/// One client's view of one task.
#[derive(Debug, Default, Clone)]
pub struct DeliveryLog {
    /// Seqs in arrival order; resets recorded as `Reset(seq)`.
    pub received: Vec<Received>,
    /// The producer's mark of each item of `received` (same index), when
    /// its payload carries one (`None` otherwise).
    pub marks: Vec<Option<u64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    Event(u64),
    Reset(u64),
}

#[derive(Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub delivered: usize,
    /// Published seqs that were neither delivered nor announced by a reset.
    pub lost: Vec<u64>,
    pub duplicated: Vec<u64>,
    pub out_of_order: usize,
    pub resets: usize,
    /// Seqs missing without a reset announcing the gap.
    pub unannounced_gaps: Vec<u64>,
    /// Resets although the store still held the client's position (only
    /// [`DeliveryLog::check_histories`] can tell).
    pub unjustified_resets: usize,
    /// Events that continued in another history with no reset between
    /// (the new numbering passed off as the old one).
    pub silent_switches: usize,
    /// Events whose content no acknowledged publish had: the store ran them
    /// but lost them before the producer saw an answer (not a fault).
    pub unacknowledged: usize,
}

impl Verdict {
    /// Every event once, in order, and no reset at all.
    pub fn is_exact(&self) -> bool {
        self.is_honest() && self.resets == 0
    }

    /// Nothing lost, repeated or reordered without a reset announcing it,
    /// and no reset that the store's state did not justify.
    pub fn is_honest(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.out_of_order == 0
            && self.unannounced_gaps.is_empty()
            && self.unjustified_resets == 0
            && self.silent_switches == 0
    }
}

fn head(v: &[u64]) -> String {
    let shown: Vec<String> = v.iter().take(8).map(u64::to_string).collect();
    if v.len() > 8 {
        format!("[{} ... ({} in all)]", shown.join(", "), v.len())
    } else {
        format!("[{}]", shown.join(", "))
    }
}

impl fmt::Debug for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Verdict {{ delivered: {}, lost: {}, duplicated: {}, out_of_order: {}, resets: {}, \
             unannounced_gaps: {}, unjustified_resets: {}, silent_switches: {}, unacknowledged: {} }}",
            self.delivered,
            head(&self.lost),
            head(&self.duplicated),
            self.out_of_order,
            self.resets,
            head(&self.unannounced_gaps),
            self.unjustified_resets,
            self.silent_switches,
            self.unacknowledged,
        )
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "delivered={} lost={} duplicated={} out_of_order={} resets={} unannounced_gaps={} \
             unjustified_resets={} silent_switches={} unacknowledged={}",
            self.delivered,
            self.lost.len(),
            self.duplicated.len(),
            self.out_of_order,
            self.resets,
            self.unannounced_gaps.len(),
            self.unjustified_resets,
            self.silent_switches,
            self.unacknowledged,
        )
    }
}

impl DeliveryLog {
    pub fn event(&mut self, seq: u64) {
        self.received.push(Received::Event(seq));
        self.marks.push(None);
    }

    pub fn reset(&mut self, seq: u64) {
        self.received.push(Received::Reset(seq));
        self.marks.push(None);
    }

    /// An event whose payload carries the producer's mark.
    pub fn marked_event(&mut self, seq: u64, mark: Option<u64>) {
        self.received.push(Received::Event(seq));
        self.marks.push(mark);
    }

    /// A reset whose snapshot carries the producer's mark of its event.
    pub fn marked_reset(&mut self, seq: u64, mark: Option<u64>) {
        self.received.push(Received::Reset(seq));
        self.marks.push(mark);
    }

    /// Last seq delivered (the resume point of a reconnect).
    pub fn last(&self) -> Option<u64> {
        self.received.last().map(|r| match r {
            Received::Event(s) | Received::Reset(s) => *s,
        })
    }

    /// Checks against one history whose published seqs are `from..=to`
    /// (the client asked for `from` first and must see every one of them).
    ///
    /// A reset at `s` announces `(previous, s]`; the event after it must be
    /// `s + 1`. A first event above `from` is an unannounced gap. `lost`
    /// holds the seqs of `from..=to` neither delivered nor announced.
    pub fn check(&self, from: u64, to: u64) -> Verdict {
        let mut v = Verdict::default();
        let mut seen = BTreeSet::new();
        let mut announced = BTreeSet::new();
        // The position the client stands at: the next event must be `at + 1`.
        let mut at = from.saturating_sub(1);
        for r in &self.received {
            match *r {
                Received::Event(s) => {
                    v.delivered += 1;
                    let duplicate = !seen.insert(s);
                    if duplicate {
                        v.duplicated.push(s);
                    }
                    if s <= at {
                        // A repeat is counted as a duplicate only.
                        if !duplicate {
                            v.out_of_order += 1;
                        }
                    } else if s > at + 1 {
                        v.unannounced_gaps.extend(at + 1..s);
                    }
                    at = at.max(s);
                }
                Received::Reset(s) => {
                    v.resets += 1;
                    // Announces everything after the client's position up
                    // to and including `s` (the snapshot's event).
                    announced.extend(at + 1..=s);
                    at = s;
                }
            }
        }
        v.lost = (from..=to)
            .filter(|s| !seen.contains(s) && !announced.contains(s))
            .collect();
        v
    }

    /// Checks a client that followed a task from seq 1 while the store may
    /// have lost acknowledged writes. `histories` holds, in the order they
    /// existed, the marks of every acknowledged event of each history the
    /// task had (`histories[h][k]` is the mark of seq `k + 1`; a later
    /// history repeats the prefix it kept of the one before). The client is
    /// expected to end with the last history, exactly.
    ///
    /// - An event must be the one right after the client's position, in the
    ///   same history (else: duplicate, out of order, unannounced gap, or a
    ///   silent switch of history).
    /// - A reset is justified only if the history it belongs to does not
    ///   hold the client's position; it announces that history up to its
    ///   seq.
    /// - `lost`: seqs of the last history neither delivered nor announced.
    ///
    /// Every item must carry a mark ([`DeliveryLog::marked_event`]).
    pub fn check_histories(&self, histories: &[Vec<u64>]) -> Verdict {
        let mut v = Verdict::default();
        let holds = |h: &Vec<u64>, seq: u64, mark: Option<u64>| {
            seq == 0
                || (mark.is_some() && seq as usize <= h.len() && Some(h[seq as usize - 1]) == mark)
        };
        // Histories that hold an item (seq, mark).
        let homes = |seq: u64, mark: Option<u64>| -> Vec<usize> {
            (0..histories.len())
                .filter(|&i| seq > 0 && holds(&histories[i], seq, mark))
                .collect()
        };
        let mut seen: BTreeSet<(u64, Option<u64>)> = BTreeSet::new();
        // The client's position: seq and mark (0, None before anything).
        let (mut at, mut at_mark) = (0u64, None::<u64>);
        // Whether the position is in no known history (an unacknowledged
        // event): continuity from there cannot be judged by content.
        let mut at_unknown = false;
        let last = histories.len().saturating_sub(1);
        let mut announced_in_last = 0u64;
        for (r, mark) in self.received.iter().zip(&self.marks) {
            match *r {
                Received::Event(s) => {
                    v.delivered += 1;
                    let home = homes(s, *mark);
                    if home.is_empty() {
                        v.unacknowledged += 1;
                    }
                    let duplicate = !seen.insert((s, *mark));
                    if duplicate {
                        v.duplicated.push(s);
                    } else if s <= at {
                        v.out_of_order += 1;
                    } else if s > at + 1 {
                        v.unannounced_gaps.extend(at + 1..s);
                    } else if !home.is_empty()
                        && !at_unknown
                        && !home.iter().any(|&h| holds(&histories[h], at, at_mark))
                    {
                        // The next seq, but of a history that does not hold
                        // what the client saw before it.
                        v.silent_switches += 1;
                    }
                    if s > at {
                        (at, at_mark, at_unknown) = (s, *mark, home.is_empty());
                    }
                }
                Received::Reset(s) => {
                    v.resets += 1;
                    let home = homes(s, *mark);
                    let justified = if home.is_empty() {
                        // A snapshot of a lost, unacknowledged event (or of
                        // an unknown task, seq 0): the store lost the task.
                        v.unacknowledged += usize::from(s > 0);
                        at > 0
                    } else {
                        at > 0
                            && (at_unknown
                                || !home.iter().any(|&h| holds(&histories[h], at, at_mark)))
                    };
                    if !justified {
                        v.unjustified_resets += 1;
                    }
                    if home.contains(&last) {
                        announced_in_last = announced_in_last.max(s);
                    }
                    (at, at_mark, at_unknown) = (s, *mark, home.is_empty());
                }
            }
        }
        if let Some(h) = histories.last() {
            v.lost = (1..=h.len() as u64)
                .filter(|&s| s > announced_in_last && !seen.contains(&(s, Some(h[s as usize - 1]))))
                .collect();
        }
        v
    }
}

/// Records an acknowledged publish of one task in its histories (see
/// [`DeliveryLog::check_histories`]): `seq` as Redis answered it, `mark` as
/// the producer put it in the payload (unique within the task). A seq at or
/// below the current history's end with another mark means Redis lost
/// writes and numbered on from what it kept: a new history that repeats the
/// kept prefix. Seqs no acknowledged publish had get mark 0 (unknown).
pub fn record_ack(histories: &mut Vec<Vec<u64>>, seq: u64, mark: u64) {
    if histories.is_empty() {
        histories.push(Vec::new());
    }
    let n = seq as usize;
    let Some(cur) = histories.last_mut() else {
        return;
    };
    if n == cur.len() + 1 {
        cur.push(mark);
    } else if n > cur.len() + 1 {
        cur.resize(n - 1, 0);
        cur.push(mark);
    } else if n > 0 && cur[n - 1] != mark {
        let mut next = cur[..n - 1].to_vec();
        next.push(mark);
        histories.push(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(items: &[(char, u64)]) -> DeliveryLog {
        let mut l = DeliveryLog::default();
        for &(k, s) in items {
            match k {
                'e' => l.event(s),
                _ => l.reset(s),
            }
        }
        l
    }

    /// Events and resets with marks: `('e', seq, mark)`.
    fn marked(items: &[(char, u64, u64)]) -> DeliveryLog {
        let mut l = DeliveryLog::default();
        for &(k, s, m) in items {
            match k {
                'e' => l.marked_event(s, Some(m)),
                _ => l.marked_reset(s, Some(m)),
            }
        }
        l
    }

    #[test]
    fn acks_build_histories() {
        let mut h = Vec::new();
        for (seq, mark) in [(1, 11), (2, 12), (3, 13), (3, 13), (2, 22), (3, 23)] {
            record_ack(&mut h, seq, mark);
        }
        assert_eq!(h, vec![vec![11, 12, 13], vec![11, 22, 23]]);
        record_ack(&mut h, 1, 31);
        assert_eq!(h[2], vec![31]);
    }

    #[test]
    fn exact_and_broken_logs() {
        let ok = log(&[('e', 1), ('e', 2), ('e', 3), ('e', 4), ('e', 5)]);
        assert!(ok.check(1, 5).is_exact());

        let bad = log(&[('e', 1), ('e', 2), ('e', 2), ('e', 4), ('e', 3)]);
        let v = bad.check(1, 5);
        assert_eq!(v.duplicated, vec![2]);
        assert_eq!(v.lost, vec![5]);
        assert_eq!(v.out_of_order, 1);
        assert_eq!(v.unannounced_gaps, vec![3]);
        assert!(!v.is_honest());

        // A reset announces what it skips; the event after it is exact.
        let reset = log(&[('e', 1), ('r', 10), ('e', 11)]);
        let v = reset.check(1, 11);
        assert!(v.is_honest() && !v.is_exact(), "{v:?}");
        assert_eq!(v.resets, 1);
        assert!(v.lost.is_empty());
    }

    /// The excuse the old checker made: after a reset at 60, any jump was
    /// accepted (61..=199 never delivered, nothing announced them).
    #[test]
    fn a_reset_does_not_excuse_a_later_jump() {
        let mut l = DeliveryLog::default();
        (1..=50).for_each(|s| l.event(s));
        l.reset(60);
        l.event(200);
        let v = l.check(1, 200);
        assert!(!v.is_honest(), "{v:?}");
        assert_eq!(v.unannounced_gaps, (61..200).collect::<Vec<_>>());
        assert_eq!(v.lost, (61..200).collect::<Vec<_>>());
    }

    /// `lost` alone (the client stopped early) fails honesty too.
    #[test]
    fn a_missing_tail_is_not_honest() {
        let l = log(&[('e', 1), ('e', 2)]);
        let v = l.check(1, 4);
        assert_eq!(v.lost, vec![3, 4]);
        assert!(v.unannounced_gaps.is_empty());
        assert!(!v.is_honest(), "{v:?}");
    }

    /// A first event above `from` is a gap, not a start.
    #[test]
    fn a_late_first_event_is_a_gap() {
        let v = log(&[('e', 3), ('e', 4)]).check(1, 4);
        assert_eq!(v.unannounced_gaps, vec![1, 2]);
        assert!(!v.is_honest());
        // Unless a reset announced it.
        let v = log(&[('r', 2), ('e', 3), ('e', 4)]).check(1, 4);
        assert!(v.is_honest(), "{v:?}");
    }

    #[test]
    fn histories_after_the_store_lost_everything() {
        // History 0 had marks 11..=15 (seqs 1..=5); Redis came back empty
        // and history 1 has marks 21..=26 (seqs 1..=6).
        let h = vec![vec![11, 12, 13, 14, 15], vec![21, 22, 23, 24, 25, 26]];
        // Saw 1..=3, a reset to seq 2 of the new history, then 3..=6.
        let l = marked(&[
            ('e', 1, 11),
            ('e', 2, 12),
            ('e', 3, 13),
            ('r', 2, 22),
            ('e', 3, 23),
            ('e', 4, 24),
            ('e', 5, 25),
            ('e', 6, 26),
        ]);
        let v = l.check_histories(&h);
        assert!(v.is_honest(), "{v:?}");
        assert_eq!((v.resets, v.delivered), (1, 7));

        // A forward reset into the new history (its numbering passed the
        // client's position) is justified too.
        let l = marked(&[('e', 1, 11), ('r', 4, 24), ('e', 5, 25), ('e', 6, 26)]);
        assert!(l.check_histories(&h).is_honest());
    }

    /// The old epoch checker's excuse: a backward reset with no numbering
    /// restart by the producer marked the rest of the epoch as announced.
    #[test]
    fn a_reset_the_store_did_not_need_is_unjustified() {
        let h = vec![vec![11, 12, 13, 14, 15, 16]];
        // Backward reset to 2 within the one history, then 3..=6 again.
        let l = marked(&[
            ('e', 1, 11),
            ('e', 2, 12),
            ('e', 3, 13),
            ('e', 4, 14),
            ('r', 2, 12),
            ('e', 3, 13),
            ('e', 4, 14),
            ('e', 5, 15),
            ('e', 6, 16),
        ]);
        let v = l.check_histories(&h);
        assert_eq!(v.unjustified_resets, 1, "{v:?}");
        assert_eq!(v.duplicated, vec![3, 4]);
        assert!(!v.is_honest());

        // A forward reset over events the store still held: 2..=4 were
        // never delivered, and Redis had them.
        let l = marked(&[('e', 1, 11), ('r', 4, 14), ('e', 5, 15), ('e', 6, 16)]);
        let v = l.check_histories(&h);
        assert_eq!(v.unjustified_resets, 1, "{v:?}");
        assert!(!v.is_honest());

        // The old epoch checker's exact excuse: a backward reset marked the
        // rest of the only epoch (5) as announced, and the jump to the final
        // event after it passed.
        let l = marked(&[
            ('e', 1, 11),
            ('e', 2, 12),
            ('e', 3, 13),
            ('e', 4, 14),
            ('r', 2, 12),
            ('e', 6, 16),
        ]);
        let v = l.check_histories(&h);
        assert_eq!(v.unjustified_resets, 1, "{v:?}");
        assert_eq!(v.unannounced_gaps, vec![3, 4, 5]);
        assert_eq!(v.lost, vec![5]);

        // A reset before anything was delivered (history from 1 retained).
        let l = marked(&[('r', 3, 13), ('e', 4, 14), ('e', 5, 15), ('e', 6, 16)]);
        assert_eq!(l.check_histories(&h).unjustified_resets, 1);
    }

    /// The new numbering delivered under seqs after the old ones, with no
    /// reset: what a bare `Last-Event-ID` cannot tell apart.
    #[test]
    fn continuing_in_another_history_without_a_reset_is_caught() {
        let h = vec![vec![11, 12, 13], vec![21, 22, 23, 24, 25]];
        let l = marked(&[
            ('e', 1, 11),
            ('e', 2, 12),
            ('e', 3, 13),
            ('e', 4, 24),
            ('e', 5, 25),
        ]);
        let v = l.check_histories(&h);
        assert_eq!(v.silent_switches, 1, "{v:?}");
        assert_eq!(v.lost, vec![1, 2, 3], "the new history's 1..=3 never came");
        assert!(!v.is_honest());
    }

    /// A failover that lost a primary's tail: history 1 keeps 1..=3 of
    /// history 0. A client at 2 continues exactly (no reset needed); one at
    /// 5 (lost) needs a reset.
    #[test]
    fn a_kept_prefix_is_the_same_history() {
        let h = vec![vec![11, 12, 13, 14, 15], vec![11, 12, 13, 24, 25, 26]];
        let l = marked(&[
            ('e', 1, 11),
            ('e', 2, 12),
            ('e', 3, 13),
            ('e', 4, 24),
            ('e', 5, 25),
            ('e', 6, 26),
        ]);
        assert!(l.check_histories(&h).is_exact());

        let mut items = vec![
            ('e', 1, 11),
            ('e', 2, 12),
            ('e', 3, 13),
            ('e', 4, 14),
            ('e', 5, 15),
        ];
        items.extend([('r', 5, 25), ('e', 6, 26)]);
        let v = marked(&items).check_histories(&h);
        assert!(v.is_honest() && v.resets == 1, "{v:?}");

        // The same reset from a client still at 3 (which history 1 holds)
        // skipped 4 and 5 for nothing.
        let v = marked(&[
            ('e', 1, 11),
            ('e', 2, 12),
            ('e', 3, 13),
            ('r', 5, 25),
            ('e', 6, 26),
        ])
        .check_histories(&h);
        assert_eq!(v.unjustified_resets, 1, "{v:?}");
    }

    #[test]
    fn histories_count_duplicates_gaps_and_a_missing_end() {
        let h = vec![vec![11, 12, 13, 14, 15, 16]];
        let l = marked(&[('e', 1, 11), ('e', 3, 13), ('e', 3, 13), ('e', 4, 14)]);
        let v = l.check_histories(&h);
        assert_eq!(v.unannounced_gaps, vec![2]);
        assert_eq!(v.duplicated, vec![3]);
        assert_eq!(v.lost, vec![2, 5, 6]);
        assert!(!v.is_honest());
    }

    /// An event the store ran but lost before the producer got its answer
    /// is reported, not failed; the reset after it is justified.
    #[test]
    fn unacknowledged_events_are_reported() {
        let h = vec![vec![11, 12], vec![99, 22, 23]];
        let l = marked(&[
            ('e', 1, 11),
            ('e', 2, 12),
            ('e', 3, 99),
            ('r', 2, 22),
            ('e', 3, 23),
        ]);
        let v = l.check_histories(&h);
        assert_eq!(v.unacknowledged, 1);
        assert!(v.is_honest(), "{v:?}");
    }
}
