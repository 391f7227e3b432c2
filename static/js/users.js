// Staff user management: list (#users), create, make/remove staff, reset password, revoke API tokens.

import { listUsers, createUser, updateUser, revokeTokens } from './api.js';
import { h, notify, shortTime } from './dom.js';
import { showApiError, clearErrors, clearOnInput } from './form-errors.js';

export class UsersPanel extends EventTarget {
  /** Events: 'users' (detail: the user list) after every load. */
  constructor(table, form) {
    super();
    this.tbody = table.tBodies[0] || table.appendChild(h('tbody'));
    this.form = form;
    this.users = [];
    form.addEventListener('submit', (ev) => { ev.preventDefault(); this.create(); });
    clearOnInput(form);
  }

  async load() {
    try {
      const { items } = await listUsers();
      this.users = items;
      this.render();
      this.dispatchEvent(new CustomEvent('users', { detail: items }));
    } catch (err) {
      notify(`Could not load users: ${err.message}`, 'error');
    }
  }

  render() {
    const focusedKey = document.activeElement?.dataset?.key;
    this.tbody.replaceChildren(...this.users.map((u) => this.row(u)));
    if (focusedKey) this.tbody.querySelector(`[data-key="${focusedKey}"]`)?.focus();
  }

  row(user) {
    const actions = h('td', { class: 'actions', dataset: { col: 'actions' } }, ...this.actionButtons(user));
    return h('tr', { dataset: { id: user.id } },
      h('th', { scope: 'row', class: 'num', dataset: { col: 'id' } }, user.id),
      h('td', { dataset: { col: 'username' } }, user.username),
      h('td', { dataset: { col: 'is_staff' } }, user.is_staff ? h('span', { class: 'badge' }, 'staff') : ''),
      h('td', { class: 'col-optional', dataset: { col: 'created_at' }, title: user.created_at }, shortTime(user.created_at)),
      h('td', { class: 'num', dataset: { col: 'tokens' } }, user.tokens ?? 0),
      actions);
  }

  actionButtons(user) {
    const button = (label, key, aria, onclick) =>
      h('button', { type: 'button', class: 'btn-small', 'aria-label': aria, dataset: { key: `${key}-${user.id}` }, onclick }, label);
    return [
      button(user.is_staff ? 'Remove staff' : 'Make staff', 'staff',
        `${user.is_staff ? 'Remove staff from' : 'Make staff'} ${user.username}`,
        (ev) => this.act(ev.currentTarget, () => updateUser(user.id, { is_staff: !user.is_staff }),
          `${user.username} is ${user.is_staff ? 'no longer' : 'now'} staff.`)),
      button('Reset password', 'password', `Reset password of ${user.username}`,
        (ev) => this.askPassword(ev.currentTarget.closest('td'), user)),
      button('Revoke tokens', 'tokens', `Revoke API tokens of ${user.username}`,
        (ev) => this.act(ev.currentTarget, async () => {
          const { revoked } = await revokeTokens(user.id);
          notify(`Revoked ${revoked} token${revoked === 1 ? '' : 's'} of ${user.username}.`);
        })),
    ];
  }

  async act(button, action, message = '') {
    button.disabled = true;
    try {
      await action();
      if (message) notify(message);
      await this.load();
    } catch (err) {
      notify(err.message || String(err), 'error');
      button.disabled = false;
    }
  }

  /** Swap the actions cell for a small password form; Escape or Cancel puts the buttons back. */
  askPassword(cell, user) {
    const input = h('input', {
      type: 'password', name: 'password', autocomplete: 'new-password', required: true,
      'aria-label': `New password for ${user.username}`, class: 'input-small',
    });
    const restore = () => {
      cell.replaceChildren(...this.actionButtons(user));
      cell.querySelector(`[data-key="password-${user.id}"]`)?.focus();
    };
    const error = h('span', { class: 'field-error', role: 'alert', hidden: true });
    const form = h('form', { class: 'inline-form' }, input,
      h('button', { type: 'submit', class: 'btn-small btn-primary' }, 'Set'),
      h('button', { type: 'button', class: 'btn-small', onclick: restore }, 'Cancel'), error);
    form.addEventListener('keydown', (ev) => { if (ev.key === 'Escape') restore(); });
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      try {
        await updateUser(user.id, { password: input.value });
        notify(`Password of ${user.username} reset.`);
        restore();
      } catch (err) {
        error.textContent = err.fields?.password || err.message;
        error.hidden = false;
        input.setAttribute('aria-invalid', 'true');
        input.focus();
      }
    });
    cell.replaceChildren(form);
    input.focus();
  }

  async create() {
    clearErrors(this.form);
    const f = this.form.elements;
    const body = {
      username: f.namedItem('username').value.trim(),
      password: f.namedItem('password').value,
      is_staff: f.namedItem('is_staff').checked,
    };
    const submit = this.form.querySelector('button[type="submit"]');
    submit.disabled = true;
    try {
      const user = await createUser(body);
      notify(`User ${user.username} created.`);
      this.form.reset();
      await this.load();
    } catch (err) {
      showApiError(this.form, err);
    } finally {
      submit.disabled = false;
    }
  }
}
