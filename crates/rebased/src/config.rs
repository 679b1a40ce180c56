//! Reading the config file and Dockerfiles from disk (only the binary reads
//! files named by the user).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use rebased_core::config::{Config, ImageConfig, Repository};
use rebased_core::dockerfile::{BuildPlatforms, Dockerfile};
use rebased_core::oci::Platform;
use rebased_core::ImageRef;

/// Reads and validates the config; errors read `FILE:LINE:COLUMN: key K: why`.
pub fn load(path: &Path) -> Result<Config> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "config file {} does not exist (without --config, rebased reads {DEFAULT_CONFIG}): pass --config FILE",
            path.display()
        ),
        Err(e) => bail!("cannot read config {}: {e}", path.display()),
    };
    let located = |e: rebased_core::config::ConfigError| {
        let key = e.key.map(|k| format!("key {k}: ")).unwrap_or_default();
        anyhow!(
            "{}:{}:{}: {key}{}",
            path.display(),
            e.line,
            e.column,
            e.message
        )
    };
    let mut cfg = Config::parse(&text).map_err(located)?;
    // Relative paths in the file are relative to the file's directory.
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    cfg.resolve_paths(dir);
    // A notifier's secret files are read at load (and again by its task):
    // an unreadable one is refused here, by path, never by content.
    for (i, n) in cfg.notify.iter().enumerate() {
        for (key, file) in n.secret_files() {
            if let Err(e) = std::fs::read(file) {
                return Err(located(rebased_core::notify::notify_key_error(
                    &text,
                    i,
                    key,
                    format!("cannot read {}: {}", file.display(), e.kind()),
                )));
            }
        }
    }
    check_layouts(&cfg).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(cfg)
}

/// Two images cannot share an OCI layout, however its path is written; and
/// a layout path cannot hold `:` (engines take `oci:PATH:TAG`).
fn check_layouts(cfg: &Config) -> std::result::Result<(), String> {
    let mut seen: BTreeMap<std::path::PathBuf, &str> = BTreeMap::new();
    for image in &cfg.image {
        let Repository::OciLayout(p) = &image.repository else {
            continue;
        };
        let name = image.name.as_str();
        if p.to_string_lossy().contains(':') {
            return Err(format!(
                "image {name}: repository oci:{} has a ':' in its path",
                p.display()
            ));
        }
        let key = std::fs::canonicalize(p).unwrap_or_else(|_| {
            p.components()
                .fold(std::path::PathBuf::new(), |mut acc, c| {
                    match c {
                        std::path::Component::CurDir => {}
                        std::path::Component::ParentDir => {
                            acc.pop();
                        }
                        other => acc.push(other),
                    }
                    acc
                })
        });
        if let Some(first) = seen.insert(key, name) {
            return Err(format!(
                "image {name}: repository oci:{} is image {first}'s layout too: two images cannot publish to one layout",
                p.display()
            ));
        }
    }
    Ok(())
}

/// The key of `[signing]`, opened with its password file; `None` when
/// versions are not signed. The key is kept in memory only.
pub fn signer(cfg: &Config) -> Result<Option<rebased_sign::SigningKey>> {
    let Some(key_file) = &cfg.signing.key_file else {
        return Ok(None);
    };
    let password = cfg
        .signing
        .password_file
        .as_deref()
        .map(rebased_sign::Password::from_file)
        .transpose()?;
    Ok(Some(rebased_sign::SigningKey::load(
        key_file,
        password.as_ref(),
    )?))
}

/// A Dockerfile read and parsed, with its text.
pub struct ParsedDockerfile {
    /// The text as read.
    pub text: String,
    /// The model for the first platform built (the host's when none is
    /// named).
    pub model: Dockerfile,
    /// The model for each platform built, in order (BuildKit's platform
    /// `ARG`s may give each its own bases).
    pub per_platform: Vec<(String, Dockerfile)>,
}

impl ParsedDockerfile {
    /// The external bases of every platform, in order of first appearance,
    /// without duplicates.
    pub fn bases(&self) -> Vec<ImageRef> {
        let mut out = self.model.bases();
        for (_, m) in &self.per_platform {
            for b in m.bases() {
                if !out.contains(&b) {
                    out.push(b);
                }
            }
        }
        out
    }
}

/// The config file read without `--config`.
pub const DEFAULT_CONFIG: &str = "/etc/rebased/rebased.toml";

/// Reads and parses `path` with `build_args` once for each of `platforms`
/// (`os/arch[/variant]`; none: the host's); errors read `FILE:LINE: why`
/// (and the platform, for a file that only one platform's `ARG`s break).
pub fn read_dockerfile_for(
    path: &Path,
    build_args: &BTreeMap<String, String>,
    platforms: &[String],
) -> Result<ParsedDockerfile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read Dockerfile {}", path.display()))?;
    let mut per_platform = Vec::new();
    for p in platforms {
        let target = Platform::parse(p).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let model = Dockerfile::parse_for(&text, build_args, &BuildPlatforms::target(target))
            .map_err(|e| anyhow!("{}:{}: {} (for {p})", path.display(), e.line, e.reason))?;
        per_platform.push((p.clone(), model));
    }
    let model = match per_platform.first() {
        Some((_, m)) => m.clone(),
        None => Dockerfile::parse(&text, build_args)
            .map_err(|e| anyhow!("{}:{}: {}", path.display(), e.line, e.reason))?,
    };
    Ok(ParsedDockerfile {
        text,
        model,
        per_platform,
    })
}

/// Reads and parses `image`'s Dockerfile for its platforms; a context
/// directory that does not exist is said to be that (not an unreadable
/// Dockerfile). A git context's Dockerfile is in its checkout
/// (`Live::dockerfile_path`): an error here.
pub fn read_image_dockerfile(image: &ImageConfig) -> Result<ParsedDockerfile> {
    if let Some(context) = image.context.local() {
        match std::fs::metadata(context) {
            Ok(m) if !m.is_dir() => bail!(
                "image {}: context {} is not a directory",
                image.name,
                context.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "image {}: context directory {} does not exist",
                image.name,
                context.display()
            ),
            _ => {}
        }
    }
    read_dockerfile_for(
        &dockerfile_path(image)?,
        &image.build_args,
        &image.platforms,
    )
}

/// The external bases of a Dockerfile for `platforms` (none: the host's).
pub fn dockerfile_bases(
    path: &Path,
    build_args: &BTreeMap<String, String>,
    platforms: &[String],
) -> Result<Vec<ImageRef>> {
    Ok(read_dockerfile_for(path, build_args, platforms)?.bases())
}

/// The external bases of an image: those of each of its platforms.
pub fn image_bases(image: &ImageConfig) -> Result<Vec<ImageRef>> {
    Ok(read_image_dockerfile(image)?.bases())
}

/// The Dockerfile of an image with a local context (a git context's is
/// in its checkout: `Live::dockerfile_path`).
pub fn dockerfile_path(image: &ImageConfig) -> Result<std::path::PathBuf> {
    image.dockerfile_path().ok_or_else(|| {
        anyhow!(
            "image {}: context {} is not a local directory",
            image.name,
            image.context
        )
    })
}

/// The dependency graph of the config's images (an image built FROM another
/// managed image's repository depends on it). A cycle is an error naming
/// the images on it. Images whose Dockerfile cannot be read have no edges.
pub fn graph(cfg: &Config) -> Result<rebased_scheduler::graph::Graph> {
    let nodes: Vec<rebased_scheduler::graph::Node> = cfg
        .image
        .iter()
        .map(|i| rebased_scheduler::graph::Node {
            name: i.name.to_string(),
            repository: i.repository.to_string(),
            bases: image_bases(i)
                .map(|b| b.iter().map(ImageRef::name).collect())
                .unwrap_or_default(),
        })
        .collect();
    rebased_scheduler::graph::Graph::new(&nodes).map_err(|e| anyhow!("{e}"))
}

/// Reads the config and checks the image graph for cycles.
pub fn load_checked(path: &Path) -> Result<(Config, rebased_scheduler::graph::Graph)> {
    let cfg = load(path)?;
    // A key that cannot sign is refused now, never first at a publish.
    signer(&cfg).with_context(|| format!("{}: signing.key_file", path.display()))?;
    let graph = graph(&cfg).with_context(|| format!("{}", path.display()))?;
    Ok((cfg, graph))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_layout_per_image_however_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("rebased.toml");
        let table = |name: &str, repo: &str| {
            format!("[[image]]\nname = \"{name}\"\ncontext = \".\"\nrepository = \"{repo}\"\nversion = \"1.0.0\"\n")
        };
        std::fs::write(
            &file,
            format!(
                "{}{}",
                table("a", "oci:images/app"),
                table("b", "oci:./images/x/../app/")
            ),
        )
        .expect("write");
        let e = load(&file).expect_err("shared layout refused").to_string();
        assert!(
            e.contains("image b") && e.contains("image a's layout"),
            "{e}"
        );
        std::fs::write(&file, table("a", "oci:images/a:b")).expect("write");
        let e = load(&file).expect_err("colon refused").to_string();
        assert!(e.contains("':'"), "{e}");
        std::fs::write(
            &file,
            format!(
                "{}{}",
                table("a", "oci:images/a"),
                table("b", "oci:images/b")
            ),
        )
        .expect("write");
        assert!(load(&file).is_ok());
    }
}
