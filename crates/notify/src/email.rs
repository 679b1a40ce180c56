//! The `email` kind: one multipart message (plain text and HTML) per
//! batch of events, over SMTP with lettre: `smtps://` is TLS from the
//! first byte, `smtp://` requires STARTTLS unless `starttls = false`, AUTH
//! when a user is set.

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use rebased_api::EventView;

use crate::render::{summary, text, title};
use crate::{DeliveryError, Email, Target};

/// Sends `events` as one message.
pub async fn send(
    target: &Target,
    email: &Email,
    events: &[EventView],
) -> Result<(), DeliveryError> {
    let name = &target.name;
    let setup = |why: String| DeliveryError::Setup {
        name: name.clone(),
        why,
    };
    let mail = |e: lettre::transport::smtp::Error| DeliveryError::Mail {
        name: name.clone(),
        cause: e.to_string(),
    };
    let tls = || {
        let mut p = TlsParameters::builder(email.host.clone());
        if let Some(pem) = &email.ca_pem {
            let cert = Certificate::from_pem(pem).map_err(|e| setup(format!("ca_file: {e}")))?;
            p = p.add_root_certificate(cert);
        }
        p.build_rustls().map_err(|e| setup(format!("TLS: {e}")))
    };
    let tls = if email.implicit_tls {
        Tls::Wrapper(tls()?)
    } else if email.starttls {
        Tls::Required(tls()?)
    } else {
        Tls::None
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(email.host.clone())
        .port(email.port)
        .tls(tls)
        .timeout(Some(target.timeout));
    if let Some((user, password)) = &email.auth {
        builder = builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
    }
    let mailer = builder.build();
    let from: Mailbox = email
        .from
        .parse()
        .map_err(|e| setup(format!("from {:?}: {e}", email.from)))?;
    let mut message = Message::builder().from(from).subject(title(events));
    for to in &email.to {
        let to: Mailbox = to.parse().map_err(|e| setup(format!("to {to:?}: {e}")))?;
        message = message.to(to);
    }
    let message = message
        .multipart(
            MultiPart::alternative()
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .body(text(events)),
                )
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_HTML)
                        .body(html(events)),
                ),
        )
        .map_err(|e| setup(format!("the message: {e}")))?;
    mailer.send(message).await.map_err(mail)?;
    Ok(())
}

/// The HTML part: a heading and one item per event, each with its link to
/// the job's log when it has one (relative to the API).
fn html(events: &[EventView]) -> String {
    let mut out = format!(
        "<!DOCTYPE html>\n<html><body>\n<h2>{}</h2>\n<ul>\n",
        escape(&title(events))
    );
    for e in events {
        out += &format!("<li>{}", escape(&summary(e)));
        if let Some(url) = &e.log_url {
            out += &format!(" (<code>{}</code>)", escape(url));
        }
        out += "</li>\n";
    }
    out += "</ul>\n</body></html>\n";
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
