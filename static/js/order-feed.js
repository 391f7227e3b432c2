// Keeps an OrdersTable equal to the server: loads pages from the API, applies the stream race-free by version.
//
// The recipe (DESIGN.md): subscribe, buffer events until `subscribed`, load the page, then apply buffered
// and live events by version (VersionBook, docs/protocol.md "Versions and tombstones"): an insert/update
// applies above every version known for its id, a delete unless a newer version is known; a delete at
// version v hides the order's events and page rows at or below v, and a higher version brings it back.

import { listOrders } from './api.js';
import { comparator, isNarrowed, matchesFilters, matchesQuery } from './order-query.js';
import { VersionBook } from './version-book.js';

const MAX_BUFFER = 5000; // events buffered while loading; past this, reload instead
const SUBSCRIBE_GRACE_MS = 1200; // load anyway if `subscribed` is this late (socket down or slow)
const REFILL_AFTER_MS = 700; // debounce for refilling a page that deletes made short

export class OrderFeed extends EventTarget {
  /**
   * table: OrdersTable; socket: LiveSocket; query: {limit, offset, sort, q, status, side, owner};
   * subscription(): the subscribe frame to send; accepts(order): may this order be on this view
   * (owner filter); it guards against events of an old subscription still in flight.
   * Events: 'info' (counts changed), 'hint' (new-orders count), 'loaded', 'order-event' (detail: {frame, receivedAt}),
   * 'applied' (detail: {op, order}), 'error' (detail: message).
   */
  constructor({ table, socket, query, subscription, accepts = () => true }) {
    super();
    this.table = table;
    this.socket = socket;
    this.query = { limit: 25, offset: 0, sort: '-id', q: '', ...query };
    this.subscription = subscription;
    this.accepts = accepts;
    this.realtime = true;
    this.waiting = false; // subscribe sent, `subscribed` not yet received
    this.loading = false;
    this.buffer = [];
    this.overflowed = false;
    this.book = new VersionBook();
    this.total = 0;
    this.filtered = 0;
    this.newCount = 0;
    this.newBefore = 0; // of newCount: orders that sort before this page
    this.generation = 0;
    this.abort = null;
    this.graceTimer = 0;
    this.refillTimer = 0;
    this.error = null;

    socket.addEventListener('open', () => this.onOpen());
    socket.addEventListener('close', () => { this.waiting = false; });
    socket.addEventListener('frame', (ev) => this.onFrame(ev.detail));
  }

  start() {
    if (this.socket.isOpen) this.onOpen();
    // The socket may take a while (or never come): do not leave the table empty meanwhile.
    this.graceTimer = setTimeout(() => { if (!this.loading && this.table.size === 0) this.load(); }, SUBSCRIBE_GRACE_MS);
  }

  // --- subscription -------------------------------------------------------------------------

  onOpen() {
    if (this.realtime) this.subscribe();
    else this.load(); // reconnected without realtime: still show fresh data
  }

  subscribe() {
    this.buffer = [];
    this.overflowed = false;
    if (!this.socket.send(this.subscription())) {
      this.load(); // socket down: show what the API has; 'open' will subscribe and reload
      return;
    }
    this.waiting = true;
    clearTimeout(this.graceTimer);
    this.graceTimer = setTimeout(() => { if (this.waiting) this.load(); }, SUBSCRIBE_GRACE_MS);
  }

  /** Realtime toggle: subscribe (and reload, since events were missed) or unsubscribe. */
  setRealtime(on) {
    if (on === this.realtime) return;
    this.realtime = on;
    if (on) {
      this.subscribe();
    } else {
      this.socket.send({ op: 'unsubscribe', channel: 'orders' });
      this.waiting = false;
      this.buffer = [];
      this.setHint(0, 0);
    }
  }

  /** The subscription changed (e.g. staff picked another owner): resubscribe, then reload. */
  resubscribe() {
    // An owner move reaches the old owner's view as a delete at the move's version: such tombstones hold
    // for that view only, so a view of other owners starts afresh (and trusts its page load).
    this.book = new VersionBook();
    if (!this.realtime || !this.socket.isOpen) {
      this.load();
      return;
    }
    this.socket.send({ op: 'unsubscribe', channel: 'orders' });
    this.subscribe();
  }

  onFrame({ frame, receivedAt }) {
    switch (frame.type) {
      case 'subscribed':
        if (frame.channel === 'orders' && this.realtime) {
          this.waiting = false;
          clearTimeout(this.graceTimer);
          this.load();
        }
        break;
      case 'order':
        if (!this.realtime) return; // in flight when we unsubscribed
        this.dispatchEvent(new CustomEvent('order-event', { detail: { frame, receivedAt } }));
        if (this.waiting || this.loading) {
          this.buffer.push(frame);
          if (this.buffer.length > MAX_BUFFER) {
            this.buffer = [];
            this.overflowed = true;
          }
        } else {
          this.apply(frame);
        }
        break;
      case 'resync':
        if (this.realtime) this.load();
        break;
      case 'error':
        if (frame.code === 'unknown_instrument') break; // quotes' business: free-text instruments have none
        if (this.waiting && frame.code === 'unavailable') {
          // The server cannot promise events yet (its database listener is down): ask again shortly.
          this.waiting = false;
          setTimeout(() => { if (this.realtime && this.socket.isOpen && !this.waiting) this.subscribe(); }, 2000);
        }
        this.dispatchEvent(new CustomEvent('error', { detail: frame.message || frame.code || 'socket error' }));
        break;
      default:
        break;
    }
  }

  // --- loading ------------------------------------------------------------------------------

  /** Load the current page; events arriving meanwhile are buffered and applied after it. */
  async load() {
    const generation = ++this.generation;
    if (this.abort) this.abort.abort();
    const abort = new AbortController();
    this.abort = abort;
    this.loading = true;
    clearTimeout(this.refillTimer);
    this.refillTimer = 0;
    let page;
    try {
      page = await listOrders(this.query, abort.signal);
    } catch (err) {
      if (abort.signal.aborted || generation !== this.generation) return;
      this.loading = false;
      this.error = err.message || String(err);
      this.dispatchEvent(new CustomEvent('error', { detail: this.error }));
      this.flush();
      this.emitInfo();
      return;
    }
    if (generation !== this.generation) return;
    this.error = null;
    // Past the end (rows deleted, or a smaller page size): go to the last page that has rows.
    if (page.items.length === 0 && this.query.offset > 0 && page.filtered > 0) {
      const limit = this.query.limit;
      this.query.offset = Math.max(0, Math.floor((page.filtered - 1) / limit) * limit);
      this.load();
      return;
    }
    const items = page.items.map((order) => this.book.reconcile(order)).filter(Boolean);
    this.total = page.total;
    this.filtered = page.filtered;
    this.table.setRows(items);
    this.table.setSort(this.query.sort);
    this.setHint(0, 0);
    this.loading = false;
    this.dispatchEvent(new Event('loaded'));
    if (this.overflowed) {
      this.overflowed = false;
      this.load();
      return;
    }
    this.flush();
    this.emitInfo();
  }

  flush() {
    const pending = this.buffer;
    this.buffer = [];
    for (const frame of pending) this.apply(frame);
  }

  /** Deletes left this page short: fetch it again (debounced) to pull rows up from the next page. */
  scheduleRefill() {
    if (this.refillTimer) return; // already due: a steady stream of deletes must not postpone it forever
    this.refillTimer = setTimeout(() => {
      this.refillTimer = 0;
      if (!this.loading) this.load();
    }, REFILL_AFTER_MS);
  }

  // --- applying events ----------------------------------------------------------------------

  apply(frame) {
    const order = frame.order || {};
    const id = Number(order.id);
    if (!Number.isFinite(id)) return;
    // From an old subscription still in flight (a delete names the owner it was sent for, when it does).
    if ((frame.op !== 'delete' || order.owner_id !== undefined) && !this.accepts(order)) return;
    const shown = this.table.get(id);
    const shownVersion = shown ? Number(shown.version) : -1;

    if (frame.op === 'delete') {
      // Stale (a newer version brought the order back) or already deleted: nothing changes.
      if (!this.book.recordDelete(id, order.version, shownVersion)) return;
      if (this.table.remove(id)) {
        this.total -= 1;
        this.filtered -= 1;
        if (this.query.offset + this.table.size < this.filtered) this.scheduleRefill();
      } else if (!isNarrowed(this.query)) {
        this.total -= 1;
        this.filtered -= 1;
        // If it was on an earlier page, this page's rows moved up by one: fetch it again.
        if (this.query.offset > 0) this.scheduleRefill();
      } else {
        this.scheduleRefill(); // it may or may not have matched the search or filters: let the server count
      }
      this.emitInfo();
      this.dispatchEvent(new CustomEvent('applied', { detail: { op: 'delete', order } }));
      return;
    }

    // Back from a delete (moved away and back, or a tombstone outrun by a higher version): a new row again.
    const revived = this.book.isDeleted(id);
    if (!this.book.record(order, shownVersion)) return; // stale, duplicate, or hidden by a tombstone
    const added = frame.op === 'insert' || revived;

    if (shown && !matchesFilters(order, this.query)) {
      // Filled while the list shows only new orders, say: it leaves this view as the server's
      // next page would leave it out. (A search keeps a row it stops matching until a reload.)
      this.table.remove(id);
      this.filtered -= 1;
      if (this.query.offset + this.table.size < this.filtered) this.scheduleRefill();
      this.emitInfo();
      this.dispatchEvent(new CustomEvent('applied', { detail: { op: 'update', order } }));
      return;
    }
    if (this.table.patch(order)) {
      this.dispatchEvent(new CustomEvent('applied', { detail: { op: 'update', order } }));
      return;
    }
    if (!matchesQuery(order, this.query)) {
      if (added) this.total += 1;
      this.emitInfo();
      return;
    }
    if (added) {
      this.total += 1;
      this.filtered += 1;
      this.place(order, { hint: true });
    } else {
      // An update of an order not shown: usually it lives on another page and the sort keeps it
      // there; but its sort key may have moved it onto this page (e.g. sorted by updated_at), or
      // it was just given to this owner. Either way the comparator says where it belongs now.
      this.place(order, { hint: false });
    }
    this.emitInfo();
    this.dispatchEvent(new CustomEvent('applied', { detail: { op: added ? 'insert' : frame.op, order } }));
  }

  /** Put an order where the sort puts it, if that is on this page; else (inserts) count it in the hint. */
  place(order, { hint }) {
    const cmp = comparator(this.query.sort);
    const shown = this.table.orders();
    const { offset, limit } = this.query;
    let index = shown.findIndex((o) => cmp(order, o) < 0);
    if (index === -1) index = shown.length;
    const atEnd = offset + shown.length >= this.filtered - (hint ? 1 : 0); // nothing after this page
    const fits = (index > 0 || offset === 0) && (index < shown.length || (shown.length < limit && atEnd));
    if (!fits) {
      if (hint) this.setHint(this.newCount + 1, this.newBefore + (index === 0 ? 1 : 0));
      return;
    }
    this.table.insertAt(order, index);
    if (this.table.size > limit) this.table.dropLast();
  }

  setHint(count, before) {
    this.newCount = count;
    this.newBefore = before;
    this.dispatchEvent(new Event('hint'));
  }

  /** The hint was clicked: show the new orders (first page if they sort before this one). */
  showNew() {
    if (this.newBefore > 0) this.query.offset = 0;
    this.load();
  }

  emitInfo() {
    this.dispatchEvent(new Event('info'));
  }

  // --- query changes ------------------------------------------------------------------------

  setQuery(changes) {
    Object.assign(this.query, changes);
    this.load();
  }
}
