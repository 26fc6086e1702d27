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

macro_rules! codes {
    ($($(#[$doc:meta])* $v:ident => $s:literal,)*) => {
        /// Every diagnostic code megaplan reports. [`Code::as_str`] is the
        /// stable text shown to users (`megaplan::unknown_key`); match on the
        /// variant, never on the text.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Code {
            $($(#[$doc])* $v,)*
        }

        impl Code {
            /// Every code, in declaration order.
            pub const ALL: &'static [Code] = &[$(Code::$v,)*];

            /// The stable text of the code.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Code::$v => $s,)*
                }
            }

            /// The code whose text is `s`.
            pub fn from_text(s: &str) -> Option<Code> {
                match s {
                    $($s => Some(Code::$v),)*
                    _ => None,
                }
            }
        }
    };
}

codes! {
    // Structure, both syntaxes (the same problem has the same code in KDL and TOML).
    /// A node, property or key the language does not have there.
    UnknownKey => "megaplan::unknown_key",
    /// A required argument or key is absent.
    MissingKey => "megaplan::missing_key",
    /// A value of the wrong type (string for number...).
    WrongType => "megaplan::wrong_type",
    /// A key or single node given twice.
    Duplicate => "megaplan::duplicate",
    /// Two keys that exclude each other.
    ConflictingKeys => "megaplan::conflicting_keys",
    /// More positional values than the node takes.
    TooManyArguments => "megaplan::too_many_arguments",
    /// A child block or table where none is allowed.
    UnexpectedChildren => "megaplan::unexpected_children",
    /// A cc step without exactly one action.
    CcAction => "megaplan::cc_action",
    /// Nesting deeper than the readers allow.
    TooDeep => "megaplan::too_deep",
    // Syntax, per syntax.
    KdlSyntax => "megaplan::kdl::syntax",
    KdlTypeAnnotation => "megaplan::kdl::type_annotation",
    TomlSyntax => "megaplan::toml::syntax",
    // Semantics (`validate`).
    AfterCycle => "megaplan::after_cycle",
    BadAccel => "megaplan::bad_accel",
    BadCidr => "megaplan::bad_cidr",
    BadDirection => "megaplan::bad_direction",
    BadDriver => "megaplan::bad_driver",
    BadDuration => "megaplan::bad_duration",
    BadFilesystem => "megaplan::bad_filesystem",
    BadFormat => "megaplan::bad_format",
    BadMac => "megaplan::bad_mac",
    // The minimega provider and placement (`minimega::placement`).
    BadHost => "megaplan::bad_host",
    BadProvider => "megaplan::bad_provider",
    MirrorPlacement => "megaplan::mirror_placement",
    ProviderBase => "megaplan::provider_base",
    ProviderNamespace => "megaplan::provider_namespace",
    ProviderSetting => "megaplan::provider_setting",
    BadMemory => "megaplan::bad_memory",
    BadMount => "megaplan::bad_mount",
    BadName => "megaplan::bad_name",
    BadQemuArg => "megaplan::bad_qemu_arg",
    BadRange => "megaplan::bad_range",
    BadSize => "megaplan::bad_size",
    BadUuid => "megaplan::bad_uuid",
    BadVcpus => "megaplan::bad_vcpus",
    CommandTooLarge => "megaplan::command_too_large",
    DiskWithoutSize => "megaplan::disk_without_size",
    DriverNotInImage => "megaplan::driver_not_in_image",
    DuplicateDisk => "megaplan::duplicate_disk",
    DuplicateMac => "megaplan::duplicate_mac",
    DuplicateMount => "megaplan::duplicate_mount",
    DuplicateNetwork => "megaplan::duplicate_network",
    DuplicateTag => "megaplan::duplicate_tag",
    DuplicateUuid => "megaplan::duplicate_uuid",
    DuplicateVm => "megaplan::duplicate_vm",
    Empty => "megaplan::empty",
    EmptyCommand => "megaplan::empty_command",
    FromWithFilesystem => "megaplan::from_with_filesystem",
    IfnameCollision => "megaplan::ifname_collision",
    InitrdWithoutKernel => "megaplan::initrd_without_kernel",
    InjectWithoutFilesystem => "megaplan::inject_without_filesystem",
    MirrorIndex => "megaplan::mirror_index",
    MirrorLoop => "megaplan::mirror_loop",
    MirrorNicWithNetwork => "megaplan::mirror_nic_with_network",
    MirrorSelf => "megaplan::mirror_self",
    MirrorWithoutNic => "megaplan::mirror_without_nic",
    MissingFile => "megaplan::missing_file",
    NoExperiment => "megaplan::no_experiment",
    NoImages => "megaplan::no_images",
    NothingToBoot => "megaplan::nothing_to_boot",
    NulByte => "megaplan::nul_byte",
    RelativeGuestPath => "megaplan::relative_guest_path",
    SecondExperiment => "megaplan::second_experiment",
    SharedWritableDisk => "megaplan::shared_writable_disk",
    SocketPathTooLong => "megaplan::socket_path_too_long",
    TimeoutIgnored => "megaplan::timeout_ignored",
    UnknownDisk => "megaplan::unknown_disk",
    UnknownNetwork => "megaplan::unknown_network",
    UnknownVm => "megaplan::unknown_vm",
    ZeroMemory => "megaplan::zero_memory",
    ZeroVcpus => "megaplan::zero_vcpus",
    // captures and checks (issue 16).
    BadExpect => "megaplan::bad_expect",
    BadFilter => "megaplan::bad_filter",
    BadRegex => "megaplan::bad_regex",
    BadTarget => "megaplan::bad_target",
    CaptureEmpty => "megaplan::capture_empty",
    CaptureSource => "megaplan::capture_source",
    CheckFrom => "megaplan::check_from",
    CheckKey => "megaplan::check_key",
    CheckKind => "megaplan::check_kind",
    OutOfRange => "megaplan::out_of_range",
    UnknownAfter => "megaplan::unknown_after",
    UnknownCapture => "megaplan::unknown_capture",
    UnknownNic => "megaplan::unknown_nic",
    // minimega import.
    MinimegaUnmapped => "minimega::unmapped",
    MinimegaTooBig => "minimega::too_big",
    MinimegaSyntax => "minimega::syntax",
    MinimegaBadValue => "minimega::bad_value",
    MinimegaPreprocessed => "minimega::preprocessed",
    MinimegaNoVm => "minimega::no_vm",
}

impl Code {
    /// A syntax error (the file could not be read at all in places).
    pub fn is_syntax(self) -> bool {
        matches!(self, Code::KdlSyntax | Code::TomlSyntax | Code::TooDeep)
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Transitional: code still written as text (`validate`, minimega import)
/// converts here until it names the variant. An unknown text is a bug in
/// megaplan, caught by `tests::every_code_literal_is_known`.
impl From<&'static str> for Code {
    fn from(s: &'static str) -> Code {
        match Code::from_text(s) {
            Some(c) => c,
            None => panic!("unknown diagnostic code {s:?}: add it to diag::Code"),
        }
    }
}

impl PartialEq<&str> for Code {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

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

    /// Read an experiment file, bounded: a regular file (a symlink to one is
    /// fine) of at most [`MAX_FILE_SIZE`] bytes of UTF-8. A FIFO, a device or a
    /// folder is refused without reading from it.
    pub fn read(path: &Path) -> Result<Self, ReadError> {
        use std::io::Read;
        use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
        let shown = path.display().to_string();
        let io = |source| ReadError::Io {
            path: shown.clone(),
            source,
        };
        // O_NONBLOCK: opening a FIFO must not wait for a writer.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        let ft = meta.file_type();
        if !ft.is_file() {
            let kind = if ft.is_dir() {
                "a folder"
            } else if ft.is_fifo() {
                "a FIFO"
            } else if ft.is_char_device() {
                "a character device"
            } else if ft.is_block_device() {
                "a block device"
            } else if ft.is_socket() {
                "a socket"
            } else {
                "not a regular file"
            };
            return Err(ReadError::NotRegular { path: shown, kind });
        }
        // Sized to the file (bounded): read_to_end's doubling left a 34 MB
        // experiment in a 64 MiB buffer for the whole command.
        let mut bytes = Vec::with_capacity(meta.len().min(MAX_FILE_SIZE) as usize + 1);
        file.take(MAX_FILE_SIZE + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > MAX_FILE_SIZE {
            return Err(ReadError::TooLarge { path: shown });
        }
        match String::from_utf8(bytes) {
            Ok(text) => Ok(Self::new(path, text)),
            Err(e) => {
                let bytes = e.as_bytes();
                let at = e.utf8_error().valid_up_to();
                // The prefix is valid UTF-8: count lines and characters in it.
                let before = std::str::from_utf8(&bytes[..at]).unwrap_or_default();
                let line = before.matches('\n').count() + 1;
                let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                Err(ReadError::NotUtf8 {
                    path: shown,
                    line,
                    col,
                    byte: bytes[at],
                })
            }
        }
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

    /// The file for excerpts (see [`shown_text`]), built once per rendering.
    fn shown(&self) -> SourceFile {
        SourceFile {
            path: self.path.clone(),
            text: Arc::new(shown_text(&self.text)),
        }
    }

    fn named(&self) -> NamedSource<Arc<String>> {
        NamedSource::new(self.name(), self.text.clone())
    }
}

/// The largest experiment file read (64 MiB: a generated lab of 100k VMs
/// is about 34 MiB).
pub const MAX_FILE_SIZE: u64 = 64 << 20;

/// At most this many diagnostics are rendered; the rest are counted.
pub const MAX_SHOWN: usize = 100;

/// Why an experiment file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is {kind}, not an experiment file")]
    NotRegular { path: String, kind: &'static str },
    #[error("{path} is larger than {} MiB: not an experiment file", MAX_FILE_SIZE >> 20)]
    TooLarge { path: String },
    #[error("{path}:{line}:{col}: the file is not valid UTF-8 (byte 0x{byte:02x})")]
    NotUtf8 {
        path: String,
        line: usize,
        col: usize,
        byte: u8,
    },
}

impl ReadError {
    /// What to do about it.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            ReadError::Io { .. } => None,
            ReadError::NotRegular { .. } | ReadError::TooLarge { .. } => {
                Some("give the path of a .kdl or .toml experiment file")
            }
            ReadError::NotUtf8 { .. } => Some("save the file as UTF-8"),
        }
    }
}

/// "1 network", "2 networks": a count and its noun, in the right number.
pub fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("{n} {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Longest message, label or help shown (a value in it may be megabytes).
const MAX_MESSAGE: usize = 400;

/// [`escape`], then cut in the middle when longer than [`MAX_MESSAGE`] bytes.
fn shown_message(s: &str) -> String {
    let e = escape(s);
    if e.len() <= MAX_MESSAGE {
        return e.into_owned();
    }
    let mut head = MAX_MESSAGE / 2;
    while !e.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = e.len() - MAX_MESSAGE / 4;
    while !e.is_char_boundary(tail) {
        tail += 1;
    }
    format!(
        "{}…({} bytes)…{}",
        &e[..head],
        e.len() - head - (e.len() - tail),
        &e[tail..]
    )
}

/// A value from the file, the state or a guest, made safe to print: control
/// characters (newlines, ESC, DEL, C1), bidirectional overrides and other
/// invisible format characters become `\n`, `\u{1b}`... so a value cannot
/// forge lines, rows or terminal escapes.
pub fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if needs_escape(c) {
            match c {
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\0' => out.push_str("\\0"),
                _ => {
                    let _ =
                        std::fmt::Write::write_fmt(&mut out, format_args!("\\u{{{:x}}}", c as u32));
                }
            }
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

/// The text as shown in excerpts: every control or invisible character
/// replaced by a visible one of the same UTF-8 length, so offsets still fit.
fn shown_text(text: &str) -> String {
    if !text
        .chars()
        .any(|c| c != '\n' && c != '\t' && c != '\r' && needs_escape(c))
    {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if c == '\n' || c == '\t' || c == '\r' || !needs_escape(c) {
                c
            } else {
                match c.len_utf8() {
                    1 => '?',
                    2 => '\u{bf}',
                    3 => '\u{fffd}',
                    _ => c,
                }
            }
        })
        .collect()
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
    pub code: Code,
    pub message: String,
    /// The first label is the primary one (its position is the diagnostic's).
    pub labels: Vec<Label>,
    pub help: Option<String>,
}

impl Diag {
    pub fn error(code: impl Into<Code>, message: impl Into<String>) -> Self {
        Diag {
            severity: Severity::Error,
            code: code.into(),
            message: message.into(),
            labels: Vec::new(),
            help: None,
        }
    }
    pub fn warning(code: impl Into<Code>, message: impl Into<String>) -> Self {
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
    /// Attach the file, giving a value miette can render. Lines longer than
    /// [`LONG_LINE`] bytes are cut to a window around the labels.
    pub fn with_source(&self, src: &SourceFile) -> Report {
        let location = self
            .labels
            .first()
            .map(|l| {
                let (line, col) = src.line_col(l.span.offset());
                format!("{}:{line}:{col}", src.name())
            })
            .unwrap_or_else(|| src.name());
        let mut diag = self.clone();
        // A label over many lines (a whole block) is shown by its first lines.
        for l in &mut diag.labels {
            let (start, len) = (l.span.offset(), l.span.len());
            let Some(body) = src.text.get(start..start + len) else {
                continue;
            };
            if let Some((cut, _)) = body.match_indices('\n').nth(MAX_LABEL_LINES) {
                l.span = (start..start + cut).into();
            }
        }
        let src = match Excerpt::cut(src, &diag.labels) {
            Some((excerpt, labels)) => {
                diag.labels = labels;
                Source::Excerpt(excerpt)
            }
            None => Source::Whole(src.named()),
        };
        Report {
            diag,
            src,
            location,
        }
    }
}

/// A source line longer than this is cut in excerpts.
pub const LONG_LINE: usize = 200;
/// A label spanning more lines is cut to its first ones.
const MAX_LABEL_LINES: usize = 8;
/// How much of a long line an excerpt shows.
const WINDOW: usize = 120;

#[derive(Debug)]
enum Source {
    Whole(NamedSource<Arc<String>>),
    Excerpt(Excerpt),
}

/// The lines around a diagnostic's labels, long ones cut around the labels
/// (marked with '…'), keeping the real line and column numbers.
#[derive(Debug)]
struct Excerpt {
    name: String,
    text: String,
    /// 0-based line number of the excerpt's first line.
    first_line: usize,
    /// Per excerpt line: its start in `text`, the real column (0-based, in
    /// characters) where it starts, and the bytes of the '…' put before it.
    lines: Vec<(usize, usize, usize)>,
}

impl Excerpt {
    /// None when every line the labels touch is short (render the file itself).
    fn cut(src: &SourceFile, labels: &[Label]) -> Option<(Excerpt, Vec<Label>)> {
        let text = src.text.as_str();
        let first = labels.first()?;
        let mut labels: Vec<Label> = labels.to_vec();
        let bounds = |labels: &[Label]| {
            let lo = labels.iter().map(|l| l.span.offset()).min().unwrap_or(0);
            let hi = labels
                .iter()
                .map(|l| l.span.offset() + l.span.len())
                .max()
                .unwrap_or(0);
            (lo.min(text.len()), hi.min(text.len()))
        };
        let line_start = |o: usize| text[..o].rfind('\n').map_or(0, |p| p + 1);
        let line_end = |o: usize| text[o..].find('\n').map_or(text.len(), |p| o + p);
        let (mut lo, mut hi) = bounds(&labels);
        // One line of context either side, as miette shows.
        let mut start = line_start(lo);
        if start > 0 {
            start = line_start(start - 1);
        }
        let mut end = line_end(hi);
        if end < text.len() {
            end = line_end(end + 1);
        }
        let region = &text[start..end];
        if !region.split('\n').any(|l| l.len() > LONG_LINE) {
            return None;
        }
        if region.matches('\n').count() > 200 {
            // Far-apart labels on long lines: show the primary one only.
            labels.truncate(1);
            (lo, hi) = bounds(&labels);
            start = line_start(lo);
            if start > 0 {
                start = line_start(start - 1);
            }
            end = line_end(hi);
            if end < text.len() {
                end = line_end(end + 1);
            }
        }
        let _ = first;
        let floor = |mut o: usize| {
            while !text.is_char_boundary(o) {
                o -= 1;
            }
            o
        };
        let mut out = String::new();
        let mut lines = Vec::new();
        // (real start, real end, excerpt start, shown prefix length) per line.
        let mut map: Vec<(usize, usize, usize, usize)> = Vec::new();
        let mut ls = start;
        loop {
            let le = line_end(ls).min(end.max(ls));
            let (ws, we) = if le - ls <= LONG_LINE {
                (ls, le)
            } else {
                let anchor = labels
                    .iter()
                    .flat_map(|l| [l.span.offset(), l.span.offset() + l.span.len()])
                    .find(|o| (ls..=le).contains(o))
                    .unwrap_or(ls);
                let ws = floor(anchor.saturating_sub(WINDOW / 2).max(ls));
                let we = floor((ws + WINDOW).min(le));
                (ws, we)
            };
            let col = text[ls..ws].chars().count();
            let line_begin = out.len();
            let prefix = if ws > ls { "…" } else { "" };
            out.push_str(prefix);
            lines.push((line_begin, col, prefix.len()));
            map.push((ws, we, line_begin, prefix.len()));
            out.push_str(&text[ws..we]);
            if we < le {
                out.push('…');
            }
            if le >= end || le >= text.len() {
                break;
            }
            out.push('\n');
            ls = le + 1;
        }
        let to_excerpt = |o: usize| -> usize {
            let i = map.partition_point(|m| m.0 <= o).saturating_sub(1);
            let (ws, we, at, prefix) = map[i];
            at + prefix + o.clamp(ws, we) - ws
        };
        let labels = labels
            .iter()
            .map(|l| {
                let a = to_excerpt(l.span.offset());
                let b = to_excerpt(l.span.offset() + l.span.len()).max(a);
                Label {
                    span: (a..b).into(),
                    text: l.text.clone(),
                }
            })
            .collect();
        let first_line = text[..start].matches('\n').count();
        Some((
            Excerpt {
                name: src.name(),
                text: out,
                first_line,
                lines,
            },
            labels,
        ))
    }
}

impl miette::SourceCode for Excerpt {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        before: usize,
        after: usize,
    ) -> Result<Box<dyn miette::SpanContents<'a> + 'a>, miette::MietteError> {
        let c = self.text.read_span(span, before, after)?;
        let (col, prefix) = self.lines.get(c.line()).map_or((0, 0), |l| (l.1, l.2));
        Ok(Box::new(miette::MietteSpanContents::new_named(
            self.name.clone(),
            c.data(),
            *c.span(),
            c.line() + self.first_line,
            (c.column() + col).saturating_sub(prefix),
            c.line_count(),
        )))
    }
}

/// A [`Diag`] bound to its file, ready for miette.
#[derive(Debug)]
pub struct Report {
    diag: Diag,
    src: Source,
    location: String,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}",
            shown_message(&self.location),
            shown_message(&self.diag.message)
        )
    }
}
impl std::error::Error for Report {}

impl Diagnostic for Report {
    fn code<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        Some(Box::new(self.diag.code.as_str()))
    }
    fn severity(&self) -> Option<Severity> {
        Some(self.diag.severity)
    }
    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        self.diag
            .help
            .as_ref()
            .map(|h| Box::new(shown_message(h)) as Box<dyn std::fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        if self.diag.labels.is_empty() {
            None
        } else {
            Some(match &self.src {
                Source::Whole(s) => s,
                Source::Excerpt(e) => e,
            })
        }
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.diag.labels.is_empty() {
            return None;
        }
        Some(Box::new(self.diag.labels.iter().enumerate().map(
            |(i, l)| {
                let text = l.text.as_deref().map(shown_message);
                if i == 0 {
                    LabeledSpan::new_primary_with_span(text, l.span)
                } else {
                    LabeledSpan::new_with_span(text, l.span)
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

    /// Render every diagnostic (at most [`MAX_SHOWN`], then a count of the
    /// rest), deterministic and without colour (tests, pipes).
    pub fn render_plain(&self, src: &SourceFile) -> String {
        let handler =
            miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
                .with_width(100);
        self.render_with(src, |out, report| {
            handler
                .render_report(out, report)
                .expect("rendering into a String cannot fail");
        })
    }

    /// Render the first [`MAX_SHOWN`] diagnostics with `render`, then a line
    /// counting the others.
    pub fn render_with(
        &self,
        src: &SourceFile,
        mut render: impl FnMut(&mut String, &Report),
    ) -> String {
        let shown = src.shown();
        let mut out = String::new();
        for d in self.items.iter().take(MAX_SHOWN) {
            render(&mut out, &d.with_source(&shown));
        }
        if let Some(more) = self.omitted() {
            out.push_str(&more);
            out.push('\n');
        }
        out
    }

    /// "and N more errors (M warnings)" when more than [`MAX_SHOWN`] exist.
    pub fn omitted(&self) -> Option<String> {
        let rest = self.items.get(MAX_SHOWN..).filter(|r| !r.is_empty())?;
        let errors = rest.iter().filter(|d| d.is_error()).count();
        let warnings = rest.len() - errors;
        let plural = |n: usize, w: &str| format!("{n} more {w}{}", if n == 1 { "" } else { "s" });
        Some(match (errors, warnings) {
            (e, 0) => format!("... and {}", plural(e, "error")),
            (0, w) => format!("... and {}", plural(w, "warning")),
            (e, w) => format!("... and {} ({})", plural(e, "error"), plural(w, "warning")),
        })
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
    fn codes_have_unique_texts_that_read_back() {
        let mut seen = std::collections::HashSet::new();
        for &c in Code::ALL {
            assert!(seen.insert(c.as_str()), "{c:?} repeats {}", c.as_str());
            assert_eq!(Code::from_text(c.as_str()), Some(c));
        }
        assert_eq!(Code::UnknownKey.as_str(), "megaplan::unknown_key");
        assert_eq!(Code::from_text("megaplan::no_such_code"), None);
    }

    /// Code still naming diagnostics by text (converted through
    /// `From<&str>`) names only codes that exist: the conversion cannot panic.
    #[test]
    fn every_code_literal_is_known() {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(p);
                }
            }
        }
        let mut files = Vec::new();
        walk(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        let mut checked = 0;
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for (i, _) in text
                .match_indices("\"megaplan::")
                .chain(text.match_indices("\"minimega::"))
            {
                let rest = &text[i + 1..];
                let end = rest.find('"').unwrap_or(0);
                let lit = &rest[..end];
                // Module paths in test names and docs are not codes.
                if !lit
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c == ':')
                    || lit.ends_with("::")
                {
                    continue;
                }
                let before = &text[..i];
                let line = before.rsplit('\n').next().unwrap_or("");
                if !(line.contains("Diag::")
                    || line.contains("const ")
                    || line.trim().is_empty()
                    || line.contains("self.error("))
                {
                    continue;
                }
                assert!(
                    Code::from_text(lit).is_some(),
                    "{}: unknown code {lit}",
                    f.display()
                );
                checked += 1;
            }
        }
        assert!(checked > 0, "found no code literals to check");
    }

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(
            did_you_mean("LNA", ["LAN", "mon"]).as_deref(),
            Some("did you mean 'LAN'?")
        );
        assert_eq!(did_you_mean("internet", ["LAN", "mon"]), None);
    }

    #[test]
    fn escape_makes_values_printable() {
        assert_eq!(escape("plain"), "plain");
        assert_eq!(escape("a\nb\tc\0"), r"a\nb\tc\0");
        assert_eq!(
            escape("\u{1b}[31mred\u{7f}\u{9b}"),
            r"\u{1b}[31mred\u{7f}\u{9b}"
        );
        assert_eq!(escape("x\u{202e}y\u{2066}"), r"x\u{202e}y\u{2066}");
        assert_eq!(plural(1, "network"), "1 network");
        assert_eq!(plural(0, "network"), "0 networks");
    }

    #[test]
    fn excerpts_show_no_control_characters_and_cut_long_lines() {
        let long = "y".repeat(5000);
        let text = format!("a\u{1b}[2Jb\nnetwork \"{long}\" z\n");
        let src = SourceFile::new("t.kdl", text.clone());
        let at = text.find(" z").unwrap() + 1;
        let mut d = Diagnostics::default();
        d.push(
            Diag::error(Code::WrongType, "m\u{1b}]0;x\u{7}").label((at..at + 1).into(), "here\n"),
        );
        let out = d.render_plain(&src);
        assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
        assert!(out.len() < 2000, "{out}");
        // The real line and column, in the message and in miette's header.
        let col = text[..at].rsplit('\n').next().unwrap().chars().count() + 1;
        assert!(out.contains(&format!("t.kdl:2:{col}: m")), "{out}");
        assert!(out.contains(&format!("[t.kdl:2:{col}]")), "{out}");
    }

    #[test]
    fn a_label_over_a_huge_block_shows_its_first_lines() {
        let text = format!("a {{\n{}}}\n", "  x 1\n".repeat(100_000));
        let src = SourceFile::new("t.kdl", text.clone());
        let mut d = Diagnostics::default();
        d.push(Diag::error(Code::WrongType, "block").label((2..text.len() - 1).into(), "here"));
        let out = d.render_plain(&src);
        assert!(out.len() < 4000, "{} bytes", out.len());
        assert!(out.contains("t.kdl:1:3: block"), "{out}");
    }

    #[test]
    fn rendering_stops_after_max_shown() {
        let src = SourceFile::new("t.kdl", "x\n".repeat(300));
        let mut d = Diagnostics::default();
        for i in 0..250 {
            d.push(Diag::error(Code::WrongType, "bad").label((2 * i..2 * i + 1).into(), "x"));
        }
        d.push(Diag::warning(Code::TimeoutIgnored, "meh"));
        let out = d.render_plain(&src);
        assert_eq!(out.matches("megaplan::wrong_type").count(), MAX_SHOWN);
        assert!(
            out.ends_with("... and 150 more errors (1 more warning)\n"),
            "{out}"
        );
    }

    #[test]
    fn line_col_is_one_based() {
        let src = SourceFile::new("x.kdl", "ab\ncd");
        assert_eq!(src.line_col(0), (1, 1));
        assert_eq!(src.line_col(4), (2, 2));
    }
}
