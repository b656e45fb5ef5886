//! The service registry's health checks: every configured service's health
//! endpoint, checked concurrently.

use std::time::{Duration, Instant};

use aegis_config::{Config, Service};
use serde::Serialize;

use crate::http::{api_key, describe_error, describe_timeout, service_url, shown_service_url};
use crate::summary::millis;

/// How long a health check waits for an answer.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// What a health check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HealthStatus {
    /// The health endpoint answered 2xx.
    Healthy,
    /// It answered with another status.
    Unhealthy,
    /// No answer: refused, timed out, DNS failure, TLS failure.
    Unreachable,
}

impl HealthStatus {
    /// `healthy`, `unhealthy` or `unreachable`.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
            HealthStatus::Unreachable => "unreachable",
        }
    }
}

/// The health of one service.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ServiceHealth {
    /// The service key.
    pub key: String,
    /// Its display name.
    pub name: String,
    /// The URL checked (a password in it as `***`).
    pub url: String,
    /// What the check found.
    pub status: HealthStatus,
    /// The HTTP status, when there was an answer.
    pub http_status: Option<u16>,
    /// How long the check took.
    pub latency_ms: u64,
    /// What went wrong, when not healthy.
    pub error: Option<String>,
}

/// Checks every configured service concurrently, in configuration order.
pub async fn check_services(client: &reqwest::Client, config: &Config) -> Vec<ServiceHealth> {
    let checks =
        config.services().values().map(|service| check_service(client, service, HEALTH_TIMEOUT));
    futures_util::future::join_all(checks).await
}

/// Checks one service's health endpoint, sending its `api_key_env` value as `X-API-Key`.
pub async fn check_service(
    client: &reqwest::Client,
    service: &Service,
    timeout: Duration,
) -> ServiceHealth {
    let url = service_url(service, service.health_endpoint());
    let mut request = client.get(&url);
    if let Some(key) = api_key(service) {
        request = request.header("X-API-Key", key);
    }
    let clock = Instant::now();
    let answer = tokio::time::timeout(timeout, request.send()).await;
    let latency_ms = millis(clock.elapsed());
    let (status, http_status, error) = match answer {
        Err(_) => (HealthStatus::Unreachable, None, Some(describe_timeout(timeout))),
        Ok(Err(err)) => (HealthStatus::Unreachable, None, Some(describe_error(&err))),
        Ok(Ok(response)) if response.status().is_success() => {
            (HealthStatus::Healthy, Some(response.status().as_u16()), None)
        }
        Ok(Ok(response)) => {
            let code = response.status().as_u16();
            (HealthStatus::Unhealthy, Some(code), Some(format!("HTTP {code}")))
        }
    };
    ServiceHealth {
        key: service.key().to_owned(),
        name: service.name().to_owned(),
        url: shown_service_url(service, service.health_endpoint()),
        status,
        http_status,
        latency_ms,
        error,
    }
}
