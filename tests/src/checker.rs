//! The delivery checker: what each client received (across reconnects)
//! against what was published. Reports lost, duplicated and out-of-order
//! events, and whether every gap was announced by a `sluice.reset`.

use std::collections::BTreeSet;
use std::fmt;

/// One client's view of one task.
#[derive(Debug, Default, Clone)]
pub struct DeliveryLog {
    /// Seqs in arrival order; resets recorded as `Reset(seq)`.
    pub received: Vec<Received>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    Event(u64),
    Reset(u64),
}

#[derive(Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub delivered: usize,
    pub lost: Vec<u64>,
    pub duplicated: Vec<u64>,
    pub out_of_order: usize,
    pub resets: usize,
    /// Seqs missing without a reset announcing the gap.
    pub unannounced_gaps: Vec<u64>,
}

impl Verdict {
    pub fn is_exact(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.out_of_order == 0
            && self.resets == 0
    }

    pub fn is_honest(&self) -> bool {
        self.duplicated.is_empty() && self.out_of_order == 0 && self.unannounced_gaps.is_empty()
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
            "Verdict {{ delivered: {}, lost: {}, duplicated: {}, out_of_order: {}, resets: {}, unannounced_gaps: {} }}",
            self.delivered,
            head(&self.lost),
            head(&self.duplicated),
            self.out_of_order,
            self.resets,
            head(&self.unannounced_gaps)
        )
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "delivered={} lost={} duplicated={} out_of_order={} resets={} unannounced_gaps={}",
            self.delivered,
            self.lost.len(),
            self.duplicated.len(),
            self.out_of_order,
            self.resets,
            self.unannounced_gaps.len()
        )
    }
}

impl DeliveryLog {
    pub fn event(&mut self, seq: u64) {
        self.received.push(Received::Event(seq));
    }

    pub fn reset(&mut self, seq: u64) {
        self.received.push(Received::Reset(seq));
    }

    /// Last seq delivered (the resume point of a reconnect).
    pub fn last(&self) -> Option<u64> {
        self.received.last().map(|r| match r {
            Received::Event(s) | Received::Reset(s) => *s,
        })
    }

    /// Checks against the published seqs `from..=to` (the client is expected
    /// to see every one of them).
    pub fn check(&self, from: u64, to: u64) -> Verdict {
        let mut v = Verdict::default();
        let mut seen = BTreeSet::new();
        let mut prev: Option<u64> = None;
        let mut announced = BTreeSet::new();
        for r in &self.received {
            match *r {
                Received::Event(s) => {
                    v.delivered += 1;
                    let duplicate = !seen.insert(s);
                    if duplicate {
                        v.duplicated.push(s);
                    }
                    if let Some(p) = prev {
                        if s <= p {
                            // A repeat is counted as a duplicate only.
                            if !duplicate {
                                v.out_of_order += 1;
                            }
                        } else if s > p + 1 {
                            // A jump is fine only if a reset announced it.
                            if !announced.contains(&p) {
                                v.unannounced_gaps.extend(p + 1..s);
                            }
                        }
                    }
                    prev = Some(s);
                }
                Received::Reset(s) => {
                    v.resets += 1;
                    if let Some(p) = prev {
                        announced.extend(p..=s.max(p));
                    }
                    announced.insert(s);
                    prev = Some(s);
                }
            }
        }
        v.lost = (from..=to).filter(|s| !seen.contains(s)).collect();
        v
    }
}

impl DeliveryLog {
    /// Checks a client that was expected to see every event of its task from
    /// seq 1, where the store may have lost the task and restarted its
    /// numbering (Redis restarted without persistence): `epochs[i]` is the
    /// last seq published in epoch `i`, each epoch numbered from 1. A
    /// `sluice.reset` whose seq is below the previous seq moves the client to
    /// the next epoch.
    ///
    /// Unlike [`DeliveryLog::check`], `lost` here holds only misses that no
    /// reset announced: seqs after the previous one up to a reset's seq (its
    /// data is the snapshot of that seq), and the rest of an epoch a backward
    /// reset left, count as announced. `unannounced_gaps` lists jumps between
    /// consecutive events with no reset between them (including a first
    /// event above 1).
    pub fn check_epochs(&self, epochs: &[u64]) -> Verdict {
        let n = epochs.len().max(1);
        let top = |e: usize| epochs.get(e).copied().unwrap_or(0);
        let mut v = Verdict::default();
        let mut seen: Vec<BTreeSet<u64>> = vec![BTreeSet::new(); n];
        // Inclusive ranges announced by resets, per epoch.
        let mut covered: Vec<Vec<(u64, u64)>> = vec![Vec::new(); n];
        let mut epoch = 0;
        let mut prev: Option<u64> = None;
        let mut after_reset = false;
        for r in &self.received {
            match *r {
                Received::Event(s) => {
                    v.delivered += 1;
                    if !seen[epoch].insert(s) {
                        v.duplicated.push(s);
                    }
                    let p = prev.unwrap_or(0);
                    if prev.is_some() && s <= p {
                        v.out_of_order += 1;
                    } else if s > p + 1 && !after_reset {
                        v.unannounced_gaps.extend(p + 1..s);
                    }
                    prev = Some(s);
                    after_reset = false;
                }
                Received::Reset(s) => {
                    v.resets += 1;
                    let p = prev.unwrap_or(0);
                    if prev.is_some() && s < p {
                        // The store lost the task: the rest of this epoch is
                        // gone, and the new one is covered up to `s`.
                        covered[epoch].push((p + 1, top(epoch).max(p + 1)));
                        epoch = (epoch + 1).min(n - 1);
                        covered[epoch].push((1, s));
                    } else {
                        covered[epoch].push((p + 1, s));
                    }
                    prev = Some(s);
                    after_reset = true;
                }
            }
        }
        for (e, seen) in seen.iter().enumerate() {
            v.lost.extend((1..=top(e)).filter(|s| {
                !seen.contains(s) && !covered[e].iter().any(|&(a, b)| (a..=b).contains(s))
            }));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_broken_logs() {
        let mut ok = DeliveryLog::default();
        (1..=5).for_each(|s| ok.event(s));
        assert!(ok.check(1, 5).is_exact());

        let mut bad = DeliveryLog::default();
        for s in [1, 2, 2, 4, 3] {
            bad.event(s);
        }
        let v = bad.check(1, 5);
        assert_eq!(v.duplicated, vec![2]);
        assert_eq!(v.lost, vec![5]);
        assert_eq!(v.out_of_order, 1);
        assert_eq!(v.unannounced_gaps, vec![3]);

        let mut reset = DeliveryLog::default();
        reset.event(1);
        reset.reset(10);
        reset.event(11);
        let v = reset.check(1, 11);
        assert!(v.is_honest(), "{v:?}");
        assert_eq!(v.resets, 1);
    }

    #[test]
    fn epochs_after_the_store_lost_data() {
        // Epoch 1 published 1..=5, the client saw 1..=3, then Redis came back
        // empty: a reset to seq 2 of the new epoch, then 3..=6 live.
        let mut log = DeliveryLog::default();
        (1..=3).for_each(|s| log.event(s));
        log.reset(2);
        (3..=6).for_each(|s| log.event(s));
        let v = log.check_epochs(&[5, 6]);
        assert!(v.is_honest() && v.lost.is_empty(), "{v:?}");
        assert_eq!((v.resets, v.delivered), (1, 7));

        // Without a reset the same jump is an unannounced gap and a loss.
        let mut log = DeliveryLog::default();
        for s in [1, 2, 4, 5] {
            log.event(s);
        }
        let v = log.check_epochs(&[5]);
        assert_eq!(v.lost, vec![3]);
        assert_eq!(v.unannounced_gaps, vec![3]);

        // A forward reset (history trimmed) covers up to its seq; a duplicate
        // within an epoch is still a duplicate.
        let mut log = DeliveryLog::default();
        log.event(1);
        log.reset(4);
        log.event(5);
        log.event(5);
        let v = log.check_epochs(&[6]);
        assert_eq!(v.lost, vec![6]);
        assert_eq!(v.duplicated, vec![5]);
        assert_eq!(v.out_of_order, 1);
        assert!(v.unannounced_gaps.is_empty());
    }
}
