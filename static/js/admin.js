// The staff admin page: every order (owner filter), create/edit/delete any order, user management.

import { notify, h } from './dom.js';
import { startLivePage } from './live-page.js';
import { OrdersTable } from './orders-table.js';
import { OrderFeed } from './order-feed.js';
import { bindTableControls, queryFromUrl } from './table-controls.js';
import { OrderForm } from './order-form.js';
import { orderActions } from './order-actions.js';
import { UsersPanel } from './users.js';

const $ = (id) => document.getElementById(id);
const { socket, latency } = startLivePage();
const ownerFilter = $('owner-filter');
const form = new OrderForm($('order-form'), { onSaved: () => { if (!socket.isOpen) feed.load(); } });

const table = new OrdersTable($('admin-orders'), {
  columns: ['id', 'owner', 'instrument', 'side', 'quantity', 'price', 'status', 'version', 'updated_at', 'actions'],
  onSort: () => {}, // replaced by bindTableControls
  actions: orderActions({ onEdit: (order) => form.edit(table.get(order.id) || order), canDelete: true }),
});

const defaults = { limit: 25, offset: 0, sort: '-id', q: '', owner: '' };
const feed = new OrderFeed({
  table,
  socket,
  query: queryFromUrl(defaults),
  subscription: () => ({ op: 'subscribe', channel: 'orders', owner: feed.query.owner ? Number(feed.query.owner) : '*' }),
  accepts: (order) => !feed.query.owner || Number(order.owner_id) === Number(feed.query.owner),
});
bindTableControls(feed, defaults);
feed.addEventListener('order-event', ({ detail: { frame, receivedAt } }) => latency.record(frame.ts, receivedAt));
feed.addEventListener('applied', ({ detail: { op, order } }) => form.orderChanged(op, order));
feed.addEventListener('error', ({ detail }) => notify(detail, 'error'));

ownerFilter.addEventListener('change', () => {
  feed.query.owner = ownerFilter.value;
  feed.query.offset = 0;
  feed.resubscribe();
});

// Users feed the owner filter and the order form's owner choice.
const users = new UsersPanel($('users'), $('user-form'));
const ownerChoice = $('order-form').elements.namedItem('owner_id');
function fillSelect(select, items, first) {
  const value = select.value || (select === ownerFilter ? String(feed.query.owner || '') : '');
  select.replaceChildren(h('option', { value: '' }, first),
    ...items.map((u) => h('option', { value: u.id }, `${u.username} (#${u.id})`)));
  select.value = items.some((u) => String(u.id) === value) ? value : '';
}
users.addEventListener('users', ({ detail: items }) => {
  fillSelect(ownerFilter, items, 'All owners');
  if (ownerChoice) fillSelect(ownerChoice, items, 'Me');
});

socket.start();
feed.start();
users.load();
