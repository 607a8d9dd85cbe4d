//! The official client's bundles as static files, where upstream's test app serves them from its `wwwroot`:
//! `/lib/signalr/<file>` the browser builds of `@microsoft/signalr` and `@microsoft/signalr-protocol-msgpack`
//! (`dist/browser/`), `/lib/signalr-webworker/<file>` the web-worker build (`@microsoft/signalr/dist/webworker/`),
//! which upstream's Web Worker test loads with `importScripts` from the hub's own origin.
//!
//! The files are read at request time from the npm packages `tests/common/npm.rs` installs under
//! `tests/node/node_modules` (or the directory `HUBMESH_TESTHUB_NODE_MODULES` names): nothing of them is kept in
//! the repository. Only plain file names with an extension upstream's static-file middleware knows (`.js`, `.map`)
//! are served; anything else is a 404, as there.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

/// The environment variable that overrides where the npm packages are.
pub const NODE_MODULES_ENV: &str = "HUBMESH_TESTHUB_NODE_MODULES";

/// Where the installed npm packages are: `HUBMESH_TESTHUB_NODE_MODULES`, else this checkout's `tests/node/node_modules`.
pub(super) fn node_modules() -> PathBuf {
    match std::env::var_os(NODE_MODULES_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests")
            .join("node")
            .join("node_modules"),
    }
}

/// The directories, under the npm packages, that a URL folder of upstream's `wwwroot/lib` was copied from.
fn sources(folder: &str) -> &'static [&'static str] {
    match folder {
        "signalr" => &[
            "@microsoft/signalr/dist/browser",
            "@microsoft/signalr-protocol-msgpack/dist/browser",
        ],
        "signalr-webworker" => &["@microsoft/signalr/dist/webworker"],
        _ => &[],
    }
}

/// The content type ASP.NET's static files give a name, `None` for a type they do not serve.
fn content_type(name: &str) -> Option<&'static str> {
    match name.rsplit_once('.')?.1.to_ascii_lowercase().as_str() {
        "js" => Some("text/javascript"),
        "map" => Some("text/plain"),
        _ => None,
    }
}

/// A name that stays inside its folder: no separators, no leading dot.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'-' | b'_'))
}

/// The bytes and modification time of the first source of `folder` that holds `name`.
fn read_bundle(modules: &Path, folder: &str, name: &str) -> Option<(Vec<u8>, Option<SystemTime>)> {
    sources(folder).iter().find_map(|source| {
        let path = modules.join(source).join(name);
        let bytes = std::fs::read(&path).ok()?;
        let modified = std::fs::metadata(&path).and_then(|meta| meta.modified()).ok();
        Some((bytes, modified))
    })
}

fn not_found() -> HttpResponse {
    HttpResponse::NotFound().finish()
}

/// `GET`/`HEAD /lib/{folder}/{name}`: a bundle file, with `Last-Modified` and a weak `ETag`; a matching
/// `If-None-Match` gets 304.
pub(super) async fn bundle(request: HttpRequest, path: web::Path<(String, String)>) -> HttpResponse {
    let (folder, name) = path.into_inner();
    let Some(content_type) = content_type(&name).filter(|_| plain_name(&name)) else {
        return not_found();
    };
    let modules = node_modules();
    let read = web::block(move || read_bundle(&modules, &folder, &name)).await;
    let Ok(Some((bytes, modified))) = read else {
        return not_found();
    };
    let stamp = modified
        .and_then(|time| time.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|since| since.as_secs())
        .unwrap_or(0);
    let etag = format!("W/\"{:x}-{stamp:x}\"", bytes.len());
    let matches = request
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.split(',').any(|tag| tag.trim() == etag || tag.trim() == "*"));
    let mut response = if matches {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response.insert_header((header::ETAG, etag));
    if let Some(modified) = modified {
        response.insert_header((header::LAST_MODIFIED, header::HttpDate::from(modified)));
    }
    if matches {
        return response.finish();
    }
    response.content_type(content_type).body(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_of_known_types_are_served() {
        assert_eq!(content_type("signalr.js"), Some("text/javascript"));
        assert_eq!(content_type("signalr.min.js.map"), Some("text/plain"));
        assert_eq!(content_type("package.json"), None);
        assert_eq!(content_type("README"), None);
        assert!(plain_name("signalr-protocol-msgpack.min.js"));
        assert!(!plain_name("..%2Fpackage.json"));
        assert!(!plain_name(".hidden.js"));
        assert!(!plain_name("a/b.js"));
        assert!(sources("esm").is_empty());
    }
}
