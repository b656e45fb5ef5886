//! `command`: runs a local program without a shell, captures its output as
//! artifacts and reads an optional JUnit report.

use std::process::Stdio;

use aegis_config::StepKind;
use async_trait::async_trait;
use serde_json::{Value, json};

use crate::step::{Step, StepContext, StepError};

/// How much of stderr an error message quotes.
const SNIPPET_CHARS: usize = 200;

/// The `command` step type.
#[derive(Debug)]
pub(crate) struct Command;

#[async_trait]
impl Step for Command {
    async fn execute(&self, ctx: &StepContext) -> Result<Value, StepError> {
        let StepKind::Command(spec) = ctx.step().kind() else {
            return Err(StepError::new("command step without command fields"));
        };
        let Some((program, args)) = spec.argv().split_first() else {
            return Err(StepError::new("command step has an empty argv"));
        };
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Dropping the future (timeout, cancellation) kills the program.
            .kill_on_drop(true);
        if let Some(cwd) = spec.cwd() {
            command.current_dir(cwd);
        }
        // Who is running the program, as a CI system tells its jobs: a test
        // command can tag what it files with the run that filed it.
        command
            .env("AEGIS_RUN_ID", ctx.run_id())
            .env("AEGIS_WORKFLOW", ctx.workflow())
            .env("AEGIS_STEP_ID", ctx.step().id())
            .env("AEGIS_ATTEMPT", ctx.attempt().to_string());
        for (key, value) in spec.env() {
            command.env(key, value.expose());
        }
        let output = command
            .output()
            .await
            .map_err(|err| StepError::new(format!("cannot run {program:?}: {err}")))?;
        let id = ctx.step().id();
        ctx.write_artifact(&format!("{id}.stdout.txt"), &output.stdout).await?;
        ctx.write_artifact(&format!("{id}.stderr.txt"), &output.stderr).await?;
        let exit_code = output.status.code();
        let exit_text =
            exit_code.map_or_else(|| "a signal".to_owned(), |c| format!("exit code {c}"));

        let Some(junit) = spec.junit() else {
            if output.status.success() {
                return Ok(
                    json!({ "exit_code": exit_code, "total": 0, "passed": 0, "failed": 0, "failures": [] }),
                );
            }
            return Err(StepError::new(failure_message(&exit_text, &output.stderr))
                .with_data(json!({ "exit_code": exit_code })));
        };
        let path = match spec.cwd() {
            Some(cwd) => cwd.join(junit),
            None => junit.to_path_buf(),
        };
        let report = match tokio::fs::read(&path).await {
            Ok(bytes) => String::from_utf8(bytes)
                .map_err(|_| "the file is not utf-8".to_owned())
                .and_then(|text| super::junit::parse(&text)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(StepError::new(format!(
                    "junit report {} not found after the command ended with {exit_text}",
                    path.display()
                ))
                .with_data(json!({ "exit_code": exit_code })));
            }
            Err(err) => Err(format!("cannot read it: {err}")),
        };
        match report {
            Ok(report) => Ok(report.to_data(exit_code)),
            Err(reason) => {
                Err(StepError::new(format!("malformed junit report {}: {reason}", path.display()))
                    .with_data(json!({ "exit_code": exit_code })))
            }
        }
    }
}

fn failure_message(exit_text: &str, stderr: &[u8]) -> String {
    let stderr = String::from_utf8_lossy(stderr);
    let tail: Vec<char> = stderr.trim().chars().rev().take(SNIPPET_CHARS).collect();
    let tail: String = tail.into_iter().rev().collect();
    if tail.is_empty() {
        format!("command failed with {exit_text}")
    } else {
        format!("command failed with {exit_text}: {tail}")
    }
}
