//! Creates a history database with many finished runs, for load tests:
//! `cargo run --release -p aegis-history --features test-support --example seed_runs -- PATH [RUNS]`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(args.next().ok_or("usage: seed_runs PATH [RUNS]")?);
    let runs: u64 = args.next().map(|n| n.parse()).transpose()?.unwrap_or(1_000_000);
    if path.exists() {
        return Err(format!("{} exists; remove it first", path.display()).into());
    }
    let started = std::time::Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(aegis_history::seed::bulk_seed(&path, runs, 20))?;
    eprintln!("seeded {runs} runs into {} in {:.1?}", path.display(), started.elapsed());
    Ok(())
}
