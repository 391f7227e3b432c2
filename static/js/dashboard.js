// The dashboard page: the user's orders kept live, monitor, realtime toggle, order entry, quotes.

import { currentUser, notify, setTimeMode, timeMode } from './dom.js';
import { startLivePage } from './live-page.js';
import { OrdersTable } from './orders-table.js';
import { OrderFeed } from './order-feed.js';
import { bindTableControls, queryFromUrl } from './table-controls.js';
import { Monitor } from './monitor.js';
import { QuoteBook } from './quotes.js';
import { QuotesPanel } from './quotes-panel.js';
import { PnlTotals } from './pnl-total.js';
import { TableKeys } from './table-keys.js';
import { OrderForm } from './order-form.js';
import { orderActions } from './order-actions.js';

const $ = (id) => document.getElementById(id);
const user = currentUser();
const { socket, latency } = startLivePage();
const quotes = new QuoteBook(socket);
const form = new OrderForm($('order-form'), { onSaved: () => { if (!feed.realtime || !socket.isOpen) feed.load(); } });

const table = new OrdersTable($('orders'), {
  columns: ['id', 'instrument', 'side', 'quantity', 'price', 'last', 'pnl', 'status', 'version', 'updated_at', 'actions'],
  onSort: () => {}, // replaced by bindTableControls
  actions: orderActions({ onEdit: (order) => form.edit(table.get(order.id) || order) }),
  quoteCells: (order) => quotes.cellsFor(order),
});

// Staff see everyone's orders through the API; the dashboard is their own blotter, like everyone's.
const ownerParam = user.isStaff && user.id !== null ? String(user.id) : '';
const defaults = { limit: 25, offset: 0, sort: '-id', q: '', owner: ownerParam };
const feed = new OrderFeed({
  table,
  socket,
  query: { ...queryFromUrl(defaults), owner: ownerParam },
  subscription: () => ({ op: 'subscribe', channel: 'orders' }),
  accepts: (order) => user.id === null || Number(order.owner_id) === user.id,
});
bindTableControls(feed, defaults);

const monitor = new Monitor($('monitor'), $('monitor-empty'));
feed.addEventListener('order-event', ({ detail: { frame, receivedAt } }) => {
  latency.record(frame.ts, receivedAt);
  monitor.add(frame, receivedAt - Number(frame.ts));
});
feed.addEventListener('applied', ({ detail: { op, order } }) => form.orderChanged(op, order));
feed.addEventListener('error', ({ detail }) => notify(detail, 'error'));

const realtime = $('realtime');
realtime.checked = true;
realtime.addEventListener('change', () => {
  feed.setRealtime(realtime.checked);
  quotes.setEnabled(realtime.checked);
  if (realtime.checked) monitor.clear('Waiting for changes…');
  else monitor.clear('Realtime is off: the table is not updated and no events are listed.');
  $('orders-region').classList.toggle('paused', !realtime.checked);
});

// Quotes: follow the instruments on the page; show Last and uP&L once any quote has arrived.
const pnl = new PnlTotals({ onScreen: $('pnl-screen'), all: $('pnl-all'), orders: () => table.orders(), book: quotes });
new QuotesPanel($('quotes'), quotes, $('quotes-empty'));
const followQuotes = () => { quotes.follow(table.instruments()); pnl.refresh(); };
feed.addEventListener('loaded', followQuotes);
feed.addEventListener('applied', followQuotes);
quotes.addEventListener('first', () => $('orders-region').classList.remove('no-quotes'));
quotes.addEventListener('quote', ({ detail: instrument }) => { table.refreshQuotes(instrument); pnl.refresh(); });

// Keyboard: arrows move the selected row, Enter edits it (see #table-keys-help).
new TableKeys($('orders').closest('.table-scroll'), table, (order) => form.edit(order));

// Times in local time or UTC, remembered by the browser.
const timeButton = $('time-mode');
const showTimeMode = () => {
  const utc = timeMode() === 'utc';
  timeButton.textContent = utc ? 'Times: UTC' : 'Times: local';
};
showTimeMode();
timeButton.addEventListener('click', () => setTimeMode(timeMode() === 'utc' ? 'local' : 'utc'));
document.addEventListener('timemodechange', () => { showTimeMode(); table.refreshTimes(); });

socket.start();
feed.start();
