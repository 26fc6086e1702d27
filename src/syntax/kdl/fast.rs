//! A fast, strict reader for the small part of KDL 2.0 that experiment files
//! use. The kdl crate's parser is general, keeps every bit of formatting and
//! recovers from errors, which makes it slow on large files (10,000 VMs: ~3 s);
//! this reader is a single pass over the bytes.
//!
//! Invariants:
//! - It accepts only text the kdl crate reads as KDL 2.0, and then builds the
//!   same [`RawNode`] tree, raw spans included (checked by the differential
//!   tests in `kdl/tests.rs`). Everything else gives `None`, and the caller falls
//!   back to the kdl crate, which also produces every syntax error; this
//!   reader reports nothing.
//! - Read: nodes named by an identifier (ASCII, starting with a letter or
//!   `_`) or a quoted string; arguments and `key=value` properties (key an
//!   identifier or quoted string, no space around `=`) whose values are quoted
//!   strings (escapes `\n \r \t \b \f \s \\ \" \u{...}`), decimal integers and
//!   decimals without `_` or exponent, `#true`, `#false`, `#null`; child blocks;
//!   `;` and newline (`\n`, `\r\n`) terminators; `//` and nested `/* */`
//!   comments; `\` line continuations; spaces and tabs.
//! - Not read (`None`): raw and multi-line strings, bare identifiers as values,
//!   type annotations, slashdash `/-`, hex/octal/binary, `_` in numbers,
//!   exponents, `#inf`/`#nan`, whitespace escapes in strings, non-ASCII space
//!   and newlines, a BOM, KDL 1.0, and anything malformed.

use miette::SourceSpan;

use super::raw::{MAX_DEPTH, RawChildren, RawEntry, RawName, RawNode, RawValue};

/// Reads `text`, handing each top-level node to `each` as soon as it is read
/// (so the caller can map and free it: the whole raw tree of a large file
/// never exists at once). `None` when the text is outside the subset read
/// here (or is not valid KDL); `each` may then have seen some of the nodes,
/// whose results the caller must discard.
pub(super) fn parse(text: &str, each: &mut dyn FnMut(RawNode)) -> Option<()> {
    let mut r = Reader {
        text,
        b: text.as_bytes(),
        pos: 0,
        depth: 0,
    };
    r.top(each)
}

struct Reader<'t> {
    text: &'t str,
    b: &'t [u8],
    pos: usize,
    depth: usize,
}

/// Literal code points this reader accepts in strings and comments: not
/// control characters (tab aside), not anything KDL treats as a newline or
/// forbids (direction controls, BOM).
fn char_ok(c: char) -> bool {
    !((c < ' ' && c != '\t')
        || ('\u{7f}'..='\u{9f}').contains(&c)
        || matches!(
            c,
            '\u{200E}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
                | '\u{2028}'..='\u{2029}'
                | '\u{FEFF}'
        ))
}

fn ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn ident_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.:+@!?$%&*<>|~^".contains(&b)
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn at(&self, s: &[u8]) -> bool {
        self.b[self.pos..].starts_with(s)
    }

    /// The top level: `nodes` up to the end of the text, each handed to
    /// `each` once read (before its terminator is checked).
    fn top(&mut self, each: &mut dyn FnMut(RawNode)) -> Option<()> {
        self.line_space()?;
        loop {
            match self.peek() {
                None => return Some(()),
                Some(b'}' | b';') => return None,
                _ => {}
            }
            each(self.node()?);
            self.terminator(false)?;
            self.line_space()?;
        }
    }

    /// `nodes` of a block, up to its `}` (not consumed). The span runs from
    /// the first node to the end of the last.
    fn nodes(&mut self) -> Option<(Vec<RawNode>, SourceSpan)> {
        self.line_space()?;
        let start = self.pos;
        let mut end = start;
        let mut nodes = Vec::new();
        loop {
            match self.peek() {
                None | Some(b';') => return None,
                Some(b'}') => break,
                _ => {}
            }
            let node = self.node()?;
            end = node.span.offset() + node.span.len();
            nodes.push(node);
            self.terminator(true)?;
            self.line_space()?;
        }
        Some((nodes, (start..end).into()))
    }

    /// A node, up to (not including) its terminator. Its span ends after the
    /// space that follows its last part, as the kdl crate's does.
    fn node(&mut self) -> Option<RawNode> {
        let start = self.pos;
        let name = self.name()?;
        let mut entries = Vec::new();
        let mut children = None;
        loop {
            let before = self.pos;
            self.node_space()?;
            let spaced = self.pos > before;
            match self.peek() {
                None | Some(b'\n' | b'\r' | b';' | b'}') => break,
                Some(b'/') if self.at(b"//") => break,
                Some(b'{') if spaced => {
                    children = Some(self.block()?);
                    self.node_space()?;
                    break;
                }
                Some(_) if spaced => entries.push(self.entry()?),
                Some(_) => return None,
            }
        }
        Some(RawNode {
            name,
            span: (start..self.pos).into(),
            ty: None,
            entries,
            children,
        })
    }

    /// `{ nodes }`, from the `{` to after the `}`.
    fn block(&mut self) -> Option<RawChildren> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        self.pos += 1; // '{'
        let (nodes, span) = self.nodes()?;
        self.pos += 1; // '}'
        self.depth -= 1;
        Some(RawChildren { nodes, span })
    }

    /// What may follow a node: `;`, a newline, a `//` comment, the end of the
    /// text, or (in a block) the closing `}`, which is not consumed.
    fn terminator(&mut self, in_block: bool) -> Option<()> {
        match self.peek() {
            None => Some(()),
            Some(b'}') if in_block => Some(()),
            Some(b';') => {
                self.pos += 1;
                Some(())
            }
            Some(b'/') if self.at(b"//") => self.line_comment(),
            _ => self.newline(),
        }
    }

    /// A node name: an identifier or a quoted string.
    fn name(&mut self) -> Option<RawName> {
        let start = self.pos;
        let value = if self.peek()? == b'"' {
            self.quoted()?
        } else {
            self.identifier()?.to_string()
        };
        self.value_end()?;
        Some(RawName {
            value,
            span: (start..self.pos).into(),
        })
    }

    /// An argument or a `key=value` property.
    fn entry(&mut self) -> Option<RawEntry> {
        let start = self.pos;
        let first = self.peek()?;
        if first == b'"' || ident_start(first) {
            let key = if first == b'"' {
                self.quoted()?
            } else {
                self.identifier()?.to_string()
            };
            let key_end = self.pos;
            if self.peek() == Some(b'=') {
                self.pos += 1;
                let value = self.value()?;
                return Some(RawEntry {
                    name: Some(RawName {
                        value: key,
                        span: (start..key_end).into(),
                    }),
                    value,
                    span: (start..self.pos).into(),
                    ty: None,
                });
            }
            if first != b'"' {
                return None; // a bare identifier as a value
            }
            self.value_end()?;
            return Some(RawEntry {
                name: None,
                value: RawValue::String(key),
                span: (start..self.pos).into(),
                ty: None,
            });
        }
        let value = self.value()?;
        Some(RawEntry {
            name: None,
            value,
            span: (start..self.pos).into(),
            ty: None,
        })
    }

    fn value(&mut self) -> Option<RawValue> {
        let value = match self.peek()? {
            b'"' => RawValue::String(self.quoted()?),
            b'#' => self.keyword()?,
            b'0'..=b'9' | b'-' | b'+' => self.number()?,
            _ => return None,
        };
        self.value_end()?;
        Some(value)
    }

    /// After a name or value: space, a terminator, a comment, a line
    /// continuation, a closing `}` or the end of the text.
    fn value_end(&self) -> Option<()> {
        match self.peek() {
            None | Some(b' ' | b'\t' | b'\n' | b'\r' | b';' | b'}' | b'\\') => Some(()),
            Some(b'/') if self.at(b"//") || self.at(b"/*") => Some(()),
            _ => None,
        }
    }

    /// An identifier that KDL 2.0 does not read as a keyword or number.
    fn identifier(&mut self) -> Option<&str> {
        let start = self.pos;
        if !ident_start(self.peek()?) {
            return None;
        }
        while self.peek().is_some_and(ident_char) {
            self.pos += 1;
        }
        let id = &self.text[start..self.pos];
        if matches!(id, "true" | "false" | "null" | "inf" | "nan") {
            return None;
        }
        Some(id)
    }

    fn keyword(&mut self) -> Option<RawValue> {
        for (word, value) in [
            (&b"#true"[..], RawValue::Bool(true)),
            (b"#false", RawValue::Bool(false)),
            (b"#null", RawValue::Null),
        ] {
            if self.at(word) {
                self.pos += word.len();
                return Some(value);
            }
        }
        None
    }

    /// A decimal integer or a decimal with a fraction, at most 18 digits on
    /// each side of the point (so it always fits).
    fn number(&mut self) -> Option<RawValue> {
        let start = self.pos;
        if matches!(self.peek(), Some(b'-' | b'+')) {
            self.pos += 1;
        }
        let int_digits = self.digits();
        if !(1..=18).contains(&int_digits) {
            return None;
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            let frac_digits = self.digits();
            if !(1..=18).contains(&frac_digits) {
                return None;
            }
            let f: f64 = self.text[start..self.pos].parse().ok()?;
            return Some(RawValue::Float(f));
        }
        let i: i128 = self.text[start..self.pos].parse().ok()?;
        Some(RawValue::Integer(i))
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// A single-line quoted string, unescaped.
    fn quoted(&mut self) -> Option<String> {
        if self.at(b"\"\"\"") {
            return None; // multi-line string
        }
        self.pos += 1;
        let mut out = String::new();
        let mut seg = self.pos;
        loop {
            match self.peek()? {
                b'"' => {
                    out.push_str(&self.text[seg..self.pos]);
                    self.pos += 1;
                    return Some(out);
                }
                b'\\' => {
                    out.push_str(&self.text[seg..self.pos]);
                    self.pos += 1;
                    out.push(self.escape()?);
                    seg = self.pos;
                }
                b'\t' | b' '..=b'~' => self.pos += 1,
                0x80.. => {
                    let c = self.text[self.pos..].chars().next()?;
                    if !char_ok(c) {
                        return None;
                    }
                    self.pos += c.len_utf8();
                }
                _ => return None, // control characters, newlines, DEL
            }
        }
    }

    /// The character an escape stands for, after the `\`.
    fn escape(&mut self) -> Option<char> {
        let c = match self.peek()? {
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'b' => '\u{08}',
            b'f' => '\u{0C}',
            b's' => ' ',
            b'\\' => '\\',
            b'"' => '"',
            b'u' => {
                if self.b.get(self.pos + 1) != Some(&b'{') {
                    return None;
                }
                let hex_start = self.pos + 2;
                let mut end = hex_start;
                while self.b.get(end).is_some_and(u8::is_ascii_hexdigit) {
                    end += 1;
                }
                if !(1..=6).contains(&(end - hex_start)) || self.b.get(end) != Some(&b'}') {
                    return None;
                }
                let code = u32::from_str_radix(&self.text[hex_start..end], 16).ok()?;
                self.pos = end + 1;
                return char::from_u32(code);
            }
            _ => return None,
        };
        self.pos += 1;
        Some(c)
    }

    /// `node-space*`: spaces, tabs, `/* */` comments, line continuations.
    fn node_space(&mut self) -> Option<()> {
        loop {
            self.spaces()?;
            if self.peek() != Some(b'\\') {
                return Some(());
            }
            // `\` space* (`//` comment | newline | end of text)
            self.pos += 1;
            self.spaces()?;
            match self.peek() {
                None => {}
                Some(b'/') if self.at(b"//") => self.line_comment()?,
                Some(_) => self.newline()?,
            }
        }
    }

    /// Spaces, tabs and `/* */` comments.
    fn spaces(&mut self) -> Option<()> {
        loop {
            match self.peek() {
                Some(b' ' | b'\t') => self.pos += 1,
                Some(b'/') if self.at(b"/*") => self.block_comment()?,
                _ => return Some(()),
            }
        }
    }

    /// `line-space*`: node space, newlines and `//` comments.
    fn line_space(&mut self) -> Option<()> {
        loop {
            self.node_space()?;
            match self.peek() {
                Some(b'\n' | b'\r') => self.newline()?,
                Some(b'/') if self.at(b"//") => self.line_comment()?,
                _ => return Some(()),
            }
        }
    }

    fn newline(&mut self) -> Option<()> {
        if self.at(b"\n") {
            self.pos += 1;
        } else if self.at(b"\r\n") {
            self.pos += 2;
        } else {
            return None;
        }
        Some(())
    }

    /// A `//` comment with the newline that ends it (if any).
    fn line_comment(&mut self) -> Option<()> {
        self.pos += 2;
        loop {
            match self.peek() {
                None => return Some(()),
                Some(b'\n' | b'\r') => return self.newline(),
                Some(b'\t' | b' '..=b'~') => self.pos += 1,
                Some(0x80..) => self.char_in_comment()?,
                Some(_) => return None,
            }
        }
    }

    /// A `/* */` comment; they nest.
    fn block_comment(&mut self) -> Option<()> {
        self.pos += 2;
        let mut depth = 1;
        loop {
            if self.at(b"*/") {
                self.pos += 2;
                depth -= 1;
                if depth == 0 {
                    return Some(());
                }
            } else if self.at(b"/*") {
                self.pos += 2;
                depth += 1;
            } else {
                match self.peek()? {
                    b'\t' | b'\n' | b'\r' | b' '..=b'~' => self.pos += 1,
                    0x80.. => self.char_in_comment()?,
                    _ => return None,
                }
            }
        }
    }

    fn char_in_comment(&mut self) -> Option<()> {
        let c = self.text[self.pos..].chars().next()?;
        if !char_ok(c) {
            return None;
        }
        self.pos += c.len_utf8();
        Some(())
    }
}
