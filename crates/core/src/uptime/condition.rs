//! Gatus-style conditions: `<left> <operator> <right>`, the operator surrounded by spaces.
//!
//! Left and right are placeholders (`[STATUS]`, `[RESPONSE_TIME]`, `[BODY]` with an optional
//! path such as `[BODY].items[0].name`, `[CONNECTED]`, `[CERTIFICATE_EXPIRATION]`,
//! `[DNS_RCODE]`, `[IP]`), functions (`len(...)`, `has(...)`, `any(a, b)`, `pat(*text*)`) or
//! literals. As in Gatus, `==`/`!=` compare text (`any` matches one of its values, `pat` a
//! wildcard pattern) and `<`, `<=`, `>`, `>=` compare integers, durations (`72h`, `300ms`) being
//! milliseconds as the time placeholders are.
//!
//! Unlike Gatus, a condition that cannot mean anything is refused when it is parsed, with the
//! position of the problem (an unknown placeholder, an operator without spaces, an ordering
//! against text), instead of failing (or passing) at every check.

use std::fmt;
use std::time::Duration;

/// A placeholder, resolved from a check's [`Observation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    Status,
    Ip,
    ResponseTime,
    Body,
    Connected,
    CertificateExpiration,
    DnsRcode,
}

impl Placeholder {
    const ALL: [(&'static str, Placeholder); 7] = [
        ("[STATUS]", Placeholder::Status),
        ("[IP]", Placeholder::Ip),
        ("[RESPONSE_TIME]", Placeholder::ResponseTime),
        ("[BODY]", Placeholder::Body),
        ("[CONNECTED]", Placeholder::Connected),
        (
            "[CERTIFICATE_EXPIRATION]",
            Placeholder::CertificateExpiration,
        ),
        ("[DNS_RCODE]", Placeholder::DnsRcode),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, p)| *p == self)
            .map_or("", |(n, _)| n)
    }
}

/// A segment of a `[BODY]` path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// One side of a condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    Placeholder(Placeholder, Vec<Segment>),
    Len(Placeholder, Vec<Segment>),
    Has(Placeholder, Vec<Segment>),
    Any(Vec<String>),
    Pat(String),
    Literal(String),
}

impl Operand {
    fn placeholder(&self) -> Option<Placeholder> {
        match self {
            Operand::Placeholder(p, _) | Operand::Len(p, _) | Operand::Has(p, _) => Some(*p),
            _ => None,
        }
    }
}

/// The comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    Eq,
    Ne,
    Le,
    Ge,
    Gt,
    Lt,
}

impl Operator {
    // Gatus's order: the first one present in the text wins.
    const ALL: [(&'static str, Operator); 6] = [
        (" == ", Operator::Eq),
        (" != ", Operator::Ne),
        (" <= ", Operator::Le),
        (" >= ", Operator::Ge),
        (" > ", Operator::Gt),
        (" < ", Operator::Lt),
    ];

    fn symbol(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, o)| *o == self)
            .map_or("", |(s, _)| s.trim())
    }
}

/// A parsed condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub text: String,
    pub left: Operand,
    pub operator: Operator,
    pub right: Operand,
}

/// Why a condition was refused: the condition, the character position (0-based) and what is
/// wrong there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid condition '{condition}' at position {position}: {reason}")]
pub struct ConditionError {
    pub condition: String,
    pub position: usize,
    pub reason: String,
}

/// Parses one condition.
pub fn parse(text: &str) -> Result<Condition, ConditionError> {
    let err = |position: usize, reason: String| ConditionError {
        condition: text.to_string(),
        position,
        reason,
    };
    let found = Operator::ALL
        .iter()
        .find_map(|(symbol, op)| text.find(symbol).map(|at| (at, symbol.len(), *op)));
    let Some((at, len, operator)) = found else {
        // Point at an operator written without its spaces, if there is one.
        let bare = ["==", "!=", "<=", ">=", ">", "<"]
            .iter()
            .find_map(|s| text.find(s).map(|at| (at, *s)));
        return Err(match bare {
            Some((at, symbol)) => err(
                char_pos(text, at),
                format!("the operator '{symbol}' needs a space on both sides"),
            ),
            None => err(
                0,
                "no operator (==, !=, <, <=, >, >= with a space on both sides)".into(),
            ),
        });
    };
    let (left_text, right_text) = (&text[..at], &text[at + len..]);
    if left_text.trim().is_empty() {
        return Err(err(0, "nothing left of the operator".into()));
    }
    if right_text.trim().is_empty() {
        return Err(err(
            char_pos(text, at + len),
            "nothing right of the operator".into(),
        ));
    }
    let left = operand(left_text, 0).map_err(|(p, r)| err(char_pos(text, p), r))?;
    let right = operand(right_text, at + len).map_err(|(p, r)| err(char_pos(text, p), r))?;
    let condition = Condition {
        text: text.to_string(),
        left,
        operator,
        right,
    };
    check_types(&condition, at + len).map_err(|(p, r)| err(char_pos(text, p), r))?;
    Ok(condition)
}

/// Parses every condition; the first error wins.
pub fn parse_all(texts: &[String]) -> Result<Vec<Condition>, ConditionError> {
    texts.iter().map(|t| parse(t)).collect()
}

fn char_pos(text: &str, byte: usize) -> usize {
    text.get(..byte).map_or(byte, |s| s.chars().count())
}

type Failure = (usize, String);

/// One side; `offset` is its byte position in the condition (for errors).
fn operand(raw: &str, offset: usize) -> Result<Operand, Failure> {
    let lead = raw.len() - raw.trim_start().len();
    let text = raw.trim();
    let offset = offset + lead;
    for (name, make) in [
        (
            "len(",
            Operand::Len as fn(Placeholder, Vec<Segment>) -> Operand,
        ),
        ("has(", Operand::Has),
    ] {
        if let Some(inner) = text.strip_prefix(name) {
            let inner = inner.strip_suffix(')').ok_or_else(|| {
                (
                    offset + text.len(),
                    format!("'{name}' is not closed with ')'"),
                )
            })?;
            let at = offset + name.len();
            let (p, path) = placeholder(inner.trim(), at)?
                .ok_or_else(|| (at, format!("{name}) takes a placeholder such as [BODY]")))?;
            return Ok(make(p, path));
        }
    }
    if let Some(inner) = text.strip_prefix("any(") {
        let inner = inner
            .strip_suffix(')')
            .ok_or_else(|| (offset + text.len(), "'any(' is not closed with ')'".into()))?;
        let values: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
        if values.iter().any(String::is_empty) {
            return Err((offset + 4, "any() takes values separated by commas".into()));
        }
        return Ok(Operand::Any(values));
    }
    if let Some(inner) = text.strip_prefix("pat(") {
        let inner = inner
            .strip_suffix(')')
            .ok_or_else(|| (offset + text.len(), "'pat(' is not closed with ')'".into()))?;
        return Ok(Operand::Pat(inner.to_string()));
    }
    match placeholder(text, offset)? {
        Some((p, path)) => Ok(Operand::Placeholder(p, path)),
        None => Ok(Operand::Literal(text.to_string())),
    }
}

/// `[NAME]` with an optional path, or `None` for text that does not start with `[`.
fn placeholder(text: &str, offset: usize) -> Result<Option<(Placeholder, Vec<Segment>)>, Failure> {
    if !text.starts_with('[') {
        return Ok(None);
    }
    let close = text
        .find(']')
        .ok_or_else(|| (offset, "'[' is not closed with ']'".to_string()))?;
    let name = &text[..=close];
    let Some(p) = Placeholder::ALL
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, p)| *p)
    else {
        let known: Vec<&str> = Placeholder::ALL.iter().map(|(n, _)| *n).collect();
        return Err((
            offset,
            format!("unknown placeholder {name} (known: {})", known.join(", ")),
        ));
    };
    let rest = &text[close + 1..];
    if rest.is_empty() {
        return Ok(Some((p, Vec::new())));
    }
    if p != Placeholder::Body {
        return Err((
            offset + close + 1,
            format!("only [BODY] takes a path, not {name}"),
        ));
    }
    let path = body_path(rest, offset + close + 1)?;
    Ok(Some((p, path)))
}

/// `.a.b[0].c` or `[0].a`.
fn body_path(text: &str, offset: usize) -> Result<Vec<Segment>, Failure> {
    let mut segments = Vec::new();
    let mut i = 0;
    let bytes = text.as_bytes();
    while i < bytes.len() {
        match bytes[i] {
            b'.' => {
                let start = i + 1;
                let end = text[start..]
                    .find(['.', '['])
                    .map_or(text.len(), |e| start + e);
                if end == start {
                    return Err((offset + i, "empty key in the [BODY] path".into()));
                }
                segments.push(Segment::Key(text[start..end].to_string()));
                i = end;
            }
            b'[' => {
                let end = text[i..]
                    .find(']')
                    .map(|e| i + e)
                    .ok_or_else(|| (offset + i, "'[' is not closed with ']'".to_string()))?;
                let index = text[i + 1..end].trim().parse::<usize>().map_err(|_| {
                    (
                        offset + i + 1,
                        "an index in the [BODY] path must be a number".to_string(),
                    )
                })?;
                segments.push(Segment::Index(index));
                i = end + 1;
            }
            _ => {
                return Err((
                    offset + i,
                    "a [BODY] path continues with '.key' or '[index]'".into(),
                ));
            }
        }
    }
    Ok(segments)
}

/// Refuses comparisons that can never be meaningful.
fn check_types(c: &Condition, right_offset: usize) -> Result<(), Failure> {
    let ordering = !matches!(c.operator, Operator::Eq | Operator::Ne);
    if ordering {
        for (side, at) in [(&c.left, 0), (&c.right, right_offset)] {
            match side {
                Operand::Any(_) | Operand::Pat(_) | Operand::Has(_, _) => {
                    return Err((
                        at,
                        format!(
                            "'{}' compares numbers; any(), pat() and has() only go with == or !=",
                            c.operator.symbol()
                        ),
                    ));
                }
                Operand::Placeholder(
                    Placeholder::Connected | Placeholder::DnsRcode | Placeholder::Ip,
                    _,
                ) => {
                    return Err((
                        at,
                        format!(
                            "'{}' compares numbers; {} is not one",
                            c.operator.symbol(),
                            side.placeholder().map_or("", Placeholder::name)
                        ),
                    ));
                }
                Operand::Literal(text) if number(text).is_none() => {
                    return Err((
                        at,
                        format!(
                            "'{}' compares numbers or durations (e.g. 300, 72h), not '{text}'",
                            c.operator.symbol()
                        ),
                    ));
                }
                _ => {}
            }
        }
    }
    if matches!(
        (&c.left, &c.right),
        (Operand::Literal(_), Operand::Literal(_))
    ) {
        return Err((
            0,
            "neither side is a placeholder such as [STATUS]: the result would never change".into(),
        ));
    }
    Ok(())
}

/// An integer, or a duration in milliseconds.
fn number(text: &str) -> Option<i64> {
    if let Ok(n) = text.parse::<i64>() {
        return Some(n);
    }
    duration_ms(text)
}

/// `72h`, `1h30m`, `300ms`, `1.5s`, `2d` in milliseconds.
fn duration_ms(text: &str) -> Option<i64> {
    let mut total: f64 = 0.0;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_end] {
            "ms" => 1.0,
            "s" => 1_000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            "d" => 86_400_000.0,
            _ => return None,
        };
        total += value * factor;
        rest = &rest[unit_end..];
    }
    (total.is_finite() && total.abs() < 9.0e15).then_some(total as i64)
}

/// What one check saw; placeholders resolve from it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    pub status: Option<u16>,
    pub ip: Option<String>,
    pub response_time: Duration,
    /// The body read (bounded by the checker).
    pub body: Option<String>,
    pub connected: bool,
    /// Time left before the certificate expires, in milliseconds (negative once expired).
    pub certificate_expiration_ms: Option<i64>,
    /// `NOERROR`, `NXDOMAIN`, `SERVFAIL`, ...
    pub dns_rcode: Option<String>,
}

/// A resolved value.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Text(String),
    Number(i64),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Text(t) => write!(f, "{}", shorten(t)),
            Value::Number(n) => write!(f, "{n}"),
        }
    }
}

fn shorten(text: &str) -> String {
    if text.chars().count() <= 64 {
        text.to_string()
    } else {
        format!("{}...", text.chars().take(61).collect::<String>())
    }
}

/// One condition's verdict, with what was compared (for the status message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub success: bool,
    pub detail: String,
}

impl Condition {
    /// Placeholders the condition reads.
    pub fn placeholders(&self) -> impl Iterator<Item = Placeholder> + '_ {
        [&self.left, &self.right]
            .into_iter()
            .filter_map(Operand::placeholder)
    }

    /// Evaluates against one check's observation. A value that cannot be resolved (a missing
    /// JSON key, no body) fails the condition; it never passes one.
    pub fn evaluate(&self, seen: &Observation) -> Verdict {
        let json = std::cell::OnceCell::new();
        let left = resolve(&self.left, seen, &json);
        let right = resolve(&self.right, seen, &json);
        let (left, right) = match (left, right) {
            (Ok(l), Ok(r)) => (l, r),
            (Err(e), _) | (_, Err(e)) => {
                return Verdict {
                    success: false,
                    detail: format!("{} ({e})", self.text),
                };
            }
        };
        let success = match self.operator {
            Operator::Eq => equal(&left, &right, &self.left, &self.right),
            Operator::Ne => !equal(&left, &right, &self.left, &self.right),
            op => match (as_number(&left), as_number(&right)) {
                (Some(l), Some(r)) => match op {
                    Operator::Lt => l < r,
                    Operator::Le => l <= r,
                    Operator::Gt => l > r,
                    Operator::Ge => l >= r,
                    Operator::Eq | Operator::Ne => false,
                },
                _ => false,
            },
        };
        let shown = |o: &Operand, v: &Value| match o {
            Operand::Placeholder(..) | Operand::Len(..) | Operand::Has(..) => {
                format!("{} ({v})", describe(o))
            }
            _ => describe(o),
        };
        Verdict {
            success,
            detail: format!(
                "{} {} {}",
                shown(&self.left, &left),
                self.operator.symbol(),
                shown(&self.right, &right)
            ),
        }
    }
}

fn describe(o: &Operand) -> String {
    let path = |p: &Placeholder, s: &[Segment]| {
        let mut t = p.name().to_string();
        for seg in s {
            match seg {
                Segment::Key(k) => {
                    t.push('.');
                    t.push_str(k);
                }
                Segment::Index(i) => t.push_str(&format!("[{i}]")),
            }
        }
        t
    };
    match o {
        Operand::Placeholder(p, s) => path(p, s),
        Operand::Len(p, s) => format!("len({})", path(p, s)),
        Operand::Has(p, s) => format!("has({})", path(p, s)),
        Operand::Any(v) => format!("any({})", v.join(", ")),
        Operand::Pat(p) => format!("pat({p})"),
        Operand::Literal(l) => l.clone(),
    }
}

fn as_number(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => Some(*n),
        Value::Text(t) => number(t.trim()),
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::Text(t) => t.clone(),
        Value::Number(n) => n.to_string(),
    }
}

fn equal(left: &Value, right: &Value, lo: &Operand, ro: &Operand) -> bool {
    let other = |o: &Operand, v: &Value| -> Option<bool> {
        match o {
            Operand::Any(values) => Some(values.iter().any(|x| *x == text_of(v))),
            Operand::Pat(p) => Some(wildcard(p, &text_of(v))),
            _ => None,
        }
    };
    if let Some(b) = other(ro, left) {
        return b;
    }
    if let Some(b) = other(lo, right) {
        return b;
    }
    // A time placeholder equals a duration literal by value; everything else compares as text.
    if let (Value::Number(l), Value::Text(r)) = (left, right)
        && let Some(r) = number(r)
    {
        return *l == r;
    }
    if let (Value::Text(l), Value::Number(r)) = (left, right)
        && let Some(l) = number(l)
    {
        return l == *r;
    }
    text_of(left) == text_of(right)
}

/// `*` matches any run of characters, `?` exactly one.
pub fn wildcard(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

type Json = std::cell::OnceCell<Option<serde_json::Value>>;

fn resolve(o: &Operand, seen: &Observation, json: &Json) -> Result<Value, String> {
    match o {
        Operand::Literal(l) => Ok(Value::Text(l.clone())),
        Operand::Any(_) | Operand::Pat(_) => Ok(Value::Text(String::new())),
        Operand::Placeholder(p, path) => {
            if path.is_empty() {
                return simple(*p, seen);
            }
            let v = walk(seen, path, json)?;
            Ok(Value::Text(match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            }))
        }
        Operand::Len(p, path) => {
            if path.is_empty() {
                let v = simple(*p, seen)?;
                return Ok(Value::Number(text_of(&v).chars().count() as i64));
            }
            let n = match walk(seen, path, json)? {
                serde_json::Value::Array(a) => a.len(),
                serde_json::Value::Object(o) => o.len(),
                serde_json::Value::String(s) => s.chars().count(),
                other => other.to_string().chars().count(),
            };
            Ok(Value::Number(n as i64))
        }
        Operand::Has(p, path) => {
            let present = if path.is_empty() {
                simple(*p, seen).is_ok_and(|v| !text_of(&v).is_empty())
            } else {
                walk(seen, path, json).is_ok()
            };
            Ok(Value::Text(present.to_string()))
        }
    }
}

fn simple(p: Placeholder, seen: &Observation) -> Result<Value, String> {
    let missing = || format!("{} is not known for this check", p.name());
    Ok(match p {
        Placeholder::Status => Value::Number(seen.status.ok_or_else(missing)?.into()),
        Placeholder::Ip => Value::Text(seen.ip.clone().ok_or_else(missing)?),
        Placeholder::ResponseTime => {
            Value::Number(i64::try_from(seen.response_time.as_millis()).unwrap_or(i64::MAX))
        }
        Placeholder::Body => Value::Text(seen.body.clone().ok_or_else(missing)?),
        Placeholder::Connected => Value::Text(seen.connected.to_string()),
        Placeholder::CertificateExpiration => {
            Value::Number(seen.certificate_expiration_ms.ok_or_else(missing)?)
        }
        Placeholder::DnsRcode => Value::Text(seen.dns_rcode.clone().ok_or_else(missing)?),
    })
}

fn walk<'a>(
    seen: &Observation,
    path: &[Segment],
    json: &'a Json,
) -> Result<&'a serde_json::Value, String> {
    let root = json
        .get_or_init(|| {
            seen.body
                .as_deref()
                .and_then(|b| serde_json::from_str(b).ok())
        })
        .as_ref()
        .ok_or("the body is not JSON")?;
    let mut at = root;
    for seg in path {
        let next = match seg {
            Segment::Key(k) => at.get(k.as_str()),
            Segment::Index(i) => at.get(*i),
        };
        at = next.ok_or_else(|| {
            format!(
                "{} not found in the body",
                describe(&Operand::Placeholder(Placeholder::Body, path.to_vec()))
            )
        })?;
    }
    Ok(at)
}

/// Evaluates every condition; the check succeeds when all hold. Returns the failures' details.
pub fn evaluate_all(conditions: &[Condition], seen: &Observation) -> Result<(), Vec<String>> {
    let failed: Vec<String> = conditions
        .iter()
        .map(|c| c.evaluate(seen))
        .filter(|v| !v.success)
        .map(|v| v.detail)
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16, body: &str, ms: u64) -> Observation {
        Observation {
            status: Some(status),
            body: Some(body.into()),
            response_time: Duration::from_millis(ms),
            connected: true,
            ..Default::default()
        }
    }

    fn holds(condition: &str, seen: &Observation) -> bool {
        parse(condition)
            .unwrap_or_else(|e| panic!("{e}"))
            .evaluate(seen)
            .success
    }

    #[test]
    fn status_and_any() {
        let ok = http(200, "", 5);
        assert!(holds("[STATUS] == 200", &ok));
        assert!(!holds("[STATUS] != 200", &ok));
        assert!(holds("[STATUS] == any(200, 301)", &ok));
        assert!(holds("[STATUS] == any(301,200)", &ok));
        assert!(!holds("[STATUS] == any(301, 302)", &ok));
        assert!(holds("[STATUS] < 300", &ok));
        assert!(holds("[STATUS] <= 200", &ok));
        assert!(!holds("[STATUS] > 200", &ok));
        assert!(holds("[STATUS] >= 200", &ok));
        assert!(!holds("[STATUS] == 200", &http(503, "", 5)));
    }

    #[test]
    fn response_time_in_milliseconds_or_durations() {
        let seen = http(200, "", 250);
        assert!(holds("[RESPONSE_TIME] < 300", &seen));
        assert!(!holds("[RESPONSE_TIME] < 200", &seen));
        assert!(holds("[RESPONSE_TIME] < 1s", &seen));
        assert!(!holds("[RESPONSE_TIME] > 250ms", &seen));
    }

    #[test]
    fn body_paths_len_has_and_patterns() {
        let body = r#"{"status":"UP","items":[{"id":1},{"id":2}],"nested":{"ok":true},"n":3}"#;
        let seen = http(200, body, 1);
        assert!(holds("[BODY].status == UP", &seen));
        assert!(!holds("[BODY].status == DOWN", &seen));
        assert!(holds("[BODY].items[1].id == 2", &seen));
        assert!(holds("[BODY].nested.ok == true", &seen));
        assert!(holds("[BODY].n > 2", &seen));
        assert!(holds("len([BODY].items) > 0", &seen));
        assert!(holds("len([BODY].items) == 2", &seen));
        assert!(holds("has([BODY].nested) == true", &seen));
        assert!(holds("has([BODY].errors) == false", &seen));
        assert!(holds("[BODY] == pat(*\"UP\"*)", &seen));
        assert!(!holds("[BODY] == pat(*DOWN*)", &seen));
        assert!(holds("[BODY] != pat(*DOWN*)", &seen));
        assert!(holds("len([BODY]) == 4", &http(200, "okay", 1)));
        // A path that is not there fails, with the reason; never a pass.
        let missing = parse("[BODY].gone == x").unwrap().evaluate(&seen);
        assert!(!missing.success);
        assert!(missing.detail.contains("not found"), "{}", missing.detail);
        let verdict = parse("[BODY].status == UP")
            .unwrap()
            .evaluate(&http(200, "<html>", 1));
        assert!(!verdict.success);
        assert!(verdict.detail.contains("not JSON"), "{}", verdict.detail);
    }

    #[test]
    fn certificate_connected_and_dns() {
        let seen = Observation {
            connected: true,
            certificate_expiration_ms: Some(100 * 3_600_000),
            dns_rcode: Some("NOERROR".into()),
            ..Default::default()
        };
        assert!(holds("[CERTIFICATE_EXPIRATION] > 72h", &seen));
        assert!(!holds("[CERTIFICATE_EXPIRATION] > 5d", &seen));
        assert!(holds("[CONNECTED] == true", &seen));
        assert!(holds("[DNS_RCODE] == NOERROR", &seen));
        assert!(!holds("[DNS_RCODE] == NXDOMAIN", &seen));
        // A placeholder this check does not produce fails.
        assert!(!holds("[STATUS] == 200", &seen));
    }

    #[test]
    fn a_failure_says_what_was_seen() {
        let v = parse("[STATUS] == 200")
            .unwrap()
            .evaluate(&http(503, "", 1));
        assert_eq!(v.detail, "[STATUS] (503) == 200");
    }

    #[test]
    fn wildcards() {
        assert!(wildcard("*ok*", "all ok here"));
        assert!(wildcard("a?c", "abc"));
        assert!(!wildcard("a?c", "ac"));
        assert!(wildcard("*", ""));
        assert!(!wildcard("ok", "okay"));
        assert!(wildcard("*a*b*c", "xxaxxbxxc"));
    }

    fn error(condition: &str) -> ConditionError {
        parse(condition).expect_err(condition)
    }

    #[test]
    fn invalid_conditions_name_the_condition_and_the_position() {
        let e = error("[STATUS]==200");
        assert_eq!(e.position, 8);
        assert!(e.reason.contains("space"), "{e}");
        assert!(e.to_string().contains("'[STATUS]==200'"), "{e}");

        let e = error("[STATUSS] == 200");
        assert_eq!(e.position, 0);
        assert!(e.reason.contains("unknown placeholder [STATUSS]"), "{e}");

        let e = error("[STATUS] == [NOPE]");
        assert_eq!(e.position, 12);

        let e = error("len([BODY].items > 0");
        assert!(e.reason.contains("not closed"), "{e}");

        let e = error("[RESPONSE_TIME] < fast");
        assert_eq!(e.position, 18);
        assert!(e.reason.contains("'fast'"), "{e}");

        let e = error("[BODY].items[x] == 1");
        assert_eq!(e.position, 13);

        let e = error("[STATUS].code == 1");
        assert!(e.reason.contains("only [BODY]"), "{e}");

        let e = error("[STATUS] == ");
        assert!(
            e.reason.contains("no operator") || e.reason.contains("nothing"),
            "{e}"
        );
        assert!(error("200 == 200").reason.contains("placeholder"));
        assert!(error("[STATUS] < any(1, 2)").reason.contains("any()"));
        assert!(error("").reason.contains("no operator"));
        assert!(error("[STATUS").reason.contains("no operator"));
        assert!(error("[STATUS == 200").reason.contains("not closed"));
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(text in "\\PC{0,40}") {
            let _ = parse(&text);
        }

        #[test]
        fn condition_like_text_never_panics(
            left in "(\\[[A-Z_]{0,12}\\]?|len\\(|has\\(|any\\(|pat\\()[\\[\\]a-z0-9._()*,]{0,12}",
            op in "( == | != | < | <= | > | >= |==| =)",
            right in "[\\[\\]a-zA-Z0-9._()*, ]{0,16}",
            body in "\\PC{0,30}",
        ) {
            if let Ok(c) = parse(&format!("{left}{op}{right}")) {
                let _ = c.evaluate(&Observation { body: Some(body), ..Default::default() });
            }
        }
    }
}
