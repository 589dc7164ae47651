// Draws the app's state with plain DOM calls (textContent only: nothing the server
// sends is ever parsed as HTML) and turns user input into calls on the app.

const $ = (sel) => document.querySelector(sel);

/** What a message deleted for everyone (by an administrator) shows instead of its content. */
export const DELETED_TEXT = "This message was deleted";

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("data-") || k.startsWith("aria-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) if (c) e.append(c);
  return e;
}

function time(ms) {
  return ms ? new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "";
}

function day(ms) {
  const d = new Date(ms);
  const today = new Date();
  const yesterday = new Date(Date.now() - 86_400_000);
  if (d.toDateString() === today.toDateString()) return "Today";
  if (d.toDateString() === yesterday.toDateString()) return "Yesterday";
  return d.toLocaleDateString([], { weekday: "long", day: "numeric", month: "long", year: "numeric" });
}

/** "today at 14:05", "yesterday at 09:12", "Tuesday at 18:30", "3 Nov at 07:45". */
function lastSeen(ms) {
  const d = new Date(ms);
  const now = new Date();
  const yesterday = new Date(Date.now() - 86_400_000);
  let when;
  if (d.toDateString() === now.toDateString()) when = "today";
  else if (d.toDateString() === yesterday.toDateString()) when = "yesterday";
  else if (Date.now() - ms < 6 * 86_400_000) when = d.toLocaleDateString([], { weekday: "long" });
  else when = d.toLocaleDateString([], { day: "numeric", month: "short" });
  return `${when} at ${time(ms)}`;
}

/** "14:05" today, else "yesterday", "Tuesday" or "3 Nov": for the conversation list. */
function lastSeenShort(ms) {
  const d = new Date(ms);
  if (d.toDateString() === new Date().toDateString()) return time(ms);
  return lastSeen(ms).replace(/ at .*$/, "");
}

/**
 * A user's presence as shown: {state: "online" | "offline", text, short}, or null
 * (unknown, or hidden from us).
 */
function presenceLabel(p) {
  if (!p) return null;
  if (p.online) return { state: "online", text: "online", short: "online" };
  if (!p.lastSeenMs) return { state: "offline", text: "offline", short: "" };
  return { state: "offline", text: `last seen ${lastSeen(p.lastSeenMs)}`, short: `last seen ${lastSeenShort(p.lastSeenMs)}` };
}

/** Photo URLs that failed to load (not asked again on every redraw). */
const brokenAvatars = new Set();

/**
 * An avatar: the profile photo at `src` if there is one, else (or when it fails to
 * load: hidden since, say) the initial of `name`; with the presence dot.
 */
function avatar(name, src, presence, cls = "avatar") {
  const initial = name.slice(0, 1).toUpperCase();
  const span = el("span", { class: cls, "aria-hidden": "true" });
  if (src && !brokenAvatars.has(src)) {
    const img = el("img", { class: "avatar-img", src, alt: "" });
    img.onerror = () => {
      brokenAvatars.add(src);
      img.replaceWith(initial);
    };
    span.append(img);
  } else {
    span.append(initial);
  }
  const d = dot(presence);
  if (d) span.append(d);
  return span;
}

/** The presence dot on an avatar (absent while presence is unknown or hidden). */
function dot(label) {
  if (!label) return null;
  return el("span", { class: `dot ${label.state}`, title: label.text, "data-presence": label.state });
}

function typingText(state) {
  return state === "recording" ? "recording audio…" : "typing…";
}

/** "📷 Photo", "🎤 Voice message 0:07", "📄 report.pdf": a media in one line. */
export function mediaSummary(media) {
  const kind = (media?.kind || "").replace("MEDIA_KIND_", "");
  const duration = Number(media?.durationMs || 0) ? ` ${durationText(media.durationMs)}` : "";
  switch (kind) {
    case "IMAGE":
      return "📷 Photo";
    case "VIDEO":
      return `🎥 Video${duration}`;
    case "AUDIO":
      return media.voice ? `🎤 Voice message${duration}` : `🎵 ${media.filename || "Audio"}${duration}`;
    case "DOCUMENT":
      return `📄 ${media.filename || "Document"}`;
    default:
      return `📎 ${media?.filename || "File"}`;
  }
}

/**
 * A call's history entry in words, for the caller (`mine`) or the callee: "Missed voice
 * call", "Video call · 2:05", "Voice call (declined)", "Video call (no answer)".
 */
export function callSummary(log, mine) {
  const video = log?.media === "CALL_MEDIA_VIDEO";
  const kind = video ? "Video call" : "Voice call";
  const missedKind = video ? "Missed video call" : "Missed voice call";
  const reason = (log?.reason || "").replace("CALL_END_REASON_", "");
  if (!log?.missed) {
    const text = `${kind} · ${durationText(log?.durationMs || 0)}`;
    return reason === "DROPPED" ? `${text} (dropped)` : text;
  }
  if (reason === "DECLINED") return `${kind} (declined)`;
  if (!mine) return missedKind;
  if (reason === "BUSY") return `${kind} (busy)`;
  if (reason === "NO_ANSWER") return `${kind} (no answer)`;
  if (reason === "CANCELLED") return `${kind} (cancelled)`;
  return `${kind} (not answered)`;
}

/** 7000 → "0:07". */
export function durationText(ms) {
  const s = Math.ceil(Number(ms) / 1000);
  const h = Math.floor(s / 3600);
  const m = Math.floor(s / 60) % 60;
  const ss = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

/** 187492 → "183 KiB" sizes (binary units, as the CLI). */
export function sizeText(bytes) {
  const n = Number(bytes || 0);
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${Math.round(n / 1024)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(1)} GiB`;
}

const VISIBILITY = [
  ["VISIBILITY_EVERYONE", "Everyone"],
  ["VISIBILITY_CONTACTS", "My contacts"],
  ["VISIBILITY_NOBODY", "Nobody"],
];

const ROLE_LABEL = { GROUP_ROLE_OWNER: "owner", GROUP_ROLE_ADMIN: "admin" };

export class UI {
  constructor(app) {
    this.app = app;
    // Media elements by message and media, kept across draws so that images, videos
    // and audio do not load again (or stop playing) each time the list is drawn.
    this.mediaNodes = new Map();
    this.bind();
  }

  bind() {
    const app = this.app;
    const authForm = $("#auth-form");
    authForm.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const register = ev.submitter?.value === "register";
      const username = $("#auth-username").value.trim().toLowerCase();
      const password = $("#auth-password").value;
      $("#auth-error").textContent = "";
      (register ? app.register(username, password) : app.login(username, password)).catch((e) => {
        $("#auth-error").textContent = e.message;
      });
    });
    $("#logout").addEventListener("click", () => app.logout());
    $("#new-chat").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const input = $("#new-chat-username");
      $("#new-chat-error").textContent = "";
      app
        .startChat(input.value)
        .then(() => {
          input.value = "";
          $("#composer-input").focus();
        })
        .catch((e) => {
          $("#new-chat-error").textContent = e.status === 404 ? "No such user." : e.message;
        });
    });
    $("#new-group").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const name = $("#group-name").value.trim();
      const members = $("#group-members")
        .value.split(/[\s,]+/)
        .map((s) => s.trim().toLowerCase())
        .filter(Boolean);
      $("#group-error").textContent = "";
      app
        .createGroup(name, members)
        .then(() => {
          $("#group-name").value = "";
          $("#group-members").value = "";
          $("#new-group").closest("details").open = false;
        })
        .catch((e) => this.groupError(e.status === 404 ? "No such user." : e.message));
    });
    $("#back").addEventListener("click", () => app.open(null));
    const activeGroup = () => {
      const conv = app.active && app.convs.get(app.active);
      return conv?.kind === "group" ? conv : null;
    };
    $("#group-info-btn").addEventListener("click", () => app.togglePanel());
    $("#gp-add").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const conv = activeGroup();
      const input = $("#gp-add-username");
      if (!conv || !input.value.trim()) return;
      app.addMember(conv, input.value).then((ok) => {
        if (ok) input.value = "";
      });
    });
    $("#gp-rename").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const conv = activeGroup();
      const name = $("#gp-name").value.trim();
      if (conv && name) app.rename(conv, name);
    });
    $("#gp-invite").addEventListener("click", () => {
      const conv = activeGroup();
      if (conv) app.createInvite(conv);
    });
    $("#gp-leave").addEventListener("click", () => {
      const conv = activeGroup();
      if (conv) app.leaveGroup(conv);
    });
    this.bindPeople();
    this.bindCall();
    const input = $("#composer-input");
    $("#composer").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const text = input.value;
      if (!text.trim()) return;
      input.value = "";
      app.sendText(text);
    });
    // Attachments: the file button, a pasted file, or files dropped on the chat. The
    // text in the composer goes with the (first) file as its caption.
    const attach = $("#attach-input");
    const sendFiles = (files) => {
      const list = [...(files || [])];
      if (!list.length) return;
      const caption = input.value.trim();
      input.value = "";
      list.forEach((f, i) => app.sendFile(f, { caption: i === 0 ? caption : "" }));
      input.focus();
    };
    $("#attach-btn").addEventListener("click", () => attach.click());
    attach.addEventListener("change", () => {
      sendFiles(attach.files);
      attach.value = "";
    });
    input.addEventListener("paste", (ev) => {
      const files = ev.clipboardData?.files;
      if (files?.length) {
        ev.preventDefault();
        sendFiles(files);
      }
    });
    const chat = $("#chat");
    chat.addEventListener("dragover", (ev) => {
      if (![...(ev.dataTransfer?.types || [])].includes("Files")) return;
      ev.preventDefault();
      chat.classList.add("dropping");
    });
    chat.addEventListener("dragleave", (ev) => {
      if (!chat.contains(ev.relatedTarget)) chat.classList.remove("dropping");
    });
    chat.addEventListener("drop", (ev) => {
      chat.classList.remove("dropping");
      if (!ev.dataTransfer?.files?.length) return;
      ev.preventDefault();
      sendFiles(ev.dataTransfer.files);
    });
    this.bindRecorder();
    input.addEventListener("input", () => app.typing(input.value.length > 0));
    input.addEventListener("blur", () => app.typing(false));
    $("#messages").addEventListener("scroll", () => {
      const conv = app.active && app.convs.get(app.active);
      if (conv && $("#messages").scrollTop < 60) app.loadHistory(conv);
    });
  }

  /**
   * Voice notes: 🎤 starts recording (the others see "recording audio…"), ■ stops and
   * sends it as a voice message. Hidden where the browser cannot record.
   */
  bindRecorder() {
    const app = this.app;
    const btn = $("#record-btn");
    if (!window.MediaRecorder || !navigator.mediaDevices?.getUserMedia) return;
    btn.hidden = false;
    let recorder = null;
    let beat = null;
    btn.addEventListener("click", async () => {
      if (recorder) {
        recorder.stop();
        return;
      }
      let stream;
      try {
        stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      } catch (e) {
        const conv = app.active && app.convs.get(app.active);
        if (conv) conv.notice = `Cannot record: ${e.message}`;
        this.render();
        return;
      }
      const chunks = [];
      recorder = new MediaRecorder(stream);
      recorder.ondataavailable = (ev) => ev.data.size && chunks.push(ev.data);
      recorder.onstop = () => {
        clearInterval(beat);
        for (const t of stream.getTracks()) t.stop();
        const type = recorder.mimeType || "audio/webm";
        recorder = null;
        btn.textContent = "🎤";
        btn.setAttribute("aria-label", "Record a voice message");
        btn.classList.remove("recording");
        app.typing(false);
        const ext = type.includes("ogg") ? "ogg" : type.includes("mp4") ? "m4a" : "webm";
        const blob = new Blob(chunks, { type });
        if (blob.size) app.sendFile(new File([blob], `voice.${ext}`, { type }), { voice: true });
      };
      recorder.start();
      btn.textContent = "■";
      btn.setAttribute("aria-label", "Stop and send the voice message");
      btn.classList.add("recording");
      app.typing(true, "CHAT_STATE_RECORDING");
      beat = setInterval(() => app.typing(true, "CHAT_STATE_RECORDING"), 2500);
    });
  }

  /** The chat header's call buttons and the call panel's. */
  bindCall() {
    const app = this.app;
    $("#call-voice-btn").addEventListener("click", () => app.startCall(app.active, false));
    $("#call-video-btn").addEventListener("click", () => app.startCall(app.active, true));
    $("#call-answer").addEventListener("click", () => app.answerCall());
    $("#call-decline").addEventListener("click", () => app.declineCall());
    $("#call-hangup").addEventListener("click", () => app.hangup());
    $("#call-mute").addEventListener("click", () => app.toggleMute());
    $("#call-camera").addEventListener("click", () => app.toggleCamera());
    $("#call-close").addEventListener("click", () => app.dismissCall());
  }

  /** The call panel: who, how it goes (data-state, data-connection), videos, controls. */
  drawCall() {
    const app = this.app;
    const call = app.call;
    const panel = $("#call");
    panel.hidden = !call;
    const remoteVideo = $("#call-remote-video");
    const localVideo = $("#call-local-video");
    const remoteAudio = $("#call-remote-audio");
    const attach = (media, stream) => {
      if (media.srcObject === stream) return;
      media.srcObject = stream;
      if (stream) media.play?.().catch(() => {});
    };
    if (!call) {
      panel.dataset.state = "";
      panel.dataset.connection = "";
      panel.dataset.callId = "";
      attach(remoteVideo, null);
      attach(localVideo, null);
      attach(remoteAudio, null);
      return;
    }
    panel.dataset.state = call.state;
    panel.dataset.connection = call.connection;
    panel.dataset.callId = call.id;
    panel.dataset.media = call.video ? "video" : "voice";
    const name = app.contactName(call.peer);
    $("#call-title").textContent = name;
    $("#call-avatar").replaceChildren(...avatar(name, app.avatarSrc(call.peer), null).childNodes);
    const what = call.video ? "video call" : "voice call";
    let status = "";
    switch (call.state) {
      case "starting":
        status = `Starting a ${what}…`;
        break;
      case "outgoing":
        status = `Calling… (${what})`;
        break;
      case "incoming":
        status = `Incoming ${what}`;
        break;
      case "connecting":
        status = "Connecting…";
        break;
      case "active":
        status = `${call.video ? "Video call" : "Voice call"} · ${durationText(Math.max(0, Date.now() - call.answeredAt))}`;
        break;
      case "ended":
        status = call.status || "Call ended";
        break;
    }
    if (call.peerLost && call.state !== "ended") status = "Reconnecting…";
    else if (call.connection === "failed" && call.state !== "ended") status = "The connection failed";
    $("#call-status").textContent = status;
    const live = call.state !== "ended" && call.state !== "incoming";
    $("#call-answer").hidden = $("#call-decline").hidden = call.state !== "incoming";
    $("#call-hangup").hidden = !live;
    $("#call-mute").hidden = !live;
    $("#call-camera").hidden = !live || !call.video;
    $("#call-close").hidden = call.state !== "ended";
    const mute = $("#call-mute");
    mute.setAttribute("aria-pressed", String(call.muted));
    mute.textContent = call.muted ? "Unmute" : "Mute";
    const camera = $("#call-camera");
    camera.setAttribute("aria-pressed", String(call.cameraOff));
    camera.textContent = call.cameraOff ? "Camera on" : "Camera off";
    $("#call-videos").hidden = !call.video || !live;
    localVideo.dataset.off = String(call.cameraOff);
    attach(localVideo, call.video ? call.local : null);
    attach(remoteVideo, call.video ? call.remote : null);
    attach(remoteAudio, call.remote);
  }

  /** The chat header's menu, and the people panel's tabs and forms. */
  bindPeople() {
    const app = this.app;
    const activePeer = () => {
      const conv = app.active && app.convs.get(app.active);
      return conv?.kind === "direct" ? conv : null;
    };
    const menu = $("#chat-menu");
    $("#chat-menu-btn").addEventListener("click", (ev) => {
      ev.stopPropagation();
      app.chatMenuOpen = !app.chatMenuOpen;
      this.render();
    });
    document.addEventListener("click", (ev) => {
      if (app.chatMenuOpen && !menu.contains(ev.target)) {
        app.chatMenuOpen = false;
        this.render();
      }
    });
    document.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape" && app.chatMenuOpen) {
        app.chatMenuOpen = false;
        this.render();
        $("#chat-menu-btn").focus();
      }
    });
    $("#menu-contact").addEventListener("click", () => {
      const conv = activePeer();
      app.chatMenuOpen = false;
      if (conv && !app.contacts.has(conv.peer)) app.addContactById(conv.peer, conv.id);
      this.render();
    });
    $("#menu-block").addEventListener("click", () => {
      const conv = activePeer();
      app.chatMenuOpen = false;
      if (conv) {
        if (app.blocked.has(conv.peer)) app.unblock(conv.peer, conv.id);
        else app.block(conv.peer, conv.id);
      }
      this.render();
    });
    $("#blocked-unblock").addEventListener("click", () => {
      const conv = activePeer();
      if (conv) app.unblock(conv.peer, conv.id);
    });

    $("#people-btn").addEventListener("click", () => (app.peopleOpen ? app.closePeople() : app.openPeople()));
    $("#people-close").addEventListener("click", () => app.closePeople());
    $("#people-back").addEventListener("click", () => app.closePeople());
    const tabs = [...document.querySelectorAll("#people-tabs [role=tab]")];
    for (const tab of tabs) tab.addEventListener("click", () => app.openPeople(tab.dataset.tab));
    $("#people-tabs").addEventListener("keydown", (ev) => {
      const i = tabs.indexOf(document.activeElement);
      if (i < 0 || (ev.key !== "ArrowRight" && ev.key !== "ArrowLeft")) return;
      ev.preventDefault();
      const next = tabs[(i + (ev.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length];
      next.focus();
      app.openPeople(next.dataset.tab);
    });
    $("#status-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const input = $("#status-text");
      const text = input.value.trim();
      if (text) app.postStatus(text);
    });
    $("#status-refresh").addEventListener("click", () => app.refreshPeople());
    $("#status-view-close").addEventListener("click", () => app.viewStatuses(null));
    $("#contact-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const username = $("#contact-username");
      const name = $("#contact-name");
      if (username.value.trim()) app.addContact(username.value, name.value);
    });
    $("#block-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const input = $("#block-username");
      if (input.value.trim()) app.blockUsername(input.value);
    });
    // What the user typed is theirs: a profile answer arriving later does not overwrite it.
    $("#profile-form").addEventListener("input", () => (app.people.profileDirty = true));
    $("#profile-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      app.updateProfile({
        displayName: $("#profile-name").value.trim(),
        about: $("#profile-about").value.trim(),
        avatarMediaId: $("#profile-avatar").value.trim(),
      });
    });
    for (const select of document.querySelectorAll("#privacy-form select")) {
      select.append(...VISIBILITY.map(([value, label]) => el("option", { value, text: label })));
      select.addEventListener("change", () => app.setPrivacy(select.dataset.field, select.value));
    }
  }

  groupError(message) {
    $("#group-error").textContent = message;
  }

  render(opts = {}) {
    if (this.pending) {
      Object.assign(this.pendingOpts, opts);
      return;
    }
    this.pending = true;
    this.pendingOpts = { ...opts };
    queueMicrotask(() => {
      this.pending = false;
      this.draw(this.pendingOpts);
    });
  }

  draw(opts) {
    const app = this.app;
    const loggedIn = !!app.me;
    $("#auth").hidden = loggedIn;
    $("#main").hidden = !loggedIn;
    this.drawAnnouncements(loggedIn);
    if (!loggedIn) {
      this.drawCall();
      $("#auth-error").textContent = app.notice || "";
      return;
    }
    $("#list-notice").textContent = app.listNotice || "";
    $("#me").textContent = app.me.username;
    this.drawConnection();
    this.drawList();
    this.drawChat(opts);
    this.drawPeople();
    this.drawCall();
  }

  /** The operators' announcements, each a banner with its dismiss button. */
  drawAnnouncements(loggedIn) {
    const app = this.app;
    const box = $("#announcements");
    const banners = loggedIn ? app.banners : [];
    box.replaceChildren(
      ...banners.map((b) =>
        el(
          "div",
          { class: "announcement", "data-id": String(b.id) },
          el("span", { class: "announcement-text", text: `📢 ${b.text}` }),
          el("button", {
            type: "button",
            class: "link announcement-close",
            "aria-label": "Dismiss the announcement",
            text: "×",
            onclick: () => app.dismissAnnouncement(b.id),
          }),
        ),
      ),
    );
    box.hidden = banners.length === 0;
  }

  drawConnection() {
    const { state, retryMs, since } = this.app.connState;
    const pill = $("#conn");
    pill.dataset.state = state;
    let text = "Online";
    if (state === "connecting") text = "Connecting…";
    if (state === "offline") {
      if (retryMs == null) text = "Offline";
      else {
        const left = Math.max(0, Math.ceil((since + retryMs - Date.now()) / 1000));
        text = `Reconnecting in ${left}s`;
      }
    }
    const queued = this.app.outbox.length;
    pill.textContent = queued && state !== "online" ? `${text} · ${queued} queued` : text;
  }

  drawList() {
    const app = this.app;
    const list = $("#conversations");
    // A conversation that holds only messages withheld from us is not shown.
    const hiddenOnly = (c) => !c.last && c.msgs.size > 0 && [...c.msgs.values()].every((m) => m.withheld);
    const convs = [...app.convs.values()]
      .filter((c) => !hiddenOnly(c) || c.id === app.active)
      .sort((a, b) => (b.last?.at || 0) - (a.last?.at || 0));
    list.replaceChildren(
      ...convs.map((c) => {
        const typers = [...c.typing.values()];
        const typing = typers.length > 0;
        const typingLabel = typingText(typers.some((t) => t.state === "typing") ? "typing" : typers[0]?.state);
        const presence = c.kind === "direct" ? presenceLabel(app.presenceOf(c.peer)) : null;
        const button = el(
          "button",
          {
            type: "button",
            class: "conv" + (c.id === app.active ? " active" : ""),
            "data-conv": c.id,
            "aria-current": c.id === app.active ? "true" : "false",
            "data-presence": presence?.state || "",
            onclick: () => app.open(c.id),
          },
          avatar(app.title(c), c.kind === "direct" ? app.avatarSrc(c.peer) : "", presence),
          el(
            "span",
            { class: "conv-main" },
            el("span", { class: "conv-title", text: app.title(c) }),
            el("span", {
              class: "conv-last" + (typing ? " typing" : ""),
              text: typing ? typingLabel : c.last?.text || "",
            }),
          ),
          el(
            "span",
            { class: "conv-side" },
            el("span", { class: "conv-time", text: time(c.last?.at) }),
            presence?.short
              ? el("span", { class: `conv-presence ${presence.state}`, title: presence.text, text: presence.short })
              : null,
            c.unread > 0 && c.id !== app.active
              ? el("span", { class: "badge", "aria-label": `${c.unread} unread`, text: String(c.unread) })
              : null,
          ),
        );
        return el("li", {}, button);
      }),
    );
    $("#empty-list").hidden = convs.length > 0;
  }

  drawChat(opts) {
    const app = this.app;
    const conv = app.active && app.convs.get(app.active);
    document.body.classList.toggle("in-chat", !!conv);
    $("#chat").hidden = !conv;
    $("#no-chat").hidden = !!conv;
    if (!conv) return;
    if (app.peopleOpen) {
      // Drawn again (and scrolled to the end) when the people panel closes.
      $("#messages").dataset.conv = "";
      return;
    }
    $("#chat-title").textContent = app.title(conv);
    this.drawGroup(conv);
    this.drawPeer(conv);
    const typers = [...conv.typing.entries()];
    let typingLine = "";
    if (typers.length === 1) {
      const [u, t] = typers[0];
      typingLine = `${app.contactName(u)} is ${typingText(t.state)}`;
    } else if (typers.length > 1) {
      const names = typers.map(([u]) => app.contactName(u)).join(", ");
      typingLine = typers.every(([, t]) => t.state === "recording") ? `${names} are recording audio…` : `${names} are typing…`;
    }
    $("#typing").textContent = typingLine;
    $("#chat-presence").hidden = !!typingLine;

    const box = $("#messages");
    const nearBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
    const fromBottom = box.scrollHeight - box.scrollTop;
    const switched = box.dataset.conv !== conv.id;
    box.dataset.conv = conv.id;

    const msgs = [...conv.msgs.values()].sort((a, b) => {
      if (!!a.pending !== !!b.pending) return a.pending ? 1 : -1;
      return a.pending ? a.createdAtMs - b.createdAtMs : a.seq - b.seq;
    });
    const items = [];
    if (conv.loading) items.push(el("li", { class: "note", text: "Loading older messages…" }));
    else if (!conv.more && msgs.length) items.push(el("li", { class: "note", text: "Start of the conversation" }));
    let lastDay = null;
    for (const m of msgs) {
      if (m.withheld) continue;
      const d = day(m.createdAtMs || Date.now());
      if (d !== lastDay) {
        items.push(el("li", { class: "day", role: "separator", text: d }));
        lastDay = d;
      }
      items.push(this.message(conv, m));
    }
    box.replaceChildren(...items);
    // Forget media elements no longer shown (another conversation, a pending one acked).
    for (const [key, node] of this.mediaNodes) if (!node.isConnected) this.mediaNodes.delete(key);
    if (switched || opts.toBottom === true || (opts.toBottom === "ifNear" && nearBottom)) {
      box.scrollTop = box.scrollHeight;
    } else if (opts.keepBottomOffset) {
      box.scrollTop = box.scrollHeight - fromBottom;
    }
  }

  /** A direct chat's header: avatar with presence dot, "online" / "last seen …", the menu. */
  drawPeer(conv) {
    const app = this.app;
    const direct = conv.kind === "direct";
    const blocked = direct && app.blocked.has(conv.peer);
    const presence = direct ? presenceLabel(app.presenceOf(conv.peer)) : null;
    $("#chat-avatar").replaceChildren(...avatar(app.title(conv), direct ? app.avatarSrc(conv.peer) : "", presence).childNodes);
    const line = $("#chat-presence");
    line.textContent = presence?.text || "";
    line.dataset.presence = presence?.state || "";
    $("#blocked-note").hidden = !blocked;
    const busy = !!app.call && app.call.state !== "ended";
    for (const id of ["#call-voice-btn", "#call-video-btn"]) {
      const b = $(id);
      b.hidden = !direct || blocked;
      b.disabled = busy || !app.conn.online;
    }
    const btn = $("#chat-menu-btn");
    btn.hidden = !direct;
    const open = direct && app.chatMenuOpen;
    btn.setAttribute("aria-expanded", String(open));
    $("#chat-menu").hidden = !open;
    if (!direct) return;
    const contact = $("#menu-contact");
    contact.hidden = app.contacts.has(conv.peer);
    $("#menu-block").textContent = blocked ? "Unblock" : "Block";
    $("#menu-block").dataset.action = blocked ? "unblock" : "block";
  }

  /** The people panel: status updates, contacts, blocked users, my profile, privacy. */
  drawPeople() {
    const app = this.app;
    const p = app.people;
    const open = app.peopleOpen;
    $("#people").hidden = !open;
    $("#people-btn").setAttribute("aria-expanded", String(open));
    if (open) {
      document.body.classList.add("in-chat");
      $("#chat").hidden = true;
      $("#no-chat").hidden = true;
    }
    if (!open) return;
    for (const tab of document.querySelectorAll("#people-tabs [role=tab]")) {
      const selected = tab.dataset.tab === p.tab;
      tab.setAttribute("aria-selected", String(selected));
      tab.tabIndex = selected ? 0 : -1;
      $(`#tab-${tab.dataset.tab}`).hidden = !selected;
    }
    for (const form of p.reset) $(`#${form}`).reset();
    p.reset.clear();
    $("#people-notice").textContent = p.notice || "";
    $("#people-info").textContent = p.info || "";
    if (p.tab === "status") this.drawStatus();
    if (p.tab === "contacts") this.drawContacts();
    if (p.tab === "blocked") this.drawBlocked();
    if (p.tab === "profile" && p.profileFresh && p.profile && !p.profileDirty) {
      p.profileFresh = false;
      $("#profile-name").value = p.profile.displayName || "";
      $("#profile-about").value = p.profile.about || "";
      $("#profile-avatar").value = p.profile.avatarMediaId || "";
      const id = p.profile.avatarMediaId;
      const mine = $("#profile-avatar-img");
      mine.onerror = () => (mine.hidden = true);
      mine.hidden = !id;
      mine.src = id ? app.avatarSrc(p.profile.userId, id) : "";
    }
    if (p.tab === "privacy") {
      for (const select of document.querySelectorAll("#privacy-form select")) {
        select.disabled = !p.privacy;
        const value = p.privacy?.[select.dataset.field];
        if (value && document.activeElement !== select) select.value = value;
      }
    }
  }

  drawStatus() {
    const app = this.app;
    const p = app.people;
    const button = (label, action, fn, cls = "small secondary") =>
      el("button", { type: "button", class: cls, "data-action": action, text: label, onclick: fn });
    $("#status-mine").replaceChildren(
      ...p.mine.map((s) => {
        const views = Number(s.viewCount || 0);
        const viewers = p.viewersOf === s.statusId ? p.viewers.get(s.statusId) : null;
        return el(
          "li",
          { "data-status": s.statusId },
          el(
            "div",
            { class: "prow" },
            el("span", { class: "ptext", text: s.text || "(media)" }),
            el("time", { class: "pmeta", text: time(Number(s.createdAtMs)) }),
            button(`${views} view${views === 1 ? "" : "s"}`, "viewers", () => app.statusViewers(s.statusId), "small link views"),
            button("Delete", "delete", () => app.deleteStatus(s.statusId), "small danger"),
          ),
          p.viewersOf === s.statusId
            ? el(
                "ul",
                { class: "viewers", "aria-label": "Viewed by" },
                ...(viewers
                  ? viewers.length
                    ? viewers.map((v) =>
                        el("li", { "data-user": v.userId, text: `${app.contactName(v.userId)} · ${lastSeen(Number(v.viewedAtMs))}` }),
                      )
                    : [el("li", { class: "pmeta", text: "Nobody has viewed it yet." })]
                  : [el("li", { class: "pmeta", text: "Loading…" })]),
              )
            : null,
        );
      }),
    );
    $("#status-mine-empty").hidden = p.mine.length > 0;
    $("#status-list").replaceChildren(
      ...p.statuses.map((u) => {
        const items = u.statuses || [];
        const unseen = items.filter((s) => !s.viewed).length;
        const newest = items[items.length - 1];
        const name = app.contactName(u.userId) || u.username;
        return el(
          "li",
          { "data-user": u.userId },
          el(
            "button",
            {
              type: "button",
              class: "status-user" + (unseen ? " unseen" : "") + (p.viewing === u.userId ? " active" : ""),
              "aria-label": `${name}: ${items.length} update${items.length === 1 ? "" : "s"}${unseen ? `, ${unseen} new` : ""}`,
              onclick: () => app.viewStatuses(u.userId),
            },
            el("span", { class: "avatar ring", "aria-hidden": "true", text: name.slice(0, 1).toUpperCase() }),
            el("span", { class: "conv-main" }, el("span", { class: "conv-title", text: name }), el("span", { class: "conv-last", text: newest ? lastSeen(Number(newest.createdAtMs)) : "" })),
            unseen ? el("span", { class: "badge", text: String(unseen) }) : null,
          ),
        );
      }),
    );
    $("#status-list-empty").hidden = p.statuses.length > 0;
    const viewing = p.viewing && p.statuses.find((u) => u.userId === p.viewing);
    $("#status-view").hidden = !viewing;
    if (viewing) {
      $("#status-view-title").textContent = app.contactName(viewing.userId) || viewing.username;
      $("#status-view-items").replaceChildren(
        ...(viewing.statuses || []).map((s) =>
          el(
            "li",
            { "data-status": s.statusId },
            el("span", { class: "ptext", text: s.text || "(media)" }),
            el("time", { class: "pmeta", text: lastSeen(Number(s.createdAtMs)) }),
          ),
        ),
      );
    }
  }

  drawContacts() {
    const app = this.app;
    const p = app.people;
    const contacts = [...app.contacts.values()].sort((a, b) => app.contactName(a.userId).localeCompare(app.contactName(b.userId)));
    const button = (label, action, fn, cls = "small secondary") =>
      el("button", { type: "button", class: cls, "data-action": action, text: label, onclick: fn });
    $("#contacts").replaceChildren(
      ...contacts.map((c) => {
        const presence = presenceLabel(app.presenceOf(c.userId));
        const name = app.contactName(c.userId);
        const about = c.profile?.about;
        return el(
          "li",
          { "data-user": c.userId, "data-presence": presence?.state || "" },
          avatar(name, app.avatarSrc(c.userId), presence),
          el(
            "span",
            { class: "conv-main" },
            el("span", { class: "conv-title cname", text: name }),
            el("span", { class: "conv-last", text: [`@${c.username}`, presence?.text, about].filter(Boolean).join(" · ") }),
          ),
          button("Chat", "chat", () => app.chatWith(c.userId)),
          button("Rename", "rename", () => {
            p.editing = c.userId;
            $("#contact-username").value = c.username;
            $("#contact-name").value = c.name || "";
            $("#contact-name").focus();
            this.render();
          }),
          button("Remove", "remove", () => app.removeContact(c.userId), "small danger"),
        );
      }),
    );
    $("#contacts-empty").hidden = contacts.length > 0;
    $("#contact-submit").textContent = p.editing && app.contacts.has(p.editing) ? "Save" : "Add";
  }

  drawBlocked() {
    const app = this.app;
    const ids = [...app.blocked].sort();
    $("#blocked").replaceChildren(
      ...ids.map((id) =>
        el(
          "li",
          { "data-user": id },
          el("span", { class: "conv-main" }, el("span", { class: "conv-title", text: app.contactName(id) })),
          el("button", { type: "button", class: "small secondary", "data-action": "unblock", text: "Unblock", onclick: () => app.unblock(id) }),
        ),
      ),
    );
    $("#blocked-empty").hidden = ids.length > 0;
  }

  /** The group info panel, the conversation's notice and the "not a member" note. */
  drawGroup(conv) {
    const app = this.app;
    const group = conv.kind === "group";
    $("#chat-notice").textContent = conv.notice || "";
    $("#not-member").hidden = !group || conv.member !== false;
    const btn = $("#group-info-btn");
    btn.hidden = !group || conv.member === false;
    const open = group && app.panelOpen && conv.member !== false;
    btn.setAttribute("aria-expanded", String(open));
    $("#group-panel").hidden = !open;
    if (!open) return;
    const info = conv.info;
    const members = info?.members || [];
    const role = app.myRole(conv);
    const admin = role === "GROUP_ROLE_OWNER" || role === "GROUP_ROLE_ADMIN";
    const nameInput = $("#gp-name");
    if (document.activeElement !== nameInput) nameInput.value = app.title(conv);
    $("#gp-count").textContent = info ? `${members.length} member${members.length === 1 ? "" : "s"}` : "Loading members…";
    $("#gp-members").replaceChildren(
      ...members.map((m) => {
        const self = m.userId === app.me.userId;
        const name = self ? `${app.name(m.userId)} (you)` : app.name(m.userId);
        const actions = [];
        const action = (label, name, fn) =>
          actions.push(el("button", { type: "button", class: "small secondary", "data-action": name, text: label, onclick: fn }));
        if (!self && m.role !== "GROUP_ROLE_OWNER") {
          if (m.role !== "GROUP_ROLE_ADMIN" && admin) action("Make admin", "promote", () => app.setRole(conv, m.userId, true));
          if (m.role === "GROUP_ROLE_ADMIN" && role === "GROUP_ROLE_OWNER")
            action("Remove as admin", "demote", () => app.setRole(conv, m.userId, false));
          if (role === "GROUP_ROLE_OWNER" || (role === "GROUP_ROLE_ADMIN" && m.role === "GROUP_ROLE_MEMBER"))
            action("Remove", "remove", () => app.removeMember(conv, m.userId));
        }
        return el(
          "li",
          { "data-user": m.userId, "data-role": m.role },
          el("span", { class: "name", text: name }),
          el("span", { class: "role", text: ROLE_LABEL[m.role] || "" }),
          ...actions,
        );
      }),
    );
    $("#gp-admin").hidden = !admin;
    $("#gp-invite-link").hidden = $("#gp-invite-label").hidden = !conv.invite;
    $("#gp-invite-link").value = conv.invite || "";
  }

  /**
   * A message's media: an image (its inline preview until the full image has loaded),
   * a video or audio player, or a document link; upload progress while it is sent.
   */
  media(conv, m) {
    const media = m.media;
    if (m.upload || !media.id) {
      const { done = 0, total = 0 } = m.upload || {};
      const pct = total ? Math.floor((done * 100) / total) : 0;
      return el(
        "div",
        { class: "media media-upload" },
        el("span", { class: "media-name", text: media.filename || "File" }),
        m.upload ? el("progress", { max: 100, value: pct, "aria-label": "Upload progress" }) : null,
        el("span", { class: "media-meta", text: m.failed ? "not sent" : `Uploading ${pct}% of ${sizeText(total)}` }),
      );
    }
    const key = `${conv.id}|${m.seq}|${media.id}`;
    let node = this.mediaNodes.get(key);
    if (node) return node;
    const src = this.app.mediaSrc(conv, m);
    const kind = (media.kind || "").replace("MEDIA_KIND_", "");
    const w = Number(media.width || 0);
    const h = Number(media.height || 0);
    if (kind === "IMAGE") {
      const img = el("img", { class: "media-img", alt: media.caption ? `Photo: ${media.caption}` : "Photo", "data-media": media.id });
      if (w && h) {
        // Shown at most 320 px wide, and tiny images at least 96 (so they can be seen).
        img.width = Math.min(Math.max(w, 96), 320);
        img.height = Math.round((img.width * h) / w);
        if (img.width > w) img.classList.add("pixelated");
      }
      img.dataset.state = "loading";
      if (media.preview) {
        img.src = `data:image/jpeg;base64,${media.preview}`;
        img.dataset.state = "preview";
      }
      const full = new Image();
      full.onload = () => {
        img.src = full.src;
        img.dataset.state = "full";
      };
      full.onerror = () => {
        img.dataset.state = "error";
        img.title = "The photo could not be loaded";
      };
      full.src = src;
      node = el("a", { class: "media media-image", href: src, target: "_blank", rel: "noopener" }, img);
    } else if (kind === "VIDEO") {
      const video = el("video", { class: "media-video", controls: true, preload: "metadata", src, "data-media": media.id });
      if (media.preview) video.poster = `data:image/jpeg;base64,${media.preview}`;
      node = el("div", { class: "media" }, video);
    } else if (kind === "AUDIO") {
      node = el(
        "div",
        { class: "media media-audio" },
        el("span", { class: "media-name", text: mediaSummary(media) }),
        el("audio", { controls: true, preload: "metadata", src, "data-media": media.id }),
      );
    } else {
      const name = media.filename || "Document";
      node = el(
        "a",
        { class: "media media-doc", href: src, download: name, "data-media": media.id },
        el("span", { class: "media-icon", "aria-hidden": "true", text: "📄" }),
        el("span", { class: "media-name", text: name }),
        el("span", { class: "media-meta", text: [sizeText(media.size), media.mime].filter(Boolean).join(" · ") }),
      );
    }
    if (Number(media.durationMs || 0) && kind !== "AUDIO") node.title = durationText(media.durationMs);
    this.mediaNodes.set(key, node);
    return node;
  }

  message(conv, m) {
    const app = this.app;
    if (m.system) {
      return el("li", { class: "system", "data-seq": String(m.seq), text: app.systemText(m, conv) });
    }
    if (m.call) {
      const text = callSummary(m.call, m.sender === app.me.userId);
      const missed = !!m.call.missed && m.sender !== app.me.userId;
      return el(
        "li",
        { class: `call-log${missed ? " missed" : ""}`, "data-seq": String(m.seq), "data-call": m.call.callId || "" },
        el("span", { class: "text", text: `${m.call.media === "CALL_MEDIA_VIDEO" ? "🎥" : "📞"} ${text}` }),
        el("time", { text: time(m.createdAtMs) }),
      );
    }
    const mine = m.sender === app.me.userId;
    let status = "";
    let tick = null;
    if (mine) {
      if (m.failed) status = "failed";
      else if (m.pending) status = "pending";
      else if (conv.kind === "group") status = "sent";
      else if (conv.peerRead >= m.seq) status = "read";
      else if (conv.peerDelivered >= m.seq) status = "delivered";
      else status = "sent";
      const label = {
        failed: `not sent (${m.failed})`,
        pending: "waiting to send",
        sent: "sent",
        delivered: "delivered",
        read: "read",
      }[status];
      const glyph = { failed: "!", pending: "🕓", sent: "✓", delivered: "✓✓", read: "✓✓" }[status];
      tick = el("span", { class: `tick ${status}`, title: label, "aria-label": label, text: glyph });
    }
    return el(
      "li",
      {
        class: `msg ${mine ? "mine" : "theirs"}${m.deleted ? " deleted" : ""}`,
        "data-seq": String(m.seq),
        "data-cmid": m.clientMsgId || "",
        "data-status": status,
      },
      conv.kind === "group" && !mine ? el("span", { class: "sender", text: app.name(m.sender) }) : null,
      m.media ? this.media(conv, m) : null,
      m.deleted ? el("span", { class: "text deleted", text: DELETED_TEXT }) : el("span", { class: "text", text: m.text }),
      el("span", { class: "meta" }, el("time", { text: time(m.createdAtMs) }), tick),
    );
  }
}
