//! The reports of a check run: `checks.json` (for the web view and scripts,
//! docs/checks.md), JUnit XML (one testcase per check) and a markdown
//! summary for a pull-request comment.

use std::fmt::Write as _;

use super::run::{CheckResult, REPORT_FILE, Report};
use crate::state::StateDir;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a check report: {why}")]
    Bad {
        path: std::path::PathBuf,
        why: String,
    },
}

/// Write `checks.json` into the state folder (atomically, never through a link).
pub fn save(sd: &StateDir, report: &Report) -> Result<(), ReportError> {
    let dir = sd.open(true)?.expect("created");
    let body = serde_json::to_vec_pretty(report).expect("plain data serialises");
    dir.write_atomic(REPORT_FILE, &body)
        .map_err(|source| ReportError::Write {
            path: sd.root.join(REPORT_FILE),
            source,
        })
}

/// The last `checks.json`, if there is one (the web view reads it). A state
/// folder is untrusted: the file is bounded and must parse.
pub fn load(sd: &StateDir) -> Result<Option<Report>, ReportError> {
    let Some(dir) = sd.open(false)? else {
        return Ok(None);
    };
    let path = sd.root.join(REPORT_FILE);
    let Some(bytes) = dir
        .read(REPORT_FILE, 16 << 20)
        .map_err(|source| ReportError::Write {
            path: path.clone(),
            source,
        })?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ReportError::Bad {
            path,
            why: e.to_string(),
        })
}

/// Text as XML 1.0 character data: escaped, and characters XML cannot hold
/// written as `\u{..}`.
fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Everything a reader of a failure needs: the command, its output, the
/// capture excerpt.
pub fn details(r: &CheckResult) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "check: {}", r.name);
    let _ = writeln!(
        s,
        "expected: {}",
        if r.expect == "fail" {
            "to fail"
        } else {
            "to hold"
        }
    );
    let _ = writeln!(s, "result: {}", r.message);
    let _ = writeln!(s, "command: {}", r.command);
    let _ = writeln!(s, "attempts: {}", r.attempts);
    if let Some(e) = r.exit {
        let _ = writeln!(s, "exit: {e}");
    }
    if !r.stdout.is_empty() {
        let _ = writeln!(s, "stdout:\n{}", r.stdout.trim_end());
    }
    if !r.stderr.is_empty() {
        let _ = writeln!(s, "stderr:\n{}", r.stderr.trim_end());
    }
    if let (Some(m), Some(f)) = (r.matched, r.frames) {
        let _ = writeln!(s, "frames: {m} matched of {f}");
    }
    if !r.excerpt.is_empty() {
        let _ = writeln!(s, "capture excerpt (first matching frames):");
        for l in &r.excerpt {
            let _ = writeln!(s, "  {l}");
        }
    }
    s
}

/// JUnit XML: one testsuite (the experiment), one testcase per check.
pub fn junit(report: &Report) -> String {
    let secs = |ms: u64| format!("{:.3}", ms as f64 / 1000.0);
    let total = report.results.len();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"megaplan test\" tests=\"{total}\" failures=\"{}\" errors=\"0\" time=\"{}\">",
        report.failed,
        secs(report.duration_ms)
    );
    let _ = writeln!(
        x,
        "  <testsuite name=\"{}\" tests=\"{total}\" failures=\"{}\" errors=\"0\" skipped=\"0\" time=\"{}\">",
        xml(&report.experiment),
        report.failed,
        secs(report.duration_ms)
    );
    for r in &report.results {
        let _ = write!(
            x,
            "    <testcase classname=\"megaplan.{}\" name=\"{}\" time=\"{}\"",
            xml(&report.experiment),
            xml(&r.name),
            secs(r.duration_ms)
        );
        if r.passed {
            let _ = writeln!(x, ">");
            let _ = writeln!(x, "      <system-out>{}</system-out>", xml(&details(r)));
        } else {
            let _ = writeln!(x, ">");
            let _ = writeln!(
                x,
                "      <failure type=\"check\" message=\"{}\">{}</failure>",
                xml(&r.message),
                xml(&details(r))
            );
        }
        let _ = writeln!(x, "    </testcase>");
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}

/// A markdown table cell: one line, pipes escaped.
fn cell(s: &str) -> String {
    crate::diag::escape(s)
        .replace('|', "\\|")
        .replace('\n', " ")
}

/// The markdown summary for a PR comment: a table, then why each failure failed.
pub fn markdown(report: &Report) -> String {
    let mut m = String::new();
    let total = report.results.len();
    let verdict = if report.all_passed() {
        "✅ passed"
    } else {
        "❌ failed"
    };
    let _ = writeln!(
        m,
        "### megaplan test `{}`: {verdict} ({} of {total} check{} passed)\n",
        cell(&report.experiment),
        report.passed,
        if total == 1 { "" } else { "s" }
    );
    if total == 0 {
        m.push_str("The experiment has no checks.\n");
        return m;
    }
    m.push_str("| | check | result |\n|---|---|---|\n");
    for r in &report.results {
        let _ = writeln!(
            m,
            "| {} | {} | {} |",
            if r.passed { "✅" } else { "❌" },
            cell(&r.name),
            cell(&r.message)
        );
    }
    for r in report.results.iter().filter(|r| !r.passed) {
        let _ = writeln!(
            m,
            "\n<details><summary>Why “{}” failed</summary>\n",
            cell(&r.name)
        );
        m.push_str("```\n");
        m.push_str(&details(r).replace("```", "`\u{200b}``"));
        m.push_str("```\n\n</details>\n");
    }
    m
}

/// The lines `megaplan check`/`test` print as each check finishes.
pub fn line(r: &CheckResult) -> String {
    format!(
        "{} check \"{}\": {}",
        if r.passed { "PASS" } else { "FAIL" },
        crate::diag::escape(&r.name),
        crate::diag::escape(&r.message)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, passed: bool) -> CheckResult {
        CheckResult {
            name: name.into(),
            kind: "ping".into(),
            from: Some("A".into()),
            expect: "pass".into(),
            passed,
            message: if passed {
                "A got a reply".into()
            } else {
                "no reply <&>".into()
            },
            command: "in A: ping -c 1 -W 2 10.0.0.2".into(),
            attempts: 1,
            duration_ms: 1500,
            exit: Some(if passed { 0 } else { 1 }),
            stdout: "out\u{1}put".into(),
            stderr: String::new(),
            matched: None,
            frames: None,
            excerpt: vec![],
        }
    }

    fn sample() -> Report {
        Report {
            version: 1,
            experiment: "x".into(),
            started: 0,
            duration_ms: 3000,
            passed: 1,
            failed: 1,
            results: vec![result("A reaches B", true), result("B | \"C\"", false)],
        }
    }

    #[test]
    fn junit_has_one_testcase_per_check_and_the_failure_says_why() {
        let x = junit(&sample());
        assert_eq!(x.matches("<testcase ").count(), 2);
        assert_eq!(x.matches("<failure ").count(), 1);
        assert!(x.contains("name=\"B | &quot;C&quot;\""));
        assert!(x.contains("message=\"no reply &lt;&amp;&gt;\""));
        assert!(x.contains("command: in A: ping -c 1 -W 2 10.0.0.2"));
        assert!(
            x.contains("out\\u{1}put"),
            "a control character is not XML: {x}"
        );
        assert!(x.contains("tests=\"2\" failures=\"1\""));
    }

    #[test]
    fn markdown_lists_every_check_and_details_failures() {
        let m = markdown(&sample());
        assert!(m.contains("❌ failed (1 of 2 checks passed)"));
        assert!(m.contains("| ✅ | A reaches B | A got a reply |"));
        assert!(m.contains("| ❌ | B \\| \"C\" |"));
        assert_eq!(m.matches("<details>").count(), 1);
        assert!(m.contains("exit: 1"));
    }

    #[test]
    fn report_round_trips_through_the_state_folder() {
        let d = tempfile::tempdir().unwrap();
        let sd = StateDir {
            root: d.path().join("s"),
            experiment: "x".into(),
        };
        assert_eq!(load(&sd).unwrap(), None);
        save(&sd, &sample()).unwrap();
        assert_eq!(load(&sd).unwrap(), Some(sample()));
    }
}
