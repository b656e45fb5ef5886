//! `command`: runs a local program without a shell, streams its output to
//! artifact files and reads an optional JUnit report.
//!
//! The program runs in a process group of its own. The step ends when the
//! program exits, not when the last of its descendants closes the output
//! pipes: a program that leaves a background child (`sleep 25 &`) finishes at
//! once, with what it wrote. When the step is abandoned before the program
//! exits (its timeout, a cancel, a shutdown: the engine drops the step's
//! future), the whole group is killed with `SIGKILL`, descendants included.
//!
//! stdout and stderr are copied to `<step_id>.stdout.txt` and
//! `<step_id>.stderr.txt` as they arrive, in chunks, each file kept to
//! [`OUTPUT_LIMIT`] bytes; past that the output is read and dropped (so the
//! program never blocks on a full pipe), a note line closes the file, and the
//! step's data says `stdout_truncated` / `stderr_truncated`. Nothing holds a
//! whole output in memory: only the last bytes of stderr are kept, for the
//! error message.

use std::collections::VecDeque;
use std::process::Stdio;
use std::time::Duration;

use aegis_config::StepKind;
use async_trait::async_trait;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::step::{Step, StepContext, StepError};

/// How much of stderr an error message quotes.
const SNIPPET_CHARS: usize = 200;

/// How many trailing bytes of stderr are kept for the error message (enough
/// for [`SNIPPET_CHARS`] characters of up to four bytes).
const TAIL_BYTES: usize = SNIPPET_CHARS * 4;

/// The most of each of stdout and stderr kept in its artifact file.
pub(crate) const OUTPUT_LIMIT: u64 = 10 * 1024 * 1024;

/// The size of one read from a pipe.
const CHUNK: usize = 64 * 1024;

/// After the program exits, how long a pipe may stay silent before the step
/// stops reading it. Whatever the program itself wrote is already in the pipe
/// then; only a descendant that still holds the pipe can make it wait.
const IDLE_AFTER_EXIT: Duration = Duration::from_millis(100);

/// After the program exits, the longest the step goes on reading output that
/// descendants keep writing.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

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
        let id = ctx.step().id();
        let stdout_name = format!("{id}.stdout.txt");
        let stderr_name = format!("{id}.stderr.txt");
        // Created before the program starts, so a name or disk problem never
        // leaves a program running unobserved.
        let (stdout_file, _) = ctx.create_artifact(&stdout_name).await?;
        let (stderr_file, _) = ctx.create_artifact(&stderr_name).await?;

        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A group of its own (its id is the program's pid), so that the
            // program's descendants can be killed with it.
            .process_group(0)
            // Dropping the future (timeout, cancellation) kills the program;
            // `GroupKill` below kills the rest of its group.
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
        let mut child = command
            .spawn()
            .map_err(|err| StepError::new(format!("cannot run {program:?}: {err}")))?;
        let mut group = GroupKill::new(child.id());
        let mut stdout = Capture::new(stdout_file, 0);
        let mut stderr = Capture::new(stderr_file, TAIL_BYTES);
        let (stdout_pipe, stderr_pipe) = (child.stdout.take(), child.stderr.take());

        let exited = CancellationToken::new();
        let wait = async {
            let status = child.wait().await;
            // The program is gone and reaped: its group id may be reused
            // once its descendants are gone too, so never signal it again.
            group.disarm();
            exited.cancel();
            status
        };
        let (status, out_read, err_read) = tokio::join!(
            wait,
            stdout.fill(stdout_pipe, &exited),
            stderr.fill(stderr_pipe, &exited),
        );
        let status =
            status.map_err(|err| StepError::new(format!("cannot wait for {program:?}: {err}")))?;
        let cannot = |name: &str, err: std::io::Error| {
            StepError::new(format!("cannot capture {name} of {program:?}: {err}"))
        };
        out_read.map_err(|e| cannot("stdout", e))?;
        err_read.map_err(|e| cannot("stderr", e))?;
        let stdout_size = stdout.finish().await.map_err(|e| cannot("stdout", e))?;
        let stderr_size = stderr.finish().await.map_err(|e| cannot("stderr", e))?;
        ctx.note_artifact(&stdout_name, stdout_size);
        ctx.note_artifact(&stderr_name, stderr_size);

        let exit_code = status.code();
        let exit_text =
            exit_code.map_or_else(|| "a signal".to_owned(), |c| format!("exit code {c}"));
        let mut base = Map::new();
        base.insert("exit_code".to_owned(), json!(exit_code));
        for (stream, capture) in [("stdout", &stdout), ("stderr", &stderr)] {
            if capture.truncated() {
                base.insert(format!("{stream}_truncated"), Value::Bool(true));
                base.insert(format!("{stream}_bytes"), json!(capture.total));
            }
        }
        let with_base = |data: Value| match data {
            Value::Object(mut fields) => {
                for (key, value) in &base {
                    fields.entry(key.clone()).or_insert_with(|| value.clone());
                }
                Value::Object(fields)
            }
            other => other,
        };
        let failure = |message: String| {
            StepError::new(message).with_data(with_base(Value::Object(Map::new())))
        };

        let Some(junit) = spec.junit() else {
            if status.success() {
                return Ok(with_base(
                    json!({ "total": 0, "passed": 0, "failed": 0, "failures": [] }),
                ));
            }
            return Err(failure(failure_message(&exit_text, &stderr.tail())));
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
                return Err(failure(format!(
                    "junit report {} not found after the command ended with {exit_text}",
                    path.display()
                )));
            }
            Err(err) => Err(format!("cannot read it: {err}")),
        };
        match report {
            Ok(report) => Ok(with_base(report.to_data(exit_code))),
            Err(reason) => {
                Err(failure(format!("malformed junit report {}: {reason}", path.display())))
            }
        }
    }
}

/// Kills a program's whole process group with `SIGKILL` when dropped, unless
/// disarmed once the program has exited and been reaped.
#[derive(Debug)]
struct GroupKill {
    group: Option<rustix::process::Pid>,
}

impl GroupKill {
    fn new(pid: Option<u32>) -> Self {
        let group =
            pid.and_then(|p| i32::try_from(p).ok()).and_then(rustix::process::Pid::from_raw);
        Self { group }
    }

    fn disarm(&mut self) {
        self.group = None;
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(group) = self.group.take() {
            // The program has not been reaped, so its pid (the group id) still
            // names this group. ESRCH (nothing left) is fine.
            if let Err(err) =
                rustix::process::kill_process_group(group, rustix::process::Signal::KILL)
                && err != rustix::io::Errno::SRCH
            {
                log::warn!("cannot kill process group {}: {err}", group.as_raw_nonzero());
            }
        }
    }
}

/// One output stream on its way to its artifact file.
#[derive(Debug)]
struct Capture {
    file: tokio::fs::File,
    /// Bytes written to the file.
    kept: u64,
    /// Bytes read from the pipe.
    total: u64,
    /// The last bytes read, up to `tail_limit`.
    tail: VecDeque<u8>,
    tail_limit: usize,
}

impl Capture {
    fn new(file: tokio::fs::File, tail_limit: usize) -> Self {
        Self { file, kept: 0, total: 0, tail: VecDeque::new(), tail_limit }
    }

    fn truncated(&self) -> bool {
        self.total > self.kept
    }

    /// Copies `pipe` to the file, up to [`OUTPUT_LIMIT`] bytes, until it ends
    /// or, once `exited` is cancelled, until it stays silent for
    /// [`IDLE_AFTER_EXIT`] or [`DRAIN_AFTER_EXIT`] has passed.
    async fn fill(
        &mut self,
        pipe: Option<impl AsyncRead + Unpin>,
        exited: &CancellationToken,
    ) -> std::io::Result<()> {
        let Some(mut pipe) = pipe else { return Ok(()) };
        let mut buf = vec![0u8; CHUNK];
        let mut drain_until: Option<Instant> = None;
        loop {
            let read = match drain_until {
                None => tokio::select! {
                    // `read` is cancel-safe: nothing read is lost when the
                    // program's exit wins the race.
                    read = pipe.read(&mut buf) => read?,
                    () = exited.cancelled() => {
                        drain_until = Some(Instant::now() + DRAIN_AFTER_EXIT);
                        continue;
                    }
                },
                Some(until) => {
                    let now = Instant::now();
                    if now >= until {
                        log::debug!("a descendant of a command still writes; output kept so far");
                        return Ok(());
                    }
                    let wait = IDLE_AFTER_EXIT.min(until - now);
                    match tokio::time::timeout(wait, pipe.read(&mut buf)).await {
                        Ok(read) => read?,
                        // Only a descendant holds the pipe open, and it is quiet.
                        Err(_) => return Ok(()),
                    }
                }
            };
            if read == 0 {
                return Ok(());
            }
            self.take(&buf[..read]).await?;
        }
    }

    async fn take(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.total += chunk.len() as u64;
        let room = OUTPUT_LIMIT.saturating_sub(self.kept);
        let keep = chunk.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        if keep > 0 {
            self.file.write_all(&chunk[..keep]).await?;
            self.kept += keep as u64;
        }
        if self.tail_limit > 0 {
            let start = chunk.len().saturating_sub(self.tail_limit);
            self.tail.extend(&chunk[start..]);
            let excess = self.tail.len().saturating_sub(self.tail_limit);
            self.tail.drain(..excess);
        }
        Ok(())
    }

    /// Ends the file (with the truncation note when output was dropped) and
    /// returns its size.
    async fn finish(&mut self) -> std::io::Result<u64> {
        let mut size = self.kept;
        if self.truncated() {
            let note = format!(
                "\n[aegis: output truncated: kept the first {} of {} bytes]\n",
                self.kept, self.total
            );
            self.file.write_all(note.as_bytes()).await?;
            size += note.len() as u64;
        }
        // A tokio file finishes its last write in the background: wait for it.
        self.file.flush().await?;
        Ok(size)
    }

    fn tail(&self) -> Vec<u8> {
        self.tail.iter().copied().collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn capture(tail: usize, chunks: &[&[u8]]) -> (Capture, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        let file = tokio::fs::File::create(&path).await.unwrap();
        let mut capture = Capture::new(file, tail);
        for chunk in chunks {
            capture.take(chunk).await.unwrap();
        }
        capture.finish().await.unwrap();
        let written = tokio::fs::read(&path).await.unwrap();
        (capture, written)
    }

    #[tokio::test]
    async fn output_past_the_limit_is_dropped_with_a_note() {
        let big = vec![b'x'; CHUNK];
        let chunks: Vec<&[u8]> = std::iter::repeat_n(big.as_slice(), 161).collect();
        let (capture, written) = capture(0, &chunks).await;
        assert!(capture.truncated());
        assert_eq!(capture.total, 161 * CHUNK as u64);
        let note = format!(
            "\n[aegis: output truncated: kept the first {OUTPUT_LIMIT} of {} bytes]\n",
            161 * CHUNK
        );
        assert_eq!(written.len() as u64, OUTPUT_LIMIT + note.len() as u64);
        assert!(written.ends_with(note.as_bytes()));
        assert!(written[..OUTPUT_LIMIT as usize].iter().all(|b| *b == b'x'));
    }

    #[tokio::test]
    async fn output_within_the_limit_is_kept_whole_and_the_tail_is_bounded() {
        let (capture, written) = capture(4, &[b"hello ", b"world"]).await;
        assert!(!capture.truncated());
        assert_eq!(written, b"hello world");
        assert_eq!(capture.tail(), b"orld");
    }
}
