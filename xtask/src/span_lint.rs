//! No `span.enter()` guard inside async code, checked over the workspace's sources by a test.
//!
//! A guard from `Span::enter` (or `Span::entered`) held across `.await` leaves the span entered
//! on the worker thread while the task is parked, so every other task polled there logs inside
//! it and creates its own spans under it: webhook log lines grew to hundreds of nested spans
//! (issue 14). Async code instruments its futures (`.instrument(span)`) instead.
//!
//! `clippy.toml` makes clippy refuse such a guard held across an `.await`
//! (`await-holding-invalid-types`); this test also covers the suite that CI runs, which has no
//! clippy step, and is stricter: no guard at all inside an `async` fn or block.

use std::path::Path;

/// `(line number, line)` of each `.enter()` / `.entered()` inside an `async` fn or block.
pub fn entered_in_async(source: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut depth = 0usize;
    // Brace depths at which async bodies opened; the innermost last.
    let mut async_bodies: Vec<usize> = Vec::new();
    let mut pending_async = false;
    let mut literal = Literal::Code;
    for (number, line) in source.lines().enumerate() {
        let code = code_only(line, &mut literal);
        if code.contains("async fn") || code.contains("async move") || code.contains("async {") {
            pending_async = true;
        }
        if !async_bodies.is_empty() && (code.contains(".enter()") || code.contains(".entered()")) {
            found.push((number + 1, line.trim().to_string()));
        }
        for c in code.chars() {
            match c {
                '{' => {
                    depth += 1;
                    if pending_async {
                        async_bodies.push(depth);
                        pending_async = false;
                    }
                }
                '}' => {
                    if async_bodies.last() == Some(&depth) {
                        async_bodies.pop();
                    }
                    depth = depth.saturating_sub(1);
                }
                // `async fn f();` in a trait: no body.
                ';' => pending_async = false,
                _ => {}
            }
        }
    }
    found
}

/// Where a line starts: in code, or inside a string literal opened on an earlier line.
#[derive(Clone, Copy, PartialEq)]
enum Literal {
    Code,
    Str,
    /// `r#"…"#` with this many `#`.
    Raw(usize),
}

/// The line without its comment and the contents of its string and char literals (which may
/// span lines, hence `state`), so braces and calls in them are not counted.
fn code_only(line: &str, state: &mut Literal) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match *state {
            Literal::Str => {
                match c {
                    '\\' => i += 1,
                    '"' => *state = Literal::Code,
                    _ => {}
                }
                i += 1;
            }
            Literal::Raw(hashes) => {
                let closes = c == '"'
                    && chars[i + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|&&h| h == '#')
                        .count()
                        == hashes;
                if closes {
                    *state = Literal::Code;
                    i += hashes;
                }
                i += 1;
            }
            Literal::Code => {
                match c {
                    '"' => *state = Literal::Str,
                    'r' if matches!(chars.get(i + 1), Some('"') | Some('#'))
                        && starts_word(&chars, i) =>
                    {
                        let hashes = chars[i + 1..].iter().take_while(|&&h| h == '#').count();
                        if chars.get(i + 1 + hashes) == Some(&'"') {
                            *state = Literal::Raw(hashes);
                            i += 1 + hashes;
                        } else {
                            out.push(c);
                        }
                    }
                    '/' if chars.get(i + 1) == Some(&'/') => break,
                    // A char literal ('"', '{', '\'', '\u{7b}'), not a lifetime: skipped whole.
                    '\'' if chars.get(i + 1) == Some(&'\\') => {
                        let rest = chars.get(i + 3..).unwrap_or(&[]);
                        let close = rest.iter().position(|&q| q == '\'');
                        i += 3 + close.unwrap_or(0);
                    }
                    '\'' if chars.get(i + 2) == Some(&'\'') => i += 2,
                    _ => out.push(c),
                }
                i += 1;
            }
        }
    }
    out
}

/// Whether `chars[i]` starts a token (`r` of `r"`, or of `br"`).
fn starts_word(chars: &[char], i: usize) -> bool {
    let ident = |c: &char| c.is_alphanumeric() || *c == '_';
    match i.checked_sub(1).map(|p| chars[p]) {
        None => true,
        Some('b') => !i.checked_sub(2).is_some_and(|p| ident(&chars[p])),
        Some(p) => !ident(&p),
    }
}

/// Every offending line under `root`'s `crates/` and `xtask/`, as `path:line: code`.
pub fn check_workspace(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for dir in ["crates", "xtask"] {
        visit(&root.join(dir), &mut |path| {
            let Ok(source) = std::fs::read_to_string(path) else {
                return;
            };
            for (line, code) in entered_in_async(&source) {
                found.push(format!("{}:{line}: {code}", path.display()));
            }
        });
    }
    found
}

fn visit(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "target") {
                visit(&path, f);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            f(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_span_guard_in_async_code_anywhere_in_the_workspace() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let found = check_workspace(&root);
        assert!(
            found.is_empty(),
            "span guards in async code (instrument the future instead):\n{}",
            found.join("\n")
        );
    }

    #[test]
    fn finds_guards_in_async_fns_and_blocks_only() {
        let source = r#"
fn sync_is_fine() {
    let span = tracing::info_span!("s");
    let _enter = span.enter();
}

async fn held(state: &State) -> Response {
    let text = format!("{{}} '{'");
    let span = tracing::info_span!("webhook");
    let _enter = span.enter();
    work().await
}

trait T {
    async fn declared();
}

fn spawns() {
    tokio::spawn(async move {
        let _g = tracing::info_span!("x").entered(); // held
        later().await;
    });
    let _ok = span.enter();
}
"#;
        let found: Vec<usize> = entered_in_async(source)
            .into_iter()
            .map(|(l, _)| l)
            .collect();
        assert_eq!(found, vec![10, 20]);
    }
}
