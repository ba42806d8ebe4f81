//! Flux's `postBuild` variable substitution.
//!
//! The expression language is the one of fluxcd/pkg `envsubst` (a fork of drone/envsubst), which
//! Flux runs over the YAML text of every built object:
//!
//! | form | value |
//! | --- | --- |
//! | `${var}` | the value; strict mode fails when `var` is unset |
//! | `${var:=default}` `${var=default}` `${var:-default}` `${var:+x}` `${var:?x}` | the value when non-empty, else the default (which may contain `${other}`); never a strict-mode error |
//! | `${#var}` | length in bytes |
//! | `${var^}` `${var^^}` `${var,}` `${var,,}` | upper/lower case first or all |
//! | `${var:pos}` `${var:pos:len}` | substring (byte offsets, negatives count from the end) |
//! | `${var#glob}` `${var##glob}` `${var%glob}` `${var%%glob}` | trim shortest/longest prefix/suffix |
//! | `${var/a/b}` `${var//a/b}` `${var/#a/b}` `${var/%a/b}` | replace first/all/prefix/suffix |
//! | `$${...}` | `$$` is written as `$`: the escape for a literal `${...}` |
//!
//! `$var` without braces is left alone, and `${var-default}` is a syntax error, as in Flux.
//!
//! Where Flux substitutes the serialised YAML text and parses it again, Gantry substitutes each
//! string (keys and values) of the parsed object and then re-reads a changed value the way a YAML
//! parser would have read the unquoted text, so `replicas: ${REPLICAS}` becomes the integer `3`
//! exactly as in Flux. Working on the tree lets errors name the field. Values spanning several
//! scalars (a `${` in one string closed in another) are the only case that differs, and they are
//! syntax errors in practice.

use std::collections::BTreeMap;

use serde_json::Value;

/// Annotation or label that turns substitution off for one object.
pub const SUBSTITUTE_ANNOTATION: &str = "kustomize.toolkit.fluxcd.io/substitute";
/// The value of [`SUBSTITUTE_ANNOTATION`] that turns substitution off.
pub const DISABLED: &str = "disabled";

/// Why an expression could not be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    /// Strict mode and the variable has neither a value nor a default.
    #[error("variable not set (strict mode): {0:?}")]
    VariableNotSet(String),
    /// Malformed `${...}` expression.
    #[error("bad substitution")]
    BadSubstitution,
    /// `${var` without its `}`.
    #[error("missing closing brace")]
    MissingClosingBrace,
    /// `${}` or `${` followed by something that is not a variable name.
    #[error("unable to parse variable name")]
    VariableName,
    /// A malformed argument inside `${var...}`.
    #[error("unable to parse substitution within function")]
    FuncSubstitution,
    /// A malformed `${var:=...}`.
    #[error("unable to parse default function")]
    DefaultFunction,
}

/// Why substitution of an object failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubstituteError {
    /// A variable name the substitution map may not contain (Flux checks these first).
    #[error("'{name}' var name is invalid, must match '^[_[:alpha:]][_[:alpha:][:digit:]]*$'")]
    InvalidName {
        /// The offending name.
        name: String,
    },
    /// An expression in a field failed.
    #[error("variable substitution failed in {object} at {field}: {source}")]
    Expand {
        /// `Kind/namespace/name` of the object.
        object: String,
        /// Dotted path of the field, e.g. `spec.template.spec.containers[0].image`.
        field: String,
        /// What went wrong.
        #[source]
        source: ExpandError,
    },
}

/// Whether `name` may be a variable name: `^[_[:alpha:]][_[:alpha:][:digit:]]*$` (ASCII classes).
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Fails on the first variable name that [`is_valid_name`] rejects.
pub fn validate_names<'a>(
    names: impl IntoIterator<Item = &'a String>,
) -> Result<(), SubstituteError> {
    match names.into_iter().find(|n| !is_valid_name(n)) {
        Some(name) => Err(SubstituteError::InvalidName { name: name.clone() }),
        None => Ok(()),
    }
}

/// Whether the object opted out with `kustomize.toolkit.fluxcd.io/substitute: disabled` as an
/// annotation or a label.
pub fn is_disabled(object: &Value) -> bool {
    ["annotations", "labels"].iter().any(|kind| {
        object
            .pointer(&format!("/metadata/{kind}"))
            .and_then(|m| m.get(SUBSTITUTE_ANNOTATION))
            .and_then(Value::as_str)
            == Some(DISABLED)
    })
}

/// Expands every `${...}` in `text`. `lookup` returns a variable's value; in strict mode a
/// variable it does not know fails unless the expression supplies a default, otherwise it is empty.
pub fn expand<'v>(
    text: &str,
    lookup: impl Fn(&str) -> Option<&'v str>,
    strict: bool,
) -> Result<String, ExpandError> {
    let nodes = Parser::new(text).parse_text()?;
    let mut out = String::with_capacity(text.len());
    for node in &nodes {
        eval(node, &lookup, strict, &mut out)?;
    }
    Ok(out)
}

/// Substitutes `vars` into every string of `object` (map keys included), unless the object opted
/// out ([`is_disabled`]). Changed values are re-read as YAML scalars (see the module docs).
/// Variable values lose their newlines, as in Flux.
pub fn substitute_object(
    object: &mut Value,
    vars: &BTreeMap<String, String>,
    strict: bool,
) -> Result<(), SubstituteError> {
    validate_names(vars.keys())?;
    if is_disabled(object) {
        return Ok(());
    }
    let vars: BTreeMap<&str, String> = vars
        .iter()
        .map(|(k, v)| (k.as_str(), v.replace('\n', "")))
        .collect();
    let lookup = |name: &str| vars.get(name).map(String::as_str);
    let id = object_id(object);
    let mut path = String::new();
    walk(object, &lookup, strict, &mut path).map_err(|(field, source)| SubstituteError::Expand {
        object: id,
        field,
        source,
    })
}

/// `Kind/namespace/name` (or `Kind/name`) of a manifest, for messages.
pub fn object_id(object: &Value) -> String {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("?");
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("?");
    match object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
    {
        Some(ns) => format!("{kind}/{ns}/{name}"),
        None => format!("{kind}/{name}"),
    }
}

fn walk<'v>(
    value: &mut Value,
    lookup: &impl Fn(&str) -> Option<&'v str>,
    strict: bool,
    path: &mut String,
) -> Result<(), (String, ExpandError)> {
    match value {
        Value::String(s) if s.contains('$') => {
            let expanded = expand(s, lookup, strict).map_err(|e| (display_path(path), e))?;
            if expanded != *s {
                *value = if is_plain(s) {
                    resolve_plain(&expanded)
                } else {
                    Value::String(expanded)
                };
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk(item, lookup, strict, path)?;
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            let entries = std::mem::take(map);
            for (key, mut item) in entries {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&key);
                let key = if key.contains('$') {
                    expand(&key, lookup, strict).map_err(|e| (display_path(path), e))?
                } else {
                    key
                };
                walk(&mut item, lookup, strict, path)?;
                path.truncate(len);
                map.insert(key, item);
            }
        }
        _ => {}
    }
    Ok(())
}

fn display_path(path: &str) -> String {
    if path.is_empty() {
        "<root>".to_string()
    } else {
        path.to_string()
    }
}

/// Whether a YAML emitter (go-yaml, as Flux uses) writes `s` as a plain, unquoted scalar: only
/// then does the substituted text get re-typed by the parser.
fn is_plain(s: &str) -> bool {
    if s.is_empty() || s.contains('\n') || s.trim() != s {
        return false;
    }
    if !matches!(resolve_plain(s), Value::String(_)) {
        return false;
    }
    let first = s.chars().next().unwrap_or(' ');
    if "-?:,[]{}#&*!|>'\"%@`".contains(first) {
        return false;
    }
    !(s.contains(": ") || s.contains(" #") || s.ends_with(':'))
}

/// How a YAML parser types an unquoted scalar (YAML 1.1 as in sigs.k8s.io/yaml: `yes`/`no`/`on`/
/// `off` are booleans too).
pub fn resolve_plain(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "y" | "Y" => {
            return Value::Bool(true);
        }
        "false" | "False" | "FALSE" | "no" | "No" | "NO" | "off" | "Off" | "OFF" | "n" | "N" => {
            return Value::Bool(false);
        }
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" | "-.inf" | "-.Inf" | "-.INF"
        | ".nan" | ".NaN" | ".NAN" => return Value::String(s.to_string()),
        _ => {}
    }
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if let Some(i) = parse_int(s) {
        return i;
    }
    let looks_float = digits.bytes().any(|b| b.is_ascii_digit())
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && digits.starts_with(|c: char| c.is_ascii_digit() || c == '.');
    if looks_float
        && let Ok(f) = s.parse::<f64>()
        && let Some(n) = serde_json::Number::from_f64(f)
    {
        return Value::Number(n);
    }
    Value::String(s.to_string())
}

/// An integer as go-yaml v2 reads one (Go's `ParseInt` with base 0): decimal, `0x` hex, `0o` or
/// leading-`0` octal, `0b` binary, with an optional sign.
fn parse_int(s: &str) -> Option<Value> {
    let (negative, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = body.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = i128::from_str_radix(digits, radix).ok()?;
    let value = if negative { -magnitude } else { magnitude };
    i64::try_from(value)
        .map(Value::from)
        .or_else(|_| u64::try_from(value).map(Value::from))
        .ok()
}

// ---- expression parser ----------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    Func {
        /// The operator (`""` for a bare `${var}`), e.g. `:=`, `^^`, `//`.
        op: String,
        param: String,
        args: Vec<Node>,
    },
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

impl Parser {
    fn new(text: &str) -> Self {
        Self {
            chars: text.chars().collect(),
            pos: 0,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<char> {
        self.chars.get(self.pos + offset).copied()
    }

    fn at_open(&self) -> bool {
        self.peek() == Some('$') && self.peek_at(1) == Some('{')
    }

    /// Top level: text with `$$` written as `$`, and `${...}` expressions.
    fn parse_text(&mut self) -> Result<Vec<Node>, ExpandError> {
        let mut nodes = Vec::new();
        let mut text = String::new();
        while let Some(c) = self.peek() {
            if c == '$' && self.peek_at(1) == Some('$') {
                text.push('$');
                self.pos += 2;
            } else if self.at_open() {
                if !text.is_empty() {
                    nodes.push(Node::Text(std::mem::take(&mut text)));
                }
                self.pos += 2;
                nodes.push(self.parse_func()?);
            } else {
                text.push(c);
                self.pos += 1;
            }
        }
        if !text.is_empty() {
            nodes.push(Node::Text(text));
        }
        Ok(nodes)
    }

    /// Reads a run of chars accepted by `accept(c, index)` where index starts at 1.
    fn take(&mut self, accept: impl Fn(char, usize) -> bool) -> String {
        let mut out = String::new();
        while let Some(c) = self.peek() {
            if !accept(c, out.chars().count() + 1) {
                break;
            }
            out.push(c);
            self.pos += 1;
        }
        out
    }

    fn consume_close(&mut self) -> Result<(), ExpandError> {
        if self.peek() == Some('}') {
            self.pos += 1;
            Ok(())
        } else {
            Err(ExpandError::BadSubstitution)
        }
    }

    /// After `${`.
    fn parse_func(&mut self) -> Result<Node, ExpandError> {
        if self.peek() == Some('#') {
            self.pos += 1;
            let param = self.take(|c, _| is_ident(c));
            if param.is_empty() {
                return Err(ExpandError::BadSubstitution);
            }
            self.consume_close()?;
            return Ok(Node::Func {
                op: "#".into(),
                param,
                args: Vec::new(),
            });
        }
        let param = self.take(|c, _| is_ident(c));
        if param.is_empty() {
            return Err(ExpandError::VariableName);
        }
        match self.peek() {
            Some(':') => {
                if matches!(self.peek_at(1), Some('=' | '-' | '?' | '+')) {
                    self.parse_default(param)
                } else {
                    self.parse_substr(param)
                }
            }
            Some('=') => self.parse_default(param),
            Some(',' | '^') => {
                let op = self.take(|c, i| (c == ',' || c == '^') && i < 3);
                self.consume_close()?;
                Ok(Node::Func {
                    op,
                    param,
                    args: Vec::new(),
                })
            }
            Some('/') => self.parse_replace(param),
            Some(c @ ('#' | '%')) => {
                let op = self.take(|x, i| x == c && i < 3);
                let arg = self.parse_param(|c| c != '}', false)?;
                self.consume_close()?;
                Ok(Node::Func {
                    op,
                    param,
                    args: vec![arg],
                })
            }
            Some('}') => {
                self.pos += 1;
                Ok(Node::Func {
                    op: String::new(),
                    param,
                    args: Vec::new(),
                })
            }
            _ => Err(ExpandError::MissingClosingBrace),
        }
    }

    /// One argument: a nested `${...}` or a non-empty run of accepted chars (stopping at `${`).
    /// With `escapes`, `$$`, `\/` and `\\` stand for their second char.
    fn parse_param(
        &mut self,
        accept: impl Fn(char) -> bool,
        escapes: bool,
    ) -> Result<Node, ExpandError> {
        if self.at_open() {
            self.pos += 2;
            return self.parse_func();
        }
        let mut text = String::new();
        while let Some(c) = self.peek() {
            if self.at_open() {
                break;
            }
            let next = self.peek_at(1);
            let escaped = escapes
                && ((c == '$' && next == Some('$'))
                    || (c == '\\' && matches!(next, Some('/' | '\\'))));
            if escaped {
                text.push(next.unwrap_or(c));
                self.pos += 2;
                continue;
            }
            if !accept(c) {
                break;
            }
            text.push(c);
            self.pos += 1;
        }
        if text.is_empty() {
            return Err(ExpandError::FuncSubstitution);
        }
        Ok(Node::Text(text))
    }

    fn parse_default(&mut self, param: String) -> Result<Node, ExpandError> {
        let op = if self.peek() == Some('=') {
            self.pos += 1;
            "=".to_string()
        } else {
            self.take(|c, i| (i == 1 && c == ':') || (i == 2 && matches!(c, '=' | '-' | '?' | '+')))
        };
        if op.is_empty() {
            return Err(ExpandError::DefaultFunction);
        }
        let mut args = Vec::new();
        loop {
            match self.peek() {
                Some('}') => {
                    self.pos += 1;
                    return Ok(Node::Func { op, param, args });
                }
                None => return Err(ExpandError::FuncSubstitution),
                _ => args.push(self.parse_param(|c| c != '}', false)?),
            }
        }
    }

    fn parse_substr(&mut self, param: String) -> Result<Node, ExpandError> {
        self.pos += 1; // ':'
        let mut args = vec![self.parse_param(|c| c != ':' && c != '}', false)?];
        match self.peek() {
            Some('}') => {
                self.pos += 1;
                return Ok(Node::Func {
                    op: ":".into(),
                    param,
                    args,
                });
            }
            Some(':') => {
                while self.peek() == Some(':') {
                    self.pos += 1;
                }
            }
            _ => return Err(ExpandError::BadSubstitution),
        }
        args.push(self.parse_param(|c| c != '}', false)?);
        self.consume_close()?;
        Ok(Node::Func {
            op: ":".into(),
            param,
            args,
        })
    }

    fn parse_replace(&mut self, param: String) -> Result<Node, ExpandError> {
        let op = self.take(|c, i| (i == 1 && c == '/') || (i == 2 && matches!(c, '/' | '#' | '%')));
        let mut args = Vec::new();
        if self.peek() == Some('/') {
            args.push(Node::Text(String::new()));
        } else {
            args.push(self.parse_param(|c| c != '/', true)?);
        }
        if self.peek() != Some('/') {
            return Err(ExpandError::BadSubstitution);
        }
        while self.peek() == Some('/') {
            self.pos += 1;
        }
        if self.peek() == Some('}') {
            self.pos += 1;
            return Ok(Node::Func { op, param, args });
        }
        args.push(self.parse_param(|c| c != '}', true)?);
        self.consume_close()?;
        Ok(Node::Func { op, param, args })
    }
}

// ---- evaluation -----------------------------------------------------------------------------

fn eval<'v>(
    node: &Node,
    lookup: &impl Fn(&str) -> Option<&'v str>,
    strict: bool,
    out: &mut String,
) -> Result<(), ExpandError> {
    match node {
        Node::Text(t) => out.push_str(t),
        Node::Func { op, param, args } => {
            let mut values = Vec::with_capacity(args.len());
            for arg in args {
                let mut s = String::new();
                eval(arg, lookup, strict, &mut s)?;
                values.push(s);
            }
            let value = match lookup(param) {
                Some(v) => v,
                None if strict && !is_default_op(op) => {
                    return Err(ExpandError::VariableNotSet(param.clone()));
                }
                None => "",
            };
            out.push_str(&apply(op, value, &values));
        }
    }
    Ok(())
}

fn is_default_op(op: &str) -> bool {
    matches!(op, "-" | "+" | "=" | "?" | ":-" | ":+" | ":=" | ":?")
}

fn apply(op: &str, s: &str, args: &[String]) -> String {
    let arg = |i: usize| args.get(i).map(String::as_str);
    match op {
        "," => map_first(s, |c| c.to_lowercase().collect()),
        ",," => s.to_lowercase(),
        "^" => map_first(s, |c| c.to_uppercase().collect()),
        "^^" => s.to_uppercase(),
        "#" if args.is_empty() => s.len().to_string(),
        "#" => trim_prefix(s, arg(0).unwrap_or(""), false),
        "##" => trim_prefix(s, arg(0).unwrap_or(""), true),
        "%" => trim_suffix(s, arg(0).unwrap_or(""), false),
        "%%" => trim_suffix(s, arg(0).unwrap_or(""), true),
        ":" => substr(s, args),
        "/" | "//" => match (arg(0), arg(1)) {
            (Some(from), to) if !from.is_empty() => {
                let n = if op == "/" { 1 } else { usize::MAX };
                replacen(s, from, to.unwrap_or(""), n)
            }
            // Go's strings.Replace with an empty pattern inserts at every rune boundary.
            (Some(_), to) => {
                let to = to.unwrap_or("");
                let n = if op == "/" { 1 } else { usize::MAX };
                insert_between_runes(s, to, n)
            }
            _ => s.to_string(),
        },
        "/#" => match (arg(0), arg(1)) {
            (Some(from), Some(to)) if s.starts_with(from) => format!("{to}{}", &s[from.len()..]),
            _ => s.to_string(),
        },
        "/%" => match (arg(0), arg(1)) {
            (Some(from), Some(to)) if s.ends_with(from) => {
                format!("{}{to}", &s[..s.len() - from.len()])
            }
            _ => s.to_string(),
        },
        // Bare `${var}` and every default operator: the value, or the arguments when it is empty.
        _ => {
            if s.is_empty() && !args.is_empty() {
                args.concat()
            } else {
                s.to_string()
            }
        }
    }
}

fn map_first(s: &str, f: impl Fn(char) -> String) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => f(c) + chars.as_str(),
        None => String::new(),
    }
}

fn replacen(s: &str, from: &str, to: &str, n: usize) -> String {
    if n == usize::MAX {
        s.replace(from, to)
    } else {
        s.replacen(from, to, n)
    }
}

fn insert_between_runes(s: &str, to: &str, n: usize) -> String {
    let mut out = String::new();
    let mut inserted = 0;
    for c in s.chars() {
        if inserted < n {
            out.push_str(to);
            inserted += 1;
        }
        out.push(c);
    }
    if inserted < n {
        out.push_str(to);
    }
    out
}

/// `${var:pos}` / `${var:pos:len}` on bytes, as Go slices strings.
fn substr(s: &str, args: &[String]) -> String {
    let bytes = s.as_bytes();
    let len = bytes.len() as i64;
    let Some(Ok(mut pos)) = args.first().map(|a| a.parse::<i64>()) else {
        return s.to_string();
    };
    if pos < 0 {
        pos = (len + pos).max(0);
    }
    let slice =
        |a: i64, b: i64| String::from_utf8_lossy(&bytes[a as usize..b as usize]).into_owned();
    let Some(length) = args.get(1) else {
        return if pos < len {
            slice(pos, len)
        } else {
            String::new()
        };
    };
    let Ok(length) = length.parse::<i64>() else {
        return s.to_string();
    };
    if length < 0 {
        let end = len + length;
        return if end < pos {
            String::new()
        } else {
            slice(pos, end)
        };
    }
    if pos + length >= len {
        return if pos < len {
            slice(pos, len)
        } else {
            String::new()
        };
    }
    slice(pos, pos + length)
}

/// Prefixes of `s` (longest first, never empty) on char boundaries.
fn prefixes(s: &str) -> impl Iterator<Item = &str> {
    let mut ends: Vec<usize> = s.char_indices().map(|(i, c)| i + c.len_utf8()).collect();
    ends.reverse();
    ends.into_iter().map(move |e| &s[..e])
}

fn trim_prefix(s: &str, pattern: &str, longest: bool) -> String {
    let mut found = None;
    for p in prefixes(s) {
        if glob_match(pattern, p) {
            found = Some(p.len());
            if longest {
                break;
            }
        }
    }
    match found {
        Some(n) => s[n..].to_string(),
        None => s.to_string(),
    }
}

fn trim_suffix(s: &str, pattern: &str, longest: bool) -> String {
    let rs: String = s.chars().rev().collect();
    let rp: String = pattern.chars().rev().collect();
    trim_prefix(&rs, &rp, longest).chars().rev().collect()
}

/// Shell-style glob: `*` any run (slashes included), `?` one char, `[abc]`/`[a-z]`/`[^a]` classes,
/// `\x` a literal `x`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    glob_at(&p, &t)
}

fn glob_at(p: &[char], t: &[char]) -> bool {
    match p.first() {
        None => t.is_empty(),
        Some('*') => (0..=t.len()).any(|i| glob_at(&p[1..], &t[i..])),
        Some('?') => !t.is_empty() && glob_at(&p[1..], &t[1..]),
        Some('[') => {
            let Some(close) = p.iter().skip(2).position(|&c| c == ']').map(|i| i + 2) else {
                return !t.is_empty() && t[0] == '[' && glob_at(&p[1..], &t[1..]);
            };
            let Some(&c) = t.first() else { return false };
            let mut class = &p[1..close];
            let negate = matches!(class.first(), Some('^' | '!'));
            if negate {
                class = &class[1..];
            }
            let mut hit = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == '-' {
                    hit |= class[i] <= c && c <= class[i + 2];
                    i += 3;
                } else {
                    hit |= class[i] == c;
                    i += 1;
                }
            }
            hit != negate && glob_at(&p[close + 1..], &t[1..])
        }
        Some('\\') if p.len() > 1 => !t.is_empty() && t[0] == p[1] && glob_at(&p[2..], &t[1..]),
        Some(&c) => !t.is_empty() && t[0] == c && glob_at(&p[1..], &t[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn run(vars: &[(&str, &str)], input: &str, strict: bool) -> Result<String, ExpandError> {
        let map: BTreeMap<&str, &str> = vars.iter().copied().collect();
        expand(input, |n| map.get(n).copied(), strict)
    }

    type Case = (
        &'static [(&'static str, &'static str)],
        &'static str,
        &'static str,
    );

    #[test]
    fn expressions() {
        // (vars, input, output): Flux's envsubst cases, plus Gantry's own edge cases.
        let cases: &[Case] = &[
            (&[], "abcdEFGH28ij", "abcdEFGH28ij"),
            (&[("var01", "abcdEFGH28ij")], "${#var01}", "12"),
            (&[("var01", "abcdEFGH28ij")], "${var01^}", "AbcdEFGH28ij"),
            (&[("var01", "abcdEFGH28ij")], "${var01^^}", "ABCDEFGH28IJ"),
            (&[("var01", "ABCDEFGH28IJ")], "${var01,}", "aBCDEFGH28IJ"),
            (&[("var01", "ABCDEFGH28IJ")], "${var01,,}", "abcdefgh28ij"),
            (
                &[("p", "/home/bozo/ideas/thoughts.for.today")],
                "${p:11}",
                "ideas/thoughts.for.today",
            ),
            (
                &[("p", "/home/bozo/ideas/thoughts.for.today")],
                "${p:11:5}",
                "ideas",
            ),
            (&[("p", "abcdef")], "${p:-2}", "abcdef"), // `:-` is the default operator, as in bash
            (&[("p", "abcdef")], "${p:2}", "cdef"),
            (&[("p", "abcdef")], "${p:1:-1}", "bcde"),
            (&[("p", "abc")], "${p:10}", ""),
            (&[("var", "abc")], "${var=xyz}", "abc"),
            (&[], "${var=xyz}", "xyz"),
            (&[], "${var:=xyz}", "xyz"),
            (&[], "${var:-xyz}", "xyz"),
            (&[("var", "")], "${var:-xyz}", "xyz"),
            (&[("d", "foo")], "something ${var=${d}}", "something foo"),
            (
                &[("d", "foo1")],
                "foo: ${var=${d}-suffix}",
                "foo: foo1-suffix",
            ),
            (
                &[("d", "foo1")],
                "foo: ${var=prefix${d}-suffix}",
                "foo: prefixfoo1-suffix",
            ),
            (
                &[("s", "abcABC123ABCabc")],
                "${s/%abc/XYZ}",
                "abcABC123ABCXYZ",
            ),
            (
                &[("s", "abcABC123ABCabc")],
                "${s/#abc/XYZ}",
                "XYZABC123ABCabc",
            ),
            (&[("s", "somevalue")], "${s/#/prefix-}", "prefix-somevalue"),
            (&[("s", "somevalue")], "${s/%/-suffix}", "somevalue-suffix"),
            (
                &[("s", "abcABC123ABCabc")],
                "${s//abc/xyz}",
                "xyzABC123ABCxyz",
            ),
            (
                &[("s", "abcABC123ABCabc")],
                "${s/abc/xyz}",
                "xyzABC123ABCabc",
            ),
            (&[("f", "bash.string.txt")], "${f#*.}", "string.txt"),
            (&[("f", "path/to/file")], "${f#*/}", "to/file"),
            (&[("f", "/path/to/file")], "${f#*/}", "path/to/file"),
            (&[("f", "bash.string.txt")], "${f##*.}", "txt"),
            (&[("f", "path/to/file")], "${f##*/}", "file"),
            (&[("f", "bash.string.txt")], "${f%.*}", "bash.string"),
            (&[("f", "bash.string.txt")], "${f%%.*}", "bash"),
            (
                &[("var01", "abcdEFGH28ij")],
                "${var=${var01^^}}",
                "ABCDEFGH28IJ",
            ),
            (&[("var01", "abcdEFGH28ij")], "$${var01}", "${var01}"),
            (
                &[("var01", "abcdEFGH28ij")],
                "some text ${var01}$${var$${var01}$var01${var01}",
                "some text abcdEFGH28ij${var${var01}$var01abcdEFGH28ij",
            ),
            (
                &[("d", "foo")],
                "something $${var=${d}}",
                "something ${var=foo}",
            ),
            (&[("s", "foo/bar")], r"${s/\//-}", "foo-bar"),
            (&[("s", "foo/bar/baz")], r"${s//\//-}", "foo-bar-baz"),
            (
                &[("d", "foo")],
                r"\\something ${var=${d}}",
                r"\\something foo",
            ),
            (&[("s", "foo.bar")], "${s/./}", "foobar"),
            // `$$` pairs collapse everywhere in text; a lone `$` stays.
            (&[], "pa$$word", "pa$word"),
            (&[], "$$$", "$$"),
            (&[], "$$$${x}", "$${x}"),
            (&[], "cost: $5", "cost: $5"),
            (&[], "$", "$"),
            (&[("x", "1")], "${x}${x}", "11"),
            (&[("x", "é")], "${#x}", "2"),
        ];
        for (vars, input, want) in cases {
            assert_eq!(run(vars, input, false).as_deref(), Ok(*want), "{input}");
        }
    }

    #[test]
    fn strict_mode() {
        let missing = |input: &str| run(&[], input, true);
        assert_eq!(
            missing("${missing}"),
            Err(ExpandError::VariableNotSet("missing".into()))
        );
        for input in [
            "${#missing}",
            "${missing^}",
            "${missing^^}",
            "${missing,}",
            "${missing,,}",
            "${missing:0}",
            "${missing:0:10}",
            "${missing/a/b}",
            "${missing//a/b}",
            "${missing/#a/b}",
            "${missing/%a/b}",
            "${missing#a}",
            "${missing##a}",
            "${missing%a}",
            "${missing%%a}",
        ] {
            assert!(
                matches!(missing(input), Err(ExpandError::VariableNotSet(v)) if v == "missing"),
                "{input}"
            );
        }
        assert_eq!(missing("${missing:-fallback}").unwrap(), "fallback");
        assert_eq!(missing("${missing:=assigned}").unwrap(), "assigned");
        assert_eq!(missing("${missing=assigned}").unwrap(), "assigned");
        assert_eq!(run(&[("foo", "")], "${foo}", true).unwrap(), "");
        // Non-strict: unset is empty.
        assert_eq!(run(&[], "a${missing}b", false).unwrap(), "ab");
        // The default's own variables are checked too.
        assert_eq!(
            missing("${a:=${b}}"),
            Err(ExpandError::VariableNotSet("b".into()))
        );
    }

    #[test]
    fn syntax_errors() {
        let cases = [
            ("${}", ExpandError::VariableName),
            ("${ x}", ExpandError::VariableName),
            ("${x", ExpandError::MissingClosingBrace),
            ("${x-default}", ExpandError::MissingClosingBrace),
            ("${x^^", ExpandError::BadSubstitution),
            ("${x:=abc", ExpandError::FuncSubstitution),
            ("${x/abc}", ExpandError::BadSubstitution),
        ];
        for (input, want) in cases {
            assert_eq!(run(&[("x", "v")], input, false), Err(want), "{input}");
        }
    }

    #[test]
    fn names() {
        for ok in ["a", "_", "A_1", "cluster_env", "_x9"] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in ["", "1a", "a-b", "a.b", "é", "a b"] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn objects_are_substituted_and_retyped() {
        let mut obj = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "app-${env}", "namespace": "ns", "labels": {"${key}": "v"}},
            "spec": {
                "replicas": "${replicas}",
                "paused": "${paused:=false}",
                "template": {"spec": {"containers": [
                    {"name": "c", "image": "nginx:${tag}", "args": ["--port=${port}", "${port}"]}
                ]}},
                "literal": "$${env}",
                "quoted": "${env}: x",
            }
        });
        let vars: BTreeMap<String, String> = [
            ("env", "prod"),
            ("replicas", "3"),
            ("tag", "1.27"),
            ("port", "8080"),
            ("key", "team"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        substitute_object(&mut obj, &vars, true).unwrap();
        assert_eq!(obj["metadata"]["name"], "app-prod");
        assert_eq!(obj["metadata"]["labels"]["team"], "v");
        assert_eq!(obj["spec"]["replicas"], 3);
        assert_eq!(obj["spec"]["paused"], false);
        let c = &obj["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], "nginx:1.27");
        assert_eq!(c["args"], json!(["--port=8080", 8080]));
        assert_eq!(obj["spec"]["literal"], "${env}");
        // A value the emitter would quote stays a string.
        assert_eq!(obj["spec"]["quoted"], "prod: x");
    }

    #[test]
    fn strict_failure_names_variable_object_and_field() {
        let mut obj = json!({"kind": "ConfigMap", "metadata": {"name": "cm", "namespace": "ns"},
            "data": {"k": "${cluster_name}"}});
        let err = substitute_object(&mut obj, &BTreeMap::new(), true).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("cluster_name"), "{msg}");
        assert!(msg.contains("ConfigMap/ns/cm"), "{msg}");
        assert!(msg.contains("data.k"), "{msg}");
    }

    #[test]
    fn disabled_objects_and_invalid_names() {
        for meta in ["annotations", "labels"] {
            let mut obj = json!({"kind": "ConfigMap", "metadata": {"name": "cm",
                meta: {SUBSTITUTE_ANNOTATION: "disabled"}}, "data": {"k": "${x}"}});
            let before = obj.clone();
            substitute_object(&mut obj, &BTreeMap::new(), true).unwrap();
            assert_eq!(obj, before);
        }
        let vars = BTreeMap::from([("bad-name".to_string(), "v".to_string())]);
        let err = substitute_object(&mut json!({}), &vars, true).unwrap_err();
        assert!(matches!(err, SubstituteError::InvalidName { name } if name == "bad-name"));
    }

    #[test]
    fn values_lose_newlines() {
        let mut obj =
            json!({"kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {"k": "${x}"}});
        let vars = BTreeMap::from([("x".to_string(), "a\nb\n".to_string())]);
        substitute_object(&mut obj, &vars, true).unwrap();
        assert_eq!(obj["data"]["k"], "ab");
    }

    #[test]
    fn plain_scalars_resolve_like_yaml() {
        let cases = [
            ("3", json!(3)),
            ("-7", json!(-7)),
            ("1.5", json!(1.5)),
            ("true", json!(true)),
            ("yes", json!(true)),
            ("off", json!(false)),
            ("null", json!(null)),
            ("1.27", json!(1.27)),
            ("1.27.3", json!("1.27.3")),
            ("v1", json!("v1")),
            ("0x1F", json!(31)),
            ("0755", json!(493)),
            ("0b101", json!(5)),
            ("-0o17", json!(-15)),
            ("089", json!(89.0)),
            ("+12", json!(12)),
        ];
        for (text, want) in cases {
            assert_eq!(resolve_plain(text), want, "{text}");
        }
    }

    proptest! {
        #[test]
        fn escaped_expressions_are_never_substituted(name in "[a-z_][a-z0-9_]{0,8}", value in "[a-z0-9]{0,8}") {
            let input = format!("$${{{name}}}");
            let map = BTreeMap::from([(name.as_str(), value.as_str())]);
            let out = expand(&input, |n| map.get(n).copied(), true).unwrap();
            prop_assert_eq!(out, format!("${{{name}}}"));
        }

        #[test]
        fn text_without_dollars_is_unchanged(text in "[^$]{0,40}") {
            prop_assert_eq!(expand(&text, |_| None, true).unwrap(), text);
        }

        #[test]
        fn expand_never_panics(text in ".{0,40}") {
            let _ = expand(&text, |n| if n.len() % 2 == 0 { Some("é/x") } else { None }, false);
        }
    }
}
