//! Plans as text (Terraform-style), JSON (documented in docs/plan-json.md) and
//! markdown (for a PR comment).
//!
//! Invariant: rendering is deterministic: the same plan gives the same bytes.

use std::fmt::Write;

use serde_json::{Value, json};

use super::reason::joined;
use super::{Action, Change, Mode, Plan, Reason};
use crate::state::Kind;

/// The JSON format's version.
/// 2.0: `action_reason` is the main reason's code, `reasons` a list of
/// `{code, message}` (1.0 had prose in both).
pub const JSON_FORMAT_VERSION: &str = "2.0";

fn val(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn symbol(c: &Change) -> &'static str {
    match (c.kind, c.action) {
        (Kind::Step, Action::Create | Action::Replace) => "  >",
        (_, Action::Create) => "  +",
        (_, Action::Update) => "  ~",
        (_, Action::Replace) => "-/+",
        (_, Action::Delete) => "  -",
        (_, Action::NoOp) => "   ",
    }
}

fn headline(c: &Change) -> String {
    let why = if matches!(c.reasons.as_slice(), [Reason::Destroy]) {
        String::new()
    } else {
        joined(&c.reasons, "; ")
    };
    let verb = match (c.kind, c.action) {
        (Kind::Step, Action::Create) => "will run",
        (Kind::Step, Action::Replace) => "will run again",
        (Kind::Step, Action::Delete) => "will be forgotten",
        (_, Action::Create) => "will be created",
        (_, Action::Update) => "will be updated in place",
        (_, Action::Replace) => "must be replaced",
        (_, Action::Delete) => "will be destroyed",
        (_, Action::NoOp) => "is kept",
    };
    let address = crate::diag::escape(&c.address);
    if why.is_empty() {
        format!("# {address} {verb}")
    } else {
        format!("# {address} {verb} ({})", crate::diag::escape(&why))
    }
}

/// Terraform-style text.
pub fn text(plan: &Plan) -> String {
    text_with(plan, false)
}

/// The text of `megaplan diff OLD NEW`: what changes between two files (not
/// an action anyone is about to perform).
pub fn diff_text(plan: &Plan) -> String {
    text_with(plan, true)
}

fn text_with(plan: &Plan, diff: bool) -> String {
    let mut out = String::new();
    text_into(plan, diff, &mut out);
    out
}

/// Writes the text of `plan` to `w` as it goes (through a `BufWriter` on
/// stdout, the plan of a 100k-VM lab never exists as one string).
pub fn write_text(plan: &Plan, w: &mut impl std::io::Write) -> std::io::Result<()> {
    let mut out = IoFmt { w, err: None };
    text_into(plan, false, &mut out);
    match out.err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// `fmt::Write` over an `io::Write`, keeping the first I/O error.
struct IoFmt<'a, W: std::io::Write> {
    w: &'a mut W,
    err: Option<std::io::Error>,
}

impl<W: std::io::Write> Write for IoFmt<'_, W> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.err.is_some() {
            return Err(std::fmt::Error);
        }
        self.w.write_all(s.as_bytes()).map_err(|e| {
            self.err = Some(e);
            std::fmt::Error
        })
    }
}

fn text_into(plan: &Plan, diff: bool, out: &mut impl Write) {
    let shown = plan
        .changes
        .iter()
        .filter(|c| c.action != Action::NoOp || (c.kind == Kind::Disk && c.spec.is_none()));
    let experiment = crate::diag::escape(&plan.experiment);
    if !plan.has_changes() {
        let _ = if diff {
            writeln!(
                out,
                "No changes. The old and the new file describe the same experiment '{experiment}'."
            )
        } else {
            writeln!(
                out,
                "No changes. The experiment '{experiment}' matches the file and the host."
            )
        };
        for c in shown {
            let _ = writeln!(out, "\n  {}", headline(c));
        }
        return;
    }
    let _ = if diff {
        writeln!(
            out,
            "Going from the old file to the new one (experiment '{experiment}') would:"
        )
    } else {
        writeln!(
            out,
            "megaplan will perform the following actions on experiment '{experiment}':"
        )
    };
    for c in shown {
        let _ = writeln!(out);
        let _ = writeln!(out, "  {}", headline(c));
        let (_, name) = split(&c.address);
        let _ = writeln!(out, "{} {} {name:?} {{", symbol(c), c.kind.as_str());
        let empty = Default::default();
        let before = c.before.as_ref().unwrap_or(&empty);
        // Derived for this change only: the plan holds specs, not maps.
        let after_attrs = c.after();
        let after = after_attrs.as_ref().unwrap_or(&empty);
        let keys: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
        let width = keys.iter().map(|k| k.len()).max().unwrap_or(0);
        let mut hidden = 0;
        for k in keys {
            let (b, a) = (before.get(k), after.get(k));
            let line = match (c.action, b, a) {
                (Action::Create, _, Some(a)) => format!("      + {k:width$} = {}", val(a)),
                (Action::Delete, Some(b), _) => format!("      - {k:width$} = {}", val(b)),
                (_, Some(b), Some(a)) if b == a => {
                    hidden += 1;
                    continue;
                }
                (_, Some(b), Some(a)) => format!("      ~ {k:width$} = {} -> {}", val(b), val(a)),
                (_, None, Some(a)) => format!("      + {k:width$} = {}", val(a)),
                (_, Some(b), None) => format!("      - {k:width$} = {} -> null", val(b)),
                (_, None, None) => continue,
            };
            let force = if c.replace_paths.contains(k) {
                " # forces replacement"
            } else {
                ""
            };
            let _ = writeln!(out, "{line}{force}");
        }
        if hidden > 0 {
            let _ = writeln!(out, "        # ({hidden} unchanged attributes hidden)");
        }
        let _ = writeln!(out, "    }}");
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "{}", summary_line(plan));
}

/// `Plan: 1 to add, 0 to change, 1 to replace, 0 to destroy, 2 steps to run.`
pub fn summary_line(plan: &Plan) -> String {
    let s = plan.summary();
    let prefix = if plan.mode == Mode::Apply {
        "Plan"
    } else {
        "Destroy plan"
    };
    let mut line = format!(
        "{prefix}: {} to add, {} to change, {} to replace, {} to destroy",
        s.add, s.change, s.replace, s.destroy
    );
    if s.steps > 0 {
        let _ = write!(
            line,
            ", {} step{} to run",
            s.steps,
            if s.steps == 1 { "" } else { "s" }
        );
    }
    line.push('.');
    line
}

fn split(address: &str) -> (&str, &str) {
    address.split_once('.').unwrap_or(("resource", address))
}

/// The JSON plan (docs/plan-json.md).
pub fn json(plan: &Plan) -> Value {
    let changes: Vec<Value> = plan
        .changes
        .iter()
        .map(|c| {
            let (_, name) = split(&c.address);
            json!({
                "address": c.address,
                "type": c.kind.as_str(),
                "name": name,
                "change": {
                    "actions": c.action.actions(),
                    "before": c.before,
                    "after": c.after(),
                    "replace_paths": c.replace_paths,
                },
                "action_reason": c.reason().map(Reason::code),
                "reasons": c.reasons.iter().map(|r| json!({ "code": r.code(), "message": r.to_string() })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let s = plan.summary();
    json!({
        "format_version": JSON_FORMAT_VERSION,
        "experiment": plan.experiment,
        "mode": plan.mode,
        "lineage": plan.lineage,
        "serial": plan.serial,
        "resource_changes": changes,
        "summary": { "add": s.add, "change": s.change, "replace": s.replace, "destroy": s.destroy, "steps": s.steps },
    })
}

/// The JSON plan, pretty-printed and newline-terminated, written to `w` change
/// by change: the same bytes as `to_string_pretty(&json(plan))` + "\n" without
/// building the `Value` tree (4.6 GB at 100k VMs).
pub fn write_json(plan: &Plan, w: &mut impl std::io::Write) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *w, &JsonPlan(plan))?;
    w.write_all(b"\n")
}

/// Serializes as `json(plan)` does, field for field, in the same order.
struct JsonPlan<'a>(&'a Plan);
struct JsonChanges<'a>(&'a [Change]);
struct JsonChange<'a>(&'a Change);
struct JsonInner<'a>(&'a Change);

impl serde::Serialize for JsonPlan<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let plan = self.0;
        let sum = plan.summary();
        let mut m = s.serialize_map(Some(7))?;
        m.serialize_entry("format_version", JSON_FORMAT_VERSION)?;
        m.serialize_entry("experiment", &plan.experiment)?;
        m.serialize_entry("mode", &plan.mode)?;
        m.serialize_entry("lineage", &plan.lineage)?;
        m.serialize_entry("serial", &plan.serial)?;
        m.serialize_entry("resource_changes", &JsonChanges(&plan.changes))?;
        m.serialize_entry("summary", &JsonSummary(sum))?;
        m.end()
    }
}

struct JsonSummary(super::Summary);

impl serde::Serialize for JsonSummary {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let x = &self.0;
        let mut m = s.serialize_map(Some(5))?;
        m.serialize_entry("add", &x.add)?;
        m.serialize_entry("change", &x.change)?;
        m.serialize_entry("replace", &x.replace)?;
        m.serialize_entry("destroy", &x.destroy)?;
        m.serialize_entry("steps", &x.steps)?;
        m.end()
    }
}

impl serde::Serialize for JsonChanges<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(JsonChange))
    }
}

impl serde::Serialize for JsonChange<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let c = self.0;
        let (_, name) = split(&c.address);
        let mut m = s.serialize_map(Some(6))?;
        m.serialize_entry("address", &c.address)?;
        m.serialize_entry("type", c.kind.as_str())?;
        m.serialize_entry("name", name)?;
        m.serialize_entry("change", &JsonInner(c))?;
        m.serialize_entry("action_reason", &c.reason().map(Reason::code))?;
        m.serialize_entry("reasons", &JsonReasons(&c.reasons))?;
        m.end()
    }
}

struct JsonReasons<'a>(&'a [Reason]);
struct JsonReason<'a>(&'a Reason);

impl serde::Serialize for JsonReasons<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(JsonReason))
    }
}

impl serde::Serialize for JsonReason<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("code", self.0.code())?;
        m.serialize_entry("message", &Prose(self.0))?;
        m.end()
    }
}

/// A reason's prose, written straight into the output.
struct Prose<'a>(&'a Reason);

impl serde::Serialize for Prose<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self.0)
    }
}

impl serde::Serialize for JsonInner<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let c = self.0;
        let mut m = s.serialize_map(Some(4))?;
        m.serialize_entry("actions", &c.action.actions())?;
        m.serialize_entry("before", &c.before)?;
        m.serialize_entry("after", &c.after())?;
        m.serialize_entry("replace_paths", &c.replace_paths)?;
        m.end()
    }
}

/// A compact summary fit for a PR comment.
pub fn markdown(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### megaplan: `{}`\n",
        crate::diag::escape(&plan.experiment)
    );
    if !plan.has_changes() {
        out.push_str("No changes.\n");
        return out;
    }
    let _ = writeln!(out, "**{}**\n", summary_line(plan));
    out.push_str("| | resource | action | why |\n|---|---|---|---|\n");
    for c in plan.changes.iter().filter(|c| c.action != Action::NoOp) {
        let (sym, word) = match (c.kind, c.action) {
            (Kind::Step, Action::Create | Action::Replace) => ("▶️", "run"),
            (_, Action::Create) => ("➕", "create"),
            (_, Action::Update) => ("🔧", "update"),
            (_, Action::Replace) => ("♻️", "replace"),
            (_, Action::Delete) => ("➖", "destroy"),
            (_, Action::NoOp) => ("", "keep"),
        };
        let why = crate::diag::escape(&joined(&c.reasons, "; ")).replace('|', "\\|");
        let address = crate::diag::escape(&c.address).replace('`', "'");
        let _ = writeln!(out, "| {sym} | `{address}` | {word} | {why} |");
    }
    out
}
