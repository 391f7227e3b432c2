// What the stream has told us per order id: the highest version seen (a tombstone when a delete said it), newest order.
//
// The rule (docs/protocol.md, "Versions and tombstones"): an insert/update applies only above every version known for
// its id; a delete at version v applies unless a higher version is known, and then hides everything at or below v.
// Replays may deliver a delete before an update of the same version (transaction order): it stays deleted.

const REMEMBER_IDS = 20000; // ids remembered; those changed longest ago are forgotten first

export class VersionBook {
  constructor() {
    this.known = new Map(); // id -> {version, deleted}: the highest version seen (Map order: oldest change first)
    this.latest = new Map(); // id -> newest full order seen in an insert/update event (none for tombstones)
  }

  /** Record an insert/update; false when it is not above what we know (stale, duplicate or deleted). */
  record(order, shownVersion = -1) {
    const id = Number(order.id);
    const version = Number(order.version);
    if (!Number.isFinite(version) || version <= Math.max(this.versionOf(id), shownVersion)) return false;
    this.remember(id, version, false);
    this.latest.set(id, order);
    return true;
  }

  /**
   * Record a delete at `version` (the version it deleted, or an owner move's new version); false when it changes
   * nothing: a newer version is known (`shownVersion`: the row on screen), or it was deleted at that version already.
   */
  recordDelete(id, version, shownVersion = -1) {
    const known = this.known.get(id);
    // A delete without a version (not sent by this server) hides what we know, no more.
    const v = Number.isFinite(Number(version)) ? Number(version) : Math.max(this.versionOf(id), shownVersion, 0);
    if (v < Math.max(known && !known.deleted ? known.version : -1, shownVersion)) return false; // brought back since
    if (known && known.deleted && v <= known.version) return false; // duplicate, or an older tombstone
    this.remember(id, v, true);
    this.latest.delete(id);
    return true;
  }

  /** Is the id's highest known version a delete? */
  isDeleted(id) {
    return this.known.get(Number(id))?.deleted === true;
  }

  /** Reconcile a row from a page load: null if a delete at its version or later is known, else the newest we have. */
  reconcile(order) {
    const id = Number(order.id);
    const version = Number(order.version);
    const known = this.known.get(id);
    if (known && known.deleted && version <= known.version) return null;
    const newer = this.latest.get(id);
    const best = newer && Number(newer.version) > version ? newer : order;
    if (!known || known.deleted || Number(best.version) > known.version) this.remember(id, Number(best.version), false);
    return best;
  }

  /** The highest version known for the id (a tombstone's included); -1 when none. */
  versionOf(id) {
    return this.known.get(Number(id))?.version ?? -1;
  }

  remember(id, version, deleted) {
    this.known.delete(id);
    this.known.set(id, { version, deleted });
    if (this.known.size > REMEMBER_IDS) {
      const oldest = this.known.keys().next().value;
      this.known.delete(oldest);
      this.latest.delete(oldest);
    }
  }
}
