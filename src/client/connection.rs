//! One multiplexed connection to a broker: many requests in flight, matched by correlation id.
//!
//! A task owns the socket (madsim has no `into_split`, so one task reads and writes). Callers hand
//! it requests through a bounded channel; the order in which `send` returns is the order in which
//! requests reach the socket. When the socket breaks, every request still waiting gets
//! [`ConnectionError::Lost`]: the broker may or may not have acted on it.

use std::collections::BTreeMap;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Framed;

use crate::protocol::frame_codec;
use crate::protocol::{Body, Frame};

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

type Waiter = oneshot::Sender<Result<Body, ConnectionError>>;

#[derive(Clone)]
pub struct Connection {
    queue: mpsc::Sender<(Body, Waiter)>,
}

/// A response that will arrive later.
pub type PendingResponse = oneshot::Receiver<Result<Body, ConnectionError>>;

impl Connection {
    pub fn start(stream: TcpStream) -> Connection {
        let (queue, receiver) = mpsc::channel(CONNECTION_QUEUE_MAX);
        tokio::spawn(run(stream, receiver));
        Connection { queue }
    }

    pub fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }

    /// Queues a request; once this returns `Ok`, the request is ordered after every earlier one.
    pub async fn send(&self, body: Body) -> Result<PendingResponse, ConnectionError> {
        let (waiter, pending) = oneshot::channel();
        self.queue.send((body, waiter)).await.map_err(|_| ConnectionError::NotSent)?;
        Ok(pending)
    }
}

async fn run(stream: TcpStream, mut requests: mpsc::Receiver<(Body, Waiter)>) {
    let mut framed = Framed::new(stream, frame_codec());
    let mut waiting: BTreeMap<u64, Waiter> = BTreeMap::new();
    let mut next_id: u64 = 1;
    let failure = loop {
        tokio::select! {
            biased;
            incoming = framed.next() => match incoming {
                Some(Ok(bytes)) => match Frame::decode_bytes(bytes.freeze()) {
                    Ok(Frame { correlation_id, body: Some(body), .. }) => {
                        if let Some(waiter) = waiting.remove(&correlation_id) {
                            let _ = waiter.send(Ok(body));
                        } else if correlation_id == 0 {
                            // The broker could not tie an error to a request: the stream is suspect.
                            break ConnectionError::BadFrame(format!("connection-level error from broker: {body:?}"));
                        }
                    }
                    Ok(frame) => break ConnectionError::BadFrame(format!("frame without body: {frame:?}")),
                    Err(error) => break ConnectionError::BadFrame(error.to_string()),
                },
                Some(Err(error)) => break ConnectionError::Lost(error.to_string()),
                None => break ConnectionError::Lost("broker closed the connection".into()),
            },
            request = requests.recv() => {
                let Some((body, waiter)) = request else { break ConnectionError::Lost("client closed".into()) };
                let id = next_id;
                next_id += 1;
                waiting.insert(id, waiter);
                if let Err(error) = framed.send(Frame::new(id, body).encode_to_bytes()).await {
                    break ConnectionError::Lost(error.to_string());
                }
            }
        }
    };
    requests.close();
    for (_, waiter) in std::mem::take(&mut waiting) {
        let _ = waiter.send(Err(failure.clone()));
    }
    // Requests queued but never written were not sent.
    while let Ok((_, waiter)) = requests.try_recv() {
        let _ = waiter.send(Err(ConnectionError::NotSent));
    }
}
