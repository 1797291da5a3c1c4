//! The checker's verdict over a whole fleet: every client's log checked
//! against what the producer had acknowledged for its task, by content
//! ([`crate::DeliveryLog::check_histories`]), summed, and printed as one
//! line a scenario ends with.

use std::fmt;

use super::fleet::{ClientResult, Transport};
use super::producer::Produced;

#[derive(Debug, Default, Clone)]
pub struct FleetVerdict {
    pub scenario: String,
    pub clients: usize,
    pub sse: usize,
    pub ws: usize,
    pub unfinished: usize,
    pub published: u64,
    pub publish_retries: u64,
    /// Tasks whose numbering restarted (Redis lost them).
    pub epochs_restarted: usize,
    pub connects: u64,
    pub refused: u64,
    pub delivered: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub out_of_order: usize,
    pub resets: usize,
    /// Clients that received at least one reset.
    pub clients_reset: usize,
    /// Clients that received more than one reset.
    pub clients_reset_twice: usize,
    pub unannounced_gaps: usize,
    /// Resets although the store still held the client's position.
    pub unjustified_resets: usize,
    /// Moves to a new numbering without a reset.
    pub silent_switches: usize,
    /// Events Redis ran and then lost before acknowledging them (reported,
    /// not a fault).
    pub unacknowledged: usize,
    /// The first few clients with a problem, for the failure message.
    pub examples: Vec<String>,
}

impl FleetVerdict {
    pub fn new(scenario: &str, produced: &Produced, results: &[ClientResult]) -> FleetVerdict {
        let mut v = FleetVerdict {
            scenario: scenario.to_owned(),
            clients: results.len(),
            published: produced.published,
            publish_retries: produced.retries,
            epochs_restarted: produced.histories.values().filter(|h| h.len() > 1).count(),
            ..FleetVerdict::default()
        };
        for r in results {
            match r.transport {
                Transport::Sse => v.sse += 1,
                Transport::Ws => v.ws += 1,
            }
            v.unfinished += usize::from(!r.finished);
            v.connects += u64::from(r.connects);
            v.refused += u64::from(r.refused);
            let histories = produced.histories.get(&r.task).cloned().unwrap_or_default();
            let epochs: Vec<usize> = histories.iter().map(Vec::len).collect();
            let c = r.log.check_histories(&histories);
            v.delivered += c.delivered;
            v.lost += c.lost.len();
            v.duplicated += c.duplicated.len();
            v.out_of_order += c.out_of_order;
            v.resets += c.resets;
            v.clients_reset += usize::from(c.resets > 0);
            v.clients_reset_twice += usize::from(c.resets > 1);
            v.unannounced_gaps += c.unannounced_gaps.len();
            v.unjustified_resets += c.unjustified_resets;
            v.silent_switches += c.silent_switches;
            v.unacknowledged += c.unacknowledged;
            let bad = !c.is_honest() || !r.finished;
            if bad && v.examples.len() < 5 {
                v.examples.push(format!(
                    "{} {:?} finished={} connects={} epochs={epochs:?}: {c:?}; last 12 received: {:?}",
                    r.task,
                    r.transport,
                    r.finished,
                    r.connects,
                    &r.log.received[r.log.received.len().saturating_sub(12)..]
                ));
            }
        }
        v
    }

    /// Prints the verdict and fails unless every client finished with 0
    /// lost, 0 duplicated, nothing out of order, no unannounced gap, no
    /// silent switch to a new numbering and no reset the store's state did
    /// not justify; resets are allowed only when `resets_allowed`.
    pub fn assert_ok(&self, resets_allowed: bool) {
        eprintln!("{self}");
        let ok = self.lost == 0
            && self.duplicated == 0
            && self.out_of_order == 0
            && self.unannounced_gaps == 0
            && self.unjustified_resets == 0
            && self.silent_switches == 0
            && self.unfinished == 0
            && (resets_allowed || self.resets == 0);
        assert!(ok, "{self}\n{}", self.examples.join("\n"));
    }
}

impl fmt::Display for FleetVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "VERDICT [{}] clients={} (sse={} ws={}) unfinished={} published={} publish_retries={} \
             tasks_renumbered={} connects={} refused={} delivered={} lost={} duplicated={} \
             out_of_order={} resets={} clients_reset={} clients_reset_twice={} unannounced_gaps={} \
             unjustified_resets={} silent_switches={} unacknowledged={}",
            self.scenario,
            self.clients,
            self.sse,
            self.ws,
            self.unfinished,
            self.published,
            self.publish_retries,
            self.epochs_restarted,
            self.connects,
            self.refused,
            self.delivered,
            self.lost,
            self.duplicated,
            self.out_of_order,
            self.resets,
            self.clients_reset,
            self.clients_reset_twice,
            self.unannounced_gaps,
            self.unjustified_resets,
            self.silent_switches,
            self.unacknowledged
        )
    }
}
