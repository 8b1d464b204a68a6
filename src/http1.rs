//! One keep-alive HTTP/1.1 connection of the benchmarks' clients (`sessionbench`,
//! `loadgen --write-bench`), and what they read from an answer: hyper on its own
//! connection, so the client costs the machine it shares little.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE, ETAG, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// `Cache-Status` detail of an answer whose strict fields were read from the primary.
const STRICT: &[u8] = b"strict-from-primary";

/// A request of a benchmark.
pub enum Op {
    Get,
    /// A merge patch: the body.
    Patch(String),
    /// A PUT of a JSON document: the body.
    Put(String),
    /// A POST of a JSON body.
    Post(String),
}

/// What the workload keeps of an answer.
pub struct Answer {
    pub status: u16,
    /// The document's version, from the `ETag`.
    pub version: Option<u64>,
    /// Served by the cache without an origin read (nginx's `X-Cache-Status` HIT, STALE,
    /// UPDATING or REVALIDATED when present, else edgecache's `Cache-Status: <node>; hit`
    /// without `strict-from-primary`).
    pub hit: bool,
    pub token: Option<HeaderValue>,
}

pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
}

impl Connection {
    pub async fn open(authority: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(authority).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        // The connection's I/O; it ends when the sender is dropped or the peer closes.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Connection { sender })
    }

    /// Sends one request and reads the whole answer.
    pub async fn send(
        &mut self,
        authority: &str,
        path: &str,
        op: Op,
        headers: HeaderMap,
    ) -> anyhow::Result<Answer> {
        self.sender.ready().await?;
        let (method, body, content_type) = match op {
            Op::Get => (Method::GET, Bytes::new(), None),
            Op::Patch(body) => (Method::PATCH, body.into(), Some("application/merge-patch+json")),
            Op::Put(body) => (Method::PUT, body.into(), Some("application/json")),
            Op::Post(body) => (Method::POST, body.into(), Some("application/json")),
        };
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, authority)
            .body(Full::new(body))?;
        if let Some(content_type) = content_type {
            request
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        }
        request.headers_mut().extend(headers);
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        let head = response.headers();
        let version = head.get(ETAG).and_then(|v| parse_etag(v.as_bytes()));
        let hit = match head.get("x-cache-status") {
            Some(v) => matches!(v.as_bytes(), b"HIT" | b"STALE" | b"UPDATING" | b"REVALIDATED"),
            // `<node>; hit…`: the node's name, then the status.
            None => head.get("cache-status").is_some_and(|v| {
                let v = v.as_bytes();
                let params = v.iter().position(|&b| b == b';').map_or(v, |i| &v[i..]);
                params.starts_with(b"; hit") && !params.windows(STRICT.len()).any(|w| w == STRICT)
            }),
        };
        let token = head.get("x-session-token").cloned();
        // Read the body to its end: the connection is then ready for the next request.
        response.into_body().collect().await?;
        Ok(Answer {
            status,
            version,
            hit,
            token,
        })
    }
}

/// `"42"` or `W/"42"` → 42.
fn parse_etag(raw: &[u8]) -> Option<u64> {
    let raw = raw.strip_prefix(b"W/").unwrap_or(raw);
    let inner = raw.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    std::str::from_utf8(inner).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parse_etag;

    #[test]
    fn etags_give_the_version() {
        assert_eq!(parse_etag(b"\"42\""), Some(42));
        assert_eq!(parse_etag(b"W/\"7\""), Some(7));
        assert_eq!(parse_etag(b"42"), None);
        assert_eq!(parse_etag(b"\"x\""), None);
    }
}
