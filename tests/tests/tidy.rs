//! Every program the tests start is installed by `scripts/test.sh`.
//!
//! The test reads the sources of the workspace (tests, harness, crates, fuzz
//! targets) for `Command::new(...)` and for calls of the [`WRAPPERS`] that
//! take a program name, and checks each program against
//! [`PACKAGES`] (program -> the Debian package that ships it, which the
//! `packages` list of `scripts/test.sh` must name) or [`BASE`] (what Debian's
//! essential set or the Rust toolchain provides). A `Command::new` whose
//! program is not a string literal must be named in [`SPAWNS`] with the
//! programs it starts. So a test that starts a new program fails here until
//! the program is installed, instead of failing on a fresh machine only.
//!
//! No network, no services: it reads files.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use rebased_e2e::rust_sources;

/// Program -> the Debian package that ships it (as `scripts/test.sh` names it).
const PACKAGES: &[(&str, &str)] = &[
    ("docker-registry", "docker-registry"),
    ("buildah", "buildah"),
    ("podman", "podman"),
    ("skopeo", "skopeo"),
    ("busybox", "busybox-static"),
    ("htpasswd", "apache2-utils"),
    ("openssl", "openssl"),
    ("curl", "curl"),
    ("kill", "procps"),
    ("systemd-analyze", "systemd"),
    ("wrk", "wrk"),
    ("python3", "python3"),
    ("update-binfmts", "binfmt-support"),
    ("git", "git"),
    ("sshd", "openssh-server"),
    ("ssh-keygen", "openssh-client"),
    ("ssh", "openssh-client"),
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    ("node", "nodejs"),
];

/// Packages `scripts/test.sh` installs for something other than a program
/// the tests start, and what for.
const SUPPORT: &[(&str, &str)] = &[
    (
        "python3-pip",
        "scripts/test.sh installs schemathesis with pip",
    ),
    (
        "python3-cryptography",
        "the token issuer's Python script signs JWTs with it",
    ),
    (
        "python3-nacl",
        "tests/cosign.py encrypts a key as cosign does (nacl/secretbox)",
    ),
    (
        "python3-aiosmtpd",
        "the email notifier's test runs an aiosmtpd server (tests/smtp/server.py)",
    ),
    (
        "runc",
        "the remote engines' podman services run RUN steps with it (tests/tests/remote.rs)",
    ),
    (
        "chromium",
        "tests/browser/dashboard.js (run with node) drives it through Playwright; npm ci in scripts/test.sh installs playwright-core and axe-core, npm from nodejs or Debian's npm",
    ),
    (
        "qemu-user-static",
        "the kernel runs arm64 RUN steps through its qemu-aarch64 binfmt handler",
    ),
];

/// Programs a fresh Debian machine with a Rust toolchain has without
/// `scripts/test.sh`, or that a test provides itself, and why.
const BASE: &[(&str, &str)] = &[
    (
        "sh",
        "dash, Debian essential: the credential helper scripts tests write",
    ),
    ("bash", "Debian essential"),
    ("tar", "Debian essential"),
    ("getconf", "libc-bin, Debian essential"),
    ("id", "coreutils, Debian essential"),
    ("cargo", "the Rust toolchain"),
    (
        "apt-get",
        "apt, on every Debian system: the arm64 busybox package",
    ),
    ("dpkg-deb", "dpkg, Debian essential: unpacks that package"),
    (
        "docker",
        "no Docker engine here: tests/tests/engines.rs puts podman on PATH as `docker`",
    ),
];

/// `Command::new(EXPR)` with EXPR not a string literal, in a file (`*`: in
/// any file) -> the programs it starts. EXPR is written as in the source,
/// whitespace removed.
const SPAWNS: &[(&str, &str, &[&str])] = &[
    // The binaries this workspace builds, and cargo to build them.
    ("*", "rebased_bin()", &[]),
    ("*", "rebased_bin()?", &[]),
    ("*", "env!(\"CARGO_BIN_EXE_rebased\")", &[]),
    ("*", "env!(\"CARGO_BIN_EXE_rebased-bench\")", &[]),
    ("*", "cargo", &["cargo"]),
    // The build engine of the backend.
    (
        "crates/builder/src/engine.rs",
        "&self.program",
        &["buildah", "podman", "docker"],
    ),
    // git, as `rebased-source` drives it.
    ("crates/source/src/lib.rs", "&self.program", &["git"]),
    // A `docker-credential-*` helper; the tests write their own.
    ("crates/registry/src/auth.rs", "&program", &[]),
    // `/usr/bin/docker-registry`.
    (
        "crates/registry/tests/blobs.rs",
        "BINARY",
        &["docker-registry"],
    ),
];

/// Functions whose first argument is the name of a program they start:
/// their calls are read like `Command::new` (the `Command::new` inside one
/// goes in SPAWNS with no programs).
const WRAPPERS: &[&str] = &[];

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Debian packages `scripts/test.sh` installs: its `packages=( ... )`
/// list, one a line, `#` comments.
fn installed() -> BTreeSet<String> {
    let script = fs::read_to_string(root().join("scripts/test.sh")).unwrap();
    let list = script
        .split_once("packages=(")
        .and_then(|(_, rest)| rest.split_once("\n)"))
        .map(|(list, _)| list)
        .expect("scripts/test.sh has a `packages=(` list ending in a line `)`");
    let packages: BTreeSet<String> = list
        .lines()
        .flat_map(|l| l.split('#').next().unwrap_or("").split_whitespace())
        .map(str::to_owned)
        .collect();
    assert!(!packages.is_empty(), "scripts/test.sh installs nothing");
    packages
}

/// A source file with comments dropped and each string literal's content
/// moved out: `code` holds `"N"` where literal N was, `line[i]` is the line
/// of `code`'s byte `i`.
struct Masked {
    code: String,
    line: Vec<usize>,
    literals: Vec<String>,
}

impl Masked {
    fn new(text: &str) -> Self {
        let chars: Vec<char> = text.chars().collect();
        let mut m = Self {
            code: String::new(),
            line: Vec::new(),
            literals: Vec::new(),
        };
        let mut line = 1;
        let mut i = 0;
        let ident = |c: char| c.is_alphanumeric() || c == '_';
        while i < chars.len() {
            let c = chars[i];
            let next = chars.get(i + 1).copied();
            let prev_ident = i > 0 && ident(chars[i - 1]);
            if c == '/' && next == Some('/') {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            } else if c == '/' && next == Some('*') {
                i += 2;
                while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                    line += usize::from(chars[i] == '\n');
                    i += 1;
                }
                i += 2;
            } else if !prev_ident && (c == 'r' || (c == 'b' && next == Some('r'))) && {
                let start = if c == 'b' { i + 2 } else { i + 1 };
                let hashes = chars[start.min(chars.len())..]
                    .iter()
                    .take_while(|&&h| h == '#')
                    .count();
                chars.get(start + hashes) == Some(&'"')
            } {
                // A raw string: r"..." or r#"..."# (b too).
                let start = if c == 'b' { i + 2 } else { i + 1 };
                let hashes = chars[start..].iter().take_while(|&&h| h == '#').count();
                let close: Vec<char> = std::iter::once('"')
                    .chain(std::iter::repeat_n('#', hashes))
                    .collect();
                i = start + hashes + 1;
                let mut lit = String::new();
                while i < chars.len() && !chars[i..].starts_with(&close) {
                    line += usize::from(chars[i] == '\n');
                    lit.push(chars[i]);
                    i += 1;
                }
                i += close.len();
                m.literal(lit, line);
            } else if c == '"' {
                i += 1;
                let mut lit = String::new();
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' {
                        lit.push(chars[i]);
                        i += 1;
                    }
                    if let Some(&ch) = chars.get(i) {
                        line += usize::from(ch == '\n');
                        lit.push(ch);
                    }
                    i += 1;
                }
                i += 1;
                m.literal(lit, line);
            } else if c == '\'' && (next == Some('\\') || chars.get(i + 2) == Some(&'\'')) {
                // A char literal ('"', '\''), not a lifetime.
                i += 1;
                while i < chars.len() && chars[i] != '\'' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
                m.push('_', line);
            } else {
                line += usize::from(c == '\n');
                m.push(c, line);
                i += 1;
            }
        }
        m
    }

    fn push(&mut self, c: char, line: usize) {
        for _ in 0..c.len_utf8() {
            self.line.push(line);
        }
        self.code.push(c);
    }

    fn literal(&mut self, lit: String, line: usize) {
        let mark = format!("\"{}\"", self.literals.len());
        self.literals.push(lit);
        for c in mark.chars() {
            self.push(c, line);
        }
    }

    /// The arguments' text after each `name(` in the code (up to the
    /// matching parenthesis, whitespace removed, literals still masked),
    /// with the line.
    fn calls(&self, name: &str) -> Vec<(String, usize)> {
        let pat = format!("{name}(");
        let mut out = Vec::new();
        for (at, _) in self.code.match_indices(&pat) {
            let before = self.code[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue; // `my_run(` is not `run(`
            }
            let start = at + pat.len();
            let mut depth = 1;
            let mut end = start;
            for (j, c) in self.code[start..].char_indices() {
                match c {
                    '(' | '[' | '{' => depth += 1,
                    ')' | ']' | '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    end = start + j;
                    break;
                }
            }
            let args: String = self.code[start..end]
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            out.push((args, self.line[at]));
        }
        out
    }

    /// The first argument of `args`, if it is a string literal.
    fn literal_arg(&self, args: &str) -> Option<String> {
        let first = args.split(',').next().unwrap_or("");
        let index: usize = first.strip_prefix('"')?.strip_suffix('"')?.parse().ok()?;
        Some(self.literals[index].clone())
    }

    /// `text` with each `"N"` replaced by literal N, quoted.
    fn unmask(&self, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(open) = rest.find('"') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let close = after.find('"').unwrap();
            let index: usize = after[..close].parse().unwrap();
            out.push('"');
            out.push_str(&self.literals[index]);
            out.push('"');
            rest = &after[close + 1..];
        }
        out.push_str(rest);
        out
    }
}

/// A program a source starts, and where.
struct Started {
    program: String,
    at: String,
}

/// Every program the sources under the workspace start; panics on a spawn
/// whose program it cannot name.
fn started() -> Vec<Started> {
    let root = root();
    let mut files = Vec::new();
    for dir in ["tests", "crates", "fuzz"] {
        files.extend(rust_sources(&root.join(dir)));
    }
    assert!(
        files.iter().any(|(f, _)| f.ends_with("tests/src/lib.rs")),
        "the harness was not read"
    );
    let texts: Vec<(String, Masked)> = files
        .iter()
        .map(|(f, text)| {
            let name = f.strip_prefix(&root).unwrap().display().to_string();
            (name, Masked::new(text))
        })
        .collect();
    let callees = std::iter::once("Command::new").chain(WRAPPERS.iter().copied());
    let mut out = Vec::new();
    let mut unknown = Vec::new();
    let mut seen = BTreeSet::new();
    for (name, masked) in &texts {
        for callee in callees.clone() {
            for (args, line) in masked.calls(callee) {
                let at = format!("{name}:{line}");
                if let Some(lit) = masked.literal_arg(&args) {
                    let program = lit.rsplit('/').next().unwrap_or(&lit).to_owned();
                    out.push(Started { program, at });
                    continue;
                }
                let args = masked.unmask(&args);
                let expr = args.split(',').next().unwrap_or("");
                let known = SPAWNS.iter().enumerate().find(|(_, (file, e, _))| {
                    (*file == "*" || file == name) && (*e == expr || *e == args)
                });
                match known {
                    Some((i, (_, _, programs))) => {
                        seen.insert(i);
                        out.extend(programs.iter().map(|p| Started {
                            program: (*p).to_owned(),
                            at: at.clone(),
                        }));
                    }
                    None => unknown.push(format!("{callee}({args}) at {at}")),
                }
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "these spawns start a program that is not a string literal; name each \
         expression and its file in SPAWNS of tests/tests/tidy.rs with the programs it starts \
         (a wrapper that takes a program name goes in WRAPPERS too), and install \
         those programs in scripts/test.sh:\n  {}",
        unknown.join("\n  ")
    );
    let stale: Vec<String> = SPAWNS
        .iter()
        .enumerate()
        .filter(|(i, _)| !seen.contains(i))
        .map(|(_, (file, e, _))| format!("{e} in {file}"))
        .collect();
    assert!(
        stale.is_empty(),
        "SPAWNS in tests/tests/tidy.rs names expressions no source spawns: {stale:?}"
    );
    out
}

#[test]
fn every_program_the_tests_start_is_installed_by_test_sh() {
    let installed = installed();
    let started = started();
    let mut problems = Vec::new();
    for s in &started {
        if BASE.iter().any(|(p, _)| *p == s.program) {
            continue;
        }
        match PACKAGES.iter().find(|(p, _)| *p == s.program) {
            Some((_, package)) if installed.contains(*package) => {}
            Some((_, package)) => problems.push(format!(
                "`{}` ({}) comes from the Debian package {package}, which scripts/test.sh \
                 does not install: add {package} to its `packages` list",
                s.program, s.at
            )),
            None => problems.push(format!(
                "`{}` ({}) is a program scripts/test.sh does not install: add its Debian \
                 package to the `packages` list of scripts/test.sh and `(\"{}\", PACKAGE)` \
                 to PACKAGES in tests/tests/tidy.rs (or to BASE if Debian's essential set \
                 or the Rust toolchain has it)",
                s.program, s.at, s.program
            )),
        }
    }
    // Nothing installed or mapped for no reason.
    for package in &installed {
        let for_program = PACKAGES.iter().any(|(_, p)| p == package);
        let support = SUPPORT.iter().any(|(p, _)| p == package);
        if !for_program && !support {
            problems.push(format!(
                "scripts/test.sh installs {package}, which no entry of PACKAGES or \
                 SUPPORT in tests/tests/tidy.rs explains"
            ));
        }
    }
    for (program, package) in PACKAGES {
        if !started.iter().any(|s| s.program == *program) {
            problems.push(format!(
                "PACKAGES maps `{program}` to {package}, but no test starts `{program}`: \
                 drop the entry (and {package} from scripts/test.sh if nothing else needs it)"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_scanner_reads_literals_wrappers_and_skips_strings_and_comments() {
    let m = Masked::new(
        "// Command::new(\"commented\")\n\
         let a = \"Command::new(\\\"quoted\\\")\";\n\
         let c = '\"';\n\
         Command::new(\"/usr/bin/real\").arg(r#\"x\"#);\n\
         Command::new( rebased_bin() );\n\
         my_run(\"not-a-wrapper\"); run(\"wrapped\", &[\"x\"]);\n",
    );
    let calls = m.calls("Command::new");
    assert_eq!(calls.len(), 2, "{:?}", calls);
    assert_eq!(m.literal_arg(&calls[0].0).as_deref(), Some("/usr/bin/real"));
    assert_eq!(calls[0].1, 4);
    assert_eq!(m.unmask(&calls[1].0), "rebased_bin()");
    assert_eq!(calls[1].1, 5);
    let runs = m.calls("run");
    assert_eq!(runs.len(), 1);
    assert_eq!(m.literal_arg(&runs[0].0).as_deref(), Some("wrapped"));
}
