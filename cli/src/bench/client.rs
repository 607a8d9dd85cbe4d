//! A minimal SignalR JSON client, enough for the demo hub contract: over a WebSocket, direct (`skipNegotiation`)
//! or negotiated on one node and upgraded on the next (`--spread`), or over Server-Sent Events or long polling
//! (`client::http_link`, with `client::sse` and `client::long_polling` reading what the server sends).

mod http_link;
mod long_polling;
mod sse;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::route::Route;
use super::{BenchError, Transport};
use http_link::HttpLink;

/// The record separator of the JSON hub protocol.
pub(crate) const RS: char = '\u{1e}';

/// The client method the demo hub invokes.
pub(crate) const CLIENT_METHOD: &str = "msg";

/// A Ping record.
pub(crate) const PING: &str = "{\"type\":6}\u{1e}";

/// How often an otherwise silent client pings, well inside the server's 30 s client timeout.
pub(crate) const PING_EVERY: Duration = Duration::from_secs(10);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One hub message, the fields the bench reads.
#[derive(Deserialize)]
pub(crate) struct Record<'a> {
    #[serde(rename = "type")]
    pub(crate) kind: u8,
    #[serde(default, borrow)]
    pub(crate) target: Option<&'a str>,
    #[serde(default, rename = "invocationId", borrow)]
    pub(crate) invocation_id: Option<&'a str>,
    #[serde(default, borrow)]
    pub(crate) arguments: Option<&'a RawValue>,
    #[serde(default)]
    pub(crate) error: Option<String>,
    /// A Completion's result.
    #[serde(default, borrow)]
    pub(crate) result: Option<&'a RawValue>,
}

impl<'a> Record<'a> {
    /// The payload of an invocation of `msg` whose only argument is a string without escapes.
    pub(crate) fn msg_payload(&self) -> Option<&'a str> {
        if self.kind != 1 || self.target != Some(CLIENT_METHOD) {
            return None;
        }
        let raw: &'a str = self.arguments?.get();
        raw.strip_prefix("[\"")?.strip_suffix("\"]")
    }
}

/// One connection to a hub.
pub(crate) struct Client {
    link: Link,
    /// The client's own URL, for messages.
    url: String,
    next_id: u64,
    timeout: Duration,
    /// With `--stateful`: what it received and acknowledged.
    stateful: Option<Stateful>,
}

/// A stateful client's count of the records it received, to acknowledge them as the official client does (it acks
/// a second after a burst; this one every [`ACK_EVERY`] records, which keeps the server's buffer as small, and
/// what is left when a scenario calls [`Client::ack_received`]: `idle` does each second).
#[derive(Default)]
struct Stateful {
    received: u64,
    acked: u64,
}

/// Records between two Acks of a stateful client.
const ACK_EVERY: u64 = 64;

/// Whether a JSON record is one the server numbers for stateful reconnect (Invocation to Completion, types 1 to 5).
fn trackable(record: &str) -> bool {
    let kind = record
        .split_once("\"type\":")
        .and_then(|(_, rest)| rest.bytes().next())
        .unwrap_or(b'0');
    (b'1'..=b'5').contains(&kind)
}

/// What carries a client's messages.
enum Link {
    WebSocket(Box<Socket>),
    Http(Box<HttpLink>),
}

impl Client {
    /// Connects over `transport` by way of `route` and completes the JSON handshake, each step within
    /// `step_timeout`.
    pub(crate) async fn connect(
        route: Arc<Route>,
        transport: Transport,
        step_timeout: Duration,
    ) -> Result<Client, BenchError> {
        let stateful = (route.stateful() && transport == Transport::WebSockets).then(Stateful::default);
        let (link, url) = match transport {
            Transport::WebSockets => {
                let (url, address) = if route.spread() {
                    // Negotiate here, upgrade at the next node: the connection is adopted there.
                    let token = http_link::negotiate_once(&route, step_timeout).await?;
                    let hub = route.next().1;
                    (hub.ws(Some(&token)), hub.address().to_owned())
                } else if route.negotiates_at_own_url() {
                    // Stateful reconnect is negotiated, and `--negotiate` asks for it: negotiate and upgrade at the
                    // client's own URL.
                    let token = http_link::negotiate_once(&route, step_timeout).await?;
                    (route.own().ws(Some(&token)), route.own().address().to_owned())
                } else {
                    (route.own().ws(None), route.own().address().to_owned())
                };
                let socket = connect_websocket(&url, &address, route.source(), step_timeout).await?;
                (Link::WebSocket(Box::new(socket)), url)
            }
            Transport::Sse | Transport::LongPolling => {
                let url = route.own().http();
                let link = HttpLink::open(route, transport, step_timeout).await?;
                (Link::Http(Box::new(link)), url)
            }
        };
        let version = if stateful.is_some() { 2 } else { 1 };
        let mut client = Client {
            link,
            url,
            next_id: 1,
            timeout: step_timeout,
            stateful: None,
        };
        client
            .send(
                format!("{{\"protocol\":\"json\",\"version\":{version}}}{RS}"),
                "sending the handshake",
            )
            .await?;
        let text = client
            .next_text_within(step_timeout, "waiting for the handshake response")
            .await?;
        let first = text.split(RS).next().unwrap_or_default();
        let answer: serde_json::Value = serde_json::from_str(first).map_err(|error| BenchError::Handshake {
            url: client.url.clone(),
            reason: format!("unreadable response {first:?}: {error}"),
        })?;
        if let Some(error) = answer.get("error") {
            return Err(BenchError::Handshake {
                url: client.url.clone(),
                reason: error.to_string(),
            });
        }
        // Counted from the first record after the handshake response.
        client.stateful = stateful;
        Ok(client)
    }

    /// The timeout of each network step (and of one round trip).
    pub(crate) fn step_timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends one transport message (one or more records): a text frame, flushed, or a POST, answered.
    pub(crate) async fn send(&mut self, text: String, doing: &'static str) -> Result<(), BenchError> {
        let socket = match &mut self.link {
            Link::WebSocket(socket) => socket,
            Link::Http(link) => return link.post(text, doing).await,
        };
        match timeout(self.timeout, socket.send(Message::text(text))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(self.socket_error(error, doing)),
            Err(_) => Err(BenchError::Timeout {
                url: self.url.clone(),
                doing,
                after: self.timeout,
            }),
        }
    }

    /// A stateful client acknowledges every record it received and has not acknowledged yet, as the official
    /// client does a second after a burst; nothing for other clients or with nothing new.
    pub(crate) async fn ack_received(&mut self) -> Result<(), BenchError> {
        let Some(stateful) = &mut self.stateful else {
            return Ok(());
        };
        if stateful.received == stateful.acked {
            return Ok(());
        }
        stateful.acked = stateful.received;
        let ack = format!("{{\"type\":8,\"sequenceId\":{}}}{RS}", stateful.acked);
        self.send(ack, "acknowledging").await
    }

    /// Sends a Ping record, except over long polling, where the client sends none (docs/protocol.md).
    pub(crate) async fn ping(&mut self) -> Result<(), BenchError> {
        if matches!(&self.link, Link::Http(link) if link.transport() == Transport::LongPolling) {
            return Ok(());
        }
        self.send(PING.to_owned(), "pinging").await
    }

    /// The next transport message (a text frame, an SSE event, a poll's body); WebSocket pings and pongs are
    /// skipped, a close or the end of the stream is an error. Cancel-safe.
    pub(crate) async fn next_text(&mut self, doing: &'static str) -> Result<Utf8Bytes, BenchError> {
        let socket = match &mut self.link {
            Link::WebSocket(socket) => socket,
            Link::Http(link) => return link.next_text(doing).await,
        };
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) => {
                    if let Some(stateful) = &mut self.stateful {
                        stateful.received += text.split(RS).filter(|record| trackable(record)).count() as u64;
                        if stateful.received - stateful.acked >= ACK_EVERY {
                            stateful.acked = stateful.received;
                            let ack = format!("{{\"type\":8,\"sequenceId\":{}}}{RS}", stateful.acked);
                            // Buffered, flushed with the socket's next write or here; a failure shows on the next read.
                            let _ = socket.send(Message::text(ack)).await;
                        }
                    }
                    return Ok(text);
                }
                Some(Ok(Message::Binary(_))) => {
                    return Err(BenchError::Protocol {
                        url: self.url.clone(),
                        reason: "a binary frame on a JSON connection".to_owned(),
                    })
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(BenchError::Closed {
                        url: self.url.clone(),
                        doing,
                        reason: frame.map_or_else(|| "no close frame".to_owned(), |frame| frame.to_string()),
                    })
                }
                Some(Ok(_)) => continue,
                Some(Err(error)) => return Err(self.socket_error(error, doing)),
                None => {
                    return Err(BenchError::Closed {
                        url: self.url.clone(),
                        doing,
                        reason: "end of stream".to_owned(),
                    })
                }
            }
        }
    }

    /// [`Client::next_text`] within `wait`.
    pub(crate) async fn next_text_within(
        &mut self,
        wait: Duration,
        doing: &'static str,
    ) -> Result<Utf8Bytes, BenchError> {
        match timeout(wait, self.next_text(doing)).await {
            Ok(result) => result,
            Err(_) => Err(BenchError::Timeout {
                url: self.url.clone(),
                doing,
                after: wait,
            }),
        }
    }

    /// Invokes `JoinGroup(group)` and waits for its Completion. `group_json` is the group as a JSON string.
    pub(crate) async fn join(&mut self, group_json: &str) -> Result<(), BenchError> {
        self.invoke("JoinGroup", group_json, "joining the group")
            .await
            .map(drop)
    }

    /// Invokes `target` with `arguments_json` (the JSON arguments without the brackets) and waits for its
    /// Completion; returns its result as JSON (`null` without one). Other records that arrive meanwhile (`msg`
    /// deliveries, Pings) are skipped: call it only on a connection that is not counting deliveries.
    pub(crate) async fn invoke(
        &mut self,
        target: &str,
        arguments_json: &str,
        doing: &'static str,
    ) -> Result<String, BenchError> {
        let id = self.next_id.to_string();
        self.next_id += 1;
        let record = format!(
            "{{\"type\":1,\"invocationId\":\"{id}\",\"target\":\"{target}\",\"arguments\":[{arguments_json}]}}{RS}"
        );
        self.send(record, doing).await?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
            let text = self.next_text_within(wait, doing).await?;
            for part in text.split(RS).filter(|part| !part.is_empty()) {
                let record = self.parse(part)?;
                match record.kind {
                    3 if record.invocation_id == Some(id.as_str()) => {
                        return match record.error {
                            Some(error) => Err(BenchError::Protocol {
                                url: self.url.clone(),
                                reason: format!("{target} failed: {error}"),
                            }),
                            None => Ok(record
                                .result
                                .map_or_else(|| "null".to_owned(), |raw| raw.get().to_owned())),
                        };
                    }
                    7 => return Err(self.close_record(&record, doing)),
                    _ => {}
                }
            }
        }
    }

    /// Parses one record.
    pub(crate) fn parse<'a>(&self, part: &'a str) -> Result<Record<'a>, BenchError> {
        serde_json::from_str(part).map_err(|error| BenchError::Protocol {
            url: self.url.clone(),
            reason: format!("unreadable record {part:?}: {error}"),
        })
    }

    /// The error for a Close record.
    pub(crate) fn close_record(&self, record: &Record<'_>, doing: &'static str) -> BenchError {
        BenchError::Closed {
            url: self.url.clone(),
            doing,
            reason: record.error.clone().unwrap_or_else(|| "Close record".to_owned()),
        }
    }

    /// Closes politely, waiting at most a second. A WebSocket: a Close frame, then waits for the server's Close
    /// frame and drops the TCP connection (without waiting for the server to close it first). Long polling: a
    /// DELETE. SSE: drops the event stream, as the official client does.
    pub(crate) async fn close(self) {
        let wait = self.timeout.min(Duration::from_secs(1));
        let mut socket = match self.link {
            Link::WebSocket(socket) => *socket,
            Link::Http(link) => return link.close(wait).await,
        };
        let _ = timeout(wait, async {
            if socket.close(None).await.is_err() {
                return;
            }
            while let Some(Ok(message)) = socket.next().await {
                if message.is_close() {
                    return;
                }
            }
        })
        .await;
    }

    fn socket_error(&self, error: tokio_tungstenite::tungstenite::Error, doing: &'static str) -> BenchError {
        use tokio_tungstenite::tungstenite::Error;
        match error {
            Error::ConnectionClosed | Error::AlreadyClosed => BenchError::Closed {
                url: self.url.clone(),
                doing,
                reason: error.to_string(),
            },
            other => BenchError::Socket {
                url: self.url.clone(),
                doing,
                reason: other.to_string(),
            },
        }
    }
}

/// Opens a WebSocket to `url` (whose `host:port` is `address`) within `step_timeout`, from `source` if given.
async fn connect_websocket(
    url: &str,
    address: &str,
    source: Option<IpAddr>,
    step_timeout: Duration,
) -> Result<Socket, BenchError> {
    // Small buffers: thousands of clients share this process, and messages are small.
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let connecting = async {
        let stream = open_tcp(address, source).await.map_err(|error| error.to_string())?;
        tokio_tungstenite::client_async_with_config(url, MaybeTlsStream::Plain(stream), Some(config))
            .await
            .map_err(|error| error.to_string())
    };
    match timeout(step_timeout, connecting).await {
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(reason)) => Err(BenchError::Connect {
            url: url.to_owned(),
            reason,
        }),
        Err(_) => Err(BenchError::Timeout {
            url: url.to_owned(),
            doing: "connecting",
            after: step_timeout,
        }),
    }
}

/// A TCP connection to `address` (`host:port`), without Nagle's delay. From `source` (port chosen by the kernel)
/// if given: one loopback address has one ephemeral port range per server address, so 100,000 connections to one
/// node need several source addresses (127.0.0.x).
async fn open_tcp(address: &str, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let stream = match source {
        None => TcpStream::connect(address).await?,
        Some(source) => {
            let target = tokio::net::lookup_host(address)
                .await?
                .find(|target| target.is_ipv4() == source.is_ipv4())
                .ok_or_else(|| std::io::Error::other(format!("{address} has no address of {source}'s family")))?;
            let socket = if source.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.bind(SocketAddr::new(source, 0))?;
            socket.connect(target).await?
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}
