//! Builds a cc-enabled image (`megaplan image build`) from the guest kernel of
//! scripts/guest-kernel.sh and the real agent, boots it under QEMU, talks to the
//! agent over virtio-serial, reads a file from an ext4 disk mounted by /init
//! (`megaplan.mounts=`), and powers the guest off through ACPI.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use megaplan::agent::{AgentClient, Exit};
use megaplan::drivers::process;
use megaplan::drivers::qemu::{self, DiskConfig, VmConfig};
use megaplan::drivers::qemu_img::{self, ImageFormat};
use megaplan::drivers::qmp::{self, StopOutcome};
use megaplan::image::{self, ImageOptions, KernelSource};
use uuid::Uuid;

#[path = "common/netns.rs"]
mod netns;

/// Kills the QEMU process on drop, so that a failing test leaves nothing behind.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if process::process_alive(self.0) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGKILL) };
        }
    }
}

fn prerequisites() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return netns::skip("image_boot", "needs root");
    }
    let on_path = |bin: &str| {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .any(|d| d.join(bin).is_file())
    };
    if !on_path(qemu::QEMU_BINARY) {
        return netns::skip(
            "image_boot",
            &format!("{} missing (scripts/setup-host.sh)", qemu::QEMU_BINARY),
        );
    }
    if !Path::new(image::DEFAULT_BUSYBOX).is_file() {
        return netns::skip(
            "image_boot",
            &format!("{} missing (busybox-static)", image::DEFAULT_BUSYBOX),
        );
    }
    true
}

/// The guest kernel dir: scripts/guest-kernel.sh fetches it once, then prints it.
fn guest_kernel_dir() -> Option<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/guest-kernel.sh");
    let out = std::process::Command::new(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run scripts/guest-kernel.sh");
    if !out.status.success() {
        netns::skip(
            "image_boot",
            &format!("guest-kernel.sh failed ({})", out.status),
        );
        return None;
    }
    Some(PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_image_boots_and_serves_cc() {
    if !prerequisites() {
        return;
    }
    let Some(kdir) = guest_kernel_dir() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();

    // The image.
    let t = Instant::now();
    let mut opts = ImageOptions::new(dir.path().join("img"));
    opts.kernel = KernelSource::Dir(kdir);
    opts.agent = Some(PathBuf::from(env!("CARGO_BIN_EXE_megaplan-agent")));
    // A dynamically linked extra binary (not a busybox applet), with its libraries.
    let getconf = Path::new("/usr/bin/getconf");
    if getconf.is_file() {
        opts.include.push(getconf.to_path_buf());
    }
    let img = image::build(&opts).expect("image build");
    eprintln!(
        "image built in {:?}: kernel {} ({} bytes), initrd {} ({} bytes), modules {:?}, warnings {:?}",
        t.elapsed(),
        img.kernel.display(),
        std::fs::metadata(&img.kernel).unwrap().len(),
        img.initrd.display(),
        std::fs::metadata(&img.initrd).unwrap().len(),
        img.modules,
        img.warnings
    );
    assert!(img.modules.iter().any(|m| m == "virtio_console"));

    // A data disk with a file in it.
    let src = dir.path().join("disk-src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("hello.txt"), "hello from the data disk\n").unwrap();
    let disk = dir.path().join("data.qcow2");
    qemu_img::make_ext4(&disk, ImageFormat::Qcow2, 16 << 20, Some(&src))
        .await
        .expect("make_ext4");

    let uuid = Uuid::new_v4();
    let accel = qemu::detect_accel().expect("MEGAPLAN_ACCEL");
    let mut cfg = VmConfig::new("image-boot", uuid, accel, dir.path().join("run"));
    cfg.memory_mib = 256;
    cfg.kernel = Some(img.kernel.clone());
    cfg.initrd = Some(img.initrd.clone());
    cfg.append =
        Some("console=ttyS0 panic=-1 megaplan.mounts=vda:/data megaplan.hostname=imgboot".into());
    cfg.disks.push(DiskConfig {
        path: disk.clone(),
        format: ImageFormat::Qcow2,
        readonly: false,
    });
    cfg.extra_args = vec!["-no-reboot".into()];
    eprintln!("accel: {}", cfg.accel);

    let started = Instant::now();
    let pid = qemu::launch(&cfg).await.expect("launch");
    let _guard = KillOnDrop(pid);
    let serial = cfg.serial_log_path();
    let log = || std::fs::read_to_string(&serial).unwrap_or_default();

    let t = Duration::from_secs(120);
    let client = AgentClient::connect_timeout(cfg.cc_socket(), t)
        .await
        .expect("connect to cc.sock");
    let hello = match client.wait_hello(t).await {
        Ok(h) => h,
        Err(e) => panic!("no hello: {e}; serial log:\n{}", log()),
    };
    let latency = started.elapsed();
    eprintln!("hello {latency:?} after launch: {hello:?}");
    assert_eq!(
        hello.uuid.as_deref().map(str::to_ascii_lowercase),
        Some(uuid.hyphenated().to_string().to_ascii_lowercase()),
        "uuid"
    );
    assert_eq!(hello.hostname, "imgboot");

    let r = client
        .exec("uname -r", Some(Duration::from_secs(30)))
        .await
        .expect("exec uname");
    assert_eq!(r.exit, Exit::Code(0), "{r:?}");
    assert_eq!(r.stdout.trim(), img.kernel_version);

    let r = client
        .exec("cat /data/hello.txt", Some(Duration::from_secs(30)))
        .await
        .expect("exec cat");
    assert_eq!(r.exit, Exit::Code(0), "{r:?}; serial log:\n{}", log());
    assert_eq!(r.stdout, "hello from the data disk\n");

    if getconf.is_file() {
        let r = client
            .exec("/usr/bin/getconf PAGESIZE", Some(Duration::from_secs(30)))
            .await
            .expect("exec getconf");
        assert_eq!((r.exit, r.stdout.trim()), (Exit::Code(0), "4096"), "{r:?}");
    }

    // Write to the disk: the power button handler syncs and unmounts it.
    let r = client
        .exec(
            "echo written-in-guest > /data/out.txt && lsmod | wc -l",
            Some(Duration::from_secs(30)),
        )
        .await
        .expect("exec write");
    assert_eq!(r.exit, Exit::Code(0), "{r:?}");
    drop(client);

    let t = Instant::now();
    let outcome = qmp::stop_vm(&cfg.runtime_dir, pid, Duration::from_secs(60))
        .await
        .expect("stop_vm");
    eprintln!("stopped ({outcome:?}) in {:?}", t.elapsed());
    assert_eq!(outcome, StopOutcome::PoweredOff, "serial log:\n{}", log());
    assert!(!process::process_alive(pid));

    // The file written in the guest is on the disk.
    let out = dir.path().join("extracted");
    qemu_img::extract(&disk, ImageFormat::Qcow2, "/out.txt", &out)
        .await
        .expect("extract");
    assert_eq!(
        std::fs::read_to_string(out.join("out.txt")).unwrap(),
        "written-in-guest\n"
    );
}

/// Each non-virtio nic model the image has a driver for becomes an interface
/// in the guest (before, only virtio_net was in the image: an e1000 nic had no
/// interface, and eth0 silently became the next nic).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_virtio_nics_get_their_interfaces() {
    if !prerequisites() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI: prerequisites missing"
        );
        return;
    }
    let Some(kdir) = guest_kernel_dir() else {
        assert!(std::env::var_os("CI").is_none(), "CI: no guest kernel");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut opts = ImageOptions::new(dir.path().join("img"));
    opts.kernel = KernelSource::Dir(kdir);
    opts.agent = Some(PathBuf::from(env!("CARGO_BIN_EXE_megaplan-agent")));
    let img = image::build(&opts).expect("image build");
    let models: Vec<&str> = image::NIC_MODELS
        .iter()
        .filter(|(m, mods)| {
            *m != "virtio-net-pci" && mods.iter().any(|x| img.modules.iter().any(|l| l == x))
        })
        .map(|(m, _)| *m)
        .collect();
    eprintln!(
        "nic models with a driver in the image: {models:?}; warnings {:?}",
        img.warnings
    );
    assert!(
        !models.is_empty(),
        "no non-virtio nic driver in {:?}",
        img.modules
    );
    // The image says which models it drives, for validate's warning.
    assert_eq!(
        image::read_nic_manifest(&img.initrd).as_deref(),
        Some(img.nic_models.as_slice())
    );
    for m in &models {
        assert!(img.nic_models.iter().any(|n| n == m), "{m} not listed");
    }

    let accel = qemu::detect_accel().expect("MEGAPLAN_ACCEL");
    let mut cfg = VmConfig::new("nic-models", Uuid::new_v4(), accel, dir.path().join("run"));
    cfg.memory_mib = 256;
    cfg.kernel = Some(img.kernel.clone());
    cfg.initrd = Some(img.initrd.clone());
    cfg.append = Some("console=ttyS0 panic=-1".into());
    cfg.extra_args = vec!["-no-reboot".into()];
    for (i, m) in models.iter().enumerate() {
        cfg.extra_args.push("-device".into());
        cfg.extra_args
            .push(format!("{m},mac=02:00:00:00:10:{i:02x}"));
    }
    let pid = qemu::launch(&cfg).await.expect("launch");
    let _guard = KillOnDrop(pid);
    let serial = cfg.serial_log_path();
    let t = Duration::from_secs(120);
    let client = AgentClient::connect_timeout(cfg.cc_socket(), t)
        .await
        .expect("connect to cc.sock");
    let hello = match client.wait_hello(t).await {
        Ok(h) => h,
        Err(e) => panic!(
            "no hello: {e}; serial log:\n{}",
            std::fs::read_to_string(&serial).unwrap_or_default()
        ),
    };
    for (i, m) in models.iter().enumerate() {
        let mac = format!("02:00:00:00:10:{i:02x}");
        let iface = hello
            .interfaces
            .iter()
            .find(|f| f.mac.as_deref() == Some(mac.as_str()));
        assert!(
            iface.is_some_and(|f| f.name == format!("eth{i}")),
            "{m} nic ({mac}) is not eth{i}: {:?}",
            hello.interfaces
        );
    }
    drop(client);
    qmp::stop_vm(&cfg.runtime_dir, pid, Duration::from_secs(60))
        .await
        .expect("stop_vm");
    assert!(!process::process_alive(pid));
}
