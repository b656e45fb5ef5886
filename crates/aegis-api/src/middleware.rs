//! Cross-cutting request handling: request ids, the per-request log line, and the
//! client address behind trusted proxies.

use std::net::IpAddr;
use std::time::Instant;

use actix_web::ResponseError;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{CONTENT_LENGTH, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpRequest, web};
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

/// Assigns the request id, runs the request, sets `X-Request-ID` on the response and logs
/// one line with method, path, status, duration and request id.
pub(crate) async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| acceptable(id))
        .map_or_else(|| uuid::Uuid::now_v7().simple().to_string(), str::to_owned);
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let method = req.method().to_string();
    let path = req.path().to_owned();
    let client = client_ip(req.request()).map(|ip| ip.to_string()).unwrap_or_default();

    let mut response = next.call(req).await?;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let status = response.status().as_u16();
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    log::info!(
        target: "aegis::request",
        method = method.as_str(),
        path = path.as_str(),
        status = status,
        duration_ms = (duration_ms * 1000.0).round() / 1000.0,
        request_id = request_id.as_str(),
        client = client.as_str();
        "{method} {path} {status} {duration_ms:.1}ms"
    );
    Ok(response)
}

/// Refuses a request whose declared `Content-Length` is over `server.max_body_bytes`
/// with 413 before any handler runs, so the limit holds on every route, including
/// those that take no body and would otherwise accept and ignore one.
pub(crate) async fn limit_body(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let limit = req.app_data::<web::Data<AppState>>().map(|s| s.config().server().max_body_bytes());
    let length = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let (Some(limit), Some(length)) = (limit, length)
        && length > limit as u64
    {
        let response = ApiError::PayloadTooLarge { limit }.error_response();
        return Ok(req.into_response(response).map_into_right_body());
    }
    next.call(req).await.map(ServiceResponse::map_into_left_body)
}

/// The request id assigned by the `observe` middleware.
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
