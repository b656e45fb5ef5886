//! The `aegis-cli` command.

fn main() {}
