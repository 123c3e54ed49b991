// Drives the Hushwire web app in headless Chromium (playwright-core), step by step with
// the Rust test (tests/browser.rs): it prints `STEP <name>` when a step is done and
// waits for a `GO` line on stdin before checking what the other side did.
//
// Environment: APP_URL (with the token), CHROMIUM, USER_DATA_DIR, SHOTS, PICTURE.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const url = env("APP_URL");
const shots = env("SHOTS");
mkdirSync(shots, { recursive: true });

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function step(name) {
  process.stdout.write(`STEP ${name}\n`);
  const { value, done } = await lines.next();
  if (done || value.trim() !== "GO") throw new Error(`no GO after ${name}: ${value}`);
}
function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

const context = await chromium.launchPersistentContext(env("USER_DATA_DIR"), {
  executablePath: env("CHROMIUM"),
  headless: true,
  viewport: { width: 1180, height: 760 },
  deviceScaleFactor: 1,
  colorScheme: "light",
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
  ],
});
const page = context.pages()[0] ?? (await context.newPage());
const problems = [];
page.on("console", (m) => {
  if (m.type() === "error") problems.push(m.text());
});
page.on("pageerror", (e) => problems.push(String(e)));
page.on("response", (r) => {
  if (r.status() >= 400) problems.push(`${r.status()} ${new URL(r.url()).pathname}`);
});
page.setDefaultTimeout(45000);

try {
  // Opening the printed URL sets the cookie and drops the token from the address bar.
  await page.goto(url);
  check(new URL(page.url()).search === "", `token left in the URL: ${page.url()}`);
  check((await page.evaluate(() => document.cookie)) === "", "the cookie is readable by script");
  await page.waitForSelector("#status.online");
  const me = await page.textContent("#me-name");
  check(me === "alice", `me is ${me}`);

  // A first message to bob, then a picture through the file button.
  await page.fill("#new-chat", "bob");
  await page.press("#new-chat", "Enter");
  await page.waitForSelector("#composer:not([hidden])");
  await page.fill("#text", "Hi Bob! Are we still on for Saturday?");
  await page.press("#text", "Enter");
  await page.waitForSelector(".row.out .tick:not(.queued)");
  await page.setInputFiles("#file-input", env("PICTURE"));
  await page.waitForSelector(".row.out .media img");
  await page.waitForFunction(() => {
    const rows = document.querySelectorAll(".row.out");
    const last = rows[rows.length - 1];
    return last && last.querySelector(".media") && last.querySelector(".tick:not(.queued)");
  });
  await page.waitForFunction(() => {
    const img = document.querySelector(".row.out .media img");
    return img && img.complete && img.naturalWidth > 0;
  });
  check(
    (await page.textContent(".conv.active .conv-preview")).includes("Photo"),
    "the list previews the picture",
  );
  await page.screenshot({ path: join(shots, "01-sent.png") });

  // Bob starts typing: the indicator shows up live.
  await step("sent");
  await page.waitForSelector("#typing:not([hidden])");
  check((await page.textContent("#typing-text")).includes("bob"), "typing names bob");
  await page.screenshot({ path: join(shots, "02-typing.png") });

  // Bob replies (quoting) and reacts: both arrive live over the WebSocket.
  await step("typing-seen");
  await page.waitForSelector(".row.in .quote");
  await page.waitForSelector(".reactions-row.out .reaction");
  const reply = await page.textContent(".row.in .text");
  check(reply.includes("Saturday works"), `reply text: ${reply}`);
  const quote = await page.textContent(".row.in .quote-text");
  check(quote.includes("Are we still on"), `quote: ${quote}`);
  const reaction = await page.textContent(".reactions-row.out .reaction");
  check(reaction.includes("❤️"), `reaction: ${reaction}`);
  // Read receipts went back: the message shows two ticks once bob reads it... and
  // alice reacts to bob's reply from the picker.
  await page.hover(".row.in");
  await page.click(".row.in .react-btn");
  await page.click('.picker button[title="React 👍"]');
  await page.waitForSelector(".reactions-row.in .reaction.mine");
  await page.screenshot({ path: join(shots, "03-reply-reaction.png") });

  // A group with bob.
  await page.click("#btn-new-group");
  await page.fill("#group-title", "Weekend trip");
  await page.fill("#group-members", "bob");
  await page.screenshot({ path: join(shots, "04-new-group-dialog.png") });
  await page.click("#group-create");
  await page.waitForFunction(() => document.querySelector("#chat-title")?.textContent === "Weekend trip");
  await page.waitForSelector(".messages .event");
  await page.fill("#text", "Welcome to the group 🎉");
  await page.press("#text", "Enter");
  await page.waitForSelector(".row.out .tick:not(.queued)");
  const groups = await page.$$eval(".conv .conv-name", (n) => n.map((x) => x.textContent));
  check(groups.includes("Weekend trip") && groups.includes("bob"), `list: ${groups}`);
  await page.screenshot({ path: join(shots, "05-group.png") });
  await step("group");

  // Group info, settings, dark theme, a narrow window.
  await page.click("#btn-info");
  await page.waitForSelector("#dlg-info[open] .members li");
  await page.screenshot({ path: join(shots, "06-group-info.png") });
  await page.click("#info-close");
  await page.click(".conv[data-name='bob']");
  await page.waitForSelector(".row.in .quote");
  await page.click("#btn-theme");
  await page.screenshot({ path: join(shots, "07-dark.png") });
  await page.click("#btn-settings");
  await page.waitForSelector("#devices li .grow");
  await page.screenshot({ path: join(shots, "08-settings-dark.png") });
  await page.click("#settings-close");
  await page.setViewportSize({ width: 400, height: 760 });
  await page.screenshot({ path: join(shots, "09-narrow-chat.png") });
  await page.click("#btn-back");
  await page.screenshot({ path: join(shots, "10-narrow-list.png") });

  check(problems.length === 0, `page errors: ${problems.join(" | ")}`);
  process.stdout.write("DONE\n");
} catch (e) {
  await page.screenshot({ path: join(shots, "failure.png") }).catch(() => {});
  process.stdout.write(`FAIL ${String(e.stack || e).replace(/\n/g, " | ")}\n`);
  process.exitCode = 1;
} finally {
  await context.close();
  process.exit(process.exitCode ?? 0);
}
