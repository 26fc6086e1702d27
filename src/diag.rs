//! User-facing diagnostics: every error about an experiment file, with its
//! file:line:col, a label on the exact value and a help line.
//!
//! Invariants:
//! - Front ends and `validate` never stop at the first problem: they push into a
//!   [`Diagnostics`] and go on.
//! - A [`Diag`] is plain data (message, labels, help, severity); rendering is
//!   miette's, so CLI output and snapshot tests show the same text.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::{Diagnostic, LabeledSpan, NamedSource, Severity, SourceSpan};

/// An experiment file's text and the name it is shown under.
#[derive(Clone, Debug)]
pub struct SourceFile {
    /// The path as given (used for display and to resolve relative paths).
    pub path: PathBuf,
    pub text: Arc<String>,
}

impl SourceFile {
    pub fn new(path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        SourceFile {
            path: path.into(),
            text: Arc::new(text.into()),
        }
    }

    pub fn read(path: &Path) -> std::io::Result<Self> {
        Ok(Self::new(path, std::fs::read_to_string(path)?))
    }

    pub fn name(&self) -> String {
        self.path.display().to_string()
    }

    /// The syntax, chosen by file extension: `.toml` is TOML, anything else KDL.
    pub fn syntax(&self) -> Syntax {
        match self.path.extension().and_then(|e| e.to_str()) {
            Some("toml") => Syntax::Toml,
            _ => Syntax::Kdl,
        }
    }

    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    fn named(&self) -> NamedSource<Arc<String>> {
        NamedSource::new(self.name(), self.text.clone())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syntax {
    Kdl,
    Toml,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Label {
    pub span: SourceSpan,
    pub text: Option<String>,
}

/// One problem in an experiment file.
#[derive(Clone, Debug, PartialEq)]
pub struct Diag {
    pub severity: Severity,
    /// A stable code such as `megaplan::unknown_network`.
    pub code: &'static str,
    pub message: String,
    /// The first label is the primary one (its position is the diagnostic's).
    pub labels: Vec<Label>,
    pub help: Option<String>,
}

impl Diag {
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Diag {
            severity: Severity::Error,
            code,
            message: message.into(),
            labels: Vec::new(),
            help: None,
        }
    }
    pub fn warning(code: &'static str, message: impl Into<String>) -> Self {
        Diag {
            severity: Severity::Warning,
            ..Self::error(code, message)
        }
    }
    pub fn label(mut self, span: SourceSpan, text: impl Into<String>) -> Self {
        self.labels.push(Label {
            span,
            text: Some(text.into()),
        });
        self
    }
    pub fn at(mut self, span: SourceSpan) -> Self {
        self.labels.push(Label { span, text: None });
        self
    }
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
    pub fn help_opt(mut self, help: Option<String>) -> Self {
        if help.is_some() {
            self.help = help;
        }
        self
    }
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
    /// Attach the file, giving a value miette can render.
    pub fn with_source(&self, src: &SourceFile) -> Report {
        Report {
            diag: self.clone(),
            src: src.named(),
            location: self
                .labels
                .first()
                .map(|l| {
                    let (line, col) = src.line_col(l.span.offset());
                    format!("{}:{line}:{col}", src.name())
                })
                .unwrap_or_else(|| src.name()),
        }
    }
}

/// A [`Diag`] bound to its file, ready for miette.
#[derive(Debug)]
pub struct Report {
    diag: Diag,
    src: NamedSource<Arc<String>>,
    location: String,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.diag.message)
    }
}
impl std::error::Error for Report {}

impl Diagnostic for Report {
    fn code<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        Some(Box::new(self.diag.code))
    }
    fn severity(&self) -> Option<Severity> {
        Some(self.diag.severity)
    }
    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        self.diag
            .help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn std::fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        if self.diag.labels.is_empty() {
            None
        } else {
            Some(&self.src)
        }
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.diag.labels.is_empty() {
            return None;
        }
        Some(Box::new(self.diag.labels.iter().enumerate().map(
            |(i, l)| {
                if i == 0 {
                    LabeledSpan::new_primary_with_span(l.text.clone(), l.span)
                } else {
                    LabeledSpan::new_with_span(l.text.clone(), l.span)
                }
            },
        )))
    }
}

/// Everything found wrong with one file, in the order found.
#[derive(Clone, Debug, Default)]
pub struct Diagnostics {
    pub items: Vec<Diag>,
}

impl Diagnostics {
    pub fn push(&mut self, d: Diag) {
        self.items.push(d);
    }
    pub fn extend(&mut self, other: Diagnostics) {
        self.items.extend(other.items);
    }
    pub fn has_errors(&self) -> bool {
        self.items.iter().any(Diag::is_error)
    }
    pub fn errors(&self) -> impl Iterator<Item = &Diag> {
        self.items.iter().filter(|d| d.is_error())
    }
    pub fn warnings(&self) -> impl Iterator<Item = &Diag> {
        self.items.iter().filter(|d| !d.is_error())
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    /// Sort by position so output reads top to bottom.
    pub fn sort(&mut self) {
        self.items
            .sort_by_key(|d| d.labels.first().map_or(usize::MAX, |l| l.span.offset()));
    }

    /// Render every diagnostic, deterministic and without colour (tests, pipes).
    pub fn render_plain(&self, src: &SourceFile) -> String {
        let handler =
            miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
                .with_width(100);
        let mut out = String::new();
        for d in &self.items {
            let report = d.with_source(src);
            handler
                .render_report(&mut out, &report)
                .expect("rendering into a String cannot fail");
        }
        out
    }
}

/// "did you mean 'LAN'?" — the closest candidate by edit distance, if close.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = levenshtein(&word.to_lowercase(), &c.to_lowercase());
        let limit = (word.chars().count().max(c.chars().count()) / 3).max(1);
        if d <= limit && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| format!("did you mean '{c}'?"))
}

/// Optimal string alignment distance: edits and adjacent transpositions.
fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(
            did_you_mean("LNA", ["LAN", "mon"]).as_deref(),
            Some("did you mean 'LAN'?")
        );
        assert_eq!(did_you_mean("internet", ["LAN", "mon"]), None);
    }

    #[test]
    fn line_col_is_one_based() {
        let src = SourceFile::new("x.kdl", "ab\ncd");
        assert_eq!(src.line_col(0), (1, 1));
        assert_eq!(src.line_col(4), (2, 2));
    }
}
