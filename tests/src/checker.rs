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
                    if !seen.insert(s) {
                        v.duplicated.push(s);
                    }
                    if let Some(p) = prev {
                        if s <= p {
                            v.out_of_order += 1;
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
}
