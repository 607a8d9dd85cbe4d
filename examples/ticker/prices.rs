//! The ticker's hub and its price feed, apart from `main.rs` so that `tests/examples_ticker.rs` runs the same code
//! in an in-process cluster.
//!
//! Clients call `Subscribe(symbol)` and `Unsubscribe(symbol)`; a symbol is a group. The feed runs on a backend node
//! that serves no clients and sends each price to its symbol's group through the hub's [`HubContext`]: the cluster
//! delivers it to the subscribers on every node, in the order the feed sent it.

use std::time::Duration;

use hubmesh::{Caller, CancellationToken, Hub, HubContext, HubError};

/// The client method prices arrive with: `(symbol, sequence, price)`; per symbol, `sequence` counts up from 1.
pub const PRICE: &str = "price";

/// The symbols the feed quotes, with their opening prices.
pub const SYMBOLS: [(&str, f64); 4] = [
    ("ACME", 120.0),
    ("GLOBEX", 48.5),
    ("INITECH", 9.75),
    ("UMBRELLA", 310.0),
];

/// The group of a symbol's subscribers.
pub fn group_of(symbol: &str) -> String {
    format!("ticker:{symbol}")
}

fn known(symbol: &str) -> Result<(), HubError> {
    if SYMBOLS.iter().any(|(known, _)| *known == symbol) {
        Ok(())
    } else {
        Err(HubError::hub(format!("unknown symbol {symbol:?}")))
    }
}

/// `Subscribe(symbol)`: the caller receives the symbol's prices from now on.
async fn subscribe(caller: Caller, symbol: String) -> Result<(), HubError> {
    known(&symbol)?;
    caller.groups().add(caller.connection_id(), &group_of(&symbol)).await
}

/// `Unsubscribe(symbol)`: no more of the symbol's prices.
async fn unsubscribe(caller: Caller, symbol: String) -> Result<(), HubError> {
    known(&symbol)?;
    caller.groups().remove(caller.connection_id(), &group_of(&symbol)).await
}

/// The ticker hub, at `/ticker`, served by the front nodes.
pub fn ticker_hub() -> Hub {
    Hub::new("ticker")
        .path("/ticker")
        .method("Subscribe", subscribe)
        .method("Unsubscribe", unsubscribe)
}

/// Sends a price of every symbol to its group each `interval` until `stop` is cancelled; prices take small
/// random steps. Returns how many rounds it sent.
pub async fn push_prices(context: HubContext, interval: Duration, stop: CancellationToken) -> u64 {
    let mut prices: Vec<(&str, f64)> = SYMBOLS.to_vec();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sequence = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return sequence,
            _ = ticks.tick() => {}
        }
        sequence += 1;
        for (symbol, price) in &mut prices {
            let step = 1.0 + (rand::random::<f64>() - 0.5) / 50.0;
            *price = (*price * step * 100.0).round() / 100.0;
            // A send fails only when the node is stopping; the feed then stops with it.
            if context
                .clients()
                .group(&group_of(symbol))
                .send(PRICE, (symbol.to_string(), sequence, *price))
                .is_err()
            {
                return sequence;
            }
        }
    }
}
