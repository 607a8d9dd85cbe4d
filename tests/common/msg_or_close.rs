//! The next `msg` call or Close message a test client gets: for tests that check a connection is either given a
//! message or told it was cut off, never left with a silent gap.

use std::error::Error;
use std::time::Duration;

use hubmesh::testing::TestClient;
use serde_json::{json, Value};
use tokio::time::Instant;

/// The next record that is a `msg` call or a Close message, within `limit`.
pub async fn next_msg_or_close(
    client: &mut TestClient,
    limit: Duration,
) -> Result<Option<Value>, Box<dyn Error + Send + Sync>> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(record) = client.record_within(left).await? else {
            return Ok(None);
        };
        let value = record.value;
        if value["type"] == json!(7) || (value["type"] == json!(1) && value["target"] == json!("msg")) {
            return Ok(Some(value));
        }
    }
}
