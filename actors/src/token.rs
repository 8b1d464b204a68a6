//! Sealed session tokens: a session's watermarks, bound to its session id, encrypted
//! and authenticated, carried by the client in `X-Session-Token` from node to node.
//!
//! ```text
//! v2.<key id>.<lineage ‖ sealed payload ‖ tag, base64url>
//! lineage  = 12 random bytes naming the session's line of tokens (see [`Lineage`]),
//!            the seal's nonce
//! sealed   = AES-256-GCM-SIV(seal key of key id, nonce = lineage,
//!                            associated data = "v2.<key id>.", payload), 16-byte tag
//! payload  = session binding (8 bytes: SHA-256 of the session id, truncated)
//!            write floor, read floor                       (varints)
//!            count, then per write mark: item (u64 LE), version, position (varints)
//!            count, then per read mark:  item (u64 LE), version, position (varints)
//!            zero bytes up to a multiple of 32
//! seal key = HMAC-SHA256(secret of key id, "edgecache token seal v2")
//! ```
//!
//! Without the key a token tells nothing of what the session did: not which items it
//! touched (their hashes are public and ids guessable, so in clear they would reverse),
//! nor their versions or positions; its length gives the number of marks to within
//! about two. The seal covers the key id and the binding, so a token cannot be moved
//! to another session or re-labelled with another key. AES-GCM-SIV resists nonce
//! reuse: the tokens of one lineage share a nonce, which reveals only that two of them
//! are equal (see docs/decisions/0004-private-tokens.md).
//!
//! Tokens of the first format, `v1.<key id>.<payload>.<tag>` (the same payload in
//! clear and unpadded, tagged with HMAC-SHA256 under the key's secret, first 16 bytes),
//! are still accepted so sessions carry on across an upgrade; they name no lineage, and
//! none is issued any more.
//!
//! A token that would pass [`MAX_TOKEN_LEN`] is compacted first (see
//! [`Watermarks::compact`]): it asks more of a source, never less.

use std::borrow::Cow;
use std::fmt;

use aes_gcm_siv::aead::{AeadInPlace, KeyInit};
use aes_gcm_siv::{Aes256GcmSiv, Nonce, Tag};
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
const BINDING_LEN: usize = 8;
const LINEAGE_LEN: usize = 12;
const SEAL_TAG_LEN: usize = 16;
/// Payloads are padded to a multiple of this, so a token's length does not give away
/// the exact number of its marks (one mark is 10 to 28 bytes).
const PAD: usize = 32;
const SEAL_KEY_LABEL: &[u8] = b"edgecache token seal v2";
const V1_TAG_LEN: usize = 16;

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
    /// The seal (or tag) does not match: the token was altered.
    #[error("the session token's signature does not match")]
    Tampered,
    /// A genuine token, but of another session id.
    #[error("the session token belongs to another session")]
    Foreign,
}

/// One line of tokens of a session: the random value every token issued from one
/// session state carries, and what a request proves it holds a token of *that* state
/// with.
///
/// A session id is a name, not a secret: anyone may send it. A request that names a
/// live session without a token of its lineage is not that session's holder, and is
/// served as a session of its own with a lineage of its own (`Node::open_session`);
/// its tokens never carry the live session's marks, and presenting them later does
/// not merge the two. Tokens cannot be forged, so a lineage cannot be claimed without
/// a token that carries it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lineage([u8; LINEAGE_LEN]);

impl Lineage {
    /// A new lineage, from the operating system's random source.
    pub fn random() -> Self {
        let mut bytes = [0u8; LINEAGE_LEN];
        getrandom::fill(&mut bytes).expect("the operating system's random source is available");
        Self(bytes)
    }
}

impl fmt::Debug for Lineage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lineage(")?;
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        write!(f, ")")
    }
}

/// What a verified token carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carried {
    /// The lineage of the session state it was issued from; `None` for a token of the
    /// first format, which had none.
    pub lineage: Option<Lineage>,
    pub watermarks: Watermarks,
}

/// A key: its id, the seal derived from its secret, and the first format's HMAC.
struct Key {
    id: String,
    /// `v2.<id>.`: the start of every token sealed with this key and the seal's
    /// associated data.
    prefix: String,
    seal: Aes256GcmSiv,
    v1_mac: HmacSha256,
}

/// The keys tokens are sealed and opened with. Cheap to share (`Arc`).
pub struct TokenKeys {
    keys: Vec<Key>,
    active: usize,
}

impl fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("TokenKeys")
            .field("ids", &ids)
            .field("active", &self.keys[self.active].id)
            .finish()
    }
}

impl TokenKeys {
    /// Keys from `(id, secret)` pairs; `active` names the one new tokens are sealed
    /// with. `None` if `active` is not among them.
    pub fn new<'a>(keys: impl IntoIterator<Item = (&'a str, &'a [u8])>, active: &str) -> Option<Self> {
        let keys: Vec<Key> = keys
            .into_iter()
            .map(|(id, secret)| {
                let v1_mac =
                    <HmacSha256 as Mac>::new_from_slice(secret).expect("HMAC takes keys of any length");
                let mut derive = v1_mac.clone();
                derive.update(SEAL_KEY_LABEL);
                let seal_key = derive.finalize().into_bytes();
                Key {
                    id: id.to_owned(),
                    prefix: format!("v2.{id}."),
                    seal: Aes256GcmSiv::new_from_slice(&seal_key).expect("a 256-bit key"),
                    v1_mac,
                }
            })
            .collect();
        let active = keys.iter().position(|k| k.id == active)?;
        Some(Self { keys, active })
    }

    /// Seals `watermarks` for `session_id` and its `lineage`, compacting them first
    /// if the token would pass [`MAX_TOKEN_LEN`] (or carry more marks than a token may
    /// declare).
    pub fn sign(&self, session_id: &str, lineage: &Lineage, watermarks: &Watermarks) -> String {
        let key = &self.keys[self.active];
        let mut marks = Cow::Borrowed(watermarks);
        loop {
            let token = seal(key, session_id, lineage, &marks);
            let items = marks.writes().len() + marks.reads().len();
            if (token.len() <= MAX_TOKEN_LEN && items as u64 <= MAX_MARKS) || items == 0 {
                return token;
            }
            marks.to_mut().compact(items - 1);
        }
    }

    /// Opens `token` for `session_id` and returns what it carries.
    pub fn verify(&self, session_id: &str, token: &str) -> Result<Carried, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let (format, rest) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let (kid, body) = rest.split_once('.').ok_or(TokenError::Malformed)?;
        match format {
            "v2" => self.open(session_id, kid, body),
            "v1" => self.open_v1(session_id, kid, body),
            _ => Err(TokenError::Malformed),
        }
    }

    fn key(&self, kid: &str) -> Result<&Key, TokenError> {
        self.keys
            .iter()
            .find(|k| k.id == kid)
            .ok_or(TokenError::UnknownKey)
    }

    fn open(&self, session_id: &str, kid: &str, body: &str) -> Result<Carried, TokenError> {
        let mut sealed = URL_SAFE_NO_PAD.decode(body).map_err(|_| TokenError::Malformed)?;
        let payload_len = sealed
            .len()
            .checked_sub(LINEAGE_LEN + SEAL_TAG_LEN)
            .filter(|n| *n > 0 && n % PAD == 0)
            .ok_or(TokenError::Malformed)?;
        let key = self.key(kid)?;
        let (lineage, rest) = sealed.split_at_mut(LINEAGE_LEN);
        let (payload, tag) = rest.split_at_mut(payload_len);
        let lineage: [u8; LINEAGE_LEN] = (*lineage).try_into().expect("split at its length");
        key.seal
            .decrypt_in_place_detached(
                Nonce::from_slice(&lineage),
                key.prefix.as_bytes(),
                payload,
                Tag::from_slice(tag),
            )
            .map_err(|_| TokenError::Tampered)?;
        let (binding, watermarks) = decode(payload, true).ok_or(TokenError::Malformed)?;
        if binding != session_binding(session_id) {
            return Err(TokenError::Foreign);
        }
        Ok(Carried {
            lineage: Some(Lineage(lineage)),
            watermarks,
        })
    }

    /// A token of the first format: `<payload>.<tag>` after `v1.<key id>.`.
    fn open_v1(&self, session_id: &str, kid: &str, body: &str) -> Result<Carried, TokenError> {
        let (payload, tag) = body.split_once('.').ok_or(TokenError::Malformed)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| TokenError::Malformed)?;
        if tag.len() != V1_TAG_LEN {
            return Err(TokenError::Malformed);
        }
        let key = self.key(kid)?;
        let mut mac = key.v1_mac.clone();
        mac.update(b"v1.");
        mac.update(kid.as_bytes());
        mac.update(b".");
        mac.update(&payload);
        mac.verify_truncated_left(&tag)
            .map_err(|_| TokenError::Tampered)?;
        let (binding, watermarks) = decode(&payload, false).ok_or(TokenError::Malformed)?;
        if binding != session_binding(session_id) {
            return Err(TokenError::Foreign);
        }
        Ok(Carried {
            lineage: None,
            watermarks,
        })
    }
}

/// `v2.<key id>.` and the sealed payload in base64url.
fn seal(key: &Key, session_id: &str, lineage: &Lineage, watermarks: &Watermarks) -> String {
    let marks = watermarks.writes().len() + watermarks.reads().len();
    let mut sealed = Vec::with_capacity(LINEAGE_LEN + 32 + 28 * marks + PAD + SEAL_TAG_LEN);
    sealed.extend_from_slice(&lineage.0);
    encode(&mut sealed, session_id, watermarks);
    let padded = (sealed.len() - LINEAGE_LEN).next_multiple_of(PAD);
    sealed.resize(LINEAGE_LEN + padded, 0);
    let tag = key
        .seal
        .encrypt_in_place_detached(
            Nonce::from_slice(&lineage.0),
            key.prefix.as_bytes(),
            &mut sealed[LINEAGE_LEN..],
        )
        .expect("a payload of a few hundred bytes is far within AES-GCM-SIV's bounds");
    sealed.extend_from_slice(&tag);
    let mut token = String::with_capacity(key.prefix.len() + sealed.len().div_ceil(3) * 4);
    token.push_str(&key.prefix);
    URL_SAFE_NO_PAD.encode_string(&sealed, &mut token);
    token
}

fn session_binding(session_id: &str) -> [u8; BINDING_LEN] {
    let digest = Sha256::digest(session_id.as_bytes());
    let mut out = [0u8; BINDING_LEN];
    out.copy_from_slice(&digest[..BINDING_LEN]);
    out
}

/// Appends the payload (unpadded) to `out`.
fn encode(out: &mut Vec<u8>, session_id: &str, w: &Watermarks) {
    out.extend_from_slice(&session_binding(session_id));
    put_varint(out, w.write_floor().0);
    put_varint(out, w.read_floor().0);
    for marks in [w.writes(), w.reads()] {
        put_varint(out, marks.len() as u64);
        for mark in marks {
            out.extend_from_slice(&mark.item.to_le_bytes());
            put_varint(out, mark.version.0);
            put_varint(out, mark.position.0);
        }
    }
}

/// Reads a payload, `padded` with zeros to a multiple of [`PAD`] (format 2) or not
/// (format 1). Accepts exactly what [`encode`] writes: every number in its shortest
/// form, each item at most once per kind, no byte left over — so a payload decodes to
/// one set of watermarks and is the only payload that encodes them.
fn decode(payload: &[u8], padded: bool) -> Option<([u8; BINDING_LEN], Watermarks)> {
    let mut input = payload;
    let binding: [u8; BINDING_LEN] = input.get(..BINDING_LEN)?.try_into().ok()?;
    input = &input[BINDING_LEN..];
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
            if list.iter().any(|m: &Mark| m.item == item) {
                return None;
            }
            list.push(Mark {
                item,
                version,
                position,
            });
        }
    }
    let used = payload.len() - input.len();
    let expected = if padded { used.next_multiple_of(PAD) } else { used };
    if payload.len() != expected || input.iter().any(|&b| b != 0) {
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

/// A LEB128 varint in its shortest form, within 64 bits.
fn get_varint(input: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        let bits = u64::from(byte & 0x7f);
        if shift == 63 && bits > 1 {
            return None; // past 64 bits
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            // A last group of zeros only lengthens the number.
            return (byte != 0 || shift == 0).then_some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::item_hash;
    use crate::watermarks::testing::{covers, watermarks};

    const SECRET_1: &[u8] = b"0123456789abcdef0123456789abcdef";
    const SECRET_2: &[u8] = b"fedcba9876543210fedcba9876543210";

    fn keys() -> TokenKeys {
        TokenKeys::new([("k1", SECRET_1), ("k2", SECRET_2)], "k1").unwrap()
    }

    fn lineage() -> Lineage {
        Lineage([7; LINEAGE_LEN])
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

    /// A token of the first format, as nodes before format 2 issued them.
    fn sign_v1(secret: &[u8], kid: &str, session_id: &str, w: &Watermarks) -> String {
        let mut payload = Vec::new();
        encode(&mut payload, session_id, w);
        let mut mac = <HmacSha256 as Mac>::new_from_slice(secret).unwrap();
        mac.update(format!("v1.{kid}.").as_bytes());
        mac.update(&payload);
        let tag = mac.finalize().into_bytes();
        format!(
            "v1.{kid}.{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(&tag[..V1_TAG_LEN])
        )
    }

    #[test]
    fn round_trip() {
        let w = marks(3);
        let token = keys().sign("s1", &lineage(), &w);
        assert!(token.starts_with("v2.k1."));
        let carried = keys().verify("s1", &token).unwrap();
        assert_eq!(carried.watermarks, w);
        assert_eq!(carried.lineage, Some(lineage()));
    }

    #[test]
    fn tampering_another_session_and_unknown_keys_are_told_apart() {
        let keys = keys();
        let token = keys.sign("s1", &lineage(), &marks(2));
        assert_eq!(keys.verify("s2", &token), Err(TokenError::Foreign));

        // Any byte changed, the lineage (the nonce) included.
        for at in ["v2.k1.".len(), "v2.k1.".len() + 20, token.len() - 3] {
            let mut bytes = token.clone().into_bytes();
            bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).unwrap();
            assert_eq!(keys.verify("s1", &tampered), Err(TokenError::Tampered), "at {at}");
        }

        let relabelled = token.replacen("v2.k1.", "v2.k2.", 1);
        assert_eq!(keys.verify("s1", &relabelled), Err(TokenError::Tampered));
        let foreign_key = token.replacen("v2.k1.", "v2.k9.", 1);
        assert_eq!(keys.verify("s1", &foreign_key), Err(TokenError::UnknownKey));

        for junk in [
            "",
            "v2",
            "v2.k1",
            "v2.k1.",
            "v2.k1.x.y",
            "v2.k1.AAAA",
            "v3.k1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "v1.k1.x.y",
            "v1.k1.AAAA.AAAAAAAAAAAAAAAAAAAAAA.x",
            "a.b.c.d.e",
            "v1.k1.!!.??",
        ] {
            assert_eq!(keys.verify("s1", junk), Err(TokenError::Malformed), "{junk:?}");
        }
    }

    #[test]
    fn rotation_keeps_old_tokens_valid() {
        let old = keys().sign("s1", &lineage(), &marks(1));
        let rotated = TokenKeys::new([("k1", SECRET_1), ("k2", SECRET_2)], "k2").unwrap();
        assert_eq!(rotated.verify("s1", &old).unwrap().watermarks, marks(1));
        assert!(rotated.sign("s1", &lineage(), &marks(1)).starts_with("v2.k2."));
    }

    #[test]
    fn first_format_tokens_are_still_accepted_without_a_lineage() {
        let w = marks(2);
        let v1 = sign_v1(SECRET_1, "k1", "s1", &w);
        let carried = keys().verify("s1", &v1).unwrap();
        assert_eq!(
            carried,
            Carried {
                lineage: None,
                watermarks: w.clone()
            }
        );
        assert_eq!(keys().verify("s2", &v1), Err(TokenError::Foreign));
        let forged = sign_v1(b"not the secret", "k1", "s1", &w);
        assert_eq!(keys().verify("s1", &forged), Err(TokenError::Tampered));
        assert_eq!(
            keys().verify("s1", &v1.replacen("v1.k1.", "v1.k9.", 1)),
            Err(TokenError::UnknownKey)
        );
    }

    #[test]
    fn a_full_token_stays_under_the_limit_and_only_gets_more_conservative() {
        let w = marks(40);
        let token = keys().sign("s1", &lineage(), &w);
        assert!(token.len() <= MAX_TOKEN_LEN, "{} bytes", token.len());
        let back = keys().verify("s1", &token).unwrap().watermarks;
        for i in 0..40u64 {
            for item in [i, u64::MAX - i] {
                assert!(covers(&back, &w, item, true, true), "item {item}");
            }
        }
    }

    /// What someone holding a token but not the key would try: every id of the
    /// catalogue hashed with the public item hash, looked for in the token.
    fn reversed(token: &str, catalogue: &[String]) -> Vec<String> {
        let body = token.splitn(3, '.').nth(2).unwrap();
        let bytes: Vec<u8> = body
            .split('.')
            .flat_map(|part| URL_SAFE_NO_PAD.decode(part).unwrap_or_default())
            .collect();
        catalogue
            .iter()
            .filter(|id| {
                let hash = item_hash("products", id).to_le_bytes();
                bytes.windows(8).any(|w| w == hash)
            })
            .cloned()
            .collect()
    }

    #[test]
    fn tokens_of_sessions_that_touched_different_known_ids_cannot_be_told_apart() {
        let catalogue: Vec<String> = (0..10_000).map(|i| format!("SKU-{i:05}")).collect();
        // Two sessions, the same shape of activity, different products.
        let session = |ids: [&str; 3]| {
            let mut w = Watermarks::default();
            w.record_write(item_hash("products", ids[0]), Version(3), Position(5_000), 24);
            w.record_read(item_hash("products", ids[1]), Version(7), Position(5_100), 24);
            w.record_read(item_hash("products", ids[2]), Version(2), Position(5_200), 24);
            w
        };
        let (a, b) = (
            session(["SKU-00017", "SKU-04242", "SKU-09999"]),
            session(["SKU-00018", "SKU-00500", "SKU-07777"]),
        );

        // The attack works on what tokens used to be (the control)...
        let old_a = sign_v1(SECRET_1, "k1", "alice", &a);
        assert_eq!(
            reversed(&old_a, &catalogue),
            ["SKU-00017", "SKU-04242", "SKU-09999"]
        );

        // ...and finds nothing in a sealed token.
        let keys = keys();
        let token_a = keys.sign("alice", &Lineage::random(), &a);
        let token_b = keys.sign("bob", &Lineage::random(), &b);
        assert_eq!(reversed(&token_a, &catalogue), Vec::<String>::new());
        assert_eq!(reversed(&token_b, &catalogue), Vec::<String>::new());
        // Same length, and nothing in common but the key id: without the key, which
        // session touched which products cannot be told.
        assert_eq!(token_a.len(), token_b.len());
        let sealed = |t: &str| URL_SAFE_NO_PAD.decode(&t["v2.k1.".len()..]).unwrap();
        let (sa, sb) = (sealed(&token_a), sealed(&token_b));
        let same = sa.iter().zip(&sb).filter(|(x, y)| x == y).count();
        assert!(same < sa.len() / 8, "{same} of {} bytes equal", sa.len());
        // The same session touching other products gives an unrelated token too.
        let lineage = Lineage::random();
        let (one, other) = (keys.sign("alice", &lineage, &a), keys.sign("alice", &lineage, &b));
        let (so, st) = (sealed(&one), sealed(&other));
        let same = so[LINEAGE_LEN..]
            .iter()
            .zip(&st[LINEAGE_LEN..])
            .filter(|(x, y)| x == y)
            .count();
        assert!(same < so.len() / 8, "{same} of {} bytes equal", so.len());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any string is refused or accepted; nothing panics. A forged seal never passes.
        #[test]
        fn verify_never_panics(junk in "\\PC{0,1100}", sealed in proptest::collection::vec(any::<u8>(), 0..700)) {
            let keys = keys();
            let _ = keys.verify("s1", &junk);
            let forged = format!("v2.k1.{}", URL_SAFE_NO_PAD.encode(&sealed));
            prop_assert!(keys.verify("s1", &forged).is_err());
        }

        /// A payload of arbitrary bytes decodes to nothing or to watermarks that encode
        /// back to exactly those bytes: no two payloads mean the same, none means
        /// something the encoder could not have written.
        #[test]
        fn decode_is_an_error_or_the_exact_inverse_of_encode(
            bytes in proptest::collection::vec(any::<u8>(), 0..700),
            padded in any::<bool>(),
        ) {
            if let Some((binding, w)) = decode(&bytes, padded) {
                let mut again = binding.to_vec();
                let mut rest = Vec::new();
                encode(&mut rest, "", &w);
                again.extend_from_slice(&rest[BINDING_LEN..]);
                if padded {
                    again.resize(again.len().next_multiple_of(PAD), 0);
                }
                prop_assert_eq!(again, bytes);
                prop_assert!(w.writes().len() as u64 <= MAX_MARKS && w.reads().len() as u64 <= MAX_MARKS);
            }
        }

        /// Bytes that are almost a payload (a valid one with a few bytes changed, cut
        /// or added) reach deeper into the decoder than random ones.
        #[test]
        fn decode_of_a_damaged_payload_never_panics(
            w in watermarks(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = Vec::new();
            encode(&mut bytes, "s1", &w);
            for (at, byte) in edits {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            let cut = cut.index(bytes.len() + 1);
            for candidate in [&bytes[..], &bytes[..cut]] {
                if let Some((_, back)) = decode(candidate, false) {
                    let mut again = Vec::new();
                    encode(&mut again, "s1", &back);
                    prop_assert_eq!(&again[BINDING_LEN..], &candidate[BINDING_LEN..]);
                }
            }
        }

        /// Sealed and opened, watermarks come back the same when they fit, and never
        /// less conservative for any item when they had to be compacted.
        #[test]
        fn sign_then_verify_gives_back_the_watermarks_or_more_conservative_ones(w in watermarks(), probe in 0u64..40) {
            let keys = keys();
            let lineage = Lineage::random();
            let token = keys.sign("s1", &lineage, &w);
            prop_assert!(token.len() <= MAX_TOKEN_LEN);
            let carried = keys.verify("s1", &token).unwrap();
            prop_assert_eq!(carried.lineage, Some(lineage));
            let back = carried.watermarks;
            if back.writes().len() == w.writes().len() && back.reads().len() == w.reads().len() {
                prop_assert_eq!(&back, &w);
            }
            for item in w.writes().iter().chain(w.reads()).map(|m| m.item).chain([probe]) {
                for (ryw, monotonic) in [(true, true), (true, false), (false, true)] {
                    prop_assert!(covers(&back, &w, item, ryw, monotonic), "item {}", item);
                }
            }
        }
    }
}
