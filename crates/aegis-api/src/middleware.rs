//! Cross-cutting request handling: request ids, CORS, the body-size check, the
//! per-request log line, and the client address behind trusted proxies.

use std::net::IpAddr;
use std::time::Instant;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD,
    CONTENT_LENGTH, HeaderName, HeaderValue, ORIGIN, TRANSFER_ENCODING, VARY,
};
use actix_web::http::{ConnectionType, Method};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, ResponseError, web};
use aegis_config::IpNet;

use crate::error::ApiError;
use crate::state::AppState;

/// The header carrying the request id, echoed or generated.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id, available to handlers through request extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// A client-sent id is kept when it is short, visible ASCII; anything else is replaced
/// so logs and events never carry control characters.
fn acceptable(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())
}

/// What a CORS preflight may ask for (SPEC section 8).
const CORS_METHODS: HeaderValue = HeaderValue::from_static("GET, HEAD, POST, OPTIONS");
const CORS_HEADERS: HeaderValue =
    HeaderValue::from_static("X-API-Key, Authorization, Content-Type, Last-Event-ID");
/// How long a browser may cache a preflight answer, in seconds.
const CORS_MAX_AGE: HeaderValue = HeaderValue::from_static("600");

/// The request's `Origin` when `server.cors_origins` allows it (`*` allows any).
fn allowed_origin(req: &ServiceRequest, state: Option<&AppState>) -> Option<HeaderValue> {
    let origins = state?.config().server().cors_origins();
    if origins.is_empty() {
        return None;
    }
    let origin = req.headers().get(ORIGIN)?;
    let text = origin.to_str().ok()?;
    origins.iter().any(|o| o == "*" || o.eq_ignore_ascii_case(text)).then(|| origin.clone())
}

/// Whether the request announces a body (`Content-Length` above 0, or chunked).
fn declares_body(req: &ServiceRequest) -> bool {
    let headers = req.headers();
    headers.contains_key(TRANSFER_ENCODING)
        || headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

/// The one middleware of the app, so a request pays for one layer: it assigns the
/// request id, answers CORS preflights, refuses a declared body over
/// `server.max_body_bytes`, runs the request, sets `X-Request-ID` and the CORS headers
/// on the response, and logs one line with method, path, status, duration and id.
///
/// The size check runs before any handler, so the limit holds on every route,
/// including those that take no body and would otherwise accept and ignore one. A
/// request with a body that is answered with a 4xx closes its connection: the body
/// may be unread (credentials are checked first), and reading it would let a slow
/// client hold the connection.
pub(crate) async fn surface(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let started = Instant::now();
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| acceptable(id))
        .map_or_else(|| uuid::Uuid::now_v7().simple().to_string(), str::to_owned);
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let origin = allowed_origin(&req, state.as_ref().map(|s| s.get_ref()));
    let has_body = declares_body(&req);

    let mut response = if let Some(origin) = origin.as_ref().filter(|_| {
        req.method() == Method::OPTIONS && req.headers().contains_key(ACCESS_CONTROL_REQUEST_METHOD)
    }) {
        let mut preflight = HttpResponse::NoContent();
        preflight
            .insert_header((ACCESS_CONTROL_ALLOW_METHODS, CORS_METHODS))
            .insert_header((ACCESS_CONTROL_ALLOW_HEADERS, CORS_HEADERS))
            .insert_header((ACCESS_CONTROL_MAX_AGE, CORS_MAX_AGE))
            .insert_header((ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()));
        req.into_response(preflight.finish()).map_into_right_body()
    } else if let Some(limit) = state.as_ref().map(|s| s.config().server().max_body_bytes())
        && req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|length| length > limit as u64)
    {
        let response = ApiError::PayloadTooLarge { limit }.error_response();
        req.into_response(response).map_into_right_body()
    } else {
        next.call(req).await?.map_into_left_body()
    };

    let status = response.status();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        headers.insert(REQUEST_ID, value);
    }
    if let Some(origin) = origin {
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("X-Request-ID"));
        headers.append(VARY, HeaderValue::from_static("Origin"));
    }
    if has_body && status.is_client_error() {
        response.response_mut().head_mut().set_connection_type(ConnectionType::Close);
    }
    if log::log_enabled!(target: "aegis::request", log::Level::Info) {
        let answered = response.request();
        let line = RequestLine {
            method: answered.method().clone(),
            path: answered.path().to_owned(),
            status: status.as_u16(),
            duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            request_id,
            client: client_ip(answered),
        };
        match state.as_ref().and_then(|s| s.request_log()) {
            Some(sink) => sink.request(line),
            None => line.log(),
        }
    }
    Ok(response)
}

/// One answered request, as the request log receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestLine {
    pub method: Method,
    /// The path as requested, `server.base_path` included, without the query.
    pub path: String,
    pub status: u16,
    /// From the request's arrival at the app to its response, in microseconds.
    pub duration_us: u64,
    pub request_id: String,
    /// The client, as [`client_ip`] finds it; `None` when the peer is unknown.
    pub client: Option<IpAddr>,
}

impl RequestLine {
    /// The duration in milliseconds, to the microsecond.
    pub fn duration_ms(&self) -> f64 {
        self.duration_us as f64 / 1000.0
    }

    /// Appends the line's message: `GET /api/runs 200 1.4ms`.
    pub fn write_message(&self, out: &mut String) {
        use std::fmt::Write as _;
        // Tenths of a millisecond, rounded, without going through float formatting.
        let tenths = self.duration_us.saturating_add(50) / 100;
        let _ = write!(
            out,
            "{} {} {} {}.{}ms",
            self.method,
            self.path,
            self.status,
            tenths / 10,
            tenths % 10
        );
    }

    /// The client address as logged: empty when unknown.
    pub fn client_text(&self) -> String {
        self.client.map(|ip| ip.to_string()).unwrap_or_default()
    }

    /// Writes the line through the `log` crate, for a program that installed no
    /// [`RequestLog`]: target `aegis::request`, the fields as key-values.
    fn log(&self) {
        let mut message = String::with_capacity(64);
        self.write_message(&mut message);
        let client = self.client_text();
        log::info!(
            target: "aegis::request",
            method = self.method.as_str(),
            path = self.path.as_str(),
            status = self.status,
            duration_ms = self.duration_ms(),
            request_id = self.request_id.as_str(),
            client = client.as_str();
            "{message}"
        );
    }
}

/// Takes the request lines of the app (when the `aegis::request` target is enabled at
/// `info`) instead of the `log` crate, so that a server can hand them to its log writer
/// as they are, without formatting them on the worker that answered.
pub trait RequestLog: Send + Sync {
    /// Takes one line. Called on the HTTP worker: it must not block.
    fn request(&self, line: RequestLine);
}

/// The request id the app assigned to this request (echoed or generated).
pub fn request_id(req: &HttpRequest) -> Option<String> {
    req.extensions().get::<RequestId>().map(|r| r.0.clone())
}

/// The client's address: the peer, or — when the peer is a trusted proxy — the nearest
/// address in `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip(req: &HttpRequest) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    let trusted: &[IpNet] = req
        .app_data::<web::Data<AppState>>()
        .map_or(&[], |s| s.config().server().trusted_proxies());
    Some(forwarded_client(
        peer,
        req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok()),
        trusted,
    ))
}

fn forwarded_client(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let Some(chain) = forwarded_for else { return peer };
    // Walk from the nearest hop outwards; the first untrusted address is the client.
    let mut client = peer;
    for hop in chain.rsplit(',').map(str::trim) {
        match hop.parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = [IpNet::parse("10.0.0.0/8").unwrap()];
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        let stranger: IpAddr = "198.51.100.9".parse().unwrap();
        assert_eq!(forwarded_client(stranger, Some("203.0.113.5"), &trusted), stranger);
        assert_eq!(
            forwarded_client(proxy, Some("203.0.113.5"), &trusted).to_string(),
            "203.0.113.5"
        );
        assert_eq!(
            forwarded_client(proxy, Some("203.0.113.5, 10.0.0.7"), &trusted).to_string(),
            "203.0.113.5"
        );
        assert_eq!(
            forwarded_client(proxy, Some("1.1.1.1, 203.0.113.5"), &trusted).to_string(),
            "203.0.113.5"
        );
        assert_eq!(forwarded_client(proxy, None, &trusted), proxy);
        assert_eq!(forwarded_client(proxy, Some("garbage"), &trusted), proxy);
    }

    #[test]
    fn only_plain_request_ids_are_echoed() {
        assert!(acceptable("abc-123_XYZ"));
        assert!(!acceptable(""));
        assert!(!acceptable("with space"));
        assert!(!acceptable("new\nline"));
        assert!(!acceptable(&"x".repeat(129)));
    }
}
