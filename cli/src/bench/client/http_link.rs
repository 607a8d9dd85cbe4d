//! A client's link over SSE or long polling: negotiate (`negotiateVersion=1`), the transport's opening request,
//! POSTs for what the client sends, and an inbox that the transport's reader task (`super::sse`,
//! `super::long_polling`) fills with what the server sends. Each request goes where the client's [`Route`] says.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{long_polling, sse};
use crate::bench::http::{HttpError, Pool, Request, Response};
use crate::bench::route::{HubUrl, Route};
use crate::bench::{BenchError, Transport, MAX_SECONDS};

/// Transport messages read and not yet taken by the client; beyond this the reader waits (and so does the server).
const INBOX: usize = 64;
/// The largest negotiate or POST response body read.
const SMALL_BODY: usize = 64 * 1024;
/// How long a reader task lives at most: the longest run, its set-up and drain, with room to spare.
pub(super) const READER_LIFETIME: Duration = Duration::from_secs(3 * MAX_SECONDS as u64);

/// What a reader task hands the client: a transport message, or why the transport ended.
pub(super) type Inbox = mpsc::Sender<Result<String, BenchError>>;

/// A client's SSE or long-polling link.
pub(super) struct HttpLink {
    transport: Transport,
    route: Arc<Route>,
    token: String,
    /// Keep-alive connections for POSTs (and negotiate, DELETE), one per URL.
    posts: Pool,
    inbox: mpsc::Receiver<Result<String, BenchError>>,
    step_timeout: Duration,
    /// Stops the reader task when the link goes.
    _reader: DropGuard,
}

impl HttpLink {
    /// Negotiates and opens `transport` (SSE or long polling); the handshake is the caller's.
    pub(super) async fn open(
        route: Arc<Route>,
        transport: Transport,
        step_timeout: Duration,
    ) -> Result<HttpLink, BenchError> {
        let mut posts = Pool::new(route.len());
        let token = negotiate(&mut posts, &route, step_timeout).await?;
        let (sender, inbox) = mpsc::channel(INBOX);
        let stop = CancellationToken::new();
        match transport {
            Transport::Sse => {
                let stream = sse::open(&route, &token, step_timeout).await?;
                tokio::spawn(sse::read_events(stream, sender, stop.clone()));
            }
            Transport::LongPolling => {
                let polls = long_polling::first_poll(&route, &token, step_timeout).await?;
                let poller = long_polling::Poller {
                    polls,
                    route: route.clone(),
                    token: token.clone(),
                    wait: step_timeout.max(long_polling::POLL_WAIT),
                };
                tokio::spawn(poller.run(sender, stop.clone()));
            }
            Transport::WebSockets => {
                return Err(BenchError::Options("a WebSocket is not an HTTP link".to_owned()));
            }
        }
        Ok(HttpLink {
            transport,
            route,
            token,
            posts,
            inbox,
            step_timeout,
            _reader: stop.drop_guard(),
        })
    }

    pub(super) fn transport(&self) -> Transport {
        self.transport
    }

    /// POSTs `text` to the next URL and waits for its `200`.
    pub(super) async fn post(&mut self, text: String, doing: &'static str) -> Result<(), BenchError> {
        let (index, url) = self.route.next();
        let target = url.target(Some(&self.token));
        let request = Request {
            method: "POST",
            target: &target,
            headers: "Content-Type: text/plain;charset=UTF-8\r\n",
            body: text.as_bytes(),
            max: SMALL_BODY,
        };
        let response = within(self.step_timeout, url, doing, self.posts.exchange(index, url, request)).await?;
        expect_status(&response, 200, url, doing)
    }

    /// The next transport message. Cancel-safe.
    pub(super) async fn next_text(&mut self, doing: &'static str) -> Result<Utf8Bytes, BenchError> {
        match self.inbox.recv().await {
            Some(Ok(text)) => Ok(text.into()),
            Some(Err(error)) => Err(error),
            None => Err(BenchError::Closed {
                url: self.route.own().http(),
                doing,
                reason: "the transport's reader stopped".to_owned(),
            }),
        }
    }

    /// Ends the connection: a DELETE for long polling (within `wait`), then stops the reader; SSE drops its stream.
    pub(super) async fn close(mut self, wait: Duration) {
        if self.transport == Transport::LongPolling {
            let (index, url) = self.route.next();
            let target = url.target(Some(&self.token));
            let request = Request {
                method: "DELETE",
                target: &target,
                headers: "",
                body: b"",
                max: SMALL_BODY,
            };
            let _ = timeout(wait, self.posts.exchange(index, url, request)).await;
        }
    }
}

/// Negotiates at the route's next URL on a connection of its own (for a WebSocket upgraded elsewhere).
pub(super) async fn negotiate_once(route: &Route, step_timeout: Duration) -> Result<String, BenchError> {
    negotiate(&mut Pool::new(route.len()), route, step_timeout).await
}

/// `POST [base]/negotiate?negotiateVersion=1` at the route's next URL: the connection's token.
async fn negotiate(posts: &mut Pool, route: &Route, step_timeout: Duration) -> Result<String, BenchError> {
    let (index, url) = route.next();
    let mut target = url.negotiate_target();
    if route.stateful() {
        target.push_str("&useStatefulReconnect=true");
    }
    let request = Request {
        method: "POST",
        target: &target,
        headers: "",
        body: b"",
        max: SMALL_BODY,
    };
    let doing = "negotiating";
    let response = within(step_timeout, url, doing, posts.exchange(index, url, request)).await?;
    expect_status(&response, 200, url, doing)?;
    let refused = |reason: String| BenchError::Handshake {
        url: url.http(),
        reason,
    };
    let answer: serde_json::Value = serde_json::from_slice(&response.body).map_err(|error| {
        refused(format!(
            "unreadable negotiate response {:?}: {error}",
            response.excerpt()
        ))
    })?;
    if let Some(error) = answer.get("error") {
        return Err(refused(format!("negotiate: {error}")));
    }
    answer
        .get("connectionToken")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| {
            refused(format!(
                "negotiate response without a connectionToken: {}",
                response.excerpt()
            ))
        })
}

/// Runs an exchange with `url` within `step_timeout`, with the errors the bench reports.
pub(super) async fn within<T>(
    step_timeout: Duration,
    url: &HubUrl,
    doing: &'static str,
    exchange: impl Future<Output = Result<T, HttpError>>,
) -> Result<T, BenchError> {
    match timeout(step_timeout, exchange).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(error.at(url, doing)),
        Err(_) => Err(BenchError::Timeout {
            url: url.http(),
            doing,
            after: step_timeout,
        }),
    }
}

/// `Ok` if `response` has `status`, else the error to report (404: the connection is gone).
pub(super) fn expect_status(
    response: &Response,
    status: u16,
    url: &HubUrl,
    doing: &'static str,
) -> Result<(), BenchError> {
    if response.status == status {
        return Ok(());
    }
    Err(BenchError::Status {
        url: url.http(),
        doing,
        status: response.status,
        body: response.excerpt(),
    })
}
