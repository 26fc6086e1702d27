//! The topology as SVG: one layout function used by `megaplan graph --format
//! svg` and by the page of `megaplan serve`.
//!
//! Layout: each network is a band, a labelled bus bar with the VMs whose
//! first nic is on it in rows below it (at most [`PER_ROW`] a row, so 3 VMs
//! and 100 VMs both stay readable). A VM's other nics are short stubs with a
//! dashed label naming their network. A mirror is one arrowed curve from
//! the mirrored VM to the monitor, labelled with its direction. VMs without
//! a nic get a band of their own at the end. A capture is a mark: on the
//! nic it records (a tap capture), or on its network's bar. When the VMs
//! run on several hosts (the minimega provider records each VM's node),
//! each host is a labelled box holding the bands of its VMs.
//!
//! Invariants: pure (same lab, states and hosts, same bytes); every text
//! from the experiment or the host is XML-escaped; one `class="vm"` shape
//! per VM, one `class="mirror"` path per mirror, one `class="capture"` mark
//! per captured nic or per captured network's bar, and one `class="host"`
//! box per host when there are several, so the page and the tests can count
//! them.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::lab::{Direction, Lab};
use crate::state::State;

/// VMs a row inside a network's band.
pub const PER_ROW: usize = 8;
const VM_W: i64 = 150;
const VM_H: i64 = 58;
const GAP_X: i64 = 30;
const GAP_Y: i64 = 40;
const MARGIN: i64 = 20;
const BAR_H: i64 = 26;
const BAND_GAP: i64 = 30;
/// How far a bar reaches left of its boxes (its trunk runs there).
const TRUNK: i64 = 10;
/// Inside a host's box: the padding, and the height of its label.
const HOST_PAD: i64 = 14;
const HOST_LABEL: i64 = 24;

/// Each VM's host, as the provider recorded it in the state (the minimega
/// provider's computed `node`); VMs without one are left out.
pub fn hosts(lab: &Lab, state: &State) -> BTreeMap<String, String> {
    lab.vms
        .iter()
        .filter_map(|vm| {
            let node = state
                .resources
                .get(&vm.address)?
                .attrs
                .get("node")?
                .as_str()?;
            (!node.is_empty()).then(|| (vm.name.clone(), node.to_string()))
        })
        .collect()
}

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

/// A host's box (only when there are several hosts).
struct HostBox {
    /// None: VMs whose host is not known.
    name: Option<String>,
    top: i64,
    bottom: i64,
}

/// The bands of `vms` (indices into `lab.vms`): one per network, in file
/// order, then one for VMs without a nic; empty network bands only when `all`.
fn bands_of<'a>(lab: &'a Lab, vms: &[usize], all: bool) -> Vec<Band<'a>> {
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
    for &i in vms {
        match lab.vms[i].nics.first().and_then(|n| {
            bands
                .iter()
                .position(|b| b.network == Some(n.network.as_str()))
        }) {
            Some(b) => bands[b].vms.push(i),
            None => loose.push(i),
        }
    }
    if !all {
        bands.retain(|b| !b.vms.is_empty());
    }
    if !loose.is_empty() {
        bands.push(Band {
            network: None,
            bridge: String::new(),
            vms: loose,
            top: 0,
        });
    }
    bands
}

/// The drawing. `states` maps VM name to its live state ("running", "dead",
/// "absent"...); a VM missing from it is drawn without one (the CLI's file).
/// `hosts` maps VM name to the host it runs on ([`hosts`]); with more than
/// one host, VMs are grouped in a box per host.
pub fn svg(
    lab: &Lab,
    states: &BTreeMap<String, String>,
    hosts: &BTreeMap<String, String>,
) -> String {
    let mut names: Vec<&String> = lab.vms.iter().filter_map(|v| hosts.get(&v.name)).collect();
    names.sort();
    names.dedup();
    let grouped = names.len() > 1;
    // (host box, its bands); one group without a box when not grouped.
    let mut groups: Vec<(Option<HostBox>, Vec<Band>)> = Vec::new();
    if grouped {
        let mut keys: Vec<Option<&String>> = names.iter().map(|n| Some(*n)).collect();
        if lab.vms.iter().any(|v| !hosts.contains_key(&v.name)) {
            keys.push(None);
        }
        for key in keys {
            let vms: Vec<usize> = (0..lab.vms.len())
                .filter(|&i| hosts.get(&lab.vms[i].name) == key)
                .collect();
            groups.push((
                Some(HostBox {
                    name: key.cloned(),
                    top: 0,
                    bottom: 0,
                }),
                bands_of(lab, &vms, false),
            ));
        }
    } else {
        let all: Vec<usize> = (0..lab.vms.len()).collect();
        groups.push((None, bands_of(lab, &all, true)));
    }
    let inset = if grouped { HOST_PAD } else { 0 };
    let cols = groups
        .iter()
        .flat_map(|g| g.1.iter().map(|b| b.vms.len()))
        .max()
        .unwrap_or(0)
        .clamp(1, PER_ROW) as i64;
    let mut width = (MARGIN * 2 + inset * 2 + cols * VM_W + (cols - 1) * GAP_X).max(480);
    // Positions: host boxes and band tops, then each VM's box corner.
    let mut pos: BTreeMap<usize, (i64, i64)> = BTreeMap::new();
    let mut y = MARGIN;
    for (hb, bands) in &mut groups {
        if let Some(hb) = hb.as_mut() {
            hb.top = y;
            y += HOST_LABEL;
        }
        for b in bands.iter_mut() {
            b.top = y;
            let rows = b.vms.len().div_ceil(PER_ROW).max(1) as i64;
            for (k, &vi) in b.vms.iter().enumerate() {
                let col = (k % PER_ROW) as i64;
                let row = (k / PER_ROW) as i64;
                let x = MARGIN + inset + col * (VM_W + GAP_X);
                let vy = y + BAR_H + GAP_Y + row * (VM_H + GAP_Y);
                pos.insert(vi, (x, vy));
            }
            y += BAR_H + GAP_Y + rows * (VM_H + GAP_Y) + BAND_GAP;
        }
        if let Some(hb) = hb.as_mut() {
            hb.bottom = y - BAND_GAP - GAP_Y + HOST_PAD;
            y = hb.bottom + BAND_GAP;
        }
    }
    let mut height = y - BAND_GAP - GAP_Y + MARGIN;
    let bar_w = width - 2 * (MARGIN + inset);

    let mut o = String::new();
    for (hb, bands) in &groups {
        if let Some(hb) = hb {
            let label = match &hb.name {
                Some(n) => format!("host {n}"),
                None => "host unknown".to_string(),
            };
            let _ = writeln!(
                o,
                "<g class=\"host\" data-host=\"{}\"><rect class=\"host-box\" x=\"{MARGIN}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"8\" fill=\"none\" stroke=\"#8d6e63\" stroke-width=\"1.5\" stroke-dasharray=\"6 3\"/><text x=\"{}\" y=\"{}\" fill=\"#5d4037\" font-weight=\"bold\">{}</text>",
                esc(hb.name.as_deref().unwrap_or("")),
                hb.top,
                width - 2 * MARGIN,
                hb.bottom - hb.top,
                MARGIN + 8,
                hb.top + 16,
                esc(&label)
            );
        }
        for b in bands {
            draw_band(&mut o, lab, b, &pos, states, hosts, MARGIN + inset, bar_w);
        }
        if hb.is_some() {
            o.push_str("</g>\n");
        }
    }
    // Mirrors first, under the rest: where one crosses a bar it passes
    // beneath it, not over its label.
    let mut under = String::new();
    for (mi, m) in lab.mirrors.iter().enumerate() {
        let (Some(si), Some(di)) = (
            lab.vms.iter().position(|v| v.name == m.source_vm),
            lab.vms.iter().position(|v| v.name == m.dest_vm),
        ) else {
            continue;
        };
        let (sx, sy) = pos[&si];
        let (dx, dy) = pos[&di];
        // Along the gaps, never through a box: out of the source (its
        // right side, or its top when both share a row), along the column
        // gap beside it to a lane in the row gap above the monitor, and
        // down into the monitor's top. Mirrors side by side get their own
        // lanes (a few pixels apart).
        let lane = (mi % 5) as i64 - 2;
        let lane_y = dy - 18 - lane * 3;
        let ex = dx + VM_W - 14;
        let d = if sy == dy {
            let x1 = sx + VM_W - 28 + lane * 3;
            format!("M{x1},{sy} V{lane_y} H{ex} V{dy}")
        } else {
            let (x1, y1) = (sx + VM_W, sy + VM_H / 2);
            let gx = x1 + GAP_X / 2 + lane * 4;
            width = width.max(gx + MARGIN);
            format!("M{x1},{y1} H{gx} V{lane_y} H{ex} V{dy}")
        };
        let (lx, ly, anchor) = (ex + 5, lane_y - 4, "start");
        width = width.max(lx + 90);
        height = height.max(dy + VM_H + MARGIN);
        let dir = match m.direction {
            Direction::Ingress => "in",
            Direction::Egress => "out",
            Direction::Both => "both",
        };
        let _ = writeln!(
            under,
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
    h.push_str(&under);
    h.push_str(&o);
    h.push_str("</svg>\n");
    h
}

const CAPTURE_FILL: &str = "#ffb300";
const CAPTURE_STROKE: &str = "#6d4c00";

/// One band: its bar (with a mark per capture of its network), then its
/// VMs' nic lines (with a mark per captured nic) and boxes.
#[allow(clippy::too_many_arguments)]
fn draw_band(
    o: &mut String,
    lab: &Lab,
    b: &Band,
    pos: &BTreeMap<usize, (i64, i64)>,
    states: &BTreeMap<String, String>,
    hosts: &BTreeMap<String, String>,
    left: i64,
    bar_w: i64,
) {
    let label = match b.network {
        Some(n) => format!("network {n}  ({})", b.bridge),
        None => "no network".to_string(),
    };
    // The bar begins a little left of the boxes: the trunk to the rows
    // below the first runs down from it there.
    let _ = writeln!(
        o,
        "<g class=\"bar\" data-network=\"{}\"><rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{BAR_H}\" rx=\"4\" fill=\"#37474f\"/><text x=\"{}\" y=\"{}\" fill=\"#ffffff\">{}</text></g>",
        esc(b.network.unwrap_or("")),
        left - TRUNK,
        b.top,
        bar_w + TRUNK,
        left + 8,
        b.top + 17,
        esc(&label)
    );
    // Rows below the first: a bus in the gap above each row, on a trunk
    // down from the bar, so no nic line crosses the boxes above it.
    let rows = b.vms.len().div_ceil(PER_ROW);
    if b.network.is_some() && rows > 1 {
        let tx = left - TRUNK / 2;
        let bus = |row: usize| b.top + BAR_H + GAP_Y + row as i64 * (VM_H + GAP_Y) - GAP_Y + 8;
        let _ = writeln!(
            o,
            "<line class=\"trunk\" stroke=\"#546e7a\" stroke-width=\"1.5\" x1=\"{tx}\" y1=\"{}\" x2=\"{tx}\" y2=\"{}\"/>",
            b.top + BAR_H,
            bus(rows - 1)
        );
        for row in 1..rows {
            let in_row = (b.vms.len() - row * PER_ROW).min(PER_ROW) as i64;
            let _ = writeln!(
                o,
                "<line class=\"bus\" stroke=\"#546e7a\" stroke-width=\"1.5\" x1=\"{tx}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\"/>",
                left + (in_row - 1) * (VM_W + GAP_X) + VM_W - 20,
                y = bus(row)
            );
        }
    }
    if let Some(net) = b.network {
        // Network captures: marks from the right end of the bar leftwards.
        let mut right = left + bar_w - 14;
        for c in lab
            .captures
            .iter()
            .filter(|c| c.network.as_deref() == Some(net))
        {
            let cy = b.top + BAR_H / 2;
            let text = format!("capture {}", fit(&c.name, 16));
            let _ = writeln!(
                o,
                "<g class=\"capture\" data-capture=\"{}\" data-network=\"{}\"><circle cx=\"{right}\" cy=\"{cy}\" r=\"7\" fill=\"{CAPTURE_FILL}\" stroke=\"{CAPTURE_STROKE}\" stroke-width=\"1.5\"/><text x=\"{}\" y=\"{}\" fill=\"{CAPTURE_FILL}\" text-anchor=\"end\">{}</text><title>capture {}: every frame on network {}</title></g>",
                esc(&c.name),
                esc(net),
                right - 11,
                b.top + 17,
                esc(&text),
                esc(&c.name),
                esc(net)
            );
            right -= 24 + 7 * text.chars().count() as i64;
        }
    }
    for (slot, &i) in b.vms.iter().enumerate() {
        let vm = &lab.vms[i];
        let (x, vy) = pos[&i];
        let up_to = if slot < PER_ROW {
            b.top + BAR_H
        } else {
            vy - GAP_Y + 8
        };
        let n = vm.nics.len() as i64;
        for (k, nic) in vm.nics.iter().enumerate() {
            let nx = x + VM_W * (k as i64 + 1) / (n + 1);
            let title = format!(
                "<title>{} nic[{}] {} on {}</title>",
                esc(&vm.name),
                nic.index,
                esc(nic.tap.as_deref().unwrap_or_default()),
                esc(&nic.network)
            );
            if k == 0 && b.network.is_some() {
                // Up to its own band's bar (the bus line).
                let _ = writeln!(
                    o,
                    "<line class=\"nic\" stroke=\"#546e7a\" stroke-width=\"1.5\" data-tap=\"{}\" x1=\"{nx}\" y1=\"{vy}\" x2=\"{nx}\" y2=\"{}\">{title}</line>",
                    esc(nic.tap.as_deref().unwrap_or_default()),
                    up_to
                );
            } else if lab.network(&nic.network).is_some() {
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
            // Tap captures of this nic: a mark where the nic leaves the box,
            // labelled on the left of the line.
            for c in lab.captures.iter().filter(|c| {
                c.network.is_none() && c.taps.iter().any(|t| t.vm == vm.name && t.nic == nic.index)
            }) {
                let _ = writeln!(
                    o,
                    "<g class=\"capture\" data-capture=\"{}\" data-tap=\"{}\"><circle cx=\"{nx}\" cy=\"{vy}\" r=\"6\" fill=\"{CAPTURE_FILL}\" stroke=\"{CAPTURE_STROKE}\" stroke-width=\"1.5\"/><text x=\"{}\" y=\"{}\" fill=\"{CAPTURE_STROKE}\" font-size=\"10\" text-anchor=\"end\">{}</text><title>capture {}: {} nic[{}] ({})</title></g>",
                    esc(&c.name),
                    esc(nic.tap.as_deref().unwrap_or_default()),
                    nx - 9,
                    vy - 6,
                    esc(&fit(&c.name, 10)),
                    esc(&c.name),
                    esc(&vm.name),
                    nic.index,
                    esc(nic.tap.as_deref().unwrap_or_default())
                );
            }
        }
        let state = states.get(&vm.name);
        let state_attr = state.map_or_else(String::new, |s| format!(" data-state=\"{}\"", esc(s)));
        let host_attr = hosts
            .get(&vm.name)
            .map_or_else(String::new, |h| format!(" data-host=\"{}\"", esc(h)));
        // Presentation attributes, not a <style>: the page's CSP allows no inline style.
        let (fill, stroke, dash) = match state.map(String::as_str) {
            None => ("#eef4ff", "#3a5a99", ""),
            Some("running") => ("#e3f6e3", "#2e7d32", ""),
            Some("dead") => ("#fde2e2", "#c62828", " stroke-dasharray=\"4 2\""),
            Some(_) => ("#f2f2f2", "#999999", " stroke-dasharray=\"2 2\""),
        };
        let _ = write!(
            o,
            "<g class=\"vm\" data-vm=\"{}\"{state_attr}{host_attr}><rect x=\"{x}\" y=\"{vy}\" width=\"{VM_W}\" height=\"{VM_H}\" rx=\"6\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"1.5\"{dash}/>",
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
        let s = svg(&l, &BTreeMap::new(), &BTreeMap::new());
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
        let s = svg(&l, &states, &BTreeMap::new());
        assert!(s.contains("data-vm=\"A\" data-state=\"dead\""), "{s}");
        assert!(svg(&l, &BTreeMap::new(), &BTreeMap::new()).contains("data-vm=\"A\"><rect"));
    }

    #[test]
    fn a_hundred_vms_wrap_into_rows_and_no_boxes_overlap() {
        let l = lab(
            "experiment \"x\"\nnetwork \"LAN\"\nvm \"n[1-100]\" { kernel \"/k\"; nic \"LAN\"; }\n",
        );
        let s = svg(&l, &BTreeMap::new(), &BTreeMap::new());
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
        let s = svg(&l, &states, &BTreeMap::new());
        assert!(!s.contains("<script>"), "{s}");
        assert!(s.contains("no network"), "{s}");
    }

    /// The numbers of `key="N"` in `s`, in order.
    fn nums(s: &str, key: &str) -> Vec<i64> {
        s.split(&format!(" {key}=\""))
            .skip(1)
            .map(|r| r.split('"').next().unwrap().parse().unwrap())
            .collect()
    }

    /// (x, y, width, height) of the first `<rect` after `start` in `s`.
    fn rect_after(s: &str, start: &str) -> (i64, i64, i64, i64) {
        let g = &s[s.find(start).unwrap_or_else(|| panic!("no {start} in {s}"))..];
        let r = &g[g.find("<rect").unwrap()..];
        let r = &r[..r.find("/>").unwrap()];
        let one = |k: &str| nums(r, k)[0];
        (one("x"), one("y"), one("width"), one("height"))
    }

    fn inside(inner: (i64, i64, i64, i64), outer: (i64, i64, i64, i64)) -> bool {
        inner.0 >= outer.0
            && inner.1 >= outer.1
            && inner.0 + inner.2 <= outer.0 + outer.2
            && inner.1 + inner.3 <= outer.1 + outer.3
    }

    const MESH: &str = "experiment \"x\"\nnetwork \"LAN\"\nnetwork \"mon\"\nvm \"A\" { kernel \"/k\"; nic \"LAN\"; }\nvm \"B\" { kernel \"/k\"; nic \"LAN\"; }\nvm \"monitor\" { kernel \"/k\"; nic \"mon\"; mirrors \"A\"; }\n";

    #[test]
    fn several_hosts_get_a_box_each_holding_their_vms() {
        let l = lab(MESH);
        let hosts = BTreeMap::from([
            ("A".to_string(), "mm1".to_string()),
            ("monitor".to_string(), "mm1".to_string()),
            ("B".to_string(), "mm2".to_string()),
        ]);
        let s = svg(&l, &BTreeMap::new(), &hosts);
        assert_eq!(count(&s, "<g class=\"host\""), 2, "{s}");
        assert!(
            s.contains(">host mm1</text>") && s.contains(">host mm2</text>"),
            "{s}"
        );
        let mm1 = rect_after(&s, "<g class=\"host\" data-host=\"mm1\"");
        let mm2 = rect_after(&s, "<g class=\"host\" data-host=\"mm2\"");
        let a = rect_after(&s, "data-vm=\"A\"");
        let b = rect_after(&s, "data-vm=\"B\"");
        let m = rect_after(&s, "data-vm=\"monitor\"");
        assert!(inside(a, mm1) && inside(m, mm1), "{s}");
        assert!(inside(b, mm2) && !inside(b, mm1), "{s}");
        assert!(!inside(a, mm2), "{s}");
        // The boxes do not overlap: mm2 begins below mm1.
        assert!(mm2.1 >= mm1.1 + mm1.3, "{mm1:?} {mm2:?}");
        assert!(s.contains("data-vm=\"B\" data-host=\"mm2\""), "{s}");
        // Still one shape per VM and one mirror path; LAN is drawn in both
        // hosts, mon (only the monitor's) in mm1 alone.
        assert_eq!(count(&s, "<g class=\"vm\""), 3, "{s}");
        assert_eq!(count(&s, "<path class=\"mirror\""), 1, "{s}");
        assert_eq!(count(&s, "<g class=\"bar\" data-network=\"LAN\""), 2, "{s}");
        assert_eq!(count(&s, "<g class=\"bar\" data-network=\"mon\""), 1, "{s}");
        // A VM whose host is not known gets a box of its own.
        let partial = BTreeMap::from([
            ("A".to_string(), "mm1".to_string()),
            ("B".to_string(), "mm2".to_string()),
        ]);
        let s = svg(&l, &BTreeMap::new(), &partial);
        assert_eq!(count(&s, "<g class=\"host\""), 3, "{s}");
        assert!(s.contains(">host unknown</text>"), "{s}");
        assert!(
            inside(
                rect_after(&s, "data-vm=\"monitor\""),
                rect_after(&s, "<g class=\"host\" data-host=\"\"")
            ),
            "{s}"
        );
    }

    #[test]
    fn one_host_draws_no_box() {
        let l = lab(MESH);
        let one = BTreeMap::from([("A".to_string(), "mm1".to_string())]);
        let s = svg(&l, &BTreeMap::new(), &one);
        assert_eq!(count(&s, "class=\"host\""), 0, "{s}");
        assert_eq!(
            s.replace(" data-host=\"mm1\"", ""),
            svg(&l, &BTreeMap::new(), &BTreeMap::new())
        );
    }

    #[test]
    fn captures_are_marked_on_their_nic_and_on_their_network() {
        let l = lab(&format!(
            "{MESH}capture \"mon\" {{ tap \"monitor\" nic=0; }}\ncapture \"lan\" network=\"LAN\"\n"
        ));
        let s = svg(&l, &BTreeMap::new(), &BTreeMap::new());
        assert_eq!(count(&s, "<g class=\"capture\""), 2, "{s}");
        // The tap capture sits where the monitor's nic leaves its box.
        let tap = &s[s.find("<g class=\"capture\" data-capture=\"mon\"").unwrap()..];
        assert!(
            tap.contains("data-tap=\"") && tap.contains(">mon</text>"),
            "{s}"
        );
        let (mx, my, mw, _) = rect_after(&s, "data-vm=\"monitor\"");
        let (cx, cy) = (nums(tap, "cx")[0], nums(tap, "cy")[0]);
        assert_eq!((cx, cy), (mx + mw / 2, my), "{s}");
        // The network capture sits on LAN's bar.
        let net = &s[s.find("<g class=\"capture\" data-capture=\"lan\"").unwrap()..];
        assert!(net.starts_with("<g class=\"capture\" data-capture=\"lan\" data-network=\"LAN\""));
        let bar = rect_after(&s, "<g class=\"bar\" data-network=\"LAN\"");
        let (cx, cy) = (nums(net, "cx")[0], nums(net, "cy")[0]);
        assert!(
            cx > bar.0 && cx < bar.0 + bar.2 && cy > bar.1 && cy < bar.1 + bar.3,
            "{s}"
        );
        assert!(net.contains(">capture lan</text>"), "{s}");
        // Names are escaped like every other text (a title holds the tap too).
        assert!(!s.contains("<script"), "{s}");
    }

    #[test]
    fn the_hosts_are_the_nodes_recorded_in_the_state() {
        use crate::state::{Attrs, Kind, Record};
        let l = lab(MESH);
        let mut state = State::new("x");
        let mut attrs = Attrs::new();
        attrs.insert("node".into(), "mm2".into());
        state
            .resources
            .insert("vm.B".into(), Record::new(Kind::Vm, attrs));
        let mut empty = Attrs::new();
        empty.insert("node".into(), "".into());
        state
            .resources
            .insert("vm.A".into(), Record::new(Kind::Vm, empty));
        state
            .resources
            .insert("vm.monitor".into(), Record::new(Kind::Vm, Attrs::new()));
        assert_eq!(
            hosts(&l, &state),
            BTreeMap::from([("B".to_string(), "mm2".to_string())])
        );
    }

    /// Does the segment (x1,y1)-(x2,y2), horizontal or vertical, pass
    /// through the inside of the box?
    fn crosses(seg: (i64, i64, i64, i64), b: (i64, i64, i64, i64)) -> bool {
        let (x1, y1, x2, y2) = seg;
        let (lx, hx, ly, hy) = (x1.min(x2), x1.max(x2), y1.min(y2), y1.max(y2));
        lx < b.0 + b.2 && hx > b.0 && ly < b.1 + b.3 && hy > b.1
    }

    #[test]
    fn at_a_hundred_vms_no_line_crosses_a_box() {
        let mut text =
            String::from("experiment \"x\"\nnetwork \"LAN\"\nnetwork \"DMZ\"\nnetwork \"mon\"\n");
        for i in 1..=100 {
            let net = match i {
                1..=60 => "LAN",
                61..=95 => "DMZ",
                _ => "mon",
            };
            let extra = if i % 10 == 0 && net != "mon" {
                " nic \"mon\";"
            } else {
                ""
            };
            let mirror = if net == "mon" {
                format!(" mirrors \"v{}\";", i - 95 + (i - 96) * 11)
            } else {
                String::new()
            };
            text.push_str(&format!(
                "vm \"v{i}\" {{ kernel \"/k\"; nic \"{net}\";{extra}{mirror} }}\n"
            ));
        }
        let l = lab(&text);
        let s = svg(&l, &BTreeMap::new(), &BTreeMap::new());
        assert_eq!(count(&s, "<path class=\"mirror\""), 5, "{s}");
        let boxes: Vec<(String, (i64, i64, i64, i64))> = s
            .split("<g class=\"vm\" data-vm=\"")
            .skip(1)
            .map(|g| {
                let name = g.split('"').next().unwrap().to_string();
                (name.clone(), rect_after(g, "><rect"))
            })
            .collect();
        assert_eq!(boxes.len(), 100);
        // Mirrors: H/V segments; only their own two boxes are touched.
        for p in s.split("<path class=\"mirror\"").skip(1) {
            let m = p
                .split("data-mirror=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            let d = p.split(" d=\"").nth(1).unwrap().split('"').next().unwrap();
            let mut at = (0, 0);
            let mut segs = Vec::new();
            for step in d.split(' ') {
                let (c, v) = step.split_at(1);
                let next = match c {
                    "M" => {
                        let (x, y) = v.split_once(',').unwrap();
                        at = (x.parse().unwrap(), y.parse().unwrap());
                        continue;
                    }
                    "H" => (v.parse().unwrap(), at.1),
                    "V" => (at.0, v.parse().unwrap()),
                    _ => panic!("{d}"),
                };
                segs.push((at.0, at.1, next.0, next.1));
                at = next;
            }
            for (name, b) in &boxes {
                if m.contains(&format!("{name}[")) {
                    continue;
                }
                for &seg in &segs {
                    assert!(!crosses(seg, *b), "{m} crosses {name}: {seg:?} {b:?}");
                }
            }
        }
        // Nic lines, buses and the trunk: through no box.
        for kind in [
            "<line class=\"nic\"",
            "<line class=\"bus\"",
            "<line class=\"trunk\"",
        ] {
            let lines: Vec<&str> = s.split(kind).skip(1).collect();
            assert!(!lines.is_empty(), "{kind}");
            for line in lines {
                let n = |k: &str| nums(line, k)[0];
                let seg = (n("x1"), n("y1"), n("x2"), n("y2"));
                for (name, b) in &boxes {
                    assert!(!crosses(seg, *b), "{kind} {seg:?} crosses {name}");
                }
            }
        }
    }
}
