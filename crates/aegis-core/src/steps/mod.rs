//! The built-in step types of SPEC section 4 (`gate` is handled by the engine).

mod command;
mod http;
pub(crate) mod junit;
mod report;
mod service;
mod template;

use std::sync::Arc;

use crate::step::StepRegistry;

pub(crate) use template::resolve as resolve_template;

impl StepRegistry {
    /// A registry with the built-in step types (`gate` is handled by the engine itself).
    pub fn with_builtins() -> Self {
        let mut registry = Self::empty();
        registry
            .register("discover", Arc::new(service::Discover))
            .register("test", Arc::new(service::RunTests { verify_only: false }))
            .register("verify", Arc::new(service::RunTests { verify_only: true }))
            .register("submit_bugs", Arc::new(service::SubmitBugs))
            .register("report", Arc::new(report::Report))
            .register("http", Arc::new(http::HttpCall))
            .register("command", Arc::new(command::Command));
        registry
    }
}
