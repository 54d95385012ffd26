// A server-answered click tool of the annotation page (Zoom, Edges): clicks on one object with the
// tool on, then its key to turn it off.
// usage: node tests/browser/click_tool.mjs BASE_URL IMAGE OUT_DIR "fx,fy,label;..." TOOL KEY ; prints one JSON line.
// TOOL is the button's id without "tool-" (zoomin, refine); the screenshot and mask are OUT_DIR/TOOL.png, mask_TOOL.json.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { newMasks, openImage, openPage, runPage } from "./harness.mjs";

const [base, image, outDir, spec, tool, key] = process.argv.slice(2);
const clicks = spec.split(";").map((c) => c.split(",").map(Number));
await runPage(async (page, result) => {
  result.requests = [];
  page.on("request", (r) => {
    if (r.method() === "POST" && r.url().endsWith("/segment")) result.requests.push(JSON.parse(r.postData()));
  });
  result.decoder = await openPage(page, base);
  await openImage(page, image);
  await page.click(`#tool-${tool}`);
  result.pressed = await page.getAttribute(`#tool-${tool}`, "aria-pressed");
  const box = await page.locator("#canvas").boundingBox();
  for (const [fx, fy, label] of clicks) {
    await newMasks(page, async () => {
      if (!label) await page.keyboard.down("Shift");
      await page.mouse.click(box.x + box.width * fx, box.y + box.height * fy);
      if (!label) await page.keyboard.up("Shift");
    }, 120000);
  }
  await page.waitForTimeout(200);
  await page.screenshot({ path: join(outDir, `${tool}.png`) });
  result.state = await page.evaluate(() => {
    const s = window.segany.state;
    return { points: s.points, labels: s.labels, zoomCrop: s.zoomCrop, size: [s.height, s.width], candidates: s.candidates.length };
  });
  writeFileSync(join(outDir, `mask_${tool}.json`), JSON.stringify(await page.evaluate(() => window.segany.currentMask())));
  // Its key turns it off: the same clicks are answered again, in the browser.
  result.requestsBeforeOff = result.requests.length;
  await newMasks(page, () => page.keyboard.press(key));
  result.off = await page.evaluate((t) => ({ pressed: document.querySelector(`#tool-${t}`).getAttribute("aria-pressed"), zoomCrop: window.segany.state.zoomCrop }), tool);
});
