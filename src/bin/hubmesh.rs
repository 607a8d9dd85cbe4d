//! The `hubmesh` command: runs a node serving the demo hub.
//!
//! `hubmesh node` starts one node on 127.0.0.1:5000 with the demo hub at `/hub` (see `hubmesh::demo`). Cluster
//! configuration (`--config`, seed lists) and the local multi-node `dev` command arrive with clustering.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hubmesh::demo::demo_hub;
use hubmesh::{Limits, Node};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "hubmesh",
    version,
    about = "A realtime hub runtime for the official SignalR clients"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs one node serving the demo hub at `/hub`.
    Node(NodeArgs),
}

#[derive(clap::Args, Debug)]
struct NodeArgs {
    /// The node's name, used in logs.
    #[arg(long, env = "HUBMESH_NAME", default_value = "node-1")]
    name: String,
    /// The HTTP address to serve on (port 0 picks a free port).
    #[arg(long, env = "HUBMESH_LISTEN", default_value = "127.0.0.1:5000")]
    listen: String,
    /// The largest hub message a client may send, in bytes.
    #[arg(long, env = "HUBMESH_MAX_MESSAGE", default_value_t = Limits::default().max_message)]
    max_message: usize,
    /// HTTP worker threads.
    #[arg(long, env = "HUBMESH_WORKERS", default_value_t = 2)]
    workers: usize,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("hubmesh: could not start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Node(args) => run_node(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hubmesh: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    let limits = Limits {
        max_message: args.max_message,
        ..Limits::default()
    };
    let node = Node::builder()
        .name(&args.name)
        .hub(demo_hub())
        .listen(&args.listen)
        .limits(limits)
        .workers(args.workers)
        .start()
        .await?;
    println!("Now listening on: {}", node.url());
    tracing::info!("demo hub at {}/hub", node.url());
    tokio::signal::ctrl_c().await?;
    tracing::info!("stopping");
    node.stop().await;
    Ok(())
}
