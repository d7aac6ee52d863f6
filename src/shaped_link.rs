//! [`ShapedLink`]: a network link of a chosen rate and delay on this host, for benchmarks that
//! should see a real link rather than loopback. A network namespace is joined to the host by a
//! veth pair (addresses from 198.18.0.0/15, the range RFC 2544 sets aside for benchmarks) and
//! both ends get a qdisc that holds them to the rate: tbf (a token bucket of 10 ms at that rate,
//! at least 256 KiB so that a GSO batch passes), or netem when a one-way delay is asked for too
//! (netem is a module some kernels lack; this host's has tbf only). The receiving side runs in
//! the namespace (`ip netns exec`, or [`ShapedLink::enter`] for a thread); dropping the link
//! deletes the namespace and with it both veth ends. Needs root and iproute2 (`ip`, `tc`).

use std::fs::File;
use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{bail, Context, Result};
use nix::sched::{setns, CloneFlags};

/// A shaped veth link into a network namespace of its own; see the module documentation.
pub struct ShapedLink {
    netns: String,
    /// The host's end of the link.
    pub host_addr: Ipv4Addr,
    /// The namespace's end of the link (where the receiving side listens).
    pub peer_addr: Ipv4Addr,
    /// Rate in Mbit/s, each way.
    pub mbit: u32,
    /// One-way delay in milliseconds (the round trip is twice this).
    pub delay_ms: f64,
}

/// Runs `args` (an iproute2 command) and fails with its stderr.
fn run(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("running {}", args[0]))?;
    if !out.status.success() {
        bail!("`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl ShapedLink {
    /// Creates the namespace, the veth pair and the qdiscs (`mbit` Mbit/s, `delay_ms` each way).
    pub fn create(mbit: u32, delay_ms: f64) -> Result<ShapedLink> {
        if mbit == 0 || !(0.0..=10_000.0).contains(&delay_ms) {
            bail!("a shaped link needs a rate above 0 Mbit/s and a delay of 0 to 10000 ms");
        }
        if !nix::unistd::geteuid().is_root() {
            bail!("a shaped link needs root (it creates a network namespace and a veth pair)");
        }
        let pid = std::process::id();
        // One /30 of 198.18.0.0/15 per process, so that concurrent benchmarks do not collide.
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + (pid % (1 << 15)) * 4;
        let netns = format!("pagestream-bench-{pid}");
        run(&["ip", "netns", "add", &netns])?;
        let link = ShapedLink {
            netns,
            host_addr: Ipv4Addr::from(base + 1),
            peer_addr: Ipv4Addr::from(base + 2),
            mbit,
            delay_ms,
        };
        let (host_if, peer_if) = (format!("psb{pid}h"), format!("psb{pid}n"));
        let ns = link.netns.as_str();
        let rate = format!("{mbit}mbit");
        let burst = (u64::from(mbit) * 1_000_000 / 8 / 100).max(256 << 10).to_string();
        let delay = format!("{delay_ms}ms");
        let qdisc: Vec<&str> = if delay_ms > 0.0 {
            vec!["root", "netem", "rate", &rate, "delay", &delay, "limit", "100000"]
        } else {
            vec!["root", "tbf", "rate", &rate, "burst", &burst, "latency", "100ms"]
        };
        run(&["ip", "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if, "netns", ns])?;
        run(&["ip", "addr", "add", &format!("{}/30", link.host_addr), "dev", &host_if])?;
        run(&["ip", "link", "set", &host_if, "up"])?;
        run(&["ip", "-n", ns, "addr", "add", &format!("{}/30", link.peer_addr), "dev", &peer_if])?;
        run(&["ip", "-n", ns, "link", "set", &peer_if, "up"])?;
        run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        run(&[&["tc", "qdisc", "add", "dev", &host_if][..], &qdisc].concat())?;
        run(&[&["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", &peer_if][..], &qdisc].concat())?;
        Ok(link)
    }

    /// The command prefix that runs a program inside the namespace.
    pub fn exec_prefix(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.netns]
    }

    /// Moves the calling thread (only it) into the namespace.
    pub fn enter(&self) -> Result<()> {
        let path = format!("/run/netns/{}", self.netns);
        let ns = File::open(&path).with_context(|| format!("opening {path}"))?;
        setns(ns, CloneFlags::CLONE_NEWNET).with_context(|| format!("entering network namespace {}", self.netns))
    }
}

impl Drop for ShapedLink {
    fn drop(&mut self) {
        if let Err(e) = run(&["ip", "netns", "del", &self.netns]) {
            tracing::warn!("removing the benchmark's network namespace: {e}");
        }
    }
}
