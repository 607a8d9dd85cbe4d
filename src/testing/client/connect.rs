//! Connecting a [`TestClient`]: where and how ([`ClientOptions`], made by [`TestClient::to`]: protocol, handshake
//! version, a bearer token in the header or the query, negotiate first or not), the WebSocket upgrade, the
//! handshake, and stateful reconnect's reopening of the socket.

use std::collections::VecDeque;

use serde_json::{json, Value};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::decode::{self, ensure};
use super::http::negotiate;
use super::records::{Protocol, RS};
use super::{Got, Result, TestClient, TestClientError, Ws, STEP};

/// Where and how a [`TestClient`] connects; made by [`TestClient::to`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    url: String,
    protocol: Protocol,
    version: u32,
    authorization: Option<String>,
}

impl ClientOptions {
    /// The hub protocol (JSON unless set).
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// The handshake version (1 unless set; 2 asks for stateful reconnect's Ack and Sequence).
    pub fn handshake_version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// Sends `value` as the `Authorization` header (of negotiate and of the upgrade).
    pub fn authorization(mut self, value: &str) -> Self {
        self.authorization = Some(value.to_owned());
        self
    }

    /// Sends `Authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> Self {
        self.authorization(&format!("Bearer {token}"))
    }

    /// Adds `access_token=<token>` to the query, as browsers send a token.
    pub fn access_token(mut self, token: &str) -> Self {
        let separator = if self.url.contains('?') { '&' } else { '?' };
        self.url = format!("{}{separator}access_token={token}", self.url);
        self
    }

    /// Negotiates (version 1, with the `Authorization` header), then addresses the connection by its token.
    pub async fn negotiate(mut self) -> Result<Self> {
        let headers: Vec<(&str, &str)> = self
            .authorization
            .iter()
            .map(|value| ("Authorization", value.as_str()))
            .collect();
        let body = negotiate(&self.url, "", &headers).await?;
        let token = body["connectionToken"]
            .as_str()
            .ok_or_else(|| TestClientError::Unexpected(format!("negotiate gave no connectionToken: {body}")))?;
        let separator = if self.url.contains('?') { '&' } else { '?' };
        self.url = format!("{}{separator}id={token}", self.url);
        Ok(self)
    }

    /// The WebSocket URL the client connects to.
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn upgrade(&self) -> Result<Ws> {
        let mut request = self.url.as_str().into_client_request()?;
        if let Some(value) = &self.authorization {
            let value = HeaderValue::from_str(value)
                .map_err(|_| TestClientError::Unexpected(format!("not a header value: {value:?}")))?;
            request.headers_mut().insert("authorization", value);
        }
        let (ws, _response) = timeout(STEP, tokio_tungstenite::connect_async(request))
            .await
            .map_err(|_| TestClientError::Timeout(format!("connecting to {}", self.url)))??;
        Ok(ws)
    }

    /// Opens the WebSocket only (no handshake).
    pub async fn open(self) -> Result<TestClient> {
        let ws = self.upgrade().await?;
        Ok(TestClient {
            ws,
            protocol: self.protocol,
            version: self.version,
            buf: Vec::new(),
            handshaken: false,
            inbox: VecDeque::new(),
            closed: None,
            text_frames: 0,
            binary_frames: 0,
            first_frame: None,
            next_id: 0,
            answer: None,
        })
    }

    /// Opens the WebSocket and does the handshake, expecting `{}`.
    pub async fn connect(self) -> Result<TestClient> {
        let mut client = self.open().await?;
        client.handshake().await?;
        Ok(client)
    }

    /// The HTTP status a refused WebSocket upgrade got; an accepted upgrade is an error.
    pub async fn refused_status(self) -> Result<u16> {
        match self.upgrade().await {
            Ok(_) => Err(TestClientError::Unexpected(format!(
                "the upgrade to {} was accepted",
                self.url
            ))),
            Err(TestClientError::WebSocket(error)) => match *error {
                tungstenite::Error::Http(response) => Ok(response.status().as_u16()),
                error => Err(TestClientError::Unexpected(format!(
                    "the upgrade to {} failed without an HTTP status: {error}",
                    self.url
                ))),
            },
            Err(error) => Err(error),
        }
    }
}

impl TestClient {
    /// A client of `url` (`ws://`, or `http://` which becomes `ws://`), JSON and handshake version 1 unless set.
    pub fn to(url: &str) -> ClientOptions {
        let url = match url.strip_prefix("http://") {
            Some(rest) => format!("ws://{rest}"),
            None => url.to_owned(),
        };
        ClientOptions {
            url,
            protocol: Protocol::Json,
            version: 1,
            authorization: None,
        }
    }

    /// Sends the handshake (Text for JSON, Binary for MessagePack as the .NET client does) and expects `{}`.
    pub async fn handshake(&mut self) -> Result<()> {
        let request = self.protocol.handshake(self.version);
        self.send_frame(request).await?;
        let response = self.handshake_response().await?;
        ensure(response == json!({}), || format!("handshake refused: {response}"))
    }

    /// Reads the handshake response: the JSON up to the first RS. What follows it is parsed as hub records.
    pub async fn handshake_response(&mut self) -> Result<Value> {
        for _ in 0..100 {
            if let Some(end) = self.buf.iter().position(|byte| *byte == RS) {
                let response: Value = serde_json::from_slice(&self.buf[..end])?;
                self.buf.drain(..=end);
                self.handshaken = true;
                decode::take_records(self.protocol, &mut self.buf, &mut self.inbox)?;
                return Ok(response);
            }
            match self.read_frame(STEP).await? {
                Got::Data => {}
                Got::Ended => {
                    return Err(TestClientError::Unexpected(format!(
                        "the connection ended before the handshake response (code {:?})",
                        self.closed.flatten()
                    )))
                }
                Got::Quiet => {
                    return Err(TestClientError::Timeout(format!(
                        "no handshake response within {STEP:?}"
                    )))
                }
            }
        }
        Err(TestClientError::Unexpected(
            "no complete handshake response in 100 frames".into(),
        ))
    }

    /// Reopens the socket at `url` (stateful reconnect: the same connection token, no new handshake), dropping
    /// whatever the old socket left unread.
    pub async fn reconnect(&mut self, url: &str) -> Result<()> {
        self.ws = TestClient::to(url).upgrade().await?;
        self.buf.clear();
        self.inbox.clear();
        self.closed = None;
        Ok(())
    }
}
