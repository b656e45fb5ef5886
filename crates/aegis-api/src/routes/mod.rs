//! One module per group of endpoints.

pub(crate) mod health;
pub(crate) mod index;
pub(crate) mod portfolio;
pub(crate) mod runs;
pub(crate) mod workflows;
