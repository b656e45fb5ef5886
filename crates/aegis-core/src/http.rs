//! The shared HTTP client and the calls steps make to services, with errors
//! that tell a refused connection from a timeout from an HTTP status.

use std::error::Error as _;
use std::time::Duration;

use aegis_config::Service;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::limits::{MAX_JSON_DEPTH, MAX_RESPONSE_BYTES, text_depth};
use crate::step::{StepContext, StepError};

/// How much of a response body an error message quotes.
const SNIPPET_CHARS: usize = 200;

/// How many same-origin redirects one call follows.
const MAX_REDIRECTS: usize = 10;

/// Builds the client the engine shares between all steps and health checks:
/// rustls, connection pooling, no proxy lookups from the environment, and
/// redirects followed only within the origin the call was sent to.
pub fn build_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("aegis/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .no_proxy()
        .redirect(redirect_policy())
        // A redirect target learns nothing about where the call came from.
        .referer(false)
        .build()
        .map_err(Error::HttpClient)
}

/// Calls carry the service's `X-API-Key` (and a step's `headers`), which reqwest
/// would send on to wherever a redirect points. So a redirect is followed only to
/// the same scheme, host and port as the call; any other is refused with an error
/// naming where it pointed (see [`describe_error`]).
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let Some(first) = attempt.previous().first() else { return attempt.follow() };
        if origin(first) != origin(attempt.url()) {
            let to = aegis_config::shown_url(attempt.url());
            return attempt.error(Error::CrossOriginRedirect { to });
        }
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(Error::TooManyRedirects { limit: MAX_REDIRECTS });
        }
        attempt.follow()
    })
}

/// A URL's origin: scheme, host and port (the scheme's default when not given).
fn origin(url: &reqwest::Url) -> (&str, Option<&str>, Option<u16>) {
    (url.scheme(), url.host_str(), url.port_or_known_default())
}

/// The URL of `path` on a service.
pub(crate) fn service_url(service: &Service, path: &str) -> String {
    join(service.url().as_str(), path)
}

/// The URL of `path` on a service as it may be shown: a password in the service's
/// URL as `***`.
pub(crate) fn shown_service_url(service: &Service, path: &str) -> String {
    join(&aegis_config::shown_url(service.url()), path)
}

fn join(base: &str, path: &str) -> String {
    let base = base.trim_end_matches('/');
    if path.starts_with('/') { format!("{base}{path}") } else { format!("{base}/{path}") }
}

/// The value of the service's `api_key_env` variable, if set and not empty.
pub(crate) fn api_key(service: &Service) -> Option<String> {
    let var = service.api_key_env()?;
    std::env::var(var).ok().filter(|v| !v.is_empty())
}

/// A short, lowercase description of a failed request.
pub(crate) fn describe_error(err: &reqwest::Error) -> String {
    let mut source = err.source();
    while let Some(cause) = source {
        if let Some(
            refused @ (Error::CrossOriginRedirect { .. } | Error::TooManyRedirects { .. }),
        ) = cause.downcast_ref::<Error>()
        {
            return refused.to_string();
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return "connection refused".into(),
                std::io::ErrorKind::ConnectionReset => return "connection reset".into(),
                std::io::ErrorKind::TimedOut => return "connection timed out".into(),
                _ => {}
            }
        }
        source = cause.source();
    }
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    // reqwest names the URL it was sending to, with any password in it.
    if let Some(url) = err.url()
        && url.password().is_some()
    {
        text = text.replace(url.as_str(), &aegis_config::shown_url(url));
    }
    if err.is_connect() { format!("connection failed: {text}") } else { text }
}

/// "timed out after 60s", "timed out after 1.5s" or "timed out after 250ms".
pub(crate) fn describe_timeout(limit: Duration) -> String {
    let ms = limit.as_millis();
    if ms.is_multiple_of(1000) {
        format!("timed out after {}s", ms / 1000)
    } else if ms >= 1000 {
        format!("timed out after {}s", limit.as_secs_f64())
    } else {
        format!("timed out after {ms}ms")
    }
}

/// A request a step sends to its service.
#[derive(Debug)]
pub(crate) struct Call<'a> {
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) body: Option<&'a Value>,
    pub(crate) headers: Vec<(&'a str, &'a str)>,
    /// Accepted statuses; empty accepts any 2xx.
    pub(crate) expect_status: &'a [u16],
}

/// Sends a call to the step's service and returns the JSON response (a
/// non-JSON body becomes a string, an empty one `null`).
pub(crate) async fn call(ctx: &StepContext, call: Call<'_>) -> Result<Value, StepError> {
    let service = ctx.service().ok_or_else(|| {
        StepError::new(format!("step {:?} names no configured service", ctx.step().id()))
    })?;
    let url = service_url(service, call.path);
    let method = reqwest::Method::from_bytes(call.method.as_bytes())
        .map_err(|_| StepError::new(format!("invalid http method {:?}", call.method)))?;
    let mut request = ctx.client().request(method, &url);
    if let Some(key) = api_key(service) {
        request = request.header("X-API-Key", key);
    }
    for (name, value) in call.headers {
        request = request.header(name, value);
    }
    if let Some(body) = call.body {
        request = request.json(body);
    }
    let response = request.send().await.map_err(|err| StepError::new(describe_error(&err)))?;
    let status = response.status();
    let bytes = read_body(response).await?;
    let body = parse_body(&bytes)?;
    let accepted = if call.expect_status.is_empty() {
        status.is_success()
    } else {
        call.expect_status.contains(&status.as_u16())
    };
    if !accepted {
        let snippet: String = String::from_utf8_lossy(&bytes).chars().take(SNIPPET_CHARS).collect();
        let message = if snippet.trim().is_empty() {
            format!("HTTP {}", status.as_u16())
        } else {
            format!("HTTP {}: {}", status.as_u16(), snippet.trim())
        };
        return Err(StepError::new(message).with_data(body));
    }
    Ok(body)
}

/// Why a response body is not read.
const TOO_LARGE: &str = "response body larger than 16 MiB";

/// Reads a response body chunk by chunk, failing as soon as it passes
/// [`MAX_RESPONSE_BYTES`], so a service cannot make the server hold more than
/// that for one call (a declared length over the limit fails before any read).
async fn read_body(mut response: reqwest::Response) -> Result<Vec<u8>, StepError> {
    if response.content_length().is_some_and(|len| len > MAX_RESPONSE_BYTES as u64) {
        return Err(StepError::new(TOO_LARGE));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) =
        response.chunk().await.map_err(|err| StepError::new(describe_error(&err)))?
    {
        if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(StepError::new(TOO_LARGE));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// The body as JSON, a string when it is not JSON, `null` when empty. JSON nested
/// deeper than [`MAX_JSON_DEPTH`] fails the step: it could not be stored and read
/// back, and is refused before it is parsed.
fn parse_body(bytes: &[u8]) -> Result<Value, StepError> {
    let Some(first) = bytes.iter().find(|b| !b.is_ascii_whitespace()) else {
        return Ok(Value::Null);
    };
    if matches!(first, b'[' | b'{') && text_depth(bytes, MAX_JSON_DEPTH) > MAX_JSON_DEPTH {
        return Err(StepError::new(format!(
            "response body nested deeper than {MAX_JSON_DEPTH} levels"
        )));
    }
    Ok(serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_described_in_the_unit_that_reads_best() {
        assert_eq!(describe_timeout(Duration::from_secs(60)), "timed out after 60s");
        assert_eq!(describe_timeout(Duration::from_millis(1500)), "timed out after 1.5s");
        assert_eq!(describe_timeout(Duration::from_millis(250)), "timed out after 250ms");
    }

    #[test]
    fn bodies_parse_as_json_text_or_null() {
        assert_eq!(parse_body(b" "), Ok(Value::Null));
        assert_eq!(parse_body(b"{\"a\":1}"), Ok(serde_json::json!({"a": 1})));
        assert_eq!(parse_body(b"oops"), Ok(Value::String("oops".into())));
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert_eq!(
            parse_body(deep.as_bytes()).unwrap_err().message(),
            "response body nested deeper than 64 levels"
        );
        let text = format!("text {}", "[".repeat(65));
        assert_eq!(parse_body(text.as_bytes()), Ok(Value::String(text)));
    }
}
