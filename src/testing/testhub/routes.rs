//! The test server's plain HTTP routes besides the hubs and `/echo`: `/clientresult/{id}`, `/redirect…`,
//! `/bad-negotiate`, `/generateJwtToken`, and the middleware that sets the cookie tests' cookies on every negotiate.

use std::sync::atomic::{AtomicU64, Ordering};

use actix_web::body::MessageBody;
use actix_web::cookie::time::OffsetDateTime;
use actix_web::cookie::{Cookie, SameSite};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};

use super::tokens::{TestTokens, TEST_TOKEN_LIFETIME, TEST_USER};
use crate::connection::ConnectionId;
use crate::hub::HubContext;

/// `GET /clientresult/{id}`: invokes `Result` on connection `id` and answers with its integer, or with the
/// failure's message ("Error: from callback", "Client didn't provide a result.").
pub(super) async fn client_result(path: web::Path<String>, hub: web::Data<HubContext>) -> HttpResponse {
    let id = ConnectionId::new(path.into_inner());
    let answer = match hub.clients().client(&id).invoke::<i64, _>("Result", ()).await {
        Ok(value) => value.to_string(),
        Err(error) => error.to_string(),
    };
    HttpResponse::Ok().content_type("text/plain").body(answer)
}

/// Any path under `/redirect`: points the client at `/testHub` with a redirect count, as upstream does.
pub(super) async fn redirect(request: HttpRequest, counter: web::Data<RedirectCounter>) -> HttpResponse {
    let base_url = crate::hub::url_query_value(request.query_string(), "baseUrl").unwrap_or_default();
    let count = counter.0.fetch_add(1, Ordering::Relaxed) + 1;
    HttpResponse::Ok().json(serde_json::json!({ "url": format!("{base_url}/testHub?numRedirects={count}") }))
}

pub(super) struct RedirectCounter(pub(super) AtomicU64);

/// `POST /bad-negotiate/negotiate`: a negotiate that fails with `{"error":"Some error"}` (HTTP 200), as upstream.
pub(super) async fn bad_negotiate() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "error": "Some error" }))
}

/// `GET /generateJwtToken`: a raw JWT for user `testuser`, valid for [`TEST_TOKEN_LIFETIME`].
pub(super) async fn generate_jwt_token(tokens: web::Data<TestTokens>) -> HttpResponse {
    match tokens.token(TEST_USER, TEST_TOKEN_LIFETIME) {
        Ok(token) => HttpResponse::Ok().content_type("text/plain").body(token),
        Err(error) => HttpResponse::build(StatusCode::INTERNAL_SERVER_ERROR)
            .content_type("text/plain")
            .body(format!("could not sign a token: {error}")),
    }
}

/// Sets the cookies the cookie tests look for on every negotiate (one of them already expired). Over HTTPS they are
/// `SameSite=None; Secure; Partitioned`, as upstream's server sets them, so that a browser page on another site
/// still sends them back.
pub(super) async fn negotiate_cookies(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let is_negotiate = request.path().contains("/negotiate");
    let is_https = is_negotiate && request.app_data::<web::Data<Https>>().is_some_and(|https| https.0);
    let mut response = next.call(request).await?;
    if is_negotiate {
        let expired = Cookie::build("expiredCookie", "doesntmatter")
            .path("/")
            .expires(OffsetDateTime::UNIX_EPOCH)
            .finish();
        for mut cookie in [
            Cookie::build("testCookie", "testValue").path("/").finish(),
            Cookie::build("testCookie2", "testValue2").path("/").finish(),
            expired,
        ] {
            if !is_https {
                response.response_mut().add_cookie(&cookie)?;
                continue;
            }
            cookie.set_secure(true);
            cookie.set_same_site(SameSite::None);
            // The cookie crate of actix-web 4 predates the Partitioned attribute (CHIPS); it is appended by hand.
            let value = header::HeaderValue::from_str(&format!("{cookie}; Partitioned"))
                .map_err(actix_web::error::ErrorInternalServerError)?;
            response.response_mut().headers_mut().append(header::SET_COOKIE, value);
        }
    }
    Ok(response)
}

/// Whether the listener a request came in on is the HTTPS one.
pub(super) struct Https(pub(super) bool);
