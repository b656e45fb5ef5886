//! Black-box tests of configuration loading: every file under `tests/data/bad` must be
//! rejected with located findings, every file under `tests/data/good` accepted.

mod diagnostics;
mod loading;
