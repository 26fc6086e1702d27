//! megaplan-agent: the guest side of megaplan's cc channel.
//!
//! Runs inside the VM (under busybox init or started by /init), finds the
//! virtio-serial port named `megaplan.cc`, says hello and serves the host's
//! requests; reopens the port when the host goes away. Build it static:
//! `RUSTFLAGS='-C target-feature=+crt-static' cargo build --release
//! --target x86_64-unknown-linux-gnu --bin megaplan-agent`.

use std::path::PathBuf;
use std::process::ExitCode;

use megaplan::agent::guest::{self, Options};

const USAGE: &str = "usage: megaplan-agent [--port PATH] [--uuid UUID] [--once]

  --port PATH   use PATH instead of the virtio-serial port named megaplan.cc:
                a unix socket to connect to, or a character device
  --uuid UUID   report UUID instead of /sys/class/dmi/id/product_uuid
  --once        serve one connection, then exit
";

fn parse_args() -> Result<Options, String> {
    let mut opts = Options::default();
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy().into_owned();
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next().map(|v| v.to_string_lossy().into_owned()))
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--port" => opts.port = Some(PathBuf::from(value("--port")?)),
            "--uuid" => opts.uuid = Some(value("--uuid")?),
            "--once" => opts.once = true,
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            "-V" | "--version" => {
                println!("megaplan-agent {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(opts)
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprint!("megaplan-agent: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("megaplan-agent: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(guest::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("megaplan-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
