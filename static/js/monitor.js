// The monitor table (#monitor): incoming order events, newest first, capped at MAX_ROWS.

import { h, clockTime } from './dom.js';

const MAX_ROWS = 100;

export class Monitor {
  constructor(table, emptyNote = null) {
    this.tbody = table.tBodies[0] || table.appendChild(h('tbody'));
    this.emptyNote = emptyNote;
  }

  /** Add one event: frame is the socket's {type: 'order', op, seq, ts, order}; latency in ms. */
  add(frame, latencyMs) {
    const o = frame.order || {};
    const ts = Number(frame.ts);
    const tr = h('tr', { dataset: { op: frame.op, seq: frame.seq, id: o.id } },
      h('td', { class: 'time' }, Number.isFinite(ts) ? clockTime(ts) : ''),
      h('td', { class: `op op-${frame.op}` }, frame.op),
      h('td', { class: 'num' }, o.id ?? ''),
      h('td', {}, o.instrument ?? ''),
      h('td', { class: 'num' }, o.quantity ?? ''),
      h('td', { class: 'num' }, o.price ?? ''),
      h('td', { class: 'num col-optional' }, Number.isFinite(latencyMs) ? latencyMs.toFixed(1) : ''));
    this.tbody.prepend(tr);
    while (this.tbody.rows.length > MAX_ROWS) this.tbody.lastElementChild.remove();
    if (this.emptyNote) this.emptyNote.hidden = true;
  }

  clear(note = null) {
    this.tbody.replaceChildren();
    if (this.emptyNote) {
      if (note) this.emptyNote.textContent = note;
      this.emptyNote.hidden = false;
    }
  }
}
