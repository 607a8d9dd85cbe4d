//! The HTTP/1.1 the bench's negotiate, SSE and long-polling clients speak: one request at a time per TCP
//! connection ([`HttpConn`]), responses with `Content-Length`, chunked or close-delimited bodies, the chunks of a
//! streaming body (the SSE stream), and a client's idle keep-alive connections per URL ([`Pool`]).
//!
//! Everything is bounded: response heads to [`MAX_HEAD`] bytes, bodies to what the caller allows, chunks to
//! [`MAX_CHUNK`]; the callers put a timeout on every exchange.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::route::HubUrl;
use super::BenchError;

/// The longest response head read.
pub(crate) const MAX_HEAD: usize = 16 * 1024;
/// The largest chunk of a chunked body.
pub(crate) const MAX_CHUNK: usize = 16 * 1024 * 1024;
/// An idle keep-alive connection is used again only this soon after its last response (the node closes idle
/// connections after 5 s).
const REUSE_WITHIN: Duration = Duration::from_secs(2);

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("{0}")]
    Connect(std::io::Error),
    #[error("{0}")]
    Io(std::io::Error),
    #[error("the server closed the HTTP connection")]
    Closed,
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    #[error("response body over {0} bytes")]
    TooLarge(usize),
}

impl HttpError {
    /// The bench error for a request to `url`.
    pub(crate) fn at(self, url: &HubUrl, doing: &'static str) -> BenchError {
        let url = url.http();
        match self {
            HttpError::Connect(error) => BenchError::Connect {
                url,
                reason: error.to_string(),
            },
            HttpError::Io(error) => BenchError::Socket {
                url,
                doing,
                reason: error.to_string(),
            },
            HttpError::Closed => BenchError::Closed {
                url,
                doing,
                reason: HttpError::Closed.to_string(),
            },
            other => BenchError::Protocol {
                url,
                reason: format!("{doing}: {other}"),
            },
        }
    }
}

/// A response's status line and the headers that frame its body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Head {
    pub(crate) status: u16,
    length: Option<usize>,
    chunked: bool,
    close: bool,
}

impl Head {
    fn has_body(&self) -> bool {
        !(self.status == 204 || self.status == 304 || (100..200).contains(&self.status))
    }
}

/// A whole response.
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

impl Response {
    /// The start of the body, for an error message.
    pub(crate) fn excerpt(&self) -> String {
        String::from_utf8_lossy(&self.body[..self.body.len().min(200)]).into_owned()
    }
}

/// One TCP connection to a node.
pub(crate) struct HttpConn {
    stream: TcpStream,
    /// Bytes read and not yet consumed.
    buffer: Vec<u8>,
    host: String,
    /// Whether the server keeps the connection open after the last response.
    reusable: bool,
    idle_since: Instant,
}

impl HttpConn {
    /// Connects to `url`'s node (Nagle off: requests are small and latency is measured).
    pub(crate) async fn open(url: &HubUrl) -> Result<HttpConn, HttpError> {
        let stream = TcpStream::connect(url.address()).await.map_err(HttpError::Connect)?;
        stream.set_nodelay(true).map_err(HttpError::Connect)?;
        Ok(HttpConn {
            stream,
            buffer: Vec::with_capacity(1024),
            host: url.host().to_owned(),
            reusable: true,
            idle_since: Instant::now(),
        })
    }

    /// Whether the connection may carry another request: kept alive, idle briefly, and not closed by the server.
    fn still_serves(&self) -> bool {
        self.reusable
            && self.buffer.is_empty()
            && self.idle_since.elapsed() < REUSE_WITHIN
            && matches!(self.stream.try_read(&mut [0u8; 1]), Err(error) if error.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Writes one request (head and body in one write). `headers` are extra header lines, each ending in CRLF.
    pub(crate) async fn send_request(
        &mut self,
        method: &str,
        target: &str,
        headers: &str,
        body: &[u8],
    ) -> Result<(), HttpError> {
        let length = if body.is_empty() && method == "GET" {
            String::new()
        } else {
            format!("Content-Length: {}\r\n", body.len())
        };
        let mut request = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\n{headers}{length}\r\n",
            self.host
        )
        .into_bytes();
        request.extend_from_slice(body);
        self.stream.write_all(&request).await.map_err(HttpError::Io)
    }

    /// Reads one response head.
    pub(crate) async fn read_head(&mut self) -> Result<Head, HttpError> {
        let end = loop {
            if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                break end;
            }
            if self.buffer.len() > MAX_HEAD {
                return Err(HttpError::Malformed("response head too large"));
            }
            self.read_more().await?;
        };
        let head = parse_head(&self.buffer[..end])?;
        self.buffer.drain(..end + 4);
        self.reusable = !head.close;
        Ok(head)
    }

    /// Reads the whole body of a response with `head`, at most `max` bytes.
    pub(crate) async fn read_body(&mut self, head: &Head, max: usize) -> Result<Vec<u8>, HttpError> {
        let mut body = Vec::new();
        if !head.has_body() {
            // 1xx, 204, 304: no body.
        } else if head.chunked {
            while let Some(chunk) = self.read_chunk().await? {
                if body.len() + chunk.len() > max {
                    return Err(HttpError::TooLarge(max));
                }
                body.extend_from_slice(&chunk);
            }
        } else if let Some(length) = head.length {
            if length > max {
                return Err(HttpError::TooLarge(max));
            }
            while self.buffer.len() < length {
                self.read_more().await?;
            }
            body = self.buffer.drain(..length).collect();
        } else {
            // Close-delimited.
            self.reusable = false;
            loop {
                if self.buffer.len() > max {
                    return Err(HttpError::TooLarge(max));
                }
                match self.read_more().await {
                    Ok(()) => {}
                    Err(HttpError::Closed) => break,
                    Err(error) => return Err(error),
                }
            }
            body = std::mem::take(&mut self.buffer);
        }
        self.idle_since = Instant::now();
        Ok(body)
    }

    /// The next piece of a streaming body (a chunk, or what arrived of a close-delimited body); `None` at its end.
    pub(crate) async fn read_stream(&mut self, head: &Head) -> Result<Option<Vec<u8>>, HttpError> {
        if head.chunked {
            return self.read_chunk().await;
        }
        if self.buffer.is_empty() {
            match self.read_more().await {
                Ok(()) => {}
                Err(HttpError::Closed) => return Ok(None),
                Err(error) => return Err(error),
            }
        }
        Ok(Some(std::mem::take(&mut self.buffer)))
    }

    /// One request and its whole response (body at most `max` bytes).
    pub(crate) async fn exchange(
        &mut self,
        method: &str,
        target: &str,
        headers: &str,
        body: &[u8],
        max: usize,
    ) -> Result<Response, HttpError> {
        self.send_request(method, target, headers, body).await?;
        let head = self.read_head().await?;
        let body = self.read_body(&head, max).await?;
        Ok(Response {
            status: head.status,
            body,
        })
    }

    /// The next chunk of a chunked body; `None` after the last (empty) chunk and its trailers.
    async fn read_chunk(&mut self) -> Result<Option<Vec<u8>>, HttpError> {
        let line = self.read_line().await?;
        let size = line.split(|byte| *byte == b';').next().unwrap_or_default();
        let size = std::str::from_utf8(size)
            .ok()
            .and_then(|size| usize::from_str_radix(size.trim(), 16).ok())
            .ok_or(HttpError::Malformed("bad chunk size"))?;
        if size > MAX_CHUNK {
            return Err(HttpError::TooLarge(MAX_CHUNK));
        }
        if size == 0 {
            // Trailers, up to an empty line; bounded by the head limit.
            let mut read = 0;
            loop {
                let trailer = self.read_line().await?;
                if trailer.is_empty() {
                    return Ok(None);
                }
                read += trailer.len();
                if read > MAX_HEAD {
                    return Err(HttpError::Malformed("trailers too large"));
                }
            }
        }
        while self.buffer.len() < size + 2 {
            self.read_more().await?;
        }
        if &self.buffer[size..size + 2] != b"\r\n" {
            return Err(HttpError::Malformed("chunk without CRLF"));
        }
        let chunk = self.buffer[..size].to_vec();
        self.buffer.drain(..size + 2);
        Ok(Some(chunk))
    }

    /// One line (without its CRLF), at most [`MAX_HEAD`] bytes.
    async fn read_line(&mut self) -> Result<Vec<u8>, HttpError> {
        loop {
            if let Some(end) = find(&self.buffer, b"\r\n") {
                let line = self.buffer[..end].to_vec();
                self.buffer.drain(..end + 2);
                return Ok(line);
            }
            if self.buffer.len() > MAX_HEAD {
                return Err(HttpError::Malformed("line too long"));
            }
            self.read_more().await?;
        }
    }

    /// Reads what the socket has (at least one byte) into the buffer.
    async fn read_more(&mut self) -> Result<(), HttpError> {
        self.buffer.reserve(8192);
        match self.stream.read_buf(&mut self.buffer).await {
            Ok(0) => Err(HttpError::Closed),
            Ok(_) => Ok(()),
            Err(error) => Err(HttpError::Io(error)),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

fn parse_head(bytes: &[u8]) -> Result<Head, HttpError> {
    let text = std::str::from_utf8(bytes).map_err(|_| HttpError::Malformed("response head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed("not an HTTP/1.x status line"));
    }
    let status = parts
        .next()
        .and_then(|status| status.parse::<u16>().ok())
        .ok_or(HttpError::Malformed("bad status code"))?;
    let mut head = Head {
        status,
        length: None,
        chunked: false,
        close: version == "HTTP/1.0",
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(HttpError::Malformed("bad header line"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            head.length = Some(value.parse().map_err(|_| HttpError::Malformed("bad Content-Length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            let value = value.to_ascii_lowercase();
            if value.contains("close") {
                head.close = true;
            } else if value.contains("keep-alive") {
                head.close = false;
            }
        }
    }
    Ok(head)
}

/// A client's idle keep-alive connections, one per URL index, for requests it makes one at a time (its POSTs, or
/// its polls).
pub(crate) struct Pool {
    idle: Vec<Option<HttpConn>>,
}

impl Pool {
    /// A pool for `urls` URLs.
    pub(crate) fn new(urls: usize) -> Pool {
        Pool {
            idle: (0..urls).map(|_| None).collect(),
        }
    }

    /// Keeps `conn` for the next request to URL `index`, if the server keeps it open.
    pub(crate) fn put(&mut self, index: usize, conn: HttpConn) {
        if conn.reusable {
            if let Some(slot) = self.idle.get_mut(index) {
                *slot = Some(conn);
            }
        }
    }

    /// One request to `url` (index `index`), on its idle connection if it still serves, else on a new one.
    pub(crate) async fn exchange(
        &mut self,
        index: usize,
        url: &HubUrl,
        request: Request<'_>,
    ) -> Result<Response, HttpError> {
        let mut conn = match self.idle.get_mut(index).and_then(Option::take) {
            Some(conn) if conn.still_serves() => conn,
            _ => HttpConn::open(url).await?,
        };
        let response = conn
            .exchange(
                request.method,
                request.target,
                request.headers,
                request.body,
                request.max,
            )
            .await?;
        self.put(index, conn);
        Ok(response)
    }
}

/// What [`Pool::exchange`] sends.
pub(crate) struct Request<'a> {
    pub(crate) method: &'a str,
    pub(crate) target: &'a str,
    /// Extra header lines, each ending in CRLF.
    pub(crate) headers: &'a str,
    pub(crate) body: &'a [u8],
    /// The largest response body accepted.
    pub(crate) max: usize,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn heads_frame_their_bodies() {
        let head = parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\nconnection: keep-alive").unwrap();
        assert_eq!(
            (head.status, head.length, head.chunked, head.close),
            (200, Some(12), false, false)
        );
        let head = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close").unwrap();
        assert!(head.chunked && head.close);
        let head = parse_head(b"HTTP/1.1 204 No Content").unwrap();
        assert!(!head.has_body());
        assert!(parse_head(b"SSH-2.0").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x").is_err());
    }
}
