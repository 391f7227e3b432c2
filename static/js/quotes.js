// Live quotes for the instruments on the page: last price per instrument, unrealised P&L per order.

import { mul, sub, round, sign } from './decimal.js';

const RESUBSCRIBE_AFTER_MS = 300;
// A position exists once something filled; unfilled or dead orders have no P&L.
const HAS_POSITION = new Set(['filled', 'partially_filled']);

export class QuoteBook extends EventTarget {
  /** Events: 'quote' (detail: instrument), 'first' (the first quote ever arrived). */
  constructor(socket) {
    super();
    this.socket = socket;
    this.quotes = new Map(); // instrument -> {bid, ask, last, ts}
    this.wanted = [];
    this.sent = '';
    this.timer = 0;
    this.enabled = true;
    socket.addEventListener('open', () => { this.sent = ''; this.sync(); });
    socket.addEventListener('frame', ({ detail: { frame } }) => {
      if (frame.type !== 'quote' || !frame.instrument || !this.enabled) return;
      const first = this.quotes.size === 0;
      this.quotes.set(frame.instrument, { bid: frame.bid, ask: frame.ask, last: frame.last, ts: frame.ts });
      if (first) this.dispatchEvent(new Event('first'));
      this.dispatchEvent(new CustomEvent('quote', { detail: frame.instrument }));
    });
  }

  /** Follow these instruments (debounced; resubscribes only when the set changes). */
  follow(instruments) {
    this.wanted = [...new Set(instruments)].sort();
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
  }

  /** Cells for an order row: last price as given, and P&L = (last − price) × qty (× −1 for sells). */
  cellsFor(order) {
    const q = this.quotes.get(order.instrument);
    if (!q || q.last === null || q.last === undefined) return { last: '', pnl: '', pnlSign: 0 };
    const last = String(q.last);
    if (!HAS_POSITION.has(order.status)) return { last, pnl: '', pnlSign: 0 };
    const diff = order.side === 'sell' ? sub(order.price, last) : sub(last, order.price);
    const pnl = diff === null ? null : round(mul(diff, order.quantity), 2);
    return { last, pnl: pnl ?? '', pnlSign: pnl ? sign(pnl) : 0 };
  }
}
