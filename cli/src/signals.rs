//! Why a process stops: Ctrl-C, SIGTERM, or (for a child of `hubmesh dev` or a test) the end of standard input.
//!
//! A module of the binary (`main.rs`), not of the `hubmesh_cli` library; `hubmesh node` and `hubmesh dev` wait on
//! these. A node takes the first Ctrl-C or SIGTERM as "drain, then exit" and a second one as "stop at once", so
//! [`StopSignals`] keeps one SIGTERM listener for the life of the process: a second SIGTERM that arrives while the
//! first is handled is counted, not lost (and never falls back to the default action, which would kill the
//! process with a non-zero status).

/// Why a process was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Ctrl-C (SIGINT) or SIGTERM: the text says which.
    Signal(&'static str),
    /// Standard input ended (the parent, `hubmesh dev` or a test, is gone or asks the node to stop).
    StdinClosed,
    /// An operator asked over HTTP (`POST /_hubmesh/drain`); not a signal, but the node treats it as SIGTERM.
    DrainAsked,
}

impl Stop {
    /// The reason, for logs.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Stop::Signal(reason) => reason,
            Stop::StdinClosed => "standard input closed",
            Stop::DrainAsked => "a drain was asked for over HTTP",
        }
    }
}

/// The stop requests of a process: Ctrl-C, SIGTERM and, if asked, the end of standard input, each seen once per
/// occurrence ([`StopSignals::next`]).
pub(crate) struct StopSignals {
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
    /// Fires once when standard input ends; `None` when not watched, or once it has fired.
    stdin_closed: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl StopSignals {
    /// Starts listening (SIGTERM at once, so that from now on it never kills the process by default); watches
    /// standard input if `stdin`.
    pub(crate) fn new(stdin: bool) -> Self {
        #[cfg(unix)]
        let terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                None
            }
        };
        StopSignals {
            #[cfg(unix)]
            terminate,
            stdin_closed: if stdin { watch_stdin() } else { None },
        }
    }

    /// Waits for the next stop request. The end of standard input is reported once; after it, only signals.
    pub(crate) async fn next(&mut self) -> Stop {
        #[cfg(unix)]
        let terminate = async {
            match self.terminate.as_mut() {
                Some(signal) => {
                    if signal.recv().await.is_none() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        let stdin_closed = async {
            match self.stdin_closed.as_mut() {
                // The sender is dropped without sending only if the watching thread died: treat that as closed too.
                Some(closed) => {
                    let _ = closed.await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let stop = tokio::select! {
            result = tokio::signal::ctrl_c() => match result {
                Ok(()) => Stop::Signal("interrupted"),
                Err(_) => std::future::pending().await,
            },
            () = terminate => Stop::Signal("terminated"),
            () = stdin_closed => Stop::StdinClosed,
        };
        if stop == Stop::StdinClosed {
            self.stdin_closed = None;
        }
        stop
    }
}

/// A thread that reads standard input to its end, and the receiver that then fires.
fn watch_stdin() -> Option<tokio::sync::oneshot::Receiver<()>> {
    let (closed, wait) = tokio::sync::oneshot::channel::<()>();
    // A plain thread, not the runtime's blocking pool, so that shutdown never waits for this read.
    let spawned = std::thread::Builder::new().name("stdin-watch".into()).spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = closed.send(());
    });
    match spawned {
        Ok(_) => Some(wait),
        Err(error) => {
            tracing::warn!(%error, "cannot watch standard input");
            None
        }
    }
}

/// Ctrl-C (SIGINT) or, on Unix, SIGTERM: the first one (`hubmesh dev`, which has no drain of its own).
pub(crate) async fn shutdown_signal() -> &'static str {
    StopSignals::new(false).next().await.reason()
}
