//! Benchmarks of the SQLite history backend.

fn main() {}
