//! The web dashboard's HTTP API (`--http`): the report at `/api/status` and its event stream
//! following a real rollout, and each safety point: loopback by default and a token anywhere
//! else, read-only, no key material, a strict Content-Security-Policy, bounded connections and
//! request heads, and clients that stop reading holding neither `/metrics` nor the node. The
//! page itself is tested in a real browser by `scripts/browser-test`.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use treecast::node::http::{MAX_CONNECTIONS, MAX_EVENT_STREAMS};
use treecast::node::report::StatusReport;
use treecast::node::ThroughputSample;
use treecast::{Node, NodeHandle};

const TOKEN: &str = "correct-horse-battery-staple-42";
const MIB: usize = 1 << 20;

/// A publisher of `dir` serving the dashboard on `http` (with `token`).
async fn dashboard_publisher(dir: &Path, http: &str, token: Option<&str>) -> NodeHandle {
    let mut cfg = config(dir);
    cfg.http = Some(http.parse().unwrap());
    cfg.http_token = token.map(str::to_string);
    Node::publish(cfg, test_key())
        .await
        .expect("publisher starts")
}

/// An HTTP answer: status code, head (lower-cased), body.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn parse(raw: &[u8]) -> Reply {
        let text = String::from_utf8_lossy(raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
        Reply {
            status,
            head: head.to_lowercase(),
            body: body.to_string(),
        }
    }
}

/// Send `raw` on a new connection and read the answer to its end (the server closes).
async fn exchange(addr: SocketAddr, raw: &[u8]) -> Reply {
    let talk = async {
        let mut conn = TcpStream::connect(addr).await?;
        conn.write_all(raw).await?;
        let mut out = Vec::new();
        conn.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let out = tokio::time::timeout(WAIT, talk)
        .await
        .expect("the server answers")
        .expect("talking to the server");
    Reply::parse(&out)
}

async fn request(addr: SocketAddr, method: &str, path: &str, headers: &str) -> Reply {
    let raw = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n{headers}\r\n");
    exchange(addr, raw.as_bytes()).await
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, "").await
}

/// A client of `/api/status` as Server-Sent Events (HTTP/1.0, so the stream is not chunked).
struct EventStream {
    conn: tokio::io::BufReader<TcpStream>,
}

impl EventStream {
    /// Open it; the status code of the answer, and the stream when it is 200.
    async fn open(addr: SocketAddr, path: &str) -> (u16, Option<EventStream>) {
        let conn = TcpStream::connect(addr).await.expect("connect");
        Self::open_on(conn, path).await
    }

    async fn open_on(mut conn: TcpStream, path: &str) -> (u16, Option<EventStream>) {
        let req = format!("GET {path} HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n");
        conn.write_all(req.as_bytes()).await.expect("send");
        let mut conn = tokio::io::BufReader::new(conn);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(WAIT, conn.read_line(&mut line))
                .await
                .expect("an answer")
                .expect("read");
            if n == 0 || line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let status = Reply::parse(head.as_bytes()).status;
        if status != 200 {
            return (status, None);
        }
        assert!(
            head.to_lowercase()
                .contains("content-type: text/event-stream"),
            "{head}"
        );
        (status, Some(EventStream { conn }))
    }

    /// The next event: its name and data (comments and `retry:` skipped).
    async fn next(&mut self) -> (String, String) {
        let (mut name, mut data) = (String::new(), String::new());
        loop {
            let mut line = String::new();
            let n = self.conn.read_line(&mut line).await.expect("read event");
            assert!(n > 0, "the event stream ended");
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() && !name.is_empty() {
                return (name, data);
            }
            if let Some(v) = line.strip_prefix("event: ") {
                name = v.to_string();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push_str(v);
            }
        }
    }

    /// Read events until `pick` returns something, within `WAIT`.
    async fn until<T>(&mut self, what: &str, mut pick: impl FnMut(&str, &str) -> Option<T>) -> T {
        let read = async {
            loop {
                let (name, data) = self.next().await;
                if let Some(t) = pick(&name, &data) {
                    return t;
                }
            }
        };
        tokio::time::timeout(WAIT, read)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what} on the event stream"))
    }
}

/// The report in a `status` event.
fn status_event(name: &str, data: &str) -> Option<StatusReport> {
    (name == "status").then(|| serde_json::from_str(data).expect("a status event is a report"))
}

/// Run `treecast status DIR --json` (over the control socket).
fn status_json(dir: &Path) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_treecast"))
        .args(["status", "--json"])
        .arg(dir)
        .output()
        .expect("run treecast status");
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("json")
}

fn keys(v: &serde_json::Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
    k.sort();
    k
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_status_is_the_status_report_and_its_stream_follows_a_rollout() {
    let lab = Lab::new();
    let src = lab.dir("publisher");
    write(&src, "a.bin", &noise(3 * MIB, 41));
    let p = dashboard_publisher(&src, "127.0.0.1:0", None).await;
    let addr = p.http_addr().expect("the dashboard's address");
    assert!(addr.ip().is_loopback());
    let (_, events) = EventStream::open(addr, "/api/status").await;
    let mut events = events.expect("an event stream");
    // It starts with the throughput of the last ten minutes.
    let (name, data) = events.next().await;
    assert_eq!(name, "throughput");
    let _: Vec<ThroughputSample> = serde_json::from_str(&data).expect("samples");
    let s1 = subscriber(&lab.dir("s1"), p.ticket()).await;
    let s2 = subscriber(&lab.dir("s2"), p.ticket()).await;
    let subs = [s1.peer_id().to_string(), s2.peer_id().to_string()];

    let mut peak_up = 0.0f64;
    let mut watch = |name: &str, data: &str, want: u64| {
        if name == "throughput" {
            let samples: Vec<ThroughputSample> = serde_json::from_str(data).unwrap();
            for s in samples {
                peak_up = peak_up.max(s.up.values().sum());
            }
        }
        let r = status_event(name, data)?;
        let ro = r.rollout.as_ref()?;
        (ro.revision == want && ro.holding == 2 && ro.subscribers == 2).then_some(r)
    };
    let one = events
        .until("revision 1 held by both subscribers", |n, d| watch(n, d, 1))
        .await;
    let ro = one.rollout.as_ref().unwrap();
    assert!(ro.behind.is_empty());
    let complete = ro.complete_unix_ms.expect("complete");
    assert_eq!(complete - ro.published_unix_ms, ro.elapsed_ms);
    let mut holders: Vec<String> = ro.holders.iter().map(|h| h.peer.clone()).collect();
    holders.sort();
    let mut want = subs.to_vec();
    want.sort();
    assert_eq!(holders, want);
    assert!(ro
        .holders
        .iter()
        .all(|h| h.since_unix_ms >= ro.published_unix_ms && h.since_unix_ms <= complete));
    assert_eq!(ro.history.len(), 1);
    assert_eq!(ro.history[0].revision, 1);
    assert!(one.now_unix_ms >= complete);

    // The plain JSON: the schema of `status --json`, from the same node.
    let reply = get(addr, "/api/status").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.head.contains("content-type: application/json"));
    let api: serde_json::Value = serde_json::from_str(&reply.body).expect("json");
    let cli = status_json(&src);
    assert_eq!(keys(&api), keys(&cli));
    assert_eq!(keys(&api["rollout"]), keys(&cli["rollout"]));
    assert_eq!(
        (api["schema"].as_u64(), cli["schema"].as_u64()),
        (Some(1), Some(1))
    );
    let report: StatusReport = serde_json::from_value(api).expect("a StatusReport");
    assert_eq!(report.role, "publisher");
    assert_eq!(report.peer_id, p.peer_id().to_string());
    assert_eq!(report.rollout.unwrap().history[0].revision, 1);

    // A new revision: the same stream shows it rolling out and complete.
    write(&src, "b.bin", &noise(2 * MIB, 42));
    assert_eq!(p.rescan().await.unwrap(), Some(2));
    let two = events
        .until("revision 2 held by both subscribers", |n, d| watch(n, d, 2))
        .await;
    let ro = two.rollout.unwrap();
    let revisions: Vec<u64> = ro.history.iter().map(|h| h.revision).collect();
    assert_eq!(revisions, vec![2, 1], "newest first");
    assert!(ro.history.iter().all(|h| h.complete_unix_ms.is_some()));
    assert!(
        ro.published_unix_ms >= complete,
        "published after 1 completed"
    );
    assert!(
        peak_up > 0.0,
        "the throughput samples show the publisher's upload"
    );
    s1.shutdown().await;
    s2.shutdown().await;
    p.shutdown().await;
}

/// A `treecast` process killed when dropped (a failing test leaves none running).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_bind_needs_a_token_that_the_page_and_the_api_ask_for() {
    let lab = Lab::new();
    let src = lab.dir("publisher");
    write(&src, "a.txt", b"hello");
    // No token: the node does not start, and says why.
    let mut cfg = config(&src);
    cfg.http = Some("0.0.0.0:0".parse().unwrap());
    let err = Node::publish(cfg, test_key()).await.err().expect("refused");
    assert!(err.to_string().contains("--http-token"), "{err}");
    // Nor does the command, with a non-zero exit.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_treecast"));
    cmd.args([
        "publish",
        "--listen",
        "127.0.0.1:0",
        "--no-mdns",
        "--no-upnp",
    ])
    .args(["--http", "0.0.0.0:0"])
    .arg(lab.dir("cli"))
    .env_remove("TREECAST_HTTP_TOKEN")
    .env("TREECAST_CONFIG", lab.tmp.path().join("none.toml"))
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped());
    std::fs::write(lab.tmp.path().join("none.toml"), "").unwrap();
    let mut child = Child(cmd.spawn().expect("start treecast"));
    let status = eventually_ok(WAIT, "treecast publish to exit", || {
        let exited = match child.0.try_wait() {
            Ok(Some(status)) => Ok(status),
            Ok(None) => Err("still running".to_string()),
            Err(e) => Err(e.to_string()),
        };
        async move { exited }
    })
    .await;
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("--http-token"), "{stderr}");

    // With a token, on every address; reached here over loopback.
    let p = dashboard_publisher(&src, "0.0.0.0:0", Some(TOKEN)).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], p.http_addr().unwrap().port()));
    let wrong = "incorrect-horse-battery-staple";
    for path in ["/", "/api/status", "/metrics"] {
        let none = get(addr, path).await;
        assert_eq!(none.status, 401, "{path} without the token: {none:?}");
        assert!(none.head.contains("www-authenticate: bearer"));
        assert!(!none.body.contains(&p.ticket().swarm_id.to_string()));
        let bad = get(addr, &format!("{path}?token={wrong}")).await;
        assert_eq!(bad.status, 401, "{path} with a wrong token");
        let bad = request(
            addr,
            "GET",
            path,
            &format!("Authorization: Bearer {wrong}\r\n"),
        )
        .await;
        assert_eq!(bad.status, 401, "{path} with a wrong bearer token");
        let prefix = request(addr, "GET", path, "Authorization: Bearer correct\r\n").await;
        assert_eq!(prefix.status, 401, "{path} with a prefix of the token");
        let ok = get(addr, &format!("{path}?token={TOKEN}")).await;
        assert_eq!(ok.status, 200, "{path} with the token");
        let ok = request(
            addr,
            "GET",
            path,
            &format!("Authorization: Bearer {TOKEN}\r\n"),
        )
        .await;
        assert_eq!(ok.status, 200, "{path} with the bearer token");
    }
    let (status, _) = EventStream::open(addr, "/api/status").await;
    assert_eq!(status, 401, "the event stream without the token");
    let (status, stream) = EventStream::open(addr, &format!("/api/status?token={TOKEN}")).await;
    assert_eq!(status, 200);
    let mut stream = stream.unwrap();
    let report = stream.until("a report", status_event).await;
    assert_eq!(report.swarm_id, p.ticket().swarm_id);
    // The page's script and style hold no data and load without it.
    for path in ["/dashboard.js", "/dashboard.css"] {
        let r = get(addr, path).await;
        assert_eq!(r.status, 200, "{path}");
        assert!(!r.body.contains(&p.ticket().swarm_id.to_string()));
    }
    p.shutdown().await;
}

/// Every form a 32-byte secret could be shown in.
fn encodings(secret: &[u8]) -> Vec<String> {
    use data_encoding::*;
    let mut out = vec![
        HEXLOWER.encode(secret),
        HEXUPPER.encode(secret),
        BASE64.encode(secret),
        BASE64_NOPAD.encode(secret),
        BASE64URL_NOPAD.encode(secret),
        BASE32_NOPAD.encode(secret),
        BASE32HEX_NOPAD.encode(secret),
        serde_json::to_string(secret).unwrap(),
    ];
    out.push(format!("{secret:?}"));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_strict_and_never_showing_key_material() {
    let lab = Lab::new();
    let src = lab.dir("publisher");
    write(&src, "a.txt", b"hello");
    let p = dashboard_publisher(&src, "127.0.0.1:0", None).await;
    let addr = p.http_addr().unwrap();
    let s = subscriber(&lab.dir("s1"), p.ticket()).await;
    synced(&s, 1).await;
    let secrets: Vec<Vec<u8>> = [
        Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/test-publisher.key"),
        src.join(".treecast/node.key"),
        lab.tmp.path().join("s1/.treecast/node.key"),
    ]
    .iter()
    .map(|f| std::fs::read(f).expect("a key file"))
    .collect();
    assert!(secrets.iter().all(|s| s.len() == 32));

    let pages = [
        "/",
        "/index.html",
        "/dashboard.js",
        "/dashboard.css",
        "/api/status",
        "/metrics",
    ];
    let mut seen = Vec::new();
    for path in pages {
        let r = get(addr, path).await;
        assert_eq!(r.status, 200, "{path}");
        seen.push((path.to_string(), r));
    }
    let (_, stream) = EventStream::open(addr, "/api/status").await;
    let mut stream = stream.unwrap();
    let mut streamed = String::new();
    stream
        .until("a report", |n, d| {
            streamed.push_str(d);
            status_event(n, d)
        })
        .await;
    for secret in &secrets {
        for form in encodings(secret) {
            for (path, r) in &seen {
                assert!(!r.body.contains(&form), "{path} shows a secret key");
            }
            assert!(
                !streamed.contains(&form),
                "the event stream shows a secret key"
            );
        }
    }
    // The public key it pins is shown: the report is the one `status` gives.
    assert!(seen[4].1.body.contains(&test_key().public().to_string()));

    // Strict Content-Security-Policy on everything, and a page that needs no exception to it.
    for (path, r) in &seen {
        let csp = r
            .head
            .lines()
            .find_map(|l| l.strip_prefix("content-security-policy: "))
            .unwrap_or_else(|| panic!("{path}: no CSP"));
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"));
        assert!(!csp.contains("unsafe") && !csp.contains('*'), "{csp}");
        assert!(r.head.contains("x-content-type-options: nosniff"));
    }
    let html = &seen[0].1.body;
    assert!(html.contains("<script src=\"dashboard.js\"></script>"));
    assert_eq!(html.matches("<script").count(), 1, "no inline script");
    assert!(
        !html.contains("style=") && !html.contains("<style"),
        "no inline style"
    );
    assert!(!html.contains(" onclick=") && !html.contains(" onload="));
    for (path, r) in &seen[..4] {
        // The one URL allowed is SVG's namespace name, which is never fetched.
        let body = r.body.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !body.contains("http://") && !body.contains("https://") && !body.contains("//cdn"),
            "{path} loads nothing from elsewhere"
        );
    }

    // Read-only: nothing but GET and HEAD, on every path; nothing else is served.
    for path in pages.iter().chain(&["/api/rescan", "/api/shutdown"]) {
        for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
            let body = "revision=99";
            let headers = format!("Content-Length: {}\r\n\r\n{body}", body.len());
            let raw = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n{headers}");
            let r = exchange(addr, raw.as_bytes()).await;
            assert_eq!(r.status, 405, "{method} {path}");
            assert!(r.head.contains("allow: get, head"));
        }
    }
    for path in [
        "/.treecast/publisher.key",
        "/.treecast/node.key",
        "/../.treecast/node.key",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/api/status/../../.treecast/node.key",
        "/src/node/dashboard/index.html",
        "/a.txt",
    ] {
        let r = get(addr, path).await;
        assert!(r.status == 404 || r.status == 400, "{path}: {r:?}");
    }
    let head = request(addr, "HEAD", "/api/status", "").await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    // The node is as it was.
    let after: StatusReport = serde_json::from_str(&get(addr, "/api/status").await.body).unwrap();
    assert_eq!(after.revision, Some(1));
    assert_eq!(after.rollout.unwrap().holding, 1);
    s.shutdown().await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_and_request_heads_are_bounded() {
    let lab = Lab::new();
    let src = lab.dir("publisher");
    write(&src, "a.txt", b"hello");
    let p = dashboard_publisher(&src, "127.0.0.1:0", None).await;
    let addr = p.http_addr().unwrap();
    // A request head over the limit is refused whole (431, or the connection is reset while
    // the client still writes it); the server goes on.
    let pad = "a".repeat(64 * 1024);
    let raw = format!("GET /metrics HTTP/1.1\r\nHost: test\r\nX-Pad: {pad}\r\n\r\n");
    let big = async {
        let mut conn = TcpStream::connect(addr).await?;
        conn.write_all(raw.as_bytes()).await?;
        let mut out = Vec::new();
        conn.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(Reply::parse(&out))
    };
    match tokio::time::timeout(WAIT, big).await.expect("an answer") {
        Ok(reply) => assert_eq!(reply.status, 431, "{:?}", reply.head),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    assert_eq!(get(addr, "/metrics").await.status, 200);

    // Clients that connect and send nothing, or half a request head, hold a connection each.
    let mut held = Vec::new();
    for i in 0..MAX_CONNECTIONS - 1 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        if i % 2 == 1 {
            c.write_all(b"GET /metrics HTTP/1.1\r\nHost: te")
                .await
                .unwrap();
        }
        held.push(c);
    }
    // One connection is left: /metrics and the API still answer. (The server lets a finished
    // connection's slot go just after closing it, so a request right after another may find
    // it still taken: ask again.)
    for path in ["/metrics", "/api/status"] {
        eventually_ok(WAIT, &format!("{path} to answer"), || async {
            match get(addr, path).await.status {
                200 => Ok(()),
                code => Err(code),
            }
        })
        .await;
    }
    // With every connection held, one more is answered 503 at once, not left waiting. (Should
    // the last held one have come as a finished connection's slot was still being let go, it
    // was the one refused: hold one more.)
    loop {
        held.push(TcpStream::connect(addr).await.unwrap());
        let r = get(addr, "/metrics").await;
        if r.status == 503 {
            assert!(r.body.contains("too many connections"), "{r:?}");
            break;
        }
        assert!(held.len() < MAX_CONNECTIONS + 3, "never refused: {r:?}");
    }
    // The server lets them go (they never sent a whole request head in time), and answers again.
    for (i, c) in held.iter_mut().enumerate() {
        let mut rest = Vec::new();
        tokio::time::timeout(WAIT, c.read_to_end(&mut rest))
            .await
            .unwrap_or_else(|_| panic!("held connection {i} still open"))
            .ok();
    }
    eventually_ok(WAIT, "/metrics to answer again", || async {
        match get(addr, "/metrics").await.status {
            200 => Ok(()),
            code => Err(code),
        }
    })
    .await;
    p.shutdown().await;
}

/// A client that asks for the event stream with a tiny receive window and, once the answer's
/// status line says it has a stream, never reads again.
async fn stalled_stream(addr: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    sock.set_nonblocking(true).unwrap();
    let mut conn = TcpStream::from_std(sock.into()).unwrap();
    conn.write_all(b"GET /api/status HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    let mut status = [0u8; 12];
    tokio::time::timeout(WAIT, conn.read_exact(&mut status))
        .await
        .expect("an answer")
        .unwrap();
    assert_eq!(&status[9..], b"200", "{}", String::from_utf8_lossy(&status));
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_hold_neither_metrics_nor_the_node() {
    let lab = Lab::new();
    let src = lab.dir("publisher");
    write(&src, "a.bin", &noise(MIB, 43));
    let p = dashboard_publisher(&src, "127.0.0.1:0", None).await;
    let addr = p.http_addr().unwrap();
    let s = subscriber(&lab.dir("s1"), p.ticket()).await;
    synced(&s, 1).await;
    // Every event stream taken by a client that stopped reading; one more is refused.
    let mut stalled = Vec::new();
    for _ in 0..MAX_EVENT_STREAMS {
        stalled.push(stalled_stream(addr).await);
    }
    let (code, _) = EventStream::open(addr, "/api/status").await;
    assert_eq!(code, 503, "a stream over the limit");
    // /metrics and the API answer all the same, and the node works on: it publishes a new
    // revision and the subscriber gets it.
    assert_eq!(get(addr, "/metrics").await.status, 200);
    write(&src, "b.bin", &noise(MIB, 44));
    assert_eq!(p.rescan().await.unwrap(), Some(2));
    synced(&s, 2).await;
    eventually_ok(WAIT, "the API to show revision 2 held", || async {
        let r: StatusReport = serde_json::from_str(&get(addr, "/api/status").await.body).unwrap();
        match r
            .rollout
            .as_ref()
            .is_some_and(|ro| ro.revision == 2 && ro.holding == 1)
        {
            true => Ok(()),
            false => Err(r.rollout),
        }
    })
    .await;
    // A stream whose client took nothing for a while is dropped: a new dashboard gets in.
    let mut fresh = eventually_ok(WAIT, "a stalled stream to be let go", || async {
        match EventStream::open(addr, "/api/status").await {
            (200, Some(stream)) => Ok(stream),
            (code, _) => Err(code),
        }
    })
    .await;
    let report = fresh.until("a report", status_event).await;
    assert_eq!(report.revision, Some(2));
    drop(stalled);
    s.shutdown().await;
    p.shutdown().await;
}

#[test]
fn http_defaults_to_loopback_and_can_come_from_the_config_file() {
    use clap::{CommandFactory, FromArgMatches};
    let net = |cli: treecast::cli::Cli| match cli.command {
        treecast::cli::Command::Publish { net, .. } => net,
        other => panic!("{other:?}"),
    };
    let parse = |file: &str, args: &[&str]| {
        let cmd = treecast::settings::apply(treecast::cli::Cli::command(), file).unwrap();
        let m = cmd.try_get_matches_from(args).unwrap();
        net(treecast::cli::Cli::from_arg_matches(&m).unwrap())
    };
    let bare = parse("", &["treecast", "publish", "d", "--http"]);
    assert_eq!(bare.http, Some("127.0.0.1:9899".parse().unwrap()));
    assert!(bare.http.unwrap().ip().is_loopback());
    assert_eq!(
        parse("", &["treecast", "publish", "d"]).http,
        None,
        "off by default"
    );
    let file = format!("http = \"0.0.0.0:9000\"\nhttp-token = \"{TOKEN}\"\n");
    let from_file = parse(&file, &["treecast", "publish", "d"]);
    assert_eq!(from_file.http, Some("0.0.0.0:9000".parse().unwrap()));
    assert_eq!(from_file.http_token.as_deref(), Some(TOKEN));
}
