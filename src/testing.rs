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

use std::future::Future;
use std::net::SocketAddr;
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

/// Test servers running on a runtime of their own, on a thread of their own, until this is dropped.
struct Background {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    /// Runs `serve` on a new two-worker runtime on thread `name`, and waits until it has its servers listening:
    /// what it hands back with them comes back here. The servers stop when the `Background` is dropped.
    fn start<T, F>(name: &str, serve: impl FnOnce() -> F + Send + 'static) -> std::io::Result<(Background, T)>
    where
        T: Send + 'static,
        F: Future<Output = std::io::Result<(T, Vec<testhub::TestHubHandle>)>>,
    {
        let (ready_tx, ready_rx) = std_mpsc::channel::<std::io::Result<T>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name(name.to_owned()).spawn(move || {
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
                match serve().await {
                    Ok((ready, servers)) => {
                        let _ = ready_tx.send(Ok(ready));
                        let _ = stop_rx.await;
                        for server in servers {
                            server.stop().await;
                        }
                    }
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                    }
                }
            });
        })?;
        let ready = ready_rx
            .recv()
            .map_err(|_| std::io::Error::other(format!("the {name} thread ended before it listened")))??;
        let background = Background {
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        Ok((background, ready))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The test hub served in-process on `127.0.0.1` at an ephemeral port; stops when dropped.
pub struct TestHubServer {
    url: String,
    https_url: String,
    _background: Background,
}

impl TestHubServer {
    /// Starts the server and waits until it listens.
    pub fn start() -> std::io::Result<TestHubServer> {
        let (background, (url, https_url)) = Background::start("hubmesh-testhub", || async {
            let listen = testhub::Listen {
                http: Some("127.0.0.1:0".to_owned()),
                https: Some("127.0.0.1:0".to_owned()),
            };
            let server = testhub::serve_on(&listen)
                .await
                .map_err(|error| std::io::Error::other(error.to_string()))?;
            let urls = (server.url(), server.https_url().unwrap_or_default());
            Ok((urls, vec![server]))
        })?;
        Ok(TestHubServer {
            url,
            https_url,
            _background: background,
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

/// Several test servers in-process forming one cluster (see [`testhub::serve_cluster`]), served from a background
/// thread with its own runtime like [`TestHubServer`]; stops when dropped.
pub struct TestHubCluster {
    urls: Vec<String>,
    _background: Background,
}

impl TestHubCluster {
    /// Starts `count` test servers as one cluster and waits until each listens and all see each other.
    pub fn start(count: usize) -> std::io::Result<TestHubCluster> {
        let (background, urls) = Background::start("hubmesh-testhub-cluster", move || async move {
            let servers = testhub::serve_cluster(count)
                .await
                .map_err(|error| std::io::Error::other(error.to_string()))?;
            let urls: Vec<String> = servers.iter().map(testhub::TestHubHandle::url).collect();
            wait_for_cluster(&urls, count).await?;
            Ok((urls, servers))
        })?;
        Ok(TestHubCluster {
            urls,
            _background: background,
        })
    }

    /// `http://127.0.0.1:<port>` of each node.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The address of each node, for a proxy in front of them.
    pub fn addrs(&self) -> std::io::Result<Vec<SocketAddr>> {
        self.urls
            .iter()
            .map(|url| {
                url.trim_start_matches("http://")
                    .parse()
                    .map_err(|_| std::io::Error::other(format!("not an address: {url}")))
            })
            .collect()
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
