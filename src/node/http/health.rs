//! The probe and report routes: `GET /healthz` (200 while the node serves HTTP), `GET /readyz` (200 when the
//! node is ready, else 503 with the reasons; the rule is `super::super::readiness`) and `GET /_hubmesh/status`
//! (the node's [`StatusReport`]), and `GET /metrics` (the node's figures for Prometheus, `super::super::metrics`).
//! Bodies are JSON but for the metrics' OpenMetrics text; nothing here changes the node.

use actix_web::http::StatusCode;
use actix_web::HttpResponse;

use super::super::metrics::{self, METRICS_PATH};
use super::super::status::{report, STATUS_PATH};
use super::super::Node;
#[cfg(doc)]
use super::super::status::StatusReport;

/// The liveness probe's path: 200 while the process serves.
const HEALTH_PATH: &str = "/healthz";
/// The readiness probe's path: 200 when ready, 503 otherwise.
const READY_PATH: &str = "/readyz";

/// The answer for a probe or report path (already normalized), or `None` for any other path.
pub(super) async fn answer(node: &Node, path: &str) -> Option<HttpResponse> {
    match path {
        HEALTH_PATH => Some(HttpResponse::Ok().json(serde_json::json!({ "node": node.name(), "ok": true }))),
        READY_PATH => {
            let readiness = node.readiness().await;
            let status = if readiness.is_ready() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            Some(HttpResponse::build(status).json(serde_json::json!({
                "node": node.name(),
                "ready": readiness.is_ready(),
                "status": readiness.status.as_str(),
                "reasons": readiness.reasons,
            })))
        }
        STATUS_PATH => Some(HttpResponse::Ok().json(report(node).await)),
        METRICS_PATH => Some(metrics::answer(node).await),
        _ => super::live::answer(path),
    }
}

#[cfg(test)]
mod tests {
    use actix_web::test::{call_service, init_service, read_body_json, TestRequest};
    use actix_web::App;

    use crate::cluster::NodeStatus;
    use crate::hub::Hub;
    use crate::node::Node;

    async fn get(node: &Node, path: &str) -> (u16, serde_json::Value) {
        let app_node = node.clone();
        let app = init_service(App::new().configure(move |config| app_node.configure(config))).await;
        let response = call_service(&app, TestRequest::get().uri(path).to_request()).await;
        let status = response.status().as_u16();
        (status, read_body_json(response).await)
    }

    #[actix_web::test]
    async fn a_single_node_is_ready_while_serving_and_not_once_draining() -> Result<(), crate::node::NodeError> {
        let node = Node::builder().name("solo").hub(Hub::new("chat")).build()?;
        let (status, body) = get(&node, "/healthz").await;
        assert_eq!((status, &body["node"]), (200, &serde_json::json!("solo")));
        let (status, body) = get(&node, "/readyz").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["ready"], true);

        node.set_lifecycle_status(NodeStatus::Draining);
        let (status, body) = get(&node, "/readyz").await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["status"], "draining");
        let (status, _) = get(&node, "/healthz").await;
        assert_eq!(status, 200, "a draining node still serves");
        Ok(())
    }

    #[actix_web::test]
    async fn a_node_that_has_not_joined_is_not_ready() -> Result<(), crate::node::NodeError> {
        let node = Node::builder().name("early").hub(Hub::new("chat")).build()?;
        node.set_lifecycle_status(NodeStatus::Joining);
        let (status, body) = get(&node, "/readyz").await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["ready"], false);
        assert!(body["reasons"][0].as_str().is_some_and(|reason| reason.starts_with("joining")), "{body}");
        Ok(())
    }

    #[actix_web::test]
    async fn the_status_report_of_a_single_node_lists_it_with_its_hubs() -> Result<(), crate::node::NodeError> {
        let node = Node::builder().name("solo").hub(Hub::new("chat")).build()?;
        let (status, body) = get(&node, "/_hubmesh/status").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["node"], "solo");
        assert_eq!(body["clustered"], false);
        assert_eq!(body["members"][0]["name"], "solo");
        assert_eq!(body["hubs"][0]["name"], "chat");
        assert_eq!(body["hubs"][0]["connections"], 0);
        Ok(())
    }
}
