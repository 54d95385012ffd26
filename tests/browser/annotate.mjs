// Drives the annotation page like a person: open an image, click an object, save it, export.
// usage: node tests/browser/annotate.mjs BASE_URL IMAGE OUT_DIR [X_FRAC Y_FRAC] ; prints one JSON line.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { newMasks, openImage, openPage, runPage } from "./harness.mjs";

const [base, image, outDir, fx = "0.5", fy = "0.5"] = process.argv.slice(2);
await runPage(async (page, result) => {
  result.decoder = await openPage(page, base);
  await page.screenshot({ path: join(outDir, "empty.png") });
  await openImage(page, image);
  const canvas = page.locator("#canvas");
  const box = await canvas.boundingBox();
  result.canvas = box;
  const before = await canvas.screenshot({ path: join(outDir, "before.png") });
  // Hover preview first, then click.
  const x = box.x + box.width * Number(fx);
  const y = box.y + box.height * Number(fy);
  await page.mouse.move(x - 40, y - 20);
  await page.mouse.move(x, y, { steps: 4 });
  await page.waitForTimeout(300);
  await page.screenshot({ path: join(outDir, "hover.png") });
  await page.mouse.click(x, y);
  await page.waitForSelector("body[data-masks]", { timeout: 30000 });
  await page.waitForTimeout(200);
  await canvas.screenshot({ path: join(outDir, "after.png") });
  await page.screenshot({ path: join(outDir, "page_clicked.png") });
  result.candidates = await page.locator(".cand").count();
  result.click = [Number(fx), Number(fy)];
  result.imageXY = await page.evaluate(() => window.segany.state.points[0]);
  result.size = await page.evaluate(() => [window.segany.state.height, window.segany.state.width]);
  result.lastMs = await page.evaluate(() => window.segany.state.lastMs);
  const mask = await page.evaluate(() => window.segany.currentMask());
  result.maskArea = mask.reduce((a, b) => a + b, 0);
  writeFileSync(join(outDir, "mask.json"), JSON.stringify(mask));
  // Save with a label, then export COCO through the UI's download.
  await page.fill("#label-input", "thing");
  await page.keyboard.press("Enter");
  await page.waitForSelector('body[data-synced="1"]', { timeout: 30000 });
  await page.click("#export-btn");
  const [download] = await Promise.all([page.waitForEvent("download"), page.click('#export-menu button[data-format="coco"]')]);
  await download.saveAs(join(outDir, "export_coco.json"));
  result.download = download.suggestedFilename();
  await page.screenshot({ path: join(outDir, "page_saved.png") });
  // Undo removes the object, redo brings it back.
  await page.keyboard.press("Control+z");
  result.afterUndo = await page.locator("#objects li").count();
  await page.keyboard.press("Control+y");
  result.afterRedo = await page.locator("#objects li").count();
  // Double-click the object to edit it: it leaves the list and its click comes back as the prompt.
  await newMasks(page, () => page.dblclick("#objects li .meta"), 30000);
  result.editing = await page.evaluate(() => ({ objects: window.segany.state.objects.length, points: window.segany.state.points }));
  await page.keyboard.press("Enter");
  result.afterEdit = await page.locator("#objects li").count();
  // A box, then a point outside the object (shift-click), then the second candidate and a cut-out.
  await page.keyboard.press("Escape");
  await newMasks(page, async () => {
    await page.mouse.move(box.x + box.width * 0.25, box.y + box.height * 0.2);
    await page.mouse.down();
    await page.mouse.move(box.x + box.width * 0.5, box.y + box.height * 0.5, { steps: 5 });
    await page.mouse.move(box.x + box.width * 0.7, box.y + box.height * 0.9, { steps: 5 });
    await page.mouse.up();
  }, 30000);
  await newMasks(page, async () => {
    await page.keyboard.down("Shift");
    await page.mouse.click(box.x + box.width * 0.3, box.y + box.height * 0.8);
    await page.keyboard.up("Shift");
  }, 30000);
  result.boxPrompt = await page.evaluate(() => ({ box: window.segany.state.box, points: window.segany.state.points, labels: window.segany.state.labels }));
  result.boxCandidates = await page.locator(".cand").count();
  writeFileSync(join(outDir, "mask_box.json"), JSON.stringify(await page.evaluate(() => window.segany.currentMask())));
  if (result.boxCandidates > 1) await page.keyboard.press("2");
  result.chosen = await page.evaluate(() => window.segany.state.chosen);
  writeFileSync(join(outDir, "mask_chosen.json"), JSON.stringify(await page.evaluate(() => window.segany.currentMask())));
  const [cut] = await Promise.all([page.waitForEvent("download"), page.keyboard.press("x")]);
  await cut.saveAs(join(outDir, "cutout.png"));
  await page.screenshot({ path: join(outDir, "page_box.png") });
});
