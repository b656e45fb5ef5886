//! The webhook delivery log and redelivery (admin).

use actix_web::{HttpRequest, HttpResponse, web};
use aegis_auth::Access;
use aegis_history::{DeliveryQuery, DeliveryStatus, RunId};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::require;
use crate::dto::{Delivery, DeliveryPage, Redelivery};
use crate::error::{ApiError, Result};
use crate::routes::runs::parse_limit;
use crate::state::AppState;

/// Query of `GET /api/webhooks/deliveries`.
#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct DeliveriesQuery {
    /// Only deliveries with this status: `pending`, `delivered`, `failed` or `gone`.
    status: Option<String>,
    /// Only this webhook's deliveries (its position in `webhooks`, from 0).
    webhook: Option<String>,
    /// Only deliveries of this run's events.
    run: Option<String>,
    /// Page size, 1-1000 (default 50).
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

fn parse_status(status: Option<&str>) -> Result<Option<DeliveryStatus>> {
    let Some(text) = status.filter(|s| !s.is_empty()) else { return Ok(None) };
    text.parse::<DeliveryStatus>().map(Some).map_err(|_| {
        let known: Vec<&str> = DeliveryStatus::ALL.iter().map(|s| s.as_str()).collect();
        ApiError::BadRequest(format!(
            "`status` must be one of {}, found {text:?}",
            known.join(", ")
        ))
    })
}

fn parse_webhook(webhook: Option<&str>) -> Result<Option<u32>> {
    let Some(text) = webhook.filter(|s| !s.is_empty()) else { return Ok(None) };
    text.trim().parse::<u32>().map(Some).map_err(|_| {
        ApiError::BadRequest(format!(
            "`webhook` must be a webhook's index in `webhooks` (0, 1, …), found {text:?}"
        ))
    })
}

/// The delivery log: every delivery with its attempts, newest first.
#[utoipa::path(get, path = "/api/webhooks/deliveries", tag = "webhooks", params(DeliveriesQuery),
    responses((status = 200, body = DeliveryPage), (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub(crate) async fn deliveries(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<DeliveriesQuery>,
) -> Result<HttpResponse> {
    require(&req, &state, Access::Admin)?;
    let query = query.into_inner();
    let list = DeliveryQuery {
        status: parse_status(query.status.as_deref())?,
        webhook: parse_webhook(query.webhook.as_deref())?,
        run_id: query.run.filter(|r| !r.is_empty()).map(RunId::new),
        limit: parse_limit(query.limit.as_deref(), 50)?,
        cursor: query.cursor.filter(|c| !c.is_empty()),
    };
    let page = state.history().list_deliveries(&list).await?;
    let webhooks = state.config().webhooks();
    Ok(HttpResponse::Ok().json(DeliveryPage {
        deliveries: page
            .deliveries
            .iter()
            .map(|d| {
                // A delivery of a webhook removed from the configuration since shows no URL.
                let url = webhooks
                    .get(d.delivery.enqueued.webhook as usize)
                    .map(aegis_config::Webhook::shown_url)
                    .unwrap_or_default();
                Delivery::from_detail(d, url)
            })
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Queues a delivery again: pending, due at once, a fresh attempt count, the same `webhook-id`.
#[utoipa::path(post, path = "/api/webhooks/deliveries/{id}/redeliver", tag = "webhooks",
    params(("id" = String, Path, description = "Delivery id")),
    responses((status = 202, body = Redelivery), (status = 404, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub(crate) async fn redeliver(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    require(&req, &state, Access::Admin)?;
    let id = id.into_inner();
    match state.engine().redeliver(&id).await {
        Ok(()) => {}
        Err(aegis_history::Error::DeliveryNotFound { .. }) => {
            return Err(ApiError::NotFound { what: "delivery", id });
        }
        Err(err) => return Err(err.into()),
    }
    Ok(HttpResponse::Accepted().json(Redelivery { id, status: "pending".to_owned() }))
}
