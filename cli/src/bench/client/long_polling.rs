//! The long-polling half that the server writes: the first poll (answered at once, it opens the connection), then
//! one poll pending at a time, each at the route's next URL, whose bodies go to the client's inbox
//! (docs/protocol.md#long-polling).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;

use super::http_link::{expect_status, within, Inbox, READER_LIFETIME};
use crate::bench::http::{Pool, Request, MAX_CHUNK};
use crate::bench::route::Route;
use crate::bench::BenchError;

/// How long a poll may wait: the server answers an empty `200` after its poll timeout (90 s); the official
/// client's HTTP timeout is 100 s.
pub(super) const POLL_WAIT: Duration = Duration::from_secs(100);
/// The most polls one connection makes (its lifetime bounds it first at any sane rate).
const MAX_POLLS: u64 = 1_000_000_000;

/// The first poll of `token`, at the route's next URL: `200` at once. Returns the poll connections, to go on with.
pub(super) async fn first_poll(route: &Route, token: &str, step_timeout: Duration) -> Result<Pool, BenchError> {
    let mut polls = Pool::new(route.len());
    let (index, url) = route.next();
    let target = url.target(Some(token));
    let request = Request {
        method: "GET",
        target: &target,
        headers: "",
        body: b"",
        max: MAX_CHUNK,
    };
    let doing = "opening the long-polling connection";
    let response = within(step_timeout, url, doing, polls.exchange(index, url, request)).await?;
    expect_status(&response, 200, url, doing)?;
    Ok(polls)
}

/// A connection's polling, after the first poll.
pub(super) struct Poller {
    pub(super) polls: Pool,
    pub(super) route: Arc<Route>,
    pub(super) token: String,
    /// How long one poll may take.
    pub(super) wait: Duration,
}

impl Poller {
    /// Polls into `inbox` until the server ends the connection (`204`) or a poll fails (then the reason goes to
    /// the inbox), `stop` fires, the inbox is dropped, or [`READER_LIFETIME`] or [`MAX_POLLS`] is reached.
    pub(super) async fn run(mut self, inbox: Inbox, stop: CancellationToken) {
        let lifetime = Instant::now() + READER_LIFETIME;
        let doing = "polling";
        for _ in 0..MAX_POLLS {
            let (index, url) = self.route.next();
            let target = url.target(Some(&self.token));
            let request = Request {
                method: "GET",
                target: &target,
                headers: "",
                body: b"",
                max: MAX_CHUNK,
            };
            let polled = tokio::select! {
                () = stop.cancelled() => return,
                () = sleep_until(lifetime) => return,
                polled = timeout(self.wait, self.polls.exchange(index, url, request)) => polled,
            };
            let received = match polled {
                Ok(Ok(response)) if response.status == 200 && response.body.is_empty() => continue,
                Ok(Ok(response)) if response.status == 200 => {
                    String::from_utf8(response.body).map_err(|_| BenchError::Protocol {
                        url: url.http(),
                        reason: "a poll's body is not UTF-8".to_owned(),
                    })
                }
                Ok(Ok(response)) if response.status == 204 => Err(BenchError::Closed {
                    url: url.http(),
                    doing,
                    reason: "the server ended the connection (204)".to_owned(),
                }),
                Ok(Ok(response)) => expect_status(&response, 200, url, doing).map(|()| String::new()),
                Ok(Err(error)) => Err(error.at(url, doing)),
                Err(_) => Err(BenchError::Timeout {
                    url: url.http(),
                    doing,
                    after: self.wait,
                }),
            };
            let failed = received.is_err();
            if inbox.send(received).await.is_err() || failed {
                return;
            }
        }
    }
}
