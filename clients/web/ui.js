// Draws the app's state with plain DOM calls (textContent only: nothing the server
// sends is ever parsed as HTML) and turns user input into calls on the app.

const $ = (sel) => document.querySelector(sel);

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

const ROLE_LABEL = { GROUP_ROLE_OWNER: "owner", GROUP_ROLE_ADMIN: "admin" };

export class UI {
  constructor(app) {
    this.app = app;
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
    const input = $("#composer-input");
    $("#composer").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const text = input.value;
      if (!text.trim()) return;
      input.value = "";
      app.sendText(text);
    });
    input.addEventListener("input", () => app.typing(input.value.length > 0));
    input.addEventListener("blur", () => app.typing(false));
    $("#messages").addEventListener("scroll", () => {
      const conv = app.active && app.convs.get(app.active);
      if (conv && $("#messages").scrollTop < 60) app.loadHistory(conv);
    });
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
    if (!loggedIn) {
      $("#auth-error").textContent = app.notice || "";
      return;
    }
    $("#list-notice").textContent = app.listNotice || "";
    $("#me").textContent = app.me.username;
    this.drawConnection();
    this.drawList();
    this.drawChat(opts);
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
    const convs = [...app.convs.values()].sort((a, b) => (b.last?.at || 0) - (a.last?.at || 0));
    list.replaceChildren(
      ...convs.map((c) => {
        const typing = c.typing.size > 0;
        const button = el(
          "button",
          {
            type: "button",
            class: "conv" + (c.id === app.active ? " active" : ""),
            "data-conv": c.id,
            "aria-current": c.id === app.active ? "true" : "false",
            onclick: () => app.open(c.id),
          },
          el("span", { class: "avatar", "aria-hidden": "true", text: app.title(c).slice(0, 1).toUpperCase() }),
          el(
            "span",
            { class: "conv-main" },
            el("span", { class: "conv-title", text: app.title(c) }),
            el("span", {
              class: "conv-last" + (typing ? " typing" : ""),
              text: typing ? "typing…" : c.last?.text || "",
            }),
          ),
          el(
            "span",
            { class: "conv-side" },
            el("span", { class: "conv-time", text: time(c.last?.at) }),
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
    $("#chat-title").textContent = app.title(conv);
    this.drawGroup(conv);
    const typers = [...conv.typing.keys()].map((u) => app.name(u));
    $("#typing").textContent = typers.length
      ? `${typers.join(", ")} ${typers.length > 1 ? "are" : "is"} typing…`
      : "";

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
      const d = day(m.createdAtMs || Date.now());
      if (d !== lastDay) {
        items.push(el("li", { class: "day", role: "separator", text: d }));
        lastDay = d;
      }
      items.push(this.message(conv, m));
    }
    box.replaceChildren(...items);
    if (switched || opts.toBottom === true || (opts.toBottom === "ifNear" && nearBottom)) {
      box.scrollTop = box.scrollHeight;
    } else if (opts.keepBottomOffset) {
      box.scrollTop = box.scrollHeight - fromBottom;
    }
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

  message(conv, m) {
    const app = this.app;
    if (m.system) {
      return el("li", { class: "system", "data-seq": String(m.seq), text: app.systemText(m, conv) });
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
        class: `msg ${mine ? "mine" : "theirs"}`,
        "data-seq": String(m.seq),
        "data-cmid": m.clientMsgId || "",
        "data-status": status,
      },
      conv.kind === "group" && !mine ? el("span", { class: "sender", text: app.name(m.sender) }) : null,
      el("span", { class: "text", text: m.text }),
      el("span", { class: "meta" }, el("time", { text: time(m.createdAtMs) }), tick),
    );
  }
}
