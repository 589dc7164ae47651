//! A logged-in identity at work: the REST client, the saved tokens (refreshed once when
//! the server refuses them or they have expired) and the resolution of `@user`, user id,
//! group and conversation arguments.

use std::{
    collections::HashSet,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use std::path::Path;

use natter_client::{
    Client, ClientError, ClientOptions, ConnectionError, ConversationId, Downloaded, HttpClient,
    HttpError, MediaError, MediaInfo, Session, Target, UploadOptions, UserId,
};

use crate::{
    config::{SavedSession, Store},
    error::CliError,
};

/// Refresh this long before the access token's expiry, so it does not lapse in flight.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The saved form of a fresh session from the server.
pub fn saved(server: &str, s: &Session, names: Option<&SavedSession>) -> SavedSession {
    let mut names = names.map(|n| n.names.clone()).unwrap_or_default();
    names.insert(s.user_id.get(), s.username.clone());
    SavedSession {
        server: server.to_owned(),
        user_id: s.user_id.get(),
        username: s.username.clone(),
        device_id: s.device_id.get(),
        access_token: s.access_token.clone(),
        refresh_token: s.refresh_token.clone(),
        access_expires_at_ms: now_ms().saturating_add(s.access_expires_in_s.saturating_mul(1000)),
        names,
    }
}

/// Options for the WebSocket client of one CLI command: one attempt per request, short
/// deadlines (a script wants an answer or an error, not a minute of retries).
pub fn client_options(auto_reconnect: bool) -> ClientOptions {
    ClientOptions {
        auto_reconnect,
        request_timeout: Duration::from_secs(10),
        send_deadline: Duration::from_secs(20),
        sync_timeout: Duration::from_secs(30),
        ..ClientOptions::default()
    }
}

/// The identity a command runs as.
pub struct Identity {
    pub http: HttpClient,
    pub saved: SavedSession,
    store: Store,
    /// Users the server could not name in this run (no such user, or it failed): not
    /// asked again.
    unnamed: HashSet<u64>,
}

impl Identity {
    /// Loads the saved login; `server` (from `--server`) overrides its URL.
    pub fn load(store: Store, server: Option<&str>) -> Result<Identity, CliError> {
        let saved = store.require()?;
        let http = HttpClient::new(server.unwrap_or(&saved.server))?;
        Ok(Identity {
            http,
            saved,
            store,
            unnamed: HashSet::new(),
        })
    }

    pub fn user_id(&self) -> UserId {
        UserId(self.saved.user_id)
    }

    /// A usable access token, refreshed first if it has (nearly) expired.
    pub async fn token(&mut self) -> Result<String, CliError> {
        let margin = u64::try_from(EXPIRY_MARGIN.as_millis()).unwrap_or(0);
        if now_ms().saturating_add(margin) >= self.saved.access_expires_at_ms {
            self.refresh().await?;
        }
        Ok(self.saved.access_token.clone())
    }

    /// Trades the refresh token for new tokens and saves them. Another run of the CLI with
    /// the same config directory may have refreshed already (which retired our refresh
    /// token): then its newer tokens are adopted instead.
    pub async fn refresh(&mut self) -> Result<(), CliError> {
        if let Some(on_disk) = self.store.load()?
            && on_disk.device_id == self.saved.device_id
            && on_disk.refresh_token != self.saved.refresh_token
            && on_disk.access_expires_at_ms > now_ms()
        {
            self.saved = on_disk;
            return Ok(());
        }
        let fresh = match self.http.refresh(&self.saved.refresh_token).await {
            Ok(s) => s,
            Err(HttpError::Api { status: 401, .. }) => {
                return Err(CliError::NotLoggedIn(
                    "the saved session has expired or was revoked; log in again".into(),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        let server = self.saved.server.clone();
        self.saved = saved(&server, &fresh, Some(&self.saved));
        self.store.save(&self.saved)
    }

    /// Saves the session as it is now (e.g. after learning a username).
    pub fn save(&self) -> Result<(), CliError> {
        self.store.save(&self.saved)
    }

    /// Connects this device's WebSocket, refreshing the token once if it is refused.
    pub async fn connect(&mut self, auto_reconnect: bool) -> Result<Client, CliError> {
        self.connect_with(client_options(auto_reconnect)).await
    }

    /// [`Identity::connect`] with other options (e.g. `auto_ack` off for a command that
    /// reads events but must not acknowledge the messages it does not show).
    pub async fn connect_with(&mut self, options: ClientOptions) -> Result<Client, CliError> {
        let ws = self.http.ws_url();
        let token = self.token().await?;
        match Client::connect(&ws, &token, options.clone()).await {
            Err(ClientError::Connection(ConnectionError::Rejected { status: 401, .. })) => {
                self.refresh().await?;
                Ok(Client::connect(&ws, &self.saved.access_token, options).await?)
            }
            other => Ok(other?),
        }
    }

    /// Uploads the file at `path`, refreshing the token once if it is refused.
    pub async fn upload(
        &mut self,
        path: &Path,
        opts: &UploadOptions,
    ) -> Result<MediaInfo, CliError> {
        let token = self.token().await?;
        match self.http.upload_media(&token, path, opts).await {
            Err(MediaError::Http(HttpError::Api { status: 401, .. })) => {
                self.refresh().await?;
                Ok(self
                    .http
                    .upload_media(&self.saved.access_token, path, opts)
                    .await?)
            }
            other => Ok(other?),
        }
    }

    /// Streams media `id` (of message `seq` of `conversation`) into `path`, refreshing
    /// the token once if it is refused.
    pub async fn download(
        &mut self,
        id: &str,
        conversation: &ConversationId,
        seq: u64,
        path: &Path,
    ) -> Result<Downloaded, CliError> {
        let conversation = conversation.to_string();
        let message = Some((conversation.as_str(), seq));
        let token = self.token().await?;
        match self.http.download_media_to(&token, id, message, path).await {
            Err(MediaError::Http(HttpError::Api { status: 401, .. })) => {
                self.refresh().await?;
                Ok(self
                    .http
                    .download_media_to(&self.saved.access_token, id, message, path)
                    .await?)
            }
            other => Ok(other?),
        }
    }

    /// The id of `username`, refreshing the token once if it is refused.
    pub async fn lookup(&mut self, username: &str) -> Result<UserId, CliError> {
        let token = self.token().await?;
        let id = match self.http.lookup_user(&token, username).await {
            Err(HttpError::Api { status: 401, .. }) => {
                self.refresh().await?;
                self.http
                    .lookup_user(&self.saved.access_token, username)
                    .await?
            }
            other => other?,
        };
        if self.saved.names.get(&id.get()).map(String::as_str) != Some(username) {
            self.saved.names.insert(id.get(), username.to_owned());
            self.save()?;
        }
        Ok(id)
    }

    /// Learns the usernames of `users` this identity does not know yet, from the server
    /// (`GET /v1/users/by-id/{id}`, refreshing the token once if it is refused), and saves
    /// them with the session like the names of `@user` lookups. Best effort: a user the
    /// server cannot name is left as an id (and not asked about again in this run).
    pub async fn learn_names(
        &mut self,
        users: impl IntoIterator<Item = u64>,
    ) -> Result<(), CliError> {
        let mut learnt = false;
        for user in users {
            if user == 0 || self.saved.names.contains_key(&user) || self.unnamed.contains(&user) {
                continue;
            }
            match self.username_of(user).await {
                Some(name) => {
                    self.saved.names.insert(user, name);
                    learnt = true;
                }
                None => {
                    self.unnamed.insert(user);
                }
            }
        }
        if learnt {
            self.save()?;
        }
        Ok(())
    }

    async fn username_of(&mut self, user: u64) -> Option<String> {
        let user = UserId::new(user).ok()?;
        let token = self.token().await.ok()?;
        match self.http.username_of(&token, user).await {
            Err(HttpError::Api { status: 401, .. }) => {
                self.refresh().await.ok()?;
                self.http
                    .username_of(&self.saved.access_token, user)
                    .await
                    .ok()
            }
            other => other.ok(),
        }
    }

    /// A user argument: `@username` (or a bare name) or a numeric user id.
    pub async fn user(&mut self, arg: &str) -> Result<UserId, CliError> {
        if let Some(name) = arg.strip_prefix('@') {
            return self.lookup(name).await;
        }
        match arg.parse::<u64>() {
            Ok(n) => UserId::new(n).map_err(|e| CliError::Usage(e.to_string())),
            Err(_) => self.lookup(arg).await,
        }
    }

    /// Where `send` goes: a user (`@name`, id) or a conversation (`d.…`, `g.…`).
    pub async fn target(&mut self, arg: &str) -> Result<Target, CliError> {
        if arg.starts_with("d.") || arg.starts_with("g.") {
            return conversation_id(arg).map(Target::Conversation);
        }
        Ok(Target::User(self.user(arg).await?))
    }

    /// A conversation argument: `d.…`, `g.…`, or a user (their one-to-one with us).
    pub async fn conversation(&mut self, arg: &str) -> Result<ConversationId, CliError> {
        match self.target(arg).await? {
            Target::Conversation(c) => Ok(c),
            Target::User(u) => ConversationId::direct(self.user_id(), u)
                .map_err(|e| CliError::Usage(format!("{arg}: {e}"))),
        }
    }

    /// The username of `user` if this identity knows it, else its id.
    pub fn name(&self, user: u64) -> String {
        self.saved
            .names
            .get(&user)
            .cloned()
            .unwrap_or_else(|| user.to_string())
    }

    pub fn known_name(&self, user: u64) -> Option<&str> {
        self.saved.names.get(&user).map(String::as_str)
    }
}

pub fn conversation_id(arg: &str) -> Result<ConversationId, CliError> {
    arg.parse()
        .map_err(|e| CliError::Usage(format!("{arg}: {e}")))
}

/// A group argument: its id or its conversation id `g.<id>`.
pub fn group_id(arg: &str) -> Result<u64, CliError> {
    let raw = arg.strip_prefix("g.").unwrap_or(arg);
    raw.parse::<u64>()
        .ok()
        .filter(|n| *n != 0)
        .ok_or_else(|| CliError::Usage(format!("{arg}: not a group (expected an id or g.<id>)")))
}
