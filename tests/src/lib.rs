//! Helpers for black-box tests: locating the workspace's real binaries and running them
//! with a controlled environment.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The path of a binary built from this workspace (`aegis-cli`, `aegis-server`), found
/// next to the running test executable so any target directory or profile works.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // The test runs from `<target>/<profile>/deps/<test>`.
    let profile_dir =
        exe.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default();
    profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// A command for `aegis-cli` with a clean environment: no inherited `AEGIS_*` or colour
/// settings, run in `cwd`.
pub fn aegis_cli(cwd: &Path) -> Command {
    let mut cmd = Command::new(binary("aegis-cli"));
    cmd.current_dir(cwd).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd
}

/// The outcome of a finished command, with its output as text.
#[derive(Debug)]
pub struct Finished {
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl From<Output> for Finished {
    fn from(output: Output) -> Self {
        Finished {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// Runs `cmd` to completion.
pub fn run(cmd: &mut Command) -> Finished {
    match cmd.output() {
        Ok(output) => output.into(),
        Err(err) => panic!(
            "cannot start {cmd:?}: {err}; build the binaries first (`bash scripts/test.sh` does)"
        ),
    }
}
