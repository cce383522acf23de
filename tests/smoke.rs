mod common;

use common::*;
use nostr::prelude::*;
use serde_json::json;

#[tokio::test]
async fn publish_then_query_over_a_real_socket() {
    let relay = TestRelay::start().await;
    let mut client = relay.client().await;
    let keys = Keys::generate();
    let event = note(&keys, "hello");
    assert_eq!(client.publish(&event).await, (true, String::new()));
    assert_eq!(
        client.publish(&event).await,
        (true, "duplicate: already have this event".to_owned())
    );
    let events = client
        .req("s", vec![json!({"authors": [keys.public_key().to_hex()]})])
        .await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0], to_value(&event));
}
