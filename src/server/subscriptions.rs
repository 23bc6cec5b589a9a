//! Push subscriptions (ADR 0021): one connection's open subscriptions and the streams of frames
//! they push.
//!
//! A client opens a subscription with a [`SubscribeRequest`]: a partition, a starting offset and a
//! credit in bytes and in records. The request's correlation id names the subscription on this
//! connection, and every frame of its stream carries it: [`PushBatch`]es, then one with `end` set.
//! [`CreditRequest`]s add to the credit; an [`UnsubscribeRequest`] ends the stream.
//!
//! Each subscription is a loop of long-poll reads of the partition's leader (the same read a fetch
//! makes, so only committed records are pushed, and the leader epoch is checked each time): while it
//! has credit, it reads up to its byte credit, waiting up to [`PUSH_WAIT_MS`] for records past its
//! position, trims the read to whole batches within its record credit, and yields one push. Without
//! credit it waits for a grant. A read that found nothing, or a wait for credit that lasted
//! [`PUSH_WAIT_MS`], yields a push without records (a heartbeat): a subscriber that hears nothing for
//! much longer knows its connection is dead.
//!
//! # Bounds (a slow subscriber never makes the broker buffer without limit)
//! - A subscription holds at most one read's records: the next read starts only after the
//!   connection took the previous push for the socket, and the connection polls the streams only
//!   when it is not blocked writing to a slow socket.
//! - What a subscription pushes beyond its grants is at most one batch per credit (whole batches
//!   only; the first batch of a read is sent even when it is larger than the byte credit left).
//! - A connection has at most [`SUBSCRIPTIONS_PER_CONNECTION_MAX`] open subscriptions.
//!
//! # Ends
//! A read that fails ends the stream with its error (`NotLeader`, `FencedLeaderEpoch`,
//! `OffsetOutOfRange`, `UnknownTopic`, ...): the client resubscribes as it would retry a fetch. An
//! unsubscribe ends it without error; the connection's drain (the broker stopping) ends every open
//! one with `ShuttingDown`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, SelectAll};
use futures::StreamExt;
use tokio::sync::Notify;

use super::assignments::Assignments;
use crate::batch::peek_batch_span;
use crate::buggify::{buggify, Point};
use crate::partition::{ConsumerFetch, PartitionReply};
use crate::protocol::{
    Body, CreditRequest, CreditResponse, ErrorCode, ErrorInfo, Frame, PushBatch, SubscribeRequest, UnsubscribeRequest,
    UnsubscribeResponse, PUSH_WAIT_MS, SUBSCRIPTIONS_PER_CONNECTION_MAX,
};
use crate::sometimes::{self, Sometimes};
use crate::storage::Disk;
use crate::types::{LeaderEpoch, Offset, PartitionId};

/// Most bytes one push reads, whatever the credit (one batch more when the first is larger).
pub const PUSH_BYTES_MAX: u64 = 1024 * 1024;
/// A read that came back empty sooner than this (the partition answered at once instead of
/// waiting) is followed by this pause, so that a subscription never spins.
const EMPTY_READ_PAUSE: Duration = Duration::from_millis(100);

/// What a subscription may push: the totals granted so far, and whether it was told to end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Grants {
    bytes: u64,
    records: u64,
    /// `Some(None)`: unsubscribed; `Some(Some(code))`: ended by the connection with `code`.
    ended: Option<Option<ErrorCode>>,
}

/// A subscription's grants, shared by the connection (which adds to them) and its stream, which
/// is woken at each change. (Not a `watch` channel: its waiters draw from an RNG madsim does not
/// seed; see tests/tidy.rs.)
#[derive(Default)]
struct Shared {
    grants: std::sync::Mutex<Grants>,
    changed: Notify,
}

impl Shared {
    fn get(&self) -> Grants {
        *self.grants.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut Grants)) {
        change(&mut self.grants.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        // One waiter (the stream); a permit is kept if it is not waiting right now.
        self.changed.notify_one();
    }
}

/// What [`Subscriptions::handle`] did with a frame.
#[derive(Debug)]
pub enum Handled {
    /// Not a subscription request.
    NotMine,
    /// A subscription opened: its stream will answer.
    Opened,
    /// The answer to send now.
    Answer(Frame),
}

/// One connection's subscriptions.
#[derive(Default)]
pub struct Subscriptions {
    /// The grants of each subscription not yet told to end, by id.
    open: BTreeMap<u64, Arc<Shared>>,
    /// Subscriptions whose stream has not sent its `end` frame yet (a superset of `open`).
    live: BTreeSet<u64>,
    streams: SelectAll<BoxStream<'static, Frame>>,
}

impl Subscriptions {
    /// Whether every stream has ended (the connection may close).
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// The next frame any subscription pushes; never resolves while there are none.
    pub async fn next(&mut self) -> Frame {
        loop {
            if self.streams.is_empty() {
                std::future::pending::<()>().await;
            }
            if let Some(frame) = self.streams.next().await {
                if matches!(&frame.body, Some(Body::PushBatch(push)) if push.end) {
                    self.live.remove(&frame.correlation_id);
                    self.open.remove(&frame.correlation_id);
                }
                return frame;
            }
        }
    }

    /// Serves a subscription request; any other frame is `NotMine`, for the caller to dispatch.
    pub fn handle<D: Disk>(&mut self, assignments: &Arc<Assignments<D>>, frame: &Frame) -> Handled {
        let id = frame.correlation_id;
        let Some(body) = frame.body.as_ref() else { return Handled::NotMine };
        let body = match body {
            Body::SubscribeRequest(request) => match self.subscribe(assignments, id, request) {
                Some(refusal) => Body::PushBatch(refusal),
                None => return Handled::Opened,
            },
            Body::CreditRequest(request) => Body::CreditResponse(CreditResponse { error: self.grant(request) }),
            Body::UnsubscribeRequest(UnsubscribeRequest { subscription_id }) => {
                let error = self.end(*subscription_id, None);
                Body::UnsubscribeResponse(UnsubscribeResponse { error })
            }
            _ => return Handled::NotMine,
        };
        Handled::Answer(Frame::new(id, body))
    }

    /// Ends every open subscription with `ShuttingDown` (the connection drains).
    pub fn stop_all(&mut self) {
        for grants in std::mem::take(&mut self.open).into_values() {
            grants.update(|grants| grants.ended = Some(Some(ErrorCode::ShuttingDown)));
        }
    }

    /// Opens a subscription; `Some(end frame)` when it is refused at once.
    fn subscribe<D: Disk>(
        &mut self,
        assignments: &Arc<Assignments<D>>,
        id: u64,
        request: &SubscribeRequest,
    ) -> Option<PushBatch> {
        let refuse = |code, message: String| Some(end_frame(Some(ErrorInfo::new(code, message)), request.offset));
        if id == 0 {
            // Correlation id 0 is what a broker answers when it cannot tie an error to a request.
            return refuse(ErrorCode::InvalidRequest, "a subscription's correlation id must not be 0".to_owned());
        }
        if self.live.contains(&id) {
            return refuse(ErrorCode::UnknownSubscription, format!("subscription {id} is already open"));
        }
        if self.live.len() >= SUBSCRIPTIONS_PER_CONNECTION_MAX {
            let message = format!("a connection may have {SUBSCRIPTIONS_PER_CONNECTION_MAX} open subscriptions");
            return refuse(ErrorCode::TooManySubscriptions, message);
        }
        if request.credit_bytes == 0 || request.credit_records == 0 {
            let message = "a subscription needs a positive credit in bytes and in records".to_owned();
            return refuse(ErrorCode::InvalidRequest, message);
        }
        if request.offset < 0 {
            return refuse(ErrorCode::OffsetOutOfRange, format!("offset {} is negative", request.offset));
        }
        let initial = Grants { bytes: request.credit_bytes, records: request.credit_records, ended: None };
        let grants = Arc::new(Shared { grants: std::sync::Mutex::new(initial), changed: Notify::new() });
        let pusher = Pusher {
            assignments: assignments.clone(),
            topic: request.topic.clone(),
            partition: PartitionId(request.partition),
            leader_epoch: request.leader_epoch.map(LeaderEpoch),
            offset: Offset(request.offset),
            grants: grants.clone(),
            last_read: (Offset(-1), Offset(-1)),
            pushed: (0, 0),
            ended: false,
        };
        let stream = futures::stream::unfold(pusher, move |mut pusher| async move {
            let push = pusher.next_push().await?;
            Some((Frame::new(id, Body::PushBatch(push)), pusher))
        });
        self.open.insert(id, grants);
        self.live.insert(id);
        self.streams.push(stream.boxed());
        None
    }

    fn grant(&mut self, request: &CreditRequest) -> Option<ErrorInfo> {
        let Some(grants) = self.open.get(&request.subscription_id) else {
            return unknown(request.subscription_id);
        };
        grants.update(|grants| {
            grants.bytes = grants.bytes.saturating_add(request.bytes);
            grants.records = grants.records.saturating_add(request.records);
        });
        None
    }

    /// Tells subscription `id` to end (`code`: with that error; `None`: unsubscribed).
    fn end(&mut self, id: u64, code: Option<ErrorCode>) -> Option<ErrorInfo> {
        let Some(grants) = self.open.remove(&id) else {
            return unknown(id);
        };
        grants.update(|grants| grants.ended = Some(code));
        None
    }
}

fn unknown(id: u64) -> Option<ErrorInfo> {
    Some(ErrorInfo::new(ErrorCode::UnknownSubscription, format!("no open subscription {id} on this connection")))
}

fn end_frame(error: Option<ErrorInfo>, offset: i64) -> PushBatch {
    PushBatch {
        error,
        high_watermark: -1,
        log_start_offset: -1,
        offset,
        next_offset: offset,
        records: Bytes::new(),
        end: true,
    }
}

/// One subscription's read loop.
struct Pusher<D: Disk> {
    assignments: Arc<Assignments<D>>,
    topic: String,
    partition: PartitionId,
    leader_epoch: Option<LeaderEpoch>,
    /// Where the next push starts.
    offset: Offset,
    grants: Arc<Shared>,
    /// The high watermark and log start of the latest read (for heartbeats sent without one).
    last_read: (Offset, Offset),
    /// Bytes and records pushed so far.
    pushed: (u64, u64),
    ended: bool,
}

impl<D: Disk> Pusher<D> {
    /// The next push, the end frame, or `None` after the end frame.
    async fn next_push(&mut self) -> Option<PushBatch> {
        if self.ended {
            return None;
        }
        let push = self.read().await;
        self.ended = push.end;
        Some(push)
    }

    /// Credit left: (bytes, records), or the end the subscription was told of.
    fn credit(&self) -> Result<(u64, u64), Option<ErrorCode>> {
        let grants = self.grants.get();
        match grants.ended {
            Some(code) => Err(code),
            None => Ok((grants.bytes.saturating_sub(self.pushed.0), grants.records.saturating_sub(self.pushed.1))),
        }
    }

    fn end(&self, code: Option<ErrorCode>, message: impl Into<String>) -> PushBatch {
        let error = code.map(|code| ErrorInfo::new(code, message));
        end_frame(error, self.offset.0)
    }

    /// Waits for credit and for records, and returns one push or the end.
    async fn read(&mut self) -> PushBatch {
        let mut exhausted = false;
        loop {
            let (bytes, records_credit) = match self.credit() {
                Err(code) => return self.end(code, "the broker is stopping"),
                Ok((0, _)) | Ok((_, 0)) => {
                    if !exhausted {
                        exhausted = true;
                        sometimes::hit(Sometimes::PushCreditExhausted);
                    }
                    let wait = Duration::from_millis(u64::from(PUSH_WAIT_MS));
                    if tokio::time::timeout(wait, self.grants.changed.notified()).await.is_err() {
                        let (high_watermark, log_start) = self.last_read;
                        return self.heartbeat(high_watermark, log_start);
                    }
                    continue;
                }
                Ok(credit) => credit,
            };
            let partition = match self.assignments.partition(&self.topic, self.partition) {
                Ok(partition) => partition,
                Err(error) => return self.ended_by(error.code, error.message),
            };
            let bytes_max = if buggify(Point::ShrinkFetch) { 1 } else { bytes.min(PUSH_BYTES_MAX) as u32 };
            let fetch = ConsumerFetch {
                offset: self.offset,
                bytes_max,
                wait_ms_max: PUSH_WAIT_MS,
                leader_epoch: self.leader_epoch,
            };
            let started = tokio::time::Instant::now();
            let pending = partition.consumer_fetch(fetch).await;
            let reply = tokio::select! {
                biased;
                code = told_to_end(&self.grants) => return self.end(code, "the broker is stopping"),
                reply = pending => reply,
            };
            match reply {
                Ok(PartitionReply::Fetched { high_watermark, log_start, records }) if records.is_empty() => {
                    self.last_read = (high_watermark, log_start);
                    if started.elapsed() < EMPTY_READ_PAUSE {
                        tokio::time::sleep(EMPTY_READ_PAUSE).await;
                    }
                    return self.heartbeat(high_watermark, log_start);
                }
                Ok(PartitionReply::Fetched { high_watermark, log_start, records }) => {
                    self.last_read = (high_watermark, log_start);
                    return self.push(high_watermark, log_start, records, records_credit);
                }
                Ok(PartitionReply::Error { code, message }) => return self.ended_by(code, message),
                Ok(other) => {
                    return self.ended_by(ErrorCode::Internal, format!("unexpected partition reply {other:?}"))
                }
                Err(_) => return self.ended_by(ErrorCode::ShuttingDown, "partition stopped before answering"),
            }
        }
    }

    /// A push of the whole batches of `records` that fit the record credit (at least one), from
    /// this subscription's position.
    fn push(&mut self, high_watermark: Offset, log_start: Offset, records: Bytes, records_credit: u64) -> PushBatch {
        let (mut bytes, mut count, mut next) = (0usize, 0u64, self.offset);
        while bytes < records.len() && (count == 0 || count < records_credit) {
            match peek_batch_span(&records[bytes..]) {
                Ok(span) => {
                    bytes += span.bytes;
                    count += u64::from(span.record_count);
                    next = next.max(span.next_offset);
                }
                Err(error) => {
                    return self.ended_by(ErrorCode::Internal, format!("the log returned an unreadable batch: {error}"))
                }
            }
        }
        let push = PushBatch {
            error: None,
            high_watermark: high_watermark.0,
            log_start_offset: log_start.0,
            offset: self.offset.0,
            next_offset: next.0,
            records: records.slice(..bytes),
            end: false,
        };
        self.pushed = (self.pushed.0.saturating_add(bytes as u64), self.pushed.1.saturating_add(count));
        self.offset = next;
        push
    }

    /// A push without records: nothing new within [`PUSH_WAIT_MS`] (or no credit for that long). It
    /// tells the subscriber that the subscription and its connection are alive.
    fn heartbeat(&self, high_watermark: Offset, log_start: Offset) -> PushBatch {
        PushBatch {
            error: None,
            high_watermark: high_watermark.0,
            log_start_offset: log_start.0,
            offset: self.offset.0,
            next_offset: self.offset.0,
            records: Bytes::new(),
            end: false,
        }
    }

    /// The end of a subscription whose read failed with `code`.
    fn ended_by(&self, code: ErrorCode, message: impl Into<String>) -> PushBatch {
        if matches!(code, ErrorCode::NotLeader | ErrorCode::FencedLeaderEpoch) {
            sometimes::hit(Sometimes::PushLeaderMoved);
        }
        self.end(Some(code), message)
    }
}

/// Resolves when the subscription is told to end (`Some(code)`: with that error; `None`:
/// unsubscribed); grants that only add credit are ignored.
async fn told_to_end(grants: &Shared) -> Option<ErrorCode> {
    loop {
        if let Some(code) = grants.get().ended {
            return code;
        }
        grants.changed.notified().await;
    }
}
