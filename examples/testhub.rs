//! The official SignalR functional-test server, served by hubmesh.
//!
//! `cargo run --example testhub -- --urls "https://127.0.0.1:0;http://127.0.0.1:0"` prints one
//! `Now listening on: <url>` line per URL once it serves (port 0 picks a free port), as the upstream test runner
//! expects of an ASP.NET app. HTTPS uses a self-signed certificate made at start-up (clients must not verify it,
//! as upstream's runner sets `NODE_TLS_REJECT_UNAUTHORIZED=0`).

use std::process::ExitCode;

use clap::Parser;
use hubmesh::testing::testhub;

#[derive(Parser, Debug)]
struct Args {
    /// The URLs to serve, `;`-separated as ASP.NET's `--urls`: at most one `http://` and one `https://`.
    #[arg(long, env = "ASPNETCORE_URLS", default_value = "http://127.0.0.1:0")]
    urls: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let listen = match testhub::Listen::from_urls(&args.urls) {
        Ok(listen) => listen,
        Err(error) => {
            eprintln!("testhub: --urls '{}': {error}", args.urls);
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("testhub: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let server = match testhub::serve_on(&listen).await {
            Ok(server) => server,
            Err(error) => {
                eprintln!("testhub: {error}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(https_url) = server.https_url() {
            println!("Now listening on: {https_url}");
        }
        if listen.http.is_some() {
            println!("Now listening on: {}", server.url());
        }
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
