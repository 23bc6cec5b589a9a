//! Push subscriptions, the client side (ADR 0021): records of one partition pushed by its leader as
//! they are committed, within a credit this side grants.
//!
//! A [`Subscription`] opens a stream at the partition's leader with a window of credit (bytes and
//! records). Each [`Subscription::next`] first grants back what the caller was given by the previous
//! call once that is half a window or more, so the broker never has more than a window (plus one
//! batch) pushed and unprocessed here: a slow caller slows the broker's pushes, never fills memory.
//!
//! Leader changes, broker restarts and lost connections are ridden out: the subscription reopens at
//! the partition's (new) leader from the position after the last record it returned, with backoff,
//! and gives up only after [`ROUTE_ATTEMPTS_MAX`] attempts in a row that brought nothing. A
//! subscription that hears nothing, not even a heartbeat, for [`SILENCE_MAX`] takes its connection
//! for dead and reopens. `OffsetOutOfRange` is returned to the caller, who decides where to go on
//! ([`Subscription::seek`]).
//!
//! The broker's pushes are checked: each starts at the position asked for, and none comes while
//! the credit the broker had confirmed (the window, plus each grant whose answer came before the
//! push on the stream) was used up: a broker that pushes past its credit is a protocol error.
//!
//! Subscriptions ride connections of their own, pooled per broker, at most
//! [`SUBSCRIPTIONS_PER_CONNECTION_MAX`](crate::protocol::SUBSCRIPTIONS_PER_CONNECTION_MAX) on each. A subscription dropped without being closed is
//! ended by its connection at its next frame.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::connection::{PushReceiver, PushSender};
use super::{
    decode_records, is_misrouted, is_replica_behind, Client, ClientError, Connection, SubscriptionSlot,
    ROUTE_ATTEMPTS_MAX,
};
use crate::batch::{peek_batch_span, StoredRecord};
use crate::protocol::{
    Body, CreditRequest, ErrorCode, ErrorResponse, PushBatch, SubscribeRequest, UnsubscribeRequest, PUSH_WAIT_MS,
};
use crate::types::Offset;

/// Longest a subscription waits for any frame (a push or a heartbeat) before it takes its
/// connection for dead: two of the broker's heartbeat intervals.
pub const SILENCE_MAX: Duration = Duration::from_millis(2 * PUSH_WAIT_MS as u64);

/// How much a subscription lets the broker push ahead of the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscriptionConfig {
    pub window_bytes: u64,
    pub window_records: u64,
}

impl Default for SubscriptionConfig {
    fn default() -> Self {
        SubscriptionConfig { window_bytes: 1024 * 1024, window_records: 100_000 }
    }
}

/// Records one push brought, in offset order, from the subscription's position on.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub records: Vec<StoredRecord>,
    /// The partition's high watermark when the push was read.
    pub high_watermark: Offset,
    pub log_start: Offset,
}

/// What a subscription has done, for tests and the simulation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscriptionStats {
    /// Streams opened (the first and every reopen).
    pub opened: u64,
    /// Pushes with records.
    pub pushes: u64,
    /// Credit grants sent.
    pub grants: u64,
}

/// One open stream at one broker.
struct Live {
    addr: String,
    connection: Connection,
    /// This stream's place on its pooled connection.
    _slot: SubscriptionSlot,
    id: u64,
    frames: PushReceiver,
    /// Into `frames`: the answers to this stream's grants come in order with its pushes.
    frames_in: PushSender,
    /// Credit granted on this stream so far, the opening window included: (bytes, records).
    granted: (u64, u64),
    /// Credit the broker has confirmed (its answer to the grant arrived): what it knew of at most,
    /// when it sent any push that arrives from here on.
    confirmed: (u64, u64),
    /// Grants sent and not yet answered, oldest first.
    unconfirmed: VecDeque<(u64, u64)>,
    /// Bytes and records of batches received on this stream.
    received: (u64, u64),
    /// Received and handed to the caller, not yet granted back.
    to_grant: (u64, u64),
    /// The last push's size, granted back at the next call (the caller is done with it then).
    last: (u64, u64),
    /// When the stream's latest frame came (or it opened): silence is measured from here, across
    /// calls of `next` (a caller that polls with short waits cancels each wait).
    heard_at: Instant,
}

/// A push subscription to one partition. Dropping it unsubscribes.
pub struct Subscription {
    client: Arc<Client>,
    topic: String,
    partition: u32,
    position: Offset,
    config: SubscriptionConfig,
    live: Option<Live>,
    stats: SubscriptionStats,
}

impl Subscription {
    /// A subscription that starts at `position`; nothing is sent before the first [`next`].
    ///
    /// [`next`]: Subscription::next
    pub fn new(
        client: Arc<Client>,
        topic: &str,
        partition: u32,
        position: Offset,
        config: SubscriptionConfig,
    ) -> Subscription {
        let config = SubscriptionConfig {
            window_bytes: config.window_bytes.max(1),
            window_records: config.window_records.max(1),
        };
        Subscription {
            client,
            topic: topic.to_owned(),
            partition,
            position,
            config,
            live: None,
            stats: SubscriptionStats::default(),
        }
    }

    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// The offset after the last record returned (where the next push starts).
    pub fn position(&self) -> Offset {
        self.position
    }

    pub fn stats(&self) -> SubscriptionStats {
        self.stats
    }

    /// Goes on from `offset`: the open stream ends, the next call opens one there.
    pub fn seek(&mut self, offset: Offset) {
        self.position = offset;
        self.close();
    }

    /// Ends the open stream, if any (the unsubscribe is queued, not waited for).
    pub fn close(&mut self) {
        if let Some(live) = self.live.take() {
            let body = Body::UnsubscribeRequest(UnsubscribeRequest { subscription_id: live.id });
            live.connection.try_send(body);
        }
    }

    /// The next records, waiting as long as it takes for some to be committed. Heartbeats are not
    /// returned. Errors: `OffsetOutOfRange` (seek, then call again), a topic or partition that does
    /// not exist, a broker that breaks the protocol, or [`ROUTE_ATTEMPTS_MAX`] failed reopens in a
    /// row.
    pub async fn next(&mut self) -> Result<Pushed, ClientError> {
        let mut backoff = self.client.config.retry_backoff;
        let mut failures = 0u32;
        loop {
            let (error, retry) = match self.next_frame().await {
                Ok(Some(pushed)) => return Ok(pushed),
                Ok(None) => {
                    // A heartbeat or a grant's answer: the stream works.
                    (failures, backoff) = (0, self.client.config.retry_backoff);
                    continue;
                }
                Err(Failed::Retry(error)) => (error, true),
                Err(Failed::Stop(error)) => (error, false),
            };
            self.close();
            if !retry || !retriable(&error) || failures + 1 >= ROUTE_ATTEMPTS_MAX {
                return Err(error);
            }
            failures += 1;
            tracing::debug!(topic = %self.topic, partition = self.partition, %error, "subscription ended; reopening");
            self.client.forget_leaders(&self.topic);
            tokio::time::sleep(backoff).await;
            backoff = self.client.next_backoff(backoff);
        }
    }

    /// One frame of the open stream (opening one first if needed): `Ok(None)` for a heartbeat.
    async fn next_frame(&mut self) -> Result<Option<Pushed>, Failed> {
        self.grant_back().await;
        if self.live.is_none() {
            self.live = Some(self.open().await?);
            self.stats.opened += 1;
        }
        Ok(self.receive().await?)
    }

    /// The open stream's next frame: a push (`Some`), or a heartbeat or a grant's answer (`None`).
    async fn receive(&mut self) -> Result<Option<Pushed>, ClientError> {
        let live = self.live.as_mut().expect("opened above");
        // (madsim has no `timeout_at`.)
        let silence_left = (live.heard_at + SILENCE_MAX).saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(silence_left, live.frames.recv()).await;
        live.heard_at = Instant::now();
        let push = match frame {
            Err(_) => {
                // The connection is taken for dead: no other subscription is opened on it.
                self.client.forget_subscription_connection(&live.addr, &live.connection);
                return Err(ClientError::Ambiguous(format!("subscription silent for {SILENCE_MAX:?}")));
            }
            Ok(None) => return Err(ClientError::Ambiguous("connection task ended".into())),
            Ok(Some(Err(error))) => return Err(ClientError::Ambiguous(error.to_string())),
            Ok(Some(Ok(Body::PushBatch(push)))) => push,
            Ok(Some(Ok(Body::CreditResponse(response)))) => {
                let grant = live.unconfirmed.pop_front().unwrap_or_default();
                if response.error.is_none() {
                    live.confirmed = (live.confirmed.0 + grant.0, live.confirmed.1 + grant.1);
                }
                // A refused grant: the stream has ended, and its end frame says why.
                return Ok(None);
            }
            Ok(Some(Ok(Body::ErrorResponse(ErrorResponse { error: Some(info) })))) => {
                return Err(ClientError::server(info))
            }
            Ok(Some(Ok(other))) => {
                return Err(ClientError::Protocol(format!("unexpected frame on a subscription: {other:?}")))
            }
        };
        if push.end {
            self.live = None;
            return Err(match push.error {
                Some(info) => ClientError::server(info),
                None => ClientError::Server {
                    code: ErrorCode::ShuttingDown,
                    message: "the broker ended the subscription".into(),
                },
            });
        }
        self.accept(push)
    }

    /// Checks a push against the position and the credit, and decodes it.
    fn accept(&mut self, push: PushBatch) -> Result<Option<Pushed>, ClientError> {
        let live = self.live.as_mut().expect("a push comes on an open stream");
        if push.offset != self.position.0 {
            return Err(ClientError::Protocol(format!(
                "a push started at offset {} while the subscription stood at {}",
                push.offset, self.position
            )));
        }
        if push.records.is_empty() {
            return Ok(None);
        }
        if live.received.0 >= live.confirmed.0 || live.received.1 >= live.confirmed.1 {
            return Err(ClientError::Protocol(format!(
                "the broker pushed with its credit used up: {:?} received of {:?} granted (bytes, records)",
                live.received, live.confirmed
            )));
        }
        let (mut bytes, mut count, mut at) = (0u64, 0u64, 0usize);
        while at < push.records.len() {
            let span = peek_batch_span(&push.records[at..]).map_err(|error| ClientError::Corrupt(error.to_string()))?;
            at += span.bytes;
            bytes += span.bytes as u64;
            count += u64::from(span.record_count);
        }
        live.received = (live.received.0 + bytes, live.received.1 + count);
        live.last = (bytes, count);
        let records = decode_records(push.records, self.position)?;
        let next = Offset(push.next_offset);
        if next <= self.position || records.last().is_some_and(|record| record.offset >= next) {
            return Err(ClientError::Protocol(format!(
                "a push from offset {} said the next starts at {next}",
                self.position
            )));
        }
        self.position = next;
        self.stats.pushes += 1;
        Ok(Some(Pushed {
            records,
            high_watermark: Offset(push.high_watermark),
            log_start: Offset(push.log_start_offset),
        }))
    }

    /// Grants back the previous push (the caller is done with it) once half a window is owed.
    async fn grant_back(&mut self) {
        let Some(live) = self.live.as_mut() else { return };
        let last = std::mem::take(&mut live.last);
        live.to_grant = (live.to_grant.0 + last.0, live.to_grant.1 + last.1);
        if live.to_grant.0 * 2 < self.config.window_bytes && live.to_grant.1 * 2 < self.config.window_records {
            return;
        }
        let (bytes, records) = live.to_grant;
        // Waits for room in the connection's queue (a grant lost would stall the stream), and
        // counts the grant only once it is queued: cancelled before, it is sent at the next call.
        // Its answer comes on the stream, in order with the pushes.
        let grant = Body::CreditRequest(CreditRequest { subscription_id: live.id, bytes, records });
        if live.connection.send_into(grant, live.frames_in.clone()).await.is_err() {
            return; // the connection is gone: the stream reports it
        }
        live.to_grant = (0, 0);
        live.granted = (live.granted.0 + bytes, live.granted.1 + records);
        live.unconfirmed.push_back((bytes, records));
        self.stats.grants += 1;
    }

    /// Opens a stream at the leader. The metadata saying that the topic or partition does not
    /// exist stops the subscription.
    async fn open(&mut self) -> Result<Live, Failed> {
        let (addr, leader_epoch) = match self.client.leader_route(&self.topic, self.partition).await {
            Ok(route) => route,
            Err(error @ ClientError::Server { code: ErrorCode::UnknownTopic | ErrorCode::UnknownPartition, .. }) => {
                return Err(Failed::Stop(error))
            }
            Err(error) => return Err(Failed::Retry(error)),
        };
        let (connection, slot) = self.client.subscription_connection(&addr).await?;
        let window = (self.config.window_bytes, self.config.window_records);
        let body = Body::SubscribeRequest(SubscribeRequest {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.position.0,
            leader_epoch: Some(leader_epoch),
            credit_bytes: window.0,
            credit_records: window.1,
        });
        let (id, frames, frames_in) = connection.subscribe(body).await.map_err(|_| ClientError::Connect {
            addr: addr.clone(),
            reason: "connection closed before the subscribe was sent".into(),
        })?;
        Ok(Live {
            addr,
            connection,
            _slot: slot,
            id,
            frames,
            frames_in,
            granted: window,
            confirmed: window,
            unconfirmed: VecDeque::new(),
            received: (0, 0),
            to_grant: (0, 0),
            last: (0, 0),
            heard_at: Instant::now(),
        })
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.close();
    }
}

/// Why a step of a subscription failed, and whether it is tried again.
enum Failed {
    /// Reopened when [`retriable`] says so.
    Retry(ClientError),
    Stop(ClientError),
}

impl From<ClientError> for Failed {
    fn from(error: ClientError) -> Failed {
        Failed::Retry(error)
    }
}

/// Whether a subscription that ended with `error` is reopened.
fn retriable(error: &ClientError) -> bool {
    match error {
        ClientError::Connect { .. } | ClientError::Ambiguous(_) => true,
        ClientError::Server { code, .. } => {
            is_misrouted(*code)
                || is_replica_behind(*code)
                // TooManySubscriptions: the pool's count ran ahead of the broker freeing a place.
                || matches!(code, ErrorCode::ShuttingDown | ErrorCode::Timeout | ErrorCode::TooManySubscriptions)
        }
        _ => false,
    }
}
