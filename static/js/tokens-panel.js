// The dashboard's "API tokens" panel: list your tokens, create one (its secret shown once), revoke.

import { h, notify, shortTime } from './dom.js';
import { createToken, listTokens, revokeToken } from './api.js';
import { confirmButton } from './order-actions.js';

export class TokensPanel {
  constructor(root) {
    this.root = root;
    this.list = root.querySelector('[data-role="tokens"]');
    this.empty = root.querySelector('[data-role="empty"]');
    this.form = root.querySelector('form');
    this.error = root.querySelector('[data-error-for="name"]');
    this.secretBox = root.querySelector('[data-role="secret"]');
    this.form.addEventListener('submit', (event) => { event.preventDefault(); this.create(); });
    this.secretBox.querySelector('[data-action="copy"]').addEventListener('click', () => this.copy());
    this.secretBox.querySelector('[data-action="done"]').addEventListener('click', () => this.hideSecret());
    // Loaded when first opened: most visits never look at tokens.
    root.addEventListener('toggle', () => { if (root.open && !this.loaded) this.load(); });
    if (root.open) this.load();
  }

  async load() {
    this.loaded = true;
    try {
      const { items } = await listTokens();
      this.render(items);
    } catch (err) {
      this.loaded = false;
      notify(err.message || String(err), 'error');
    }
  }

  render(items) {
    this.list.replaceChildren(...items.map((token) => h('tr', { dataset: { id: token.id } },
      h('td', { dataset: { col: 'name' } }, token.name || '(unnamed)'),
      h('td', { title: token.created_at }, shortTime(token.created_at)),
      h('td', { title: token.last_used_at || 'never used' },
        token.last_used_at ? shortTime(token.last_used_at) : 'never'),
      h('td', { dataset: { col: 'actions' } },
        confirmButton('Revoke', 'Sure?', `Revoke token ${token.name}`, (button) => this.revoke(token, button))),
    )));
    this.empty.hidden = items.length > 0;
  }

  async create() {
    const input = this.form.elements.name;
    this.showError('');
    const button = this.form.querySelector('[type=submit]');
    button.disabled = true;
    try {
      const created = await createToken(input.value.trim());
      input.value = '';
      this.showSecret(created.token);
      await this.load();
    } catch (err) {
      this.showError((err.fields && err.fields.name) || err.message || String(err));
    } finally {
      button.disabled = false;
    }
  }

  async revoke(token, button) {
    button.disabled = true;
    try {
      await revokeToken(token.id);
      notify(`Token "${token.name}" revoked.`);
      await this.load();
    } catch (err) {
      notify(err.message || String(err), 'error');
      button.disabled = false;
    }
  }

  showError(message) {
    this.error.textContent = message;
    this.error.hidden = !message;
    this.form.elements.name.setAttribute('aria-invalid', message ? 'true' : 'false');
  }

  showSecret(secret) {
    const field = this.secretBox.querySelector('input');
    field.value = secret;
    this.secretBox.hidden = false;
    field.focus();
    field.select();
  }

  hideSecret() {
    // Gone from the page once dismissed: the server cannot show it again either.
    this.secretBox.querySelector('input').value = '';
    this.secretBox.hidden = true;
  }

  async copy() {
    const field = this.secretBox.querySelector('input');
    try {
      await navigator.clipboard.writeText(field.value);
      notify('Token copied.');
    } catch {
      field.select(); // no clipboard access (plain http on another host): select for Ctrl+C
      notify('Press Ctrl+C (⌘C) to copy the selected token.');
    }
  }
}

const panel = document.getElementById('tokens-panel');
if (panel) new TokensPanel(panel);
