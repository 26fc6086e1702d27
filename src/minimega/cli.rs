//! `megaplan import minimega` and `megaplan export minimega`: the subcommands
//! and their dispatch (src/cli/mod.rs only names them).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use crate::cli::error::Problem;
use crate::cli::{CliError, SyntaxArg, load, print_diagnostics};
use crate::diag::{SourceFile, Syntax};

/// The largest script import reads (minimega scripts are a few KiB).
pub const MAX_SCRIPT: u64 = 16 << 20;

#[derive(Subcommand, Debug)]
pub enum ImportCommand {
    /// A minimega script as an experiment file (docs/minimega.md).
    Minimega {
        script: PathBuf,
        /// The experiment's name (default: the script's `namespace`, else its file name).
        #[arg(long)]
        name: Option<String>,
        /// The syntax to write (default: from -o's extension, else KDL).
        #[arg(long, value_enum)]
        to: Option<SyntaxArg>,
        /// Write here instead of to stdout.
        #[arg(short = 'o', long = "out")]
        out: Option<PathBuf>,
        /// Commands without a megaplan equivalent are errors, not warnings.
        #[arg(long)]
        strict: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ExportCommand {
    /// The experiment as a minimega script (docs/minimega.md).
    Minimega {
        file: PathBuf,
        /// Write here instead of to stdout.
        #[arg(short = 'o', long = "out")]
        out: Option<PathBuf>,
        /// The accelerator, over MEGAPLAN_ACCEL and the file's `accel`: with
        /// tcg every VM gets `vm config qemu QEMU` and `vm config cpu qemu64`.
        #[arg(long, value_enum)]
        accel: Option<crate::cli::AccelArg>,
        /// The absolute path of QEMU on the minimega nodes, for TCG
        /// (default: qemu-system-x86_64 on this PATH, else /usr/bin's).
        #[arg(long)]
        qemu: Option<PathBuf>,
        /// Write the files the script names in minimega's file path (boot
        /// files and base images by digest, disks megaplan's mkfs makes)
        /// under this folder: minimega's -filepath on the node reading the
        /// script, or a folder to copy there.
        #[arg(long, value_name = "DIR")]
        stage: Option<PathBuf>,
    },
}

fn errors_found(what: &Path, n: usize) {
    eprintln!(
        "{}: {n} error{} found",
        what.display(),
        if n == 1 { "" } else { "s" }
    );
}

fn read_script(path: &Path) -> Result<SourceFile, CliError> {
    let cannot = |source: std::io::Error| -> CliError {
        Problem::Read {
            path: path.to_path_buf(),
            source,
        }
        .into()
    };
    let not_a_script = |why: String| -> CliError {
        Problem::NotAScript {
            path: path.to_path_buf(),
            why,
        }
        .into()
    };
    let f = std::fs::File::open(path).map_err(cannot)?;
    let meta = f.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(not_a_script("not a regular file".into()));
    }
    if meta.len() > MAX_SCRIPT {
        return Err(not_a_script(format!(
            "larger than {} MiB",
            MAX_SCRIPT >> 20
        )));
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_SCRIPT + 1), &mut bytes)
        .map_err(cannot)?;
    let text = String::from_utf8(bytes).map_err(|_| not_a_script("not UTF-8 text".into()))?;
    Ok(SourceFile::new(path, text))
}

/// Write `text` to `out` through a new temporary file and a rename, so a
/// link at `out` is replaced, never followed, and a reader never sees half.
fn write_out(out: &Path, text: &str) -> Result<(), CliError> {
    let fail = |source: std::io::Error| -> CliError {
        Problem::Write {
            path: out.to_path_buf(),
            source,
        }
        .into()
    };
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out.file_name().ok_or_else(|| Problem::NotAFileName {
        path: out.to_path_buf(),
    })?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(fail)?;
    let r = f
        .write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .and_then(|_| std::fs::rename(&tmp, out));
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(e));
    }
    Ok(())
}

pub fn import_cmd(cmd: ImportCommand) -> Result<ExitCode, CliError> {
    let ImportCommand::Minimega {
        script,
        name,
        to,
        out,
        strict,
    } = cmd;
    if let Some(n) = &name
        && let Some(p) = crate::validate::name_problem(n)
    {
        return Err(Problem::BadName {
            flag: "--name",
            value: n.clone(),
            why: p,
        }
        .into());
    }
    if let Some(o) = &out
        && std::fs::canonicalize(o).ok() == std::fs::canonicalize(&script).ok()
        && o.exists()
    {
        return Err(Problem::OutputIsInput { out: o.clone() }.into());
    }
    let src = read_script(&script)?;
    let imported = super::import(&src, &super::Options { name, strict });
    print_diagnostics(&imported.diags, &src);
    if imported.diags.has_errors() {
        errors_found(&script, imported.diags.errors().count());
        return Ok(ExitCode::from(1));
    }
    let syntax = match (to, &out) {
        (Some(SyntaxArg::Kdl), _) => Syntax::Kdl,
        (Some(SyntaxArg::Toml), _) => Syntax::Toml,
        (None, Some(o)) => SourceFile::new(o, "").syntax(),
        (None, None) => Syntax::Kdl,
    };
    if let Some(o) = &out
        && SourceFile::new(o, "").syntax() != syntax
    {
        return Err(Problem::ExtensionMismatch {
            out: o.clone(),
            to: if syntax == Syntax::Toml {
                "toml"
            } else {
                "kdl"
            },
        }
        .into());
    }
    let text = imported.render(syntax);
    // Validate what we write, where it will be read from.
    let shown = out.clone().unwrap_or_else(|| {
        let ext = if syntax == Syntax::Toml {
            "toml"
        } else {
            "kdl"
        };
        script.with_extension(ext)
    });
    let generated = SourceFile::new(&shown, text.clone());
    let (lab, mut diags) = crate::validate::check(&generated);
    if out.is_none() {
        // Missing-file warnings about a file that is not written are noise.
        diags.items.retain(|d| d.is_error());
    }
    if lab.is_none() {
        eprintln!(
            "the experiment imported from {} does not validate (nothing written):",
            script.display()
        );
        // The document carries the script's spans: the same checks, located
        // in the script, when every error has a place there.
        let (_, mut in_script) = crate::validate::validate(&imported.doc, &src);
        in_script.items.retain(|d| d.is_error());
        in_script.sort();
        let located = !in_script.is_empty()
            && in_script
                .items
                .iter()
                .all(|d| d.labels.first().is_some_and(|l| !l.span.is_empty()));
        if located {
            print_diagnostics(&in_script, &src);
            errors_found(&script, in_script.items.len());
        } else {
            print_diagnostics(&diags, &generated);
            errors_found(&shown, diags.errors().count());
        }
        return Ok(ExitCode::from(1));
    }
    print_diagnostics(&diags, &generated);
    match &out {
        Some(o) => {
            write_out(o, &text)?;
            let warnings = imported.diags.warnings().count();
            eprintln!(
                "Imported {} into {}{}",
                script.display(),
                o.display(),
                if warnings == 0 {
                    String::new()
                } else {
                    format!(
                        " ({warnings} command{} skipped)",
                        if warnings == 1 { "" } else { "s" }
                    )
                }
            );
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn export_cmd(cmd: ExportCommand) -> Result<ExitCode, CliError> {
    let ExportCommand::Minimega {
        file,
        out,
        accel,
        qemu,
        stage,
    } = cmd;
    // minimega resolves paths against its own folders: give it absolute ones.
    let file = std::path::absolute(&file).unwrap_or(file);
    if let Some(q) = &qemu
        && !q.is_absolute()
    {
        return Err(Problem::RelativeQemu { path: q.clone() }.into());
    }
    let env = std::env::var(crate::drivers::qemu::ACCEL_ENV).ok();
    let env = crate::drivers::qemu::parse_accel_env(env.as_deref()).map_err(|_| {
        Problem::BadAccelEnv {
            var: crate::drivers::qemu::ACCEL_ENV,
            value: crate::diag::escape(env.as_deref().unwrap_or_default()).to_string(),
        }
    })?;
    let Ok((_, lab)) = load(&file) else {
        return Ok(ExitCode::from(1));
    };
    use crate::cli::AccelArg;
    use crate::drivers::qemu::AccelChoice;
    // The script runs on minimega's nodes: nothing here is probed.
    let tcg = match accel {
        Some(a) => a == AccelArg::Tcg,
        None if env != AccelChoice::Auto => env == AccelChoice::Tcg,
        None => lab.accel == crate::lab::Accel::Tcg,
    };
    let qemu = qemu.unwrap_or_else(|| {
        crate::minimega::export::on_path(crate::drivers::qemu::QEMU_BINARY)
            .unwrap_or_else(|| PathBuf::from(super::export::DEFAULT_QEMU))
    });
    let exported = super::export::exported(&lab, &super::export::Options { tcg, qemu });
    if let Some(dir) = &stage {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Problem::Runtime)?;
        rt.block_on(super::disks::stage(dir, &lab.name, &exported.files))
            .map_err(|source| Problem::Stage {
                dir: dir.clone(),
                source,
            })?;
        eprintln!(
            "Staged {} file{} under {}",
            exported.files.len(),
            if exported.files.len() == 1 { "" } else { "s" },
            dir.display()
        );
    }
    let script = exported.script;
    match &out {
        Some(o) => write_out(o, &script)?,
        None => print!("{script}"),
    }
    Ok(ExitCode::SUCCESS)
}
