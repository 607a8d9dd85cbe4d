//! The test server's JWTs: one random HS256 key per server, the tokens `GET /generateJwtToken` hands out and the
//! authenticator that accepts them.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::{Authenticator, NAME_IDENTIFIER_CLAIM};

/// How long a token from `GET /generateJwtToken` is valid.
pub const TEST_TOKEN_LIFETIME: Duration = Duration::from_secs(5);

/// The user id in tokens from `GET /generateJwtToken`.
pub const TEST_USER: &str = "testuser";

/// The issuer of tokens from `GET /generateJwtToken`, as upstream's.
pub const TEST_TOKEN_ISSUER: &str = "SignalRTestServer";

/// The audience of tokens from `GET /generateJwtToken`, as upstream's.
pub const TEST_TOKEN_AUDIENCE: &str = "SignalRTests";

/// The HS256 key of one test server: tokens from `GET /generateJwtToken` and the node's authenticator.
#[derive(Clone)]
pub struct TestTokens {
    secret: Arc<[u8; 32]>,
}

impl std::fmt::Debug for TestTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestTokens(<redacted>)")
    }
}

impl TestTokens {
    /// A fresh random key.
    pub fn random() -> Self {
        TestTokens {
            secret: Arc::new(rand::random()),
        }
    }

    /// The authenticator that accepts this key's tokens.
    pub fn authenticator(&self) -> Authenticator {
        Authenticator::hs256(self.secret.as_slice())
    }

    /// A token for `user`, valid for `lifetime`: the user in the name-identifier claim, and upstream's issuer and
    /// audience (which, as there, are not checked).
    pub fn token(&self, user: &str, lifetime: Duration) -> Result<String, jsonwebtoken::errors::Error> {
        let expires = jsonwebtoken::get_current_timestamp() + lifetime.as_secs();
        let claims = serde_json::json!({
            NAME_IDENTIFIER_CLAIM: user,
            "exp": expires,
            "iss": TEST_TOKEN_ISSUER,
            "aud": TEST_TOKEN_AUDIENCE,
        });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(self.secret.as_slice()),
        )
    }
}
