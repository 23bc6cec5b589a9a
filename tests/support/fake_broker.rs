//! A scripted fake broker for the client tests (`tests/client_fake_broker.rs`,
//! `tests/group_client_fake.rs`): it answers each request frame with whatever frames its script
//! returns (none, one, several, with any correlation ids).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use keel::protocol::{frame_codec, Body, Frame};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;

/// Maps a request (its correlation id and body) to the frames sent back.
pub type Script = Box<dyn FnMut(u64, Body) -> Vec<(u64, Body)> + Send>;

/// Starts a fake broker on a free loopback port that answers every request through `script`.
pub async fn fake_broker(script: Script) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let script = Arc::new(Mutex::new(script));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let script = script.clone();
            tokio::spawn(async move {
                let mut framed = Framed::new(stream, frame_codec());
                while let Some(Ok(bytes)) = framed.next().await {
                    let frame = Frame::decode_bytes(bytes.freeze()).unwrap();
                    let replies = (script.lock().unwrap())(frame.correlation_id, frame.body.unwrap());
                    for (id, body) in replies {
                        if framed.send(Frame::new(id, body).encode_to_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A script answering each request with one reply from `answer`.
pub fn one_reply(mut answer: impl FnMut(Body) -> Body + Send + 'static) -> Script {
    Box::new(move |id, body| vec![(id, answer(body))])
}
