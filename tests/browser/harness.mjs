// Shared by the page scripts: a fresh headless chromium page that records console messages and
// page errors, and one JSON line on stdout with what the script found.
import { launch } from "../../web/chromium.mjs";

/** Run body(page, result) on a new page; print result as one JSON line, with ok and any error. */
export async function runPage(body) {
  const { context, close } = await launch();
  const result = { console: [] };
  try {
    const page = await context.newPage();
    page.on("console", (m) => m.type() !== "debug" && result.console.push(`${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => result.console.push(`pageerror: ${e.message}`));
    await body(page, result);
    result.ok = true;
  } catch (e) {
    result.ok = false;
    result.error = String(e.stack || e);
  } finally {
    await close();
  }
  console.log(JSON.stringify(result));
}

/** Load the page and wait until it has chosen its decoder; returns "wasm" or "server". */
export async function openPage(page, url) {
  await page.goto(url, { waitUntil: "load" });
  await page.waitForSelector("body[data-decoder]", { timeout: 60000 });
  return page.getAttribute("body", "data-decoder");
}

/** Upload an image file and wait until the page is ready to segment it. */
export async function openImage(page, image) {
  await page.setInputFiles("#file-input", image);
  await page.waitForSelector('body[data-state="ready"]', { timeout: 120000 });
}

/** Do action (a click, a key press) and wait until the page has drawn the answer to it: the
 * body's data-masks counter changes (it is absent until the first answer). */
export async function newMasks(page, action, timeout = 60000) {
  const before = await page.getAttribute("body", "data-masks");
  await action();
  await page.waitForFunction((b) => document.body.getAttribute("data-masks") !== b, before, { timeout });
}
