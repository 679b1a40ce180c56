//! `.dockerignore` rules and the glob patterns COPY sources and ignore
//! rules share (Go's `filepath.Match` per component, `**` across them).

use super::{clean, ContextError};

/// `.dockerignore` rules, in order; the last matching rule wins.
#[derive(Debug, Clone, Default)]
pub(super) struct Ignore {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    /// `!pattern`: includes again.
    include: bool,
    pattern: Pattern,
}

impl Ignore {
    pub(super) fn parse(text: &str) -> Result<Ignore, ContextError> {
        let mut rules = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let err = |reason: String| ContextError::Ignore {
                line: i + 1,
                reason,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (include, body) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            if body.is_empty() {
                return Err(err(format!("illegal exclusion pattern {line:?}")));
            }
            // Lexical cleaning as filepath.Clean; a pattern climbing above
            // the root can never match.
            let Some(segs) = clean(body) else {
                continue;
            };
            if segs.is_empty() {
                continue;
            }
            let pattern = Pattern::compile(&segs).map_err(|r| err(format!("{body:?}: {r}")))?;
            rules.push(Rule { include, pattern });
        }
        Ok(Ignore { rules })
    }

    /// Whether any rule includes again (`!pattern`): then an excluded
    /// directory may still hold visible paths.
    pub(super) fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|r| r.include)
    }

    /// Whether `path` (non-empty, relative to the root) is excluded: a rule
    /// matches a path or any of its parents.
    pub(super) fn excluded(&self, path: &[&str]) -> bool {
        let mut excluded = false;
        for rule in &self.rules {
            if (1..=path.len()).any(|k| rule.pattern.matches(&path[..k])) {
                excluded = !rule.include;
            }
        }
        excluded
    }

    /// Whether some `!` rule may bring back a path below directory `dir`.
    pub(super) fn may_include_below(&self, dir: &[&str]) -> bool {
        self.rules
            .iter()
            .any(|r| r.include && r.pattern.may_match_below(dir))
    }
}

/// A glob over '/'-separated paths, component by component as Go's
/// `filepath.Match`, where a `**` component spans any number of directories
/// (at least one when it ends the pattern).
#[derive(Debug, Clone)]
pub(super) struct Pattern {
    pub(super) segments: Vec<Segment>,
}

#[derive(Debug, Clone)]
pub(super) enum Segment {
    AnyDirs,
    Name(Vec<Token>),
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Token {
    Char(char),
    Any,
    Star,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Token {
    fn matches_one(&self, c: char) -> bool {
        match self {
            Token::Char(x) => *x == c,
            Token::Any => true,
            Token::Star => false,
            Token::Class { negated, ranges } => {
                ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated
            }
        }
    }
}

impl Pattern {
    pub(super) fn compile(segs: &[String]) -> Result<Pattern, String> {
        if segs.is_empty() {
            return Err("empty pattern".to_owned());
        }
        let segments = segs
            .iter()
            .map(|s| {
                if s == "**" {
                    Ok(Segment::AnyDirs)
                } else {
                    compile_name(s).map(Segment::Name)
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Pattern { segments })
    }

    /// Whether the whole of `path` matches.
    fn matches(&self, path: &[&str]) -> bool {
        self.table(path, false)
    }

    /// Whether some path strictly below directory `dir` may match
    /// (conservative: true when unsure).
    fn may_match_below(&self, dir: &[&str]) -> bool {
        self.table(dir, true)
    }

    /// m[i][j]: segments[i..] matches path[j..] (dynamic programming, so
    /// many `**` stay polynomial). With `below`, path is a prefix of the
    /// path to match: running out of path with pattern left is a match.
    fn table(&self, path: &[&str], below: bool) -> bool {
        let (p, n) = (self.segments.len(), path.len());
        let mut m = vec![vec![false; n + 1]; p + 1];
        for i in (0..=p).rev() {
            for j in (0..=n).rev() {
                m[i][j] = if i == p {
                    j == n && !below
                } else if j == n && below {
                    true
                } else {
                    match &self.segments[i] {
                        Segment::AnyDirs if i + 1 == p => j < n,
                        Segment::AnyDirs => m[i + 1][j] || (j < n && m[i][j + 1]),
                        Segment::Name(t) => j < n && match_name(t, path[j]) && m[i + 1][j + 1],
                    }
                };
            }
        }
        m[0][0]
    }
}

/// The literal text of a name pattern without wildcards.
pub(super) fn literal(tokens: &[Token]) -> Option<String> {
    tokens
        .iter()
        .map(|t| match t {
            Token::Char(c) => Some(*c),
            _ => None,
        })
        .collect()
}

fn compile_name(s: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => {
                if tokens.last() != Some(&Token::Star) {
                    tokens.push(Token::Star);
                }
            }
            '?' => tokens.push(Token::Any),
            '\\' => {
                let e = chars
                    .next()
                    .ok_or_else(|| format!("{s:?}: trailing backslash"))?;
                tokens.push(Token::Char(e));
            }
            '[' => {
                let negated = chars.next_if_eq(&'^').is_some();
                let mut ranges = Vec::new();
                loop {
                    if !ranges.is_empty() && chars.next_if_eq(&']').is_some() {
                        break;
                    }
                    let lo = class_char(&mut chars, s)?;
                    let hi = if chars.next_if_eq(&'-').is_some() {
                        class_char(&mut chars, s)?
                    } else {
                        lo
                    };
                    if hi < lo {
                        return Err(format!("{s:?}: bad range {lo}-{hi}"));
                    }
                    ranges.push((lo, hi));
                }
                tokens.push(Token::Class { negated, ranges });
            }
            c => tokens.push(Token::Char(c)),
        }
    }
    Ok(tokens)
}

/// One character of a `[...]` class, as Go's `getEsc`.
fn class_char(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    s: &str,
) -> Result<char, String> {
    match chars.next() {
        None => Err(format!("{s:?}: unterminated [")),
        Some('-') | Some(']') => Err(format!("{s:?}: bad character class")),
        Some('\\') => chars.next().ok_or_else(|| format!("{s:?}: unterminated [")),
        Some(c) => Ok(c),
    }
}

/// Matches one path component against a name pattern (`*` with one
/// backtracking point: linear in practice, quadratic at worst).
pub(super) fn match_name(tokens: &[Token], name: &str) -> bool {
    let name: Vec<char> = name.chars().collect();
    let (mut t, mut n) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match tokens.get(t) {
            Some(Token::Star) => {
                star = Some((t, n));
                t += 1;
                continue;
            }
            Some(tok) if tok.matches_one(name[n]) => {
                t += 1;
                n += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((st, sn)) => {
                t = st + 1;
                n = sn + 1;
                star = Some((st, sn + 1));
            }
            None => return false,
        }
    }
    tokens.iter().skip(t).all(|tk| *tk == Token::Star)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::super::Context;
    use super::*;

    #[test]
    fn bad_dockerignore_pattern() {
        let dir = fixture();
        write(dir.path(), ".dockerignore", "ok\n[z-a]\n");
        let err = Context::open(dir.path()).expect_err("bad");
        assert!(matches!(err, ContextError::Ignore { line: 2, .. }), "{err}");
        write(dir.path(), ".dockerignore", "!\n");
        assert!(Context::open(dir.path()).is_err());
    }

    #[test]
    fn patterns_follow_filepath_match() {
        let m = |pat: &str, path: &str| {
            let segs = clean(pat).expect("clean");
            let p = Pattern::compile(&segs).expect("compile");
            let parts: Vec<&str> = path.split('/').collect();
            p.matches(&parts)
        };
        assert!(m("*", ".hidden"));
        assert!(m("a/*/c", "a/b/c"));
        assert!(!m("a/*", "a/b/c"));
        assert!(m("**/c", "c"));
        assert!(m("**/c", "a/b/c"));
        assert!(m("a/**/c", "a/c"));
        assert!(m("a/**", "a/b/c"));
        assert!(!m("a/**", "a"));
        assert!(m("[^a]b", "cb"));
        assert!(!m("[^a]b", "ab"));
        assert!(m("\\*", "*"));
        assert!(!m("\\*", "x"));
        assert!(m("a*b*c", "aXbYbZc"));
        assert!(!m("a*b*c", "aXbYbZ"));
        for bad in ["[", "[]", "[a-", "a\\", "[z-a]"] {
            assert!(Pattern::compile(&[bad.to_owned()]).is_err(), "{bad}");
        }
        // Many `**` stay fast.
        let segs: Vec<String> = std::iter::repeat_n("**".to_owned(), 40).collect();
        let p = Pattern::compile(&segs).expect("compile");
        let long: Vec<&str> = std::iter::repeat_n("x", 200).collect();
        assert!(p.matches(&long));
    }
}
