//! Black-box tests of configuration loading: every file under `tests/data/bad` must be
//! rejected with located findings, every file under `tests/data/good` accepted.

#![allow(clippy::unwrap_used, reason = "test helpers fail loudly on broken fixtures")]

mod diagnostics;
mod loading;
