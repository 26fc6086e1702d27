//! The minimega provider's disks and boot files, end to end on a real
//! two-node minimega mesh whose nodes have one file path each on their own
//! "disk" (tests/common/minimega.rs, `Mesh::start_same_filepath`: mm2 sees
//! its own folder at mm1's file path), through the `megaplan` binary:
//! 1. a VM on mm2 with a disk from a base image (a file in the base) and an
//!    ext4 disk with an injected file, booting a kernel and initrd megaplan
//!    placed in the head's file path: apply; the files reached mm2's own
//!    file path through iomeshage; the guest reads both files (a cc step
//!    of the experiment, and the test's own `cc exec`);
//! 2. a second plan is empty; a disk deleted behind megaplan's back shows
//!    in the next plan, and apply brings it back; another initrd replaces
//!    the VM, and the old one goes from both nodes' file paths;
//! 3. destroy keeps the `keep` disk's file (and the base image it may be
//!    an overlay of), clears the namespace and the boot files on both
//!    nodes; `destroy --all` then removes megaplan's files from both nodes'
//!    file paths, and leaves no VM, QEMU or namespace.
//!
//! Needs root, QEMU, Open vSwitch, mkfs.ext4 and scripts/minimega.sh's
//! build; skips with the reason otherwise, and fails instead when CI or
//! MEGAPLAN_E2E is set.

#[path = "common/lab.rs"]
mod lab;
#[path = "common/minimega.rs"]
mod minimega;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/run.rs"]
mod run;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use megaplan::minimega::client::{Command as Mm, Name, VmState};
use minimega::{Mesh, cc_sh, vm_info};
use run::Run;

const NS: &str = "mm-disks";
const UUID: &str = "44444444-4444-4444-4444-444444444444";
const INJECTED: &str = "injected-by-megaplan";
const IN_BASE: &str = "from-the-base-image";
/// How long the test's own `cc exec` waits for the guest's answer.
const LIMIT: Duration = Duration::from_secs(120);

fn experiment(base: &Path, images: &Path, base_img: &Path, seed: &Path, initrd: &str) -> String {
    format!(
        r#"experiment "{NS}" {{
    images "{images}"
    boot-timeout "5m"
    provider "minimega" {{
        base "{base}"
    }}
}}

disk "root" {{
    from "{base_img}"
}}
disk "data" size="32M" filesystem="ext4" {{
    inject "{seed}" "/hello.txt"
}}
disk "kept" size="8M" keep=#true

vm "V" {{
    host "mm2"
    uuid "{UUID}"
    kernel "$images/miniccc.kernel"
    initrd "$images/{initrd}"
    memory "256M"
    disk "root" mount="/base"
    disk "data" mount="/data"
    cc {{
        exec "grep -q {IN_BASE} /base/marker.txt && grep -q {INJECTED} /data/hello.txt"
    }}
}}
"#,
        images = images.display(),
        base = base.display(),
        base_img = base_img.display(),
        seed = seed.display(),
    )
}

/// Every file (not folder) under `dir`, relative to it, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                todo.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

fn sha256(p: &Path) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(std::fs::read(p).unwrap());
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// An ext4 image holding `marker.txt` (the base the `root` disk is made from).
fn base_image(dir: &Path) -> Option<PathBuf> {
    let mkfs = minimega::which("mkfs.ext4")?;
    let content = dir.join("base-content");
    std::fs::create_dir_all(&content).unwrap();
    std::fs::write(content.join("marker.txt"), format!("{IN_BASE}\n")).unwrap();
    let img = dir.join("base.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let out = std::process::Command::new(mkfs)
        .args(["-q", "-F", "-d"])
        .arg(&content)
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mkfs.ext4: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(img)
}

#[test]
fn disks_and_boot_files_reach_the_vm_on_another_node_and_go_with_destroy() {
    let t0 = Instant::now();
    let Some(mesh) = Mesh::start_same_filepath("minimega_disks") else {
        return;
    };
    let (mm1, mm2) = (&mesh.nodes[0], &mesh.nodes[1]);
    let work = tempfile::tempdir().unwrap();
    let Some(base_img) = base_image(work.path()) else {
        minimega::skip("minimega_disks", "mkfs.ext4 missing (e2fsprogs)");
        return;
    };
    let images = work.path().join("images");
    mesh.build_miniccc_image(&images);
    let seed = work.path().join("hello.txt");
    std::fs::write(&seed, format!("{INJECTED}\n")).unwrap();
    let file = work.path().join("mm-disks.kdl");
    let write = |initrd: &str| {
        std::fs::write(
            &file,
            experiment(&mm1.base, &images, &base_img, &seed, initrd),
        )
        .unwrap()
    };
    write("miniccc.initrd");
    let run = Run::new(&file, work.path());
    let ns = Name::new(NS).unwrap();
    let mut head = mm1.client();
    // Each node's own file path, as seen from here.
    let (files1, files2) = (mm1.dir.join("files"), mm2.dir.join("files"));
    let ours = |files: &Path| files.join("megaplan").join(NS);
    eprintln!("mesh and image ready after {:?}", t0.elapsed());

    // 1. Apply: the VM on mm2 boots from files it got through iomeshage.
    let (code, text) = run.plan();
    assert_eq!(code, Some(2), "a first plan has changes:\n{text}");
    assert!(
        text.contains("disk.root") && text.contains("disk.data"),
        "{text}"
    );
    run.ok(&["apply", "--auto-approve"]);
    eprintln!("applied after {:?}", t0.elapsed());
    let vms = vm_info(&mut head, &ns);
    assert_eq!(vms.len(), 1, "{vms:?}");
    assert_eq!(vms[0].host, "mm2", "{vms:?}");
    assert_eq!(vms[0].state, VmState::Running, "{vms:?}");
    let kernel = sha256(&images.join("miniccc.kernel"));
    let initrd = sha256(&images.join("miniccc.initrd"));
    let base = sha256(&base_img);
    let mut want = vec![
        format!("bases/{base}"),
        format!("boot/{kernel}"),
        format!("boot/{initrd}"),
        "disks/data.qcow2".to_string(),
        "disks/root.qcow2".to_string(),
    ];
    want.sort();
    // The keep disk no VM uses is on the head only.
    let mut want1 = want.clone();
    want1.push("disks/kept.qcow2".into());
    want1.sort();
    assert_eq!(
        files_under(&ours(&files1)),
        want1,
        "megaplan's files in the head's file path"
    );
    assert_eq!(
        files_under(&ours(&files2)),
        want,
        "the files mm2's minimega fetched for the VM (iomeshage)"
    );
    for f in [
        format!("boot/{kernel}"),
        format!("boot/{initrd}"),
        format!("bases/{base}"),
    ] {
        assert_eq!(
            sha256(&ours(&files2).join(&f)),
            sha256(&ours(&files1).join(&f)),
            "{f} on mm2 is the head's"
        );
    }
    // The guest reads the base's file and the injected one.
    let (exit, out) = cc_sh(
        &mut head,
        &ns,
        UUID,
        "cat /base/marker.txt /data/hello.txt",
        LIMIT,
    );
    assert_eq!(exit, 0, "{out}");
    // (minimega ends a raw response with a newline of its own.)
    assert_eq!(out.trim_end(), format!("{IN_BASE}\n{INJECTED}"));

    // 2. Converged; a disk deleted behind megaplan's back shows, and apply
    // brings it back.
    let (code, text) = run.plan();
    assert_eq!(code, Some(0), "a second plan is empty:\n{text}");
    head.run_ok(
        &Mm::new("file")
            .word("delete")
            .arg(&format!("megaplan/{NS}/disks/data.qcow2"))
            .unwrap(),
    )
    .unwrap();
    let (code, text) = run.plan();
    assert_eq!(code, Some(2), "the deleted disk shows:\n{text}");
    assert!(
        text.lines().any(|l| l.contains("disk.data")),
        "the plan names the disk:\n{text}"
    );
    run.ok(&["apply", "--auto-approve"]);
    let (code, text) = run.plan();
    assert_eq!(code, Some(0), "repaired:\n{text}");
    assert!(ours(&files1).join("disks/data.qcow2").is_file());
    let (exit, out) = cc_sh(&mut head, &ns, UUID, "cat /data/hello.txt", LIMIT);
    assert_eq!((exit, out.trim_end()), (0, INJECTED));

    // 2b. Another initrd (the same archive with zero padding after it, which
    // the kernel skips): the VM is replaced, and the old initrd, which no VM
    // names any more, goes from both nodes.
    let mut bytes = std::fs::read(images.join("miniccc.initrd")).unwrap();
    bytes.extend_from_slice(&[0u8; 512]);
    std::fs::write(images.join("padded.initrd"), &bytes).unwrap();
    let padded = sha256(&images.join("padded.initrd"));
    write("padded.initrd");
    run.ok(&["apply", "--auto-approve"]);
    let boot = |files: &Path| {
        let mut v: Vec<String> = files_under(&ours(files).join("boot"));
        v.sort();
        v
    };
    let mut want_boot = vec![kernel.clone(), padded.clone()];
    want_boot.sort();
    assert_eq!(boot(&files1), want_boot, "the head's boot files");
    assert_eq!(boot(&files2), want_boot, "mm2's boot files");
    let (code, text) = run.plan();
    assert_eq!(code, Some(0), "converged on the new initrd:\n{text}");

    // 3. Destroy: the keep disk stays, and only it (and the base image a
    // keep disk may be an overlay of); the namespace and boot files go
    // from both nodes.
    let out = run.ok(&["destroy", "--auto-approve"]);
    assert!(
        out.contains("disk.kept") && out.contains("keep disks stay in megaplan/mm-disks/disks"),
        "{out}"
    );
    assert_eq!(
        files_under(&ours(&files1)),
        [format!("bases/{base}"), "disks/kept.qcow2".to_string()],
        "the head's file path after destroy"
    );
    assert_eq!(
        files_under(&ours(&files2)),
        [format!("bases/{base}")],
        "mm2's file path after destroy"
    );
    for node in [mm1, mm2] {
        let mut c = node.client();
        assert!(
            !minimega::namespace_listed(&mut c, NS),
            "namespace {NS} still on {} with only a keep disk left",
            node.name
        );
    }

    // 3b. destroy --all: the keep disk and megaplan's files go from both
    // nodes, and nothing is left.
    let out = run.ok(&["destroy", "--all", "--auto-approve"]);
    assert!(out.contains("disk.kept"), "{out}");
    minimega::assert_nothing_left(&mesh, NS);
    for (node, files) in [(mm1, &files1), (mm2, &files2)] {
        // (minimega keeps its own cc responses there too.)
        assert_eq!(
            files_under(&files.join("megaplan")),
            Vec::<String>::new(),
            "megaplan's folder in {}'s file path",
            node.name
        );
    }
    drop(head);
    mesh.stop();
    eprintln!("whole test {:?}", t0.elapsed());
}
