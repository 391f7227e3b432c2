// P&L totals: the orders on screen (from the quotes held here) and all the user's orders (GET /api/pnl).

import { getPnl } from './api.js';
import { add, round, sign } from './decimal.js';

// The all-orders figure is asked for again at most this often while quotes and orders move.
const REFRESH_MS = 2000;

export class PnlTotals {
  /** onScreen / all: elements for the two figures; orders(): the orders shown; book: the QuoteBook. */
  constructor({ onScreen, all, orders, book }) {
    this.onScreenEl = onScreen;
    this.allEl = all;
    this.orders = orders;
    this.book = book;
    this.timer = 0;
    this.lastFetch = 0;
  }

  /** Recompute the on-screen total now, and the all-orders total soon. */
  refresh() {
    let total = null;
    for (const order of this.orders()) {
      const pnl = this.book.pnlOf(order);
      if (pnl !== '') total = total === null ? pnl : add(total, pnl);
    }
    show(this.onScreenEl, total === null ? null : round(total, 2));
    this.scheduleAll();
  }

  scheduleAll() {
    if (this.timer) return;
    const wait = Math.max(0, this.lastFetch + REFRESH_MS - Date.now());
    this.timer = setTimeout(async () => {
      this.lastFetch = Date.now();
      try {
        const { total, priced } = await getPnl();
        show(this.allEl, priced ? total : null);
      } catch {
        // Keep the figure shown; the next change asks again.
      } finally {
        this.timer = 0;
      }
    }, wait);
  }
}

function show(el, value) {
  if (!el) return;
  const s = value === null ? 0 : sign(value);
  el.textContent = value === null ? '–' : (s > 0 ? `+${value}` : value);
  el.dataset.value = value ?? '';
  el.classList.toggle('pos', s > 0);
  el.classList.toggle('neg', s < 0);
}
