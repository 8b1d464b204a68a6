//! The Unleash admin API, as the tests drive it: create a flag with one
//! flexibleRollout strategy, switch it, and wait until the client API serves it.
//! Shared by the flags crate's tests and the node's (`tests/api`).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub struct Admin {
    http: reqwest::Client,
    base: String,
    token: String,
    client_token: String,
}

impl Admin {
    pub fn new(url: &str, admin_token: &str, client_token: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: url.trim_end_matches('/').to_owned(),
            token: admin_token.to_owned(),
            client_token: client_token.to_owned(),
        }
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .request(
                method.clone(),
                format!("{}/admin/projects/default/features{path}", self.base),
            )
            .header("authorization", &self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("admin API request");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Makes `flag` exist, in `development`, with exactly one flexibleRollout strategy
    /// (sticky on the session id, group id = the flag name, as Unleash's UI sets it),
    /// and switches the environment on or off.
    pub async fn rollout(&self, flag: &str, percent: u8, variants: &[&str], on: bool) {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "",
                Some(json!({ "name": flag, "type": "release" })),
            )
            .await;
        assert!(status == 201 || status == 409, "creating {flag}: {status} {body}");
        let env_path = format!("/{flag}/environments/development");
        let (status, feature) = self.call(reqwest::Method::GET, &format!("/{flag}"), None).await;
        assert_eq!(status, 200, "reading {flag}: {feature}");
        for env in feature["environments"].as_array().unwrap() {
            if env["name"] != "development" {
                continue;
            }
            for strategy in env["strategies"].as_array().unwrap() {
                let id = strategy["id"].as_str().unwrap();
                let (status, body) = self
                    .call(
                        reqwest::Method::DELETE,
                        &format!("{env_path}/strategies/{id}"),
                        None,
                    )
                    .await;
                assert_eq!(status, 200, "deleting a strategy of {flag}: {body}");
            }
        }
        let weight = 1000 / variants.len().max(1);
        let variants: Vec<Value> = variants
            .iter()
            .map(|name| json!({ "name": name, "weight": weight, "weightType": "variable", "stickiness": "sessionId" }))
            .collect();
        let strategy = json!({
            "name": "flexibleRollout",
            "constraints": [],
            "parameters": { "rollout": percent.to_string(), "stickiness": "sessionId", "groupId": flag },
            "variants": variants,
        });
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                &format!("{env_path}/strategies"),
                Some(strategy),
            )
            .await;
        assert_eq!(status, 200, "adding the strategy of {flag}: {body}");
        self.switch(flag, on).await;
    }

    pub async fn switch(&self, flag: &str, on: bool) {
        let path = format!(
            "/{flag}/environments/development/{}",
            if on { "on" } else { "off" }
        );
        let (status, body) = self.call(reqwest::Method::POST, &path, None).await;
        assert_eq!(status, 200, "switching {flag}: {body}");
    }

    /// The client API's document, as a node would fetch it.
    pub async fn client_features(&self) -> Value {
        let response = self
            .http
            .get(format!("{}/client/features", self.base))
            .header("authorization", &self.client_token)
            .send()
            .await
            .expect("client API request");
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// Waits until the client API serves `flag` as `enabled` with a strategy at
    /// `rollout` percent (it caches by revision: about a second after a change).
    pub async fn served(&self, flag: &str, enabled: bool, rollout: u8) -> Value {
        let start = Instant::now();
        loop {
            let doc = self.client_features().await;
            let served = doc["features"].as_array().unwrap().iter().any(|f| {
                f["name"] == flag
                    && f["enabled"] == enabled
                    && f["strategies"].as_array().is_some_and(|s| {
                        s.len() == 1
                            && s[0]["parameters"]["rollout"]
                                .as_str()
                                .and_then(|r| r.parse().ok())
                                == Some(rollout)
                    })
            });
            if served {
                return doc;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "the client API did not serve {flag} (enabled {enabled}, {rollout}%) within 15 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
