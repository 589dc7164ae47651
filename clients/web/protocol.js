// natter's REST calls and the `natter.v1.json` WebSocket: one socket, request ids,
// reconnect with exponential backoff. Knows the wire format, nothing about the UI.

const SESSION_KEY = "natter.session";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

async function rest(method, path, body, token) {
  const headers = {};
  if (body !== undefined) headers["content-type"] = "application/json";
  if (token) headers.authorization = `Bearer ${token}`;
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, "unreachable", "the server is unreachable");
  }
  if (res.status === 204) return null;
  const data = await res.json().catch(() => ({}));
  if (!res.ok) {
    const e = data.error || {};
    throw new ApiError(res.status, e.code, e.message);
  }
  return data;
}

/** The logged-in device: tokens in localStorage, refreshed before they expire. */
export class Auth {
  constructor() {
    try {
      this.session = JSON.parse(localStorage.getItem(SESSION_KEY));
    } catch {
      this.session = null;
    }
    this.refreshing = null;
  }

  save(grant) {
    this.session = {
      userId: grant.user_id,
      deviceId: grant.device_id,
      username: grant.username,
      accessToken: grant.access_token,
      refreshToken: grant.refresh_token,
      expiresAt: Date.now() + grant.access_expires_in_s * 1000,
    };
    localStorage.setItem(SESSION_KEY, JSON.stringify(this.session));
  }

  clear() {
    this.session = null;
    localStorage.removeItem(SESSION_KEY);
  }

  async register(username, password) {
    await rest("POST", "/v1/accounts", { username, password });
    return this.login(username, password);
  }

  async login(username, password) {
    const grant = await rest("POST", "/v1/sessions", {
      username,
      password,
      device_name: `web (${navigator.platform || "browser"})`,
    });
    this.save(grant);
  }

  async logout() {
    const token = this.session?.accessToken;
    this.clear();
    if (token) await rest("DELETE", "/v1/sessions/current", undefined, token).catch(() => {});
  }

  /** A valid access token, refreshing it first when it expires within 30 s. */
  async token(force = false) {
    if (!this.session) throw new ApiError(401, "unauthorized", "not logged in");
    if (!force && this.session.expiresAt - Date.now() > 30_000) return this.session.accessToken;
    if (!this.refreshing) {
      this.refreshing = rest("POST", "/v1/sessions/refresh", {
        refresh_token: this.session.refreshToken,
      })
        .then((grant) => this.save(grant))
        .catch((e) => {
          if (e.status === 401) this.clear();
          throw e;
        })
        .finally(() => {
          this.refreshing = null;
        });
    }
    await this.refreshing;
    return this.session.accessToken;
  }

  /** `GET /v1/users/{username}` → {user_id, username}; retried once after a refresh. */
  async lookup(username) {
    const path = `/v1/users/${encodeURIComponent(username)}`;
    try {
      return await rest("GET", path, undefined, await this.token());
    } catch (e) {
      if (e.status !== 401) throw e;
      return rest("GET", path, undefined, await this.token(true));
    }
  }

  /** `GET /v1/users/by-id/{id}` → {user_id, username}; retried once after a refresh. */
  async userById(userId) {
    const path = `/v1/users/by-id/${encodeURIComponent(userId)}`;
    try {
      return await rest("GET", path, undefined, await this.token());
    } catch (e) {
      if (e.status !== 401) throw e;
      return rest("GET", path, undefined, await this.token(true));
    }
  }
}

/** Text ⇄ the base64 `bytes` of the JSON mapping. */
export function encodeText(text) {
  const bytes = new TextEncoder().encode(text);
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

export function decodeText(b64) {
  if (!b64) return "";
  try {
    const s = atob(b64);
    return new TextDecoder().decode(Uint8Array.from(s, (c) => c.charCodeAt(0)));
  } catch {
    return "";
  }
}

/** The one-to-one conversation of two users: `d.<smaller id>.<larger id>`. */
export function directId(a, b) {
  return BigInt(a) < BigInt(b) ? `d.${a}.${b}` : `d.${b}.${a}`;
}

/**
 * The socket. `onFrame(frame)` gets every server frame; `onState(state, detail)` gets
 * "connecting", "online" (after `welcome`), "offline" (with the retry delay in ms, or
 * null while the browser is offline) and "loggedout".
 */
export class Connection {
  constructor(auth, { onFrame, onState }) {
    this.auth = auth;
    this.onFrame = onFrame;
    this.onState = onState;
    this.ws = null;
    this.nextId = 1;
    this.attempt = 0;
    this.timer = null;
    this.stopped = true;
    this.online = false;
    window.addEventListener("offline", () => this.drop());
    window.addEventListener("online", () => this.retryNow());
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000);
    this.ws = null;
    this.online = false;
  }

  /** Sends `{id, ...body}`; returns the id, or null when not connected. */
  send(body) {
    if (!this.online || this.ws?.readyState !== WebSocket.OPEN) return null;
    const id = String(this.nextId++);
    this.ws.send(JSON.stringify({ id, ...body }));
    return id;
  }

  /** The browser went offline: close now instead of waiting for a dead socket. */
  drop() {
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.close(1000);
      this.closed(null);
    }
  }

  retryNow() {
    if (this.stopped || this.ws) return;
    clearTimeout(this.timer);
    this.attempt = 0;
    this.connect();
  }

  async connect() {
    clearTimeout(this.timer);
    if (this.stopped || this.ws) return;
    if (!navigator.onLine) {
      this.onState("offline", null);
      return;
    }
    this.onState("connecting");
    let token;
    try {
      // A refresh every few failed attempts, in case the token was rejected.
      token = await this.auth.token(this.attempt > 0 && this.attempt % 3 === 0);
    } catch (e) {
      if (e.status === 401) {
        this.onState("loggedout");
        return;
      }
      this.schedule();
      return;
    }
    if (this.stopped || this.ws) return;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const url = `${scheme}://${location.host}/v1/ws?access_token=${encodeURIComponent(token)}`;
    const ws = new WebSocket(url, "natter.v1.json");
    this.ws = ws;
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (frame.welcome) {
        this.online = true;
        this.attempt = 0;
        this.onState("online");
      }
      if (frame.reconnect) {
        // The server is draining (a restart): it closes with 1001 once our requests are
        // answered. Come back after the delay it picked for us (at most a minute).
        this.hintMs = Math.min(60_000, Number(frame.reconnect.afterMs) || 0);
      }
      this.onFrame(frame);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.closed(ev.code);
    };
  }

  closed(code) {
    this.online = false;
    if (this.stopped) return;
    // 4001: logged out; 4005: an administrator disabled the account (a login attempt
    // then says so). Reconnecting would only be refused.
    if (code === 4001 || code === 4005) {
      this.onState("loggedout");
      return;
    }
    if (code === 4002) {
      // This device connected again elsewhere (another tab): stay quiet.
      this.onState("offline", null);
      return;
    }
    this.schedule();
  }

  schedule() {
    if (!navigator.onLine) {
      this.onState("offline", null);
      return;
    }
    const base = Math.min(15_000, 500 * 2 ** this.attempt);
    let delay = Math.round(base / 2 + (Math.random() * base) / 2);
    if (this.hintMs !== undefined) {
      // A draining server's Reconnect frame chose this connection's delay.
      delay = this.hintMs;
      this.hintMs = undefined;
    }
    this.attempt++;
    this.onState("offline", delay);
    this.timer = setTimeout(() => this.connect(), delay);
  }
}

// ---- media (docs/protocol.md "Media") ----

/** Uploads up to this size go in one request; larger ones are resumable. */
export const SINGLE_SHOT_MAX = 8 * 1024 * 1024;
/** Bytes per PATCH of a resumable upload. */
export const CHUNK_SIZE = 4 * 1024 * 1024;
const UPLOAD_RETRIES = 5;

function hex(buffer) {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * One request with upload progress (fetch has none): resolves {status, header(name),
 * data} for any answer, rejects with ApiError(0, "unreachable") when none came.
 */
function xhr(method, url, { token, body, headers = {}, onProgress } = {}) {
  return new Promise((resolve, reject) => {
    const req = new XMLHttpRequest();
    req.open(method, url);
    if (token) req.setRequestHeader("authorization", `Bearer ${token}`);
    for (const [k, v] of Object.entries(headers)) req.setRequestHeader(k, v);
    if (onProgress) req.upload.onprogress = (ev) => onProgress(ev.loaded);
    req.onload = () => {
      let data = null;
      try {
        data = req.responseText ? JSON.parse(req.responseText) : null;
      } catch {
        data = null;
      }
      resolve({ status: req.status, header: (name) => req.getResponseHeader(name), data });
    };
    req.onerror = req.ontimeout = () => reject(new ApiError(0, "unreachable", "the server is unreachable"));
    req.send(body ?? null);
  });
}

function failure(res) {
  const e = res.data?.error || {};
  return new ApiError(res.status, e.code, e.message || `HTTP ${res.status}`);
}

const transient = (e) => e.status === 0 || e.status >= 500;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** `call(token)` with a fresh token after a 401, once. */
async function authorized(auth, call) {
  const res = await call(await auth.token());
  if (res.status !== 401) return res;
  return call(await auth.token(true));
}

/**
 * Uploads a File or Blob: one `POST /v1/media` (with its SHA-256, so the server checks
 * it) up to SINGLE_SHOT_MAX, else a resumable upload in CHUNK_SIZE pieces that asks
 * `HEAD` where it stands after a failure and goes on from there. `onProgress(done,
 * total)`; resolves with the server's media JSON.
 */
export async function uploadMedia(auth, file, { filename, audio = false, voice = false, onProgress } = {}) {
  const total = file.size;
  const progress = (done) => onProgress?.(Math.min(done, total), total);
  if (total <= SINGLE_SHOT_MAX) {
    const q = new URLSearchParams();
    if (filename) q.set("filename", filename);
    if (crypto.subtle) q.set("sha256", hex(await crypto.subtle.digest("SHA-256", await file.arrayBuffer())));
    if (audio) q.set("kind", "audio");
    if (voice) q.set("voice", "true");
    for (let attempt = 0; ; attempt++) {
      try {
        const res = await authorized(auth, (token) =>
          xhr("POST", `/v1/media?${q}`, { token, body: file, headers: { "content-type": "application/octet-stream" }, onProgress: progress }),
        );
        if (res.status >= 200 && res.status < 300) {
          progress(total);
          return res.data;
        }
        throw failure(res);
      } catch (e) {
        if (!transient(e) || attempt >= UPLOAD_RETRIES) throw e;
        await sleep(500 * 2 ** attempt);
      }
    }
  }
  const body = { size: total };
  if (filename) body.filename = filename;
  if (audio) body.kind = "audio";
  if (voice) body.voice = true;
  const created = await authorized(auth, (token) =>
    xhr("POST", "/v1/media/uploads", { token, body: JSON.stringify(body), headers: { "content-type": "application/json" } }),
  );
  if (created.status !== 201 && created.status !== 200) throw failure(created);
  const path = `/v1/media/uploads/${encodeURIComponent(created.data.upload_id)}`;
  let offset = Number(created.data.offset || 0);
  let failures = 0;
  progress(offset);
  while (offset < total) {
    const end = Math.min(offset + CHUNK_SIZE, total);
    const start = offset;
    try {
      const res = await authorized(auth, (token) =>
        xhr("PATCH", path, {
          token,
          body: file.slice(start, end),
          headers: { "upload-offset": String(start), "content-type": "application/offset+octet-stream" },
          onProgress: (n) => progress(start + n),
        }),
      );
      const at = Number(res.header("upload-offset"));
      if (res.status === 204 || res.status === 200) {
        offset = Number.isFinite(at) && res.header("upload-offset") !== null ? at : end;
        failures = 0;
        progress(offset);
        continue;
      }
      if (res.status === 409 && res.data?.error?.code === "offset_mismatch" && Number.isFinite(at)) {
        if (++failures > UPLOAD_RETRIES) throw failure(res);
        offset = at;
        continue;
      }
      throw failure(res);
    } catch (e) {
      if (!transient(e) || ++failures > UPLOAD_RETRIES) {
        if (!transient(e)) authorized(auth, (token) => xhr("DELETE", path, { token })).catch(() => {});
        throw e;
      }
      await sleep(500 * 2 ** (failures - 1));
      // Where does the upload stand? (A PATCH cut off keeps what arrived.)
      try {
        const head = await authorized(auth, (token) => xhr("HEAD", path, { token }));
        if (head.status === 200) offset = Number(head.header("upload-offset"));
        else if (head.status === 404) throw new ApiError(404, "not_found", "the upload expired");
      } catch (h) {
        if (!transient(h)) throw h;
      }
      progress(offset);
    }
  }
  for (let attempt = 0; ; attempt++) {
    try {
      const res = await authorized(auth, (token) => xhr("POST", `${path}/complete`, { token }));
      if (res.status >= 200 && res.status < 300) return res.data;
      throw failure(res);
    } catch (e) {
      if (!transient(e) || attempt >= UPLOAD_RETRIES) throw e;
      await sleep(500 * 2 ** attempt);
    }
  }
}

/**
 * The URL an `<img>`/`<video>`/`<audio>` or a link loads a media from: with the
 * message that carries it (others' media) and the token in the query (elements cannot
 * set headers).
 */
export function mediaUrl(id, token, conversationId, seq) {
  const q = new URLSearchParams();
  if (conversationId && seq) {
    q.set("conversation", conversationId);
    q.set("seq", String(seq));
  }
  if (token) q.set("access_token", token);
  return `/v1/media/${encodeURIComponent(id)}?${q}`;
}

/**
 * The URL of `userId`'s profile photo `id` (`?profile=`): the server lets us load it
 * only while their privacy settings show it to us.
 */
export function avatarUrl(id, token, userId) {
  const q = new URLSearchParams({ profile: String(userId) });
  if (token) q.set("access_token", token);
  return `/v1/media/${encodeURIComponent(id)}?${q}`;
}

/** The REST media JSON as the proto JSON of a MediaRef (what messages carry). */
export function mediaRefOf(info) {
  return {
    id: info.id,
    kind: info.kind ? `MEDIA_KIND_${String(info.kind).toUpperCase()}` : "MEDIA_KIND_UNSPECIFIED",
    mime: info.mime || "",
    size: String(info.size || 0),
    sha256: info.sha256 || "",
    width: info.width || 0,
    height: info.height || 0,
    durationMs: info.duration_ms || 0,
    preview: info.preview || "",
    filename: info.filename || "",
    voice: !!info.voice,
  };
}

// ---- calls (docs/protocol.md "Calls") ----

/**
 * `GET /v1/calls/ice-servers` → the `iceServers` of an RTCPeerConnection (STUN and TURN
 * with time-limited credentials; may be empty: then only direct paths are tried).
 */
export async function iceServers(auth) {
  const path = "/v1/calls/ice-servers";
  let data;
  try {
    data = await rest("GET", path, undefined, await auth.token());
  } catch (e) {
    if (e.status !== 401) throw e;
    data = await rest("GET", path, undefined, await auth.token(true));
  }
  return Array.isArray(data?.ice_servers) ? data.ice_servers : [];
}

/**
 * `GET /v1/announcements?after=<id>` → the operators' announcements after that id, oldest
 * first: `{id, text, created_at_ms}` (id and time as decimal strings).
 */
export async function announcements(auth, after) {
  const path = `/v1/announcements?after=${encodeURIComponent(String(after || 0))}`;
  let data;
  try {
    data = await rest("GET", path, undefined, await auth.token());
  } catch (e) {
    if (e.status !== 401) throw e;
    data = await rest("GET", path, undefined, await auth.token(true));
  }
  return Array.isArray(data?.announcements) ? data.announcements : [];
}

/** A call id: 22 URL-safe characters (the server takes 8..64 of [A-Za-z0-9_-]). */
export function newCallId() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  return btoa(String.fromCharCode(...b)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** An RTCSessionDescription as the proto JSON of a SessionDescription, and back. */
export function sdpOut(desc) {
  return { type: desc.type === "answer" ? "SDP_TYPE_ANSWER" : "SDP_TYPE_OFFER", sdp: desc.sdp };
}

export function sdpIn(d) {
  return { type: d?.type === "SDP_TYPE_ANSWER" ? "answer" : "offer", sdp: d?.sdp || "" };
}

/** An RTCIceCandidate as the proto JSON of an IceCandidate, and back (null: none). */
export function candidateOut(c) {
  const out = { candidate: c.candidate || "", sdpMid: c.sdpMid || "", sdpMlineIndex: c.sdpMLineIndex ?? 0 };
  if (c.usernameFragment) out.usernameFragment = c.usernameFragment;
  return out;
}

export function candidateIn(c) {
  if (!c?.candidate) return null;
  const init = { candidate: c.candidate, sdpMLineIndex: Number(c.sdpMlineIndex || 0) };
  if (c.sdpMid) init.sdpMid = c.sdpMid;
  if (c.usernameFragment) init.usernameFragment = c.usernameFragment;
  return init;
}
