//! The live page, `GET /_hubmesh/`: a small page that polls the node's status report (`GET /_hubmesh/status`) and
//! shows the cluster as the node sees it: nodes and their state (a node that dies shows as dead), connections
//! and deliveries per second per node as small charts, and recent membership events (derived in the page from the
//! changes between polls). Plain HTML, CSS and JavaScript in `live/`, built into the binary with `include_str!`:
//! no build step, nothing loaded from elsewhere. Serves the files only; reads nothing of the node.

use actix_web::HttpResponse;

/// The page's path (as normalized: `/_hubmesh/` and `/_hubmesh` both come here).
pub const LIVE_PATH: &str = "/_hubmesh";

const INDEX: &str = include_str!("live/index.html");
const SCRIPT: &str = include_str!("live/live.js");
const STYLE: &str = include_str!("live/live.css");

/// The answer for one of the page's paths (already normalized), or `None` for any other path.
pub(super) fn answer(path: &str) -> Option<HttpResponse> {
    let (body, content_type) = match path.strip_prefix(LIVE_PATH)? {
        "" | "/index.html" => (INDEX, "text/html; charset=utf-8"),
        "/live.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/live.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return None,
    };
    Some(
        HttpResponse::Ok()
            .content_type(content_type)
            .insert_header(("Cache-Control", "no-cache"))
            .body(body),
    )
}

#[cfg(test)]
mod tests {
    use super::answer;

    #[test]
    fn the_page_and_its_files_are_served_and_nothing_else() {
        for path in ["/_hubmesh", "/_hubmesh/index.html", "/_hubmesh/live.js", "/_hubmesh/live.css"] {
            assert!(answer(path).is_some_and(|response| response.status() == 200), "{path}");
        }
        for path in ["/_hubmesh/status", "/_hubmesh/other.js", "/_hubmeshx", "/"] {
            assert!(answer(path).is_none(), "{path}");
        }
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        // The one absolute URL is the SVG namespace, which is a name, not a download.
        for file in [super::INDEX, super::SCRIPT, super::STYLE] {
            for (at, _) in file.match_indices("//") {
                let before = &file[..at];
                let is_comment = before.rsplit('\n').next().is_some_and(|line| line.trim().is_empty());
                let is_svg_namespace = before.ends_with("http:") && file[at..].starts_with("//www.w3.org/2000/svg");
                assert!(
                    is_comment || is_svg_namespace,
                    "an absolute URL at {at}: {}",
                    file[at..].lines().next().unwrap_or_default()
                );
            }
        }
    }
}
