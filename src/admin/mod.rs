//! The admin HTTP listener (issue 14, ADR 0027): `--admin-listen ADDR` serves
//! - `GET /metrics`: every [`crate::metrics`] metric, OpenMetrics text (Prometheus scrapes it);
//! - `GET /healthz`: 200 while the process serves HTTP (liveness);
//! - `GET /readyz`: 200 once the broker knows a metadata leader, is registered with a current
//!   lease, runs every replica the metadata assigns it and has no replica whose storage failed; 503
//!   with the reasons otherwise, and from the moment it starts shutting down (readiness);
//! - `GET /v1/cluster`, `/v1/topics`, `/v1/topics/{topic}`, `/v1/groups`, `/v1/groups/{group}`:
//!   JSON, exactly what `keel cluster status --json`, `keel topic list|describe --json` and
//!   `keel group list|describe --json` print (the same functions build it, through a client of this
//!   broker, so partitions led elsewhere and groups coordinated elsewhere are asked of their owner);
//! - `GET /`: the web console (`console.html`, one self-contained page that polls the JSON above).
//!
//! Layering: this module sits with the CLI, above `server` (it reads the broker through
//! [`Observer`]) and `client`. It exists only in the normal build: hyper runs on the real tokio
//! runtime, and nothing the simulation checks goes through it (the metrics it renders are counted
//! by the same code in both builds).
//!
//! Bad input: an unknown path is a JSON 404, another method than GET (or HEAD) a 405 with `Allow`,
//! an unknown topic or group a 404 naming it, a broker that cannot answer a 503; at most
//! [`CONNECTIONS_MAX`] connections are served at once (more are closed at accept), and a client
//! must send its request head within [`HEADER_READ_TIMEOUT`].

mod http;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::client::{Client, ClientConfig, ClientError};
use crate::metrics::{BrokerView, GroupLag};
use crate::protocol::ErrorCode;
use crate::server::Observer;

pub use http::serve;

/// Admin connections served at once.
pub const CONNECTIONS_MAX: usize = 64;
/// How long a client has to send a request's head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one `/v1/...` answer or the scrape's group-lag refresh may take.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The web console: one page, no build step.
const CONSOLE_HTML: &str = include_str!("console.html");

/// What a request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Console,
    Metrics,
    Healthz,
    Readyz,
    Cluster,
    Topics,
    Topic(String),
    Groups,
    Group(String),
    NotFound,
    MethodNotAllowed,
}

/// The route of `method` and `path` (the path without its query; segments percent-decoded).
pub fn route(method: &str, path: &str) -> Route {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let segments: Vec<String> = path
        .split('/')
        .filter(|segment| !segment.is_empty())
        .map(|segment| percent_encoding::percent_decode_str(segment).decode_utf8_lossy().into_owned())
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let found = match segments.as_slice() {
        [] | ["console"] => Route::Console,
        ["metrics"] => Route::Metrics,
        ["healthz"] => Route::Healthz,
        ["readyz"] => Route::Readyz,
        ["v1", "cluster"] => Route::Cluster,
        ["v1", "topics"] => Route::Topics,
        ["v1", "topics", topic] => Route::Topic((*topic).to_owned()),
        ["v1", "groups"] => Route::Groups,
        ["v1", "groups", group] => Route::Group((*group).to_owned()),
        _ => Route::NotFound,
    };
    match (method, &found) {
        (_, Route::NotFound) => Route::NotFound,
        ("GET" | "HEAD", _) => found,
        _ => Route::MethodNotAllowed,
    }
}

/// One answer: status, content type, body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Answer {
    fn json(status: u16, value: &Value) -> Answer {
        Answer { status, content_type: "application/json", body: format!("{value}\n") }
    }

    fn error(status: u16, message: impl Into<String>) -> Answer {
        Answer::json(status, &json!({ "error": message.into() }))
    }
}

/// Why `/readyz` says no; empty when ready.
pub fn unready_reasons(view: &BrokerView, stopping: bool, storage_failed: &[String]) -> Vec<String> {
    let mut reasons = Vec::new();
    if stopping {
        reasons.push("the broker is shutting down".to_owned());
    }
    if view.raft_leader.is_none() {
        reasons.push("no metadata leader is known".to_owned());
    }
    if !view.registered {
        reasons.push("this broker's registration has not applied yet".to_owned());
    } else if !view.holds_lease {
        reasons.push("this broker's controller lease has lapsed (no heartbeat applied lately)".to_owned());
    }
    if view.replicas_running < view.replicas_assigned {
        reasons.push(format!(
            "{} of the {} replicas assigned to this broker are not running yet",
            view.replicas_assigned - view.replicas_running,
            view.replicas_assigned
        ));
    }
    for partition in storage_failed {
        reasons.push(format!("partition {partition}: its storage failed (recovering)"));
    }
    reasons
}

/// The admin listener's view of its broker.
pub struct Admin {
    observer: Observer,
    /// A client of this broker's native listener (the `/v1` answers and the group lag).
    client: Arc<Client>,
    /// Cancelled when the broker starts shutting down.
    stopping: CancellationToken,
}

impl Admin {
    /// `native_addr` is the broker's own native listener (its advertised address), `tls` what the
    /// broker dials its peers with when its listeners speak TLS.
    pub fn new(
        observer: Observer,
        native_addr: String,
        tls: Option<Arc<rustls::ClientConfig>>,
        stopping: CancellationToken,
    ) -> Arc<Admin> {
        let config = ClientConfig { retries: 2, tls, ..ClientConfig::default() };
        Arc::new(Admin { observer, client: Client::new(native_addr, config), stopping })
    }

    /// The answer to `route`.
    pub async fn answer(&self, route: Route) -> Answer {
        let client = &self.client;
        match route {
            Route::Console => {
                Answer { status: 200, content_type: "text/html; charset=utf-8", body: CONSOLE_HTML.into() }
            }
            Route::Healthz => Answer { status: 200, content_type: "text/plain; charset=utf-8", body: "ok\n".into() },
            Route::Readyz => self.readyz(),
            Route::Metrics => self.metrics().await,
            Route::Cluster => v1(client.cluster_status(true).await.map(|r| crate::cli::cluster::status_value(&r))),
            Route::Topics => v1(client.metadata(&[]).await.map(|m| crate::cli::topics_value(&m))),
            Route::Topic(topic) => v1(bounded(crate::cli::topic_json(client, &topic)).await),
            Route::Groups => v1(client.list_groups().await.map(|l| crate::cli::group::groups_value(&l))),
            Route::Group(group) => v1(bounded(crate::cli::group::group_json(client, &group)).await),
            Route::NotFound => Answer::error(
                404,
                "no such endpoint; try /metrics, /healthz, /readyz, /v1/cluster, /v1/topics, /v1/groups or /",
            ),
            Route::MethodNotAllowed => Answer::error(405, "only GET (and HEAD) are served"),
        }
    }

    fn readyz(&self) -> Answer {
        let view = self.observer.view();
        let failed: Vec<String> = self
            .observer
            .metrics
            .replica_readings()
            .into_iter()
            .filter(|(_, reading)| reading.storage_failed)
            .map(|((topic, partition), _)| format!("{topic}/{partition}"))
            .collect();
        let reasons = unready_reasons(&view, self.stopping.is_cancelled(), &failed);
        let status = if reasons.is_empty() { 200 } else { 503 };
        Answer::json(status, &json!({ "ready": reasons.is_empty(), "node_id": view.node_id, "reasons": reasons }))
    }

    /// The metrics, with the lag of the groups this broker coordinates refreshed first (bounded:
    /// a scrape answers even when a group's partitions cannot be asked).
    async fn metrics(&self) -> Answer {
        let node_id = self.observer.view().node_id;
        match tokio::time::timeout(ANSWER_TIMEOUT, self.group_lags(node_id)).await {
            Ok(Ok(lags)) => self.observer.metrics.set_group_lag(&lags),
            Ok(Err(error)) => tracing::debug!(%error, "group lag not refreshed"),
            Err(_) => tracing::debug!("group lag not refreshed: timed out"),
        }
        Answer { status: 200, content_type: crate::metrics::CONTENT_TYPE, body: self.observer.encode_metrics() }
    }

    async fn group_lags(&self, node_id: u64) -> Result<Vec<GroupLag>, ClientError> {
        let listing = self.client.list_groups().await?;
        let mut lags = Vec::new();
        for group in listing.groups.iter().filter(|group| group.coordinator == node_id) {
            for (tp, lag) in crate::cli::group::group_lags(&self.client, &group.group).await? {
                lags.push(GroupLag { group: group.group.clone(), topic: tp.topic, partition: tp.partition, lag });
            }
        }
        Ok(lags)
    }
}

async fn bounded<T>(answer: impl std::future::Future<Output = Result<T, ClientError>>) -> Result<T, ClientError> {
    tokio::time::timeout(ANSWER_TIMEOUT, answer)
        .await
        .unwrap_or_else(|_| Err(ClientError::Ambiguous(format!("no answer within {ANSWER_TIMEOUT:?}"))))
}

/// A `/v1` answer: the JSON, or the error with the status that fits it.
fn v1(result: Result<Value, ClientError>) -> Answer {
    match result {
        Ok(value) => Answer::json(200, &value),
        Err(error) => {
            let status = match &error {
                ClientError::Server {
                    code: ErrorCode::UnknownTopic | ErrorCode::UnknownGroup | ErrorCode::UnknownPartition,
                    ..
                } => 404,
                ClientError::Server { code: ErrorCode::InvalidRequest, .. } | ClientError::InvalidArgument(_) => 400,
                _ => 503,
            };
            Answer::error(status, error.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("GET", "/"), Route::Console);
        assert_eq!(route("GET", "/metrics"), Route::Metrics);
        assert_eq!(route("GET", "/metrics?x=1"), Route::Metrics);
        assert_eq!(route("HEAD", "/healthz"), Route::Healthz);
        assert_eq!(route("GET", "/v1/topics/orders"), Route::Topic("orders".into()));
        assert_eq!(route("GET", "/v1/groups/a%20b%2Fc"), Route::Group("a b/c".into()));
        assert_eq!(route("GET", "/v1/topics/a/b"), Route::NotFound);
        assert_eq!(route("GET", "/v2/topics"), Route::NotFound);
        assert_eq!(route("POST", "/metrics"), Route::MethodNotAllowed);
        assert_eq!(route("DELETE", "/nope"), Route::NotFound);
    }

    #[test]
    fn readiness_names_every_reason() {
        let ready = BrokerView {
            raft_leader: Some(1),
            registered: true,
            holds_lease: true,
            replicas_assigned: 3,
            replicas_running: 3,
            ..BrokerView::default()
        };
        assert!(unready_reasons(&ready, false, &[]).is_empty());
        let reasons = unready_reasons(
            &BrokerView { raft_leader: None, registered: false, replicas_running: 1, ..ready.clone() },
            true,
            &["t/0".to_owned()],
        );
        assert_eq!(reasons.len(), 5, "{reasons:?}");
        let lapsed = unready_reasons(&BrokerView { holds_lease: false, ..ready }, false, &[]);
        assert!(lapsed[0].contains("lease"), "{lapsed:?}");
    }

    #[test]
    fn v1_errors_have_fitting_statuses() {
        let unknown = ClientError::Server { code: ErrorCode::UnknownTopic, message: "unknown topic \"x\"".into() };
        assert_eq!(v1(Err(unknown)).status, 404);
        assert_eq!(v1(Err(ClientError::Connect { addr: "a".into(), reason: "refused".into() })).status, 503);
        let ok = v1(Ok(json!({"a": 1})));
        assert_eq!((ok.status, ok.body.as_str()), (200, "{\"a\":1}\n"));
    }
}
