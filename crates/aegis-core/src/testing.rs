//! A local stand-in for QA services, for tests and benchmarks (feature
//! `test-support`): an HTTP/1.1 server on `127.0.0.1:0` whose routes answer
//! with a status and JSON body, optionally after a delay or with 500s for the
//! first calls, and which records every request with its timing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How a route answers.
#[derive(Debug, Clone)]
pub struct Route {
    status: u16,
    body: String,
    delay: Duration,
    fail_first: usize,
    calls: usize,
}

impl Route {
    /// Answers `status` with a JSON body.
    pub fn json(status: u16, body: Value) -> Self {
        Self { status, body: body.to_string(), delay: Duration::ZERO, fail_first: 0, calls: 0 }
    }

    /// Answers 200 with a JSON body.
    pub fn ok(body: Value) -> Self {
        Self::json(200, body)
    }

    /// Waits this long before answering.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Answers `500 {"error":"boom"}` to the first `n` calls.
    pub fn fail_first(mut self, n: usize) -> Self {
        self.fail_first = n;
        self
    }
}

/// A request the mock received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The method.
    pub method: String,
    /// The path (with query).
    pub path: String,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// When the request arrived.
    pub started: Instant,
    /// When the answer was sent.
    pub finished: Instant,
}

impl RecordedRequest {
    /// A header's value by lowercase name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Debug, Default)]
struct State {
    routes: Mutex<HashMap<(String, String), Route>>,
    requests: Mutex<Vec<RecordedRequest>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Set by [`MockService::forget_requests`]: requests are not recorded.
    forget: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// The mock service. The server task stops when the runtime does.
#[derive(Debug, Clone)]
pub struct MockService {
    addr: SocketAddr,
    state: Arc<State>,
}

impl MockService {
    /// Starts a mock on a free port of 127.0.0.1.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let accept_state = Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream, Arc::clone(&accept_state)));
            }
        });
        Ok(Self { addr, state })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets how `METHOD path` answers (unknown routes answer 404).
    pub fn route(&self, method: &str, path: &str, route: Route) -> &Self {
        lock(&self.state.routes).insert((method.to_owned(), path.to_owned()), route);
        self
    }

    /// Stops recording requests (for benchmarks: [`MockService::requests`]
    /// then stays empty instead of growing with every call).
    pub fn forget_requests(&self) -> &Self {
        self.state.forget.store(true, Ordering::Release);
        self
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        let mut requests = lock(&self.state.requests).clone();
        requests.sort_by_key(|r| r.started);
        requests
    }

    /// The requests received for one path.
    pub fn requests_to(&self, path: &str) -> Vec<RecordedRequest> {
        self.requests().into_iter().filter(|r| r.path == path).collect()
    }

    /// The most requests ever handled at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::Acquire)
    }
}

/// A URL on 127.0.0.1 where nothing listens (connections are refused).
pub async fn refused_url() -> std::io::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    drop(listener);
    Ok(format!("http://{addr}"))
}

async fn serve(mut stream: TcpStream, state: Arc<State>) {
    let mut buffer = Vec::with_capacity(4096);
    loop {
        let Some((head_len, content_length)) = read_head(&mut stream, &mut buffer).await else {
            return;
        };
        while buffer.len() < head_len + content_length {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let started = Instant::now();
        let recording = !state.forget.load(Ordering::Acquire);
        let head = String::from_utf8_lossy(&buffer[..head_len]).into_owned();
        let body = buffer[head_len..head_len + content_length].to_vec();
        buffer.drain(..head_len + content_length);
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or_default().split(' ');
        let method = request_line.next().unwrap_or_default().to_owned();
        let path = request_line.next().unwrap_or_default().to_owned();
        let headers: Vec<(String, String)> = lines
            .filter(|_| recording)
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();

        let now = state.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        state.max_in_flight.fetch_max(now, Ordering::AcqRel);
        let answer = {
            let mut routes = lock(&state.routes);
            routes.get_mut(&(method.clone(), path.clone())).map(|route| {
                route.calls += 1;
                if route.calls <= route.fail_first {
                    (500, r#"{"error":"boom"}"#.to_owned(), route.delay)
                } else {
                    (route.status, route.body.clone(), route.delay)
                }
            })
        };
        let (status, text, delay) =
            answer.unwrap_or((404, r#"{"error":"not found"}"#.to_owned(), Duration::ZERO));
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let response = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        );
        // Recorded (and no longer in flight) before the client can read the
        // answer: a caller that got its response always finds its request.
        state.in_flight.fetch_sub(1, Ordering::AcqRel);
        if recording {
            lock(&state.requests).push(RecordedRequest {
                method,
                path,
                headers,
                body,
                started,
                finished: Instant::now(),
            });
        }
        let written = stream.write_all(response.as_bytes()).await;
        if written.is_err() {
            return;
        }
    }
}

/// Reads until the end of the request head; returns its length and the body length.
async fn read_head(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<(usize, usize)> {
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .filter_map(|l| l.strip_prefix("content-length:"))
                .find_map(|v| v.trim().parse().ok())
                .unwrap_or(0);
            return Some((end + 4, length));
        }
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}
