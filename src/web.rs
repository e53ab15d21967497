//! The web listener (`--ws-listen`): the web client at `/`, and the chat
//! protocol over WebSocket at `/ws`, one JSON frame per text message.
//!
//! A WebSocket connection runs the very session loop a TCP connection runs
//! ([`crate::connection::serve_ws`]): the same limits, identity rules,
//! acknowledgements and resume, and the same connection cap, counted
//! together with the TCP listeners. The client's files are compiled into the
//! binary, so there is nothing to build or install beside it.
//!
//! Behind a balancer the client's address comes from the last entry of
//! `X-Forwarded-For`, believed only from the balancers the node trusts
//! (`--proxy-from`), as with the PROXY protocol on TCP.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::limits::Gate;

use crate::service::Service;

const INDEX_HTML: &str = include_str!("../web/index.html");
const APP_JS: &str = include_str!("../web/app.js");
const STYLE_CSS: &str = include_str!("../web/style.css");

#[derive(Clone)]
struct Web {
    service: Arc<Service>,
    gate: Gate,
    sessions: TaskTracker,
    shutdown: CancellationToken,
}

/// Serves the web client and `/ws` on `listener` until `shutdown`.
///
/// The accept loop is ours rather than `axum::serve`'s, for what a server on
/// the internet needs: every HTTP connection holds a place under the node's
/// connection cap and its address's, request headers must arrive within the
/// frame deadline (hyper's timer; `axum::serve` sets none, so a slow client
/// could hold a connection forever), and accept errors back off. WebSocket
/// sessions are tracked in `sessions`, so the node's graceful shutdown waits
/// for them as for TCP ones.
pub async fn serve(
    listener: TcpListener,
    service: Arc<Service>,
    gate: Gate,
    sessions: TaskTracker,
    shutdown: CancellationToken,
) {
    let header_timeout = service.config().limits.frame_timeout;
    let web = Web {
        service,
        gate: gate.clone(),
        sessions: sessions.clone(),
        shutdown: shutdown.clone(),
    };
    let app = Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/style.css", get(style_css))
        .route("/ws", get(ws))
        .with_state(web.clone());
    crate::transport::accept_each("web", &listener, &sessions, &shutdown, |stream, peer| {
        let places = gate.places(&web.service.config().limits, peer.ip()).ok()?;
        let app = app.clone();
        let shutdown = shutdown.clone();
        Some(async move {
            let hyper_service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    tower::ServiceExt::oneshot(app.clone(), req)
                },
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), hyper_service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), conn).await;
                }
            }
            drop(places);
        })
    })
    .await;
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            // Only our own script and style, and WebSockets to this server.
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'self'; style-src 'self'; \
                     connect-src 'self' ws: wss:; img-src 'self' data:; base-uri 'none'; \
                     form-action 'none'; frame-ancestors 'none'",
                ),
            ),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

/// The client's address: the last `X-Forwarded-For` entry if `peer` is a
/// trusted balancer (the one the balancer itself added), else `peer`.
fn client_addr(web: &Web, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
    if !web.service.config().proxy.trusts(peer.ip()) {
        return peer;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .next_back()
        .and_then(|ip| ip.trim().parse::<std::net::IpAddr>().ok())
        .map_or(peer, |ip| SocketAddr::new(ip, 0))
}

async fn ws(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let client = client_addr(&web, peer, &headers);
    let max_frame = web.service.config().max_frame;
    let (slot, addr_slot) = match web.gate.places(&web.service.config().limits, client.ip()) {
        Ok(slots) => slots,
        Err(why) => return (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    };
    let Web {
        service,
        sessions,
        shutdown,
        gate,
    } = web;
    upgrade
        .max_message_size(max_frame)
        .on_upgrade(move |socket| {
            sessions.track_future(async move {
                let _open = crate::metrics::OpenConnection::count();
                crate::connection::serve_ws(socket, client, service, gate, shutdown).await;
                drop(slot);
                drop(addr_slot);
            })
        })
}
