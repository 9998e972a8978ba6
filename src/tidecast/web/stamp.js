// tidecast clock stamp reader: the browser half of src/tidecast/media/stamp.py (same
// layout, same check code). A band along the top of the picture holds 40 cells:
// a white and a black reference, a 30-bit time in ms (MSB first, white = 1) and its
// CRC-8 (poly 0x07 over the 30 bits, xor-out 0x55).
//
//   TidecastStamp.decodeCells(levels)      40 mean lumas -> value or null
//   TidecastStamp.read(video, canvas)      the stamp of the frame the video shows
//   TidecastStamp.watch(video, onFrame)    every presented frame (requestVideoFrameCallback):
//       onFrame({value, displayMs, mediaTime, width, height, presentedFrames}); returns stop()
"use strict";
(function () {
  const CELLS = 40, VALUE_BITS = 30, CHECK_BITS = 8, FIRST_VALUE = 2;
  const FIRST_CHECK = FIRST_VALUE + VALUE_BITS;
  const BAND = 1 / 16, MIN_CONTRAST = 48, MARGIN = 0.2;
  const CELL_PX = 8, ROWS = 8; // the band is read back scaled to 320 x 8 pixels

  function crc8(value) {
    let crc = 0;
    for (let k = VALUE_BITS - 1; k >= 0; k--) {
      const top = ((crc >> 7) & 1) ^ (Math.floor(value / 2 ** k) & 1);
      crc = (crc << 1) & 0xff;
      if (top) crc ^= 0x07;
    }
    return crc ^ 0x55;
  }

  function decodeCells(levels) {
    if (!levels || levels.length !== CELLS) return null;
    const white = levels[0], black = levels[1], contrast = white - black;
    if (contrast < MIN_CONTRAST) return null;
    const middle = (white + black) / 2;
    let value = 0, check = 0;
    for (let i = 0; i < CELLS; i++) {
      if (Math.abs(levels[i] - middle) < MARGIN * contrast) return null;
      const bit = levels[i] > middle ? 1 : 0;
      if (i >= FIRST_VALUE && i < FIRST_CHECK) value = value * 2 + bit;
      else if (i >= FIRST_CHECK) check = check * 2 + bit;
    }
    return check === crc8(value) ? value : null;
  }

  // mean luma of the middle of each cell of an RGBA ImageData of the band (CELLS * CELL_PX wide)
  function levelsOf(img) {
    const levels = [];
    const y0 = Math.floor(img.height / 4), y1 = Math.max(y0 + 1, img.height - Math.floor(img.height / 4));
    const cw = img.width / CELLS;
    for (let i = 0; i < CELLS; i++) {
      const x0 = Math.floor(i * cw + 0.3 * cw), x1 = Math.max(x0 + 1, Math.floor(i * cw + 0.7 * cw));
      let sum = 0;
      for (let y = y0; y < y1; y++) {
        for (let x = x0; x < x1; x++) {
          const o = (y * img.width + x) * 4;
          sum += 0.299 * img.data[o] + 0.587 * img.data[o + 1] + 0.114 * img.data[o + 2];
        }
      }
      levels.push(sum / ((y1 - y0) * (x1 - x0)));
    }
    return levels;
  }

  function read(video, canvas) {
    const w = video.videoWidth, h = video.videoHeight;
    if (!w || !h) return null;
    canvas.width = CELLS * CELL_PX;
    canvas.height = ROWS;
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    const band = Math.max(2, Math.round(h * BAND));
    ctx.drawImage(video, 0, 0, w, band, 0, 0, canvas.width, canvas.height);
    return decodeCells(levelsOf(ctx.getImageData(0, 0, canvas.width, canvas.height)));
  }

  function watch(video, onFrame) {
    const canvas = document.createElement("canvas");
    let stopped = false;
    function frame(_now, meta) {
      if (stopped) return;
      onFrame({
        value: read(video, canvas),
        displayMs: performance.timeOrigin + meta.expectedDisplayTime, // epoch ms, the page's clock
        mediaTime: meta.mediaTime,
        width: meta.width,
        height: meta.height,
        presentedFrames: meta.presentedFrames,
      });
      video.requestVideoFrameCallback(frame);
    }
    video.requestVideoFrameCallback(frame);
    return () => { stopped = true; };
  }

  window.TidecastStamp = { CELLS, crc8, decodeCells, read, watch };
})();
