//! The Kafka listener's connections (ADR 0026): Kafka's wire protocol in, native requests through
//! [`serve_request`] (the one path both protocols share), Kafka responses out.
//!
//! A Kafka client matches responses to requests by order, so a connection answers in the order it
//! read (a `FuturesOrdered`), while the requests themselves run concurrently. As on the native
//! listener, everything that must happen in arrival order (a produce entering its partition's
//! mailbox) happens before the next frame is read. A produce with `acks=0` gets no response, as in
//! Kafka. A frame that cannot be decoded, or an API or version Keel does not serve, closes only its
//! connection (the client cannot match a reply it did not expect), after the responses already
//! owed; an `ApiVersions` at a version Keel does not serve is answered (v0, `UNSUPPORTED_VERSION`).

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, FuturesUnordered};
use futures::{SinkExt, StreamExt};
use tokio_util::codec::Framed;

use super::{close_gracefully, serve_request, ClientSlot, Drain, State, Stopping};
use crate::kafka::translate::{self, Refusal};
use crate::kafka::{api_versions_fallback, decode_request, encode_response, errors, kafka_frame_codec};
use crate::kafka::{FrameError, Request, RequestFrame, Response};
use crate::metrics::Wire;
use crate::protocol::{self as native, Body, ErrorCode};
use crate::storage::Disk;

/// What a request's future gives the connection.
enum Reply {
    Send(Bytes),
    /// Nothing goes back (a produce with `acks=0`).
    Nothing,
    /// The response could not be encoded (a bug): the connection closes, the client retries.
    Close(String),
}

type PendingReply = BoxFuture<'static, Reply>;

pub(super) async fn serve_kafka_connection<D: Disk>(
    stream: crate::tls::Stream,
    peer: Option<std::net::SocketAddr>,
    state: Arc<State<D>>,
    stopping: Stopping,
) {
    let _client_slot = ClientSlot::new(&stopping);
    let mut framed = Framed::new(stream, kafka_frame_codec());
    let mut in_flight: FuturesOrdered<PendingReply> = FuturesOrdered::new();
    let in_flight_max = state.config.requests_in_flight_per_connection_max;
    let mut reading = true;
    let mut drain = Drain::default();
    let mut closed_by_peer = false;
    tracing::trace!(?peer, "Kafka connection");
    loop {
        if !reading && in_flight.is_empty() {
            break;
        }
        let draining = drain.ended();
        let reply = tokio::select! {
            biased;
            Some(reply) = in_flight.next(), if !in_flight.is_empty() => Some(reply),
            _ = stopping.clients.cancelled(), if reading && !drain.started() => {
                drain.start();
                None
            }
            _ = draining, if reading => {
                reading = false;
                None
            }
            frame = framed.next(), if reading && in_flight.len() < in_flight_max => match frame {
                None => {
                    closed_by_peer = true;
                    break;
                }
                Some(Err(error)) => {
                    tracing::debug!(?peer, %error, "closing a Kafka connection after a framing error");
                    reading = false;
                    None
                }
                Some(Ok(bytes)) => {
                    drain.on_request();
                    reading = take_frame(&state, bytes.freeze(), &mut in_flight, peer).await;
                    None
                }
            },
        };
        match reply {
            Some(Reply::Send(bytes)) => {
                if framed.send(bytes).await.is_err() {
                    break;
                }
            }
            Some(Reply::Close(error)) => {
                tracing::error!(?peer, %error, "cannot encode a Kafka response; closing the connection");
                break;
            }
            Some(Reply::Nothing) | None => {}
        }
    }
    if !closed_by_peer {
        close_gracefully(framed).await;
    }
}

/// Decodes one frame and queues its answer; false when the connection must stop reading (a frame
/// it cannot answer: the client could not match what follows).
async fn take_frame<D: Disk>(
    state: &Arc<State<D>>,
    frame: Bytes,
    in_flight: &mut FuturesOrdered<PendingReply>,
    peer: Option<std::net::SocketAddr>,
) -> bool {
    let metrics = &state.assignments.metrics;
    match decode_request(frame.clone()) {
        Ok(request) if !request.served => {
            tracing::debug!(?peer, version = request.version, "a Kafka request at a version Keel does not serve");
            metrics.rejected(Wire::Kafka, request.request.api_name(), ErrorCode::UnsupportedVersion);
            let response = translate::refuse_all(
                &request.request,
                request.version,
                state.config.node_id.0,
                errors::UNSUPPORTED_VERSION,
            );
            in_flight.push_back(ready(encoded(request.version, request.correlation_id, response)));
            true
        }
        Ok(request) => {
            tracing::trace!(?peer, version = request.version, request = ?request.request, "Kafka request");
            let (api, started) = (request.request.api_name(), tokio::time::Instant::now());
            let reply = serve_kafka(state, request).await;
            let metrics = metrics.clone();
            in_flight.push_back(Box::pin(async move {
                let reply = reply.await;
                metrics.request(Wire::Kafka, api, started.elapsed(), None);
                reply
            }));
            true
        }
        Err(FrameError::UnsupportedApiVersions { correlation_id, .. }) => {
            metrics.rejected(Wire::Kafka, "api_versions", ErrorCode::UnsupportedVersion);
            in_flight.push_back(ready(Reply::Send(api_versions_fallback(correlation_id))));
            true
        }
        Err(FrameError::UnservedApi { api, version, correlation_id }) => {
            metrics.rejected(Wire::Kafka, "unserved", ErrorCode::UnsupportedVersion);
            match crate::kafka::unserved::answer(api, version, correlation_id, frame) {
                Some(answer) => {
                    tracing::debug!(?peer, ?api, version, "a Kafka API Keel does not serve: UNSUPPORTED_VERSION");
                    in_flight.push_back(ready(Reply::Send(answer)));
                    true
                }
                None => {
                    tracing::info!(?peer, ?api, version, "closing a Kafka connection: an API Keel does not serve");
                    false
                }
            }
        }
        Err(error) => {
            tracing::info!(?peer, %error, "closing a Kafka connection");
            metrics.rejected(Wire::Kafka, "undecodable", ErrorCode::InvalidRequest);
            false
        }
    }
}

fn ready(reply: Reply) -> PendingReply {
    Box::pin(std::future::ready(reply))
}

/// Encodes a response for the connection.
fn encoded(version: i16, correlation_id: i32, response: Response) -> Reply {
    match encode_response(version, correlation_id, &response) {
        Ok(bytes) => Reply::Send(bytes),
        Err(error) => Reply::Close(format!("{:?} v{version}: {error}", response.api())),
    }
}

/// Submits one native request (the admission happens now, in arrival order); the future gives
/// its answer's body.
async fn submit<D: Disk>(state: &Arc<State<D>>, body: Body) -> BoxFuture<'static, Body> {
    let pending = serve_request(state, 0, body).await;
    let metrics = state.assignments.metrics.clone();
    Box::pin(async move {
        let frame = pending.await;
        if let Some((api, code)) = frame.body.as_ref().and_then(|body| Some((body.api_name(), body.error_code()?))) {
            metrics.rejected(Wire::Kafka, api, code);
        }
        frame.body.unwrap_or_else(|| {
            Body::ErrorResponse(native::ErrorResponse {
                error: Some(native::ErrorInfo::new(ErrorCode::Internal, "an answer without a body")),
            })
        })
    })
}

/// Submits every request that has one, in order (each admitted now, as `submit` does); the future
/// gives each answer's body, or the item's refusal, in the same order.
async fn submit_all<D: Disk>(
    state: &Arc<State<D>>,
    requests: Vec<Result<Body, Refusal>>,
) -> BoxFuture<'static, Vec<Result<Body, Refusal>>> {
    let mut pending = Vec::with_capacity(requests.len());
    for request in requests {
        pending.push(match request {
            Ok(body) => Ok(submit(state, body).await),
            Err(refusal) => Err(refusal),
        });
    }
    Box::pin(async move {
        let mut answers = Vec::with_capacity(pending.len());
        for pending in pending {
            answers.push(match pending {
                Ok(answer) => Ok(answer.await),
                Err(refusal) => Err(refusal),
            });
        }
        answers
    })
}

/// A refusal for an answer that is not the expected response (an `ErrorResponse`).
fn refusal_of(body: Body) -> Refusal {
    match body {
        Body::ErrorResponse(native::ErrorResponse { error: Some(error) }) => {
            Refusal::new(errors::kafka_code(error.error_code()), error.message)
        }
        other => Refusal::new(errors::UNKNOWN_SERVER_ERROR, format!("unexpected answer {other:?}")),
    }
}

/// The expected response out of a native answer.
macro_rules! pick {
    ($variant:ident, $body:expr) => {
        match $body {
            Body::$variant(response) => Ok(response),
            other => Err(refusal_of(other)),
        }
    };
}

/// Routes one Kafka request. Like `server::dispatch`: what must happen in arrival order happens
/// before this returns; the returned future only waits for the answers.
async fn serve_kafka<D: Disk>(state: &Arc<State<D>>, frame: RequestFrame) -> PendingReply {
    let RequestFrame { version, correlation_id, client_id, request, .. } = frame;
    let respond = move |response| encoded(version, correlation_id, response);
    match request {
        Request::ApiVersions(_) => ready(respond(Response::ApiVersions(translate::api_versions(version)))),
        Request::Metadata(request) => {
            let pending = submit(state, Body::MetadataRequest(translate::metadata_request(&request))).await;
            let node_id = state.config.node_id.0;
            Box::pin(async move {
                let answer = pick!(MetadataResponse, pending.await).map_err(|refusal| native::ErrorInfo {
                    code: ErrorCode::Internal as i32,
                    message: refusal.message,
                });
                respond(Response::Metadata(translate::metadata_response(&request, version, node_id, answer)))
            })
        }
        Request::Produce(request) => produce(state, request, version, correlation_id).await,
        Request::Fetch(request) => fetch(state.clone(), request, version, correlation_id),
        Request::ListOffsets(request) => list_offsets(state, request, version, correlation_id).await,
        Request::CreateTopics(request) => create_topics(state, request, version, correlation_id).await,
        Request::DeleteTopics(request) => delete_topics(state, request, version, correlation_id).await,
        Request::InitProducerId(request) => {
            if let Some(refusal) = translate::init_producer_id_refusal(&request) {
                return ready(respond(Response::InitProducerId(translate::init_producer_id_response(Err(refusal)))));
            }
            let pending = submit(state, Body::InitProducerIdRequest(native::InitProducerIdRequest {})).await;
            Box::pin(async move {
                let answer = pick!(InitProducerIdResponse, pending.await);
                respond(Response::InitProducerId(translate::init_producer_id_response(answer)))
            })
        }
        request @ (Request::FindCoordinator(_)
        | Request::JoinGroup(_)
        | Request::SyncGroup(_)
        | Request::Heartbeat(_)
        | Request::LeaveGroup(_)
        | Request::OffsetCommit(_)
        | Request::OffsetFetch(_)
        | Request::ListGroups(_)
        | Request::DescribeGroups(_)) => groups(state.clone(), request, version, correlation_id, client_id),
    }
}

async fn produce<D: Disk>(
    state: &Arc<State<D>>,
    request: kafka_protocol::messages::ProduceRequest,
    version: i16,
    correlation_id: i32,
) -> PendingReply {
    let acks_zero = request.acks == 0;
    let mut submitted = Vec::new();
    for part in translate::produce_requests(&request) {
        let pending = match part.requests {
            Err(refusal) => Err(refusal),
            Ok(requests) => {
                let mut batches = Vec::with_capacity(requests.len());
                for batch in requests {
                    batches.push(submit(state, Body::ProduceRequest(batch)).await);
                }
                Ok(batches)
            }
        };
        submitted.push((part.topic, part.partition, pending));
    }
    Box::pin(async move {
        let mut parts = Vec::with_capacity(submitted.len());
        for (topic, partition, pending) in submitted {
            let answer = match pending {
                Err(refusal) => Err(refusal),
                Ok(batches) => {
                    let mut answers = Vec::with_capacity(batches.len());
                    for batch in batches {
                        answers.push(pick!(ProduceResponse, batch.await));
                    }
                    answers.into_iter().collect::<Result<Vec<_>, Refusal>>()
                }
            };
            parts.push((topic, partition, answer));
        }
        if acks_zero {
            return Reply::Nothing;
        }
        encoded(version, correlation_id, Response::Produce(translate::produce_response(version, parts)))
    })
}

/// A fetch: every partition at once without waiting; if nothing came and the client is willing
/// to wait, a long poll of every partition until the first has news (or the wait ends), then
/// every partition again without waiting, so the answer holds all that arrived meanwhile.
fn fetch<D: Disk>(
    state: Arc<State<D>>,
    request: kafka_protocol::messages::FetchRequest,
    version: i16,
    correlation_id: i32,
) -> PendingReply {
    Box::pin(async move {
        let respond = |response| encoded(version, correlation_id, Response::Fetch(response));
        let parts = match translate::fetch_requests(&request, 0) {
            Ok(parts) => parts,
            Err(code) => return respond(translate::fetch_refused(&request, version, code)),
        };
        let mut answers = fetch_round(&state, &parts).await;
        let wait_ms = request.max_wait_ms.max(0) as u32;
        let enough = |answers: &[Result<native::FetchResponse, Refusal>]| {
            translate::fetch_has_news(answers) && translate::fetched_bytes(answers) >= request.min_bytes.max(1) as usize
                || answers.iter().any(Result::is_err)
                || answers.iter().any(|answer| answer.as_ref().is_ok_and(|answer| answer.error.is_some()))
        };
        if wait_ms > 0 && !enough(&answers) {
            if let Ok(polls) = translate::fetch_requests(&request, wait_ms) {
                long_poll(&state, polls, wait_ms).await;
                answers = fetch_round(&state, &parts).await;
            }
        }
        let parts = parts.into_iter().zip(answers).map(|(part, answer)| (part.topic, part.partition, answer)).collect();
        respond(translate::fetch_response(version, request.max_bytes, parts))
    })
}

async fn fetch_round<D: Disk>(
    state: &Arc<State<D>>,
    parts: &[translate::PartitionFetch],
) -> Vec<Result<native::FetchResponse, Refusal>> {
    let requests = parts.iter().map(|part| part.request.clone().map(Body::FetchRequest)).collect();
    let answers = submit_all(state, requests).await.await;
    answers.into_iter().map(|answer| answer.and_then(|body| pick!(FetchResponse, body))).collect()
}

/// Waits until one partition's long poll answers, or `wait_ms`.
async fn long_poll<D: Disk>(state: &Arc<State<D>>, polls: Vec<translate::PartitionFetch>, wait_ms: u32) {
    let mut submitted = Vec::with_capacity(polls.len());
    for poll in polls {
        if let Ok(request) = poll.request {
            submitted.push(submit(state, Body::FetchRequest(request)).await);
        }
    }
    let mut waiting: FuturesUnordered<_> = submitted.into_iter().collect();
    let wait = std::time::Duration::from_millis(u64::from(wait_ms));
    let _ = tokio::time::timeout(wait, waiting.next()).await;
}

async fn list_offsets<D: Disk>(
    state: &Arc<State<D>>,
    request: kafka_protocol::messages::ListOffsetsRequest,
    version: i16,
    correlation_id: i32,
) -> PendingReply {
    let (keys, requests): (Vec<_>, Vec<_>) = translate::list_offsets_requests(&request)
        .into_iter()
        .map(|part| ((part.topic, part.partition), part.request.map(Body::ListOffsetsRequest)))
        .unzip();
    let pending = submit_all(state, requests).await;
    Box::pin(async move {
        let answers = pending.await.into_iter().map(|answer| answer.and_then(|body| pick!(ListOffsetsResponse, body)));
        let parts =
            keys.into_iter().zip(answers).map(|((topic, partition), answer)| (topic, partition, answer)).collect();
        encoded(version, correlation_id, Response::ListOffsets(translate::list_offsets_response(parts)))
    })
}

/// The native answer's error as a refusal (`Ok(())`: none).
fn checked(error: Option<native::ErrorInfo>) -> Result<(), Refusal> {
    match error {
        None => Ok(()),
        Some(error) => Err(Refusal::new(errors::kafka_code(error.error_code()), error.message)),
    }
}

async fn create_topics<D: Disk>(
    state: &Arc<State<D>>,
    request: kafka_protocol::messages::CreateTopicsRequest,
    version: i16,
    correlation_id: i32,
) -> PendingReply {
    let creates = translate::create_topic_requests(&request);
    let requests = creates.iter().map(|(_, create)| create.clone().map(Body::CreateTopicRequest)).collect();
    let pending = submit_all(state, requests).await;
    Box::pin(async move {
        let results = creates
            .into_iter()
            .zip(pending.await)
            .map(|((name, create), answer)| {
                let created = answer.and_then(|body| pick!(CreateTopicResponse, body)).and_then(|a| checked(a.error));
                (name, created.and(create))
            })
            .collect();
        encoded(version, correlation_id, Response::CreateTopics(translate::create_topics_response(version, results)))
    })
}

async fn delete_topics<D: Disk>(
    state: &Arc<State<D>>,
    request: kafka_protocol::messages::DeleteTopicsRequest,
    version: i16,
    correlation_id: i32,
) -> PendingReply {
    let names = translate::delete_topic_names(&request);
    let requests = names
        .iter()
        .map(|name| name.clone().map(|name| Body::DeleteTopicRequest(native::DeleteTopicRequest { name })))
        .collect();
    let pending = submit_all(state, requests).await;
    Box::pin(async move {
        let results = names
            .into_iter()
            .zip(pending.await)
            .map(|(name, answer)| {
                (name.ok(), answer.and_then(|body| pick!(DeleteTopicResponse, body)).and_then(|a| checked(a.error)))
            })
            .collect();
        encoded(version, correlation_id, Response::DeleteTopics(translate::delete_topics_response(version, results)))
    })
}

/// The group requests: each goes to the native coordinator as it comes (their order does not
/// matter to a partition's mailbox), and a join may wait for the whole group's rebalance.
fn groups<D: Disk>(
    state: Arc<State<D>>,
    request: Request,
    version: i16,
    correlation_id: i32,
    client_id: String,
) -> PendingReply {
    Box::pin(async move {
        let ask = |body: Body| {
            let state = state.clone();
            async move { submit(&state, body).await.await }
        };
        let response = match request {
            Request::FindCoordinator(request) => {
                let mut answers = Vec::new();
                for (key, refusal) in translate::find_coordinator_keys(&request, version) {
                    let answer = match refusal {
                        Some(refusal) => Err(refusal),
                        None => {
                            let find = native::FindCoordinatorRequest { group: key.clone() };
                            pick!(FindCoordinatorResponse, ask(Body::FindCoordinatorRequest(find)).await)
                        }
                    };
                    answers.push((key, answer));
                }
                Response::FindCoordinator(translate::find_coordinator_response(version, answers))
            }
            Request::JoinGroup(request) => Response::JoinGroup(join_group(&ask, &request, version, &client_id).await),
            other => match membership(&ask, other, version).await {
                Ok(response) => response,
                Err(other) => return Reply::Close(format!("{other:?} is not a group request")),
            },
        };
        encoded(version, correlation_id, response)
    })
}

/// A join. A v0-3 client does not know `MEMBER_ID_REQUIRED` (KIP-394): the listener joins again
/// for it with the member id the coordinator named.
async fn join_group<F, Fut>(
    ask: &F,
    request: &kafka_protocol::messages::JoinGroupRequest,
    version: i16,
    client_id: &str,
) -> kafka_protocol::messages::JoinGroupResponse
where
    F: Fn(Body) -> Fut,
    Fut: std::future::Future<Output = Body>,
{
    let join = match translate::join_group_request(request, client_id) {
        Ok(join) => join,
        Err(refusal) => return translate::join_group_response(version, Err(refusal)),
    };
    let mut answer = pick!(JoinGroupResponse, ask(Body::JoinGroupRequest(join.clone())).await);
    if let Ok(first) = &answer {
        let id_required = first.error.as_ref().is_some_and(|e| e.error_code() == ErrorCode::MemberIdRequired);
        if version < 4 && id_required {
            let again = native::JoinGroupRequest { member_id: first.member_id.clone(), ..join };
            answer = pick!(JoinGroupResponse, ask(Body::JoinGroupRequest(again)).await);
        }
    }
    translate::join_group_response(version, answer)
}

/// Sync, heartbeat, leave, commit, offset fetch, list and describe.
async fn membership<F, Fut>(ask: &F, request: Request, version: i16) -> Result<Response, Request>
where
    F: Fn(Body) -> Fut,
    Fut: std::future::Future<Output = Body>,
{
    use kafka_protocol::messages::{DescribeGroupsResponse, HeartbeatResponse};
    Ok(match request {
        Request::SyncGroup(r) => {
            let sync = native::SyncGroupRequest {
                group: r.group_id.0.to_string(),
                generation: r.generation_id,
                member_id: r.member_id.to_string(),
            };
            let answer = pick!(SyncGroupResponse, ask(Body::SyncGroupRequest(sync)).await);
            Response::SyncGroup(translate::sync_group_response(&r, version, answer))
        }
        Request::Heartbeat(r) => {
            let beat = native::HeartbeatRequest {
                group: r.group_id.0.to_string(),
                generation: r.generation_id,
                member_id: r.member_id.to_string(),
            };
            let code = match pick!(HeartbeatResponse, ask(Body::HeartbeatRequest(beat)).await) {
                Ok(answer) => errors::code_of(&answer.error),
                Err(refusal) => refusal.code,
            };
            Response::Heartbeat(HeartbeatResponse::default().with_error_code(code))
        }
        Request::LeaveGroup(r) => {
            let mut answers = Vec::new();
            for member_id in translate::leave_group_members(&r, version) {
                let leave = native::LeaveGroupRequest { group: r.group_id.0.to_string(), member_id: member_id.clone() };
                answers.push((member_id, pick!(LeaveGroupResponse, ask(Body::LeaveGroupRequest(leave)).await)));
            }
            Response::LeaveGroup(translate::leave_group_response(version, answers))
        }
        Request::OffsetCommit(r) => {
            let answer = match translate::offset_commit_request(&r) {
                Ok(commit) => pick!(OffsetCommitResponse, ask(Body::OffsetCommitRequest(commit)).await),
                Err(refusal) => Err(refusal),
            };
            Response::OffsetCommit(translate::offset_commit_response(&r, answer))
        }
        Request::OffsetFetch(r) => {
            let fetch = native::OffsetFetchRequest { group: r.group_id.0.to_string() };
            let answer = pick!(OffsetFetchResponse, ask(Body::OffsetFetchRequest(fetch)).await);
            Response::OffsetFetch(translate::offset_fetch_response(&r, version, answer))
        }
        Request::ListGroups(r) => {
            let answer = pick!(ListGroupsResponse, ask(Body::ListGroupsRequest(native::ListGroupsRequest {})).await);
            Response::ListGroups(translate::list_groups_response(&r, version, answer))
        }
        Request::DescribeGroups(r) => {
            let mut groups = Vec::new();
            for group in &r.groups {
                let describe = native::DescribeGroupRequest { group: group.0.to_string() };
                let answer = pick!(DescribeGroupResponse, ask(Body::DescribeGroupRequest(describe)).await).map(|b| *b);
                groups.push(translate::described_group(group.0.as_str(), answer));
            }
            Response::DescribeGroups(DescribeGroupsResponse::default().with_groups(groups))
        }
        other => return Err(other),
    })
}
