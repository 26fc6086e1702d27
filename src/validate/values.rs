//! Values as written: names, ranges, sizes, durations, MACs and host
//! addresses. Pure functions, also used where untrusted data comes back
//! (state files, saved plans, minimega import).

/// Names become interface aliases, file names and QEMU arguments.
pub fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("a name cannot be empty");
    }
    if name.len() > 64 {
        return Some("a name can be at most 64 bytes long");
    }
    if name == "." || name == ".." || name.contains("..") {
        return Some("a name cannot contain '..'");
    }
    if name.contains('/') {
        return Some("a name cannot contain '/'");
    }
    if name.chars().any(|c| c.is_control()) {
        return Some("a name cannot contain control characters");
    }
    if name.starts_with('-') || name.starts_with('.') {
        return Some("a name cannot start with '-' or '.'");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Some("a name may hold only letters, digits, '-', '_' and '.'");
    }
    None
}

/// Expand `web[1-3]`, `web[01-10]`, `n[1,4-5]` into names. Err: what is wrong.
pub fn expand_range(name: &str) -> Result<Vec<String>, String> {
    let Some(open) = name.find('[') else {
        if name.contains(']') {
            return Err("unbalanced ']' in a VM name".into());
        }
        return Ok(vec![name.to_string()]);
    };
    let Some(close_rel) = name[open..].find(']') else {
        return Err("unbalanced '[' in a VM name range".into());
    };
    let close = open + close_rel;
    let (prefix, body, suffix) = (&name[..open], &name[open + 1..close], &name[close + 1..]);
    if suffix.contains('[') || suffix.contains(']') {
        return Err("a VM name can hold only one range".into());
    }
    let mut out = Vec::new();
    for part in body.split(',') {
        let part = part.trim();
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo, hi),
            None => (part, part),
        };
        let width = if lo.len() > 1 && lo.starts_with('0') {
            lo.len()
        } else {
            0
        };
        let (Ok(a), Ok(b)) = (lo.parse::<u64>(), hi.parse::<u64>()) else {
            return Err(format!("'{part}' is not a number or a range like 1-3"));
        };
        if a > b {
            return Err(format!("the range {a}-{b} runs backwards"));
        }
        if b - a >= 100_000 || out.len() as u64 + (b - a) >= 1_000_000 {
            return Err("a VM range can make at most 1,000,000 VMs".into());
        }
        for i in a..=b {
            out.push(format!("{prefix}{i:0width$}{suffix}"));
        }
    }
    Ok(out)
}

/// Sizes: `10G`, `512M`, `64K`, `1T`, `1024` (bytes), with optional `i`/`iB`/`B`.
pub fn parse_size(s: &str, default_unit: u64) -> Option<u64> {
    let s = s.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits_end == 0 {
        return None;
    }
    let n: u64 = s[..digits_end].parse().ok()?;
    let unit = match s[digits_end..].trim() {
        "" => default_unit,
        "B" | "b" => 1,
        "K" | "k" | "KB" | "KiB" | "kB" => 1 << 10,
        "M" | "m" | "MB" | "MiB" => 1 << 20,
        "G" | "g" | "GB" | "GiB" => 1 << 30,
        "T" | "t" | "TB" | "TiB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// Durations: `500ms`, `30s`, `5m`, `1h30m`, `90` (seconds).
pub fn parse_duration_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(secs) = s.parse::<u64>() {
        return secs.checked_mul(1000);
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let end = rest.find(|c: char| !c.is_ascii_digit())?;
        if end == 0 {
            return None;
        }
        let n: u64 = rest[..end].parse().ok()?;
        rest = &rest[end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_end] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(mult)?)?;
        rest = &rest[unit_end..];
    }
    Some(total)
}

/// `aa:bb:cc:dd:ee:ff`, unicast. Returns the normalised (lowercase) MAC.
pub fn parse_mac(s: &str) -> Result<String, &'static str> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6
        || parts
            .iter()
            .any(|p| p.len() != 2 || !p.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err("a MAC address is six hex pairs separated by ':', like 02:00:00:00:00:01");
    }
    let first = u8::from_str_radix(parts[0], 16).map_err(|_| "bad hex")?;
    if first & 1 == 1 {
        return Err(
            "this is a multicast MAC address: a nic needs a unicast one (even first octet)",
        );
    }
    Ok(s.to_ascii_lowercase())
}

/// `10.0.0.1/24` or `fd00::1/64`: an address a host can have on a segment.
pub fn parse_cidr(s: &str) -> Result<(), &'static str> {
    use std::net::IpAddr;
    let Some((addr, len)) = s.split_once('/') else {
        return Err("a host address needs a prefix length, like 10.0.0.254/24");
    };
    let Ok(len) = len.parse::<u8>() else {
        return Err("the prefix length must be a number");
    };
    let addr = match addr.parse::<IpAddr>() {
        Ok(a) => a,
        Err(_) => return Err("not an IPv4 or IPv6 address"),
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err("the prefix length is too long for this address");
    }
    if len == 0 {
        return Err("a /0 prefix is every address, not a segment");
    }
    if addr.is_unspecified() {
        return Err("the unspecified address is not a host address");
    }
    if addr.is_loopback() {
        return Err("a loopback address is not an address on a segment");
    }
    if addr.is_multicast() {
        return Err("a multicast address is not a host address");
    }
    match addr {
        IpAddr::V4(a) => {
            if a.is_broadcast() {
                return Err("the broadcast address is not a host address");
            }
            if a.is_link_local() {
                return Err("a link-local address (169.254.0.0/16) is not a host address here");
            }
            if a.octets()[0] >= 240 {
                return Err("an address in 240.0.0.0/4 is reserved, not a host address");
            }
            if len <= 30 {
                let bits = u32::from(a);
                let host_mask = u32::MAX >> len;
                if bits & host_mask == 0 {
                    return Err("this is the network address of its prefix, not a host address");
                }
                if bits & host_mask == host_mask {
                    return Err("this is the broadcast address of its prefix, not a host address");
                }
            }
        }
        IpAddr::V6(a) => {
            if a.segments()[0] & 0xffc0 == 0xfe80 {
                return Err("a link-local address (fe80::/10) is not a host address here");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_expand() {
        assert_eq!(expand_range("web[1-3]").unwrap(), ["web1", "web2", "web3"]);
        assert_eq!(expand_range("n[08-10]").unwrap(), ["n08", "n09", "n10"]);
        assert_eq!(expand_range("n[1,4-5]").unwrap(), ["n1", "n4", "n5"]);
        assert_eq!(expand_range("plain").unwrap(), ["plain"]);
        assert!(expand_range("web[3-1]").is_err());
        assert!(expand_range("web[1-").is_err());
        assert!(expand_range("web[a-b]").is_err());
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("10G", 1), Some(10 << 30));
        assert_eq!(parse_size("512M", 1), Some(512 << 20));
        assert_eq!(parse_size("2048", 1 << 20), Some(2048 << 20));
        assert_eq!(parse_size("10X", 1), None);
        assert_eq!(parse_size("G", 1), None);
        assert_eq!(parse_duration_ms("1h30m"), Some(5_400_000));
        assert_eq!(parse_duration_ms("500ms"), Some(500));
        assert_eq!(parse_duration_ms("30"), Some(30_000));
        assert_eq!(parse_duration_ms("30x"), None);
        assert_eq!(parse_duration_ms("s"), None);
    }

    #[test]
    fn macs_and_cidrs() {
        assert_eq!(parse_mac("02:AA:00:00:00:01").unwrap(), "02:aa:00:00:00:01");
        assert!(parse_mac("01:00:00:00:00:01").is_err());
        assert!(parse_mac("02:00:00:00:00").is_err());
        assert!(parse_cidr("10.0.0.1/24").is_ok());
        assert!(parse_cidr("10.0.0.1").is_err());
        assert!(parse_cidr("10.0.0.1/33").is_err());
        assert!(parse_cidr("fd00::1/64").is_ok());
    }

    #[test]
    fn host_addresses_must_be_addresses_of_a_host() {
        for bad in [
            "224.0.0.1/24",
            "255.255.255.255/24",
            "0.0.0.0/0",
            "10.0.0.1/0",
            "::/0",
            "::/64",
            "0.0.0.0/24",
            "127.0.0.1/8",
            "::1/128",
            "169.254.1.1/16",
            "fe80::1/64",
            "ff02::1/64",
            "10.0.0.0/24",
            "10.0.0.255/24",
            "240.0.0.1/8",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad} accepted");
        }
        for good in [
            "10.0.0.254/24",
            "192.168.1.1/31",
            "10.1.2.3/32",
            "fd00::1/64",
        ] {
            assert!(parse_cidr(good).is_ok(), "{good} refused");
        }
    }

    #[test]
    fn names() {
        assert!(name_problem("LAN").is_none());
        assert!(name_problem("web-1.a_b").is_none());
        assert!(name_problem("../etc").is_some());
        assert!(name_problem("a/b").is_some());
        assert!(name_problem("a\nb").is_some());
        assert!(name_problem("-x").is_some());
        assert!(name_problem("a b").is_some());
    }
}
