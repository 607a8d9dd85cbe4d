//! The CPU floor of group fan-out on this machine: one small `write` per delivery, to many loopback sockets, with
//! nothing else. A writer thread writes a `--frame`-byte frame to each of `--sockets` sockets in turn, in bursts
//! that add up to `--rate` writes per second (a group send to every member, as `hubmesh bench fanout` makes
//! them), while the readers sleep in epoll on a tokio runtime in another thread, as the load tool's clients do. On
//! loopback the receiving side's TCP work runs inside the sender's `write`, as it does for a hubmesh node.
//!
//! `cargo run --release --example write_floor -- --rate 50000` prints one JSON line: the writer thread's CPU time
//! and writes per CPU-second. That number is the ceiling for "deliveries per server CPU-second" at the same rate
//! (benches/README.md, "Fan-out: the floor of one write per delivery"). Not part of hubmesh.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

struct Options {
    sockets: usize,
    rate: u64,
    seconds: u64,
    frame: usize,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        sockets: 1000,
        rate: 50_000,
        seconds: 10,
        frame: 128,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |value: &str| value.parse::<u64>().map_err(|error| format!("{flag}: {error}"));
        match flag.as_str() {
            "--sockets" => options.sockets = number(&value)?.max(1) as usize,
            "--rate" => options.rate = number(&value)?.max(1),
            "--seconds" => options.seconds = number(&value)?.clamp(1, 600),
            "--frame" => options.frame = number(&value)?.clamp(1, 65_536) as usize,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(options)
}

/// CPU time of the calling thread (on-CPU nanoseconds from the scheduler's accounting).
fn thread_cpu() -> Result<Duration, String> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").map_err(|error| error.to_string())?;
    let nanos = text
        .split_whitespace()
        .next()
        .and_then(|field| field.parse::<u64>().ok())
        .ok_or("unreadable schedstat")?;
    Ok(Duration::from_nanos(nanos))
}

fn main() -> Result<(), String> {
    let options = options()?;
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|error| error.to_string())?;
    let address = listener.local_addr().map_err(|error| error.to_string())?;
    let mut clients = Vec::with_capacity(options.sockets);
    let mut servers = Vec::with_capacity(options.sockets);
    for _ in 0..options.sockets {
        let client = TcpStream::connect(address).map_err(|error| error.to_string())?;
        let (server, _) = listener.accept().map_err(|error| error.to_string())?;
        // As actix-http sets it on accepted sockets: every frame goes out at once.
        server.set_nodelay(true).map_err(|error| error.to_string())?;
        client.set_nonblocking(true).map_err(|error| error.to_string())?;
        clients.push(client);
        servers.push(server);
    }
    let expected = options.rate * options.seconds * options.frame as u64;
    let readers = std::thread::spawn(move || -> Result<u64, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| error.to_string())?;
        runtime.block_on(async move {
            let mut tasks = Vec::with_capacity(clients.len());
            for client in clients {
                let mut client = tokio::net::TcpStream::from_std(client).map_err(|error| error.to_string())?;
                tasks.push(tokio::spawn(async move {
                    let mut buffer = vec![0u8; 4096];
                    let mut total = 0u64;
                    while let Ok(read) = client.read(&mut buffer).await {
                        if read == 0 {
                            break;
                        }
                        total += read as u64;
                    }
                    total
                }));
            }
            let mut total = 0;
            for task in tasks {
                total += task.await.unwrap_or(0);
            }
            Ok(total)
        })
    });
    let frame = vec![b'x'; options.frame];
    let burst_every = Duration::from_secs_f64(options.sockets as f64 / options.rate as f64);
    let bursts = (options.rate * options.seconds).div_ceil(options.sockets as u64);
    let cpu_before = thread_cpu()?;
    let started = Instant::now();
    for burst in 0..bursts {
        for server in &mut servers {
            server.write_all(&frame).map_err(|error| error.to_string())?;
        }
        let next = started + burst_every.mul_f64((burst + 1) as f64);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let cpu = thread_cpu()?.saturating_sub(cpu_before);
    let elapsed = started.elapsed();
    drop(servers);
    let received = readers.join().map_err(|_| "the reader thread panicked")??;
    let writes = bursts * options.sockets as u64;
    println!(
        "{}",
        serde_json::json!({
            "sockets": options.sockets,
            "rate": options.rate,
            "frame_bytes": options.frame,
            "writes": writes,
            "seconds": elapsed.as_secs_f64(),
            "writer_cpu_seconds": cpu.as_secs_f64(),
            "writes_per_cpu_second": (writes as f64 / cpu.as_secs_f64().max(1e-9)).round(),
            "bytes_received": received,
            "bytes_expected_at_least": expected,
        })
    );
    Ok(())
}
