//! `${NAME}` and `${NAME:-default}` in pier.toml: values from the environment, so one file can
//! serve on different addresses (tests, several instances on one machine, containers) without
//! being edited.
//!
//! The text is expanded before it is parsed, the way a shell or Docker Compose expands
//! variables: `${NAME}` is the variable's value and an error if it is unset; `${NAME:-default}`
//! is the default when the variable is unset or empty. The value is inserted as it is (inside a
//! TOML string it must not contain `"`). `$${` stands for a literal `${`; any other `$` is left
//! alone. Comments are not expanded, so a commented-out line may name a variable that is unset.

use anyhow::{Result, bail};

/// Where the scanner is in the TOML text.
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Normal,
    Comment,
    Basic,
    Literal,
    MultiBasic,
    MultiLiteral,
}

/// Expands `${NAME}` and `${NAME:-default}` in `text` with `lookup` (the process environment in
/// [`expand`]), outside comments. Errors name the line.
pub fn expand_with(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut state = State::Normal;
    let mut line = 1;
    // Every token looked at is ASCII, so `i` always sits on a character boundary.
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        let Some(c) = rest.chars().next() else { break };
        let copy = |out: &mut String, n: usize| out.push_str(&rest[..n]);
        match (state, c) {
            (_, '\n') => {
                line += 1;
                if matches!(state, State::Comment | State::Basic | State::Literal) {
                    state = State::Normal;
                }
                out.push('\n');
                i += 1;
            }
            (State::Comment, _) => {
                copy(&mut out, c.len_utf8());
                i += c.len_utf8();
            }
            (State::Normal, '#') => {
                state = State::Comment;
                out.push('#');
                i += 1;
            }
            (State::Normal, '"') | (State::Normal, '\'') => {
                let triple = if c == '"' { "\"\"\"" } else { "'''" };
                let (next, n) = match (rest.starts_with(triple), c) {
                    (true, '"') => (State::MultiBasic, 3),
                    (true, _) => (State::MultiLiteral, 3),
                    (false, '"') => (State::Basic, 1),
                    (false, _) => (State::Literal, 1),
                };
                state = next;
                copy(&mut out, n);
                i += n;
            }
            (State::Basic | State::MultiBasic, '\\') => {
                // An escape: the next character (a quote, a backslash) is not structure.
                let escaped = rest[1..].chars().next();
                line += usize::from(escaped == Some('\n'));
                let n = 1 + escaped.map_or(0, char::len_utf8);
                copy(&mut out, n);
                i += n;
            }
            (State::Basic, '"') | (State::Literal, '\'') => {
                state = State::Normal;
                copy(&mut out, 1);
                i += 1;
            }
            (State::MultiBasic, '"') if rest.starts_with("\"\"\"") => {
                state = State::Normal;
                copy(&mut out, 3);
                i += 3;
            }
            (State::MultiLiteral, '\'') if rest.starts_with("'''") => {
                state = State::Normal;
                copy(&mut out, 3);
                i += 3;
            }
            (_, '$') if rest.starts_with("$${") => {
                out.push_str("${");
                i += 3;
            }
            (_, '$') if rest.starts_with("${") => {
                let after = &rest[2..];
                let Some(end) = after.find('}') else {
                    bail!("line {line}: `${{` without a closing `}}`");
                };
                let inner = &after[..end];
                out.push_str(&substitute(inner, line, &lookup)?);
                line += inner.matches('\n').count();
                i += 2 + end + 1;
            }
            _ => {
                copy(&mut out, c.len_utf8());
                i += c.len_utf8();
            }
        }
    }
    Ok(out)
}

/// The value of `${inner}` found on `line`.
fn substitute(inner: &str, line: usize, lookup: impl Fn(&str) -> Option<String>) -> Result<String> {
    let (name, default) = match inner.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (inner, None),
    };
    if !valid_name(name) {
        bail!(
            "line {line}: `${{{inner}}}` is not ${{NAME}} or ${{NAME:-default}} (write $${{ for a \
             literal ${{)"
        );
    }
    match (lookup(name).filter(|v| !v.is_empty()), default) {
        (Some(value), _) => Ok(value),
        (None, Some(default)) => Ok(default.to_string()),
        (None, None) => bail!(
            "line {line}: environment variable {name} is not set (write ${{{name}:-DEFAULT}} to \
             give it a default)"
        ),
    }
}

/// [`expand_with`] the process environment.
pub fn expand(text: &str) -> Result<String> {
    expand_with(text, |name| std::env::var(name).ok())
}

/// Shell variable names: a letter or `_`, then letters, digits and `_`.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("7000".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn variables_defaults_and_literals() {
        let cases = [
            (
                "address = \"127.0.0.1:${PORT}\"",
                "address = \"127.0.0.1:7000\"",
            ),
            ("a = \"${UNSET:-127.0.0.1:0}\"", "a = \"127.0.0.1:0\""),
            ("a = \"${PORT:-1}\"", "a = \"7000\""),
            ("a = \"${EMPTY:-x}\"", "a = \"x\""),
            ("a = \"${UNSET:-}\"", "a = \"\""),
            ("price = \"$5 and $${PORT}\"", "price = \"$5 and ${PORT}\""),
            ("no variables at all", "no variables at all"),
            ("trailing $", "trailing $"),
            (
                "# a comment with ${UNSET}\nb = 1",
                "# a comment with ${UNSET}\nb = 1",
            ),
            ("a = \"#${PORT}\" # ${UNSET}", "a = \"#7000\" # ${UNSET}"),
            ("a = 'x#${PORT}' # ${UNSET}", "a = 'x#7000' # ${UNSET}"),
            ("a = \"\\\"#${PORT}\"", "a = \"\\\"#7000\""),
            ("a = \"\"\"\n#${PORT}\"\"\"", "a = \"\"\"\n#7000\"\"\""),
            ("a = 'ü' # ${UNSET}", "a = 'ü' # ${UNSET}"),
        ];
        for (text, expanded) in cases {
            assert_eq!(expand_with(text, env).expect(text), expanded);
        }
    }

    #[test]
    fn errors_name_the_line_and_the_variable() {
        let err = expand_with("a = 1\nb = \"${NOPE}\"", env).unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 2: environment variable NOPE is not set (write ${NOPE:-DEFAULT} to give it a \
             default)"
        );
        let err = expand_with("x = \"${1BAD}\"", env).unwrap_err();
        assert!(
            err.to_string().starts_with("line 1: `${1BAD}` is not"),
            "{err}"
        );
        let err = expand_with("x = \"${OPEN", env).unwrap_err();
        assert!(err.to_string().contains("without a closing"), "{err}");
    }
}
