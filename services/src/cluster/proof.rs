//! Proofs of node-to-node calls.
//!
//! Every call a node makes to a peer — a forwarded request, a health check, a leave
//! announcement — carries `X-Edgecache-Proof: <node>:<secret id>:<unix ms>:<mac>`,
//! where `mac` is HMAC-SHA256, keyed with the cluster secret `<secret id>`, over the
//! node id, the secret id, the timestamp, the method and the request target (path
//! and query, as sent), base64url without padding. The receiver accepts it when the
//! secret is one it lists, the MAC matches (compared in constant time) and the
//! timestamp is within [`PROOF_WINDOW`] of its own clock.
//!
//! Why a MAC rather than the secret itself in a header: the secret never travels, so
//! a request seen on the wire, in a proxy's log or a packet capture does not give
//! it away; a captured proof is good only for the same method and target, for
//! [`PROOF_WINDOW`]. Within that window it can be replayed (no nonce is kept): a
//! replayed forward is served by the node it reaches, as any request would be, and
//! a replayed leave announcement takes the announcing node out of rotation until its
//! next health check.
//!
//! A call with a body of its own making — a purge, a leave announcement (`POST
//! /cluster/…`) — signs the body too: the MAC (format v2) then also covers the
//! SHA-256 of the body, so a captured proof cannot carry another purge. A forwarded
//! request's body is not covered: it gains nothing by being forwarded (it is served
//! where it arrives, with the client's own token).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use edgecache_config::ClusterSettings;
use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The header that carries a proof.
pub const PROOF_HEADER: &str = "x-edgecache-proof";

/// How far a proof's timestamp may be from the receiver's clock, either way: the
/// clock skew between nodes plus a request's time in flight.
pub const PROOF_WINDOW: Duration = Duration::from_secs(30);

/// What the MAC is computed over, before the fields; names the format's version:
/// v1 without the body, v2 with its digest.
const DOMAIN: &[u8] = b"edgecache-proof-v1";
const DOMAIN_WITH_BODY: &[u8] = b"edgecache-proof-v2";

/// Why a proof was not accepted. The messages name no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("the request carries no X-Edgecache-Proof header")]
    Missing,
    #[error("the X-Edgecache-Proof header is not `node:secret-id:unix-ms:mac`")]
    Malformed,
    #[error("this node has no cluster secret (cluster.secrets)")]
    NoSecret,
    #[error("the proof names cluster secret `{0}`, which this node does not accept")]
    UnknownSecret(String),
    #[error("the proof is {skew_ms} ms away from this node's clock (at most {} s either way)", PROOF_WINDOW.as_secs())]
    OutsideWindow { skew_ms: u64 },
    #[error("the proof does not match (another secret, method, path or body)")]
    Mismatch,
    #[error("`{0}` is not a peer of this node (cluster.peers)")]
    UnknownPeer(String),
}

/// The cluster secrets of this node: every accepted one, and the one it signs with.
pub struct Keys {
    /// Secret id → the MAC keyed with it (cloned per use: keying is done once).
    accepted: Vec<(String, HmacSha256)>,
    /// Index in `accepted` of the secret this node signs with.
    active: Option<usize>,
}

/// A proof that checked out: the node that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proven<'a> {
    pub node: &'a str,
}

impl Keys {
    pub fn new(settings: &ClusterSettings) -> Self {
        let accepted: Vec<(String, HmacSha256)> = settings
            .secrets
            .iter()
            .map(|s| {
                let mac = HmacSha256::new_from_slice(s.secret.expose_secret().as_bytes())
                    .expect("HMAC takes keys of any length");
                (s.id.clone(), mac)
            })
            .collect();
        let active = settings
            .active()
            .and_then(|a| accepted.iter().position(|(id, _)| *id == a.id));
        Self { accepted, active }
    }

    /// The proof of a call by `node` of `method` on `target` (path and query, as
    /// sent) at `now`, covering `body` when given; `None` when this node has no secret
    /// to sign with.
    pub fn sign(
        &self,
        node: &str,
        method: &str,
        target: &str,
        body: Option<&[u8]>,
        now: SystemTime,
    ) -> Option<String> {
        let (id, mac) = &self.accepted[self.active?];
        let millis = unix_millis(now);
        let tag = tag(mac.clone(), node, id, millis, method, target, body)
            .finalize()
            .into_bytes();
        Some(format!("{node}:{id}:{millis}:{}", URL_SAFE_NO_PAD.encode(tag)))
    }

    /// Checks `proof` (the header's value) for a call of `method` on `target` received
    /// at `now` — with `body`, which it must cover, when given — and names the node
    /// that made it.
    pub fn verify<'p>(
        &self,
        proof: Option<&'p str>,
        method: &str,
        target: &str,
        body: Option<&[u8]>,
        now: SystemTime,
    ) -> Result<Proven<'p>, ProofError> {
        let proof = proof.ok_or(ProofError::Missing)?;
        if self.accepted.is_empty() {
            return Err(ProofError::NoSecret);
        }
        let mut parts = proof.split(':');
        let (Some(node), Some(id), Some(millis), Some(sent), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(ProofError::Malformed);
        };
        let millis: u64 = millis.parse().map_err(|_| ProofError::Malformed)?;
        let sent = URL_SAFE_NO_PAD.decode(sent).map_err(|_| ProofError::Malformed)?;
        if node.is_empty() {
            return Err(ProofError::Malformed);
        }
        let (_, mac) = self
            .accepted
            .iter()
            .find(|(known, _)| known == id)
            .ok_or_else(|| ProofError::UnknownSecret(id.to_owned()))?;
        let skew_ms = unix_millis(now).abs_diff(millis);
        if skew_ms > PROOF_WINDOW.as_millis() as u64 {
            return Err(ProofError::OutsideWindow { skew_ms });
        }
        tag(mac.clone(), node, id, millis, method, target, body)
            .verify_slice(&sent)
            .map_err(|_| ProofError::Mismatch)?;
        Ok(Proven { node })
    }
}

/// The MAC over the proof's fields, one per line (none can hold a newline: node and
/// secret ids are names, the method a token, the target a request target), and the
/// body's SHA-256 after the target when there is a body to cover (another domain, so
/// a proof of one kind never passes for the other).
fn tag(
    mut mac: HmacSha256,
    node: &str,
    id: &str,
    millis: u64,
    method: &str,
    target: &str,
    body: Option<&[u8]>,
) -> HmacSha256 {
    let domain = if body.is_some() { DOMAIN_WITH_BODY } else { DOMAIN };
    for field in [
        domain,
        node.as_bytes(),
        id.as_bytes(),
        millis.to_string().as_bytes(),
        method.as_bytes(),
    ] {
        mac.update(field);
        mac.update(b"\n");
    }
    mac.update(target.as_bytes());
    if let Some(body) = body {
        mac.update(b"\n");
        mac.update(&Sha256::digest(body));
    }
    mac
}

fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secrets: &[(&str, &str)], active: Option<&str>) -> Keys {
        let settings: ClusterSettings = serde_json::from_value(serde_json::json!({
            "secrets": secrets.iter().map(|(id, s)| serde_json::json!({"id": id, "secret": s})).collect::<Vec<_>>(),
            "active_secret": active,
        }))
        .unwrap();
        Keys::new(&settings)
    }

    const A: &str = "the-first-cluster-secret-0123456789abcdef";
    const B: &str = "the-second-cluster-secret-0123456789abcdef";

    #[test]
    fn a_proof_of_a_body_holds_for_that_body_only_and_never_passes_for_one_without() {
        let k = keys(&[("c1", A)], None);
        let now = SystemTime::now();
        let purge = br#"{"id":"p1","collection":"products"}"#;
        let proof = k.sign("n1", "POST", "/cluster/purge", Some(purge), now).unwrap();
        assert_eq!(
            k.verify(Some(&proof), "POST", "/cluster/purge", Some(purge), now),
            Ok(Proven { node: "n1" })
        );
        let other = br#"{"id":"p2","collection":"carts"}"#;
        assert_eq!(
            k.verify(Some(&proof), "POST", "/cluster/purge", Some(other), now),
            Err(ProofError::Mismatch),
            "another body"
        );
        assert_eq!(
            k.verify(Some(&proof), "POST", "/cluster/purge", None, now),
            Err(ProofError::Mismatch),
            "a body proof is not a bodiless one"
        );
        let bodiless = k.sign("n1", "POST", "/cluster/purge", None, now).unwrap();
        assert_eq!(
            k.verify(Some(&bodiless), "POST", "/cluster/purge", Some(purge), now),
            Err(ProofError::Mismatch),
            "nor the other way round"
        );
        let empty = k.sign("n1", "POST", "/cluster/leave", Some(b""), now).unwrap();
        assert!(k
            .verify(Some(&empty), "POST", "/cluster/leave", Some(b""), now)
            .is_ok());
    }

    #[test]
    fn a_proof_holds_for_its_node_method_and_target_only() {
        let k = keys(&[("c1", A)], None);
        let now = SystemTime::now();
        let proof = k.sign("n1", "GET", "/v1/a/b?x=1", None, now).unwrap();
        assert!(proof.starts_with("n1:c1:"), "{proof}");
        assert_eq!(
            k.verify(Some(&proof), "GET", "/v1/a/b?x=1", None, now),
            Ok(Proven { node: "n1" })
        );
        assert_eq!(
            k.verify(Some(&proof), "PUT", "/v1/a/b?x=1", None, now),
            Err(ProofError::Mismatch)
        );
        assert_eq!(
            k.verify(Some(&proof), "GET", "/v1/a/b?x=2", None, now),
            Err(ProofError::Mismatch)
        );
        let other_node = proof.replacen("n1:", "n2:", 1);
        assert_eq!(
            k.verify(Some(&other_node), "GET", "/v1/a/b?x=1", None, now),
            Err(ProofError::Mismatch)
        );
        assert_eq!(k.verify(None, "GET", "/", None, now), Err(ProofError::Missing));
        for bad in [
            "",
            "n1",
            "n1:c1:12:!!",
            "n1:c1:x:AAAA",
            "n1:c1:1:AA:extra",
            ":c1:1:AAAA",
        ] {
            assert_eq!(
                k.verify(Some(bad), "GET", "/", None, now),
                Err(ProofError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_proof_is_good_within_the_window_only() {
        let k = keys(&[("c1", A)], None);
        let now = SystemTime::now();
        let proof = k.sign("n1", "POST", "/cluster/leave", None, now).unwrap();
        for offset in [Duration::ZERO, PROOF_WINDOW] {
            assert!(k
                .verify(Some(&proof), "POST", "/cluster/leave", None, now + offset)
                .is_ok());
            assert!(k
                .verify(Some(&proof), "POST", "/cluster/leave", None, now - offset)
                .is_ok());
        }
        let late = now + PROOF_WINDOW + Duration::from_millis(1);
        assert!(matches!(
            k.verify(Some(&proof), "POST", "/cluster/leave", None, late),
            Err(ProofError::OutsideWindow { .. })
        ));
    }

    #[test]
    fn secrets_rotate_every_listed_one_accepted_the_active_one_signs() {
        let old = keys(&[("c1", A)], None);
        let both_old_active = keys(&[("c1", A), ("c2", B)], Some("c1"));
        let both_new_active = keys(&[("c1", A), ("c2", B)], Some("c2"));
        let new = keys(&[("c2", B)], None);
        let now = SystemTime::now();
        let verify = |k: &Keys, proof: &str| {
            k.verify(Some(proof), "GET", "/cluster/health", None, now)
                .map(|p| p.node.to_owned())
        };

        let by_old = old.sign("n1", "GET", "/cluster/health", None, now).unwrap();
        let by_new = both_new_active
            .sign("n1", "GET", "/cluster/health", None, now)
            .unwrap();
        assert!(by_new.starts_with("n1:c2:"));
        assert!(verify(&both_old_active, &by_old).is_ok());
        assert!(verify(&both_old_active, &by_new).is_ok());
        assert!(
            verify(&old, &by_new).is_err(),
            "c2 is not known before it is added"
        );
        assert_eq!(verify(&new, &by_old), Err(ProofError::UnknownSecret("c1".into())));

        // The same id with another secret: the MAC does not match.
        let impostor = keys(&[("c1", B)], None)
            .sign("n1", "GET", "/cluster/health", None, now)
            .unwrap();
        assert_eq!(verify(&old, &impostor), Err(ProofError::Mismatch));
    }

    #[test]
    fn a_node_without_secrets_signs_nothing_and_accepts_nothing() {
        let none = keys(&[], None);
        let now = SystemTime::now();
        assert_eq!(none.sign("n1", "GET", "/", None, now), None);
        let proof = keys(&[("c1", A)], None)
            .sign("n1", "GET", "/", None, now)
            .unwrap();
        assert_eq!(
            none.verify(Some(&proof), "GET", "/", None, now),
            Err(ProofError::NoSecret)
        );
    }
}
