//! A Go `text/template` interpreter for the parts commit-message templates use.
//!
//! Flux renders `ImageUpdateAutomation.spec.git.commit.messageTemplate` with Go's text/template
//! plus Sprig's hermetic functions, and users copy templates from Flux's docs, so Gantry must
//! accept the same syntax: actions with `{{-`/`-}}` trimming, comments, fields and variables,
//! pipelines, `if`/`else if`/`else`, `range` (one or two variables, over lists and maps, maps in
//! key order), `with`, `break`/`continue`, and the functions listed in [`call`]. Map keys may be
//! structs (Flux ranges over `.Changed.Objects`, keyed by object identifiers with `.Kind`,
//! `.Name`, ...), which is why no existing Rust template crate would do.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A value in the template's data.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Nil,
    Bool(bool),
    Int(i64),
    Str(String),
    List(Vec<Value>),
    /// A map in iteration order (callers insert keys sorted, as Go visits them).
    Map(Vec<(Value, Value)>),
    /// A struct: named fields, and how Go would print it (e.g. `ns/name` for a NamespacedName).
    Struct {
        fields: BTreeMap<String, Value>,
        display: String,
    },
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_string())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}

impl Value {
    /// A struct value printed as `display`.
    pub fn structure<'a>(
        display: impl Into<String>,
        fields: impl IntoIterator<Item = (&'a str, Value)>,
    ) -> Self {
        Value::Struct {
            fields: fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            display: display.into(),
        }
    }

    fn truthy(&self) -> bool {
        match self {
            Value::Nil => false,
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::Str(s) => !s.is_empty(),
            Value::List(l) => !l.is_empty(),
            Value::Map(m) => !m.is_empty(),
            Value::Struct { .. } => true,
        }
    }

    fn field(&self, name: &str) -> Result<Value, String> {
        match self {
            Value::Struct { fields, .. } => fields
                .get(name)
                .cloned()
                .ok_or_else(|| format!("can't evaluate field {name}")),
            Value::Map(entries) => Ok(entries
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == name))
                .map(|(_, v)| v.clone())
                // Go prints a missing map key as "<no value>".
                .unwrap_or(Value::Nil)),
            Value::Nil => Ok(Value::Nil),
            other => Err(format!(
                "can't evaluate field {name} in type {}",
                other.type_name()
            )),
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Value::Nil => "nil",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Str(_) => "string",
            Value::List(_) => "slice",
            Value::Map(_) => "map",
            Value::Struct { .. } => "struct",
        }
    }

    fn render(&self, out: &mut String) {
        match self {
            Value::Nil => out.push_str("<no value>"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Value::Str(s) => out.push_str(s),
            Value::List(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    v.render(out);
                }
                out.push(']');
            }
            Value::Map(entries) => {
                out.push_str("map[");
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    k.render(out);
                    out.push(':');
                    v.render(out);
                }
                out.push(']');
            }
            Value::Struct { display, .. } => out.push_str(display),
        }
    }

    fn to_text(&self) -> String {
        let mut s = String::new();
        self.render(&mut s);
        s
    }
}

/// Why a template could not be parsed or run. Messages name the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("template: line {line}: {message}")]
    Parse { line: usize, message: String },
    #[error("template: line {line}: executing: {message}")]
    Exec { line: usize, message: String },
}

/// Parses and runs `template` over `data` (the template's `.`).
pub fn render(template: &str, data: &Value) -> Result<String, TemplateError> {
    let nodes = Parser::new(template)?.parse_all()?;
    let mut out = String::new();
    let mut scope = Scope {
        vars: vec![("$".to_string(), data.clone())],
    };
    match exec(&nodes, data, &mut scope, &mut out)? {
        Flow::Normal => Ok(out),
        Flow::Break | Flow::Continue => Err(TemplateError::Exec {
            line: 1,
            message: "break or continue outside range".into(),
        }),
    }
}

// ---- lexing: split into text and actions, applying trim markers ----

#[derive(Debug)]
enum Piece {
    Text(String),
    Action { body: String, line: usize },
}

fn split(template: &str) -> Result<Vec<Piece>, TemplateError> {
    let mut pieces = Vec::new();
    let mut rest = template;
    let mut line = 1;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let mut text = &rest[..start];
        if trim_next {
            text = text.trim_start();
        }
        let after = &rest[start + 2..];
        let trim_before =
            after.starts_with("- ") || after.starts_with("-\t") || after.starts_with("-\n");
        if trim_before {
            text = text.trim_end();
        }
        line += rest[..start].matches('\n').count();
        if !text.is_empty() {
            pieces.push(Piece::Text(text.to_string()));
        }
        let body_start = if trim_before { 1 } else { 0 };
        // Comments may contain "}}"-free text only up to "*/}}".
        let Some(end) = find_action_end(&after[body_start..]) else {
            return Err(TemplateError::Parse {
                line,
                message: "unclosed action".into(),
            });
        };
        let raw = &after[body_start..body_start + end];
        let (body, trim_after) = match raw
            .strip_suffix(" -")
            .or_else(|| raw.strip_suffix("\t-"))
            .or_else(|| raw.strip_suffix("\n-"))
        {
            Some(b) => (b, true),
            None => (raw, false),
        };
        pieces.push(Piece::Action {
            body: body.to_string(),
            line,
        });
        line += raw.matches('\n').count();
        trim_next = trim_after;
        rest = &after[body_start + end + 2..];
    }
    let text = if trim_next { rest.trim_start() } else { rest };
    if !text.is_empty() {
        pieces.push(Piece::Text(text.to_string()));
    }
    Ok(pieces)
}

// The end of an action: the first "}}" outside a string literal.
fn find_action_end(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) => {
                if b == b'\\' && q == b'"' {
                    i += 1;
                } else if b == q {
                    quote = None;
                }
            }
            None => {
                if b == b'"' || b == b'`' {
                    quote = Some(b);
                } else if b == b'}' && bytes.get(i + 1) == Some(&b'}') {
                    return Some(i);
                }
            }
        }
        i += 1;
    }
    None
}

// ---- tokens inside an action ----

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Dot,
    Field(String), // .Name (one segment; chains are consecutive Field tokens)
    Var(String),   // $x or $
    Ident(String), // function or keyword
    Str(String),
    Int(i64),
    Pipe,
    Declare, // :=
    Assign,  // =
    Comma,
    LParen,
    RParen,
}

fn tokenize(body: &str, line: usize) -> Result<Vec<Tok>, TemplateError> {
    let err = |m: String| TemplateError::Parse { line, message: m };
    let chars: Vec<char> = body.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '|' => {
                toks.push(Tok::Pipe);
                i += 1
            }
            ',' => {
                toks.push(Tok::Comma);
                i += 1
            }
            '(' => {
                toks.push(Tok::LParen);
                i += 1
            }
            ')' => {
                toks.push(Tok::RParen);
                i += 1
            }
            ':' if chars.get(i + 1) == Some(&'=') => {
                toks.push(Tok::Declare);
                i += 2
            }
            '=' => {
                toks.push(Tok::Assign);
                i += 1
            }
            '.' => {
                let start = i + 1;
                let mut j = start;
                while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                if j == start {
                    toks.push(Tok::Dot);
                } else {
                    toks.push(Tok::Field(chars[start..j].iter().collect()));
                }
                i = j;
            }
            '$' => {
                let mut j = i + 1;
                while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                toks.push(Tok::Var(chars[i..j].iter().collect()));
                i = j;
            }
            '"' => {
                let mut s = String::new();
                let mut j = i + 1;
                loop {
                    match chars.get(j) {
                        None => return Err(err("unterminated string".into())),
                        Some('"') => break,
                        Some('\\') => {
                            j += 1;
                            match chars.get(j) {
                                Some('n') => s.push('\n'),
                                Some('t') => s.push('\t'),
                                Some('\\') => s.push('\\'),
                                Some('"') => s.push('"'),
                                Some(other) => {
                                    return Err(err(format!("unknown escape \\{other}")));
                                }
                                None => return Err(err("unterminated string".into())),
                            }
                        }
                        Some(other) => s.push(*other),
                    }
                    j += 1;
                }
                toks.push(Tok::Str(s));
                i = j + 1;
            }
            '`' => {
                let Some(len) = chars[i + 1..].iter().position(|c| *c == '`') else {
                    return Err(err("unterminated raw string".into()));
                };
                toks.push(Tok::Str(chars[i + 1..i + 1 + len].iter().collect()));
                i += len + 2;
            }
            c if c.is_ascii_digit()
                || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                let mut j = i + 1;
                while j < chars.len() && chars[j].is_ascii_digit() {
                    j += 1;
                }
                let text: String = chars[i..j].iter().collect();
                toks.push(Tok::Int(
                    text.parse()
                        .map_err(|_| err(format!("bad number {text}")))?,
                ));
                i = j;
            }
            c if c.is_alphabetic() || c == '_' => {
                let mut j = i;
                while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                toks.push(Tok::Ident(chars[i..j].iter().collect()));
                i = j;
            }
            other => return Err(err(format!("unexpected {other:?} in action"))),
        }
    }
    Ok(toks)
}

// ---- syntax tree ----

#[derive(Debug, Clone)]
enum Operand {
    Dot(Vec<String>),         // . or .A.B
    Var(String, Vec<String>), // $x.A.B
    Lit(Value),
    Sub(Box<Pipeline>, Vec<String>), // (pipeline).A
}

#[derive(Debug, Clone)]
enum Command {
    Call(String, Vec<Operand>),
    Operand(Operand),
}

#[derive(Debug, Clone)]
struct Pipeline {
    decl: Vec<String>,
    assign: bool,
    cmds: Vec<Command>,
}

#[derive(Debug)]
enum Node {
    Text(String),
    Print(Pipeline, usize),
    If(Vec<(Pipeline, Vec<Node>)>, Vec<Node>, usize),
    Range(Pipeline, Vec<Node>, Vec<Node>, usize),
    With(Pipeline, Vec<Node>, Vec<Node>, usize),
    Break,
    Continue,
}

struct Parser {
    pieces: std::vec::IntoIter<Piece>,
}

enum Closer {
    Eof,
    End,
    Else(Option<Vec<Tok>>, usize),
}

impl Parser {
    fn new(template: &str) -> Result<Self, TemplateError> {
        Ok(Self {
            pieces: split(template)?.into_iter(),
        })
    }

    fn parse_all(mut self) -> Result<Vec<Node>, TemplateError> {
        let (nodes, end) = self.parse_list()?;
        match end {
            Closer::Eof => Ok(nodes),
            Closer::End => Err(TemplateError::Parse {
                line: 0,
                message: "unexpected {{end}}".into(),
            }),
            Closer::Else(_, line) => Err(TemplateError::Parse {
                line,
                message: "unexpected {{else}}".into(),
            }),
        }
    }

    fn parse_list(&mut self) -> Result<(Vec<Node>, Closer), TemplateError> {
        let mut nodes = Vec::new();
        while let Some(piece) = self.pieces.next() {
            let (body, line) = match piece {
                Piece::Text(t) => {
                    nodes.push(Node::Text(t));
                    continue;
                }
                Piece::Action { body, line } => (body, line),
            };
            let trimmed = body.trim();
            if trimmed.starts_with("/*") {
                if !trimmed.ends_with("*/") {
                    return Err(TemplateError::Parse {
                        line,
                        message: "unclosed comment".into(),
                    });
                }
                continue;
            }
            let toks = tokenize(trimmed, line)?;
            let keyword = match toks.first() {
                Some(Tok::Ident(k)) => k.as_str(),
                _ => "",
            };
            match keyword {
                "end" => return Ok((nodes, Closer::End)),
                "else" => {
                    let rest = if toks.len() > 1 {
                        Some(toks[1..].to_vec())
                    } else {
                        None
                    };
                    return Ok((nodes, Closer::Else(rest, line)));
                }
                "if" => nodes.push(self.parse_if(toks[1..].to_vec(), line)?),
                "range" | "with" => {
                    let pipe = parse_pipeline(&toks[1..], line)?;
                    let (body, end) = self.parse_list()?;
                    let otherwise = match end {
                        Closer::End => Vec::new(),
                        Closer::Else(None, _) => self.expect_end(line)?,
                        Closer::Else(Some(_), l) => {
                            return Err(TemplateError::Parse {
                                line: l,
                                message: format!("else if inside {keyword}"),
                            });
                        }
                        Closer::Eof => {
                            return Err(TemplateError::Parse {
                                line,
                                message: format!("unclosed {{{{{keyword}}}}}"),
                            });
                        }
                    };
                    nodes.push(if keyword == "range" {
                        Node::Range(pipe, body, otherwise, line)
                    } else {
                        Node::With(pipe, body, otherwise, line)
                    });
                }
                "break" => nodes.push(Node::Break),
                "continue" => nodes.push(Node::Continue),
                "define" | "template" | "block" => {
                    return Err(TemplateError::Parse {
                        line,
                        message: format!(
                            "{{{{{keyword}}}}} is not supported in commit message templates"
                        ),
                    });
                }
                _ => nodes.push(Node::Print(parse_pipeline(&toks, line)?, line)),
            }
        }
        Ok((nodes, Closer::Eof))
    }

    fn expect_end(&mut self, line: usize) -> Result<Vec<Node>, TemplateError> {
        match self.parse_list()? {
            (nodes, Closer::End) => Ok(nodes),
            _ => Err(TemplateError::Parse {
                line,
                message: "expected {{end}}".into(),
            }),
        }
    }

    fn parse_if(&mut self, cond: Vec<Tok>, line: usize) -> Result<Node, TemplateError> {
        let mut branches = vec![];
        let mut cond = cond;
        loop {
            let pipe = parse_pipeline(&cond, line)?;
            let (body, end) = self.parse_list()?;
            branches.push((pipe, body));
            match end {
                Closer::End => return Ok(Node::If(branches, Vec::new(), line)),
                Closer::Else(None, _) => {
                    let otherwise = self.expect_end(line)?;
                    return Ok(Node::If(branches, otherwise, line));
                }
                Closer::Else(Some(rest), l) => match rest.first() {
                    Some(Tok::Ident(k)) if k == "if" => cond = rest[1..].to_vec(),
                    _ => {
                        return Err(TemplateError::Parse {
                            line: l,
                            message: "expected if after else".into(),
                        });
                    }
                },
                Closer::Eof => {
                    return Err(TemplateError::Parse {
                        line,
                        message: "unclosed {{if}}".into(),
                    });
                }
            }
        }
    }
}

fn parse_pipeline(toks: &[Tok], line: usize) -> Result<Pipeline, TemplateError> {
    let err = |m: &str| TemplateError::Parse {
        line,
        message: m.to_string(),
    };
    let mut decl = Vec::new();
    let mut assign = false;
    let mut rest = toks;
    // `$x := ...`, `$k, $v := ...` or `$x = ...`
    if let Some(pos) = toks
        .iter()
        .position(|t| *t == Tok::Declare || *t == Tok::Assign)
    {
        let vars: Vec<&Tok> = toks[..pos].iter().filter(|t| **t != Tok::Comma).collect();
        if !vars.is_empty() && vars.iter().all(|t| matches!(t, Tok::Var(_))) && vars.len() <= 2 {
            decl = vars
                .iter()
                .map(|t| match t {
                    Tok::Var(v) => v.clone(),
                    _ => unreachable!(),
                })
                .collect();
            assign = toks[pos] == Tok::Assign;
            rest = &toks[pos + 1..];
        }
    }
    let mut cmds = Vec::new();
    for part in split_top(rest, &Tok::Pipe) {
        if part.is_empty() {
            return Err(err("missing command in pipeline"));
        }
        let mut operands = Vec::new();
        let mut i = 0;
        while i < part.len() {
            let (op, next) = parse_operand(part, i, line)?;
            operands.push(op);
            i = next;
        }
        let cmd = match (&part[0], operands.len()) {
            (Tok::Ident(name), _) if !matches!(name.as_str(), "true" | "false" | "nil") => {
                Command::Call(name.clone(), operands.split_off(1))
            }
            (_, 1) => Command::Operand(operands.pop().expect("one operand")),
            _ => return Err(err("can't give arguments to a non-function")),
        };
        cmds.push(cmd);
    }
    if cmds.is_empty() {
        return Err(err("missing value for command"));
    }
    Ok(Pipeline { decl, assign, cmds })
}

// Splits on `sep` outside parentheses.
fn split_top<'a>(toks: &'a [Tok], sep: &Tok) -> Vec<&'a [Tok]> {
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, t) in toks.iter().enumerate() {
        match t {
            Tok::LParen => depth += 1,
            Tok::RParen => depth -= 1,
            t if t == sep && depth == 0 => {
                parts.push(&toks[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < toks.len() || !parts.is_empty() {
        parts.push(&toks[start..]);
    }
    parts
}

fn fields_after(toks: &[Tok], mut i: usize) -> (Vec<String>, usize) {
    let mut fields = Vec::new();
    while let Some(Tok::Field(f)) = toks.get(i) {
        fields.push(f.clone());
        i += 1;
    }
    (fields, i)
}

fn parse_operand(toks: &[Tok], i: usize, line: usize) -> Result<(Operand, usize), TemplateError> {
    match &toks[i] {
        Tok::Dot => Ok((Operand::Dot(Vec::new()), i + 1)),
        Tok::Field(_) => {
            let (fields, next) = fields_after(toks, i);
            Ok((Operand::Dot(fields), next))
        }
        Tok::Var(v) => {
            let (fields, next) = fields_after(toks, i + 1);
            Ok((Operand::Var(v.clone(), fields), next))
        }
        Tok::Str(s) => Ok((Operand::Lit(Value::Str(s.clone())), i + 1)),
        Tok::Int(n) => Ok((Operand::Lit(Value::Int(*n)), i + 1)),
        Tok::Ident(name) => Ok((
            match name.as_str() {
                "true" => Operand::Lit(Value::Bool(true)),
                "false" => Operand::Lit(Value::Bool(false)),
                "nil" => Operand::Lit(Value::Nil),
                // A function name; the caller turns the command into a call.
                other => Operand::Lit(Value::Str(format!("\0fn:{other}"))),
            },
            i + 1,
        )),
        Tok::LParen => {
            let mut depth = 0;
            let mut j = i;
            loop {
                match toks.get(j) {
                    Some(Tok::LParen) => depth += 1,
                    Some(Tok::RParen) => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    None => {
                        return Err(TemplateError::Parse {
                            line,
                            message: "unclosed parenthesis".into(),
                        });
                    }
                    _ => {}
                }
                j += 1;
            }
            let inner = parse_pipeline(&toks[i + 1..j], line)?;
            let (fields, next) = fields_after(toks, j + 1);
            Ok((Operand::Sub(Box::new(inner), fields), next))
        }
        other => Err(TemplateError::Parse {
            line,
            message: format!("unexpected {other:?} in operand"),
        }),
    }
}

// ---- execution ----

struct Scope {
    vars: Vec<(String, Value)>,
}

impl Scope {
    fn get(&self, name: &str) -> Option<&Value> {
        self.vars
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }
    fn set(&mut self, name: &str, value: Value) -> bool {
        match self.vars.iter_mut().rev().find(|(n, _)| n == name) {
            Some(slot) => {
                slot.1 = value;
                true
            }
            None => false,
        }
    }
}

enum Flow {
    Normal,
    Break,
    Continue,
}

fn exec(
    nodes: &[Node],
    dot: &Value,
    scope: &mut Scope,
    out: &mut String,
) -> Result<Flow, TemplateError> {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Print(pipe, line) => {
                let v = eval_pipeline(pipe, dot, scope, *line)?;
                if pipe.decl.is_empty() {
                    v.render(out);
                }
            }
            Node::If(branches, otherwise, line) => {
                let mark = scope.vars.len();
                let mut chosen = None;
                for (cond, body) in branches {
                    if eval_pipeline(cond, dot, scope, *line)?.truthy() {
                        chosen = Some(body);
                        break;
                    }
                }
                let flow = exec(chosen.unwrap_or(otherwise), dot, scope, out)?;
                scope.vars.truncate(mark);
                if !matches!(flow, Flow::Normal) {
                    return Ok(flow);
                }
            }
            Node::With(pipe, body, otherwise, line) => {
                let mark = scope.vars.len();
                let v = eval_pipeline(pipe, dot, scope, *line)?;
                let flow = if v.truthy() {
                    exec(body, &v, scope, out)?
                } else {
                    exec(otherwise, dot, scope, out)?
                };
                scope.vars.truncate(mark);
                if !matches!(flow, Flow::Normal) {
                    return Ok(flow);
                }
            }
            Node::Range(pipe, body, otherwise, line) => {
                let mark = scope.vars.len();
                let value = eval_cmds(&pipe.cmds, dot, scope, *line)?;
                let items: Vec<(Value, Value)> = match value {
                    Value::List(items) => items
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| (Value::Int(i as i64), v))
                        .collect(),
                    Value::Map(entries) => entries,
                    Value::Int(n) => (0..n.max(0))
                        .map(|i| (Value::Int(i), Value::Int(i)))
                        .collect(),
                    Value::Nil => Vec::new(),
                    other => {
                        return Err(TemplateError::Exec {
                            line: *line,
                            message: format!("range can't iterate over {}", other.to_text()),
                        });
                    }
                };
                if items.is_empty() {
                    exec(otherwise, dot, scope, out)?;
                }
                for (key, elem) in items {
                    match pipe.decl.as_slice() {
                        [v] => scope.vars.push((v.clone(), elem.clone())),
                        [k, v] => {
                            scope.vars.push((k.clone(), key));
                            scope.vars.push((v.clone(), elem.clone()));
                        }
                        _ => {}
                    }
                    let flow = exec(body, &elem, scope, out)?;
                    scope.vars.truncate(mark);
                    if matches!(flow, Flow::Break) {
                        break;
                    }
                }
            }
            Node::Break => return Ok(Flow::Break),
            Node::Continue => return Ok(Flow::Continue),
        }
    }
    Ok(Flow::Normal)
}

fn eval_pipeline(
    pipe: &Pipeline,
    dot: &Value,
    scope: &mut Scope,
    line: usize,
) -> Result<Value, TemplateError> {
    let v = eval_cmds(&pipe.cmds, dot, scope, line)?;
    if let Some(name) = pipe.decl.first() {
        if pipe.assign {
            if !scope.set(name, v.clone()) {
                return Err(TemplateError::Exec {
                    line,
                    message: format!("undefined variable {name}"),
                });
            }
        } else {
            scope.vars.push((name.clone(), v.clone()));
        }
    }
    Ok(v)
}

fn eval_cmds(
    cmds: &[Command],
    dot: &Value,
    scope: &Scope,
    line: usize,
) -> Result<Value, TemplateError> {
    let mut piped: Option<Value> = None;
    for cmd in cmds {
        let v = match cmd {
            Command::Operand(op) => {
                if piped.is_some() {
                    return Err(TemplateError::Exec {
                        line,
                        message: "can't pipe into a non-function".into(),
                    });
                }
                eval_operand(op, dot, scope, line)?
            }
            Command::Call(name, args) => {
                let mut values = args
                    .iter()
                    .map(|a| eval_operand(a, dot, scope, line))
                    .collect::<Result<Vec<_>, _>>()?;
                if let Some(p) = piped.take() {
                    values.push(p);
                }
                call(name, values).map_err(|message| TemplateError::Exec { line, message })?
            }
        };
        piped = Some(v);
    }
    Ok(piped.unwrap_or(Value::Nil))
}

fn eval_operand(
    op: &Operand,
    dot: &Value,
    scope: &Scope,
    line: usize,
) -> Result<Value, TemplateError> {
    let exec_err = |message: String| TemplateError::Exec { line, message };
    let (base, fields) = match op {
        Operand::Dot(fields) => (dot.clone(), fields),
        Operand::Var(name, fields) => (
            scope
                .get(name)
                .cloned()
                .ok_or_else(|| exec_err(format!("undefined variable {name}")))?,
            fields,
        ),
        Operand::Lit(Value::Str(s)) if s.starts_with("\0fn:") => {
            return call(&s[4..], Vec::new()).map_err(exec_err);
        }
        Operand::Lit(v) => return Ok(v.clone()),
        Operand::Sub(pipe, fields) => (eval_cmds(&pipe.cmds, dot, scope, line)?, fields),
    };
    let mut v = base;
    for f in fields {
        v = v.field(f).map_err(exec_err)?;
    }
    Ok(v)
}

/// The functions templates may call: Go's builtins and Sprig's deterministic string helpers.
fn call(name: &str, args: Vec<Value>) -> Result<Value, String> {
    let text = |i: usize| args.get(i).map(Value::to_text).unwrap_or_default();
    let want = |n: usize| {
        if args.len() == n {
            Ok(())
        } else {
            Err(format!(
                "wrong number of args for {name}: want {n} got {}",
                args.len()
            ))
        }
    };
    Ok(match name {
        "print" => Value::Str(
            args.iter()
                .map(Value::to_text)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        "println" => Value::Str(
            args.iter()
                .map(Value::to_text)
                .collect::<Vec<_>>()
                .join(" ")
                + "\n",
        ),
        "printf" => Value::Str(sprintf(&text(0), &args[1.min(args.len())..])?),
        "len" => {
            want(1)?;
            Value::Int(match &args[0] {
                Value::Str(s) => s.len(),
                Value::List(l) => l.len(),
                Value::Map(m) => m.len(),
                Value::Nil => 0,
                other => return Err(format!("len of {}", other.type_name())),
            } as i64)
        }
        "index" => {
            let mut v = args.first().cloned().unwrap_or(Value::Nil);
            for key in &args[1.min(args.len())..] {
                v = match (&v, key) {
                    (Value::List(l), Value::Int(i)) => l
                        .get(*i as usize)
                        .cloned()
                        .ok_or_else(|| format!("index out of range: {i}"))?,
                    (Value::Map(m), k) => m
                        .iter()
                        .find(|(mk, _)| mk == k)
                        .map(|(_, v)| v.clone())
                        .unwrap_or(Value::Nil),
                    _ => return Err(format!("can't index {}", v.type_name())),
                };
            }
            v
        }
        "not" => {
            want(1)?;
            Value::Bool(!args[0].truthy())
        }
        "and" => args
            .iter()
            .find(|v| !v.truthy())
            .or(args.last())
            .cloned()
            .unwrap_or(Value::Nil),
        "or" => args
            .iter()
            .find(|v| v.truthy())
            .or(args.last())
            .cloned()
            .unwrap_or(Value::Nil),
        "eq" => Value::Bool(args.len() >= 2 && args[1..].iter().any(|a| *a == args[0])),
        "ne" => {
            want(2)?;
            Value::Bool(args[0] != args[1])
        }
        "lt" | "le" | "gt" | "ge" => {
            want(2)?;
            let ord = match (&args[0], &args[1]) {
                (Value::Int(a), Value::Int(b)) => a.cmp(b),
                (Value::Str(a), Value::Str(b)) => a.cmp(b),
                _ => return Err(format!("incompatible types for comparison in {name}")),
            };
            Value::Bool(match name {
                "lt" => ord.is_lt(),
                "le" => ord.is_le(),
                "gt" => ord.is_gt(),
                _ => ord.is_ge(),
            })
        }
        // Sprig (hermetic subset). Sprig puts the piped value last.
        "upper" => Value::Str(text(0).to_uppercase()),
        "lower" => Value::Str(text(0).to_lowercase()),
        "trim" => Value::Str(text(0).trim().to_string()),
        "trimPrefix" => Value::Str(
            text(1)
                .strip_prefix(&text(0))
                .map(str::to_string)
                .unwrap_or(text(1)),
        ),
        "trimSuffix" => Value::Str(
            text(1)
                .strip_suffix(&text(0))
                .map(str::to_string)
                .unwrap_or(text(1)),
        ),
        "replace" => Value::Str(text(2).replace(&text(0), &text(1))),
        "contains" => Value::Bool(text(1).contains(&text(0))),
        "hasPrefix" => Value::Bool(text(1).starts_with(&text(0))),
        "hasSuffix" => Value::Bool(text(1).ends_with(&text(0))),
        "quote" => Value::Str(
            args.iter()
                .map(|a| format!("{:?}", a.to_text()))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        "squote" => Value::Str(
            args.iter()
                .map(|a| format!("'{}'", a.to_text()))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        "trunc" => {
            let n = match args.first() {
                Some(Value::Int(n)) => *n,
                _ => return Err("trunc wants a length".into()),
            };
            let s = text(1);
            let chars: Vec<char> = s.chars().collect();
            let n = n.unsigned_abs() as usize;
            Value::Str(chars[..n.min(chars.len())].iter().collect())
        }
        "default" => {
            let given = args.get(1).cloned().unwrap_or(Value::Nil);
            if given.truthy() {
                given
            } else {
                args.first().cloned().unwrap_or(Value::Nil)
            }
        }
        "empty" => Value::Bool(!args.first().is_some_and(Value::truthy)),
        "join" => match args.get(1) {
            Some(Value::List(items)) => Value::Str(
                items
                    .iter()
                    .map(Value::to_text)
                    .collect::<Vec<_>>()
                    .join(&text(0)),
            ),
            _ => Value::Str(text(1)),
        },
        "list" => Value::List(args),
        "uniq" => match args.first() {
            Some(Value::List(items)) => {
                let mut seen = Vec::new();
                for i in items {
                    if !seen.contains(i) {
                        seen.push(i.clone());
                    }
                }
                Value::List(seen)
            }
            _ => return Err("uniq wants a list".into()),
        },
        "sortAlpha" => match args.first() {
            Some(Value::List(items)) => {
                let mut texts: Vec<String> = items.iter().map(Value::to_text).collect();
                texts.sort();
                Value::List(texts.into_iter().map(Value::Str).collect())
            }
            _ => return Err("sortAlpha wants a list".into()),
        },
        "keys" => match args.first() {
            Some(Value::Map(m)) => Value::List(m.iter().map(|(k, _)| k.clone()).collect()),
            _ => return Err("keys wants a map".into()),
        },
        other => return Err(format!("function {other:?} not defined")),
    })
}

// Go's fmt verbs that templates use: %s %v %d %q %%.
fn sprintf(format: &str, args: &[Value]) -> Result<String, String> {
    let mut out = String::new();
    let mut args = args.iter();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some(verb @ ('s' | 'v' | 'd' | 'q')) => match args.next() {
                Some(v) if verb == 'q' => {
                    let _ = write!(out, "{:?}", v.to_text());
                }
                Some(v) => v.render(&mut out),
                None => {
                    let _ = write!(out, "%!{verb}(MISSING)");
                }
            },
            Some(other) => return Err(format!("unsupported printf verb %{other}")),
            None => out.push('%'),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(kind: &str, name: &str) -> Value {
        Value::structure(
            format!("{kind}/{name}"),
            [
                ("Kind", Value::from(kind)),
                ("Name", Value::from(name)),
                ("Namespace", Value::from("apps")),
                ("APIVersion", Value::from("apps/v1")),
            ],
        )
    }

    fn change(old: &str, new: &str) -> Value {
        Value::structure(
            format!("{{{old} {new}}}"),
            [
                ("OldValue", Value::from(old)),
                ("NewValue", Value::from(new)),
                ("Setter", Value::from("apps:app")),
            ],
        )
    }

    fn data() -> Value {
        let changes = Value::List(vec![change("app:1", "app:2")]);
        let objects = Value::Map(vec![(object("Deployment", "web"), changes.clone())]);
        Value::structure(
            "",
            [
                (
                    "AutomationObject",
                    Value::structure(
                        "flux-system/auto",
                        [("Namespace", "flux-system".into()), ("Name", "auto".into())],
                    ),
                ),
                (
                    "Changed",
                    Value::structure(
                        "",
                        [
                            (
                                "FileChanges",
                                Value::Map(vec![("apps/web.yaml".into(), objects.clone())]),
                            ),
                            ("Objects", objects),
                            ("Changes", changes),
                        ],
                    ),
                ),
                ("Values", Value::Map(vec![("env".into(), "staging".into())])),
            ],
        )
    }

    #[test]
    fn renders_the_template_from_fluxs_documentation() {
        let template = "Automated image update\n\nAutomation name: {{ .AutomationObject }}\n\nFiles:\n{{ range $filename, $_ := .Changed.FileChanges -}}\n- {{ $filename }}\n{{ end -}}\n\nObjects:\n{{ range $resource, $changes := .Changed.Objects -}}\n- {{ $resource.Kind }} {{ $resource.Name }}\n  Changes:\n{{- range $_, $change := $changes }}\n    - {{ $change.OldValue }} -> {{ $change.NewValue }}\n{{ end -}}\n{{ end -}}\n";
        let out = render(template, &data()).unwrap();
        assert_eq!(
            out,
            "Automated image update\n\nAutomation name: flux-system/auto\n\nFiles:\n- apps/web.yaml\nObjects:\n- Deployment web\n  Changes:\n    - app:1 -> app:2\n"
        );
    }

    #[test]
    fn conditionals_values_and_functions() {
        let t = r#"{{ if eq .Values.env "prod" }}P{{ else if .Values.env }}{{ .Values.env | upper }}{{ else }}none{{ end }} {{ len .Changed.Changes }} {{ printf "%s@%d" .AutomationObject.Name 3 }} {{ .Values.missing }}"#;
        assert_eq!(render(t, &data()).unwrap(), "STAGING 1 auto@3 <no value>");
    }

    #[test]
    fn with_variables_comments_and_break() {
        let t = "{{/* a comment */}}{{ $n := .AutomationObject.Name }}{{ with .Values }}{{ $n }}:{{ .env }}{{ end }} {{ range $i, $c := .Changed.Changes }}{{ $i }}{{ break }}x{{ end }}";
        assert_eq!(render(t, &data()).unwrap(), "auto:staging 0");
    }

    #[test]
    fn errors_name_the_line() {
        let err = render("ok\n{{ if .Values }}\nunclosed", &data()).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = render("a\nb\n{{ .Changed.Nope }}", &data()).unwrap_err();
        assert_eq!(
            err,
            TemplateError::Exec {
                line: 3,
                message: "can't evaluate field Nope".into()
            }
        );
        let err = render("{{ nosuchfn 1 }}", &data()).unwrap_err();
        assert!(
            err.to_string().contains("\"nosuchfn\" not defined"),
            "{err}"
        );
        assert!(render("{{ .X", &data()).is_err());
        assert!(render("{{ define \"x\" }}{{ end }}", &data()).is_err());
    }

    #[test]
    fn the_default_message_is_plain_text() {
        assert_eq!(
            render("Update from image update automation", &data()).unwrap(),
            "Update from image update automation"
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_templates_never_panic(t in "[{}a-z .$|()\"-]{0,40}") {
            let _ = render(&t, &data());
        }
    }
}
