//! The scenarios that load the machine's two cores on their own: fault
//! injection with client fleets (`faults`), a real Redis Cluster (`cluster`,
//! and `lost_writes`: a failover that loses a task's tail, seen through
//! positions),
//! the soak (`soak`), and a process out of file descriptors (`fds`, which
//! must not share its process with anything running). Each takes [`sluice_tests::chaos::exclusive`], a
//! lock of this process, so they run one at a time whatever
//! `--test-threads` says; that is why they share this binary.
//!
//! ```sh
//! cargo test -p sluice-tests --test chaos -- --nocapture
//! cargo test -p sluice-tests --test chaos -- faults:: --nocapture
//! SLUICE_CHAOS_LONG=1 cargo test -p sluice-tests --test chaos -- faults:: --nocapture
//! ```

mod cluster;
mod faults;
mod fds;
mod feeds;
mod lost_writes;
mod soak;
