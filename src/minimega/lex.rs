//! minimega's command lexer (minicli's `lexInput`), with byte spans.
//!
//! minimega reads a script one line at a time (`read FILE`, a Go
//! `bufio.Scanner`, so a trailing `\r` is dropped) and lexes each line:
//! - whitespace (Unicode) separates words;
//! - `"…"` and `'…'` quote (the other quote character is literal inside), and a
//!   quote may sit inside a word: `a"b c"d` is the one word `ab cd`; `""` is an
//!   empty word;
//! - `\` escapes `r n t \ " ' #` inside and outside quotes; any other escaped
//!   character, or a `\` at the end of the line, is an error;
//! - `#` outside quotes ends the line (a comment), even inside a word;
//! - a quote still open at the end of the line is an error.
//!
//! [`quote`] writes a word so that this lexer reads it back unchanged.

use std::ops::Range;

/// minimega's line limit (bufio.Scanner's default maximum token size).
pub const MAX_LINE: usize = 64 * 1024;

/// One word of a command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Word {
    pub text: String,
    /// Byte range in the whole script, quotes included.
    pub span: Range<usize>,
}

/// One non-empty command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// 1-based line number.
    pub number: usize,
    pub words: Vec<Word>,
    /// The whole line's byte range (without the newline).
    pub span: Range<usize>,
}

/// A line minimega would refuse to read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LexError {
    #[error("missing closing {quote}")]
    Unterminated { quote: char, span: Range<usize> },
    #[error("unexpected escaped character '{ch}'")]
    BadEscape { ch: char, span: Range<usize> },
    #[error("expected a character after '\\'")]
    EscapeAtEnd { span: Range<usize> },
    #[error("line is longer than minimega reads ({MAX_LINE} bytes)")]
    TooLong { span: Range<usize> },
}

impl LexError {
    pub fn span(&self) -> Range<usize> {
        match self {
            LexError::Unterminated { span, .. }
            | LexError::BadEscape { span, .. }
            | LexError::EscapeAtEnd { span }
            | LexError::TooLong { span } => span.clone(),
        }
    }
}

fn escaped(c: char) -> Option<char> {
    Some(match c {
        'r' => '\r',
        'n' => '\n',
        't' => '\t',
        '\\' | '"' | '\'' | '#' => c,
        _ => return None,
    })
}

/// Lex a whole script: every non-blank line, and every line minimega would refuse.
pub fn lex_script(text: &str) -> (Vec<Line>, Vec<LexError>) {
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    let mut start = 0;
    for (i, raw) in text.split('\n').enumerate() {
        let end = start + raw.len();
        let body = raw.strip_suffix('\r').unwrap_or(raw);
        if body.len() > MAX_LINE {
            errors.push(LexError::TooLong {
                span: start..start + body.len(),
            });
        } else {
            match lex_line(body, start) {
                Ok(words) if !words.is_empty() => lines.push(Line {
                    number: i + 1,
                    words,
                    span: start..start + body.len(),
                }),
                Ok(_) => {}
                Err(e) => errors.push(e),
            }
        }
        start = end + 1;
    }
    (lines, errors)
}

/// Lex one line that starts at byte `base` of the script.
pub fn lex_line(line: &str, base: usize) -> Result<Vec<Word>, LexError> {
    let mut words = Vec::new();
    let mut content = String::new();
    // Set by a closing quote: emit even an empty word.
    let mut force = false;
    let mut word_start: Option<usize> = None;
    // Just after the last character of the current word (quotes included).
    let mut word_end = base;
    let mut it = line.char_indices().peekable();
    // Inside a quote: (terminal, where it opened).
    let mut quote: Option<(char, usize)> = None;
    while let Some((i, c)) = it.next() {
        let at = base + i;
        if c == '\\' {
            word_start.get_or_insert(at);
            match it.next() {
                None => return Err(LexError::EscapeAtEnd { span: at..at + 1 }),
                Some((j, e)) => match escaped(e) {
                    Some(v) => {
                        content.push(v);
                        word_end = base + j + e.len_utf8();
                    }
                    None => {
                        return Err(LexError::BadEscape {
                            ch: e,
                            span: at..base + j + e.len_utf8(),
                        });
                    }
                },
            }
            continue;
        }
        if let Some((t, _)) = quote {
            word_end = at + c.len_utf8();
            if c == t {
                quote = None;
                force = true;
            } else {
                content.push(c);
            }
            continue;
        }
        match c {
            '"' | '\'' => {
                word_start.get_or_insert(at);
                word_end = at + 1;
                quote = Some((c, at));
            }
            '#' => break,
            c if c.is_whitespace() => {
                if let Some(s) = word_start.take() {
                    if !content.is_empty() || force {
                        words.push(Word {
                            text: std::mem::take(&mut content),
                            span: s..word_end,
                        });
                    }
                    force = false;
                }
            }
            c => {
                word_start.get_or_insert(at);
                word_end = at + c.len_utf8();
                content.push(c);
            }
        }
    }
    if let Some((t, s)) = quote {
        return Err(LexError::Unterminated {
            quote: t,
            span: s..base + line.len(),
        });
    }
    if let Some(s) = word_start
        && (!content.is_empty() || force)
    {
        words.push(Word {
            text: content,
            span: s..word_end,
        });
    }
    Ok(words)
}

/// What minimega's preprocessor would change in an argument: the names Go's
/// `os.ExpandEnv` expands (`$NAME`, `${NAME}`, `$1`, `$$`…; an empty name for
/// the bad syntax it swallows, `${}`), and whether the word is a URL it
/// fetches (`file:`, `http:`, `https:`, `tar:`).
pub fn preprocessed(word: &str) -> (Vec<String>, bool) {
    let b = word.as_bytes();
    let special = |c: u8| b"*#$@!?-".contains(&c) || c.is_ascii_digit();
    let alnum = |c: u8| c == b'_' || c.is_ascii_alphanumeric();
    let mut names = Vec::new();
    let mut j = 0;
    while j < b.len() {
        if b[j] == b'$' && j + 1 < b.len() {
            let r = &b[j + 1..];
            let (name, w): (&[u8], usize) = if r[0] == b'{' {
                if r.len() > 2 && special(r[1]) && r[2] == b'}' {
                    (&r[1..2], 3)
                } else {
                    match r.iter().skip(1).position(|&c| c == b'}') {
                        Some(0) => (&[][..], 2),
                        Some(k) => (&r[1..k + 1], k + 2),
                        None => (&[][..], 1),
                    }
                }
            } else if special(r[0]) {
                (&r[0..1], 1)
            } else {
                let k = r.iter().take_while(|&&c| alnum(c)).count();
                (&r[..k], k)
            };
            if w > 0 {
                names.push(String::from_utf8_lossy(name).into_owned());
            }
            j += w + 1;
        } else {
            j += 1;
        }
    }
    let lower = word.to_ascii_lowercase();
    let url = ["file:", "http:", "https:", "tar:"]
        .iter()
        .any(|p| lower.starts_with(p));
    (names, url)
}

/// A word as minicli reads it back: bare when it can be, else double-quoted.
pub fn quote(word: &str) -> String {
    let bare = !word.is_empty()
        && word.chars().all(|c| {
            !c.is_whitespace() && !c.is_control() && !matches!(c, '"' | '\'' | '\\' | '#')
        });
    if bare {
        return word.to_string();
    }
    let mut out = String::with_capacity(word.len() + 2);
    out.push('"');
    for c in word.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn words(s: &str) -> Vec<String> {
        lex_line(s, 0)
            .unwrap()
            .into_iter()
            .map(|w| w.text)
            .collect()
    }

    #[test]
    fn splits_on_whitespace_and_keeps_quotes_together() {
        assert_eq!(
            words("vm config append \"console=ttyS0 quiet\"  x\ty"),
            ["vm", "config", "append", "console=ttyS0 quiet", "x", "y"]
        );
        assert_eq!(words("a\"b c\"d"), ["ab cd"]);
        assert_eq!(words("'say \"hi\"'"), ["say \"hi\""]);
        assert_eq!(words("\"\" x"), ["", "x"]);
        assert_eq!(words("a\"\""), ["a"]);
    }

    #[test]
    fn comments_end_the_line_outside_quotes_only() {
        assert_eq!(words("cc exec ls # list"), ["cc", "exec", "ls"]);
        assert_eq!(words("foo#bar"), ["foo"]);
        assert_eq!(words("\"a # b\" c"), ["a # b", "c"]);
        assert_eq!(words("a\\#b"), ["a#b"]);
        assert!(words("   # only a comment").is_empty());
    }

    #[test]
    fn escapes_as_minicli() {
        assert_eq!(words(r#"a\"b "c\nd" \\"#), ["a\"b", "c\nd", "\\"]);
        assert_eq!(
            lex_line(r"x \q", 3),
            Err(LexError::BadEscape {
                ch: 'q',
                span: 5..7
            })
        );
        assert_eq!(
            lex_line(r"x \", 0),
            Err(LexError::EscapeAtEnd { span: 2..3 })
        );
    }

    #[test]
    fn an_open_quote_is_an_error_at_the_quote() {
        assert_eq!(
            lex_line("cc exec \"echo hi", 10),
            Err(LexError::Unterminated {
                quote: '"',
                span: 18..26
            })
        );
    }

    #[test]
    fn spans_point_at_words_in_the_script() {
        let (lines, errs) = lex_script("# c\n\nvm  launch kvm a\r\nx 'q\n");
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].number, 3);
        assert_eq!(lines[0].words[1].span, 9..15);
        assert_eq!(&"# c\n\nvm  launch kvm a\r\n"[9..15], "launch");
        assert_eq!(errs.len(), 1);
        assert!(matches!(errs[0], LexError::Unterminated { .. }));
    }

    #[test]
    fn preprocessed_follows_go_expand_env() {
        let names = |w: &str| preprocessed(w).0;
        assert_eq!(names("$images/k"), ["images"]);
        assert_eq!(names("${images}/k and $HOME"), ["images", "HOME"]);
        assert_eq!(names("a$"), Vec::<String>::new());
        assert_eq!(names("$ x $/"), Vec::<String>::new());
        assert_eq!(names("$$ $1 ${}"), ["$", "1", ""]);
        assert_eq!(names("${a"), [""]);
        assert!(preprocessed("FILE:foo").1);
        assert!(!preprocessed("10.0.0.1/24").1);
    }

    proptest! {
        #[test]
        fn quote_reads_back(w in any::<String>()) {
            let q = quote(&w);
            prop_assert!(!q.contains('\n'));
            let back = lex_line(&q, 0).unwrap();
            prop_assert_eq!(back.len(), 1);
            prop_assert_eq!(&back[0].text, &w);
        }

        #[test]
        fn never_panics_and_spans_are_in_bounds(s in any::<String>()) {
            let (lines, errs) = lex_script(&s);
            for l in &lines {
                for w in &l.words {
                    prop_assert!(w.span.start <= w.span.end && w.span.end <= s.len());
                    prop_assert!(s.is_char_boundary(w.span.start) && s.is_char_boundary(w.span.end));
                }
            }
            for e in &errs {
                prop_assert!(e.span().end <= s.len());
            }
        }
    }
}
