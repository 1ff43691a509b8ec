// dialog.js - the confirmation dialog every action goes through.
//
// An action (cancel a run; promote, roll back, pause or resume a release)
// is never one click: the button opens a modal <dialog> that says what will
// happen, asks for the reason otacd records in its audit log, offers the
// action's options (checkboxes), and acts only on its confirm button.  The
// request goes to the same API otactl uses; if otacd refuses (409 with its
// reason, 403 for a viewer token, a network error) the dialog stays open
// and shows otacd's words, so nothing fails silently.
//
// Keyboard: the dialog is modal (showModal makes the rest of the page
// inert), focus starts in the reason field, Tab and Shift+Tab cycle inside
// the dialog, Escape cancels, and focus returns to the button that opened
// it.  Leaving the view (the address changes) cancels the dialog.

import { h } from './util.js';

let seq = 0;

function focusables(root) {
  return [...root.querySelectorAll('button, input, textarea, select, a[href]')]
    .filter((el) => !el.disabled && !el.hidden && el.offsetParent !== null);
}

// askAction({title, text, confirm, danger, options: [{name, label}],
//            act: async (reason, opts) => answer}) -> the answer, or null
// when the person cancelled.
export function askAction(spec) {
  const id = 'act-' + (++seq);
  // the opener may be re-rendered while the dialog is open (views redraw on
  // every event): find it again by its data-key
  const opener = document.activeElement;
  const openerKey = opener && opener.getAttribute ? opener.getAttribute('data-key') : null;
  const reason = h('textarea', { id: id + '-reason', name: 'reason', rows: 3, 'aria-required': 'true', maxlength: 2000,
    'aria-describedby': id + '-hint', autocomplete: 'off' });
  const boxes = (spec.options || []).map((o) => h('label', { class: 'check' },
    h('input', { type: 'checkbox', name: o.name, 'data-option': o.name }), ' ', o.label));
  const err = h('p', { class: 'dialog-error', role: 'alert', hidden: true });
  const ok = h('button', { type: 'submit', class: spec.danger ? 'danger' : 'primary', 'data-confirm': '1' }, spec.confirm);
  const cancel = h('button', { type: 'button', 'data-cancel': '1' }, 'Cancel');
  const form = h('form', { method: 'dialog', class: 'dialog-form' },
    h('h2', { id: id + '-title' }, spec.title),
    h('p', { id: id + '-text' }, spec.text),
    h('label', { for: id + '-reason', class: 'reason-label' }, 'Reason (recorded in the audit log)'),
    reason,
    h('p', { id: id + '-hint', class: 'muted small' }, 'Required. Say why, for whoever reads the audit log later.'),
    boxes.length ? h('div', { class: 'options' }, boxes) : null,
    err,
    h('div', { class: 'dialog-buttons' }, cancel, ok));
  const dlg = h('dialog', { class: 'action-dialog', 'aria-labelledby': id + '-title', 'aria-describedby': id + '-text',
    'data-action': spec.action || '' }, form);
  document.body.append(dlg);

  return new Promise((resolve) => {
    let result = null;
    const close = () => { if (dlg.open) dlg.close(); };
    // leaving the view (back button, a link) drops the question
    window.addEventListener('hashchange', close);
    dlg.addEventListener('close', () => {
      window.removeEventListener('hashchange', close);
      dlg.remove();
      let back = opener;
      if ((!back || !back.isConnected) && openerKey) back = document.querySelector('[data-key="' + CSS.escape(openerKey) + '"]');
      if (back && back.isConnected && typeof back.focus === 'function') back.focus();
      resolve(result);
    });
    dlg.addEventListener('keydown', (e) => {
      if (e.key !== 'Tab') return;
      const f = focusables(dlg);
      if (!f.length) return;
      const first = f[0], last = f[f.length - 1];
      if (e.shiftKey && document.activeElement === first) { e.preventDefault(); last.focus(); }
      else if (!e.shiftKey && document.activeElement === last) { e.preventDefault(); first.focus(); }
    });
    cancel.addEventListener('click', close);
    reason.addEventListener('input', () => { if (reason.value.trim()) err.hidden = true; });
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const why = reason.value.trim();
      if (!why) {
        err.textContent = 'A reason is required.';
        err.hidden = false;
        reason.focus();
        return;
      }
      const opts = {};
      for (const b of form.querySelectorAll('input[type=checkbox]')) opts[b.name] = b.checked;
      ok.disabled = true;
      cancel.disabled = true;
      err.hidden = true;
      const label = ok.textContent;
      ok.textContent = 'Working…';
      try {
        result = (await spec.act(why, opts)) || {};
        close();
      } catch (ex) {
        err.textContent = (spec.confirm + ' failed: ') + (ex && ex.message ? ex.message : String(ex));
        err.hidden = false;
        ok.disabled = false;
        cancel.disabled = false;
        ok.textContent = label;
        ok.focus();
      }
    });
    dlg.showModal();
    reason.focus();
  });
}
