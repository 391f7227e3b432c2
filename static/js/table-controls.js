// Search box, status and side filters, page size, pager, "Showing a–b of n" line and the new-orders hint, bound to an OrderFeed.

import { FILTERS, sortParam, parseSort } from './order-query.js';

const SEARCH_DEBOUNCE_MS = 250;
const PAGE_SIZES = [10, 25, 50, 100, 250];
const DESC_FIRST = new Set(['id', 'version', 'created_at', 'updated_at', 'quantity', 'price']);

const $ = (id) => document.getElementById(id);

/** Read the view from the page URL (?q=&status=&side=&sort=&size=&page=), so a reload keeps it. */
export function queryFromUrl(defaults) {
  const params = new URLSearchParams(location.search);
  const limit = Number(params.get('size'));
  const page = Number(params.get('page'));
  const query = { ...defaults };
  if (PAGE_SIZES.includes(limit)) query.limit = limit;
  if (Number.isInteger(page) && page > 1) query.offset = (page - 1) * query.limit;
  if (params.get('q')) query.q = params.get('q');
  for (const [key, values] of Object.entries(FILTERS)) {
    if (values.includes(params.get(key))) query[key] = params.get(key);
  }
  if (params.get('sort') && parseSort(params.get('sort')).length) query.sort = params.get('sort');
  if (params.get('owner')) query.owner = params.get('owner');
  return query;
}

function writeUrl(query, defaults) {
  const params = new URLSearchParams();
  if (query.q) params.set('q', query.q);
  for (const key of Object.keys(FILTERS)) {
    if (query[key]) params.set(key, query[key]);
  }
  if (query.sort !== defaults.sort) params.set('sort', query.sort);
  if (query.limit !== defaults.limit) params.set('size', query.limit);
  if (query.offset) params.set('page', Math.floor(query.offset / query.limit) + 1);
  if (query.owner && String(query.owner) !== String(defaults.owner ?? '')) params.set('owner', query.owner);
  const search = params.toString();
  const url = `${location.pathname}${search ? `?${search}` : ''}`;
  if (url !== location.pathname + location.search) history.replaceState(null, '', url);
}

export function bindTableControls(feed, defaults) {
  const search = $('search');
  const pageSize = $('page-size');
  const prev = $('prev-page');
  const next = $('next-page');
  const info = $('table-info');
  const hint = $('new-orders-hint');

  if (search) {
    search.value = feed.query.q || '';
    let timer = 0;
    const apply = () => {
      clearTimeout(timer);
      const q = search.value.trim();
      if (q !== feed.query.q) feed.setQuery({ q, offset: 0 });
    };
    search.addEventListener('input', () => {
      clearTimeout(timer);
      timer = setTimeout(apply, SEARCH_DEBOUNCE_MS);
    });
    search.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') { ev.preventDefault(); apply(); } });
    search.addEventListener('search', apply); // the clear (x) button
  }

  for (const key of Object.keys(FILTERS)) {
    const select = $(`filter-${key}`);
    if (!select) continue;
    select.value = feed.query[key] || '';
    select.addEventListener('change', () => feed.setQuery({ [key]: select.value, offset: 0 }));
  }

  if (pageSize) {
    pageSize.value = String(feed.query.limit);
    pageSize.addEventListener('change', () => {
      const limit = Number(pageSize.value);
      // Keep the first row of the current page in view.
      feed.setQuery({ limit, offset: Math.floor(feed.query.offset / limit) * limit });
    });
  }

  prev?.addEventListener('click', () => {
    feed.setQuery({ offset: Math.max(0, feed.query.offset - feed.query.limit) });
  });
  next?.addEventListener('click', () => {
    if (feed.query.offset + feed.query.limit < feed.filtered) {
      feed.setQuery({ offset: feed.query.offset + feed.query.limit });
    }
  });

  hint?.addEventListener('click', () => feed.showNew());

  // Sorting: the table's header buttons call back here.
  feed.table.onSort = (col) => {
    const [primary] = parseSort(feed.query.sort);
    const desc = primary && primary.col === col ? !primary.desc : DESC_FIRST.has(col);
    feed.setQuery({ sort: sortParam(col, desc), offset: 0 });
  };

  const render = () => {
    const shown = feed.table.size;
    const from = shown ? feed.query.offset + 1 : 0;
    const to = feed.query.offset + shown;
    let text = `Showing ${from}–${to} of ${feed.filtered}`;
    if (feed.filtered !== feed.total) text += ` (filtered from ${feed.total})`;
    if (feed.error) text += ` · ${feed.error}`;
    if (info) {
      info.textContent = text;
      info.dataset.total = feed.total;
      info.dataset.filtered = feed.filtered;
    }
    if (prev) prev.disabled = feed.query.offset === 0;
    if (next) next.disabled = feed.query.offset + feed.query.limit >= feed.filtered;
    writeUrl(feed.query, defaults);
  };
  feed.addEventListener('info', render);
  feed.addEventListener('loaded', render);

  feed.addEventListener('hint', () => {
    if (!hint) return;
    const n = feed.newCount;
    hint.hidden = n === 0;
    hint.dataset.count = n;
    hint.textContent = n === 1 ? '1 new order' : `${n} new orders`;
    hint.title = feed.newBefore ? 'Go to the first page' : 'Reload this page';
  });
}
