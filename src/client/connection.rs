//! One multiplexed connection to a broker: many requests in flight, matched by correlation id.
//!
//! A task owns the socket (madsim has no `into_split`, so one task reads and writes). Callers hand
//! it requests through a bounded channel; the order in which `send` returns is the order in which
//! requests reach the socket. When the socket breaks, every request still waiting gets
//! [`ConnectionError::Lost`]: the broker may or may not have acted on it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::tls::Stream;
use futures::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Framed;

use crate::protocol::frame_codec;
use crate::protocol::{Body, Frame, UnsubscribeRequest};

/// Requests queued for the socket before callers wait.
pub const CONNECTION_QUEUE_MAX: usize = 1024;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ConnectionError {
    /// The request never left this process: safe to retry.
    #[error("connection closed before the request was sent")]
    NotSent,
    /// The connection broke after the request was handed to it: it may have been processed.
    #[error("connection lost with the request in flight: {0}")]
    Lost(String),
    #[error("broker sent a frame that could not be decoded: {0}")]
    BadFrame(String),
}

/// Who waits for the frames of one correlation id: one response, or a subscription's stream of
/// pushes (ADR 0021), which ends with a push marked `end` or with the connection.
enum Waiter {
    Once(oneshot::Sender<Result<Body, ConnectionError>>),
    Stream(PushSender),
    /// One response, into a subscription's channel.
    Reply(PushSender),
}

impl Waiter {
    fn fail(self, error: ConnectionError) {
        match self {
            Waiter::Once(sender) => drop(sender.send(Err(error))),
            Waiter::Stream(sender) | Waiter::Reply(sender) => drop(sender.send(Err(error))),
        }
    }
}

#[derive(Clone)]
pub struct Connection {
    queue: mpsc::Sender<(u64, Body, Waiter)>,
    /// Correlation ids, handed out when a request is queued (a subscription needs its id at once).
    ids: Arc<AtomicU64>,
}

/// A response that will arrive later.
pub type PendingResponse = oneshot::Receiver<Result<Body, ConnectionError>>;

/// The frames a subscription's stream brings, unbounded here: the credit the subscriber grants
/// bounds them (ADR 0021).
pub type PushReceiver = mpsc::UnboundedReceiver<Result<Body, ConnectionError>>;
/// Where a subscription's frames go; also given to [`Connection::send_into`], so that the answers to
/// its credit grants arrive in order with its pushes.
pub type PushSender = mpsc::UnboundedSender<Result<Body, ConnectionError>>;

impl Connection {
    pub fn start(stream: Stream) -> Connection {
        let (queue, receiver) = mpsc::channel(CONNECTION_QUEUE_MAX);
        let ids = Arc::new(AtomicU64::new(1));
        tokio::spawn(run(stream, receiver, ids.clone()));
        Connection { queue, ids }
    }

    pub fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }

    /// Whether both are handles of one connection.
    pub fn same_as(&self, other: &Connection) -> bool {
        self.queue.same_channel(&other.queue)
    }

    /// Queues a request; once this returns `Ok`, the request is ordered after every earlier one.
    pub async fn send(&self, body: Body) -> Result<PendingResponse, ConnectionError> {
        let (waiter, pending) = oneshot::channel();
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        self.queue.send((id, body, Waiter::Once(waiter))).await.map_err(|_| ConnectionError::NotSent)?;
        Ok(pending)
    }

    /// Queues a request whose response nobody waits for, if the queue has room (a credit grant or
    /// an unsubscribe: when the connection is gone, so is the subscription).
    pub fn try_send(&self, body: Body) {
        let (waiter, _) = oneshot::channel();
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let _ = self.queue.try_send((id, body, Waiter::Once(waiter)));
    }

    /// Queues a subscribe request: returns its correlation id (the subscription's id on this
    /// connection), the receiver of every frame the broker sends with it, and a sender into that
    /// receiver for [`Connection::send_into`]. A subscription whose receiver is dropped is ended
    /// by this connection (an unsubscribe is sent at its next frame).
    pub async fn subscribe(&self, body: Body) -> Result<(u64, PushReceiver, PushSender), ConnectionError> {
        let (waiter, frames) = mpsc::unbounded_channel();
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let sender = waiter.clone();
        self.queue.send((id, body, Waiter::Stream(waiter))).await.map_err(|_| ConnectionError::NotSent)?;
        Ok((id, frames, sender))
    }

    /// Queues a request whose one response goes to `frames` (a subscription's own channel) instead
    /// of a waiter of its own. Cancel-safe: dropped before it returns, the request was not queued.
    pub async fn send_into(&self, body: Body, frames: PushSender) -> Result<(), ConnectionError> {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        self.queue.send((id, body, Waiter::Reply(frames))).await.map_err(|_| ConnectionError::NotSent)
    }
}

async fn run(stream: Stream, mut requests: mpsc::Receiver<(u64, Body, Waiter)>, ids: Arc<AtomicU64>) {
    let mut framed = Framed::new(stream, frame_codec());
    let mut waiting: BTreeMap<u64, Waiter> = BTreeMap::new();
    let failure = loop {
        tokio::select! {
            biased;
            incoming = framed.next() => match incoming {
                Some(Ok(bytes)) => match Frame::decode_bytes(bytes.freeze()) {
                    Ok(Frame { correlation_id, body: Some(body), .. }) => {
                        if waiting.contains_key(&correlation_id) {
                            if let Some(abandoned) = deliver(&mut waiting, correlation_id, body) {
                                // Nobody reads this subscription any more: end it at the broker.
                                let body = Body::UnsubscribeRequest(UnsubscribeRequest { subscription_id: abandoned });
                                let frame = Frame::new(ids.fetch_add(1, Ordering::Relaxed), body);
                                if let Err(error) = framed.send(frame.encode_to_bytes()).await {
                                    break ConnectionError::Lost(error.to_string());
                                }
                            }
                        } else if correlation_id == 0 {
                            // The broker could not tie an error to a request: the stream is suspect.
                            break ConnectionError::BadFrame(format!("connection-level error from broker: {body:?}"));
                        }
                    }
                    Ok(frame) => break ConnectionError::BadFrame(format!("frame without body: {frame:?}")),
                    Err(error) => break ConnectionError::BadFrame(error.to_string()),
                },
                Some(Err(error)) => break ConnectionError::Lost(first_read_error(&framed, error)),
                None => break ConnectionError::Lost("broker closed the connection".into()),
            },
            request = requests.recv() => {
                let Some((id, body, waiter)) = request else { break ConnectionError::Lost("client closed".into()) };
                waiting.insert(id, waiter);
                if let Err(error) = framed.send(Frame::new(id, body).encode_to_bytes()).await {
                    break ConnectionError::Lost(error.to_string());
                }
            }
        }
    };
    requests.close();
    for (_, waiter) in std::mem::take(&mut waiting) {
        waiter.fail(failure.clone());
    }
    // Requests queued but never written were not sent.
    while let Ok((_, _, waiter)) = requests.try_recv() {
        waiter.fail(ConnectionError::NotSent);
    }
}

/// What a failed read says. A plain connection whose very first bytes from the broker are not a
/// frame most likely reached a TLS listener (its alert's record header reads as a huge length).
fn first_read_error(framed: &Framed<Stream, tokio_util::codec::LengthDelimitedCodec>, error: std::io::Error) -> String {
    let plain = matches!(framed.get_ref(), Stream::Plain(_));
    if plain && error.kind() == std::io::ErrorKind::InvalidData {
        return format!("{error}: the broker did not answer with a Keel frame (a TLS listener? connect with --tls-ca)");
    }
    error.to_string()
}

/// Hands a frame's body to whoever waits for correlation id `id` (which must be waiting): a
/// response ends the wait, a push ends it when it is a stream's last. Returns the id of a
/// subscription whose receiver was dropped while it goes on (to be ended at the broker).
fn deliver(waiting: &mut BTreeMap<u64, Waiter>, id: u64, body: Body) -> Option<u64> {
    let stream_ends = match &body {
        Body::PushBatch(push) => push.end,
        // A subscribe answered with anything but pushes (an error frame) ends its stream.
        _ => true,
    };
    match waiting.remove(&id)? {
        Waiter::Once(sender) => drop(sender.send(Ok(body))),
        Waiter::Reply(sender) => drop(sender.send(Ok(body))),
        Waiter::Stream(sender) => {
            let delivered = sender.send(Ok(body)).is_ok();
            if !stream_ends {
                if delivered {
                    waiting.insert(id, Waiter::Stream(sender));
                } else {
                    return Some(id);
                }
            }
        }
    }
    None
}
