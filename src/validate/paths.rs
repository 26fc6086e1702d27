//! Paths as written: `$images` and relative paths resolved against the
//! experiment file's folder, and a warning (once per path) for a file that
//! does not exist yet.

use std::path::{Path, PathBuf};

use super::Validator;
use crate::diag::{Code, Diag};
use crate::model::Sp;

impl Validator {
    /// Resolve a path: `$images` and relative paths.
    pub(super) fn path(&mut self, p: &Sp<String>) -> PathBuf {
        let raw = &p.value;
        if let Some(rest) = raw.strip_prefix("$images") {
            let rest = rest.trim_start_matches('/');
            let images = match &self.images {
                Some(i) => i.clone(),
                None => {
                    self.err(
                        Diag::error(
                            Code::NoImages,
                            "'$images' is used but the experiment sets no images folder",
                        )
                        .label(p.span, "uses $images")
                        .help(
                            "add `images \"DIR\"` to the experiment node (relative to this file)",
                        ),
                    );
                    self.base.clone()
                }
            };
            return if rest.is_empty() {
                images
            } else {
                images.join(rest)
            };
        }
        let path = Path::new(raw);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base.join(path)
        }
    }

    pub(super) fn warn_missing(&mut self, path: &Path, sp: &Sp<String>, what: &str) {
        if !self.exists(path) && self.warned.insert(path.to_path_buf()) {
            self.d.push(
                Diag::warning(Code::MissingFile, format!("{what} '{}' does not exist (yet)", crate::diag::escape(&path.display().to_string())))
                    .label(sp.span, "not found")
                    .help(if matches!(what, "kernel" | "initrd") {
                        "this is an error at apply time; `megaplan image build --out DIR` makes a cc-enabled kernel and initrd".to_string()
                    } else {
                        format!("this is an error at apply time: create the {what}, or fix the path (a relative path is relative to this file)")
                    }),
            );
        }
    }

    /// Whether `path` exists, asked of the file system once per path.
    pub(super) fn exists(&mut self, path: &Path) -> bool {
        if let Some(&e) = self.exists.get(path) {
            return e;
        }
        let e = path.exists();
        self.exists.insert(path.to_path_buf(), e);
        e
    }

    /// The nic models an image's initrd lists (`image::read_nic_manifest`),
    /// read once per initrd.
    pub(super) fn nic_manifest(&mut self, initrd: &Path) -> Option<&[String]> {
        if !self.nic_manifests.contains_key(initrd) {
            let models = crate::image::read_nic_manifest(initrd);
            self.nic_manifests.insert(initrd.to_path_buf(), models);
        }
        self.nic_manifests[initrd].as_deref()
    }
}
