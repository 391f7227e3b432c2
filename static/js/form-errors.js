// Shows an API error on a form: field messages beside their inputs, the rest in the form's alert line.

import { ApiError } from './api.js';

/** Show `message` under the input `name` (via [data-error-for=name]); false if the form has no such field. */
export function setFieldError(form, name, message) {
  const el = form.elements.namedItem(name);
  const slot = form.querySelector(`[data-error-for="${name}"]`);
  if (!el || !slot || (el.closest && el.closest('[hidden]'))) return false;
  slot.textContent = message || '';
  slot.hidden = !message;
  if (message) el.setAttribute('aria-invalid', 'true');
  else el.removeAttribute('aria-invalid');
  return true;
}

export function setFormError(form, message) {
  const slot = form.querySelector('[data-error-for="_form"]');
  if (!slot) return;
  slot.textContent = message || '';
  slot.hidden = !message;
}

export function clearErrors(form) {
  for (const slot of form.querySelectorAll('[data-error-for]')) {
    slot.textContent = '';
    slot.hidden = true;
  }
  for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
}

/** Clear a field's error as soon as the user edits it. */
export function clearOnInput(form) {
  form.addEventListener('input', (ev) => {
    if (ev.target.name) setFieldError(form, ev.target.name, '');
  });
}

export function showApiError(form, err) {
  if (!(err instanceof ApiError)) {
    setFormError(form, `Could not reach the server: ${err.message || err}`);
    return;
  }
  const leftover = [];
  let placed = 0;
  for (const [name, message] of Object.entries(err.fields)) {
    if (setFieldError(form, name, message)) placed += 1;
    else leftover.push(`${name}: ${message}`);
  }
  if (!placed || leftover.length) setFormError(form, [err.message, ...leftover].join(' — '));
  const firstBad = form.querySelector('[aria-invalid="true"]');
  if (firstBad) firstBad.focus();
}
