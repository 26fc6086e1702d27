//! `megaplan test FILE` and `megaplan check FILE`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::report;
use super::run::{self, Report};
use crate::cli::{CliError, load};
use crate::lab::Lab;
use crate::state::StateDir;

fn write_out(path: &Path, body: &str) -> Result<(), CliError> {
    std::fs::write(path, body).map_err(|source| {
        crate::cli::error::Problem::Write {
            path: path.to_path_buf(),
            source,
        }
        .into()
    })
}

/// Run every check against the experiment as it runs now; write checks.json
/// (and the JUnit/markdown files asked for); print one line per check.
fn run_and_report(
    lab: &mut Lab,
    sd: &StateDir,
    junit: Option<&Path>,
    markdown: Option<&Path>,
) -> Result<Report, CliError> {
    let door = crate::cli::door::Door::open(lab)?;
    let lab = &*lab;
    let r = door.block_on(run::run_all(&door.provider, lab, sd, &|r| {
        println!("{}", report::line(r))
    }));
    finish(lab, sd, &r, junit, markdown)?;
    Ok(r)
}

fn finish(
    lab: &Lab,
    sd: &StateDir,
    r: &Report,
    junit: Option<&Path>,
    markdown: Option<&Path>,
) -> Result<(), CliError> {
    report::save(sd, r)?;
    if let Some(p) = junit {
        write_out(p, &report::junit(r))?;
    }
    if let Some(p) = markdown {
        write_out(p, &report::markdown(r))?;
    }
    println!(
        "{}: {} of {} check{} passed (results in {})",
        lab.name,
        r.passed,
        r.results.len(),
        if r.results.len() == 1 { "" } else { "s" },
        sd.root.join(run::REPORT_FILE).display()
    );
    Ok(())
}

/// `megaplan check FILE`: the checks against an applied experiment.
pub fn check_cmd(
    file: PathBuf,
    junit: Option<PathBuf>,
    markdown: Option<PathBuf>,
    state_dir: Option<PathBuf>,
) -> Result<ExitCode, CliError> {
    let Ok((_, mut lab)) = load(&file) else {
        return Ok(ExitCode::from(1));
    };
    let sd = StateDir::for_file(&file, &lab.name, state_dir.as_deref());
    crate::owners::check(&lab.name, &sd.root)?;
    let r = run_and_report(&mut lab, &sd, junit.as_deref(), markdown.as_deref())?;
    Ok(if r.all_passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// What `megaplan test` was asked.
pub struct TestArgs {
    pub file: PathBuf,
    pub junit: Option<PathBuf>,
    pub markdown: Option<PathBuf>,
    pub keep: bool,
    pub parallelism: usize,
    pub accel: Option<crate::cli::AccelArg>,
    pub state_dir: Option<PathBuf>,
}

/// `megaplan test FILE`: validate, apply, run every check, report, destroy
/// unless `--keep`; exit 0 only when every check passed (and the lab came
/// up and went away).
pub fn test_cmd(a: TestArgs) -> Result<ExitCode, CliError> {
    let Ok((_, mut lab)) = load(&a.file) else {
        return Ok(ExitCode::from(1));
    };
    let sd = StateDir::for_file(&a.file, &lab.name, a.state_dir.as_deref());
    println!("megaplan test {}: applying", a.file.display());
    let applied = crate::cli::apply_cmd(
        a.file.clone(),
        true,
        a.parallelism,
        a.accel,
        a.state_dir.clone(),
        Vec::new(),
    );
    let applied_ok = matches!(&applied, Ok(c) if *c == ExitCode::SUCCESS);
    let report = if applied_ok {
        println!(
            "megaplan test {}: running {} check(s)",
            a.file.display(),
            lab.checks.len()
        );
        run_and_report(&mut lab, &sd, a.junit.as_deref(), a.markdown.as_deref())
    } else {
        let why = match &applied {
            Err(e) => format!("apply failed: {e}"),
            Ok(_) => "apply failed (see its output)".to_string(),
        };
        eprintln!("error: {why}");
        let r = run::not_run(&lab, &why);
        finish(&lab, &sd, &r, a.junit.as_deref(), a.markdown.as_deref()).map(|()| r)
    };
    let destroyed = if a.keep {
        println!(
            "megaplan test: --keep: the experiment stays up (megaplan destroy {} removes it)",
            a.file.display()
        );
        true
    } else {
        println!("megaplan test {}: destroying", a.file.display());
        let d = crate::cli::destroy_cmd(
            a.file.clone(),
            false,
            false,
            true,
            a.parallelism,
            a.state_dir.clone(),
        );
        match d {
            Ok(c) => c == ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: destroy failed: {e}");
                false
            }
        }
    };
    let report = report?;
    Ok(if applied_ok && report.all_passed() && destroyed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
