//! One line per frame for reports: time, addresses, protocol (a small subset
//! of what tcpdump prints; anything else shows its EtherType).

use crate::capture::Frame;

fn mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn ipv4(b: &[u8]) -> String {
    format!("{}.{}.{}.{}", b[0], b[1], b[2], b[3])
}

/// `HH:MM:SS.micro SRC > DST WHAT, N bytes` (UTC).
pub fn summary(f: &Frame) -> String {
    let secs = f.time.as_secs();
    let time = format!(
        "{:02}:{:02}:{:02}.{:06}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60,
        f.time.subsec_micros()
    );
    format!("{time} {}, {} bytes", what(&f.data), f.orig_len)
}

fn what(d: &[u8]) -> String {
    if d.len() < 14 {
        return "runt frame".into();
    }
    let (dst, src) = (mac(&d[0..6]), mac(&d[6..12]));
    let ethertype = u16::from_be_bytes([d[12], d[13]]);
    let p = &d[14..];
    match ethertype {
        0x0800 if p.len() >= 20 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let (s, t) = (ipv4(&p[12..16]), ipv4(&p[16..20]));
            let rest = p.get(ihl..).unwrap_or_default();
            let proto = match p[9] {
                1 => match rest.first() {
                    Some(0) => "ICMP echo reply".to_string(),
                    Some(8) => "ICMP echo request".to_string(),
                    Some(3) => "ICMP unreachable".to_string(),
                    Some(t) => format!("ICMP type {t}"),
                    None => "ICMP".to_string(),
                },
                6 | 17 if rest.len() >= 4 => {
                    let sp = u16::from_be_bytes([rest[0], rest[1]]);
                    let dp = u16::from_be_bytes([rest[2], rest[3]]);
                    let name = if p[9] == 6 { "TCP" } else { "UDP" };
                    return format!("{s}.{sp} > {t}.{dp} {name}");
                }
                n => format!("IP proto {n}"),
            };
            format!("{s} > {t} {proto}")
        }
        0x0806 if p.len() >= 28 => {
            let op = u16::from_be_bytes([p[6], p[7]]);
            let (spa, tpa) = (ipv4(&p[14..18]), ipv4(&p[24..28]));
            match op {
                1 => format!("ARP who-has {tpa} tell {spa}"),
                2 => format!("ARP {spa} is-at {}", mac(&p[8..14])),
                n => format!("ARP op {n}"),
            }
        }
        0x86dd => format!("{src} > {dst} IPv6"),
        t => format!("{src} > {dst} ethertype 0x{t:04x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icmp_and_arp_lines() {
        let mut icmp = vec![0u8; 14 + 20 + 8];
        icmp[12] = 0x08;
        icmp[14] = 0x45;
        icmp[14 + 9] = 1;
        icmp[14 + 12..14 + 16].copy_from_slice(&[10, 0, 0, 1]);
        icmp[14 + 16..14 + 20].copy_from_slice(&[10, 0, 0, 2]);
        icmp[34] = 8;
        let f = Frame {
            time: std::time::Duration::from_micros(3_723_000_042),
            data: icmp,
            orig_len: 42,
        };
        assert_eq!(
            summary(&f),
            "01:02:03.000042 10.0.0.1 > 10.0.0.2 ICMP echo request, 42 bytes"
        );
        let mut arp = vec![0u8; 14 + 28];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        arp[14 + 7] = 1;
        arp[14 + 14..14 + 18].copy_from_slice(&[10, 0, 0, 1]);
        arp[14 + 24..14 + 28].copy_from_slice(&[10, 0, 0, 2]);
        assert_eq!(what(&arp), "ARP who-has 10.0.0.2 tell 10.0.0.1");
        assert_eq!(what(&[0u8; 3]), "runt frame");
    }
}
