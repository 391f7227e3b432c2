// What the stream has told us per order id: highest version, newest full order, deleted ids (bounded).

const REMEMBER_IDS = 20000; // ids remembered; the oldest are forgotten first

export class VersionBook {
  constructor() {
    this.versions = new Map(); // id -> highest version seen (Map keeps insertion order: oldest first)
    this.latest = new Map(); // id -> newest full order seen in an event
    this.deleted = new Set(); // ids deleted (identity ids are never reused)
  }

  /** Record an insert/update; false when it is not newer than what we know (stale or duplicate). */
  record(order, shownVersion = -1) {
    const id = Number(order.id);
    const version = Number(order.version);
    if (this.deleted.has(id) || version <= Math.max(this.versions.get(id) ?? -1, shownVersion)) return false;
    this.remember(id, version);
    this.latest.set(id, order);
    return true;
  }

  recordDelete(id) {
    this.deleted.add(id);
    if (this.deleted.size > REMEMBER_IDS) this.deleted.delete(this.deleted.values().next().value);
    this.latest.delete(id);
    this.versions.delete(id);
  }

  /** Reconcile a row from a page load: null if deleted since, else the newer of it and what events said. */
  reconcile(order) {
    const id = Number(order.id);
    if (this.deleted.has(id)) return null;
    const newer = this.latest.get(id);
    const best = newer && newer.version > order.version ? newer : order;
    this.remember(id, best.version);
    return best;
  }

  remember(id, version) {
    this.versions.delete(id);
    this.versions.set(id, version);
    if (this.versions.size > REMEMBER_IDS) {
      const oldest = this.versions.keys().next().value;
      this.versions.delete(oldest);
      this.latest.delete(oldest);
    }
  }
}
