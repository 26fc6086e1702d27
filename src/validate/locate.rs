//! Located diagnostics for problems found after validation, outside it: an
//! engine's bounds on a valid lab (`Provider::check_lab`) name the object at
//! fault by address; the diagnostic points at that object's name in the file.

use std::collections::HashMap;

use miette::SourceSpan;

use crate::diag::{Diag, Diagnostics, SourceFile};
use crate::provider::LabProblem;

/// `problems` as error diagnostics at the names they are about in `src`
/// (the file the lab was validated from): one per node of the file, so a VM
/// range reports its first instance at fault, as validation does. Reads
/// only the text (parsed again: this runs only when there are problems).
pub fn locate(src: &SourceFile, problems: &[LabProblem]) -> Diagnostics {
    let mut d = Diagnostics::default();
    if problems.is_empty() {
        return d;
    }
    let (doc, _) = crate::syntax::parse(src);
    let mut at: HashMap<String, SourceSpan> = HashMap::new();
    for vm in &doc.vms {
        for name in super::expand_range(&vm.name.value).unwrap_or_default() {
            at.entry(format!("vm.{name}")).or_insert(vm.name.span);
        }
    }
    let whole = SourceSpan::from(0..src.text.len().min(1));
    let mut reported = std::collections::HashSet::new();
    for p in problems {
        let span = at.get(&p.address).copied();
        if span.is_some_and(|s| !reported.insert((s.offset(), p.code))) {
            continue;
        }
        let diag = Diag::error(p.code, p.message.clone()).help(p.help.clone());
        d.push(match span {
            Some(s) => diag.label(s, p.label.clone()),
            None => diag.at(whole),
        });
    }
    d.sort();
    d
}
