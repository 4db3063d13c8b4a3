//! A small client/server the tests run inside a test cgroup and network
//! namespace (a process, because cgroup membership is per process).
//!
//! ```text
//! probe serve ADDR COUNT      accept COUNT connections; for each print one JSON
//!                             line with the classifier's verdict and SO_ORIGINAL_DST
//! probe connect ADDR...       connect to each in turn, wait for the server to
//!                             close, print "ok ADDR" or "err ADDR: why"
//! probe http-serve ADDR       a tiny HTTP/1 server: prints "ready ADDR", then answers
//!                             every request with 200 "ok" and closes
//! probe exec PROGRAM ARGS...  become PROGRAM (so it runs where the probe was
//!                             started: test cgroup, namespace, uid)
//! probe reconnect SRC FIRST SECOND [unspec]
//!                             one socket bound to SRC connects to FIRST (and,
//!                             with `unspec`, waits for the server to close and
//!                             dissolves the connection with AF_UNSPEC), then
//!                             connects to SECOND; prints one JSON line
//! probe connect-pending ADDR COUNT
//!                             COUNT non-blocking connects to ADDR left in
//!                             progress; prints "ready N", holds them until
//!                             stdin closes
//! probe udp-query PEER        a UDP socket connected to PEER asks the
//!                             classifier's question; prints one JSON line
//! probe netns-churn COUNT PORT [CONNECTS [REFUSED]]
//!                             COUNT times: a new network namespace,
//!                             CONNECTS connections to 127.0.0.1:PORT in it
//!                             (accepted and closed), one refused connect to
//!                             a port from REFUSED on (one more each time,
//!                             1,000 of them); prints "done COUNT"
//! probe netns-come-and-go ADDR COUNT
//!                             COUNT times: a new network namespace, one
//!                             connection to ADDR in it, then the namespace
//!                             goes away
//! probe netns-share COUNT PORT
//!                             in a new network namespace, COUNT connections
//!                             to 127.0.0.1:PORT held open; prints "ready
//!                             COOKIE N" (netns cookie, connections made),
//!                             holds them until stdin closes
//! ```

#![deny(unsafe_code)]

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::Duration,
};

use classifier_client::{checked, query, Protocol, Source};
use serde_json::json;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve(
            args[1].parse().expect("ADDR"),
            args[2].parse().expect("COUNT"),
        ),
        Some("connect") => connect(&args[1..]),
        Some("http-serve") => http_serve(args[1].parse().expect("ADDR")),
        Some("exec") => exec(&args[1..]),
        Some("connect-from") => {
            connect_from(args[1].parse().expect("SRC"), args[2].parse().expect("DST"))
        }
        Some("load") => load(&args[1..]),
        Some("connect-loop") => connect_loop(&args[1..]),
        Some("query-loop") => query_loop(&args[1..]),
        Some("transfer-loop") => transfer_loop(&args[1..]),
        Some("greeting") => greeting(args[1].parse().expect("ADDR")),
        Some("talk-serve") => talk_serve(
            args[1].parse().expect("ADDR"),
            args[2].parse().expect("COUNT"),
            args[3] == "server-first",
            args.get(4).map(std::path::PathBuf::from),
        ),
        Some("talk") => talk(args[1].parse().expect("ADDR"), &args[2]),
        Some("serve-held") => serve_held(
            args[1].parse().expect("ADDR"),
            args[2].parse().expect("COUNT"),
        ),
        Some("reconnect") => reconnect(
            args[1].parse().expect("SRC"),
            args[2].parse().expect("FIRST"),
            args[3].parse().expect("SECOND"),
            args.get(4).is_some_and(|a| a == "unspec"),
        ),
        Some("udp-query") => udp_query(args[1].parse().expect("PEER")),
        Some("connect-pending") => connect_pending(
            args[1].parse().expect("ADDR"),
            args[2].parse().expect("COUNT"),
        ),
        Some("connect-ports") => connect_ports(
            args[1].parse().expect("IP"),
            args[2].parse().expect("FIRST"),
            args[3].parse().expect("COUNT"),
        ),
        Some("netns-come-and-go") => netns_come_and_go(
            args[1].parse().expect("ADDR"),
            args[2].parse().expect("COUNT"),
        ),
        Some("connect-held") => connect_held(
            args[1].parse().expect("ADDR"),
            args[2].parse().expect("COUNT"),
        ),
        Some("netns-churn") => netns_churn(
            args[1].parse().expect("COUNT"),
            args[2].parse().expect("PORT"),
            args.get(3).map_or(1, |n| n.parse().expect("CONNECTS")),
            args.get(4).map_or(5000, |n| n.parse().expect("REFUSED")),
        ),
        Some("netns-share") => netns_share(
            args[1].parse().expect("COUNT"),
            args[2].parse().expect("PORT"),
        ),
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
        let line = describe(&stream, peer);
        println!("{line}");
        std::io::stdout().flush().unwrap();
        drop(stream);
    }
}

/// The classifier's answer for an accepted socket, as one JSON object.
fn describe(stream: &TcpStream, peer: SocketAddr) -> serde_json::Value {
    // Behind a REDIRECT the destination the client asked for is
    // SO_ORIGINAL_DST; on a direct connection it is our own address.
    let asked_for = original_dst(stream).unwrap_or_else(|| stream.local_addr().unwrap());
    // One query (the stats tests count them); the check is made on its
    // result, and the raw answer is reported too.
    let raw = query(stream);
    let raw_fields = match &raw {
        Ok(Some(v)) => Some((
            format!("{:?}", v.protocol),
            v.original_dst.map(|a| a.to_string()),
        )),
        _ => None,
    };
    match raw.map(|v| v.map(|v| checked(v, asked_for))) {
        Ok(None) => json!({"peer": peer.to_string(), "classifier": false}),
        Ok(Some(v)) => json!({
            "peer": peer.to_string(),
            "classifier": true,
            "protocol": match v.protocol {
                Protocol::Detect => "unknown",
                Protocol::Opaque => "opaque",
                Protocol::Http1 => "http1",
                Protocol::Http2 => "http2",
            },
            "source": match v.source {
                Source::None => "none".to_owned(),
                Source::DefaultPort => "default_port".to_owned(),
                Source::Rule => format!("rule:{}", v.rule_id),
                Source::Learned => "learned".to_owned(),
            },
            "marked": v.marked,
            "ambiguous": v.ambiguous,
            "generation": v.generation,
            "original_dst": v.original_dst.map(|a| a.to_string()),
            "so_original_dst": original_dst(stream).map(|a| a.to_string()),
            "so_mark": so_mark(stream),
        }),
        Err(err) => json!({"peer": peer.to_string(), "error": err.to_string()}),
    }
    .as_object()
    .cloned()
    .map(|mut line| {
        // What the kernel answered before the destination check.
        if let Some((protocol, dst)) = raw_fields {
            line.insert("raw_protocol".into(), json!(protocol));
            line.insert("raw_original_dst".into(), json!(dst));
        }
        serde_json::Value::Object(line)
    })
    .unwrap()
}

/// Waits until the server closes the connection (it has queried by then).
fn wait_for_close(stream: &mut TcpStream) {
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let _ = stream.read(&mut [0u8; 1]);
}

fn reconnect(
    src: std::net::SocketAddrV4,
    first: std::net::SocketAddrV4,
    second: std::net::SocketAddrV4,
    unspec: bool,
) {
    let socket = tests::sys::Reconnecting::bound(src).expect("socket");
    let first_result = match socket.connect(first) {
        Ok(()) => {
            let mut stream = socket.stream().expect("dup");
            wait_for_close(&mut stream);
            if unspec {
                socket.disconnect().expect("connect(AF_UNSPEC)");
            }
            "ok".to_owned()
        }
        Err(err) => format!("err {err}"),
    };
    let second_result = socket.connect(second);
    let mut stream = socket.stream().expect("dup");
    let mark = so_mark(&stream);
    if second_result.is_ok() {
        wait_for_close(&mut stream);
    }
    println!(
        "{}",
        json!({
            "first": first_result,
            "second": second_result.map(|()| "ok".to_owned()).unwrap_or_else(|e| format!("err {e}")),
            "so_mark": mark,
        })
    );
}

fn connect_pending(addr: std::net::SocketAddrV4, count: usize) {
    let held: Vec<_> = (0..count)
        .filter_map(|_| tests::sys::connect_pending(addr).ok())
        .collect();
    println!("ready {}", held.len());
    std::io::stdout().flush().unwrap();
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
    drop(held);
}

fn udp_query(peer: SocketAddr) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.connect(peer).expect("connect");
    let line = match classifier_client::query(&socket) {
        Ok(None) => json!({"answered": false}),
        Ok(Some(v)) => json!({"answered": true, "protocol": format!("{:?}", v.protocol)}),
        Err(err) => json!({"answered": false, "error": err.to_string()}),
    };
    println!("{line}");
}

/// Accepts COUNT connections and keeps them all open, then queries each:
/// for tests where verdicts must outlive later connections.
fn serve_held(addr: SocketAddr, count: usize) {
    let listener = TcpListener::bind(addr).expect("bind");
    println!("ready {}", listener.local_addr().unwrap());
    std::io::stdout().flush().unwrap();
    let accepted: Vec<(TcpStream, SocketAddr)> = (0..count)
        .map(|_| listener.accept().expect("accept"))
        .collect();
    for (stream, peer) in &accepted {
        println!("{}", describe(stream, *peer));
    }
    std::io::stdout().flush().unwrap();
}

/// `probe connect-ports IP FIRST COUNT`: one connect to each port from
/// FIRST on (closed ports are refused at once). Prints how many connected.
fn connect_ports(ip: std::net::IpAddr, first: u16, count: u16) {
    let connected = (0..count)
        .filter(|i| TcpStream::connect((ip, first + i)).is_ok())
        .count();
    println!("{}", json!({ "ports": count, "connected": connected }));
}

/// `probe netns-come-and-go ADDR N`: N times: move into a new network namespace
/// (the previous one goes away), connect to a listener of this process on
/// ADDR there, accept, close both. As short-lived pods do. Prints how many
/// namespaces connected.
fn netns_come_and_go(addr: SocketAddr, count: usize) {
    for i in 0..count {
        tests::sys::enter_new_netns().unwrap_or_else(|err| panic!("new netns #{i}: {err}"));
        let listener = TcpListener::bind(addr).expect("bind");
        let client = TcpStream::connect(addr).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        tests::sys::set_linger_zero(&client);
        drop((client, server, listener));
    }
    println!("{}", json!({ "namespaces": count }));
}

/// Opens COUNT connections to ADDR, all held open until the server closes.
fn connect_held(addr: SocketAddr, count: usize) {
    let streams: Vec<_> = (0..count)
        .map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .collect();
    for (i, stream) in streams.into_iter().enumerate() {
        match stream {
            Ok(mut stream) => {
                stream.set_read_timeout(Some(Duration::from_secs(20))).ok();
                let _ = stream.read(&mut [0u8; 1]);
                println!("ok {addr} #{i}");
            }
            Err(err) => println!("err {addr} #{i}: {err}"),
        }
    }
}

/// Connects from a fixed source address (so two namespaces can hold the
/// very same 4-tuple), then waits for the server to close.
fn connect_from(src: SocketAddr, dst: SocketAddr) {
    let (SocketAddr::V4(src), SocketAddr::V4(dst)) = (src, dst) else {
        panic!("IPv4 only")
    };
    let mut stream = tests::sys::connect_from(src, dst).unwrap_or_else(|err| panic!("{err}"));
    println!("ok {src} -> {dst}");
    std::io::stdout().flush().unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).ok();
    let _ = stream.read(&mut [0u8; 1]);
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

/// Where a REDIRECTed connection was going (`None` for a direct one), as
/// the reference proxy reads it.
fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    classifier_user::proxy::original_dst(stream, stream.local_addr().ok()?).ok()
}

fn so_mark(stream: &TcpStream) -> Option<u32> {
    Some(classifier_user::proxy::socket_mark(stream))
}

fn http_serve(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).expect("bind");
    println!("ready {}", listener.local_addr().unwrap());
    std::io::stdout().flush().unwrap();
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || answer_http(stream));
    }
}

fn exec(argv: &[String]) {
    use std::os::unix::process::CommandExt as _;
    let err = std::process::Command::new(&argv[0]).args(&argv[1..]).exec();
    eprintln!("probe exec {}: {err}", argv[0]);
    std::process::exit(127);
}

/// Reads one request head, answers 200 "ok\n", closes.
fn answer_http(mut stream: TcpStream) {
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let _ = stream.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
    );
}

/// `probe load PORTS THREADS MIN_CONNECTS STOP_FILE`: listeners on
/// 127.0.0.1:PORT for each of PORTS (comma separated) query every accepted
/// socket; THREADS clients connect round robin until STOP_FILE exists and at
/// least MIN_CONNECTS were made. Prints one JSON summary: connects, failures
/// and verdict counts keyed "port protocol source generation-parity".
fn load(args: &[String]) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let ports: Vec<u16> = args[0]
        .split(',')
        .map(|p| p.parse().expect("port"))
        .collect();
    let threads: usize = args[1].parse().expect("THREADS");
    let min: u64 = args[2].parse().expect("MIN_CONNECTS");
    let stop_file = std::path::PathBuf::from(&args[3]);

    let verdicts = load_acceptors(&ports);
    println!("ready");
    std::io::stdout().flush().unwrap();

    let counts = Arc::new(LoadCounts::default());
    let done = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..threads)
        .map(|t| {
            let (counts, done, ports) = (counts.clone(), done.clone(), ports.clone());
            std::thread::spawn(move || load_client(t, &ports, &counts, &done))
        })
        .collect();
    while !(stop_file.exists() && counts.connects.load(Ordering::Relaxed) >= min) {
        std::thread::sleep(Duration::from_millis(10));
    }
    done.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    // An acceptor records a connection before it closes it, and a client
    // counts one after that close (or its own failure), so every connection
    // is recorded by now but those whose client gave up waiting (5 s).
    let connected =
        counts.connects.load(Ordering::Relaxed) - counts.failures.load(Ordering::Relaxed);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while verdicts.lock().unwrap().values().sum::<u64>() < connected
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let summary = json!({
        "connects": counts.connects.load(Ordering::Relaxed),
        "failures": counts.failures.load(Ordering::Relaxed),
        "verdicts": *verdicts.lock().unwrap(),
    });
    println!("{summary}");
}

/// Connects `probe load`'s clients made, and those that failed.
#[derive(Default)]
struct LoadCounts {
    connects: std::sync::atomic::AtomicU64,
    failures: std::sync::atomic::AtomicU64,
}

/// Verdict counts by "port protocol source generation-parity".
type VerdictCounts = Arc<Mutex<std::collections::BTreeMap<String, u64>>>;

/// A listener on 127.0.0.1:PORT for each of `ports`, each on its own
/// thread, counting the verdict of every socket it accepts.
fn load_acceptors(ports: &[u16]) -> VerdictCounts {
    let verdicts: VerdictCounts = Arc::default();
    let listeners: Vec<TcpListener> = ports
        .iter()
        .map(|p| TcpListener::bind(("127.0.0.1", *p)).expect("bind"))
        .collect();
    for (listener, port) in listeners.into_iter().zip(ports.to_vec()) {
        let verdicts = verdicts.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let v = describe(&stream, stream.peer_addr().unwrap());
                let key = verdict_key(port, &v);
                *verdicts.lock().unwrap().entry(key).or_default() += 1;
            }
        });
    }
    verdicts
}

/// "port protocol source generation-parity" of one described verdict.
fn verdict_key(port: u16, v: &serde_json::Value) -> String {
    format!(
        "{port} {} {} {}",
        if v["ambiguous"] == true {
            "ambiguous"
        } else {
            v["protocol"].as_str().unwrap_or("error")
        },
        v["source"].as_str().unwrap_or("-"),
        v["generation"]
            .as_u64()
            .map_or("-".to_owned(), |g| if g == 0 {
                "-".to_owned()
            } else {
                (g % 2).to_string()
            }),
    )
}

/// Client `t` of `probe load`: connects round robin over `ports`, waiting
/// for each server's close, until `done`.
fn load_client(t: usize, ports: &[u16], counts: &LoadCounts, done: &std::sync::atomic::AtomicBool) {
    use std::sync::atomic::Ordering;
    let mut i = t;
    while !done.load(Ordering::Relaxed) {
        let port = ports[i % ports.len()];
        i += 1;
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let _ = s.read(&mut [0u8; 1]);
            }
            Err(_) => {
                counts.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        counts.connects.fetch_add(1, Ordering::Relaxed);
    }
}

/// `probe connect-loop ADDR N [--query]`: N times connect to a listener of
/// this process on ADDR, accept, (optionally query the classifier on the
/// accepted socket,) close both. Prints the mean ns per iteration. The
/// benchmark's unit of work: one connect() through every program.
fn connect_loop(args: &[String]) {
    let addr: SocketAddr = args[0].parse().expect("ADDR");
    let n: u64 = args[1].parse().expect("N");
    let with_query = args.get(2).map(String::as_str) == Some("--query");
    let listener = TcpListener::bind(addr).expect("bind");
    let target = listener.local_addr().unwrap();
    // Warm up caches and the kernel's socket paths.
    for _ in 0..(n / 20).max(10) {
        let client = TcpStream::connect(target).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        drop((client, server));
    }
    let started = std::time::Instant::now();
    for _ in 0..n {
        let client = TcpStream::connect(target).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        if with_query {
            let _ = classifier_client::query(&server);
        }
        // Linger 0: close with RST so TIME_WAIT does not pile up over
        // hundreds of thousands of iterations.
        tests::sys::set_linger_zero(&client);
        drop((client, server));
    }
    let elapsed = started.elapsed();
    println!(
        "{}",
        json!({"iterations": n, "ns_per_iteration": elapsed.as_nanos() as f64 / n as f64})
    );
}

/// `probe query-loop ADDR N`: one connection to ADDR, accepted, then N
/// proxy queries (`getsockopt(0xC1A5, 1)`, 32 bytes) on the accepted socket,
/// as a patched proxy makes one per accepted connection. Prints the time
/// per query and what the last one answered.
fn query_loop(args: &[String]) {
    let addr: SocketAddr = args[0].parse().expect("ADDR");
    let n: u64 = args[1].parse().expect("N");
    let listener = TcpListener::bind(addr).expect("bind");
    let _client = TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    let mut answer = classifier_client::query(&server);
    for _ in 0..(n / 20).max(10) {
        answer = classifier_client::query(&server);
    }
    let started = std::time::Instant::now();
    for _ in 0..n {
        answer = std::hint::black_box(classifier_client::query(&server));
    }
    let elapsed = started.elapsed();
    let answered = match answer {
        Ok(None) => "no classifier".to_owned(),
        Ok(Some(v)) => format!("{:?}", v.protocol),
        Err(err) => format!("error: {err}"),
    };
    println!(
        "{}",
        json!({"queries": n, "ns_per_query": elapsed.as_nanos() as f64 / n as f64, "answer": answered})
    );
}

/// `probe greeting ADDR`: connect and wait for the server's first bytes (a
/// server-speaks-first greeting); prints the time from connect() to them.
fn greeting(addr: SocketAddr) {
    let started = std::time::Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(30)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let n = stream.read(&mut [0u8; 256]).expect("read greeting");
    assert!(n > 0, "server closed without a greeting");
    println!(
        "{}",
        json!({"ms": started.elapsed().as_secs_f64() * 1e3, "bytes": n})
    );
}

/// `probe talk-serve ADDR COUNT server-first|client-first` (learning tests):
/// per connection, greet first (server-first) or wait for the client's
/// line first (client-first), then answer the line, then print the verdict
/// the kernel gave the connection (queried after the exchange).
fn talk_serve(
    addr: SocketAddr,
    count: usize,
    server_first: bool,
    greet_when: Option<std::path::PathBuf>,
) {
    let listener = TcpListener::bind(addr).expect("bind");
    println!("ready {}", listener.local_addr().unwrap());
    std::io::stdout().flush().unwrap();
    for _ in 0..count {
        let (mut stream, peer) = listener.accept().expect("accept");
        let mut buf = [0u8; 256];
        if let Some(path) = &greet_when {
            // A slow server: greets only once the test says so.
            println!("accepted {peer}");
            std::io::stdout().flush().unwrap();
            while !path.exists() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if server_first {
            stream
                .write_all(b"220 hello, server speaks first\r\n")
                .expect("greet");
            let _ = stream.read(&mut buf);
        } else {
            let _ = stream.read(&mut buf);
        }
        let _ = stream.write_all(b"200 bye\r\n");
        let line = describe(&stream, peer);
        println!("{line}");
        std::io::stdout().flush().unwrap();
        drop(stream);
    }
}

/// `probe talk ADDR server-first|client-first|tls`: the client half of
/// `talk-serve`; `tls` opens with the first bytes of a TLS ClientHello
/// record. Prints "ok" after the exchange.
fn talk(addr: SocketAddr, mode: &str) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let mut buf = [0u8; 256];
    match mode {
        "server-first" => {
            let n = stream.read(&mut buf).expect("read greeting");
            assert!(n > 0, "no greeting");
            stream.write_all(b"QUIT\r\n").expect("write");
        }
        "tls" => {
            // Record header (handshake, TLS 1.0 record version, length),
            // handshake header (ClientHello), client version TLS 1.2, random.
            let mut hello = vec![
                0x16, 0x03, 0x01, 0x00, 0x2f, 0x01, 0x00, 0x00, 0x2b, 0x03, 0x03,
            ];
            hello.extend_from_slice(&[0x42; 32]);
            hello.extend_from_slice(&[0x00, 0x00, 0x02, 0x13, 0x01, 0x01, 0x00, 0x00, 0x00]);
            stream.write_all(&hello).expect("write");
        }
        _ => stream.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("write"),
    }
    let _ = stream.read(&mut buf);
    println!("ok");
}

/// `probe transfer-loop ADDR N BYTES` (learning bench): N times, connect,
/// the client writes BYTES (client first: a learning watch ends at the first
/// segment) and closes, the server reads them to EOF. Prints ns/iteration.
fn transfer_loop(args: &[String]) {
    let addr: SocketAddr = args[0].parse().expect("ADDR");
    let n: u64 = args[1].parse().expect("N");
    let bytes: usize = args[2].parse().expect("BYTES");
    let listener = TcpListener::bind(addr).expect("bind");
    let target = listener.local_addr().unwrap();
    let payload = vec![0x5au8; bytes];
    let once = || {
        let writer = {
            let payload = payload.clone();
            std::thread::spawn(move || {
                let mut client = TcpStream::connect(target).expect("connect");
                client.write_all(&payload).expect("write");
            })
        };
        let (mut server, _) = listener.accept().expect("accept");
        let mut sink = Vec::with_capacity(bytes);
        server.read_to_end(&mut sink).expect("read");
        assert_eq!(sink.len(), bytes);
        writer.join().unwrap();
    };
    for _ in 0..(n / 20).max(3) {
        once();
    }
    let started = std::time::Instant::now();
    for _ in 0..n {
        once();
    }
    let elapsed = started.elapsed();
    println!(
        "{}",
        json!({"iterations": n, "ns_per_iteration": elapsed.as_nanos() as f64 / n as f64})
    );
}

/// A fresh network namespace with loopback up.
fn fresh_netns() {
    tests::sys::unshare_net().expect("unshare(CLONE_NEWNET)");
    tests::sys::loopback_up().expect("lo up");
}

fn netns_churn(count: usize, port: u16, connects: usize, refused: u16) {
    for n in 0..count {
        fresh_netns();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let listener = TcpListener::bind(addr).expect("bind");
        for _ in 0..connects {
            let client = TcpStream::connect(addr).expect("connect");
            let (server, _) = listener.accept().expect("accept");
            drop(client);
            drop(server);
        }
        // Nothing listens there: refused, and never classified.
        let other = refused.wrapping_add((n % 1000) as u16);
        let _ = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], other)));
    }
    println!("done {count}");
}

fn netns_share(count: usize, port: u16) {
    tests::sys::raise_nofile().expect("RLIMIT_NOFILE");
    fresh_netns();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = TcpListener::bind(addr).expect("bind");
    let mut held = Vec::with_capacity(count * 2);
    for _ in 0..count {
        let client = TcpStream::connect(addr).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        held.push(client);
        held.push(server);
    }
    let cookie = tests::sys::netns_cookie(&held[0]).expect("SO_NETNS_COOKIE");
    println!("ready {cookie} {count}");
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read(&mut [0u8; 1]);
}
