//! A small HTTP client for the admin listener's tests (ureq, on a blocking thread).

use std::time::Duration;

/// Bound on one HTTP exchange.
pub const HTTP_WAIT_MAX: Duration = Duration::from_secs(30);

/// One answer: status, content type, body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub allow: Option<String>,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|error| panic!("not JSON ({error}): {}", self.body))
    }
}

/// `method url`; an error status is an answer, not an error; a transport failure is `Err`.
pub async fn request(method: &'static str, url: String) -> Result<Answer, String> {
    tokio::task::spawn_blocking(move || {
        let config =
            ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(HTTP_WAIT_MAX)).build();
        let agent: ureq::Agent = config.into();
        let sent = match method {
            "GET" => agent.get(&url).call(),
            "HEAD" => agent.head(&url).call(),
            "POST" => agent.post(&url).send_empty(),
            "DELETE" => agent.delete(&url).call(),
            other => panic!("no such method in the tests: {other}"),
        };
        let mut response = sent.map_err(|error| format!("{method} {url}: {error}"))?;
        let header = |name: &str| response.headers().get(name).and_then(|value| value.to_str().ok()).map(str::to_owned);
        let (content_type, allow) = (header("content-type").unwrap_or_default(), header("allow"));
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string().map_err(|error| format!("{method} {url}: body: {error}"))?;
        Ok(Answer { status, content_type, allow, body })
    })
    .await
    .expect("the HTTP thread")
}

/// `GET url`, which must get an answer.
pub async fn get(url: String) -> Answer {
    request("GET", url).await.unwrap_or_else(|error| panic!("{error}"))
}

/// Polls `GET url` until it answers 200 (see `wait::wait_for`): a listener that comes up, a broker
/// that becomes ready.
pub async fn wait_ok(what: &str, url: String) {
    super::wait::wait_for(what, || {
        let url = url.clone();
        async move {
            let answer = request("GET", url).await?;
            (answer.status == 200).then_some(()).ok_or(format!("{} {}", answer.status, answer.body))
        }
    })
    .await;
}
