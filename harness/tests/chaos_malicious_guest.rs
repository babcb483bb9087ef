//! Fault injection, a malicious guest. The guest agent's port and the CP2112's usbredir link
//! carry bytes the guest (or QEMU on its behalf) controls; whatever comes, the harness answers
//! with errors, never with a panic or a hang.
//!
//! - The agent port (the same `Agent` a VM's `agent.sock` gets, over a socketpair): binary
//!   garbage, an endless line, JSON nested past any sane depth, and lies — answers to requests
//!   never made, answers of the wrong kind, repeated answers, reads that return more than asked
//!   and never end, a writer that claims more bytes than it was given, absurd numbers.
//! - The CP2112's usbredir link (the same `devices::usbredir::driver` QEMU's `usb-redir`
//!   connects to, over a socketpair): malformed packets made by hand, and every input of the
//!   usbredir fuzz target's corpus (`tests/data/usbredir-corpus`, and `fuzz/corpus/usbredir`
//!   when `cargo fuzz` has run here; the fuzz target's format: a first byte giving the read
//!   size, then the bytes QEMU sends).
//!
//! A panic anywhere (a spawned task, an emulator thread) is counted by a panic hook: the count
//! must stay zero.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::run::agent_link::{Agent, AgentError};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Counts panics on every thread from here on (the test fails on any).
fn count_panics() -> Arc<AtomicUsize> {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        seen.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
    count
}

/// What a lying guest does with each request it reads: the bytes it sends back (the request's
/// id is given; `None` for a request that is not JSON).
type Liar = Box<dyn Fn(Option<u64>, &serde_json::Value) -> Vec<u8> + Send + Sync>;

fn line(value: serde_json::Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(&value).unwrap();
    bytes.push(b'\n');
    bytes
}

fn ok(id: u64, reply: serde_json::Value) -> Vec<u8> {
    line(serde_json::json!({ "response": { "id": id, "ok": reply } }))
}

fn hello(id: u64) -> Vec<u8> {
    ok(id, serde_json::json!({ "kind": "hello", "protocol": agent::PROTOCOL_VERSION, "agent": "0.1.0", "kernel_release": "6.12.117" }))
}

/// Serves `liar` on the guest end of a socketpair; the host end is an `Agent` with a short
/// request deadline. The guest's first line is a valid `ready`, so later garbage is not taken
/// for the tail of an earlier client's line.
async fn lying_guest(liar: Liar) -> Agent {
    let (host, guest) = UnixStream::pair().unwrap();
    let agent = Agent::from_stream(host, None).unwrap().with_timeout(Duration::from_secs(2));
    tokio::spawn(async move {
        let (read, mut write) = guest.into_split();
        let ready = serde_json::json!({ "ready": { "protocol": agent::PROTOCOL_VERSION, "agent": "0.1.0", "kernel_release": "6.12.117" } });
        if write.write_all(&line(ready)).await.is_err() {
            return;
        }
        let mut lines = BufReader::new(read).lines();
        while let Ok(Some(request)) = lines.next_line().await {
            let value: serde_json::Value = serde_json::from_str(&request).unwrap_or_default();
            let id = value.get("id").and_then(|i| i.as_u64());
            if write.write_all(&liar(id, &value)).await.is_err() {
                return;
            }
        }
    });
    agent
}

/// Every request kind the harness makes, each of which must fail (not hang, not panic).
async fn every_request_fails(what: &str, agent: &Agent) {
    let deadline = Duration::from_secs(30);
    let started = Instant::now();
    let results: Vec<(&str, Result<String, AgentError>)> = vec![
        ("ping", tokio::time::timeout(deadline, agent.ping()).await.unwrap().map(|h| format!("{h:?}"))),
        ("exec", tokio::time::timeout(deadline, agent.exec(&["true"], Duration::from_secs(1))).await.unwrap().map(|o| o.outcome())),
        ("read", tokio::time::timeout(deadline, agent.read_file("/sys/x")).await.unwrap().map(|d| format!("{} bytes", d.len()))),
        ("write", tokio::time::timeout(deadline, agent.write_file("/sys/x", b"1")).await.unwrap().map(|()| "written".into())),
        ("mkdir", tokio::time::timeout(deadline, agent.mkdir("/sys/kernel/config/x")).await.unwrap().map(|()| "made".into())),
    ];
    for (op, result) in results {
        match result {
            Ok(got) => panic!("{what}: {op} succeeded on a lie: {got}"),
            Err(e) => eprintln!("chaos: agent {what}: {op}: {e}"),
        }
    }
    assert!(started.elapsed() < deadline * 3, "{what}: took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_agent_gets_errors_never_a_panic_or_a_hang() {
    let panics = count_panics();
    let deep = format!("{}{}\n", "[".repeat(200_000), "]".repeat(200_000)).into_bytes();
    let cases: Vec<(&str, Liar)> = vec![
        ("binary garbage", Box::new(|_, _| b"\x00\xff\xfe\x7f{{{\x1b[2J\n".to_vec())),
        ("an endless line", Box::new(|_, _| vec![b'x'; agent::MAX_LINE + 4096])),
        ("JSON nested 200000 deep", Box::new(move |_, _| deep.clone())),
        ("answers to requests never made", Box::new(|id, _| hello(id.unwrap_or(0) + 1000))),
        ("an id that is no number", Box::new(|_, _| line(serde_json::json!({ "response": { "id": -1, "ok": { "kind": "written", "len": 1 } } })))),
        (
            "answers of the wrong kind",
            Box::new(|id, v| match v.get("op").and_then(|o| o.as_str()) {
                Some("ping") => ok(id.unwrap_or(0), serde_json::json!({ "kind": "written", "len": 1 })),
                _ => hello(id.unwrap_or(0)),
            }),
        ),
        (
            "a write that claims more than it was given, a read that never ends",
            Box::new(|id, v| {
                let id = id.unwrap_or(0);
                match v.get("op").and_then(|o| o.as_str()) {
                    Some("write") => ok(id, serde_json::json!({ "kind": "written", "len": u64::MAX })),
                    // 2 MiB per 1 MiB asked, never at its end.
                    Some("read") => ok(id, serde_json::json!({ "kind": "data", "data": "x".repeat(2 << 20), "eof": false })),
                    _ => line(serde_json::json!({ "response": { "id": id, "err": { "errno": 99999, "message": "\u{0}".repeat(70000) } } })),
                }
            }),
        ),
        ("silence", Box::new(|_, _| Vec::new())),
    ];
    for (what, liar) in cases {
        let agent = lying_guest(liar).await;
        every_request_fails(what, &agent).await;
    }
    assert_eq!(panics.load(Ordering::SeqCst), 0, "the harness panicked");
}

/// A usbredir packet: header (type, length, id) as QEMU sends it after the hello exchange
/// (64-bit ids), then `body`.
fn packet(kind: u32, length: u32, id: u64, body: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&kind.to_le_bytes());
    p.extend_from_slice(&length.to_le_bytes());
    p.extend_from_slice(&id.to_le_bytes());
    p.extend_from_slice(body);
    p
}

/// QEMU's side of a usbredir hello (type 0): version string and capabilities.
fn qemu_hello() -> Vec<u8> {
    let mut body = [0u8; 64].to_vec();
    body[..10].copy_from_slice(b"qemu 9.2.0");
    body.extend_from_slice(&u32::MAX.to_le_bytes());
    // The hello's header carries a 32-bit id: it is sent before 64-bit ids are agreed.
    let mut p = Vec::new();
    p.extend_from_slice(&0u32.to_le_bytes());
    p.extend_from_slice(&(body.len() as u32).to_le_bytes());
    p.extend_from_slice(&0u32.to_le_bytes());
    p.extend_from_slice(&body);
    p
}

/// Malformed traffic from QEMU's side, made by hand: (what, bytes, read size).
fn malformed() -> Vec<(String, Vec<u8>, usize)> {
    let mut cases = vec![
        ("a truncated header".to_string(), vec![0u8, 0, 0], 1),
        ("a hello claiming 4 GiB".into(), [0u32.to_le_bytes(), u32::MAX.to_le_bytes(), 0u32.to_le_bytes()].concat(), 7),
        ("a hello too short for its version string".into(), [0u32.to_le_bytes(), 3u32.to_le_bytes(), 0u32.to_le_bytes(), [1u8, 2, 3, 0]].concat(), 64),
        ("binary noise".into(), (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect(), 13),
    ];
    let after_hello = |what: &str, rest: Vec<u8>| (what.to_string(), [qemu_hello(), rest].concat(), 64 * 1024);
    cases.push(after_hello("an unknown packet type", packet(0xdead, 0, 1, &[])));
    cases.push(after_hello("a control packet with no control header", packet(100, 2, 2, &[0x80, 6])));
    cases.push(after_hello("a control packet whose length lies", packet(100, 1 << 30, 3, &[0; 10])));
    cases.push(after_hello(
        "a control IN asking 64 KiB from endpoint 0x85",
        packet(100, 10, 4, &[0x85, 0xa1, 1, 0, 3, 0, 0, 0xff, 0xff, 0]),
    ));
    cases.push(after_hello("an interrupt packet for an endpoint that does not exist", packet(103, 4, 5, &[0x0f, 0, 0, 0])));
    cases.push(after_hello("an interrupt OUT longer than a report", packet(103, 4 + 4096, 6, &[[0x01, 0, 0, 0x10].as_slice(), &[0x55; 4096]].concat())));
    cases.push(after_hello("a second hello", qemu_hello()));
    cases
}

/// The usbredir fuzz target's corpus: the one kept here (`tests/data/usbredir-corpus`, from a
/// 10-minute `cargo fuzz run usbredir`), and `fuzz/corpus/usbredir` if `cargo fuzz` has grown
/// one in this checkout.
fn fuzz_corpus() -> Vec<(String, Vec<u8>, usize)> {
    let root = harness::paths::repo_root();
    let dirs = [root.join("harness/tests/data/usbredir-corpus"), root.join("fuzz/corpus/usbredir")];
    dirs.iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.path(), std::fs::read(e.path()).ok()?)))
        .filter_map(|(path, data)| {
            let (&split, bytes) = data.split_first()?;
            Some((format!("corpus {}", path.display()), bytes.to_vec(), usize::from(split).max(1)))
        })
        .collect()
}

#[test]
fn malformed_usbredir_traffic_ends_the_link_with_an_error_never_a_panic() {
    use devices::usbredir::driver::{self, SessionEnd};
    let panics = count_panics();
    let mut cases = malformed();
    let corpus = fuzz_corpus();
    eprintln!("chaos: usbredir: {} hand-made cases, {} from the fuzz corpus", cases.len(), corpus.len());
    cases.extend(corpus);
    let (mut protocol_errors, mut closed) = (0, 0);
    for (what, bytes, split) in &cases {
        let (ours, mut qemu) = std::os::unix::net::UnixStream::pair().unwrap();
        let link = driver::serve(ours, Box::new(devices::cp2112::Cp2112::new())).unwrap();
        // Our side sends its hello at once; QEMU's side here never reads. A full socket must
        // not wedge the emulator either: a reader drains it.
        let mut drain = qemu.try_clone().unwrap();
        let drainer = std::thread::spawn(move || std::io::copy(&mut drain, &mut std::io::sink()));
        for piece in bytes.chunks(*split) {
            if qemu.write_all(piece).is_err() {
                break;
            }
        }
        let _ = qemu.shutdown(std::net::Shutdown::Write);
        let started = Instant::now();
        while !link.is_finished() {
            assert!(started.elapsed() < Duration::from_secs(10), "{what}: the link did not end");
            std::thread::sleep(Duration::from_millis(5));
        }
        match link.join() {
            SessionEnd::Protocol(_) => protocol_errors += 1,
            SessionEnd::PeerClosed | SessionEnd::LocalClose => closed += 1,
            SessionEnd::Io(e) => assert!(!e.to_string().contains("panicked"), "{what}: {e}"),
        }
        drop(qemu);
        let _ = drainer.join();
    }
    eprintln!("chaos: usbredir: {} inputs: {protocol_errors} protocol errors, {closed} ended at the peer's close", cases.len());
    assert!(protocol_errors > 0, "no malformed input was refused");
    assert_eq!(panics.load(Ordering::SeqCst), 0, "an emulator thread panicked");
}
