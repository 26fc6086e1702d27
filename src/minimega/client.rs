//! megaplan's client for minimega's command socket.
//!
//! minimega (3.0.1) listens on the unix socket `BASE/minimega` and speaks a
//! stream of JSON values (Go's `json.Encoder`/`json.Decoder`, one value per
//! line). A request is `{"Command": "...", "Suggest": "", "PlumbPipe": ""}`;
//! the answer is one or more replies `{"Resp": [...], "Rendered": "...",
//! "More": bool, "Status": bool}`: status replies (`Status: true`) are progress
//! messages and are skipped, and the client keeps reading while `More` is set.
//! Each `Resp` item is one host's answer, `{"Host", "Response", "Header",
//! "Tabular", "Error", "Data"}`. A command that fails on a host is not a failed
//! call: the host's item carries the error string ([`Client::run`] returns it,
//! [`Client::run_ok`] turns it into [`ClientError::Host`]).
//!
//! Commands are built with [`Command`]: keywords are `'static` strings from
//! this program, every value is quoted for minicli's lexer (see [`quote`]),
//! and names that minimega itself re-quotes (namespaces, hosts, VMs) are
//! [`Name`]s, validated once. A namespace is given per command (`namespace X
//! <cmd>`), never as a bare `namespace X`, which would switch the namespace
//! of the whole connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize};

/// The socket's file name inside minimega's base folder.
pub const SOCKET: &str = "minimega";
/// How long one command may take (all of its replies), unless changed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest single reply accepted (a `vm info` of thousands of VMs fits).
pub const MAX_REPLY: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to minimega at {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a unix socket (is minimega running with -base {base}?)", base = path.parent().unwrap_or(Path::new("")).display())]
    NotSocket { path: PathBuf },
    #[error("sending `{command}` to minimega: {source}")]
    Send {
        command: String,
        source: std::io::Error,
    },
    #[error("minimega did not answer `{command}` within {after:?}")]
    Timeout { command: String, after: Duration },
    #[error("reading minimega's answer to `{command}`: {source}")]
    Read {
        command: String,
        source: std::io::Error,
    },
    #[error("minimega closed the connection while answering `{command}`")]
    Closed { command: String },
    #[error("minimega's answer to `{command}` is not valid: {source}")]
    Decode {
        command: String,
        source: serde_json::Error,
    },
    #[error("minimega's answer to `{command}` is larger than {limit} bytes")]
    TooLarge { command: String, limit: u64 },
    #[error("the connection to minimega is unusable after an earlier failure; reconnect")]
    Broken,
    #[error("`{command}` failed on {}", list_errors(.errors))]
    Host {
        command: String,
        /// (host, error) for every host that returned an error.
        errors: Vec<(String, String)>,
    },
    #[error("invalid minimega argument {value:?}: {reason}")]
    BadValue { value: String, reason: &'static str },
    #[error("the Data of `{command}` from host {host} is not what was expected: {source}")]
    Data {
        command: String,
        host: String,
        source: serde_json::Error,
    },
}

fn list_errors(errors: &[(String, String)]) -> String {
    errors
        .iter()
        .map(|(h, e)| format!("host {h}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Go's nil slices and maps encode as `null`: read those as empty.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Request<'a> {
    command: &'a str,
    suggest: &'a str,
    plumb_pipe: &'a str,
}

/// One reply value on the socket.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Reply {
    #[serde(default, deserialize_with = "nullable")]
    resp: Vec<HostResponse>,
    #[serde(default, deserialize_with = "nullable")]
    #[allow(dead_code)]
    rendered: String,
    #[serde(default)]
    more: bool,
    #[serde(default)]
    status: bool,
}

/// One host's answer to a command.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostResponse {
    /// The mesh node (its hostname) that answered.
    #[serde(default, deserialize_with = "nullable")]
    pub host: String,
    /// The simple (untabulated) answer.
    #[serde(default, deserialize_with = "nullable")]
    pub response: String,
    #[serde(default, deserialize_with = "nullable")]
    pub header: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub tabular: Vec<Vec<String>>,
    /// Empty when the command worked on this host.
    #[serde(default, deserialize_with = "nullable")]
    pub error: String,
    /// The command's own structured data (for `vm info`: the VMs).
    #[serde(default)]
    pub data: serde_json::Value,
}

/// The value of column `name` in a row of [`HostResponse::rows`].
pub fn column<'a>(row: &[(&'a str, &'a str)], name: &str) -> Option<&'a str> {
    row.iter().find(|(c, _)| *c == name).map(|(_, v)| *v)
}

impl HostResponse {
    /// The rows of a tabular answer as (column -> value) pairs.
    pub fn rows(&self) -> Vec<Vec<(&str, &str)>> {
        self.tabular
            .iter()
            .map(|row| {
                self.header
                    .iter()
                    .map(String::as_str)
                    .zip(row.iter().map(String::as_str))
                    .collect()
            })
            .collect()
    }
}

/// A VM's state as minimega encodes it in `vm info` Data (a bit flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    Building,
    Running,
    Paused,
    Quit,
    Error,
    Unknown(i64),
}

impl<'de> Deserialize<'de> for VmState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match i64::deserialize(d)? {
            1 => VmState::Building,
            2 => VmState::Running,
            4 => VmState::Paused,
            8 => VmState::Quit,
            16 => VmState::Error,
            n => VmState::Unknown(n),
        })
    }
}

/// One network interface of a VM (minimega's `NetConfig`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VmNetwork {
    #[serde(default, deserialize_with = "nullable")]
    pub alias: String,
    #[serde(rename = "VLAN", default)]
    pub vlan: i64,
    #[serde(default, deserialize_with = "nullable")]
    pub bridge: String,
    #[serde(default, deserialize_with = "nullable")]
    pub tap: String,
    #[serde(rename = "MAC", default, deserialize_with = "nullable")]
    pub mac: String,
    #[serde(default, deserialize_with = "nullable")]
    pub driver: String,
}

/// The parts of a VM in `vm info` Data that megaplan reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VmInfo {
    #[serde(rename = "ID")]
    pub id: i64,
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub namespace: String,
    /// The mesh node the VM runs on.
    pub host: String,
    #[serde(rename = "UUID")]
    pub uuid: String,
    pub state: VmState,
    #[serde(default)]
    pub pid: i64,
    #[serde(default, deserialize_with = "nullable")]
    pub networks: Vec<VmNetwork>,
    /// `vm config tags` (megaplan's ownership marker is the tag `megaplan`).
    #[serde(default, deserialize_with = "nullable")]
    pub tags: std::collections::BTreeMap<String, String>,
}

/// The VMs in the Data of every host's answer to `vm info`.
pub fn vm_infos(command: &Command, resps: &[HostResponse]) -> Result<Vec<VmInfo>, ClientError> {
    let mut out = Vec::new();
    for r in resps {
        if r.data.is_null() {
            continue;
        }
        let vms: Vec<VmInfo> =
            serde_json::from_value(r.data.clone()).map_err(|source| ClientError::Data {
                command: command.text.clone(),
                host: r.host.clone(),
                source,
            })?;
        out.extend(vms);
    }
    Ok(out)
}

/// Quote `value` as exactly one item for minicli's lexer.
///
/// minicli's lexer (pkg/minicli/input.go) splits on white space outside
/// quotes, starts a quoted item at `"` or `'`, ends the whole input at `#`
/// outside quotes (a comment), and treats `\` as an escape both inside and
/// outside quotes, knowing only `\r \n \t \\ \" \' \#`. Inside double quotes
/// every other character is literal, so the value is wrapped in `"` with `\`
/// and `"` escaped, and CR, LF and tab written as escapes. Other control
/// characters are refused: minimega's own output would mangle them and no
/// minimega name or path needs them. The empty string is `""` (one empty item).
pub fn quote(value: &str) -> Result<String, ClientError> {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                return Err(ClientError::BadValue {
                    value: value.to_owned(),
                    reason: "control characters cannot be passed to minimega",
                });
            }
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(out)
}

/// A name minimega stores and re-quotes itself (namespace, host, VM, bridge,
/// tap): 1 to 64 of `A-Z a-z 0-9 _ . -` (minimega's own `validName`),
/// starting with a letter or digit, and not the wildcard `all`.
/// minimega forwards such names to other nodes through Go's `%q`, which only
/// round-trips through minicli for plain names like these.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    pub fn new(value: &str) -> Result<Name, ClientError> {
        let bad = |reason| ClientError::BadValue {
            value: value.to_owned(),
            reason,
        };
        if value.is_empty() || value.len() > 64 {
            return Err(bad("a minimega name has 1 to 64 characters"));
        }
        if !value.as_bytes()[0].is_ascii_alphanumeric() {
            return Err(bad("a minimega name starts with a letter or digit"));
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(bad("a minimega name has only A-Z a-z 0-9 _ . -"));
        }
        // minimega's one reserved word (`isReserved`): the wildcard.
        if value == "all" {
            return Err(bad("`all` is minimega's wildcard, not a name"));
        }
        Ok(Name(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A minimega command, built from keywords and quoted values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    text: String,
}

impl Command {
    /// Start a command with its first keyword (`vm`, `mesh`, ...).
    pub fn new(keyword: &'static str) -> Command {
        Command {
            text: String::new(),
        }
        .word(keyword)
    }

    /// Append a keyword of the command's pattern (a literal of this
    /// program, such as `config` or `start`).
    ///
    /// # Panics
    /// When `keyword` is not a plain word (a programming error).
    pub fn word(mut self, keyword: &'static str) -> Command {
        assert!(
            !keyword.is_empty()
                && keyword.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b',' | b'=')
                }),
            "minimega keyword {keyword:?} is not a plain word"
        );
        self.push(keyword);
        self
    }

    /// Append one value (any text without control characters but tab, CR and
    /// LF), quoted so that minicli reads it back as exactly this one item.
    pub fn arg(mut self, value: &str) -> Result<Command, ClientError> {
        let q = quote(value)?;
        self.push(&q);
        Ok(self)
    }

    /// Append a validated name.
    pub fn name(mut self, name: &Name) -> Command {
        // A Name has no character that needs quoting; quoting it anyway
        // keeps every value quoted the same way.
        let q = quote(name.as_str()).expect("a Name has no control characters");
        self.push(&q);
        self
    }

    /// Append a number.
    pub fn num(mut self, n: u64) -> Command {
        self.push(&n.to_string());
        self
    }

    /// Append a whole command as this one's last words (`mesh send HOST
    /// <cmd>`); it was built by this type, so it is quoted already.
    pub fn then(mut self, rest: &Command) -> Command {
        self.push(&rest.text);
        self
    }

    /// Run this command in namespace `ns`: `namespace NS <cmd>`.
    pub fn in_namespace(self, ns: &Name) -> Command {
        let q = quote(ns.as_str()).expect("a Name has no control characters");
        Command {
            text: format!("namespace {q} {}", self.text),
        }
    }

    /// The text sent to minimega.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn push(&mut self, item: &str) {
        if !self.text.is_empty() {
            self.text.push(' ');
        }
        self.text.push_str(item);
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Whether `MEGAPLAN_MINIMEGA_TRACE` asks for each command's time (read once).
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("MEGAPLAN_MINIMEGA_TRACE").is_some())
}

/// A connection to one minimega instance's command socket.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    timeout: Duration,
    broken: bool,
}

impl Client {
    /// Connect to `BASE/minimega`. The socket must be a socket (a symlink or
    /// any other file there is refused, not followed).
    pub fn connect(base: &Path) -> Result<Client, ClientError> {
        let path = base.join(SOCKET);
        let meta = std::fs::symlink_metadata(&path).map_err(|source| ClientError::Connect {
            path: path.clone(),
            source,
        })?;
        if !meta.file_type().is_socket() {
            return Err(ClientError::NotSocket { path });
        }
        let stream = UnixStream::connect(&path).map_err(|source| ClientError::Connect {
            path: path.clone(),
            source,
        })?;
        let writer = stream
            .try_clone()
            .map_err(|source| ClientError::Connect { path, source })?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer,
            timeout: DEFAULT_TIMEOUT,
            broken: false,
        })
    }

    /// How long each command may take from sending to its last reply.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Run `cmd` and return every host's answer, errors included. With
    /// `MEGAPLAN_MINIMEGA_TRACE` set, each command and its time go to
    /// stderr (how docs/PERFORMANCE.md counts round trips).
    pub fn run(&mut self, cmd: &Command) -> Result<Vec<HostResponse>, ClientError> {
        if !trace() {
            return self.run_once(cmd);
        }
        let t = Instant::now();
        let r = self.run_once(cmd);
        eprintln!(
            "minimega: {:>8.2} ms  {}{}",
            t.elapsed().as_secs_f64() * 1000.0,
            crate::diag::escape(cmd.as_str()),
            if r.is_err() { "  (failed)" } else { "" }
        );
        r
    }

    fn run_once(&mut self, cmd: &Command) -> Result<Vec<HostResponse>, ClientError> {
        if self.broken {
            return Err(ClientError::Broken);
        }
        // Any failure below leaves the stream at an unknown place.
        self.broken = true;
        let deadline = Instant::now() + self.timeout;
        let command = cmd.as_str();
        let send_err = |source| ClientError::Send {
            command: command.to_owned(),
            source,
        };
        let mut line = serde_json::to_vec(&Request {
            command,
            suggest: "",
            plumb_pipe: "",
        })
        .expect("a request always serializes");
        line.push(b'\n');
        self.writer
            .set_write_timeout(Some(self.timeout))
            .map_err(send_err)?;
        self.writer.write_all(&line).map_err(|e| {
            if is_timeout(&e) {
                ClientError::Timeout {
                    command: command.to_owned(),
                    after: self.timeout,
                }
            } else {
                send_err(e)
            }
        })?;

        let mut out = Vec::new();
        loop {
            let reply = self.read_reply(command, deadline)?;
            if reply.status {
                continue;
            }
            out.extend(reply.resp);
            if !reply.more {
                break;
            }
        }
        self.broken = false;
        Ok(out)
    }

    /// Run `cmd`; fail when any host returned an error, naming each such host
    /// and its error.
    pub fn run_ok(&mut self, cmd: &Command) -> Result<Vec<HostResponse>, ClientError> {
        let resps = self.run(cmd)?;
        let errors: Vec<(String, String)> = resps
            .iter()
            .filter(|r| !r.error.is_empty())
            .map(|r| (r.host.clone(), r.error.clone()))
            .collect();
        if errors.is_empty() {
            Ok(resps)
        } else {
            Err(ClientError::Host {
                command: cmd.as_str().to_owned(),
                errors,
            })
        }
    }

    fn read_reply(&mut self, command: &str, deadline: Instant) -> Result<Reply, ClientError> {
        // Skip the encoder's newlines (and any white space) between values,
        // waiting no longer than the deadline.
        loop {
            let buf = self.fill(command, deadline)?;
            if buf.is_empty() {
                return Err(ClientError::Closed {
                    command: command.to_owned(),
                });
            }
            let ws = buf.iter().take_while(|b| b.is_ascii_whitespace()).count();
            let done = ws < buf.len();
            self.reader.consume(ws);
            if done {
                break;
            }
        }
        let timeout = self.timeout;
        let mut limited = DeadlineReader {
            inner: &mut self.reader,
            deadline,
            timed_out: false,
        }
        .take(MAX_REPLY);
        let mut de = serde_json::Deserializer::from_reader(&mut limited);
        let res = Reply::deserialize(&mut de);
        let timed_out = limited.get_ref().timed_out;
        let exhausted = limited.limit() == 0;
        res.map_err(|source| {
            if timed_out {
                ClientError::Timeout {
                    command: command.to_owned(),
                    after: timeout,
                }
            } else if exhausted {
                ClientError::TooLarge {
                    command: command.to_owned(),
                    limit: MAX_REPLY,
                }
            } else if source.is_eof() {
                ClientError::Closed {
                    command: command.to_owned(),
                }
            } else if source.is_io() {
                ClientError::Read {
                    command: command.to_owned(),
                    source: std::io::Error::other(source),
                }
            } else {
                ClientError::Decode {
                    command: command.to_owned(),
                    source,
                }
            }
        })
    }

    fn fill(&mut self, command: &str, deadline: Instant) -> Result<&[u8], ClientError> {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = || ClientError::Timeout {
            command: command.to_owned(),
            after: self.timeout,
        };
        if left.is_zero() {
            return Err(timeout());
        }
        self.reader
            .get_ref()
            .set_read_timeout(Some(left))
            .map_err(|source| ClientError::Read {
                command: command.to_owned(),
                source,
            })?;
        let after = self.timeout;
        match self.reader.fill_buf() {
            Ok(b) => Ok(b),
            Err(e) if is_timeout(&e) => Err(ClientError::Timeout {
                command: command.to_owned(),
                after,
            }),
            Err(source) => Err(ClientError::Read {
                command: command.to_owned(),
                source,
            }),
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Reads from the buffered socket, giving each read only the time left
/// before the command's deadline.
struct DeadlineReader<'a> {
    inner: &'a mut BufReader<UnixStream>,
    deadline: Instant,
    timed_out: bool,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.inner.buffer().is_empty() {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.timed_out = true;
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            self.inner.get_ref().set_read_timeout(Some(left))?;
        }
        match self.inner.read(buf) {
            Err(e) if is_timeout(&e) => {
                self.timed_out = true;
                Err(e)
            }
            r => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A reimplementation of minicli's input lexer (pkg/minicli/input.go,
    /// minimega 3.0.1), to check that quoted values read back as one item.
    fn minicli_lex(input: &str) -> Result<Vec<String>, String> {
        let mut items = Vec::new();
        let mut content = String::new();
        let mut emit = false;
        let mut chars = input.chars();
        let escape = |c: Option<char>| match c {
            Some('r') => Ok('\r'),
            Some('n') => Ok('\n'),
            Some('t') => Ok('\t'),
            Some(c @ ('\\' | '"' | '\'' | '#')) => Ok(c),
            Some(c) => Err(format!("unexpected escaped character: {c}")),
            None => Err("expected escape character".into()),
        };
        'outside: while let Some(c) = chars.next() {
            match c {
                '\\' => content.push(escape(chars.next())?),
                '"' | '\'' => {
                    loop {
                        match chars.next() {
                            None => return Err(format!("missing terminal {c}")),
                            Some('\\') => content.push(escape(chars.next())?),
                            Some(t) if t == c => break,
                            Some(t) => content.push(t),
                        }
                    }
                    emit = true;
                }
                '#' => break 'outside,
                c if c.is_whitespace() => {
                    if !content.is_empty() || emit {
                        items.push(std::mem::take(&mut content));
                        emit = false;
                    }
                }
                c => content.push(c),
            }
        }
        if !content.is_empty() || emit {
            items.push(content);
        }
        Ok(items)
    }

    #[test]
    fn the_lexer_model_matches_minicli_on_its_own_cases() {
        // Cases from minicli's behaviour: comments, quotes, escapes.
        assert_eq!(minicli_lex("vm info # x").unwrap(), ["vm", "info"]);
        assert_eq!(
            minicli_lex(r#"a "b c" 'd "e"'"#).unwrap(),
            ["a", "b c", r#"d "e""#]
        );
        assert_eq!(minicli_lex(r#"a "" b"#).unwrap(), ["a", "", "b"]);
        assert_eq!(minicli_lex(r"a\#b").unwrap(), ["a#b"]);
        assert!(minicli_lex(r"a\ b").is_err());
        assert!(minicli_lex(r#"a "b"#).is_err());
        assert!(minicli_lex(r"a \x").is_err());
    }

    #[test]
    fn quoting_keeps_each_value_one_item() {
        let hostile = [
            "",
            "plain",
            "two words",
            "# not a comment",
            "a#b",
            r#"say "hi""#,
            "it's",
            r"back\slash",
            r"trailing\",
            "line\nbreak",
            "cr\rtab\t",
            "  padded  ",
            "vm kill all",
            "ünïcødé ✓",
        ];
        for v in hostile {
            let cmd = Command::new("vm")
                .word("config")
                .word("append")
                .arg(v)
                .unwrap()
                .arg("after")
                .unwrap();
            let items = minicli_lex(cmd.as_str()).unwrap();
            assert_eq!(
                items,
                ["vm", "config", "append", v, "after"],
                "{:?}",
                cmd.as_str()
            );
        }
        assert_eq!(quote("a b").unwrap(), r#""a b""#);
        assert_eq!(quote(r#"x"#).unwrap(), r#""x""#);
        assert_eq!(quote("#").unwrap(), "\"#\"");
        assert_eq!(quote("\"\\").unwrap(), r#""\"\\""#);
    }

    #[test]
    fn control_characters_are_refused() {
        for v in ["nul\0", "bell\x07", "esc\x1b[2J", "del\x7f", "c1\u{85}"] {
            let err = quote(v).unwrap_err();
            assert!(matches!(err, ClientError::BadValue { .. }), "{v:?}: {err}");
        }
    }

    #[test]
    fn names_are_checked_and_namespaces_prefix_each_command() {
        for bad in [
            "",
            "-x",
            "a b",
            "a\"b",
            "a#b",
            "all",
            "x/y",
            &"n".repeat(65),
        ] {
            assert!(Name::new(bad).is_err(), "{bad:?}");
        }
        let ns = Name::new("mp-exp_1.a").unwrap();
        let host = Name::new("mm2").unwrap();
        let cmd = Command::new("vm")
            .word("config")
            .word("schedule")
            .name(&host)
            .in_namespace(&ns);
        assert_eq!(
            cmd.as_str(),
            r#"namespace "mp-exp_1.a" vm config schedule "mm2""#
        );
        assert_eq!(
            minicli_lex(cmd.as_str()).unwrap(),
            ["namespace", "mp-exp_1.a", "vm", "config", "schedule", "mm2"]
        );
        assert_eq!(
            Command::new("vm")
                .word("config")
                .word("memory")
                .num(512)
                .as_str(),
            "vm config memory 512"
        );
    }

    #[test]
    #[should_panic(expected = "not a plain word")]
    fn a_keyword_with_spaces_is_a_bug() {
        let _ = Command::new("vm").word("info # x");
    }

    /// A fake minimega socket: reads one request per entry of `script`, and
    /// writes that entry's raw bytes back.
    fn fake(
        script: Vec<&'static [u8]>,
    ) -> (tempfile::TempDir, std::thread::JoinHandle<Vec<String>>) {
        let dir = tempfile::tempdir().unwrap();
        let l = UnixListener::bind(dir.path().join(SOCKET)).unwrap();
        let h = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            let mut seen = Vec::new();
            for answer in script {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                seen.push(v["Command"].as_str().unwrap().to_owned());
                assert_eq!(v["Suggest"], "");
                assert_eq!(v["PlumbPipe"], "");
                w.write_all(answer).unwrap();
            }
            seen
        });
        (dir, h)
    }

    #[test]
    fn replies_are_read_while_more_and_status_is_skipped() {
        let (dir, h) = fake(vec![
            // status, then two hosts over two replies (the second split oddly).
            b"{\"Resp\":null,\"Rendered\":\"working\",\"More\":false,\"Status\":true}\n\
              {\"Resp\":[{\"Host\":\"mm1\",\"Response\":\"a\",\"Header\":null,\"Tabular\":null,\"Error\":\"\",\"Data\":null}],\"Rendered\":\"a\",\"More\":true,\"Status\":false}\n\
              {\"Resp\":[{\"Host\":\"mm2\",\"Response\":\"\",\"Header\":[\"id\",\"name\"],\"Tabular\":[[\"0\",\"v\"]],\"Error\":\"vm not found: x\",\"Data\":null}],\"Rendered\":\"\",\"More\":false,\"Status\":false}\n",
            // an empty answer (a comment line): Resp null, More false.
            b"{\"Resp\":null,\"Rendered\":\"\",\"More\":false,\"Status\":false}\n",
        ]);
        let mut c = Client::connect(dir.path()).unwrap();
        let cmd = Command::new("vm").word("info");
        let r = c.run(&cmd).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].host.as_str(), r[0].response.as_str()), ("mm1", "a"));
        assert_eq!(r[1].rows(), vec![vec![("id", "0"), ("name", "v")]]);
        assert_eq!(r[1].error, "vm not found: x");
        let err = {
            // The same answers through run_ok name the failing host.
            let e = ClientError::Host {
                command: cmd.as_str().into(),
                errors: vec![("mm2".into(), r[1].error.clone())],
            };
            e.to_string()
        };
        assert_eq!(err, "`vm info` failed on host mm2: vm not found: x");
        assert!(
            c.run(&Command::new("mesh").word("status"))
                .unwrap()
                .is_empty()
        );
        drop(c);
        assert_eq!(h.join().unwrap(), ["vm info", "mesh status"]);
    }

    #[test]
    fn run_ok_fails_naming_host_and_error() {
        let (dir, h) = fake(vec![
            b"{\"Resp\":[{\"Host\":\"mm1\",\"Error\":\"\"},{\"Host\":\"mm2\",\"Error\":\"vm not found: x\"}],\"More\":false}\n",
        ]);
        let mut c = Client::connect(dir.path()).unwrap();
        let err = c
            .run_ok(&Command::new("vm").word("kill").arg("x").unwrap())
            .unwrap_err();
        match &err {
            ClientError::Host { errors, .. } => {
                assert_eq!(errors, &[("mm2".to_owned(), "vm not found: x".to_owned())])
            }
            e => panic!("{e}"),
        }
        assert!(
            err.to_string().contains("host mm2: vm not found: x"),
            "{err}"
        );
        drop(c);
        h.join().unwrap();
    }

    #[test]
    fn a_silent_minimega_times_out_and_the_connection_is_then_unusable() {
        let dir = tempfile::tempdir().unwrap();
        let l = UnixListener::bind(dir.path().join(SOCKET)).unwrap();
        let mut c = Client::connect(dir.path()).unwrap();
        let (_held, _) = l.accept().unwrap();
        c.set_timeout(Duration::from_millis(200));
        let t0 = Instant::now();
        let err = c.run(&Command::new("mesh").word("status")).unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(5));
        let err = c.run(&Command::new("mesh").word("status")).unwrap_err();
        assert!(matches!(err, ClientError::Broken), "{err}");
    }

    #[test]
    fn a_closed_or_garbled_answer_is_an_error() {
        let (dir, h) = fake(vec![b"{\"Resp\":[{\"Host\":\"mm1\""]);
        let mut c = Client::connect(dir.path()).unwrap();
        let err = c.run(&Command::new("host")).unwrap_err();
        assert!(matches!(err, ClientError::Closed { .. }), "{err}");
        assert_eq!(h.join().unwrap(), ["host"]);

        let (dir, h) = fake(vec![b"[1,2]\n"]);
        let mut c = Client::connect(dir.path()).unwrap();
        let err = c.run(&Command::new("host")).unwrap_err();
        assert!(matches!(err, ClientError::Decode { .. }), "{err}");
        h.join().unwrap();
    }

    #[test]
    fn a_non_socket_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let real = tempfile::tempdir().unwrap();
        let _l = UnixListener::bind(real.path().join(SOCKET)).unwrap();
        std::os::unix::fs::symlink(real.path().join(SOCKET), dir.path().join(SOCKET)).unwrap();
        let err = Client::connect(dir.path()).err().unwrap();
        assert!(matches!(err, ClientError::NotSocket { .. }), "{err}");
    }

    #[test]
    fn vm_info_data_is_typed() {
        let resp = HostResponse {
            host: "mm2".into(),
            data: serde_json::json!([{
                "ID": 0, "Name": "b", "Namespace": "t", "Host": "mm2",
                "UUID": "1b4e28ba-2fa1-11d2-883f-0016d3cca427", "State": 2, "Pid": 42,
                "Networks": [{"Alias": "100", "VLAN": 101, "Bridge": "mega_bridge",
                  "Tap": "mega_tap0", "MAC": "00:11:22:33:44:55", "Driver": "virtio-net-pci",
                  "IP4": "", "IP6": "", "QinQ": false, "RxRate": 0, "TxRate": 0, "Raw": "100"}],
                "Tags": null
            }]),
            ..Default::default()
        };
        let cmd = Command::new("vm").word("info");
        let vms = vm_infos(&cmd, std::slice::from_ref(&resp)).unwrap();
        assert_eq!(vms.len(), 1);
        assert_eq!(vms[0].state, VmState::Running);
        assert_eq!(vms[0].host, "mm2");
        assert_eq!(vms[0].networks[0].tap, "mega_tap0");
        assert_eq!(vms[0].networks[0].vlan, 101);

        let bad = HostResponse {
            data: serde_json::json!({"not": "a list"}),
            ..resp
        };
        let err = vm_infos(&cmd, &[bad]).unwrap_err();
        assert!(err.to_string().contains("host mm2"), "{err}");
    }
}
