//! The SDK's HTTP transport, made strict: the SDK reads any response body as JSON
//! whatever its status, so a rejected token surfaces as "missing field `version`".
//! Here a status outside 2xx is an error that says what happened, and every request
//! is bounded in time (the SDK's client has no timeout).

use std::time::Duration;

use unleash_api_client::http::{Request, Response, Transport, TransportRef};

pub(crate) struct CheckedTransport {
    inner: TransportRef,
    timeout: Duration,
}

impl CheckedTransport {
    pub(crate) fn new(inner: TransportRef, timeout: Duration) -> Self {
        Self { inner, timeout }
    }
}

// The SDK declares the trait with `async_trait`, so the impl uses it too.
#[async_trait::async_trait]
impl Transport for CheckedTransport {
    async fn execute(&self, request: Request) -> Result<Response, anyhow::Error> {
        let url = request.url.clone();
        let response = match tokio::time::timeout(self.timeout, self.inner.execute(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                // reqwest's message names the URL already.
                let text = format!("{error:#}");
                if text.contains(&url) {
                    anyhow::bail!(text)
                }
                anyhow::bail!("request to {url} failed: {text}")
            }
            Err(_) => anyhow::bail!("request to {url} timed out after {:?}", self.timeout),
        };
        if (200..300).contains(&response.status) {
            return Ok(response);
        }
        Err(anyhow::anyhow!(status_error(
            response.status,
            &url,
            &response.body
        )))
    }
}

/// What a response outside 2xx means, with the start of its body.
pub(crate) fn status_error(status: u16, url: &str, body: &[u8]) -> String {
    let reason = match status {
        401 => " Unauthorized (flags.unleash.client_token is missing or not a valid client token)",
        403 => " Forbidden (flags.unleash.client_token may not read this project or environment)",
        404 => " Not Found (is flags.unleash.url the API base, ending in /api/?)",
        429 => " Too Many Requests",
        500..=599 => " (Unleash server error)",
        _ => "",
    };
    let body = String::from_utf8_lossy(body);
    let body: String = body.trim().chars().take(200).collect();
    if body.is_empty() {
        format!("HTTP {status}{reason} from {url}")
    } else {
        format!("HTTP {status}{reason} from {url}: {body}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejected_token_says_so() {
        let text = status_error(
            401,
            "http://u/api/client/features",
            br#"{"message":"This endpoint requires an API token."}"#,
        );
        assert!(
            text.starts_with("HTTP 401 Unauthorized (flags.unleash.client_token"),
            "{text}"
        );
        assert!(
            text.ends_with(r#"{"message":"This endpoint requires an API token."}"#),
            "{text}"
        );
        assert_eq!(
            status_error(502, "u", b""),
            "HTTP 502 (Unleash server error) from u"
        );
    }
}
