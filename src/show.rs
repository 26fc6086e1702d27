//! `megaplan show`: live state as a table, like minimega's
//! `.columns name,tap vm info`.
//!
//! Invariant: reads only the lab, the state and what refresh observed.

use serde_json::{Map, Value};

use crate::lab::{DiskSource, Lab};
use crate::observed::Observed;
use crate::state::State;

pub const ALL_COLUMNS: &[&str] = &[
    "name", "state", "uuid", "pid", "tap", "bridge", "mac", "ip", "disks", "memory", "vcpus",
    "tags", "cc",
];
/// The table without `--columns`: with the guest's addresses, as minimega's
/// `vm info` has them.
pub const DEFAULT_COLUMNS: &[&str] = &[
    "name", "state", "uuid", "pid", "tap", "bridge", "mac", "ip", "memory", "vcpus", "tags",
];

/// The columns to show: those asked for (each checked, the unknown one
/// returned as the error), else every column for `--json` and
/// [`DEFAULT_COLUMNS`] for the table.
pub fn columns(requested: &[String], json: bool) -> Result<Vec<String>, String> {
    if let Some(bad) = requested
        .iter()
        .find(|c| !ALL_COLUMNS.contains(&c.as_str()))
    {
        return Err(bad.clone());
    }
    let default = if json { ALL_COLUMNS } else { DEFAULT_COLUMNS };
    Ok(if requested.is_empty() {
        default.iter().map(|s| s.to_string()).collect()
    } else {
        requested.to_vec()
    })
}

pub type Row = Map<String, Value>;

pub fn rows(lab: &Lab, state: &State, obs: &Observed) -> Vec<Row> {
    lab.vms
        .iter()
        .map(|vm| {
            let o = obs.vms.get(&vm.address);
            let st = match o {
                Some(o) if o.running() => "running".to_string(),
                Some(o) if o.alive => o.status.clone().unwrap_or_else(|| "unknown".into()),
                Some(_) => "dead".to_string(),
                None if state.resources.contains_key(&vm.address) => "dead".to_string(),
                None => "absent".to_string(),
            };
            let bridges: Vec<String> = vm
                .nics
                .iter()
                .map(|n| {
                    lab.network(&n.network)
                        .and_then(|b| b.bridge.clone())
                        .unwrap_or_default()
                })
                .collect();
            let steps_done = vm
                .cc
                .iter()
                .filter(|c| {
                    state
                        .resources
                        .get(&c.address)
                        .is_some_and(|r| r.status == crate::state::Status::Ready)
                })
                .count();
            let mut r = Map::new();
            r.insert("name".into(), vm.name.clone().into());
            r.insert("state".into(), st.into());
            r.insert("uuid".into(), vm.uuid.to_string().into());
            r.insert(
                "pid".into(),
                o.and_then(|o| o.pid).map_or(Value::Null, Value::from),
            );
            r.insert(
                "tap".into(),
                vm.nics
                    .iter()
                    .map(|n| n.tap.clone())
                    .collect::<Vec<_>>()
                    .into(),
            );
            r.insert("bridge".into(), bridges.into());
            r.insert(
                "mac".into(),
                vm.nics
                    .iter()
                    .map(|n| n.mac.clone())
                    .collect::<Vec<_>>()
                    .into(),
            );
            r.insert("ip".into(), Value::Array(Vec::new()));
            r.insert(
                "disks".into(),
                vm.disks
                    .iter()
                    .map(|d| match &d.source {
                        DiskSource::Named(n) => n.clone(),
                        DiskSource::Path(p) => p.display().to_string(),
                    })
                    .collect::<Vec<_>>()
                    .into(),
            );
            r.insert("memory".into(), vm.memory_mib.into());
            r.insert("vcpus".into(), vm.vcpus.into());
            r.insert("tags".into(), serde_json::to_value(&vm.tags).expect("tags"));
            r.insert("cc".into(), format!("{steps_done}/{}", vm.cc.len()).into());
            r
        })
        .collect()
}

/// A value as a table cell. Values come from the file, the state and the
/// guests: control characters are escaped, so none can forge a row.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => crate::diag::escape(s).into_owned(),
        Value::Array(a) => format!("[{}]", a.iter().map(cell).collect::<Vec<_>>().join(" ")),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("{}={}", crate::diag::escape(k), cell(v)))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        other => other.to_string(),
    }
}

pub fn table(rows: &[Row], columns: &[String]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            columns
                .iter()
                .map(|c| r.get(c).map(cell).unwrap_or_default())
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let line = |vals: Vec<&str>| {
        vals.iter()
            .enumerate()
            .map(|(i, v)| format!("{v:w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join(" | ")
            .trim_end()
            .to_string()
    };
    let columns: Vec<String> = columns
        .iter()
        .map(|c| crate::diag::escape(c).into_owned())
        .collect();
    out.push_str(&line(columns.iter().map(String::as_str).collect()));
    out.push('\n');
    for r in &cells {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

pub fn json(rows: &[Row], columns: &[String]) -> Value {
    Value::Array(
        rows.iter()
            .map(|r| {
                Value::Object(
                    columns
                        .iter()
                        .filter_map(|c| r.get(c).map(|v| (c.clone(), v.clone())))
                        .collect(),
                )
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_table_has_the_addresses() {
        let c = columns(&[], false).unwrap();
        assert!(c.iter().any(|c| c == "ip"), "{c:?}");
    }

    #[test]
    fn json_without_columns_has_every_field() {
        let c = columns(&[], true).unwrap();
        assert_eq!(c, ALL_COLUMNS);
    }

    #[test]
    fn asked_columns_are_kept_in_order_and_checked() {
        let ask = |s: &str| s.split(',').map(String::from).collect::<Vec<_>>();
        assert_eq!(columns(&ask("cc,name"), true).unwrap(), ask("cc,name"));
        assert_eq!(columns(&ask("name,host"), false), Err("host".to_string()));
    }

    #[test]
    fn values_cannot_forge_rows_or_escapes() {
        let mut r = Row::new();
        r.insert("name".into(), "a".into());
        r.insert(
            "tags".into(),
            serde_json::json!({"role": "x\nb     | running\u{1b}[2J", "k\r": "\u{202e}v"}),
        );
        r.insert("ip".into(), serde_json::json!(["10.0.0.1/24\nforged"]));
        let cols: Vec<String> = ["name", "tags", "ip"].map(String::from).to_vec();
        let t = table(&[r], &cols);
        assert_eq!(t.lines().count(), 2, "{t}");
        assert!(!t.chars().any(|c| c.is_control() && c != '\n'), "{t:?}");
        assert!(t.contains(r"x\nb"), "{t}");
        assert!(t.contains(r"\u{1b}[2J"), "{t}");
        assert!(t.contains(r"\u{202e}v"), "{t}");
        assert!(t.contains(r"10.0.0.1/24\nforged"), "{t}");
    }
}
