// Drives Debian's chromium through the web console as a person would; started by
// tests/integration/console.rs, which runs the real binary and checks the outcome over the API.
//
// In:  CONSOLE_URL, CONSOLE_KEY (a submit key of CONSOLE_USER), CONSOLE_FAST_BUILD and
//      CONSOLE_SLOW_BUILD (build request bodies), CONSOLE_SCREENSHOT (PNG path),
//      CHROMIUM (default /usr/bin/chromium).
// Out: one JSON line on stdout {fast, slow, rebuild, seenWhileRunning}; exit 1 with the reason
//      (and CONSOLE_SCREENSHOT with -failure) on any failed step.

import { chromium } from "playwright-core";

const base = need("CONSOLE_URL");
const key = need("CONSOLE_KEY");
const fastBody = need("CONSOLE_FAST_BUILD");
const slowBody = need("CONSOLE_SLOW_BUILD");
const screenshot = need("CONSOLE_SCREENSHOT");
const user = need("CONSOLE_USER");
// Generous bounds for a podman build on a loaded 2-core machine; every wait ends as soon as
// what it waits for is on the page.
const BUILD_MS = 180_000;
const STEP_MS = 30_000;

function need(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function submit(body) {
  const response = await fetch(`${base}/v1/builds`, {
    method: "POST",
    headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
    body,
  });
  const answer = await response.json();
  check(response.status === 202, `submit answered ${response.status}: ${JSON.stringify(answer)}`);
  return answer.id;
}

const text = (page, selector) => page.locator(selector).textContent({ timeout: STEP_MS });
const logHas = (page, needle, timeout) =>
  page.waitForFunction((n) => document.getElementById("log")?.textContent.includes(n), needle, {
    timeout,
    polling: 50,
  });
const stateIs = (page, state, timeout) =>
  page.waitForFunction((s) => document.getElementById("build-state")?.textContent === s, state, {
    timeout,
    polling: 100,
  });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  // Root here, so no sandbox; nothing may reach outside 127.0.0.1 (no background services).
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
  ],
});
const context = await browser.newContext({ viewport: { width: 1366, height: 900 } });
const page = await context.newPage();
const problems = [];
page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
page.on("console", (m) => {
  if (m.type() === "error" && !/status of 40[149]/.test(m.text())) problems.push(`console: ${m.text()}`);
});

try {
  // Without a key: the login form and nothing else.
  await page.goto(`${base}/`);
  await page.getByLabel("API key").waitFor({ state: "visible", timeout: STEP_MS });
  check(await page.locator("#nav").isHidden(), "the navigation shows before signing in");
  check((await text(page, "#view")) === "", "the page shows data before signing in");

  // A wrong key is refused and not kept.
  await page.getByLabel("API key").fill("not-a-key");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByText("That API key is not valid.").waitFor({ timeout: STEP_MS });
  check((await page.evaluate(() => sessionStorage.length)) === 0, "a refused key was kept");

  // The right key, typed and sent with Enter (the keyboard alone).
  await page.getByLabel("API key").fill(key);
  await page.getByLabel("API key").press("Enter");
  await page.getByRole("heading", { name: "Builds", level: 2 }).waitFor({ timeout: STEP_MS });

  // The list updates by itself: the build submitted now appears without a reload.
  const fast = await submit(fastBody);
  const link = page.getByRole("link", { name: fast, exact: true });
  await link.waitFor({ timeout: STEP_MS });
  await link.click();
  await page.getByRole("heading", { name: `Build ${fast}` }).waitFor({ timeout: STEP_MS });

  // The log follows live: the first line shows while the build still runs, before the last.
  await logHas(page, "line-1", BUILD_MS);
  const seen = await page.evaluate(() => ({
    log: document.getElementById("log").textContent,
    state: document.getElementById("build-state")?.textContent,
  }));
  check(!seen.log.includes("line-5"), `the whole log arrived at once:\n${seen.log}`);
  check(["queued", "running"].includes(seen.state), `state was ${seen.state} at line-1`);
  await logHas(page, "line-5", BUILD_MS);
  await stateIs(page, "succeeded", BUILD_MS);
  const pull = await text(page, "#pull");
  check(/^podman pull \S+@sha256:[0-9a-f]{64}$/.test(pull), `pull command: ${pull}`);
  const how = await text(page, "#how");
  check(how === "full", `how it was made: ${how}`);
  const why = await text(page, "#why");
  check(why === "first build of this configuration", `why: ${why}`);
  await page.getByText("The build has ended; this is its whole log.").waitFor({ timeout: STEP_MS });
  check(await page.locator("#cancel").isHidden(), "Cancel is offered on a finished build");
  await page.screenshot({ path: screenshot, fullPage: true });

  // A slow build, cancelled from its page while it runs.
  const slow = await submit(slowBody);
  await page.goto(`${base}/#/builds/${encodeURIComponent(slow)}`);
  await page.getByRole("heading", { name: `Build ${slow}` }).waitFor({ timeout: STEP_MS });
  await logHas(page, "tick-1", BUILD_MS);
  await stateIs(page, "running", STEP_MS);
  await page.getByRole("button", { name: "Cancel build" }).click();
  await stateIs(page, "cancelled", STEP_MS);
  await page.getByText("The build has ended; this is its whole log.").waitFor({ timeout: STEP_MS });
  const cancelledLog = await text(page, "#log");
  check(!cancelledLog.includes("tick-300"), "the cancelled build ran to its end");

  // Rebuild opens the new build's page; cancelled again, this time from the keyboard.
  await page.getByRole("button", { name: "Rebuild" }).click();
  await page.waitForFunction((s) => location.hash.startsWith(`#/builds/${s}-rb-`), slow, {
    timeout: STEP_MS,
  });
  const rebuild = decodeURIComponent(await page.evaluate(() => location.hash.slice("#/builds/".length)));
  await page.getByRole("link", { name: slow, exact: true }).waitFor({ timeout: STEP_MS });
  await page.getByRole("button", { name: "Cancel build" }).focus();
  await page.keyboard.press("Enter");
  await stateIs(page, "cancelled", BUILD_MS);

  // The list's filters: repository and state narrow it to the cancelled slow build.
  await page.getByRole("link", { name: "Builds", exact: true }).click();
  await page.getByLabel("Repository").fill("acme/console-slow");
  await page.getByLabel("State").selectOption("cancelled");
  await page.getByRole("button", { name: "Filter" }).click();
  await page.getByRole("link", { name: slow, exact: true }).waitFor({ timeout: STEP_MS });
  await page.waitForFunction(
    (ids) => {
      const rows = [...document.querySelectorAll("tr[data-build]")].map((r) => r.dataset.build);
      return rows.length === 2 && ids.every((id) => rows.includes(id));
    },
    [slow, rebuild],
    { timeout: STEP_MS },
  );

  // Repositories: the newest image of each ref, with its pull command.
  await page.getByRole("link", { name: "Repositories", exact: true }).click();
  await page.getByRole("link", { name: "acme/console-fast", exact: true }).click();
  await page.getByRole("heading", { name: "Repository acme/console-fast" }).waitFor({ timeout: STEP_MS });
  await page.getByRole("cell", { name: pull.slice("podman pull ".length), exact: false }).waitFor({ timeout: STEP_MS });

  // Registry: this key's namespace only, the one image that was pushed, and its tags.
  await page.getByRole("link", { name: "Registry", exact: true }).click();
  // The view switches after the click: until then "tbody a" still finds the last page's links.
  await page.getByRole("heading", { name: "Registry", exact: true }).waitFor({ timeout: STEP_MS });
  const images = page.locator("tbody a");
  await images.first().waitFor({ timeout: STEP_MS });
  const names = await images.allTextContents();
  check(names.length === 1 && names[0].startsWith(`${user}/`), `registry lists ${names}`);
  await images.first().click();
  await page.getByRole("cell", { name: "latest", exact: true }).waitFor({ timeout: STEP_MS });

  // Signing out forgets the key and leaves only the login form.
  // The API reference, rendered from the OpenAPI document, one link away; then back.
  await page.getByRole("link", { name: "API reference" }).click();
  await page.getByRole("heading", { name: "POST /v1/builds", exact: true }).waitFor({ timeout: STEP_MS });
  await page.goBack();
  await page.getByRole("button", { name: "Sign out" }).waitFor({ timeout: STEP_MS });
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByLabel("API key").waitFor({ state: "visible", timeout: STEP_MS });
  check((await page.evaluate(() => sessionStorage.length)) === 0, "the key outlived sign-out");
  check((await text(page, "#view")) === "", "data is still shown after sign-out");

  check(problems.length === 0, `the page reported problems:\n${problems.join("\n")}`);
  console.log(JSON.stringify({ fast, slow, rebuild, seenWhileRunning: seen.state }));
  await browser.close();
} catch (e) {
  await page.screenshot({ path: screenshot.replace(/\.png$/, "-failure.png"), fullPage: true }).catch(() => {});
  console.error(`console test failed: ${e.stack ?? e}`);
  if (problems.length) console.error(problems.join("\n"));
  console.error(`page at failure (${page.url()}):\n${await page.locator("body").innerText().catch(() => "?")}`);
  await browser.close();
  process.exit(1);
}
