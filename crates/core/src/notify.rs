//! `[[notify]]`: who is told of the events of the log, and how. Checked
//! at load with the line and key at fault; the secrets (`url_file`,
//! `secret_file`, `password_file`) are only paths here: the binary reads
//! them, and no type of this module ever holds one.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::{located, ConfigError};
use crate::duration::ConfigDuration;

/// The event types a notifier may ask for (`events = [...]`).
pub const EVENT_TYPES: [&str; 10] = [
    "published",
    "failed",
    "failing",
    "recovered",
    "rolled_back",
    "resumed",
    "held",
    "base_error",
    "drift",
    "test",
];

/// One `[[notify]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Unique; used in the API, the CLI and the metrics.
    pub name: String,
    /// How the receiver is spoken to.
    pub kind: NotifyKind,
    /// The receiver's URL (webhook, chat kinds).
    #[serde(default)]
    pub url: Option<String>,
    /// A file holding the URL, when the URL is a secret (Slack's,
    /// Discord's, a Telegram bot's).
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// `webhook`: the HMAC-SHA256 key of `X-Rebased-Signature-256`.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// The event types sent (default: all).
    #[serde(default)]
    pub events: Vec<String>,
    /// The images whose events are sent (default: all; events of no image,
    /// a base's error, are sent unless this is set).
    #[serde(default)]
    pub images: Vec<String>,
    /// Each request's timeout.
    #[serde(default = "default_timeout")]
    pub timeout: ConfigDuration,
    /// `telegram`: the chat.
    #[serde(default)]
    pub chat_id: Option<String>,
    /// `email`: `smtp://host[:port]` (STARTTLS) or `smtps://host[:port]`.
    #[serde(default)]
    pub smtp: Option<String>,
    /// `email`: STARTTLS is required on `smtp://` unless this is false.
    #[serde(default = "default_true")]
    pub starttls: bool,
    /// `email`: the sender.
    #[serde(default)]
    pub from: Option<String>,
    /// `email`: the recipients.
    #[serde(default)]
    pub to: Vec<String>,
    /// `email`: the AUTH user.
    #[serde(default)]
    pub username: Option<String>,
    /// `email`: a file holding the AUTH password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// `email`: a CA (PEM) trusted for this server besides the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_timeout() -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_secs(10))
}

fn default_true() -> bool {
    true
}

/// `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyKind {
    /// One signed JSON document per event.
    Webhook,
    /// A Slack incoming webhook.
    Slack,
    /// A Discord webhook.
    Discord,
    /// A Teams workflow webhook (adaptive card).
    Teams,
    /// ntfy's publish API.
    Ntfy,
    /// Gotify's message API.
    Gotify,
    /// Telegram's `sendMessage`.
    Telegram,
    /// Email over SMTP.
    Email,
}

impl NotifyKind {
    /// The kind as the config writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Slack => "slack",
            Self::Discord => "discord",
            Self::Teams => "teams",
            Self::Ntfy => "ntfy",
            Self::Gotify => "gotify",
            Self::Telegram => "telegram",
            Self::Email => "email",
        }
    }

    /// Chat kinds and email send one digest message per batch of events;
    /// `webhook` one request per event.
    pub fn batches(self) -> bool {
        self != Self::Webhook
    }
}

impl NotifyConfig {
    /// True when this notifier wants event `kind` about `image`.
    pub fn wants(&self, kind: &str, image: Option<&str>) -> bool {
        let kind_ok = self.events.is_empty() || self.events.iter().any(|e| e == kind);
        let image_ok = match image {
            _ if self.images.is_empty() => true,
            Some(i) => self.images.iter().any(|x| x == i),
            None => false,
        };
        // A test is for whoever is tested, whatever the filters.
        kind == "test" || (kind_ok && image_ok)
    }

    /// The files named (the secrets and `ca_file`), with their keys.
    pub fn secret_files(&self) -> Vec<(&'static str, &PathBuf)> {
        [
            ("url_file", self.url_file.as_ref()),
            ("secret_file", self.secret_file.as_ref()),
            ("password_file", self.password_file.as_ref()),
            ("ca_file", self.ca_file.as_ref()),
        ]
        .into_iter()
        .filter_map(|(k, p)| p.map(|p| (k, p)))
        .collect()
    }
}

/// The error of key `key` of the `index`-th `[[notify]]` table in `text`:
/// the key's line when it is written there, else the table's header.
pub fn notify_key_error(text: &str, index: usize, key: &str, message: String) -> ConfigError {
    let mut offset = 0;
    let mut tables = 0;
    let mut inside = false;
    let mut header = 0;
    let mut found = None;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if t.starts_with('[') {
            let is_notify = t
                .strip_prefix("[[")
                .and_then(|r| r.split("]]").next())
                .is_some_and(|name| name.trim() == "notify");
            inside = is_notify && tables == index;
            if inside {
                header = offset;
            }
            if is_notify {
                tables += 1;
            }
        } else if inside && found.is_none() {
            if let Some((k, _)) = line.split_once('=') {
                if k.trim() == key {
                    found = Some(offset + (line.len() - line.trim_start().len()));
                }
            }
        }
        offset += line.len();
    }
    let mut e = located(text, found.unwrap_or(header), message);
    e.key = Some(format!("notify[{index}].{key}"));
    e
}

/// Checks every `[[notify]]` of a parsed config: unique names, known
/// event types, each kind's required keys, an `smtp` URL with a host.
pub fn validate(notify: &[NotifyConfig], text: &str) -> Result<(), ConfigError> {
    for (i, n) in notify.iter().enumerate() {
        let err = |key: &str, message: String| Err(notify_key_error(text, i, key, message));
        if n.name.is_empty()
            || !n
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return err(
                "name",
                format!(
                    "notifier name {:?}: use letters, digits, '-', '_' and '.'",
                    n.name
                ),
            );
        }
        if let Some(first) = notify[..i].iter().position(|o| o.name == n.name) {
            return err(
                "name",
                format!(
                    "notifier name {:?} is already used by notify[{first}]",
                    n.name
                ),
            );
        }
        if let Some(bad) = n.events.iter().find(|e| !EVENT_TYPES.contains(&e.as_str())) {
            return err(
                "events",
                format!(
                    "unknown event type {bad:?}: one of {}",
                    EVENT_TYPES.join(", ")
                ),
            );
        }
        if n.timeout.0.is_zero() {
            return err("timeout", "must be more than 0s".to_owned());
        }
        if n.kind == NotifyKind::Email {
            let Some(smtp) = &n.smtp else {
                return err(
                    "smtp",
                    "kind email needs smtp (smtp://HOST:587 or smtps://HOST:465)".to_owned(),
                );
            };
            if let Err(why) = smtp_host(smtp) {
                return err("smtp", why);
            }
            if n.from.as_deref().is_none_or(str::is_empty) {
                return err("from", "kind email needs from".to_owned());
            }
            if n.to.is_empty() {
                return err(
                    "to",
                    "kind email needs at least one address in to".to_owned(),
                );
            }
            if n.password_file.is_some() && n.username.is_none() {
                return err("password_file", "password_file needs username".to_owned());
            }
            for key in ["url", "url_file", "secret_file", "chat_id"] {
                let set = match key {
                    "url" => n.url.is_some(),
                    "url_file" => n.url_file.is_some(),
                    "secret_file" => n.secret_file.is_some(),
                    _ => n.chat_id.is_some(),
                };
                if set {
                    return err(key, format!("{key} is not a key of kind email"));
                }
            }
            continue;
        }
        match (&n.url, &n.url_file) {
            (None, None) => {
                return err(
                    "url",
                    format!("kind {} needs url or url_file", n.kind.as_str()),
                )
            }
            (Some(_), Some(_)) => {
                return err("url_file", "give url or url_file, not both".to_owned())
            }
            (Some(u), None) => {
                if let Err(why) = http_url(u) {
                    return err("url", why);
                }
            }
            (None, Some(_)) => {}
        }
        if n.kind == NotifyKind::Telegram && n.chat_id.as_deref().is_none_or(str::is_empty) {
            return err("chat_id", "kind telegram needs chat_id".to_owned());
        }
        if n.kind != NotifyKind::Telegram && n.chat_id.is_some() {
            return err("chat_id", "chat_id is a key of kind telegram".to_owned());
        }
        if n.kind != NotifyKind::Webhook && n.secret_file.is_some() {
            return err(
                "secret_file",
                "secret_file is a key of kind webhook".to_owned(),
            );
        }
        for (key, set) in [
            ("smtp", n.smtp.is_some()),
            ("from", n.from.is_some()),
            ("to", !n.to.is_empty()),
            ("username", n.username.is_some()),
            ("password_file", n.password_file.is_some()),
            ("ca_file", n.ca_file.is_some()),
        ] {
            if set {
                return err(key, format!("{key} is a key of kind email"));
            }
        }
    }
    Ok(())
}

/// An http(s) URL with a host; the error never repeats the URL (it may
/// hold a token).
pub fn http_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| "the URL must start with https:// or http://".to_owned())?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = host.rsplit('@').next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') {
        return Err("the URL has no host".to_owned());
    }
    Ok(())
}

/// The SMTP server of an `smtp` URL: implicit TLS, host, port (587 for
/// `smtp://`, 465 for `smtps://` when none is written).
pub fn smtp_host(url: &str) -> Result<(bool, String, u16), String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("smtps://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("smtp://") {
        (false, r)
    } else {
        return Err("the smtp URL must start with smtp:// (STARTTLS) or smtps:// (TLS)".to_owned());
    };
    let hostport = rest.trim_end_matches('/');
    if hostport.contains(['/', '@', '?']) {
        return Err("the smtp URL: write smtp://HOST[:PORT] (the user is `username`, the password `password_file`)".to_owned());
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => {
            let port = p
                .parse::<u16>()
                .map_err(|_| "the smtp URL: its port is not a number".to_owned())?;
            (h, port)
        }
        _ => (hostport, if tls { 465 } else { 587 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("the smtp URL has no host".to_owned());
    }
    Ok((tls, host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    const IMAGE: &str = "[[image]]\nname = \"web\"\ncontext = \"/srv/web\"\nrepository = \"127.0.0.1:5000/web\"\nversion = \"1.0.0\"\n";

    fn err(notify: &str) -> ConfigError {
        Config::parse(&format!("{IMAGE}{notify}")).expect_err("refused")
    }

    fn at(e: &ConfigError) -> (usize, Option<&str>) {
        (e.line, e.key.as_deref())
    }

    #[test]
    fn each_kind_parses_with_its_keys() {
        let cfg = Config::parse(&format!(
            "{IMAGE}
[[notify]]
name = \"ops\"
kind = \"webhook\"
url = \"https://hooks.example.com/rebased\"
secret_file = \"/etc/rebased/notify-secret\"
events = [\"published\", \"failing\"]
images = [\"web\"]

[[notify]]
name = \"chat\"
kind = \"telegram\"
url_file = \"/etc/rebased/telegram\"
chat_id = \"-100123\"

[[notify]]
name = \"mail\"
kind = \"email\"
smtp = \"smtp://mail.example.com:587\"
from = \"rebased@example.com\"
to = [\"ops@example.com\"]
username = \"rebased\"
password_file = \"/etc/rebased/smtp-password\"
"
        ))
        .expect("valid");
        assert_eq!(cfg.notify.len(), 3);
        let ops = &cfg.notify[0];
        assert!(ops.wants("published", Some("web")));
        assert!(!ops.wants("published", Some("api")));
        assert!(!ops.wants("held", Some("web")));
        assert!(
            !ops.wants("base_error", None),
            "images set: no image's events are not sent"
        );
        assert!(ops.wants("test", None));
        assert!(cfg.notify[1].wants("base_error", None));
        assert!(cfg.notify[2].starttls);
        assert_eq!(cfg.notify[2].timeout.0, std::time::Duration::from_secs(10));
    }

    #[test]
    fn bad_notifiers_are_refused_with_line_and_key() {
        let e = err("[[notify]]\nname = \"ops\"\nkind = \"pager\"\nurl = \"https://x\"\n");
        assert_eq!(at(&e), (8, Some("notify[0].kind")), "{e}");
        assert!(e.message.contains("unknown variant"), "{e}");

        let e = err("[[notify]]\nname = \"ops\"\nkind = \"slack\"\n");
        assert_eq!(at(&e), (6, Some("notify[0].url")), "{e}");
        assert!(e.message.contains("needs url or url_file"), "{e}");

        let e = err("[[notify]]\nname = \"a\"\nkind = \"slack\"\nurl = \"https://x\"\n[[notify]]\nname = \"b\"\nkind = \"telegram\"\nurl = \"https://api.telegram.org/botX\"\n");
        assert_eq!(at(&e), (10, Some("notify[1].chat_id")), "{e}");

        let e = err("[[notify]]\nname = \"m\"\nkind = \"email\"\nsmtp = \"smtp://:25\"\nfrom = \"a@b\"\nto = [\"c@d\"]\n");
        assert_eq!(at(&e), (9, Some("notify[0].smtp")), "{e}");
        assert!(e.message.contains("has no host"), "{e}");

        let e = err("[[notify]]\nname = \"m\"\nkind = \"email\"\nsmtp = \"mail.example.com\"\nfrom = \"a@b\"\nto = [\"c@d\"]\n");
        assert!(e.message.contains("smtp://"), "{e}");

        let e = err("[[notify]]\nname = \"a\"\nkind = \"slack\"\nurl = \"https://x\"\n[[notify]]\nname = \"a\"\nkind = \"slack\"\nurl = \"https://y\"\n");
        assert_eq!(at(&e), (11, Some("notify[1].name")), "{e}");

        let e = err("[[notify]]\nname = \"a\"\nkind = \"webhook\"\nurl = \"https://x\"\nevents = [\"published\", \"exploded\"]\n");
        assert_eq!(at(&e), (10, Some("notify[0].events")), "{e}");

        let e =
            err("[[notify]]\nname = \"a\"\nkind = \"webhook\"\nurl = \"https://x\"\nbogus = 1\n");
        assert_eq!(at(&e), (10, Some("notify[0].bogus")), "{e}");

        let e = err("[[notify]]\nname = \"a\"\nkind = \"slack\"\nurl = \"ftp://x\"\n");
        assert_eq!(at(&e), (9, Some("notify[0].url")), "{e}");
    }

    #[test]
    fn smtp_urls() {
        use super::smtp_host;
        assert_eq!(
            smtp_host("smtp://mail:2525"),
            Ok((false, "mail".to_owned(), 2525))
        );
        assert_eq!(
            smtp_host("smtps://mail"),
            Ok((true, "mail".to_owned(), 465))
        );
        assert_eq!(
            smtp_host("smtp://mail"),
            Ok((false, "mail".to_owned(), 587))
        );
        assert!(smtp_host("smtp://user:pw@mail").is_err());
    }
}
