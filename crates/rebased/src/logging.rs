//! Logging: `tracing-subscriber` as text, JSON or to the journal, with the
//! filter of `RUST_LOG` or `daemon.log`.

use rebased_core::config::{Config, LogFormat};

/// Installs the global subscriber for `cfg` (once; later calls do nothing).
pub fn init(cfg: &Config) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(&cfg.daemon.log).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let format = match cfg.daemon.log_format {
        LogFormat::Auto if stderr_is_journal() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Text,
        f => f,
    };
    let registry = tracing_subscriber::registry().with(filter);
    // Colours only for a terminal: a log file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let text = || {
        tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
    };
    let _ = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(j) => registry
                .with(j.with_syslog_identifier("rebased".to_owned()))
                .try_init(),
            Err(e) => {
                eprintln!("journald unavailable ({e}); logging text to stderr");
                registry.with(text()).try_init()
            }
        },
        _ => registry.with(text()).try_init(),
    };
}

/// True when systemd connected stderr to the journal: `JOURNAL_STREAM` is
/// `DEVICE:INODE` of that stream.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    journal_stream_matches(&stream, meta.dev(), meta.ino())
}

/// Parses `JOURNAL_STREAM` (`DEV:INO`) and compares.
fn journal_stream_matches(stream: &str, dev: u64, ino: u64) -> bool {
    match stream.split_once(':') {
        Some((d, i)) => d.trim().parse() == Ok(dev) && i.trim().parse() == Ok(ino),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_parsing() {
        assert!(journal_stream_matches("8:12345", 8, 12345));
        assert!(!journal_stream_matches("8:12345", 8, 1));
        assert!(!journal_stream_matches("garbage", 8, 12345));
        assert!(!journal_stream_matches("", 0, 0));
    }
}
