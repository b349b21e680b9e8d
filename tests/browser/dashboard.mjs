// Drives the live dashboard in headless Chromium and checks that it is live.
//
// In: the dashboard's URL (a daemon following a simulated session, started
// by tests/dashboard_browser.rs or by hand), options below. Out: exit 0 when
// every check passed (each waits for its condition, with a timeout; no
// sleeps), a screenshot, and one JSON line of what the page showed.
//
//   node dashboard.mjs URL --screenshot out.png [--until-ended N]
//                      [--chromium /usr/bin/chromium] [--timeout-ms 90000]
//
// Checks, all without reloading the page: the received count rises, the
// motion plot gains points, the FD count and threshold line are shown, the
// verdict settles on one of its three values, a trial row shows its
// reconstruction and stimulus images (loaded), and the page made exactly one
// document request and one /events request (no polling of /api/state).
// --until-ended N also waits for N runs to be listed as ended.

import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

function parseArgs(argv) {
  const o = { url: null, screenshot: null, untilEnded: 0, chromium: "/usr/bin/chromium", timeoutMs: 90000 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === "--screenshot") o.screenshot = next();
    else if (a === "--until-ended") o.untilEnded = Number(next());
    else if (a === "--chromium") o.chromium = next();
    else if (a === "--timeout-ms") o.timeoutMs = Number(next());
    else if (!o.url && !a.startsWith("--")) o.url = a;
    else throw new Error(`unknown argument ${a}`);
  }
  if (!o.url) throw new Error("usage: node dashboard.mjs URL --screenshot out.png [--until-ended N]");
  return o;
}

const opts = parseArgs(process.argv.slice(2));
// A hard stop, so a wedged browser can never hang the test suite.
const guard = setTimeout(() => {
  console.error(`dashboard check: gave up after ${(6 * opts.timeoutMs) / 1000} s`);
  process.exit(2);
}, 6 * opts.timeoutMs);

const profile = mkdtempSync(join(tmpdir(), "boldstream-chromium-"));
let browser;
let page;
let failed = false;
try {
  // A persistent context is Playwright's way to give Chromium a fresh
  // --user-data-dir of our choosing.
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: opts.chromium,
    headless: true,
    viewport: { width: 1440, height: 1000 },
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  page = browser.pages()[0] ?? (await browser.newPage());
  page.setDefaultTimeout(opts.timeoutMs);
  const requests = [];
  const pageErrors = [];
  page.on("request", (r) => requests.push({ url: r.url(), type: r.resourceType() }));
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  // Every image and the page itself must be served; only the event stream
  // may be refused (503 once the session is over and the page reconnects).
  page.on("response", (r) => {
    if (r.status() >= 400 && new URL(r.url()).pathname !== "/events") {
      pageErrors.push(`${r.status()} for ${r.url()}`);
    }
  });
  page.on("console", (m) => {
    if (m.type() === "error") console.log(`note: console: ${m.text()}`);
  });

  const step = async (what, fn) => {
    const t = Date.now();
    try {
      const r = await fn();
      console.log(`ok   ${what} (${Date.now() - t} ms)`);
      return r;
    } catch (e) {
      throw new Error(`${what}: ${e.message.split("\n")[0]}`);
    }
  };
  const num = (sel) => page.$eval(sel, (e) => Number(e.textContent));

  await step("page loads", () => page.goto(opts.url, { waitUntil: "domcontentloaded" }));
  await step("stream connects (snapshot applied)", () =>
    page.waitForFunction(() => document.querySelector("#conn")?.classList.contains("live")));

  const r0 = await num("#received");
  await step(`received count rises above ${r0}`, () =>
    page.waitForFunction((r0) => Number(document.querySelector("#received").textContent) >= r0 + 3, r0));

  const plotted = () =>
    page.evaluate(() => ({
      run: document.querySelector("#plot-run").textContent,
      n: Number(document.querySelector("#p-rot").dataset.n),
      paths: document.querySelectorAll("#p-rot path.series").length,
    }));
  await step("motion plot has points", () =>
    page.waitForFunction(() => Number(document.querySelector("#p-rot").dataset.n) >= 2));
  const p1 = await plotted();
  await step(`motion plot gains points (run ${p1.run}: ${p1.n})`, () =>
    page.waitForFunction(
      (p1) => {
        const run = document.querySelector("#plot-run").textContent;
        const n = Number(document.querySelector("#p-rot").dataset.n);
        const paths = document.querySelectorAll("#p-rot path.series");
        // Three rotation traces, and more points than before (or a newer
        // run has started plotting).
        return paths.length === 3 && (run === p1.run ? n > p1.n : n >= 1);
      },
      p1,
    ));

  await step("FD count and threshold line shown", () =>
    page.waitForFunction(() => {
      const m = /^(\d+) of (\d+)$/.exec(document.querySelector("#fd-count").textContent);
      return m && Number(m[2]) > 0 && document.querySelector("#p-fd line.threshold") !== null;
    }));

  await step("verdict settles", () =>
    page.waitForFunction(() => /\b(usable|check|unusable)\b/.test(document.querySelector("#verdict").className)));

  await step("a trial row shows its reconstruction and stimulus", () =>
    page.waitForFunction(() =>
      [...document.querySelectorAll("#trials tr.trial")].some((row) => {
        const loaded = (img) => img && img.complete && img.naturalWidth > 0 && img.style.visibility !== "hidden";
        return loaded(row.querySelector("img.recon")) && loaded(row.querySelector("img.stim")) &&
          row.querySelectorAll(".topk figure").length > 0;
      })));

  if (opts.untilEnded > 0) {
    await step(`${opts.untilEnded} runs ended`, () =>
      page.waitForFunction(
        (n) => [...document.querySelectorAll("#runs tr")].filter((r) => r.children[1]?.textContent === "ended").length >= n,
        opts.untilEnded,
        { timeout: 5 * opts.timeoutMs },
      ));
  }

  const shown = await page.evaluate(() => ({
    received: Number(document.querySelector("#received").textContent),
    fd: document.querySelector("#fd-count").textContent,
    verdict: document.querySelector("#verdict-word").textContent,
    trials: document.querySelectorAll("#trials tr.trial").length,
    reconstructions: document.querySelectorAll("#trials img.recon").length,
    runs: document.querySelectorAll("#runs tr").length,
    navigations: performance.getEntriesByType("navigation").length,
  }));
  if (shown.received <= r0) throw new Error(`received did not rise: ${r0} -> ${shown.received}`);

  // Live without reloads or polling: one navigation, one document, one
  // event stream, no snapshot fetches.
  const count = (pred) => requests.filter(pred).length;
  const documents = count((r) => r.type === "document");
  const streams = count((r) => new URL(r.url).pathname === "/events");
  const polls = count((r) => new URL(r.url).pathname === "/api/state");
  if (shown.navigations !== 1 || documents !== 1 || streams !== 1 || polls !== 0) {
    throw new Error(
      `the page reloaded or polled: ${shown.navigations} navigations, ${documents} documents, ` +
        `${streams} /events requests, ${polls} /api/state requests`,
    );
  }
  console.log("ok   one navigation, one document, one /events stream, no polling");
  if (pageErrors.length) throw new Error(`errors on the page: ${pageErrors.join("; ")}`);

  if (opts.screenshot) {
    await page.screenshot({ path: opts.screenshot });
    console.log(`screenshot: ${opts.screenshot}`);
  }
  console.log(JSON.stringify({ ...shown, requests: requests.length, documents, streams }));
} catch (e) {
  failed = true;
  console.error(`dashboard check failed: ${e.message}`);
  if (page && opts.screenshot) {
    const at = opts.screenshot.replace(/\.png$/, "") + ".failed.png";
    await page.screenshot({ path: at }).then(() => console.error(`screenshot of the failure: ${at}`), () => {});
  }
} finally {
  if (browser) await browser.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
  clearTimeout(guard);
}
process.exit(failed ? 1 : 0);
