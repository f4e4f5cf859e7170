//! A UDP flood sender for `cargo xtask bench`: small datagrams in `sendmmsg(2)` batches,
//! at a fixed rate or as fast as one process can, over several flows.
//!
//! Usage, inside a namespace (`ip netns exec NS gb-flood ...`):
//!
//! ```text
//! gb-flood --to ADDR:PORT[,ADDR:PORT...] [--flows N] [--rate PPS] [--seconds S] [--size BYTES]
//! ```
//!
//! Flow `i` is a UDP socket of its own (its own source port) connected to the `i`-th
//! target, cycling through the list, so a list of backends spreads the flows over them
//! the way a balancer's round-robin would. `--rate 0` (the default) sends as fast as it
//! can. On exit it prints `sent N errors E`: datagrams the kernel accepted, and those it
//! refused (a full queue, or an ICMP error reported on a connected socket), which are
//! not counted as sent.

use std::{
    net::{SocketAddrV4, UdpSocket},
    os::fd::AsRawFd as _,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Datagrams per `sendmmsg` call.
const BATCH: usize = 64;

struct Args {
    targets: Vec<SocketAddrV4>,
    flows: usize,
    /// Datagrams per second; 0 for as fast as possible.
    rate: u64,
    duration: Duration,
    size: usize,
}

fn main() -> ExitCode {
    match parse(std::env::args().skip(1)).and_then(|args| flood(&args)) {
        Ok((sent, errors)) => {
            println!("sent {sent} errors {errors}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("gb-flood: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse(mut words: impl Iterator<Item = String>) -> Result<Args> {
    let mut args = Args {
        targets: Vec::new(),
        flows: 8,
        rate: 0,
        duration: Duration::from_secs(5),
        size: 18,
    };
    while let Some(flag) = words.next() {
        let value = words
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--to" => {
                for target in value.split(',') {
                    args.targets.push(
                        target
                            .parse()
                            .with_context(|| format!("--to {target}: not IPv4:port"))?,
                    );
                }
            }
            "--flows" => args.flows = value.parse().context("--flows")?,
            "--rate" => args.rate = value.parse().context("--rate")?,
            "--seconds" => {
                args.duration = Duration::from_secs_f64(value.parse().context("--seconds")?)
            }
            "--size" => args.size = value.parse().context("--size")?,
            other => bail!("unknown option {other}"),
        }
    }
    if args.targets.is_empty() || args.flows == 0 || args.size == 0 || args.size > 1472 {
        bail!(
            "usage: gb-flood --to ADDR:PORT[,...] [--flows N>0] [--rate PPS] [--seconds S] \
             [--size 1..1472]"
        );
    }
    Ok(args)
}

/// Sends until the duration is over; returns (sent, refused).
fn flood(args: &Args) -> Result<(u64, u64)> {
    let sockets = (0..args.flows)
        .map(|i| {
            let socket = UdpSocket::bind("0.0.0.0:0").context("binding a UDP socket")?;
            let target = args.targets[i % args.targets.len()];
            socket
                .connect(target)
                .with_context(|| format!("connecting to {target}"))?;
            Ok(socket)
        })
        .collect::<Result<Vec<_>>>()?;
    let payload = vec![0x42u8; args.size];
    // Every message of a batch points at the same payload: connected sockets need no
    // address per message.
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: an all-zero mmsghdr is a valid "no name, no control" header.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for msg in &mut msgs {
        msg.msg_hdr.msg_iov = &mut iov;
        msg.msg_hdr.msg_iovlen = 1;
    }

    let (mut sent, mut errors) = (0u64, 0u64);
    let start = Instant::now();
    let mut next_flow = 0;
    loop {
        let elapsed = start.elapsed();
        if elapsed >= args.duration {
            break;
        }
        let mut batch = BATCH;
        if args.rate > 0 {
            let due = (elapsed.as_secs_f64() * args.rate as f64) as u64;
            let owed = due.saturating_sub(sent + errors) as usize;
            if owed == 0 {
                // Ahead of schedule: sleep until a batch is due (bounded, to stay on time).
                let wait = BATCH as f64 / args.rate as f64;
                std::thread::sleep(Duration::from_secs_f64(wait.min(0.001)));
                continue;
            }
            batch = owed.min(BATCH);
        }
        let socket = &sockets[next_flow];
        next_flow = (next_flow + 1) % sockets.len();
        // SAFETY: `msgs` holds `BATCH >= batch` initialised headers whose iovec points at
        // `payload`, both alive for the call.
        let n = unsafe { libc::sendmmsg(socket.as_raw_fd(), msgs.as_mut_ptr(), batch as u32, 0) };
        if n < 0 {
            // ECONNREFUSED (an ICMP error came back), ENOBUFS, EAGAIN: the first datagram
            // of the batch was not sent; the rest are tried again with the next call.
            errors += 1;
        } else {
            sent += n as u64;
        }
    }
    Ok((sent, errors))
}
