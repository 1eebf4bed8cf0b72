// Colour scales that stay readable with colour-blind vision and in greyscale: viridis for
// attention weights, cividis for probabilities (two scales, so the two are never confused),
// and ColorBrewer's PuOr for differences (purple: less, white: equal, orange: more).

const VIRIDIS = ["#440154", "#482576", "#414487", "#35608d", "#2a788e", "#21908c",
  "#22a884", "#43bf71", "#7ad151", "#bbdf27", "#fde725"];
const CIVIDIS = ["#00204d", "#00336f", "#39486b", "#575c6d", "#707173", "#8a8779",
  "#a69d75", "#c4b56c", "#e4cf5b", "#ffea46"];
const PUOR = ["#2d004b", "#542788", "#8073ac", "#b2abd2", "#d8daeb", "#f7f7f7",
  "#fee0b6", "#fdb863", "#e08214", "#b35806", "#7f3b08"];

export const viridis = makeScale(VIRIDIS);
export const cividis = makeScale(CIVIDIS);
/** Over [0, 1] with 0.5 for no change: a difference d in [-m, m] sits at 0.5 + d / 2m. */
export const diverging = makeScale(PUOR);

/** A scale over [0, 1]: `lut` holds 256 RGBA entries for drawing pixels in bulk. */
function makeScale(hexes) {
  const stops = hexes.map((hex) => [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16)));
  const lut = new Uint8ClampedArray(256 * 4);
  for (let i = 0; i < 256; i++) {
    const x = (i / 255) * (stops.length - 1);
    const low = Math.min(Math.floor(x), stops.length - 2);
    const f = x - low;
    for (let c = 0; c < 3; c++) lut[i * 4 + c] = stops[low][c] * (1 - f) + stops[low + 1][c] * f;
    lut[i * 4 + 3] = 255;
  }
  const index = (t) => Math.round(Math.min(1, Math.max(0, t || 0)) * 255) * 4;
  return {
    lut,
    css(t) {
      const i = index(t);
      return `rgb(${lut[i]}, ${lut[i + 1]}, ${lut[i + 2]})`;
    },
    /** Black or white, whichever reads better on `css(t)`. */
    ink(t) {
      const i = index(t);
      const luminance = (0.2126 * lut[i] + 0.7152 * lut[i + 1] + 0.0722 * lut[i + 2]) / 255;
      return luminance > 0.45 ? "#000" : "#fff";
    },
    /** A CSS gradient of the whole scale, for legends. */
    gradient: `linear-gradient(to right, ${hexes.join(", ")})`,
  };
}
