//! Rebuilds the crate when anything under `web/` changes: the dashboard is embedded with
//! `include_dir!`, which cargo cannot see into on a stable toolchain.

fn main() {
    println!("cargo::rerun-if-changed=../../web");
}
