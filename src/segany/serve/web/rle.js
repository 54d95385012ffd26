// COCO run-length encoding of binary masks (column-major, runs start with zeros), as pycocotools.

/** Row-major Uint8Array mask (h*w) -> uncompressed COCO RLE {size: [h, w], counts: [...]}. */
export function encodeRle(mask, h, w) {
  const counts = [];
  let prev = 0;
  let run = 0;
  for (let x = 0; x < w; x++) {
    for (let i = x; i < h * w; i += w) {
      const v = mask[i] ? 1 : 0;
      if (v !== prev) {
        counts.push(run);
        run = 0;
        prev = v;
      }
      run++;
    }
  }
  counts.push(run);
  return { size: [h, w], counts };
}

/** Compressed COCO counts string -> array of run lengths (pycocotools rleFrString). */
export function countsFromString(s) {
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0;
    let k = 0;
    let more = 1;
    while (more) {
      const c = s.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = c & 0x20;
      p++;
      k++;
      if (!more && c & 0x10) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

/** COCO RLE (compressed string or list counts) -> row-major Uint8Array mask of size h*w. */
export function decodeRle(rle) {
  const [h, w] = rle.size;
  const counts = typeof rle.counts === "string" ? countsFromString(rle.counts) : rle.counts;
  const mask = new Uint8Array(h * w);
  let pos = 0;
  let v = 0;
  for (const run of counts) {
    if (v) {
      for (let j = pos; j < pos + run; j++) mask[(j % h) * w + Math.floor(j / h)] = 1;
    }
    pos += run;
    v ^= 1;
  }
  return mask;
}
