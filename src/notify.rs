//! Delivery of the notification outbox: a JSON webhook and, where configured, email
//! through SMTP. The outbox lives in the catalog (`app::notify` decides what goes in);
//! this module only carries messages, retried with back-off until delivered or given
//! up, so a receiver that is down for a while loses nothing.
//!
//! Secrets come from the environment, never from the file or the logs:
//! `CADANG_WEBHOOK_TOKEN` (sent as `Authorization: Bearer …`) and
//! `CADANG_SMTP_PASSWORD`.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;

use crate::app::{App, AppError, SecretString};
use crate::catalog::NotificationRecord;

/// How long a claimed notification is held against other daemons while it is sent.
const HOLD: TimeDelta = TimeDelta::minutes(2);

/// Most notifications sent in one pass.
const BATCH: usize = 50;

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// STARTTLS on the submission port (587), required.
    #[default]
    Starttls,
    /// TLS from the first byte (465).
    Tls,
    /// No encryption: only for a relay on the same host or network segment.
    None,
}

/// `[notify]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifySection {
    /// URL that receives each event as a JSON POST; none for no webhook.
    pub webhook_url: Option<String>,
    /// SMTP relay host; none for no email.
    pub smtp_host: Option<String>,
    /// SMTP port (default: 587, 465 with `tls`, 25 with `none`).
    pub smtp_port: Option<u16>,
    /// `starttls` (default), `tls` or `none`.
    pub smtp_security: SmtpSecurity,
    /// SMTP user name (password from `CADANG_SMTP_PASSWORD`).
    pub smtp_username: Option<String>,
    /// Sender address, such as `cadang <cadang@diskominfo.jatengprov.go.id>`.
    pub mail_from: Option<String>,
    /// Recipients.
    pub mail_to: Vec<String>,
    /// Seconds one delivery attempt may take.
    pub timeout_secs: u64,
    /// Attempts before a notification is given up (it stays in the log as `failed`).
    pub max_attempts: u32,
}

impl Default for NotifySection {
    fn default() -> Self {
        NotifySection {
            webhook_url: None,
            smtp_host: None,
            smtp_port: None,
            smtp_security: SmtpSecurity::default(),
            smtp_username: None,
            mail_from: None,
            mail_to: Vec::new(),
            timeout_secs: 10,
            max_attempts: 10,
        }
    }
}

struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
}

/// Sends notifications on the configured channels.
pub struct Notifier {
    http: reqwest::Client,
    webhook: Option<(reqwest::Url, Option<SecretString>)>,
    email: Option<Email>,
    max_attempts: u32,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("channels", &self.channels())
            .finish_non_exhaustive()
    }
}

impl Notifier {
    /// Builds the notifier of a `[notify]` section; `None` when no channel is set.
    /// `env` looks up the secrets (`CADANG_WEBHOOK_TOKEN`, `CADANG_SMTP_PASSWORD`).
    ///
    /// # Errors
    /// A message naming the setting at fault.
    pub fn new(
        section: &NotifySection,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Notifier>, String> {
        let timeout = Duration::from_secs(section.timeout_secs.max(1));
        let webhook = section
            .webhook_url
            .as_deref()
            .map(|url| {
                let parsed = reqwest::Url::parse(url)
                    .map_err(|error| format!("[notify] webhook_url: {error}"))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(
                        "[notify] webhook_url must be an http:// or https:// URL".to_owned()
                    );
                }
                Ok((parsed, env("CADANG_WEBHOOK_TOKEN").map(SecretString::new)))
            })
            .transpose()?;
        let email = match &section.smtp_host {
            None => None,
            Some(host) => {
                let from: Mailbox = section
                    .mail_from
                    .as_deref()
                    .ok_or("[notify] smtp_host needs mail_from")?
                    .parse()
                    .map_err(|error| format!("[notify] mail_from: {error}"))?;
                if section.mail_to.is_empty() {
                    return Err("[notify] smtp_host needs at least one mail_to address".into());
                }
                let to = section
                    .mail_to
                    .iter()
                    .map(|address| {
                        address
                            .parse::<Mailbox>()
                            .map_err(|error| format!("[notify] mail_to `{address}`: {error}"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let builder = match section.smtp_security {
                    SmtpSecurity::Starttls => {
                        AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
                    }
                    SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host),
                    SmtpSecurity::None => Ok(
                        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
                    ),
                }
                .map_err(|error| format!("[notify] smtp_host `{host}`: {error}"))?;
                let mut builder = builder.timeout(Some(timeout));
                if let Some(port) = section.smtp_port {
                    builder = builder.port(port);
                } else if section.smtp_security == SmtpSecurity::None {
                    builder = builder.port(25);
                }
                if let Some(user) = &section.smtp_username {
                    let password = env("CADANG_SMTP_PASSWORD").ok_or(
                        "[notify] smtp_username is set: give the password in CADANG_SMTP_PASSWORD",
                    )?;
                    builder = builder.credentials(Credentials::new(user.clone(), password));
                }
                Some(Email {
                    transport: builder.build(),
                    from,
                    to,
                })
            }
        };
        if webhook.is_none() && email.is_none() {
            return Ok(None);
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("cadang/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| format!("[notify] cannot build the HTTP client: {error}"))?;
        Ok(Some(Notifier {
            http,
            webhook,
            email,
            max_attempts: section.max_attempts.max(1),
        }))
    }

    /// The channels this notifier delivers on.
    pub fn channels(&self) -> Vec<String> {
        let mut channels = Vec::new();
        if self.webhook.is_some() {
            channels.push("webhook".to_owned());
        }
        if self.email.is_some() {
            channels.push("email".to_owned());
        }
        channels
    }

    /// Sends one notification.
    ///
    /// # Errors
    /// Why it was not delivered (no secret in it).
    pub async fn send(&self, notification: &NotificationRecord) -> Result<(), String> {
        match notification.channel.as_str() {
            "webhook" => {
                let Some((url, token)) = &self.webhook else {
                    return Err("no webhook is configured any more".into());
                };
                let mut request = self
                    .http
                    .post(url.clone())
                    .header("content-type", "application/json")
                    .header("x-cadang-event", &notification.kind)
                    .header("x-cadang-event-key", &notification.event_key)
                    .body(notification.body_json.clone());
                if let Some(token) = token {
                    request = request.bearer_auth(token.expose());
                }
                let response = request
                    .send()
                    .await
                    .map_err(|error| format!("webhook: {}", error.without_url()))?;
                if response.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("webhook answered {}", response.status()))
                }
            }
            "email" => {
                let Some(email) = &self.email else {
                    return Err("no SMTP relay is configured any more".into());
                };
                let body = serde_json::from_str::<serde_json::Value>(&notification.body_json)
                    .ok()
                    .and_then(|value| serde_json::to_string_pretty(&value).ok())
                    .unwrap_or_else(|| notification.body_json.clone());
                let mut message = Message::builder()
                    .from(email.from.clone())
                    .subject(&notification.subject);
                for to in &email.to {
                    message = message.to(to.clone());
                }
                let message = message
                    .body(format!(
                        "{}\n\nEvent {} ({}).\n\n{body}\n",
                        notification.subject, notification.event_key, notification.kind
                    ))
                    .map_err(|error| format!("cannot build the email: {error}"))?;
                email
                    .transport
                    .send(message)
                    .await
                    .map(|_| ())
                    .map_err(|error| format!("smtp: {error}"))
            }
            other => Err(format!("unknown channel `{other}`")),
        }
    }
}

/// Sends what is due in the outbox; returns how many were delivered.
///
/// # Errors
/// Catalog errors (delivery failures are recorded, not returned).
pub async fn deliver_due(
    app: &App,
    notifier: &Notifier,
    now: DateTime<Utc>,
) -> Result<usize, AppError> {
    let mut delivered = 0;
    for _ in 0..BATCH {
        let Some(notification) = app.claim_notification(HOLD, now).await? else {
            break;
        };
        let outcome = notifier.send(&notification).await;
        match &outcome {
            Ok(()) => {
                delivered += 1;
                tracing::info!(id = notification.id, channel = %notification.channel, event = %notification.event_key, "notification sent");
            }
            Err(error) => {
                tracing::warn!(id = notification.id, channel = %notification.channel, event = %notification.event_key, attempt = notification.attempts, %error, "notification not delivered");
            }
        }
        app.record_delivery(&notification, outcome, notifier.max_attempts, now)
            .await?;
    }
    Ok(delivered)
}
