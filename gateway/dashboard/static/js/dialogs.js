// Modal <dialog>s: focus handling, the admin-token prompt and the confirmation dialog.

import { byId, fill, show } from './dom.js';

/**
 * Open a modal dialog; when it closes, focus returns to `opener` (or a fallback) so keyboard
 * users continue where they were. Escape closes it (native `cancel`).
 * @param {HTMLDialogElement} dialog
 * @param {{opener?: Element|null, focus?: HTMLElement|null}} [options]
 */
export function openDialog(dialog, { opener = document.activeElement, focus = null } = {}) {
  // After the frame in which pending renders run: the card the opener belonged to may be
  // gone by then (deleted server), and focus then goes to the servers heading.
  const restore = () => {
    requestAnimationFrame(() => {
      const target = opener && opener.isConnected && !opener.disabled ? opener : byId('servers-heading');
      target.focus?.();
    });
  };
  dialog.addEventListener('close', restore, { once: true });
  if (!dialog.open) dialog.showModal();
  (focus || dialog.querySelector('[autofocus]') || dialog.querySelector('input, select, textarea, button'))?.focus();
}

/** Make every `[data-close]` button inside dialogs close its dialog. */
export function wireCloseButtons(root = document) {
  for (const button of root.querySelectorAll('dialog [data-close]')) {
    button.addEventListener('click', () => button.closest('dialog').close('cancel'));
  }
}

/** The admin-token prompt, shown when the API answers 401. One prompt at a time. */
export class TokenPrompt {
  /** @param {import('./api.js').Api} api */
  constructor(api, { onChange } = {}) {
    this.api = api;
    this.onChange = onChange || (() => {});
    this.dialog = byId('token-dialog');
    this.form = byId('token-form');
    this.input = byId('token-input');
    this.text = byId('token-text');
    this.error = byId('token-error');
    this.forget = byId('token-forget');
    this.pending = null;
    this.resolve = null;

    this.form.addEventListener('submit', (event) => {
      event.preventDefault();
      const token = this.input.value.trim();
      if (!token) {
        fill(this.error, 'Enter the admin token.');
        show(this.error, true);
        this.input.focus();
        return;
      }
      this.api.token = token;
      this.finish(true);
      this.onChange(true);
    });
    this.forget.addEventListener('click', () => {
      this.api.token = null;
      this.finish(false);
      this.onChange(false);
    });
    this.dialog.addEventListener('close', () => this.finish(false));
  }

  /**
   * Ask for the token. Resolves true when one was entered.
   * @param {string} message why it is needed
   * @param {{invalid?: boolean}} [info] the token sent was refused
   */
  ask(message, { invalid = false } = {}) {
    if (this.pending) return this.pending;
    this.text.textContent = message || 'This gateway needs its admin token.';
    fill(this.error, invalid ? 'The token you entered was not accepted.' : '');
    show(this.error, invalid);
    show(this.forget, Boolean(this.api.token));
    this.input.value = '';
    this.pending = new Promise((resolve) => {
      this.resolve = resolve;
    });
    openDialog(this.dialog, { focus: this.input });
    return this.pending;
  }

  /** Open the prompt from the header button (change or forget the token). */
  manage() {
    return this.ask(
      this.api.token
        ? 'A token is kept for this tab. Enter a new one, or forget it.'
        : 'Enter the admin token to make changes (and to read, if this gateway protects reads).',
    );
  }

  finish(result) {
    const resolve = this.resolve;
    this.resolve = null;
    this.pending = null;
    if (this.dialog.open) this.dialog.close();
    resolve?.(result);
  }
}

/** A confirmation dialog running an async action; an error keeps it open and is shown in it. */
export class ConfirmDialog {
  constructor() {
    this.dialog = byId('confirm-dialog');
    this.title = byId('confirm-title');
    this.text = byId('confirm-text');
    this.error = byId('confirm-error');
    this.ok = byId('confirm-ok');
    this.action = null;
    this.ok.addEventListener('click', () => this.run());
  }

  /**
   * @param {{title: string, text: string, okLabel: string, action: () => Promise<*>, describeError: (e: Error) => string, opener?: Element}} options
   */
  open({ title, text, okLabel, action, describeError, opener }) {
    this.title.textContent = title;
    this.text.textContent = text;
    this.ok.textContent = okLabel;
    this.ok.disabled = false;
    this.action = action;
    this.describeError = describeError || ((e) => e.message);
    show(this.error, false);
    openDialog(this.dialog, { opener });
  }

  async run() {
    if (!this.action) return;
    this.ok.disabled = true;
    show(this.error, false);
    let refused = false;
    try {
      await this.action();
      this.dialog.close('done');
    } catch (error) {
      // A conflict (409) is a definitive refusal: trying again cannot succeed.
      refused = error?.status === 409;
      fill(this.error, this.describeError(error));
      show(this.error, true);
      this.dialog.querySelector('[data-close]')?.focus();
    } finally {
      this.ok.disabled = refused;
    }
  }
}
