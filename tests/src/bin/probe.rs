//! A small client/server the tests run inside a test cgroup and network
//! namespace (a process, because cgroup membership is per process).
//!
//! ```text
//! probe serve ADDR COUNT      accept COUNT connections; for each print one JSON
//!                             line with the classifier's verdict and SO_ORIGINAL_DST
//! probe connect ADDR...       connect to each in turn, wait for the server to
//!                             close, print "ok ADDR" or "err ADDR: why"
//! ```

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    time::Duration,
};

use classifier_user::proxy_client::{query, Protocol, Source};
use serde_json::json;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve(
            args[1].parse().expect("ADDR"),
            args[2].parse().expect("COUNT"),
        ),
        Some("connect") => connect(&args[1..]),
        _ => {
            eprintln!("usage: probe serve ADDR COUNT | probe connect ADDR...");
            std::process::exit(2);
        }
    }
}

fn serve(addr: SocketAddr, count: usize) {
    let listener = TcpListener::bind(addr).expect("bind");
    println!("ready {}", listener.local_addr().unwrap());
    std::io::stdout().flush().unwrap();
    for _ in 0..count {
        let (stream, peer) = listener.accept().expect("accept");
        let line = match query(&stream) {
            Ok(None) => json!({"peer": peer.to_string(), "classifier": false}),
            Ok(Some(v)) => json!({
                "peer": peer.to_string(),
                "classifier": true,
                "protocol": match v.protocol {
                    Protocol::Unknown => "unknown",
                    Protocol::Opaque => "opaque",
                    Protocol::Http1 => "http1",
                    Protocol::Http2 => "http2",
                },
                "source": match v.source {
                    Source::None => "none".to_owned(),
                    Source::DefaultPort => "default_port".to_owned(),
                    Source::Rule(id) => format!("rule:{id}"),
                },
                "marked": v.marked,
                "generation": v.generation,
                "original_dst": v.original_dst.map(|a| a.to_string()),
                "so_original_dst": original_dst(&stream).map(|a| a.to_string()),
                "so_mark": so_mark(&stream),
            }),
            Err(err) => json!({"peer": peer.to_string(), "error": err.to_string()}),
        };
        println!("{line}");
        std::io::stdout().flush().unwrap();
        drop(stream);
    }
}

fn connect(targets: &[String]) {
    for target in targets {
        let addr: SocketAddr = target.parse().expect("ADDR");
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(mut stream) => {
                // Hold the connection until the server has queried and closed,
                // so the verdict is still published when it asks.
                stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
                let mut buf = [0u8; 1];
                let _ = stream.read(&mut buf);
                println!("ok {target}");
            }
            Err(err) => println!("err {target}: {err}"),
        }
    }
}

/// SO_ORIGINAL_DST (IPv4): where a REDIRECTed connection was going.
fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    const SO_ORIGINAL_DST: libc::c_int = 80;
    // SAFETY: sockaddr_in is plain data; len is its size.
    unsafe {
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            (&raw mut sa).cast(),
            &mut len,
        );
        (rc == 0).then(|| {
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
                u16::from_be(sa.sin_port),
            ))
        })
    }
}

fn so_mark(stream: &TcpStream) -> Option<u32> {
    let mut mark: u32 = 0;
    let mut len = 4 as libc::socklen_t;
    // SAFETY: mark and len are live and sized.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&raw mut mark).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(mark)
}
