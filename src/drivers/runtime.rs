//! The layout of a VM's runtime folder: the names of the files QEMU keeps there
//! and their paths. A leaf: no model types, no other driver.

use std::path::{Path, PathBuf};

/// File names inside a VM's runtime dir.
pub const PIDFILE_NAME: &str = "qemu.pid";
pub const QMP_SOCKET_NAME: &str = "qmp.sock";
pub const CC_SOCKET_NAME: &str = "cc.sock";
pub const SERIAL_LOG_NAME: &str = "serial.log";
/// The serial console's unix socket (`megaplan console` attaches to it).
pub const CONSOLE_SOCKET_NAME: &str = "console.sock";
/// Longest path a unix socket address holds (sun_path minus the final NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// QEMU's pidfile in `runtime_dir`.
pub fn pidfile(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join(PIDFILE_NAME)
}

/// The QMP monitor's socket in `runtime_dir`.
pub fn qmp_socket(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join(QMP_SOCKET_NAME)
}

/// The guest agent's virtio-serial socket in `runtime_dir`.
pub fn cc_socket(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join(CC_SOCKET_NAME)
}

/// The serial console's socket in `runtime_dir`.
pub fn console_socket(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join(CONSOLE_SOCKET_NAME)
}

/// The default serial log in `runtime_dir`.
pub fn serial_log(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join(SERIAL_LOG_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_the_named_files_in_the_folder() {
        let rt = Path::new("/run/megaplan/vm");
        assert_eq!(pidfile(rt), Path::new("/run/megaplan/vm/qemu.pid"));
        assert_eq!(qmp_socket(rt), Path::new("/run/megaplan/vm/qmp.sock"));
        assert_eq!(cc_socket(rt), Path::new("/run/megaplan/vm/cc.sock"));
        assert_eq!(
            console_socket(rt),
            Path::new("/run/megaplan/vm/console.sock")
        );
        assert_eq!(serial_log(rt), Path::new("/run/megaplan/vm/serial.log"));
    }
}
