// Per-click decode latency in headless chromium: opens the page, uploads an image, decodes N clicks.
// usage: node bench/browser_decode.mjs BASE_URL IMAGE N [QUERY] ; prints one JSON line.
import { launch } from "../web/chromium.mjs";

const [base, image, n = "50", query = ""] = process.argv.slice(2);
const { context, close } = await launch();
try {
  const page = await context.newPage();
  await page.goto(base + (query ? `/?${query}` : "/"));
  await page.waitForSelector("body[data-decoder]", { timeout: 60000 });
  await page.setInputFiles("#file-input", image);
  await page.waitForSelector('body[data-state="ready"]', { timeout: 180000 });
  const info = await page.evaluate(() => ({
    decoder: window.segany.state.decoder.name,
    size: [window.segany.state.height, window.segany.state.width],
    isolated: self.crossOriginIsolated,
    cores: navigator.hardwareConcurrency,
  }));
  await page.evaluate(() => window.segany.benchDecode(5, 7)); // warm-up
  const times = await page.evaluate((count) => window.segany.benchDecode(count, 1), Number(n));
  console.log(JSON.stringify({ ...info, query, ...times }));
} finally {
  await close();
}
