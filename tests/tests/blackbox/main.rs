//! Black-box tests: the real binaries, started as a user would start them.

mod cli_config;
