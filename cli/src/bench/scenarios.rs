//! The scenarios: set-up, the measured phase, and the report.
//!
//! One file per scenario (`fanout`, `echo`, `idle`, `connect`, `rooms`, `churn`, `storm`, `quiet`, `detect`), and what
//! they share: `setup` (the common options, checked, and opening clients), `tasks` (the clients as tasks and their
//! progress), `members` (members of small groups sending to their own group, reconnecting in `storm`) and
//! `victim` (the node `storm` and `detect` kill) and `readings` (CPU time, the latency clock, and the report's numbers and wording).

mod churn;
mod connect;
mod detect;
mod echo;
mod fanout;
mod idle;
mod members;
mod quiet;
mod readings;
mod rooms;
mod setup;
mod storm;
mod tasks;
mod victim;

pub(super) use churn::churn;
pub(super) use connect::connect;
pub(super) use detect::detect;
pub(super) use echo::echo;
pub(super) use fanout::fanout;
pub(super) use idle::idle;
pub(super) use quiet::quiet;
pub(super) use rooms::rooms;
pub(super) use storm::storm;
