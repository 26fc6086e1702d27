//! The topology as SVG: one layout function used by `megaplan graph --format
//! svg` and by the page of `megaplan serve`.
//!
//! Layout: each network is a band, a labelled bus bar with the VMs whose
//! first nic is on it in rows below it (at most [`PER_ROW`] a row, so 3 VMs
//! and 100 VMs both stay readable). A VM's other nics are short stubs with a
//! dashed line up to their network's bar. A mirror is one arrowed curve from
//! the mirrored VM to the monitor, labelled with its direction. VMs without
//! a nic get a band of their own at the end.
//!
//! Invariants: pure (same lab and states, same bytes); every text from the
//! experiment or the host is XML-escaped; one `class="vm"` shape per VM and
//! one `class="mirror"` path per mirror, so the page and the tests can count them.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::lab::{Direction, Lab};

/// VMs a row inside a network's band.
pub const PER_ROW: usize = 8;
const VM_W: i64 = 150;
const VM_H: i64 = 58;
const GAP_X: i64 = 30;
const GAP_Y: i64 = 34;
const MARGIN: i64 = 20;
const BAR_H: i64 = 26;
const BAND_GAP: i64 = 30;

/// XML-escape text for an attribute or element body.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// Shorten a label to `max` characters (with an ellipsis) so it fits its box.
fn fit(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

struct Band<'a> {
    /// None: VMs without a nic.
    network: Option<&'a str>,
    bridge: String,
    vms: Vec<usize>,
    top: i64,
}

/// The drawing. `states` maps VM name to its live state ("running", "dead",
/// "absent"...); a VM missing from it is drawn without one (the CLI's file).
pub fn svg(lab: &Lab, states: &BTreeMap<String, String>) -> String {
    let mut bands: Vec<Band> = lab
        .networks
        .iter()
        .map(|n| Band {
            network: Some(&n.name),
            bridge: n.bridge.clone().unwrap_or_default(),
            vms: Vec::new(),
            top: 0,
        })
        .collect();
    let mut loose = Vec::new();
    for (i, vm) in lab.vms.iter().enumerate() {
        match vm.nics.first().and_then(|n| {
            bands
                .iter()
                .position(|b| b.network == Some(n.network.as_str()))
        }) {
            Some(b) => bands[b].vms.push(i),
            None => loose.push(i),
        }
    }
    if !loose.is_empty() {
        bands.push(Band {
            network: None,
            bridge: String::new(),
            vms: loose,
            top: 0,
        });
    }
    let cols = lab.vms.len().clamp(1, PER_ROW) as i64;
    let mut width = (MARGIN * 2 + cols * VM_W + (cols - 1) * GAP_X).max(480);
    // Positions: band tops, then each VM's box corner.
    let mut pos: BTreeMap<usize, (i64, i64)> = BTreeMap::new();
    let mut y = MARGIN;
    for b in &mut bands {
        b.top = y;
        let rows = b.vms.len().div_ceil(PER_ROW).max(1) as i64;
        for (k, &vi) in b.vms.iter().enumerate() {
            let col = (k % PER_ROW) as i64;
            let row = (k / PER_ROW) as i64;
            let x = MARGIN + col * (VM_W + GAP_X);
            let vy = y + BAR_H + GAP_Y + row * (VM_H + GAP_Y);
            pos.insert(vi, (x, vy));
        }
        y += BAR_H + GAP_Y + rows * (VM_H + GAP_Y) + BAND_GAP;
    }
    let mut height = y - BAND_GAP + MARGIN;
    let bar_of = |net: &str| bands.iter().find(|b| b.network == Some(net)).map(|b| b.top);

    let mut o = String::new();
    for b in &bands {
        let label = match b.network {
            Some(n) => format!("network {n}  ({})", b.bridge),
            None => "no network".to_string(),
        };
        let _ = writeln!(
            o,
            "<g class=\"bar\" data-network=\"{}\"><rect x=\"{MARGIN}\" y=\"{}\" width=\"{}\" height=\"{BAR_H}\" rx=\"4\" fill=\"#37474f\"/><text x=\"{}\" y=\"{}\" fill=\"#ffffff\">{}</text></g>",
            esc(b.network.unwrap_or("")),
            b.top,
            width - 2 * MARGIN,
            MARGIN + 8,
            b.top + 17,
            esc(&label)
        );
    }
    // Nic lines under the boxes.
    for (i, vm) in lab.vms.iter().enumerate() {
        let (x, vy) = pos[&i];
        let n = vm.nics.len() as i64;
        for (k, nic) in vm.nics.iter().enumerate() {
            let Some(top) = bar_of(&nic.network) else {
                continue;
            };
            let nx = x + VM_W * (k as i64 + 1) / (n + 1);
            let title = format!(
                "<title>{} nic[{}] {} on {}</title>",
                esc(&vm.name),
                nic.index,
                esc(nic.tap.as_deref().unwrap_or_default()),
                esc(&nic.network)
            );
            if k == 0 {
                // Up to its own band's bar (the bus line).
                let _ = writeln!(
                    o,
                    "<line class=\"nic\" stroke=\"#546e7a\" stroke-width=\"1.5\" data-tap=\"{}\" x1=\"{nx}\" y1=\"{vy}\" x2=\"{nx}\" y2=\"{}\">{title}</line>",
                    esc(nic.tap.as_deref().unwrap_or_default()),
                    top + BAR_H
                );
            } else {
                // Another band's bar: a labelled stub, not a line across other
                // VMs (which at 100 VMs would cross everything).
                let _ = writeln!(
                    o,
                    "<line class=\"nic extra\" stroke=\"#546e7a\" stroke-width=\"1.5\" stroke-dasharray=\"3 2\" data-tap=\"{}\" data-network=\"{}\" x1=\"{nx}\" y1=\"{vy}\" x2=\"{nx}\" y2=\"{}\">{title}</line><text class=\"nic-label\" fill=\"#546e7a\" font-size=\"10\" x=\"{}\" y=\"{}\">{}</text>",
                    esc(nic.tap.as_deref().unwrap_or_default()),
                    esc(&nic.network),
                    vy - 14,
                    nx + 3,
                    vy - 5,
                    esc(&fit(&nic.network, 12))
                );
            }
        }
    }
    for (i, vm) in lab.vms.iter().enumerate() {
        let (x, vy) = pos[&i];
        let state = states.get(&vm.name);
        let state_attr = state.map_or_else(String::new, |s| format!(" data-state=\"{}\"", esc(s)));
        // Presentation attributes, not a <style>: the page's CSP allows no inline style.
        let (fill, stroke, dash) = match state.map(String::as_str) {
            None => ("#eef4ff", "#3a5a99", ""),
            Some("running") => ("#e3f6e3", "#2e7d32", ""),
            Some("dead") => ("#fde2e2", "#c62828", " stroke-dasharray=\"4 2\""),
            Some(_) => ("#f2f2f2", "#999999", " stroke-dasharray=\"2 2\""),
        };
        let _ = write!(
            o,
            "<g class=\"vm\" data-vm=\"{}\"{state_attr}><rect x=\"{x}\" y=\"{vy}\" width=\"{VM_W}\" height=\"{VM_H}\" rx=\"6\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"1.5\"{dash}/>",
            esc(&vm.name)
        );
        let _ = write!(
            o,
            "<text x=\"{}\" y=\"{}\" font-weight=\"bold\">{}</text>",
            x + 8,
            vy + 18,
            esc(&fit(&vm.name, 18))
        );
        let _ = write!(
            o,
            "<text x=\"{}\" y=\"{}\">{} · {} vcpu</text>",
            x + 8,
            vy + 34,
            crate::graph::fmt_mib(vm.memory_mib),
            vm.vcpus
        );
        if let Some(s) = state {
            let _ = write!(
                o,
                "<text class=\"state\" fill=\"#555555\" x=\"{}\" y=\"{}\">{}</text>",
                x + 8,
                vy + 50,
                esc(&fit(s, 18))
            );
        }
        let _ = writeln!(o, "<title>{}</title></g>", esc(&vm.address));
    }
    for m in &lab.mirrors {
        let (Some(si), Some(di)) = (
            lab.vms.iter().position(|v| v.name == m.source_vm),
            lab.vms.iter().position(|v| v.name == m.dest_vm),
        ) else {
            continue;
        };
        let (sx, sy) = pos[&si];
        let (dx, dy) = pos[&di];
        // Same row: a curve below both boxes. Otherwise: out of the right
        // side of one box and into the right side of the other, so it
        // passes beside the boxes between them, not through them.
        let (d, lx, ly, anchor) = if sy == dy {
            let (x1, y1, x2) = (sx + VM_W / 2, sy + VM_H, dx + VM_W / 2);
            let sag = 30 + (x1 - x2).abs() / 8;
            let cy = y1 + sag;
            height = height.max(cy + MARGIN);
            (
                format!("M{x1},{y1} C{x1},{cy} {x2},{cy} {x2},{y1}"),
                (x1 + x2) / 2,
                y1 + sag * 3 / 4 + 12,
                "middle",
            )
        } else {
            let (x1, y1) = (sx + VM_W, sy + VM_H / 2);
            let (x2, y2) = (dx + VM_W, dy + VM_H / 2);
            let bulge = 24 + (y1 - y2).abs() / 10;
            let cx = x1.max(x2) + bulge;
            width = width.max(cx + 90);
            (
                format!("M{x1},{y1} C{cx},{y1} {cx},{y2} {x2},{y2}"),
                cx - bulge / 4 + 4,
                (y1 + y2) / 2,
                "start",
            )
        };
        let dir = match m.direction {
            Direction::Ingress => "in",
            Direction::Egress => "out",
            Direction::Both => "both",
        };
        let _ = writeln!(
            o,
            "<path class=\"mirror\" fill=\"none\" stroke=\"#b5179e\" stroke-width=\"2\" data-mirror=\"{}\" data-direction=\"{dir}\" d=\"{d}\" marker-end=\"url(#arrow)\"><title>{}</title></path>",
            esc(&m.address),
            esc(&m.address)
        );
        let _ = writeln!(
            o,
            "<text class=\"mirror-label\" fill=\"#b5179e\" x=\"{lx}\" y=\"{ly}\" text-anchor=\"{anchor}\">mirror {dir}</text>"
        );
    }
    let mut h = String::new();
    let _ = writeln!(
        h,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"topology\" viewBox=\"0 0 {width} {height}\" width=\"{width}\" height=\"{height}\" font-family=\"monospace\" font-size=\"12\">"
    );
    let _ = writeln!(h, "<title>{}</title>", esc(&lab.name));
    h.push_str(concat!(
        "<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\">",
        "<path d=\"M0,0 L10,5 L0,10 z\" fill=\"#b5179e\"/></marker></defs>\n",

    ));
    h.push_str(&o);
    h.push_str("</svg>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab(text: &str) -> Lab {
        let src = crate::diag::SourceFile::new("t.kdl", text);
        let (lab, d) = crate::provider::names::check_local(&src);
        lab.unwrap_or_else(|| panic!("{}", d.render_plain(&src)))
    }

    fn count(hay: &str, needle: &str) -> usize {
        hay.matches(needle).count()
    }

    #[test]
    fn one_shape_per_vm_one_path_per_mirror_and_a_bar_per_network() {
        let l = lab(
            "experiment \"x\"\nnetwork \"LAN\"\nnetwork \"mon\"\nvm \"A\" { kernel \"/k\"; nic \"LAN\"; }\nvm \"B\" { kernel \"/k\"; nic \"LAN\"; nic \"mon\"; }\nvm \"monitor\" { kernel \"/k\"; nic \"mon\"; mirrors \"A\" direction=\"ingress\"; }\n",
        );
        let s = svg(&l, &BTreeMap::new());
        assert_eq!(count(&s, "<g class=\"vm\""), 3, "{s}");
        assert_eq!(count(&s, "<path class=\"mirror\""), 1, "{s}");
        assert!(s.contains("data-direction=\"in\""), "{s}");
        assert_eq!(count(&s, "<g class=\"bar\""), 2, "{s}");
        // B's second nic is a dashed line to mon.
        assert_eq!(count(&s, "class=\"nic extra\""), 1, "{s}");
        assert_eq!(count(&s, "<line class=\"nic"), 4, "{s}");
    }

    #[test]
    fn states_colour_the_boxes() {
        let l =
            lab("experiment \"x\"\nnetwork \"LAN\"\nvm \"A\" { kernel \"/k\"; nic \"LAN\"; }\n");
        let states = BTreeMap::from([("A".to_string(), "dead".to_string())]);
        let s = svg(&l, &states);
        assert!(s.contains("data-vm=\"A\" data-state=\"dead\""), "{s}");
        assert!(svg(&l, &BTreeMap::new()).contains("data-vm=\"A\"><rect"));
    }

    #[test]
    fn a_hundred_vms_wrap_into_rows_and_no_boxes_overlap() {
        let l = lab(
            "experiment \"x\"\nnetwork \"LAN\"\nvm \"n[1-100]\" { kernel \"/k\"; nic \"LAN\"; }\n",
        );
        let s = svg(&l, &BTreeMap::new());
        assert_eq!(count(&s, "<g class=\"vm\""), 100);
        let width: i64 = s
            .split("width=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap()
            .parse()
            .unwrap();
        // At most PER_ROW boxes a row: the drawing does not grow sideways.
        assert!(
            width <= 2 * MARGIN + PER_ROW as i64 * (VM_W + GAP_X),
            "{width}"
        );
        let mut corners = std::collections::BTreeSet::new();
        for g in s.split("<g class=\"vm\"").skip(1) {
            let x = g.split("x=\"").nth(1).unwrap().split('"').next().unwrap();
            let y = g.split("y=\"").nth(1).unwrap().split('"').next().unwrap();
            assert!(
                corners.insert((x.to_string(), y.to_string())),
                "two boxes at {x},{y}"
            );
        }
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        let l = lab("experiment \"x\"\nvm \"A\" { kernel \"/k\"; }\n");
        let states = BTreeMap::from([("A".to_string(), "<script>".to_string())]);
        let s = svg(&l, &states);
        assert!(!s.contains("<script>"), "{s}");
        assert!(s.contains("no network"), "{s}");
    }
}
