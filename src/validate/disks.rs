//! Pass: disks. Safe, unique names; a size or a base image; format,
//! filesystem and files to inject.

use std::collections::HashMap;

use miette::SourceSpan;

use super::Validator;
use super::values::parse_size;
use crate::diag::{Code, Diag, did_you_mean};
use crate::lab::{DiskFormat, DiskSpec};
use crate::model::Document;

impl Validator {
    pub(super) fn disks(&mut self, doc: &Document) -> Vec<DiskSpec> {
        let mut disks = Vec::new();
        let mut seen: HashMap<String, SourceSpan> = HashMap::new();
        for disk in &doc.disks {
            self.check_name("disk", &disk.name);
            if let Some(prev) = seen.insert(disk.name.value.clone(), disk.name.span) {
                self.err(
                    Diag::error(
                        Code::DuplicateDisk,
                        format!("disk '{}' is defined twice", disk.name.value),
                    )
                    .label(disk.name.span, "defined again here")
                    .label(prev, "first defined here")
                    .help("give each disk its own name"),
                );
                continue;
            }
            let size_bytes = disk.size.as_ref().and_then(|s| match parse_size(&s.value, 1) {
                Some(0) => {
                    self.err(
                        Diag::error(Code::BadSize, "a disk cannot be empty")
                            .label(s.span, "size 0")
                            .help("give a size such as \"10G\""),
                    );
                    None
                }
                Some(n) => Some(n),
                None => {
                    self.err(
                        Diag::error(Code::BadSize, format!("'{}' is not a size", s.value))
                            .label(s.span, "not a size")
                            .help("write a number with a unit: \"512M\", \"10G\", \"1T\" (a bare number is bytes)"),
                    );
                    None
                }
            });
            if disk.size.is_none() && disk.from.is_none() {
                self.err(
                    Diag::error(Code::DiskWithoutSize, format!("disk '{}' has neither a size nor a base image", disk.name.value))
                        .label(disk.name.span, "no size= and no from")
                        .help("add size=\"10G\", or `from \"base.qcow2\"` to make a copy-on-write child of a base image"),
                );
            }
            let format = match disk.format.as_ref() {
                None => DiskFormat::Qcow2,
                Some(f) => match f.value.as_str() {
                    "qcow2" => DiskFormat::Qcow2,
                    "raw" => DiskFormat::Raw,
                    other => {
                        self.err(
                            Diag::error(Code::BadFormat, format!("unknown disk format '{other}'"))
                                .label(f.span, "expected \"qcow2\" or \"raw\"")
                                .help_opt(did_you_mean(other, ["qcow2", "raw"])),
                        );
                        DiskFormat::Qcow2
                    }
                },
            };
            if let Some(fs) = &disk.filesystem
                && fs.value != "ext4"
            {
                self.err(
                    Diag::error(
                        Code::BadFilesystem,
                        format!("filesystem '{}' is not supported", fs.value),
                    )
                    .label(fs.span, "only \"ext4\" is supported")
                    .help("use filesystem=\"ext4\", or leave it out for a blank disk"),
                );
            }
            if let Some(first) = disk.inject.first()
                && disk.filesystem.is_none()
            {
                self.err(
                    Diag::error(
                        Code::InjectWithoutFilesystem,
                        format!(
                            "disk '{}' injects files but has no filesystem",
                            disk.name.value
                        ),
                    )
                    .label(first.span, "inject needs a filesystem")
                    .help("add filesystem=\"ext4\" to the disk"),
                );
            }
            if disk.from.is_some() && disk.filesystem.is_some() {
                self.err(
                    Diag::error(
                        Code::FromWithFilesystem,
                        "a disk made from a base image cannot also be formatted",
                    )
                    .label(
                        disk.filesystem.as_ref().map_or(disk.span, |f| f.span),
                        "filesystem here",
                    )
                    .help("remove filesystem= (the base image already has one) or remove `from`"),
                );
            }
            let from = disk.from.as_ref().map(|f| {
                let p = self.path(f);
                self.warn_missing(&p, f, "base image");
                p
            });
            let mut inject = Vec::new();
            for inj in &disk.inject {
                let p = self.path(&inj.src);
                self.warn_missing(&p, &inj.src, "file to inject");
                if !inj.dst.value.starts_with('/') {
                    self.err(
                        Diag::error(
                            Code::RelativeGuestPath,
                            format!("'{}' is not an absolute path", inj.dst.value),
                        )
                        .label(inj.dst.span, "must start with '/'")
                        .help("paths inside the disk are absolute, like \"/etc/motd\""),
                    );
                }
                inject.push((p, inj.dst.value.clone()));
            }
            disks.push(DiskSpec {
                name: disk.name.value.clone(),
                address: format!("disk.{}", disk.name.value),
                size_bytes,
                format,
                filesystem: disk.filesystem.as_ref().map(|f| f.value.clone()),
                keep: disk.keep.as_ref().is_some_and(|k| k.value),
                from,
                inject,
            });
        }
        disks
    }
}
