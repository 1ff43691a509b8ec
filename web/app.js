// otacd status page: reads the public JSON API only.  A viewer token may be
// given once as #token=... in the address; it is kept in localStorage.
'use strict';
(function () {
  const m = location.hash.match(/token=([0-9a-f]+)/);
  if (m) { localStorage.setItem('otacd-token', m[1]); history.replaceState(null, '', '/'); }
  const token = localStorage.getItem('otacd-token');
  const status = document.getElementById('status');

  async function api(path) {
    const headers = token ? { Authorization: 'Bearer ' + token } : {};
    const r = await fetch(path, { headers });
    if (!r.ok) throw new Error(path + ': HTTP ' + r.status);
    return r.json();
  }

  function cell(tr, text, cls) {
    const td = document.createElement('td');
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
  }

  async function refresh() {
    try {
      const data = await api('/api/v1/runs?limit=50');
      const body = document.querySelector('#runs tbody');
      body.replaceChildren();
      for (const run of data.runs) {
        const tr = document.createElement('tr');
        cell(tr, '#' + run.id);
        cell(tr, run.pipeline);
        cell(tr, run.ref);
        cell(tr, run.state, 'state ' + run.state);
        cell(tr, new Date(run.created_at).toISOString().replace('T', ' ').slice(0, 19));
        body.appendChild(tr);
      }
      status.textContent = 'updated ' + new Date().toLocaleTimeString();
    } catch (e) {
      status.textContent = 'error: ' + e.message;
    }
  }
  refresh();
  setInterval(refresh, 2000);
})();
