//! The official SignalR functional-test server, served by hubmesh.
//!
//! `cargo run --example testhub -- --urls http://127.0.0.1:0` prints `Now listening on: http://127.0.0.1:PORT`
//! once it serves (port 0 picks a free port), as the upstream test runner expects of an ASP.NET app.

use std::process::ExitCode;

use clap::Parser;
use hubmesh::testing::testhub;

#[derive(Parser, Debug)]
struct Args {
    /// The URL to serve, as ASP.NET's `--urls` (only `http://` on a loopback address).
    #[arg(long, env = "ASPNETCORE_URLS", default_value = "http://127.0.0.1:0")]
    urls: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // ASP.NET accepts a `;`-separated list; this server takes the first http URL.
    let Some(address) = args.urls.split(';').find_map(|url| url.strip_prefix("http://")) else {
        eprintln!("testhub: --urls needs an http:// URL, got '{}'", args.urls);
        return ExitCode::FAILURE;
    };
    let address = address.trim_end_matches('/').to_owned();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("testhub: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let server = match testhub::serve(&address).await {
            Ok(server) => server,
            Err(error) => {
                eprintln!("testhub: {error}");
                return ExitCode::FAILURE;
            }
        };
        println!("Now listening on: {}", server.url());
        tokio::select! {
            result = tokio::signal::ctrl_c() => {
                if let Err(error) = result {
                    eprintln!("testhub: {error}");
                }
            }
        }
        server.stop().await;
        ExitCode::SUCCESS
    })
}
