// Drives natter's web client in headless Chromium: two users in two browser contexts
// register, chat both ways, see ticks move to read and typing, one goes offline and
// catches up, one sends while offline (queued, sent once). Then groups, with a third
// user: create, system messages, add, roles, rename, remove (and the refused send), invite
// link, leave. Saves screenshots.
//
//   node browser.mjs <base url> <screenshot dir>
//
// Exits 0 on success, 1 with a message on the first failure; never runs over 90 s.

import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [base, outDir] = process.argv.slice(2);
if (!base || !outDir) {
  console.error("usage: node browser.mjs <base url> <screenshot dir>");
  process.exit(2);
}
mkdirSync(outDir, { recursive: true });

const TOTAL_MS = 90_000;
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

let browser;
const pages = {};
const pageErrors = [];

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

async function main() {
  browser = await chromium.launch({
    executablePath: process.env.NATTER_CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    timeout: 30_000,
  });
  const ctxA = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const ctxB = await browser.newContext({ viewport: { width: 390, height: 844 }, hasTouch: true });
  const a = (pages.ann = await ctxA.newPage());
  const b = (pages.bo = await ctxB.newPage());
  for (const [who, p] of Object.entries(pages)) {
    p.setDefaultTimeout(WAIT_MS);
    p.on("pageerror", (e) => pageErrors.push(`${who}: ${e.message}`));
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
}

async function groups(browser, a, b) {
  const ctxC = await browser.newContext({ viewport: { width: 1024, height: 720 } });
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
