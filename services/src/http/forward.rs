//! Session affinity: a request of a session whose owner is another node is forwarded
//! there (one hop at most: a forwarded request carries `X-Edgecache-Forwarded` and is
//! never forwarded again) and its answer relayed. When the owner cannot be reached the
//! request is served here, from the session's token — except a write whose request
//! may have reached the owner and carries no `Idempotency-Key`: its outcome is
//! unknown, so it answers 503 `write-outcome-unknown` rather than risk applying it
//! twice. A keyed write is safe to serve here: if the owner applied it, the key's
//! record answers (after waiting for it if it is still running).
//!
//! `X-Edgecache-Forwarded` is believed only with a valid `X-Edgecache-Proof` by the
//! peer it names ([`crate::cluster`]); without one the request is refused, 400
//! `forwarded-without-proof`, before anything runs. Refused rather than stripped and
//! served as an ordinary request: a client has no business sending the header, a
//! refusal shows a misconfigured group (secrets that differ, clocks far apart) at
//! once instead of hiding it, and two nodes that each stripped the other's proof
//! could bounce a request between them until its timeout. A forwarding node that
//! gets this refusal back serves the request itself (the owner ran nothing).

use std::sync::atomic::Ordering;

use actix_web::body::BoxBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method, StatusCode};
use actix_web::{Error, HttpMessage, HttpResponse, ResponseError};

use super::error::FORWARDED_WITHOUT_PROOF;
use super::request::{read_bounded, BodyError, SESSION_ID, USER_ID};
use super::ApiError;
use crate::cluster::{Cluster, Peer, ProofError, PROOF_HEADER};
use crate::Node;

pub const FORWARDED: header::HeaderName = header::HeaderName::from_static("x-edgecache-forwarded");
const PROOF: header::HeaderName = header::HeaderName::from_static(PROOF_HEADER);

/// The request's target as it was sent: path and query.
pub fn target(request: &ServiceRequest) -> &str {
    request
        .uri()
        .path_and_query()
        .map_or(request.path(), |p| p.as_str())
}

/// The answer to a request that says it was forwarded (`X-Edgecache-Forwarded`)
/// without the proof of the peer it names: 400 `forwarded-without-proof`. `None` for
/// a request that does not say so, or proves it.
pub fn refuse_unproven(request: &ServiceRequest, cluster: &Cluster) -> Option<HttpResponse> {
    let claimed = request.headers().get(&FORWARDED)?;
    let proof = request.headers().get(&PROOF).and_then(|v| v.to_str().ok());
    let refusal = match cluster.verify(proof, request.method().as_str(), target(request)) {
        Ok(peer) if claimed.as_bytes() == peer.id.as_bytes() => return None,
        Ok(peer) => ProofError::UnknownPeer(format!(
            "{} (the proof is {}'s)",
            claimed.to_str().unwrap_or("?"),
            peer.id
        )),
        Err(e) => e,
    };
    tracing::warn!(path = request.path(), cause = %refusal, "request claiming to be forwarded refused");
    Some(ApiError::ForwardedWithoutProof(refusal).error_response())
}

/// Hop-by-hop headers, not relayed.
fn hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

/// The peer that owns the request's session when the request is to be forwarded there:
/// a `/v1/` request of a session whose session-affinity arm is on, not forwarded
/// already, whose owner is another node in rotation. Solo nodes answer at once.
pub fn owner<'c>(request: &ServiceRequest, node: &Node, cluster: &'c Cluster) -> Option<&'c Peer> {
    if cluster.is_solo() || !request.path().starts_with("/v1/") || request.headers().contains_key(&FORWARDED)
    {
        return None;
    }
    let headers = request.headers();
    let header = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let session = header(SESSION_ID).filter(|s| crate::node::valid_session_id(s))?;
    let user = header(USER_ID).unwrap_or(session);
    if node.affinity_on(session, user) {
        cluster.owner(session)
    } else {
        None
    }
}

/// Forwards `request` to `owner` and relays its answer; when the owner cannot be
/// reached, serves it with `local` (except a write that may have reached the owner).
pub async fn forward<S>(
    mut request: ServiceRequest,
    owner: &Peer,
    node: &Node,
    cluster: &Cluster,
    local: &S,
) -> Result<ServiceResponse<BoxBody>, Error>
where
    S: Service<ServiceRequest, Response = ServiceResponse<BoxBody>, Error = Error>,
{
    // Read the body (bounded), to send it on — and to serve it here if we must.
    let limit = node.limits().max_body_bytes;
    let body = match read_bounded(&mut request.take_payload(), limit).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            let response = ApiError::BodyTooLarge { limit }.error_response();
            return Ok(request.into_response(response));
        }
        Err(BodyError::Read(e)) => return Err(e.into()),
    };

    let method =
        reqwest::Method::from_bytes(request.method().as_str().as_bytes()).expect("a method is a method");
    // Parsed first, so the proof covers the target exactly as it is sent.
    let url = match reqwest::Url::parse(&format!("{}{}", owner.base, target(&request))) {
        Ok(url) => url,
        Err(e) => {
            tracing::warn!(peer = %owner.id, cause = %e, "request target cannot be forwarded; served here");
            request.set_payload(actix_web::dev::Payload::from(body));
            return local.call(request).await;
        }
    };
    let sent_target = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    };
    let proof = cluster.sign(method.as_str(), &sent_target);
    let mut forward = cluster
        .client()
        .request(method, url)
        .timeout(cluster.forward_timeout());
    for (name, value) in request.headers() {
        if !hop_by_hop(name.as_str()) && *name != FORWARDED && *name != PROOF {
            forward = forward.header(name.as_str(), value.as_bytes());
        }
    }
    if let Some(proof) = proof {
        forward = forward.header(PROOF_HEADER, proof);
    }
    forward = forward
        .header(FORWARDED.as_str(), cluster.node_id())
        .body(body.clone());
    let epoch = owner.epoch();
    let sent = async {
        let response = forward.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await?;
        Ok::<_, reqwest::Error>((status, headers, bytes))
    }
    .await;
    match sent {
        Ok((400, _, bytes)) if refused_proof(&bytes) => {
            // The owner ran nothing: serving it here is safe, also for a write.
            cluster.failed(owner, "it refused this node's proof on a forwarded request");
            cluster.forward_failures.fetch_add(1, Ordering::Relaxed);
            request.set_payload(actix_web::dev::Payload::from(body));
            local.call(request).await
        }
        Ok((status, headers, bytes)) => {
            cluster.succeeded(owner, epoch);
            cluster.forwarded.fetch_add(1, Ordering::Relaxed);
            let mut relay =
                HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY));
            for (name, value) in &headers {
                if !hop_by_hop(name.as_str()) {
                    relay.append_header((name.as_str(), value.as_bytes()));
                }
            }
            Ok(request.into_response(relay.body(bytes)))
        }
        Err(e) => {
            cluster.failed(owner, &e);
            cluster.forward_failures.fetch_add(1, Ordering::Relaxed);
            let reached = !e.is_connect();
            let read = matches!(*request.method(), Method::GET | Method::HEAD)
                || request.path().ends_with("/batch-get");
            let keyed = request
                .headers()
                .contains_key(super::idempotency::IDEMPOTENCY_KEY);
            tracing::warn!(peer = %owner.id, cause = %e, reached, "forward failed");
            if reached && !read && !keyed {
                return Ok(request.into_response(ApiError::OutcomeUnknown.error_response()));
            }
            request.set_payload(actix_web::dev::Payload::from(body));
            let response = local.call(request).await?;
            if reached && !read && !response.status().is_success() {
                // The owner's attempt may still commit: "not applied" here says
                // nothing about it. Only a success (or a replay of the owner's
                // record) settles the write.
                let (request, _) = response.into_parts();
                return Ok(ServiceResponse::new(
                    request,
                    ApiError::OutcomeUnknown.error_response(),
                ));
            }
            Ok(response)
        }
    }
}

/// Whether a 400 answer's body is the refusal of this node's proof.
fn refused_proof(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Problem<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_slice::<Problem>(body).is_ok_and(|p| {
        p.kind
            .as_deref()
            .and_then(|t| t.strip_prefix(super::PROBLEM_TYPE_PREFIX))
            == Some(FORWARDED_WITHOUT_PROOF)
    })
}
