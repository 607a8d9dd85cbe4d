//! A raw SignalR client for tests (feature `test-util`): one WebSocket, hub protocol bytes written by hand in JSON
//! or MessagePack, and every read bounded by a deadline, so that a test sees exactly what the server sent, frame
//! by frame and record by record, and can send what no official client would (malformed records, split frames).
//!
//! [`TestClient::to`] says where and how to connect (protocol, handshake version, a bearer token in the header or
//! the query, negotiate first or not); [`TestClient`] sends records ([`Protocol`] writes their bytes) and reads
//! [`Record`]s, with helpers for the common flows: the handshake, invoke and wait for the Completion, join a group,
//! answer the server's client-result Invocations, expect the Close. [`http_request`] and [`negotiate`] speak plain
//! HTTP.
//!
//! This file holds the client and its reads and sends; `connect` opens it (options, upgrade, handshake), `records`
//! writes the bytes it sends, `decode` reads what the server sends, and `http` speaks plain HTTP.
//!
//! ```no_run
//! # async fn example() -> Result<(), hubmesh::testing::client::TestClientError> {
//! use hubmesh::testing::client::{Protocol, TestClient};
//! use serde_json::json;
//!
//! let mut client = TestClient::to("ws://127.0.0.1:5000/chat")
//!     .protocol(Protocol::MessagePack)
//!     .bearer("a.jwt.token")
//!     .negotiate()
//!     .await?
//!     .connect()
//!     .await?;
//! assert_eq!(client.invoke_ok("Echo", json!(["hi"])).await?, json!("hi"));
//! client.send_frame(vec![0x01, 0xc1]).await?; // a never-used MessagePack byte
//! let error = client.expect_close_error().await?;
//! assert!(error.starts_with("Connection closed with an error."));
//! # Ok(())
//! # }
//! ```
//!
//! It uses tokio-tungstenite, serde_json and rmpv only, never the crate's internals (it can move to a crate of its
//! own), and it decodes with rmpv rather than with `hubmesh::protocol`, so that tests check the codecs too.

mod connect;
mod decode;
mod http;
mod records;

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use connect::ClientOptions;
use decode::ensure;
pub use decode::Record;
pub use http::{
    http_request, http_request_with_body, json_invocation, negotiate, open_event_stream, parse_http_response,
    read_until, HttpReply,
};
pub use records::{msgpack_frame, varint, Outcome, Protocol, RS};

/// The bound of one step: a connect, a send, a read, an HTTP request.
pub const STEP: Duration = Duration::from_secs(5);

/// How long [`TestClient::invoke_ok_keeping_others`] waits for each record (busy cluster nodes answer slowly).
const BUSY_STEP: Duration = Duration::from_secs(10);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What went wrong for a [`TestClient`]: the server did something the test did not expect, or the socket failed.
#[derive(Debug, thiserror::Error)]
pub enum TestClientError {
    /// The WebSocket failed, or the upgrade was refused.
    #[error("WebSocket: {0}")]
    WebSocket(Box<tungstenite::Error>),
    /// A plain HTTP request failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// JSON from the server did not parse.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Nothing came in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The socket ended where a record was expected: the close code, if there was a Close frame.
    #[error("the connection closed (code {0:?})")]
    Closed(Option<u16>),
    /// The server sent something other than what the test expected; says what.
    #[error("{0}")]
    Unexpected(String),
}

impl From<tungstenite::Error> for TestClientError {
    fn from(error: tungstenite::Error) -> Self {
        TestClientError::WebSocket(Box::new(error))
    }
}

type Result<T, E = TestClientError> = std::result::Result<T, E>;

/// What a read gave: a record, or the end of the socket.
#[derive(Debug)]
pub enum Event {
    /// A hub record (Pings included).
    Record(Record),
    /// The WebSocket ended: the close code, if the server sent a Close frame.
    Closed(Option<u16>),
}

/// What one read from the socket gave.
enum Got {
    /// A message (data or control) arrived.
    Data,
    /// The socket has ended.
    Ended,
    /// Nothing arrived in time.
    Quiet,
}

/// One raw SignalR connection over a WebSocket.
pub struct TestClient {
    ws: Ws,
    protocol: Protocol,
    version: u32,
    /// Bytes received and not yet parsed.
    buf: Vec<u8>,
    /// Whether the handshake response has been consumed (before it, nothing is parsed as hub records).
    handshaken: bool,
    inbox: VecDeque<Record>,
    closed: Option<Option<u16>>,
    /// Data frames received, by kind.
    text_frames: usize,
    binary_frames: usize,
    /// The first data frame, as received.
    first_frame: Option<Vec<u8>>,
    next_id: u64,
    /// Answers the server's client-result Invocations of this target with this value.
    answer: Option<(String, Value)>,
}

impl TestClient {
    /// The hub protocol this client speaks.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Text frames received so far.
    pub fn text_frames(&self) -> usize {
        self.text_frames
    }

    /// Binary frames received so far.
    pub fn binary_frames(&self) -> usize {
        self.binary_frames
    }

    /// The first data frame received, as it came.
    pub fn first_frame(&self) -> Option<&[u8]> {
        self.first_frame.as_deref()
    }

    /// The next invocation id this client numbers its calls with ("1", "2", …).
    pub fn next_invocation_id(&mut self) -> String {
        self.next_id += 1;
        self.next_id.to_string()
    }

    /// Numbers the next call after `id`, for ids a test chose itself.
    pub fn invocation_ids_used_up_to(&mut self, id: u64) {
        self.next_id = id;
    }

    // -----------------------------------------------------------------------------------------------------------
    // Sending
    // -----------------------------------------------------------------------------------------------------------

    /// Sends bytes as one message in the protocol's own frame kind (Text for JSON, Binary for MessagePack).
    pub async fn send_frame(&mut self, bytes: Vec<u8>) -> Result<()> {
        match self.protocol {
            Protocol::Json => self.send_text_frame(bytes).await,
            Protocol::MessagePack => self.send_binary_frame(bytes).await,
        }
    }

    /// Sends bytes (UTF-8) as one Text message.
    pub async fn send_text_frame(&mut self, bytes: Vec<u8>) -> Result<()> {
        let text =
            String::from_utf8(bytes).map_err(|_| TestClientError::Unexpected("a Text frame must be UTF-8".into()))?;
        self.send_message(Message::text(text)).await
    }

    /// Sends bytes as one Binary message.
    pub async fn send_binary_frame(&mut self, bytes: Vec<u8>) -> Result<()> {
        self.send_message(Message::binary(bytes)).await
    }

    /// Sends `bytes` as one WebSocket message in two fragments (a data frame and a continuation frame).
    pub async fn send_fragmented(&mut self, bytes: Vec<u8>, split: usize) -> Result<()> {
        let data = match self.protocol {
            Protocol::Json => Data::Text,
            Protocol::MessagePack => Data::Binary,
        };
        let (first, second) = bytes.split_at(split);
        let first = Frame::message(first.to_vec(), OpCode::Data(data), false);
        let second = Frame::message(second.to_vec(), OpCode::Data(Data::Continue), true);
        self.send_message(Message::Frame(first)).await?;
        self.send_message(Message::Frame(second)).await
    }

    async fn send_message(&mut self, message: Message) -> Result<()> {
        timeout(STEP, self.ws.send(message))
            .await
            .map_err(|_| TestClientError::Timeout("send".into()))??;
        Ok(())
    }

    /// Sends an Invocation without an id (the client's `send`): nothing comes back.
    pub async fn send_invocation(&mut self, target: &str, args: Value) -> Result<()> {
        let record = self.protocol.invocation(None, target, args, &[]);
        self.send_frame(record).await
    }

    /// Sends an Invocation with `id`, and no stream ids.
    pub async fn send_invocation_with_id(&mut self, id: &str, target: &str, args: Value) -> Result<()> {
        let record = self.protocol.invocation(Some(id), target, args, &[]);
        self.send_frame(record).await
    }

    /// Sends a StreamInvocation with `id`.
    pub async fn send_stream_invocation(&mut self, id: &str, target: &str, args: Value) -> Result<()> {
        let record = self.protocol.stream_invocation(id, target, args);
        self.send_frame(record).await
    }

    /// Sends a Ping.
    pub async fn send_ping(&mut self) -> Result<()> {
        let record = self.protocol.ping();
        self.send_frame(record).await
    }

    /// Sends the Close message the JS client sends on `stop()`.
    pub async fn send_close_message(&mut self) -> Result<()> {
        let record = self.protocol.close();
        self.send_frame(record).await
    }

    /// Sends an Ack of everything up to `sequence_id` (stateful reconnect).
    pub async fn send_ack(&mut self, sequence_id: u64) -> Result<()> {
        let record = self.protocol.ack(sequence_id);
        self.send_frame(record).await
    }

    /// Sends a Sequence message (stateful reconnect: first thing after a reconnect).
    pub async fn send_sequence(&mut self, sequence_id: u64) -> Result<()> {
        let record = self.protocol.sequence(sequence_id);
        self.send_frame(record).await
    }

    /// Closes the WebSocket (no Close message first).
    pub async fn close_socket(mut self) {
        let _ = self.ws.close(None).await;
    }

    // -----------------------------------------------------------------------------------------------------------
    // Reading
    // -----------------------------------------------------------------------------------------------------------

    /// Reads one WebSocket message into the buffer.
    async fn read_frame(&mut self, within: Duration) -> Result<Got> {
        if self.closed.is_some() {
            return Ok(Got::Ended);
        }
        let Ok(next) = timeout(within, self.ws.next()).await else {
            return Ok(Got::Quiet);
        };
        let bytes: Vec<u8> = match next {
            None | Some(Err(_)) => {
                self.closed = Some(None);
                return Ok(Got::Ended);
            }
            Some(Ok(Message::Close(frame))) => {
                self.closed = Some(frame.map(|frame| u16::from(frame.code)));
                return Ok(Got::Ended);
            }
            Some(Ok(Message::Text(text))) => {
                self.text_frames += 1;
                text.as_bytes().to_vec()
            }
            Some(Ok(Message::Binary(bytes))) => {
                self.binary_frames += 1;
                bytes.to_vec()
            }
            Some(Ok(_)) => return Ok(Got::Data),
        };
        if self.first_frame.is_none() {
            self.first_frame = Some(bytes.clone());
        }
        self.buf.extend_from_slice(&bytes);
        if self.handshaken {
            decode::take_records(self.protocol, &mut self.buf, &mut self.inbox)?;
        }
        Ok(Got::Data)
    }

    /// Whether `record` is a client-result Invocation this client answers by itself (see
    /// [`TestClient::answer_client_results`]); if so, answers it.
    async fn answered(&mut self, record: &Record) -> Result<bool> {
        let Some((target, value)) = &self.answer else {
            return Ok(false);
        };
        let asks = record.kind() == 1
            && record.value["target"]
                .as_str()
                .is_some_and(|name| name.eq_ignore_ascii_case(target));
        let Some(id) = record.id().filter(|_| asks) else {
            return Ok(false);
        };
        let reply = self.protocol.completion(id, Outcome::Result(value.clone()));
        self.send_frame(reply).await?;
        Ok(true)
    }

    /// From now on, answers the server's client-result Invocations of `target` with `value` while reading.
    pub fn answer_client_results(&mut self, target: &str, value: Value) {
        self.answer = Some((target.to_owned(), value));
    }

    /// The next record or the end of the socket, within `within`; `None` if nothing came.
    pub async fn event_within(&mut self, within: Duration) -> Result<Option<Event>> {
        let deadline = Instant::now() + within;
        for _ in 0..10_000 {
            if let Some(record) = self.inbox.pop_front() {
                if self.answered(&record).await? {
                    continue;
                }
                return Ok(Some(Event::Record(record)));
            }
            if let Some(code) = self.closed {
                return Ok(Some(Event::Closed(code)));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            if let Got::Quiet = self.read_frame(left).await? {
                return Ok(None);
            }
        }
        Err(TestClientError::Unexpected(
            "more than 10000 frames without a record".into(),
        ))
    }

    /// The next record or the end of the socket, within a step.
    pub async fn event(&mut self) -> Result<Event> {
        self.event_within(STEP)
            .await?
            .ok_or_else(|| TestClientError::Timeout(format!("nothing from the server within {STEP:?}")))
    }

    /// The next record other than a Ping within `within`, `None` if none came; the socket's end is an error.
    pub async fn record_within(&mut self, within: Duration) -> Result<Option<Record>> {
        let deadline = Instant::now() + within;
        for _ in 0..10_000 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.event_within(left).await? {
                None => return Ok(None),
                Some(Event::Record(record)) if record.kind() == 6 => continue,
                Some(Event::Record(record)) => return Ok(Some(record)),
                Some(Event::Closed(code)) => return Err(TestClientError::Closed(code)),
            }
        }
        Err(TestClientError::Unexpected("only Pings for 10000 records".into()))
    }

    /// The next record other than a Ping, within a step each.
    pub async fn record(&mut self) -> Result<Record> {
        for _ in 0..1000 {
            match self.event().await? {
                Event::Record(record) if record.kind() == 6 => continue,
                Event::Record(record) => return Ok(record),
                Event::Closed(code) => return Err(TestClientError::Closed(code)),
            }
        }
        Err(TestClientError::Unexpected("only Pings for 1000 records".into()))
    }

    /// The next Invocation of `target` within `within`, passing over any other record; `None` if none came.
    pub async fn next_invocation_of(&mut self, target: &str, within: Duration) -> Result<Option<Record>> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(record) = self.record_within(left).await? else {
                return Ok(None);
            };
            if record.kind() == 1 && record.value["target"] == target {
                return Ok(Some(record));
            }
        }
    }

    /// The Completion of invocation `id`; anything else but Pings is an error.
    pub async fn completion(&mut self, id: &str) -> Result<Record> {
        let record = self.record().await?;
        ensure(record.kind() == 3 && record.id() == Some(id), || {
            format!("expected the Completion of '{id}', got {}", record.value)
        })?;
        Ok(record)
    }

    /// Invokes `target` with the next id and returns its Completion, which must be the next record but Pings.
    pub async fn invoke(&mut self, target: &str, args: Value) -> Result<Value> {
        let id = self.next_invocation_id();
        self.send_invocation_with_id(&id, target, args).await?;
        Ok(self.completion(&id).await?.value)
    }

    /// Invokes `target` as [`TestClient::invoke`] does and expects a result (null for a void method).
    pub async fn invoke_ok(&mut self, target: &str, args: Value) -> Result<Value> {
        let completion = self.invoke(target, args).await?;
        completion_result(target, &completion)
    }

    /// Invokes `target` and expects a result while other records may arrive first (a busy group, say): those
    /// stay, in order, for the next reads.
    pub async fn invoke_ok_keeping_others(&mut self, target: &str, args: Value) -> Result<Value> {
        let id = self.next_invocation_id();
        self.send_invocation_with_id(&id, target, args).await?;
        let mut others = Vec::new();
        let completion = loop {
            let Some(record) = self.record_within(BUSY_STEP).await? else {
                break Err(TestClientError::Timeout(format!("no completion for {target}")));
            };
            if record.kind() == 3 && record.id() == Some(id.as_str()) {
                break Ok(record.value);
            }
            others.push(record);
        };
        for record in others.into_iter().rev() {
            self.inbox.push_front(record);
        }
        completion_result(target, &completion?)
    }

    /// Joins `group` through the hub method `JoinGroup(group)` (the demo hub's name for it), as
    /// [`TestClient::invoke_ok_keeping_others`] does: the group's traffic may already arrive.
    pub async fn join_group(&mut self, group: &str) -> Result<()> {
        self.invoke_ok_keeping_others("JoinGroup", json!([group])).await?;
        Ok(())
    }

    /// Proves the connection still works: an `Echo` round trip (the hub needs an `Echo(string) -> string`).
    pub async fn assert_healthy(&mut self) -> Result<()> {
        let text = format!("alive-{}", self.next_id + 1);
        let result = self.invoke_ok("Echo", json!([text])).await?;
        ensure(result == json!(text), || format!("Echo returned {result}"))
    }

    /// Expects the server's Close message (after Pings only), then a clean WebSocket close (1000).
    /// Returns the Close message.
    pub async fn expect_close_message(&mut self) -> Result<Value> {
        let record = self.record().await?;
        ensure(record.kind() == 7, || {
            format!("expected a Close message, got {}", record.value)
        })?;
        let code = self.expect_ws_close().await?;
        ensure(code == Some(1000), || {
            format!("expected WebSocket close 1000 after Close, got {code:?}")
        })?;
        Ok(record.value)
    }

    /// Expects the Close message to carry an error; returns it.
    pub async fn expect_close_error(&mut self) -> Result<String> {
        let close = self.expect_close_message().await?;
        let error = close["error"].as_str().unwrap_or_default().to_owned();
        ensure(!error.is_empty(), || {
            format!("a Close message that does not say why: {close}")
        })?;
        Ok(error)
    }

    /// Expects the socket to end (only Pings before it); returns the close code.
    pub async fn expect_ws_close(&mut self) -> Result<Option<u16>> {
        for _ in 0..1000 {
            match self.event().await? {
                Event::Record(record) if record.kind() == 6 => continue,
                Event::Record(record) => {
                    return Err(TestClientError::Unexpected(format!(
                        "expected the socket to close, got {}",
                        record.value
                    )));
                }
                Event::Closed(code) => return Ok(code),
            }
        }
        Err(TestClientError::Unexpected("only Pings for 1000 records".into()))
    }

    /// Checks every data frame so far was of the protocol's kind: Text for JSON, Binary for MessagePack
    /// (docs/protocol.md#websocket-frame-types).
    pub fn assert_frame_kinds(&self) -> Result<()> {
        let (right, wrong) = match self.protocol {
            Protocol::Json => (self.text_frames, self.binary_frames),
            Protocol::MessagePack => (self.binary_frames, self.text_frames),
        };
        ensure(right > 0 && wrong == 0, || {
            format!(
                "{} connection got {} text and {} binary frames",
                self.protocol.name(),
                self.text_frames,
                self.binary_frames
            )
        })
    }
}

/// A Completion's result (null when void); its error as an error.
fn completion_result(target: &str, completion: &Value) -> Result<Value> {
    if let Some(error) = completion.get("error") {
        return Err(TestClientError::Unexpected(format!("{target} failed: {error}")));
    }
    Ok(completion.get("result").cloned().unwrap_or(Value::Null))
}
