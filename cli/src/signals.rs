//! Why a process stops: Ctrl-C, SIGTERM, or (for a child of `hubmesh dev` or a test) the end of standard input.
//!
//! A module of the binary (`main.rs`), not of the `hubmesh_cli` library; `hubmesh node` and `hubmesh dev` wait on
//! these.

/// Waits for Ctrl-C, SIGTERM, or (if asked) the end of standard input; returns which.
pub(crate) async fn stop_signal(stdin: bool) -> &'static str {
    let stdin_closed = async {
        if !stdin {
            return std::future::pending().await;
        }
        let (closed, wait) = tokio::sync::oneshot::channel::<()>();
        // A plain thread, not the runtime's blocking pool, so that shutdown never waits for this read.
        let spawned = std::thread::Builder::new().name("stdin-watch".into()).spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            let _ = closed.send(());
        });
        match spawned {
            Ok(_) => {
                let _ = wait.await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch standard input");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        reason = shutdown_signal() => reason,
        () = stdin_closed => "standard input closed",
    }
}

/// Ctrl-C (SIGINT) or, on Unix, SIGTERM.
pub(crate) async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        result = tokio::signal::ctrl_c() => match result {
            Ok(()) => "interrupted",
            Err(_) => std::future::pending().await,
        },
        () = terminate => "terminated",
    }
}
