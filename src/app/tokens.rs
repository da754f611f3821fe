//! Bearer tokens: issuing, authenticating, listing and revoking them.
//!
//! A token is `cdg_` followed by 64 hex digits of fresh randomness (256 bits). The catalog
//! keeps only a BLAKE3 hash keyed by a sub-key of the master key, so neither a copy of the
//! database nor its backups let anyone call the daemon, and a guessed hash cannot be
//! checked offline without the master key. The secret is returned once, to the person who
//! asked for it, and never logged or audited.

use chrono::{DateTime, TimeDelta, Utc};

use super::secrets::random_bytes;
use super::{App, AppError, SecretString, Work};
use crate::catalog::{Account, NewToken, TokenId, TokenRecord};
use crate::workflow::Role;

/// Context of the sub-key that hashes tokens.
pub(crate) const TOKEN_HASH_CONTEXT: &str = "cadang 2026 api token hash v1";

/// The prefix of every token, so a leaked one is recognisable by secret scanners.
const PREFIX: &str = "cdg_";

/// Longest label.
const MAX_LABEL: usize = 100;

/// A token just issued: its record and its secret, which exists nowhere else.
#[derive(Debug)]
pub struct IssuedToken {
    /// The stored record.
    pub record: TokenRecord,
    /// The bearer secret.
    pub secret: SecretString,
}

/// Who is calling: the account behind a valid token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The account (active).
    pub account: Account,
    /// The token used.
    pub token: TokenRecord,
}

impl Caller {
    /// Whether the account holds `role`.
    pub fn has(&self, role: Role) -> bool {
        self.account.roles.contains(&role)
    }

    /// The agency the caller is confined to: an account of an agency (SKPD) sees and acts
    /// only for that agency; the data center's staff (no agency) see all.
    pub fn confined_to(&self) -> Option<crate::catalog::AgencyId> {
        self.account.agency_id
    }
}

fn check_label(label: &str) -> Result<String, AppError> {
    let label = label.trim();
    if label.is_empty() || label.chars().count() > MAX_LABEL || label.chars().any(char::is_control)
    {
        return Err(AppError::invalid(format!(
            "a token needs a label of 1–{MAX_LABEL} printable characters, such as \"laptop kasi\""
        )));
    }
    Ok(label.to_owned())
}

impl App {
    fn token_hash(&self, secret: &str) -> String {
        blake3::keyed_hash(&self.inner.token_key, secret.as_bytes())
            .to_hex()
            .to_string()
    }

    /// Creates a token in `work` for `account`.
    pub(super) async fn issue_token(
        &self,
        work: &mut Work<'_>,
        account: &Account,
        label: &str,
        ttl: Option<TimeDelta>,
    ) -> Result<IssuedToken, AppError> {
        let label = check_label(label)?;
        let expires_at = match ttl {
            Some(ttl) if ttl <= TimeDelta::zero() => {
                return Err(AppError::invalid(
                    "a token's lifetime must be positive (or 0 for no expiry)",
                ));
            }
            Some(ttl) => Some(
                work.now
                    .checked_add_signed(ttl)
                    .ok_or_else(|| AppError::invalid("a token's lifetime is too long"))?,
            ),
            None => None,
        };
        let secret = format!("{PREFIX}{}", hex::encode(random_bytes::<32>()?));
        let record = work
            .tx
            .insert_token(
                &NewToken {
                    account_id: account.id,
                    token_hash: self.token_hash(&secret),
                    label,
                    created_by: work.actor_name.clone(),
                    expires_at,
                },
                work.now,
            )
            .await?;
        work.audit("token.create", "token", record.id).after = Some(serde_json::json!({
            "username": record.username,
            "label": record.label,
            "expires_at": record.expires_at,
        }));
        Ok(IssuedToken {
            record,
            secret: SecretString::new(secret),
        })
    }

    /// Creates a token for `for_user` (or the caller's own account), acting as
    /// `username`. Anyone may create tokens for themselves; only ADMIN for others.
    ///
    /// # Errors
    /// [`AppError::Forbidden`]; [`AppError::NotFound`] for an unknown account;
    /// [`AppError::InvalidInput`] for a bad label or lifetime; [`AppError::Conflict`] when
    /// the target account is disabled.
    pub async fn create_token(
        &self,
        username: &str,
        for_user: Option<&str>,
        label: &str,
        ttl: Option<TimeDelta>,
        now: DateTime<Utc>,
    ) -> Result<IssuedToken, AppError> {
        let mut work = self.work(username, now).await?;
        let target = match for_user.filter(|name| *name != username) {
            None => {
                let account = work.account()?.clone();
                work.role = account.roles.first().copied();
                account
            }
            Some(other) => {
                work.require(&[Role::Admin], "create tokens for other accounts")?;
                let account =
                    work.tx.account_by_username(other).await?.ok_or_else(|| {
                        AppError::NotFound(format!("there is no account `{other}`"))
                    })?;
                if !account.active {
                    return Err(AppError::Conflict(format!(
                        "account `{other}` is disabled: enable it before giving it a token"
                    )));
                }
                account
            }
        };
        let issued = self.issue_token(&mut work, &target, label, ttl).await?;
        work.commit().await?;
        Ok(issued)
    }

    /// Break glass, on the daemon's host: a new token for the administrator `username`
    /// when no administrator can sign in any more (the bootstrap token lost, every
    /// administrator's token expired or revoked). Whoever runs it can read the catalog
    /// and the master key already; the control plane never offers it. Only an active
    /// ADMIN account gets one — everyone else gets tokens from an administrator — and
    /// it is in the audit trail as `token.recover`, by `system:break-glass`.
    ///
    /// # Errors
    /// [`AppError::NotFound`] for an unknown account; [`AppError::Forbidden`] for an
    /// account that is not ADMIN; [`AppError::Conflict`] for a disabled one;
    /// [`AppError::InvalidInput`] for a bad label or lifetime.
    pub async fn recover_admin_token(
        &self,
        username: &str,
        label: &str,
        ttl: Option<TimeDelta>,
        now: DateTime<Utc>,
    ) -> Result<IssuedToken, AppError> {
        let mut work = self.system_work("system:break-glass", now).await?;
        let account = work
            .tx
            .account_by_username(username)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("there is no account `{username}`")))?;
        if !account.roles.contains(&Role::Admin) {
            return Err(AppError::forbidden(format!(
                "account `{username}` is not an administrator: break glass restores administration only; an administrator gives other accounts their tokens"
            )));
        }
        if !account.active {
            return Err(AppError::Conflict(format!(
                "account `{username}` is disabled: recover the token of an active administrator"
            )));
        }
        let issued = self.issue_token(&mut work, &account, label, ttl).await?;
        work.audit("token.recover", "token", issued.record.id).after = Some(serde_json::json!({
            "username": issued.record.username,
            "label": issued.record.label,
            "expires_at": issued.record.expires_at,
        }));
        work.commit().await?;
        Ok(issued)
    }

    /// Records in the audit trail that `peer` was locked out after `failures` failed
    /// authentications (by the control plane's throttle).
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn record_auth_lockout(
        &self,
        peer: std::net::IpAddr,
        failures: u32,
        lockout_secs: u64,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        let mut tx = self.catalog().begin().await?;
        let mut entry =
            super::audit::AuditEntry::new(now, "system", None, "auth.lockout", "peer", peer);
        entry.after = Some(serde_json::json!({
            "failures": failures,
            "lockout_secs": lockout_secs,
        }));
        super::audit::append(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The caller behind a bearer secret.
    ///
    /// # Errors
    /// [`AppError::Unauthenticated`] for a malformed, unknown, expired or revoked token or
    /// a disabled account (the message never repeats the token); catalog errors.
    pub async fn authenticate(&self, secret: &str, now: DateTime<Utc>) -> Result<Caller, AppError> {
        let well_formed = secret.len() == PREFIX.len() + 64
            && secret.starts_with(PREFIX)
            && secret[PREFIX.len()..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit());
        if !well_formed {
            return Err(AppError::Unauthenticated(
                "the bearer token is malformed (expected `cdg_` and 64 hex digits)".into(),
            ));
        }
        let hash = self.token_hash(secret);
        let mut tx = self.catalog().begin_read().await?;
        let token = tx
            .token_by_hash(&hash)
            .await?
            .ok_or_else(|| AppError::Unauthenticated("the bearer token is not known".into()))?;
        if token.revoked_at.is_some() {
            return Err(AppError::Unauthenticated(format!(
                "token {} was revoked",
                token.id
            )));
        }
        if !token.is_usable(now) {
            return Err(AppError::Unauthenticated(format!(
                "token {} has expired",
                token.id
            )));
        }
        let account = tx.account(token.account_id).await?;
        drop(tx);
        if !account.active {
            return Err(AppError::Unauthenticated(format!(
                "account `{}` is disabled",
                account.username
            )));
        }
        // Last use is kept to the minute: enough to find stale tokens, without a write on
        // every call.
        if token
            .last_used_at
            .is_none_or(|last| now - last >= TimeDelta::minutes(1))
        {
            let mut tx = self.catalog().begin().await?;
            tx.touch_token(token.id, now).await?;
            tx.commit().await?;
        }
        Ok(Caller { account, token })
    }

    /// Tokens (never their secrets). ADMIN may list any account's, or every account's
    /// with `for_user` `None`; others only their own.
    ///
    /// # Errors
    /// [`AppError::Forbidden`]; [`AppError::NotFound`].
    pub async fn list_tokens(
        &self,
        username: &str,
        for_user: Option<&str>,
        include_inactive: bool,
        now: DateTime<Utc>,
    ) -> Result<Vec<TokenRecord>, AppError> {
        let mut tx = self.catalog().begin_read().await?;
        let caller = super::load_account(&mut tx, username).await?;
        let is_admin = caller.roles.contains(&Role::Admin);
        let account = match for_user {
            None if is_admin => None,
            None => Some(caller.id),
            Some(name) if name == caller.username => Some(caller.id),
            Some(name) => {
                if !is_admin {
                    return Err(AppError::forbidden(
                        "only ADMIN may list other accounts' tokens",
                    ));
                }
                let account = tx
                    .account_by_username(name)
                    .await?
                    .ok_or_else(|| AppError::NotFound(format!("there is no account `{name}`")))?;
                Some(account.id)
            }
        };
        let mut tokens = tx.tokens(account).await?;
        if !include_inactive {
            tokens.retain(|token| token.is_usable(now));
        }
        Ok(tokens)
    }

    /// Revokes a token. ADMIN may revoke any; others only their own. Revoking a revoked
    /// token succeeds without a second audit row.
    ///
    /// # Errors
    /// [`AppError::Forbidden`]; [`AppError::NotFound`].
    pub async fn revoke_token(
        &self,
        username: &str,
        id: TokenId,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        let mut work = self.work(username, now).await?;
        let token = work.tx.token(id).await?;
        let account = work.account()?.clone();
        if token.account_id == account.id {
            work.role = account.roles.first().copied();
        } else {
            work.require(&[Role::Admin], "revoke other accounts' tokens")?;
        }
        if work.tx.revoke_token(id, now).await? {
            work.audit("token.revoke", "token", id).before = Some(serde_json::json!({
                "username": token.username,
                "label": token.label,
            }));
            work.commit().await?;
        }
        Ok(())
    }

    /// Every account. ADMIN only.
    ///
    /// # Errors
    /// [`AppError::Forbidden`].
    pub async fn accounts(&self, username: &str) -> Result<Vec<Account>, AppError> {
        let mut tx = self.catalog().begin_read().await?;
        let caller = super::load_account(&mut tx, username).await?;
        if !caller.roles.contains(&Role::Admin) {
            return Err(AppError::forbidden("only ADMIN may list accounts"));
        }
        Ok(tx.accounts().await?)
    }
}
