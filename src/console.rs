//! `megaplan console`: a guest's serial console. Attached, the terminal talks
//! to QEMU's console socket (`console.sock` in the VM's runtime folder):
//! what the guest prints comes out, what is typed goes in, Ctrl-] detaches.
//! Following, the serial log is printed and then followed as it grows.
//!
//! Invariants:
//! - Reads only the runtime and state folders; the paths come from the
//!   validated lab, never from the command line's strings.
//! - A terminal put in raw mode is put back, whatever happens.
//! - Attached, the guest's bytes reach the terminal as they are (as with
//!   any serial console: the shell's line editing needs them); the log is
//!   shown with control characters other than newline and tab escaped.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Ctrl-]: detaches from an attached console (as telnet and virsh do).
pub const DETACH: u8 = 0x1d;

/// How often a followed log is looked at for growth.
const FOLLOW_PERIOD: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("cannot attach to {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the serial log {path}: {source}")]
    Log {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("console: {0}")]
    Io(#[from] std::io::Error),
    #[error("{vm} has no serial console on this machine")]
    NoConsole { vm: String },
}

/// `megaplan console`: with `follow`, print and follow the serial log;
/// else attach to the console socket when there is one, or print the log.
/// The paths are the provider's (`Provider::console_socket`/`serial_log`).
pub fn run(
    sock: Option<&Path>,
    log: Option<&Path>,
    vm: &str,
    follow: bool,
) -> Result<(), ConsoleError> {
    let no_console = || ConsoleError::NoConsole { vm: vm.to_string() };
    match (follow, sock.filter(|s| s.exists())) {
        (false, Some(sock)) => attach(sock, vm),
        (true, _) => show_log(log.ok_or_else(no_console)?, true),
        (false, None) => {
            let log = log.ok_or_else(no_console)?;
            eprintln!("{vm} is not running (no console socket): its serial log follows");
            show_log(log, false)
        }
    }
}

/// The terminal on stdin in raw mode while this lives.
struct RawMode(libc::termios);

impl RawMode {
    /// Raw mode when stdin is a terminal; None otherwise.
    fn enter() -> Option<RawMode> {
        // SAFETY: a zeroed termios is a valid buffer for tcgetattr to fill.
        let mut old: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr on fd 0 with a valid buffer; fails on a non-tty.
        if unsafe { libc::tcgetattr(0, &mut old) } != 0 {
            return None;
        }
        let mut raw = old;
        // SAFETY: cfmakeraw edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: tcsetattr on fd 0 with a valid termios.
        if unsafe { libc::tcsetattr(0, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(RawMode(old))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings read by tcgetattr on the same fd.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.0) };
    }
}

/// Attach stdin/stdout to the console socket `sock` until Ctrl-] is typed,
/// stdin ends, or the guest's QEMU closes the console.
pub fn attach(sock: &Path, vm: &str) -> Result<(), ConsoleError> {
    let stream = UnixStream::connect(sock).map_err(|source| ConsoleError::Connect {
        path: sock.display().to_string(),
        source,
    })?;
    let raw = RawMode::enter();
    let nl = if raw.is_some() { "\r\n" } else { "\n" };
    eprint!("attached to the console of {vm}; Ctrl-] detaches{nl}");
    let mut from_guest = stream.try_clone()?;
    let printer = std::thread::spawn(move || {
        let mut out = std::io::stdout();
        let mut buf = [0u8; 4096];
        loop {
            match from_guest.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut to_guest = &stream;
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 1024];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        let (typed, detach) = until_detach(&buf[..n]);
        if to_guest.write_all(typed).is_err() || detach {
            break;
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = printer.join();
    drop(raw);
    eprintln!("\ndetached from {vm}");
    Ok(())
}

/// The bytes to send before a Ctrl-], and whether one was typed.
fn until_detach(typed: &[u8]) -> (&[u8], bool) {
    match typed.iter().position(|&b| b == DETACH) {
        Some(i) => (&typed[..i], true),
        None => (typed, false),
    }
}

/// Print the serial log `log`; with `follow`, keep printing what the guest
/// adds (from the start again when a relaunch truncates it) until killed.
pub fn show_log(log: &Path, follow: bool) -> Result<(), ConsoleError> {
    let err = |source| ConsoleError::Log {
        path: log.display().to_string(),
        source,
    };
    let mut out = std::io::stdout();
    let mut at = 0u64;
    loop {
        let len = match std::fs::metadata(log) {
            Ok(m) => m.len(),
            Err(e) if follow && e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(err(e)),
        };
        if len < at {
            at = 0;
        }
        if len > at {
            use std::io::{Seek, SeekFrom};
            let mut f = std::fs::File::open(log).map_err(err)?;
            f.seek(SeekFrom::Start(at)).map_err(err)?;
            let mut new = Vec::new();
            f.take(len - at).read_to_end(&mut new).map_err(err)?;
            at += new.len() as u64;
            out.write_all(&escape_log(&new))?;
            out.flush()?;
        }
        if !follow {
            return Ok(());
        }
        std::thread::sleep(FOLLOW_PERIOD);
    }
}

/// Log bytes for a terminal: control characters but newline and tab shown
/// as `\xNN` (a CR before a newline dropped), everything else as it is.
fn escape_log(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\n' | b'\t' => out.push(b),
            b'\r' if bytes.get(i + 1) == Some(&b'\n') => {}
            0..=0x1f | 0x7f => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            _ => out.push(b),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_close_bracket_detaches_and_is_not_sent() {
        assert_eq!(until_detach(b"ls\r"), (&b"ls\r"[..], false));
        assert_eq!(until_detach(b"ls\x1dmore"), (&b"ls"[..], true));
        assert_eq!(until_detach(b"\x1d"), (&b""[..], true));
    }

    #[test]
    fn the_log_is_shown_with_control_characters_escaped() {
        assert_eq!(
            escape_log(b"boot\r\n\x1b]52;c;evil\x07ok\tdone\rx\n"),
            b"boot\n\\x1b]52;c;evil\\x07ok\tdone\\x0dx\n".to_vec()
        );
    }

    #[test]
    fn show_log_prints_the_whole_log_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("A.serial.log");
        std::fs::write(&log, b"hello\n").unwrap();
        show_log(&log, false).unwrap();
        let missing = dir.path().join("none.log");
        assert!(matches!(
            show_log(&missing, false),
            Err(ConsoleError::Log { .. })
        ));
    }
}
