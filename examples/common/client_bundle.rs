//! `GET /lib/signalr.js`: the official browser build of `@microsoft/signalr`, served by the node itself (no CDN),
//! for the examples' pages. It is read from the npm package under this repository's `tests/node/node_modules`
//! (`npm ci` in `tests/node` installs it), or from the `node_modules` directory `EXAMPLE_NODE_MODULES` names.

use std::path::PathBuf;

use actix_web::{web, HttpResponse};

/// Where the official client's npm package is installed.
fn node_modules() -> PathBuf {
    match std::env::var_os("EXAMPLE_NODE_MODULES") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node/node_modules"),
    }
}

async fn signalr_js() -> HttpResponse {
    let path = node_modules().join("@microsoft/signalr/dist/browser/signalr.js");
    match web::block(move || std::fs::read(path)).await {
        Ok(Ok(bytes)) => HttpResponse::Ok().content_type("text/javascript").body(bytes),
        _ => HttpResponse::NotFound()
            .content_type("text/plain")
            .body("@microsoft/signalr is not installed: run `npm ci` in tests/node, or set EXAMPLE_NODE_MODULES"),
    }
}

/// Mounts `GET /lib/signalr.js`.
pub fn mount(config: &mut web::ServiceConfig) {
    config.route("/lib/signalr.js", web::get().to(signalr_js));
}
