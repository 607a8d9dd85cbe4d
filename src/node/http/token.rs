//! Connection tokens that any node of the cluster can check without asking anyone: the `connectionToken` that
//! negotiate hands out names its connection and the incarnation of the node that negotiated it (the connection's
//! *home*), under a MAC keyed by the cluster secret (docs/any-node-design.md#1-tokens-anyone-in-the-cluster-can-check).
//!
//! `token = base64url(version ‖ home generation (8 B, big endian) ‖ connection id ‖ tag (16 B))`, where the tag is
//! HMAC-SHA256, truncated to 16 bytes, over the hub's path and everything before it, under a key derived with HKDF
//! from the cluster secret and a label of its own (so it differs from the link cookie and the gossip key). A node
//! that is not in a cluster uses a random key of its own: its tokens mean nothing anywhere else.
//!
//! A token says *which* connection; whether that connection is still waiting for its transport, open, or over is
//! the home's to say (its table of negotiated tokens, [`super::endpoint`]). A token of another cluster, another
//! secret, another hub, or with any byte changed is refused. During a secret rotation the previous secrets are
//! accepted, as for gossip; tokens are always issued under the current one.

use base64::Engine;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::connection::ConnectionId;

type HmacSha256 = Hmac<Sha256>;

const VERSION: u8 = 1;
const GENERATION_LEN: usize = 8;
const TAG_LEN: usize = 16;
/// Version, generation, at least one byte of id, tag.
const MIN_LEN: usize = 1 + GENERATION_LEN + 1 + TAG_LEN;
/// Longer tokens are refused before decoding (ids are a few dozen bytes).
const MAX_TOKEN_CHARS: usize = 512;

const KEY_SALT: &[u8] = b"hubmesh cluster secret";
const KEY_LABEL: &[u8] = b"hubmesh connection token v1";

/// What a valid token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenClaims {
    /// The connection.
    pub(crate) id: ConnectionId,
    /// The generation of the node that negotiated it (its name is the id's suffix).
    pub(crate) home_generation: u64,
}

/// The keys a node issues connection tokens with (the current secret's) and accepts them under (the current and
/// previous secrets'). Its `Debug` shows nothing of the keys.
#[derive(Clone)]
pub(crate) struct TokenKeys {
    accepted: Vec<HmacSha256>,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("accepted", &self.accepted.len())
            .finish()
    }
}

fn derive(secret: &[u8]) -> HmacSha256 {
    let hkdf = Hkdf::<Sha256>::new(Some(KEY_SALT), secret);
    let mut key = hmac::digest::Key::<HmacSha256>::default();
    // Far below HKDF-SHA256's limit (255 * 32 bytes): expanding cannot fail.
    let _ = hkdf.expand(KEY_LABEL, &mut key);
    <HmacSha256 as hmac::digest::KeyInit>::new(&key)
}

impl TokenKeys {
    /// Keys of a cluster: issues under `secret`, accepts `secret` and each of `previous`.
    pub(crate) fn from_secrets<S: AsRef<str>>(secret: &str, previous: &[S]) -> Self {
        let mut accepted = vec![derive(secret.as_bytes())];
        accepted.extend(previous.iter().map(|old| derive(old.as_ref().as_bytes())));
        TokenKeys { accepted }
    }

    /// Keys of a node alone: a random secret that no other node knows.
    pub(crate) fn random() -> Self {
        TokenKeys {
            accepted: vec![derive(&rand::random::<[u8; 32]>())],
        }
    }

    fn tag(key: &HmacSha256, hub_path: &str, payload: &[u8]) -> HmacSha256 {
        let mut mac = key.clone();
        mac.update(hub_path.as_bytes());
        // The path cannot contain a NUL, so path and payload cannot be shifted into each other.
        mac.update(&[0]);
        mac.update(payload);
        mac
    }

    /// The token of connection `id` of hub `hub_path`, negotiated by a node of generation `home_generation`.
    pub(crate) fn issue(&self, hub_path: &str, id: &ConnectionId, home_generation: u64) -> String {
        let mut bytes = Vec::with_capacity(MIN_LEN + id.as_str().len());
        bytes.push(VERSION);
        bytes.extend_from_slice(&home_generation.to_be_bytes());
        bytes.extend_from_slice(id.as_str().as_bytes());
        if let Some(key) = self.accepted.first() {
            let tag = Self::tag(key, hub_path, &bytes).finalize().into_bytes();
            bytes.extend_from_slice(&tag[..TAG_LEN]);
        }
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// What `token` names, if one of the accepted keys made it for hub `hub_path`.
    pub(crate) fn check(&self, hub_path: &str, token: &str) -> Option<TokenClaims> {
        if token.len() > MAX_TOKEN_CHARS {
            return None;
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).ok()?;
        if bytes.len() < MIN_LEN || bytes.first() != Some(&VERSION) {
            return None;
        }
        let (payload, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        let genuine = self
            .accepted
            .iter()
            .any(|key| Self::tag(key, hub_path, payload).verify_truncated_left(tag).is_ok());
        if !genuine {
            return None;
        }
        let generation: [u8; GENERATION_LEN] = payload.get(1..1 + GENERATION_LEN)?.try_into().ok()?;
        let id = std::str::from_utf8(payload.get(1 + GENERATION_LEN..)?).ok()?;
        Some(TokenClaims {
            id: ConnectionId::new(id),
            home_generation: u64::from_be_bytes(generation),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> ConnectionId {
        ConnectionId::new("AbCdEfGhIjKlMnOpQrStUv.node-1")
    }

    #[test]
    fn a_token_names_its_connection_and_home_generation() {
        let keys = TokenKeys::from_secrets::<&str>("secret", &[]);
        let token = keys.issue("/hub", &id(), 42);
        assert!(!token.contains('.') && !token.contains('+') && !token.contains('/'));
        let claims = keys.check("/hub", &token);
        assert_eq!(
            claims,
            Some(TokenClaims {
                id: id(),
                home_generation: 42
            })
        );
        // Another node of the same cluster checks it the same way.
        let peer = TokenKeys::from_secrets::<&str>("secret", &[]);
        assert_eq!(peer.check("/hub", &token), claims);
    }

    #[test]
    fn another_secret_another_hub_or_a_changed_byte_is_refused() {
        let keys = TokenKeys::from_secrets::<&str>("secret", &[]);
        let token = keys.issue("/hub", &id(), 7);
        assert_eq!(TokenKeys::from_secrets::<&str>("other", &[]).check("/hub", &token), None);
        assert_eq!(TokenKeys::random().check("/hub", &token), None);
        assert_eq!(keys.check("/otherhub", &token), None);
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&token)
            .unwrap_or_default();
        for position in 0..bytes.len() {
            let mut forged = bytes.clone();
            forged[position] ^= 0x01;
            let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged);
            assert_eq!(keys.check("/hub", &forged), None, "a change at byte {position} was accepted");
        }
        // A token for another connection cannot be made by rewriting the id.
        let other = ConnectionId::new("ZZZZZZZZZZZZZZZZZZZZZZ.node-1");
        let mut forged = bytes[..1 + GENERATION_LEN].to_vec();
        forged.extend_from_slice(other.as_str().as_bytes());
        forged.extend_from_slice(&bytes[bytes.len() - TAG_LEN..]);
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged);
        assert_eq!(keys.check("/hub", &forged), None);
    }

    #[test]
    fn junk_is_refused_without_a_panic() {
        let keys = TokenKeys::from_secrets::<&str>("secret", &[]);
        for junk in ["", "a", "!!!!", "AQ", &"A".repeat(40), &"A".repeat(10_000), "AbCdEfGhIjKlMnOpQrStUv.node-1"] {
            assert_eq!(keys.check("/hub", junk), None, "{junk:?}");
        }
    }

    #[test]
    fn previous_secrets_are_accepted_during_a_rotation_and_tokens_use_the_new_one() {
        let old = TokenKeys::from_secrets::<&str>("old", &[]);
        let rotating = TokenKeys::from_secrets("new", &["old"]);
        let new = TokenKeys::from_secrets::<&str>("new", &[]);
        let old_token = old.issue("/hub", &id(), 1);
        assert!(rotating.check("/hub", &old_token).is_some());
        assert_eq!(new.check("/hub", &old_token), None);
        assert!(new.check("/hub", &rotating.issue("/hub", &id(), 1)).is_some());
    }
}
