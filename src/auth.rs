//! Authentication and authorization: JWT bearer tokens checked against a configured key, the claims a valid token
//! carries, and the requirements hubs and hub methods put on them (docs/protocol.md#authentication).
//!
//! # What this module owns
//!
//! * [`Authenticator`]: one verification key (HS256 secret or RS256 public key), the optional issuer and audience
//!   a token must name, the clock leeway, and the claim the user id is read from. [`Authenticator::authenticate`]
//!   turns a token into an [`Authenticated`] (user id and [`Claims`]) or an [`AuthError`]; a bad token is an
//!   error, never a panic.
//! * [`Claims`]: the token's payload, read by hub code through `Caller::claims`.
//! * [`Requirement`]: what a hub ([`crate::Hub::authorize`], [`crate::Hub::require_claim`]) or a method
//!   ([`crate::Hub::method_authorized`]) demands of its callers: an authenticated user, and optionally claims.
//! * [`bearer_token`]: where a request's token is found: the `Authorization: Bearer` header, or failing that the
//!   `access_token` query parameter (browsers cannot set headers on WebSockets and EventSource).
//!
//! # Semantics
//!
//! * The user id is the first string (or number) value of the configured claim; by default the name-identifier
//!   claim [`NAME_IDENTIFIER_CLAIM`], falling back to `sub` (ASP.NET maps `sub` to the name identifier).
//! * `exp` is required and checked with a leeway ([`DEFAULT_LEEWAY`], as `jsonwebtoken` defaults). When an issuer
//!   or an audience is configured, the token must carry a matching `iss` / `aud`; otherwise those are not checked.
//! * Only the configured algorithm is accepted: a token signed with another (`none`, or HS256 against an RS256
//!   key) is refused.
//!
//! # What it may call
//!
//! `jsonwebtoken` (RustCrypto backend), serde_json and the standard library. It knows nothing of HTTP, hubs or
//! connections: the HTTP layer (`crate::node`) hands it header and query strings, and the hub layer asks
//! [`Requirement::allows`]. No global state: every key lives in its [`Authenticator`].

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The claim ASP.NET takes the user identifier from by default (`ClaimTypes.NameIdentifier`).
pub const NAME_IDENTIFIER_CLAIM: &str = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/nameidentifier";

/// The JWT subject claim, the fallback for the user identifier.
pub const SUBJECT_CLAIM: &str = "sub";

/// How far `exp` (and `nbf`) may be off before a token is refused.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);

/// Why a token was refused, or a key could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The request carried no bearer token.
    #[error("no bearer token was sent")]
    Missing,
    /// The token's `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// The token's `nbf` lies in the future.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// The signature does not match the key.
    #[error("the token's signature is invalid")]
    BadSignature,
    /// The token is signed with an algorithm this authenticator does not accept.
    #[error("the token's algorithm is not accepted")]
    Algorithm,
    /// `aud` does not name the configured audience.
    #[error("the token's audience is not accepted")]
    Audience,
    /// `iss` is not the configured issuer.
    #[error("the token's issuer is not accepted")]
    Issuer,
    /// A claim the validation needs (`exp`, or `iss`/`aud` when configured) is missing.
    #[error("the token lacks the `{0}` claim")]
    MissingClaim(String),
    /// Not a well-formed JWT.
    #[error("the token is malformed: {0}")]
    Malformed(String),
    /// The verification key could not be read.
    #[error("invalid key: {0}")]
    Key(String),
}

impl From<jsonwebtoken::errors::Error> for AuthError {
    fn from(error: jsonwebtoken::errors::Error) -> Self {
        match error.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm | ErrorKind::UnsupportedAlgorithm => {
                AuthError::Algorithm
            }
            ErrorKind::InvalidAudience => AuthError::Audience,
            ErrorKind::InvalidIssuer => AuthError::Issuer,
            ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim.clone()),
            ErrorKind::InvalidRsaKey(reason) => AuthError::Key(reason.clone()),
            ErrorKind::InvalidKeyFormat | ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidEddsaKey => {
                AuthError::Key(error.to_string())
            }
            _ => AuthError::Malformed(error.to_string()),
        }
    }
}

/// The claims of a valid token: its JSON payload, by claim name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Claims(Map<String, Value>);

impl Claims {
    /// Claims from a JSON object.
    pub fn new(claims: Map<String, Value>) -> Self {
        Claims(claims)
    }

    /// The raw value of claim `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    /// The first text value of claim `name` (a string, or the first string of an array).
    pub fn value(&self, name: &str) -> Option<&str> {
        self.values(name).next()
    }

    /// Every text value of claim `name`: a string claim has one, an array claim one per string element (as
    /// ASP.NET turns a JSON array into several claims of one type).
    pub fn values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        let values: &'a [Value] = match self.0.get(name) {
            Some(Value::Array(items)) => items,
            Some(value) => std::slice::from_ref(value),
            None => &[],
        };
        values.iter().filter_map(Value::as_str)
    }

    /// Whether claim `name` has the value `value` (among its values, for an array claim).
    pub fn has(&self, name: &str, value: &str) -> bool {
        self.values(name).any(|candidate| candidate == value)
    }

    /// Whether claim `name` is present at all.
    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// Every claim.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(name, value)| (name.as_str(), value))
    }

    /// The claims as a JSON object.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    /// A text form of claim `name` for a user id: a string, the first string of an array, or a number.
    fn identifier(&self, name: &str) -> Option<String> {
        match self.0.get(name)? {
            Value::String(text) => Some(text.clone()),
            Value::Number(number) => Some(number.to_string()),
            Value::Array(items) => items.iter().find_map(|item| item.as_str().map(str::to_owned)),
            _ => None,
        }
        .filter(|id| !id.is_empty())
    }
}

/// What a valid token proves: the user id (if the token names one) and all its claims.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The user id, from the configured claim.
    pub user: Option<String>,
    /// Every claim of the token.
    pub claims: Arc<Claims>,
}

/// Checks bearer tokens: one key, the expected issuer and audience, and where the user id is read from.
///
/// ```
/// use hubmesh::auth::Authenticator;
///
/// let auth = Authenticator::hs256(b"a secret of at least 32 bytes, please")
///     .issuer("https://issuer.example")
///     .audience("hubmesh");
/// assert!(auth.authenticate("not-a-token").is_err());
/// ```
#[derive(Clone)]
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
    user_claim: Option<String>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key: an HS256 secret is as good as a token factory.
        f.debug_struct("Authenticator")
            .field("algorithms", &self.validation.algorithms)
            .field("issuer", &self.validation.iss)
            .field("audience", &self.validation.aud)
            .field("user_claim", &self.user_claim)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    fn with_key(key: DecodingKey, algorithm: Algorithm) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.leeway = DEFAULT_LEEWAY.as_secs();
        // Checked only when an audience is configured (see `audience`).
        validation.validate_aud = false;
        validation.validate_nbf = true;
        Authenticator {
            key,
            validation,
            user_claim: None,
        }
    }

    /// Tokens signed with HMAC-SHA256 and this shared secret.
    pub fn hs256(secret: impl AsRef<[u8]>) -> Self {
        Self::with_key(DecodingKey::from_secret(secret.as_ref()), Algorithm::HS256)
    }

    /// Tokens signed with RSA-SHA256, verified with this PEM public key (`BEGIN PUBLIC KEY` or
    /// `BEGIN RSA PUBLIC KEY`).
    pub fn rs256_pem(public_key: &[u8]) -> Result<Self, AuthError> {
        let key = DecodingKey::from_rsa_pem(public_key).map_err(|error| AuthError::Key(error.to_string()))?;
        Ok(Self::with_key(key, Algorithm::RS256))
    }

    /// Requires `iss` to be `issuer`.
    pub fn issuer(mut self, issuer: &str) -> Self {
        self.validation.set_issuer(&[issuer]);
        self.validation.required_spec_claims.insert("iss".to_owned());
        self
    }

    /// Requires `aud` to name `audience`.
    pub fn audience(mut self, audience: &str) -> Self {
        self.validation.set_audience(&[audience]);
        self.validation.validate_aud = true;
        self.validation.required_spec_claims.insert("aud".to_owned());
        self
    }

    /// Reads the user id from claim `name` only (default: [`NAME_IDENTIFIER_CLAIM`], then `sub`).
    pub fn user_claim(mut self, name: &str) -> Self {
        self.user_claim = Some(name.to_owned());
        self
    }

    /// How far `exp` and `nbf` may be off (default [`DEFAULT_LEEWAY`]).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.validation.leeway = leeway.as_secs();
        self
    }

    /// Checks `token` (signature, algorithm, `exp`, `nbf`, and `iss`/`aud` when configured) and reads its claims.
    pub fn authenticate(&self, token: &str) -> Result<Authenticated, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token.trim(), &self.key, &self.validation)?;
        let claims = data.claims;
        let user = match &self.user_claim {
            Some(name) => claims.identifier(name),
            None => claims
                .identifier(NAME_IDENTIFIER_CLAIM)
                .or_else(|| claims.identifier(SUBJECT_CLAIM)),
        };
        Ok(Authenticated {
            user,
            claims: Arc::new(claims),
        })
    }
}

/// What a hub or a hub method demands of its caller: always an authenticated user (a valid token), and every
/// listed claim (with the given value, or with any value).
///
/// ```
/// use hubmesh::auth::Requirement;
///
/// let admins = Requirement::claim("role", "admin");
/// let any_tenant = Requirement::authenticated().and_has_claim("tenant");
/// # let _ = (admins, any_tenant);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirement {
    claims: Vec<(String, Option<String>)>,
}

impl Requirement {
    /// An authenticated user, nothing more (ASP.NET's `[Authorize]`).
    pub fn authenticated() -> Self {
        Requirement::default()
    }

    /// An authenticated user whose claim `name` has value `value`.
    pub fn claim(name: &str, value: &str) -> Self {
        Requirement::default().and_claim(name, value)
    }

    /// Also claim `name` with value `value`.
    pub fn and_claim(mut self, name: &str, value: &str) -> Self {
        self.claims.push((name.to_owned(), Some(value.to_owned())));
        self
    }

    /// Also claim `name`, with any value.
    pub fn and_has_claim(mut self, name: &str) -> Self {
        self.claims.push((name.to_owned(), None));
        self
    }

    /// Also everything `other` demands.
    pub fn and(mut self, other: &Requirement) -> Self {
        self.claims.extend(other.claims.iter().cloned());
        self
    }

    /// Whether a caller with these claims (`None`: not authenticated) meets the requirement.
    pub fn allows(&self, claims: Option<&Claims>) -> bool {
        let Some(claims) = claims else {
            return false;
        };
        self.claims.iter().all(|(name, value)| match value {
            Some(value) => claims.has(name, value),
            None => claims.contains(name),
        })
    }
}

/// The bearer token of a request: from its `Authorization` header (`Bearer <token>`, scheme case-insensitive),
/// or failing that from the `access_token` query parameter (percent-decoded). Empty tokens count as none.
pub fn bearer_token<'a>(authorization: Option<&'a str>, query: &str) -> Option<Cow<'a, str>> {
    let from_header = authorization.and_then(|value| {
        let (scheme, token) = value.trim().split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(Cow::Borrowed(token))
    });
    from_header.or_else(|| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == "access_token")
            .map(|(_, value)| value.into_owned())
            .filter(|token| !token.is_empty())
            .map(Cow::Owned)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn token(claims: Value) -> String {
        encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    #[test]
    fn the_user_is_the_name_identifier_then_sub() {
        let auth = Authenticator::hs256(SECRET);
        let both = token(json!({ "exp": now() + 60, NAME_IDENTIFIER_CLAIM: "alice", "sub": "bob" }));
        assert_eq!(auth.authenticate(&both).unwrap().user.as_deref(), Some("alice"));
        let sub = token(json!({ "exp": now() + 60, "sub": "bob" }));
        assert_eq!(auth.authenticate(&sub).unwrap().user.as_deref(), Some("bob"));
        let custom = Authenticator::hs256(SECRET).user_claim("email");
        let email = token(json!({ "exp": now() + 60, "sub": "bob", "email": "b@example.com" }));
        assert_eq!(
            custom.authenticate(&email).unwrap().user.as_deref(),
            Some("b@example.com")
        );
        assert_eq!(custom.authenticate(&sub).unwrap().user, None);
    }

    #[test]
    fn bad_tokens_are_errors() {
        let auth = Authenticator::hs256(SECRET).leeway(Duration::ZERO);
        assert!(matches!(auth.authenticate("garbage"), Err(AuthError::Malformed(_))));
        assert_eq!(
            auth.authenticate(&token(json!({ "exp": now() - 10, "sub": "a" })))
                .unwrap_err(),
            AuthError::Expired
        );
        assert_eq!(
            auth.authenticate(&token(json!({ "sub": "a" }))).unwrap_err(),
            AuthError::MissingClaim("exp".into())
        );
        let other = Authenticator::hs256(b"another secret, another secret!!");
        assert_eq!(
            other.authenticate(&token(json!({ "exp": now() + 60 }))).unwrap_err(),
            AuthError::BadSignature
        );
        let audience = Authenticator::hs256(SECRET).audience("hubmesh");
        assert_eq!(
            audience
                .authenticate(&token(json!({ "exp": now() + 60, "aud": "other" })))
                .unwrap_err(),
            AuthError::Audience
        );
        assert_eq!(
            audience.authenticate(&token(json!({ "exp": now() + 60 }))).unwrap_err(),
            AuthError::MissingClaim("aud".into())
        );
        assert!(audience
            .authenticate(&token(json!({ "exp": now() + 60, "aud": ["x", "hubmesh"] })))
            .is_ok());
    }

    #[test]
    fn requirements_check_claims() {
        let claims = Claims::new(
            json!({ "role": ["user", "admin"], "tenant": "t1" })
                .as_object()
                .unwrap()
                .clone(),
        );
        assert!(!Requirement::authenticated().allows(None));
        assert!(Requirement::authenticated().allows(Some(&claims)));
        assert!(Requirement::claim("role", "admin").allows(Some(&claims)));
        assert!(!Requirement::claim("role", "root").allows(Some(&claims)));
        assert!(Requirement::authenticated()
            .and_has_claim("tenant")
            .allows(Some(&claims)));
        assert!(!Requirement::authenticated()
            .and_has_claim("region")
            .allows(Some(&claims)));
    }

    #[test]
    fn the_header_wins_over_the_query() {
        assert_eq!(
            bearer_token(Some("Bearer abc"), "access_token=def").as_deref(),
            Some("abc")
        );
        assert_eq!(bearer_token(Some("bearer  abc "), "").as_deref(), Some("abc"));
        assert_eq!(
            bearer_token(Some("Basic abc"), "access_token=d%2Be").as_deref(),
            Some("d+e")
        );
        assert_eq!(bearer_token(None, "x=1&access_token=").as_deref(), None);
        assert_eq!(bearer_token(Some("Bearer "), "").as_deref(), None);
    }
}
