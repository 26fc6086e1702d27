//! Checks: what must hold once a lab is up (`check NAME { ... }`), run by
//! `megaplan test` and `megaplan check` through the guest agent (ping, exec)
//! or on capture files (a pcap filter compiled by libpcap, run on each
//! frame). They never change the host and are not state: each run writes its
//! results to `.megaplan/EXP/checks.json` (docs/checks.md).

pub mod cli;
pub mod frame;
pub mod report;
pub mod run;
pub mod validate;

/// The plan's lines for checks: they run on `megaplan test`/`check`, never
/// change the host and are not state, so they are listed, not planned.
pub fn plan_lines(lab: &crate::lab::Lab) -> String {
    let mut s = String::new();
    for c in &lab.checks {
        s.push_str(&format!(
            "  ? check \"{}\" will run ({})\n",
            crate::diag::escape(&c.name),
            crate::diag::escape(&run::describe(c))
        ));
    }
    if !lab.checks.is_empty() {
        s.push_str(&format!(
            "{} on `megaplan test` or `megaplan check` (checks change nothing).\n",
            crate::diag::plural(lab.checks.len(), "check")
        ));
    }
    s
}

/// The diff's lines for checks (`megaplan diff OLD NEW`): added, removed and
/// changed checks by name, in the new file's order (removed ones last).
/// Checks are not resources, so the resource diff cannot show them.
pub fn diff_lines(old: &[crate::lab::CheckSpec], new: &[crate::lab::CheckSpec]) -> String {
    let mut s = String::new();
    for c in new {
        let name = crate::diag::escape(&c.name);
        match old.iter().find(|o| o.name == c.name) {
            None => s.push_str(&format!(
                "  + check \"{name}\" added ({})\n",
                crate::diag::escape(&run::describe(c))
            )),
            Some(o) if o != c => s.push_str(&format!(
                "  ~ check \"{name}\" changed ({})\n",
                crate::diag::escape(&run::describe(c))
            )),
            Some(_) => {}
        }
    }
    for o in old {
        if !new.iter().any(|c| c.name == o.name) {
            s.push_str(&format!(
                "  - check \"{}\" removed\n",
                crate::diag::escape(&o.name)
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    fn checks(src: &str) -> Vec<crate::lab::CheckSpec> {
        let f = crate::diag::SourceFile::new("x.kdl", src);
        let (lab, d) = crate::provider::names::check_local(&f);
        lab.unwrap_or_else(|| panic!("{}", d.render_plain(&f)))
            .checks
    }

    #[test]
    fn the_diff_names_added_changed_and_removed_checks() {
        let base = "experiment \"x\"\nnetwork \"n\"\nvm \"A\" { kernel \"/k\"; nic \"n\" }\n";
        let old = checks(&format!(
            "{base}check \"same\" {{ from \"A\"; ping \"10.0.0.1\" }}\ncheck \"edited\" {{ from \"A\"; ping \"10.0.0.2\" }}\ncheck \"gone\" {{ from \"A\"; ping \"10.0.0.3\" }}\n"
        ));
        let new = checks(&format!(
            "{base}check \"same\" {{ from \"A\"; ping \"10.0.0.1\" }}\ncheck \"edited\" {{ from \"A\"; ping \"10.0.0.2\"; retry 4 }}\ncheck \"new\" {{ from \"A\"; ping \"10.0.0.4\"; expect \"fail\" }}\n"
        ));
        let d = super::diff_lines(&old, &new);
        let lines: Vec<&str> = d.lines().collect();
        assert_eq!(lines.len(), 3, "{d}");
        assert!(lines[0].starts_with("  ~ check \"edited\" changed"), "{d}");
        assert!(lines[1].starts_with("  + check \"new\" added"), "{d}");
        assert_eq!(lines[2], "  - check \"gone\" removed", "{d}");
        assert_eq!(super::diff_lines(&new, &new), "");
    }
}
