//! Admission: whether a node takes a new connection or negotiate, before any hub work is done for it.
//!
//! Two bounds a hostile client cannot get around by opening more requests: the connections a node holds
//! ([`Limits::max_connections`]: negotiates and new WebSocket and SSE transports get 503 above it) and the
//! negotiates per second per client address ([`Limits::negotiates_per_second`]: 429 above it; a WebSocket that
//! skips negotiation counts as a negotiate). The rate table is
//! itself bounded ([`Limits::rate_tracked_addresses`]); when full it drops addresses whose window has passed, then
//! the one with the oldest window. Each refusal is counted in [`crate::BoundsHit`].
//!
//! Calls the limits and the hub layer's query parsing; used by the node's routing (`super::http`) and its upgrade hook (`super::server`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use parking_lot::Mutex;

use crate::connection::Limits;

/// The window [`Limits::negotiates_per_second`] counts in.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// A node's admission state: the negotiate rate of each client address seen in the last second.
#[derive(Debug, Default)]
pub(crate) struct Admission {
    rates: Mutex<HashMap<IpAddr, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    count: u32,
}

impl Admission {
    /// 503 if the node already holds [`Limits::max_connections`] connections.
    pub(crate) fn refuse_connection(&self, limits: &Limits) -> Option<HttpResponse> {
        let open = usize::try_from(limits.counters.open_total()).unwrap_or(0);
        if open < limits.max_connections {
            return None;
        }
        limits.bounds_hit.connections.fetch_add(1, Ordering::Relaxed);
        Some(
            HttpResponse::build(StatusCode::SERVICE_UNAVAILABLE)
                .content_type("text/plain")
                .insert_header(("Retry-After", "1"))
                .body(format!(
                    "This node holds its maximum of {} connections; try another node or later.",
                    limits.max_connections
                )),
        )
    }

    /// 429 if `peer` already negotiated [`Limits::negotiates_per_second`] times in its current window, else 503 if
    /// the node is full ([`Admission::refuse_connection`]). A request without a peer address (not over TCP) is
    /// not rate limited.
    pub(crate) fn refuse_negotiate(&self, limits: &Limits, peer: Option<IpAddr>) -> Option<HttpResponse> {
        if let Some(refusal) = self.refuse_connection(limits) {
            return Some(refusal);
        }
        let peer = peer?;
        if limits.negotiates_per_second == 0 || self.admit(limits, peer, Instant::now()) {
            return None;
        }
        limits.bounds_hit.negotiate_rate.fetch_add(1, Ordering::Relaxed);
        Some(
            HttpResponse::build(StatusCode::TOO_MANY_REQUESTS)
                .content_type("text/plain")
                .insert_header(("Retry-After", "1"))
                .body(format!(
                    "More than {} negotiates per second from this address.",
                    limits.negotiates_per_second
                )),
        )
    }

    /// The refusal of a new WebSocket, if any: one with a negotiated token (`?id=`) only needs room on the node;
    /// one that skips negotiation counts as a negotiate of its address ([`Admission::refuse_negotiate`]), so that
    /// skipping it does not get around the rate.
    pub(crate) fn refuse_websocket(&self, limits: &Limits, head: &actix_http::RequestHead) -> Option<HttpResponse> {
        let negotiated = crate::hub::url_query_value(head.uri.query().unwrap_or_default(), "id").is_some();
        if negotiated {
            self.refuse_connection(limits)
        } else {
            self.refuse_negotiate(limits, head.peer_addr.map(|peer| peer.ip()))
        }
    }

    /// Counts a negotiate of `peer` at `now`; whether it is within the rate.
    fn admit(&self, limits: &Limits, peer: IpAddr, now: Instant) -> bool {
        let mut rates = self.rates.lock();
        if !rates.contains_key(&peer) && rates.len() >= limits.rate_tracked_addresses.max(1) {
            rates.retain(|_, window| now.duration_since(window.start) < RATE_WINDOW);
            if rates.len() >= limits.rate_tracked_addresses.max(1) {
                let oldest = rates.iter().min_by_key(|(_, window)| window.start).map(|(address, _)| *address);
                if let Some(oldest) = oldest {
                    rates.remove(&oldest);
                    limits.bounds_hit.rate_addresses.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let window = rates.entry(peer).or_insert(Window { start: now, count: 0 });
        if now.duration_since(window.start) >= RATE_WINDOW {
            *window = Window { start: now, count: 0 };
        }
        window.count = window.count.saturating_add(1);
        window.count <= limits.negotiates_per_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn each_address_gets_its_rate_per_window() {
        let limits = Limits {
            negotiates_per_second: 3,
            ..Limits::default()
        };
        let admission = Admission::default();
        let start = Instant::now();
        let admitted = (0..5).filter(|_| admission.admit(&limits, address(1), start)).count();
        assert_eq!(admitted, 3);
        assert!(admission.admit(&limits, address(2), start));
        assert!(admission.admit(&limits, address(1), start + RATE_WINDOW));
    }

    #[test]
    fn the_table_stays_within_its_bound_and_drops_the_oldest() {
        let limits = Limits {
            negotiates_per_second: 1,
            rate_tracked_addresses: 4,
            ..Limits::default()
        };
        let admission = Admission::default();
        let start = Instant::now();
        for (step, last) in (1..=10u8).enumerate() {
            let now = start + Duration::from_millis(u64::try_from(step).unwrap_or(0));
            assert!(admission.admit(&limits, address(last), now));
            assert!(admission.rates.lock().len() <= 4);
        }
        assert_eq!(limits.bounds_hit.rate_addresses.load(Ordering::Relaxed), 6);
        // The newest addresses are still counted; the oldest start again.
        assert!(!admission.admit(&limits, address(10), start + Duration::from_millis(9)));
        assert!(admission.admit(&limits, address(1), start + Duration::from_millis(10)));
    }
}
