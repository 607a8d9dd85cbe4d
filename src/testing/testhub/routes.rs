//! The test server's plain HTTP routes besides the hubs, `/echo` and the client bundles: `/clientresult/{id}`,
//! `/generateJwtToken`, `/deployment`, and the middleware of upstream's app (`Startup.cs`) that answers
//! `/echoredirect…`, `/redirect…` and `/bad-negotiate…` before any route and sets the cookie tests' cookies on every
//! negotiate.

use std::sync::atomic::{AtomicU64, Ordering};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::cookie::time::OffsetDateTime;
use actix_web::cookie::{Cookie, SameSite};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};

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
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(answer)
}

/// The middleware of upstream's app, in its order, for every request that is not a preflight (the CORS layer
/// outside answers those): any other `OPTIONS` gets 204; a path under `/echoredirect` a 307 to its `/echo`
/// equivalent; a path under `/redirect` the redirect negotiate; a path under `/bad-negotiate` a 400. Any path with
/// `/negotiate` in it gets the cookie tests' cookies, except those the two redirects answered (upstream sets them in
/// a later middleware).
pub(super) async fn upstream_middleware(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if request.method() == Method::OPTIONS {
        return Ok(request.into_response(HttpResponse::NoContent().finish()));
    }
    let path = request.path();
    if starts_with_segment(path, "/echoredirect") {
        let response = echo_redirect(path, request.query_string());
        return Ok(request.into_response(response));
    }
    if starts_with_segment(path, "/redirect") {
        let response = redirect(&request);
        return Ok(request.into_response(response));
    }
    let is_negotiate = path.contains("/negotiate");
    let is_https = is_negotiate && request.app_data::<web::Data<Https>>().is_some_and(|https| https.0);
    let mut response = if starts_with_segment(path, "/bad-negotiate") {
        request.into_response(bad_negotiate())
    } else {
        next.call(request).await?.map_into_boxed_body()
    };
    if is_negotiate {
        set_negotiate_cookies(response.response_mut(), is_https)?;
    }
    Ok(response)
}

/// Whether `path` is `prefix` or below it, ignoring ASCII case (ASP.NET's `PathString.StartsWithSegments`).
fn starts_with_segment(path: &str, prefix: &str) -> bool {
    let (path, prefix) = (path.as_bytes(), prefix.as_bytes());
    path.len() >= prefix.len()
        && path[..prefix.len()].eq_ignore_ascii_case(prefix)
        && matches!(path.get(prefix.len()), None | Some(b'/'))
}

/// A path under `/echoredirect`: 307 (method and body kept) to the same path with `echoredirect` made `echo`, query
/// kept, so a negotiate, poll or POST there reaches `/echo`.
fn echo_redirect(path: &str, query: &str) -> HttpResponse {
    let mut location = path.replace("echoredirect", "echo");
    if !query.is_empty() {
        location.push('?');
        location.push_str(query);
    }
    HttpResponse::TemporaryRedirect()
        .insert_header((header::LOCATION, location))
        .finish()
}

/// A path under `/redirect`: a negotiate answer that points the client at `/testHub` with a redirect count, as
/// upstream's (JSON without a content type, any method).
fn redirect(request: &ServiceRequest) -> HttpResponse {
    let base_url = crate::hub::url_query_value(request.query_string(), "baseUrl").unwrap_or_default();
    let count = request
        .app_data::<web::Data<RedirectCounter>>()
        .map_or(0, |counter| counter.0.fetch_add(1, Ordering::Relaxed) + 1);
    let answer = serde_json::json!({ "url": format!("{base_url}/testHub?numRedirects={count}") });
    HttpResponse::Ok().body(answer.to_string())
}

pub(super) struct RedirectCounter(pub(super) AtomicU64);

impl RedirectCounter {
    /// A counter from 0, shareable between the servers of a cluster.
    pub(super) fn shared() -> web::Data<RedirectCounter> {
        web::Data::new(RedirectCounter(AtomicU64::new(0)))
    }
}

/// A path under `/bad-negotiate`: 400 with a plain-text body, as upstream's, so a client's negotiate fails with
/// "Some response from server" and the status code.
fn bad_negotiate() -> HttpResponse {
    HttpResponse::BadRequest().body("Some response from server")
}

/// `GET /generateJwtToken`: a raw JWT for user `testuser`, valid for [`TEST_TOKEN_LIFETIME`] (no content type, as
/// upstream writes it).
pub(super) async fn generate_jwt_token(tokens: web::Data<TestTokens>) -> HttpResponse {
    match tokens.token(TEST_USER, TEST_TOKEN_LIFETIME) {
        Ok(token) => HttpResponse::Ok().body(token),
        Err(error) => HttpResponse::build(StatusCode::INTERNAL_SERVER_ERROR)
            .content_type("text/plain")
            .body(format!("could not sign a token: {error}")),
    }
}

/// `GET /deployment`: what is deployed, as a JSON object (upstream lists its assembly's metadata; this is
/// hubmesh's package name, version and repository).
pub(super) async fn deployment() -> HttpResponse {
    let mut about = serde_json::Map::new();
    about.insert("Product".into(), env!("CARGO_PKG_NAME").into());
    about.insert("Version".into(), env!("CARGO_PKG_VERSION").into());
    let repository = env!("CARGO_PKG_REPOSITORY");
    if !repository.is_empty() {
        about.insert("RepositoryUrl".into(), repository.into());
    }
    HttpResponse::Ok().json(about)
}

/// Sets the cookies the cookie tests look for (one of them already expired). Over HTTPS they are
/// `SameSite=None; Secure; Partitioned`, as upstream's server sets them, so that a browser page on another site
/// still sends them back.
fn set_negotiate_cookies(response: &mut HttpResponse, is_https: bool) -> Result<(), actix_web::Error> {
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
            response.add_cookie(&cookie)?;
            continue;
        }
        cookie.set_secure(true);
        cookie.set_same_site(SameSite::None);
        // The cookie crate of actix-web 4 predates the Partitioned attribute (CHIPS); it is appended by hand.
        let value = header::HeaderValue::from_str(&format!("{cookie}; Partitioned"))
            .map_err(actix_web::error::ErrorInternalServerError)?;
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    Ok(())
}

/// Whether the listener a request came in on is the HTTPS one.
pub(super) struct Https(pub(super) bool);
