//! qemu-img driver against the real tools (qemu-img, mkfs.ext4, debugfs).

use std::path::Path;

use megaplan::drivers::qemu_img::{self, ImageFormat, QemuImgError};

#[path = "common/netns.rs"]
mod netns;

const MIB: u64 = 1024 * 1024;

fn tools_present() -> bool {
    let found = |name: &str| {
        ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(name).is_file())
    };
    let ok = found("qemu-img") && found("mkfs.ext4") && found("debugfs");
    ok || netns::skip(
        "qemu_img",
        "qemu-img, mkfs.ext4 or debugfs missing (scripts/setup-host.sh)",
    )
}

#[tokio::test]
async fn create_and_inspect() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("a.qcow2");
    qemu_img::create(&q, ImageFormat::Qcow2, 64 * MIB, None)
        .await
        .unwrap();
    let info = qemu_img::info(&q).await.unwrap();
    assert_eq!(info.format, "qcow2");
    assert_eq!(info.image_format(), Some(ImageFormat::Qcow2));
    assert_eq!(info.virtual_size, 64 * MIB);
    assert_eq!(info.backing_file, None);

    let r = dir.path().join("b.img");
    qemu_img::create(&r, ImageFormat::Raw, 3 * MIB, None)
        .await
        .unwrap();
    let info = qemu_img::info(&r).await.unwrap();
    assert_eq!(info.image_format(), Some(ImageFormat::Raw));
    assert_eq!(info.virtual_size, 3 * MIB);

    // Errors carry qemu-img's stderr.
    let err = qemu_img::info(&dir.path().join("absent.qcow2"))
        .await
        .unwrap_err();
    match &err {
        QemuImgError::Failed { stderr, .. } => assert!(stderr.contains("absent.qcow2"), "{err}"),
        other => panic!("{other:?}"),
    }
    assert!(
        qemu_img::create(&r, ImageFormat::Raw, 0, None)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn backing_files_and_overlays() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A name with a comma and a colon: passed whole, never parsed as options.
    let base = dir.path().join("base,x:y.qcow2");
    qemu_img::create(&base, ImageFormat::Qcow2, 32 * MIB, None)
        .await
        .unwrap();

    let child = dir.path().join("child.qcow2");
    qemu_img::create(
        &child,
        ImageFormat::Qcow2,
        0,
        Some((&base, ImageFormat::Qcow2)),
    )
    .await
    .unwrap();
    let info = qemu_img::info(&child).await.unwrap();
    assert_eq!(info.backing_file.as_deref(), Some(base.as_path()));
    assert_eq!(info.backing_format.as_deref(), Some("qcow2"));
    assert_eq!(info.virtual_size, 32 * MIB);

    // A bigger child of a raw base.
    let raw = dir.path().join("base.raw");
    qemu_img::create(&raw, ImageFormat::Raw, 8 * MIB, None)
        .await
        .unwrap();
    let big = dir.path().join("big.qcow2");
    qemu_img::create(
        &big,
        ImageFormat::Qcow2,
        16 * MIB,
        Some((&raw, ImageFormat::Raw)),
    )
    .await
    .unwrap();
    let info = qemu_img::info(&big).await.unwrap();
    assert_eq!(info.virtual_size, 16 * MIB);
    assert_eq!(info.backing_format.as_deref(), Some("raw"));

    // A raw image cannot have a backing file.
    assert!(matches!(
        qemu_img::create(
            &dir.path().join("x.raw"),
            ImageFormat::Raw,
            MIB,
            Some((&raw, ImageFormat::Raw))
        )
        .await,
        Err(QemuImgError::Invalid(_))
    ));

    // create_overlay detects the base's format.
    let overlay = dir.path().join("ov.qcow2");
    qemu_img::create_overlay(&raw, &overlay).await.unwrap();
    let info = qemu_img::info(&overlay).await.unwrap();
    assert_eq!(info.image_format(), Some(ImageFormat::Qcow2));
    assert_eq!(info.backing_file.as_deref(), Some(raw.as_path()));
    assert_eq!(info.backing_format.as_deref(), Some("raw"));
    assert_eq!(info.virtual_size, 8 * MIB);
}

fn populate(src: &Path) {
    std::fs::create_dir_all(src.join("etc/deep/er")).unwrap();
    std::fs::write(src.join("hello.txt"), "hello from the host\n").unwrap();
    std::fs::write(src.join("etc/deep/er/conf"), "a=1\n").unwrap();
    std::fs::write(src.join("with space \"and quote\""), "odd name\n").unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(src.join("etc/big.bin"), &big).unwrap();
}

fn check_tree(out: &Path) {
    assert_eq!(
        std::fs::read_to_string(out.join("hello.txt")).unwrap(),
        "hello from the host\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("etc/deep/er/conf")).unwrap(),
        "a=1\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("with space \"and quote\"")).unwrap(),
        "odd name\n"
    );
    let big = std::fs::read(out.join("etc/big.bin")).unwrap();
    assert_eq!(big.len(), 300_000);
    assert!(big.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
}

#[tokio::test]
async fn ext4_with_files_and_extract() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    populate(&src);

    for format in [ImageFormat::Qcow2, ImageFormat::Raw] {
        let img = dir.path().join(format!("fs.{format}"));
        qemu_img::make_ext4(&img, format, 16 * MIB, Some(&src))
            .await
            .unwrap();
        let info = qemu_img::info(&img).await.unwrap();
        assert_eq!(info.image_format(), Some(format));
        assert_eq!(info.virtual_size, 16 * MIB);
        // No temporary file is left beside the image.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        // The whole filesystem.
        let all = dir.path().join(format!("out-all-{format}"));
        qemu_img::extract(&img, format, "/", &all).await.unwrap();
        check_tree(&all);
        assert!(all.join("lost+found").is_dir());

        // One directory: created inside to_dir, like cp -r.
        let one = dir.path().join(format!("out-one-{format}"));
        qemu_img::extract(&img, format, "/etc/deep/", &one)
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(one.join("deep/er/conf")).unwrap(),
            "a=1\n"
        );
        assert!(!one.join("hello.txt").exists());

        // One file with an awkward name.
        let f = dir.path().join(format!("out-file-{format}"));
        qemu_img::extract(&img, format, "/with space \"and quote\"", &f)
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(f.join("with space \"and quote\"")).unwrap(),
            "odd name\n"
        );

        // A missing path is an error.
        let err = qemu_img::extract(&img, format, "/nope", &f)
            .await
            .unwrap_err();
        assert!(matches!(err, QemuImgError::Ext4 { .. }), "{err:?}");
        assert!(err.to_string().contains("not found"), "{err}");
    }

    // An empty filesystem.
    let empty = dir.path().join("empty.qcow2");
    qemu_img::make_ext4(&empty, ImageFormat::Qcow2, 8 * MIB, None)
        .await
        .unwrap();
    let out = dir.path().join("out-empty");
    qemu_img::extract(&empty, ImageFormat::Qcow2, "/", &out)
        .await
        .unwrap();
    let names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["lost+found"]);

    // Writes through an overlay of the ext4 disk leave the base alone; the overlay
    // itself extracts like any qcow2 image.
    let base = dir.path().join("fs.qcow2");
    let ov = dir.path().join("fs-overlay.qcow2");
    qemu_img::create_overlay(&base, &ov).await.unwrap();
    let out = dir.path().join("out-overlay");
    qemu_img::extract(&ov, ImageFormat::Qcow2, "/", &out)
        .await
        .unwrap();
    check_tree(&out);

    assert!(matches!(
        qemu_img::make_ext4(&dir.path().join("tiny.raw"), ImageFormat::Raw, 4096, None).await,
        Err(QemuImgError::Invalid(_))
    ));
    assert!(matches!(
        qemu_img::extract(&base, ImageFormat::Qcow2, "relative", &out).await,
        Err(QemuImgError::Invalid(_))
    ));
}

fn debugfs_write(img: &Path, commands: &str) {
    let cmds = img.with_extension("cmds");
    std::fs::write(&cmds, commands).unwrap();
    let debugfs = ["/usr/sbin/debugfs", "/sbin/debugfs", "/usr/bin/debugfs"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .unwrap();
    let out = std::process::Command::new(debugfs)
        .arg("-w")
        .arg("-f")
        .arg(&cmds)
        .arg(img)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<_> = stderr
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with("debugfs "))
        .collect();
    assert!(complaints.is_empty(), "debugfs: {complaints:?}");
}

/// Rewrite the one-byte name of the root directory's entry `from` (a regular
/// file) to `to`, in the raw image (debugfs refuses to make duplicates).
fn rename_dirent(img: &Path, from: u8, to: u8) {
    let ls = std::process::Command::new(
        ["/usr/sbin/debugfs", "/sbin/debugfs", "/usr/bin/debugfs"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .unwrap(),
    )
    .args(["-R", "ls -l /"])
    .arg(img)
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&ls.stdout);
    let ino: u32 = text
        .lines()
        .find(|l| l.trim_end().ends_with(&format!(" {}", from as char)))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no entry {:?} in {text}", from as char));
    let mut data = std::fs::read(img).unwrap();
    // inode (le32), rec_len (le16), name_len 1, file type 1 (regular), name.
    let ino = ino.to_le_bytes();
    let hits: Vec<usize> = (0..data.len() - 9)
        .filter(|&i| {
            data[i..i + 4] == ino && data[i + 6] == 1 && data[i + 7] == 1 && data[i + 8] == from
        })
        .collect();
    assert_eq!(hits.len(), 1, "dirent {:?} found at {hits:?}", from as char);
    data[hits[0] + 8] = to;
    std::fs::write(img, data).unwrap();
}

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// A disk the guest rewrote: a symlink `x` and a regular file `x` in one
/// directory (two dirents of one name), setuid and world-writable modes, a
/// symlink to a host file, a FIFO, and names that already exist in the
/// destination (one of them a planted symlink). Nothing outside the
/// destination changes, nothing is overwritten, and modes are sanitised.
#[tokio::test]
async fn extract_of_a_hostile_disk_never_writes_outside_to_dir() {
    use std::os::unix::fs::PermissionsExt;
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let canary = dir.path().join("canary");
    std::fs::write(&canary, "canary\n").unwrap();
    std::fs::set_permissions(&canary, std::fs::Permissions::from_mode(0o644)).unwrap();
    let canary2 = dir.path().join("canary2");
    std::fs::write(&canary2, "canary2\n").unwrap();

    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("y"), "guest data\n").unwrap();
    std::fs::write(src.join("suid"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(src.join("suid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::write(src.join("open"), "anyone\n").unwrap();
    std::fs::set_permissions(src.join("open"), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(src.join("sub/inner"), "inner\n").unwrap();
    std::fs::set_permissions(src.join("sub"), std::fs::Permissions::from_mode(0o3777)).unwrap();
    std::fs::write(src.join("hello"), "from the guest\n").unwrap();
    std::fs::write(src.join("planted"), "from the guest\n").unwrap();
    std::os::unix::fs::symlink(&canary, src.join("passwd")).unwrap();
    let fifo = std::ffi::CString::new(src.join("pipe").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);

    // Without metadata_csum, so that a directory entry can be renamed in place.
    let raw = dir.path().join("hostile.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(16 * MIB)
        .unwrap();
    let mkfs = [
        "/usr/sbin/mkfs.ext4",
        "/sbin/mkfs.ext4",
        "/usr/bin/mkfs.ext4",
    ]
    .into_iter()
    .find(|p| Path::new(p).is_file())
    .unwrap();
    let st = std::process::Command::new(mkfs)
        .args(["-q", "-F", "-t", "ext4", "-O", "^metadata_csum", "-d"])
        .arg(&src)
        .arg(&raw)
        .status()
        .unwrap();
    assert!(st.success());
    // `x -> canary`, then a hard link `w` to the regular file `y`, renamed to
    // `x` by hand: two dirents of one name, the symlink first.
    debugfs_write(&raw, &format!("symlink x {}\nln y w\n", canary.display()));
    rename_dirent(&raw, b'w', b'x');
    let qcow = dir.path().join("hostile.qcow2");
    qemu_img::convert(&raw, ImageFormat::Raw, &qcow, ImageFormat::Qcow2)
        .await
        .unwrap();

    for (img, format) in [(&raw, ImageFormat::Raw), (&qcow, ImageFormat::Qcow2)] {
        let out = dir.path().join(format!("out-{format}"));
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("hello"), "mine\n").unwrap();
        std::os::unix::fs::symlink(&canary2, out.join("planted")).unwrap();

        let report = qemu_img::extract(img, format, "/", &out).await.unwrap();
        eprintln!("{report:?}");

        // Nothing outside the destination changed.
        assert_eq!(std::fs::read_to_string(&canary).unwrap(), "canary\n");
        assert_eq!(mode_of(&canary), 0o644);
        assert_eq!(std::fs::read_to_string(&canary2).unwrap(), "canary2\n");
        // The first `x` is kept as a symlink (not followed); the second is skipped.
        assert_eq!(std::fs::read_link(out.join("x")).unwrap(), canary);
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.contains("/x") && w.contains("duplicate")),
            "{report:?}"
        );
        assert_eq!(std::fs::read_link(out.join("passwd")).unwrap(), canary);
        // Modes: no setuid/setgid/sticky, no group/world write.
        assert_eq!(mode_of(&out.join("suid")), 0o755);
        assert_eq!(mode_of(&out.join("open")), 0o755);
        assert_eq!(mode_of(&out.join("sub")), 0o755);
        assert_eq!(mode_of(&out.join("y")), 0o644);
        assert_eq!(
            std::fs::read_to_string(out.join("sub/inner")).unwrap(),
            "inner\n"
        );
        // The FIFO is skipped with a warning.
        assert!(std::fs::symlink_metadata(out.join("pipe")).is_err());
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.contains("/pipe") && w.contains("FIFO")),
            "{report:?}"
        );
        // What was there is never overwritten, and a planted link is not followed.
        assert_eq!(
            std::fs::read_to_string(out.join("hello")).unwrap(),
            "mine\n"
        );
        assert_eq!(std::fs::read_link(out.join("planted")).unwrap(), canary2);
        for name in ["/hello", "/planted"] {
            assert!(
                report
                    .warnings
                    .iter()
                    .any(|w| w.starts_with(name) && w.contains("not overwritten")),
                "{name}: {report:?}"
            );
        }
        // Extracting one guest symlink makes a symlink, never a copy of its target.
        let one = dir.path().join(format!("one-{format}"));
        qemu_img::extract(img, format, "/passwd", &one)
            .await
            .unwrap();
        assert_eq!(std::fs::read_link(one.join("passwd")).unwrap(), canary);
        // '..' in the guest path is refused.
        assert!(matches!(
            qemu_img::extract(img, format, "/sub/../y", &one).await,
            Err(QemuImgError::Invalid(_))
        ));
    }
}

/// Hard links (or sparse files) cannot make a small disk fill the host: the
/// copies may not add up to more than the disk, and a refused extraction
/// leaves nothing behind.
#[tokio::test]
async fn extract_refuses_more_data_than_the_disk_holds() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("big"), vec![7u8; 2 * MIB as usize]).unwrap();
    let img = dir.path().join("links.raw");
    qemu_img::make_ext4(&img, ImageFormat::Raw, 8 * MIB, Some(&src))
        .await
        .unwrap();
    // Five more names for the same 2 MiB inode: 12 MiB of copies from 8 MiB.
    let links: String = (0..5).map(|i| format!("ln big l{i}\n")).collect();
    debugfs_write(&img, &links);
    let out = dir.path().join("out");
    let err = qemu_img::extract(&img, ImageFormat::Raw, "/", &out)
        .await
        .unwrap_err();
    assert!(matches!(err, QemuImgError::Ext4 { .. }), "{err:?}");
    assert!(err.to_string().contains("more than the disk"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    // One name of it is fine.
    let one = dir.path().join("one");
    qemu_img::extract(&img, ImageFormat::Raw, "/l0", &one)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(one.join("l0")).unwrap().len(),
        2 * MIB as usize
    );
}

/// A link planted where make_ext4 puts its temporary (or its raw image) is
/// never written through: its target keeps its content.
#[tokio::test]
async fn make_ext4_never_writes_through_a_planted_link() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let canary = dir.path().join("canary");
    std::fs::write(&canary, "precious").unwrap();
    // The qcow2 path's temporary: `.NAME.ext4-PID.tmp` beside it.
    let img = dir.path().join("d.qcow2");
    let tmp = dir
        .path()
        .join(format!(".d.qcow2.ext4-{}.tmp", std::process::id()));
    std::os::unix::fs::symlink(&canary, &tmp).unwrap();
    qemu_img::make_ext4(&img, ImageFormat::Qcow2, 8 * MIB, None)
        .await
        .unwrap();
    // A raw image asked for at a link.
    let raw = dir.path().join("r.raw");
    std::os::unix::fs::symlink(&canary, &raw).unwrap();
    qemu_img::make_ext4(&raw, ImageFormat::Raw, 8 * MIB, None)
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), "precious");
    assert!(
        !std::fs::symlink_metadata(&raw)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(qemu_img::info(&img).await.unwrap().format, "qcow2");
}
