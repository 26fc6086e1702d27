//! `serve --allow-actions`: apply, destroy (of this experiment only) and
//! `cc exec`, from the page.
//!
//! Invariants:
//! - Reachable only with `--allow-actions`, which needs a token even on
//!   loopback; without the flag `/actions/*` is 404 like any unknown path.
//! - Each action is a `POST` (no `GET` changes anything) that carries the
//!   token in its `Authorization` header (never the query: a URL is logged
//!   and shown), an `Origin` equal to `http://` + its `Host` (a page of
//!   another origin cannot drive it: CSRF), `Content-Type: application/json`
//!   (a plain HTML form cannot send it) and a body of at most
//!   [`MAX_BODY`]. [`gate`] decides all of it, purely.
//! - One action at a time (409 otherwise). An action runs this megaplan
//!   binary itself with an argv (never a shell) built from the served file
//!   and state folder; only `cc exec`'s filters and command words come from
//!   the request, each filter parsed first, passed as `--filter=VALUE` and
//!   the words after `--`. The child is the CLI, so its provider is the one
//!   door to the machine (this module touches no host object itself).

use std::ffi::OsString;
use std::path::PathBuf;

use serde::Deserialize;

use super::Request;

/// The largest request body an action accepts.
pub const MAX_BODY: usize = 64 * 1024;
/// The most output of a child returned per stream.
pub const MAX_OUTPUT: usize = 1 << 20;
/// At most this many command words and filters.
const MAX_WORDS: usize = 256;

/// What the page may ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Apply,
    Destroy,
    CcExec {
        filters: Vec<String>,
        command: Vec<String>,
    },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Apply => "apply",
            Action::Destroy => "destroy",
            Action::CcExec { .. } => "cc exec",
        }
    }
}

/// What the served experiment's actions run against.
#[derive(Debug, Clone)]
pub struct Actions {
    /// The megaplan binary (this process's executable).
    pub exe: PathBuf,
    /// The experiment file `serve` was given.
    pub file: PathBuf,
    /// Its state folder.
    pub state_dir: PathBuf,
}

impl Actions {
    /// The child's argv (after the program).
    pub fn argv(&self, action: &Action) -> Vec<OsString> {
        let mut v: Vec<OsString> = Vec::new();
        match action {
            Action::Apply | Action::Destroy => {
                v.push(action.name().into());
                v.push(self.file.clone().into());
                v.push("--auto-approve".into());
                v.push("--state-dir".into());
                v.push(self.state_dir.clone().into());
            }
            Action::CcExec { filters, command } => {
                v.extend(["cc".into(), "exec".into()]);
                v.push(self.file.clone().into());
                v.push("--json".into());
                v.extend(filters.iter().map(|f| format!("--filter={f}").into()));
                v.push("--".into());
                v.extend(command.iter().map(OsString::from));
            }
        }
        v
    }
}

/// A refusal: status line and a one-line reason.
pub type Refusal = (&'static str, String);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CcBody {
    #[serde(default)]
    filter: Vec<String>,
    command: Vec<String>,
}

/// Decide whether `req` (with its `body`) may run an action, and which.
/// `token` is the server's (actions are only enabled with one).
pub fn gate(req: &Request, body: &[u8], token: &str) -> Result<Action, Refusal> {
    let which = req
        .path
        .strip_prefix("/actions/")
        .filter(|w| matches!(*w, "apply" | "destroy" | "cc-exec"))
        .ok_or(("404 Not Found", "not found".to_string()))?;
    if req.method != "POST" {
        return Err(("405 Method Not Allowed", "actions are POST requests".into()));
    }
    let header_token = req
        .bearer
        .as_deref()
        .is_some_and(|b| super::constant_time_eq(b.as_bytes(), token.as_bytes()));
    if !header_token {
        return Err((
            "401 Unauthorized",
            "an action needs the token in an Authorization: Bearer header".into(),
        ));
    }
    let same_origin = match (&req.origin, &req.host) {
        (Some(o), Some(h)) => o.eq_ignore_ascii_case(&format!("http://{h}")),
        _ => false,
    };
    if !same_origin {
        return Err((
            "403 Forbidden",
            "an action must come from this page (its Origin must be this server)".into(),
        ));
    }
    if req
        .sec_fetch_site
        .as_deref()
        .is_some_and(|s| s != "same-origin")
    {
        return Err(("403 Forbidden", "a cross-site request".into()));
    }
    let json = req
        .content_type
        .as_deref()
        .and_then(|c| c.split(';').next())
        .is_some_and(|c| c.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err((
            "415 Unsupported Media Type",
            "send Content-Type: application/json".into(),
        ));
    }
    if body.len() > MAX_BODY {
        return Err(("413 Payload Too Large", "the body is too large".into()));
    }
    match which {
        "apply" => Ok(Action::Apply),
        "destroy" => Ok(Action::Destroy),
        _ => {
            let bad = |why: String| ("400 Bad Request", why);
            let b: CcBody = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
            if b.command.is_empty() || b.command.iter().all(|w| w.trim().is_empty()) {
                return Err(bad("the command is empty".into()));
            }
            if b.command.len() + b.filter.len() > MAX_WORDS {
                return Err(bad("too many words".into()));
            }
            if b.command.iter().chain(&b.filter).any(|w| w.contains('\0')) {
                return Err(bad("a word holds a NUL".into()));
            }
            for f in &b.filter {
                f.parse::<crate::cc::Filter>().map_err(bad)?;
            }
            Ok(Action::CcExec {
                filters: b.filter,
                command: b.command,
            })
        }
    }
}

/// The page's actions panel (only served with `--allow-actions`).
pub const PANEL: &str = r#"<section id="actions-section">
    <h2>Actions</h2>
    <p><button id="action-apply" type="button">apply</button>
    <button id="action-destroy" type="button">destroy</button></p>
    <p><label>cc exec <input id="cc-command" type="text" placeholder="command (runs under sh -c)"></label>
    <label>filter <input id="cc-filter" type="text" placeholder="name=VM (optional)"></label>
    <button id="action-cc" type="button">run</button></p>
    <pre id="action-output" hidden></pre>
  </section>
  "#;

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "s3cret";

    fn req(head: &str) -> Request {
        super::super::parse_head(head).unwrap()
    }

    fn ok_head(path: &str) -> String {
        format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nOrigin: http://127.0.0.1:8080\r\nAuthorization: Bearer {T}\r\nContent-Type: application/json\r\nSec-Fetch-Site: same-origin\r\nContent-Length: 2"
        )
    }

    fn status(head: &str, body: &str) -> &'static str {
        match gate(&req(head), body.as_bytes(), T) {
            Ok(_) => "ok",
            Err((s, _)) => s,
        }
    }

    #[test]
    fn a_well_formed_action_passes() {
        assert_eq!(
            gate(&req(&ok_head("/actions/apply")), b"{}", T),
            Ok(Action::Apply)
        );
        assert_eq!(
            gate(&req(&ok_head("/actions/destroy")), b"{}", T),
            Ok(Action::Destroy)
        );
        assert_eq!(
            gate(
                &req(&ok_head("/actions/cc-exec")),
                br#"{"command":["uname -a"],"filter":["name=A"]}"#,
                T
            ),
            Ok(Action::CcExec {
                filters: vec!["name=A".into()],
                command: vec!["uname -a".into()],
            })
        );
    }

    #[test]
    fn each_missing_safeguard_refuses() {
        let good = ok_head("/actions/apply");
        assert_eq!(
            status(&good.replacen("POST", "GET", 1), ""),
            "405 Method Not Allowed"
        );
        assert_eq!(
            status(&good.replace("Bearer s3cret", "Bearer nope"), ""),
            "401 Unauthorized"
        );
        // The token in the query is not enough for an action.
        let no_header = good
            .replace("POST /actions/apply", "POST /actions/apply?token=s3cret")
            .replace("Authorization: Bearer s3cret\r\n", "");
        assert_eq!(status(&no_header, ""), "401 Unauthorized");
        assert_eq!(
            status(
                &good.replace(
                    "Origin: http://127.0.0.1:8080",
                    "Origin: http://evil.example"
                ),
                ""
            ),
            "403 Forbidden"
        );
        assert_eq!(
            status(&good.replace("Origin: http://127.0.0.1:8080\r\n", ""), ""),
            "403 Forbidden"
        );
        assert_eq!(
            status(&good.replace("same-origin", "cross-site"), ""),
            "403 Forbidden"
        );
        assert_eq!(
            status(
                &good.replace("application/json", "application/x-www-form-urlencoded"),
                ""
            ),
            "415 Unsupported Media Type"
        );
        assert_eq!(
            status(&good, &"x".repeat(MAX_BODY + 1)),
            "413 Payload Too Large"
        );
        assert_eq!(status(&ok_head("/actions/rm-rf"), ""), "404 Not Found");
    }

    #[test]
    fn cc_exec_input_is_checked_and_stays_argv() {
        let h = ok_head("/actions/cc-exec");
        assert_eq!(status(&h, r#"{"command":[]}"#), "400 Bad Request");
        assert_eq!(status(&h, r#"{"command":["  "]}"#), "400 Bad Request");
        assert_eq!(
            status(&h, r#"{"command":["ls"],"filter":["--all"]}"#),
            "400 Bad Request"
        );
        assert_eq!(status(&h, r#"{"command":["a\u0000b"]}"#), "400 Bad Request");
        assert_eq!(
            status(&h, r#"{"command":["ls"],"extra":1}"#),
            "400 Bad Request"
        );
        assert_eq!(status(&h, "not json"), "400 Bad Request");
        let a = Actions {
            exe: "/m".into(),
            file: "/lab/x.kdl".into(),
            state_dir: "/lab/.megaplan/x".into(),
        };
        let cc = Action::CcExec {
            filters: vec!["name=A".into()],
            command: vec!["--help; rm -rf /".into(), "$(id)".into()],
        };
        assert_eq!(
            a.argv(&cc),
            [
                "cc",
                "exec",
                "/lab/x.kdl",
                "--json",
                "--filter=name=A",
                "--",
                "--help; rm -rf /",
                "$(id)"
            ]
            .map(OsString::from)
        );
        assert_eq!(
            a.argv(&Action::Destroy),
            [
                "destroy",
                "/lab/x.kdl",
                "--auto-approve",
                "--state-dir",
                "/lab/.megaplan/x"
            ]
            .map(OsString::from)
        );
    }
}
