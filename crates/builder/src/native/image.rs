//! The image config the native backend writes: the base's config carried
//! over as Docker does, each instruction applied to it, a history entry per
//! instruction and the new layers' diff ids appended.

use std::collections::{BTreeMap, HashMap};

use rebased_core::dockerfile::{split_words, substitute};
use rebased_core::oci::{ContainerConfig, Healthcheck, History, ImageConfig};
use serde_json::{Map, Value};

use super::plan::{copy_args, declare, json_array, leading_flags, Step};

pub use rebased_core::oci::media_type::{OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST};
pub use rebased_core::oci::Platform;

/// A `COPY`/`ADD` after substitution, ready to become a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyStep {
    /// Sources, relative to the context.
    pub sources: Vec<String>,
    /// Absolute destination; a trailing `/` means a directory.
    pub dest: String,
    /// `--chown` as written (after substitution).
    pub chown: Option<String>,
    /// `--chmod` bits.
    pub chmod: Option<u32>,
    /// `ADD` (local archives are unpacked).
    pub add: bool,
    /// The history text.
    pub created_by: String,
}

/// The config being built for one platform.
#[derive(Debug, Clone)]
pub struct Stage {
    /// Everything but `config` and `history`, which are kept apart while
    /// instructions apply and put in by [`Stage::finish`].
    image: ImageConfig,
    config: ContainerConfig,
    history: Vec<History>,
    vars: HashMap<String, String>,
    globals: HashMap<String, String>,
    escape: char,
    cmd_set: bool,
    created: String,
}

impl Stage {
    /// Starts from the base's config (`None` for `scratch`), keeping what
    /// Docker carries over: platform fields, `config`, `rootfs` and
    /// `history`. What the base's `config` has that we do not model (in
    /// its `extra`) carries over unchanged.
    pub fn new(
        base: Option<&ImageConfig>,
        platform: &Platform,
        globals: &HashMap<String, String>,
        escape: char,
        created: String,
    ) -> Self {
        let mut image = ImageConfig {
            architecture: platform.architecture.clone(),
            os: platform.os.clone(),
            variant: platform.variant.clone(),
            ..ImageConfig::default()
        };
        let (mut config, history) = match base {
            Some(b) => {
                image.rootfs.diff_ids = b.rootfs.diff_ids.clone();
                for key in ["os.version", "os.features"] {
                    if let Some(v) = b.extra.get(key) {
                        image.extra.insert(key.to_owned(), v.clone());
                    }
                }
                let mut config = b.config.clone().unwrap_or_default();
                // A base's `"Cmd": null` is no `Cmd` here: only our own
                // `ENTRYPOINT` writes the `null`.
                if config.cmd == Some(None) {
                    config.cmd = None;
                }
                (config, b.history.clone().unwrap_or_default())
            }
            // What BuildKit gives `FROM scratch`.
            None => (
                ContainerConfig {
                    env: Some(vec![
                        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
                            .to_owned(),
                    ]),
                    ..ContainerConfig::default()
                },
                Vec::new(),
            ),
        };
        // The base's ONBUILD triggers are not inherited.
        config.on_build = None;
        // BuildKit's automatic platform ARGs, for `ARG TARGETARCH` and kin.
        let mut globals = globals.clone();
        let host = Platform::host();
        for (k, v) in [
            ("TARGETPLATFORM", platform.to_string()),
            ("TARGETOS", platform.os.clone()),
            ("TARGETARCH", platform.architecture.clone()),
            (
                "TARGETVARIANT",
                platform.variant.clone().unwrap_or_default(),
            ),
            ("BUILDPLATFORM", host.to_string()),
            ("BUILDOS", host.os.clone()),
            ("BUILDARCH", host.architecture.clone()),
            ("BUILDVARIANT", String::new()),
        ] {
            // The builder's values, even over a global `ARG TARGETARCH`
            // declared without one.
            globals.insert(k.to_owned(), v);
        }
        Self {
            image,
            config,
            history,
            vars: HashMap::new(),
            globals,
            escape,
            cmd_set: false,
            created,
        }
    }

    /// The config's `Env` as a map.
    pub fn env(&self) -> Vec<(String, String)> {
        self.config
            .env
            .iter()
            .flatten()
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect()
    }

    /// The variables for substitution: `ARG`s, overridden by `ENV`.
    fn scope(&self) -> HashMap<String, String> {
        let mut vars = self.vars.clone();
        vars.extend(self.env());
        vars
    }

    fn sub(&self, text: &str) -> Result<String, String> {
        substitute(text, &self.scope(), self.escape)
    }

    fn workdir(&self) -> String {
        self.config
            .working_dir
            .as_deref()
            .filter(|w| !w.is_empty())
            .unwrap_or("/")
            .to_owned()
    }

    fn shell(&self) -> Vec<String> {
        self.config
            .shell
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| vec!["/bin/sh".to_owned(), "-c".to_owned()])
    }

    fn history(&mut self, created_by: String, empty: bool) {
        self.history.push(History {
            created: Some(self.created.clone()),
            created_by: Some(created_by),
            empty_layer: empty.then_some(true),
            ..History::default()
        });
    }

    /// Applies one instruction to the config. A `COPY`/`ADD` is returned for
    /// the caller to turn into a layer (then [`Stage::add_layer`]); every
    /// other instruction is done here.
    pub fn apply(
        &mut self,
        step: &Step,
        build_args: &BTreeMap<String, String>,
    ) -> Result<Option<CopyStep>, String> {
        let args = step.args.trim();
        let created_by = format!("{} {}", step.keyword, args);
        match step.keyword.as_str() {
            "COPY" | "ADD" => return self.copy(step, args).map(Some),
            "ARG" => {
                // Defaults see ENV as well as earlier ARGs.
                let mut scope = self.scope();
                declare(&mut scope, args, self.escape, build_args, &self.globals)?;
                for word in split_words(args, self.escape) {
                    let name = word.split_once('=').map_or(word.as_str(), |(n, _)| n);
                    if let Some(v) = scope.get(name) {
                        self.vars.insert(name.to_owned(), v.clone());
                    }
                }
            }
            "ENV" => {
                for (k, v) in self.pairs("ENV", args)? {
                    let env = self.config.env.get_or_insert_with(Vec::new);
                    let prefix = format!("{k}=");
                    let entry = format!("{k}={v}");
                    match env.iter_mut().find(|e| e.starts_with(&prefix)) {
                        Some(slot) => *slot = entry,
                        None => env.push(entry),
                    }
                }
            }
            "LABEL" => {
                for (k, v) in self.pairs("LABEL", args)? {
                    self.config
                        .labels
                        .get_or_insert_with(BTreeMap::new)
                        .insert(k, v);
                }
            }
            "MAINTAINER" => {
                self.image.author = Some(args.to_owned());
            }
            "WORKDIR" => {
                let dir = self.sub(args)?;
                let joined = if dir.starts_with('/') {
                    dir
                } else {
                    format!("{}/{dir}", self.workdir())
                };
                let clean = clean_path(&joined);
                self.config.working_dir = Some(clean);
            }
            "USER" => {
                let user = self.sub(args)?;
                self.config.user = Some(user);
            }
            "STOPSIGNAL" => {
                let sig = self.sub(args)?;
                self.config.stop_signal = Some(sig);
            }
            "EXPOSE" => {
                let mut ports = Vec::new();
                for w in split_words(args, self.escape) {
                    ports.extend(expose(&self.sub(&w)?)?);
                }
                let exposed = self.config.exposed_ports.get_or_insert_with(BTreeMap::new);
                for p in ports {
                    exposed.insert(p, empty_object());
                }
            }
            "VOLUME" => {
                let list = match json_array(args) {
                    Some(l) => l,
                    None => split_words(args, self.escape),
                };
                let mut paths = Vec::new();
                for v in list {
                    let v = self.sub(&v)?;
                    if v.trim().is_empty() {
                        return Err("VOLUME specified can not be an empty string".to_owned());
                    }
                    paths.push(v);
                }
                let volumes = self.config.volumes.get_or_insert_with(BTreeMap::new);
                for p in paths {
                    volumes.insert(p, empty_object());
                }
            }
            "CMD" => {
                self.config.cmd = Some(Some(self.command(args)));
                self.cmd_set = true;
            }
            "ENTRYPOINT" => {
                self.config.entrypoint = Some(self.command(args));
                if !self.cmd_set {
                    // An inherited CMD is reset when ENTRYPOINT is set;
                    // Docker writes `"Cmd": null`.
                    self.config.cmd = Some(None);
                }
            }
            "SHELL" => {
                let shell = json_array(args)
                    .filter(|s| !s.is_empty())
                    .ok_or("SHELL requires the arguments to be in JSON form")?;
                self.config.shell = Some(shell);
            }
            "HEALTHCHECK" => {
                self.config.healthcheck = Some(healthcheck(args)?);
            }
            "ONBUILD" => {
                self.config
                    .on_build
                    .get_or_insert_with(Vec::new)
                    .push(args.to_owned());
            }
            other => return Err(format!("{other} is not supported by the native backend")),
        }
        self.history(created_by, true);
        Ok(None)
    }

    fn command(&self, args: &str) -> Vec<String> {
        json_array(args).unwrap_or_else(|| {
            let mut cmd = self.shell();
            cmd.push(args.to_owned());
            cmd
        })
    }

    /// `K=V ...` or the legacy `K V` form of `ENV` and `LABEL`, each word
    /// read as BuildKit's shell lexer reads it ([`Stage::word`]).
    fn pairs(&self, kw: &str, args: &str) -> Result<Vec<(String, String)>, String> {
        let words = raw_words(args, self.escape);
        let Some(first) = words.first() else {
            return Err(format!("{kw} requires at least one argument"));
        };
        if !first.contains('=') {
            let (name, value) = args
                .trim()
                .split_once(char::is_whitespace)
                .ok_or_else(|| format!("{kw} {first} needs a value"))?;
            return Ok(vec![(name.to_owned(), self.word(value.trim())?)]);
        }
        let mut out = Vec::new();
        for w in words {
            let (k, v) = w
                .split_once('=')
                .ok_or_else(|| format!("{kw}: {w:?} is not NAME=VALUE"))?;
            let k = self.word(k)?;
            if k.is_empty() {
                return Err(format!("{kw} names can not be blank"));
            }
            out.push((k, self.word(v)?));
        }
        Ok(out)
    }

    /// One word as BuildKit's shell lexer reads it: quotes removed;
    /// nothing expanded inside single quotes; inside double quotes `$`
    /// expands and the escape character escapes only `"`, `$` and itself;
    /// outside quotes it escapes any character.
    fn word(&self, raw: &str) -> Result<String, String> {
        let e = self.escape;
        // The word rewritten for `substitute`, which expands `$` and takes
        // `<escape>c` as a literal `c`.
        let mut text = String::new();
        let literal = |text: &mut String, c: char| {
            if c == e || c == '$' {
                text.push(e);
            }
            text.push(c);
        };
        let mut chars = raw.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\'' => {
                    for c in chars.by_ref() {
                        if c == '\'' {
                            break;
                        }
                        literal(&mut text, c);
                    }
                }
                '"' => {
                    while let Some(c) = chars.next() {
                        match c {
                            '"' => break,
                            c if c == e => match chars.peek().copied() {
                                Some(n) if n == '"' || n == '$' || n == e => {
                                    chars.next();
                                    literal(&mut text, n);
                                }
                                Some(_) => literal(&mut text, e),
                                None => {}
                            },
                            '$' => dollar(&mut text, &mut chars),
                            c => text.push(c),
                        }
                    }
                }
                c if c == e => {
                    if let Some(n) = chars.next() {
                        literal(&mut text, n);
                    }
                }
                '$' => dollar(&mut text, &mut chars),
                c => text.push(c),
            }
        }
        self.sub(&text)
    }

    fn copy(&self, step: &Step, args: &str) -> Result<CopyStep, String> {
        let kw = step.keyword.as_str();
        let parsed = copy_args(args, self.escape).map_err(|e| format!("{kw}: {e}"))?;
        let mut operands = Vec::new();
        for o in &parsed.operands {
            operands.push(self.sub(o)?);
        }
        let dest_raw = operands.pop().unwrap_or_default();
        let dir = dest_raw.ends_with('/') || dest_raw == "." || dest_raw.ends_with("/.");
        let joined = if dest_raw.starts_with('/') {
            dest_raw.clone()
        } else {
            format!("{}/{dest_raw}", self.workdir())
        };
        let mut dest = clean_path(&joined);
        if dir && !dest.ends_with('/') {
            dest.push('/');
        }
        let chmod = match &parsed.chmod {
            Some(m) => Some(
                u32::from_str_radix(&self.sub(m)?, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| format!("{kw} --chmod={m}: only octal modes are supported"))?,
            ),
            None => None,
        };
        let chown = match &parsed.chown {
            Some(c) => Some(self.sub(c)?),
            None => None,
        };
        Ok(CopyStep {
            sources: operands,
            dest,
            chown,
            chmod,
            add: kw == "ADD",
            created_by: format!("{kw} {args} # rebased"),
        })
    }

    /// The working directory so far (`/` when none is set).
    pub fn working_dir(&self) -> String {
        self.workdir()
    }

    /// The `USER` so far (empty: root).
    pub fn user(&self) -> String {
        self.config.user.clone().unwrap_or_default()
    }

    /// Records a layer made by the last instruction applied (a `WORKDIR`
    /// that created its directory): its history entry is no longer empty.
    pub fn layer_for_last(&mut self, diff_id: &str) {
        self.image.rootfs.diff_ids.push(diff_id.to_owned());
        if let Some(last) = self.history.last_mut() {
            last.empty_layer = None;
        }
    }

    /// Records a layer made for a `COPY`/`ADD`.
    pub fn add_layer(&mut self, diff_id: &str, created_by: String) {
        self.image.rootfs.diff_ids.push(diff_id.to_owned());
        self.history(created_by, false);
    }

    /// The finished config, with `labels` added to the config's `Labels`.
    pub fn finish(mut self, labels: &BTreeMap<String, String>) -> ImageConfig {
        if !labels.is_empty() {
            self.config
                .labels
                .get_or_insert_with(BTreeMap::new)
                .extend(labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        self.image.created = Some(self.created);
        self.image.config = Some(self.config);
        self.image.history = Some(self.history);
        self.image
    }
}

/// The value of an `ExposedPorts` or `Volumes` key: `{}`.
fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// A `$` met by [`Stage::word`]: `$NAME` becomes `${NAME}` (so a quote
/// right after the name still ends it), `${...}` is copied whole.
fn dollar(text: &mut String, chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    text.push('$');
    match chars.peek() {
        Some('{') => {
            let mut depth = 0;
            for c in chars.by_ref() {
                text.push(c);
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
            }
        }
        Some(c) if c.is_ascii_alphanumeric() || *c == '_' => {
            text.push('{');
            while let Some(c) = chars.next_if(|c| c.is_ascii_alphanumeric() || *c == '_') {
                text.push(c);
            }
            text.push('}');
        }
        _ => {}
    }
}

/// Splits arguments on unquoted whitespace, keeping quotes and escapes as
/// written (for [`Stage::word`]).
fn raw_words(args: &str, escape: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut chars = args.chars();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) if c == q => {
                quote = None;
                cur.push(c);
            }
            Some('"') if c == escape => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            Some(_) => cur.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                cur.push(c);
            }
            None if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            None if c == escape => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            None => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Lexically cleans an absolute path (`.`, `..`, repeated `/`).
pub fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// `80`, `80/udp`, `8000-8002/tcp` as config keys.
fn expose(spec: &str) -> Result<Vec<String>, String> {
    let (ports, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
    let proto = proto.to_ascii_lowercase();
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!("EXPOSE {spec}: unknown protocol {proto:?}"));
    }
    let bad = || format!("EXPOSE {spec}: invalid port");
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (
            a.parse::<u16>().map_err(|_| bad())?,
            b.parse::<u16>().map_err(|_| bad())?,
        ),
        None => {
            let p = ports.parse::<u16>().map_err(|_| bad())?;
            (p, p)
        }
    };
    if lo > hi || hi - lo > 1024 {
        return Err(bad());
    }
    Ok((lo..=hi).map(|p| format!("{p}/{proto}")).collect())
}

/// `HEALTHCHECK [flags] CMD ...` or `HEALTHCHECK NONE`, as the config's
/// `Healthcheck` (durations in nanoseconds).
fn healthcheck(args: &str) -> Result<Healthcheck, String> {
    let (flags, rest) = leading_flags(args);
    let mut hc = Healthcheck::default();
    for (name, value) in flags {
        let value = value.ok_or_else(|| format!("HEALTHCHECK --{name} needs a value"))?;
        let slot = match name {
            "interval" => &mut hc.interval,
            "timeout" => &mut hc.timeout,
            "start-period" => &mut hc.start_period,
            "start-interval" => &mut hc.start_interval,
            "retries" => {
                let n: u64 = value
                    .parse()
                    .map_err(|_| format!("HEALTHCHECK --retries={value}: not a number"))?;
                hc.retries = Some(n);
                continue;
            }
            other => return Err(format!("HEALTHCHECK: unknown flag --{other}")),
        };
        let ns = go_duration(value)
            .ok_or_else(|| format!("HEALTHCHECK --{name}={value}: not a duration"))?;
        *slot = Some(ns);
    }
    let (kind, cmd) = match rest.split_once(char::is_whitespace) {
        Some((k, c)) => (k.to_ascii_uppercase(), c.trim()),
        None => (rest.to_ascii_uppercase(), ""),
    };
    match kind.as_str() {
        "NONE" if cmd.is_empty() => {
            return Ok(Healthcheck {
                test: Some(vec!["NONE".to_owned()]),
                ..Healthcheck::default()
            })
        }
        "NONE" => return Err("HEALTHCHECK NONE takes no arguments".to_owned()),
        "CMD" if !cmd.is_empty() => {}
        _ => return Err("HEALTHCHECK needs NONE or CMD followed by a command".to_owned()),
    }
    let test = match json_array(cmd) {
        Some(list) => {
            let mut t = vec!["CMD".to_owned()];
            t.extend(list);
            t
        }
        None => vec!["CMD-SHELL".to_owned(), cmd.to_owned()],
    };
    hc.test = Some(test);
    Ok(hc)
}

/// A Go duration (`1h30m`, `30s`, `500ms`, `1.5s`) in nanoseconds.
fn go_duration(s: &str) -> Option<u64> {
    if s == "0" {
        return Some(0);
    }
    let mut total: f64 = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * scale;
    }
    (total.is_finite() && total < 1.8e19).then_some(total as u64)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn step(line: usize, text: &str) -> Step {
        let (kw, args) = text.split_once(' ').unwrap_or((text, ""));
        Step {
            line,
            keyword: kw.to_owned(),
            args: args.to_owned(),
        }
    }

    fn base() -> ImageConfig {
        serde_json::from_value(json!({
            "architecture": "amd64", "os": "linux", "container": "abc",
            "config": {"Env": ["PATH=/usr/bin", "HOME=/root"], "Cmd": ["sh"], "OnBuild": ["RUN x"]},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:aaa"]},
            "history": [{"created_by": "base"}]
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The config as the native backend writes it.
    fn written(c: ImageConfig) -> Value {
        serde_json::to_value(c).unwrap_or_else(|e| panic!("{e}"))
    }

    fn run(lines: &[&str]) -> Result<(Value, Vec<CopyStep>), String> {
        let mut s = Stage::new(
            Some(&base()),
            &Platform::host(),
            &HashMap::from([("G".to_owned(), "global".to_owned())]),
            '\\',
            "1970-01-01T00:00:00Z".to_owned(),
        );
        let mut copies = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            if let Some(c) = s.apply(&step(i + 2, l), &BTreeMap::new())? {
                s.add_layer("sha256:bbb", c.created_by.clone());
                copies.push(c);
            }
        }
        Ok((
            written(s.finish(&BTreeMap::from([("l".to_owned(), "v".to_owned())]))),
            copies,
        ))
    }

    #[test]
    fn config_instructions_as_docker_writes_them() {
        let (c, _) = run(&[
            "ENV APP=/app PATH=$PATH:/app/bin",
            "ENV LEGACY some value",
            "LABEL a=b \"c d\"=e",
            "WORKDIR $APP",
            "WORKDIR sub/../data",
            "USER 1000:1000",
            "EXPOSE 80 53/udp 8000-8001",
            "VOLUME [\"/data\", \"/cache\"]",
            "STOPSIGNAL SIGINT",
            "SHELL [\"/bin/bash\", \"-c\"]",
            "CMD echo $HOME",
            "HEALTHCHECK --interval=30s --retries=3 CMD [\"check\", \"-q\"]",
            "ONBUILD COPY . /x",
        ])
        .expect("applies");
        let cfg = &c["config"];
        assert_eq!(
            cfg["Env"],
            json!([
                "PATH=/usr/bin:/app/bin",
                "HOME=/root",
                "APP=/app",
                "LEGACY=some value"
            ])
        );
        assert_eq!(cfg["Labels"], json!({"a": "b", "c d": "e", "l": "v"}));
        assert_eq!(cfg["WorkingDir"], json!("/app/data"));
        assert_eq!(cfg["User"], json!("1000:1000"));
        assert_eq!(
            cfg["ExposedPorts"],
            json!({"80/tcp": {}, "53/udp": {}, "8000/tcp": {}, "8001/tcp": {}})
        );
        assert_eq!(cfg["Volumes"], json!({"/data": {}, "/cache": {}}));
        assert_eq!(cfg["StopSignal"], json!("SIGINT"));
        assert_eq!(cfg["Cmd"], json!(["/bin/bash", "-c", "echo $HOME"]));
        assert_eq!(
            cfg["Healthcheck"],
            json!({"Test": ["CMD", "check", "-q"], "Interval": 30_000_000_000u64, "Retries": 3})
        );
        assert_eq!(cfg["OnBuild"], json!(["COPY . /x"]));
        assert!(c.get("container").is_none(), "legacy fields dropped");
        let history = c["history"].as_array().expect("history");
        assert_eq!(history.len(), 14);
        assert_eq!(
            history[1]["created_by"],
            json!("ENV APP=/app PATH=$PATH:/app/bin")
        );
        assert_eq!(history[1]["empty_layer"], json!(true));
        assert_eq!(c["rootfs"]["diff_ids"], json!(["sha256:aaa"]));
    }

    #[test]
    fn what_the_base_has_and_we_do_not_model_carries_over_unchanged() {
        let base: ImageConfig = serde_json::from_value(json!({
            "architecture": "amd64", "os": "linux", "os.version": "10.0", "os.features": ["f"],
            "author": "base author", "created": "2020-01-01T00:00:00Z", "docker_version": "1",
            "container_config": {"Hostname": "x"},
            "config": {
                "Hostname": "", "Image": "sha256:abc", "Cmd": null, "Volumes": null,
                "Healthcheck": {"Test": ["CMD", "x"], "Interval": 5, "X-Future": 1},
                "Shell": ["/bin/ash", "-c"], "ArgsEscaped": true, "x-odd": [1, {"a": null}]
            },
            "rootfs": {"type": "layers", "diff_ids": ["sha256:aaa"]},
            "history": [{"created_by": "base", "empty_layer": false, "x": 1}]
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let p = Platform::parse("linux/arm/v7").expect("platform");
        let s = Stage::new(Some(&base), &p, &HashMap::new(), '\\', "t".to_owned());
        let c = written(s.finish(&BTreeMap::new()));
        assert_eq!(
            c,
            json!({
                "architecture": "arm", "os": "linux", "variant": "v7",
                "os.version": "10.0", "os.features": ["f"], "created": "t",
                "config": {
                    "Hostname": "", "Image": "sha256:abc",
                    "Healthcheck": {"Test": ["CMD", "x"], "Interval": 5, "X-Future": 1},
                    "Shell": ["/bin/ash", "-c"], "ArgsEscaped": true, "x-odd": [1, {"a": null}]
                },
                "rootfs": {"type": "layers", "diff_ids": ["sha256:aaa"]},
                "history": [{"created_by": "base", "empty_layer": false, "x": 1}]
            }),
            "the platform fields, config, rootfs and history carry over; a base's null Cmd does not"
        );
        // A base without history, and no instruction: an empty history.
        let bare: ImageConfig = serde_json::from_str("{}").unwrap_or_else(|e| panic!("{e}"));
        let s = Stage::new(Some(&bare), &p, &HashMap::new(), '\\', "t".to_owned());
        assert_eq!(written(s.finish(&BTreeMap::new()))["history"], json!([]));
    }

    #[test]
    fn env_and_label_words_are_read_as_the_shell_lexer_reads_them() {
        let (c, _) = run(&[
            "ENV S='$HOME x' D=\"$HOME \\\"q\\\" \\n\" U=$HOME\\ y E=a\\$b",
            "ENV LEGACY \"quoted $HOME\"",
            "LABEL 'single'='${HOME}' mixed=pre'$HOME'\"$HOME\"post",
        ])
        .expect("applies");
        let env = c["config"]["Env"].as_array().expect("env").clone();
        for want in [
            "S=$HOME x",
            "D=/root \"q\" \\n",
            "U=/root y",
            "E=a$b",
            "LEGACY=quoted /root",
        ] {
            assert!(env.contains(&json!(want)), "{want} in {env:?}");
        }
        let labels = &c["config"]["Labels"];
        assert_eq!(labels["single"], json!("${HOME}"));
        assert_eq!(labels["mixed"], json!("pre$HOME/rootpost"));
    }

    #[test]
    fn entrypoint_resets_an_inherited_cmd_but_not_its_own() {
        let (c, _) = run(&["ENTRYPOINT [\"/app\"]"]).expect("ok");
        assert_eq!(c["config"]["Entrypoint"], json!(["/app"]));
        assert_eq!(
            c["config"].get("Cmd"),
            Some(&Value::Null),
            "written as null, as Docker writes it"
        );
        let (c, _) = run(&["CMD [\"--help\"]", "ENTRYPOINT /app run"]).expect("ok");
        assert_eq!(c["config"]["Cmd"], json!(["--help"]));
        assert_eq!(
            c["config"]["Entrypoint"],
            json!(["/bin/sh", "-c", "/app run"])
        );
        assert!(
            c["config"].get("OnBuild").is_none(),
            "base ONBUILD is not inherited"
        );
    }

    #[test]
    fn copy_destinations_follow_workdir_and_args() {
        let (c, copies) = run(&[
            "ARG DIR=srv",
            "ARG G",
            "WORKDIR /w",
            "COPY --chown=app --chmod=0640 a b ./",
            "COPY x $DIR/y",
            "ADD [\"t.tar\", \"/opt/$G/\"]",
            "COPY z .",
        ])
        .expect("ok");
        assert_eq!(copies[0].dest, "/w/");
        assert_eq!(copies[0].sources, ["a", "b"]);
        assert_eq!(copies[0].chown.as_deref(), Some("app"));
        assert_eq!(copies[0].chmod, Some(0o640));
        assert_eq!(copies[1].dest, "/w/srv/y");
        assert_eq!(copies[2].dest, "/opt/global/");
        assert!(copies[2].add);
        assert_eq!(copies[3].dest, "/w/");
        let diff_ids = c["rootfs"]["diff_ids"].as_array().expect("ids");
        assert_eq!(diff_ids.len(), 5);
        let last = c["history"].as_array().and_then(|h| h.last()).expect("h");
        assert!(last.get("empty_layer").is_none());
    }

    #[test]
    fn bad_instructions_are_errors_not_panics() {
        for bad in [
            "EXPOSE 99999",
            "EXPOSE 80/xyz",
            "SHELL /bin/bash",
            "HEALTHCHECK --interval=forever CMD x",
            "HEALTHCHECK CMD",
            "HEALTHCHECK --bogus=1 CMD x",
            "COPY --chmod=u+x a /b",
            "ENV =x",
            "ENV ONLYNAME",
            "VOLUME [\"\"]",
            "WORKDIR ${unterminated",
        ] {
            assert!(run(&[bad]).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn platform_args_name_the_platform_being_built() {
        let p = Platform::parse("linux/arm64/v8").expect("platform");
        let mut s = Stage::new(None, &p, &HashMap::new(), '\\', "t".to_owned());
        s.apply(&step(2, "ARG TARGETARCH TARGETPLATFORM"), &BTreeMap::new())
            .expect("arg");
        let copy = s
            .apply(
                &step(3, "COPY bin/app-${TARGETARCH} /usr/bin/app"),
                &BTreeMap::new(),
            )
            .expect("copy")
            .expect("a layer step");
        assert_eq!(copy.sources, ["bin/app-arm64"]);
        let label = s
            .apply(&step(4, "LABEL p=$TARGETPLATFORM"), &BTreeMap::new())
            .expect("label");
        assert!(label.is_none());
        let c = written(s.finish(&BTreeMap::new()));
        assert_eq!(c["config"]["Labels"]["p"], json!("linux/arm64/v8"));
    }

    #[test]
    fn a_global_platform_arg_gets_the_platform_and_arg_defaults_see_env() {
        // Regression: `ARG TARGETARCH` before FROM stored "" and won.
        let p = Platform::parse("linux/arm64").expect("platform");
        let globals = HashMap::from([("TARGETARCH".to_owned(), String::new())]);
        let mut s = Stage::new(Some(&base()), &p, &globals, '\\', "t".to_owned());
        s.apply(&step(2, "ARG TARGETARCH"), &BTreeMap::new())
            .expect("arg");
        s.apply(&step(3, "ARG H=$HOME/x"), &BTreeMap::new())
            .expect("arg");
        let copy = s
            .apply(&step(4, "COPY app-$TARGETARCH $H"), &BTreeMap::new())
            .expect("copy")
            .expect("layer");
        assert_eq!(copy.sources, ["app-arm64"]);
        assert_eq!(copy.dest, "/root/x");
        let scratch = Stage::new(None, &p, &HashMap::new(), '\\', "t".to_owned());
        let c = written(scratch.finish(&BTreeMap::new()));
        assert_eq!(
            c["config"]["Env"],
            json!(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
        );
    }

    #[test]
    fn scratch_gets_the_requested_platform() {
        let p = Platform::parse("linux/arm64/v8").expect("platform");
        let s = Stage::new(None, &p, &HashMap::new(), '\\', "t".to_owned());
        let c = written(s.finish(&BTreeMap::new()));
        assert_eq!(c["architecture"], json!("arm64"));
        assert_eq!(c["variant"], json!("v8"));
        assert_eq!(c["rootfs"], json!({"type": "layers", "diff_ids": []}));
        assert!(Platform::parse("linux").is_err());
        assert_eq!(go_duration("1m30s"), Some(90_000_000_000));
        assert_eq!(go_duration("500ms"), Some(500_000_000));
        assert_eq!(go_duration("1.5s"), Some(1_500_000_000));
        assert_eq!(go_duration("x"), None);
    }
}
