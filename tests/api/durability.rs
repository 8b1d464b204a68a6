//! What the origin acknowledged survives the node.

use serde_json::json;

use crate::helpers::{spawn_app, Client, Store};

#[actix_web::test]
async fn a_write_acknowledged_before_a_restart_is_there_after_it() {
    let store = Store::new();
    let app = spawn_app(&store, "");
    let mut user = Client::new();
    let written = user
        .put(
            &app,
            "/v1/carts/c1",
            json!({"items": [{"sku": "p1", "qty": 2}], "total": 25.0}),
        )
        .await;
    assert_eq!(written.status, 201);
    app.stop().await;

    let restarted = spawn_app(&store, "");
    let read = Client::new().get(&restarted, "/v1/carts/c1").await;
    assert_eq!(read.status, 200);
    assert_eq!(read.body["items"][0]["qty"], 2);
    assert_eq!(read.version(), written.version());
    // The session's token is still good on the restarted node.
    assert_eq!(user.get(&restarted, "/v1/carts/c1").await.body["total"], 25.0);
}

#[actix_web::test]
async fn concurrent_increments_lose_nothing_and_never_cross_the_bound() {
    let store = Store::new();
    let a = spawn_app(&store, "");
    let b = spawn_app(&store, "");
    // p3 starts with 3 in stock; 20 buyers race for it through two nodes.
    let buyers = (0..20).map(|i| {
        let node = if i % 2 == 0 { &a } else { &b };
        async move {
            Client::new()
                .increment(
                    node,
                    "/v1/products/p3",
                    json!({"field": "stock", "by": -1, "min": 0}),
                )
                .await
                .status
                .as_u16()
        }
    });
    let statuses = futures_util::future::join_all(buyers).await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 17, "{statuses:?}");
    assert_eq!(Client::new().get(&a, "/v1/products/p3").await.body["stock"], 0);
}
