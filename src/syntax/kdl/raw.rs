//! The raw KDL tree both readers build ([`super::fast`] directly,
//! [`super::full`] from the kdl crate's document) and the mapper reads.
//!
//! A leaf: it uses nothing else of `syntax::kdl`.

use miette::SourceSpan;

/// The deepest nesting of child blocks read (the kdl crate recurses per level).
pub(crate) const MAX_DEPTH: usize = 64;

/// A span clamped to `text` and widened to char boundaries, so it is always
/// safe to slice and render.
pub(super) fn fix(text: &str, span: SourceSpan) -> SourceSpan {
    let len = text.len();
    let mut start = span.offset().min(len);
    let mut end = start.saturating_add(span.len()).min(len);
    while start > 0 && !text.is_char_boundary(start) {
        start -= 1;
    }
    while end < len && !text.is_char_boundary(end) {
        end += 1;
    }
    (start..end).into()
}

// ---------------------------------------------------------------------------
// The parsed tree the mapper reads

/// A KDL node as the mapper reads it: names and values, with the *raw* spans
/// the kdl crate reports (the mapper trims and widens them itself). Both
/// readers produce it: the kdl crate's tree is converted (`full::list`),
/// and `fast` builds it directly with the same spans, so the
/// mapping and its diagnostics are shared.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct RawNode {
    pub name: RawName,
    /// From the name (or type annotation) to after the space that follows
    /// the node's last part; the terminator is not included.
    pub span: SourceSpan,
    /// The span of the node's type annotation `(...)`, if any.
    pub ty: Option<SourceSpan>,
    pub entries: Vec<RawEntry>,
    pub children: Option<RawChildren>,
}

/// A node name or property key, with the span of the name as written.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct RawName {
    pub value: String,
    pub span: SourceSpan,
}

/// A `{ ... }` block: its nodes, and a span from the first thing in the
/// block that is not space or a comment to the end of the last node.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct RawChildren {
    pub nodes: Vec<RawNode>,
    pub span: SourceSpan,
}

/// An argument (no name) or a property; `span` runs from the key (or the
/// value) to the end of the value.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct RawEntry {
    pub name: Option<RawName>,
    pub value: RawValue,
    pub span: SourceSpan,
    pub ty: Option<SourceSpan>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum RawValue {
    String(String),
    Integer(i128),
    Float(f64),
    Bool(bool),
    Null,
}

impl RawName {
    pub(super) fn value(&self) -> &str {
        &self.value
    }
    pub(super) fn span(&self) -> SourceSpan {
        self.span
    }
}

impl RawNode {
    pub(super) fn name(&self) -> &RawName {
        &self.name
    }
    pub(super) fn span(&self) -> SourceSpan {
        self.span
    }
    pub(super) fn ty(&self) -> Option<SourceSpan> {
        self.ty
    }
    pub(super) fn entries(&self) -> &[RawEntry] {
        &self.entries
    }
    pub(super) fn children(&self) -> Option<&RawChildren> {
        self.children.as_ref()
    }
}

impl RawChildren {
    pub(super) fn nodes(&self) -> &[RawNode] {
        &self.nodes
    }
    pub(super) fn span(&self) -> SourceSpan {
        self.span
    }
}

impl RawEntry {
    pub(super) fn name(&self) -> Option<&RawName> {
        self.name.as_ref()
    }
    pub(super) fn value(&self) -> &RawValue {
        &self.value
    }
    pub(super) fn span(&self) -> SourceSpan {
        self.span
    }
    pub(super) fn ty(&self) -> Option<SourceSpan> {
        self.ty
    }
}
