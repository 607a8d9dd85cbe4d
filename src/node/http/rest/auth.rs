//! The REST API's authentication, as Azure SignalR Service's data plane does it: a JWT bearer token signed with
//! HS256 and the node's access key, carrying `exp` (checked, with [`DEFAULT_LEEWAY`]) and `aud`, which must be the
//! URL of the request without its query, a trailing slash not counting. Scheme and host are compared
//! case-insensitively, the path as sent (percent-encoded).

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use crate::auth::{AuthError, DEFAULT_LEEWAY};

/// The access key the REST API's tokens are signed with. Its `Debug` never shows the key.
pub(super) struct AccessKey {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessKey(<redacted>)")
    }
}

/// The claims the REST API reads (the signature and `exp` are checked by `jsonwebtoken`).
#[derive(Deserialize)]
struct RestClaims {
    aud: Option<Value>,
}

impl AccessKey {
    pub(super) fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = DEFAULT_LEEWAY.as_secs();
        // The audience is compared below, by Azure's rule, not by exact string.
        validation.validate_aud = false;
        validation.validate_nbf = true;
        validation.required_spec_claims = ["exp".to_owned()].into_iter().collect();
        AccessKey {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Checks `token` for a request to `url` (`scheme://host/path`, no query).
    pub(super) fn check(&self, token: &str, url: &str) -> Result<(), AuthError> {
        let data = jsonwebtoken::decode::<RestClaims>(token.trim(), &self.key, &self.validation)?;
        let audiences: Vec<&str> = match &data.claims.aud {
            None => return Err(AuthError::MissingClaim("aud".into())),
            Some(Value::String(one)) => vec![one.as_str()],
            Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
            Some(_) => Vec::new(),
        };
        if audiences.into_iter().any(|audience| same_url(audience, url)) {
            Ok(())
        } else {
            Err(AuthError::Audience)
        }
    }
}

/// Whether audience `audience` names request URL `url`: the query and a trailing slash do not count, nor the case
/// of scheme and host.
fn same_url(audience: &str, url: &str) -> bool {
    let without_query = |text: &str| -> String {
        let base = text.split(['?', '#']).next().unwrap_or_default();
        base.trim_end_matches('/').to_owned()
    };
    let (audience, url) = (without_query(audience), without_query(url));
    let split = |text: &str| -> Option<(String, String)> {
        let (scheme, rest) = text.split_once("://")?;
        let (host, path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => (rest, ""),
        };
        Some((format!("{}://{}", scheme, host).to_ascii_lowercase(), path.to_owned()))
    };
    match (split(&audience), split(&url)) {
        (Some(audience), Some(url)) => audience == url,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const URL: &str = "http://127.0.0.1:5000/api/hubs/chat/:send";

    fn token(key: &str, claims: Value) -> String {
        encode(&Header::default(), &claims, &EncodingKey::from_secret(key.as_bytes())).unwrap()
    }

    fn in_an_hour() -> u64 {
        jsonwebtoken::get_current_timestamp() + 3600
    }

    #[test]
    fn a_token_for_this_url_passes_whatever_its_query_and_trailing_slash() {
        let key = AccessKey::new(b"key");
        for aud in [
            json!(URL),
            json!(format!("{URL}/")),
            json!(format!("{URL}?api-version=2022-06-01")),
            json!("HTTP://127.0.0.1:5000/api/hubs/chat/:send"),
            json!(["https://other.example/", URL]),
        ] {
            assert_eq!(key.check(&token("key", json!({ "aud": aud, "exp": in_an_hour() })), URL), Ok(()), "{aud}");
        }
    }

    #[test]
    fn other_urls_keys_expired_and_audience_less_tokens_fail() {
        let key = AccessKey::new(b"key");
        let check = |claims: Value, signer: &str| key.check(&token(signer, claims), URL);
        assert_eq!(
            check(json!({ "aud": "http://127.0.0.1:5000/api/hubs/other/:send", "exp": in_an_hour() }), "key"),
            Err(AuthError::Audience)
        );
        assert_eq!(
            check(json!({ "aud": "http://127.0.0.1:5000/api/hubs/CHAT/:send", "exp": in_an_hour() }), "key"),
            Err(AuthError::Audience)
        );
        assert_eq!(check(json!({ "aud": URL, "exp": in_an_hour() }), "not the key"), Err(AuthError::BadSignature));
        assert_eq!(check(json!({ "aud": URL, "exp": 1_000 }), "key"), Err(AuthError::Expired));
        assert_eq!(check(json!({ "aud": URL }), "key"), Err(AuthError::MissingClaim("exp".into())));
        assert_eq!(check(json!({ "exp": in_an_hour() }), "key"), Err(AuthError::MissingClaim("aud".into())));
        assert!(key.check("not.a.token", URL).is_err());
    }
}
