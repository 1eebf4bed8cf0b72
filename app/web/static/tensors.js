// The server's tensor encoding: {shape, dtype, data} where data is base64 of the raw values,
// little-endian, in row-major order. Browsers have no Float16Array everywhere yet, so float16
// is widened to float32 here (exactly: every float16 value is a float32 value).

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
const WIDTH = { float16: 2, float32: 4, int32: 4 };

/** Decode `{shape, dtype, data}` into `{shape, dtype, values}` (Float32Array or Int32Array). */
export function decodeTensor({ shape, dtype, data }) {
  const width = WIDTH[dtype];
  if (!width) throw new Error(`unknown tensor dtype ${dtype}`);
  const count = shape.reduce((n, d) => n * d, 1);
  const bytes = base64Bytes(data);
  if (bytes.length !== count * width) {
    throw new Error(`a ${dtype} tensor of shape [${shape}] needs ${count * width} bytes, got ${bytes.length}`);
  }
  const values =
    dtype === "float16"
      ? float16ToFloat32(readWords(bytes, count, 2, Uint16Array))
      : readWords(bytes, count, 4, dtype === "int32" ? Int32Array : Float32Array);
  return { shape, dtype, values };
}

/** Widen IEEE 754 half-precision bit patterns to a Float32Array. */
export function float16ToFloat32(halves) {
  const out = new Float32Array(halves.length);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < halves.length; i++) {
    const h = halves[i];
    const sign = (h & 0x8000) << 16;
    const exponent = (h >> 10) & 0x1f;
    const mantissa = h & 0x3ff;
    if (exponent === 0x1f) {
      bits[i] = sign | 0x7f800000 | (mantissa << 13); // infinity or NaN
    } else if (exponent !== 0) {
      bits[i] = sign | ((exponent + 112) << 23) | (mantissa << 13); // rebias 15 → 127
    } else {
      out[i] = (sign ? -mantissa : mantissa) * 2 ** -24; // zero or subnormal
    }
  }
  return out;
}

/** Row-major offset of `index` in a tensor of `shape`; a shorter index points at a block. */
export function offset(shape, ...index) {
  let at = 0;
  for (let axis = 0; axis < shape.length; axis++) at = at * shape[axis] + (index[axis] ?? 0);
  return at;
}

/** The contiguous block of `tensor` under a leading index, e.g. `block(t, layer, head)`. */
export function block(tensor, ...index) {
  const size = tensor.shape.slice(index.length).reduce((n, d) => n * d, 1);
  const start = offset(tensor.shape, ...index);
  return tensor.values.subarray(start, start + size);
}

function base64Bytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

function readWords(bytes, count, width, Type) {
  if (LITTLE_ENDIAN) return new Type(bytes.buffer, 0, count);
  const view = new DataView(bytes.buffer);
  const out = new Type(count);
  const get = { 2: "getUint16", 4: Type === Int32Array ? "getInt32" : "getFloat32" }[width];
  for (let i = 0; i < count; i++) out[i] = view[get](i * width, true);
  return out;
}
