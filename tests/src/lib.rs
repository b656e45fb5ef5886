//! Helpers for black-box tests: locating the workspace's real binaries and running them
//! with a controlled environment; [`Server`], the real `aegis-server` on a free port; and
//! a small HTTP/1.1 client ([`Request`], [`Response`], [`Sse`]) that sends exactly the
//! bytes a test asks for, so bad input reaches the server unaltered; and
//! [`read_request`], the server side of that, for local services tests stand up.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

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

// --- The real server ---------------------------------------------------------------

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests that start
/// one server each).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0: {e}"));
    listener.local_addr().map(|a| a.port()).unwrap_or_else(|e| panic!("no local address: {e}"))
}

/// Writes `.aegis.yaml` into `dir` with `data_dir: ./data` and `history_db_path:
/// ./history.db` prepended, so every server started there shares one SQLite file.
pub fn write_config(dir: &Path, yaml: &str) {
    let text = format!("data_dir: ./data\nhistory_db_path: ./history.db\n{yaml}");
    std::fs::write(dir.join(".aegis.yaml"), text)
        .unwrap_or_else(|e| panic!("cannot write the config into {}: {e}", dir.display()));
}

/// A command for `aegis-server` with a clean environment, run in `cwd`.
pub fn aegis_server(cwd: &Path) -> Command {
    let mut cmd = Command::new(binary("aegis-server"));
    cmd.current_dir(cwd).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd
}

/// A running `aegis-server` started with `--config .aegis.yaml --port PORT` in a
/// directory, its stderr going to `server-N.stderr` there. Killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct Server {
    child: Option<std::process::Child>,
    port: u16,
    stderr_path: PathBuf,
}

/// How long a server gets to become ready; generous, the machine may be busy.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

impl Server {
    /// Starts the server in `dir` (which holds `.aegis.yaml`) on a free port and waits
    /// for `/health/ready`.
    pub fn start(dir: &Path) -> Server {
        Server::start_with(dir, &[], &[])
    }

    /// Like [`Server::start`] with extra arguments (after `--config` and `--port`) and
    /// environment variables.
    ///
    /// The port is free when picked, but another test's server may take it before
    /// this one binds: then it is started again on another.
    pub fn start_with(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut tried = Vec::new();
        for _ in 0..5 {
            let mut server = Server::spawn(dir, free_port(), args, env);
            if server.ready_or_port_taken() {
                return server;
            }
            tried.push(server.port);
        }
        panic!("aegis-server found each port taken by another process: {tried:?}");
    }

    /// Starts the server with `--config .aegis.yaml --port PORT` and `args` on a free
    /// port without waiting for it.
    pub fn spawn(dir: &Path, port: u16, args: &[&str], env: &[(&str, &str)]) -> Server {
        let port_text = port.to_string();
        let mut all = vec!["--config", ".aegis.yaml", "--port", port_text.as_str()];
        all.extend_from_slice(args);
        Server::launch(dir, port, &all, env)
    }

    /// Like [`Server::spawn`], but started through `sh -c "<shell> && exec aegis-server …"`:
    /// for a limit a test sets with a shell builtin (`ulimit -n 256`) without unsafe code.
    /// `exec` keeps the pid, so [`Server::pid`] is the server's.
    pub fn spawn_after_shell(
        dir: &Path,
        port: u16,
        shell: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let port_text = port.to_string();
        let mut cmd = Command::new("sh");
        cmd.current_dir(dir).env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        cmd.arg("-c")
            .arg(format!("{shell} && exec \"$0\" \"$@\""))
            .arg(binary("aegis-server"))
            .args(["--config", ".aegis.yaml", "--port", port_text.as_str()])
            .args(args);
        Server::launch_command(dir, port, cmd, env)
    }

    /// Starts the server with exactly `args`, to be reached on `port`, without waiting.
    pub fn launch(dir: &Path, port: u16, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = aegis_server(dir);
        cmd.args(args);
        Server::launch_command(dir, port, cmd, env)
    }

    fn launch_command(dir: &Path, port: u16, mut cmd: Command, env: &[(&str, &str)]) -> Server {
        let stderr_path = (0..)
            .map(|n| dir.join(format!("server-{n}.stderr")))
            .find(|p| !p.exists())
            .unwrap_or_else(|| dir.join("server.stderr"));
        let stderr = std::fs::File::create(&stderr_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", stderr_path.display()));
        cmd.envs(env.iter().copied()).stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {cmd:?}: {e}; build the binaries first (`bash scripts/test.sh` does)"
            )
        });
        Server { child: Some(child), port, stderr_path }
    }

    /// Waits until `/health/ready` answers 200; panics with the server's stderr if it
    /// exits or does not get there in time.
    pub fn wait_ready(&mut self) {
        if !self.ready_or_port_taken() {
            panic!("aegis-server could not listen on port {}:\n{}", self.port, self.stderr());
        }
    }

    /// Waits until this server answers `/health/ready` with 200: true; false when it
    /// exited because its port was taken. A 200 counts only once this server says it
    /// listens on its port, so another process on that port is never taken for it.
    fn ready_or_port_taken(&mut self) -> bool {
        let listening = format!(":{}", self.port);
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            let ours = || {
                self.stderr()
                    .lines()
                    .any(|l| l.contains("listening on http") && l.contains(&listening))
            };
            if let Ok(response) = try_send(self.port, &Request::get("/health/ready"))
                && response.status == 200
                && ours()
            {
                return true;
            }
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                let stderr = self.stderr();
                if stderr.contains("Address already in use") {
                    return false;
                }
                panic!("aegis-server exited with {status} before it was ready:\n{stderr}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("aegis-server did not become ready on port {}:\n{}", self.port, self.stderr());
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, std::process::Child::id)
    }

    /// The file its stderr goes to.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Whether stderr comes to contain `needle` within 10 s. Log lines reach the file
    /// through the server's writer thread, a moment after what they describe.
    pub fn stderr_comes_to_contain(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.stderr().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `request` and returns the answer; panics with the server's stderr when the
    /// connection fails.
    pub fn send(&self, request: &Request) -> Response {
        try_send(self.port, request).unwrap_or_else(|e| {
            panic!(
                "{} {} failed: {e}\nserver stderr:\n{}",
                request.method,
                request.target,
                self.stderr()
            )
        })
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Response {
        self.send(&Request::get(path))
    }

    /// `POST path` without a body.
    pub fn post(&self, path: &str) -> Response {
        self.send(&Request::post(path))
    }

    /// Sends SIGTERM and waits (up to a minute) for the exit code.
    pub fn terminate(mut self) -> Option<i32> {
        signal(self.pid(), "TERM");
        self.wait_exit()
    }

    /// Sends SIGKILL and waits for the process to go.
    pub fn kill9(mut self) {
        signal(self.pid(), "KILL");
        let _ = self.wait_exit();
    }

    /// Waits for the process to exit and returns its code (`None` when killed by a
    /// signal); panics after a minute.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.code(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("aegis-server did not exit within a minute:\n{}", self.stderr());
                }
            }
        }
    }
}

/// Sends `SIG<name>` to `pid` with the `kill` command.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .unwrap_or_else(|e| panic!("cannot run kill: {e}"));
    assert!(status.success(), "kill -{name} {pid} failed");
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// --- A small HTTP/1.1 client -------------------------------------------------------

/// A request, written to the socket as given: any method, any target bytes.
#[derive(Debug, Clone)]
pub struct Request {
    /// The method.
    pub method: String,
    /// The request target, sent verbatim.
    pub target: String,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// The body; `Content-Length` is sent when it is non-empty or the method is POST.
    pub body: Vec<u8>,
}

impl Request {
    /// A request with any method.
    pub fn new(method: &str, target: &str) -> Request {
        Request {
            method: method.to_owned(),
            target: target.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// `GET target`.
    pub fn get(target: &str) -> Request {
        Request::new("GET", target)
    }

    /// `POST target`.
    pub fn post(target: &str) -> Request {
        Request::new("POST", target)
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets a body with its content type.
    pub fn body(mut self, content_type: &str, body: impl Into<Vec<u8>>) -> Request {
        self.headers.push(("Content-Type".to_owned(), content_type.to_owned()));
        self.body = body.into();
        self
    }

    fn head(&self, port: u16) -> Vec<u8> {
        let mut head =
            format!("{} {} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n", self.method, self.target)
                .into_bytes();
        for (name, value) in &self.headers {
            head.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        if !self.body.is_empty() || self.method == "POST" {
            head.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        head
    }
}

/// An answer.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// A header by lowercase name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the text when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): HTTP {} {}", self.status, self.text()))
    }
}

/// How long any one request may take; generous on a busy machine.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Sends `request` to 127.0.0.1:`port` on a fresh connection and reads the answer.
pub fn try_send(port: u16, request: &Request) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut bytes = request.head(port);
    bytes.extend_from_slice(b"Connection: close\r\n\r\n");
    stream.write_all(&bytes)?;
    // The server may answer (413) before reading the whole body and close; the answer
    // is still there to read.
    let _ = stream.write_all(&request.body);
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => {}
        // A reset after a complete answer (the server closed with unread body) is fine.
        Err(e) if !raw.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => return Err(e),
    }
    parse_response(&raw)
}

fn invalid(message: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message.into())
}

fn parse_head(head: &str) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("not an HTTP status line: {status_line:?}")))?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok((status, headers))
}

fn parse_response(raw: &[u8]) -> std::io::Result<Response> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| {
        invalid(format!("no complete head in {:?}", String::from_utf8_lossy(raw)))
    })?;
    let (status, headers) = parse_head(&String::from_utf8_lossy(&raw[..end]))?;
    let mut body = raw[end + 4..].to_vec();
    let chunked =
        headers.iter().any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Ok(Response { status, headers, body })
}

fn dechunk(mut data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end =
            data.windows(2).position(|w| w == b"\r\n").ok_or_else(|| invalid("cut chunk"))?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| invalid(format!("bad chunk size {size_text:?}")))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err(invalid("cut chunk"));
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// An open server-sent-events stream, read frame by frame.
#[derive(Debug)]
pub struct Sse {
    stream: TcpStream,
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    chunked: bool,
    /// Raw bytes read and not yet de-chunked.
    raw: Vec<u8>,
    /// De-chunked text not yet split into frames.
    text: String,
    ended: bool,
}

impl Sse {
    /// Opens `GET target` with extra headers and reads the response head.
    pub fn open(port: u16, target: &str, headers: &[(&str, &str)]) -> Sse {
        let mut request = Request::get(target).header("Accept", "text/event-stream");
        for (k, v) in headers {
            request = request.header(k, v);
        }
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("cannot connect to port {port}: {e}"));
        let mut bytes = request.head(port);
        bytes.extend_from_slice(b"\r\n");
        stream.write_all(&bytes).unwrap_or_else(|e| panic!("cannot send: {e}"));
        let mut sse = Sse {
            stream,
            status: 0,
            headers: Vec::new(),
            chunked: false,
            raw: Vec::new(),
            text: String::new(),
            ended: false,
        };
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let end = loop {
            if let Some(end) = sse.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            assert!(sse.fill(deadline), "the stream closed before its head");
        };
        let (status, headers) =
            parse_head(&String::from_utf8_lossy(&sse.raw[..end])).unwrap_or_else(|e| panic!("{e}"));
        sse.raw.drain(..end + 4);
        sse.status = status;
        sse.chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        sse.headers = headers;
        sse
    }

    /// A header by lowercase name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Reads more bytes; `false` at the end of the stream or the deadline.
    fn fill(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let _ = self.stream.set_read_timeout(Some(left));
        let mut buf = [0u8; 8192];
        match self.stream.read(&mut buf) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.raw.extend_from_slice(&buf[..n]);
                true
            }
        }
    }

    /// Moves complete chunks from `raw` into `text`.
    fn decode(&mut self) {
        if !self.chunked {
            self.text.push_str(&String::from_utf8_lossy(&std::mem::take(&mut self.raw)));
            return;
        }
        loop {
            let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") else { return };
            let size_text = String::from_utf8_lossy(&self.raw[..line_end]).into_owned();
            let Ok(size) = usize::from_str_radix(size_text.trim(), 16) else {
                self.ended = true;
                return;
            };
            if size == 0 {
                self.ended = true;
                self.raw.clear();
                return;
            }
            if self.raw.len() < line_end + 2 + size + 2 {
                return;
            }
            let data = self.raw[line_end + 2..line_end + 2 + size].to_vec();
            self.text.push_str(&String::from_utf8_lossy(&data));
            self.raw.drain(..line_end + 2 + size + 2);
        }
    }

    /// The next frame (the text before a blank line: `id:`/`data:` lines or a `:`
    /// comment), or `None` when the stream ends or `timeout` passes first.
    pub fn next_frame(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            self.decode();
            if let Some(end) = self.text.find("\n\n") {
                let frame = self.text[..end].to_owned();
                self.text.drain(..end + 2);
                return Some(frame);
            }
            if self.ended || !self.fill(deadline) {
                return None;
            }
        }
    }
}

// --- The server side, for local services ------------------------------------------

/// A request as a local test service read it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The method.
    pub method: String,
    /// The request target.
    pub path: String,
    /// Headers as sent.
    pub headers: Vec<(String, String)>,
    /// The body (`Content-Length` bytes).
    pub body: Vec<u8>,
}

impl Received {
    /// A header by name, any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Reads one HTTP/1.1 request (head and `Content-Length` body) from `stream`;
/// `None` when the client sent something else or went away.
pub fn read_request(stream: &TcpStream) -> Option<Received> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = Vec::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    Some(Received { method, path, headers, body })
}
