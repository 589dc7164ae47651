//! Account commands: register, login (saves the session), logout, whoami.

use std::io::BufRead as _;

use natter_client::{HttpClient, HttpError};
use serde_json::json;

use crate::{
    Context, DEFAULT_SERVER,
    error::CliError,
    session::{Identity, saved},
};

/// Scripts pass the password here rather than on the command line (where `ps` shows it).
pub const PASSWORD_ENV: &str = "NATTER_PASSWORD";

fn password(from_stdin: bool) -> Result<String, CliError> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| CliError::io("reading the password from stdin", e))?;
        let pw = line.trim_end_matches(['\r', '\n']).to_owned();
        if pw.is_empty() {
            return Err(CliError::Usage("no password on stdin".into()));
        }
        return Ok(pw);
    }
    match std::env::var(PASSWORD_ENV) {
        Ok(pw) if !pw.is_empty() => Ok(pw),
        _ => Err(CliError::Usage(format!(
            "no password: pass --password-stdin or set {PASSWORD_ENV}"
        ))),
    }
}

/// The server for commands that work without a login: `--server`, else the saved
/// login's, else the default.
fn server(ctx: &Context) -> Result<String, CliError> {
    if let Some(s) = &ctx.server {
        return Ok(s.clone());
    }
    Ok(ctx
        .store
        .load()?
        .map(|s| s.server)
        .unwrap_or_else(|| DEFAULT_SERVER.to_owned()))
}

pub async fn register(ctx: &Context, username: &str, from_stdin: bool) -> Result<(), CliError> {
    let pw = password(from_stdin)?;
    let http = HttpClient::new(&server(ctx)?)?;
    let account = http.register(username, &pw).await?;
    ctx.print(
        || {
            format!(
                "registered {} (user {}); now run `natter-cli login {}`",
                account.username, account.user_id, account.username
            )
        },
        || json!({ "user_id": account.user_id.to_string(), "username": account.username }),
    );
    Ok(())
}

pub async fn login(
    ctx: &Context,
    username: &str,
    device: &str,
    from_stdin: bool,
) -> Result<(), CliError> {
    let pw = password(from_stdin)?;
    let server = server(ctx)?;
    let http = HttpClient::new(&server)?;
    let session = http.login(username, &pw, device).await?;
    // Keep the names learnt so far when the same user logs in again.
    let previous = ctx
        .store
        .load()
        .ok()
        .flatten()
        .filter(|p| p.user_id == session.user_id.get());
    let s = saved(
        http.base_url().as_str().trim_end_matches('/'),
        &session,
        previous.as_ref(),
    );
    ctx.store.save(&s)?;
    ctx.print(
        || {
            format!(
                "logged in as {} (user {}, device {}) at {}",
                s.username, s.user_id, s.device_id, s.server
            )
        },
        || whoami_json(&s),
    );
    Ok(())
}

fn whoami_json(s: &crate::config::SavedSession) -> serde_json::Value {
    json!({
        "server": s.server,
        "user_id": s.user_id.to_string(),
        "username": s.username,
        "device_id": s.device_id.to_string(),
    })
}

pub async fn logout(ctx: &Context) -> Result<(), CliError> {
    let mut id = Identity::load(ctx.store.clone(), ctx.server.as_deref())?;
    // A token the server refuses is already as good as logged out.
    let revoked = match id.token().await {
        Ok(token) => match id.http.logout(&token).await {
            Ok(()) | Err(HttpError::Api { status: 401, .. }) => Ok(()),
            Err(e) => Err(CliError::from(e)),
        },
        Err(CliError::NotLoggedIn(_)) => Ok(()),
        Err(e) => Err(e),
    };
    ctx.store.delete()?;
    match revoked {
        Ok(()) => {
            ctx.print(
                || format!("logged out {}", id.saved.username),
                || json!({ "logged_out": id.saved.username }),
            );
            Ok(())
        }
        // The local session is gone either way; say plainly that the server may still
        // accept the tokens until they expire.
        Err(e) => {
            let note =
                "the local session is forgotten, but its tokens stay valid until they expire";
            Err(match e {
                CliError::Unreachable(m) => CliError::Unreachable(format!("{m} ({note})")),
                other => CliError::Other(format!("{other} ({note})")),
            })
        }
    }
}

pub fn whoami(ctx: &Context) -> Result<(), CliError> {
    let s = ctx.store.require()?;
    ctx.print(
        || {
            format!(
                "{} (user {}, device {}) at {}",
                s.username, s.user_id, s.device_id, s.server
            )
        },
        || whoami_json(&s),
    );
    Ok(())
}
