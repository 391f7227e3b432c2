// The orders <table>: header with sort buttons, rows keyed by id, in-place patches with flash, fade-out deletes.

import { h, shortTime, flash } from './dom.js';
import { compare } from './decimal.js';
import { SORTABLE, parseSort } from './order-query.js';

/** Every column the tables know; a page picks some by key. */
export const COLUMNS = {
  id: { label: 'ID', num: true },
  owner: { label: 'Owner' },
  instrument: { label: 'Instrument' },
  side: { label: 'Side' },
  quantity: { label: 'Qty', num: true },
  price: { label: 'Price', num: true },
  last: { label: 'Last', num: true, quote: true, title: 'Last traded price' },
  pnl: { label: 'P&L', num: true, quote: true, title: 'Unrealised P&L of filled and partially filled orders: (last − price) × quantity, negated for sells' },
  status: { label: 'Status' },
  version: { label: 'Ver', num: true, optional: true, title: 'Row version' },
  created_at: { label: 'Created', time: true, optional: true },
  updated_at: { label: 'Updated', time: true, optional: true },
  actions: { label: 'Actions', hiddenLabel: true },
};

const FADE_MS = 600;
// Above this many row changes per second, highlights stop animating (values still patch, hook classes
// still come and go): painting hundreds of fading cells a second costs more than it tells the reader.
const CALM_ABOVE_PER_S = 40;

export class OrdersTable {
  /**
   * table: the <table>; columns: keys of COLUMNS; onSort(col): header clicked;
   * actions(order): nodes for the actions cell; quoteCells(order): {last, pnl, pnlSign}.
   */
  constructor(table, { columns, onSort, actions, quoteCells }) {
    this.table = table;
    this.columns = columns;
    this.onSort = onSort;
    this.actions = actions || (() => []);
    this.quoteCells = quoteCells || (() => ({ last: '', pnl: '', pnlSign: 0 }));
    this.rows = new Map(); // id -> {tr, order, cells, actionsKey}
    this.tbody = table.tBodies[0] || table.appendChild(h('tbody'));
    this.changes = 0; // row changes in the current one-second window
    this.windowTimer = 0;
    this.buildHead();
  }

  noteChange() {
    this.changes += 1;
    if (this.changes > CALM_ABOVE_PER_S) this.table.classList.add('calm');
    if (!this.windowTimer) {
      this.windowTimer = setTimeout(() => {
        this.windowTimer = 0;
        if (this.changes <= CALM_ABOVE_PER_S) this.table.classList.remove('calm');
        this.changes = 0;
      }, 1000);
    }
  }

  buildHead() {
    const thead = this.table.tHead || this.table.createTHead();
    thead.replaceChildren();
    const tr = h('tr');
    this.headers = new Map();
    for (const key of this.columns) {
      const col = COLUMNS[key];
      const classes = [col.num && 'num', col.optional && 'col-optional', col.quote && 'col-quote']
        .filter(Boolean).join(' ');
      const th = h('th', { scope: 'col', class: classes || undefined, dataset: { col: key }, title: col.title });
      if (SORTABLE.includes(key) && this.onSort) {
        th.setAttribute('aria-sort', 'none');
        th.append(h('button', { type: 'button', class: 'sort', onclick: () => this.onSort(key) },
          col.label, h('span', { class: 'sort-mark', 'aria-hidden': 'true' })));
      } else if (col.hiddenLabel) {
        th.append(h('span', { class: 'visually-hidden' }, col.label));
      } else {
        th.append(col.label);
      }
      this.headers.set(key, th);
      tr.append(th);
    }
    thead.append(tr);
  }

  /** Show the sort state in the header (aria-sort on the primary column). */
  setSort(sortText) {
    const [primary] = parseSort(sortText);
    for (const [key, th] of this.headers) {
      if (!th.hasAttribute('aria-sort')) continue;
      const on = primary && primary.col === key;
      th.setAttribute('aria-sort', on ? (primary.desc ? 'descending' : 'ascending') : 'none');
    }
  }

  /** Orders currently shown, in display order (rows fading out are not counted). */
  orders() {
    return [...this.tbody.children]
      .filter((tr) => !tr.classList.contains('removing') && tr.dataset.id)
      .map((tr) => this.rows.get(Number(tr.dataset.id)).order);
  }

  get size() {
    return this.rows.size;
  }

  get(id) {
    const row = this.rows.get(Number(id));
    return row ? row.order : null;
  }

  /** Replace the body with `orders`, reusing rows by id; values that changed flash only if asked. */
  setRows(orders, { flashChanges = false } = {}) {
    const keep = new Set(orders.map((o) => Number(o.id)));
    for (const [id, row] of this.rows) {
      if (!keep.has(id)) {
        row.tr.remove();
        this.rows.delete(id);
      }
    }
    for (const tr of [...this.tbody.children]) {
      if (!tr.dataset.id || tr.classList.contains('removing')) tr.remove();
    }
    const trs = orders.map((order) => {
      const existing = this.rows.get(Number(order.id));
      if (existing) {
        this.patch(order, { flash: flashChanges });
        return existing.tr;
      }
      return this.makeRow(order).tr;
    });
    this.tbody.replaceChildren(...trs);
  }

  makeRow(order) {
    const tr = h('tr');
    const row = { tr, order, cells: {}, actionsKey: null };
    for (const key of this.columns) {
      const col = COLUMNS[key];
      const classes = [col.num && 'num', col.optional && 'col-optional', col.quote && 'col-quote']
        .filter(Boolean).join(' ');
      const cell = h(key === 'id' ? 'th' : 'td', { class: classes || undefined, dataset: { col: key } });
      if (key === 'id') cell.setAttribute('scope', 'row');
      row.cells[key] = cell;
      tr.append(cell);
    }
    this.rows.set(Number(order.id), row);
    this.fill(row, order, false);
    return row;
  }

  /** Write the order's values into its row; returns nothing. Flashes changed cells when `doFlash`. */
  fill(row, order, doFlash) {
    const prev = row.order;
    row.order = order;
    row.tr.dataset.id = order.id;
    row.tr.dataset.version = order.version;
    row.tr.dataset.status = order.status;
    let changed = false;
    for (const key of this.columns) {
      const cell = row.cells[key];
      if (key === 'actions') {
        const actionsKey = `${order.status}|${order.owner_id}`;
        if (actionsKey !== row.actionsKey) {
          row.actionsKey = actionsKey;
          const hadFocus = cell.contains(document.activeElement);
          cell.replaceChildren(...this.actions(order));
          if (hadFocus) (cell.querySelector('button') || row.tr).focus?.();
        }
        continue;
      }
      if (COLUMNS[key].quote) continue;
      const raw = order[key] ?? '';
      const text = this.display(key, raw);
      if (cell.textContent === text && cell.dataset.value === String(raw)) continue;
      const before = cell.dataset.value;
      cell.textContent = text;
      cell.dataset.value = raw;
      if (COLUMNS[key].time) cell.title = raw;
      if (key === 'side') cell.className = `side side-${raw}`;
      if (key === 'status') cell.className = `status status-${raw}`;
      if (doFlash && before !== undefined && key !== 'version' && key !== 'updated_at') {
        changed = true;
        let dir = 0;
        if (key === 'price') dir = compare(raw, prev[key]) ?? 0;
        flash(cell, dir > 0 ? 'flash-up' : dir < 0 ? 'flash-down' : 'flash');
      }
    }
    if (doFlash && changed) flash(row.tr, 'flash');
    this.fillQuote(row, false);
  }

  display(key, raw) {
    if (COLUMNS[key].time) return shortTime(raw);
    if (key === 'status') return String(raw).replace(/_/g, ' ');
    return String(raw);
  }

  fillQuote(row, doFlash) {
    if (!this.columns.includes('last')) return;
    const { last, pnl, pnlSign } = this.quoteCells(row.order);
    const lastCell = row.cells.last;
    if (lastCell && lastCell.textContent !== (last || '')) {
      const dir = lastCell.textContent && last ? compare(last, lastCell.textContent) : 0;
      lastCell.textContent = last || '';
      if (doFlash && dir) flash(lastCell, dir > 0 ? 'flash-up' : 'flash-down');
    }
    const pnlCell = row.cells.pnl;
    if (pnlCell) {
      pnlCell.textContent = pnl || '';
      pnlCell.classList.toggle('pos', pnlSign > 0);
      pnlCell.classList.toggle('neg', pnlSign < 0);
    }
  }

  /** Patch a shown row in place; false if the id is not on this page. */
  patch(order, { flash: doFlash = true } = {}) {
    const row = this.rows.get(Number(order.id));
    if (!row) return false;
    if (doFlash) this.noteChange();
    this.fill(row, order, doFlash);
    return true;
  }

  /** Insert a new row before display position `index` and flash it. */
  insertAt(order, index, { flash: doFlash = true } = {}) {
    const shown = [...this.tbody.children].filter((tr) => !tr.classList.contains('removing'));
    const { tr } = this.makeRow(order);
    const before = shown[index] || null;
    this.tbody.insertBefore(tr, before);
    if (doFlash) {
      this.noteChange();
      flash(tr, 'flash-new');
    }
  }

  /** Remove a row: fade it out (then drop it), or drop it at once. */
  remove(id, { fade = true } = {}) {
    const row = this.rows.get(Number(id));
    if (!row) return false;
    this.rows.delete(Number(id));
    if (!fade) {
      row.tr.remove();
      return true;
    }
    row.tr.classList.add('removing');
    row.tr.setAttribute('aria-hidden', 'true');
    for (const b of row.tr.querySelectorAll('button')) b.disabled = true;
    setTimeout(() => row.tr.remove(), FADE_MS);
    return true;
  }

  /** Drop the last shown row quietly (pushed to the next page by an insert above it). */
  dropLast() {
    const ids = this.orders().map((o) => o.id);
    if (ids.length) this.remove(ids[ids.length - 1], { fade: false });
  }

  /** Refresh last price / P&L cells of rows on `instrument` (or all rows). */
  refreshQuotes(instrument = null) {
    for (const row of this.rows.values()) {
      if (instrument === null || row.order.instrument === instrument) this.fillQuote(row, instrument !== null);
    }
  }

  /** Write the time cells again (the time zone shown changed). */
  refreshTimes() {
    for (const row of this.rows.values()) {
      for (const key of this.columns) {
        if (COLUMNS[key].time) row.cells[key].textContent = shortTime(row.cells[key].dataset.value);
      }
    }
  }

  /** Instruments on the page. */
  instruments() {
    return [...new Set([...this.rows.values()].map((r) => r.order.instrument))].sort();
  }
}
