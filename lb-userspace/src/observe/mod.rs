//! What gerbang shows of itself: a status page, a JSON API and a Prometheus endpoint over
//! HTTP, and the tables `gerbang status` prints.
//!
//! Everything is read on demand from the controller's [`Status`](crate::controller::Status)
//! through a [`ControllerHandle`]: a request costs one status snapshot (the data plane's
//! per-CPU counters summed then), and nothing is counted per packet in userspace.
//!
//! - `view`: [`StatusView`], the one shape every output is made from, and the JSON API;
//! - `metrics`: `/metrics` in the OpenMetrics text format, with HAProxy's metric shapes;
//! - `text`: [`render`], the terminal tables of `gerbang status`;
//! - `page.html`: the status page, static, refreshing itself from the JSON API.
//!
//! | path | what |
//! |---|---|
//! | `/` | the status page |
//! | `/api/status` | [`StatusView`] as JSON |
//! | `/metrics` | OpenMetrics text |
//!
//! The server is read-only and listens on loopback unless configured otherwise
//! (`[http] listen`); no secret of the configuration is in anything it serves.

mod metrics;
mod text;
mod view;

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpSocket},
    task::{JoinHandle, JoinSet},
};
use tracing::{debug, info, warn};

pub use self::{
    text::render,
    view::{
        AttachmentView, BackendView, CheckView, DataplaneView, FlowsView, ServiceView, StatusView,
        TrafficView, UpdatesView, VipHolder, VrrpView,
    },
};
use crate::controller::ControllerHandle;

/// The status page: one file, no build step, no external resource.
const PAGE: &str = include_str!("page.html");
/// Connections served at once; more are closed at once. A status page and a few scrapers
/// need a handful.
const MAX_CONNECTIONS: usize = 64;
/// A client that has not sent its request headers by then is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP listener, bound but not serving yet: binding comes first so that a taken port
/// stops gerbang before it touches the data plane.
pub struct HttpServer {
    listener: TcpListener,
    address: SocketAddr,
}

/// The server, running; dropping it stops it and every connection it serves (they hold
/// controller handles, which must not outlive the controller).
pub struct Serving {
    address: SocketAddr,
    task: JoinHandle<()>,
}

impl HttpServer {
    /// Binds `listen` (port 0: any free port, see [`Serving::address`]). Must be called
    /// inside a tokio runtime, in the network namespace to listen in.
    pub fn bind(listen: SocketAddr) -> Result<HttpServer> {
        let listener = listen_on(listen).with_context(|| {
            format!(
                "listening on {listen} for the status page and metrics: set [http] listen to \
                 a free address and port, or enabled = false"
            )
        })?;
        Ok(HttpServer {
            address: listener.local_addr()?,
            listener,
        })
    }

    /// Serves the status page, the JSON API and `/metrics` from `controller` until dropped.
    pub fn serve(self, controller: ControllerHandle) -> Serving {
        let address = self.address;
        info!("status page on http://{address}/, metrics on http://{address}/metrics");
        Serving {
            address,
            task: tokio::spawn(accept_loop(self.listener, controller)),
        }
    }
}

impl Serving {
    /// Where it listens: the configured address, with the port chosen if it was 0.
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection.
        self.task.abort();
    }
}

fn listen_on(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // A restart must not wait for the last run's connections to leave TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(128)
}

async fn accept_loop(listener: TcpListener, controller: ControllerHandle) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if connections.len() >= MAX_CONNECTIONS {
                        debug!(%peer, "too many HTTP connections, closing this one");
                        continue;
                    }
                    let controller = controller.clone();
                    connections.spawn(async move {
                        let service = service_fn(move |request| respond(request, controller.clone()));
                        let served = http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(HEADER_TIMEOUT)
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                        if let Err(err) = served {
                            debug!(%peer, "HTTP connection: {err}");
                        }
                    });
                }
                Err(err) => {
                    // Out of file descriptors, say: wait rather than spin.
                    warn!("accepting an HTTP connection: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next() => {}
        }
    }
}

async fn respond(
    request: Request<Incoming>,
    controller: ControllerHandle,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(response);
    }
    let content_type = match request.uri().path() {
        "/" => return Ok(page()),
        "/api/status" => "application/json",
        "/metrics" => metrics::CONTENT_TYPE,
        _ => {
            return Ok(plain(
                StatusCode::NOT_FOUND,
                "not found: / is the status page, /api/status its JSON, /metrics for Prometheus\n",
            ));
        }
    };
    let status = match controller.status().await {
        Ok(status) => StatusView::new(&status),
        Err(err) => {
            return Ok(plain(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("gerbang has no status to show: {err:#}\n"),
            ));
        }
    };
    let body = if content_type == metrics::CONTENT_TYPE {
        metrics::encode(&status)
    } else {
        status.to_json()
    };
    Ok(with_headers(Response::new(Full::from(body)), content_type))
}

fn page() -> Response<Full<Bytes>> {
    let mut response = with_headers(
        Response::new(Full::from(Bytes::from_static(PAGE.as_bytes()))),
        "text/html; charset=utf-8",
    );
    // The page loads nothing from anywhere but this server.
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; connect-src 'self'; script-src 'unsafe-inline'; \
             style-src 'unsafe-inline'",
        ),
    );
    response
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = with_headers(
        Response::new(Full::from(text.to_owned())),
        "text/plain; charset=utf-8",
    );
    *response.status_mut() = status;
    response
}

/// Content type, and no caching: every answer is a snapshot.
fn with_headers(
    mut response: Response<Full<Bytes>>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_taken_port_says_which_setting_to_change() {
        let first = HttpServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(first.address.port(), 0);
        let message = format!("{:#}", HttpServer::bind(first.address).err().unwrap());
        assert!(
            message.contains("in use") && message.contains("[http] listen"),
            "{message}"
        );
    }
}
