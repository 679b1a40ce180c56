//! Each kind's request body, in its receiver's documented format.
//!
//! - `webhook`: the event document itself (`application/json`).
//! - `slack`: an incoming webhook's `{"text": ...}` (`application/json`).
//! - `discord`: an execute-webhook `{"content": ...}` of at most 2000
//!   characters, mentions disabled (`application/json`).
//! - `teams`: a workflow webhook's message with one adaptive card
//!   attachment of `contentType` `application/vnd.microsoft.card.adaptive`
//!   (card 1.4), posted as `application/json`.
//! - `ntfy`: a publish: the message as the `text/plain` body of a POST to
//!   the topic's URL, the title in the `Title` header.
//! - `gotify`: `POST /message` with `{"title", "message", "priority"}`
//!   (`application/json`); the URL carries the application token.
//! - `telegram`: `sendMessage` on the bot API base (`.../bot<TOKEN>`) with
//!   `{"chat_id", "text"}` of at most 4096 characters (`application/json`).
//!
//! Every kind but `webhook` sends one digest message for a batch of events.

use rebased_api::EventView;
use rebased_core::notify::NotifyKind;
use serde_json::json;

use crate::Target;

/// A request ready to send.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// A path appended to the URL (`/sendMessage`).
    pub path: Option<String>,
}

/// One line about `e` for a person.
pub fn summary(e: &EventView) -> String {
    let image = e.image.as_deref().unwrap_or("rebased");
    let v = |v: &Option<rebased_core::Version>| v.map(|v| v.to_string()).unwrap_or_default();
    let detail = e.detail.as_deref().unwrap_or_default();
    match e.kind.as_str() {
        "published" => {
            let mut s = format!("{image} {} published", v(&e.version));
            if e.previous_version.is_some() {
                s += &format!(" (was {})", v(&e.previous_version));
            }
            if let Some(r) = &e.reason {
                let moved: Vec<String> = r
                    .bases
                    .iter()
                    .filter(|b| b.before.as_ref() != Some(&b.after))
                    .map(|b| {
                        let before = b
                            .before
                            .as_ref()
                            .map_or("none".to_owned(), |d| short(d.as_str()));
                        format!("{} {before} -> {}", b.reference, short(b.after.as_str()))
                    })
                    .collect();
                if !moved.is_empty() {
                    s += &format!(": {}", moved.join(", "));
                }
            }
            s
        }
        "failed" => match e.job {
            Some(j) => format!("{image}: job {j} failed: {detail}"),
            None => format!("{image}: a job failed: {detail}"),
        },
        "failing" => format!("{image} is failing: {detail}"),
        "recovered" => match e.version {
            Some(_) => format!("{image} recovered ({})", v(&e.version)),
            None => format!("{image} recovered"),
        },
        "rolled_back" => format!(
            "{image} rolled back from {} to {}",
            v(&e.previous_version),
            v(&e.version)
        ),
        "held" => format!("{image} held: {detail}"),
        "resumed" => format!("{image} resumed"),
        "base_error" => format!("a base cannot be checked: {detail}"),
        "drift" => format!("{image} {}: drift: {detail}", v(&e.version)),
        "test" => format!("rebased: {detail}"),
        other => format!("{image}: {other}"),
    }
}

/// `sha256:0123456789ab` of a digest.
fn short(d: &str) -> String {
    d.get(..19).unwrap_or(d).to_owned()
}

/// The title of a digest of `events`.
pub(crate) fn title(events: &[EventView]) -> String {
    match events {
        [one] => summary(one),
        many => format!("rebased: {} events", many.len()),
    }
}

/// The text of a digest: one line per event.
pub(crate) fn text(events: &[EventView]) -> String {
    match events {
        [one] => summary(one),
        many => many
            .iter()
            .map(|e| format!("- {}", summary(e)))
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// At most `n` characters of `s`, an ellipsis when cut.
fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn json_body(v: serde_json::Value) -> Vec<u8> {
    // A Value always serialises.
    serde_json::to_vec(&v).unwrap_or_default()
}

/// The request `target` sends for `events`.
pub fn render(target: &Target, events: &[EventView]) -> Rendered {
    let plain = |content_type, body| Rendered {
        content_type,
        body,
        headers: Vec::new(),
        path: None,
    };
    match target.kind {
        NotifyKind::Webhook => plain(
            "application/json",
            events
                .first()
                .and_then(|e| serde_json::to_vec(e).ok())
                .unwrap_or_default(),
        ),
        NotifyKind::Slack => plain(
            "application/json",
            json_body(json!({ "text": text(events) })),
        ),
        NotifyKind::Discord => plain(
            "application/json",
            json_body(json!({
                "content": cut(&text(events), 2000),
                "allowed_mentions": { "parse": [] },
            })),
        ),
        NotifyKind::Teams => {
            let mut body = vec![json!({
                "type": "TextBlock",
                "size": "Medium",
                "weight": "Bolder",
                "text": title(events),
                "wrap": true,
            })];
            if events.len() > 1 {
                body.extend(events.iter().map(|e| {
                    json!({ "type": "TextBlock", "text": format!("- {}", summary(e)), "wrap": true })
                }));
            }
            plain(
                "application/json",
                json_body(json!({
                    "type": "message",
                    "attachments": [{
                        "contentType": "application/vnd.microsoft.card.adaptive",
                        "contentUrl": null,
                        "content": {
                            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                            "type": "AdaptiveCard",
                            "version": "1.4",
                            "body": body,
                        },
                    }],
                })),
            )
        }
        NotifyKind::Ntfy => Rendered {
            content_type: "text/plain; charset=utf-8",
            body: text(events).into_bytes(),
            headers: vec![
                ("Title", ascii(&cut(&title(events), 200))),
                ("Tags", "package".to_owned()),
            ],
            path: None,
        },
        NotifyKind::Gotify => plain(
            "application/json",
            json_body(json!({
                "title": title(events),
                "message": text(events),
                "priority": 5,
            })),
        ),
        NotifyKind::Telegram => Rendered {
            content_type: "application/json",
            body: json_body(json!({
                "chat_id": target.chat_id.clone().unwrap_or_default(),
                "text": cut(&text(events), 4096),
                "disable_web_page_preview": true,
            })),
            headers: Vec::new(),
            path: Some("/sendMessage".to_owned()),
        },
        NotifyKind::Email => plain("text/plain; charset=utf-8", text(events).into_bytes()),
    }
}

/// A header value: non-ASCII replaced (ntfy reads headers as ASCII).
fn ascii(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .collect()
}
