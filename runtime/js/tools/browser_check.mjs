// Drives the demo page in real headless Chromium: types texts, reads the rendered labels, scores texts
// and probes in the page, saves a screenshot. Used by the cross-runtime parity test.
// usage: node tools/browser_check.mjs URL INPUT.json OUTPUT.json SCREENSHOT.png
//   INPUT: {"typed": [...texts typed one by one], "texts": [...], "probes": [[[ids]]]}
import { readFile, writeFile } from "node:fs/promises";
import { chromium } from "playwright-core";

const [url, input, output, screenshot] = process.argv.slice(2);
const job = JSON.parse(await readFile(input, "utf8"));
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 900, height: 600 } });
  const console_ = [];
  page.on("console", (m) => console_.push(m.text()));
  page.on("requestfailed", (r) => console_.push(`request failed: ${r.url()}`));
  page.on("response", (r) => { if (r.status() >= 400) console_.push(`HTTP ${r.status()}: ${r.url()}`); });
  await page.goto(url);
  try {
    await page.waitForFunction(() => window.seqship && (window.seqship.ready || window.seqship.error), null, { timeout: 120000 });
  } catch (e) {
    throw new Error(`the page never became ready (${e.message}); browser console: ${JSON.stringify(console_)}`);
  }
  const error = await page.evaluate(() => window.seqship.error || null);
  if (error) throw new Error(`the page could not load the bundle: ${error}`);
  const typed = [];
  for (const text of job.typed) {
    await page.fill("#text", text);
    await page.waitForFunction((t) => window.seqship.lastText === t, text, { timeout: 30000 });
    typed.push(await page.$$eval("#results .row", (rows) => rows.map((r) => ({
      label: r.querySelector(".label").textContent, score: r.querySelector(".score").textContent }))));
  }
  const scored = await page.evaluate(async ({ texts, probes }) => {
    const p = window.seqship.predictor;
    const logits = await p.logits(texts);
    const probeLogits = [];
    for (const rows of probes) probeLogits.push(await p.logitsFromIds(rows));
    // performance.now() is clamped to 100 us in a page without cross-origin isolation: time 200
    // one-text calls in a row and report the mean, not a per-call percentile.
    const n = Math.min(200, texts.length);
    for (let i = 0; i < 20; i++) await p.predict([texts[i % n]]);
    const t0 = performance.now();
    for (let i = 0; i < n; i++) await p.predict([texts[i]]);
    const latency = ((performance.now() - t0) * 1000) / n;
    return { logits, probeLogits, latency, tokenIds: texts.map((t, i) => p.tokenizer.encode(t, i).ids) };
  }, { texts: job.texts, probes: job.probes || [] });
  await page.fill("#text", job.typed[0] || "Nguyen");
  await page.waitForFunction((t) => window.seqship.lastText === t, job.typed[0] || "Nguyen");
  await page.screenshot({ path: screenshot });
  await writeFile(output, JSON.stringify({ typed, logits: scored.logits, probe_logits: scored.probeLogits,
    token_ids: scored.tokenIds, latency_us_mean: scored.latency, console: console_ }));
} finally {
  await browser.close();
}
