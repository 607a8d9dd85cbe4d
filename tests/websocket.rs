//! Wire tests of the WebSocket transport: a real node on `127.0.0.1:0`, driven by tokio-tungstenite with
//! hand-written JSON and MessagePack bytes (so they test the codec as much as the connection).
//!
//! Covered (docs/protocol.md, all but SSE, long polling and auth): negotiate, the handshake, every hub message type in
//! both protocols, keep-alive and timeouts, Close in both directions, client results, framing (several records
//! per frame, a record split across frames), and bad input. Every bad-input test checks that only the offending
//! connection ends, with a Close message that says why, while a healthy client on the same node keeps working.
//!
//! Every test is bounded by `tokio::time::timeout`, every read by a step timeout, and every loop by a count.

use std::collections::VecDeque;
use std::error::Error;
use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hubmesh::{
    Caller, CancellationToken, ClientStream, ConnectionId, Hub, HubContext, HubError, Limits, Node, NodeHandle, State,
    Streamed,
};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type BoxError = Box<dyn Error + Send + Sync>;
type TestResult<T = ()> = Result<T, BoxError>;
type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The bound of a whole test (a few take longer and say so).
const TEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The bound of one step: a connect, a read, an HTTP request.
const STEP: Duration = Duration::from_secs(5);
/// The JSON record separator.
const RS: u8 = 0x1e;
/// The hub's name and the path it is served at (mapped with mixed case, requested in any case).
const HUB: &str = "wire";
const HUB_PATH: &str = "/wireHub";

// ---------------------------------------------------------------------------------------------------------------
// The test hub
// ---------------------------------------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Flags {
    /// Set when the `Ticks` stream's cancellation token fires.
    cancelled: Arc<AtomicBool>,
    /// Set when the token of a `Hang` call fires.
    hang_cancelled: Arc<AtomicBool>,
}

async fn echo(text: String) -> String {
    text
}

async fn add(a: i64, b: i64) -> i64 {
    a + b
}

async fn nothing() {}

async fn fail() -> Result<(), HubError> {
    Err(HubError::hub("boom"))
}

async fn fail_plain() -> Result<i64, HubError> {
    Err(HubError::exception("InvalidOperationException", "secret"))
}

async fn connection_id(caller: Caller) -> String {
    caller.connection_id().as_str().to_owned()
}

async fn counter(count: u32) -> Streamed {
    Streamed::new(futures_util::stream::iter(0..count))
}

async fn ticks(cancel: CancellationToken, State(flags): State<Flags>) -> Streamed {
    tokio::spawn(async move {
        cancel.cancelled().await;
        flags.cancelled.store(true, Ordering::SeqCst);
    });
    Streamed::new(futures_util::stream::unfold(0u64, |n| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Some((n, n + 1))
    }))
}

/// Never answers; its token fires when the call is dropped with its connection.
async fn hang(cancel: CancellationToken, State(flags): State<Flags>) {
    tokio::spawn(async move {
        cancel.cancelled().await;
        flags.hang_cancelled.store(true, Ordering::SeqCst);
    });
    std::future::pending::<()>().await;
}

async fn was_cancelled(State(flags): State<Flags>) -> bool {
    flags.cancelled.load(Ordering::SeqCst)
}

async fn sum(mut items: ClientStream<i64>) -> Result<i64, HubError> {
    let mut total = 0;
    while let Some(item) = items.next().await {
        total += item?;
    }
    Ok(total)
}

async fn ask_client(caller: Caller, question: String) -> Result<String, HubError> {
    caller.clients().caller().invoke::<String, _>("Ask", (question,)).await
}

async fn close_me(caller: Caller, reason: String) {
    caller.handle().close(Some(reason), false);
}

fn wire_hub(flags: Flags) -> Hub {
    Hub::new(HUB)
        .path(HUB_PATH)
        .method("Echo", echo)
        .method("Add", add)
        .method("Nothing", nothing)
        .method("Fail", fail)
        .method("FailPlain", fail_plain)
        .method("ConnectionId", connection_id)
        .method("Counter", counter)
        .method("Ticks", ticks)
        .method("WasCancelled", was_cancelled)
        .method("Hang", hang)
        .method("Sum", sum)
        .method("AskClient", ask_client)
        .method("CloseMe", close_me)
        .with_state(flags)
}

/// Whether `flag` is set within 2 seconds.
async fn becomes_set(flag: &AtomicBool) -> bool {
    for _ in 0..100 {
        if flag.load(Ordering::SeqCst) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    flag.load(Ordering::SeqCst)
}

/// Limits for tests that do not exercise a timer: nothing fires during a test.
fn quiet_limits() -> Limits {
    Limits {
        keep_alive: Duration::from_secs(60),
        client_timeout: Duration::from_secs(120),
        ..Limits::default()
    }
}

struct TestNode {
    node: NodeHandle,
    flags: Flags,
}

impl TestNode {
    async fn start(limits: Limits) -> TestResult<TestNode> {
        let flags = Flags::default();
        let node = Node::builder()
            .hub(wire_hub(flags.clone()))
            .listen("127.0.0.1:0")
            .limits(limits)
            .start()
            .await?;
        Ok(TestNode { node, flags })
    }

    fn addr(&self) -> SocketAddr {
        self.node.local_addr()
    }

    /// `ws://127.0.0.1:<port><path_and_query>`.
    fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{}", self.addr(), path_and_query)
    }

    fn context(&self) -> TestResult<HubContext> {
        Ok(self
            .node
            .hub_context(HUB)
            .ok_or("the node has no context for the test hub")?)
    }

    /// A client of `protocol` on the hub path (no negotiate), handshake done.
    async fn client(&self, protocol: Proto) -> TestResult<Client> {
        let mut client = Client::open(&self.ws_url("/wirehub"), protocol).await?;
        client.handshake().await?;
        Ok(client)
    }

    /// Waits (bounded) until the hub has `expected` connections on this node.
    async fn wait_for_connections(&self, expected: usize, within: Duration) -> TestResult {
        let context = self.context()?;
        let deadline = Instant::now() + within;
        loop {
            let count = context.local_connection_count();
            if count == expected {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("the hub has {count} connection(s), expected {expected}").into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the node once the test's clients are gone (callers drop them first). Bounded: how `stop` treats
    /// open connections is the business of `stopping_the_node_closes_connections_with_a_close_message`.
    async fn stop(self) {
        let _ = self.wait_for_connections(0, Duration::from_secs(2)).await;
        let _ = timeout(Duration::from_secs(10), self.node.stop()).await;
    }
}

/// Runs a test body under [`TEST_TIMEOUT`].
async fn bounded<F: Future<Output = TestResult>>(limit: Duration, body: F) -> TestResult {
    timeout(limit, body)
        .await
        .map_err(|_| format!("the test did not finish within {limit:?}"))?
}

/// Runs `body` once per protocol, naming the protocol in any error.
async fn each_protocol<F, Fut>(body: F) -> TestResult
where
    F: Fn(Proto) -> Fut,
    Fut: Future<Output = TestResult>,
{
    for protocol in [Proto::Json, Proto::MsgPack] {
        body(protocol)
            .await
            .map_err(|error| format!("[{}] {error}", protocol.name()))?;
    }
    Ok(())
}

fn check(condition: bool, what: impl FnOnce() -> String) -> TestResult {
    if condition {
        Ok(())
    } else {
        Err(what().into())
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Hand-written hub protocol bytes
// ---------------------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Json,
    MsgPack,
}

/// How a client's Completion ends.
enum Outcome {
    Void,
    Result(Value),
    Error(&'static str),
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Json => "json",
            Proto::MsgPack => "messagepack",
        }
    }

    fn handshake(self, version: u32) -> Vec<u8> {
        format!("{{\"protocol\":\"{}\",\"version\":{version}}}\u{1e}", self.name()).into_bytes()
    }

    /// One record: JSON text plus RS, or a varint-prefixed MessagePack body.
    fn record(self, json_form: Value, msgpack_form: Value) -> Vec<u8> {
        match self {
            Proto::Json => {
                let mut out = json_form.to_string().into_bytes();
                out.push(RS);
                out
            }
            Proto::MsgPack => {
                let mut body = Vec::new();
                mp_write(&msgpack_form, &mut body);
                msgpack_frame(&body)
            }
        }
    }

    fn invocation(self, id: Option<&str>, target: &str, args: Value, stream_ids: &[&str]) -> Vec<u8> {
        self.call(1, id, target, args, stream_ids)
    }

    fn stream_invocation(self, id: &str, target: &str, args: Value) -> Vec<u8> {
        self.call(4, Some(id), target, args, &[])
    }

    fn call(self, kind: u64, id: Option<&str>, target: &str, args: Value, stream_ids: &[&str]) -> Vec<u8> {
        let mut object = json!({ "type": kind, "target": target, "arguments": args.clone() });
        if let (Some(id), Some(map)) = (id, object.as_object_mut()) {
            map.insert("invocationId".into(), json!(id));
        }
        if let (false, Some(map)) = (stream_ids.is_empty(), object.as_object_mut()) {
            map.insert("streamIds".into(), json!(stream_ids));
        }
        // The JS client writes the 5-element form when there are no stream ids.
        let mut array = vec![
            json!(kind),
            json!({}),
            id.map_or(Value::Null, |id| json!(id)),
            json!(target),
            args,
        ];
        if !stream_ids.is_empty() {
            array.push(json!(stream_ids));
        }
        self.record(object, Value::Array(array))
    }

    fn stream_item(self, id: &str, item: Value) -> Vec<u8> {
        self.record(
            json!({ "type": 2, "invocationId": id, "item": item.clone() }),
            json!([2, {}, id, item]),
        )
    }

    fn completion(self, id: &str, outcome: Outcome) -> Vec<u8> {
        match outcome {
            Outcome::Void => self.record(json!({ "type": 3, "invocationId": id }), json!([3, {}, id, 2])),
            Outcome::Result(value) => self.record(
                json!({ "type": 3, "invocationId": id, "result": value.clone() }),
                json!([3, {}, id, 3, value]),
            ),
            Outcome::Error(error) => self.record(
                json!({ "type": 3, "invocationId": id, "error": error }),
                json!([3, {}, id, 1, error]),
            ),
        }
    }

    fn cancel(self, id: &str) -> Vec<u8> {
        self.record(json!({ "type": 5, "invocationId": id }), json!([5, {}, id]))
    }

    fn ping(self) -> Vec<u8> {
        match self {
            Proto::Json => b"{\"type\":6}\x1e".to_vec(),
            Proto::MsgPack => vec![0x02, 0x91, 0x06],
        }
    }

    /// What the JS client sends on `stop()`: `{"type":7}` / `[7, nil]`.
    fn close(self) -> Vec<u8> {
        match self {
            Proto::Json => b"{\"type\":7}\x1e".to_vec(),
            Proto::MsgPack => vec![0x03, 0x92, 0x07, 0xc0],
        }
    }
}

fn varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let low = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

fn msgpack_frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    varint(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

/// A minimal MessagePack writer, by the spec, for the values tests send (smallest forms, as the JS client).
fn mp_write(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.push(0xc0),
        Value::Bool(false) => out.push(0xc2),
        Value::Bool(true) => out.push(0xc3),
        Value::Number(number) => {
            if let Some(unsigned) = number.as_u64() {
                mp_uint(unsigned, out);
            } else if let Some(signed) = number.as_i64() {
                mp_int(signed, out);
            } else {
                out.push(0xcb);
                out.extend_from_slice(&number.as_f64().unwrap_or(f64::NAN).to_be_bytes());
            }
        }
        Value::String(text) => mp_str(text, out),
        Value::Array(items) => {
            mp_len(items.len(), 0x90, 0xdc, 0xdd, out);
            for item in items {
                mp_write(item, out);
            }
        }
        Value::Object(map) => {
            mp_len(map.len(), 0x80, 0xde, 0xdf, out);
            for (key, item) in map {
                mp_str(key, out);
                mp_write(item, out);
            }
        }
    }
}

fn mp_uint(value: u64, out: &mut Vec<u8>) {
    if value < 0x80 {
        out.push(value as u8);
    } else if let Ok(small) = u8::try_from(value) {
        out.extend_from_slice(&[0xcc, small]);
    } else if let Ok(small) = u16::try_from(value) {
        out.push(0xcd);
        out.extend_from_slice(&small.to_be_bytes());
    } else if let Ok(small) = u32::try_from(value) {
        out.push(0xce);
        out.extend_from_slice(&small.to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&value.to_be_bytes());
    }
}

fn mp_int(value: i64, out: &mut Vec<u8>) {
    if value >= 0 {
        mp_uint(value.unsigned_abs(), out);
    } else if value >= -32 {
        out.push(value as i8 as u8);
    } else if let Ok(small) = i8::try_from(value) {
        out.extend_from_slice(&[0xd0, small as u8]);
    } else if let Ok(small) = i16::try_from(value) {
        out.push(0xd1);
        out.extend_from_slice(&small.to_be_bytes());
    } else if let Ok(small) = i32::try_from(value) {
        out.push(0xd2);
        out.extend_from_slice(&small.to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&value.to_be_bytes());
    }
}

fn mp_str(text: &str, out: &mut Vec<u8>) {
    let len = text.len();
    if len < 32 {
        out.push(0xa0 | len as u8);
    } else if let Ok(small) = u8::try_from(len) {
        out.extend_from_slice(&[0xd9, small]);
    } else if let Ok(small) = u16::try_from(len) {
        out.push(0xda);
        out.extend_from_slice(&small.to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
    out.extend_from_slice(text.as_bytes());
}

fn mp_len(len: usize, fix: u8, marker16: u8, marker32: u8, out: &mut Vec<u8>) {
    if len < 16 {
        out.push(fix | len as u8);
    } else if let Ok(small) = u16::try_from(len) {
        out.push(marker16);
        out.extend_from_slice(&small.to_be_bytes());
    } else {
        out.push(marker32);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
}

/// A decoded MessagePack value as JSON, for comparisons (the tests send no bin or ext).
fn mp_to_json(value: &rmpv::Value) -> Value {
    match value {
        rmpv::Value::Nil => Value::Null,
        rmpv::Value::Boolean(flag) => json!(flag),
        rmpv::Value::Integer(number) => match (number.as_u64(), number.as_i64()) {
            (Some(unsigned), _) => json!(unsigned),
            (None, Some(signed)) => json!(signed),
            (None, None) => Value::Null,
        },
        rmpv::Value::F32(number) => json!(number),
        rmpv::Value::F64(number) => json!(number),
        rmpv::Value::String(text) => json!(text.as_str().unwrap_or("<invalid utf-8>")),
        rmpv::Value::Binary(bytes) => json!(bytes),
        rmpv::Value::Array(items) => Value::Array(items.iter().map(mp_to_json).collect()),
        rmpv::Value::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(key, item)| (key.as_str().unwrap_or("<non-string key>").to_owned(), mp_to_json(item)))
                .collect(),
        ),
        rmpv::Value::Ext(..) => Value::Null,
    }
}

/// A server MessagePack record in the JSON protocol's shape, so tests compare both protocols alike.
fn normalize_msgpack(array: &[rmpv::Value]) -> TestResult<Value> {
    let kind = array
        .first()
        .and_then(rmpv::Value::as_u64)
        .ok_or("a MessagePack record does not start with its type")?;
    let at = |index: usize| array.get(index).map(mp_to_json);
    let mut out = serde_json::Map::new();
    out.insert("type".into(), json!(kind));
    let put_id = |out: &mut serde_json::Map<String, Value>, index: usize| match at(index) {
        Some(Value::Null) | None => {}
        Some(id) => {
            out.insert("invocationId".into(), id);
        }
    };
    match kind {
        1 | 4 => {
            check(array.len() == 5 || array.len() == 6, || {
                format!("invocation of {} elements", array.len())
            })?;
            put_id(&mut out, 2);
            out.insert("target".into(), at(3).unwrap_or(Value::Null));
            out.insert("arguments".into(), at(4).unwrap_or(Value::Null));
            if let Some(ids) = at(5) {
                out.insert("streamIds".into(), ids);
            }
        }
        2 => {
            check(array.len() == 4, || format!("stream item of {} elements", array.len()))?;
            put_id(&mut out, 2);
            out.insert("item".into(), at(3).unwrap_or(Value::Null));
        }
        3 => {
            put_id(&mut out, 2);
            match array.get(3).and_then(rmpv::Value::as_u64) {
                Some(1) => {
                    check(array.len() == 5, || "error completion must have 5 elements".into())?;
                    out.insert("error".into(), at(4).unwrap_or(Value::Null));
                }
                Some(2) => check(array.len() == 4, || {
                    "void completion must have exactly 4 elements".into()
                })?,
                Some(3) => {
                    check(array.len() == 5, || "result completion must have 5 elements".into())?;
                    out.insert("result".into(), at(4).unwrap_or(Value::Null));
                }
                other => return Err(format!("completion with result kind {other:?}").into()),
            }
        }
        5 => put_id(&mut out, 2),
        7 => {
            if let Some(Value::String(error)) = at(1) {
                out.insert("error".into(), json!(error));
            }
            if let Some(Value::Bool(allow)) = at(2) {
                out.insert("allowReconnect".into(), json!(allow));
            }
        }
        _ => {}
    }
    Ok(Value::Object(out))
}

/// Checks that every record of a kind looks as docs/protocol.md#json-message-types and #messagepack-layouts say.
fn validate(protocol: Proto, value: &Value, raw: &[u8]) -> TestResult {
    let kind = value["type"]
        .as_u64()
        .ok_or_else(|| format!("a record without a numeric type: {value}"))?;
    match kind {
        2 => check(value.get("item").is_some(), || {
            format!("a StreamItem without `item`: {value}")
        })?,
        3 => {
            check(value.get("result").is_none() || value.get("error").is_none(), || {
                format!("a Completion with both result and error: {value}")
            })?;
            if let Some(error) = value.get("error") {
                check(error.as_str().is_some_and(|error| !error.is_empty()), || {
                    format!("a Completion error that is not a non-empty string: {value}")
                })?;
            }
        }
        6 => match protocol {
            Proto::Json => check(*value == json!({ "type": 6 }), || {
                format!("a Ping with extra keys: {value}")
            })?,
            Proto::MsgPack => check(raw == [0x91, 0x06], || {
                format!("a Ping that is not exactly 91 06: {raw:02x?}")
            })?,
        },
        _ => {}
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------------------------

/// One hub record from the server: its JSON shape (MessagePack normalized to it) and its raw bytes (the JSON
/// text without RS, or the MessagePack body without its length prefix).
#[derive(Debug)]
struct Record {
    value: Value,
    raw: Vec<u8>,
}

impl Record {
    fn kind(&self) -> u64 {
        self.value["type"].as_u64().unwrap_or(0)
    }

    fn id(&self) -> Option<&str> {
        self.value["invocationId"].as_str()
    }
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

#[derive(Debug)]
enum Event {
    Record(Record),
    /// The WebSocket ended: the close code, if the server sent a Close frame.
    Closed(Option<u16>),
}

struct Client {
    ws: Ws,
    protocol: Proto,
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
}

impl Client {
    /// Opens the WebSocket only (no handshake).
    async fn open(url: &str, protocol: Proto) -> TestResult<Client> {
        let (ws, _response) = timeout(STEP, tokio_tungstenite::connect_async(url))
            .await
            .map_err(|_| format!("connecting to {url} timed out"))??;
        Ok(Client {
            ws,
            protocol,
            buf: Vec::new(),
            handshaken: false,
            inbox: VecDeque::new(),
            closed: None,
            text_frames: 0,
            binary_frames: 0,
            first_frame: None,
            next_id: 0,
        })
    }

    /// Sends the handshake (Text for JSON, Binary for MessagePack as the .NET client does) and expects `{}`.
    async fn handshake(&mut self) -> TestResult {
        let request = self.protocol.handshake(1);
        self.send(request).await?;
        let response = self.handshake_response().await?;
        check(response == json!({}), || format!("handshake refused: {response}"))
    }

    /// Reads the handshake response: the JSON up to the first RS. What follows it is parsed as hub records.
    async fn handshake_response(&mut self) -> TestResult<Value> {
        for _ in 0..100 {
            if let Some(end) = self.buf.iter().position(|byte| *byte == RS) {
                let response: Value = serde_json::from_slice(&self.buf[..end])?;
                self.buf.drain(..=end);
                self.handshaken = true;
                self.parse_records()?;
                return Ok(response);
            }
            match self.read_frame(STEP).await? {
                Got::Data => {}
                Got::Ended => {
                    let code = self.closed;
                    return Err(format!("the connection ended before the handshake response (code {code:?})").into());
                }
                Got::Quiet => return Err(format!("no handshake response within {STEP:?}").into()),
            }
        }
        Err("no complete handshake response in 100 frames".into())
    }

    fn next_id(&mut self) -> String {
        self.next_id += 1;
        self.next_id.to_string()
    }

    /// Sends bytes in the protocol's own frame kind (Text for JSON, Binary for MessagePack).
    async fn send(&mut self, bytes: Vec<u8>) -> TestResult {
        match self.protocol {
            Proto::Json => self.send_text(bytes).await,
            Proto::MsgPack => self.send_binary(bytes).await,
        }
    }

    async fn send_text(&mut self, bytes: Vec<u8>) -> TestResult {
        let text = String::from_utf8(bytes)?;
        timeout(STEP, self.ws.send(Message::text(text)))
            .await
            .map_err(|_| "send timed out")??;
        Ok(())
    }

    async fn send_binary(&mut self, bytes: Vec<u8>) -> TestResult {
        timeout(STEP, self.ws.send(Message::binary(bytes)))
            .await
            .map_err(|_| "send timed out")??;
        Ok(())
    }

    /// Sends `bytes` as one WebSocket message in two fragments (a data frame and a continuation frame).
    async fn send_fragmented(&mut self, bytes: Vec<u8>, split: usize) -> TestResult {
        let data = match self.protocol {
            Proto::Json => Data::Text,
            Proto::MsgPack => Data::Binary,
        };
        let (first, second) = bytes.split_at(split);
        let first = Frame::message(first.to_vec(), OpCode::Data(data), false);
        let second = Frame::message(second.to_vec(), OpCode::Data(Data::Continue), true);
        timeout(STEP, self.ws.send(Message::Frame(first)))
            .await
            .map_err(|_| "send timed out")??;
        timeout(STEP, self.ws.send(Message::Frame(second)))
            .await
            .map_err(|_| "send timed out")??;
        Ok(())
    }

    /// Reads one WebSocket message into the buffer.
    async fn read_frame(&mut self, within: Duration) -> TestResult<Got> {
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
            self.parse_records()?;
        }
        Ok(Got::Data)
    }

    /// Moves every whole record in the buffer to the inbox.
    fn parse_records(&mut self) -> TestResult {
        loop {
            let (value, raw, used) = match self.protocol {
                Proto::Json => {
                    let Some(end) = self.buf.iter().position(|byte| *byte == RS) else {
                        return Ok(());
                    };
                    let raw = self.buf[..end].to_vec();
                    let value: Value = serde_json::from_slice(&raw).map_err(|error| {
                        format!(
                            "bad JSON from the server ({error}): {:?}",
                            String::from_utf8_lossy(&raw)
                        )
                    })?;
                    (value, raw, end + 1)
                }
                Proto::MsgPack => {
                    let mut length = 0usize;
                    let mut prefix = None;
                    for (index, byte) in self.buf.iter().take(5).enumerate() {
                        length |= usize::from(byte & 0x7f) << (7 * index);
                        if byte & 0x80 == 0 {
                            prefix = Some(index + 1);
                            break;
                        }
                    }
                    let Some(prefix) = prefix else {
                        check(self.buf.len() < 5, || "a bad varint prefix from the server".into())?;
                        return Ok(());
                    };
                    if self.buf.len() < prefix + length {
                        return Ok(());
                    }
                    let raw = self.buf[prefix..prefix + length].to_vec();
                    let mut reader = raw.as_slice();
                    let decoded = rmpv::decode::read_value(&mut reader)
                        .map_err(|error| format!("bad MessagePack from the server ({error}): {raw:02x?}"))?;
                    check(reader.is_empty(), || {
                        format!("trailing bytes in a MessagePack record: {raw:02x?}")
                    })?;
                    let array = decoded.as_array().ok_or("a MessagePack record that is not an array")?;
                    (normalize_msgpack(array)?, raw, prefix + length)
                }
            };
            validate(self.protocol, &value, &raw)?;
            self.buf.drain(..used);
            self.inbox.push_back(Record { value, raw });
        }
    }

    /// The next record or the end of the socket, within `within`; `None` if nothing came.
    async fn event_within(&mut self, within: Duration) -> TestResult<Option<Event>> {
        let deadline = Instant::now() + within;
        for _ in 0..10_000 {
            if let Some(record) = self.inbox.pop_front() {
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
        Err("more than 10000 frames without a record".into())
    }

    async fn event(&mut self) -> TestResult<Event> {
        self.event_within(STEP)
            .await?
            .ok_or_else(|| format!("nothing from the server within {STEP:?}").into())
    }

    /// The next record other than a Ping.
    async fn record(&mut self) -> TestResult<Record> {
        for _ in 0..1000 {
            match self.event().await? {
                Event::Record(record) if record.kind() == 6 => continue,
                Event::Record(record) => return Ok(record),
                Event::Closed(code) => return Err(format!("the connection closed (code {code:?})").into()),
            }
        }
        Err("only Pings for 1000 records".into())
    }

    /// The Completion of invocation `id`; anything else but Pings is an error.
    async fn completion(&mut self, id: &str) -> TestResult<Record> {
        let record = self.record().await?;
        check(record.kind() == 3 && record.id() == Some(id), || {
            format!("expected the Completion of '{id}', got {}", record.value)
        })?;
        Ok(record)
    }

    /// Invokes `target` with an id and returns its Completion.
    async fn invoke(&mut self, target: &str, args: Value) -> TestResult<Value> {
        let id = self.next_id();
        let invocation = self.protocol.invocation(Some(&id), target, args, &[]);
        self.send(invocation).await?;
        Ok(self.completion(&id).await?.value)
    }

    /// Invokes `target` and expects a result value.
    async fn invoke_ok(&mut self, target: &str, args: Value) -> TestResult<Value> {
        let completion = self.invoke(target, args).await?;
        if let Some(error) = completion.get("error") {
            return Err(format!("{target} failed: {error}").into());
        }
        Ok(completion.get("result").cloned().unwrap_or(Value::Null))
    }

    /// Proves the connection still works: an Echo round trip.
    async fn assert_healthy(&mut self) -> TestResult {
        let text = format!("alive-{}", self.next_id + 1);
        let result = self.invoke_ok("Echo", json!([text])).await?;
        check(result == json!(text), || format!("Echo returned {result}"))
    }

    /// Expects the server's Close message (after Pings only), then a clean WebSocket close (1000).
    /// Returns the Close message.
    async fn expect_close_message(&mut self) -> TestResult<Value> {
        let record = self.record().await?;
        check(record.kind() == 7, || {
            format!("expected a Close message, got {}", record.value)
        })?;
        let code = self.expect_ws_close().await?;
        check(code == Some(1000), || {
            format!("expected WebSocket close 1000 after Close, got {code:?}")
        })?;
        Ok(record.value)
    }

    /// Expects the Close message to carry an error; returns it.
    async fn expect_close_error(&mut self) -> TestResult<String> {
        let close = self.expect_close_message().await?;
        let error = close["error"].as_str().unwrap_or_default().to_owned();
        check(!error.is_empty(), || {
            format!("a Close message that does not say why: {close}")
        })?;
        Ok(error)
    }

    /// Expects the socket to end (only Pings before it); returns the close code.
    async fn expect_ws_close(&mut self) -> TestResult<Option<u16>> {
        for _ in 0..1000 {
            match self.event().await? {
                Event::Record(record) if record.kind() == 6 => continue,
                Event::Record(record) => {
                    return Err(format!("expected the socket to close, got {}", record.value).into());
                }
                Event::Closed(code) => return Ok(code),
            }
        }
        Err("only Pings for 1000 records".into())
    }

    /// Checks every data frame so far was of the protocol's kind (docs/protocol.md#websocket-frame-types).
    fn assert_frame_kinds(&self) -> TestResult {
        let (right, wrong) = match self.protocol {
            Proto::Json => (self.text_frames, self.binary_frames),
            Proto::MsgPack => (self.binary_frames, self.text_frames),
        };
        check(right > 0 && wrong == 0, || {
            format!(
                "{} connection got {} text and {} binary frames",
                self.protocol.name(),
                self.text_frames,
                self.binary_frames
            )
        })
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Plain HTTP (negotiate) and refused upgrades
// ---------------------------------------------------------------------------------------------------------------

struct HttpReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl HttpReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// One HTTP/1.1 request with an empty body, over a blocking socket with timeouts.
async fn http(addr: SocketAddr, method: &str, target: &str) -> TestResult<HttpReply> {
    let request =
        format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    tokio::task::spawn_blocking(move || -> TestResult<HttpReply> {
        let mut stream = std::net::TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(STEP))?;
        stream.set_write_timeout(Some(STEP))?;
        stream.write_all(request.as_bytes())?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        parse_http(&raw)
    })
    .await?
}

fn parse_http(raw: &[u8]) -> TestResult<HttpReply> {
    let end = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or("an HTTP response without a header end")?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("a bad status line: {status_line}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(key, value)| key.eq_ignore_ascii_case("transfer-encoding") && value.contains("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Ok(HttpReply {
        status,
        headers,
        body: String::from_utf8(body)?,
    })
}

fn dechunk(mut raw: &[u8]) -> TestResult<Vec<u8>> {
    let mut out = Vec::new();
    for _ in 0..10_000 {
        let line_end = raw
            .windows(2)
            .position(|window| window == b"\r\n")
            .ok_or("a chunk without a size line")?;
        let size_text = String::from_utf8_lossy(&raw[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or_default().trim(), 16)?;
        if size == 0 {
            return Ok(out);
        }
        let start = line_end + 2;
        let chunk = raw.get(start..start + size).ok_or("a truncated chunk")?;
        out.extend_from_slice(chunk);
        raw = raw.get(start + size + 2..).ok_or("a truncated chunk end")?;
    }
    Err("more than 10000 chunks".into())
}

/// The HTTP status a refused WebSocket upgrade got; an accepted upgrade is an error.
async fn refused_upgrade(url: &str) -> TestResult<u16> {
    match timeout(STEP, tokio_tungstenite::connect_async(url))
        .await
        .map_err(|_| format!("connecting to {url} timed out"))?
    {
        Ok(_) => Err(format!("the upgrade to {url} was accepted").into()),
        Err(tungstenite::Error::Http(response)) => Ok(response.status().as_u16()),
        Err(error) => Err(format!("the upgrade to {url} failed without an HTTP status: {error}").into()),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Negotiate and endpoints (docs/protocol.md#endpoints, #negotiate, #websockets)
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiate_then_websocket_with_the_token() -> TestResult {
    bounded(TEST_TIMEOUT, async {
        let server = TestNode::start(quiet_limits()).await?;
        let reply = http(server.addr(), "POST", "/wirehub/negotiate?negotiateVersion=1").await?;
        check(reply.status == 200, || {
            format!("negotiate answered {}: {}", reply.status, reply.body)
        })?;
        check(
            reply
                .header("content-type")
                .is_some_and(|kind| kind.starts_with("application/json")),
            || format!("negotiate content type {:?}", reply.header("content-type")),
        )?;
        let body: Value = serde_json::from_str(&reply.body)?;
        let id = body["connectionId"].as_str().ok_or("no connectionId")?.to_owned();
        let token = body["connectionToken"].as_str().ok_or("no connectionToken")?.to_owned();
        check(!id.is_empty() && !token.is_empty() && id != token, || {
            format!("connectionId and connectionToken must be set and differ: {body}")
        })?;
        check(body["negotiateVersion"] == json!(1), || {
            format!("negotiateVersion: {body}")
        })?;
        check(body.get("ProtocolVersion").is_none(), || {
            "negotiate must never carry ProtocolVersion".into()
        })?;
        let transports = body["availableTransports"].as_array().ok_or("no availableTransports")?;
        let websockets = transports
            .iter()
            .find(|transport| transport["transport"] == json!("WebSockets"))
            .ok_or_else(|| format!("WebSockets is not offered: {body}"))?;
        check(websockets["transferFormats"] == json!(["Text", "Binary"]), || {
            format!("WebSockets formats: {websockets}")
        })?;

        // The token addresses the connection; its public id is what hub code sees.
        let url = server.ws_url(&format!("/wirehub?id={token}"));
        let mut client = Client::open(&url, Proto::Json).await?;
        client.handshake().await?;
        let seen = client.invoke_ok("ConnectionId", json!([])).await?;
        check(seen == json!(id), || {
            format!("Context.ConnectionId is {seen}, negotiate said {id}")
        })?;

        // A second socket for a token with an open socket: 409. An unknown id: 404.
        check(refused_upgrade(&url).await? == 409, || {
            "a second WebSocket for one token must get 409".into()
        })?;
        let unknown = server.ws_url("/wirehub?id=no-such-token");
        check(refused_upgrade(&unknown).await? == 404, || {
            "an unknown id must get 404".into()
        })?;
        // Addressing the connection by its public id must not work either.
        let by_id = server.ws_url(&format!("/wirehub?id={id}"));
        check(refused_upgrade(&by_id).await? == 404, || {
            "the public connectionId must not address it".into()
        })?;
        client.assert_healthy().await?;

        // Once the connection has ended, its token is gone (docs/protocol.md#finished-connections).
        client.send(Proto::Json.close()).await?;
        client.expect_ws_close().await?;
        let mut status = 0;
        for _ in 0..100 {
            status = refused_upgrade(&url).await?;
            if status == 404 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        check(status == 404, || {
            format!("a finished connection's token got {status}, not 404")
        })?;
        drop(client);
        server.stop().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_paths_are_case_insensitive_and_negotiate_v0_uses_the_id() -> TestResult {
    bounded(TEST_TIMEOUT, async {
        let server = TestNode::start(quiet_limits()).await?;
        let reply = http(server.addr(), "POST", "/WIREHUB/Negotiate?negotiateVersion=1").await?;
        check(reply.status == 200, || {
            format!("upper-case negotiate answered {}", reply.status)
        })?;
        let body: Value = serde_json::from_str(&reply.body)?;
        let token = body["connectionToken"].as_str().ok_or("no connectionToken")?.to_owned();
        let mut client = Client::open(&server.ws_url(&format!("/WireHub?id={token}")), Proto::MsgPack).await?;
        client.handshake().await?;
        client.assert_healthy().await?;

        // Version 0 (no negotiateVersion): no token; the client uses the connectionId as id.
        let reply = http(server.addr(), "POST", "/wirehub/negotiate").await?;
        check(reply.status == 200, || {
            format!("v0 negotiate answered {}", reply.status)
        })?;
        let body: Value = serde_json::from_str(&reply.body)?;
        check(body.get("connectionToken").is_none(), || {
            format!("a v0 negotiate has no token: {body}")
        })?;
        let id = body["connectionId"].as_str().ok_or("no connectionId")?.to_owned();
        let mut old = Client::open(&server.ws_url(&format!("/wirehub?id={id}")), Proto::Json).await?;
        old.handshake().await?;
        let seen = old.invoke_ok("ConnectionId", json!([])).await?;
        check(seen == json!(id), || {
            format!("v0 connection id {seen}, negotiated {id}")
        })?;

        // Unknown hub paths are 404.
        let reply = http(server.addr(), "POST", "/nohub/negotiate?negotiateVersion=1").await?;
        check(reply.status == 404, || {
            format!("negotiate on an unknown path answered {}", reply.status)
        })?;
        check(refused_upgrade(&server.ws_url("/nohub")).await? == 404, || {
            "an unknown hub path must get 404".into()
        })?;
        client.assert_healthy().await?;
        old.assert_healthy().await?;
        drop((client, old));
        server.stop().await;
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------------------------
// Handshake (docs/protocol.md#handshake)
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_then_messages_in_both_protocols() -> TestResult {
    bounded(TEST_TIMEOUT, async {
        let server = TestNode::start(quiet_limits()).await?;
        each_protocol(|protocol| {
            let server = &server;
            async move {
                for version in [1, 2] {
                    let mut client = Client::open(&server.ws_url("/wirehub"), protocol).await?;
                    client.send(protocol.handshake(version)).await?;
                    let response = client.handshake_response().await?;
                    check(response == json!({}), || {
                        format!("version {version} refused: {response}")
                    })?;
                    // The response is complete within one transport message, and exactly `{}` RS.
                    let first = client.first_frame.clone().unwrap_or_default();
                    check(first == b"{}\x1e", || format!("the handshake frame was {first:02x?}"))?;
                    // Like the JS client: a Ping right after the handshake; the server does not answer Pings.
                    client.send(protocol.ping()).await?;
                    let result = client.invoke_ok("Echo", json!(["hello"])).await?;
                    check(result == json!("hello"), || format!("Echo returned {result}"))?;
                    client.assert_frame_kinds()?;
                }

                // Byte-exact MessagePack: [3, {}, "1", 3, "hello"].
                if protocol == Proto::MsgPack {
                    let mut client = server.client(protocol).await?;
                    client
                        .send(protocol.invocation(Some("1"), "Echo", json!(["hello"]), &[]))
                        .await?;
                    let record = client.completion("1").await?;
                    let expected = [0x95, 0x03, 0x80, 0xa1, b'1', 0x03, 0xa5, b'h', b'e', b'l', b'l', b'o'];
                    check(record.raw == expected, || {
                        format!("completion bytes {:02x?}", record.raw)
                    })?;
                } else {
                    let mut client = server.client(protocol).await?;
                    client
                        .send(protocol.invocation(Some("1"), "Echo", json!(["hello"]), &[]))
                        .await?;
                    let record = client.completion("1").await?;
                    let expected = json!({ "type": 3, "invocationId": "1", "result": "hello" });
                    check(record.value == expected, || format!("completion {}", record.value))?;
                }
                Ok(())
            }
        })
        .await?;
        server.stop().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_handshakes_get_an_error_and_a_clean_close() -> TestResult {
    bounded(TEST_TIMEOUT, async {
        let server = TestNode::start(quiet_limits()).await?;
        let mut healthy = server.client(Proto::Json).await?;
        let cases: [(&str, &[u8], Option<&str>); 6] = [
            ("malformed JSON", b"{\"protocol\":\x1e", None),
            ("not an object", b"[1,2]\x1e", None),
            ("a hub message first", b"{\"type\":6}\x1e", None),
            (
                "unknown protocol",
                b"{\"protocol\":\"xml\",\"version\":1}\x1e",
                Some("The protocol 'xml' is not supported."),
            ),
            (
                "unsupported version",
                b"{\"protocol\":\"json\",\"version\":3}\x1e",
                Some("The server does not support version 3 of the 'json' protocol."),
            ),
            (
                "unsupported msgpack version",
                b"{\"protocol\":\"messagepack\",\"version\":99}\x1e",
                Some("The server does not support version 99 of the 'messagepack' protocol."),
            ),
        ];
        for (name, request, expected) in cases {
            let mut client = Client::open(&server.ws_url("/wirehub"), Proto::Json).await?;
            client.send_text(request.to_vec()).await?;
            let response = client
                .handshake_response()
                .await
                .map_err(|error| format!("{name}: {error}"))?;
            let error = response["error"].as_str().unwrap_or_default();
            check(!error.is_empty() && error.is_ascii(), || {
                format!("{name}: response {response}")
            })?;
            check(response.get("type").is_none(), || {
                format!("{name}: a `type` key in {response}")
            })?;
            if let Some(expected) = expected {
                check(error == expected, || {
                    format!("{name}: error {error:?}, expected {expected:?}")
                })?;
            }
            let code = client.expect_ws_close().await?;
            check(code == Some(1000), || format!("{name}: closed with {code:?}, not 1000"))?;
            healthy
                .assert_healthy()
                .await
                .map_err(|error| format!("after {name}: {error}"))?;
        }
        server.wait_for_connections(1, STEP).await?;
        drop(healthy);
        server.stop().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeout_closes_only_that_socket() -> TestResult {
    bounded(TEST_TIMEOUT, async {
        let limits = Limits {
            handshake_timeout: Duration::from_millis(400),
            ..quiet_limits()
        };
        let server = TestNode::start(limits).await?;
        let mut healthy = server.client(Proto::MsgPack).await?;
        // One sends nothing; one sends half a handshake.
        let started = Instant::now();
        let mut silent = Client::open(&server.ws_url("/wirehub"), Proto::Json).await?;
        let mut partial = Client::open(&server.ws_url("/wirehub"), Proto::Json).await?;
        partial.send_text(b"{\"protocol\":\"json\"".to_vec()).await?;
        for (name, client) in [("silent", &mut silent), ("partial", &mut partial)] {
            let code = client
                .expect_ws_close()
                .await
                .map_err(|error| format!("{name}: {error}"))?;
            let elapsed = started.elapsed();
            check(code == Some(1000), || format!("{name}: closed with {code:?}"))?;
            check(elapsed >= Duration::from_millis(300), || {
                format!("{name}: closed after only {elapsed:?}")
            })?;
            check(client.text_frames + client.binary_frames == 0, || {
                format!("{name}: got data before the handshake: {:?}", client.first_frame)
            })?;
        }
        healthy.assert_healthy().await?;
        server.wait_for_connections(1, STEP).await?;
        drop((healthy, silent, partial));
        server.stop().await;
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------------------------
// RPC (docs/protocol.md#json-hub-protocol, #messagepack-hub-protocol, #invocations)
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocations_complete_with_value_void_and_error() -> TestResult {
    bounded(TEST_TIMEOUT, async {
        let server = TestNode::start(quiet_limits()).await?;
        each_protocol(|protocol| {
            let server = &server;
            async move {
                let mut client = server.client(protocol).await?;
                let sum = client.invoke("Add", json!([2, 3])).await?;
                check(sum == json!({ "type": 3, "invocationId": "1", "result": 5 }), || {
                    format!("Add: {sum}")
                })?;

                // Void: no result at all (MessagePack kind 2, checked to be 4 elements by the reader).
                let void = client.invoke("Nothing", json!([])).await?;
                check(void == json!({ "type": 3, "invocationId": "2" }), || {
                    format!("Nothing: {void}")
                })?;

                // Method names are case-insensitive.
                let echoed = client.invoke_ok("eCHo", json!(["x"])).await?;
                check(echoed == json!("x"), || format!("eCHo: {echoed}"))?;

                let failed = client.invoke("Fail", json!([])).await?;
                let expected = "An unexpected error occurred invoking 'Fail' on the server. HubException: boom";
                check(failed["error"] == json!(expected), || format!("Fail: {failed}"))?;
                check(failed.get("result").is_none(), || {
                    format!("an error with a result: {failed}")
                })?;

                // Not a HubException and no detailed errors: the type and message stay on the server.
                let failed = client.invoke("FailPlain", json!([])).await?;
                let expected = "An unexpected error occurred invoking 'FailPlain' on the server.";
                check(failed["error"] == json!(expected), || format!("FailPlain: {failed}"))?;

                // Without an id nothing comes back, not even for an error or an unknown method.
                client
                    .send(protocol.invocation(None, "Echo", json!(["quiet"]), &[]))
                    .await?;
                client.send(protocol.invocation(None, "Fail", json!([]), &[])).await?;
                client
                    .send(protocol.invocation(None, "NoSuchMethod", json!([]), &[]))
                    .await?;
                if protocol == Proto::MsgPack {
                    // An empty id is non-blocking too.
                    client
                        .send(protocol.invocation(Some(""), "Fail", json!([]), &[]))
                        .await?;
                }
                let after = client.invoke("Add", json!([1, 1])).await?;
                check(after["result"] == json!(2), || {
                    format!("the next record was not Add's: {after}")
                })?;
                client.assert_frame_kinds()
            }
        })
        .await?;
        server.stop().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_to_client_streams() -> TestResult {
    bounded(TEST_TIMEOUT, async {
        let server = TestNode::start(quiet_limits()).await?;
        each_protocol(|protocol| {
            let server = &server;
            async move {
                let mut client = server.client(protocol).await?;
                client
                    .send(protocol.stream_invocation("7", "Counter", json!([3])))
                    .await?;
                for expected in 0..3 {
                    let item = client.record().await?;
                    check(
                        item.value == json!({ "type": 2, "invocationId": "7", "item": expected }),
                        || format!("item {expected}: {}", item.value),
                    )?;
                }
                let end = client.completion("7").await?;
                check(end.value == json!({ "type": 3, "invocationId": "7" }), || {
                    format!("a stream's Completion carries no result: {}", end.value)
                })?;

                // An empty stream: just the Completion.
                client
                    .send(protocol.stream_invocation("8", "Counter", json!([0])))
                    .await?;
                let end = client.completion("8").await?;
                check(
                    end.value.get("result").is_none() && end.value.get("error").is_none(),
                    || format!("empty stream end: {}", end.value),
                )?;

                // Streaming method with Invoke, and a plain method with StreamInvocation.
                let wrong = client.invoke("Counter", json!([3])).await?;
                let expected =
                    "The client attempted to invoke the streaming 'Counter' method with a non-streaming invocation.";
                check(wrong["error"] == json!(expected), || {
                    format!("Counter via invoke: {wrong}")
                })?;
                client
                    .send(protocol.stream_invocation("9", "Echo", json!(["x"])))
                    .await?;
                let wrong = client.completion("9").await?;
                let expected =
                    "The client attempted to invoke the non-streaming 'Echo' method with a streaming invocation.";
                check(wrong.value["error"] == json!(expected), || {
                    format!("Echo via stream: {}", wrong.value)
                })?;
                client.assert_healthy().await
            }
        })
        .await?;
        server.stop().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_invocation_stops_a_stream() -> TestResult {
    bounded(TEST_TIMEOUT, async {
        for protocol in [Proto::Json, Proto::MsgPack] {
            // One node per protocol: the cancellation flag is the hub's.
            let server = TestNode::start(quiet_limits()).await?;
            let mut client = server.client(protocol).await?;
            client
                .send(protocol.stream_invocation("s1", "Ticks", json!([])))
                .await?;
            for _ in 0..3 {
                let item = client.record().await?;
                check(item.kind() == 2 && item.id() == Some("s1"), || {
                    format!("tick: {}", item.value)
                })?;
            }
            client.send(protocol.cancel("s1")).await?;

            // The method's cancellation token fires.
            let cancelled = becomes_set(&server.flags.cancelled).await;
            check(cancelled, || {
                format!("[{}] the stream's token was not cancelled", protocol.name())
            })?;

            // Items in flight may still arrive, then a Completion at most; then nothing more for s1.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut drained = 0;
            while let Some(event) = client.event_within(Duration::from_millis(100)).await? {
                drained += 1;
                check(drained < 100, || "the stream keeps going after CancelInvocation".into())?;
                if let Event::Closed(code) = event {
                    return Err(format!("the connection closed after a cancel ({code:?})").into());
                }
            }
            if let Some(Event::Record(record)) = client.event_within(Duration::from_millis(400)).await? {
                return Err(format!("[{}] after cancel: {}", protocol.name(), record.value).into());
            }
            let was = client.invoke_ok("WasCancelled", json!([])).await?;
            check(was == json!(true), || format!("WasCancelled: {was}"))?;
            drop(client);
            server.stop().await;
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_calls_token_fires_when_its_connection_ends() -> TestResult {
    bounded(TEST_TIMEOUT, async {
        let server = TestNode::start(quiet_limits()).await?;
        let mut client = server.client(Proto::Json).await?;
        client
            .send(Proto::Json.invocation(Some("1"), "Hang", json!([]), &[]))
            .await?;
        // Queued behind the hanging call (invocations run one at a time): dropped unanswered as well.
        client
            .send(Proto::Json.invocation(Some("2"), "Echo", json!(["x"]), &[]))
            .await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        check(!server.flags.hang_cancelled.load(Ordering::SeqCst), || {
            "the token fired while the call was running".into()
        })?;
        client.send(Proto::Json.close()).await?;
        drop(client);
        let cancelled = becomes_set(&server.flags.hang_cancelled).await;
        check(cancelled, || {
            "the hanging call's token did not fire when its connection ended".into()
        })?;
        server.stop().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_to_server_streams() -> TestResult {
    bounded(TEST_TIMEOUT, async {
        let server = TestNode::start(quiet_limits()).await?;
        each_protocol(|protocol| {
            let server = &server;
            async move {
                let mut client = server.client(protocol).await?;
                // As the JS client numbers them: the stream id is taken before the invocation id.
                client
                    .send(protocol.invocation(Some("1"), "Sum", json!([]), &["0"]))
                    .await?;
                for item in [1, 2, 39] {
                    client.send(protocol.stream_item("0", json!(item))).await?;
                }
                client.send(protocol.completion("0", Outcome::Void)).await?;
                let total = client.completion("1").await?;
                check(total.value["result"] == json!(42), || format!("Sum: {}", total.value))?;

                // A client-side error ends the upload and fails the method as a HubException.
                client
                    .send(protocol.invocation(Some("3"), "Sum", json!([]), &["2"]))
                    .await?;
                client.send(protocol.stream_item("2", json!(5))).await?;
                client
                    .send(protocol.completion("2", Outcome::Error("Something bad")))
                    .await?;
                let failed = client.completion("3").await?;
                let expected = "An unexpected error occurred invoking 'Sum' on the server. HubException: Something bad";
                check(failed.value["error"] == json!(expected), || {
                    format!("Sum with error: {}", failed.value)
                })?;

                // A plain method given a stream: a binding error, and the connection goes on.
                client
                    .send(protocol.invocation(Some("5"), "Echo", json!(["x"]), &["4"]))
                    .await?;
                let failed = client.completion("5").await?;
                let expected = "Failed to invoke 'Echo' due to an error on the server.";
                check(failed.value["error"] == json!(expected), || {
                    format!("Echo with a stream: {}", failed.value)
                })?;
                client.assert_healthy().await
            }
        })
        .await?;
        server.stop().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_results_route_the_answer_back() -> TestResult {
    bounded(TEST_TIMEOUT, async {
        let server = TestNode::start(quiet_limits()).await?;
        each_protocol(|protocol| {
            let server = &server;
            async move {
                let mut client = server.client(protocol).await?;
                for (answer, expected) in [
                    (Outcome::Result(json!("forty-two")), json!({ "result": "forty-two" })),
                    (
                        Outcome::Error("Error: from callback"),
                        json!({ "error": "An unexpected error occurred invoking 'AskClient' on the server." }),
                    ),
                ] {
                    let id = client.next_id();
                    client
                        .send(protocol.invocation(Some(&id), "AskClient", json!(["question"]), &[]))
                        .await?;
                    let ask = client.record().await?;
                    check(ask.kind() == 1, || {
                        format!("expected the server's Invocation, got {}", ask.value)
                    })?;
                    check(ask.value["target"] == json!("Ask"), || format!("target: {}", ask.value))?;
                    check(ask.value["arguments"] == json!(["question"]), || {
                        format!("arguments: {}", ask.value)
                    })?;
                    let server_id = ask.id().unwrap_or_default().to_owned();
                    check(!server_id.is_empty(), || {
                        format!("a client-result Invocation needs an id: {}", ask.value)
                    })?;
                    client.send(protocol.completion(&server_id, answer)).await?;
                    let done = client.completion(&id).await?;
                    for (key, value) in expected.as_object().into_iter().flatten() {
                        check(done.value.get(key) == Some(value), || {
                            format!("AskClient: {}", done.value)
                        })?;
                    }
                }
                client.assert_healthy().await
            }
        })
        .await?;
        server.stop().await;
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------------------------
// Ping, Close, keep-alive and timeouts (docs/protocol.md#keep-alive-and-timeouts, #close-from-the-server)
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_pings_an_idle_client_and_client_pings_are_accepted() -> TestResult {
    bounded(TEST_TIMEOUT, async {
        let limits = Limits {
            keep_alive: Duration::from_millis(200),
            client_timeout: Duration::from_secs(10),
            ..Limits::default()
        };
        let server = TestNode::start(limits).await?;
        each_protocol(|protocol| {
            let server = &server;
            async move {
                let mut client = server.client(protocol).await?;
                let started = Instant::now();
                let Some(Event::Record(ping)) = client.event_within(Duration::from_secs(2)).await? else {
                    return Err("no keep-alive Ping within 2 s (keep_alive is 200 ms)".into());
                };
                check(ping.kind() == 6, || format!("expected a Ping, got {}", ping.value))?;
                check(started.elapsed() >= Duration::from_millis(100), || {
                    "the Ping came too early".into()
                })?;
                // Pings keep coming while the client only sends Pings of its own.
                let mut pings = 0;
                for _ in 0..8 {
                    client.send(protocol.ping()).await?;
                    if let Some(Event::Record(record)) = client.event_within(Duration::from_millis(150)).await? {
                        check(record.kind() == 6, || format!("unexpected {}", record.value))?;
                        pings += 1;
                    }
                }
                check(pings >= 2, || format!("only {pings} keep-alive Pings in 1.2 s"))?;
                client.assert_healthy().await?;
                client.assert_frame_kinds()
            }
        })
        .await?;
        server.stop().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_timeout_closes_a_silent_client_only() -> TestResult {
    bounded(TEST_TIMEOUT, async {
        let limits = Limits {
            keep_alive: Duration::from_millis(150),
            client_timeout: Duration::from_millis(800),
            ..Limits::default()
        };
        let server = TestNode::start(limits).await?;
        each_protocol(|protocol| {
            let server = &server;
            async move {
                let mut healthy = server.client(Proto::Json).await?;
                let mut silent = server.client(protocol).await?;
                let started = Instant::now();
                let mut pings = 0;
                let mut close = None;
                for _ in 0..40 {
                    // The healthy client talks (a Ping) more often than the timeout; the silent one never.
                    healthy.send(Proto::Json.ping()).await?;
                    match silent.event_within(Duration::from_millis(100)).await? {
                        None => {}
                        Some(Event::Record(record)) if record.kind() == 6 => pings += 1,
                        Some(Event::Record(record)) if record.kind() == 7 => {
                            close = Some(record.value);
                            break;
                        }
                        Some(other) => return Err(format!("unexpected {other:?}").into()),
                    }
                }
                let elapsed = started.elapsed();
                let close = close.ok_or("the silent client was never closed")?;
                check(elapsed >= Duration::from_millis(600), || {
                    format!("closed after only {elapsed:?}")
                })?;
                check(pings >= 2, || {
                    format!("only {pings} keep-alive Pings before the timeout")
                })?;
                let error = close["error"].as_str().unwrap_or_default();
                check(error.to_ascii_lowercase().contains("timeout"), || {
                    format!("the Close does not say why: {close}")
                })?;
                let code = silent.expect_ws_close().await?;
                check(code == Some(1000), || format!("closed with {code:?}"))?;
                healthy.assert_healthy().await?;
                server.wait_for_connections(1, STEP).await
            }
        })
        .await?;
        server.stop().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_message_from_the_client_ends_with_1000() -> TestResult {
    bounded(TEST_TIMEOUT, async {
        let server = TestNode::start(quiet_limits()).await?;
        let mut healthy = server.client(Proto::MsgPack).await?;
        each_protocol(|protocol| {
            let server = &server;
            async move {
                let mut client = server.client(protocol).await?;
                client.assert_healthy().await?;
                server.wait_for_connections(2, STEP).await?;
                client.send(protocol.close()).await?;
                let code = client.expect_ws_close().await?;
                check(code == Some(1000), || format!("closed with {code:?}"))?;
                server.wait_for_connections(1, STEP).await
            }
        })
        .await?;
        healthy.assert_healthy().await?;
        drop(healthy);
        server.stop().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_message_from_the_server_then_1000() -> TestResult {
    bounded(TEST_TIMEOUT, async {
        let server = TestNode::start(quiet_limits()).await?;
        let mut healthy = server.client(Proto::Json).await?;
        each_protocol(|protocol| {
            let server = &server;
            async move {
                let mut client = server.client(protocol).await?;
                client
                    .send(protocol.invocation(None, "CloseMe", json!(["bye"]), &[]))
                    .await?;
                let close = client.expect_close_message().await?;
                check(close["error"] == json!("bye"), || format!("Close: {close}"))?;
                check(
                    close.get("allowReconnect").is_none_or(|allow| *allow == json!(false)),
                    || format!("Close allows a reconnect: {close}"),
                )?;
                server.wait_for_connections(1, STEP).await
            }
        })
        .await?;
        healthy.assert_healthy().await?;
        drop(healthy);
        server.stop().await;
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------------------------
// Framing (docs/protocol.md#many-records-per-message, #whole-records-per-message, #messagepack-framing)
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_records_in_one_frame() -> TestResult {
    bounded(TEST_TIMEOUT, async {
        let server = TestNode::start(quiet_limits()).await?;
        each_protocol(|protocol| {
            let server = &server;
            async move {
                // The handshake, a Ping, two invocations and a whole upload, all in one WebSocket message.
                let mut client = Client::open(&server.ws_url("/wirehub"), protocol).await?;
                let mut frame = protocol.handshake(1);
                frame.extend(protocol.ping());
                frame.extend(protocol.invocation(Some("1"), "Add", json!([1, 2]), &[]));
                frame.extend(protocol.invocation(Some("2"), "Echo", json!(["two"]), &[]));
                frame.extend(protocol.invocation(Some("4"), "Sum", json!([]), &["3"]));
                frame.extend(protocol.stream_item("3", json!(10)));
                frame.extend(protocol.stream_item("3", json!(20)));
                frame.extend(protocol.completion("3", Outcome::Void));
                client.send(frame).await?;
                let response = client.handshake_response().await?;
                check(response == json!({}), || format!("handshake: {response}"))?;
                let one = client.completion("1").await?;
                check(one.value["result"] == json!(3), || format!("Add: {}", one.value))?;
                let two = client.completion("2").await?;
                check(two.value["result"] == json!("two"), || format!("Echo: {}", two.value))?;
                let four = client.completion("4").await?;
                check(four.value["result"] == json!(30), || format!("Sum: {}", four.value))?;
                client.assert_healthy().await
            }
        })
        .await?;
        server.stop().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_split_across_frames() -> TestResult {
    bounded(TEST_TIMEOUT, async {
        let server = TestNode::start(quiet_limits()).await?;
        each_protocol(|protocol| {
            let server = &server;
            async move {
                let mut client = server.client(protocol).await?;
                let text = "split ".repeat(40);
                // Across two WebSocket messages, cut inside the record (and for MessagePack right after the
                // length prefix too).
                let record = protocol.invocation(Some("1"), "Echo", json!([text]), &[]);
                let cuts = match protocol {
                    Proto::Json => vec![record.len() / 2],
                    Proto::MsgPack => vec![1, 2, record.len() / 2],
                };
                let mut id: u64 = 0;
                for cut in cuts {
                    id += 1;
                    let record = protocol.invocation(Some(&id.to_string()), "Echo", json!([text]), &[]);
                    let (head, tail) = record.split_at(cut);
                    client.send(head.to_vec()).await?;
                    // Nothing may come back for half a record.
                    if let Some(event) = client.event_within(Duration::from_millis(100)).await? {
                        return Err(format!("a reply to half a record: {event:?}").into());
                    }
                    client.send(tail.to_vec()).await?;
                    let done = client.completion(&id.to_string()).await?;
                    check(done.value["result"] == json!(text), || {
                        format!("split at {cut}: {}", done.value)
                    })?;
                }
                // One WebSocket message in two fragments (a continuation frame).
                id += 1;
                let record = protocol.invocation(Some(&id.to_string()), "Echo", json!([text]), &[]);
                let half = record.len() / 2;
                client.send_fragmented(record, half).await?;
                let done = client.completion(&id.to_string()).await?;
                check(done.value["result"] == json!(text), || {
                    format!("fragmented: {}", done.value)
                })?;
                client.next_id = id;
                client.assert_healthy().await
            }
        })
        .await?;
        server.stop().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_frame_kind_is_accepted_and_replies_keep_the_protocols_kind() -> TestResult {
    // docs/protocol.md does not reject a frame of the other kind (ASP.NET reads both into one pipe), so neither does
    // hubmesh; it always sends Text for JSON and Binary for MessagePack (docs/protocol.md#websocket-frame-types).
    bounded(TEST_TIMEOUT, async {
        let server = TestNode::start(quiet_limits()).await?;
        let mut json_client = server.client(Proto::Json).await?;
        let invocation = Proto::Json.invocation(Some("1"), "Echo", json!(["in binary"]), &[]);
        json_client.send_binary(invocation).await?;
        let done = json_client.completion("1").await?;
        check(done.value["result"] == json!("in binary"), || format!("{}", done.value))?;
        json_client.next_id = 1;
        json_client.assert_healthy().await?;
        json_client.assert_frame_kinds()?;

        // (MessagePack records always start with an array marker, never valid UTF-8, so they cannot travel in a
        // Text frame at all.)
        let mut msgpack_client = server.client(Proto::MsgPack).await?;
        msgpack_client.assert_healthy().await?;
        msgpack_client.assert_frame_kinds()?;
        drop((json_client, msgpack_client));
        server.stop().await;
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------------------------
// Bad input: only the offending connection ends, with a Close message that says why
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_message_types_are_ignored() -> TestResult {
    bounded(TEST_TIMEOUT, async {
        let server = TestNode::start(quiet_limits()).await?;
        each_protocol(|protocol| {
            let server = &server;
            async move {
                let mut client = server.client(protocol).await?;
                let unknown = protocol.record(json!({ "type": 99, "foo": 1 }), json!([99, {}, "foo"]));
                client.send(unknown).await?;
                // Ack and Sequence without stateful reconnect carry nothing to act on either.
                for kind in [8, 9] {
                    let record = protocol.record(json!({ "type": kind, "sequenceId": 1 }), json!([kind, 1]));
                    client.send(record).await?;
                }
                client.assert_healthy().await
            }
        })
        .await?;
        server.stop().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_methods_and_bad_arguments_fail_the_call_not_the_connection() -> TestResult {
    bounded(TEST_TIMEOUT, async {
        let server = TestNode::start(quiet_limits()).await?;
        each_protocol(|protocol| {
            let server = &server;
            async move {
                let mut client = server.client(protocol).await?;
                let unknown = client.invoke("NoSuchMethod", json!([1])).await?;
                check(unknown["error"] == json!("Failed to invoke 'NoSuchMethod' due to an error on the server. HubException: Method does not exist."), || {
                    format!("unknown method: {unknown}")
                })?;
                let binding = "Failed to invoke 'Add' due to an error on the server.";
                for args in [json!([1]), json!([1, 2, 3]), json!(["a", "b"]), json!([])] {
                    let wrong = client.invoke("Add", args.clone()).await?;
                    check(wrong["error"] == json!(binding), || format!("Add{args}: {wrong}"))?;
                }
                client.assert_healthy().await
            }
        })
        .await?;
        server.stop().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_close_only_that_connection() -> TestResult {
    bounded(TEST_TIMEOUT, async {
        let limits = Limits {
            max_message: 1024,
            ..quiet_limits()
        };
        let server = TestNode::start(limits).await?;
        let mut healthy = server.client(Proto::Json).await?;
        for protocol in [Proto::Json, Proto::MsgPack] {
            let server = &server;
            let healthy = &mut healthy;
            let outcome: TestResult = async move {
                // Just under the limit works.
                let mut client = server.client(protocol).await?;
                let fits = "a".repeat(900);
                let echoed = client.invoke_ok("Echo", json!([fits])).await?;
                check(echoed == json!(fits), || "a message under the limit failed".into())?;

                // A whole record over the limit.
                let big = protocol.invocation(Some("9"), "Echo", json!(["b".repeat(2000)]), &[]);
                client.send(big).await?;
                let error = client.expect_close_error().await?;
                check(error.contains("maximum message size"), || {
                    format!("Close says: {error}")
                })?;

                // Part of a record that is already over the limit (no end, or a prefix announcing too much).
                let mut client = server.client(protocol).await?;
                let partial = match protocol {
                    Proto::Json => {
                        format!("{{\"type\":1,\"target\":\"Echo\",\"arguments\":[\"{}", "c".repeat(2000)).into_bytes()
                    }
                    Proto::MsgPack => {
                        let mut prefix = Vec::new();
                        varint(1_000_000, &mut prefix);
                        prefix.extend_from_slice(&[0x95, 0x01, 0x80]);
                        prefix
                    }
                };
                client.send(partial).await?;
                let error = client.expect_close_error().await?;
                check(error.contains("maximum message size"), || {
                    format!("Close says: {error}")
                })?;
                healthy.assert_healthy().await
            }
            .await;
            outcome.map_err(|error| format!("[{}] {error}", protocol.name()))?;
        }
        server.wait_for_connections(1, STEP).await?;
        drop(healthy);
        server.stop().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_frames_over_max_frame_close_only_that_connection() -> TestResult {
    bounded(TEST_TIMEOUT, async {
        let limits = Limits {
            max_frame: 4096,
            max_message: 1024,
            ..quiet_limits()
        };
        let server = TestNode::start(limits).await?;
        let mut healthy = server.client(Proto::MsgPack).await?;
        for protocol in [Proto::Json, Proto::MsgPack] {
            let server = &server;
            let healthy = &mut healthy;
            let outcome: TestResult = async move {
                let mut client = server.client(protocol).await?;
                // Many small, valid records in one WebSocket message bigger than max_frame.
                let mut frame = Vec::new();
                for _ in 0..2000 {
                    frame.extend(protocol.ping());
                }
                client.send(frame).await?;
                match client.event().await? {
                    Event::Record(record) if record.kind() == 7 => {
                        let error = record.value["error"].as_str().unwrap_or_default().to_owned();
                        check(!error.is_empty(), || {
                            format!("a Close that does not say why: {}", record.value)
                        })?;
                        client.expect_ws_close().await?;
                    }
                    Event::Closed(code) => {
                        // A WebSocket-level refusal (1009 Message Too Big) is fine too.
                        check(
                            code.is_some_and(|code| code == 1009 || code == 1000 || code == 1002),
                            || format!("closed with {code:?}"),
                        )?;
                    }
                    Event::Record(record) => return Err(format!("unexpected {}", record.value).into()),
                }
                healthy.assert_healthy().await
            }
            .await;
            outcome.map_err(|error| format!("[{}] {error}", protocol.name()))?;
        }
        server.wait_for_connections(1, STEP).await?;
        drop(healthy);
        server.stop().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_records_close_only_that_connection() -> TestResult {
    bounded(TEST_TIMEOUT, async {
        let server = TestNode::start(quiet_limits()).await?;
        let mut healthy = server.client(Proto::Json).await?;
        let json_cases: Vec<(&str, Vec<u8>)> = vec![
            ("not JSON", b"{bad\x1e".to_vec()),
            ("not an object", b"[1,2]\x1e".to_vec()),
            ("a string type", b"{\"type\":\"x\"}\x1e".to_vec()),
            ("no type", b"{\"target\":\"Echo\"}\x1e".to_vec()),
            (
                "an invocation without target",
                b"{\"type\":1,\"invocationId\":\"1\",\"arguments\":[]}\x1e".to_vec(),
            ),
            (
                "arguments not an array",
                b"{\"type\":1,\"target\":\"Echo\",\"arguments\":5}\x1e".to_vec(),
            ),
            ("a stream item without id", b"{\"type\":2,\"item\":1}\x1e".to_vec()),
            ("a cancel without id", b"{\"type\":5}\x1e".to_vec()),
        ];
        let msgpack_cases: Vec<(&str, Vec<u8>)> = vec![
            ("a never-used byte", vec![0x01, 0xc1]),
            ("a string, not an array", vec![0x04, 0xa3, b'a', b'b', b'c']),
            ("an empty array", vec![0x01, 0x90]),
            ("a string type", vec![0x03, 0x91, 0xa1, b'x']),
            ("an invocation of one element", vec![0x02, 0x91, 0x01]),
            ("truncated inside the body", vec![0x03, 0x95, 0x01, 0x80]),
            ("a varint of six bytes", vec![0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x90]),
            ("a varint over 2 GB", vec![0xff, 0xff, 0xff, 0xff, 0x0f, 0x90]),
            ("a zero-length record", vec![0x00]),
        ];
        for (protocol, cases) in [(Proto::Json, json_cases), (Proto::MsgPack, msgpack_cases)] {
            for (name, bytes) in cases {
                let context = |error: BoxError| format!("[{}] {name}: {error}", protocol.name());
                let mut client = server.client(protocol).await.map_err(context)?;
                client.send(bytes).await.map_err(context)?;
                let error = client.expect_close_error().await.map_err(context)?;
                check(error.starts_with("Connection closed with an error."), || {
                    format!("[{}] {name}: Close says {error:?}", protocol.name())
                })?;
                healthy.assert_healthy().await.map_err(context)?;
            }
        }
        server.wait_for_connections(1, STEP).await?;
        drop(healthy);
        server.stop().await;
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------------------------
// Slow consumers (the outbound policy)
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_dropped_while_others_get_everything() -> TestResult {
    // As fast as the healthy client reads: the slow client's mailbox overflows before its socket fills.
    slow_consumer_flood(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_socket_does_not_keep_a_slow_consumer_alive() -> TestResult {
    // Paced: the slow connection drains its mailbox into the socket until the socket (kernel buffers and the
    // WebSocket writer's queue) is full and its write waits; only then does the mailbox overflow.
    slow_consumer_flood(Some(Duration::from_millis(2))).await
}

/// Floods every client of a node with 1000 broadcasts of 32 KB (about 32 MB, more than loopback socket buffers
/// hold) while one client reads everything and another reads nothing. `pause` paces the flood.
async fn slow_consumer_flood(pause: Option<Duration>) -> TestResult {
    bounded(Duration::from_secs(120), async {
        const FLOOD: u64 = 1000;
        const WINDOW: u64 = 8;
        let limits = Limits {
            outbound_queue: 16,
            ..quiet_limits()
        };
        let server = TestNode::start(limits).await?;
        let context = server.context()?;
        let mut slow = server.client(Proto::Json).await?;
        let healthy = server.client(Proto::MsgPack).await?;
        server.wait_for_connections(2, STEP).await?;

        // The healthy client reads everything, in order, and reports its progress.
        let (progress, mut progress_seen) = tokio::sync::watch::channel(0u64);
        let reader = tokio::spawn(async move {
            let mut healthy = healthy;
            let mut next = 0u64;
            while next < FLOOD {
                let record = healthy.record().await?;
                check(record.kind() == 1 && record.value["target"] == json!("flood"), || {
                    format!("healthy client got {}", record.value)
                })?;
                let index = record.value["arguments"][0].as_u64();
                check(index == Some(next), || {
                    format!("healthy client got item {index:?}, expected {next}")
                })?;
                next += 1;
                let _ = progress.send(next);
            }
            Ok::<Client, BoxError>(healthy)
        });

        // A broadcast flood from outside any hub method, paced by the healthy reader (so only a client that
        // does not read can fall behind); the slow client reads nothing at all.
        let payload = "x".repeat(32 * 1024);
        for index in 0..FLOOD {
            // (The watch guard is dropped at the end of this statement, before anything else awaits.)
            let paced = matches!(
                timeout(STEP, progress_seen.wait_for(|received| *received + WINDOW > index)).await,
                Ok(Ok(_))
            );
            if !paced {
                let why = match timeout(STEP, reader).await {
                    Ok(Ok(Err(error))) => error.to_string(),
                    Ok(Ok(Ok(_))) => "it stopped early".to_owned(),
                    Ok(Err(error)) => error.to_string(),
                    Err(_) => "it is stuck".to_owned(),
                };
                return Err(format!("the healthy client stalled at item {index}: {why}").into());
            }
            context.clients().all().send("flood", (index, payload.clone()))?;
            if let Some(pause) = pause {
                tokio::time::sleep(pause).await;
            }
        }
        let mut healthy = reader.await??;

        // The slow client is dropped while it still reads nothing.
        server
            .wait_for_connections(1, Duration::from_secs(10))
            .await
            .map_err(|error| format!("the slow consumer was not dropped: {error}"))?;
        healthy.assert_healthy().await?;

        // What the slow client finds when it reads: a prefix of the flood, a Close saying why if it got through,
        // and the end of the socket.
        let mut seen = 0u64;
        let mut ended = false;
        for _ in 0..FLOOD + 100 {
            match slow.event().await? {
                Event::Record(record) if record.kind() == 1 => {
                    let index = record.value["arguments"][0].as_u64();
                    check(index == Some(seen), || {
                        format!("slow client got item {index:?}, expected {seen}")
                    })?;
                    seen += 1;
                }
                Event::Record(record) if record.kind() == 7 => {
                    let error = record.value["error"].as_str().unwrap_or_default();
                    check(error.contains("Slow consumer"), || {
                        format!("the Close says {}", record.value)
                    })?;
                }
                Event::Record(record) => return Err(format!("slow client got {}", record.value).into()),
                Event::Closed(_) => {
                    ended = true;
                    break;
                }
            }
        }
        check(ended, || "the slow client's socket never ended".into())?;
        check(seen < FLOOD, || {
            "the slow client got the whole flood: it was never slow".into()
        })?;
        healthy.assert_healthy().await?;
        drop((healthy, slow));
        server.stop().await;
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_node_closes_connections_with_a_close_message() -> TestResult {
    // NodeHandle::stop promises that open connections are closed; a graceful shutdown SHOULD tell clients with a
    // Close message that allows a reconnect (docs/protocol.md#close-from-the-server), then end the socket with 1000,
    // and not wait for clients.
    bounded(TEST_TIMEOUT, async {
        let server = TestNode::start(quiet_limits()).await?;
        let mut json_client = server.client(Proto::Json).await?;
        let mut msgpack_client = server.client(Proto::MsgPack).await?;
        json_client.assert_healthy().await?;
        msgpack_client.assert_healthy().await?;
        let started = Instant::now();
        let stop = timeout(Duration::from_secs(10), server.node.stop());
        let watch = async {
            for client in [&mut json_client, &mut msgpack_client] {
                let close = client
                    .expect_close_message()
                    .await
                    .map_err(|error| format!("[{}] on stop: {error}", client.protocol.name()))?;
                check(close["allowReconnect"] == json!(true), || {
                    format!("a shutdown Close should allow a reconnect: {close}")
                })?;
            }
            Ok::<(), BoxError>(())
        };
        let (stopped, watched) = tokio::join!(stop, watch);
        watched?;
        check(stopped.is_ok(), || "stop did not return within 10 s".into())?;
        let elapsed = started.elapsed();
        check(elapsed < STEP, || {
            format!("stop took {elapsed:?} with two clients open")
        })
    })
    .await
}

/// A hub mounted with `Node::configure` in an application's own actix-web `HttpServer` (where the socket stays with
/// actix-web, and actix-ws carries the messages) serves the same WebSocket protocol as a node's own server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_in_an_applications_own_http_server_serves_websockets() -> TestResult {
    bounded(TEST_TIMEOUT, async {
        let node = Node::builder()
            .hub(wire_hub(Flags::default()))
            .limits(quiet_limits())
            .build()?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let app_node = node.clone();
        let server = actix_web::HttpServer::new(move || {
            let node = app_node.clone();
            actix_web::App::new().configure(move |config| node.configure(config))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)?
        .run();
        let handle = server.handle();
        let task = tokio::spawn(server);
        let url = format!("ws://{addr}/wirehub");
        each_protocol(|protocol| {
            let url = url.clone();
            async move {
                let mut client = Client::open(&url, protocol).await?;
                client.handshake().await?;
                client.send(protocol.ping()).await?;
                let result = client.invoke_ok("Echo", json!(["from an app's own server"])).await?;
                check(result == json!("from an app's own server"), || {
                    format!("Echo returned {result}")
                })?;
                client.assert_frame_kinds()?;
                Ok(())
            }
        })
        .await?;
        handle.stop(false).await;
        let _ = timeout(Duration::from_secs(5), task).await;
        Ok(())
    })
    .await
}

/// Write coalescing (`Limits::write_coalesce`): a connection that receives broadcasts often gets them in fewer,
/// larger writes, in order, none later than the window after the previous write; its own replies are never held
/// and carry what is held with them; a connection that receives them rarely gets each at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frequent_broadcasts_are_coalesced_and_replies_are_not_held() -> TestResult {
    bounded(TEST_TIMEOUT, async {
        let window = Duration::from_millis(400);
        let server = TestNode::start(Limits {
            write_coalesce: window,
            ..quiet_limits()
        })
        .await?;
        let context = server.context()?;
        let mut client = server.client(Proto::Json).await?;
        server.wait_for_connections(1, STEP).await?;

        // Rare: 3 broadcasts a full window apart each arrive in their own frame, within a fraction of the window.
        let frames_before = client.text_frames;
        for index in 0..3 {
            let sent = Instant::now();
            context.clients().all().send("tick", (index,))?;
            let record = client.record().await?;
            check(record.value["arguments"] == json!([index]), || {
                format!("got {}", record.value)
            })?;
            check(sent.elapsed() < window, || {
                format!("a rare broadcast took {:?}", sent.elapsed())
            })?;
            tokio::time::sleep(window).await;
        }
        check(client.text_frames - frames_before == 3, || {
            format!(
                "3 rare broadcasts came in {} frames",
                client.text_frames - frames_before
            )
        })?;

        // Frequent: 12 broadcasts 20 ms apart (a twentieth of the window) come in order, in fewer frames.
        let frames_before = client.text_frames;
        for index in 0..12 {
            context.clients().all().send("tick", (100 + index,))?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for index in 0..12 {
            let record = client.record().await?;
            check(record.value["arguments"] == json!([100 + index]), || {
                format!("expected tick {}, got {}", 100 + index, record.value)
            })?;
        }
        let frames = client.text_frames - frames_before;
        check(frames < 12, || {
            format!("12 frequent broadcasts came in {frames} frames")
        })?;

        // Messages to this connection by id, as often as the broadcasts above: each comes at once.
        let id = client.invoke_ok("ConnectionId", json!([])).await?;
        let id = ConnectionId::new(id.as_str().ok_or("ConnectionId returned no string")?);
        for index in 0..8 {
            let sent = Instant::now();
            context.clients().client(&id).send("direct", (index,))?;
            let record = client.record().await?;
            check(record.value["arguments"] == json!([index]), || {
                format!("got {}", record.value)
            })?;
            check(sent.elapsed() < window / 2, || {
                format!("a message to one connection took {:?}: it was held", sent.elapsed())
            })?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // A reply while broadcasts are held: it comes at once, after them.
        for index in 0..6 {
            context.clients().all().send("tick", (200 + index,))?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let asked = Instant::now();
        let id = client.next_id();
        client
            .send(Proto::Json.invocation(Some(&id), "Echo", json!(["now"]), &[]))
            .await?;
        for index in 0..6 {
            let record = client.record().await?;
            check(record.value["arguments"] == json!([200 + index]), || {
                format!("expected tick {} before the reply, got {}", 200 + index, record.value)
            })?;
        }
        let reply = client.completion(&id).await?;
        check(reply.value["result"] == json!("now"), || {
            format!("the reply was {}", reply.value)
        })?;
        check(asked.elapsed() < window, || {
            format!("the reply took {:?}, as long as a held broadcast", asked.elapsed())
        })?;
        drop(client);
        server.stop().await;
        Ok(())
    })
    .await
}
