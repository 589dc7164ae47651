//! The state of `natter-cli chat`, as a pure state machine: [`App::on_event`] takes a key
//! press, a server event, a tick or the result of an earlier [`Action`], updates the state
//! and says what the I/O loop (`tui.rs`) should do next. Nothing here touches the
//! terminal, the network or the clock, so every behaviour is unit-tested below.
//!
//! Besides messages it keeps what the header and footer of a conversation show: the
//! peer's presence in a one-to-one conversation (subscribed to when it is first shown)
//! and who is typing or recording, until the `expires_in_ms` of their last indicator.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use natter_client::{
    ConversationId, Event, UserId,
    v1::{self, MessageKind, ReceiptKind},
};

use crate::render::{self, Names};

/// How long a typing indicator stays without a refresh from its sender, when the
/// server does not say (`TypingEvent.expires_in_ms` 0).
pub const TYPING_TTL_MS: u64 = 5_000;
/// After a presence subscription failed, ask again no sooner than this.
pub const PRESENCE_RETRY_MS: u64 = 30_000;
/// How often we tell the other side we are still typing.
pub const TYPING_RESEND_MS: u64 = 3_000;
/// Messages per history page.
pub const HISTORY_PAGE: u32 = 50;
/// Lines PageUp / PageDown scroll.
const PAGE_LINES: usize = 10;

/// Something the state machine reacts to.
#[derive(Debug, Clone)]
pub enum AppEvent {
    Key(KeyEvent),
    /// An event of the WebSocket client.
    Server(Event),
    /// The clock, a few times a second (ms since the epoch).
    Tick {
        now_ms: u64,
    },
    Resize {
        width: u16,
        height: u16,
    },
    /// The server acknowledged the message sent as `local_id`.
    Acked {
        local_id: u64,
        ack: v1::Ack,
    },
    /// The file of `local_id` is uploaded: what its line reads as now.
    Uploaded {
        local_id: u64,
        text: String,
    },
    /// Sending `local_id` failed for good.
    SendFailed {
        local_id: u64,
        error: String,
    },
    /// A page of history (oldest first) for `conversation`.
    History {
        conversation: ConversationId,
        messages: Vec<v1::Message>,
        more: bool,
    },
    /// A conversation to show (from `/new`, `/group`, or the start-up group list); selected
    /// when `select` is set.
    Opened {
        conversation: ConversationId,
        /// `None`: keep what is known (the peer's name, or the group's from its events).
        title: Option<String>,
        select: bool,
    },
    /// A user name learnt from a lookup.
    Name {
        user: u64,
        name: String,
    },
    /// Subscribing to the presence of `users` failed (shown on the status line; asked
    /// again after [`PRESENCE_RETRY_MS`] when their conversation is shown).
    PresenceFailed {
        users: Vec<u64>,
        error: String,
    },
    /// A failed action, shown on the status line.
    Error(String),
}

/// What the I/O loop should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send {
        conversation: ConversationId,
        text: String,
        local_id: u64,
    },
    /// `/send-file PATH`: upload the file, then send it as a media message.
    SendFile {
        conversation: ConversationId,
        path: String,
        local_id: u64,
    },
    Typing {
        conversation: ConversationId,
        active: bool,
    },
    MarkRead {
        conversation: ConversationId,
        up_to: u64,
    },
    /// A page older than `before` (0: the newest).
    LoadHistory {
        conversation: ConversationId,
        before: u64,
    },
    /// `/new @user`: find the user and open the one-to-one conversation.
    StartDirect {
        username: String,
    },
    /// `/group NAME @a @b`.
    CreateGroup {
        name: String,
        members: Vec<String>,
    },
    /// Start getting these users' presence (the client renews it by itself); the
    /// snapshot comes back as `Event::Presence` events.
    SubscribePresence {
        users: Vec<u64>,
    },
    Quit,
}

/// Someone is typing or recording, until `until_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Indicator {
    pub until_ms: u64,
    pub state: v1::ChatState,
}

/// Where one of our own messages is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tick {
    /// Not acknowledged yet.
    Pending,
    /// Refused or timed out.
    Failed,
    /// Stored by the server (✓).
    Sent,
    /// On the other user's device (✓✓).
    Delivered,
    /// Read by the other user (blue ✓✓).
    Read,
}

/// One line of the chat pane, before wrapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// 0 while pending.
    pub seq: u64,
    pub sender: u64,
    pub created_at_ms: u64,
    pub text: String,
    pub system: bool,
    /// Set while our message waits for its Ack (or failed).
    pub local_id: Option<u64>,
    pub failed: bool,
}

/// What the chat pane shows, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatLine<'a> {
    /// A new day begins: "Mon 30 Nov 2026".
    Day(String),
    Message(&'a ChatMessage),
}

#[derive(Debug, Clone)]
pub struct Conversation {
    pub id: ConversationId,
    pub title: String,
    /// Stored messages by seq.
    pub messages: BTreeMap<u64, ChatMessage>,
    /// Ours, waiting for their Ack, in sending order.
    pub pending: Vec<ChatMessage>,
    pub unread: u32,
    /// The other user's cursors (one-to-one conversations only).
    pub peer_delivered: u64,
    pub peer_read: u64,
    /// Who is typing or recording, and until when.
    pub typing: BTreeMap<u64, Indicator>,
    /// Older messages exist on the server.
    pub more: bool,
    /// The oldest seq loaded, withheld placeholders included (which are not shown):
    /// where the next older page starts. 0: none yet.
    pub oldest_loaded: u64,
    pub loading: bool,
    /// Lines scrolled up from the bottom.
    pub scroll: usize,
    /// The newest seq we told the server we read.
    pub read_sent: u64,
}

impl Conversation {
    fn new(id: ConversationId, title: String) -> Self {
        Conversation {
            id,
            title,
            messages: BTreeMap::new(),
            pending: Vec::new(),
            unread: 0,
            peer_delivered: 0,
            peer_read: 0,
            typing: BTreeMap::new(),
            more: true,
            oldest_loaded: 0,
            loading: false,
            scroll: 0,
            read_sent: 0,
        }
    }

    pub fn is_group(&self) -> bool {
        self.id.group_id().is_some()
    }

    /// The other user of a one-to-one conversation (`None`: a group, or a note to self).
    pub fn peer(&self, me: u64) -> Option<u64> {
        let [a, b] = self.id.direct_members()?;
        let peer = if a.get() == me { b.get() } else { a.get() };
        (peer != me).then_some(peer)
    }

    /// The newest message, pending ones included.
    pub fn last(&self) -> Option<&ChatMessage> {
        self.pending
            .last()
            .or_else(|| self.messages.values().next_back())
    }

    /// The oldest seq known here (shown, or a withheld placeholder): the next older
    /// history page ends before it. 0: nothing loaded.
    pub fn oldest_seq(&self) -> u64 {
        let shown = self.messages.keys().next().copied().unwrap_or(0);
        match (self.oldest_loaded, shown) {
            (0, s) => s,
            (o, 0) => o,
            (o, s) => o.min(s),
        }
    }

    fn last_seq(&self) -> u64 {
        self.messages.keys().next_back().copied().unwrap_or(0)
    }

    fn activity(&self) -> u64 {
        self.last().map(|m| m.created_at_ms).unwrap_or(0)
    }

    /// The tick of one of our messages. Groups show a single tick once stored: per-member
    /// receipts would need a read-by request per message.
    pub fn tick(&self, m: &ChatMessage) -> Tick {
        if m.failed {
            Tick::Failed
        } else if m.seq == 0 {
            Tick::Pending
        } else if self.is_group() {
            Tick::Sent
        } else if m.seq <= self.peer_read {
            Tick::Read
        } else if m.seq <= self.peer_delivered {
            Tick::Delivered
        } else {
            Tick::Sent
        }
    }

    /// Messages in order with a day separator before the first message of every day.
    pub fn lines(&self) -> Vec<ChatLine<'_>> {
        let mut out = Vec::new();
        let mut day = None;
        for m in self.messages.values().chain(self.pending.iter()) {
            let d = m.created_at_ms / 86_400_000;
            if day != Some(d) {
                out.push(ChatLine::Day(day_label(m.created_at_ms)));
                day = Some(d);
            }
            out.push(ChatLine::Message(m));
        }
        out
    }
}

/// The whole state of the chat screen.
#[derive(Debug, Clone)]
pub struct App {
    pub me: u64,
    pub my_name: String,
    pub names: BTreeMap<u64, String>,
    /// Ordered by last activity, newest first.
    pub conversations: Vec<Conversation>,
    pub selected: Option<ConversationId>,
    pub input: String,
    pub status: String,
    pub connected: bool,
    pub now_ms: u64,
    pub size: (u16, u16),
    /// Ticks as text ("sent", "dlvd", "read") for terminals without ✓.
    pub ascii: bool,
    next_local_id: u64,
    /// When we last sent Typing(active), per conversation.
    typing_sent: HashMap<ConversationId, u64>,
    /// The latest presence of users, as far as we may see it.
    pub presence: HashMap<u64, v1::UserPresence>,
    /// Users whose presence we subscribed to (or are subscribing to).
    presence_subscribed: BTreeSet<u64>,
    /// Users whose subscription failed: not asked again before this time (ms).
    presence_retry_at: HashMap<u64, u64>,
}

impl Names for App {
    fn name(&self, user: u64) -> String {
        self.user_name(user)
    }
    fn known(&self, user: u64) -> Option<String> {
        self.names.get(&user).cloned()
    }
}

impl App {
    pub fn new(me: u64, my_name: &str, names: BTreeMap<u64, String>, now_ms: u64) -> App {
        App {
            me,
            my_name: my_name.to_owned(),
            names,
            conversations: Vec::new(),
            selected: None,
            input: String::new(),
            status: "connecting…".into(),
            connected: false,
            now_ms,
            size: (80, 24),
            ascii: false,
            next_local_id: 1,
            typing_sent: HashMap::new(),
            presence: HashMap::new(),
            presence_subscribed: BTreeSet::new(),
            presence_retry_at: HashMap::new(),
        }
    }

    pub fn user_name(&self, user: u64) -> String {
        if user == self.me {
            return "you".into();
        }
        self.names
            .get(&user)
            .cloned()
            .unwrap_or_else(|| format!("user {user}"))
    }

    fn default_title(&self, id: &ConversationId) -> String {
        match id.direct_members() {
            Some([a, b]) => {
                let peer = if a.get() == self.me { b } else { a };
                self.user_name(peer.get())
            }
            None => id.to_string(),
        }
    }

    pub fn conversation(&self, id: &ConversationId) -> Option<&Conversation> {
        self.conversations.iter().find(|c| &c.id == id)
    }

    fn index(&self, id: &ConversationId) -> Option<usize> {
        self.conversations.iter().position(|c| &c.id == id)
    }

    pub fn selected_conversation(&self) -> Option<&Conversation> {
        self.selected.as_ref().and_then(|s| self.conversation(s))
    }

    /// The conversation, created (with its first history page asked for) if new.
    fn ensure(&mut self, id: &ConversationId, actions: &mut Vec<Action>) -> usize {
        if let Some(i) = self.index(id) {
            return i;
        }
        let title = self.default_title(id);
        let mut c = Conversation::new(id.clone(), title);
        c.loading = true;
        self.conversations.push(c);
        actions.push(Action::LoadHistory {
            conversation: id.clone(),
            before: 0,
        });
        if self.selected.is_none() {
            self.selected = Some(id.clone());
        }
        self.conversations.len() - 1
    }

    fn sort(&mut self) {
        self.conversations
            .sort_by_key(|c| std::cmp::Reverse(c.activity()));
    }

    pub fn on_event(&mut self, event: AppEvent) -> Vec<Action> {
        let mut actions = Vec::new();
        match event {
            AppEvent::Key(key) => self.on_key(key, &mut actions),
            AppEvent::Server(ev) => self.on_server(ev, &mut actions),
            AppEvent::Tick { now_ms } => {
                self.now_ms = now_ms;
                for c in &mut self.conversations {
                    c.typing.retain(|_, t| t.until_ms > now_ms);
                }
            }
            AppEvent::Resize { width, height } => self.size = (width, height),
            AppEvent::Acked { local_id, ack } => self.on_ack(local_id, &ack),
            AppEvent::Uploaded { local_id, text } => {
                for c in &mut self.conversations {
                    for m in &mut c.pending {
                        if m.local_id == Some(local_id) {
                            m.text.clone_from(&text);
                        }
                    }
                }
            }
            AppEvent::SendFailed { local_id, error } => {
                for c in &mut self.conversations {
                    for m in &mut c.pending {
                        if m.local_id == Some(local_id) {
                            m.failed = true;
                        }
                    }
                }
                self.status = format!("not sent: {error}");
            }
            AppEvent::History {
                conversation,
                messages,
                more,
            } => {
                let i = self.ensure(&conversation, &mut actions);
                actions.retain(|a| !matches!(a, Action::LoadHistory { conversation: c, .. } if *c == conversation));
                let c = &mut self.conversations[i];
                c.loading = false;
                c.more = more;
                if let Some(oldest) = messages.iter().map(|m| m.seq).filter(|s| *s > 0).min() {
                    c.oldest_loaded = match c.oldest_loaded {
                        0 => oldest,
                        o => o.min(oldest),
                    };
                }
                // Withheld placeholders (sent while we blocked their sender) show nothing.
                for m in messages.into_iter().filter(|m| !m.withheld) {
                    let cm = self.chat_message(&m);
                    self.learn_group_title(&conversation, &m);
                    self.conversations[i].messages.insert(m.seq, cm);
                }
                self.sort();
            }
            AppEvent::Opened {
                conversation,
                title,
                select,
            } => {
                let i = self.ensure(&conversation, &mut actions);
                if let Some(title) = title {
                    self.conversations[i].title = title;
                }
                if select {
                    self.select(conversation);
                }
            }
            AppEvent::Name { user, name } => {
                self.names.insert(user, name);
                for i in 0..self.conversations.len() {
                    if self.conversations[i].id.direct_members().is_some() {
                        let t = self.default_title(&self.conversations[i].id);
                        self.conversations[i].title = t;
                    }
                }
            }
            AppEvent::PresenceFailed { users, error } => {
                for u in users {
                    self.presence_subscribed.remove(&u);
                    self.presence_retry_at
                        .insert(u, self.now_ms + PRESENCE_RETRY_MS);
                }
                self.status = format!("presence: {error}");
            }
            AppEvent::Error(e) => self.status = e,
        }
        self.mark_read(&mut actions);
        self.watch_presence(&mut actions);
        actions
    }

    /// The shown conversation's peer: subscribe to their presence if we do not yet.
    fn watch_presence(&mut self, actions: &mut Vec<Action>) {
        let Some(peer) = self.selected_conversation().and_then(|c| c.peer(self.me)) else {
            return;
        };
        if self.presence_subscribed.contains(&peer)
            || self
                .presence_retry_at
                .get(&peer)
                .is_some_and(|t| *t > self.now_ms)
        {
            return;
        }
        self.presence_subscribed.insert(peer);
        self.presence_retry_at.remove(&peer);
        actions.push(Action::SubscribePresence { users: vec![peer] });
    }

    /// "online" or "last seen 14:05" for the peer of the shown one-to-one conversation;
    /// `None` when nothing may be seen (or nothing is known yet).
    pub fn presence_line(&self) -> Option<String> {
        let peer = self.selected_conversation()?.peer(self.me)?;
        let p = self.presence.get(&peer)?;
        match p.state() {
            v1::PresenceState::Unspecified => None,
            _ => Some(render::presence_text(p, self.now_ms)),
        }
    }

    fn chat_message(&self, m: &v1::Message) -> ChatMessage {
        let system = m.kind() == MessageKind::System;
        let text = match (m.kind(), &m.event) {
            _ if m.deleted => render::DELETED_TEXT.into(),
            (MessageKind::System, Some(e)) => render::system_text(self, e),
            (MessageKind::System, None) => "(group change)".into(),
            (MessageKind::Binary, _) => format!("({} bytes)", m.body.len()),
            (MessageKind::Media, _) => render::media_message_text(m),
            (MessageKind::Call, _) => render::call_text(m),
            _ => String::from_utf8_lossy(&m.body).into_owned(),
        };
        ChatMessage {
            seq: m.seq,
            sender: m.sender_user,
            created_at_ms: m.created_at_ms,
            text,
            system,
            local_id: None,
            failed: false,
        }
    }

    /// A group's name comes with its creation and rename events.
    fn learn_group_title(&mut self, id: &ConversationId, m: &v1::Message) {
        if let Some(e) = &m.event
            && !e.name.is_empty()
            && let Some(i) = self.index(id)
            && self.conversations[i].is_group()
        {
            self.conversations[i].title = e.name.clone();
        }
    }

    fn on_server(&mut self, ev: Event, actions: &mut Vec<Action>) {
        match ev {
            // The client hands out no withheld placeholder; this is belt and braces.
            Event::Message(m) if m.withheld => {}
            Event::Message(m) => {
                let Ok(id) = m.conversation_id.parse::<ConversationId>() else {
                    return;
                };
                let i = self.ensure(&id, actions);
                let cm = self.chat_message(&m);
                self.learn_group_title(&id, &m);
                let selected = self.selected.as_ref() == Some(&id);
                let c = &mut self.conversations[i];
                c.typing.remove(&m.sender_user);
                let new = c.messages.insert(m.seq, cm).is_none();
                if new && !selected && m.sender_user != self.me {
                    c.unread += 1;
                }
                self.sort();
            }
            Event::Receipt(r) => {
                let Ok(id) = r.conversation_id.parse::<ConversationId>() else {
                    return;
                };
                let Some(i) = self.index(&id) else { return };
                let c = &mut self.conversations[i];
                let read = r.kind() == ReceiptKind::Read;
                if r.user_id == self.me {
                    // Another device of ours read it.
                    if read && r.up_to_seq >= c.last_seq() {
                        c.unread = 0;
                        c.read_sent = c.read_sent.max(r.up_to_seq);
                    }
                } else {
                    c.peer_delivered = c.peer_delivered.max(r.up_to_seq);
                    if read {
                        c.peer_read = c.peer_read.max(r.up_to_seq);
                    }
                }
            }
            Event::Typing(t) => {
                if t.user_id == self.me {
                    return;
                }
                let Ok(id) = t.conversation_id.parse::<ConversationId>() else {
                    return;
                };
                let ttl = match t.expires_in_ms {
                    0 => TYPING_TTL_MS,
                    ms => u64::from(ms),
                };
                let state = match t.state() {
                    v1::ChatState::Recording => v1::ChatState::Recording,
                    _ => v1::ChatState::Typing,
                };
                if let Some(i) = self.index(&id) {
                    let c = &mut self.conversations[i];
                    if t.active {
                        c.typing.insert(
                            t.user_id,
                            Indicator {
                                until_ms: self.now_ms + ttl,
                                state,
                            },
                        );
                    } else {
                        c.typing.remove(&t.user_id);
                    }
                }
            }
            Event::Call(c) => {
                let media = match c.call.as_ref().map(|i| i.media()) {
                    Some(v1::CallMedia::Video) => "video",
                    _ => "voice",
                };
                match c.r#type() {
                    v1::CallEventType::Ringing => {
                        self.status = format!(
                            "incoming {media} call from {} (natter-cli cannot take calls: answer in the web client)",
                            self.user_name(c.from_user)
                        );
                    }
                    v1::CallEventType::Ended if self.status.starts_with("incoming") => {
                        self.status.clear();
                    }
                    _ => {}
                }
            }
            Event::JoinRequested(j) => {
                let group = self
                    .conversations
                    .iter()
                    .find(|c| c.id.as_str() == j.conversation_id)
                    .map(|c| c.title.clone())
                    .unwrap_or_else(|| j.conversation_id.clone());
                self.status = format!(
                    "{} asks to join {group} (approve with natter-cli groups)",
                    self.user_name(j.user_id)
                );
            }
            // A typing indicator sent too fast was dropped: nothing the user must know.
            Event::Error { error, .. } if error.code == v1::ErrorCode::RateLimited as i32 => {}
            Event::Error { error, .. } => self.status = format!("server: {}", error.message),
            Event::Closed { code, reason } => {
                self.connected = false;
                self.status = if matches!(code, 4001 | 4002) {
                    format!("disconnected by the server ({code}): {reason}; /quit and log in again")
                } else {
                    format!("connection lost ({code}); reconnecting…")
                };
            }
            Event::Reconnected(_) => {
                self.connected = true;
                self.status = "reconnected".into();
            }
            Event::Reconnecting { reason, after_ms } => {
                self.status = format!(
                    "{reason}; reconnecting in {:.1} s…",
                    f64::from(after_ms) / 1000.0
                );
            }
            Event::Presence(p) => {
                self.presence.insert(p.user_id, p);
            }
            Event::MessageDeleted {
                conversation_id,
                seq,
            } => {
                let Ok(id) = conversation_id.parse::<ConversationId>() else {
                    return;
                };
                if let Some(i) = self.index(&id)
                    && let Some(m) = self.conversations[i].messages.get_mut(&seq)
                {
                    m.text = render::DELETED_TEXT.into();
                }
            }
            Event::Announcement { text, .. } => {
                self.status = render::announcement_line(&text);
            }
        }
    }

    fn on_ack(&mut self, local_id: u64, ack: &v1::Ack) {
        for c in &mut self.conversations {
            if let Some(p) = c.pending.iter().position(|m| m.local_id == Some(local_id)) {
                let mut m = c.pending.remove(p);
                m.seq = ack.seq;
                m.local_id = None;
                m.created_at_ms = ack.created_at_ms;
                m.sender = self.me;
                c.messages.entry(ack.seq).or_insert(m);
            }
        }
        self.sort();
    }

    /// The selected conversation is on screen: everything in it counts as read.
    fn mark_read(&mut self, actions: &mut Vec<Action>) {
        let Some(i) = self.selected.as_ref().and_then(|s| self.index(s)) else {
            return;
        };
        let c = &mut self.conversations[i];
        c.unread = 0;
        // Only messages of others need a receipt.
        let newest_other = c
            .messages
            .values()
            .rev()
            .find(|m| m.sender != self.me)
            .map(|m| m.seq)
            .unwrap_or(0);
        if newest_other > c.read_sent {
            c.read_sent = c.last_seq().max(newest_other);
            actions.push(Action::MarkRead {
                conversation: c.id.clone(),
                up_to: c.read_sent,
            });
        }
    }

    fn select(&mut self, id: ConversationId) {
        if let Some(i) = self.index(&id) {
            self.conversations[i].scroll = 0;
        }
        self.selected = Some(id);
    }

    fn step(&mut self, forward: bool) {
        let n = self.conversations.len();
        if n == 0 {
            return;
        }
        let cur = self.selected.as_ref().and_then(|s| self.index(s));
        let next = match (cur, forward) {
            (None, _) => 0,
            (Some(i), true) => (i + 1) % n,
            (Some(i), false) => (i + n - 1) % n,
        };
        let id = self.conversations[next].id.clone();
        self.select(id);
    }

    fn on_key(&mut self, key: KeyEvent, actions: &mut Vec<Action>) {
        if key.kind == KeyEventKind::Release {
            return;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Char('c' | 'd') if ctrl => actions.push(Action::Quit),
            KeyCode::Char('u') if ctrl => self.input.clear(),
            KeyCode::Char(ch) if !ctrl => {
                self.input.push(ch);
                self.typed(actions);
            }
            KeyCode::Backspace => {
                self.input.pop();
            }
            KeyCode::Esc => self.input.clear(),
            KeyCode::Enter => self.enter(actions),
            KeyCode::Tab | KeyCode::Down => self.step(true),
            KeyCode::BackTab | KeyCode::Up => self.step(false),
            KeyCode::PageUp => self.page_up(actions),
            KeyCode::PageDown => {
                if let Some(i) = self.selected.as_ref().and_then(|s| self.index(s)) {
                    let c = &mut self.conversations[i];
                    c.scroll = c.scroll.saturating_sub(PAGE_LINES);
                }
            }
            _ => {}
        }
    }

    fn page_up(&mut self, actions: &mut Vec<Action>) {
        let Some(i) = self.selected.as_ref().and_then(|s| self.index(s)) else {
            return;
        };
        let c = &mut self.conversations[i];
        c.scroll += PAGE_LINES;
        // Near the top of what is loaded: fetch the page before it.
        let oldest = c.oldest_seq();
        if c.more && !c.loading && oldest > 1 && c.scroll + PAGE_LINES >= c.messages.len() {
            c.loading = true;
            actions.push(Action::LoadHistory {
                conversation: c.id.clone(),
                before: oldest,
            });
        }
    }

    /// Tells the other side we are typing, at most every few seconds.
    fn typed(&mut self, actions: &mut Vec<Action>) {
        if self.input.starts_with('/') {
            return;
        }
        let Some(id) = self.selected.clone() else {
            return;
        };
        let last = self.typing_sent.get(&id).copied();
        if last.is_none_or(|t| self.now_ms >= t + TYPING_RESEND_MS) {
            self.typing_sent.insert(id.clone(), self.now_ms);
            actions.push(Action::Typing {
                conversation: id,
                active: true,
            });
        }
    }

    fn enter(&mut self, actions: &mut Vec<Action>) {
        let line = std::mem::take(&mut self.input);
        let text = line.trim();
        if text.is_empty() {
            return;
        }
        if let Some(cmd) = text.strip_prefix('/') {
            self.command(cmd, actions);
            return;
        }
        let Some((id, local_id)) = self.add_pending(text.to_owned(), actions) else {
            self.input = line;
            return;
        };
        actions.push(Action::Send {
            conversation: id,
            text: text.to_owned(),
            local_id,
        });
        self.sort();
    }

    /// Shows a message of ours as pending in the selected conversation (and ends our
    /// typing indicator): the conversation and the message's local id.
    fn add_pending(
        &mut self,
        text: String,
        actions: &mut Vec<Action>,
    ) -> Option<(ConversationId, u64)> {
        let Some(id) = self.selected.clone() else {
            self.status = "no conversation: start one with /new @user".into();
            return None;
        };
        let i = self.index(&id)?;
        let local_id = self.next_local_id;
        self.next_local_id += 1;
        let c = &mut self.conversations[i];
        c.scroll = 0;
        c.pending.push(ChatMessage {
            seq: 0,
            sender: self.me,
            created_at_ms: self.now_ms,
            text,
            system: false,
            local_id: Some(local_id),
            failed: false,
        });
        if self.typing_sent.remove(&id).is_some() {
            actions.push(Action::Typing {
                conversation: id.clone(),
                active: false,
            });
        }
        Some((id, local_id))
    }

    fn command(&mut self, cmd: &str, actions: &mut Vec<Action>) {
        let mut words = cmd.split_whitespace();
        let usage = "commands: /new @user, /group NAME @a @b, /send-file PATH, /quit";
        match words.next() {
            Some("send-file" | "file") => {
                // The rest of the line is the path (it may hold spaces).
                let path = cmd
                    .split_once(char::is_whitespace)
                    .map(|(_, p)| p.trim())
                    .unwrap_or("");
                if path.is_empty() {
                    self.status = "usage: /send-file PATH".into();
                    return;
                }
                let name = std::path::Path::new(path)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| path.to_owned());
                if let Some((conversation, local_id)) =
                    self.add_pending(format!("[uploading {name}…]"), actions)
                {
                    actions.push(Action::SendFile {
                        conversation,
                        path: path.to_owned(),
                        local_id,
                    });
                    self.sort();
                }
            }
            Some("quit" | "q" | "exit") => actions.push(Action::Quit),
            Some("new") => match (words.next(), words.next()) {
                (Some(u), None) => {
                    let username = u.trim_start_matches('@').to_owned();
                    if let Some(uid) = self
                        .names
                        .iter()
                        .find(|(_, n)| **n == username)
                        .map(|(id, _)| *id)
                        && uid != self.me
                        && let Ok(id) = ConversationId::direct(UserId(self.me), UserId(uid))
                    {
                        let i = self.ensure(&id, actions);
                        let id = self.conversations[i].id.clone();
                        self.select(id);
                    } else {
                        actions.push(Action::StartDirect { username });
                    }
                }
                _ => self.status = "usage: /new @user".into(),
            },
            Some("group") => {
                let rest: Vec<&str> = words.collect();
                let (members, name): (Vec<&str>, Vec<&str>) =
                    rest.iter().partition(|w| w.starts_with('@'));
                if name.is_empty() || members.is_empty() {
                    self.status = "usage: /group NAME @a @b".into();
                } else {
                    actions.push(Action::CreateGroup {
                        name: name.join(" "),
                        members: members.iter().map(|m| (*m).to_owned()).collect(),
                    });
                }
            }
            _ => self.status = usage.into(),
        }
    }

    /// "bo is typing…", "bo is recording…", "bo, cy are typing…" for the selected
    /// conversation.
    pub fn typing_line(&self) -> Option<String> {
        let c = self.selected_conversation()?;
        let mut parts = Vec::new();
        for (state, verb) in [
            (v1::ChatState::Typing, "typing"),
            (v1::ChatState::Recording, "recording"),
        ] {
            let who: Vec<String> = c
                .typing
                .iter()
                .filter(|(_, t)| t.until_ms > self.now_ms && t.state == state)
                .map(|(u, _)| self.user_name(*u))
                .collect();
            match who.as_slice() {
                [] => {}
                [one] => parts.push(format!("{one} is {verb}…")),
                many => parts.push(format!("{} are {verb}…", many.join(", "))),
            }
        }
        (!parts.is_empty()).then(|| parts.join(" "))
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's
/// `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// "Mon 30 Nov 2026" (UTC).
pub fn day_label(ms: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = i64::try_from(ms / 86_400_000).unwrap_or(0);
    let (y, m, d) = civil(days);
    let wd = DAYS[usize::try_from(days.rem_euclid(7)).unwrap_or(0)];
    let mon = MONTHS[(m as usize).saturating_sub(1) % 12];
    format!("{wd} {d} {mon} {y}")
}

/// When something happened, for a reader at `now_ms`: "14:05" today, else
/// "Sun 29 Nov 2026 14:05" (UTC).
pub fn when(ms: u64, now_ms: u64) -> String {
    if ms / 86_400_000 == now_ms / 86_400_000 {
        clock(ms)
    } else {
        format!("{} {}", day_label(ms), clock(ms))
    }
}

/// "14:05" (UTC).
pub fn clock(ms: u64) -> String {
    let s = (ms / 1000) % 86_400;
    format!("{:02}:{:02}", s / 3600, (s / 60) % 60)
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub const ME: u64 = 1;
    pub const BO: u64 = 2;
    pub const CY: u64 = 3;
    /// 2026-11-30 10:00 UTC.
    pub const T0: u64 = 1_796_032_800_000;

    pub fn key(code: KeyCode) -> AppEvent {
        AppEvent::Key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    pub fn dm(a: u64, b: u64) -> ConversationId {
        ConversationId::direct(UserId(a), UserId(b)).unwrap()
    }

    pub fn msg(conv: &ConversationId, seq: u64, sender: u64, at: u64, text: &str) -> v1::Message {
        v1::Message {
            conversation_id: conv.to_string(),
            seq,
            sender_user: sender,
            kind: MessageKind::Text as i32,
            body: text.as_bytes().to_vec().into(),
            created_at_ms: at,
            ..Default::default()
        }
    }

    pub fn app() -> App {
        let names = BTreeMap::from([(ME, "ann".into()), (BO, "bo".into()), (CY, "cy".into())]);
        let mut a = App::new(ME, "ann", names, T0);
        a.connected = true;
        a
    }

    pub fn history(app: &mut App, conv: &ConversationId, messages: Vec<v1::Message>) {
        app.on_event(AppEvent::History {
            conversation: conv.clone(),
            messages,
            more: false,
        });
    }

    fn type_text(app: &mut App, text: &str) -> Vec<Action> {
        let mut out = Vec::new();
        for ch in text.chars() {
            out.extend(app.on_event(key(KeyCode::Char(ch))));
        }
        out
    }

    #[test]
    fn enter_sends_and_clears_the_input() {
        let mut a = app();
        let c = dm(ME, BO);
        history(&mut a, &c, vec![]);
        assert_eq!(a.selected.as_ref(), Some(&c));
        let typed = type_text(&mut a, "hi bo");
        assert_eq!(
            typed,
            vec![Action::Typing {
                conversation: c.clone(),
                active: true
            }],
            "one typing notice, not one per key"
        );
        assert_eq!(a.input, "hi bo");
        let actions = a.on_event(key(KeyCode::Enter));
        assert!(actions.contains(&Action::Send {
            conversation: c.clone(),
            text: "hi bo".into(),
            local_id: 1
        }));
        assert!(actions.contains(&Action::Typing {
            conversation: c.clone(),
            active: false
        }));
        assert_eq!(a.input, "");
        let conv = a.conversation(&c).unwrap();
        assert_eq!(conv.pending.len(), 1);
        assert_eq!(conv.tick(&conv.pending[0]), Tick::Pending);
        // Enter on an empty line does nothing.
        assert!(a.on_event(key(KeyCode::Enter)).is_empty());
    }

    #[test]
    fn unread_counts_for_other_conversations_and_resets_when_selected() {
        let mut a = app();
        let with_bo = dm(ME, BO);
        let with_cy = dm(ME, CY);
        history(&mut a, &with_bo, vec![msg(&with_bo, 1, BO, T0, "hey")]);
        history(&mut a, &with_cy, vec![]);
        assert_eq!(a.selected.as_ref(), Some(&with_bo));
        for seq in 1..=2 {
            a.on_event(AppEvent::Server(Event::Message(msg(
                &with_cy,
                seq,
                CY,
                T0 + seq,
                "yo",
            ))));
        }
        // A duplicate (e.g. from sync and history) counts once.
        a.on_event(AppEvent::Server(Event::Message(msg(
            &with_cy, 2, CY, T0, "yo",
        ))));
        assert_eq!(a.conversation(&with_cy).unwrap().unread, 2);
        // Newest first in the list.
        assert_eq!(a.conversations[0].id, with_cy);
        // A message in the shown conversation is read at once.
        let acts = a.on_event(AppEvent::Server(Event::Message(msg(
            &with_bo,
            2,
            BO,
            T0 + 5,
            "there?",
        ))));
        assert_eq!(a.conversation(&with_bo).unwrap().unread, 0);
        assert!(acts.contains(&Action::MarkRead {
            conversation: with_bo.clone(),
            up_to: 2
        }));
        // Switch: the unread count resets and a read receipt goes out (and, shown for
        // the first time, cy's presence is asked for).
        let acts = a.on_event(key(KeyCode::Tab));
        assert_eq!(a.selected.as_ref(), Some(&with_cy));
        assert_eq!(a.conversation(&with_cy).unwrap().unread, 0);
        assert_eq!(
            acts,
            vec![
                Action::MarkRead {
                    conversation: with_cy.clone(),
                    up_to: 2
                },
                Action::SubscribePresence { users: vec![CY] }
            ]
        );
        a.on_event(key(KeyCode::Up));
        assert_eq!(a.selected.as_ref(), Some(&with_bo));
    }

    #[test]
    fn receipts_move_ticks_from_sent_to_delivered_to_read() {
        let mut a = app();
        let c = dm(ME, BO);
        history(&mut a, &c, vec![]);
        type_text(&mut a, "ping");
        a.on_event(key(KeyCode::Enter));
        let ack = v1::Ack {
            conversation_id: c.to_string(),
            seq: 1,
            created_at_ms: T0,
            ..Default::default()
        };
        a.on_event(AppEvent::Acked { local_id: 1, ack });
        let tick = |a: &App| {
            let conv = a.conversation(&c).unwrap();
            conv.tick(&conv.messages[&1])
        };
        assert_eq!(tick(&a), Tick::Sent);
        let receipt = |kind: ReceiptKind| {
            AppEvent::Server(Event::Receipt(v1::Receipt {
                conversation_id: c.to_string(),
                user_id: BO,
                kind: kind as i32,
                up_to_seq: 1,
                ..Default::default()
            }))
        };
        a.on_event(receipt(ReceiptKind::Delivered));
        assert_eq!(tick(&a), Tick::Delivered);
        a.on_event(receipt(ReceiptKind::Read));
        assert_eq!(tick(&a), Tick::Read);
        // A late delivered receipt does not move it back.
        a.on_event(receipt(ReceiptKind::Delivered));
        assert_eq!(tick(&a), Tick::Read);
    }

    #[test]
    fn groups_show_a_single_tick() {
        let mut a = app();
        let g: ConversationId = "g.77".parse().unwrap();
        history(&mut a, &g, vec![msg(&g, 1, ME, T0, "hello all")]);
        a.on_event(AppEvent::Server(Event::Receipt(v1::Receipt {
            conversation_id: g.to_string(),
            user_id: BO,
            kind: ReceiptKind::Read as i32,
            up_to_seq: 1,
            ..Default::default()
        })));
        let conv = a.conversation(&g).unwrap();
        assert_eq!(conv.tick(&conv.messages[&1]), Tick::Sent);
    }

    #[test]
    fn typing_indicator_expires_on_tick() {
        let mut a = app();
        let c = dm(ME, BO);
        history(&mut a, &c, vec![]);
        a.on_event(AppEvent::Server(Event::Typing(v1::TypingEvent {
            conversation_id: c.to_string(),
            user_id: BO,
            active: true,
            ..Default::default()
        })));
        assert_eq!(a.typing_line().as_deref(), Some("bo is typing…"));
        a.on_event(AppEvent::Tick { now_ms: T0 + 2_000 });
        assert!(a.typing_line().is_some());
        a.on_event(AppEvent::Tick {
            now_ms: T0 + TYPING_TTL_MS + 1,
        });
        assert_eq!(a.typing_line(), None);
        // A message from the typist clears it at once too.
        a.on_event(AppEvent::Server(Event::Typing(v1::TypingEvent {
            conversation_id: c.to_string(),
            user_id: BO,
            active: true,
            ..Default::default()
        })));
        a.on_event(AppEvent::Server(Event::Message(msg(&c, 1, BO, T0, "done"))));
        assert_eq!(a.typing_line(), None);
    }

    fn typing(conv: &ConversationId, user: u64, state: v1::ChatState, ms: u32) -> AppEvent {
        AppEvent::Server(Event::Typing(v1::TypingEvent {
            conversation_id: conv.to_string(),
            user_id: user,
            active: true,
            state: state as i32,
            expires_in_ms: ms,
        }))
    }

    #[test]
    fn indicators_say_what_and_last_as_long_as_the_server_says() {
        let mut a = app();
        let g: ConversationId = "g.77".parse().unwrap();
        history(&mut a, &g, vec![]);
        a.on_event(typing(&g, BO, v1::ChatState::Recording, 8_000));
        assert_eq!(a.typing_line().as_deref(), Some("bo is recording…"));
        a.on_event(typing(&g, CY, v1::ChatState::Typing, 2_000));
        assert_eq!(
            a.typing_line().as_deref(),
            Some("cy is typing… bo is recording…")
        );
        // cy's indicator runs out after its 2 s, bo's after 8 s (not the default 5 s).
        a.on_event(AppEvent::Tick { now_ms: T0 + 2_001 });
        assert_eq!(a.typing_line().as_deref(), Some("bo is recording…"));
        a.on_event(AppEvent::Tick {
            now_ms: T0 + TYPING_TTL_MS + 1,
        });
        assert_eq!(a.typing_line().as_deref(), Some("bo is recording…"));
        a.on_event(AppEvent::Tick { now_ms: T0 + 8_001 });
        assert_eq!(a.typing_line(), None);
        // Two typing at once; UNSPECIFIED counts as typing.
        a.on_event(typing(&g, BO, v1::ChatState::Unspecified, 0));
        a.on_event(typing(&g, CY, v1::ChatState::Typing, 0));
        assert_eq!(a.typing_line().as_deref(), Some("bo, cy are typing…"));
        // Inactive clears it at once.
        a.on_event(AppEvent::Server(Event::Typing(v1::TypingEvent {
            conversation_id: g.to_string(),
            user_id: BO,
            active: false,
            ..Default::default()
        })));
        assert_eq!(a.typing_line().as_deref(), Some("cy is typing…"));
    }

    #[test]
    fn showing_a_direct_conversation_subscribes_to_the_peer_once() {
        let mut a = app();
        let with_bo = dm(ME, BO);
        let with_cy = dm(ME, CY);
        let g: ConversationId = "g.77".parse().unwrap();
        let acts = a.on_event(AppEvent::History {
            conversation: with_bo.clone(),
            messages: vec![],
            more: false,
        });
        assert_eq!(acts, vec![Action::SubscribePresence { users: vec![BO] }]);
        history(&mut a, &with_cy, vec![]);
        history(&mut a, &g, vec![]);
        // Only the shown conversation's peer; nothing for a group; once per peer.
        assert!(a.on_event(AppEvent::Tick { now_ms: T0 }).is_empty());
        let acts = a.on_event(key(KeyCode::Tab));
        let subs: Vec<&Action> = acts
            .iter()
            .filter(|x| matches!(x, Action::SubscribePresence { .. }))
            .collect();
        assert_eq!(a.selected.as_ref(), Some(&with_cy), "{acts:?}");
        assert_eq!(subs, [&Action::SubscribePresence { users: vec![CY] }]);
        a.on_event(key(KeyCode::Tab));
        assert_eq!(a.selected.as_ref(), Some(&g));
        let acts = a.on_event(key(KeyCode::Tab));
        assert!(
            !acts
                .iter()
                .any(|x| matches!(x, Action::SubscribePresence { .. })),
            "{acts:?}"
        );
    }

    #[test]
    fn the_header_shows_the_peers_presence() {
        let mut a = app();
        let c = dm(ME, BO);
        history(&mut a, &c, vec![]);
        assert_eq!(a.presence_line(), None, "nothing known yet");
        let presence = |state: v1::PresenceState, last_seen_ms| {
            AppEvent::Server(Event::Presence(v1::UserPresence {
                user_id: BO,
                state: state as i32,
                last_seen_ms,
            }))
        };
        a.on_event(presence(v1::PresenceState::Online, 0));
        assert_eq!(a.presence_line().as_deref(), Some("online"));
        a.on_event(presence(v1::PresenceState::Offline, T0 - 25 * 60_000));
        assert_eq!(a.presence_line().as_deref(), Some("last seen 09:35"));
        a.on_event(presence(v1::PresenceState::Offline, 0));
        assert_eq!(a.presence_line().as_deref(), Some("offline"));
        // Hidden by bo's privacy settings: nothing at all.
        a.on_event(presence(v1::PresenceState::Unspecified, 0));
        assert_eq!(a.presence_line(), None);
        // Groups show none.
        let g: ConversationId = "g.77".parse().unwrap();
        a.on_event(AppEvent::Opened {
            conversation: g,
            title: None,
            select: true,
        });
        assert_eq!(a.presence_line(), None);
    }

    #[test]
    fn a_failed_subscription_is_retried_later() {
        let mut a = app();
        let c = dm(ME, BO);
        history(&mut a, &c, vec![]);
        let acts = a.on_event(AppEvent::PresenceFailed {
            users: vec![BO],
            error: "server refused (unknown_frame)".into(),
        });
        assert!(acts.is_empty(), "not at once: {acts:?}");
        assert!(a.status.starts_with("presence: "), "{}", a.status);
        assert!(
            a.on_event(AppEvent::Tick {
                now_ms: T0 + PRESENCE_RETRY_MS - 1
            })
            .is_empty()
        );
        assert_eq!(
            a.on_event(AppEvent::Tick {
                now_ms: T0 + PRESENCE_RETRY_MS
            }),
            vec![Action::SubscribePresence { users: vec![BO] }]
        );
    }

    #[test]
    fn deleted_messages_read_as_deleted_and_announcements_as_status() {
        let mut a = app();
        let c = dm(ME, BO);
        let deleted = v1::Message {
            deleted: true,
            body: Default::default(),
            ..msg(&c, 1, BO, T0, "")
        };
        history(&mut a, &c, vec![deleted, msg(&c, 2, BO, T0, "rude")]);
        a.on_event(AppEvent::Server(Event::Message(msg(&c, 3, BO, T0, "fine"))));
        a.on_event(AppEvent::Server(Event::MessageDeleted {
            conversation_id: c.to_string(),
            seq: 2,
        }));
        // Unknown conversations and seqs change nothing.
        a.on_event(AppEvent::Server(Event::MessageDeleted {
            conversation_id: dm(ME, CY).to_string(),
            seq: 2,
        }));
        a.on_event(AppEvent::Server(Event::MessageDeleted {
            conversation_id: c.to_string(),
            seq: 9,
        }));
        let texts: Vec<&str> = a
            .conversation(&c)
            .unwrap()
            .messages
            .values()
            .map(|m| m.text.as_str())
            .collect();
        assert_eq!(
            texts,
            [
                "this message was deleted",
                "this message was deleted",
                "fine"
            ]
        );
        a.on_event(AppEvent::Server(Event::Announcement {
            id: 4,
            text: "Maintenance at 22:00 UTC".into(),
            created_at_ms: T0,
        }));
        assert_eq!(a.status, "📢 Maintenance at 22:00 UTC");
    }

    #[test]
    fn withheld_placeholders_show_nothing_but_paging_passes_them() {
        let mut a = app();
        let c = dm(ME, BO);
        let withheld = |seq| v1::Message {
            conversation_id: c.to_string(),
            seq,
            sender_user: BO,
            withheld: true,
            ..Default::default()
        };
        a.on_event(AppEvent::History {
            conversation: c.clone(),
            messages: vec![withheld(40), msg(&c, 41, ME, T0, "hi"), withheld(42)],
            more: true,
        });
        let conv = a.conversation(&c).unwrap();
        assert_eq!(conv.messages.keys().copied().collect::<Vec<_>>(), [41]);
        assert_eq!(conv.oldest_seq(), 40);
        a.on_event(AppEvent::Server(Event::Message(withheld(43))));
        assert_eq!(a.conversation(&c).unwrap().messages.len(), 1);
        assert_eq!(a.conversation(&c).unwrap().unread, 0);
        // The next page starts before the withheld 40, not before the shown 41.
        let acts = a.on_event(key(KeyCode::PageUp));
        assert_eq!(
            acts,
            vec![Action::LoadHistory {
                conversation: c.clone(),
                before: 40
            }]
        );
        // A page of nothing but withheld placeholders still moves paging on.
        a.on_event(AppEvent::History {
            conversation: c.clone(),
            messages: (30..40).map(withheld).collect(),
            more: true,
        });
        assert_eq!(a.conversation(&c).unwrap().oldest_seq(), 30);
    }

    #[test]
    fn rate_limited_indicators_are_not_news() {
        let mut a = app();
        a.status.clear();
        let error = |code: v1::ErrorCode| {
            AppEvent::Server(Event::Error {
                id: 9,
                error: v1::Error {
                    code: code as i32,
                    message: "slow down".into(),
                },
            })
        };
        a.on_event(error(v1::ErrorCode::RateLimited));
        assert_eq!(a.status, "");
        a.on_event(error(v1::ErrorCode::Forbidden));
        assert_eq!(a.status, "server: slow down");
    }

    #[test]
    fn day_separators_between_days() {
        let mut a = app();
        let c = dm(ME, BO);
        let day = 86_400_000;
        history(
            &mut a,
            &c,
            vec![
                msg(&c, 1, BO, T0, "a"),
                msg(&c, 2, ME, T0 + 60_000, "b"),
                msg(&c, 3, BO, T0 + day, "c"),
            ],
        );
        let lines = a.conversation(&c).unwrap().lines();
        let shape: Vec<String> = lines
            .iter()
            .map(|l| match l {
                ChatLine::Day(d) => format!("-- {d}"),
                ChatLine::Message(m) => m.text.clone(),
            })
            .collect();
        assert_eq!(
            shape,
            ["-- Mon 30 Nov 2026", "a", "b", "-- Tue 1 Dec 2026", "c"]
        );
        assert_eq!(clock(T0), "10:00");
    }

    #[test]
    fn commands() {
        let mut a = app();
        type_text(&mut a, "/new @dee");
        assert_eq!(
            a.on_event(key(KeyCode::Enter)),
            vec![Action::StartDirect {
                username: "dee".into()
            }]
        );
        // A known user opens at once.
        type_text(&mut a, "/new @bo");
        let acts = a.on_event(key(KeyCode::Enter));
        assert_eq!(a.selected, Some(dm(ME, BO)));
        assert!(matches!(acts[0], Action::LoadHistory { .. }));
        type_text(&mut a, "/group Trip plans @bo @cy");
        assert_eq!(
            a.on_event(key(KeyCode::Enter)),
            vec![Action::CreateGroup {
                name: "Trip plans".into(),
                members: vec!["@bo".into(), "@cy".into()]
            }]
        );
        // A file goes to the selected conversation (bo's), shown as pending until acked.
        type_text(&mut a, "/send-file /tmp/my cat.png");
        assert_eq!(
            a.on_event(key(KeyCode::Enter)),
            vec![Action::SendFile {
                conversation: dm(ME, BO),
                path: "/tmp/my cat.png".into(),
                local_id: 1,
            }]
        );
        let pending = &a.conversation(&dm(ME, BO)).unwrap().pending;
        assert_eq!(pending[0].text, "[uploading my cat.png…]");
        a.on_event(AppEvent::Uploaded {
            local_id: 1,
            text: "[photo 2x2 70 B] ".into(),
        });
        let pending = &a.conversation(&dm(ME, BO)).unwrap().pending;
        assert_eq!(pending[0].text, "[photo 2x2 70 B] ");
        type_text(&mut a, "/send-file");
        assert!(a.on_event(key(KeyCode::Enter)).is_empty());
        assert_eq!(a.status, "usage: /send-file PATH");
        type_text(&mut a, "/quit");
        assert_eq!(a.on_event(key(KeyCode::Enter)), vec![Action::Quit]);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(a.on_event(AppEvent::Key(ctrl_c)), vec![Action::Quit]);
    }

    #[test]
    fn page_up_loads_older_history() {
        let mut a = app();
        let c = dm(ME, BO);
        a.on_event(AppEvent::History {
            conversation: c.clone(),
            messages: (40..=45).map(|s| msg(&c, s, BO, T0 + s, "m")).collect(),
            more: true,
        });
        let acts = a.on_event(key(KeyCode::PageUp));
        assert_eq!(
            acts,
            vec![Action::LoadHistory {
                conversation: c.clone(),
                before: 40
            }]
        );
        // Not twice while it loads.
        assert!(a.on_event(key(KeyCode::PageUp)).is_empty());
    }
}
