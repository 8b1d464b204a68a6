//! Signed session tokens: a session's watermarks, bound to its session id, carried by
//! the client in `X-Session-Token` from node to node.
//!
//! ```text
//! v1.<key id>.<payload, base64url>.<tag, base64url>
//! payload = session binding (8 bytes: SHA-256 of the session id, truncated)
//!           write floor, read floor                       (varints)
//!           count, then per write mark: item (u64 LE), version, position (varints)
//!           count, then per read mark:  item (u64 LE), version, position (varints)
//! tag     = HMAC-SHA256(secret of key id, "v1.<key id>." ‖ payload), first 16 bytes
//! ```
//!
//! The tag covers the key id and the binding, so a token cannot be moved to another
//! session or re-labelled with another key. A token that would pass [`MAX_TOKEN_LEN`]
//! is compacted first (see [`Watermarks::compact`]): it asks more of a source, never
//! less.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::watermarks::{Mark, Watermarks};
use crate::{Position, Version};

/// The longest token this node issues or accepts, in bytes of header value.
pub const MAX_TOKEN_LEN: usize = 1024;
/// Most marks of each kind a token may declare.
const MAX_MARKS: u64 = 64;
const TAG_LEN: usize = 16;
const FORMAT: &str = "v1";

type HmacSha256 = Hmac<Sha256>;

/// Why a token was refused. Each is the client's fault (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token of this format at all (bad shape, base64, lengths).
    #[error("the session token is malformed")]
    Malformed,
    /// Signed with a key id this node does not know (rotated out, or another
    /// deployment's).
    #[error("the session token is signed with an unknown key")]
    UnknownKey,
    /// The tag does not match: the token was altered.
    #[error("the session token's signature does not match")]
    Tampered,
    /// A genuine token, but of another session id.
    #[error("the session token belongs to another session")]
    Foreign,
}

/// A signing key: its id and secret.
struct Key {
    id: String,
    mac: HmacSha256,
}

/// The keys tokens are signed and verified with. Cheap to share (`Arc`).
pub struct TokenKeys {
    keys: Vec<Key>,
    active: usize,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("TokenKeys")
            .field("ids", &ids)
            .field("active", &self.keys[self.active].id)
            .finish()
    }
}

impl TokenKeys {
    /// Keys from `(id, secret)` pairs; `active` names the one new tokens are signed
    /// with. `None` if `active` is not among them.
    pub fn new<'a>(keys: impl IntoIterator<Item = (&'a str, &'a [u8])>, active: &str) -> Option<Self> {
        let keys: Vec<Key> = keys
            .into_iter()
            .map(|(id, secret)| Key {
                id: id.to_owned(),
                mac: HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length"),
            })
            .collect();
        let active = keys.iter().position(|k| k.id == active)?;
        Some(Self { keys, active })
    }

    /// Signs `watermarks` for `session_id`, compacting them first if the token would
    /// pass [`MAX_TOKEN_LEN`].
    pub fn sign(&self, session_id: &str, watermarks: &Watermarks) -> String {
        let key = &self.keys[self.active];
        let mut marks = watermarks.clone();
        loop {
            let payload = encode(session_id, &marks);
            let token = self.assemble(key, &payload);
            let items = marks.writes().len() + marks.reads().len();
            if token.len() <= MAX_TOKEN_LEN || items == 0 {
                return token;
            }
            marks.compact(items - 1);
        }
    }

    fn assemble(&self, key: &Key, payload: &[u8]) -> String {
        let mut mac = key.mac.clone();
        mac.update(FORMAT.as_bytes());
        mac.update(b".");
        mac.update(key.id.as_bytes());
        mac.update(b".");
        mac.update(payload);
        let tag = mac.finalize().into_bytes();
        let mut token = String::with_capacity(8 + key.id.len() + payload.len() * 4 / 3 + 24);
        token.push_str(FORMAT);
        token.push('.');
        token.push_str(&key.id);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&tag[..TAG_LEN], &mut token);
        token
    }

    /// Verifies `token` for `session_id` and returns the watermarks it carries.
    pub fn verify(&self, session_id: &str, token: &str) -> Result<Watermarks, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(format), Some(kid), Some(payload), Some(tag), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(TokenError::Malformed);
        };
        if format != FORMAT {
            return Err(TokenError::Malformed);
        }
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| TokenError::Malformed)?;
        if tag.len() != TAG_LEN {
            return Err(TokenError::Malformed);
        }
        let key = self
            .keys
            .iter()
            .find(|k| k.id == kid)
            .ok_or(TokenError::UnknownKey)?;
        let mut mac = key.mac.clone();
        mac.update(FORMAT.as_bytes());
        mac.update(b".");
        mac.update(kid.as_bytes());
        mac.update(b".");
        mac.update(&payload);
        mac.verify_truncated_left(&tag)
            .map_err(|_| TokenError::Tampered)?;
        let (binding, watermarks) = decode(&payload).ok_or(TokenError::Malformed)?;
        if binding != session_binding(session_id) {
            return Err(TokenError::Foreign);
        }
        Ok(watermarks)
    }
}

fn session_binding(session_id: &str) -> [u8; 8] {
    let digest = Sha256::digest(session_id.as_bytes());
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

fn encode(session_id: &str, w: &Watermarks) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + 24 * (w.writes().len() + w.reads().len()));
    out.extend_from_slice(&session_binding(session_id));
    put_varint(&mut out, w.write_floor().0);
    put_varint(&mut out, w.read_floor().0);
    for marks in [w.writes(), w.reads()] {
        put_varint(&mut out, marks.len() as u64);
        for mark in marks {
            out.extend_from_slice(&mark.item.to_le_bytes());
            put_varint(&mut out, mark.version.0);
            put_varint(&mut out, mark.position.0);
        }
    }
    out
}

fn decode(mut input: &[u8]) -> Option<([u8; 8], Watermarks)> {
    let binding: [u8; 8] = input.get(..8)?.try_into().ok()?;
    input = &input[8..];
    let write_floor = Position(get_varint(&mut input)?);
    let read_floor = Position(get_varint(&mut input)?);
    let mut lists = [Vec::new(), Vec::new()];
    for list in &mut lists {
        let count = get_varint(&mut input)?;
        if count > MAX_MARKS {
            return None;
        }
        for _ in 0..count {
            let item = u64::from_le_bytes(input.get(..8)?.try_into().ok()?);
            input = &input[8..];
            let version = Version(get_varint(&mut input)?);
            let position = Position(get_varint(&mut input)?);
            list.push(Mark {
                item,
                version,
                position,
            });
        }
    }
    if !input.is_empty() {
        return None;
    }
    let [writes, reads] = lists;
    Some((
        binding,
        Watermarks::from_parts(writes, reads, write_floor, read_floor),
    ))
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn get_varint(input: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        value |= u64::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TokenKeys {
        TokenKeys::new(
            [
                ("k1", b"0123456789abcdef0123456789abcdef".as_slice()),
                ("k2", b"fedcba9876543210fedcba9876543210"),
            ],
            "k1",
        )
        .unwrap()
    }

    fn marks(n: u64) -> Watermarks {
        let mut w = Watermarks::default();
        for i in 0..n {
            w.record_write(i, Version(i + 1), Position(1_000_000_000 + i), 64);
            w.record_read(
                u64::MAX - i,
                Version(u64::MAX / 2),
                Position(2_000_000_000 + i),
                64,
            );
        }
        w
    }

    #[test]
    fn round_trip() {
        let w = marks(3);
        let token = keys().sign("s1", &w);
        assert_eq!(keys().verify("s1", &token).unwrap(), w);
    }

    #[test]
    fn tampering_another_session_and_unknown_keys_are_told_apart() {
        let keys = keys();
        let token = keys.sign("s1", &marks(2));
        assert_eq!(keys.verify("s2", &token), Err(TokenError::Foreign));

        let mut bytes = token.clone().into_bytes();
        let payload_at = "v1.k1.".len() + 12;
        bytes[payload_at] = if bytes[payload_at] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(keys.verify("s1", &tampered), Err(TokenError::Tampered));

        let relabelled = token.replacen("v1.k1.", "v1.k2.", 1);
        assert_eq!(keys.verify("s1", &relabelled), Err(TokenError::Tampered));
        let foreign_key = token.replacen("v1.k1.", "v1.k9.", 1);
        assert_eq!(keys.verify("s1", &foreign_key), Err(TokenError::UnknownKey));

        for junk in [
            "",
            "v1",
            "v1.k1.x.y",
            "v2.k1.AAAA.AAAAAAAAAAAAAAAAAAAAAA",
            "a.b.c.d.e",
            "v1.k1.!!.??",
        ] {
            assert_eq!(keys.verify("s1", junk), Err(TokenError::Malformed), "{junk:?}");
        }
    }

    #[test]
    fn rotation_keeps_old_tokens_valid() {
        let old = keys().sign("s1", &marks(1));
        let rotated = TokenKeys::new(
            [
                ("k1", b"0123456789abcdef0123456789abcdef".as_slice()),
                ("k2", b"fedcba9876543210fedcba9876543210"),
            ],
            "k2",
        )
        .unwrap();
        assert!(rotated.verify("s1", &old).is_ok());
        assert!(rotated.sign("s1", &marks(1)).starts_with("v1.k2."));
    }

    #[test]
    fn a_full_token_stays_under_the_limit_and_only_gets_more_conservative() {
        let w = marks(40);
        let token = keys().sign("s1", &w);
        assert!(token.len() <= MAX_TOKEN_LEN, "{} bytes", token.len());
        let back = keys().verify("s1", &token).unwrap();
        for i in 0..40u64 {
            let before = w.need(i, true, true);
            let after = back.need(i, true, true);
            // The compacted need admits no doc the full need would refuse.
            assert!(after.version >= before.version || after.position >= Position(1_000_000_000 + i));
        }
    }
}
