//! Drivers: one module per host mechanism.
//!
//! `runtime` (the runtime folder layout) and `process` (pidfiles, liveness,
//! pidfd waits, SIGKILL) are leaves that `qemu` and `qmp` both use; `qemu` and
//! `qmp` do not use each other (see the `layering` test below).
pub mod netlink;
pub mod process;
pub mod qemu;
pub mod qemu_img;
pub mod qmp;
pub mod runtime;
pub mod tc;

#[cfg(test)]
mod layering {
    //! Keeps the driver layering of issue 13: `qemu` and `qmp` do not use each
    //! other; `process` uses only `runtime`; `runtime` uses nothing of the crate.

    const QEMU: &str = include_str!("qemu.rs");
    const QMP: &str = include_str!("qmp.rs");
    const PROCESS: &str = include_str!("process.rs");
    const RUNTIME: &str = include_str!("runtime.rs");

    /// The other modules of the crate that `src` names (`crate::x`, `super::x`,
    /// `drivers::x`), `super::*` in a test module aside.
    fn uses(src: &str) -> Vec<String> {
        let mut found = Vec::new();
        for prefix in ["crate::", "super::", "drivers::"] {
            for (i, _) in src.match_indices(prefix) {
                let rest = &src[i + prefix.len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '*')
                    .collect();
                if name != "*" {
                    found.push(format!("{prefix}{name}"));
                }
            }
        }
        found
    }

    /// True when a non-comment line of `src` names the module `driver`
    /// (`driver::x`, `super::driver`, `drivers::driver`, `super::{.., driver}`).
    fn names_driver(src: &str, driver: &str) -> bool {
        src.lines()
            .map(str::trim_start)
            .filter(|l| !l.starts_with("//"))
            .any(|l| {
                l.match_indices(driver).any(|(i, _)| {
                    let (before, after) = (&l[..i], &l[i + driver.len()..]);
                    let whole = !before
                        .chars()
                        .next_back()
                        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                        && !after
                            .chars()
                            .next()
                            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
                    whole
                        && (after.starts_with("::")
                            || before.ends_with("super::")
                            || before.ends_with("drivers::")
                            || before.contains("super::{")
                            || before.contains("drivers::{"))
                })
            })
    }

    #[test]
    fn qmp_does_not_use_qemu() {
        assert!(!names_driver(QMP, "qemu"), "qmp.rs uses the qemu driver");
    }

    #[test]
    fn qemu_does_not_use_qmp() {
        assert!(!names_driver(QEMU, "qmp"), "qemu.rs uses the qmp driver");
    }

    #[test]
    fn process_uses_only_runtime() {
        let bad: Vec<_> = uses(PROCESS)
            .into_iter()
            .filter(|u| u != "super::runtime")
            .collect();
        assert!(bad.is_empty(), "process.rs uses {bad:?}");
    }

    #[test]
    fn runtime_is_a_leaf() {
        let bad = uses(RUNTIME);
        assert!(bad.is_empty(), "runtime.rs uses {bad:?}");
    }

    #[test]
    fn the_checks_see_a_violation() {
        assert!(names_driver("use super::qemu::PIDFILE_NAME;", "qemu"));
        assert!(names_driver("    super::qmp::process_alive(pid)", "qmp"));
        assert!(names_driver("use crate::drivers::qmp;", "qmp"));
        assert!(!names_driver("// see qmp::Qmp\nfn f() {}", "qmp"));
        assert_eq!(uses("use crate::model::Vm;"), ["crate::model"]);
        assert_eq!(uses("use super::qemu;"), ["super::qemu"]);
        assert!(uses("mod tests { use super::*; }").is_empty());
        assert!(names_driver("use super::{process, qmp};", "qmp"));
        assert!(!names_driver("use super::qemu_img::ImageFormat;", "qemu"));
        assert!(!names_driver("let qmp = Qmp::connect(&p);", "qmp"));
    }
}
