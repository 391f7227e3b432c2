// The quotes panel (#quotes): bid, ask, last, change and a sparkline per instrument followed; each tick flashes.

import { h, flash } from './dom.js';
import { compare, sign } from './decimal.js';
import { drawSparkline } from './sparkline.js';

export class QuotesPanel {
  /** table: the panel's <table>; book: the QuoteBook; emptyNote: shown while there is nothing to list. */
  constructor(table, book, emptyNote = null) {
    this.tbody = table.tBodies[0] || table.appendChild(h('tbody'));
    this.book = book;
    this.emptyNote = emptyNote;
    this.rows = new Map(); // instrument -> {tr, cells, canvas}
    book.addEventListener('instruments', () => this.setInstruments(book.followed()));
    book.addEventListener('quote', ({ detail: instrument }) => this.update(instrument, true));
  }

  setInstruments(instruments) {
    const keep = new Set(instruments);
    for (const [name, row] of this.rows) {
      if (!keep.has(name)) {
        row.tr.remove();
        this.rows.delete(name);
      }
    }
    const trs = instruments.map((name) => (this.rows.get(name) || this.makeRow(name)).tr);
    this.tbody.replaceChildren(...trs);
    for (const name of instruments) this.update(name, false);
    if (this.emptyNote) this.emptyNote.hidden = instruments.length > 0;
  }

  makeRow(name) {
    const cells = {};
    const canvas = h('canvas', { class: 'sparkline', width: 80, height: 20, 'aria-hidden': 'true' });
    const tr = h('tr', { dataset: { instrument: name } },
      h('th', { scope: 'row' }, name),
      ...['bid', 'ask', 'last', 'change'].map((key) => {
        cells[key] = h('td', { class: 'num', dataset: { col: key } });
        return cells[key];
      }),
      h('td', { class: 'spark col-optional' }, canvas));
    const row = { tr, cells, canvas };
    this.rows.set(name, row);
    return row;
  }

  update(name, tick) {
    const row = this.rows.get(name);
    const q = this.book.quotes.get(name);
    if (!row || !q) return;
    const before = row.cells.last.textContent;
    for (const key of ['bid', 'ask', 'last']) row.cells[key].textContent = q[key] ?? '';
    const change = this.book.change(name);
    const cell = row.cells.change;
    const s = change === null ? 0 : sign(change);
    cell.textContent = change === null ? '' : (s > 0 ? `+${change}` : change);
    cell.classList.toggle('pos', s > 0);
    cell.classList.toggle('neg', s < 0);
    row.tr.dataset.version = q.version;
    if (tick) {
      const dir = before && q.last != null ? compare(q.last, before) ?? 0 : 0;
      flash(row.tr, dir > 0 ? 'flash-up' : dir < 0 ? 'flash-down' : 'flash', 900);
    }
    drawSparkline(row.canvas, q.history);
  }
}
