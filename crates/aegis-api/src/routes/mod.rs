//! One module per group of endpoints.

pub(crate) mod artifacts;
pub(crate) mod control;
pub(crate) mod events;
pub(crate) mod gates;
pub(crate) mod health;
pub(crate) mod index;
pub(crate) mod portfolio;
pub(crate) mod runs;
pub(crate) mod services;
pub(crate) mod webhooks;
pub(crate) mod workflows;
