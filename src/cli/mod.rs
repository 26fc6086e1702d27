//! The command line: parses arguments, calls the library, maps errors to exit
//! codes and hints.
//!
//! Invariants:
//! - Exit codes are decided in one place, `error::ErrorKind::exit_code`
//!   (docs/cli.md has the table): 0 success (or no changes), 1 a user or
//!   host error, 2 changes with `plan --detailed-exitcode`, 3 a conflict
//!   (locked, or the name is another state folder's), 4 drift (a saved plan
//!   is stale), 5 the machine lacks a prerequisite, 70 a bug.
//! - User-input problems are rendered as miette diagnostics, all at once;
//!   other failures as one `error:` line plus a `hint:` line per hint, the
//!   hints chosen from the error's type (`error.rs`), never from its text.

pub(crate) mod door;
pub mod error;
use door::Door;
pub use error::{CliError, CommandError, ErrorKind, Problem};

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::diag::{Diagnostics, SourceFile, Syntax};
use crate::lab::Lab;
use crate::plan::{self, Mode, Plan, render};
use crate::state::{State, StateDir};

// `print!`/`println!` for this module: a closed stdout (`megaplan schema |
// head -1`) ends the process quietly instead of panicking.
macro_rules! print {
    ($($t:tt)*) => { write_stdout(format_args!($($t)*)) };
}
macro_rules! println {
    () => { write_stdout(format_args!("\n")) };
    ($($t:tt)*) => { write_stdout(format_args!("{}\n", format_args!($($t)*))) };
}

/// Write to stdout; on a broken pipe exit 0 at once (the reader has gone),
/// on another error exit 1 saying so.
fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        stdout_failed(e);
    }
}

/// Stream generated output (a plan, a man page) to stdout through a buffer,
/// with `write_stdout`'s handling of a closed pipe or another error.
fn stream_stdout(
    f: impl FnOnce(&mut std::io::BufWriter<std::io::StdoutLock<'static>>) -> std::io::Result<()>,
) {
    use std::io::Write;
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    if let Err(e) = f(&mut out).and_then(|()| out.flush()) {
        stdout_failed(e);
    }
}

/// stdout could not be written: the reader has gone (a broken pipe, exit 0
/// at once), or another error (say so, exit 1).
fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: cannot write to stdout: {e}");
    std::process::exit(1);
}

#[derive(Parser, Debug)]
#[command(name = "megaplan", version, about = "Declarative VM network experiments, minimega-style", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum DiffFormat {
    Text,
    Json,
    Markdown,
}

/// `--accel`: the accelerator, over `MEGAPLAN_ACCEL` and the file's `accel`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum AccelArg {
    Auto,
    Kvm,
    Tcg,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum GraphFormat {
    Dot,
    Svg,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum SyntaxArg {
    Kdl,
    Toml,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Parse and check an experiment file; every error at once.
    Validate { file: PathBuf },
    /// Show what apply would change, against live state.
    Plan {
        file: PathBuf,
        /// Emit the plan as JSON (docs/plan-json.md).
        #[arg(long)]
        json: bool,
        /// Save the plan for `megaplan apply PLAN`.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Exit 0 for no changes, 1 on error, 2 when there are changes.
        #[arg(long)]
        detailed_exitcode: bool,
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Plan to replace ADDRESS even if nothing changed; repeatable (`-replace` works too).
        #[arg(long = "replace", value_name = "ADDRESS")]
        replace: Vec<String>,
        #[command(flatten)]
        provider: crate::minimega::provider::ProviderArgs,
    },
    /// The resource-level difference between two experiment files.
    Diff {
        old: PathBuf,
        new: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        format: DiffFormat,
    },
    /// The dependency graph as DOT, or the topology drawn as SVG (VMs in a
    /// box per host when the state records several).
    Graph {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "dot")]
        format: GraphFormat,
        /// Where the state is (for the hosts the VMs run on).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[command(flatten)]
        provider: crate::minimega::provider::ProviderArgs,
    },
    /// A live web view of the experiment (loopback unless --token); read-only
    /// unless --allow-actions.
    Serve {
        file: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Every request must carry it (Authorization: Bearer, or ?token=); needed off
        /// loopback. Other local users can read a command line: prefer --token-file.
        #[arg(
            long,
            env = "MEGAPLAN_SERVE_TOKEN",
            hide_env_values = true,
            conflicts_with = "token_file"
        )]
        token: Option<String>,
        /// Read the token from this file (one line).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Offer apply, destroy (of this experiment) and cc exec on the page,
        /// each a POST carrying the token (needed even on loopback).
        #[arg(long)]
        allow_actions: bool,
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[command(flatten)]
        provider: crate::minimega::provider::ProviderArgs,
    },
    /// The same experiment in the other syntax.
    Convert {
        file: PathBuf,
        #[arg(long, value_enum)]
        to: SyntaxArg,
    },
    /// Print the JSON Schema of the experiment language.
    Schema,
    /// Carry out the plan: create, update, replace and destroy until the host matches the file.
    Apply {
        /// An experiment file, or a plan saved with `plan --out`.
        file: PathBuf,
        #[arg(long)]
        auto_approve: bool,
        /// How many host operations (links, disks, QEMU launches, mirrors) run at once; cc steps are not counted.
        #[arg(long, default_value_t = 10)]
        parallelism: usize,
        /// The accelerator: overrides MEGAPLAN_ACCEL and the file's `accel`.
        #[arg(long, value_enum)]
        accel: Option<AccelArg>,
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Replace ADDRESS (`vm.A`, `vm.A.cc[0]`...) even if nothing changed; repeatable; `-replace` as in Terraform works too.
        #[arg(long = "replace", value_name = "ADDRESS")]
        replace: Vec<String>,
        #[command(flatten)]
        provider: crate::minimega::provider::ProviderArgs,
    },
    /// Remove everything the experiment created, in reverse order.
    Destroy {
        file: PathBuf,
        /// Also remove disks marked keep=#true.
        #[arg(long)]
        all: bool,
        /// Show what would be destroyed, change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        auto_approve: bool,
        #[arg(long, default_value_t = 10)]
        parallelism: usize,
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[command(flatten)]
        provider: crate::minimega::provider::ProviderArgs,
    },
    /// Command and control: run commands in guests, read step results.
    Cc {
        #[command(subcommand)]
        command: CcCommand,
    },
    /// Disks after the experiment.
    Disk {
        #[command(subcommand)]
        command: DiskCommand,
    },
    /// Live state as a table (like minimega's `.columns name,tap vm info`).
    Show {
        file: PathBuf,
        /// Comma-separated: name,state,uuid,pid,tap,bridge,mac,ip,disks,memory,vcpus,tags,cc
        /// (default: all but disks and cc; every column with --json)
        #[arg(long, value_delimiter = ',')]
        columns: Vec<String>,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[command(flatten)]
        provider: crate::minimega::provider::ProviderArgs,
    },
    /// Guest images: `image build` makes a cc-enabled kernel + initrd.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// A guest's serial console: attach (type into it; Ctrl-] detaches), or
    /// print its serial log.
    Console {
        file: PathBuf,
        vm: String,
        /// Print the serial log and follow it as it grows instead of attaching.
        #[arg(long)]
        follow: bool,
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Shell completions for bash, zsh or fish, on stdout.
    Completions {
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// The man page (roff) on stdout, or with --out-dir every page
    /// (megaplan.1, megaplan-apply.1, …) written into that folder.
    #[command(hide = true)]
    Man {
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// The state folder: `state restore-backup` puts the previous state.json back.
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
    /// Another tool's experiment as an experiment file: `import minimega SCRIPT`.
    Import {
        #[command(subcommand)]
        command: crate::minimega::cli::ImportCommand,
    },
    /// The experiment for another tool: `export minimega FILE`.
    Export {
        #[command(subcommand)]
        command: crate::minimega::cli::ExportCommand,
    },
    /// Validate, apply, run every check, write the reports, destroy (unless
    /// --keep); exit 0 only when every check passed.
    Test {
        file: PathBuf,
        /// Write JUnit XML here (one testcase per check).
        #[arg(long, value_name = "OUT.xml")]
        junit: Option<PathBuf>,
        /// Write a markdown summary here (for a pull-request comment).
        #[arg(long, value_name = "OUT.md")]
        markdown: Option<PathBuf>,
        /// Leave the experiment running afterwards.
        #[arg(long)]
        keep: bool,
        #[arg(long, default_value_t = 10)]
        parallelism: usize,
        #[arg(long, value_enum)]
        accel: Option<AccelArg>,
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Run the checks against an applied experiment (no apply, no destroy).
    Check {
        file: PathBuf,
        #[arg(long, value_name = "OUT.xml")]
        junit: Option<PathBuf>,
        #[arg(long, value_name = "OUT.md")]
        markdown: Option<PathBuf>,
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Captures: `capture list FILE`, `capture path FILE NAME`.
    Capture {
        #[command(subcommand)]
        command: crate::capture::cli::CaptureCommand,
    },
    /// The recorder of a capture (started by apply; not for use by hand).
    #[command(hide = true, name = "capture-record")]
    CaptureRecord {
        #[arg(long)]
        marker: String,
        #[arg(long = "iface", required = true)]
        iface: Vec<String>,
        #[arg(long)]
        dedupe: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Subcommand, Debug)]
pub enum StateCommand {
    /// Replace state.json by state.json.backup (the state before the last write), after checking it.
    RestoreBackup {
        file: PathBuf,
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
}

/// Terraform spells `-replace=ADDRESS` with one dash: accept it as `--replace`.
fn terraform_flags(args: impl IntoIterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    args.into_iter()
        .map(|a| match a.to_str() {
            Some("-replace") => "--replace".into(),
            Some(s) if s.starts_with("-replace=") => format!("-{s}").into(),
            _ => a,
        })
        .collect()
}

/// Exit with the code for an outcome.
pub fn main() -> ExitCode {
    let cli = Cli::parse_from(terraform_flags(std::env::args_os()));
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprint!("{}", e.render());
            ExitCode::from(e.exit_code())
        }
    }
}

/// The exit code for a failure already reported (diagnostics printed, a
/// failed apply summarised): a user or host error.
fn failed() -> ExitCode {
    ExitCode::from(error::exit::FAILURE)
}

/// Claim the experiment's name for this state folder (commands that change the host).
fn claim(experiment: &str, sd: &StateDir) -> Result<(), CliError> {
    if let Some(notice) = crate::owners::claim(experiment, &sd.root)? {
        eprintln!("notice: {notice}");
    }
    Ok(())
}

/// Print diagnostics the way a user reads them: fancy on a terminal, plain otherwise.
pub fn print_diagnostics(diags: &Diagnostics, src: &SourceFile) {
    if diags.is_empty() {
        return;
    }
    if std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
        let handler = miette::GraphicalReportHandler::new();
        eprint!(
            "{}",
            diags.render_with(src, |out, report| {
                let _ = handler.render_report(out, report);
                out.push('\n');
            })
        );
    } else {
        eprint!("{}", diags.render_plain(src));
    }
}

/// Read, parse and validate a file; print every diagnostic.
pub fn load(file: &Path) -> Result<(SourceFile, Lab), ExitCode> {
    let src = match SourceFile::read(file) {
        Ok(s) => s,
        Err(e) => {
            // The path in the message is the user's: escaped.
            let e = CommandError::from(e);
            eprintln!("error: {}", crate::diag::escape(&e.to_string()));
            for h in &e.hints {
                eprintln!("hint: {h}");
            }
            return Err(ExitCode::from(e.exit_code()));
        }
    };
    let (lab, mut diags) = crate::validate::check(&src);
    let lab = lab.map(|mut l| crate::minimega::provider::apply_override(&mut l).map(|()| l));
    if let Some(Ok(l)) = &lab {
        // The chosen engine's bounds on the valid lab (nothing connected),
        // at the names in the file.
        use crate::provider::Provider as _;
        let problems = crate::minimega::provider::Engine::check_lab(l);
        diags
            .items
            .extend(crate::validate::locate(&src, &problems).items);
        diags.sort();
    }
    print_diagnostics(&diags, &src);
    match lab {
        Some(Ok(l)) if !diags.has_errors() => Ok((src, l)),
        Some(Err(problems)) => {
            for p in problems {
                eprintln!("error: {}", crate::diag::escape(&p));
            }
            eprintln!(
                "hint: the minimega provider builds the rest (docs/minimega.md); run it with --provider local"
            );
            Err(ExitCode::from(1))
        }
        _ => {
            let n = diags.errors().count();
            eprintln!(
                "{}: {n} error{} found",
                file.display(),
                if n == 1 { "" } else { "s" }
            );
            Err(failed())
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Validate { file } => Ok(match load(&file) {
            Ok((_, lab)) => {
                use crate::diag::plural;
                println!(
                    "{}: experiment '{}' is valid ({}, {}, {}, {}, {})",
                    file.display(),
                    lab.name,
                    plural(lab.networks.len(), "network"),
                    plural(lab.disks.len(), "disk"),
                    plural(lab.vms.len(), "VM"),
                    plural(lab.mirrors.len(), "mirror"),
                    plural(lab.vms.iter().map(|v| v.cc.len()).sum::<usize>(), "cc step")
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        }),
        Command::Convert { file, to } => {
            let src = SourceFile::read(&file)?;
            let (lab, diags) = crate::validate::check(&src);
            print_diagnostics(&diags, &src);
            if lab.is_none() {
                return Ok(failed());
            }
            let (doc, _) = crate::syntax::parse(&src);
            let syntax = match to {
                SyntaxArg::Kdl => Syntax::Kdl,
                SyntaxArg::Toml => Syntax::Toml,
            };
            print!("{}", crate::syntax::emit(&doc, syntax));
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema => {
            print!("{}", crate::schema::schema_json());
            Ok(ExitCode::SUCCESS)
        }
        Command::Graph {
            file,
            format,
            state_dir,
            provider,
        } => {
            crate::minimega::provider::set_override(provider);
            let Ok((_, mut lab)) = load(&file) else {
                return Ok(failed());
            };
            name_offline(&mut lab)?;
            match format {
                GraphFormat::Dot => print!("{}", crate::graph::to_dot(&lab)),
                GraphFormat::Svg => {
                    // The hosts the provider recorded (none before an apply).
                    let sd = StateDir::for_file(&file, &lab.name, state_dir.as_deref());
                    let hosts = crate::serve::draw::hosts(&lab, &sd.load()?);
                    print!(
                        "{}",
                        crate::serve::draw::svg(&lab, &Default::default(), &hosts)
                    )
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve {
            file,
            listen,
            token,
            token_file,
            allow_actions,
            state_dir,
            provider,
        } => {
            crate::minimega::provider::set_override(provider);
            let Ok((_, lab)) = load(&file) else {
                return Ok(failed());
            };
            let token = match token_file {
                Some(f) => Some(crate::serve::read_token_file(&f)?),
                None => token,
            };
            crate::serve::check_listen(listen, token.as_deref())?;
            crate::serve::check_actions(allow_actions, token.as_deref())?;
            let sd = StateDir::for_file(&file, &lab.name, state_dir.as_deref());
            let mut lab = lab;
            recorded_engine(&mut lab, &sd)?;
            let actions = match allow_actions {
                false => None,
                true => Some(crate::serve::actions::Actions {
                    exe: std::env::current_exe().map_err(|source| Problem::Action {
                        what: "find this megaplan executable",
                        source,
                    })?,
                    file: file.clone(),
                    state_dir: sd.root.clone(),
                }),
            };
            let door = Door::open(&mut lab)?;
            door.block_on(crate::serve::run(
                &door.provider,
                lab,
                sd,
                listen,
                token,
                actions,
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Diff { old, new, format } => {
            let (Ok((_, mut old_lab)), Ok((_, mut new_lab))) = (load(&old), load(&new)) else {
                return Ok(failed());
            };
            name_offline(&mut old_lab)?;
            name_offline(&mut new_lab)?;
            let p = diff(&old_lab, &new_lab);
            match format {
                DiffFormat::Text => {
                    let checks = crate::check::diff_lines(&old_lab.checks, &new_lab.checks);
                    if !p.has_changes() && !checks.is_empty() {
                        print!("The resources are the same; the checks differ:\n{checks}");
                    } else {
                        print!("{}{checks}", render::diff_text(&p));
                    }
                }
                DiffFormat::Json => stream_stdout(|w| render::write_json(&p, w)),
                DiffFormat::Markdown => {
                    let checks = crate::check::diff_lines(&old_lab.checks, &new_lab.checks);
                    print!("{}", render::markdown(&p));
                    if !checks.is_empty() {
                        print!("\nChecks:\n\n```\n{checks}```\n");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Apply {
            file,
            auto_approve,
            parallelism,
            accel,
            state_dir,
            replace,
            provider,
        } => {
            crate::minimega::provider::set_override(provider);
            apply_cmd(file, auto_approve, parallelism, accel, state_dir, replace)
        }
        Command::Destroy {
            file,
            all,
            dry_run,
            auto_approve,
            parallelism,
            state_dir,
            provider,
        } => {
            crate::minimega::provider::set_override(provider);
            destroy_cmd(file, all, dry_run, auto_approve, parallelism, state_dir)
        }
        Command::Show {
            file,
            columns,
            json,
            state_dir,
            provider,
        } => {
            crate::minimega::provider::set_override(provider);
            show_cmd(file, columns, json, state_dir)
        }
        Command::Cc { command } => cc_cmd(command),
        Command::Disk { command } => disk_cmd(command),
        Command::Image { command } => image_cmd(command),
        Command::Console {
            file,
            vm,
            follow,
            state_dir,
        } => console_cmd(file, vm, follow, state_dir),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let shell = match shell {
                CompletionShell::Bash => clap_complete::Shell::Bash,
                CompletionShell::Zsh => clap_complete::Shell::Zsh,
                CompletionShell::Fish => clap_complete::Shell::Fish,
            };
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "megaplan", &mut script);
            {
                stream_stdout(|w| std::io::Write::write_all(w, &script));
                Ok(ExitCode::SUCCESS)
            }
        }
        Command::Man { out_dir: Some(dir) } => {
            use clap::CommandFactory;
            clap_mangen::generate_to(Cli::command(), &dir).map_err(|source| Problem::Write {
                path: dir.clone(),
                source,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { out_dir: None } => {
            use clap::CommandFactory;
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut page)
                .map_err(Problem::Man)?;
            {
                stream_stdout(|w| std::io::Write::write_all(w, &page));
                Ok(ExitCode::SUCCESS)
            }
        }
        Command::State {
            command: StateCommand::RestoreBackup { file, state_dir },
        } => {
            let Ok((_, lab)) = load(&file) else {
                return Ok(failed());
            };
            let sd = StateDir::for_file(&file, &lab.name, state_dir.as_deref());
            let _lock = sd.lock(&format!("megaplan state restore-backup {}", file.display()))?;
            crate::owners::check(&lab.name, &sd.root)?;
            let state = sd.restore_backup()?;
            println!(
                "Restored {} from {} (serial {}, {} resources); run plan to see how the host compares.",
                sd.state_file().display(),
                sd.backup_file().display(),
                state.serial,
                state.resources.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Test {
            file,
            junit,
            markdown,
            keep,
            parallelism,
            accel,
            state_dir,
        } => crate::check::cli::test_cmd(crate::check::cli::TestArgs {
            file,
            junit,
            markdown,
            keep,
            parallelism,
            accel,
            state_dir,
        }),
        Command::Check {
            file,
            junit,
            markdown,
            state_dir,
        } => crate::check::cli::check_cmd(file, junit, markdown, state_dir),
        Command::Capture { command } => crate::capture::cli::capture_cmd(command),
        Command::CaptureRecord { iface, dedupe, .. } => {
            crate::capture::cli::record_cmd(iface, dedupe)
        }
        Command::Import { command } => crate::minimega::cli::import_cmd(command),
        Command::Export { command } => crate::minimega::cli::export_cmd(command),
        Command::Plan {
            file,
            json,
            out,
            detailed_exitcode,
            state_dir,
            replace,
            provider,
        } => {
            crate::minimega::provider::set_override(provider);
            let Ok((_, lab)) = load(&file) else {
                return Ok(failed());
            };
            let sd = StateDir::for_file(&file, &lab.name, state_dir.as_deref());
            let _lock = sd.lock(&format!("megaplan plan {}", file.display()))?;
            crate::owners::check(&lab.name, &sd.root)?;
            let mut state = sd.load()?;
            let mut lab = lab;
            crate::minimega::recorded::reconcile(&mut lab, &state, &sd.state_file())?;
            let door = Door::open(&mut lab)?;
            let opts = plan_options(&door, &file, &lab, &sd, &state, replace.clone())?;
            let (_, observed) = refresh_and_adopt(&door, &lab, &sd, &mut state)?;
            // Checks are listed, not planned (they change nothing).
            let check_lines = crate::check::plan_lines(&lab);
            // The lab is dropped once listed: it and the plan never share the peak.
            let p = plan::plan_owned(lab, &state, Some(&observed), Mode::Apply, &opts);
            if json {
                stream_stdout(|w| render::write_json(&p, w));
            } else {
                stream_stdout(|w| render::write_text(&p, w));
                print!("{check_lines}");
            }
            if let Some(out) = out {
                let mut saved = crate::saved::SavedPlan::new(&file, p.clone());
                saved.replace = replace;
                saved.write(&out).map_err(|source| Problem::Write {
                    path: out.clone(),
                    source,
                })?;
                eprintln!(
                    "Saved the plan to {}. Apply it with: megaplan apply {}",
                    out.display(),
                    out.display()
                );
            }
            Ok(if detailed_exitcode && p.has_changes() {
                ExitCode::from(error::exit::CHANGES)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Problem::Runtime(e).into())
}

/// CPU time (user + system) this process has used so far, all threads, not
/// counting child processes (QEMU launchers, qemu-img): megaplan's own share
/// of an apply, printed in its summary and read by benches/apply-scale.sh.
fn own_cpu() -> std::time::Duration {
    // SAFETY: getrusage writes a plain struct it is given; zeroed is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return std::time::Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        std::time::Duration::from_secs(t.tv_sec as u64)
            + std::time::Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Check what changing the host needs, naming each missing piece (the
/// provider's preflight of what the lab reads, `None` for a destroy; its
/// error chooses kind and hint).
fn preflight(door: &Door, lab: Option<&Lab>) -> Result<(), CliError> {
    use crate::provider::{Provider as _, Requirements};
    let needs = Requirements::of(lab);
    Ok(door.block_on(door.provider.preflight(&needs))?)
}

fn confirm(what: &str) -> Result<bool, CliError> {
    if !std::io::stdin().is_terminal() {
        return Err(Problem::NoTerminal { what: what.into() }.into());
    }
    eprint!("Do you want to {what}? Only 'yes' will be accepted: ");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(Problem::Answer)?;
    Ok(line.trim() == "yes")
}

fn execute(
    door: &Door,
    lab: Option<&Lab>,
    experiment: &str,
    sd: &StateDir,
    plan: &Plan,
    state: &mut State,
    parallelism: usize,
) -> Result<ExitCode, CliError> {
    let report = door.block_on(async {
        let host = &door.provider;
        // A terminal gets a progress bar; a pipe gets plain lines.
        let ops: u64 = plan
            .changes
            .iter()
            .map(|c| match c.action {
                plan::Action::NoOp => 0,
                plan::Action::Replace => 2,
                _ => 1,
            })
            .sum();
        let bar = std::io::stderr().is_terminal().then(|| {
            let pb = indicatif::ProgressBar::new(ops);
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {wide_msg}",
                )
                .expect("a valid template"),
            );
            pb.enable_steady_tick(std::time::Duration::from_millis(120));
            pb
        });
        let progress = |line: &str| match &bar {
            None => eprintln!("{line}"),
            Some(pb) if line.ends_with('…') => pb.set_message(line.to_string()),
            Some(pb) => {
                pb.println(line);
                pb.inc(1);
            }
        };
        let ex = crate::apply::Executor {
            provider: host,
            lab,
            sd,
            experiment: experiment.to_string(),
            parallelism,
            progress: &progress,
        };
        let report = ex.run(plan, state).await;
        if let Some(pb) = &bar {
            pb.finish_and_clear();
        }
        Ok::<_, CliError>(report)
    })?;
    eprintln!();
    if report.ok() {
        println!(
            "Done: {}; megaplan's own CPU {:.3}s.",
            report.summary(),
            own_cpu().as_secs_f64()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!("Failed: {}.", report.summary());
        for (addr, e) in &report.errors {
            println!("  error: {addr}: {e}");
        }
        for (addr, why) in &report.skipped {
            println!("  skipped: {addr} ({why})");
        }
        // The kind (so the exit code) and the hints come from the most
        // severe error's type; the last hint is true of every failed apply.
        let worst = error::most_severe(report.errors.into_iter().map(|(_, e)| e.into()));
        for h in worst.iter().flat_map(|w| &w.hints) {
            println!("hint: {h}");
        }
        println!(
            "hint: fix the cause and run apply again; what was done is recorded and will not be redone"
        );
        Ok(worst.map_or_else(failed, |w| ExitCode::from(w.exit_code())))
    }
}

/// The accelerator asked for this run: `--accel` wins over `MEGAPLAN_ACCEL`,
/// which wins over the file's `accel`. A bad `MEGAPLAN_ACCEL` is an error
/// (even under a flag). What `auto` means, and whether kvm can be had, is
/// the engine's decision: [`resolve_accel`] asks the provider.
pub fn asked_accel(
    file: crate::lab::Accel,
    env: Option<&str>,
    flag: Option<AccelArg>,
) -> Result<crate::lab::Accel, CliError> {
    use crate::drivers::qemu::{self, AccelChoice};
    use crate::lab::Accel;
    let env = qemu::parse_accel_env(env).map_err(|_| Problem::BadAccelEnv {
        var: qemu::ACCEL_ENV,
        value: crate::diag::escape(env.unwrap_or_default()).into_owned(),
    })?;
    Ok(match (flag, env) {
        (Some(AccelArg::Kvm), _) => Accel::Kvm,
        (Some(AccelArg::Tcg), _) => Accel::Tcg,
        (Some(AccelArg::Auto), _) => Accel::Auto,
        (None, AccelChoice::Kvm) => Accel::Kvm,
        (None, AccelChoice::Tcg) => Accel::Tcg,
        (None, AccelChoice::Auto) => file,
    })
}

/// The accelerator of this run, resolved once by the door's engine before
/// anything changes (never left `auto` for launch time); kvm asked for where
/// the engine cannot have it is an error (`ProviderError::NoKvm`).
fn resolve_accel(door: &Door, asked: crate::lab::Accel) -> Result<crate::lab::Accel, CliError> {
    use crate::provider::{Accel, Provider as _};
    Ok(match door.provider.resolve_accel(asked)? {
        Accel::Kvm => crate::lab::Accel::Kvm,
        Accel::Tcg => crate::lab::Accel::Tcg,
    })
}

pub(crate) fn apply_cmd(
    file: PathBuf,
    auto_approve: bool,
    parallelism: usize,
    accel: Option<AccelArg>,
    state_dir: Option<PathBuf>,
    replace: Vec<String>,
) -> Result<ExitCode, CliError> {
    let env_accel = std::env::var(crate::drivers::qemu::ACCEL_ENV).ok();
    if let Some(saved) = crate::saved::SavedPlan::read(&file) {
        if !replace.is_empty() {
            return Err(Problem::ReplaceSaved.into());
        }
        saved.check().map_err(|why| Problem::NotAPlan {
            plan: file.clone(),
            why,
        })?;
        let Ok((_, mut lab)) = load(&saved.file) else {
            return Ok(failed());
        };
        let asked = asked_accel(lab.accel, env_accel.as_deref(), accel)?;
        let sd = StateDir::for_file(&saved.file, &lab.name, state_dir.as_deref());
        recorded_engine(&mut lab, &sd)?;
        let door = Door::open(&mut lab)?;
        lab.accel = resolve_accel(&door, asked)?;
        preflight(&door, Some(&lab))?;
        let _lock = sd.lock(&format!("megaplan apply {}", file.display()))?;
        claim(&lab.name, &sd)?;
        let mut state = sd.load()?;
        crate::minimega::recorded::recheck(&lab, &state, &sd.state_file())?;
        crate::minimega::recorded::record(&lab, &mut state);
        if let Some(why) = saved.stale_because(&state) {
            return Err(Problem::Stale {
                plan: file,
                file: saved.file.clone(),
                why,
            }
            .into());
        }
        // The plan's assumptions about the host, checked again: what runs is
        // this fresh plan, which must do what the saved one said.
        let opts = plan_options(&door, &saved.file, &lab, &sd, &state, saved.replace.clone())?;
        let (adopted, fresh) = refresh_and_plan(&door, &lab, &sd, &mut state, &opts)?;
        let drift = crate::saved::drift(&saved.plan, &fresh);
        if !drift.is_empty() {
            return Err(Problem::HostChanged {
                plan: file,
                file: saved.file.clone(),
                drift,
            }
            .into());
        }
        if adopted {
            sd.save(&mut state)?;
        }
        return execute(
            &door,
            Some(&lab),
            &lab.name,
            &sd,
            &fresh,
            &mut state,
            parallelism,
        );
    }
    let Ok((_, mut lab)) = load(&file) else {
        return Ok(failed());
    };
    let asked = asked_accel(lab.accel, env_accel.as_deref(), accel)?;
    let sd = StateDir::for_file(&file, &lab.name, state_dir.as_deref());
    recorded_engine(&mut lab, &sd)?;
    let door = Door::open(&mut lab)?;
    lab.accel = resolve_accel(&door, asked)?;
    preflight(&door, Some(&lab))?;
    let _lock = sd.lock(&format!("megaplan apply {}", file.display()))?;
    claim(&lab.name, &sd)?;
    let mut state = sd.load()?;
    crate::minimega::recorded::recheck(&lab, &state, &sd.state_file())?;
    crate::minimega::recorded::record(&lab, &mut state);
    let opts = plan_options(&door, &file, &lab, &sd, &state, replace)?;
    let (adopted, p) = refresh_and_plan(&door, &lab, &sd, &mut state, &opts)?;
    if adopted {
        sd.save(&mut state)?;
    }
    print!("{}", render::text(&p));
    if !p.has_changes() {
        return Ok(ExitCode::SUCCESS);
    }
    if !auto_approve && !confirm("perform these actions")? {
        println!("Apply cancelled.");
        return Ok(failed());
    }
    execute(
        &door,
        Some(&lab),
        &lab.name,
        &sd,
        &p,
        &mut state,
        parallelism,
    )
}

/// The engine the state records decides when the file and flags say
/// nothing (crate::minimega::recorded). Read before the lock, to open the
/// right engine; the command checks it again on the state it reads under
/// the lock, and a state that does not load is reported there.
pub(crate) fn recorded_engine(lab: &mut Lab, sd: &StateDir) -> Result<(), CliError> {
    if let Ok(state) = sd.load() {
        crate::minimega::recorded::reconcile(lab, &state, &sd.state_file())?;
    }
    Ok(())
}

/// Refresh, rebuild a lost state from the host (crate::adopt), and plan an
/// apply: (whether anything was adopted, the plan).
fn refresh_and_plan(
    door: &Door,
    lab: &Lab,
    sd: &StateDir,
    state: &mut State,
    opts: &plan::Options,
) -> Result<(bool, Plan), CliError> {
    let (adopted, observed) = refresh_and_adopt(door, lab, sd, state)?;
    let p = plan::plan_with(Some(lab), state, Some(&observed), Mode::Apply, opts);
    Ok((adopted, p))
}

/// Refresh through the provider, and rebuild a lost state from the host
/// (crate::adopt): (whether anything was adopted, what refresh saw).
fn refresh_and_adopt(
    door: &Door,
    lab: &Lab,
    sd: &StateDir,
    state: &mut State,
) -> Result<(bool, crate::observed::Observed), CliError> {
    let mut observed = door.refresh(&lab.name, state, sd)?;
    let adopted = crate::adopt::adopt(&door.provider, lab, state, &mut observed, sd);
    if !adopted.is_empty() {
        eprintln!("notice: {}", crate::adopt::notice(sd, &adopted));
    }
    Ok((!adopted.is_empty(), observed))
}

/// The planner's options for `file`: `-replace` addresses (each must name
/// something of the file or the state: refused before anything changes)
/// and the content digests of the lab's files, read now, before planning.
fn plan_options(
    door: &Door,
    file: &Path,
    lab: &Lab,
    sd: &StateDir,
    state: &crate::state::State,
    replace: Vec<String>,
) -> Result<plan::Options, CliError> {
    let mut opts = plan::Options {
        rules: {
            use crate::provider::Provider as _;
            door.provider.rules()
        },
        replace: replace.into_iter().collect(),
        ..Default::default()
    };
    let unknown = plan::unknown_replacements(Some(lab), state, &opts);
    if !unknown.is_empty() {
        return Err(Problem::UnknownReplacement {
            addresses: unknown,
            file: file.to_path_buf(),
        }
        .into());
    }
    // Cached beside the state (we hold the lock): a big image is read once.
    opts.digests = crate::digest::of_lab_cached(lab, &sd.root.join("digests.json"));
    Ok(opts)
}

pub(crate) fn destroy_cmd(
    file: PathBuf,
    all: bool,
    dry_run: bool,
    auto_approve: bool,
    parallelism: usize,
    state_dir: Option<PathBuf>,
) -> Result<ExitCode, CliError> {
    let Ok((_, mut lab)) = load(&file) else {
        return Ok(failed());
    };
    let sd = StateDir::for_file(&file, &lab.name, state_dir.as_deref());
    recorded_engine(&mut lab, &sd)?;
    let door = Door::open(&mut lab)?;
    if !dry_run {
        preflight(&door, None)?;
    }
    let _lock = sd.lock(&format!("megaplan destroy {}", file.display()))?;
    if dry_run {
        crate::owners::check(&lab.name, &sd.root)?;
    } else {
        claim(&lab.name, &sd)?;
    }
    let mut state = sd.load()?;
    crate::minimega::recorded::recheck(&lab, &state, &sd.state_file())?;
    let observed = door.refresh(&lab.name, &state, &sd)?;
    let mode = if all { Mode::DestroyAll } else { Mode::Destroy };
    let p = plan::plan(None, &state, Some(&observed), mode);
    print!("{}", render::text(&p));
    if dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    let code = if p.has_changes() {
        if !auto_approve && !confirm("destroy these resources")? {
            println!("Destroy cancelled.");
            return Ok(failed());
        }
        execute(
            &door,
            Some(&lab),
            &lab.name,
            &sd,
            &p,
            &mut state,
            parallelism,
        )?
    } else {
        ExitCode::SUCCESS
    };
    {
        use crate::provider::Provider as _;
        // `destroy --all` that succeeded: the capture files go too (plain
        // destroy keeps them).
        let notes = door
            .provider
            .after_destroy(
                &sd,
                &lab.name,
                crate::provider::Left::of(&state),
                all && code == ExitCode::SUCCESS,
            )
            .map_err(|source| Problem::AfterDestroy {
                provider: door.provider.name(),
                source,
            })?;
        for n in notes {
            println!("{n}");
        }
    }
    // Nothing recorded any more (keep disks stay recorded): the name is free.
    if state.resources.is_empty() {
        crate::owners::release(&lab.name, &sd.root)?;
    }
    Ok(code)
}

fn show_cmd(
    file: PathBuf,
    columns: Vec<String>,
    json: bool,
    state_dir: Option<PathBuf>,
) -> Result<ExitCode, CliError> {
    let Ok((_, lab)) = load(&file) else {
        return Ok(failed());
    };
    let sd = StateDir::for_file(&file, &lab.name, state_dir.as_deref());
    crate::owners::check(&lab.name, &sd.root)?;
    let state = sd.load()?;
    let mut lab = lab;
    crate::minimega::recorded::reconcile(&mut lab, &state, &sd.state_file())?;
    let columns = crate::show::columns(&columns, json).map_err(Problem::UnknownColumn)?;
    let door = Door::open(&mut lab)?;
    let observed = door.refresh(&lab.name, &state, &sd)?;
    let mut rows = crate::show::rows(&lab, &state, &observed);
    if columns.iter().any(|c| c == "ip") {
        let addrs = door.block_on(crate::cc::addresses(&door.provider, &lab));
        for r in &mut rows {
            let name = r
                .get("name")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string();
            if let Some(a) = addrs.get(&name) {
                r.insert("ip".into(), a.clone().into());
            }
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&crate::show::json(&rows, &columns)).expect("json")
        );
    } else {
        print!("{}", crate::show::table(&rows, &columns));
    }
    Ok(ExitCode::SUCCESS)
}

fn console_cmd(
    file: PathBuf,
    vm: String,
    follow: bool,
    state_dir: Option<PathBuf>,
) -> Result<ExitCode, CliError> {
    let Ok((_, mut lab)) = load(&file) else {
        return Ok(failed());
    };
    // Paths come from the lab's (validated) name, not from the argument.
    let Some(spec) = lab.vms.iter().find(|v| v.name == vm).cloned() else {
        return Err(Problem::NoSuchVm {
            names: lab.vms.iter().map(|v| v.name.clone()).collect(),
            vm,
            file,
        }
        .into());
    };
    let sd = StateDir::for_file(&file, &lab.name, state_dir.as_deref());
    // Where the console and its log are is the provider's to say.
    use crate::provider::Provider as _;
    let door = Door::open(&mut lab)?;
    let log = door.provider.serial_log(&sd, &spec.name);
    let sock = door.provider.console_socket(&lab.name, &spec.name);
    crate::console::run(sock.as_deref(), log.as_deref(), &spec.name, follow)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand, Debug)]
pub enum CcCommand {
    /// Run a command now in every matching guest; exit non-zero if any failed.
    Exec {
        file: PathBuf,
        /// name=VM, uuid=UUID or tag:KEY=VALUE (repeat to narrow).
        #[arg(long)]
        filter: Vec<String>,
        #[arg(long)]
        json: bool,
        /// Give up on a guest's command after this long (e.g. 30s).
        #[arg(long)]
        timeout: Option<String>,
        /// Keep this much of each output stream (default 64K, at most 448K).
        #[arg(long, value_name = "SIZE")]
        max_output: Option<String>,
        /// The command: one word runs under `sh -c`, several run as an argv.
        #[arg(last = true, required = true)]
        command: Vec<String>,
        #[command(flatten)]
        provider: crate::minimega::provider::ProviderArgs,
    },
    /// The recorded results of the cc steps.
    Responses {
        file: PathBuf,
        vm: Option<String>,
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum DiskCommand {
    /// Copy files out of a disk (no VM using it may be running).
    Extract {
        file: PathBuf,
        disk: String,
        /// The path inside the disk (default: everything).
        guest_path: Option<String>,
        #[arg(long)]
        to: PathBuf,
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
}

fn cc_cmd(command: CcCommand) -> Result<ExitCode, CliError> {
    match command {
        CcCommand::Exec {
            file,
            filter,
            json,
            timeout,
            max_output,
            command,
            provider,
        } => {
            crate::minimega::provider::set_override(provider);
            let Ok((_, mut lab)) = load(&file) else {
                return Ok(failed());
            };
            let filters: Vec<crate::cc::Filter> = filter
                .iter()
                .map(|f| f.parse().map_err(Problem::BadFilter))
                .collect::<Result<_, _>>()?;
            let timeout = match timeout {
                Some(t) => Some(std::time::Duration::from_millis(
                    crate::validate::parse_duration_ms(&t)
                        .ok_or_else(|| Problem::BadDuration(t.clone()))?,
                )),
                None => None,
            };
            let max_output = match max_output {
                None => None,
                Some(m) => match crate::validate::parse_size(&m, 1) {
                    Some(n) if n > 0 && n <= crate::agent::protocol::MAX_OUTPUT_LIMIT as u64 => {
                        Some(n)
                    }
                    _ => return Err(Problem::BadMaxOutput(m).into()),
                },
            };
            let door = Door::open(&mut lab)?;
            let responses = door.block_on(crate::cc::exec(
                &door.provider,
                &lab,
                &filters,
                &command,
                timeout,
                max_output,
            ));
            if responses.is_empty() {
                return Err(Problem::NoMatch.into());
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&responses).expect("json")
                );
            } else {
                for r in &responses {
                    println!("== {} ({})", crate::diag::escape(&r.vm), r.status(timeout));
                    print!("{}", r.stdout);
                    if !r.stderr.is_empty() {
                        eprint!("{}", r.stderr);
                        if !r.stderr.ends_with('\n') {
                            eprintln!();
                        }
                    }
                    for n in r.notes(max_output) {
                        eprintln!("{n}");
                    }
                }
            }
            Ok(if responses.iter().all(|r| r.exit == 0) {
                ExitCode::SUCCESS
            } else {
                failed()
            })
        }
        CcCommand::Responses {
            file,
            vm,
            state_dir,
        } => {
            let Ok((_, mut lab)) = load(&file) else {
                return Ok(failed());
            };
            if let Some(v) = &vm
                && lab.vm(v).is_none()
            {
                return Err(Problem::NoSuchVm {
                    vm: v.clone(),
                    file,
                    names: lab.vms.iter().map(|v| v.name.clone()).collect(),
                }
                .into());
            }
            let sd = StateDir::for_file(&file, &lab.name, state_dir.as_deref());
            let door = Door::open(&mut lab)?;
            for (address, exit, stdout, stderr, timed_out) in
                crate::cc::responses(&door.provider, &lab, &sd, vm.as_deref())
            {
                match exit {
                    None => println!("== {}: not run", crate::diag::escape(&address)),
                    Some(e) => {
                        println!(
                            "== {} ({})",
                            crate::diag::escape(&address),
                            crate::cc::recorded_status(&e, timed_out)
                        );
                        print!("{stdout}");
                        if !stderr.is_empty() {
                            println!("-- stderr");
                            print!("{stderr}");
                        }
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn disk_cmd(command: DiskCommand) -> Result<ExitCode, CliError> {
    let DiskCommand::Extract {
        file,
        disk,
        guest_path,
        to,
        state_dir,
    } = command;
    let Ok((_, mut lab)) = load(&file) else {
        return Ok(failed());
    };
    let spec = &lab
        .disk(&disk)
        .cloned()
        .ok_or_else(|| Problem::NoSuchDisk {
            disk: disk.clone(),
            file: file.clone(),
            names: lab.disks.iter().map(|d| d.name.clone()).collect(),
        })?;
    let sd = StateDir::for_file(&file, &lab.name, state_dir.as_deref());
    crate::owners::check(&lab.name, &sd.root)?;
    let state = sd.load()?;
    let door = Door::open(&mut lab)?;
    let observed = door.refresh(&lab.name, &state, &sd)?;
    for vm in &lab.vms {
        let uses = vm
            .disks
            .iter()
            .any(|d| d.source == crate::lab::DiskSource::Named(disk.clone()));
        if uses && observed.vms.get(&vm.address).is_some_and(|o| o.alive) {
            return Err(Problem::DiskInUse {
                vm: vm.name.clone(),
                disk,
            }
            .into());
        }
    }
    let gp = guest_path.unwrap_or_else(|| "/".to_string());
    use crate::provider::{Provider as _, ProviderError};
    let report = door
        .block_on(door.provider.extract_disk(&sd, spec, &gp, &to))
        .map_err(|e| match e {
            ProviderError::Missing { what } => Problem::NoDiskImage { what },
            e => Problem::Extract(e),
        })?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    println!("Copied {gp} of disk '{disk}' to {}", to.display());
    Ok(ExitCode::SUCCESS)
}

/// For a view of the file that reaches no engine (`graph`, `diff`): the
/// local engine's names are pure, so a local lab gets them; another
/// engine's are known after apply and stay unset.
fn name_offline(lab: &mut Lab) -> Result<(), CommandError> {
    if lab.provider.is_local() {
        crate::provider::names::local(lab).map_err(crate::provider::ProviderError::from)?;
    }
    Ok(())
}

/// The plan that would turn an applied `old` into `new`, with no live state.
pub fn diff(old: &Lab, new: &Lab) -> Plan {
    let mut state = State::new(&new.name);
    let from_old = plan::plan(Some(old), &state, None, Mode::Apply);
    for c in &from_old.changes {
        let mut rec = crate::state::Record::new(c.kind, c.after().unwrap_or_default());
        rec.deps = c.deps.clone();
        state.resources.insert(c.address.clone(), rec);
    }
    let mut p = plan::plan(Some(new), &state, None, Mode::Apply);
    p.lineage = None;
    p.serial = 0;
    p
}

/// `megaplan image ...`
#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Build a cc-enabled kernel + initrd (busybox, megaplan-agent, virtio modules):
    /// OUT/NAME.kernel and OUT/NAME.initrd. Boot with `console=ttyS0`, and
    /// `megaplan.mounts=vdb:/data,...` to mount ext4 disks.
    Build {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = crate::image::DEFAULT_NAME)]
        name: String,
        /// A kernel image (with --modules); default: the host's running kernel.
        #[arg(long, requires = "modules", conflicts_with_all = ["kernel_deb", "kernel_dir"])]
        kernel: Option<PathBuf>,
        /// The kernel's modules directory (lib/modules/VERSION).
        #[arg(long, requires = "kernel")]
        modules: Option<PathBuf>,
        /// A Debian linux-image-*.deb.
        #[arg(long, conflicts_with = "kernel_dir")]
        kernel_deb: Option<PathBuf>,
        /// An unpacked kernel package: boot/vmlinuz-* and lib/modules/VERSION/ (scripts/guest-kernel.sh).
        #[arg(long)]
        kernel_dir: Option<PathBuf>,
        /// The agent binary; default: megaplan-agent beside this executable.
        #[arg(long)]
        agent: Option<PathBuf>,
        /// Extra binaries, copied with the shared libraries they need.
        #[arg(long, num_args = 1..)]
        include: Vec<PathBuf>,
        /// Keep debug information in the agent and the included binaries.
        #[arg(long)]
        no_strip: bool,
        /// minimega's static miniccc: init also starts it on the virtio-serial
        /// port minimega names `cc` (for the minimega provider's cc steps).
        #[arg(long)]
        miniccc: Option<PathBuf>,
    },
}

fn image_cmd(command: ImageCommand) -> Result<ExitCode, CliError> {
    use crate::image::{ImageOptions, KernelSource};
    let ImageCommand::Build {
        out,
        name,
        kernel,
        modules,
        kernel_deb,
        kernel_dir,
        agent,
        include,
        no_strip,
        miniccc,
    } = command;
    let mut opts = ImageOptions::new(out);
    opts.name = name;
    opts.kernel = match (kernel, modules, kernel_deb, kernel_dir) {
        (Some(kernel), Some(modules), _, _) => KernelSource::Files { kernel, modules },
        (_, _, Some(deb), _) => KernelSource::Deb(deb),
        (_, _, _, Some(dir)) => KernelSource::Dir(dir),
        _ => KernelSource::Host,
    };
    opts.agent = agent;
    opts.include = include;
    opts.strip = !no_strip;
    opts.miniccc = miniccc;
    let img = crate::image::build(&opts)?;
    for w in &img.warnings {
        eprintln!("warning: {w}");
    }
    println!("{}", img.kernel.display());
    println!("{}", img.initrd.display());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::Accel;

    #[test]
    fn the_flag_wins_over_the_env_which_wins_over_the_file() {
        let r = |file, env, flag| asked_accel(file, env, flag).map_err(|e| e.to_string());
        assert_eq!(r(Accel::Kvm, Some("tcg"), None), Ok(Accel::Tcg));
        assert_eq!(r(Accel::Tcg, None, None), Ok(Accel::Tcg));
        assert_eq!(r(Accel::Auto, Some("tcg"), None), Ok(Accel::Tcg));
        assert_eq!(
            r(Accel::Kvm, Some("kvm"), Some(AccelArg::Tcg)),
            Ok(Accel::Tcg)
        );
        assert_eq!(r(Accel::Tcg, Some(""), None), Ok(Accel::Tcg));
        assert_eq!(r(Accel::Kvm, Some("auto"), None), Ok(Accel::Kvm));
        assert_eq!(r(Accel::Tcg, None, Some(AccelArg::Auto)), Ok(Accel::Auto));
    }

    /// What `auto` and `kvm` become is the engine's: the local engine
    /// probes this machine (never leaving auto); minimega probes its head
    /// node (this machine) for `auto` and takes `kvm` as asked.
    #[test]
    fn the_engine_resolves_the_accelerator_asked() {
        use crate::provider::Accel as Run;
        let local = crate::host::local::resolve_accel;
        assert_eq!(local(Accel::Tcg).unwrap(), Run::Tcg);
        let probed = crate::drivers::qemu::resolve_accel(crate::drivers::qemu::AccelChoice::Auto);
        assert_eq!(local(Accel::Auto).unwrap(), probed);
        // kvm asked for: it must open (read-write); where it does not, the
        // error's kind and hint come from the one error table.
        let at = crate::host::local::resolve_accel_at;
        assert_eq!(
            at(Accel::Kvm, std::path::Path::new("/dev/null")).unwrap(),
            Run::Kvm
        );
        let t = tempfile::tempdir().unwrap();
        let e = at(Accel::Kvm, &t.path().join("kvm")).unwrap_err();
        assert!(matches!(e, crate::provider::ProviderError::NoKvm));
        let e = CommandError::from(e);
        assert_eq!(
            e.to_string(),
            "the accelerator is kvm, but /dev/kvm does not open"
        );
        assert_eq!(e.kind, ErrorKind::Config);
        assert_eq!(e.exit_code(), 5);
        assert_eq!(
            e.hint(),
            Some("run with --accel tcg (or accel \"auto\"), or load the kvm module")
        );
        assert_eq!(at(Accel::Tcg, &t.path().join("kvm")).unwrap(), Run::Tcg);
        // minimega: `auto` is the head node's probe (this machine's),
        // `kvm` is not probed (the nodes run the VMs).
        use crate::minimega::provider::accel_for as mm;
        assert_eq!(mm(Accel::Auto, || Run::Tcg), Run::Tcg);
        assert_eq!(mm(Accel::Auto, || Run::Kvm), Run::Kvm);
        assert_eq!(mm(Accel::Kvm, || Run::Tcg), Run::Kvm);
        assert_eq!(mm(Accel::Tcg, || Run::Kvm), Run::Tcg);
    }

    #[test]
    fn a_bad_env_accelerator_is_refused_up_front() {
        let e = asked_accel(Accel::Tcg, Some("warp9"), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "MEGAPLAN_ACCEL=\"warp9\" is not an accelerator"
        );
        assert_eq!(e.kind, ErrorKind::Config);
        assert!(e.hint().unwrap().contains("auto, kvm or tcg"));
        // Even when the flag would override it: a typo in the env is not ignored.
        assert!(asked_accel(Accel::Tcg, Some("warp9"), Some(AccelArg::Tcg)).is_err());
    }
}

#[cfg(test)]
mod replace_flag_tests {
    use super::*;

    fn apply_replace(args: &[&str]) -> Vec<String> {
        let argv = args.iter().map(std::ffi::OsString::from);
        match Cli::try_parse_from(terraform_flags(argv)).unwrap().command {
            Command::Apply { replace, .. } => replace,
            _ => unreachable!("an apply command"),
        }
    }

    #[test]
    fn replace_is_repeatable_and_takes_terraform_spelling() {
        assert_eq!(
            apply_replace(&[
                "megaplan",
                "apply",
                "x.kdl",
                "-replace",
                "vm.A",
                "--replace",
                "vm.B.cc[0]",
                "-replace=vm.C",
                "--replace=vm.D",
            ]),
            ["vm.A", "vm.B.cc[0]", "vm.C", "vm.D"]
        );
        assert!(apply_replace(&["megaplan", "apply", "x.kdl"]).is_empty());
    }
}
