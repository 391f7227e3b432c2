// The order entry form: create an order, or edit one, through the API, with the API's field errors inline.

import { createOrder, updateOrder } from './api.js';
import { showApiError, clearErrors, clearOnInput } from './form-errors.js';
import { notify } from './dom.js';

const FIELDS = ['owner_id', 'instrument', 'side', 'quantity', 'price', 'status'];

export class OrderForm {
  /** form: the <form id="order-form">; onSaved(order, created) after a successful write. */
  constructor(form, { onSaved = () => {} } = {}) {
    this.form = form;
    this.onSaved = onSaved;
    this.editing = null; // the order being edited, as last loaded into the form
    this.dirty = false;
    this.title = form.querySelector('[data-role="title"]');
    this.submitButton = form.querySelector('button[type="submit"]');
    this.newButton = form.querySelector('[data-action="new"]');
    form.addEventListener('submit', (ev) => { ev.preventDefault(); this.submit(); });
    form.addEventListener('input', () => { this.dirty = true; });
    clearOnInput(form);
    this.newButton?.addEventListener('click', () => this.reset());
    form.addEventListener('keydown', (ev) => { if (ev.key === 'Escape' && this.editing) this.reset(); });
    this.reset();
  }

  field(name) {
    return this.form.elements.namedItem(name);
  }

  /** Fill the form with an order to edit (statuses and price/qty become editable). */
  edit(order, { focus = true } = {}) {
    this.editing = order;
    this.dirty = false;
    clearErrors(this.form);
    for (const name of FIELDS) {
      const el = this.field(name);
      if (el && order[name] !== undefined) el.value = String(order[name]);
    }
    this.form.dataset.mode = 'edit';
    this.title.textContent = `Edit order #${order.id}`;
    this.submitButton.textContent = 'Save changes';
    this.toggleModeFields();
    if (this.newButton) this.newButton.hidden = false;
    if (focus) this.field('quantity')?.focus();
  }

  reset() {
    this.editing = null;
    this.dirty = false;
    this.form.reset();
    clearErrors(this.form);
    this.form.dataset.mode = 'create';
    this.title.textContent = 'New order';
    this.submitButton.textContent = 'Place order';
    this.toggleModeFields();
    if (this.newButton) this.newButton.hidden = true;
  }

  toggleModeFields() {
    const editing = this.form.dataset.mode === 'edit';
    for (const el of this.form.querySelectorAll('[data-only]')) {
      el.hidden = el.dataset.only !== (editing ? 'edit' : 'create');
    }
  }

  /** The stream changed an order: keep the edit form in step (unless the user is typing). */
  orderChanged(op, order) {
    if (!this.editing || Number(order.id) !== Number(this.editing.id)) return;
    if (op === 'delete') {
      this.reset();
      notify(`Order #${order.id} was deleted.`, 'error');
    } else if (!this.dirty) {
      this.edit(order, { focus: false });
    } else {
      this.editing = order;
    }
  }

  body() {
    const out = {};
    for (const name of FIELDS) {
      const el = this.field(name);
      if (!el || el.closest('[hidden]')) continue;
      let value = el.value.trim();
      if (name === 'instrument') value = value.toUpperCase();
      if (name === 'owner_id') {
        if (!value) continue;
        out[name] = Number(value);
        continue;
      }
      if (this.editing && String(this.editing[name]) === value) continue; // send what changed only
      if (!this.editing && name === 'status' && !value) continue;
      out[name] = value;
    }
    return out;
  }

  async submit() {
    clearErrors(this.form);
    const body = this.body();
    const editing = this.editing;
    if (editing && Object.keys(body).length === 0) {
      this.reset();
      return;
    }
    this.submitButton.disabled = true;
    try {
      const order = editing ? await updateOrder(editing.id, body) : await createOrder(body);
      notify(editing ? `Order #${order.id} saved.` : `Order #${order.id} placed.`);
      this.reset();
      this.onSaved(order, !editing);
    } catch (err) {
      showApiError(this.form, err);
    } finally {
      this.submitButton.disabled = false;
    }
  }
}
