// The client's state and its reactions to the server: conversations, messages by seq,
// cursors, the outbox of unacked sends, receipts, typing, presence, and people (profile,
// privacy, contacts, blocks, status updates). ui.js draws it.

import {
  ApiError,
  Auth,
  Connection,
  announcements,
  avatarUrl,
  candidateIn,
  candidateOut,
  decodeText,
  directId,
  encodeText,
  iceServers,
  mediaRefOf,
  mediaUrl,
  newCallId,
  sdpIn,
  sdpOut,
  uploadMedia,
} from "./protocol.js";
import { DELETED_TEXT, UI, callSummary, mediaSummary } from "./ui.js";

const TYPING_TTL_MS = 6000;
const TYPING_RESEND_MS = 3000;
const RESEND_AFTER_MS = 10_000;
const HISTORY_PAGE = 50;
const NAME_RETRY_MS = 30_000;
const PRESENCE_BATCH = 1000; // users per presenceSubscribe frame
const PRESENCE_RETRY_MS = 30_000;
const TYPING = "CHAT_STATE_TYPING";
/** How long the "Call ended" panel stays up. */
const CALL_ENDED_SHOWN_MS = 4000;
/** What an ended call says, by CallEndReason. */
const CALL_END_TEXT = {
  CALL_END_REASON_HANGUP: "Call ended",
  CALL_END_REASON_DECLINED: "Call declined",
  CALL_END_REASON_BUSY: "Busy",
  CALL_END_REASON_NO_ANSWER: "No answer",
  CALL_END_REASON_CANCELLED: "Call cancelled",
  CALL_END_REASON_DROPPED: "Call dropped: the connection was lost",
  CALL_END_REASON_ANSWERED_ELSEWHERE: "Answered on another device",
  CALL_END_REASON_DECLINED_ELSEWHERE: "Declined on another device",
};
const RECORDING = "CHAT_STATE_RECORDING";

const ERROR_LABEL = {
  FORBIDDEN: "Not allowed",
  NOT_FOUND: "Not found",
  INVALID_ARGUMENT: "Invalid request",
  GROUP_FULL: "The group is full",
  BANNED: "You were banned from this group",
  CONFLICT: "Someone changed the group at the same time; try again",
  LIMIT_REACHED: "Limit reached",
  RATE_LIMITED: "Too many requests; slow down",
  MEDIA_REFUSED: "This file cannot be shared",
  UNAVAILABLE: "The server is busy; try again",
  INTERNAL: "The server failed; try again",
};

/** A server `error` as a sentence: "Not allowed (you are not a member of …)". */
export function readableError(e) {
  const code = (e.code || "").replace("ERROR_CODE_", "");
  const label = ERROR_LABEL[code] || (code ? code.toLowerCase().replace(/_/g, " ") : "Error");
  return e.message ? `${label} (${e.message})` : label;
}

/** Readable REST media errors (by their `code`). */
const MEDIA_ERROR = {
  too_large: "The file is too large",
  unsupported_type: "This type of file cannot be sent",
  quota_exceeded: "Your storage is full",
  too_many_uploads: "Too many uploads at once; try again shortly",
  hash_mismatch: "The file changed while it was sent; try again",
  unreachable: "The server is unreachable",
};

function randomId() {
  const b = crypto.getRandomValues(new Uint8Array(12));
  return "web-" + Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

class App {
  constructor() {
    this.auth = new Auth();
    this.ui = new UI(this);
    this.conn = new Connection(this.auth, {
      onFrame: (f) => this.onFrame(f),
      onState: (s, d) => this.onConnState(s, d),
    });
    this.connState = { state: "connecting", retryMs: null };
    this.reset();
    setInterval(() => this.tick(), 1000);
    document.addEventListener("visibilitychange", () => this.markRead());
    window.addEventListener("focus", () => this.markRead());
    window.addEventListener("hashchange", () => this.joinFromHash());
    if (this.auth.session) this.enter();
    else this.ui.render();
  }

  reset() {
    this.convs = new Map(); // conversationId → conversation
    this.names = new Map(); // userId → username
    this.resolving = new Map(); // userId → "pending", or when a failed lookup may be retried
    this.outbox = []; // unacked sends: {clientMsgId, convId, toUser, body, sentAt, reqId}
    this.requests = new Map(); // request id → what it was for
    this.active = null;
    this.typingSentAt = 0;
    this.typingConv = null; // where we last said we are typing (until we say we stopped)
    this.typingState = null;
    this.notice = "";
    this.listNotice = "";
    this.panelOpen = false;
    this.chatMenuOpen = false;
    // The one call of this device (or null): see "calls" below.
    this.call = null;
    // Announcements from the operators shown as banners until dismissed: {id, text}.
    this.banners = [];
    this.seenAnnouncements = new Set(); // ids shown since the page loaded
    // Presence: userId → {online, lastSeenMs}, only what the server let us see.
    this.presence = new Map();
    this.presenceSubs = new Set(); // subscribed on this connection
    this.presenceRenewAt = 0; // when to subscribe everyone again (ttl / 2)
    this.presenceDirty = false; // a new direct conversation: subscribe its peer
    this.contacts = new Map(); // userId → Contact
    this.blocked = new Set(); // userIds we blocked
    this.peopleOpen = false;
    this.people = {
      tab: "status",
      profile: null,
      profileFresh: false, // the profile form is filled once per answer
      profileDirty: false, // the user has typed into the profile form since it was filled
      privacy: null,
      statuses: [], // contacts' UserStatuses, newest first
      mine: [], // my Status list
      viewers: new Map(), // statusId → StatusViewer list
      viewersOf: null, // the status of mine whose viewers are shown
      viewing: null, // the user whose statuses are shown
      editing: null, // the contact the form renames
      reset: new Set(), // ids of forms to clear (their request succeeded)
      notice: "",
      info: "",
    };
  }

  get me() {
    return this.auth.session;
  }

  // ---- persistence (per device) ----

  storeKey() {
    return `natter.state.${this.me.deviceId}`;
  }

  load() {
    let saved = null;
    try {
      saved = JSON.parse(localStorage.getItem(this.storeKey()));
    } catch {
      saved = null;
    }
    this.names.set(this.me.userId, this.me.username);
    if (!saved) return;
    for (const [id, name] of saved.names || []) this.names.set(id, name);
    for (const c of saved.contacts || []) this.contacts.set(c.userId, c);
    for (const id of saved.blocked || []) this.blocked.add(id);
    for (const c of saved.convs || []) {
      const conv = this.conv(c.id);
      Object.assign(conv, c, { msgs: new Map(), more: c.cursor > 0 });
    }
    for (const o of saved.outbox || []) {
      this.outbox.push({ ...o, reqId: null });
      const conv = this.conv(o.convId);
      conv.msgs.set(`p:${o.clientMsgId}`, {
        seq: 0,
        sender: this.me.userId,
        clientMsgId: o.clientMsgId,
        text: o.media ? o.media.caption || "" : decodeText(o.body),
        media: o.shown || o.media || null,
        createdAtMs: o.createdAtMs,
        pending: true,
      });
    }
  }

  save() {
    if (!this.me) return;
    const convs = [...this.convs.values()].map((c) => ({
      id: c.id,
      kind: c.kind,
      peer: c.peer,
      title: c.title,
      cursor: c.cursor,
      titleSeq: c.titleSeq,
      member: c.member,
      memberSeq: c.memberSeq,
      readSent: c.readSent,
      receivedSent: c.receivedSent,
      peerDelivered: c.peerDelivered,
      peerRead: c.peerRead,
      unread: c.unread,
      last: c.last,
    }));
    const outbox = this.outbox.map(({ reqId, ...o }) => o);
    localStorage.setItem(
      this.storeKey(),
      JSON.stringify({
        convs,
        outbox,
        names: [...this.names],
        contacts: [...this.contacts.values()],
        blocked: [...this.blocked],
      }),
    );
  }

  // ---- session ----

  async register(username, password) {
    await this.auth.register(username, password);
    this.enter();
  }

  async login(username, password) {
    await this.auth.login(username, password);
    this.enter();
  }

  enter() {
    this.reset();
    this.load();
    this.ui.render();
    this.conn.start();
  }

  async logout() {
    if (this.call) this.hangup();
    this.conn.stop();
    if (this.me) localStorage.removeItem(this.storeKey());
    await this.auth.logout();
    this.reset();
    this.ui.render();
  }

  onConnState(state, retryMs) {
    if (state === "loggedout") {
      if (this.call) this.endCall(this.call, "Call ended");
      this.conn.stop();
      this.auth.clear();
      this.reset();
      this.notice = "Your session ended; please log in again.";
      this.ui.render();
      return;
    }
    this.connState = { state, retryMs, since: Date.now() };
    if (state !== "online") {
      // Sends in flight on the old socket are sent again on the next one.
      for (const o of this.outbox) o.reqId = null;
      this.requests.clear();
      // Subscriptions die with the socket; the next welcome subscribes again.
      this.presenceSubs.clear();
      this.presenceRenewAt = 0;
      this.typingConv = null;
      this.typingSentAt = 0;
      for (const c of this.convs.values()) c.loading = false;
    }
    this.ui.render();
  }

  // ---- conversations ----

  conv(id) {
    let c = this.convs.get(id);
    if (!c) {
      const group = id.startsWith("g.");
      let peer = null;
      if (!group) {
        const [, a, b] = id.split(".");
        peer = a === this.me.userId ? b : a;
      }
      c = {
        id,
        kind: group ? "group" : "direct",
        peer,
        title: group ? "Group" : null,
        titleSeq: 0, // the seq the title was learnt at
        member: undefined, // groups: false once we left or were removed
        info: null, // groups: the GroupInfo of the last `get` or change
        invite: "", // groups: the last invite link created here
        notice: "", // a refusal or error to show in the conversation
        msgs: new Map(), // seq (or "p:<clientMsgId>" while unacked) → message
        cursor: 0, // every seq up to this one is here (or was, before a reload)
        receivedSent: 0,
        readSent: 0,
        peerDelivered: 0,
        peerRead: 0,
        unread: 0,
        last: null,
        typing: new Map(),
        more: true,
        loading: false,
      };
      this.convs.set(id, c);
      if (peer) this.presenceDirty = true;
    }
    if (!c.typing) c.typing = new Map();
    return c;
  }

  name(userId) {
    const name = this.names.get(userId);
    if (name) return name;
    this.resolve(userId);
    return `user …${String(userId).slice(-4)}`;
  }

  /**
   * Fetches the username of a user we know only by id (once: one request at a time per
   * id, the answer kept in `names`), then draws again with it.
   */
  resolve(userId) {
    if (!userId || userId === "0" || !this.me || this.names.has(userId)) return;
    const state = this.resolving.get(userId);
    if (state === "pending" || (typeof state === "number" && Date.now() < state)) return;
    this.resolving.set(userId, "pending");
    const resolving = this.resolving;
    this.auth
      .userById(userId)
      .then((user) => {
        if (this.resolving !== resolving) return; // logged out (or in again) meanwhile
        resolving.delete(userId);
        if (!user?.username) return;
        this.names.set(userId, user.username);
        this.refreshPreviews();
        this.save();
        this.ui.render();
      })
      .catch((e) => {
        if (this.resolving !== resolving) return;
        // No such user: never ask again; the server unreachable or busy: later.
        resolving.set(userId, e.status === 404 ? Infinity : Date.now() + NAME_RETRY_MS);
      });
  }

  /** Resolves every user id an event or message mentions. */
  resolveAll(ids) {
    for (const id of ids) if (id) this.resolve(id);
  }

  /** Conversation-list previews drawn before a name was known. */
  refreshPreviews() {
    for (const conv of this.convs.values()) {
      const msg = conv.last && conv.msgs.get(conv.last.seq);
      if (msg && !msg.pending) conv.last.text = this.preview(conv, msg);
    }
  }

  title(conv) {
    if (conv.kind === "group") return conv.title || "Group";
    return this.contactName(conv.peer);
  }

  /** My name for a contact, else their display name, else their username. */
  contactName(userId) {
    const c = this.contacts.get(userId);
    return c?.name || c?.profile?.displayName || this.name(userId);
  }

  async startChat(username) {
    const user = await this.auth.lookup(username.trim().toLowerCase());
    if (user.user_id === this.me.userId) throw new ApiError(400, "self", "That is you.");
    this.names.set(user.user_id, user.username);
    this.chatWith(user.user_id);
  }

  /** Opens (creating if need be) the one-to-one conversation with a user. */
  chatWith(userId) {
    const conv = this.conv(directId(this.me.userId, userId));
    this.save();
    this.subscribePresence();
    this.open(conv.id);
  }

  async createGroup(name, usernames) {
    const members = [];
    for (const u of usernames) {
      const user = await this.auth.lookup(u);
      this.names.set(user.user_id, user.username);
      members.push(user.user_id);
    }
    const id = this.conn.send({ group: { create: { createId: randomId(), name, members } } });
    this.listNotice = "";
    if (!id) throw new ApiError(0, "offline", "Not connected; try again when online.");
    this.requests.set(id, { kind: "groupCreate" });
  }

  open(convId) {
    if (convId !== this.active) {
      this.panelOpen = false;
      this.chatMenuOpen = false;
      this.typing(false);
    }
    if (convId) this.peopleOpen = false;
    this.active = convId;
    const conv = convId && this.conv(convId);
    if (conv) {
      conv.unread = 0;
      if (conv.msgs.size === 0) this.loadHistory(conv);
      if (conv.kind === "group") this.refreshGroup(conv);
    }
    this.ui.render();
    this.markRead();
  }

  loadHistory(conv) {
    if (conv.loading || !conv.more) return;
    const seqs = [...conv.msgs.values()].map((m) => m.seq).filter((s) => s > 0);
    const before = seqs.length ? Math.min(...seqs) : 0;
    if (before === 1) {
      conv.more = false;
      return;
    }
    const id = this.conn.send({
      history: { conversationId: conv.id, beforeSeq: String(before), limit: HISTORY_PAGE },
    });
    if (!id) return;
    conv.loading = true;
    this.requests.set(id, { kind: "history", convId: conv.id });
    this.ui.render();
  }

  // ---- groups ----

  /** Sends one group operation for `conv`; false (with a notice) when offline. */
  groupRequest(conv, op, body, kind = "groupOp") {
    const id = this.conn.send({ group: { [op]: { groupId: conv.id.slice(2), ...body } } });
    if (!id) {
      if (kind === "groupOp") conv.notice = "Not connected; try again when online.";
      this.ui.render();
      return false;
    }
    if (kind === "groupOp") conv.notice = "";
    this.requests.set(id, { kind, op, convId: conv.id });
    this.ui.render();
    return true;
  }

  /** `get` for the group's members and roles (quietly: errors only mark us a non-member). */
  refreshGroup(conv) {
    if (conv.kind !== "group" || conv.member === false || !this.conn.online) return;
    this.groupRequest(conv, "get", {}, "groupGet");
  }

  togglePanel() {
    this.panelOpen = !this.panelOpen;
    const conv = this.active && this.convs.get(this.active);
    if (this.panelOpen && conv) this.refreshGroup(conv);
    this.ui.render();
  }

  myRole(conv) {
    return conv.info?.members?.find((m) => m.userId === this.me.userId)?.role || null;
  }

  async addMember(conv, username) {
    let user;
    try {
      user = await this.auth.lookup(username.trim().toLowerCase());
    } catch (e) {
      conv.notice = e.status === 404 ? `No such user: ${username.trim()}` : e.message;
      this.ui.render();
      return false;
    }
    this.names.set(user.user_id, user.username);
    this.save();
    return this.groupRequest(conv, "addMembers", { users: [user.user_id] });
  }

  removeMember(conv, userId) {
    return this.groupRequest(conv, "removeMember", { userId });
  }

  setRole(conv, userId, admin) {
    return this.groupRequest(conv, "setRole", { userId, role: admin ? "GROUP_ROLE_ADMIN" : "GROUP_ROLE_MEMBER" });
  }

  rename(conv, name) {
    return this.groupRequest(conv, "update", { name });
  }

  createInvite(conv) {
    return this.groupRequest(conv, "createInvite", {});
  }

  leaveGroup(conv) {
    return this.groupRequest(conv, "leave", {});
  }

  /** Opening `…/#join=<code>` joins the group of that invite code. */
  joinFromHash() {
    const m = /^#join=(.+)$/.exec(location.hash);
    if (!m || !this.me || !this.conn.online) return;
    history.replaceState(null, "", location.pathname + location.search);
    const code = decodeURIComponent(m[1]);
    const id = this.conn.send({ group: { join: { code } } });
    if (id) this.requests.set(id, { kind: "groupJoin" });
  }

  /** Membership changes told by a system message (newer than what we knew). */
  trackMembership(conv, msg) {
    const e = msg.event || {};
    if (msg.seq <= (conv.memberSeq || 0)) return;
    const me = this.me.userId;
    const mentioned = (e.users || []).includes(me);
    let member = null;
    if (e.kind === "GROUP_EVENT_KIND_CREATED") member = true;
    else if (mentioned && (e.kind === "GROUP_EVENT_KIND_MEMBERS_ADDED" || e.kind === "GROUP_EVENT_KIND_JOINED_BY_INVITE"))
      member = true;
    else if (mentioned && (e.kind === "GROUP_EVENT_KIND_MEMBER_REMOVED" || e.kind === "GROUP_EVENT_KIND_MEMBER_LEFT"))
      member = false;
    if (member === null) return;
    conv.member = member;
    conv.memberSeq = msg.seq;
    if (!member) conv.info = null;
  }

  // ---- messages ----

  addMessage(m, { live }) {
    const conv = this.conv(m.conversationId);
    const seq = Number(m.seq);
    const known = conv.msgs.get(seq);
    if (known) {
      // Deleted since we got it (and we missed the messageDeleted push).
      if (m.deleted && !known.deleted && !known.withheld) this.markDeleted(conv, known);
      return conv;
    }
    if (m.withheld) {
      // Sent while we had blocked its sender: it only holds its place in the order.
      conv.msgs.set(seq, { seq, withheld: true, sender: m.senderUser, createdAtMs: Number(m.createdAtMs || 0) });
      const before = conv.cursor;
      this.advance(conv);
      if (live && seq > conv.cursor && before === conv.cursor) this.gapSync();
      return conv;
    }
    const mine = m.senderUser === this.me.userId;
    // Deleted for everyone by an administrator: its place, sender and time, no content.
    const deleted = !!m.deleted;
    const msg = {
      seq,
      sender: m.senderUser,
      clientMsgId: m.clientMsgId,
      system: m.kind === "MESSAGE_KIND_SYSTEM",
      event: m.event,
      deleted,
      media: !deleted && m.kind === "MESSAGE_KIND_MEDIA" ? m.media || {} : null,
      call: !deleted && m.kind === "MESSAGE_KIND_CALL" ? m.call || {} : null,
      text: deleted || m.kind === "MESSAGE_KIND_CALL" ? "" : m.kind === "MESSAGE_KIND_MEDIA" ? m.media?.caption || "" : decodeText(m.body),
      createdAtMs: Number(m.createdAtMs || 0),
    };
    if (mine && m.senderDevice === this.me.deviceId) {
      // Our own send, stored before its ack reached us (e.g. the socket dropped).
      this.acked(m.clientMsgId, conv, seq, msg.createdAtMs);
    }
    conv.msgs.delete(`p:${m.clientMsgId}`);
    conv.msgs.set(seq, msg);
    const e = m.event || {};
    this.resolveAll([m.senderUser, e.actor, e.newOwner, ...(e.users || [])]);
    if (msg.system && conv.kind === "group") {
      const e = m.event || {};
      const named = ["CREATED", "INFO_CHANGED", "SETTINGS_CHANGED"].includes((e.kind || "").replace("GROUP_EVENT_KIND_", ""));
      if (named && seq >= (conv.titleSeq || 0)) {
        conv.title = e.name || "Group";
        conv.titleSeq = seq;
      }
      this.trackMembership(conv, msg);
      // Keep the member list current (and learn the name of a group we were added to).
      if (live && (conv.id === this.active || conv.title === "Group")) this.refreshGroup(conv);
    }
    if (!conv.last || seq >= conv.last.seq) conv.last = { seq, text: this.preview(conv, msg), at: msg.createdAtMs };
    if (!mine && seq > conv.readSent && !this.isShown(conv)) conv.unread++;
    if (!mine) conv.typing.delete(m.senderUser);
    const before = conv.cursor;
    this.advance(conv);
    if (live && seq > conv.cursor && before === conv.cursor) this.gapSync();
    return conv;
  }

  advance(conv) {
    while (conv.msgs.has(conv.cursor + 1)) conv.cursor++;
  }

  /** An administrator deleted this message for everyone: it keeps its place, not its content. */
  markDeleted(conv, msg) {
    Object.assign(msg, { deleted: true, text: "", media: null, call: null });
    if (conv.last?.seq === msg.seq) conv.last.text = this.preview(conv, msg);
  }

  /** A `messageDeleted` push. */
  onMessageDeleted(d) {
    const conv = this.convs.get(d.conversationId);
    if (!conv) return;
    const seq = Number(d.seq);
    const msg = conv.msgs.get(seq);
    if (msg && !msg.withheld) this.markDeleted(conv, msg);
    else if (!msg && conv.last?.seq === seq) conv.last.text = DELETED_TEXT; // not loaded since a reload
    this.save();
  }

  // ---- announcements ----

  announcedKey() {
    return `natter.announced.${this.me.userId}`;
  }

  /** The newest announcement id this browser showed this user. */
  lastAnnouncement() {
    return Number(localStorage.getItem(this.announcedKey()) || 0);
  }

  /** Shows an announcement as a banner unless this page showed it already or its id is
   *  not above `after` (what this browser had shown when the page connected). */
  showAnnouncement(a, after = this.lastAnnouncement()) {
    const id = Number(a.id || 0);
    if (!this.me || !id || id <= after || this.seenAnnouncements.has(id)) return;
    this.seenAnnouncements.add(id);
    this.banners.push({ id, text: a.text || "" });
    if (id > this.lastAnnouncement()) localStorage.setItem(this.announcedKey(), String(id));
  }

  /** Those posted while we were away (each connection asks once; live ones are pushed). */
  async fetchAnnouncements() {
    const after = this.lastAnnouncement();
    let list;
    try {
      list = await announcements(this.auth, after);
    } catch {
      return; // the next connection asks again
    }
    for (const a of list) this.showAnnouncement(a, after);
    this.ui.render();
  }

  dismissAnnouncement(id) {
    this.banners = this.banners.filter((b) => b.id !== id);
    this.ui.render();
  }

  preview(conv, msg) {
    if (msg.deleted) {
      if (conv.kind !== "group") return DELETED_TEXT;
      return `${msg.sender === this.me.userId ? "You" : this.name(msg.sender)}: ${DELETED_TEXT}`;
    }
    let text = msg.system ? this.systemText(msg, conv) : msg.text;
    if (msg.media) text = msg.text ? `${mediaSummary(msg.media).split(" ")[0]} ${msg.text}` : mediaSummary(msg.media);
    if (msg.call) return `${msg.call.media === "CALL_MEDIA_VIDEO" ? "🎥" : "📞"} ${callSummary(msg.call, msg.sender === this.me.userId)}`;
    if (msg.system || conv.kind !== "group") return text;
    return `${msg.sender === this.me.userId ? "You" : this.name(msg.sender)}: ${text}`;
  }

  /** A group system message as a sentence: "ann added bo", "you left". */
  systemText(msg, conv) {
    const e = msg.event || {};
    const actorId = e.actor || msg.sender;
    const actor = this.nameOrYou(actorId);
    const users = (e.users || []).map((u) => this.nameOrYou(u)).join(", ") || actor;
    let text;
    switch (e.kind) {
      case "GROUP_EVENT_KIND_CREATED":
        text = `${actor} created the group "${e.name || ""}"` + (e.users?.length ? ` with ${users}` : "");
        break;
      case "GROUP_EVENT_KIND_MEMBERS_ADDED":
        text = `${actor} added ${users}`;
        break;
      case "GROUP_EVENT_KIND_MEMBER_REMOVED":
        text = `${actor} removed ${users}`;
        break;
      case "GROUP_EVENT_KIND_MEMBER_LEFT":
        text = `${users} left`;
        if (e.newOwner) text += `; ${this.nameOrYou(e.newOwner)} ${e.newOwner === this.me.userId ? "are" : "is"} now the owner`;
        break;
      case "GROUP_EVENT_KIND_ROLE_CHANGED":
        if (e.role === "GROUP_ROLE_ADMIN") text = `${actor} made ${users} an admin`;
        else if ((e.users || []).includes(actorId)) text = `${actor} stepped down as admin`;
        else text = `${actor} removed ${users} as admin`;
        break;
      case "GROUP_EVENT_KIND_OWNER_CHANGED":
        text = `${actor} made ${users} the owner`;
        break;
      case "GROUP_EVENT_KIND_INFO_CHANGED":
      case "GROUP_EVENT_KIND_SETTINGS_CHANGED":
        text = `${actor} ${this.infoChange(msg, conv)}`;
        break;
      case "GROUP_EVENT_KIND_JOINED_BY_INVITE":
        text = `${users} joined using an invite link`;
        break;
      case "GROUP_EVENT_KIND_DELETED":
        text = `${actor} deleted the group`;
        break;
      default:
        text = "The group was updated";
    }
    return text.startsWith("you ") ? "Y" + text.slice(1) : text;
  }

  /** What an info/settings change changed, compared with the newest earlier one we have. */
  infoChange(msg, conv) {
    const e = msg.event || {};
    if (e.kind === "GROUP_EVENT_KIND_SETTINGS_CHANGED") return "changed the group settings";
    let prev = null;
    for (const m of conv?.msgs.values() || []) {
      const k = m.event?.kind;
      if (!m.system || m.seq >= msg.seq || (prev && prev.seq > m.seq)) continue;
      if (k === "GROUP_EVENT_KIND_CREATED" || k === "GROUP_EVENT_KIND_INFO_CHANGED" || k === "GROUP_EVENT_KIND_SETTINGS_CHANGED")
        prev = m;
    }
    const name = e.name || "";
    if (!prev || (prev.event.name || "") !== name)
      return name ? `changed the group name to "${name}"` : "removed the group name";
    if ((prev.event.description || "") !== (e.description || "")) return "changed the group description";
    if ((prev.event.avatarMediaId || "") !== (e.avatarMediaId || "")) return "changed the group photo";
    return "changed the group info";
  }

  nameOrYou(userId) {
    return userId === this.me.userId ? "you" : this.name(userId);
  }

  isShown(conv) {
    return this.active === conv.id && document.visibilityState === "visible";
  }

  gapSync() {
    if (this.gapTimer) return;
    this.gapTimer = setTimeout(() => {
      this.gapTimer = null;
      this.sync();
    }, 300);
  }

  sync() {
    const cursors = [...this.convs.values()]
      .filter((c) => c.cursor > 0)
      .map((c) => ({ conversationId: c.id, seq: String(c.cursor) }));
    const id = this.conn.send({ sync: { cursors } });
    if (id) this.requests.set(id, { kind: "sync" });
  }

  /** `received` up to each conversation's cursor, and `read` for the one shown. */
  acknowledge() {
    for (const conv of this.convs.values()) {
      if (conv.cursor > conv.receivedSent && this.conn.online) {
        if (this.conn.send({ received: { conversationId: conv.id, upToSeq: String(conv.cursor) } }))
          conv.receivedSent = conv.cursor;
      }
    }
    this.markRead();
    this.save();
  }

  markRead() {
    const conv = this.active && this.convs.get(this.active);
    if (!conv || !this.isShown(conv) || !this.conn.online) return;
    conv.unread = 0;
    if (conv.cursor > conv.readSent) {
      if (this.conn.send({ read: { conversationId: conv.id, upToSeq: String(conv.cursor) } }))
        conv.readSent = conv.cursor;
    }
  }

  sendText(text) {
    const conv = this.active && this.convs.get(this.active);
    if (!conv || !text.trim()) return;
    conv.notice = "";
    const entry = {
      clientMsgId: randomId(),
      convId: conv.id,
      toUser: conv.kind === "direct" ? conv.peer : null,
      body: encodeText(text),
      createdAtMs: Date.now(),
      reqId: null,
      sentAt: 0,
    };
    this.outbox.push(entry);
    conv.msgs.set(`p:${entry.clientMsgId}`, {
      seq: 0,
      sender: this.me.userId,
      clientMsgId: entry.clientMsgId,
      text,
      createdAtMs: entry.createdAtMs,
      pending: true,
    });
    conv.last = { seq: conv.last?.seq ?? 0, text: conv.kind === "group" ? `You: ${text}` : text, at: entry.createdAtMs };
    this.typing(false);
    this.save();
    this.flush();
    this.ui.render({ toBottom: true });
  }

  /**
   * Sends a file to the open conversation: shown at once with upload progress, uploaded
   * (resumable when large), then sent as a media message through the outbox like text.
   * `caption` goes with it; `voice`: a voice note recorded here (`kind=audio`).
   */
  async sendFile(file, { caption = "", voice = false } = {}) {
    const conv = this.active && this.convs.get(this.active);
    if (!conv || !file) return;
    conv.notice = "";
    const clientMsgId = randomId();
    const filename = voice ? "" : file.name || "";
    const msg = {
      seq: 0,
      sender: this.me.userId,
      clientMsgId,
      text: caption,
      media: { id: "", filename: file.name || "", size: String(file.size), voice },
      upload: { done: 0, total: file.size },
      createdAtMs: Date.now(),
      pending: true,
    };
    conv.msgs.set(`p:${clientMsgId}`, msg);
    this.typing(false);
    this.ui.render({ toBottom: true });
    let info;
    try {
      info = await uploadMedia(this.auth, file, {
        filename,
        audio: voice,
        voice,
        onProgress: (done, total) => {
          msg.upload = { done, total };
          this.ui.render();
        },
      });
    } catch (e) {
      msg.upload = null;
      const why = MEDIA_ERROR[e.code] || e.message || "failed";
      msg.failed = why;
      conv.notice = `${file.name || "The file"} was not sent: ${why}`;
      this.ui.render();
      return;
    }
    msg.upload = null;
    const shown = { ...mediaRefOf(info), caption };
    msg.media = shown;
    const media = { id: info.id, caption, filename: info.filename || filename, voice };
    const entry = {
      clientMsgId,
      convId: conv.id,
      toUser: conv.kind === "direct" ? conv.peer : null,
      media,
      shown: { ...shown, preview: "" },
      body: "",
      createdAtMs: msg.createdAtMs,
      reqId: null,
      sentAt: 0,
    };
    // The conversation may have moved on (or been left) while the bytes travelled.
    if (!conv.msgs.has(`p:${clientMsgId}`)) return;
    this.outbox.push(entry);
    conv.last = { seq: conv.last?.seq ?? 0, text: this.preview(conv, msg), at: entry.createdAtMs };
    this.save();
    this.flush();
    this.ui.render({ toBottom: true });
  }

  /** Where a user's profile photo `id` (default: a contact's, as we know it) loads from ("" for none). */
  avatarSrc(userId, id = this.contacts.get(userId)?.profile?.avatarMediaId) {
    return id ? avatarUrl(id, this.me?.accessToken, userId) : "";
  }

  /** Where an `<img>` etc. loads a message's media from (with our current token). */
  mediaSrc(conv, m) {
    if (!m.media?.id) return "";
    return mediaUrl(m.media.id, this.me?.accessToken, m.seq ? conv.id : null, m.seq);
  }

  /** Sends (again) every unacked message, with its original clientMsgId. */
  flush() {
    if (!this.conn.online) return;
    const now = Date.now();
    for (const o of this.outbox) {
      if (o.reqId && now - o.sentAt < RESEND_AFTER_MS) continue;
      const target = o.toUser ? { toUser: o.toUser } : { conversationId: o.convId };
      const send = o.media
        ? { clientMsgId: o.clientMsgId, ...target, kind: "MESSAGE_KIND_MEDIA", media: o.media }
        : { clientMsgId: o.clientMsgId, ...target, kind: "MESSAGE_KIND_TEXT", body: o.body };
      const id = this.conn.send({ send });
      if (!id) return;
      o.reqId = id;
      o.sentAt = now;
      this.requests.set(id, { kind: "send", clientMsgId: o.clientMsgId });
    }
  }

  acked(clientMsgId, conv, seq, createdAtMs) {
    const i = this.outbox.findIndex((o) => o.clientMsgId === clientMsgId);
    if (i >= 0) this.outbox.splice(i, 1);
    const pending = conv.msgs.get(`p:${clientMsgId}`);
    conv.msgs.delete(`p:${clientMsgId}`);
    if (pending && !conv.msgs.has(seq)) {
      conv.msgs.set(seq, { ...pending, seq, pending: false, createdAtMs: createdAtMs || pending.createdAtMs });
      if (!conv.last || seq >= conv.last.seq)
        conv.last = { seq, text: this.preview(conv, conv.msgs.get(seq)), at: createdAtMs };
    }
    this.advance(conv);
  }

  /**
   * Tells the others in the open conversation that we are typing (`state` TYPING) or
   * recording a voice note (RECORDING): at most every TYPING_RESEND_MS while it goes on,
   * so their indicator (which expires by itself) stays; `false` stops it at once.
   */
  typing(active, state = TYPING) {
    if (!active) {
      const convId = this.typingConv;
      this.typingConv = null;
      this.typingSentAt = 0;
      if (convId && this.conn.online) this.conn.send({ typing: { conversationId: convId, active: false } });
      return;
    }
    const conv = this.active && this.convs.get(this.active);
    if (!conv || !this.conn.online || conv.member === false) return;
    if (conv.kind === "direct" && this.blocked.has(conv.peer)) return;
    const now = Date.now();
    if (this.typingConv === conv.id && this.typingState === state && now - this.typingSentAt < TYPING_RESEND_MS) return;
    if (this.typingConv && this.typingConv !== conv.id) this.typing(false);
    this.typingConv = conv.id;
    this.typingState = state;
    this.typingSentAt = now;
    this.conn.send({ typing: { conversationId: conv.id, active: true, state } });
  }

  // ---- calls (docs/protocol.md "Calls"): one-to-one voice and video over WebRTC ----
  //
  // `this.call` is this device's call: {id, convId, peer, video, outgoing, state, pc,
  // local, remote, candidates (remote ones waiting for the remote description),
  // outbox (local ones waiting until our SDP went out), connection (the peer
  // connection's state), muted, cameraOff, answeredAt, status, peerLost}. `state`:
  // "starting" (caller, before the offer went out), "outgoing" (ringing at the other
  // side), "incoming" (ringing here), "connecting" (answered, media not yet flowing),
  // "active", "ended" (shown for a moment, then `this.call` is null again).

  /** Sends one call operation; false when offline. */
  callRequest(op, body, meta = {}) {
    const id = this.conn.send({ call: { [op]: body } });
    if (!id) return false;
    this.requests.set(id, { kind: "call", op, callId: body.callId, ...meta });
    return true;
  }

  /** Places a call to the peer of the (direct) conversation `convId`. */
  async startCall(convId, video) {
    const conv = convId && this.convs.get(convId);
    if (!conv || conv.kind !== "direct") return;
    if (this.call && this.call.state !== "ended") {
      conv.notice = "You are already in a call.";
      this.ui.render();
      return;
    }
    if (!this.conn.online) {
      conv.notice = "Not connected; try again when online.";
      this.ui.render();
      return;
    }
    conv.notice = "";
    const call = this.newCall({ id: newCallId(), convId, peer: conv.peer, video, outgoing: true, state: "starting" });
    this.ui.render();
    try {
      await this.setUpPeer(call);
      if (call.state === "ended") return;
      const offer = await call.pc.createOffer();
      await call.pc.setLocalDescription(offer);
      if (call.state === "ended") return;
      const start = {
        callId: call.id,
        toUser: call.peer,
        media: video ? "CALL_MEDIA_VIDEO" : "CALL_MEDIA_VOICE",
        offer: sdpOut(call.pc.localDescription),
      };
      if (!this.callRequest("start", start)) throw new Error("not connected");
      call.placed = true;
      call.state = "outgoing";
      this.flushCandidates(call);
    } catch (e) {
      this.endCall(call, this.mediaFailure(e, "The call could not be placed"));
    }
    this.ui.render();
  }

  newCall(fields) {
    if (this.call) this.dropCall(this.call);
    const call = {
      pc: null,
      local: null,
      remote: null,
      candidates: [],
      outbox: [],
      placed: false, // our SDP (offer or answer) went out: our candidates may follow
      connection: "new",
      muted: false,
      cameraOff: false,
      answeredAt: 0,
      status: "",
      peerLost: false,
      ...fields,
    };
    this.call = call;
    this.resolve(call.peer);
    return call;
  }

  /** Camera and microphone, the ICE servers and the peer connection of `call`. */
  async setUpPeer(call) {
    const [servers, local] = await Promise.all([
      iceServers(this.auth).catch(() => []),
      navigator.mediaDevices.getUserMedia({ audio: true, video: call.video }),
    ]);
    call.local = local;
    if (call.state === "ended" || this.call !== call) {
      for (const t of local.getTracks()) t.stop();
      return;
    }
    const pc = new RTCPeerConnection({ iceServers: servers });
    call.pc = pc;
    for (const track of local.getTracks()) pc.addTrack(track, local);
    pc.onicecandidate = (ev) => {
      if (!ev.candidate || !ev.candidate.candidate) return; // the end of candidates: nothing to say
      call.outbox.push(candidateOut(ev.candidate));
      this.flushCandidates(call);
    };
    pc.ontrack = (ev) => {
      if (!call.remote) call.remote = ev.streams[0] || new MediaStream();
      if (!call.remote.getTracks().includes(ev.track)) call.remote.addTrack(ev.track);
      this.ui.render();
    };
    pc.onconnectionstatechange = () => {
      if (call.pc !== pc) return;
      call.connection = pc.connectionState;
      if (pc.connectionState === "connected" && call.state === "connecting") {
        call.state = "active";
        if (!call.answeredAt) call.answeredAt = Date.now();
      }
      this.ui.render();
    };
  }

  /** Sends the local candidates gathered so far, once our SDP went out. */
  flushCandidates(call) {
    if (!call.placed || call.state === "ended") return;
    while (call.outbox.length) {
      const candidate = call.outbox[0];
      if (!this.callRequest("signal", { callId: call.id, toDevice: "0", candidate }, { quiet: true })) return;
      call.outbox.shift();
    }
  }

  /** A remote candidate: added once the remote description is set, queued before. */
  async addCandidate(call, c) {
    const init = candidateIn(c);
    if (!init) return;
    if (!call.pc || !call.pc.remoteDescription) {
      call.candidates.push(init);
      return;
    }
    await call.pc.addIceCandidate(init).catch(() => {});
  }

  async setRemote(call, desc) {
    await call.pc.setRemoteDescription(desc);
    const queued = call.candidates.splice(0);
    for (const init of queued) await call.pc.addIceCandidate(init).catch(() => {});
  }

  /** Answers the call ringing here. */
  async answerCall() {
    const call = this.call;
    if (!call || call.state !== "incoming") return;
    call.state = "connecting";
    call.status = "";
    this.open(call.convId);
    try {
      await this.setUpPeer(call);
      if (call.state === "ended") return;
      await this.setRemote(call, sdpIn(call.offer));
      const answer = await call.pc.createAnswer();
      await call.pc.setLocalDescription(answer);
      if (call.state === "ended") return;
      if (!this.callRequest("answer", { callId: call.id, answer: sdpOut(call.pc.localDescription) }))
        throw new Error("not connected");
      call.placed = true;
      this.flushCandidates(call);
    } catch (e) {
      const why = this.mediaFailure(e, "The call could not be answered");
      if (call.state !== "ended") this.callRequest("hangup", { callId: call.id }, { quiet: true });
      this.endCall(call, why);
    }
    this.ui.render();
  }

  declineCall() {
    const call = this.call;
    if (!call || call.state !== "incoming") return;
    this.callRequest("decline", { callId: call.id }, { quiet: true });
    this.endCall(call, "Call declined");
  }

  /** Hangs up (or cancels, or declines) this device's call. */
  hangup() {
    const call = this.call;
    if (!call || call.state === "ended") return;
    if (call.state === "incoming") return this.declineCall();
    if (call.placed || call.state !== "starting") this.callRequest("hangup", { callId: call.id }, { quiet: true });
    this.endCall(call, call.state === "outgoing" ? "Call cancelled" : "Call ended");
  }

  toggleMute() {
    const call = this.call;
    if (!call || !call.local) return;
    call.muted = !call.muted;
    for (const t of call.local.getAudioTracks()) t.enabled = !call.muted;
    this.ui.render();
  }

  toggleCamera() {
    const call = this.call;
    if (!call || !call.local) return;
    call.cameraOff = !call.cameraOff;
    for (const t of call.local.getVideoTracks()) t.enabled = !call.cameraOff;
    this.ui.render();
  }

  /** Closes the "call ended" panel before it goes by itself. */
  dismissCall() {
    if (this.call?.state !== "ended") return;
    this.call = null;
    this.ui.render();
  }

  /** Stops the media and closes the peer connection of `call` (nothing shown). */
  dropCall(call) {
    for (const t of call.local?.getTracks() || []) t.stop();
    if (call.pc) {
      call.pc.onicecandidate = call.pc.ontrack = call.pc.onconnectionstatechange = null;
      call.pc.close();
    }
    call.pc = null;
    call.local = null;
    call.remote = null;
  }

  /** The call is over: media stopped, `status` shown for a moment. */
  endCall(call, status) {
    if (!call || call.state === "ended") return;
    this.dropCall(call);
    call.state = "ended";
    call.connection = "closed";
    call.status = status;
    call.peerLost = false;
    setTimeout(() => {
      if (this.call === call) {
        this.call = null;
        this.ui.render();
      }
    }, CALL_ENDED_SHOWN_MS);
    this.ui.render();
  }

  mediaFailure(e, what) {
    if (e?.name === "NotAllowedError") return `${what}: the microphone${this.call?.video ? " or camera" : ""} is not allowed`;
    if (e?.name === "NotFoundError") return `${what}: no microphone${this.call?.video ? " or camera" : ""} found`;
    return `${what}${e?.message ? `: ${e.message}` : ""}`;
  }

  onCallEvent(ev) {
    const info = ev.call || {};
    const type = (ev.type || "").replace("CALL_EVENT_TYPE_", "");
    const call = this.call && this.call.id === info.callId ? this.call : null;
    if (type === "RINGING") {
      if (this.call && this.call.state !== "ended") return; // busy here (the server rings only when we are free)
      if (info.group) return; // group calls: not in this client
      this.newCall({
        id: info.callId,
        convId: info.conversationId,
        peer: ev.fromUser || info.callerUser,
        video: info.media === "CALL_MEDIA_VIDEO",
        outgoing: false,
        state: "incoming",
        offer: ev.description,
      });
      return;
    }
    if (!call || call.state === "ended") return;
    switch (type) {
      case "ANSWERED":
        if (!call.outgoing || !call.pc) return;
        call.state = call.connection === "connected" ? "active" : "connecting";
        call.answeredAt = Date.now();
        if (ev.description) this.setRemote(call, sdpIn(ev.description)).catch((e) => this.failCall(call, e));
        break;
      case "SIGNAL":
        if (ev.candidate) this.addCandidate(call, ev.candidate);
        if (ev.description?.sdp && call.pc) this.renegotiate(call, ev.description).catch((e) => this.failCall(call, e));
        break;
      case "ENDED": {
        const reason = ev.reason || info.endReason;
        this.endCall(call, CALL_END_TEXT[reason] || "Call ended");
        break;
      }
      case "PEER_LOST":
        call.peerLost = true;
        break;
      case "PEER_BACK":
        call.peerLost = false;
        break;
    }
  }

  /** SDP from the other side after the answer: answer an offer, take an answer. */
  async renegotiate(call, d) {
    const desc = sdpIn(d);
    if (desc.type === "offer") {
      await this.setRemote(call, desc);
      const answer = await call.pc.createAnswer();
      await call.pc.setLocalDescription(answer);
      this.callRequest("signal", { callId: call.id, toDevice: "0", description: sdpOut(call.pc.localDescription) }, { quiet: true });
    } else {
      await this.setRemote(call, desc);
    }
  }

  failCall(call, e) {
    if (this.call !== call || call.state === "ended") return;
    this.callRequest("hangup", { callId: call.id }, { quiet: true });
    this.endCall(call, `The call failed${e?.message ? `: ${e.message}` : ""}`);
  }

  onCallResult(res, req) {
    const info = res.call || {};
    const call = this.call && this.call.id === info.callId ? this.call : null;
    if (!call || info.state !== "CALL_STATE_ENDED") return;
    // Ended at once (the callee is busy), or our hangup's answer.
    this.endCall(call, CALL_END_TEXT[info.endReason] || "Call ended");
  }

  onCallError(e, req, message) {
    const call = this.call && this.call.id === req.callId ? this.call : null;
    if (!call || call.state === "ended") return;
    if (e.code === "ERROR_CODE_CALL_ENDED") {
      this.endCall(call, "Call ended");
    } else if (req.op === "start" || req.op === "answer") {
      this.endCall(call, `The call failed: ${message}`);
    }
  }

  // ---- presence ----

  /** Whose presence we show: the peers of direct conversations and our contacts. */
  presenceTargets() {
    const ids = new Set();
    for (const c of this.convs.values()) if (c.kind === "direct" && c.peer) ids.add(c.peer);
    for (const id of this.contacts.keys()) ids.add(id);
    ids.delete(this.me.userId);
    for (const id of this.blocked) ids.delete(id);
    return ids;
  }

  /** Subscribes to the targets not yet subscribed on this connection (or, `all`, every one). */
  subscribePresence(all = false) {
    if (!this.me || !this.conn.online) return;
    this.presenceDirty = false;
    const want = [...this.presenceTargets()].filter((id) => all || !this.presenceSubs.has(id));
    if (all && !want.length) this.presenceRenewAt = 0;
    for (let i = 0; i < want.length; i += PRESENCE_BATCH) {
      const userIds = want.slice(i, i + PRESENCE_BATCH);
      const id = this.conn.send({ presenceSubscribe: { userIds } });
      if (!id) return;
      for (const u of userIds) this.presenceSubs.add(u);
      this.requests.set(id, { kind: "presence", userIds, all });
    }
  }

  /** Stops the subscriptions of users we no longer show (and forgets their presence). */
  unsubscribePresence(ids) {
    const targets = this.presenceTargets();
    const drop = ids.filter((id) => !targets.has(id));
    for (const id of drop) this.presence.delete(id);
    const subscribed = drop.filter((id) => this.presenceSubs.has(id));
    if (!subscribed.length || !this.conn.online) return;
    for (const id of subscribed) this.presenceSubs.delete(id);
    this.conn.send({ presenceSubscribe: { userIds: subscribed, unsubscribe: true } });
  }

  setPresence(p) {
    if (!p?.userId) return;
    if (this.blocked.has(p.userId)) {
      this.presence.delete(p.userId);
    } else if (p.state === "PRESENCE_STATE_ONLINE") {
      this.presence.set(p.userId, { online: true, lastSeenMs: 0 });
    } else if (p.state === "PRESENCE_STATE_OFFLINE") {
      this.presence.set(p.userId, { online: false, lastSeenMs: Number(p.lastSeenMs || 0) });
    } else {
      this.presence.delete(p.userId); // hidden from us
    }
  }

  /** {online, lastSeenMs} of a user as far as we may know it now, else null. */
  presenceOf(userId) {
    if (!userId || !this.conn.online || this.blocked.has(userId)) return null;
    return this.presence.get(userId) || null;
  }

  onPresenceSnapshot(snap, req) {
    const got = new Set();
    for (const p of snap.users || []) {
      got.add(p.userId);
      this.setPresence(p);
    }
    for (const id of req?.userIds || []) if (!got.has(id)) this.presence.delete(id);
    const ttl = Number(snap.subscriptionTtlS || 0);
    // Everyone again at half the lease (a new target's lease runs longer: that is fine).
    if (ttl > 0 && (req?.all || !this.presenceRenewAt)) this.presenceRenewAt = Date.now() + ttl * 500;
  }

  // ---- people: profile, privacy, contacts, blocks, status updates ----

  /** Sends one people operation; `meta.quiet`: failures show no notice. */
  peopleRequest(op, body = {}, meta = {}) {
    const id = this.conn.send({ people: { [op]: body } });
    if (!id) {
      if (!meta.quiet) {
        this.people.notice = "Not connected; try again when online.";
        this.people.info = "";
        this.ui.render();
      }
      return false;
    }
    if (!meta.quiet) this.people.notice = "";
    this.requests.set(id, { kind: "people", op, ...meta });
    return true;
  }

  openPeople(tab) {
    if (tab) this.people.tab = tab;
    this.peopleOpen = true;
    this.people.notice = "";
    this.people.info = "";
    this.typing(false);
    this.refreshPeople();
    this.ui.render();
  }

  closePeople() {
    this.peopleOpen = false;
    this.ui.render();
  }

  /** Asks for what the open tab shows. */
  refreshPeople() {
    if (!this.conn.online) return;
    const quiet = { quiet: true };
    switch (this.people.tab) {
      case "status":
        this.peopleRequest("statusList", {}, quiet);
        this.peopleRequest("statusMine", {}, quiet);
        break;
      case "contacts":
        this.peopleRequest("contactList", {}, quiet);
        break;
      case "blocked":
        this.peopleRequest("blockList", {}, quiet);
        break;
      case "profile":
        this.peopleRequest("profileGet", {}, quiet);
        break;
      case "privacy":
        this.peopleRequest("privacyGet", {}, quiet);
        break;
    }
  }

  updateProfile(fields) {
    return this.peopleRequest("profileUpdate", fields);
  }

  setPrivacy(field, value) {
    return this.peopleRequest("privacySet", { settings: { [field]: value } });
  }

  /** Adds a contact by username (or renames one), with my own name for them. */
  addContact(username, name) {
    const body = { username: username.trim().toLowerCase(), name: name.trim() };
    return this.peopleRequest("contactAdd", body, { username: username.trim(), form: "contact-form" });
  }

  addContactById(userId, convId) {
    return this.peopleRequest("contactAdd", { userId }, { userId, convId });
  }

  removeContact(userId) {
    return this.peopleRequest("contactRemove", { userId }, { userId });
  }

  /** `convId`: asked from that chat (its notice shows a failure). */
  block(userId, convId) {
    return this.peopleRequest("block", { userId }, { userId, convId });
  }

  unblock(userId, convId) {
    return this.peopleRequest("unblock", { userId }, { userId, convId });
  }

  /** Finds a user by username, then blocks them. */
  blockUsername(username) {
    const name = username.trim().toLowerCase();
    return this.peopleRequest("find", { username: name }, { then: "block", username: name, form: "block-form" });
  }

  postStatus(text) {
    return this.peopleRequest("statusPost", { postId: randomId(), text }, { form: "status-form" });
  }

  deleteStatus(statusId) {
    return this.peopleRequest("statusDelete", { statusId }, { statusId });
  }

  statusViewers(statusId) {
    if (this.people.viewersOf === statusId) {
      this.people.viewersOf = null;
      this.ui.render();
      return true;
    }
    this.people.viewersOf = statusId;
    return this.peopleRequest("statusViewers", { statusId }, { statusId });
  }

  /** Shows a contact's statuses (null: closes them) and marks the unseen ones viewed. */
  viewStatuses(userId) {
    this.people.viewing = userId;
    const entry = userId && this.people.statuses.find((u) => u.userId === userId);
    for (const s of entry?.statuses || []) {
      if (!s.viewed) this.peopleRequest("statusView", { statusId: s.statusId }, { statusId: s.statusId, quiet: true });
    }
    this.ui.render();
  }

  onPeopleResult(res, req) {
    const p = this.people;
    const op = req?.op;
    if (!req?.quiet) p.info = "";
    if (req?.form && op !== "find") p.reset.add(req.form);
    switch (op) {
      case "profileGet":
      case "profileUpdate":
        p.profile = res.profiles?.[0] || {};
        p.profileFresh = true;
        if (op === "profileUpdate") {
          p.info = "Profile saved.";
          p.profileDirty = false; // the form now shows what was saved
        }
        break;
      case "privacyGet":
      case "privacySet":
        p.privacy = res.privacy || {};
        if (op === "privacySet") p.info = "Privacy settings saved.";
        break;
      case "contactAdd": {
        const c = res.contact;
        if (!c?.userId) break;
        const renamed = this.contacts.has(c.userId);
        this.contacts.set(c.userId, c);
        if (c.username) this.names.set(c.userId, c.username);
        p.editing = null;
        p.info = renamed ? `Saved “${c.name || c.username}”` : `Added “${c.name || c.username}” to your contacts`;
        this.subscribePresence();
        break;
      }
      case "contactRemove":
        this.contacts.delete(req.userId);
        this.unsubscribePresence([req.userId]);
        break;
      case "contactList":
        this.contacts = new Map((res.contacts || []).map((c) => [c.userId, c]));
        for (const c of this.contacts.values()) if (c.username) this.names.set(c.userId, c.username);
        this.subscribePresence();
        break;
      case "find": {
        const user = res.profiles?.[0];
        if (!user?.userId) break;
        if (user.username) this.names.set(user.userId, user.username);
        if (req.then === "block") {
          if (user.userId === this.me.userId) p.notice = "You cannot block yourself.";
          else this.peopleRequest("block", { userId: user.userId }, { userId: user.userId, form: req.form });
        }
        break;
      }
      case "block":
      case "unblock":
      case "blockList": {
        const before = this.blocked;
        this.blocked = new Set(res.blocked || []);
        for (const id of this.blocked) this.presence.delete(id);
        const nowBlocked = [...this.blocked].filter((id) => this.presenceSubs.has(id));
        if (nowBlocked.length) this.unsubscribePresence(nowBlocked);
        this.subscribePresence(); // those unblocked
        if (op === "block") p.info = `Blocked “${this.contactName(req.userId)}”`;
        if (op === "unblock" && before.has(req.userId)) p.info = `Unblocked “${this.contactName(req.userId)}”`;
        this.resolveAll(this.blocked);
        break;
      }
      case "statusPost":
        if (res.status && !p.mine.some((s) => s.statusId === res.status.statusId)) p.mine.push(res.status);
        p.info = "Status posted.";
        break;
      case "statusList":
        p.statuses = res.byUser || [];
        for (const u of p.statuses) if (u.username) this.names.set(u.userId, u.username);
        break;
      case "statusMine":
        p.mine = res.statuses || [];
        break;
      case "statusView":
        for (const u of p.statuses) for (const s of u.statuses || []) if (s.statusId === req.statusId) s.viewed = true;
        break;
      case "statusViewers":
        p.viewers.set(req.statusId, res.viewers || []);
        this.resolveAll((res.viewers || []).map((v) => v.userId));
        break;
      case "statusDelete":
        p.mine = p.mine.filter((s) => s.statusId !== req.statusId);
        if (p.viewersOf === req.statusId) p.viewersOf = null;
        break;
    }
    this.save();
  }

  tick() {
    const now = Date.now();
    let changed = false;
    for (const c of this.convs.values()) {
      for (const [u, t] of c.typing) {
        if (t.until < now) {
          c.typing.delete(u);
          changed = true;
        }
      }
    }
    if (this.outbox.length) this.flush();
    if (this.call?.state === "active") changed = true; // the call's clock
    if (this.conn.online && this.presenceDirty) this.subscribePresence();
    if (this.conn.online && this.presenceRenewAt && now >= this.presenceRenewAt) {
      this.presenceRenewAt = 0;
      this.subscribePresence(true);
      if (!this.presenceRenewAt) this.presenceRenewAt = now + PRESENCE_RETRY_MS;
    }
    // Redraw each minute too, for "last seen" texts.
    const minute = Math.floor(now / 60_000);
    if (minute !== this.lastMinute) {
      this.lastMinute = minute;
      changed = true;
    }
    if (changed || this.connState.state === "offline") this.ui.render();
  }

  // ---- server frames ----

  onFrame(f) {
    const req = f.id && f.id !== "0" ? this.requests.get(f.id) : null;
    if (f.welcome) {
      this.names.set(f.welcome.userId, f.welcome.username);
      this.sync();
      this.fetchAnnouncements();
      this.presenceSubs.clear();
      this.subscribePresence(true);
      this.peopleRequest("contactList", {}, { quiet: true });
      this.peopleRequest("blockList", {}, { quiet: true });
      if (this.peopleOpen) this.refreshPeople();
      const id = this.conn.send({ group: { list: {} } });
      if (id) this.requests.set(id, { kind: "groupList" });
      this.flush();
      if (this.call) this.flushCandidates(this.call);
      const conv = this.active && this.convs.get(this.active);
      if (conv && conv.msgs.size === 0) this.loadHistory(conv);
      if (conv) this.refreshGroup(conv);
      this.joinFromHash();
    } else if (f.message) {
      const conv = this.addMessage(f.message, { live: true });
      this.acknowledge();
      this.ui.render({ toBottom: conv.id === this.active ? "ifNear" : false });
      return;
    } else if (f.syncBatch) {
      for (const m of f.syncBatch.messages || []) this.addMessage(m, { live: false });
    } else if (f.syncDone) {
      this.requests.delete(f.id);
      this.acknowledge();
    } else if (f.ack) {
      this.requests.delete(f.id);
      const conv = this.conv(f.ack.conversationId);
      this.acked(f.ack.clientMsgId, conv, Number(f.ack.seq), Number(f.ack.createdAtMs));
      this.acknowledge();
    } else if (f.receipt) {
      this.onReceipt(f.receipt);
    } else if (f.typing) {
      const t = f.typing;
      if (t.userId !== this.me.userId && !this.blocked.has(t.userId)) {
        this.resolve(t.userId);
        const conv = this.conv(t.conversationId);
        if (t.active) {
          conv.typing.set(t.userId, {
            until: Date.now() + (Number(t.expiresInMs) || TYPING_TTL_MS),
            state: t.state === RECORDING ? "recording" : "typing",
          });
        } else conv.typing.delete(t.userId);
      }
    } else if (f.historyPage) {
      this.requests.delete(f.id);
      const conv = this.conv(f.historyPage.conversationId);
      for (const m of f.historyPage.messages || []) this.addMessage(m, { live: false });
      conv.more = !!f.historyPage.more;
      conv.loading = false;
      this.acknowledge();
      this.ui.render({ keepBottomOffset: true });
      return;
    } else if (f.groupResult) {
      this.requests.delete(f.id);
      this.onGroupResult(f.groupResult, req);
    } else if (f.peopleResult) {
      this.requests.delete(f.id);
      this.onPeopleResult(f.peopleResult, req);
    } else if (f.presenceSnapshot) {
      this.requests.delete(f.id);
      this.onPresenceSnapshot(f.presenceSnapshot, req);
    } else if (f.presence) {
      this.setPresence(f.presence);
    } else if (f.callEvent) {
      this.onCallEvent(f.callEvent);
    } else if (f.messageDeleted) {
      this.onMessageDeleted(f.messageDeleted);
    } else if (f.announcement) {
      // Pushed live: new for this page whatever another tab of this browser already
      // stored as shown (each page still shows an id once).
      this.showAnnouncement(f.announcement, 0);
    } else if (f.callResult) {
      this.requests.delete(f.id);
      this.onCallResult(f.callResult, req);
    } else if (f.error) {
      this.requests.delete(f.id);
      this.onError(f.error, req);
    }
    this.ui.render();
  }

  onReceipt(r) {
    const conv = this.conv(r.conversationId);
    const upTo = Number(r.upToSeq);
    const read = r.kind === "RECEIPT_KIND_READ";
    this.resolve(r.userId);
    if (r.userId === this.me.userId) {
      // Another device of ours.
      if (read) {
        conv.readSent = Math.max(conv.readSent, upTo);
        conv.unread = 0;
      }
    } else {
      conv.peerDelivered = Math.max(conv.peerDelivered, upTo);
      if (read) conv.peerRead = Math.max(conv.peerRead, upTo);
    }
    this.save();
  }

  onGroupResult(res, req) {
    for (const g of res.groups || (res.group ? [res.group] : [])) {
      if (g.deleted) continue;
      const conv = this.conv(g.conversationId);
      conv.title = g.name || "Group";
      conv.titleSeq = Math.max(conv.titleSeq || 0, conv.cursor);
      this.resolveAll((g.members || []).map((m) => m.userId));
      if (req?.kind !== "groupList" && req?.op !== "leave" && g.members?.length) {
        conv.info = g;
        conv.member = g.members.some((m) => m.userId === this.me.userId);
      }
    }
    const conv = res.group && this.conv(res.group.conversationId);
    if (conv && req?.op === "leave") {
      conv.member = false;
      conv.info = null;
    }
    if (conv && res.invite?.code) {
      conv.invite = `${location.origin}${location.pathname}#join=${encodeURIComponent(res.invite.code)}`;
    }
    if (req?.kind === "groupCreate" && res.group) this.open(res.group.conversationId);
    if (req?.kind === "groupJoin" && conv) {
      this.listNotice = "";
      if (res.pendingApproval) conv.notice = "Your request to join waits for an admin's approval.";
      else conv.member = true;
      this.open(conv.id);
    }
    this.save();
  }

  onError(e, req) {
    const message = readableError(e);
    if (req?.kind === "send") {
      // Not stored: sent again (same clientMsgId) by tick(). RATE_LIMITED too: the
      // server refused it for now, and a later try is stored once.
      if (
        e.code === "ERROR_CODE_UNAVAILABLE" ||
        e.code === "ERROR_CODE_INTERNAL" ||
        e.code === "ERROR_CODE_RATE_LIMITED"
      ) {
        const o = this.outbox.find((x) => x.clientMsgId === req.clientMsgId);
        if (o) o.reqId = null; // retried by tick()
        return;
      }
      const i = this.outbox.findIndex((o) => o.clientMsgId === req.clientMsgId);
      if (i >= 0) {
        const [o] = this.outbox.splice(i, 1);
        const conv = this.conv(o.convId);
        const msg = conv.msgs.get(`p:${o.clientMsgId}`);
        if (msg) msg.failed = message;
        conv.notice = `Your message was not sent: ${message}`;
      }
      this.save();
    } else if (req?.kind === "history") {
      const conv = this.conv(req.convId);
      conv.loading = false;
      conv.more = false;
    } else if (req?.kind === "sync" && e.code === "ERROR_CODE_UNAVAILABLE") {
      setTimeout(() => this.sync(), 2000);
    } else if (req?.kind === "groupCreate") {
      this.ui.groupError(message);
    } else if (req?.kind === "groupJoin") {
      this.listNotice = `Could not join the group: ${message}`;
    } else if (req?.kind === "groupGet") {
      const conv = this.conv(req.convId);
      if (e.code === "ERROR_CODE_FORBIDDEN" || e.code === "ERROR_CODE_NOT_FOUND") {
        conv.member = false;
        conv.info = null;
      }
    } else if (req?.kind === "groupOp") {
      this.conv(req.convId).notice = message;
    } else if (req?.kind === "presence") {
      // Try again later (e.g. over the subscription limit, or the service is busy).
      for (const id of req.userIds) this.presenceSubs.delete(id);
      if (!this.presenceRenewAt) this.presenceRenewAt = Date.now() + PRESENCE_RETRY_MS;
    } else if (req?.kind === "call") {
      this.onCallError(e, req, message);
    } else if (req?.kind === "people") {
      if (req.op === "statusViewers") this.people.viewersOf = null;
      if (req.quiet) return;
      if (req.convId) {
        this.conv(req.convId).notice = message;
        return;
      }
      this.people.info = "";
      if (e.code === "ERROR_CODE_NOT_FOUND" && req.username) this.people.notice = `No such user: ${req.username}`;
      else this.people.notice = message;
    }
  }
}

window.natter = new App();
