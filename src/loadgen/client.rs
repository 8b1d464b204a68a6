//! Sending one request of a session and recording what came back.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, CONTENT_TYPE, ETAG};
use serde_json::Value;

use super::history::{token_hash, OpKind, OpRecord, CONNECT_ERROR, PROBLEM_PREFIX};
use super::workload::Request;

const SESSION_ID: &str = "x-session-id";
const SESSION_TOKEN: &str = "x-session-token";
const NODE: &str = "x-edgecache-node";
const CACHE_STATUS: &str = "cache-status";
const IDEMPOTENCY_KEY: &str = "idempotency-key";
const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// An HTTP client that turns a [`Request`] into an [`OpRecord`].
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// Times are recorded as nanoseconds since this instant.
    epoch: Instant,
}

/// A session as the client sees it: its id, the token it holds and the index of its
/// next request. Its operations may run in parallel (`loadgen --parallel`), so the
/// token and the index sit behind a lock, held only between two awaits.
///
/// **Tokens of parallel requests.** Each request carries the token the session holds
/// when it is sent, and every answer's token replaces the held one as it arrives: the
/// answer that arrived last wins. That is what a browser tab does — a cookie or a
/// variable set by each `fetch`'s handler, overwritten in arrival order — and the
/// client cannot do better without reading the token: it is opaque and signed, and a
/// request carries one. The node makes it sound: a live session takes in every token
/// it is sent and answers with all of its watermarks, a new session's tokenless first
/// requests share it, and a copy of the session that leaves the node's table leaves
/// its marks for the next copy (docs/decisions/0008). A token that arrived last but
/// was signed before another answer, carried to another node, may still lack what
/// that answer added.
pub struct SessionState {
    pub id: String,
    chain: Mutex<Chain>,
}

struct Chain {
    /// The token of the answer that arrived last.
    token: Option<String>,
    /// The index of the session's next request.
    next_index: u64,
}

impl SessionState {
    pub fn new(id: String) -> Self {
        SessionState {
            id,
            chain: Mutex::new(Chain {
                token: None,
                next_index: 0,
            }),
        }
    }

    fn chain(&self) -> std::sync::MutexGuard<'_, Chain> {
        // The lock is never held across a panic that matters: take the data anyway.
        self.chain.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The index of a request about to be sent, and the token it carries.
    fn begin(&self) -> (u64, Option<String>) {
        let mut chain = self.chain();
        chain.next_index += 1;
        (chain.next_index - 1, chain.token.clone())
    }

    /// An answer's token arrived: the session holds it from now on.
    fn answered(&self, token: &str) {
        self.chain().token = Some(token.to_owned());
    }
}

impl Client {
    /// A client whose every request (connect, send, read the whole answer) gives up
    /// after `timeout`.
    pub fn new(timeout: Duration, epoch: Instant) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()?;
        Ok(Client { http, epoch })
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Sends `request` to `target` (a base URL such as `http://127.0.0.1:8080`) in
    /// `session`, carrying the token the session holds now and handing it the one the
    /// answer carries, and `idempotency_key` as the `Idempotency-Key` header when
    /// given. Never fails: a transport error is recorded in the operation's `error`.
    ///
    /// The token is taken and `start_ns` read with no await between them, and the
    /// answer's token handed over before `end_ns` is read: so when this request ended
    /// before another one of the session started, that one carried this answer's
    /// token (or one that arrived after it).
    pub async fn send(
        &self,
        target: &str,
        session: &SessionState,
        request: Request,
        idempotency_key: Option<&str>,
    ) -> OpRecord {
        let base = target.trim_end_matches('/');
        let mut url = format!("{base}/v1/{}/{}", request.collection, request.key);
        let http = &self.http;
        let builder = match request.op {
            OpKind::Read => http.get(&url),
            OpKind::Put => http.put(&url).json(&request.body),
            OpKind::Patch => http
                .patch(&url)
                .header(CONTENT_TYPE, "application/merge-patch+json")
                .body(serde_json::to_vec(&request.body).unwrap_or_default()),
            OpKind::Incr => {
                url.push_str("/increment");
                http.post(&url).json(&request.body)
            }
        };
        let mut builder = builder.header(SESSION_ID, &session.id);
        if let Some(key) = idempotency_key {
            builder = builder.header(IDEMPOTENCY_KEY, key);
        }
        let (index, token) = session.begin();
        if let Some(token) = &token {
            builder = builder.header(SESSION_TOKEN, token);
        }

        let mut record = OpRecord {
            session: session.id.clone(),
            index,
            target: target.to_owned(),
            served_by: target.to_owned(),
            op: request.op,
            collection: request.collection,
            key: request.key,
            body: request.body,
            token_in: token.as_deref().map(token_hash),
            idempotency_key: idempotency_key.map(str::to_owned),
            ..OpRecord::default()
        };

        record.start_ns = self.now_ns();
        let result = builder.send().await;
        let body = match result {
            Ok(response) => {
                record.status = Some(response.status().as_u16());
                if let Some(fresh) = read_headers(response.headers(), &mut record) {
                    session.answered(&fresh);
                }
                response.bytes().await
            }
            Err(e) => Err(e),
        };
        record.end_ns = self.now_ns();
        match body {
            Ok(bytes) => read_body(&bytes, &mut record),
            // A connection that never opened carried no request: the error says so,
            // and the operation is known not to have happened.
            Err(e) if e.is_connect() => record.error = Some(format!("{CONNECT_ERROR}{}", error_chain(&e))),
            Err(e) => record.error = Some(error_chain(&e)),
        }
        record
    }

    /// A GET of `collection/key` that names no session, or names `session_id` without
    /// a token (a client's first request): the status, or the transport error.
    pub async fn get_anonymous(
        &self,
        target: &str,
        collection: &str,
        key: &str,
        session_id: Option<&str>,
    ) -> Result<u16, reqwest::Error> {
        let url = format!("{}/v1/{collection}/{key}", target.trim_end_matches('/'));
        let mut builder = self.http.get(&url);
        if let Some(id) = session_id {
            builder = builder.header(SESSION_ID, id);
        }
        let response = builder.send().await?;
        let status = response.status().as_u16();
        response.bytes().await?;
        Ok(status)
    }
}

/// The version, the serving node and whether it is a replay, of a response; returns
/// its new token.
fn read_headers(headers: &HeaderMap, record: &mut OpRecord) -> Option<String> {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    record.version = text(ETAG.as_str()).and_then(parse_etag);
    record.replayed = text(IDEMPOTENT_REPLAYED).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    // A read names its node first in Cache-Status (RFC 9211), anything else in
    // X-Edgecache-Node.
    let cache = text(CACHE_STATUS)
        .and_then(|v| v.split_once("; "))
        .map(|(name, _)| name);
    if let Some(node) = cache.or_else(|| text(NODE)) {
        record.served_by = node.trim_matches('"').to_owned();
    }
    // A token is kept even when the body is then lost: the node issued it after the
    // operation, so it reflects whatever the operation did.
    let fresh = text(SESSION_TOKEN)?;
    record.token_out = Some(token_hash(fresh));
    Some(fresh.to_owned())
}

/// The document of a success (without its `id`), or the problem slug of an error.
fn read_body(bytes: &[u8], record: &mut OpRecord) {
    let Ok(mut doc) = serde_json::from_slice::<Value>(bytes) else {
        return; // empty, or not JSON (a gateway's HTML error page)
    };
    let success = record.status.is_some_and(|s| (200..300).contains(&s));
    if success {
        if let Some(fields) = doc.as_object_mut() {
            fields.remove("id");
        }
        record.value = Some(doc);
    } else if let Some(kind) = doc.get("type").and_then(Value::as_str) {
        record.problem = Some(kind.strip_prefix(PROBLEM_PREFIX).unwrap_or(kind).to_owned());
    }
}

/// `"12"` (or `W/"12"`) → 12.
fn parse_etag(value: &str) -> Option<u64> {
    let value = value.trim();
    let value = value.strip_prefix("W/").unwrap_or(value);
    value.strip_prefix('"')?.strip_suffix('"')?.parse().ok()
}

/// An error with its causes: reqwest's own message hides the useful part
/// ("connection refused", "operation timed out").
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags() {
        assert_eq!(parse_etag("\"12\""), Some(12));
        assert_eq!(parse_etag("W/\"3\""), Some(3));
        assert_eq!(parse_etag("12"), None);
    }

    #[test]
    fn bodies() {
        let mut ok = OpRecord {
            status: Some(200),
            ..OpRecord::default()
        };
        read_body(br#"{"id":"k","stock":3}"#, &mut ok);
        assert_eq!(ok.value, Some(serde_json::json!({"stock": 3})));
        let mut conflict = OpRecord {
            status: Some(409),
            ..OpRecord::default()
        };
        read_body(
            br#"{"type":"urn:problem:edgecache:bound-crossed","status":409}"#,
            &mut conflict,
        );
        assert_eq!(
            (conflict.problem.as_deref(), conflict.value),
            (Some("bound-crossed"), None)
        );
        let mut gateway = OpRecord {
            status: Some(502),
            ..OpRecord::default()
        };
        read_body(b"<html>bad gateway</html>", &mut gateway);
        assert_eq!((gateway.problem, gateway.value), (None, None));
    }
}
