//! Plain HTTP/1.1 against the agent's metrics server, for the topics that
//! scrape it (`metrics`, `tenant_isolation`, `deploy`).

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// A port nobody listens on right now.
pub fn free_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// `GET path` over HTTP/1.1: (status, body).
pub fn get(addr: &str, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP response: {response:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// Waits (15 s at most) until `path` answers `status`; returns the body.
pub fn wait_for_status(addr: &str, path: &str, status: u16) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let last = get(addr, path);
        match &last {
            Ok((s, body)) if *s == status => return Ok(body.clone()),
            _ if Instant::now() > deadline => bail!("{path} never answered {status}: {last:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}
