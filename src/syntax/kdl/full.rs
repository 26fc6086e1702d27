//! The fallback reader: the kdl crate (KDL 2.0, then 1.0) for whatever the
//! fast reader does not take, converted to the raw tree. Syntax errors come
//! from here, so they read the same whichever reader was tried first.

use kdl::{KdlDiagnostic, KdlDocument, KdlError};
use miette::SourceSpan;

use super::raw::{MAX_DEPTH, RawChildren, RawEntry, RawName, RawNode, RawValue, fix};
use crate::diag::{Code, Diag, Diagnostics};

/// Read `text` with the kdl crate; syntax errors go into `diags`.
pub(super) fn read(text: &str, diags: &mut Diagnostics) -> Option<Vec<RawNode>> {
    // The kdl crate recurses per block: refuse deep nesting before it sees it.
    if let Some(at) = too_deep(text) {
        diags.push(
            Diag::error(
                Code::TooDeep,
                format!("child blocks are nested more than {MAX_DEPTH} levels deep"),
            )
            .label((at..at + 1).into(), format!("level {}", MAX_DEPTH + 1))
            .help("an experiment nests at most a few levels (vm { cc { ... } }): close the blocks"),
        );
        return None;
    }
    let mut r = Reader { text, diags };
    r.read_kdl().map(|d| list(&d))
}

/// The nodes of a document read by the kdl crate.
pub(super) fn list(doc: &KdlDocument) -> Vec<RawNode> {
    doc.nodes().iter().map(node).collect()
}

fn name(id: &kdl::KdlIdentifier) -> RawName {
    RawName {
        value: id.value().to_string(),
        span: id.span(),
    }
}

fn node(n: &kdl::KdlNode) -> RawNode {
    RawNode {
        name: name(n.name()),
        span: n.span(),
        ty: n.ty().map(|t| t.span()),
        entries: n.entries().iter().map(entry).collect(),
        children: n.children().map(|c| RawChildren {
            nodes: list(c),
            span: c.span(),
        }),
    }
}

fn entry(e: &kdl::KdlEntry) -> RawEntry {
    let value = match e.value() {
        kdl::KdlValue::String(s) => RawValue::String(s.clone()),
        kdl::KdlValue::Integer(i) => RawValue::Integer(*i),
        kdl::KdlValue::Float(f) => RawValue::Float(*f),
        kdl::KdlValue::Bool(b) => RawValue::Bool(*b),
        kdl::KdlValue::Null => RawValue::Null,
    };
    RawEntry {
        name: e.name().map(name),
        value,
        span: e.span(),
        ty: e.ty().map(|t| t.span()),
    }
}

/// The offset of the first `{` nested deeper than [`MAX_DEPTH`], skipping
/// strings (quoted, multi-line, raw in both KDL versions) and comments.
fn too_deep(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let (mut i, mut depth) = (0usize, 0usize);
    // The end of a raw string opened at `i` (`#`s, or `r` then `#`s, then `"`).
    let raw_end = |i: usize| -> Option<usize> {
        let mut j = i;
        if b[j] == b'r' {
            j += 1;
        }
        let h = b[j..].iter().take_while(|&&c| c == b'#').count();
        j += h;
        if b.get(j) != Some(&b'"') || (b[i] == b'#' && h == 0) {
            return None;
        }
        let mut close = vec![b'"'];
        close.extend(std::iter::repeat_n(b'#', h));
        let body = j + 1;
        let found = b[body..]
            .windows(close.len())
            .position(|w| w == close.as_slice());
        Some(found.map_or(b.len(), |p| body + p + close.len()))
    };
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                i = b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |p| i + p);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut nest = 1;
                i += 2;
                while i < b.len() && nest > 0 {
                    if b[i..].starts_with(b"/*") {
                        nest += 1;
                        i += 2;
                    } else if b[i..].starts_with(b"*/") {
                        nest -= 1;
                        i += 2;
                    } else {
                        i += 1;
                    }
                }
            }
            b'"' => {
                let triple = b[i..].starts_with(b"\"\"\"");
                i += if triple { 3 } else { 1 };
                while i < b.len() {
                    if b[i] == b'\\' {
                        i += 2;
                    } else if triple && b[i..].starts_with(b"\"\"\"") {
                        i += 3;
                        break;
                    } else if !triple && b[i] == b'"' {
                        i += 1;
                        break;
                    } else {
                        i += 1;
                    }
                }
            }
            b'#' | b'r'
                if (i == 0 || !b[i - 1].is_ascii_alphanumeric()) && raw_end(i).is_some() =>
            {
                i = raw_end(i).unwrap_or(b.len());
            }
            b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some(i);
                }
                i += 1;
            }
            b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            _ => i += 1,
        }
    }
    None
}

/// A token that starts like a number but carries a unit: `10G`, `30s`.
fn looks_like_unit(tok: &str) -> bool {
    let body = tok.trim_start_matches(['+', '-']);
    if !body.starts_with(|c: char| c.is_ascii_digit()) {
        return false;
    }
    if ["0x", "0o", "0b"].iter().any(|p| body.starts_with(p)) {
        return false;
    }
    let digits_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '_' || c == '.'))
        .unwrap_or(body.len());
    let suffix = &body[digits_end..];
    let exponent = suffix.len() > 1
        && suffix.starts_with(['e', 'E'])
        && suffix[1..]
            .trim_start_matches(['+', '-'])
            .chars()
            .all(|c| c.is_ascii_digit() || c == '_');
    suffix.chars().any(char::is_alphabetic) && !exponent
}

struct Reader<'t, 'd> {
    text: &'t str,
    diags: &'d mut Diagnostics,
}

impl Reader<'_, '_> {
    fn fix(&self, span: SourceSpan) -> SourceSpan {
        fix(self.text, span)
    }

    fn read_kdl(&mut self) -> Option<KdlDocument> {
        let text = self.text;
        let v2 = std::panic::catch_unwind(|| KdlDocument::parse_v2(text));
        match v2 {
            Ok(Ok(doc)) => return Some(doc),
            Ok(Err(err)) => {
                if let Ok(Ok(doc)) = std::panic::catch_unwind(|| KdlDocument::parse_v1(text)) {
                    return Some(doc);
                }
                self.syntax_errors(&err);
            }
            Err(_) => {
                if let Ok(Ok(doc)) = std::panic::catch_unwind(|| KdlDocument::parse_v1(text)) {
                    return Some(doc);
                }
                self.diags.push(
                    Diag::error(Code::KdlSyntax, "the KDL parser failed on this file")
                        .at((0..0).into()),
                );
            }
        }
        None
    }

    fn syntax_errors(&mut self, err: &KdlError) {
        let mut seen: std::collections::HashSet<(usize, usize, Option<String>)> =
            std::collections::HashSet::new();
        let mut unclosed = false;
        for d in &err.diagnostics {
            let key = (d.span.offset(), d.span.len(), d.message.clone());
            if !seen.insert(key) {
                continue;
            }
            // kdl reports one missing '}' twice: at the '{' and over the nodes.
            let closing = d
                .message
                .as_deref()
                .is_some_and(|m| m.to_ascii_lowercase().contains("closing '}'"));
            if closing && std::mem::replace(&mut unclosed, true) {
                continue;
            }
            let diag = self.syntax_error(d);
            self.diags.push(diag);
        }
        if err.diagnostics.is_empty() {
            self.diags
                .push(Diag::error(Code::KdlSyntax, "invalid KDL document").at((0..0).into()));
        }
    }

    /// Rebuild one of kdl's diagnostics as ours, sharpening the two most
    /// common KDL 1.0 habits: bare `true`/`false`/`null` and unquoted sizes.
    fn syntax_error(&self, d: &KdlDiagnostic) -> Diag {
        let span = self.fix(d.span);
        let message = d
            .message
            .clone()
            .unwrap_or_else(|| "invalid KDL syntax".to_string());
        let label = match d.label.as_deref() {
            None => "here".to_string(),
            Some("not EOF") => "unexpected here".to_string(),
            Some(l) => l.to_string(),
        };
        let snippet = self
            .text
            .get(span.offset()..span.offset() + span.len())
            .unwrap_or("");
        let base = Diag::error(Code::KdlSyntax, format!("KDL syntax error: {message}"));

        if matches!(snippet.trim(), "true" | "false" | "null") {
            let word = snippet.trim();
            return base
                .label(span, format!("bare `{word}` is not a KDL 2.0 value"))
                .help(format!(
                    "KDL 2.0 writes booleans and null with a '#': #{word}"
                ));
        }
        if let Some((tok, tspan)) = self.unquoted_unit(span) {
            return base
                .label(
                    tspan,
                    format!("`{tok}` starts like a number but is not one"),
                )
                .help(format!(
                    "quote it: \"{tok}\" (sizes and durations are strings in KDL 2.0)"
                ));
        }
        base.label(span, label).help_opt(d.help.clone())
    }

    /// The last token in `span` that starts with a digit but is not a number,
    /// such as `10G` or `30s`.
    fn unquoted_unit(&self, span: SourceSpan) -> Option<(String, SourceSpan)> {
        let start = span.offset();
        // kdl's span may stop inside the token (`size=10` of `size=10G`).
        let mut end = start + span.len();
        if let Some(rest) = self.text.get(end..) {
            end += rest
                .find(|c: char| c.is_whitespace() || "=;{}()\"".contains(c))
                .unwrap_or(rest.len());
        }
        let text = self.text.get(start..end)?;
        let mut found = None;
        let mut tok_start: Option<usize> = None;
        let ends = text
            .char_indices()
            .chain(std::iter::once((text.len(), ' ')));
        for (i, c) in ends {
            let sep = c.is_whitespace() || "=;{}()".contains(c);
            match (sep, tok_start) {
                (false, None) => tok_start = Some(i),
                (true, Some(s)) => {
                    tok_start = None;
                    let tok = &text[s..i];
                    if looks_like_unit(tok) {
                        found = Some((tok.to_string(), self.fix((start + s..start + i).into())));
                    }
                }
                _ => {}
            }
        }
        found
    }
}
