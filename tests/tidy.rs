//! Invariants kept by reading the sources, in the manner of rust-analyzer's
//! tidy tests.
//!
//! **The provider is the only door to the machine** (docs/ARCHITECTURE.md):
//! outside the modules in [`DOORS`], no code opens a file, runs a process,
//! opens a socket or calls the kernel itself. Planner, executor, CLI, `cc`,
//! `show` and `serve` ask the provider. The few other modules that must,
//! and for what, are listed in [`EXCEPTIONS`], each with its reason; adding
//! one is a decision made here, in review, not in passing.
//!
//! Test code (a trailing `#[cfg(test)] mod ...`, files named `tests.rs`) is
//! not checked: tests make temporary files.

use std::path::{Path, PathBuf};

/// Modules that are the door (engines, their drivers and clients) or the
/// state store (the state folder, safe file access, owner claims).
const DOORS: &[&str] = &[
    "src/provider/",
    "src/host/",
    "src/drivers/",
    "src/agent/",
    "src/minimega/client.rs",
    "src/minimega/provider",
    "src/minimega/disks.rs",
    // The minimega provider's cc send/recv and captures: files in
    // minimega's file path and the step's `to` folder (w4).
    "src/minimega/cc.rs",
    "src/state.rs",
    "src/safefs.rs",
    "src/owners.rs",
    "src/bin/",
    "src/main.rs",
];

/// What reaches the machine: files, processes, sockets, the kernel.
const FORBIDDEN: &[&str] = &[
    "std::fs",
    "tokio::fs",
    "std::os::unix::fs",
    "File::open",
    "File::create",
    "OpenOptions",
    "read_dir",
    ".exists()",
    ".is_file()",
    ".is_dir()",
    ".metadata()",
    "symlink_metadata",
    "canonicalize",
    "read_link",
    "std::process",
    "tokio::process",
    "std::net",
    "tokio::net",
    "std::os::unix::net",
    "UnixStream",
    "UnixListener",
    "TcpStream",
    "TcpListener",
    "UdpSocket",
    "nix::",
    "libc::",
];

/// Plain values and the process's own exit, not the machine.
const HARMLESS: &[&str] = &[
    "std::process::ExitCode",
    "std::process::exit",
    "std::process::id",
    "std::net::SocketAddr",
    "std::net::IpAddr",
    "std::net::Ipv4Addr",
    "std::net::Ipv6Addr",
];

/// (module path prefix, forbidden use, why it is allowed there).
const EXCEPTIONS: &[(&str, &[&str], &str)] = &[
    (
        "src/diag.rs",
        &[
            "std::fs",
            "std::os::unix::fs",
            "OpenOptions",
            "libc::",
            ".is_file()",
            ".is_dir()",
            ".metadata()",
        ],
        "reads the experiment file (a regular file, bounded)",
    ),
    (
        "src/validate",
        &[".exists()"],
        "warns when a kernel, initrd or send file the experiment names is missing",
    ),
    (
        "src/digest.rs",
        &[
            "std::fs",
            "std::os::unix::fs",
            "File::open",
            "OpenOptions",
            ".is_file()",
            ".metadata()",
        ],
        "hashes the files the experiment names (on this controller) and caches the digests in the state folder",
    ),
    (
        "src/saved.rs",
        &["std::fs", "File::open", "canonicalize"],
        "reads and writes the plan file the user names (`plan --out`), in its folder found without links",
    ),
    (
        "src/image.rs",
        &[
            "std::fs",
            "std::os::unix::fs",
            "File::open",
            "read_dir",
            ".is_file()",
            ".is_dir()",
            ".metadata()",
            "canonicalize",
            "std::process",
        ],
        "`image build` is a tool that makes files from files (and runs helpers: busybox --list-full, ldd)",
    ),
    (
        "src/minimega/cli.rs",
        &[
            "std::fs",
            "File::open",
            "OpenOptions",
            ".exists()",
            ".is_file()",
            ".metadata()",
            "canonicalize",
        ],
        "`import`/`export minimega` read a script and write a file the user names (never over the script)",
    ),
    (
        "src/minimega/export.rs",
        &[".is_file()"],
        "`export minimega` under TCG writes QEMU's absolute path, found on PATH (minimega needs it absolute)",
    ),
    (
        "src/console.rs",
        &[
            "std::fs",
            "File::open",
            "std::os::unix::net",
            "std::net",
            "UnixStream",
            "libc::",
            ".exists()",
        ],
        "attaches the terminal (termios raw mode) to the console socket, or reads the serial log, at the paths the provider names",
    ),
    (
        "src/serve/mod.rs",
        &[
            "tokio::net",
            "TcpListener",
            "TcpStream",
            "std::fs",
            "std::os::unix::fs",
            "OpenOptions",
            "libc::",
            ".is_file()",
            "tokio::process",
            "std::process",
            ".metadata()",
            "tokio::fs",
        ],
        "is an HTTP server; reads its token file and serves capture files; an action runs this megaplan binary, whose provider is the door",
    ),
    (
        "src/cli/mod.rs",
        &["libc::"],
        "getrusage for its own CPU time",
    ),
    (
        "src/apply.rs",
        &["libc::"],
        "fault injection for the crash tests (MEGAPLAN_TEST_CRASH_*: SIGKILL itself)",
    ),
    (
        "src/capture/",
        &[
            "std::fs",
            "read_dir",
            ".is_file()",
            ".metadata()",
            "symlink_metadata",
            "std::process",
            "libc::",
        ],
        "packet captures run on this host (issue 16); to move behind the provider",
    ),
    (
        "src/check/cli.rs",
        &["std::fs"],
        "`megaplan test --junit/--markdown` write the report files the user names",
    ),
];

/// The code of a source file that is not test code.
fn non_test(text: &str) -> Vec<(usize, &str)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim();
        if t == "#[cfg(test)]" {
            let next = lines[i + 1..]
                .iter()
                .map(|l| l.trim())
                .find(|l| !l.is_empty());
            match next {
                // An inline test module: the rest of the file (by convention, last).
                Some(n) if n.starts_with("mod ") && n.ends_with('{') => break,
                _ => {}
            }
        }
        if !t.starts_with("//") {
            out.push((i + 1, lines[i]));
        }
        i += 1;
    }
    out
}

/// Split `s` at its top-level commas (not inside `{}`).
fn top_level_items(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// Every path a use tree names, with `prefix` before it:
/// `std::{fs, os::unix::{fs::PermissionsExt, net}}` names `std::fs`,
/// `std::os::unix::fs::PermissionsExt` and `std::os::unix::net`.
fn use_paths(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    if tree.is_empty() {
        return;
    }
    if let Some(inner) = tree.strip_prefix('{') {
        let inner = inner.strip_suffix('}').unwrap_or(inner);
        for item in top_level_items(inner) {
            use_paths(prefix, item, out);
        }
    } else if let Some(at) = tree.find("::{") {
        let head = &tree[..at];
        use_paths(&format!("{prefix}{head}::"), &tree[at + 2..], out);
    } else {
        let leaf = tree.split(" as ").next().unwrap_or(tree).trim();
        // `fs::{self}` names `fs` itself.
        let leaf = leaf.strip_suffix("::self").unwrap_or(leaf);
        if leaf == "self" {
            out.push(prefix.trim_end_matches("::").to_string());
        } else {
            out.push(format!("{prefix}{leaf}"));
        }
    }
}

/// The code to check, one entry per statement line: a `use` split over
/// lines is joined (at its first line) and followed by every path it
/// names, so `use std::{\n    fs,\n};` names `std::fs`.
fn logical_lines(text: &str) -> Vec<(usize, String, String)> {
    let mut out = Vec::new();
    let lines = non_test(text);
    let mut i = 0;
    while i < lines.len() {
        let (n, line) = lines[i];
        let t = line.trim();
        let is_use = ["use ", "pub use ", "pub(crate) use ", "pub(super) use "]
            .iter()
            .any(|p| t.starts_with(p));
        if !is_use {
            out.push((n, t.to_string(), t.to_string()));
            i += 1;
            continue;
        }
        let mut stmt = t.to_string();
        while !stmt.contains(';') && i + 1 < lines.len() {
            i += 1;
            stmt.push(' ');
            stmt.push_str(lines[i].1.trim());
        }
        i += 1;
        let tree = stmt.split_once("use ").map_or("", |(_, r)| r);
        let tree = tree.split(';').next().unwrap_or(tree);
        let mut paths = Vec::new();
        use_paths("", tree, &mut paths);
        let mut checked = stmt.clone();
        for p in paths {
            checked.push(' ');
            checked.push_str(&p);
        }
        out.push((n, stmt, checked));
    }
    out
}

/// `needle` in `hay` where it starts a path (`nix::` is not in `unix::`).
fn uses(hay: &str, needle: &str) -> bool {
    hay.match_indices(needle).any(|(i, _)| {
        needle.starts_with('.')
            || !hay[..i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

/// The forbidden uses in one file's non-test code, not allowed by an
/// exception: "path:line: use (the line)".
pub fn violations(path: &str, text: &str) -> Vec<String> {
    if DOORS.iter().any(|d| path.starts_with(d)) || path.ends_with("/tests.rs") {
        return Vec::new();
    }
    let allowed: Vec<&str> = EXCEPTIONS
        .iter()
        .filter(|(p, _, _)| path.starts_with(p))
        .flat_map(|(_, uses, _)| uses.iter().copied())
        .collect();
    let mut out = Vec::new();
    for (n, line, checked) in logical_lines(text) {
        let l = harmless_removed(&checked);
        for f in FORBIDDEN {
            if uses(&l, f) && !allowed.contains(f) {
                out.push(format!("{path}:{n}: {f}: {line}"));
            }
        }
    }
    out
}

/// `line` without the plain values [`HARMLESS`] names.
fn harmless_removed(line: &str) -> String {
    let mut l = line.to_string();
    for h in HARMLESS {
        l = l.replace(h, "");
    }
    l
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn the_provider_is_the_only_door_to_the_machine() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    files.sort();
    assert!(files.len() > 30, "found only {} sources", files.len());
    let mut bad = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        bad.extend(violations(&rel, &std::fs::read_to_string(f).unwrap()));
    }
    assert!(
        bad.is_empty(),
        "outside the provider, these reach the machine themselves (go through the provider, \
         or add a reasoned exception in tests/tidy.rs):\n{}",
        bad.join("\n")
    );
}

#[test]
fn every_exception_is_still_needed() {
    // An exception nothing uses any more is a door left open: remove it.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    for (prefix, names, why) in EXCEPTIONS {
        let texts: Vec<String> = files
            .iter()
            .filter(|f| {
                f.strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(prefix)
            })
            .map(|f| std::fs::read_to_string(f).unwrap())
            .collect();
        if texts.is_empty() {
            // A sibling branch's module, not merged here yet.
            continue;
        }
        for u in *names {
            let used = texts.iter().any(|t| {
                logical_lines(t)
                    .iter()
                    .any(|(_, _, l)| uses(&harmless_removed(l), u))
            });
            assert!(used, "{prefix}: `{u}` is no longer used ({why}): drop it");
        }
    }
}

#[test]
fn the_checker_finds_a_planted_use() {
    // A planner that reads a file is caught, with its line.
    let planted = "pub fn plan() {\n    let x = std::fs::read(\"/etc/passwd\");\n}\n";
    assert_eq!(
        violations("src/plan/mod.rs", planted),
        ["src/plan/mod.rs:2: std::fs: let x = std::fs::read(\"/etc/passwd\");"]
    );
    // A grouped import is seen through; so are sockets and processes.
    let grouped = "use std::{fs, io};\nuse tokio::net::UnixStream;\nfn f() { tokio::process::Command::new(\"x\"); }\n";
    let v = violations("src/plan/mod.rs", grouped);
    assert_eq!(v.len(), 4, "{v:?}");
    assert!(v[0].contains("std::fs") && v[1].contains("tokio::net") && v[2].contains("UnixStream"));
    assert!(v[3].contains("tokio::process"));
    // A group split over lines, nested groups and `self` are seen through,
    // at the line the `use` starts on.
    let multi = "use std::{\n    collections::HashMap,\n    fs,\n};\nfn f() {}\n";
    assert_eq!(
        violations("src/plan/mod.rs", multi),
        ["src/plan/mod.rs:1: std::fs: use std::{ collections::HashMap, fs, };"]
    );
    let nested = "pub use std::{io::{self, Read}, os::unix::{ffi::OsStrExt, net::UnixStream as S}};
";
    let v = violations("src/plan/mod.rs", nested);
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(v[0].contains(": std::os::unix::net:") && v[1].contains(": UnixStream:"));
    let selfs = "use std::fs::{self as f};
use tokio::{
    fs,
    sync::Mutex,
};
";
    let v = violations("src/apply/walk.rs", selfs);
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(v[0].starts_with("src/apply/walk.rs:1: std::fs:"), "{v:?}");
    assert!(v[1].starts_with("src/apply/walk.rs:2: tokio::fs:"), "{v:?}");
    // A group below the root: `std::os::unix::{fs::symlink}` and
    // `std::{fs::{File}}` are `std::os::unix::fs` and `std::fs`.
    let deep = "use std::os::unix::{ffi::OsStrExt, fs::symlink};\nuse std::{fs::{File}, io};\n";
    let v = violations("src/validate/mod.rs", deep);
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(
        v[0].starts_with("src/validate/mod.rs:1: std::os::unix::fs:"),
        "{v:?}"
    );
    assert!(v[1].starts_with("src/validate/mod.rs:2: std::fs:"), "{v:?}");
    // File facts without `std::fs` in sight are file access too.
    for planted in [
        "let m = p.metadata();",
        "let m = p.symlink_metadata();",
        "let c = p.canonicalize();",
        "let t = p.read_link();",
        "let b = tokio::fs::read(p).await;",
    ] {
        assert_eq!(
            violations("src/cli/mod.rs", &format!("{planted}\n")).len(),
            1,
            "{planted}"
        );
    }
    // Plain `use` lines that name nothing of the machine pass.
    assert!(
        violations(
            "src/plan/mod.rs",
            "use std::{\n    io::Write,\n    path::Path,\n};\n"
        )
        .is_empty()
    );
    // The CLI's exceptions are narrow: libc for getrusage, but no sockets.
    assert!(violations("src/cli/mod.rs", "let r = libc::getrusage(0, p);\n").is_empty());
    assert_eq!(
        violations(
            "src/cli/mod.rs",
            "let s = std::os::unix::net::UnixStream::connect(p);\n"
        )
        .len(),
        2
    );
    // Doors and test code are not checked; comments are not code.
    assert!(violations("src/host/local.rs", planted).is_empty());
    let with_tests = "fn f() {}\n#[cfg(test)]\nmod tests {\n    fn t() { std::fs::write(\"x\", \"\").unwrap(); }\n}\n";
    assert!(violations("src/plan/mod.rs", with_tests).is_empty());
    assert!(violations("src/plan/mod.rs", "// std::fs is not used here\n").is_empty());
    // `nix::` is a crate, not the end of `unix::`.
    assert!(violations("src/plan/mod.rs", "use std::os::unix::ffi::OsStrExt;\n").is_empty());
    // The exit code type and the process's own pid are not the machine.
    assert!(
        violations(
            "src/plan/mod.rs",
            "use std::process::ExitCode;\nlet p = std::process::id();\n"
        )
        .is_empty()
    );
}

/// What a CLI (src/cli/ and every `src/**/cli.rs`) may name of minimega's
/// modules: the engine enum the door opens, the `--provider` arguments and
/// their override, the error types its hints look at, which engine a state
/// records (`recorded`: pure, over the state), and the script tools (`cli`,
/// `import`, `export`; `disks::stage` writes a script's files into the folder
/// the user names, reaching no cluster). Anything else (a hook after
/// destroy, a capture's file, the engine's rules or names) is asked of the
/// provider through the trait.
const CLI_MINIMEGA: &[(&str, &[&str])] = &[
    (
        "provider",
        &[
            "Engine",
            "ProviderArgs",
            "set_override",
            "apply_override",
            "MinimegaError",
        ],
    ),
    (
        "recorded",
        &["reconcile", "recheck", "record", "EngineError"],
    ),
    ("client", &["ClientError"]),
    ("cc", &["CcError"]),
    ("disks", &["FilesError", "stage"]),
    ("cli", &["*"]),
    ("import", &["*"]),
    ("export", &["*"]),
];

/// The CLI's calls into minimega's modules that [`CLI_MINIMEGA`] does not
/// allow: `crate::minimega::M::N`, and in src/minimega/ `super::M::N`.
pub fn engine_calls(path: &str, text: &str) -> Vec<String> {
    let mut prefixes = vec!["minimega::"];
    if path.starts_with("src/minimega/") {
        prefixes.push("super::");
    }
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    for (n, line) in non_test(text) {
        for p in &prefixes {
            for (i, _) in line.match_indices(p) {
                // `super::` of `crate::minimega::super::` is not a path start.
                if line[..i].ends_with("::") && *p == "super::" {
                    continue;
                }
                let rest = &line[i + p.len()..];
                let module = ident(rest);
                let Some(after) = rest[module.len()..].strip_prefix("::") else {
                    // `super::import(..)`: a function of minimega's root
                    // module (the script tools).
                    continue;
                };
                let name = ident(after);
                let allowed = CLI_MINIMEGA.iter().any(|(m, names)| {
                    *m == module && (names.contains(&"*") || names.contains(&name.as_str()))
                });
                if !allowed {
                    out.push(format!("{path}:{n}: {module}::{name}: {}", line.trim()));
                }
            }
        }
    }
    out
}

/// Every CLI source: src/cli/ and each `src/**/cli.rs`.
fn cli_sources(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    files.retain(|f| {
        let rel = f.strip_prefix(root).unwrap();
        rel.starts_with("src/cli") || rel.file_name().is_some_and(|n| n == "cli.rs")
    });
    files.sort();
    files
}

#[test]
fn the_cli_asks_the_provider_not_an_engine() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = cli_sources(root);
    for must in [
        "src/cli/mod.rs",
        "src/capture/cli.rs",
        "src/minimega/cli.rs",
    ] {
        assert!(
            files.iter().any(|f| f.ends_with(must)),
            "{must} is not scanned: {files:?}"
        );
    }
    let mut bad = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        bad.extend(engine_calls(&rel, &std::fs::read_to_string(f).unwrap()));
    }
    assert!(
        bad.is_empty(),
        "the CLI calls an engine directly (add a `Provider` method instead):\n{}",
        bad.join("\n")
    );
    // The checker sees a planted call, in src/cli/ and in any cli.rs.
    let planted = "fn f(lab: &Lab) {\n    crate::minimega::provider::after_destroy(lab)?;\n}\n";
    assert_eq!(
        engine_calls("src/cli/x.rs", planted),
        [
            "src/cli/x.rs:2: provider::after_destroy: crate::minimega::provider::after_destroy(lab)?;"
        ]
    );
    let fetch = "fn f() {\n    crate::minimega::captures::fetch_for_cli(&lab, c, &sd)?;\n}\n";
    assert_eq!(engine_calls("src/capture/cli.rs", fetch).len(), 1);
    // Inside src/minimega/, `super::` is minimega itself.
    let own = "fn f() {\n    super::captures::fetch(&h, c, &sd);\n    super::export::exported(&lab, &o);\n    super::import(&src, &o);\n}\n";
    let v = engine_calls("src/minimega/cli.rs", own);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(
        v[0].starts_with("src/minimega/cli.rs:2: captures::fetch:"),
        "{v:?}"
    );
    assert!(engine_calls("src/cli/x.rs", "use crate::minimega::provider::Engine;\n").is_empty());
    assert!(
        engine_calls(
            "src/cli/x.rs",
            "crate::minimega::recorded::reconcile(l, s, p)?;\n"
        )
        .is_empty()
    );
}
