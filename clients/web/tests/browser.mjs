// Drives natter's web client in headless Chromium: two users in two browser contexts
// register, chat both ways, see ticks move to read and typing, one goes offline and
// catches up, one sends while offline (queued, sent once). Saves screenshots.
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
