// The list query in the browser: sort specs, a comparator that mirrors the server's ORDER BY, search matching.

import { compare as compareDecimal } from './decimal.js';

// The list's exact-match filters (GET /api/orders?status=&side=), with the values the schema allows.
export const FILTERS = {
  status: ['new', 'partially_filled', 'filled', 'cancelled', 'rejected'],
  side: ['buy', 'sell'],
};

export const SORTABLE = [
  'id', 'owner', 'instrument', 'side', 'quantity', 'price', 'status', 'version', 'created_at', 'updated_at',
];
const INTEGER = new Set(['id', 'owner_id', 'version']);
const DECIMAL = new Set(['quantity', 'price']);

/** "-price,id" -> [{col: 'price', desc: true}, {col: 'id', desc: false}] (unknown columns dropped). */
export function parseSort(text) {
  return String(text || '')
    .split(',')
    .map((part) => part.trim())
    .filter(Boolean)
    .map((part) => ({ col: part.replace(/^[-+]/, ''), desc: part.startsWith('-') }))
    .filter((key) => SORTABLE.includes(key.col));
}

/** The sort sent to the API: the chosen column, then id in the same direction so pages are stable. */
export function sortParam(col, desc) {
  const first = `${desc ? '-' : ''}${col}`;
  return col === 'id' ? first : `${first},${desc ? '-' : ''}id`;
}

function compareValues(col, a, b) {
  if (a === b) return 0;
  if (a === null || a === undefined) return 1; // NULLS LAST, as PostgreSQL sorts ascending
  if (b === null || b === undefined) return -1;
  if (INTEGER.has(col)) return Number(a) - Number(b);
  if (DECIMAL.has(col)) return compareDecimal(a, b) ?? 0;
  // Text and ISO timestamps (same zone and format from one server): code-point order.
  return a < b ? -1 : a > b ? 1 : 0;
}

/** A compare(a, b) for orders under a sort spec; remaining ties end on id descending, as the server's do. */
export function comparator(sortText) {
  const keys = parseSort(sortText);
  return (a, b) => {
    for (const { col, desc } of keys) {
      const c = compareValues(col, a[col], b[col]);
      if (c !== 0) return desc ? -c : c;
    }
    return Number(b.id) - Number(a.id);
  };
}

/** Does the order match the search box? Words ANDed, each a case-insensitive substring of one searched field. */
export function matchesSearch(order, q) {
  const words = String(q || '').toLowerCase().split(/\s+/).filter(Boolean);
  if (words.length === 0) return true;
  const hay = [order.instrument, order.side, order.status, order.owner, order.id, order.quantity, order.price]
    .map((v) => String(v ?? '').toLowerCase());
  return words.every((w) => hay.some((v) => v.includes(w)));
}

/** Does the order pass the query's status and side filters (exact values)? */
export function matchesFilters(order, query) {
  return Object.keys(FILTERS).every((key) => !query[key] || order[key] === query[key]);
}

/** Does the order belong in the list under this query: the filters and the search box? */
export function matchesQuery(order, query) {
  return matchesFilters(order, query) && matchesSearch(order, query.q);
}

/** Does the query narrow the list at all (search or a filter)? */
export function isNarrowed(query) {
  return Boolean(query.q) || Object.keys(FILTERS).some((key) => Boolean(query[key]));
}
