//! `megaplan capture list FILE`, `megaplan capture path FILE NAME`, and the
//! hidden `megaplan capture-record` (the recorder process).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::cli::door::Door;
use crate::cli::{CliError, load};
use crate::provider::Provider as _;
use crate::state::StateDir;

#[derive(Subcommand, Debug)]
pub enum CaptureCommand {
    /// Every capture of the experiment: what it records, its file, its size,
    /// whether its recorder runs.
    List {
        file: PathBuf,
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// The path of a capture's pcap file (for tcpdump -r, wireshark).
    Path {
        file: PathBuf,
        name: String,
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
}

pub fn capture_cmd(command: CaptureCommand) -> Result<ExitCode, CliError> {
    match command {
        CaptureCommand::List { file, state_dir } => {
            let Ok((_, lab)) = load(&file) else {
                return Ok(ExitCode::from(1));
            };
            let sd = StateDir::for_file(&file, &lab.name, state_dir.as_deref());
            let mut lines = vec![format!(
                "{:<16} {:<28} {:<10} {:>8} {:>10}  FILE",
                "NAME", "RECORDS", "RECORDER", "FRAMES", "BYTES"
            )];
            for c in &lab.captures {
                let what = match &c.network {
                    Some(n) => format!("network {n}"),
                    None => c
                        .taps
                        .iter()
                        .map(|t| format!("{} nic {}", t.vm, t.nic))
                        .collect::<Vec<_>>()
                        .join(", "),
                };
                let path = super::file_path(&sd, &c.name)?;
                let size = path
                    .symlink_metadata()
                    .ok()
                    .filter(|m| m.is_file())
                    .map(|m| m.len());
                let frames = super::read_frames(&sd, &c.name).ok().map(|f| f.len());
                let recorder = match super::recorder_pid(&lab.name, &c.name) {
                    Some(pid) => format!("pid {pid}"),
                    None => "stopped".into(),
                };
                lines.push(format!(
                    "{:<16} {:<28} {:<10} {:>8} {:>10}  {}",
                    c.name,
                    what,
                    recorder,
                    frames.map_or("-".into(), |n| n.to_string()),
                    size.map_or("-".into(), |n| n.to_string()),
                    if size.is_some() {
                        path.display().to_string()
                    } else {
                        format!("{} (not recorded yet)", path.display())
                    }
                ));
            }
            if lab.captures.is_empty() {
                lines = vec![format!("{} has no captures", file.display())];
            }
            super::print(&lines);
            Ok(ExitCode::SUCCESS)
        }
        CaptureCommand::Path {
            file,
            name,
            state_dir,
        } => {
            let Ok((_, mut lab)) = load(&file) else {
                return Ok(ExitCode::from(1));
            };
            let sd = StateDir::for_file(&file, &lab.name, state_dir.as_deref());
            // The engine the state records (crate::minimega::recorded).
            crate::cli::recorded_engine(&mut lab, &sd)?;
            // The path comes from the lab's (validated) name, not the argument.
            let Some(c) = lab.captures.iter().find(|c| c.name == name).cloned() else {
                return Err(crate::cli::error::Problem::NoSuchCapture {
                    name,
                    file,
                    names: lab.captures.iter().map(|c| c.name.clone()).collect(),
                }
                .into());
            };
            // The engine brings the file up to date (minimega fetches it
            // from the VM's node) and names it.
            let door = Door::open(&mut lab)?;
            let path = door.block_on(door.provider.capture_file(&sd, &c))?;
            let path = std::path::absolute(&path).unwrap_or(path);
            println!("{}", path.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The hidden recorder process (started by apply, never by hand).
pub fn record_cmd(iface: Vec<String>, dedupe: bool) -> Result<ExitCode, CliError> {
    super::record_main(&iface, dedupe)?;
    Ok(ExitCode::SUCCESS)
}
