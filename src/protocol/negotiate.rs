//! The bodies of `POST [hub]/negotiate` responses (docs/protocol.md#negotiate): the connection offer, the
//! redirect, and the error. Only serialization; the HTTP layer chooses which to send.

use serde::Serialize;

use super::TransferFormat;

/// One transport the server offers, with the transfer formats it supports on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AvailableTransport {
    /// `"WebSockets"`, `"ServerSentEvents"` or `"LongPolling"`.
    pub transport: String,
    /// `["Text","Binary"]`, or `["Text"]` for server-sent events.
    pub transfer_formats: Vec<TransferFormat>,
}

impl AvailableTransport {
    /// A transport by its exact negotiate name.
    pub fn new(transport: impl Into<String>, transfer_formats: Vec<TransferFormat>) -> AvailableTransport {
        AvailableTransport {
            transport: transport.into(),
            transfer_formats,
        }
    }
}

/// A successful negotiate response.
///
/// Version 1: `{"negotiateVersion":1,"connectionId":..,"connectionToken":..,"availableTransports":[..]}`; version 0
/// has no `connectionToken` (the client then uses the connection id as `id=`). `useStatefulReconnect` appears only
/// when true, because the client fails if the server enables it unasked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NegotiateResponse {
    /// The negotiate protocol version in use: 0 or 1.
    pub negotiate_version: u32,
    /// The public connection id (`Context.ConnectionId`).
    pub connection_id: String,
    /// The secret that addresses the connection on the transport endpoints; omitted in version 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_token: Option<String>,
    /// Whether stateful reconnect is on; only set when the client asked and the server allows it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub use_stateful_reconnect: bool,
    /// The transports offered, in order of preference.
    pub available_transports: Vec<AvailableTransport>,
}

impl NegotiateResponse {
    /// A response of negotiate `version` (0 or 1); `connection_token` is dropped for version 0.
    pub fn new(
        version: u32,
        connection_id: String,
        connection_token: String,
        available_transports: Vec<AvailableTransport>,
    ) -> NegotiateResponse {
        NegotiateResponse {
            negotiate_version: version,
            connection_id,
            connection_token: (version >= 1).then_some(connection_token),
            use_stateful_reconnect: false,
            available_transports,
        }
    }

    /// Sets `useStatefulReconnect` (only pass `true` when the client asked for it).
    pub fn with_stateful_reconnect(mut self, enabled: bool) -> NegotiateResponse {
        self.use_stateful_reconnect = enabled;
        self
    }
}

#[cfg(any(test, feature = "internals"))]
/// A negotiate response that sends the client to another URL, which it negotiates with next (up to 100 times).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NegotiateRedirect {
    /// The hub URL to negotiate with next.
    pub url: String,
    /// The bearer token the client uses from then on, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
}

#[cfg(any(test, feature = "internals"))]
/// A negotiate response that makes the client's `start()` fail with this message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NegotiateError {
    /// The message the client reports.
    pub error: String,
}
