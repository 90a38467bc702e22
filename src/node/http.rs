//! The node's HTTP server (hyper, HTTP/1.1, one request per connection).
//!
//! `--http ADDR` serves the web dashboard:
//! - `/` the page, `/dashboard.css` and `/dashboard.js` its assets (embedded, `dashboard`);
//! - `/api/status`: the `status --json` report; asked with `Accept: text/event-stream`, a stream
//!   of Server-Sent Events instead: `throughput` (at first the samples of the last ten minutes,
//!   then each new one), `status` (the report, once a second and at once when the revision
//!   changes), and a `: ping` comment when there was nothing to say for [`STREAM_PING`];
//! - `/metrics`: Prometheus text (`metrics`).
//!
//! `--metrics ADDR` serves `/metrics` alone, from the same code, as it did before the dashboard.
//!
//! Safe by default (each point has a test in `tests/dashboard.rs`):
//! - read-only: GET and HEAD only, nothing served changes the node, no file is read from disk;
//! - no key material: the report names the publisher's public key and this node's peer ID,
//!   never a secret key;
//! - a non-loopback address needs a token ([`check_token`], at start); with a token set, the
//!   page, the API and `/metrics` ask for it (`?token=` or `Authorization: Bearer`), the two
//!   assets do not (they hold no data);
//! - bounded: [`MAX_CONNECTIONS`] at once (one more is answered 503 and closed at once), at
//!   most [`MAX_EVENT_STREAMS`] of them event streams; a request head of at most
//!   [`MAX_REQUEST_HEAD`] bytes, read within [`HEAD_TIMEOUT`]; a plain request answered within
//!   [`ANSWER_TIMEOUT`]; an event stream whose client stops reading for [`STREAM_STALL`] is
//!   dropped. Every connection is its own task and every report is made on its own, so a slow
//!   client holds its own connection, never the node or another client;
//! - a strict Content-Security-Policy: no inline script or style, nothing from elsewhere.
//!
//! Must not: serve anything but what is listed here, or take a lock or a channel the node's
//! tasks wait on (it reads the report through `report::Reporter` like `treecast status`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::dashboard;
use super::error::NodeError;
use super::metrics;
use super::report::{Live, Reporter};

/// Connections served at once; one more is answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 32;
/// Event streams (`/api/status` as Server-Sent Events) open at once.
pub const MAX_EVENT_STREAMS: usize = 8;
/// Largest request head (request line and headers); hyper's smallest buffer.
pub const MAX_REQUEST_HEAD: usize = 8192;
/// Time a client has to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a plain request has from connecting to its answer having been written.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// An event stream whose client took nothing for this long is dropped.
pub const STREAM_STALL: Duration = Duration::from_secs(20);
/// An event stream with nothing to say sends a comment this often.
pub const STREAM_PING: Duration = Duration::from_secs(5);
/// How long a refused connection is read from before it is closed.
const REFUSE_DRAIN: Duration = Duration::from_secs(1);
/// Shortest `--http-token`.
pub const MIN_TOKEN_LEN: usize = 16;
/// The kernel's send buffer for each connection: what a client that does not read can keep
/// the node holding, at most (the kernel may double it).
const SEND_BUFFER: usize = 16 * 1024;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

type Body = BoxBody<Bytes, Infallible>;

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Routes {
    /// `--metrics`: `/metrics` alone.
    MetricsOnly,
    /// `--http`: the dashboard, the API and `/metrics`.
    Dashboard,
}

/// Check `--http ADDR` and `--http-token` before anything starts: a non-loopback address
/// needs a token, and a token must be long and plain enough to pass in a URL as it is.
pub(crate) fn check_token(addr: SocketAddr, token: Option<&str>) -> Result<(), NodeError> {
    let refused = |why: String| Err(NodeError::Refused(why));
    let Some(token) = token else {
        if addr.ip().is_loopback() {
            return Ok(());
        }
        return refused(format!(
            "--http {addr} is not a loopback address: set --http-token (or http-token in the \
             config file) so that only who holds the token sees the dashboard"
        ));
    };
    if token.len() < MIN_TOKEN_LEN {
        return refused(format!(
            "--http-token is too short: use at least {MIN_TOKEN_LEN} characters"
        ));
    }
    let plain = |c: char| c.is_ascii_alphanumeric() || "-._~".contains(c);
    if !token.chars().all(plain) {
        return refused(
            "--http-token may hold only letters, digits and - . _ ~ (it travels in URLs)".into(),
        );
    }
    Ok(())
}

/// Bind a listener (at start, so a bad or busy address is a clear start-up error).
pub(crate) async fn bind(
    addr: SocketAddr,
    routes: Routes,
) -> Result<tokio::net::TcpListener, NodeError> {
    let what = match routes {
        Routes::MetricsOnly => "metrics",
        Routes::Dashboard => "the dashboard (--http)",
    };
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| NodeError::Refused(format!("cannot serve {what} on {addr}: {e}")))
}

/// What one listener serves, shared by its connections.
struct Site {
    routes: Routes,
    token: Option<String>,
    reporter: Reporter,
    streams: Arc<Semaphore>,
    cancel: CancellationToken,
}

/// Serve `listener` until `cancel`.
pub(crate) fn spawn(
    tasks: &mut tokio::task::JoinSet<()>,
    listener: tokio::net::TcpListener,
    routes: Routes,
    token: Option<String>,
    reporter: Reporter,
    cancel: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        match routes {
            Routes::MetricsOnly => {
                info!(%addr, "serving Prometheus metrics at http://{addr}/metrics")
            }
            Routes::Dashboard => info!(%addr, "serving the dashboard at http://{addr}/"),
        }
    }
    let site = Arc::new(Site {
        routes,
        token,
        reporter,
        streams: Arc::new(Semaphore::new(MAX_EVENT_STREAMS)),
        cancel,
    });
    tasks.spawn(accept(listener, site));
}

async fn accept(listener: tokio::net::TcpListener, site: Arc<Site>) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let conn = tokio::select! {
            _ = site.cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((conn, _)) => conn,
                Err(e) => {
                    warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = socket2::SockRef::from(&conn).set_send_buffer_size(SEND_BUFFER);
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            debug!("http: {MAX_CONNECTIONS} connections open, one more refused");
            tokio::spawn(refuse(conn));
            continue;
        };
        let site = site.clone();
        tokio::spawn(async move {
            site.serve(conn).await;
            drop(permit);
        });
    }
}

/// Answer a connection over the limit with a 503 and close it. Writing never waits (the
/// answer fits any socket buffer); what the client sent is read for at most [`REFUSE_DRAIN`]
/// first, so that closing does not reset the connection before the answer is read.
async fn refuse(mut conn: tokio::net::TcpStream) {
    let busy = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
                 content-length: 22\r\nconnection: close\r\n\r\ntoo many connections\r\n";
    let _ = conn.try_write(busy);
    let _ = conn.shutdown().await;
    let mut sink = [0u8; 1024];
    let drain = async { while matches!(conn.read(&mut sink).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(REFUSE_DRAIN, drain).await;
}

/// When a connection is given up on; pushed back by an event stream each time it sends.
struct Deadline {
    base: Instant,
    at_ms: AtomicU64,
}

impl Deadline {
    fn after(wait: Duration) -> Self {
        Deadline {
            base: Instant::now(),
            at_ms: AtomicU64::new(wait.as_millis() as u64),
        }
    }

    fn extend(&self, wait: Duration) {
        let at = self.base.elapsed() + wait;
        self.at_ms.store(at.as_millis() as u64, Ordering::Relaxed);
    }

    fn at(&self) -> Instant {
        self.base + Duration::from_millis(self.at_ms.load(Ordering::Relaxed))
    }

    async fn passed(&self) {
        while Instant::now() < self.at() {
            tokio::time::sleep_until(self.at()).await;
        }
    }
}

impl Site {
    async fn serve(self: Arc<Self>, conn: tokio::net::TcpStream) {
        let deadline = Arc::new(Deadline::after(ANSWER_TIMEOUT));
        let svc = {
            let (site, deadline) = (self.clone(), deadline.clone());
            hyper::service::service_fn(move |req| {
                let (site, deadline) = (site.clone(), deadline.clone());
                async move { Ok::<_, Infallible>(site.respond(req, deadline).await) }
            })
        };
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEAD_TIMEOUT)
            .max_buf_size(MAX_REQUEST_HEAD)
            .keep_alive(false);
        let serve = http.serve_connection(hyper_util::rt::TokioIo::new(conn), svc);
        tokio::select! {
            r = serve => if let Err(e) = r { debug!(error = %e, "http connection") },
            _ = deadline.passed() => debug!("http client too slow: connection dropped"),
            _ = self.cancel.cancelled() => {}
        }
    }

    async fn respond<B>(&self, req: Request<B>, deadline: Arc<Deadline>) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut r = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "the dashboard is read-only: GET and HEAD only\n",
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let path = req.uri().path();
        match (self.routes, path) {
            (_, "/metrics") if self.allows(&req) => self.metrics().await,
            (Routes::MetricsOnly, _) => {
                text(StatusCode::NOT_FOUND, "treecast serves /metrics only\n")
            }
            (_, "/dashboard.css") => asset("text/css; charset=utf-8", dashboard::STYLE_CSS),
            (_, "/dashboard.js") => asset("text/javascript; charset=utf-8", dashboard::SCRIPT_JS),
            (_, "/" | "/index.html" | "/api/status" | "/metrics") if !self.allows(&req) => {
                unauthorized()
            }
            (_, "/" | "/index.html") => asset("text/html; charset=utf-8", dashboard::INDEX_HTML),
            (_, "/api/status") if wants_events(req.headers()) => self.events(deadline),
            (_, "/api/status") => self.status().await,
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    /// The request carries the token, or none is needed.
    fn allows<B>(&self, req: &Request<B>) -> bool {
        let Some(want) = &self.token else {
            return true;
        };
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let query = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
        [bearer, query]
            .into_iter()
            .flatten()
            .any(|t| same(t.trim().as_bytes(), want.as_bytes()))
    }

    async fn metrics(&self) -> Response<Body> {
        match self.reporter.report().await {
            Ok(report) => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics::render(&report),
            ),
            Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
        }
    }

    async fn status(&self) -> Response<Body> {
        match self.reporter.report().await {
            Ok(report) => reply(
                StatusCode::OK,
                "application/json",
                serde_json::to_string(&report).expect("report serialises"),
            ),
            Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
        }
    }

    /// `/api/status` as Server-Sent Events.
    fn events(&self, deadline: Arc<Deadline>) -> Response<Body> {
        let Ok(permit) = self.streams.clone().try_acquire_owned() else {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{MAX_EVENT_STREAMS} dashboards are open: close one\n"),
            );
        };
        let mut live = self.reporter.live();
        let mut first = String::from("retry: 3000\n\n");
        let current = live.borrow_and_update().clone();
        let window = self.reporter.throughput_window();
        first.push_str(&event("throughput", &window));
        if let Some(current) = current {
            first.push_str(&event("status", &current.report));
        }
        let stream = Events {
            live,
            first: Some(first),
            deadline,
            cancel: self.cancel.clone(),
            _permit: permit,
        };
        let frames = futures::stream::unfold(stream, |mut s| async move {
            let chunk = s.next().await?;
            Some((Ok::<_, Infallible>(Frame::data(Bytes::from(chunk))), s))
        });
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(frames)));
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        secure(h);
        r
    }
}

/// One client's event stream.
struct Events {
    live: watch::Receiver<Option<Arc<Live>>>,
    first: Option<String>,
    deadline: Arc<Deadline>,
    cancel: CancellationToken,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Events {
    /// The next piece of the stream; `None` ends it.
    async fn next(&mut self) -> Option<String> {
        if let Some(first) = self.first.take() {
            self.deadline.extend(STREAM_STALL);
            return Some(first);
        }
        let out = tokio::select! {
            _ = self.cancel.cancelled() => return None,
            changed = self.live.changed() => {
                changed.ok()?;
                let live = self.live.borrow_and_update().clone()?;
                let mut out = String::new();
                if let Some(sample) = &live.sample {
                    out.push_str(&event("throughput", &[sample]));
                }
                out.push_str(&event("status", &live.report));
                out
            }
            _ = tokio::time::sleep(STREAM_PING) => ": ping\n\n".to_string(),
        };
        self.deadline.extend(STREAM_STALL);
        Some(out)
    }
}

/// A Server-Sent Event carrying `data` as one line of JSON.
fn event(name: &str, data: &impl serde::Serialize) -> String {
    let json = serde_json::to_string(data).expect("serialises");
    format!("event: {name}\ndata: {json}\n\n")
}

fn wants_events(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

/// Equal, in a time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn secure(h: &mut HeaderMap) {
    let set = |h: &mut HeaderMap, k: header::HeaderName, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(h, header::CONTENT_SECURITY_POLICY, CSP);
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::CACHE_CONTROL, "no-store");
}

fn reply(code: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(BodyExt::boxed(Full::new(body.into())));
    *r.status_mut() = code;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    secure(h);
    r
}

fn text(code: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    reply(code, "text/plain; charset=utf-8", body)
}

fn asset(ctype: &'static str, body: &'static str) -> Response<Body> {
    reply(StatusCode::OK, ctype, Bytes::from_static(body.as_bytes()))
}

fn unauthorized() -> Response<Body> {
    let mut r = text(
        StatusCode::UNAUTHORIZED,
        "this dashboard needs its token: open /?token=TOKEN, or send \
         `Authorization: Bearer TOKEN`\n",
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"treecast\""),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_loopback_address_needs_a_plain_long_token() {
        let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let v6: SocketAddr = "[::1]:0".parse().unwrap();
        assert!(check_token(lo, None).is_ok());
        assert!(check_token(v6, None).is_ok());
        let err = check_token(any, None).unwrap_err().to_string();
        assert!(err.contains("--http-token"), "{err}");
        assert!(check_token(any, Some("short")).is_err());
        assert!(check_token(any, Some("has a space in it ok")).is_err());
        assert!(check_token(any, Some("abcdefgh-12345678_~.")).is_ok());
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }
}
