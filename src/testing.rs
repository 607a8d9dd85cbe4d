//! Test support (feature `test-util`): the official functional-test hub and a server that runs it in-process.
//!
//! [`TestHubServer::start`] serves the test hub on an ephemeral loopback port from a background thread with its
//! own runtime, so both synchronous tests (which then drive Node.js clients) and async tests can use it.

pub mod cluster;
pub mod testhub;

pub use cluster::TestCluster;

use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

/// The test hub served in-process on `127.0.0.1` at an ephemeral port; stops when dropped.
pub struct TestHubServer {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestHubServer {
    /// Starts the server and waits until it listens.
    pub fn start() -> std::io::Result<TestHubServer> {
        let (ready_tx, ready_rx) = std_mpsc::channel::<std::io::Result<String>>();
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
                    match testhub::serve("127.0.0.1:0").await {
                        Ok(server) => {
                            let _ = ready_tx.send(Ok(server.url()));
                            let _ = stop_rx.await;
                            server.stop().await;
                        }
                        Err(error) => {
                            let _ = ready_tx.send(Err(std::io::Error::other(error.to_string())));
                        }
                    }
                });
            })?;
        let url = ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("the test hub thread ended before it listened"))??;
        Ok(TestHubServer {
            url,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
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
