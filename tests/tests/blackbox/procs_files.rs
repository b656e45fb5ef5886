//! Programs, their output and the run folder against the real server (SPEC sections 8
//! and 9): command output capped and streamed with bounded memory, artifact downloads
//! streamed, process groups killed on timeout, cancel and shutdown, retention removing
//! run folders, and links in a run folder never followed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aegis_tests::{Server, write_config};
use serde_json::Value;

use crate::support::{finished, start_run, wait_for_run};

/// The most a server's peak memory may grow during a test that pushes hundreds of MB
/// through it. Holding the data whole would take several times this.
const MEMORY_SLACK_KB: u64 = 64 * 1024;

fn server(yaml: &str) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), yaml);
    let server = Server::start(dir.path());
    (dir, server)
}

/// The server's peak resident memory (`VmHWM`), in kB.
fn peak_kb(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in:\n{status}"))
}

/// `GET path` read as a stream: the status, the `Content-Length`, how many body bytes
/// came and the last `tail` of them; never the whole body in memory.
fn download(port: u16, path: &str, tail: usize) -> (u16, Option<u64>, u64, Vec<u8>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "connection closed in the head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let length = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    let mut last = Vec::new();
    loop {
        let n = stream.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
        last.extend_from_slice(&buf[..n]);
        if last.len() > tail {
            last.drain(..last.len() - tail);
        }
    }
    (status, length, total, last)
}

fn run_dir(dir: &Path, run_id: &str) -> PathBuf {
    dir.join("data/runs").join(run_id)
}

/// Waits for a program to write its background child's pid into `path`.
fn read_pid(path: &Path) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(pid) = text.trim().parse()
        {
            return pid;
        }
        assert!(Instant::now() < deadline, "no pid in {}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether process `pid` is gone (or a zombie nobody reaped yet).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        }
    }
}

fn kill(pid: u32) {
    let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
}

/// Waits up to a minute for `pid` to go; kills it either way, so that a failing test
/// leaves nothing behind, and says whether it went by itself.
fn went_away(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut went = gone(pid);
    while !went && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        went = gone(pid);
    }
    kill(pid);
    went
}

fn step<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["step_id"] == id || s["id"] == id))
        .unwrap_or_else(|| panic!("no step {id} in {run}"))
}

#[test]
fn two_hundred_mb_of_output_keep_ten_mib_and_the_servers_memory_bounded() {
    let (dir, server) = server(
        "workflows:
  loud:
    steps:
      - { id: loud, type: command, argv: [sh, -c, 'head -c 209715200 /dev/zero; head -c 209715200 /dev/zero >&2'] }
",
    );
    let before = peak_kb(&server);
    let run = server.post("/api/workflows/loud/run?wait=true");
    assert_eq!(run.status, 200, "{}", run.text());
    let run = run.json();
    assert_eq!(run["status"], "succeeded", "{run}");
    let peak = peak_kb(&server);
    eprintln!("VmHWM {before} kB -> {peak} kB for 400 MB of command output");
    assert!(
        peak < before + MEMORY_SLACK_KB,
        "peak memory grew from {before} kB to {peak} kB for 400 MB of output"
    );
    let id = run["id"].as_str().unwrap();
    let data = &step(&run, "loud")["data"];
    assert_eq!(data["stdout_truncated"], true, "{data}");
    assert_eq!(data["stderr_truncated"], true, "{data}");
    assert_eq!(data["stdout_bytes"], 209_715_200u64, "{data}");

    let note = b"\n[aegis: output truncated: kept the first 10485760 of 209715200 bytes]\n";
    let size = 10 * 1024 * 1024 + note.len() as u64;
    for name in ["loud.stdout.txt", "loud.stderr.txt"] {
        let on_disk = std::fs::metadata(run_dir(dir.path(), id).join(name)).unwrap().len();
        assert_eq!(on_disk, size, "{name}");
        let (status, length, total, tail) =
            download(server.port(), &format!("/api/runs/{id}/artifacts/{name}"), note.len());
        assert_eq!((status, length, total), (200, Some(size), size), "{name}");
        assert_eq!(tail, note, "{name}");
    }
    let listed = server.get(&format!("/api/runs/{id}/artifacts")).json();
    let sizes: Vec<(String, u64)> = listed["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["name"].as_str().unwrap().to_owned(), a["size"].as_u64().unwrap()))
        .collect();
    assert!(sizes.contains(&("loud.stdout.txt".to_owned(), size)), "{sizes:?}");
}

#[test]
fn concurrent_downloads_of_a_large_artifact_stream_from_disk() {
    let (dir, server) = server(
        "workflows:\n  hi:\n    steps:\n      - { id: hi, type: command, argv: [echo, hi] }\n",
    );
    let run = server.post("/api/workflows/hi/run?wait=true").json();
    let id = run["id"].as_str().unwrap().to_owned();
    // A sparse file: 128 MiB to serve, no disk used.
    let size: u64 = 128 * 1024 * 1024;
    let file = std::fs::File::create(run_dir(dir.path(), &id).join("blob.bin")).unwrap();
    file.set_len(size).unwrap();
    drop(file);
    let before = peak_kb(&server);
    let port = server.port();
    let downloads: Vec<_> = (0..4)
        .map(|_| {
            let path = format!("/api/runs/{id}/artifacts/blob.bin");
            std::thread::spawn(move || download(port, &path, 16))
        })
        .collect();
    for download in downloads {
        let (status, length, total, tail) = download.join().unwrap();
        assert_eq!((status, length, total), (200, Some(size), size));
        assert_eq!(tail, vec![0u8; 16]);
    }
    let peak = peak_kb(&server);
    eprintln!("VmHWM {before} kB -> {peak} kB for four concurrent 128 MiB downloads");
    assert!(
        peak < before + MEMORY_SLACK_KB,
        "peak memory grew from {before} kB to {peak} kB for four 128 MiB downloads"
    );
}

#[test]
fn a_program_that_leaves_a_background_child_finishes_when_it_exits() {
    // Before process groups the step waited for the child to close stdout and timed
    // out after 20 s.
    let (dir, server) = server(
        "workflows:
  bg:
    steps:
      - { id: bg, type: command, cwd: ., timeout: 20, argv: [sh, -c, 'sleep 25 & echo $! > bg.pid; echo started'] }
",
    );
    let run = server.post("/api/workflows/bg/run?wait=true");
    let pid = read_pid(&dir.path().join("bg.pid"));
    kill(pid);
    assert_eq!(run.status, 200, "{}", run.text());
    let run = run.json();
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(step(&run, "bg")["data"]["exit_code"], 0, "{run}");
    let id = run["id"].as_str().unwrap();
    let stdout = server.get(&format!("/api/runs/{id}/artifacts/bg.stdout.txt"));
    assert_eq!((stdout.status, stdout.text().as_str()), (200, "started\n"));
}

const LINGERING: &str = "workflows:
  linger:
    steps:
      - { id: linger, type: command, cwd: ., timeout: 600, argv: [sh, -c, 'sleep 600 & echo $! > bg.pid; wait'] }
  short:
    steps:
      - { id: short, type: command, cwd: ., timeout: 1, argv: [sh, -c, 'sleep 600 & echo $! > short.pid; wait'] }
";

#[test]
fn a_timeout_and_a_cancel_kill_the_programs_whole_group() {
    let (dir, server) = server(LINGERING);
    let run = server.post("/api/workflows/short/run?wait=true").json();
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(step(&run, "short")["error"], "timed out after 1s", "{run}");
    let pid = read_pid(&dir.path().join("short.pid"));
    assert!(went_away(pid), "the background child {pid} outlived the timeout");

    let id = start_run(&server, "linger");
    let pid = read_pid(&dir.path().join("bg.pid"));
    let cancel = server.post(&format!("/api/runs/{id}/cancel"));
    assert_eq!(cancel.status, 202, "{}", cancel.text());
    let run = wait_for_run(&server, &id, |r| finished(&r["status"]));
    assert_eq!(run["status"], "cancelled", "{run}");
    assert!(went_away(pid), "the background child {pid} outlived the cancel");
}

#[test]
fn a_shutdown_kills_the_group_of_a_running_program() {
    let (dir, server) = server(&format!("server: {{ shutdown_grace: 1 }}\n{LINGERING}"));
    let id = start_run(&server, "linger");
    let pid = read_pid(&dir.path().join("bg.pid"));
    assert_eq!(server.terminate(), Some(0));
    assert!(went_away(pid), "the background child {pid} outlived the shutdown of run {id}");
}

fn run_folders(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("data/runs"))
        .map(|entries| {
            entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into()).collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn retention_removes_the_folders_of_the_runs_it_deletes() {
    let (dir, server) = server(
        "history_max_records: 2
workflows:
  hi:
    steps:
      - { id: hi, type: command, argv: [echo, hi] }
",
    );
    let mut ids = Vec::new();
    for _ in 0..5 {
        let run = server.post("/api/workflows/hi/run?wait=true");
        assert_eq!(run.status, 200, "{}", run.text());
        ids.push(run.json()["id"].as_str().unwrap().to_owned());
    }
    // Removal happens behind the runs (about every second): wait for it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while run_folders(dir.path()).len() > 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut kept = ids[3..].to_vec();
    kept.sort();
    assert_eq!(run_folders(dir.path()), kept);
    for id in &ids[..3] {
        assert_eq!(server.get(&format!("/api/runs/{id}")).status, 404);
    }
    for id in &ids[3..] {
        let log = server.get(&format!("/api/runs/{id}/artifacts/events.jsonl"));
        assert_eq!(log.status, 200, "{}", log.text());
    }
}

#[test]
fn links_in_a_run_folder_are_never_followed() {
    let (dir, server) = server(
        "workflows:\n  hi:\n    steps:\n      - { id: hi, type: command, argv: [echo, hi] }\n",
    );
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "outside data_dir").unwrap();
    let run = server.post("/api/workflows/hi/run?wait=true").json();
    let id = run["id"].as_str().unwrap();
    let folder = run_dir(dir.path(), id);
    std::os::unix::fs::symlink(outside.path().join("secret.txt"), folder.join("link.txt")).unwrap();
    std::os::unix::fs::symlink(outside.path(), folder.join("linkdir")).unwrap();

    let listed = server.get(&format!("/api/runs/{id}/artifacts"));
    assert_eq!(listed.status, 200, "{}", listed.text());
    let names: Vec<String> = listed.json()["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.contains(&"hi.stdout.txt".to_owned()), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("link")), "{names:?}");
    for name in ["link.txt", "linkdir"] {
        let download = server.get(&format!("/api/runs/{id}/artifacts/{name}"));
        assert_eq!(download.status, 404, "{name}: {}", download.text());
        assert!(!download.text().contains("outside data_dir"));
    }
    let stdout = server.get(&format!("/api/runs/{id}/artifacts/hi.stdout.txt"));
    assert_eq!((stdout.status, stdout.text().as_str()), (200, "hi\n"));
}
