//! The HTTP client of an Aegis server: JSON requests with the API key, the server's
//! `{"error":{"code","message"}}` bodies as errors, and server-sent event streams.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use reqwest::header::{ACCEPT, HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;

/// How long a plain request may take, from connecting to the last byte of the body.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a stream may stay silent before the connection counts as dropped. The
/// server sends a heartbeat comment every 5 s, so silence this long means it is gone.
const STREAM_SILENCE: Duration = Duration::from_secs(30);

/// `--server` as given: an empty value (`AEGIS_SERVER=`) means no server.
#[derive(Debug, Clone)]
pub(crate) struct ServerUrl(pub(crate) Option<Url>);

/// Parses `--server`: an absolute `http` or `https` URL with a host, or nothing.
pub(crate) fn parse_server_arg(text: &str) -> Result<ServerUrl, String> {
    if text.trim().is_empty() {
        return Ok(ServerUrl(None));
    }
    parse_server_url(text).map(|url| ServerUrl(Some(url)))
}

/// Parses a server URL: an absolute `http` or `https` URL with a host.
pub(crate) fn parse_server_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim()).map_err(|err| {
        format!("{text:?} is not a URL ({err}); expected e.g. http://127.0.0.1:8000")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{text:?} is not an http:// or https:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{text:?} has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{text:?} must not have a query or fragment"));
    }
    Ok(url)
}

/// What went wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    /// The server answered with an error status.
    #[error("{message} (HTTP {})", status.as_u16())]
    Status {
        /// The HTTP status.
        status: StatusCode,
        /// The `error.code` of the body, when there was one.
        code: Option<String>,
        /// The `error.message` of the body, or a description of the status.
        message: String,
    },
    /// Nothing listens at the URL, or the connection could not be made.
    #[error("cannot connect to the server at {url}: {detail}")]
    Connect {
        /// The server URL.
        url: String,
        /// Why, from the innermost cause (`Connection refused`, ...).
        detail: String,
    },
    /// The request failed after connecting (timeout, reset, malformed answer).
    #[error("request to {url} failed: {detail}")]
    Transport {
        /// The request URL.
        url: String,
        /// Why.
        detail: String,
    },
    /// The answer was not the JSON the command expected.
    #[error("unexpected answer from {url}: {detail}")]
    Decode {
        /// The request URL.
        url: String,
        /// Why it did not parse.
        detail: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

impl ClientError {
    /// What to do about a refused key: 401 means no or a wrong key, 403 a role too low.
    pub(crate) fn auth_hint(&self) -> Option<&'static str> {
        match self {
            ClientError::Status { status: StatusCode::UNAUTHORIZED, .. } => {
                Some("the server needs an API key: pass --api-key KEY or set AEGIS_API_KEY")
            }
            ClientError::Status { status: StatusCode::FORBIDDEN, .. } => Some(
                "the API key's role does not allow this: pass a key with a higher role \
                 with --api-key KEY or AEGIS_API_KEY",
            ),
            _ => None,
        }
    }

    /// Whether a stream that failed with this error is worth opening again.
    fn is_retryable(&self) -> bool {
        match self {
            ClientError::Connect { .. } | ClientError::Transport { .. } => true,
            ClientError::Status { status, .. } => status.is_server_error(),
            ClientError::Decode { .. } | ClientError::Build(_) => false,
        }
    }
}

/// The innermost cause of an error, which names what really happened (`Connection
/// refused (os error 111)` rather than `error sending request`).
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Where the server is and how to authenticate.
#[derive(Clone)]
pub(crate) struct Server {
    /// The base URL (may carry a `base_path` prefix).
    pub(crate) url: Url,
    /// Sent as `X-API-Key` when set.
    pub(crate) api_key: Option<String>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key is a secret: never print it.
        f.debug_struct("Server")
            .field("url", &self.url.as_str())
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A client of one server.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    base: Url,
}

impl Client {
    /// A client sending the API key, if any, with every request.
    pub(crate) fn new(server: &Server) -> Result<Client, ClientError> {
        let mut headers = HeaderMap::new();
        if let Some(key) = &server.api_key {
            let mut value = HeaderValue::from_str(key).map_err(|_| {
                ClientError::Build("the API key contains characters not allowed in a header".into())
            })?;
            value.set_sensitive(true);
            headers.insert("x-api-key", value);
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("aegis-cli/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(STREAM_SILENCE)
            .no_proxy()
            .build()
            .map_err(|err| ClientError::Build(root_cause(&err)))?;
        Ok(Client { http, base: server.url.clone() })
    }

    /// The URL of an API path given as segments (each percent-encoded), below the base
    /// URL's own path, with query pairs whose value is `Some`.
    pub(crate) fn url(&self, segments: &[&str], query: &[(&str, Option<String>)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        let pairs: Vec<(&str, &String)> =
            query.iter().filter_map(|(k, v)| v.as_ref().map(|v| (*k, v))).collect();
        if !pairs.is_empty() {
            url.query_pairs_mut().extend_pairs(pairs);
        }
        url
    }

    fn transport_error(&self, url: &Url, err: &reqwest::Error) -> ClientError {
        if err.is_connect() {
            ClientError::Connect { url: self.base.to_string(), detail: root_cause(err) }
        } else if err.is_timeout() {
            ClientError::Transport { url: url.to_string(), detail: "timed out".into() }
        } else {
            ClientError::Transport { url: url.to_string(), detail: root_cause(err) }
        }
    }

    async fn send(
        &self,
        url: &Url,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let response = request.send().await.map_err(|err| self.transport_error(url, &err))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        Err(status_error(status, &body))
    }

    async fn decode<T: DeserializeOwned>(
        &self,
        url: &Url,
        response: reqwest::Response,
    ) -> Result<T, ClientError> {
        let body = response.bytes().await.map_err(|err| self.transport_error(url, &err))?;
        serde_json::from_slice(&body)
            .map_err(|err| ClientError::Decode { url: url.to_string(), detail: err.to_string() })
    }

    /// `GET` a JSON document.
    pub(crate) async fn get_json<T: DeserializeOwned>(&self, url: Url) -> Result<T, ClientError> {
        let request = self.http.get(url.clone()).header(ACCEPT, "application/json");
        let response = self.send(&url, request.timeout(REQUEST_TIMEOUT)).await?;
        self.decode(&url, response).await
    }

    /// `POST` without a body and read the JSON answer.
    pub(crate) async fn post_json<T: DeserializeOwned>(&self, url: Url) -> Result<T, ClientError> {
        let request = self.http.post(url.clone()).header(ACCEPT, "application/json");
        let response = self.send(&url, request.timeout(REQUEST_TIMEOUT)).await?;
        self.decode(&url, response).await
    }

    /// `POST` a JSON body and read the JSON answer.
    pub(crate) async fn post_body_json<T: DeserializeOwned>(
        &self,
        url: Url,
        body: &serde_json::Value,
    ) -> Result<T, ClientError> {
        let request = self.http.post(url.clone()).header(ACCEPT, "application/json").json(body);
        let response = self.send(&url, request.timeout(REQUEST_TIMEOUT)).await?;
        self.decode(&url, response).await
    }

    /// Opens a server-sent event stream, resuming after `last_event_id` when given.
    pub(crate) async fn stream(
        &self,
        url: Url,
        last_event_id: Option<&str>,
    ) -> Result<SseStream, ClientError> {
        let mut request = self.http.get(url.clone()).header(ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = self.send(&url, request).await?;
        Ok(SseStream { url, response, parser: SseParser::default(), ready: VecDeque::new() })
    }

    /// Follows a stream to its end, opening it again after `Last-Event-ID` when the
    /// connection drops: `on_frame` sees every frame once and returns `false` to stop.
    /// Gives up after a few failed reconnections in a row.
    pub(crate) async fn follow(
        &self,
        url: Url,
        resume: Resume,
        mut on_frame: impl FnMut(&SseFrame) -> anyhow::Result<Flow>,
    ) -> anyhow::Result<()> {
        const ATTEMPTS: u32 = 6;
        let mut last_id: Option<String> = None;
        let mut failures = 0u32;
        loop {
            let resume_from = match resume {
                Resume::LastEventId => last_id.as_deref(),
                Resume::FromNow => None,
            };
            let outcome = match self.stream(url.clone(), resume_from).await {
                Ok(mut stream) => loop {
                    match stream.next().await {
                        Ok(Some(frame)) => {
                            failures = 0;
                            if let Some(id) = &frame.id {
                                last_id = Some(id.clone());
                            }
                            if on_frame(&frame)? == Flow::Stop {
                                return Ok(());
                            }
                        }
                        Ok(None) => break Ok(()),
                        Err(err) => break Err(err),
                    }
                },
                Err(err) => Err(err),
            };
            // The stream ended without the frame the caller waits for, or dropped.
            let detail = match outcome {
                Ok(()) => "the server closed the stream".to_owned(),
                Err(err) if err.is_retryable() => err.to_string(),
                Err(err) => return Err(err.into()),
            };
            failures += 1;
            if failures >= ATTEMPTS {
                anyhow::bail!("lost the event stream {url}: {detail}");
            }
            let delay = Duration::from_millis(250 << failures.min(4));
            match resume {
                Resume::LastEventId => eprintln!("warning: {detail}; reconnecting"),
                Resume::FromNow => {
                    eprintln!("warning: {detail}; reconnecting (events meanwhile are not shown)")
                }
            }
            tokio::time::sleep(delay).await;
        }
    }
}

/// How [`Client::follow`] reopens a dropped stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resume {
    /// Send `Last-Event-ID` so the server replays what was missed.
    LastEventId,
    /// The stream cannot resume; reopen it from now.
    FromNow,
}

/// Whether [`Client::follow`] goes on reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Read the next frame.
    Continue,
    /// Close the stream and return.
    Stop,
}

/// An error for a non-2xx answer, from the server's `{"error":{...}}` body when it has one.
fn status_error(status: StatusCode, body: &[u8]) -> ClientError {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let field = |name: &str| {
        error.and_then(|e| e.get(name)).and_then(serde_json::Value::as_str).map(str::to_owned)
    };
    let message = field("message").unwrap_or_else(|| {
        let reason = status.canonical_reason().unwrap_or("error").to_lowercase();
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        if text.is_empty() || text.len() > 200 {
            format!("the server answered {reason}")
        } else {
            format!("the server answered {reason}: {text}")
        }
    });
    ClientError::Status { status, code: field("code"), message }
}

/// An open event stream.
#[derive(Debug)]
pub(crate) struct SseStream {
    url: Url,
    response: reqwest::Response,
    parser: SseParser,
    ready: VecDeque<SseFrame>,
}

impl SseStream {
    /// The next frame; `None` when the server closed the stream.
    pub(crate) async fn next(&mut self) -> Result<Option<SseFrame>, ClientError> {
        loop {
            if let Some(frame) = self.ready.pop_front() {
                return Ok(Some(frame));
            }
            let chunk = self.response.chunk().await.map_err(|err| {
                let detail = if err.is_timeout() {
                    format!("no data for {} s", STREAM_SILENCE.as_secs())
                } else {
                    root_cause(&err)
                };
                ClientError::Transport { url: self.url.to_string(), detail }
            })?;
            match chunk {
                Some(bytes) => self.ready.extend(self.parser.feed(&bytes)),
                None => {
                    // A frame cut off by the end of the stream is incomplete: drop it,
                    // as the SSE specification says.
                    return Ok(None);
                }
            }
        }
    }
}

/// One dispatched server-sent event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SseFrame {
    /// The `id:` field, when the frame had one.
    pub(crate) id: Option<String>,
    /// The `event:` field, when the frame had one.
    pub(crate) event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub(crate) data: String,
}

/// An incremental parser of `text/event-stream` bodies (the WHATWG algorithm, minus
/// `retry:`): lines end with LF, CRLF or CR, anywhere across chunk boundaries; lines
/// starting with `:` are comments; a blank line dispatches the frame when it has data.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    buffer: Vec<u8>,
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// Consumes a chunk and returns the frames it completed.
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Vec<SseFrame> {
        self.buffer.extend_from_slice(chunk);
        let mut frames = Vec::new();
        let mut start = 0;
        while let Some(offset) =
            self.buffer[start..].iter().position(|b| matches!(b, b'\n' | b'\r'))
        {
            let end = start + offset;
            let next = match self.buffer[end] {
                b'\r' => match self.buffer.get(end + 1) {
                    Some(b'\n') => end + 2,
                    Some(_) => end + 1,
                    // A CR at the end of the chunk may be the first half of a CRLF.
                    None => break,
                },
                _ => end + 1,
            };
            let line = String::from_utf8_lossy(&self.buffer[start..end]).into_owned();
            start = next;
            if let Some(frame) = self.line(&line) {
                frames.push(frame);
            }
        }
        self.buffer.drain(..start);
        frames
    }

    fn line(&mut self, line: &str) -> Option<SseFrame> {
        if line.is_empty() {
            let data = self.data.take()?;
            return Some(SseFrame { id: self.id.clone(), event: self.event.take(), data });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            // The last event id persists across frames until changed, as in browsers.
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            "event" => self.event = Some(value.to_owned()),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(id: Option<&str>, data: &str) -> SseFrame {
        SseFrame { id: id.map(str::to_owned), event: None, data: data.to_owned() }
    }

    /// Feeds `text` split at every position and checks every split gives `expected`.
    fn check(text: &str, expected: &[SseFrame]) {
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            let mut parser = SseParser::default();
            let mut frames = parser.feed(&bytes[..cut]);
            frames.extend(parser.feed(&bytes[cut..]));
            assert_eq!(frames, expected, "split at {cut} of {text:?}");
        }
        let mut parser = SseParser::default();
        let frames: Vec<SseFrame> = bytes.iter().flat_map(|b| parser.feed(&[*b])).collect();
        assert_eq!(frames, expected, "byte by byte: {text:?}");
    }

    #[test]
    fn frames_split_across_chunk_boundaries() {
        check(
            "id: 1\ndata: {\"seq\":1}\n\nid: 2\ndata: {\"seq\":2}\n\n",
            &[frame(Some("1"), "{\"seq\":1}"), frame(Some("2"), "{\"seq\":2}")],
        );
    }

    #[test]
    fn comments_and_heartbeats_are_skipped() {
        check(": heartbeat\n\n: missed 3 events\n\nid: 7\ndata: x\n\n", &[frame(Some("7"), "x")]);
    }

    #[test]
    fn multi_line_data_is_joined_with_newlines() {
        check("data: a\ndata:b\ndata\n\n", &[frame(None, "a\nb\n")]);
    }

    #[test]
    fn crlf_and_cr_line_endings() {
        check(
            "id: 1\r\ndata: a\r\n\r\nid: 2\rdata: b\r\r\n",
            &[frame(Some("1"), "a"), frame(Some("2"), "b")],
        );
    }

    #[test]
    fn utf8_split_inside_a_character_survives() {
        check("data: ✓ étape\n\n", &[frame(None, "✓ étape")]);
    }

    #[test]
    fn an_unfinished_frame_is_held_back_and_ids_persist() {
        let mut parser = SseParser::default();
        assert!(parser.feed(b"id: 3\ndata: a\n").is_empty());
        assert_eq!(parser.feed(b"\ndata: b\n\n"), [frame(Some("3"), "a"), frame(Some("3"), "b")]);
        let with_event = parser.feed(b"event: ping\ndata: c\n\n");
        assert_eq!(with_event[0].event.as_deref(), Some("ping"));
    }

    #[test]
    fn server_urls_are_checked() {
        assert!(parse_server_url("http://127.0.0.1:8000").is_ok());
        assert!(parse_server_url("https://aegis.example/prefix/").is_ok());
        assert!(parse_server_arg("").is_ok_and(|s| s.0.is_none()));
        for bad in ["127.0.0.1:8000", "ftp://x", "http://", "not a url", "http://h/?q=1"] {
            assert!(parse_server_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_keep_the_base_path_and_encode_segments() {
        let server = Server {
            url: parse_server_url("http://h:1/aegis/").unwrap_or_else(|e| panic!("{e}")),
            api_key: None,
        };
        let client = Client::new(&server).unwrap_or_else(|e| panic!("{e}"));
        let url = client
            .url(&["api", "runs", "a/b c"], &[("limit", Some("5".into())), ("workflow", None)]);
        assert_eq!(url.as_str(), "http://h:1/aegis/api/runs/a%2Fb%20c?limit=5");
        let server = Server {
            url: parse_server_url("http://h:1").unwrap_or_else(|e| panic!("{e}")),
            api_key: None,
        };
        let client = Client::new(&server).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(client.url(&["api", "runs"], &[]).as_str(), "http://h:1/api/runs");
    }

    #[test]
    fn error_bodies_become_messages() {
        let err = status_error(
            StatusCode::NOT_FOUND,
            br#"{"error":{"code":"not_found","message":"run `x` not found"}}"#,
        );
        assert_eq!(err.to_string(), "run `x` not found (HTTP 404)");
        let err = status_error(StatusCode::BAD_GATEWAY, b"<html>oops</html>");
        assert_eq!(
            err.to_string(),
            "the server answered bad gateway: <html>oops</html> (HTTP 502)"
        );
        assert!(status_error(StatusCode::FORBIDDEN, b"").auth_hint().is_some());
        assert!(status_error(StatusCode::NOT_FOUND, b"").auth_hint().is_none());
    }

    #[test]
    fn the_api_key_is_redacted_in_debug() {
        let server = Server {
            url: parse_server_url("http://h").unwrap_or_else(|e| panic!("{e}")),
            api_key: Some("s3cret".into()),
        };
        assert!(!format!("{server:?}").contains("s3cret"));
    }

    /// Serves each connection's canned answer in turn on 127.0.0.1 and records the
    /// request heads it received.
    async fn canned_server(
        answers: Vec<String>,
    ) -> (Url, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url =
            Url::parse(&format!("http://{}/", listener.local_addr().expect("addr"))).expect("url");
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = heads.clone();
        tokio::spawn(async move {
            for answer in answers {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                seen.lock().expect("lock").push(String::from_utf8_lossy(&head).into_owned());
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.shutdown().await;
            }
        });
        (url, heads)
    }

    const SSE_HEAD: &str =
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";

    #[tokio::test]
    async fn a_dropped_stream_resumes_after_the_last_event_id() {
        // The first connection drops in the middle of the third frame.
        let first = format!(
            "{SSE_HEAD}: heartbeat\n\nid: 1\ndata: one\n\nid: 2\ndata: two\n\nid: 3\ndata: cut"
        );
        let second = format!("{SSE_HEAD}id: 3\ndata: three\n\n");
        let (url, heads) = canned_server(vec![first, second]).await;
        let client = Client::new(&Server { url, api_key: Some("k3y".into()) }).expect("client");
        let mut seen = Vec::new();
        let stream = client.url(&["api", "runs", "r1", "events", "stream"], &[]);
        client
            .follow(stream, Resume::LastEventId, |frame| {
                seen.push(frame.data.clone());
                Ok(if frame.data == "three" { Flow::Stop } else { Flow::Continue })
            })
            .await
            .expect("follow");
        assert_eq!(seen, ["one", "two", "three"]);
        let heads = heads.lock().expect("lock").clone();
        assert_eq!(heads.len(), 2);
        assert!(heads[0].starts_with("GET /api/runs/r1/events/stream HTTP/1.1"), "{}", heads[0]);
        assert!(heads[0].contains("x-api-key: k3y"), "{}", heads[0]);
        assert!(!heads[0].to_lowercase().contains("last-event-id"), "{}", heads[0]);
        assert!(heads[1].to_lowercase().contains("last-event-id: 2"), "{}", heads[1]);
    }

    #[tokio::test]
    async fn an_error_status_is_not_retried_and_keeps_the_server_message() {
        let answer = "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 60\r\nconnection: close\r\n\r\n{\"error\":{\"code\":\"not_found\",\"message\":\"run `x` not found\"}}";
        let (url, heads) = canned_server(vec![answer.to_owned()]).await;
        let client = Client::new(&Server { url, api_key: None }).expect("client");
        let err = client
            .follow(client.url(&["s"], &[]), Resume::LastEventId, |_| Ok(Flow::Continue))
            .await
            .expect_err("404");
        assert_eq!(err.to_string(), "run `x` not found (HTTP 404)");
        assert_eq!(heads.lock().expect("lock").len(), 1);
    }

    #[tokio::test]
    async fn a_refused_connection_names_the_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let url = Url::parse(&format!("http://{addr}")).expect("url");
        let client = Client::new(&Server { url, api_key: None }).expect("client");
        let err = client
            .get_json::<serde_json::Value>(client.url(&["api", "runs"], &[]))
            .await
            .expect_err("refused");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("cannot connect to the server at http://{addr}/: ")),
            "{text}"
        );
        assert!(text.to_lowercase().contains("refused"), "{text}");
    }
}
