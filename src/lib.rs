//! Library side of the `pagestream` package: what the CLI, the benchmarks and the integration
//! tests share (driving the test workload). The engine and the transports are their own crates.

pub mod selftest_track;
pub mod workload;
pub mod workload_client;

/// Parses a byte count with an optional K, M or G suffix (powers of 1024); zero is refused.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|e| format!("bad size {s:?}: {e}"))?;
    n.checked_mul(mult).filter(|v| *v > 0).ok_or_else(|| format!("bad size {s:?}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::parse_size("4K"), Ok(4096));
        assert_eq!(super::parse_size("1G"), Ok(1 << 30));
        assert_eq!(super::parse_size("123"), Ok(123));
        assert!(super::parse_size("0").is_err());
        assert!(super::parse_size("x").is_err());
        assert!(super::parse_size("99999999999G").is_err());
    }
}
