// Keyboard navigation of an orders table: ↑/↓ move the selected row, Home/End jump, PageUp/PageDown
// move by ten, Enter opens the selected order for editing, Escape clears the selection.

const STEP_PAGE = 10;

export class TableKeys {
  /** region: the focusable element around the table; table: the OrdersTable; onOpen(order): Enter. */
  constructor(region, table, onOpen) {
    this.region = region;
    this.table = table;
    this.onOpen = onOpen;
    this.selected = null; // order id
    region.addEventListener('keydown', (event) => this.key(event));
    region.addEventListener('click', (event) => {
      const tr = event.target.closest('tbody tr[data-id]');
      if (tr && !event.target.closest('button, a, input')) this.select(Number(tr.dataset.id));
    });
  }

  ids() {
    return this.table.orders().map((o) => Number(o.id));
  }

  key(event) {
    if (event.altKey || event.ctrlKey || event.metaKey) return;
    if (event.target.closest('button, a, input, select, textarea')) return; // theirs
    const ids = this.ids();
    if (!ids.length) return;
    const at = ids.indexOf(this.selected);
    const moves = {
      ArrowDown: at < 0 ? 0 : at + 1,
      ArrowUp: at < 0 ? ids.length - 1 : at - 1,
      PageDown: at + STEP_PAGE,
      PageUp: at - STEP_PAGE,
      Home: 0,
      End: ids.length - 1,
    };
    if (event.key in moves) {
      this.select(ids[Math.min(ids.length - 1, Math.max(0, moves[event.key]))]);
    } else if (event.key === 'Enter' && at >= 0) {
      this.onOpen(this.table.get(this.selected));
    } else if (event.key === 'Escape' && this.selected !== null) {
      this.select(null);
    } else {
      return;
    }
    event.preventDefault();
  }

  select(id) {
    for (const tr of this.table.tbody.querySelectorAll('tr.selected')) {
      tr.classList.remove('selected');
      tr.removeAttribute('aria-selected');
    }
    this.selected = id;
    const row = id === null ? null : this.table.rows.get(id);
    if (!row) return;
    row.tr.classList.add('selected');
    row.tr.setAttribute('aria-selected', 'true');
    row.tr.scrollIntoView({ block: 'nearest' });
  }
}
