// Row buttons for an order: edit, cancel (PATCH status 'cancelled'), delete (staff; a second click confirms).

import { h, notify } from './dom.js';
import { updateOrder, deleteOrder } from './api.js';

const CANCELLABLE = new Set(['new', 'partially_filled']);
const CONFIRM_MS = 3000;

async function run(button, action, doneMessage) {
  button.disabled = true;
  try {
    await action();
    notify(doneMessage);
  } catch (err) {
    notify(err.message || String(err), 'error');
    button.disabled = false;
  }
}

/** A button that asks "Sure?" on the first click and acts on the second (no modal dialogs). */
export function confirmButton(label, confirmLabel, ariaLabel, action) {
  let armed = 0;
  const button = h('button', { type: 'button', class: 'btn-small btn-danger', 'aria-label': ariaLabel }, label);
  button.addEventListener('click', () => {
    if (!armed) {
      button.textContent = confirmLabel;
      button.classList.add('armed');
      armed = setTimeout(() => {
        armed = 0;
        button.textContent = label;
        button.classList.remove('armed');
      }, CONFIRM_MS);
      return;
    }
    clearTimeout(armed);
    armed = 0;
    action(button);
  });
  return button;
}

/** Builds the actions cell content for a row. `onEdit(order)` opens the form. */
export function orderActions({ onEdit, canDelete = false }) {
  return (order) => {
    const nodes = [
      h('button', {
        type: 'button', class: 'btn-small', 'aria-label': `Edit order ${order.id}`, onclick: () => onEdit(order),
      }, 'Edit'),
    ];
    if (CANCELLABLE.has(order.status)) {
      // Cancelling is the trader's quick action: one click, no confirmation.
      const cancel = h('button', { type: 'button', class: 'btn-small', 'aria-label': `Cancel order ${order.id}` }, 'Cancel');
      cancel.addEventListener('click', () =>
        run(cancel, () => updateOrder(order.id, { status: 'cancelled' }), `Order #${order.id} cancelled.`));
      nodes.push(cancel);
    }
    if (canDelete) {
      nodes.push(confirmButton('Delete', 'Sure?', `Delete order ${order.id}`, (button) =>
        run(button, () => deleteOrder(order.id), `Order #${order.id} deleted.`)));
    }
    return nodes;
  };
}
