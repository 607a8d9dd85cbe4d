//! The four scenarios: set-up, the measured phase, and the report.
//!
//! One file per scenario (`fanout`, `echo`, `idle`, `connect`), and what they share: `setup` (the common options,
//! checked, and opening clients), `tasks` (the clients as tasks and their progress) and `readings` (CPU time, the
//! latency clock, and the report's numbers and wording).

mod connect;
mod echo;
mod fanout;
mod idle;
mod readings;
mod setup;
mod tasks;

pub(super) use connect::connect;
pub(super) use echo::echo;
pub(super) use fanout::fanout;
pub(super) use idle::idle;
