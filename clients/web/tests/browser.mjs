// Drives natter's web client in headless Chromium: two users in two browser contexts
// register, chat both ways, see ticks move to read and typing, one goes offline and
// catches up, one sends while offline (queued, sent once). Then groups, with a third
// user: create, system messages, add, roles, rename, remove (and the refused send), invite
// link, leave. Then people and presence, with ann and bo: online dots and "last seen"
// as bo disconnects and comes back, typing and recording indicators that expire,
// contacts (add by username, rename, add from the chat menu), a status update seen by
// a contact (view counts, viewers), blocking from the chat menu (presence gone on both
// sides, messages withheld) and unblocking. Then media: ann attaches a PNG with a
// caption and bo's page shows the photo, downloaded with his own token; a document
// arrives as a download link. Then calls: ann places a video call to bo (fake camera and
// microphone), bo answers from the incoming-call banner, both peer connections connect
// and bo's page plays ann's video; mute and camera toggles; ann hangs up, both see the
// call ended and its history line. Then moderation, through the admin API: a message
// deleted for everyone turns into "This message was deleted" on both pages (live, and
// from history after a reload, also one deleted while ann's page was closed); an
// announcement shows as a banner on both pages and is dismissed; one posted while ann's
// page was closed is fetched when she comes back, and a seen one is not shown again on
// a reload. Saves screenshots.
//
//   NATTER_ADMIN_TOKEN=<admin token> node browser.mjs <base url> <screenshot dir>
//
// The admin token is the part after `admin:` in <data dir>/admin.token of `natter serve`.
//
// NATTER_WEB_DIR=<clients/web> serves the page and its assets from that directory
// instead of the server (to try client changes without rebuilding natter).
//
// Exits 0 on success, 1 with a message on the first failure; never runs over 110 s.

import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [base, outDir] = process.argv.slice(2);
const ADMIN_TOKEN = process.env.NATTER_ADMIN_TOKEN;
if (!base || !outDir || !ADMIN_TOKEN) {
  console.error("usage: NATTER_ADMIN_TOKEN=<admin token> node browser.mjs <base url> <screenshot dir>");
  process.exit(2);
}
mkdirSync(outDir, { recursive: true });

const TOTAL_MS = 110_000;
const WAIT_MS = 15_000;
const started = Date.now();
const watchdog = setTimeout(() => {
  console.error(`FAIL: the browser test took longer than ${TOTAL_MS / 1000} s`);
  process.exit(1);
}, TOTAL_MS);

const suffix = Math.random().toString(16).slice(2, 10);
const userA = `ann_${suffix}`;
const userB = `bo_${suffix}`;
const userC = `cy_${suffix}`;
const GROUP = `Trip ${suffix}`;
const PASSWORD = "correct horse battery";
// What a message deleted for everyone by an administrator shows instead.
const DELETED = "This message was deleted";

let browser;
const pages = {};
const pageErrors = [];
// The presenceSubscribe frames each page sent: their userIds.
const presenceFrames = {};

function log(msg) {
  console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${msg}`);
}

async function waitFor(page, what, fn, arg) {
  try {
    await page.waitForFunction(fn, arg, { timeout: WAIT_MS, polling: 100 });
  } catch (e) {
    throw new Error(`timed out after ${WAIT_MS / 1000} s waiting for: ${what}\n${e.message.split("\n")[0]}`);
  }
}

/** The chat view's messages: {text, mine, status}. */
function shown(page) {
  return page.$$eval("#messages .msg", (els) =>
    els.map((e) => ({
      text: e.querySelector(".text").textContent,
      mine: e.classList.contains("mine"),
      status: e.dataset.status,
    })),
  );
}

async function waitStatus(page, who, text, statuses) {
  await waitFor(
    page,
    `${who}'s message "${text}" to be ${statuses.join(" or ")}`,
    ([text, statuses]) =>
      [...document.querySelectorAll("#messages .msg.mine")].some(
        (e) => e.querySelector(".text").textContent === text && statuses.includes(e.dataset.status),
      ),
    [text, statuses],
  );
}

async function waitShown(page, who, text) {
  await waitFor(
    page,
    `${who} to see "${text}"`,
    (text) => [...document.querySelectorAll("#messages .msg .text")].some((e) => e.textContent === text),
    text,
  );
}

async function waitConn(page, who, state) {
  await waitFor(page, `${who}'s connection to be ${state}`, (s) => document.querySelector("#conn")?.dataset.state === s, state);
}

/** Waits until `page` shows a system message with exactly `text`. */
async function waitSystem(page, who, text) {
  await waitFor(
    page,
    `${who} to see the system message "${text}"`,
    (text) => [...document.querySelectorAll("#messages .system")].some((e) => e.textContent === text),
    text,
  );
}

/** Waits until the group panel of `page` lists `count` members, `user` with `role`. */
async function waitMember(page, who, what, fn, arg) {
  await waitFor(page, `${who}'s group panel to show ${what}`, fn, arg);
}

async function openGroupPanel(page, who) {
  await page.click("#group-info-btn");
  await waitFor(page, `${who}'s group panel to load`, () => {
    const p = document.querySelector("#group-panel");
    return !p.hidden && document.querySelectorAll("#gp-members li").length > 0;
  });
}

async function send(page, text) {
  await page.fill("#composer-input", text);
  await page.press("#composer-input", "Enter");
}

async function register(page, who, username) {
  await page.goto(base, { timeout: WAIT_MS });
  await page.fill("#auth-username", username);
  await page.fill("#auth-password", PASSWORD);
  await page.click('button[value="register"]');
  await waitConn(page, who, "online");
}

/** A browser context; with NATTER_WEB_DIR, the web client's files come from there. */
async function newContext(browser, options) {
  const ctx = await browser.newContext(options);
  const dir = process.env.NATTER_WEB_DIR;
  if (dir) {
    const types = { js: "text/javascript", css: "text/css", html: "text/html" };
    await ctx.route(
      (url) => url.origin === new URL(base).origin && (url.pathname === "/" || url.pathname.startsWith("/web/")),
      (route) => {
        const path = new URL(route.request().url()).pathname;
        const file = path === "/" ? "index.html" : path.slice("/web/".length);
        const body = readFileSync(join(dir, file), "utf8");
        return route.fulfill({ status: 200, contentType: types[file.split(".").pop()], body });
      },
    );
  }
  return ctx;
}

async function main() {
  browser = await chromium.launch({
    executablePath: process.env.NATTER_CHROMIUM || "/usr/bin/chromium",
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      // Calls: a fake camera and microphone, and no permission prompt.
      "--use-fake-ui-for-media-stream",
      "--use-fake-device-for-media-stream",
      // A page served by route.fulfill counts as public: let it reach the loopback server.
      ...(process.env.NATTER_WEB_DIR ? ["--disable-features=LocalNetworkAccessChecks"] : []),
    ],
    timeout: 30_000,
  });
  const ctxA = await newContext(browser, { viewport: { width: 1280, height: 800 } });
  const ctxB = await newContext(browser, { viewport: { width: 390, height: 844 }, hasTouch: true });
  const a = (pages.ann = await ctxA.newPage());
  const b = (pages.bo = await ctxB.newPage());
  for (const [who, p] of Object.entries(pages)) {
    p.setDefaultTimeout(WAIT_MS);
    p.on("pageerror", (e) => pageErrors.push(`${who}: ${e.message}`));
    presenceFrames[who] = [];
    p.on("websocket", (ws) =>
      ws.on("framesent", (f) => {
        try {
          const frame = JSON.parse(String(f.payload));
          if (frame.presenceSubscribe && !frame.presenceSubscribe.unsubscribe) presenceFrames[who].push(frame.presenceSubscribe.userIds || []);
        } catch {}
      }),
    );
  }

  await register(a, "ann", userA);
  await register(b, "bo", userB);
  log("both registered and online");

  // ann starts a chat with bo by username and writes.
  await a.fill("#new-chat-username", userB);
  await a.press("#new-chat-username", "Enter");
  await waitFor(a, "ann's chat with bo to open", (n) => document.querySelector("#chat-title")?.textContent === n, userB);
  await send(a, "hello bo");
  await waitStatus(a, "ann", "hello bo", ["sent", "delivered", "read"]);
  // bo's device is online: it acks with `received`, so ann sees delivered.
  await waitStatus(a, "ann", "hello bo", ["delivered"]);
  log("ann's first message delivered");

  // bo sees the conversation with one unread message, opens it; ann's ticks turn blue.
  await waitFor(b, "bo's conversation list to show 1 unread", () => document.querySelector("#conversations .badge")?.textContent === "1");
  await b.click("#conversations .conv");
  await waitShown(b, "bo", "hello bo");
  // bo never looked ann up by username: the client fetches her name by id.
  await waitFor(b, "bo's chat to be titled with ann's name", (n) => document.querySelector("#chat-title")?.textContent === n, userA);
  await waitStatus(a, "ann", "hello bo", ["read"]);
  log("ann's message read by bo");

  // bo types (ann sees it) and answers.
  await b.fill("#composer-input", "hi");
  await waitFor(a, "ann to see that bo is typing", (n) => document.querySelector("#typing").textContent === `${n} is typing…`, userB);
  await b.fill("#composer-input", "hi ann!");
  await b.press("#composer-input", "Enter");
  await waitShown(a, "ann", "hi ann!");
  await waitFor(a, "bo's typing indicator to end", () => document.querySelector("#typing").textContent === "");
  await waitStatus(b, "bo", "hi ann!", ["read"]);
  log("chatted both ways");

  // bo goes offline; ann sends two messages; bo comes back and catches up.
  await ctxB.setOffline(true);
  await waitConn(b, "bo", "offline");
  await send(a, "while you were away 1");
  await send(a, "while you were away 2");
  await waitStatus(a, "ann", "while you were away 2", ["sent"]);
  await ctxB.setOffline(false);
  await waitConn(b, "bo", "online");
  await waitShown(b, "bo", "while you were away 2");
  const bTexts = (await shown(b)).map((m) => m.text);
  const expectB = ["hello bo", "hi ann!", "while you were away 1", "while you were away 2"];
  if (JSON.stringify(bTexts) !== JSON.stringify(expectB)) {
    throw new Error(`bo's messages after catching up: ${JSON.stringify(bTexts)}, expected ${JSON.stringify(expectB)}`);
  }
  await waitStatus(a, "ann", "while you were away 2", ["read"]);
  log("bo caught up after being offline");

  // ann writes while offline: queued, then sent once on reconnect.
  await ctxA.setOffline(true);
  await waitConn(a, "ann", "offline");
  await send(a, "typed while offline");
  await waitStatus(a, "ann", "typed while offline", ["pending"]);
  await ctxA.setOffline(false);
  await waitConn(a, "ann", "online");
  await waitStatus(a, "ann", "typed while offline", ["read"]);
  await waitShown(b, "bo", "typed while offline");
  // Give a duplicate a moment to show up if one were coming.
  await b.waitForTimeout(500);
  const expectAll = [...expectB, "typed while offline"];
  for (const [who, p] of [["ann", a], ["bo", b]]) {
    const texts = (await shown(p)).map((m) => m.text);
    if (JSON.stringify(texts) !== JSON.stringify(expectAll)) {
      throw new Error(`${who}'s messages at the end: ${JSON.stringify(texts)}, expected ${JSON.stringify(expectAll)}`);
    }
  }
  log("offline message sent once");

  await b.fill("#composer-input", "see you");
  await a.screenshot({ path: join(outDir, "desktop.png") });
  await b.screenshot({ path: join(outDir, "phone.png") });
  await b.click("#back");
  await b.screenshot({ path: join(outDir, "phone-list.png") });
  if (pageErrors.length) throw new Error(`errors in the page:\n${pageErrors.join("\n")}`);
  log(`screenshots in ${outDir}`);
  await groups(browser, a, b);
  if (pageErrors.length) throw new Error(`errors in the page:\n${pageErrors.join("\n")}`);
  await people(a, b);
  if (pageErrors.length) throw new Error(`errors in the page:\n${pageErrors.join("\n")}`);
  await media(a, b);
  if (pageErrors.length) throw new Error(`errors in the page:\n${pageErrors.join("\n")}`);
  await calls(a, b);
  if (pageErrors.length) throw new Error(`errors in the page:\n${pageErrors.join("\n")}`);
  await moderation(a, b);
  if (pageErrors.length) throw new Error(`errors in the page:\n${pageErrors.join("\n")}`);
}

async function groups(browser, a, b) {
  const ctxC = await newContext(browser, { viewport: { width: 1024, height: 720 } });
  const c = (pages.cy = await ctxC.newPage());
  c.setDefaultTimeout(WAIT_MS);
  c.on("pageerror", (e) => pageErrors.push(`cy: ${e.message}`));
  await register(c, "cy", userC);
  const idOf = (p) => p.evaluate(() => window.natter.me.userId);
  const [idB, idC] = [await idOf(b), await idOf(c)];

  // ann creates a group with bo; both see the "created" message.
  await a.click(".new-group summary");
  await a.fill("#group-name", GROUP);
  await a.fill("#group-members", userB);
  await a.click('#new-group button[type="submit"]');
  await waitFor(a, "ann's group to open", (n) => document.querySelector("#chat-title")?.textContent === n, GROUP);
  await waitSystem(a, "ann", `You created the group "${GROUP}" with ${userB}`);
  await waitFor(b, "bo's list to show the group", (n) =>
    [...document.querySelectorAll("#conversations .conv-title")].some((e) => e.textContent === n), GROUP);
  await b.click('#conversations .conv[data-conv^="g."]');
  await waitSystem(b, "bo", `${userA} created the group "${GROUP}" with you`);
  log("group created, both see it");

  // bo writes in the group; ann gets it, with bo's name on it.
  await send(b, "hi group");
  await waitShown(a, "ann", "hi group");
  await waitFor(a, "bo's name on his group message", (n) =>
    [...document.querySelectorAll("#messages .msg.theirs .sender")].some((e) => e.textContent === n), userB);
  await waitStatus(b, "bo", "hi group", ["sent"]);

  // ann opens the group info: owner and member; bo (a member) sees no admin controls.
  await openGroupPanel(a, "ann");
  await waitMember(a, "ann", "2 members, ann the owner", (me) => {
    const rows = [...document.querySelectorAll("#gp-members li")];
    return rows.length === 2 && rows.find((r) => r.dataset.user === me)?.dataset.role === "GROUP_ROLE_OWNER";
  }, await idOf(a));
  await openGroupPanel(b, "bo");
  if (await b.isVisible("#gp-admin")) throw new Error("bo, a member, sees the admin controls");
  if ((await b.$$("#gp-members button")).length) throw new Error("bo, a member, sees member actions");
  await b.click("#group-info-btn");

  // An unknown username is a readable notice; then ann adds cy by username.
  await a.fill("#gp-add-username", `nobody_${suffix}`);
  await a.press("#gp-add-username", "Enter");
  await waitFor(a, "a notice about the unknown user", () => /No such user/.test(document.querySelector("#chat-notice").textContent));
  await a.fill("#gp-add-username", userC);
  await a.press("#gp-add-username", "Enter");
  await waitSystem(a, "ann", `You added ${userC}`);
  await waitSystem(b, "bo", `${userA} added ${userC}`);
  await waitFor(a, "the notice to clear", () => document.querySelector("#chat-notice").textContent === "");
  await waitMember(a, "ann", "cy as a member", (id) => document.querySelector(`#gp-members li[data-user="${id}"]`)?.dataset.role === "GROUP_ROLE_MEMBER", idC);
  await waitFor(c, "cy's list to show the group", (n) =>
    [...document.querySelectorAll("#conversations .conv-title")].some((e) => e.textContent === n), GROUP);
  await c.click('#conversations .conv[data-conv^="g."]');
  await waitSystem(c, "cy", `${userA} added you`);
  log("ann added cy");

  // Roles: ann makes cy an admin and takes it back.
  const row = (id, action) => `#gp-members li[data-user="${id}"] button[data-action="${action}"]`;
  await a.click(row(idC, "promote"));
  await waitSystem(a, "ann", `You made ${userC} an admin`);
  await waitMember(a, "ann", "cy as an admin", (id) => document.querySelector(`#gp-members li[data-user="${id}"]`)?.dataset.role === "GROUP_ROLE_ADMIN", idC);
  await waitSystem(c, "cy", `${userA} made you an admin`);
  await a.click(row(idC, "demote"));
  await waitSystem(a, "ann", `You removed ${userC} as admin`);
  await waitSystem(c, "cy", `${userA} removed you as admin`);

  // bo renames the group (every member may, by default).
  await b.click("#group-info-btn");
  await b.fill("#gp-name", `${GROUP}!`);
  await b.press("#gp-name", "Enter");
  await waitSystem(a, "ann", `${userB} changed the group name to "${GROUP}!"`);
  await waitFor(a, "ann's title to follow the rename", (n) => document.querySelector("#chat-title").textContent === n, `${GROUP}!`);
  await b.click("#group-info-btn");
  log("roles and rename");

  // ann removes bo: bo sees it, and his next message is refused, visibly.
  await a.click(row(idB, "remove"));
  await waitSystem(a, "ann", `You removed ${userB}`);
  await waitSystem(b, "bo", `${userA} removed you`);
  await waitFor(b, "bo's not-a-member note", () => !document.querySelector("#not-member").hidden);
  await send(b, "am I still here?");
  await waitStatus(b, "bo", "am I still here?", ["failed"]);
  await waitFor(b, "the refusal as a notice", () =>
    /not sent: Not allowed/.test(document.querySelector("#chat-notice").textContent));
  log("bo removed; his send refused");

  // ann creates an invite link; bo opens it and is back in.
  await a.click("#gp-invite");
  await waitFor(a, "the invite link", () => /#join=\d+-\w+$/.test(document.querySelector("#gp-invite-link").value));
  const link = await a.inputValue("#gp-invite-link");
  await b.goto(link, { timeout: WAIT_MS });
  await waitSystem(b, "bo", "You joined using an invite link");
  await waitSystem(a, "ann", `${userB} joined using an invite link`);
  await waitFor(b, "bo's note to go", () => document.querySelector("#not-member").hidden);
  await send(b, "back again");
  await waitShown(a, "ann", "back again");
  if ((await shown(a)).some((m) => m.text === "am I still here?")) throw new Error("ann got bo's refused message");
  log("bo joined again by invite link");

  // cy leaves.
  await openGroupPanel(c, "cy");
  await c.click("#gp-leave");
  await waitSystem(c, "cy", "You left");
  await waitSystem(a, "ann", `${userC} left`);
  await waitFor(c, "cy's not-a-member note", () => !document.querySelector("#not-member").hidden);
  await waitMember(a, "ann", "2 members again", () => document.querySelectorAll("#gp-members li").length === 2);
  log("cy left");

  await a.screenshot({ path: join(outDir, "group-desktop.png") });
  await b.screenshot({ path: join(outDir, "group-phone.png") });
  await openGroupPanel(b, "bo");
  await b.screenshot({ path: join(outDir, "group-phone-info.png") });
}

let failed = false;
try {
  await main();
  console.log(`ok: web client browser test passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
} catch (e) {
  failed = true;
  console.error(`FAIL: ${e.message}`);
  if (pageErrors.length) console.error(`errors in the page:\n${pageErrors.join("\n")}`);
  for (const [who, p] of Object.entries(pages)) {
    await p.screenshot({ path: join(outDir, `failure-${who}.png`), timeout: 5000 }).catch(() => {});
  }
} finally {
  await browser?.close().catch(() => {});
  clearTimeout(watchdog);
}
process.exit(failed ? 1 : 0);

// ---- people and presence ----

function directId(x, y) {
  return BigInt(x) < BigInt(y) ? `d.${x}.${y}` : `d.${y}.${x}`;
}

/** Opens a conversation from the list (on a phone, going back to the list first). */
async function openConv(page, who, convId) {
  if (await page.isVisible("#people")) await page.click((await page.isVisible("#people-back")) ? "#people-back" : "#people-close");
  if (await page.isVisible("#back")) await page.click("#back");
  await page.click(`#conversations .conv[data-conv="${convId}"]`);
  await waitFor(page, `${who}'s chat ${convId} to open`, (id) => document.querySelector("#messages").dataset.conv === id && !document.querySelector("#chat").hidden, convId);
}

/** Opens the people panel on `tab` (on a phone, from the conversation list). */
async function openPeople(page, who, tab) {
  if (!(await page.isVisible("#people"))) {
    if (await page.isVisible("#back")) await page.click("#back");
    await page.click("#people-btn");
  }
  await page.click(`#people-tabs [data-tab="${tab}"]`);
  await waitFor(page, `${who}'s ${tab} tab`, (tab) => !document.querySelector(`#tab-${tab}`).hidden, tab);
}

/** The chat header's presence line, e.g. "online" or "last seen today at 14:05" ("" while hidden). */
function headerPresence() {
  const line = document.querySelector("#chat-presence");
  return line.hidden ? "" : line.textContent;
}

/** Waits until `page`'s list entry of `convId` shows presence `state` ("" = none). */
async function waitListPresence(page, who, convId, state) {
  await waitFor(
    page,
    `${who}'s conversation list to show presence "${state}" for ${convId}`,
    ([id, state]) => {
      const conv = document.querySelector(`#conversations .conv[data-conv="${id}"]`);
      if (!conv || conv.dataset.presence !== state) return false;
      return state === "" ? !conv.querySelector(".dot") : !!conv.querySelector(`.dot.${state}`);
    },
    [convId, state],
  );
}

/** Waits for `page`'s chat header presence to match `re` (a RegExp source), or (null) be empty. */
async function waitHeaderPresence(page, who, what, re) {
  await waitFor(
    page,
    `${who}'s chat header to show ${what}`,
    (re) => {
      const line = document.querySelector("#chat-presence");
      const text = line.hidden ? "" : line.textContent;
      return re === null ? text === "" : new RegExp(re).test(text);
    },
    re,
  );
}

/** Polls `check()` (in node) until it is true. */
async function until(what, check) {
  const deadline = Date.now() + WAIT_MS;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${WAIT_MS / 1000} s waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function people(a, b) {
  const idOf = (p) => p.evaluate(() => window.natter.me.userId);
  const [idA, idB] = [await idOf(a), await idOf(b)];
  const direct = directId(idA, idB);
  const ctxB = b.context();
  const LAST_SEEN = "^last seen today at \\d{1,2}:\\d{2}";

  // Presence: ann sees bo online, in the header and with a dot in her list.
  await openConv(a, "ann", direct);
  await waitHeaderPresence(a, "ann", "bo online", "^online$");
  await waitListPresence(a, "ann", direct, "online");
  log("ann sees bo online");

  // bo's connection drops: after the server's debounce, ann sees "last seen today at …".
  await ctxB.setOffline(true);
  await waitConn(b, "bo", "offline");
  await waitHeaderPresence(a, "ann", "bo's last seen", LAST_SEEN);
  await waitListPresence(a, "ann", direct, "offline");
  await waitFor(a, "bo's last seen time in ann's list", (id) =>
    /^last seen \d{1,2}:\d{2}/.test(document.querySelector(`#conversations .conv[data-conv="${id}"] .conv-presence`)?.textContent), direct);
  await a.screenshot({ path: join(outDir, "last-seen-desktop.png") });
  await ctxB.setOffline(false);
  await waitConn(b, "bo", "online");
  await waitHeaderPresence(a, "ann", "bo online again", "^online$");
  await waitListPresence(a, "ann", direct, "online");
  log("bo went offline (last seen) and came back online");

  // The subscription is renewed at half its lease (here: made due now).
  const renewIn = await a.evaluate(() => window.natter.presenceRenewAt - Date.now());
  if (!(renewIn > 0)) throw new Error(`ann's presence renewal is not scheduled (${renewIn} ms)`);
  const sent = presenceFrames.ann.length;
  await a.evaluate(() => {
    window.natter.presenceRenewAt = Date.now();
  });
  await until("ann to renew her presence subscriptions", () => presenceFrames.ann.slice(sent).some((ids) => ids.includes(idB)));
  log(`presence renewal was due in ${Math.round(renewIn / 1000)} s; renewed`);

  // Typing: bo types and stops; ann's indicator shows, then expires by itself.
  await openConv(b, "bo", direct);
  await waitHeaderPresence(b, "bo", "ann online", "^online$");
  await b.fill("#composer-input", "I was about to say");
  await waitFor(a, "ann to see that bo is typing", (n) => document.querySelector("#typing").textContent === `${n} is typing…`, userB);
  await waitFor(a, "typing… in ann's list", (id) =>
    document.querySelector(`#conversations .conv[data-conv="${id}"] .conv-last.typing`)?.textContent === "typing…", direct);
  if ((await a.evaluate(headerPresence)) !== "") throw new Error("ann's header shows presence and typing at once");
  const shownAt = Date.now();
  await waitFor(a, "bo's typing indicator to expire", () => document.querySelector("#typing").textContent === "");
  const after = Date.now() - shownAt;
  if (after < 3000) throw new Error(`bo's typing indicator went after ${after} ms: it should last until it expires`);
  await waitHeaderPresence(a, "ann", "bo online after typing", "^online$");
  log(`typing indicator expired after ${(after / 1000).toFixed(1)} s`);

  // Recording a voice note shows as such; clearing the composer ends typing at once.
  await b.evaluate(() => window.natter.typing(true, "CHAT_STATE_RECORDING"));
  await waitFor(a, "ann to see that bo is recording", (n) => document.querySelector("#typing").textContent === `${n} is recording audio…`, userB);
  await waitFor(a, "recording audio… in ann's list", (id) =>
    document.querySelector(`#conversations .conv[data-conv="${id}"] .conv-last.typing`)?.textContent === "recording audio…", direct);
  await b.evaluate(() => window.natter.typing(false));
  await waitFor(a, "bo's recording indicator to end", () => document.querySelector("#typing").textContent === "");
  await b.fill("#composer-input", "");
  await b.fill("#composer-input", "ok");
  await waitFor(a, "ann to see bo typing again", (n) => document.querySelector("#typing").textContent === `${n} is typing…`, userB);
  const typedAt = Date.now();
  await b.fill("#composer-input", "");
  await waitFor(a, "bo's typing to end when he cleared the composer", () => document.querySelector("#typing").textContent === "");
  if (Date.now() - typedAt > 4000) throw new Error("clearing the composer did not end the typing indicator (it only expired)");
  log("recording indicator; typing ends when the composer is cleared");

  // Contacts: an unknown username is a notice; ann adds bo as "Bobby", renames him.
  await openPeople(a, "ann", "contacts");
  await a.fill("#contact-username", `nobody_${suffix}`);
  await a.press("#contact-username", "Enter");
  await waitFor(a, "a notice about the unknown contact", () => /No such user/.test(document.querySelector("#people-notice").textContent));
  await a.fill("#contact-username", userB);
  await a.fill("#contact-name", "Bobby");
  await a.press("#contact-name", "Enter");
  const contactRow = (id) => `#contacts li[data-user="${id}"]`;
  await waitFor(a, "bo in ann's contacts as Bobby", (sel) => document.querySelector(`${sel} .cname`)?.textContent === "Bobby", contactRow(idB));
  await waitFor(a, "the notice to clear", () => document.querySelector("#people-notice").textContent === "");
  await waitFor(a, "bo's contact entry to show him online", (sel) => document.querySelector(sel)?.dataset.presence === "online", contactRow(idB));
  await a.click(`${contactRow(idB)} [data-action="rename"]`);
  await a.fill("#contact-name", "Bo B.");
  await a.press("#contact-name", "Enter");
  await waitFor(a, "bo renamed in ann's contacts", (sel) => document.querySelector(`${sel} .cname`)?.textContent === "Bo B.", contactRow(idB));
  if ((await a.$$("#contacts li")).length !== 1) throw new Error("ann's contact list should hold exactly bo");
  await a.screenshot({ path: join(outDir, "contacts-desktop.png") });
  await openConv(a, "ann", direct);
  await waitFor(a, "ann's chat titled with her name for bo", () => document.querySelector("#chat-title").textContent === "Bo B.");
  await a.click("#chat-menu-btn");
  await a.screenshot({ path: join(outDir, "chat-menu-desktop.png") });
  await a.keyboard.press("Escape");
  await waitFor(a, "ann's chat menu to close", () => document.querySelector("#chat-menu").hidden);
  log("ann added bo as a contact and renamed him");

  // bo adds ann from his chat's menu; she is listed in his contacts.
  await b.click("#chat-menu-btn");
  await b.click("#menu-contact");
  await openPeople(b, "bo", "contacts");
  await waitFor(b, "ann in bo's contacts", ([sel, n]) => document.querySelector(`${sel} .cname`)?.textContent === n, [contactRow(idA), userA]);
  log("bo added ann from the chat menu");

  // Status: ann posts one; bo (they are each other's contacts) sees it and opens it;
  // ann sees one view, by bo.
  const STATUS = `On a trip ${suffix}`;
  await openPeople(a, "ann", "status");
  await a.fill("#status-text", STATUS);
  await a.press("#status-text", "Enter");
  await waitFor(a, "ann's own status", (t) => [...document.querySelectorAll("#status-mine .ptext")].some((e) => e.textContent === t), STATUS);
  await waitFor(a, "ann's status with 0 views", () => document.querySelector('#status-mine [data-action="viewers"]')?.textContent === "0 views");
  await openPeople(b, "bo", "status");
  const entry = (id) => `#status-list li[data-user="${id}"] button`;
  await waitFor(b, "ann's status, unseen, in bo's list", (sel) => document.querySelector(sel)?.classList.contains("unseen"), entry(idA));
  await b.click(entry(idA));
  await waitFor(b, "bo to see ann's status", (t) => [...document.querySelectorAll("#status-view-items .ptext")].some((e) => e.textContent === t), STATUS);
  await waitFor(b, "ann's status marked viewed", (sel) => !document.querySelector(sel)?.classList.contains("unseen"), entry(idA));
  await a.click("#status-refresh");
  await waitFor(a, "ann's status with 1 view", () => document.querySelector('#status-mine [data-action="viewers"]')?.textContent === "1 view");
  await a.click('#status-mine [data-action="viewers"]');
  await waitFor(a, "bo among the viewers", (id) => !!document.querySelector(`#status-mine .viewers li[data-user="${id}"]`), idB);
  await a.screenshot({ path: join(outDir, "people-desktop.png") });
  await b.screenshot({ path: join(outDir, "people-phone.png") });
  log("ann's status seen by bo; ann sees who viewed it");

  // Blocking: ann blocks bo from the chat menu. She no longer shows his presence, and
  // he no longer gets hers.
  await openConv(a, "ann", direct);
  await openConv(b, "bo", direct);
  await waitHeaderPresence(b, "bo", "ann online", "^online$");
  await a.click("#chat-menu-btn");
  await a.click("#menu-block");
  await waitFor(a, "ann's blocked note", () => !document.querySelector("#blocked-note").hidden);
  await waitHeaderPresence(a, "ann", "no presence for blocked bo", null);
  await waitListPresence(a, "ann", direct, "");
  await a.screenshot({ path: join(outDir, "blocked-desktop.png") });
  let pushed = true;
  try {
    await b.waitForFunction(() => document.querySelector("#chat-presence").textContent === "", null, { timeout: 4000, polling: 100 });
  } catch {
    pushed = false;
  }
  if (!pushed) {
    // Not pushed: a new subscription (after a reconnect) must not show it.
    await ctxB.setOffline(true);
    await waitConn(b, "bo", "offline");
    await ctxB.setOffline(false);
    await waitConn(b, "bo", "online");
    await b.waitForTimeout(1000);
  }
  await waitHeaderPresence(b, "bo", "no presence of ann, who blocked him", null);
  await waitListPresence(b, "bo", direct, "");
  log(`ann blocked bo: presence gone on both sides (bo's ${pushed ? "pushed" : "after reconnecting"})`);

  // bo writes while blocked: his message is withheld from ann (one tick for him).
  await send(b, "are you there?");
  await waitStatus(b, "bo", "are you there?", ["sent"]);
  await b.waitForTimeout(1500);
  const bStatus = (await shown(b)).find((m) => m.text === "are you there?")?.status;
  if (bStatus !== "sent") throw new Error(`bo's message to ann, who blocked him, shows as "${bStatus}", expected "sent" (one tick)`);
  if ((await shown(a)).some((m) => m.text === "are you there?")) throw new Error("ann was shown a message bo sent while she blocked him");
  await openPeople(a, "ann", "blocked");
  await waitFor(a, "bo in ann's blocked list", (id) => !!document.querySelector(`#blocked li[data-user="${id}"]`), idB);
  await a.click(`#blocked li[data-user="${idB}"] [data-action="unblock"]`);
  await waitFor(a, "ann's blocked list to empty", () => document.querySelectorAll("#blocked li").length === 0);
  await openConv(a, "ann", direct);
  await waitFor(a, "ann's blocked note to go", () => document.querySelector("#blocked-note").hidden);
  await waitHeaderPresence(a, "ann", "bo online once unblocked", "^online$");
  await send(b, "and now?");
  await waitShown(a, "ann", "and now?");
  await b.waitForTimeout(500);
  if ((await shown(a)).some((m) => m.text === "are you there?")) throw new Error("ann was shown a message sent while she blocked bo");
  const withheld = await a.evaluate((id) => [...window.natter.convs.get(id).msgs.values()].filter((m) => m.withheld).length, direct);
  if (withheld !== 1) throw new Error(`ann's client holds ${withheld} withheld messages, expected 1`);
  log("bo's message while blocked withheld; unblocked, presence and messages are back");

  // Profile and privacy: ann saves hers; both read back; bo sees her about and name.
  await openPeople(a, "ann", "profile");
  await a.fill("#profile-name", "Ann A.");
  await a.fill("#profile-about", `Out hiking ${suffix}`);
  await a.click('#profile-form button[type="submit"]');
  await waitFor(a, "the profile saved", () => document.querySelector("#people-info").textContent === "Profile saved.");
  await openPeople(a, "ann", "privacy");
  await waitFor(a, "ann's privacy settings to load", () => !document.querySelector("#privacy-lastSeen").disabled);
  const privacy = () => [...document.querySelectorAll("#privacy-form select")].map((s) => s.value).join(",");
  const defaults = await a.evaluate(privacy);
  if (defaults !== "VISIBILITY_EVERYONE,VISIBILITY_EVERYONE,VISIBILITY_EVERYONE,VISIBILITY_EVERYONE") {
    throw new Error(`ann's default privacy settings: ${defaults}`);
  }
  await a.selectOption("#privacy-lastSeen", "VISIBILITY_CONTACTS");
  await waitFor(a, "the privacy setting saved", () => document.querySelector("#people-info").textContent === "Privacy settings saved.");
  await a.selectOption("#privacy-about", "VISIBILITY_NOBODY");
  await waitFor(a, "the second privacy setting saved", () => document.querySelector("#privacy-about").value === "VISIBILITY_NOBODY" && document.querySelector("#people-info").textContent === "Privacy settings saved.");
  const beforeReload = presenceFrames.ann.length;
  await a.reload();
  await waitConn(a, "ann", "online");
  await until("ann to subscribe to bo's presence again after the reload", () =>
    presenceFrames.ann.slice(beforeReload).some((ids) => ids.includes(idB)));
  await openPeople(a, "ann", "privacy");
  await waitFor(a, "ann's saved privacy settings after a reload", (want) =>
    [...document.querySelectorAll("#privacy-form select")].map((s) => s.value).join(",") === want && !document.querySelector("#privacy-about").disabled,
    "VISIBILITY_CONTACTS,VISIBILITY_EVERYONE,VISIBILITY_EVERYONE,VISIBILITY_NOBODY");
  await openPeople(a, "ann", "profile");
  await waitFor(a, "ann's saved profile after a reload", (about) =>
    document.querySelector("#profile-name").value === "Ann A." && document.querySelector("#profile-about").value === about, `Out hiking ${suffix}`);
  // bo has ann as a contact without a name of his own: he sees her display name; her
  // about is hidden from everyone now.
  await openPeople(b, "bo", "contacts");
  await waitFor(b, "ann's display name in bo's contacts", (sel) => document.querySelector(`${sel} .cname`)?.textContent === "Ann A.", contactRow(idA));
  const row = await b.textContent(contactRow(idA));
  if (row.includes("Out hiking")) throw new Error(`bo sees ann's about, which she hid: ${row}`);
  log("profile and privacy settings saved and applied");

  // ann blocks cy by username from the Blocked tab, then unblocks her.
  const idC = await idOf(pages.cy);
  await openPeople(a, "ann", "blocked");
  await a.fill("#block-username", userC);
  await a.press("#block-username", "Enter");
  await waitFor(a, "cy in ann's blocked list", (id) => !!document.querySelector(`#blocked li[data-user="${id}"]`), idC);
  await waitFor(a, "the block form to clear", () => document.querySelector("#block-username").value === "");
  await a.click(`#blocked li[data-user="${idC}"] [data-action="unblock"]`);
  await waitFor(a, "ann's blocked list to empty again", () => document.querySelectorAll("#blocked li").length === 0);

  // ann deletes her status: bo no longer gets it. She removes bo from her contacts.
  await openPeople(a, "ann", "status");
  await a.click('#status-mine [data-action="delete"]');
  await waitFor(a, "ann's status gone", () => document.querySelectorAll("#status-mine li").length === 0);
  await openPeople(b, "bo", "status");
  await waitFor(b, "ann's status gone from bo's list", (sel) => !document.querySelector(sel), entry(idA));
  await openPeople(a, "ann", "contacts");
  await a.click(`${contactRow(idB)} [data-action="remove"]`);
  await waitFor(a, "ann's contacts to empty", () => document.querySelectorAll("#contacts li").length === 0);
  await openConv(a, "ann", direct);
  await waitFor(a, "ann's chat titled with bo's username again", (n) => document.querySelector("#chat-title").textContent === n, userB);
  await waitHeaderPresence(a, "ann", "bo (a chat, no longer a contact) still online", "^online$");
  log("blocked and unblocked by username; status deleted; contact removed");
}

// ---- media ----

async function media(a, b) {
  // A 7x5 RGB PNG (a top-level const would not be initialised yet when main() runs).
  const PNG_7X5 =
    "iVBORw0KGgoAAAANSUhEUgAAAAcAAAAFCAIAAAAG+GGPAAAAcElEQVR42gXBMQ0DMQwF0C9lKoSD8GUAXbxWBWAVQXQcvFY3ZgqEYIj3AomCoIvXbn0PFWzgBBdYQAENRFU2fU49l15Fh+jHdKM6m5/Tx/Jd/BB/mXfUYItrxl5xL9ElvhYP1GTLMfNY2UveJN+Wvz8XKC2Rla6IVgAAAABJRU5ErkJggg==";
  const idOf = (p) => p.evaluate(() => window.natter.me.userId);
  const direct = directId(await idOf(a), await idOf(b));
  await openConv(a, "ann", direct);
  await openConv(b, "bo", direct);

  // ann types a caption, then picks a photo: it goes with the caption.
  const caption = `a tiny picture ${suffix}`;
  await a.fill("#composer-input", caption);
  await a.setInputFiles("#attach-input", { name: "tiny.png", mimeType: "image/png", buffer: Buffer.from(PNG_7X5, "base64") });
  await waitStatus(a, "ann", caption, ["sent", "delivered", "read"]);
  if ((await a.inputValue("#composer-input")) !== "") throw new Error("the caption stayed in ann's composer");
  // bo's page shows it as an <img> loaded from the download URL with his token.
  await waitFor(
    b,
    "bo to see ann's photo, downloaded with his own token",
    (caption) => {
      const li = [...document.querySelectorAll("#messages .msg.theirs")].find((e) => e.querySelector(".text")?.textContent === caption);
      const img = li?.querySelector("img.media-img");
      return (
        !!img &&
        img.dataset.state === "full" &&
        img.complete &&
        img.naturalWidth === 7 &&
        img.naturalHeight === 5 &&
        /\/v1\/media\/[^?]+\?conversation=[^&]+&seq=\d+&access_token=/.test(img.getAttribute("src"))
      );
    },
    caption,
  );
  await waitFor(a, "ann's own photo shown too", (caption) => {
    const li = [...document.querySelectorAll("#messages .msg.mine")].find((e) => e.querySelector(".text")?.textContent === caption);
    const img = li?.querySelector("img.media-img");
    return !!img && img.naturalWidth === 7;
  }, caption);
  await waitFor(b, "bo's list to preview the photo", (id) =>
    document.querySelector(`#conversations .conv[data-conv="${id}"] .conv-last`)?.textContent.startsWith("📷"), direct);
  log("ann sent a photo; bo sees it, downloaded with his token");

  // A document: a download link with its name and size, which works with bo's token.
  const notes = `notes from ann ${suffix}\n`;
  await a.setInputFiles("#attach-input", { name: "notes.txt", mimeType: "text/plain", buffer: Buffer.from(notes) });
  await waitFor(b, "bo to see the document link", () =>
    [...document.querySelectorAll("#messages a.media-doc .media-name")].some((e) => e.textContent === "notes.txt"));
  const got = await b.evaluate(async () => {
    const link = [...document.querySelectorAll("#messages a.media-doc")].pop();
    const res = await fetch(link.href);
    return { status: res.status, text: await res.text(), meta: link.querySelector(".media-meta").textContent };
  });
  if (got.status !== 200 || got.text !== notes) throw new Error(`bo's download of the document: ${JSON.stringify(got)}`);
  if (!/^\d+ B/.test(got.meta)) throw new Error(`the document's size is not shown: ${got.meta}`);
  log("ann sent a document; bo downloads it from the link");
  await a.screenshot({ path: join(outDir, "media-desktop.png") });
  await b.screenshot({ path: join(outDir, "media-phone.png") });
}

// ---- calls ----

/** Waits until `page`'s call panel has `data-<attr>` = `value`. */
async function waitCall(page, who, attr, value) {
  await waitFor(
    page,
    `${who}'s call ${attr} to be ${value}`,
    ([attr, value]) => document.querySelector("#call")?.dataset[attr] === value,
    [attr, value],
  );
}

async function calls(a, b) {
  const t0 = Date.now();
  const idOf = (p) => p.evaluate(() => window.natter.me.userId);
  const direct = directId(await idOf(a), await idOf(b));
  for (const p of [a, b]) await p.context().grantPermissions(["camera", "microphone"], { origin: new URL(base).origin });
  await openConv(a, "ann", direct);
  await openConv(b, "bo", direct);
  const before = (p) => p.$$eval("#messages .call-log", (els) => els.length);
  const [logsA, logsB] = [await before(a), await before(b)];

  // ann places a video call from the chat header; bo's page rings with her name.
  if (!(await a.isVisible("#call-video-btn")) || !(await a.isVisible("#call-voice-btn"))) throw new Error("ann's chat header has no call buttons");
  await a.click("#call-video-btn");
  await waitCall(a, "ann", "state", "outgoing");
  await waitCall(b, "bo", "state", "incoming");
  const banner = await b.evaluate(() => ({
    title: document.querySelector("#call-title").textContent,
    peer: document.querySelector("#chat-title").textContent,
    status: document.querySelector("#call-status").textContent,
    answer: !document.querySelector("#call-answer").hidden,
    decline: !document.querySelector("#call-decline").hidden,
  }));
  if (!banner.title || banner.title !== banner.peer || banner.status !== "Incoming video call" || !banner.answer || !banner.decline) {
    throw new Error(`bo's incoming-call banner: ${JSON.stringify(banner)}`);
  }
  await b.screenshot({ path: join(outDir, "call-incoming-phone.png") });
  log("ann calls bo (video); bo's page rings");

  // bo answers: both peer connections connect, each side plays the other's camera.
  await b.click("#call-answer");
  await waitCall(b, "bo", "connection", "connected");
  await waitCall(a, "ann", "connection", "connected");
  await waitCall(a, "ann", "state", "active");
  await waitCall(b, "bo", "state", "active");
  const playing = () => {
    const v = document.querySelector("#call-remote-video");
    return !!v?.srcObject && v.srcObject.getVideoTracks().length > 0 && v.videoWidth > 0;
  };
  await waitFor(b, "ann's video to play on bo's page", playing);
  await waitFor(a, "bo's video to play on ann's page", playing);
  log(`call connected, video both ways (${((Date.now() - t0) / 1000).toFixed(1)} s in)`);

  // Mute and camera toggles act on ann's own tracks.
  const tracks = () => {
    const l = window.natter.call.local;
    return { audio: l.getAudioTracks().every((t) => t.enabled), video: l.getVideoTracks().every((t) => t.enabled) };
  };
  await a.click("#call-mute");
  await a.click("#call-camera");
  const off = await a.evaluate(tracks);
  const pressed = await a.evaluate(() => [document.querySelector("#call-mute"), document.querySelector("#call-camera")].map((e) => e.getAttribute("aria-pressed")).join());
  if (off.audio || off.video || pressed !== "true,true") throw new Error(`ann muted and turned her camera off, but: ${JSON.stringify({ ...off, pressed })}`);
  await a.screenshot({ path: join(outDir, "call-desktop.png") });
  await b.screenshot({ path: join(outDir, "call-phone.png") });
  await a.click("#call-mute");
  await a.click("#call-camera");
  const on = await a.evaluate(tracks);
  if (!on.audio || !on.video) throw new Error(`ann unmuted and turned her camera on, but: ${JSON.stringify(on)}`);

  // ann hangs up: both pages say the call ended, release the camera and close the peer
  // connection, and both conversations get the call's history line.
  await a.click("#call-hangup");
  for (const [who, p] of [["ann", a], ["bo", b]]) {
    await waitCall(p, who, "state", "ended");
    await waitFor(p, `${who}'s page to say "Call ended"`, () => document.querySelector("#call-status").textContent === "Call ended");
    const closed = await p.evaluate(() => {
      const c = window.natter.call;
      return !c || (c.pc === null && c.local === null);
    });
    if (!closed) throw new Error(`${who}'s peer connection or camera is still open after the call ended`);
  }
  log("ann hung up; both pages show the call ended");
  await waitCallLog(a, "ann", logsA + 1, "^🎥 Video call · \\d+:\\d\\d$");
  await waitCallLog(b, "bo", logsB + 1, "^🎥 Video call · \\d+:\\d\\d$");
  await waitFor(a, "ann's conversation list to preview the call", (id) =>
    /Video call/.test(document.querySelector(`#conversations .conv[data-conv="${id}"] .conv-last`)?.textContent || ""), direct);
  await a.screenshot({ path: join(outDir, "call-ended-desktop.png") });
  await b.screenshot({ path: join(outDir, "call-ended-phone.png") });
  log("the call's history line shown on both sides");

  // bo calls ann (voice); she declines: both see it declined, with its history line.
  await closeCallPanel(a, "ann");
  await closeCallPanel(b, "bo");
  await b.click("#call-voice-btn");
  await waitCall(b, "bo", "state", "outgoing");
  await waitCall(a, "ann", "state", "incoming");
  await waitFor(a, "ann's banner to say a voice call rings", () => document.querySelector("#call-status").textContent === "Incoming voice call");
  await a.click("#call-decline");
  for (const [who, p] of [["ann", a], ["bo", b]]) {
    await waitCall(p, who, "state", "ended");
    await waitFor(p, `${who}'s page to say "Call declined"`, () => document.querySelector("#call-status").textContent === "Call declined");
  }
  await waitCallLog(a, "ann", logsA + 2, "^📞 Voice call \\(declined\\)$");
  await waitCallLog(b, "bo", logsB + 2, "^📞 Voice call \\(declined\\)$");
  log("bo's voice call declined by ann");

  // ann calls bo and gives up before he answers: a missed call for him.
  await closeCallPanel(a, "ann");
  await closeCallPanel(b, "bo");
  await a.click("#call-voice-btn");
  await waitCall(a, "ann", "state", "outgoing");
  await waitCall(b, "bo", "state", "incoming");
  await a.click("#call-hangup");
  for (const [who, p] of [["ann", a], ["bo", b]]) {
    await waitCall(p, who, "state", "ended");
    await waitFor(p, `${who}'s page to say "Call cancelled"`, () => document.querySelector("#call-status").textContent === "Call cancelled");
  }
  await waitCallLog(a, "ann", logsA + 3, "^📞 Voice call \\(cancelled\\)$");
  await waitCallLog(b, "bo", logsB + 3, "^📞 Missed voice call$");
  await waitFor(b, "bo's missed call marked", () => [...document.querySelectorAll("#messages .call-log")].pop()?.classList.contains("missed"));
  log(`ann's cancelled call is a missed call for bo (the call scenario took ${((Date.now() - t0) / 1000).toFixed(1)} s)`);
}

/** Waits until `page`'s chat shows `count` call history lines, the last matching `re`. */
async function waitCallLog(page, who, count, re) {
  await waitFor(
    page,
    `call history line ${count} in ${who}'s chat to match /${re}/`,
    ([count, re]) => {
      const lines = [...document.querySelectorAll("#messages .call-log .text")];
      return lines.length === count && new RegExp(re).test(lines[count - 1].textContent);
    },
    [count, re],
  );
}

/** Closes the "call ended" panel. */
async function closeCallPanel(page, who) {
  await page.click("#call-close");
  await waitFor(page, `${who}'s call panel to close`, () => document.querySelector("#call").hidden);
}

// ---- moderation: deleted messages and announcements (admin API) ----

/** Calls natter's admin API: {status, body} (body parsed as JSON when it is). */
async function admin(method, path, body) {
  const res = await fetch(`${base}/admin/v1${path}`, {
    method,
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, ...(body ? { "content-type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
    signal: AbortSignal.timeout(WAIT_MS),
  });
  const text = await res.text();
  try {
    return { status: res.status, body: JSON.parse(text) };
  } catch {
    return { status: res.status, body: text };
  }
}

async function adminDelete(convId, seq) {
  const res = await admin("DELETE", `/conversations/${convId}/messages/${seq}`);
  if (res.status !== 200 || Number(res.body?.seq) !== seq) throw new Error(`the admin delete of ${convId}/${seq}: ${JSON.stringify(res)}`);
}

/** Posts an announcement; its id. */
async function announce(text) {
  const res = await admin("POST", "/announcements", { text });
  if (res.status !== 201 || res.body?.text !== text || !/^\d+$/.test(res.body?.id || "")) {
    throw new Error(`the admin announcement: ${JSON.stringify(res)}`);
  }
  return res.body.id;
}

/** The seq of `page`'s own message `text` (once the server acked it). */
async function seqOf(page, who, text) {
  await waitStatus(page, who, text, ["sent", "delivered", "read"]);
  return page.$eval(
    "#messages",
    (list, text) => Number([...list.querySelectorAll(".msg.mine")].find((e) => e.querySelector(".text").textContent === text).dataset.seq),
    text,
  );
}

/** Waits until message `seq` of `page`'s open chat shows as deleted, and `original` nowhere. */
async function waitDeleted(page, who, seq, original) {
  await waitFor(
    page,
    `${who} to see message ${seq} ("${original}") as "${DELETED}"`,
    ([seq, original, deleted]) => {
      const li = document.querySelector(`#messages .msg[data-seq="${seq}"]`);
      return (
        !!li &&
        li.classList.contains("deleted") &&
        li.querySelector(".text.deleted")?.textContent === deleted &&
        !li.textContent.includes(original) &&
        ![...document.querySelectorAll("#messages .msg .text")].some((e) => e.textContent.includes(original))
      );
    },
    [seq, original, DELETED],
  );
}

/** Waits until `page` shows exactly the announcement banners `want` ([id, text], in order). */
async function waitBanners(page, who, want) {
  await waitFor(
    page,
    `${who} to show the announcement banners ${JSON.stringify(want)}`,
    (want) => {
      const box = document.querySelector("#announcements");
      const got = [...box.querySelectorAll(".announcement")].map((e) => [e.dataset.id, e.querySelector(".announcement-text").textContent]);
      const shownBox = !box.hidden && box.getBoundingClientRect().height > 0;
      return JSON.stringify(got) === JSON.stringify(want.map(([id, text]) => [id, `📢 ${text}`])) && shownBox === want.length > 0;
    },
    want,
  );
}

/** Resolves with the page's next `GET /v1/announcements` response. */
function announcementsFetch(page, who) {
  return page
    .waitForResponse((r) => new URL(r.url()).pathname === "/v1/announcements" && r.request().method() === "GET", { timeout: WAIT_MS })
    .catch((e) => {
      throw new Error(`timed out after ${WAIT_MS / 1000} s waiting for: ${who}'s page to fetch GET /v1/announcements\n${e.message.split("\n")[0]}`);
    });
}

async function moderation(a, b) {
  const t0 = Date.now();
  const idOf = (p) => p.evaluate(() => window.natter.me.userId);
  const [idA, idB] = [await idOf(a), await idOf(b)];
  const direct = directId(idA, idB);
  for (const [who, p] of [["ann", a], ["bo", b]]) {
    if (!(await p.isHidden("#call"))) await closeCallPanel(p, who);
  }
  await openConv(a, "ann", direct);
  await openConv(b, "bo", direct);

  // ann writes two messages; an administrator deletes the first for everyone: both
  // pages replace it at once, and the conversation list previews it as deleted.
  const GONE = `rude words ${suffix}`;
  const GONE_LATER = `also rude ${suffix}`;
  await send(a, GONE);
  const seq = await seqOf(a, "ann", GONE);
  await send(a, GONE_LATER);
  const seqLater = await seqOf(a, "ann", GONE_LATER);
  await waitShown(b, "bo", GONE_LATER);
  await adminDelete(direct, seq);
  await waitDeleted(a, "ann", seq, GONE);
  await waitDeleted(b, "bo", seq, GONE);
  const kept = (await shown(b)).find((m) => m.text === GONE_LATER);
  if (!kept) throw new Error(`bo's next message "${GONE_LATER}" went too`);
  log(`message ${seq} deleted by an administrator: both pages show "${DELETED}"`);

  // An announcement while both are online: pushed, a banner on both pages; ann
  // dismisses hers, bo's stays.
  const NEWS1 = `Maintenance tonight ${suffix}`;
  const id1 = await announce(NEWS1);
  await waitBanners(a, "ann", [[id1, NEWS1]]);
  await waitBanners(b, "bo", [[id1, NEWS1]]);
  await a.screenshot({ path: join(outDir, "announcement-desktop.png") });
  await b.screenshot({ path: join(outDir, "announcement-phone.png") });
  await a.click(`#announcements .announcement[data-id="${id1}"] .announcement-close`);
  await waitBanners(a, "ann", []);
  await b.waitForTimeout(300);
  await waitBanners(b, "bo", [[id1, NEWS1]]);
  log("announcement shown on both pages; ann dismissed hers");

  // ann's page is closed; meanwhile her second message is deleted and a second
  // announcement is posted (bo gets it pushed).
  await a.goto("about:blank");
  await adminDelete(direct, seqLater);
  await waitDeleted(b, "bo", seqLater, GONE_LATER);
  const NEWS2 = `Back to normal ${suffix}`;
  const id2 = await announce(NEWS2);
  await waitBanners(b, "bo", [[id1, NEWS1], [id2, NEWS2]]);

  // ann comes back: her page asks for the announcements after the last one it showed
  // her and shows the one she missed (not the one she dismissed).
  let fetched = announcementsFetch(a, "ann");
  await a.goto(base, { timeout: WAIT_MS });
  await waitConn(a, "ann", "online");
  let res = await fetched;
  const after = new URL(res.url()).searchParams.get("after");
  if (res.status() !== 200 || after !== id1) throw new Error(`ann's page fetched the announcements after ${after} (HTTP ${res.status()}), expected after ${id1}`);
  await waitBanners(a, "ann", [[id2, NEWS2]]);
  log("ann's page, opened again, shows the announcement she missed");

  // Seen (though not dismissed): not shown again on a reload.
  fetched = announcementsFetch(a, "ann");
  await a.reload();
  await waitConn(a, "ann", "online");
  res = await fetched;
  await res.finished();
  if (new URL(res.url()).searchParams.get("after") !== id2) throw new Error(`ann's page fetched ${res.url()} after the reload, expected after=${id2}`);
  await a.waitForTimeout(500);
  await waitBanners(a, "ann", []);

  // After the reload, ann's chat comes from history: both messages are deleted there,
  // the one deleted while her page was closed too.
  await openConv(a, "ann", direct);
  await waitDeleted(a, "ann", seq, GONE);
  await waitDeleted(a, "ann", seqLater, GONE_LATER);
  await waitFor(a, `ann's list to preview "${DELETED}"`, ([id, deleted]) =>
    document.querySelector(`#conversations .conv[data-conv="${id}"] .conv-last`)?.textContent === deleted, [direct, DELETED]);
  log("after a reload: no banner again, both deleted messages still deleted (from history)");

  // bo dismisses his banners one by one.
  await b.click(`#announcements .announcement[data-id="${id1}"] .announcement-close`);
  await waitBanners(b, "bo", [[id2, NEWS2]]);
  await b.click(`#announcements .announcement[data-id="${id2}"] .announcement-close`);
  await waitBanners(b, "bo", []);
  await a.screenshot({ path: join(outDir, "deleted-desktop.png") });
  await b.screenshot({ path: join(outDir, "deleted-phone.png") });
  log(`bo dismissed both banners (moderation took ${((Date.now() - t0) / 1000).toFixed(1)} s)`);
}
