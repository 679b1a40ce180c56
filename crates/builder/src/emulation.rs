//! Whether a foreign platform's `RUN` can run here: the kernel runs a
//! binary of another architecture only through a registered `binfmt_misc`
//! handler (Debian's `qemu-user-static` with `binfmt-support` registers
//! `qemu-aarch64`, `qemu-arm`, ... under `/proc/sys/fs/binfmt_misc`). The
//! engines build each platform with `--platform`; without a handler the
//! first `RUN` of a foreign platform fails with an exec format error deep
//! in the build log, so rebased looks first and says what to install.

use std::path::{Path, PathBuf};

use rebased_core::oci::Platform;

/// Where the kernel lists its `binfmt_misc` handlers.
pub const BINFMT_MISC: &str = "/proc/sys/fs/binfmt_misc";

/// A platform whose binaries this host cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot build {platform}'s RUN steps on this {host} host: no binfmt_misc handler {handler} is enabled in {dir}; install qemu-user-static and binfmt-support (Debian: apt-get install qemu-user-static binfmt-support; update-binfmts --enable {handler})"
)]
pub struct MissingEmulator {
    /// The platform (`linux/arm64`).
    pub platform: String,
    /// The host's platform.
    pub host: String,
    /// The handler looked for (`qemu-aarch64`).
    pub handler: String,
    /// The directory looked in.
    pub dir: PathBuf,
}

/// The name QEMU (and so its `binfmt_misc` handler) gives a Go
/// architecture: `arm64` is `aarch64`, `amd64` is `x86_64`.
pub fn qemu_name(architecture: &str) -> &str {
    match architecture {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        "386" => "i386",
        "mips64le" => "mips64el",
        "mipsle" => "mipsel",
        "loong64" => "loongarch64",
        other => other,
    }
}

/// Whether `platform` runs here without emulation: the host's own
/// architecture (and 32-bit x86 on an amd64 host, 32-bit arm on an arm64
/// host, which their kernels run natively).
pub fn is_native(platform: &Platform, host: &Platform) -> bool {
    platform.os == host.os
        && (platform.architecture == host.architecture
            || matches!(
                (host.architecture.as_str(), platform.architecture.as_str()),
                ("amd64", "386") | ("arm64", "arm")
            ))
}

/// Whether `dir` holds an enabled handler `name` (its file's first line
/// is `enabled`).
fn enabled(dir: &Path, name: &str) -> bool {
    std::fs::read_to_string(dir.join(name))
        .is_ok_and(|text| text.lines().next().map(str::trim) == Some("enabled"))
}

/// The platforms of `platforms` (`os/arch[/variant]`) that are foreign to
/// `host` and have no enabled handler in `dir`, each with the reason.
/// Unparsable platforms are the config's to refuse, and skipped here.
pub fn missing(platforms: &[String], host: &Platform, dir: &Path) -> Vec<MissingEmulator> {
    platforms
        .iter()
        .filter_map(|p| {
            let platform = Platform::parse(p).ok()?;
            if is_native(&platform, host) {
                return None;
            }
            let handler = format!("qemu-{}", qemu_name(&platform.architecture));
            (!enabled(dir, &handler)).then(|| MissingEmulator {
                platform: p.clone(),
                host: host.to_string(),
                handler,
                dir: dir.to_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platforms(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_foreign_platform_needs_an_enabled_handler() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = Platform::parse("linux/amd64").expect("platform");
        let wanted = platforms(&["linux/amd64", "linux/386", "linux/arm64", "linux/arm/v7"]);
        let missing_now = |w: &[String]| -> Vec<String> {
            missing(w, &host, dir.path())
                .into_iter()
                .map(|m| m.platform)
                .collect()
        };
        assert_eq!(missing_now(&wanted), ["linux/arm64", "linux/arm/v7"]);
        let e = &missing(&wanted, &host, dir.path())[0];
        let text = e.to_string();
        assert!(
            text.contains("linux/arm64")
                && text.contains("qemu-aarch64")
                && text.contains("qemu-user-static"),
            "{text}"
        );
        std::fs::write(
            dir.path().join("qemu-aarch64"),
            "disabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\n",
        )
        .expect("write");
        assert_eq!(missing_now(&wanted), ["linux/arm64", "linux/arm/v7"]);
        std::fs::write(
            dir.path().join("qemu-aarch64"),
            "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("qemu-arm"), "enabled\n").expect("write");
        assert!(missing_now(&wanted).is_empty());
    }
}
