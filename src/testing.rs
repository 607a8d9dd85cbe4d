//! Test support (feature `test-util`): the official functional-test hub and a server that runs it in-process, an
//! in-process cluster, and the one raw SignalR client every Rust test speaks the wire protocol with.
//!
//! [`TestHubServer::start`] serves the test hub on ephemeral loopback ports, plain HTTP and HTTPS, from a background
//! thread with its own runtime, so both synchronous tests (which then drive Node.js clients) and async tests can use
//! it.

pub mod client;
pub mod cluster;
pub mod proxy;
pub mod testhub;

pub use client::TestClient;
pub use cluster::TestCluster;

use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

/// The test hub served in-process on `127.0.0.1` at an ephemeral port; stops when dropped.
pub struct TestHubServer {
    url: String,
    https_url: String,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestHubServer {
    /// Starts the server and waits until it listens.
    pub fn start() -> std::io::Result<TestHubServer> {
        let (ready_tx, ready_rx) = std_mpsc::channel::<std::io::Result<(String, String)>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("hubmesh-testhub".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listen = testhub::Listen {
                        http: Some("127.0.0.1:0".to_owned()),
                        https: Some("127.0.0.1:0".to_owned()),
                    };
                    match testhub::serve_on(&listen).await {
                        Ok(server) => {
                            let urls = (server.url(), server.https_url().unwrap_or_default());
                            let _ = ready_tx.send(Ok(urls));
                            let _ = stop_rx.await;
                            server.stop().await;
                        }
                        Err(error) => {
                            let _ = ready_tx.send(Err(std::io::Error::other(error.to_string())));
                        }
                    }
                });
            })?;
        let (url, https_url) = ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("the test hub thread ended before it listened"))??;
        Ok(TestHubServer {
            url,
            https_url,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `https://127.0.0.1:<port>`: the same server over TLS, with a self-signed certificate made at start-up.
    pub fn https_url(&self) -> &str {
        &self.https_url
    }
}

impl Drop for TestHubServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Several test servers in-process forming one cluster (see [`testhub::serve_cluster`]), served from a background
/// thread with its own runtime like [`TestHubServer`]; stops when dropped.
pub struct TestHubCluster {
    urls: Vec<String>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestHubCluster {
    /// Starts `count` test servers as one cluster and waits until each listens and all see each other.
    pub fn start(count: usize) -> std::io::Result<TestHubCluster> {
        let (ready_tx, ready_rx) = std_mpsc::channel::<std::io::Result<Vec<String>>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("hubmesh-testhub-cluster".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match testhub::serve_cluster(count).await {
                        Ok(servers) => {
                            let urls: Vec<String> = servers.iter().map(testhub::TestHubHandle::url).collect();
                            let formed = wait_for_cluster(&urls, count).await;
                            let _ = ready_tx.send(formed.map(|()| urls));
                            let _ = stop_rx.await;
                            for server in servers {
                                server.stop().await;
                            }
                        }
                        Err(error) => {
                            let _ = ready_tx.send(Err(std::io::Error::other(error.to_string())));
                        }
                    }
                });
            })?;
        let urls = ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("the test cluster thread ended before it listened"))??;
        Ok(TestHubCluster {
            urls,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:<port>` of each node.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }
}

/// Waits (at most 15 s) until every server's cluster view lists `count` live members.
async fn wait_for_cluster(urls: &[String], count: usize) -> std::io::Result<()> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    for url in urls {
        let addr: std::net::SocketAddr = url
            .trim_start_matches("http://")
            .parse()
            .map_err(|_| std::io::Error::other(format!("not an address: {url}")))?;
        loop {
            let reply = client::http_request_with_body(addr, "GET", crate::node::http::CLUSTER_PATH, &[], b"").await;
            let live = reply
                .ok()
                .and_then(|reply| serde_json::from_slice::<serde_json::Value>(&reply.body).ok())
                .and_then(|view| view["live"].as_array().map(Vec::len));
            if live == Some(count) {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(std::io::Error::other(format!(
                    "{url} did not see {count} members within 15 s"
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

impl Drop for TestHubCluster {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
