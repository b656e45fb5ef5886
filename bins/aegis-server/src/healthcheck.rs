//! `aegis-server healthcheck`: probes `/health/live` of the server these settings
//! describe, for container health checks that have no curl.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::Flags;
use crate::settings::{self};

#[derive(Debug, Args)]
pub(crate) struct HealthcheckArgs {
    /// Seconds to wait for an answer.
    #[arg(long, default_value_t = 3)]
    timeout: u64,
}

pub(crate) fn run(flags: &Flags, args: &HealthcheckArgs) -> anyhow::Result<ExitCode> {
    let settings = settings::resolve(flags)?;
    // A wildcard bind address is probed over loopback.
    let host = match settings.host.as_str() {
        "0.0.0.0" | "::" | "[::]" => "127.0.0.1",
        other => other.trim_start_matches('[').trim_end_matches(']'),
    };
    let path = format!("{}/health/live", settings.config.server().base_path());
    match probe(host, settings.port, &path, Duration::from_secs(args.timeout.max(1))) {
        Ok(200) => {
            println!("ok: http://{host}:{}{path} answered 200", settings.port);
            Ok(ExitCode::SUCCESS)
        }
        Ok(status) => {
            eprintln!("unhealthy: http://{host}:{}{path} answered {status}", settings.port);
            Ok(ExitCode::from(1))
        }
        Err(err) => {
            eprintln!("unreachable: http://{host}:{}{path}: {err:#}", settings.port);
            Ok(ExitCode::from(1))
        }
    }
}

fn probe(host: &str, port: u16, path: &str, timeout: Duration) -> anyhow::Result<u16> {
    let addr = (host, port).to_socket_addrs()?.next().context("the host resolves to no address")?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head)?;
    let line = std::str::from_utf8(&head[..n]).unwrap_or_default();
    line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("the answer is not HTTP")
}
