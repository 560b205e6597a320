// Renders a run's report.html in real headless Chromium and describes what a reader sees:
// each section, each table (caption-free: its header cells and row count), and each image
// (whether it decoded, and its rendered size). Saves a full-page screenshot.
// usage: node tools/report_check.mjs file:///.../report.html OUTPUT.json SCREENSHOT.png
import { writeFile } from "node:fs/promises";
import { chromium } from "playwright-core";

const [url, output, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  const errors = [];
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("requestfailed", (r) => errors.push(`request failed: ${r.url()}`));
  await page.goto(url, { waitUntil: "load" });
  const seen = await page.evaluate(async () => {
    const imgs = [...document.images];
    await Promise.all(imgs.map((i) => (i.complete ? null : new Promise((r) => { i.onload = i.onerror = r; }))));
    return {
      title: document.title,
      sections: [...document.querySelectorAll("section")].map((s) => ({
        id: s.id,
        heading: s.querySelector("h2")?.textContent ?? "",
        visible: s.getBoundingClientRect().height > 0,
        tables: [...s.querySelectorAll("table")].map((t) => ({
          class: t.className,
          header: [...t.querySelectorAll("thead th")].map((th) => th.textContent),
          rows: t.querySelectorAll("tbody tr").length,
          cells: [...t.querySelectorAll("tbody tr")].map((tr) => [...tr.children].map((c) => c.textContent)),
        })),
        images: [...s.querySelectorAll("img")].map((i) => ({
          alt: i.alt, decoded: i.complete && i.naturalWidth > 0, naturalWidth: i.naturalWidth,
          naturalHeight: i.naturalHeight, shownWidth: i.getBoundingClientRect().width,
        })),
      })),
      notes: [...document.querySelectorAll(".note")].map((n) => n.textContent),
      scripts: document.querySelectorAll("script").length,
      injected: window.__injected === true,
    };
  });
  seen.errors = errors;
  await page.screenshot({ path: screenshot, fullPage: true });
  await writeFile(output, JSON.stringify(seen, null, 1));
} finally {
  await browser.close();
}
