//! The checker's verdict over a whole fleet: every client's log checked
//! against what the producer had acknowledged for its task
//! ([`crate::DeliveryLog::check_epochs`]), summed, and printed as one line
//! a scenario ends with.

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
    pub unannounced_gaps: usize,
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
            epochs_restarted: produced.epochs.values().filter(|e| e.len() > 1).count(),
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
            let epochs = produced.epochs.get(&r.task).cloned().unwrap_or_default();
            let c = r.log.check_epochs(&epochs);
            v.delivered += c.delivered;
            v.lost += c.lost.len();
            v.duplicated += c.duplicated.len();
            v.out_of_order += c.out_of_order;
            v.resets += c.resets;
            v.clients_reset += usize::from(c.resets > 0);
            v.unannounced_gaps += c.unannounced_gaps.len();
            let bad = !c.lost.is_empty()
                || !c.duplicated.is_empty()
                || c.out_of_order > 0
                || !c.unannounced_gaps.is_empty()
                || !r.finished;
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
    /// lost, 0 duplicated, nothing out of order and no unannounced gap;
    /// resets are allowed only when `resets_allowed`.
    pub fn assert_ok(&self, resets_allowed: bool) {
        eprintln!("{self}");
        let ok = self.lost == 0
            && self.duplicated == 0
            && self.out_of_order == 0
            && self.unannounced_gaps == 0
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
             out_of_order={} resets={} clients_reset={} unannounced_gaps={}",
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
            self.unannounced_gaps
        )
    }
}
