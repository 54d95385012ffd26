// Zoom-in in the annotation page: three clicks on one object with the Zoom tool on.
// usage: node tests/browser/zoom.mjs BASE_URL IMAGE OUT_DIR "fx,fy,label;fx,fy,label;..." ; prints one JSON line.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { openImage, openPage, runPage } from "./harness.mjs";

const [base, image, outDir, spec] = process.argv.slice(2);
const clicks = spec.split(";").map((c) => c.split(",").map(Number));
await runPage(async (page, result) => {
  result.requests = [];
  page.on("request", (r) => {
    if (r.method() === "POST" && r.url().endsWith("/segment")) result.requests.push(JSON.parse(r.postData()));
  });
  result.decoder = await openPage(page, base);
  await openImage(page, image);
  await page.click("#tool-zoomin");
  result.pressed = await page.getAttribute("#tool-zoomin", "aria-pressed");
  const box = await page.locator("#canvas").boundingBox();
  for (const [fx, fy, label] of clicks) {
    const drawn = await page.getAttribute("body", "data-masks");
    if (!label) await page.keyboard.down("Shift");
    await page.mouse.click(box.x + box.width * fx, box.y + box.height * fy);
    if (!label) await page.keyboard.up("Shift");
    await page.waitForFunction((b) => document.body.dataset.masks !== b, drawn, { timeout: 120000 });
  }
  await page.waitForTimeout(200);
  await page.screenshot({ path: join(outDir, "zoom.png") });
  result.state = await page.evaluate(() => {
    const s = window.segany.state;
    return { points: s.points, labels: s.labels, zoomCrop: s.zoomCrop, size: [s.height, s.width], candidates: s.candidates.length };
  });
  writeFileSync(join(outDir, "mask_zoom.json"), JSON.stringify(await page.evaluate(() => window.segany.currentMask())));
  // Z turns it off: the same clicks are answered again on the whole image.
  const drawn = await page.getAttribute("body", "data-masks");
  await page.keyboard.press("z");
  await page.waitForFunction((b) => document.body.dataset.masks !== b, drawn, { timeout: 60000 });
  result.off = await page.evaluate(() => ({ pressed: document.querySelector("#tool-zoomin").getAttribute("aria-pressed"), zoomCrop: window.segany.state.zoomCrop }));
});
