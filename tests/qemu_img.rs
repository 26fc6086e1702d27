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

        // A missing path is an error even though debugfs exits 0.
        let err = qemu_img::extract(&img, format, "/nope", &f)
            .await
            .unwrap_err();
        assert!(matches!(err, QemuImgError::Debugfs { .. }), "{err:?}");
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
