// Small DOM helpers: element builder, time formatting, the page's user, the notice line.

/** h('td', {class: 'num', dataset: {col: 'price'}}, '101.5') */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key === 'text') el.textContent = value;
    else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, '');
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

const pad = (n, w = 2) => String(n).padStart(w, '0');

// Times are shown in local time or in UTC, as the user chose (kept in localStorage).
const TIME_KEY = 'orderstream.times';
let utc = false;
try { utc = localStorage.getItem(TIME_KEY) === 'utc'; } catch { /* storage blocked: local time */ }

/** 'local' or 'utc': how times are shown. */
export function timeMode() {
  return utc ? 'utc' : 'local';
}

/** Show times in 'local' time or 'utc' from now on (remembered); fires 'timemodechange' on document. */
export function setTimeMode(mode) {
  utc = mode === 'utc';
  try { localStorage.setItem(TIME_KEY, timeMode()); } catch { /* not remembered */ }
  document.dispatchEvent(new CustomEvent('timemodechange', { detail: timeMode() }));
}

/** The calendar fields of `d` in the chosen zone. */
function fields(d) {
  return utc
    ? { y: d.getUTCFullYear(), mo: d.getUTCMonth(), day: d.getUTCDate(), hh: d.getUTCHours(), mm: d.getUTCMinutes(), ss: d.getUTCSeconds() }
    : { y: d.getFullYear(), mo: d.getMonth(), day: d.getDate(), hh: d.getHours(), mm: d.getMinutes(), ss: d.getSeconds() };
}

/** ISO 8601 -> Date; microseconds are trimmed to what Date keeps (ms). */
export function parseIso(iso) {
  if (!iso) return null;
  const trimmed = String(iso).replace(/(\.\d{3})\d+/, '$1');
  const d = new Date(trimmed);
  return Number.isNaN(d.getTime()) ? null : d;
}

/** "HH:MM:SS" today, "MM-DD HH:MM" otherwise (local time or UTC, see timeMode). */
export function shortTime(iso) {
  const d = parseIso(iso);
  if (!d) return iso || '';
  const t = fields(d);
  const now = fields(new Date());
  if (t.y === now.y && t.mo === now.mo && t.day === now.day) {
    return `${pad(t.hh)}:${pad(t.mm)}:${pad(t.ss)}`;
  }
  return `${pad(t.mo + 1)}-${pad(t.day)} ${pad(t.hh)}:${pad(t.mm)}`;
}

/** Epoch ms -> "HH:MM:SS.mmm" (local time or UTC, see timeMode). */
export function clockTime(ms) {
  const d = new Date(ms);
  const t = fields(d);
  return `${pad(t.hh)}:${pad(t.mm)}:${pad(t.ss)}.${pad(d.getMilliseconds(), 3)}`;
}

/** The logged-in user, from <body data-user-id data-username data-staff>. */
export function currentUser() {
  const { userId, username, staff } = document.body.dataset;
  return { id: userId ? Number(userId) : null, username: username || '', isStaff: staff === 'true' };
}

let noticeTimer = 0;
/** A short message in the page's #notice live region; errors stay until replaced. */
export function notify(message, kind = 'info') {
  const el = document.getElementById('notice');
  if (!el) return;
  el.textContent = message;
  el.dataset.kind = kind;
  el.hidden = !message;
  clearTimeout(noticeTimer);
  if (kind !== 'error' && message) noticeTimer = setTimeout(() => { el.hidden = true; }, 4000);
}

const FLASH_CLASSES = ['flash', 'flash-up', 'flash-down', 'flash-new'];

/**
 * Put a CSS highlight class on an element for `ms`. Restarting a running highlight waits two frames
 * instead of forcing a synchronous layout (at 200 events/s forced layouts of a big table add up).
 */
export function flash(el, cls, ms = 1500) {
  const restart = el.classList.contains(cls);
  for (const c of FLASH_CLASSES) el.classList.remove(c);
  clearTimeout(el._flashTimer);
  if (restart) {
    requestAnimationFrame(() => requestAnimationFrame(() => el.classList.add(cls)));
  } else {
    el.classList.add(cls);
  }
  el._flashTimer = setTimeout(() => el.classList.remove(cls), ms);
}
