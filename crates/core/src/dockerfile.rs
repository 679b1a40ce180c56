//! The part of a Dockerfile that decides its bases, read the way BuildKit
//! reads it: parser directives (`# escape=`), comments, line continuations,
//! heredocs, global `ARG`s and their substitution, `FROM --platform=… image AS
//! name`, stage names, `scratch`, and `COPY --from=<image>`.
//!
//! [`Dockerfile::parse`] builds the model; [`Dockerfile::bases`] lists the
//! external images; [`Dockerfile::pin`] rewrites a copy with every base as
//! `name@digest`.

use std::collections::{BTreeMap, HashMap};

use crate::digest::Digest;
use crate::oci::Platform;
use crate::reference::ImageRef;

const KNOWN: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// A bad Dockerfile: the line and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct DockerfileError {
    /// 1-based line of the instruction at fault.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// One logical instruction (continuations joined).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// 1-based first line.
    pub line: usize,
    /// 1-based last line (continuations and heredoc bodies included).
    pub end_line: usize,
    /// The instruction keyword, upper-cased.
    pub keyword: String,
    /// Everything after the keyword, continuations joined.
    pub args: String,
}

impl Instruction {
    /// Whether a `RUN`, `COPY` or `ADD` carries a heredoc (`<<EOF`).
    pub fn has_heredoc(&self) -> bool {
        matches!(self.keyword.as_str(), "RUN" | "COPY" | "ADD")
            && !heredoc_markers(&self.args).is_empty()
    }
}

/// How an external image is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseKind {
    /// `FROM image`.
    From,
    /// `COPY --from=image` / `ADD --from=image`.
    CopyFrom,
}

/// One use of an external image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUse {
    /// Index of the instruction in [`Dockerfile::instructions`].
    pub instruction: usize,
    /// 1-based line.
    pub line: usize,
    /// The normalised reference after substitution.
    pub reference: ImageRef,
    /// `FROM` or `COPY --from`.
    pub kind: BaseKind,
    /// Which word of the instruction's arguments (as [`split_words`] counts
    /// them) names the image: the image of a `FROM`, the `--from=` flag of
    /// a `COPY`.
    pub word: usize,
    /// The `--platform` flag after substitution, if any.
    pub platform: Option<String>,
}

/// The platforms one build is for, as BuildKit's automatic platform
/// `ARG`s name them: `TARGET*` the platform built, `BUILD*` the platform
/// the build runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildPlatforms {
    /// The platform the image is built for (`TARGETPLATFORM`).
    pub target: Platform,
    /// The platform the build runs on (`BUILDPLATFORM`).
    pub build: Platform,
}

/// The automatic platform `ARG`s BuildKit predefines in the global scope.
pub const PLATFORM_ARGS: [&str; 8] = [
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
];

impl BuildPlatforms {
    /// A build for the host's platform, on the host.
    pub fn host() -> Self {
        Self::target(Platform::host())
    }

    /// A build for `target`, on the host.
    pub fn target(target: Platform) -> Self {
        Self {
            target,
            build: Platform::host(),
        }
    }

    /// The automatic `ARG`s and their values, in [`PLATFORM_ARGS`] order.
    pub fn args(&self) -> [(&'static str, String); 8] {
        let [tp, to, ta, tv, bp, bo, ba, bv] = PLATFORM_ARGS;
        let (t, b) = (&self.target, &self.build);
        let variant = |p: &Platform| p.variant.clone().unwrap_or_default();
        [
            (tp, t.to_string()),
            (to, t.os.clone()),
            (ta, t.architecture.clone()),
            (tv, variant(t)),
            (bp, b.to_string()),
            (bo, b.os.clone()),
            (ba, b.architecture.clone()),
            (bv, variant(b)),
        ]
    }
}

/// A parsed Dockerfile with its base uses resolved.
#[derive(Debug, Clone)]
pub struct Dockerfile {
    /// The escape character (`\` or `` ` ``).
    pub escape: char,
    /// Every instruction, in order.
    pub instructions: Vec<Instruction>,
    /// Every external image use, in order.
    pub uses: Vec<BaseUse>,
}

impl Dockerfile {
    /// Parses `text`, substituting global `ARG` defaults overridden by
    /// `build_args` (only for `ARG`s the file declares, as BuildKit does),
    /// for a build of the host's platform ([`Dockerfile::parse_for`]).
    pub fn parse(
        text: &str,
        build_args: &BTreeMap<String, String>,
    ) -> Result<Self, DockerfileError> {
        Self::parse_for(text, build_args, &BuildPlatforms::host())
    }

    /// Parses `text` for a build of `platforms.target`: BuildKit's
    /// automatic platform `ARG`s ([`PLATFORM_ARGS`]) are predefined in the
    /// global scope, so a `FROM` may use them undeclared; a build argument
    /// or a declared default does not change them.
    pub fn parse_for(
        text: &str,
        build_args: &BTreeMap<String, String>,
        platforms: &BuildPlatforms,
    ) -> Result<Self, DockerfileError> {
        let (escape, instructions) = split_instructions(text)?;
        let automatic = platforms.args();
        let mut globals: HashMap<String, String> = automatic
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        let mut stages: Vec<String> = Vec::new();
        let mut seen_from = false;
        let mut uses = Vec::new();
        for (idx, ins) in instructions.iter().enumerate() {
            let err = |reason: String| DockerfileError {
                line: ins.line,
                reason,
            };
            match ins.keyword.as_str() {
                "ARG" if !seen_from => {
                    for word in split_words(&ins.args, escape) {
                        let (name, default) = match word.split_once('=') {
                            Some((n, d)) => (
                                n.to_owned(),
                                Some(substitute(d, &globals, escape).map_err(err)?),
                            ),
                            None => (word.clone(), None),
                        };
                        if name.is_empty()
                            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                        {
                            return Err(err(format!("invalid ARG name {name:?}")));
                        }
                        if PLATFORM_ARGS.contains(&name.as_str()) {
                            continue;
                        }
                        let value = build_args
                            .get(&name)
                            .cloned()
                            .or(default)
                            .unwrap_or_default();
                        globals.insert(name, value);
                    }
                }
                "FROM" => {
                    seen_from = true;
                    let words = split_words(&ins.args, escape);
                    let mut platform = None;
                    let mut rest = words.iter().peekable();
                    let mut flags = 0;
                    while let Some(flag) = rest.next_if(|w| w.starts_with("--")) {
                        flags += 1;
                        match flag.split_once('=') {
                            Some(("--platform", p)) => {
                                platform = Some(substitute(p, &globals, escape).map_err(err)?)
                            }
                            _ => return Err(err(format!("unknown FROM flag {flag:?}"))),
                        }
                    }
                    let Some(image) = rest.next() else {
                        return Err(err("FROM needs an image".to_owned()));
                    };
                    let stage = match (rest.next(), rest.next(), rest.next()) {
                        (None, _, _) => None,
                        (Some(kw), Some(name), None) if kw.eq_ignore_ascii_case("as") => {
                            Some(name.to_ascii_lowercase())
                        }
                        _ => {
                            return Err(
                                err("FROM takes: [--platform=…] image [AS name]".to_owned()),
                            )
                        }
                    };
                    let image = substitute(image, &globals, escape).map_err(err)?;
                    if image.is_empty() {
                        return Err(err("FROM image is empty after ARG substitution".to_owned()));
                    }
                    let lower = image.to_ascii_lowercase();
                    if lower != "scratch" && !stages.contains(&lower) {
                        let reference = ImageRef::parse(&image).map_err(|e| err(e.to_string()))?;
                        uses.push(BaseUse {
                            instruction: idx,
                            line: ins.line,
                            reference,
                            kind: BaseKind::From,
                            word: flags,
                            platform,
                        });
                    }
                    if let Some(name) = stage {
                        stages.push(name);
                    }
                }
                "COPY" | "ADD" => {
                    if !seen_from {
                        return Err(err(format!("{} before the first FROM", ins.keyword)));
                    }
                    for (n, word) in split_words(&ins.args, escape).into_iter().enumerate() {
                        if !word.starts_with("--") {
                            break;
                        }
                        if let Some(from) = word.strip_prefix("--from=") {
                            let from = substitute(from, &globals, escape).map_err(err)?;
                            let lower = from.to_ascii_lowercase();
                            let is_index =
                                !from.is_empty() && from.bytes().all(|b| b.is_ascii_digit());
                            if !is_index && !stages.contains(&lower) {
                                let reference =
                                    ImageRef::parse(&from).map_err(|e| err(e.to_string()))?;
                                uses.push(BaseUse {
                                    instruction: idx,
                                    line: ins.line,
                                    reference,
                                    kind: BaseKind::CopyFrom,
                                    word: n,
                                    platform: None,
                                });
                            }
                        }
                    }
                }
                kw if !seen_from && kw != "ARG" => {
                    return Err(err(format!(
                        "{kw} before the first FROM (only ARG may come first)"
                    )));
                }
                _ => {}
            }
        }
        if !seen_from {
            return Err(DockerfileError {
                line: instructions.last().map_or(1, |i| i.end_line),
                reason: "no FROM instruction".to_owned(),
            });
        }
        Ok(Self {
            escape,
            instructions,
            uses,
        })
    }

    /// The external bases, in order of first appearance, without duplicates.
    pub fn bases(&self) -> Vec<ImageRef> {
        let mut out: Vec<ImageRef> = Vec::new();
        for u in &self.uses {
            if !out.contains(&u.reference) {
                out.push(u.reference.clone());
            }
        }
        out
    }

    /// Rewrites `text` (the text this model was parsed from) so that every
    /// base found in `digests` is used as `name@digest`. Only the word that
    /// names the image changes: flags, quotes, stage names and line numbers
    /// are kept. A rewritten instruction sits on its first line and its
    /// continuation lines become empty; heredoc bodies stay as they are.
    pub fn pin(&self, text: &str, digests: &BTreeMap<ImageRef, Digest>) -> String {
        let source: Vec<&str> = text.lines().collect();
        let mut lines: Vec<String> = source.iter().map(|l| (*l).to_owned()).collect();
        // The replacements, by instruction: (word index, new word).
        let mut edits: BTreeMap<usize, Vec<(usize, String)>> = BTreeMap::new();
        for u in &self.uses {
            let Some(digest) = digests.get(&u.reference) else {
                continue;
            };
            let pinned = u.reference.pinned(digest).to_string();
            let word = match u.kind {
                BaseKind::From => pinned,
                BaseKind::CopyFrom => format!("--from={pinned}"),
            };
            edits.entry(u.instruction).or_default().push((u.word, word));
        }
        for (idx, replacements) in edits {
            let Some(ins) = self.instructions.get(idx) else {
                continue;
            };
            // Each word as written (quotes and all), one space apart.
            let args: Vec<&str> = words(&ins.args, self.escape)
                .iter()
                .enumerate()
                .map(|(n, w)| match replacements.iter().find(|(k, _)| *k == n) {
                    Some((_, new)) => new.as_str(),
                    None => &ins.args[w.start..w.end],
                })
                .collect();
            let args = args.join(" ");
            let first = ins.line - 1;
            if first >= lines.len() {
                continue;
            }
            lines[first] = format!("{} {args}", ins.keyword);
            // The continuation lines, not a heredoc's body.
            let (_, next) = logical_line(&source, first, self.escape);
            for l in lines.iter_mut().take(next).skip(first + 1) {
                l.clear();
            }
        }
        let mut out = lines.join("\n");
        out.push('\n');
        out
    }
}

/// The logical line starting at `lines[start]`: its lines joined (without
/// the escape characters that continue them; comment and empty lines inside
/// it skipped), and the index of the line after it.
fn logical_line(lines: &[&str], start: usize, escape: char) -> (String, usize) {
    let mut logical = String::new();
    let mut i = start;
    while i < lines.len() {
        let cur = lines[i].trim_end();
        let Some(body) = cur.strip_suffix(escape) else {
            logical.push_str(lines[i]);
            i += 1;
            break;
        };
        logical.push_str(body);
        i += 1;
        // Skip comment and empty lines inside a continuation.
        while i < lines.len() && {
            let t = lines[i].trim_start();
            t.starts_with('#') || t.is_empty()
        } {
            i += 1;
        }
    }
    (logical, i)
}

/// Splits the text into instructions, handling parser directives, comments,
/// continuations and heredocs. Returns the escape character too.
fn split_instructions(text: &str) -> Result<(char, Vec<Instruction>), DockerfileError> {
    let lines: Vec<&str> = text.lines().collect();
    let mut escape = '\\';
    let mut i = 0;
    // Parser directives: only at the very top, `# key=value`.
    while i < lines.len() {
        let Some(body) = lines[i].trim().strip_prefix('#') else {
            break;
        };
        let Some((key, value)) = body.split_once('=') else {
            break;
        };
        let key = key.trim().to_ascii_lowercase();
        if key.contains(char::is_whitespace) {
            break;
        }
        if key == "escape" {
            escape = match value.trim() {
                "\\" => '\\',
                "`" => '`',
                other => {
                    return Err(DockerfileError {
                        line: i + 1,
                        reason: format!("invalid escape directive {other:?}: use \\ or `"),
                    })
                }
            };
        }
        i += 1;
    }
    let mut out = Vec::new();
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            i += 1;
            continue;
        }
        let start = i;
        let (logical, next) = logical_line(&lines, i, escape);
        i = next;
        let logical = logical.trim();
        let (kw, args) = match logical.find(char::is_whitespace) {
            Some(p) => (&logical[..p], logical[p..].trim()),
            None => (logical, ""),
        };
        let keyword = kw.to_ascii_uppercase();
        if !KNOWN.contains(&keyword.as_str()) {
            return Err(DockerfileError {
                line: start + 1,
                reason: format!("unknown instruction {kw:?}"),
            });
        }
        if args.is_empty() && keyword != "CMD" && keyword != "ENTRYPOINT" {
            return Err(DockerfileError {
                line: start + 1,
                reason: format!("{keyword} requires at least one argument"),
            });
        }
        // Heredocs (`<<EOF`, `<<-EOF`, `<<"EOF"`) of RUN, COPY and ADD: skip their bodies.
        let markers = if matches!(keyword.as_str(), "RUN" | "COPY" | "ADD") {
            heredoc_markers(args)
        } else {
            Vec::new()
        };
        for marker in markers {
            let (word, strip_tabs) = marker;
            loop {
                if i >= lines.len() {
                    return Err(DockerfileError {
                        line: start + 1,
                        reason: format!("heredoc <<{word} is not terminated"),
                    });
                }
                let l = if strip_tabs {
                    lines[i].trim_start_matches('\t')
                } else {
                    lines[i]
                };
                i += 1;
                if l == word {
                    break;
                }
            }
        }
        out.push(Instruction {
            line: start + 1,
            end_line: i,
            keyword,
            args: args.to_owned(),
        });
    }
    Ok((escape, out))
}

/// Heredoc markers: whitespace-separated words that start with `<<` (not
/// `<<<`), like `<<EOF`, `<<-EOF`, `<<"EOF"`, `<<'EOF'`.
fn heredoc_markers(args: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for word in args.split_whitespace() {
        let Some(after) = word.strip_prefix("<<") else {
            continue;
        };
        if after.starts_with('<') {
            continue;
        }
        let (strip, after) = match after.strip_prefix('-') {
            Some(a) => (true, a),
            None => (false, after),
        };
        let quote = after.chars().next().filter(|c| *c == '"' || *c == '\'');
        let body = match quote {
            Some(q) => after[1..].split(q).next().unwrap_or_default(),
            None => after,
        };
        let name: String = body
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let starts_well = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        let whole = quote.is_some()
            || name.len() == body.len()
            || !body[name.len()..].starts_with(['$', '{']);
        if starts_well && whole {
            out.push((name, strip));
        }
    }
    out
}

/// Splits arguments on whitespace, honouring quotes and the escape character
/// (quotes are removed, as the shell-word parser in BuildKit does; escape
/// sequences are kept for [`substitute`] to resolve).
pub fn split_words(args: &str, escape: char) -> Vec<String> {
    words(args, escape).into_iter().map(|w| w.text).collect()
}

/// One word of [`split_words`] and where it stands in the arguments.
struct Word {
    /// Byte offset of its first character.
    start: usize,
    /// Byte offset just past its last character.
    end: usize,
    /// Its text, quotes removed.
    text: String,
}

fn words(args: &str, escape: char) -> Vec<Word> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut start = None;
    let mut quote: Option<char> = None;
    let mut chars = args.char_indices();
    while let Some((i, c)) = chars.next() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) if c == escape => {
                if let Some((_, n)) = chars.next() {
                    cur.push(c);
                    cur.push(n);
                }
            }
            Some(_) => cur.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                start.get_or_insert(i);
            }
            None if c.is_whitespace() => {
                if let Some(s) = start.take() {
                    out.push(Word {
                        start: s,
                        end: i,
                        text: std::mem::take(&mut cur),
                    });
                }
            }
            None if c == escape => {
                start.get_or_insert(i);
                cur.push(c);
                if let Some((_, n)) = chars.next() {
                    cur.push(n);
                }
            }
            None => {
                start.get_or_insert(i);
                cur.push(c);
            }
        }
    }
    if let Some(s) = start {
        out.push(Word {
            start: s,
            end: args.len(),
            text: cur,
        });
    }
    out
}

/// How deep `${A:-${B:-...}}` may nest: each level is a recursive call, and
/// a build runs on a thread with a small stack.
const MAX_SUBSTITUTION_DEPTH: usize = 32;

/// Substitutes `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
/// `${VAR:+alt}` and `${VAR+alt}`; `<escape>$` is a literal `$`.
pub fn substitute(
    input: &str,
    vars: &HashMap<String, String>,
    escape: char,
) -> Result<String, String> {
    substitute_at(input, vars, escape, 0)
}

fn substitute_at(
    input: &str,
    vars: &HashMap<String, String>,
    escape: char,
    depth: usize,
) -> Result<String, String> {
    if depth > MAX_SUBSTITUTION_DEPTH {
        return Err(format!(
            "substitutions nested more than {MAX_SUBSTITUTION_DEPTH} deep"
        ));
    }
    let mut out = String::new();
    let mut chars = input.chars().peekable();
    while let Some(c) = chars.next() {
        if c == escape {
            match chars.next() {
                Some(n) => out.push(n),
                None => out.push(c),
            }
            continue;
        }
        if c != '$' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('{') => {
                chars.next();
                let mut body = String::new();
                let mut braces = 1;
                loop {
                    match chars.next() {
                        None => return Err(format!("unterminated ${{ in {input:?}")),
                        Some('{') => {
                            braces += 1;
                            body.push('{');
                        }
                        Some('}') => {
                            braces -= 1;
                            if braces == 0 {
                                break;
                            }
                            body.push('}');
                        }
                        Some(ch) => body.push(ch),
                    }
                }
                let name_len = body
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .count();
                let (name, op) = body.split_at(name_len);
                if name.is_empty() {
                    return Err(format!("bad substitution ${{{body}}}"));
                }
                let value = vars.get(name);
                let set = value.is_some();
                let nonempty = value.is_some_and(|v| !v.is_empty());
                let expanded = match op {
                    "" => value.cloned().unwrap_or_default(),
                    _ if op.starts_with(":-") => {
                        if nonempty {
                            value.cloned().unwrap_or_default()
                        } else {
                            substitute_at(&op[2..], vars, escape, depth + 1)?
                        }
                    }
                    _ if op.starts_with('-') => {
                        if set {
                            value.cloned().unwrap_or_default()
                        } else {
                            substitute_at(&op[1..], vars, escape, depth + 1)?
                        }
                    }
                    _ if op.starts_with(":+") => {
                        if nonempty {
                            substitute_at(&op[2..], vars, escape, depth + 1)?
                        } else {
                            String::new()
                        }
                    }
                    _ if op.starts_with('+') => {
                        if set {
                            substitute_at(&op[1..], vars, escape, depth + 1)?
                        } else {
                            String::new()
                        }
                    }
                    _ => return Err(format!("unsupported substitution ${{{body}}}")),
                };
                out.push_str(&expanded);
            }
            Some(n) if n.is_ascii_alphabetic() || *n == '_' => {
                let mut name = String::new();
                while let Some(&n) = chars.peek() {
                    if n.is_ascii_alphanumeric() || n == '_' {
                        name.push(n);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push_str(vars.get(&name).map(String::as_str).unwrap_or_default());
            }
            _ => out.push('$'),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:ee3a7427e984f3d47ef6b31962b8255b59b97c4a79dc6804134da3986c55288a";

    fn bases(text: &str) -> Vec<String> {
        bases_with(text, &[])
    }

    fn bases_with(text: &str, args: &[(&str, &str)]) -> Vec<String> {
        let args = args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Dockerfile::parse(text, &args)
            .expect("parses")
            .bases()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn bases_for(text: &str, platform: &str) -> Vec<String> {
        let target = Platform::parse(platform).expect("platform");
        Dockerfile::parse_for(text, &BTreeMap::new(), &BuildPlatforms::target(target))
            .expect("parses")
            .bases()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn platform_args_are_predefined_in_the_global_scope() {
        let text = "FROM busybox:${TARGETARCH}\nFROM alpine:$TARGETOS-$TARGETVARIANT\n";
        assert_eq!(
            bases_for(text, "linux/arm64"),
            [
                "docker.io/library/busybox:arm64",
                "docker.io/library/alpine:linux-"
            ]
        );
        assert_eq!(
            bases_for("FROM busybox:1-${TARGETVARIANT}\n", "linux/arm/v7"),
            ["docker.io/library/busybox:1-v7"]
        );
        // Declared without a default, or with one: still the automatic value.
        let declared = "ARG TARGETARCH\nARG BUILDARCH=nope\nFROM busybox:$TARGETARCH-$BUILDARCH\n";
        let host = Platform::host().architecture;
        assert_eq!(
            bases_for(declared, "linux/arm64"),
            [format!("docker.io/library/busybox:arm64-{host}")]
        );
        // A build argument does not override them either.
        let args = BTreeMap::from([("TARGETARCH".to_owned(), "s390x".to_owned())]);
        let df = Dockerfile::parse_for(
            "FROM busybox:$TARGETARCH\n",
            &args,
            &BuildPlatforms::target(Platform::parse("linux/arm64").expect("platform")),
        )
        .expect("parses");
        assert_eq!(df.bases()[0].to_string(), "docker.io/library/busybox:arm64");
    }

    #[test]
    fn a_platform_arg_can_name_a_stage() {
        // Diun's Dockerfile: `FROM binary-$TARGETOS AS binary`.
        let text = "FROM golang:1.23 AS build\nFROM scratch AS binary-linux\nCOPY --from=build /x /x\nFROM binary-$TARGETOS AS binary\nFROM alpine:3.20\nCOPY --from=binary /x /x\n";
        assert_eq!(
            bases_for(text, "linux/amd64"),
            [
                "docker.io/library/golang:1.23",
                "docker.io/library/alpine:3.20"
            ]
        );
        assert_eq!(bases(text), bases_for(text, "linux/amd64"));
    }

    fn error(text: &str) -> DockerfileError {
        Dockerfile::parse(text, &BTreeMap::new()).expect_err("should fail")
    }

    #[test]
    fn simple_from() {
        assert_eq!(
            bases("FROM alpine\nCOPY a /a\n"),
            ["docker.io/library/alpine:latest"]
        );
    }

    #[test]
    fn stages_and_scratch_are_not_bases() {
        let text = "FROM golang:1.22 AS Build\nRUN go build\nFROM scratch\nCOPY --from=build /a /a\nFROM BUILD AS again\nCOPY --from=0 /x /x\n";
        assert_eq!(bases(text), ["docker.io/library/golang:1.22"]);
    }

    #[test]
    fn copy_from_external_image_is_a_base() {
        let text = "FROM alpine\nCOPY --chown=1:1 --from=busybox:1.36 /bin/busybox /bin/\n";
        assert_eq!(
            bases(text),
            [
                "docker.io/library/alpine:latest",
                "docker.io/library/busybox:1.36"
            ]
        );
    }

    #[test]
    fn global_args_and_build_args() {
        let text =
            "ARG REG=127.0.0.1:5000\nARG TAG=1\nFROM ${REG}/base:${TAG:-9}\nFROM $REG/other\n";
        assert_eq!(
            bases(text),
            ["127.0.0.1:5000/base:1", "127.0.0.1:5000/other:latest"]
        );
        assert_eq!(
            bases_with(text, &[("TAG", "2")]),
            ["127.0.0.1:5000/base:2", "127.0.0.1:5000/other:latest"]
        );
        // Undeclared build args do not apply.
        assert_eq!(
            bases_with("FROM alpine:${V:-3}\n", &[("V", "4")]),
            ["docker.io/library/alpine:3"]
        );
        assert_eq!(
            bases("ARG V\nFROM alpine${V:+:x}\n"),
            ["docker.io/library/alpine:latest"]
        );
    }

    #[test]
    fn continuations_comments_and_case() {
        let text = "# a comment\nfrom \\\n  # inside\n  --platform=$BUILDPLATFORM \\\n  debian:12 \\\n  as base\nRun echo hi\n";
        assert_eq!(bases(text), ["docker.io/library/debian:12"]);
    }

    #[test]
    fn escape_directive() {
        let text =
            "# escape=`\nFROM mcr.microsoft.com/windows/servercore:ltsc2022 `\n  AS x\nCOPY a b\n";
        assert_eq!(
            bases(text),
            ["mcr.microsoft.com/windows/servercore:ltsc2022"]
        );
    }

    #[test]
    fn heredocs_are_skipped() {
        let text = "FROM alpine\nRUN <<EOF\nFROM evil\nEOF\nCOPY <<-\"X\" /f\n\tFROM evil2\n\tX\nFROM busybox\n";
        assert_eq!(
            bases(text),
            [
                "docker.io/library/alpine:latest",
                "docker.io/library/busybox:latest"
            ]
        );
    }

    #[test]
    fn shifts_and_other_instructions_are_not_heredocs() {
        let text = "FROM alpine\nRUN echo $((1<<BITS))\nLABEL note=\"a<<b\"\nFROM busybox\n";
        assert_eq!(
            bases(text),
            [
                "docker.io/library/alpine:latest",
                "docker.io/library/busybox:latest"
            ]
        );
        let text = "FROM alpine\nRUN cat <<EOF > /x && echo hi\nFROM evil\nEOF\nFROM busybox\n";
        assert_eq!(
            bases(text),
            [
                "docker.io/library/alpine:latest",
                "docker.io/library/busybox:latest"
            ]
        );
    }

    #[test]
    fn duplicates_once_in_order() {
        assert_eq!(
            bases("FROM b\nFROM a\nFROM docker.io/library/b:latest\n"),
            ["docker.io/library/b:latest", "docker.io/library/a:latest"]
        );
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(error("").reason, "no FROM instruction");
        assert_eq!(error("\n\nFROM\n").line, 3);
        assert_eq!(error("FROM alpine\nFOO bar\n").line, 2);
        assert_eq!(error("RUN x\nFROM a\n").line, 1);
        assert_eq!(error("FROM Alpine\n").line, 1);
        assert_eq!(error("FROM a\nRUN <<EOF\nx\n").line, 2);
        assert_eq!(error("FROM a b c d\n").line, 1);
        assert_eq!(error("FROM ${X\n").line, 1);
    }

    #[test]
    fn pinning_keeps_flags_names_and_lines() {
        let text = "ARG T=1\nFROM --platform=$TARGETPLATFORM \\\n  base:${T} AS b\nFROM b\nCOPY --from=tool:2 --chown=0:0 /x /y\n";
        let df = Dockerfile::parse(text, &BTreeMap::new()).expect("parses");
        let digest = Digest::parse(D).expect("digest");
        let digests: BTreeMap<_, _> = df
            .bases()
            .into_iter()
            .map(|b| (b, digest.clone()))
            .collect();
        let pinned = df.pin(text, &digests);
        let lines: Vec<&str> = pinned.lines().collect();
        assert_eq!(
            lines[1],
            format!("FROM --platform=$TARGETPLATFORM docker.io/library/base@{D} AS b")
        );
        assert_eq!(lines[2], "");
        assert_eq!(lines[3], "FROM b");
        assert_eq!(
            lines[4],
            format!("COPY --from=docker.io/library/tool@{D} --chown=0:0 /x /y")
        );
        let again = Dockerfile::parse(&pinned, &BTreeMap::new()).expect("pinned parses");
        assert!(again.bases().iter().all(|b| b.digest() == Some(&digest)));
    }

    /// Pins every base of `text` to [`D`] and parses the result again.
    fn pin_all(text: &str) -> (String, Dockerfile) {
        let df = Dockerfile::parse(text, &BTreeMap::new()).expect("parses");
        let digest = Digest::parse(D).expect("digest");
        let digests = df
            .bases()
            .into_iter()
            .map(|b| (b, digest.clone()))
            .collect();
        let pinned = df.pin(text, &digests);
        let again = match Dockerfile::parse(&pinned, &BTreeMap::new()) {
            Ok(again) => again,
            Err(e) => panic!("pinned text does not parse: {e}\n{pinned}"),
        };
        assert_eq!(pinned.lines().count(), text.lines().count());
        let keywords = |d: &Dockerfile| {
            d.instructions
                .iter()
                .map(|i| (i.line, i.keyword.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(keywords(&again), keywords(&df));
        assert!(again.bases().iter().all(|b| b.digest() == Some(&digest)));
        (pinned, again)
    }

    /// Pinning cleared every line after a `COPY --from=image <<EOF`, the
    /// heredoc's body and terminator included: the pinned file no longer
    /// parsed.
    #[test]
    fn pin_keeps_the_heredoc_body_of_copy_from() {
        let text = "FROM a\nCOPY --from=b <<EOF /x\nhello\nEOF\nFROM c\n";
        let (pinned, again) = pin_all(text);
        let lines: Vec<&str> = pinned.lines().collect();
        assert_eq!(lines[2..4], ["hello", "EOF"]);
        assert_eq!(again.bases().len(), 3);
        let text = "FROM a\nCOPY --from=b \\\n  <<EOF /x\nhello\nEOF\n";
        let (pinned, _) = pin_all(text);
        let lines: Vec<&str> = pinned.lines().collect();
        assert_eq!(lines[2..], ["", "hello", "EOF"]);
    }

    /// Pinning rebuilt the instruction from its unquoted words, so a quoted
    /// word holding a space fell apart: `AS "x y"` became `AS x y` (which
    /// does not parse) and `--chown="a b"` pushed `--from` out of the flags.
    #[test]
    fn pin_keeps_quoted_words_quoted() {
        let (pinned, _) = pin_all("FROM \"a\" AS \"x y\"\n");
        assert_eq!(pinned, format!("FROM docker.io/library/a@{D} AS \"x y\"\n"));
        let (pinned, again) = pin_all("FROM a\nCOPY --chown=\"a b\" --from=b /x /y\n");
        assert!(
            pinned.contains(&format!(
                "COPY --chown=\"a b\" --from=docker.io/library/b@{D} /x /y"
            )),
            "{pinned}"
        );
        assert_eq!(again.bases().len(), 2);
    }

    /// With two `--from=` flags, pinning wrote the last base into both.
    #[test]
    fn pin_rewrites_each_copy_from_flag_to_its_own_base() {
        let (pinned, again) = pin_all("FROM a\nCOPY --from=b --from=c /x /y\n");
        assert!(pinned.contains("library/b@"), "{pinned}");
        assert!(pinned.contains("library/c@"), "{pinned}");
        assert_eq!(again.bases().len(), 3);
    }

    /// Each nested `${A:-...}` was a recursive call without a bound: a
    /// deeply nested default overflowed the stack (an abort, not an error).
    #[test]
    fn substitute_refuses_deep_nesting_instead_of_overflowing_the_stack() {
        let depth = 20_000;
        let text = format!("{}x{}", "${A:-".repeat(depth), "}".repeat(depth));
        let e = substitute(&text, &HashMap::new(), '\\').expect_err("too deep");
        assert!(e.contains("nested"), "{e}");
        let e =
            Dockerfile::parse(&format!("FROM {text}\n"), &BTreeMap::new()).expect_err("too deep");
        assert_eq!(e.line, 1);
        // Shallow nesting still works.
        let shallow = format!("{}x{}", "${A:-".repeat(8), "}".repeat(8));
        assert_eq!(
            substitute(&shallow, &HashMap::new(), '\\').as_deref(),
            Ok("x")
        );
    }
}
