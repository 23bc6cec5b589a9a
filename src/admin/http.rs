//! The admin listener's HTTP/1.1 shell: hyper connections over the runtime's `TcpStream`, each
//! request routed by [`super::route`] and answered by [`super::Admin::answer`].

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{route, Admin, Answer, CONNECTIONS_MAX, HEADER_READ_TIMEOUT};

/// Serves `listener` until `shutdown`; connections in progress end with the process.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "admin listener: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(crate::server::ACCEPT_RETRY_MS)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = CONNECTIONS_MAX, "admin listener: connection refused, too many open");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(respond(&admin, request).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "admin connection ended with an error");
            }
            drop(permit);
        });
    }
}

async fn respond(admin: &Admin, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = request.method().as_str().to_owned();
    let route = route(&method, request.uri().path());
    let Answer { status, content_type, body } = admin.answer(route.clone()).await;
    let body = if method == "HEAD" { Bytes::new() } else { Bytes::from(body) };
    let mut response =
        Response::builder().status(status).header("content-type", content_type).header("cache-control", "no-store");
    if route == super::Route::MethodNotAllowed {
        response = response.header("allow", "GET, HEAD");
    }
    response.body(Full::new(body)).expect("a status, two known headers and a body make a response")
}
