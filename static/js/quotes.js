// Live quotes for the instruments on the page: the newest quote per instrument (by version), recent
// last prices, and unrealised P&L per order.

import { mul, sub, round, sign } from './decimal.js';

const RESUBSCRIBE_AFTER_MS = 300;
// Last prices kept per instrument for the sparkline.
const HISTORY = 60;
// A position exists once something filled; unfilled or dead orders have no P&L.
const HAS_POSITION = new Set(['filled', 'partially_filled']);

export class QuoteBook extends EventTarget {
  /** Events: 'quote' (detail: instrument), 'first' (the first quote ever arrived), 'instruments' (the set followed changed). */
  constructor(socket) {
    super();
    this.socket = socket;
    this.quotes = new Map(); // instrument -> {bid, ask, last, version, ts, open, history}
    this.unknown = new Set(); // names the server says are not instruments
    this.wanted = [];
    this.sent = '';
    this.timer = 0;
    this.enabled = true;
    socket.addEventListener('open', () => { this.sent = ''; this.sync(); });
    socket.addEventListener('frame', ({ detail: { frame } }) => {
      if (frame.type === 'subscribed' && frame.channel === 'quotes') {
        for (const name of frame.unknown || []) this.unknown.add(name);
        this.dispatchEvent(new Event('instruments'));
        return;
      }
      if (frame.type === 'quote' && frame.instrument && this.enabled) this.apply(frame);
    });
  }

  /** Keep a quote unless one of a version as high is held: the newest wins, whatever the order of arrival. */
  apply(frame) {
    const held = this.quotes.get(frame.instrument);
    const version = Number(frame.version) || 0;
    if (held && held.version >= version) return false;
    const first = this.quotes.size === 0;
    const history = held ? held.history : [];
    if (frame.last !== null && frame.last !== undefined) {
      history.push(Number(frame.last));
      if (history.length > HISTORY) history.shift();
    }
    this.quotes.set(frame.instrument, {
      bid: frame.bid, ask: frame.ask, last: frame.last, version, ts: frame.ts,
      // Change is measured from the first last price this page saw.
      open: held ? held.open : frame.last, previous: held ? held.last : null, history,
    });
    if (first) this.dispatchEvent(new Event('first'));
    this.dispatchEvent(new CustomEvent('quote', { detail: frame.instrument }));
    return true;
  }

  /** Follow these instruments (debounced; resubscribes only when the set changes). */
  follow(instruments) {
    this.wanted = [...new Set(instruments)].filter((i) => !this.unknown.has(i)).sort();
    if (this.timer) return; // already due; a steady stream must not postpone it forever
    this.timer = setTimeout(() => { this.timer = 0; this.sync(); }, RESUBSCRIBE_AFTER_MS);
  }

  /** Realtime off: stop following quotes (the page stays as it is); on: follow again. */
  setEnabled(on) {
    this.enabled = on;
    this.sync();
  }

  sync() {
    const key = this.enabled ? this.wanted.join('\n') : '';
    if (key === this.sent || !this.socket.isOpen) return;
    if (this.sent) this.socket.send({ op: 'unsubscribe', channel: 'quotes' });
    if (key) this.socket.send({ op: 'subscribe', channel: 'quotes', instruments: this.wanted });
    this.sent = key;
    this.dispatchEvent(new Event('instruments'));
  }

  /** Instruments followed that the server knows, in order. */
  followed() {
    return this.wanted.filter((i) => !this.unknown.has(i));
  }

  /** Last minus the first last price seen here (null until there is one). */
  change(instrument) {
    const q = this.quotes.get(instrument);
    if (!q || q.last == null || q.open == null) return null;
    return sub(q.last, q.open);
  }

  /** Unrealised P&L of one order, unrounded decimal text ('' when it has none). */
  pnlOf(order) {
    const q = this.quotes.get(order.instrument);
    if (!q || q.last == null || !HAS_POSITION.has(order.status)) return '';
    const diff = order.side === 'sell' ? sub(order.price, q.last) : sub(q.last, order.price);
    return diff === null ? '' : (mul(diff, order.quantity) ?? '');
  }

  /** Cells for an order row: last price as given, and P&L = (last − price) × qty (× −1 for sells). */
  cellsFor(order) {
    const q = this.quotes.get(order.instrument);
    if (!q || q.last === null || q.last === undefined) return { last: '', pnl: '', pnlSign: 0 };
    const last = String(q.last);
    const raw = this.pnlOf(order);
    const pnl = raw === '' ? '' : round(raw, 2);
    return { last, pnl: pnl ?? '', pnlSign: pnl ? sign(pnl) : 0 };
  }
}
