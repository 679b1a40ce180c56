// rebased dashboard: plain JavaScript over the JSON API, no build step.
// Views are hash routes: #/fleet, #/image/NAME, #/jobs, #/job/ID, #/bases,
// #/graph. The page follows GET /v1/events (EventSource) and re-reads the
// view on each message; without the stream it re-reads every 2 s. Writes
// send the API token from sessionStorage as Authorization: Bearer (asked
// for on a 401); no cookies are used.
'use strict';
(function () {
  const TOKEN_KEY = 'rebased.api-token';
  const POLL_MS = 2000;
  const LOG_MS = 1000;
  const EVENT_TYPES = ['published', 'superseded', 'rolled_back', 'held', 'resumed', 'failed',
    'failing', 'recovered', 'base_error', 'drift', 'repaired', 'test', 'job'];
  const STATES = ['fresh', 'stale', 'queued', 'building', 'failing', 'held'];

  const main = document.getElementById('main');
  const live = document.getElementById('live');
  const notice = document.getElementById('notice');

  // ---- small helpers ------------------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'text') el.textContent = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : v);
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  function svg(tag, attrs, ...children) {
    const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'text') el.textContent = v; else el.setAttribute(k, v);
    }
    for (const c of children.flat(Infinity)) if (c) el.append(c);
    return el;
  }

  function ago(iso) {
    if (!iso) return '-';
    const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
    const abs = Math.abs(s);
    const unit = abs < 60 ? [abs, 's'] : abs < 3600 ? [Math.round(abs / 60), 'min']
      : abs < 86400 ? [Math.round(abs / 3600), 'h'] : [Math.round(abs / 86400), 'd'];
    return s >= 0 ? `${unit[0]} ${unit[1]} ago` : `in ${unit[0]} ${unit[1]}`;
  }

  function when(iso) {
    if (!iso) return h('span', { class: 'muted', text: '-' });
    return h('time', { datetime: iso, title: iso, text: ago(iso) });
  }

  function badge(state, label) {
    return h('span', { class: `badge s-${state}`, text: label || state });
  }

  function shortDigest(d) {
    if (!d) return '-';
    const [alg, hex] = String(d).split(':');
    return hex ? `${alg}:${hex.slice(0, 12)}` : String(d).slice(0, 19);
  }

  function digest(d) {
    if (!d) return h('span', { class: 'muted', text: '-' });
    const copy = h('button', {
      type: 'button', class: 'small', 'aria-label': `Copy ${d}`, text: 'copy',
      onclick: async () => {
        try {
          await navigator.clipboard.writeText(d);
          say(`Copied ${d}`);
        } catch (e) {
          say(`Could not copy: ${e.message || e}`);
        }
      },
    });
    return h('span', { class: 'digest' }, h('code', { title: d, text: shortDigest(d) }), copy);
  }

  function say(text, isError) {
    notice.textContent = '';
    if (text) notice.append(h('p', { class: isError ? 'error' : '', text }));
    clearTimeout(say.timer);
    say.timer = setTimeout(() => { notice.textContent = ''; }, 8000);
  }

  function imageLink(name) {
    return h('a', { href: `#/image/${encodeURIComponent(name)}`, text: name });
  }

  function jobLink(id, label) {
    return h('a', { href: `#/job/${id}`, text: label || `#${id}` });
  }

  function duration(job) {
    if (!job.started_at) return '-';
    const end = job.finished_at ? Date.parse(job.finished_at) : Date.now();
    const s = Math.max(0, Math.round((end - Date.parse(job.started_at)) / 1000));
    return s < 60 ? `${s} s` : `${Math.floor(s / 60)} min ${s % 60} s`;
  }

  function table(caption, headers, rows) {
    return h('div', { class: 'scroll', role: 'region', 'aria-label': caption, tabindex: '0' },
      h('table', {},
        h('caption', { class: 'muted', text: caption }),
        h('thead', {}, h('tr', {}, headers.map((c) => h('th', { scope: 'col', text: c })))),
        h('tbody', {}, rows)));
  }

  // ---- the API ------------------------------------------------------------

  async function getJSON(path) {
    const r = await fetch(path, { headers: { Accept: 'application/json' }, credentials: 'omit' });
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      throw new Error(`${path}: ${r.status} ${body.error || r.statusText}`);
    }
    return r.json();
  }

  async function getText(path) {
    const r = await fetch(path, { credentials: 'omit' });
    if (!r.ok) throw new Error(`${path}: ${r.status}`);
    return r.text();
  }

  /** Every entry of a paged list. */
  async function allPages(path) {
    let items = [];
    let cursor = null;
    for (;;) {
      const page = await getJSON(path + (cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''));
      items = items.concat(page.items);
      if (!page.next || page.next === cursor) return { items, page };
      cursor = page.next;
    }
  }

  /** A POST with the token; a 401 asks for it (again, saying it was wrong). */
  async function post(path, body) {
    let refused = false;
    for (;;) {
      const token = sessionStorage.getItem(TOKEN_KEY);
      const headers = { Accept: 'application/json' };
      if (body !== undefined) headers['Content-Type'] = 'application/json';
      if (token) headers.Authorization = `Bearer ${token}`;
      const r = await fetch(path, {
        method: 'POST', headers, credentials: 'omit',
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      if (r.status === 401) {
        if (token) {
          sessionStorage.removeItem(TOKEN_KEY);
          refused = true;
        }
        const given = await askToken(refused);
        if (!given) {
          throw new Error(refused ? 'Refused: the API token was wrong (401)' : 'This action needs the API token');
        }
        continue;
      }
      const data = await r.json().catch(() => ({}));
      if (!r.ok) throw new Error(data.error || `${r.status} ${r.statusText}`);
      return data;
    }
  }

  // ---- dialogs ------------------------------------------------------------

  const tokenDialog = document.getElementById('token-dialog');
  const tokenForm = document.getElementById('token-form');
  const tokenInput = document.getElementById('token-input');
  const tokenError = document.getElementById('token-error');
  let tokenResolve = null;

  function askToken(wrong) {
    tokenError.textContent = wrong ? 'Wrong token: the API refused it (401). Enter the right one.' : '';
    tokenInput.value = '';
    tokenDialog.showModal();
    tokenInput.focus();
    return new Promise((resolve) => { tokenResolve = resolve; });
  }

  function closeToken(value) {
    if (tokenDialog.open) tokenDialog.close();
    const r = tokenResolve;
    tokenResolve = null;
    if (r) r(value);
  }

  tokenForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const v = tokenInput.value.trim();
    if (!v) return;
    sessionStorage.setItem(TOKEN_KEY, v);
    closeToken(v);
  });
  document.getElementById('token-cancel').addEventListener('click', () => closeToken(null));
  tokenDialog.addEventListener('cancel', () => closeToken(null));

  const confirmDialog = document.getElementById('confirm-dialog');
  function confirmAction(title, text, ok) {
    document.getElementById('confirm-title').textContent = title;
    document.getElementById('confirm-text').textContent = text;
    document.getElementById('confirm-ok').textContent = ok;
    confirmDialog.returnValue = '';
    confirmDialog.showModal();
    document.getElementById('confirm-cancel').focus();
    return new Promise((resolve) => {
      confirmDialog.addEventListener('close', () => resolve(confirmDialog.returnValue === 'ok'), { once: true });
    });
  }

  // ---- views --------------------------------------------------------------

  const fleet = { state: '', q: '', sort: 'name', extra: 0 };

  function fleetQuery() {
    let p = `/v1/images?view=summary&limit=${Math.min(1000, 100 * (1 + fleet.extra))}`;
    if (fleet.state) p += `&state=${encodeURIComponent(fleet.state)}`;
    if (fleet.q) p += `&q=${encodeURIComponent(fleet.q)}`;
    return p;
  }

  function sortRows(items) {
    const by = {
      name: (a, b) => a.name.localeCompare(b.name),
      state: (a, b) => STATES.indexOf(b.state) - STATES.indexOf(a.state) || a.name.localeCompare(b.name),
      age: (a, b) => (Date.parse(b.current_built_at || 0) || 0) - (Date.parse(a.current_built_at || 0) || 0),
      changed: (a, b) => lastChange(b) - lastChange(a),
    }[fleet.sort];
    return items.slice().sort(by);
  }

  function lastChange(img) {
    return Math.max(0, ...img.bases.map((b) => Date.parse(b.last_changed || 0) || 0));
  }

  // Unrepaired findings of the last audit: a summary's count, or the
  // image view's findings.
  function driftCount(img) {
    if (typeof img.drift === 'number') return img.drift;
    return img.audit ? img.audit.findings.filter((f) => !f.repaired).length : 0;
  }

  function flags(img) {
    const out = [];
    if (img.state === 'held') out.push(badge('held', 'held'));
    if (img.state === 'failing' || (img.last_job && img.last_job.state === 'failed')) out.push(badge('failing', 'failing'));
    if (img.unchecked) out.push(badge('unchecked', 'unchecked'));
    // Drift is shown only when the API says so (an audit's finding).
    if (driftCount(img) > 0) out.push(badge('drift', 'drift'));
    return out;
  }

  function statusPanel(st) {
    const cfg = st.config_error
      ? h('span', { class: 'error', text: `error: ${st.config_error} (previous config in force, loaded ${ago(st.config_loaded_at)})` })
      : h('span', {}, 'loaded ', when(st.config_loaded_at));
    return h('section', { class: 'panel', 'aria-labelledby': 'daemon-title' },
      h('h2', { id: 'daemon-title', text: `Daemon ${st.version}` }),
      h('dl', { class: 'facts' },
        h('dt', { text: 'Config' }), h('dd', {}, h('code', { text: st.config_file }), ' ', cfg),
        h('dt', { text: 'Queue' }), h('dd', { text: `${st.queue_depth} queued` }),
        h('dt', { text: 'Building' }), h('dd', {}, st.running.length ? st.running.map((n, i) => [i ? ', ' : '', imageLink(n)]) : 'nothing'),
        h('dt', { text: 'Last poll' }), h('dd', {}, when(st.last_poll)),
        h('dt', { text: 'Next poll' }), h('dd', {}, when(st.next_poll))));
  }

  function fleetControls() {
    const search = h('input', {
      id: 'fleet-q', type: 'search', value: fleet.q, 'data-key': 'fleet-q',
      oninput: (e) => {
        clearTimeout(fleetControls.t);
        fleetControls.t = setTimeout(() => { fleet.q = e.target.value.trim(); fleet.extra = 0; refresh(true); }, 200);
      },
    });
    const state = h('select', {
      id: 'fleet-state', 'data-key': 'fleet-state',
      onchange: (e) => { fleet.state = e.target.value; fleet.extra = 0; refresh(true); },
    }, h('option', { value: '', text: 'every state' }), STATES.map((s) => h('option', { value: s, text: s, selected: fleet.state === s })));
    const sort = h('select', {
      id: 'fleet-sort', 'data-key': 'fleet-sort',
      onchange: (e) => { fleet.sort = e.target.value; refresh(true); },
    }, [['name', 'name'], ['state', 'state (worst first)'], ['age', 'newest version'], ['changed', 'latest base change']]
      .map(([v, t]) => h('option', { value: v, text: t, selected: fleet.sort === v })));
    return h('div', { class: 'controls' },
      h('div', {}, h('label', { for: 'fleet-q', text: 'Search by name' }), search),
      h('div', {}, h('label', { for: 'fleet-state', text: 'State' }), state),
      h('div', {}, h('label', { for: 'fleet-sort', text: 'Sort by' }), sort));
  }

  const views = {
    async fleet() {
      const [st, page] = await Promise.all([getJSON('/v1/status'), getJSON(fleetQuery())]);
      return { data: [st, page], render: () => {
        const counts = h('ul', { class: 'counts', 'aria-label': 'Images by state' },
          STATES.map((s) => h('li', {}, h('button', {
            type: 'button', 'aria-pressed': fleet.state === s ? 'true' : 'false', 'data-key': `count-${s}`,
            onclick: () => { fleet.state = fleet.state === s ? '' : s; fleet.extra = 0; refresh(true); },
          }, badge(s), ` ${page.counts[s] || 0}`))));
        const rows = sortRows(page.items).map((img) => h('tr', { 'data-image': img.name },
          h('th', { scope: 'row' }, imageLink(img.name)),
          h('td', {}, badge(img.state), flags(img).filter((b) => !b.classList.contains(`s-${img.state}`))),
          h('td', { class: 'version', text: img.current_version || '-' }),
          h('td', {}, when(img.current_built_at)),
          h('td', {}, img.bases.map((b) => h('div', {},
            h('code', { title: b.digest || '', text: b.reference }), ' ',
            h('span', { class: 'muted' }, 'changed ', when(b.last_changed)),
            b.error ? h('span', { class: 'error', text: ` check failed: ${b.error}` }) : null))),
          h('td', {}, img.last_job
            ? [badge(img.last_job.state), jobLink(img.last_job.id), img.last_job.published ? ` ${img.last_job.published}` : '']
            : h('span', { class: 'muted', text: '-' }))));
        const more = page.next && page.items.length >= 1000
          ? h('p', { class: 'muted', text: 'The first 1,000 are shown: search or filter by state to find the others.' })
          : page.next ? h('button', {
          type: 'button', 'data-key': 'more', text: 'Show 100 more',
          onclick: () => { fleet.extra += 1; refresh(true); },
        }) : null;
        return [
          h('h1', { text: 'Fleet' }),
          statusPanel(st),
          counts,
          fleetControls(),
          h('p', { class: 'muted', id: 'fleet-total', text: `${page.items.length} of ${page.total} image(s) shown` }),
          table('Managed images', ['Image', 'State', 'Version', 'Built', 'Bases', 'Last job'], rows),
          more,
        ];
      } };
    },

    async image(name) {
      const [img, jobs] = await Promise.all([
        getJSON(`/v1/images/${encodeURIComponent(name)}`),
        getJSON(`/v1/jobs?limit=20&q=${encodeURIComponent(name)}`),
      ]);
      return { data: [img, jobs], render: () => imageView(img, jobs.items.filter((j) => j.image === img.name)) };
    },

    async jobs() {
      const page = await getJSON('/v1/jobs?limit=100');
      return { data: page, render: () => [
        h('h1', { text: 'Jobs' }),
        h('p', { class: 'muted', text: `${page.items.length} of ${page.total} job(s), newest first` }),
        table('Recent jobs', ['Job', 'Image', 'State', 'Trigger', 'Attempts', 'Duration', 'Result'],
          page.items.map((j) => h('tr', {},
            h('th', { scope: 'row' }, jobLink(j.id)),
            h('td', {}, imageLink(j.image)),
            h('td', {}, badge(j.state)),
            h('td', { text: j.trigger }),
            h('td', { text: String(j.attempts) }),
            h('td', { text: duration(j) }),
            h('td', {}, j.published ? `published ${j.published}` : '', j.error ? h('span', { class: 'error', text: j.error }) : (j.note || ''))))),
      ] };
    },

    async job(id) {
      const [job, log] = await Promise.all([getJSON(`/v1/jobs/${id}`), getText(`/v1/jobs/${id}/log`)]);
      const running = job.state === 'queued' || job.state === 'running';
      followLog(running ? id : null);
      return { data: [job, log], render: () => [
        h('h1', {}, `Job ${job.id} `, badge(job.state)),
        h('dl', { class: 'facts' },
          h('dt', { text: 'Image' }), h('dd', {}, imageLink(job.image)),
          h('dt', { text: 'Trigger' }), h('dd', { text: job.trigger }),
          h('dt', { text: 'Attempts' }), h('dd', { text: String(job.attempts) }),
          h('dt', { text: 'Queued' }), h('dd', {}, when(job.created_at)),
          h('dt', { text: 'Duration' }), h('dd', { text: duration(job) }),
          h('dt', { text: 'Published' }), h('dd', { text: job.published || '-' }),
          job.error ? [h('dt', { text: 'Error' }), h('dd', { class: 'error', text: job.error })] : null,
          job.note ? [h('dt', { text: 'Note' }), h('dd', { text: job.note })] : null),
        h('h2', { text: 'Reasons' }),
        h('ul', {}, job.reasons.map((r) => h('li', {}, `${r.trigger}: ${r.detail} `, when(r.at)))),
        h('h2', { id: 'log-title' }, 'Log', running ? h('span', { class: 'muted', text: ' (following)' }) : null),
        h('pre', { class: 'log', id: 'job-log', tabindex: '0', 'aria-labelledby': 'log-title', text: log }),
      ] };
    },

    async bases() {
      const bases = await getJSON('/v1/bases');
      return { data: bases, render: () => [
        h('h1', { text: 'Bases' }),
        table('Watched bases', ['Base', 'Digest', 'Platforms', 'Checked', 'Changed', 'Error', 'Dependents'],
          bases.map((b) => h('tr', {},
            h('th', { scope: 'row' }, h('code', { text: b.reference })),
            h('td', {}, digest(b.digest), b.pending ? h('div', { class: 'muted' }, 'settling: ', digest(b.pending.digest)) : null),
            h('td', {}, Object.keys(b.platforms).length
              ? h('ul', {}, Object.entries(b.platforms).map(([p, d]) => h('li', {}, `${p} `, digest(d))))
              : h('span', { class: 'muted', text: '-' })),
            h('td', {}, when(b.last_checked)),
            h('td', {}, when(b.last_changed)),
            h('td', {}, b.error ? h('span', { class: 'error', text: b.error }) : h('span', { class: 'muted', text: '-' })),
            h('td', {}, b.dependents.map((d, i) => [i ? ', ' : '', imageLink(d)]))))),
      ] };
    },

    async graph() {
      const { items } = await allPages('/v1/images?view=summary&limit=1000');
      return { data: items.map((i) => [i.name, i.state, i.repository, i.bases.map((b) => b.reference)]), render: () => graphView(items) };
    },
  };

  function imageView(img, jobs) {
    const versions = img.versions.slice().reverse();
    const others = versions.filter((v) => v.version !== img.current_version);
    const rollbackSelect = h('select', { id: 'rollback-to', 'data-key': 'rollback-to' },
      others.map((v) => h('option', { value: v.version, text: `${v.version} (${shortDigest(v.digest)})` })));
    const act = (label, key, fn) => h('button', {
      type: 'button', 'data-key': key, text: label,
      onclick: async (e) => {
        const b = e.currentTarget;
        b.disabled = true;
        try {
          await fn();
        } catch (err) {
          say(err.message || String(err), true);
        } finally {
          b.disabled = false;
          refresh(true);
        }
      },
    });
    const rebuild = act('Rebuild', 'rebuild', async () => {
      const a = await post(`/v1/images/${encodeURIComponent(img.name)}/rebuild${img.state === 'held' ? '?force=true' : ''}`);
      say(a.detail);
    });
    const rollback = act('Roll back…', 'rollback', async () => {
      const to = rollbackSelect.value;
      if (!to) return;
      const [maj, min, pat] = to.split('-')[0].split('.');
      const tags = img.floating_tags.map((t) => t.template.replaceAll('{major}', maj).replaceAll('{minor}', min).replaceAll('{patch}', pat));
      const ok = await confirmAction(`Roll back ${img.name} to ${to}?`,
        `These tags will move to ${to}: ${tags.length ? tags.join(', ') : 'none'}. ${img.name} is then held: nothing builds it until it is resumed.`,
        `Roll back to ${to}`);
      if (!ok) return;
      const r = await post(`/v1/images/${encodeURIComponent(img.name)}/rollback`, { to });
      say(`Rolled back ${img.name} from ${r.from || '-'} to ${r.to}; it is held`);
    });
    const resume = act('Resume', 'resume', async () => {
      const a = await post(`/v1/images/${encodeURIComponent(img.name)}/resume`);
      say(a.detail);
    });
    const timeline = h('ol', { class: 'timeline', 'aria-label': 'Versions, newest first' }, versions.map((v) => h('li', {
      class: v.version === img.current_version ? 'current' : '', 'data-version': v.version,
    },
    h('h3', {}, v.version, ' ', v.version === img.current_version ? badge('fresh', 'current') : null,
      v.superseded_by ? h('span', { class: 'muted superseded', text: ` superseded by ${v.superseded_by}` }) : null),
    h('div', {}, digest(v.digest), ' built ', when(v.built_at), ` by ${v.trigger}`, v.supersedes ? `, after ${v.supersedes}` : '',
      v.revision ? [' from ', h('code', { title: v.revision, text: v.revision.slice(0, 12) })] : null),
    h('ul', { class: 'reason', 'aria-label': `Bases of ${v.version}` },
      Object.entries(v.bases).map(([r, d]) => h('li', {}, h('code', { text: r }), ' ', digest(d)))),
    (v.supersessions || []).map((s) => h('div', { class: 'supersession' },
      `superseded by ${s.by} `, when(s.at), ` (${s.reason.trigger})${s.reason.bases.length || s.reason.source ? ':' : ''}`,
      h('ul', { class: 'reason' },
        s.reason.bases.map((b) => h('li', {}, h('code', { text: b.reference }), ': ', digest(b.before), ' → ', digest(b.after),
          b.moved && b.moved.length ? h('span', { class: 'muted', text: ` (${b.moved.join('; ')})` }) : null)),
        s.reason.source ? h('li', {}, 'source: ', h('code', { text: s.reason.source.before || '-' }), ' → ', h('code', { text: s.reason.source.after })) : null))))));
    return [
      h('h1', {}, `${img.name} `, badge(img.state), flags(img).filter((b) => !b.classList.contains(`s-${img.state}`))),
      h('dl', { class: 'facts' },
        h('dt', { text: 'Repository' }), h('dd', {}, h('code', { text: img.repository })),
        h('dt', { text: 'Current' }), h('dd', {}, img.current_version || '-', ' ', digest(img.current_digest)),
        h('dt', { text: 'Floating tags' }), h('dd', {}, img.floating_tags.length
          ? img.floating_tags.map((t, i) => [i ? ', ' : '', h('code', { text: t.tag || t.template }), ` → ${t.version || '-'}`]) : '-'),
        img.source ? [h('dt', { text: 'Source' }), h('dd', {}, h('code', { text: `${img.source.url}#${img.source.ref}` }), ' ', img.source.commit ? h('code', { title: img.source.commit, text: img.source.commit.slice(0, 12) }) : '', img.source.error ? h('span', { class: 'error', text: ` ${img.source.error}` }) : '')] : null,
        img.last_error ? [h('dt', { text: 'Last error' }), h('dd', { class: 'error', text: img.last_error })] : null,
        img.audit && img.audit.findings.length ? [h('dt', { text: 'Drift' }), h('dd', {}, h('ul', {},
          img.audit.findings.map((f) => h('li', {}, h('code', { text: f.tag }), ` ${f.kind}: expected `,
            h('code', { text: f.expected }), ', found ', h('code', { text: f.found || 'nothing' }),
            f.repaired ? ` (repaired: ${f.repaired})` : ''))))] : null),
      h('section', { 'aria-labelledby': 'actions-title' },
        h('h2', { id: 'actions-title', text: 'Actions' }),
        h('div', { class: 'actions' },
          rebuild,
          others.length ? h('div', {}, h('label', { for: 'rollback-to', text: 'Roll back to' }), ' ', rollbackSelect, ' ', rollback) : null,
          img.state === 'held' ? resume : null)),
      h('h2', { text: 'Bases now' }),
      table('Bases now', ['Base', 'Digest', 'Checked', 'Error'], img.bases.map((b) => h('tr', {},
        h('th', { scope: 'row' }, h('code', { text: b.reference })), h('td', {}, digest(b.digest)), h('td', {}, when(b.last_checked)),
        h('td', {}, b.error ? h('span', { class: 'error', text: b.error }) : '-')))),
      h('h2', { text: 'Versions' }),
      timeline,
      h('h2', { text: 'Rollbacks' }),
      img.rollbacks.length ? h('ul', {}, img.rollbacks.slice().reverse().map((r) => h('li', { class: 'rollback' },
        when(r.at), ` from ${r.from || '-'} to ${r.to} `, digest(r.digest)))) : h('p', { class: 'muted', text: 'None.' }),
      h('h2', { text: 'Recent jobs' }),
      jobs.length ? table('Recent jobs of this image', ['Job', 'State', 'Trigger', 'Attempts', 'Duration'], jobs.map((j) => h('tr', {},
        h('th', { scope: 'row' }, jobLink(j.id)), h('td', {}, badge(j.state)), h('td', { text: j.trigger }),
        h('td', { text: String(j.attempts) }), h('td', { text: duration(j) })))) : h('p', { class: 'muted', text: 'None known.' }),
    ];
  }

  function graphView(items) {
    const MAX = 400;
    const byRepo = new Map(items.map((i) => [i.repository, i]));
    const parents = new Map();
    for (const i of items) {
      const ps = [];
      for (const b of i.bases) {
        for (const [repo, p] of byRepo) {
          if (p !== i && (b.reference === repo || b.reference.startsWith(`${repo}:`) || b.reference.startsWith(`${repo}@`))) ps.push(p.name);
        }
      }
      parents.set(i.name, ps);
    }
    const layer = new Map();
    const depth = (n, seen) => {
      if (layer.has(n)) return layer.get(n);
      if (seen.has(n)) return 0; // a cycle (the config refuses them)
      seen.add(n);
      const d = Math.max(-1, ...(parents.get(n) || []).map((p) => depth(p, seen))) + 1;
      layer.set(n, d);
      return d;
    };
    const shown = items.slice(0, MAX);
    shown.forEach((i) => depth(i.name, new Set()));
    const cols = [];
    for (const i of shown) (cols[layer.get(i.name)] = cols[layer.get(i.name)] || []).push(i);
    const W = 200; const H = 34; const GX = 80; const GY = 14;
    const pos = new Map();
    cols.forEach((col, x) => col.forEach((i, y) => pos.set(i.name, [20 + x * (W + GX), 20 + y * (H + GY)])));
    const width = 40 + cols.length * (W + GX) - GX;
    const height = 40 + Math.max(1, ...cols.map((c) => c.length)) * (H + GY) - GY;
    const edges = [];
    for (const i of shown) {
      for (const p of parents.get(i.name) || []) {
        if (!pos.has(p)) continue;
        const [x1, y1] = pos.get(p); const [x2, y2] = pos.get(i.name);
        edges.push(svg('path', { class: 'edge', d: `M${x1 + W} ${y1 + H / 2} C${x1 + W + GX / 2} ${y1 + H / 2} ${x2 - GX / 2} ${y2 + H / 2} ${x2} ${y2 + H / 2}` }));
      }
    }
    const nodes = shown.map((i) => {
      const [x, y] = pos.get(i.name);
      return svg('a', { href: `#/image/${encodeURIComponent(i.name)}`, class: `n-${i.state}`, 'aria-label': `${i.name}: ${i.state}` },
        svg('rect', { x, y, width: W, height: H }),
        svg('text', { x: x + 10, y: y + 22, text: `${i.name} · ${i.state}`.slice(0, 28) }));
    });
    const edgeCount = edges.length;
    return [
      h('h1', { text: 'Cascade graph' }),
      h('p', { class: 'muted', text: `Each column is a layer: an image is drawn right of the managed images it is built FROM (${edgeCount} edge(s)).${items.length > MAX ? ` The first ${MAX} of ${items.length} images are drawn.` : ''}` }),
      h('ul', { class: 'legend', 'aria-label': 'States' }, STATES.map((s) => h('li', {}, badge(s)))),
      h('div', { class: 'scroll', role: 'region', 'aria-label': 'Cascade graph drawing', tabindex: '0' },
        svg('svg', { class: 'graph', role: 'group', 'aria-label': 'Cascade graph', viewBox: `0 0 ${width} ${height}`, width, height },
          svg('g', {}, ...edges), svg('g', {}, ...nodes))),
    ];
  }

  // ---- routing and rendering --------------------------------------------

  let renderedKey = null;
  let renderedData = null;
  let busy = false;
  let again = false;

  function route() {
    const parts = (location.hash.replace(/^#\/?/, '') || 'fleet').split('/');
    const name = parts[0];
    const arg = parts.slice(1).map(decodeURIComponent).join('/');
    if (name === 'image' && arg) return ['image', arg];
    if (name === 'job' && /^\d+$/.test(arg)) return ['job', arg];
    if (views[name] && name !== 'image' && name !== 'job') return [name];
    return ['fleet'];
  }

  async function refresh(force) {
    if (busy) { again = true; return; }
    if (tokenDialog.open || confirmDialog.open) return;
    busy = true;
    const [name, arg] = route();
    const key = `${name}/${arg || ''}`;
    try {
      const view = await views[name](arg);
      const data = JSON.stringify(view.data);
      if (force || key !== renderedKey || data !== renderedData) {
        const focused = document.activeElement && document.activeElement.getAttribute('data-key');
        const atLogEnd = isAtEnd(document.getElementById('job-log'));
        const nodes = view.render();
        main.replaceChildren(...nodes.flat(Infinity).filter(Boolean));
        if (key !== renderedKey) {
          document.title = `${name === 'image' || name === 'job' ? `${arg} · ` : ''}${name} · rebased`;
          main.focus({ preventScroll: true });
        } else if (focused) {
          const el = main.querySelector(`[data-key="${focused}"]`);
          if (el) el.focus({ preventScroll: true });
        }
        const log = document.getElementById('job-log');
        if (log && atLogEnd) log.scrollTop = log.scrollHeight;
        renderedKey = key;
        renderedData = data;
      }
      document.querySelectorAll('[data-nav]').forEach((a) => {
        const here = a.getAttribute('data-nav') === name || (name === 'image' && a.getAttribute('data-nav') === 'fleet') || (name === 'job' && a.getAttribute('data-nav') === 'jobs');
        if (here) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
      });
    } catch (e) {
      if (key !== renderedKey) {
        main.replaceChildren(h('h1', { text: 'Not available' }), h('p', { class: 'error', role: 'alert', text: e.message || String(e) }), h('p', {}, h('a', { href: '#/fleet', text: 'Back to the fleet' })));
        renderedKey = key;
        renderedData = null;
      } else {
        say(e.message || String(e), true);
      }
    } finally {
      busy = false;
      if (again) { again = false; refresh(); }
    }
  }

  function isAtEnd(el) {
    return !el || el.scrollTop + el.clientHeight >= el.scrollHeight - 4;
  }

  let logTimer = null;
  function followLog(id) {
    clearInterval(logTimer);
    logTimer = null;
    if (id !== null) logTimer = setInterval(() => { if (route()[0] === 'job') refresh(); }, LOG_MS);
  }

  // ---- live updates ------------------------------------------------------

  let source = null;
  let lastEventId = null;
  let pollTimer = null;
  let soon = null;

  function setLive(text) { live.textContent = text; }

  function poll(on) {
    if (on && !pollTimer) pollTimer = setInterval(() => refresh(), POLL_MS);
    if (!on && pollTimer) { clearInterval(pollTimer); pollTimer = null; }
  }

  function onEvent(e) {
    if (e.lastEventId) lastEventId = e.lastEventId;
    clearTimeout(soon);
    soon = setTimeout(() => refresh(), 100);
  }

  function connect() {
    const url = lastEventId ? `/v1/events?after=${encodeURIComponent(lastEventId)}` : '/v1/events';
    source = new EventSource(url);
    source.onopen = () => { poll(false); setLive('live: following events'); };
    source.onmessage = onEvent;
    for (const t of EVENT_TYPES) source.addEventListener(t, onEvent);
    source.onerror = () => {
      // EventSource reconnects by itself (sending Last-Event-ID) while it
      // is CONNECTING; a closed one is opened again here after a pause.
      // Meanwhile the view is re-read every 2 s.
      poll(true);
      setLive('live: reconnecting (re-reading every 2 s)');
      if (source.readyState === EventSource.CLOSED) {
        source.close();
        source = null;
        setTimeout(connect, 3000);
      }
    };
  }

  async function startLive() {
    // Only a daemon whose API has the event stream is followed; an older
    // one is re-read every 2 s.
    let streams = false;
    try {
      const doc = await getJSON('/openapi.json');
      streams = Boolean(doc.paths && doc.paths['/v1/events']);
    } catch (e) {
      streams = false;
    }
    if (streams && typeof EventSource === 'function') {
      connect();
    } else {
      poll(true);
      setLive('live: re-reading every 2 s');
    }
  }

  window.addEventListener('hashchange', () => { followLog(null); refresh(); });
  refresh();
  startLive();
}());
