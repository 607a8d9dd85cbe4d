//! What the `hubmesh` command is made of, beside the library it runs: node configuration files ([`config`]) and
//! the load tool ([`bench`](mod@bench)). The binary (`src/main.rs`) parses the command line and calls these; the
//! repository's tests call them directly.
//!
//! This crate may use the `hubmesh` library's public API only. It is where the command line's dependencies
//! (clap, figment, tokio-tungstenite) live, so an application that embeds `hubmesh` compiles none of them.

pub mod bench;
pub mod config;
