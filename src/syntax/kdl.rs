//! The KDL front end (stub: being written).

use crate::diag::{Diagnostics, SourceFile};
use crate::model::Document;

pub fn parse(_src: &SourceFile) -> (Document, Diagnostics) {
    (Document::default(), Diagnostics::default())
}

pub fn emit(_doc: &Document) -> String {
    String::new()
}
