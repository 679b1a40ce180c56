//! What the native backend will do, decided from the Dockerfile alone and
//! before anything is fetched or pushed: one stage, and only instructions
//! that do not run anything. Everything else is refused with its line and a
//! hint to use an engine.

use std::collections::{BTreeMap, HashMap};

use rebased_core::dockerfile::{split_words, substitute, BaseKind, Dockerfile, DockerfileError};
use rebased_core::ImageRef;

/// A hint appended to every refusal.
pub const HINT: &str =
    "the native backend does not run anything; set builder.backend to buildah, podman or docker (or auto)";

/// The single stage the native backend builds.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The base (`None` for `FROM scratch`), pinned when the Dockerfile is.
    pub base: Option<ImageRef>,
    /// Line of the `FROM`.
    pub from_line: usize,
    /// The escape character.
    pub escape: char,
    /// Build arguments visible in the stage: global `ARG`s redeclared in the
    /// stage and the stage's own `ARG`s are added as they are met.
    pub globals: HashMap<String, String>,
    /// The steps after `FROM`, in order.
    pub steps: Vec<Step>,
}

/// One instruction after `FROM`.
#[derive(Debug, Clone)]
pub struct Step {
    /// 1-based line.
    pub line: usize,
    /// Upper-case keyword.
    pub keyword: String,
    /// Arguments as written (continuations joined).
    pub args: String,
}

fn refuse(line: usize, reason: impl std::fmt::Display) -> DockerfileError {
    DockerfileError {
        line,
        reason: format!("{reason}; {HINT}"),
    }
}

impl Plan {
    /// Checks that `df` (parsed from `text` with `build_args`) is something the
    /// native backend builds; the error names the first line it cannot.
    pub fn new(
        df: &Dockerfile,
        build_args: &BTreeMap<String, String>,
    ) -> Result<Self, DockerfileError> {
        let froms: Vec<_> = df
            .instructions
            .iter()
            .enumerate()
            .filter(|(_, i)| i.keyword == "FROM")
            .collect();
        let Some(&(from_idx, from)) = froms.first() else {
            return Err(DockerfileError {
                line: 1,
                reason: "no FROM instruction".to_owned(),
            });
        };
        if let Some((_, second)) = froms.get(1) {
            return Err(refuse(
                second.line,
                "multi-stage builds (a second FROM) are not supported by the native backend",
            ));
        }
        let mut globals = HashMap::new();
        for ins in &df.instructions[..from_idx] {
            // Only ARGs may come before FROM (the parser enforces the rest).
            if ins.keyword == "ARG" {
                declare(
                    &mut globals,
                    &ins.args,
                    df.escape,
                    build_args,
                    &HashMap::new(),
                )
                .map_err(|reason| DockerfileError {
                    line: ins.line,
                    reason,
                })?;
            }
        }
        let words = split_words(&from.args, df.escape);
        for w in &words {
            if let Some(p) = w.strip_prefix("--platform=") {
                if !matches!(p, "$TARGETPLATFORM" | "${TARGETPLATFORM}") {
                    return Err(refuse(
                        from.line,
                        format!("FROM --platform={p} is not supported by the native backend, which builds every configured platform from its own base"),
                    ));
                }
            } else if w.starts_with("--") {
                return Err(refuse(from.line, format!("FROM flag {w} is not supported")));
            }
        }
        let base = df
            .uses
            .iter()
            .find(|u| u.kind == BaseKind::From && u.instruction == from_idx)
            .map(|u| u.reference.clone());
        let mut steps = Vec::new();
        for ins in &df.instructions[from_idx + 1..] {
            let kw = ins.keyword.as_str();
            if kw == "RUN" {
                return Err(refuse(
                    ins.line,
                    "RUN is not supported by the native backend",
                ));
            }
            if ins.has_heredoc() {
                return Err(refuse(
                    ins.line,
                    format!("{kw} with a heredoc is not supported by the native backend"),
                ));
            }
            if matches!(kw, "COPY" | "ADD") {
                check_copy(ins.line, kw, &ins.args, df.escape)?;
            }
            steps.push(Step {
                line: ins.line,
                keyword: ins.keyword.clone(),
                args: ins.args.clone(),
            });
        }
        Ok(Self {
            base,
            from_line: from.line,
            escape: df.escape,
            globals,
            steps,
        })
    }
}

/// The flags and operands of a `COPY`/`ADD` (JSON or whitespace form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyArgs {
    /// `--chown`.
    pub chown: Option<String>,
    /// `--chmod`.
    pub chmod: Option<String>,
    /// Sources then destination, before substitution.
    pub operands: Vec<String>,
    /// Whether the operands came in JSON form (no word splitting).
    pub json: bool,
}

/// Splits a `COPY`/`ADD` into flags and operands.
pub fn copy_args(args: &str, escape: char) -> Result<CopyArgs, String> {
    let (flags, rest) = leading_flags(args);
    let mut chown = None;
    let mut chmod = None;
    for (name, value) in flags {
        let value = value.unwrap_or_default();
        match name {
            "chown" => chown = Some(value.to_owned()),
            "chmod" => chmod = Some(value.to_owned()),
            // Layers are independent of the base anyway.
            "link" => {}
            "from" => return Err("COPY --from is not supported by the native backend".to_owned()),
            other => {
                return Err(format!(
                    "flag --{other} is not supported by the native backend"
                ))
            }
        }
    }
    let (operands, json) = match json_array(rest) {
        Some(list) => (list, true),
        None => (split_words(rest, escape), false),
    };
    if operands.len() < 2 {
        return Err("needs at least one source and a destination".to_owned());
    }
    Ok(CopyArgs {
        chown,
        chmod,
        operands,
        json,
    })
}

fn check_copy(line: usize, kw: &str, args: &str, escape: char) -> Result<(), DockerfileError> {
    let parsed = copy_args(args, escape).map_err(|r| refuse(line, format!("{kw}: {r}")))?;
    if kw == "ADD" {
        let sources = &parsed.operands[..parsed.operands.len() - 1];
        if let Some(url) = sources.iter().find(|s| is_remote(s)) {
            return Err(refuse(
                line,
                format!("ADD of a remote source ({url}) is not supported by the native backend"),
            ));
        }
    }
    Ok(())
}

fn is_remote(source: &str) -> bool {
    source.starts_with("http://")
        || source.starts_with("https://")
        || source.starts_with("git@")
        || source.starts_with("git://")
}

/// The `--name[=value]` flags at the start of an instruction's arguments,
/// and the text after them.
pub fn leading_flags(args: &str) -> (Vec<(&str, Option<&str>)>, &str) {
    let mut rest = args.trim();
    let mut flags = Vec::new();
    while let Some(flag_text) = rest.strip_prefix("--") {
        let end = flag_text
            .find(char::is_whitespace)
            .unwrap_or(flag_text.len());
        let flag = &flag_text[..end];
        rest = flag_text[end..].trim_start();
        flags.push(match flag.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (flag, None),
        });
    }
    (flags, rest)
}

/// `["a", "b"]` as a list of strings; `None` when `text` is not a JSON array
/// of strings (Docker then takes the shell form).
pub fn json_array(text: &str) -> Option<Vec<String>> {
    let t = text.trim();
    if !t.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(t).ok()
}

/// Declares `ARG name[=default]...` into `vars`: a build argument wins over
/// the default; without either, an outer (global) value is kept.
pub fn declare(
    vars: &mut HashMap<String, String>,
    args: &str,
    escape: char,
    build_args: &BTreeMap<String, String>,
    outer: &HashMap<String, String>,
) -> Result<(), String> {
    for word in split_words(args, escape) {
        let (name, default) = match word.split_once('=') {
            Some((n, d)) => (n.to_owned(), Some(substitute(d, vars, escape)?)),
            None => (word.clone(), None),
        };
        if name.is_empty() {
            return Err(format!("ARG {word:?} has no name"));
        }
        let value = build_args
            .get(&name)
            .cloned()
            .or(default)
            .or_else(|| outer.get(&name).cloned());
        match value {
            Some(v) => {
                vars.insert(name, v);
            }
            None => {
                vars.entry(name).or_default();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(text: &str) -> Result<Plan, DockerfileError> {
        let df = Dockerfile::parse(text, &BTreeMap::new()).expect("parses");
        Plan::new(&df, &BTreeMap::new())
    }

    #[test]
    fn run_is_refused_with_its_line_and_a_hint() {
        let e = plan("FROM busybox\nCOPY a /a\n\nRUN echo hi\n").expect_err("refused");
        assert_eq!(e.line, 4);
        assert!(e.reason.contains("RUN is not supported"), "{e}");
        assert!(e.reason.contains("buildah"), "{e}");
    }

    #[test]
    fn multi_stage_copy_from_heredoc_and_remote_add_are_refused() {
        let e = plan("FROM a AS x\nFROM b\nCOPY --from=x /a /a\n").expect_err("refused");
        assert_eq!(e.line, 2);
        let e = plan("FROM b\nCOPY --from=busybox /a /a\n").expect_err("refused");
        assert!(e.reason.contains("--from"), "{e}");
        let e = plan("FROM b\nCOPY <<EOF /a\nhi\nEOF\n").expect_err("refused");
        assert!(e.reason.contains("heredoc"), "{e}");
        let e = plan("FROM b\nENV A=1\nADD https://example.com/x /x\n").expect_err("refused");
        assert_eq!(e.line, 3);
        assert!(e.reason.contains("remote"), "{e}");
        let e = plan("FROM b\nCOPY --parents a /x/\n").expect_err("refused");
        assert!(e.reason.contains("--parents"), "{e}");
        let e = plan("FROM --platform=linux/arm64 b\n").expect_err("refused");
        assert_eq!(e.line, 1);
    }

    #[test]
    fn a_supported_file_gives_its_steps_and_base() {
        let p = plan(
            "ARG TAG=1.36\nFROM busybox:${TAG} AS app\nCOPY --chown=1:2 --chmod=644 a b /d/\nENV X=1\nCMD [\"x\"]\n",
        )
        .expect("supported");
        assert_eq!(
            p.base.map(|b| b.to_string()).as_deref(),
            Some("docker.io/library/busybox:1.36")
        );
        assert_eq!(p.globals.get("TAG").map(String::as_str), Some("1.36"));
        let kws: Vec<_> = p.steps.iter().map(|s| s.keyword.as_str()).collect();
        assert_eq!(kws, ["COPY", "ENV", "CMD"]);
        assert_eq!(p.steps[0].line, 3);
        assert!(plan("FROM scratch\nCOPY a /\n")
            .expect("scratch")
            .base
            .is_none());
    }

    #[test]
    fn copy_args_forms() {
        let a = copy_args("--chown=app:app --link [\"a b\", \"/x y/\"]", '\\').expect("json");
        assert_eq!(a.chown.as_deref(), Some("app:app"));
        assert!(a.json);
        assert_eq!(a.operands, ["a b", "/x y/"]);
        let a = copy_args("--chmod=0755 src  /dst", '\\').expect("words");
        assert_eq!(a.chmod.as_deref(), Some("0755"));
        assert_eq!(a.operands, ["src", "/dst"]);
        assert!(copy_args("onlyone", '\\').is_err());
    }

    #[test]
    fn args_declare_with_build_args_defaults_and_outer_values() {
        let mut vars = HashMap::new();
        let outer = HashMap::from([("V".to_owned(), "global".to_owned())]);
        let build = BTreeMap::from([("B".to_owned(), "given".to_owned())]);
        declare(&mut vars, "V B=default C=${B}-x D", '\\', &build, &outer).expect("ok");
        assert_eq!(vars["V"], "global");
        assert_eq!(vars["B"], "given");
        assert_eq!(vars["C"], "given-x");
        assert_eq!(vars["D"], "");
    }
}
