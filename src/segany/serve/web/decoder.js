// Mask decoding for clicks: onnxruntime-web (WASM) in the page, or the server as a fallback.
//
// Both return {masks: [{mask: Uint8Array(h*w), score, index}], ms} with the candidates in the
// decoder's order; the browser path follows the official ONNX signature (points in the 1024 frame,
// a padding point with label -1 unless there is a box, box corners as labels 2 and 3).

import { decodeRle } from "./rle.js";

const ORT_BASE = "/static/vendor/ort/";

/** Taps of a 1-D bilinear resize as torch's F.interpolate(align_corners=False), first `count` outputs. */
function linearTaps(inSize, outSize, count) {
  const scale = inSize / outSize;
  const i0 = new Int32Array(count);
  const i1 = new Int32Array(count);
  const w = new Float32Array(count);
  for (let d = 0; d < count; d++) {
    const src = Math.max(0, scale * (d + 0.5) - 0.5);
    const lo = Math.min(Math.floor(src), inSize - 1);
    i0[d] = lo;
    i1[d] = Math.min(lo + 1, inSize - 1);
    w[d] = src - lo;
  }
  return { i0, i1, w };
}

/** Resize rows of a (rows, inW) array along x to (rows, outW) with precomputed taps. */
function resizeX(src, rows, inW, taps, outW) {
  const out = new Float32Array(rows * outW);
  const { i0, i1, w } = taps;
  for (let r = 0; r < rows; r++) {
    const s = r * inW;
    const o = r * outW;
    for (let c = 0; c < outW; c++) out[o + c] = src[s + i0[c]] + (src[s + i1[c]] - src[s + i0[c]]) * w[c];
  }
  return out;
}

/** The official postprocessing of one low-res logit map, thresholded: 256x256 -> padded 1024 frame
 * -> crop to the resized image -> original size (two bilinear resizes, as Sam.postprocess_masks). */
export function upsampleMask(low, lowSize, padSize, inputSize, origSize) {
  const [ih, iw] = inputSize;
  const [H, W] = origSize;
  const a = resizeX(low, lowSize, lowSize, linearTaps(lowSize, padSize, iw), iw); // (lowSize, iw)
  const ty = linearTaps(lowSize, padSize, ih);
  const b = new Float32Array(ih * iw); // (ih, iw) in the resized frame
  for (let r = 0; r < ih; r++) {
    const r0 = ty.i0[r] * iw;
    const r1 = ty.i1[r] * iw;
    const wy = ty.w[r];
    const o = r * iw;
    for (let c = 0; c < iw; c++) b[o + c] = a[r0 + c] + (a[r1 + c] - a[r0 + c]) * wy;
  }
  const d = resizeX(b, ih, iw, linearTaps(iw, W, W), W); // (ih, W)
  const sy = linearTaps(ih, H, H);
  const mask = new Uint8Array(H * W);
  for (let r = 0; r < H; r++) {
    const r0 = sy.i0[r] * W;
    const r1 = sy.i1[r] * W;
    const wy = sy.w[r];
    const o = r * W;
    for (let c = 0; c < W; c++) mask[o + c] = d[r0 + c] + (d[r1 + c] - d[r0 + c]) * wy > 0 ? 1 : 0;
  }
  return mask;
}

export class WasmDecoder {
  /** variant: "lowres" (default: 4 low-res masks, the page upsamples the one it shows), "full"
   * (the official graph with the masks output), or "int8" (lowres, dynamically quantized). */
  static async create(variant = "lowres") {
    if (typeof WebAssembly !== "object") throw new Error("WebAssembly is not available");
    const ort = await import(ORT_BASE + "ort.wasm.min.mjs");
    ort.env.wasm.wasmPaths = ORT_BASE;
    const threads = Number(new URLSearchParams(location.search).get("threads"));
    // Threads need cross-origin isolation (the server sends the headers); on small machines one
    // thread is faster (measured with bench/browser_decode.py on 2 busy cores).
    const cores = navigator.hardwareConcurrency || 1;
    ort.env.wasm.numThreads = threads || (self.crossOriginIsolated && cores >= 4 ? Math.min(4, cores >> 1) : 1);
    ort.env.logLevel = "error";
    const query = variant === "full" ? "" : variant === "int8" ? "?upsample=false&quantize=true" : "?upsample=false";
    const response = await fetch("/api/decoder.onnx" + query);
    if (!response.ok) throw new Error(`decoder download failed (${response.status})`);
    const bytes = new Uint8Array(await response.arrayBuffer());
    const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
    return new WasmDecoder(ort, session, variant);
  }

  constructor(ort, session, variant) {
    this.ort = ort;
    this.session = session;
    this.variant = variant;
    this.name = "browser (WASM)";
    this.embedding = null;
    this.hasMask = new ort.Tensor("float32", new Float32Array([0]), [1]);
  }

  async setImage(imageId, info) {
    const response = await fetch(`/api/images/${imageId}/embedding?format=f32`);
    if (!response.ok) throw new Error((await response.json()).error || `embedding failed (${response.status})`);
    const shape = response.headers.get("X-Embedding-Shape").split(",").map(Number);
    const data = new Float32Array(await response.arrayBuffer());
    this.embedding = new this.ort.Tensor("float32", data, shape);
    // Low-res masks are 4x the embedding grid: 256x256 for official models, smaller for tiny ones.
    this.lowSize = 4 * shape[2];
    this.noMask = new this.ort.Tensor("float32", new Float32Array(this.lowSize * this.lowSize), [1, 1, this.lowSize, this.lowSize]);
    this.size = [info.height, info.width];
    this.imgSize = info.img_size;
    this.scale = info.img_size / Math.max(info.height, info.width);
    this.inputSize = [Math.floor(info.height * this.scale + 0.5), Math.floor(info.width * this.scale + 0.5)];
    this.origSize = new this.ort.Tensor("float32", new Float32Array(this.size), [2]);
  }

  /** prompt: {points: [[x, y]], labels: [1|0], box: [x0, y0, x1, y1] | null} in image pixels. */
  decode(prompt) {
    // One run at a time on the session: queue behind the previous one.
    const run = (this.queue || Promise.resolve()).then(() => this._decode(prompt));
    this.queue = run.catch(() => {});
    return run;
  }

  async _decode(prompt) {
    const t0 = performance.now();
    const coords = [];
    const labels = [];
    prompt.points.forEach(([x, y], i) => {
      coords.push(x * this.scale, y * this.scale);
      labels.push(prompt.labels[i]);
    });
    if (prompt.box) {
      const [x0, y0, x1, y1] = prompt.box;
      coords.push(x0 * this.scale, y0 * this.scale, x1 * this.scale, y1 * this.scale);
      labels.push(2, 3);
    } else {
      coords.push(0, 0);
      labels.push(-1);
    }
    const n = labels.length;
    const feeds = {
      image_embeddings: this.embedding,
      point_coords: new this.ort.Tensor("float32", Float32Array.from(coords), [1, n, 2]),
      point_labels: new this.ort.Tensor("float32", Float32Array.from(labels), [1, n]),
      mask_input: this.noMask,
      has_mask_input: this.hasMask,
      orig_im_size: this.origSize,
    };
    // The lowres variant has no orig_im_size input (nothing uses it there).
    for (const name of Object.keys(feeds)) if (!this.session.inputNames.includes(name)) delete feeds[name];
    const tRun = performance.now();
    const out = await this.session.run(feeds);
    this.lastRunMs = performance.now() - tRun;
    const [h, w] = this.size;
    const scores = out.iou_predictions.data;
    const masks = [];
    for (let m = 0; m < scores.length; m++) {
      let mask = null;
      if (out.masks) {
        const logits = out.masks.data.subarray(m * h * w, (m + 1) * h * w);
        mask = new Uint8Array(h * w);
        for (let i = 0; i < h * w; i++) mask[i] = logits[i] > 0 ? 1 : 0;
      }
      const area = this.lowSize * this.lowSize;
      const low = out.low_res_masks.data.slice(m * area, (m + 1) * area);
      const dec = this;
      masks.push({
        score: scores[m],
        index: m,
        low,
        get mask() {
          // Upsampled on first use: a click shows one mask, the thumbnails come after the paint.
          if (!mask) mask = upsampleMask(low, dec.lowSize, dec.imgSize, dec.inputSize, dec.size);
          return mask;
        },
      });
    }
    // Official convention: one click is ambiguous -> the 3 multimask outputs; otherwise output 0 first.
    const multimask = prompt.points.length === 1 && !prompt.box;
    const ordered = multimask
      ? masks.slice(1).sort((a, b) => b.score - a.score)
      : [masks[0], ...masks.slice(1).sort((a, b) => b.score - a.score)];
    return { masks: ordered, ms: performance.now() - t0 };
  }
}

export class ServerDecoder {
  constructor(reason) {
    this.name = "server";
    this.reason = reason;
  }

  async setImage(imageId, info) {
    this.imageId = imageId;
    this.size = [info.height, info.width];
    // Warm the server-side embedding so that the first click is fast.
    const response = await fetch(`/api/images/${imageId}/embedding?format=f32`, { method: "GET" });
    if (!response.ok) throw new Error((await response.json()).error || `embedding failed (${response.status})`);
    await response.arrayBuffer();
  }

  async decode(prompt) {
    return decodeOnServer(this.imageId, prompt);
  }
}

/** Decode on the server (POST /segment). With prompt.zoomIn the points are one object's clicks in
 * order, answered with zoom-in (a crop around the object, encoded on the server); the result then
 * carries the crop as zoomCrop [x0, y0, x1, y1]. With prompt.refine each mask's boundary is fitted to
 * the image's edges (GrabCut on the server). */
export async function decodeOnServer(imageId, prompt) {
  const t0 = performance.now();
  const body = { points: prompt.points, labels: prompt.labels, box: prompt.box, format: "rle" };
  if (prompt.zoomIn) body.zoom_in = true;
  if (prompt.refine) body.refine = true;
  const response = await fetch(`/api/images/${imageId}/segment`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error || `segment failed (${response.status})`);
  const masks = answer.masks.map((m, index) => ({ mask: decodeRle(m.rle), score: m.score, index }));
  return { masks, ms: performance.now() - t0, zoomCrop: answer.zoom_crop || null };
}

/** The WASM decoder when it loads, else the server (with the reason). `?decoder=server` forces it. */
export async function createDecoder(wasmAvailable) {
  const forced = new URLSearchParams(location.search).get("decoder");
  if (forced === "server") return new ServerDecoder("forced by ?decoder=server");
  if (!wasmAvailable) return new ServerDecoder("onnxruntime-web assets are not installed on the server");
  try {
    return await WasmDecoder.create(new URLSearchParams(location.search).get("variant") || "lowres");
  } catch (e) {
    console.warn("WASM decoder unavailable, decoding on the server:", e);
    return new ServerDecoder(String(e.message || e));
  }
}
