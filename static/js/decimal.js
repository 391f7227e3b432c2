// Exact arithmetic on decimal strings ("101.50"), with BigInt: money never goes through float.

const DECIMAL = /^([+-])?(\d*)(?:\.(\d*))?$/;

/** "12.340" -> {n: 12340n, scale: 3}; null when the text is not a plain decimal. */
export function parse(text) {
  if (text === null || text === undefined) return null;
  const m = DECIMAL.exec(String(text).trim());
  if (!m || (m[2] === '' && !m[3])) return null;
  const frac = m[3] || '';
  let n = BigInt((m[2] || '0') + frac);
  if (m[1] === '-') n = -n;
  return { n, scale: frac.length };
}

function scaled(d, scale) {
  return d.n * 10n ** BigInt(scale - d.scale);
}

function format({ n, scale }) {
  const negative = n < 0n;
  let digits = (negative ? -n : n).toString();
  if (scale > 0) {
    digits = digits.padStart(scale + 1, '0');
    digits = `${digits.slice(0, -scale)}.${digits.slice(-scale)}`;
  }
  return (negative ? '-' : '') + digits;
}

/** -1, 0 or 1 as a < b, a == b, a > b; null if either is not a decimal. */
export function compare(a, b) {
  const x = parse(a);
  const y = parse(b);
  if (!x || !y) return null;
  const scale = Math.max(x.scale, y.scale);
  const d = scaled(x, scale) - scaled(y, scale);
  return d < 0n ? -1 : d > 0n ? 1 : 0;
}

export function sub(a, b) {
  const x = parse(a);
  const y = parse(b);
  if (!x || !y) return null;
  const scale = Math.max(x.scale, y.scale);
  return format({ n: scaled(x, scale) - scaled(y, scale), scale });
}

export function add(a, b) {
  const x = parse(a);
  const y = parse(b);
  if (!x || !y) return null;
  const scale = Math.max(x.scale, y.scale);
  return format({ n: scaled(x, scale) + scaled(y, scale), scale });
}

export function mul(a, b) {
  const x = parse(a);
  const y = parse(b);
  if (!x || !y) return null;
  return format({ n: x.n * y.n, scale: x.scale + y.scale });
}

/** Round half away from zero to `places` decimals. */
export function round(text, places) {
  const x = parse(text);
  if (!x) return null;
  if (x.scale <= places) return format({ n: scaled(x, places), scale: places });
  const div = 10n ** BigInt(x.scale - places);
  const abs = x.n < 0n ? -x.n : x.n;
  let q = abs / div;
  if ((abs % div) * 2n >= div) q += 1n;
  return format({ n: x.n < 0n ? -q : q, scale: places });
}

/** Sign of a decimal string: -1, 0, 1 (null if not a decimal). */
export function sign(text) {
  return compare(text, '0');
}
