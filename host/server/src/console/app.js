/* wasaga operator console: a dependency-free single-page app over the /v1 API.
 *
 * Run ids, workflow names, payloads and errors are attacker-controlled, so the DOM is only
 * ever built with createElement/textContent (see h()), never from HTML strings. Pages are
 * chosen by the URL hash so the server only has to serve /ui. */
'use strict';

(() => {
  // ---------------------------------------------------------------------------------------
  // Constants

  const STATUSES = ['running', 'waiting', 'compensating', 'completed', 'compensated', 'stuck'];
  const NAV_PAGES = ['runs', 'stuck', 'workflows', 'accounts'];
  const RUNS_PAGE_SIZE = 50;
  const STUCK_LIMIT = 100;
  const ACCOUNTS_PAGE_SIZE = 100;
  const AUTO_REFRESH_MS = 5000;

  // ---------------------------------------------------------------------------------------
  // DOM helpers

  /** Builds an element; children that are not Nodes become text, so data can never become markup. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === 'class') el.className = value;
      else if (key === 'text') el.textContent = value;
      else if (key === 'dataset') setData(el, value);
      else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? '' : String(value));
    }
    appendAll(el, children);
    return el;
  }

  function setData(el, values) {
    for (const [key, value] of Object.entries(values)) {
      if (value !== null && value !== undefined) el.dataset[key] = String(value);
    }
  }

  function appendAll(parent, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      parent.append(child instanceof Node ? child : String(child));
    }
  }

  /** replaceChildren that, like h(), turns data into text and skips absent children. */
  function fill(el, ...children) {
    el.replaceChildren();
    appendAll(el, children);
    return el;
  }

  const $ = (id) => document.getElementById(id);

  /** Shortens long text for dense tables; the full text stays reachable in the tooltip. */
  function clipped(text, max, cls) {
    const full = String(text ?? '');
    const short = full.length > max ? full.slice(0, max - 1) + '…' : full;
    return h('span', { class: cls ? `clip ${cls}` : 'clip', title: full }, short);
  }

  // ---------------------------------------------------------------------------------------
  // Formatting

  const pad = (n, width = 2) => String(n).padStart(width, '0');

  function localTime(ms) {
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function isoTime(ms) {
    const d = new Date(Number(ms));
    return Number.isNaN(d.getTime()) ? String(ms) : d.toISOString();
  }

  /** Local time on screen, the unambiguous UTC instant in the tooltip. */
  function timeEl(ms) {
    if (ms === null || ms === undefined || ms === '') return h('span', { class: 'muted' }, '—');
    const n = Number(ms);
    if (!Number.isFinite(n)) return h('span', null, String(ms));
    const iso = isoTime(n);
    return h('time', { datetime: iso, title: iso }, localTime(n));
  }

  function fmtInt(n) {
    const num = Number(n);
    if (typeof n === 'string' && !Number.isSafeInteger(num)) return n; // big integers kept as text
    return Number.isFinite(num) ? num.toLocaleString('en-US') : String(n);
  }

  function fmtDuration(ms) {
    // Events of one run are journaled in order, but by hosts whose clocks may differ: a
    // negative span is shown as none rather than as time running backwards.
    ms = Math.max(0, ms);
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 60_000) return `${trimZeros((ms / 1000).toFixed(ms < 10_000 ? 2 : 1))} s`;
    if (ms < 3_600_000) return `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`;
    if (ms < 86_400_000) return `${Math.floor(ms / 3_600_000)} h ${Math.round((ms % 3_600_000) / 60_000)} min`;
    return `${Math.floor(ms / 86_400_000)} d ${Math.round((ms % 86_400_000) / 3_600_000)} h`;
  }

  /** Tick labels: the unit follows the step, so labels stay short and read as round numbers. */
  function fmtOffset(ms, step, span) {
    if (ms === 0) return '0';
    const units = [[3_600_000, 'h'], [60_000, 'min'], [1000, 's'], [1, 'ms']];
    const [size, name] = units.find(([unit]) => step >= unit || (unit === 1000 && span >= 1000)) || units[units.length - 1];
    const decimals = step >= size ? 0 : Math.min(3, Math.ceil(-Math.log10(step / size)));
    return `+${trimZeros((ms / size).toFixed(decimals))} ${name}`;
  }

  const trimZeros = (s) => (s.includes('.') ? s.replace(/\.?0+$/, '') : s);

  function compactJson(value) {
    if (value === undefined) return '';
    try {
      return JSON.stringify(value);
    } catch {
      return String(value);
    }
  }

  function prettyJson(value) {
    try {
      return JSON.stringify(value, null, 2);
    } catch {
      return String(value);
    }
  }

  /** The journal stores payloads and replies as JSON text; show them parsed when they parse. */
  function prettyJsonText(text) {
    if (typeof text !== 'string') return prettyJson(text);
    try {
      return JSON.stringify(parseJson(text), null, 2);
    } catch {
      return text;
    }
  }

  function compactJsonText(text) {
    if (typeof text !== 'string') return compactJson(text);
    try {
      return JSON.stringify(parseJson(text));
    } catch {
      return text;
    }
  }

  /** JSON.parse that keeps integers above 2^53 (fencing tokens, random values) exact, as text. */
  function parseJson(text) {
    return JSON.parse(text, (key, value, context) => {
      if (typeof value === 'number' && !Number.isSafeInteger(value) && Number.isInteger(value) &&
        context && typeof context.source === 'string') {
        return context.source;
      }
      return value;
    });
  }

  const callSpecLabel = (spec) => (spec ? `${spec.participant}.${spec.action}` : '');

  function fmtFailure(err) {
    if (err === null || err === undefined) return '';
    if (typeof err === 'string') return err;
    if (typeof err === 'object' && 'kind' in err) {
      return err.reason !== undefined ? `${err.kind}: ${err.reason}` : String(err.kind);
    }
    return compactJson(err);
  }

  /** serde's Result encoding: {"Ok": …} or {"Err": …}. */
  function resultOf(r) {
    if (r && typeof r === 'object' && 'Ok' in r) return { ok: true, value: r.Ok };
    if (r && typeof r === 'object' && 'Err' in r) return { ok: false, error: r.Err };
    return null;
  }

  function fmtResult(r) {
    const res = resultOf(r);
    if (!res) return compactJson(r);
    if (res.ok) return res.value === null || res.value === undefined ? 'ok' : `ok ${compactJsonText(res.value)}`;
    return `failed (${fmtFailure(res.error)})`;
  }

  function fmtWaitTarget(wait) {
    if (!wait || typeof wait !== 'object') return 'wait';
    if (wait.for === 'timer') return 'sleep';
    if (wait.for === 'signal') return `signal ${wait.name}`;
    if (wait.for === 'child') return `child ${wait.run_id}`;
    return compactJson(wait);
  }

  function fmtWaitOutcome(outcome) {
    if (!outcome || typeof outcome !== 'object') return '';
    if (outcome.ended === 'due') return 'came due';
    if (outcome.ended === 'signal') return 'signal received';
    if (outcome.ended === 'child') {
      const res = resultOf(outcome.outcome);
      return res && !res.ok ? 'ended, child failed' : 'ended, child ok';
    }
    return compactJson(outcome);
  }

  /** The runs table's "waiting_for" is "timer", "signal:<name>" or "child:<run id>". */
  function fmtWaitingFor(waitingFor) {
    const text = String(waitingFor ?? '');
    if (text === 'timer') return 'timer';
    const colon = text.indexOf(':');
    return colon < 0 ? text : `${text.slice(0, colon)} ${text.slice(colon + 1)}`;
  }

  // ---------------------------------------------------------------------------------------
  // Runs: shared presentation

  /** A waiting run is "running" in the store; operators care that it is parked. */
  function displayStatus(run) {
    return run.status === 'running' && run.waiting ? 'waiting' : run.status;
  }

  function statusPill(status) {
    const known = STATUSES.includes(status) ? status : 'unknown';
    return h('span', { class: `pill pill-${known}` }, String(status));
  }

  const runHref = (id) => `#/runs/${encodeURIComponent(id)}`;

  function runLink(id, max = 48) {
    return h('a', { href: runHref(id), class: 'mono run-link', title: id },
      String(id).length > max ? String(id).slice(0, max - 1) + '…' : String(id));
  }

  function waitingText(run) {
    if (!run.waiting) return '';
    const wake = Number(run.waiting.wake_at_ms);
    const target = fmtWaitingFor(run.waiting.waiting_for);
    if (run.waiting.wake_at_ms === undefined || run.waiting.wake_at_ms === null) return target;
    // A wait with no timer (a child's end) is due "never": past any date a browser can show.
    if (!Number.isFinite(wake) || wake > 8.64e15) return `${target} (no time limit)`;
    return wake === 0 ? `${target} (due now)` : `${target} until ${localTime(wake)}`;
  }

  // ---------------------------------------------------------------------------------------
  // API access

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  /** Thrown when the server says we are not signed in; the login form is already showing. */
  class AuthRequired extends Error {}

  function readCookie(name) {
    for (const part of document.cookie.split(';')) {
      const eq = part.indexOf('=');
      if (eq > 0 && part.slice(0, eq).trim() === name) return safeDecode(part.slice(eq + 1).trim());
    }
    return '';
  }

  /** Every call goes through here so 401 handling, CSRF and error messages are uniform. */
  async function api(method, path, body) {
    const options = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
    if (method !== 'GET') {
      options.headers['Content-Type'] = 'application/json';
      options.headers['X-Wasaga-CSRF'] = readCookie('wasaga_csrf');
      options.body = JSON.stringify(body ?? {});
    }
    let response;
    try {
      response = await fetch(path, options);
    } catch (err) {
      throw new ApiError(0, `Cannot reach the server (${err.message}).`);
    }
    if (response.status === 401 && !path.startsWith('/ui/login')) {
      showLogin();
      throw new AuthRequired('not signed in');
    }
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = parseJson(text);
      } catch {
        data = null;
      }
    }
    if (!response.ok) {
      const message = data && typeof data.error === 'string'
        ? data.error
        : `${response.status} ${response.statusText}${text && !data ? `: ${text.slice(0, 200)}` : ''}`;
      throw new ApiError(response.status, message);
    }
    return { status: response.status, data };
  }

  const apiGet = async (path) => (await api('GET', path)).data;

  /** Query string without the empty filters, so URLs stay short and the server sees no "". */
  function query(params) {
    const qs = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) {
      if (value !== null && value !== undefined && value !== '') qs.set(key, String(value));
    }
    const text = qs.toString();
    return text ? `?${text}` : '';
  }

  // ---------------------------------------------------------------------------------------
  // Banners and status line

  function showBanner(id, message) {
    $(`${id}-text`).textContent = message;
    $(id).hidden = false;
  }

  const showError = (message) => showBanner('error', message);
  const showNotice = (message) => showBanner('notice', message);

  function clearBanners() {
    $('error').hidden = true;
    $('notice').hidden = true;
  }

  /** Errors end up in the banner; a 401 already switched to the login form, so stays quiet. */
  function reportError(err) {
    if (err instanceof AuthRequired) return;
    showError(err instanceof ApiError ? err.message : `Unexpected error: ${err && err.message}`);
    if (!(err instanceof ApiError)) console.error(err);
  }

  function markRefreshed() {
    const now = Date.now();
    const el = $('last-refresh');
    el.textContent = `refreshed ${localTime(now).slice(11)}`;
    el.title = `Last data fetched at ${isoTime(now)}`;
  }

  function setLoaded(page) {
    document.body.dataset.loaded = page;
    markRefreshed();
  }

  // ---------------------------------------------------------------------------------------
  // Login

  function showLogin() {
    stopTimers();
    document.body.classList.replace('logged-in', 'logged-out');
    $('main').hidden = true;
    $('login').hidden = false;
    $('login-error').textContent = '';
    $('login-token').focus();
  }

  function hideLogin() {
    document.body.classList.replace('logged-out', 'logged-in');
    $('login').hidden = true;
    $('main').hidden = false;
  }

  async function submitLogin(event) {
    event.preventDefault();
    const input = $('login-token');
    const button = $('login-submit');
    $('login-error').textContent = '';
    button.disabled = true;
    try {
      await api('POST', '/ui/login', { token: input.value });
      input.value = '';
      hideLogin();
      clearBanners();
      route(); // the hash never changed, so this is the page the user was on
    } catch (err) {
      $('login-error').textContent = err instanceof ApiError && err.status === 401
        ? (err.message || 'Wrong token.')
        : (err.message || String(err));
    } finally {
      button.disabled = false;
    }
  }

  async function logout() {
    try {
      await api('POST', '/ui/logout', {});
    } catch (err) {
      if (!(err instanceof AuthRequired)) reportError(err);
    }
    delete document.body.dataset.loaded;
    showLogin();
  }

  // ---------------------------------------------------------------------------------------
  // Routing

  let navSeq = 0; // bumps on every navigation, so answers for a page we left are dropped
  const timers = new Set();

  function stopTimers() {
    for (const t of timers) clearInterval(t);
    timers.clear();
  }

  function every(ms, fn) {
    timers.add(setInterval(fn, ms));
  }

  function safeDecode(text) {
    try {
      return decodeURIComponent(text);
    } catch {
      return text;
    }
  }

  function parseRoute() {
    let raw = location.hash.replace(/^#/, '');
    if (!raw.startsWith('/')) raw = '/runs';
    const q = raw.indexOf('?');
    const path = q < 0 ? raw : raw.slice(0, q);
    const params = new URLSearchParams(q < 0 ? '' : raw.slice(q + 1));
    if (path.startsWith('/runs/') && path.length > '/runs/'.length) {
      return { page: 'run', id: safeDecode(path.slice('/runs/'.length)), params };
    }
    const name = path.replace(/^\/+|\/+$/g, '');
    return { page: NAV_PAGES.includes(name) ? name : 'runs', params };
  }

  /** Goes to a hash, reloading even when it is the hash we are on (e.g. re-applying filters). */
  function go(hash) {
    const before = location.hash;
    location.hash = hash;
    if (location.hash === before) route();
  }

  function highlightNav(page) {
    const section = page === 'run' ? 'runs' : page;
    for (const link of document.querySelectorAll('#nav a')) {
      const active = link.dataset.nav === section;
      link.classList.toggle('active', active);
      if (active) link.setAttribute('aria-current', 'page');
      else link.removeAttribute('aria-current');
    }
  }

  function route() {
    navSeq += 1;
    stopTimers();
    delete document.body.dataset.loaded;
    const current = parseRoute();
    highlightNav(current.page);
    const token = navSeq;
    const stale = () => token !== navSeq;
    PAGES[current.page](current, stale).catch((err) => {
      if (!stale()) reportError(err);
    });
  }

  function mount(root) {
    $('main').replaceChildren(root);
    return root;
  }

  function pageShell(id, title, ...headExtras) {
    return h('section', { id, class: 'page' },
      h('div', { class: 'page-head' }, h('h1', null, title), ...headExtras));
  }

  const loadingNote = () => h('p', { class: 'muted loading' }, 'Loading…');

  // ---------------------------------------------------------------------------------------
  // Runs page

  let autoRefresh = true; // survives navigation, so turning it off sticks while browsing

  function runsFilterFromParams(params) {
    const get = (k) => params.get(k) || '';
    return {
      status: get('status'),
      workflow: get('workflow'),
      since_ms: get('since_ms'),
      until_ms: get('until_ms'),
      before_ms: get('before_ms'),
      before_id: get('before_id'),
    };
  }

  const runsHash = (filter) => `#/runs${query(filter)}`;

  /** datetime-local speaks local wall time without a zone; the API speaks epoch ms. */
  function msToLocalInput(ms) {
    if (!ms) return '';
    const d = new Date(Number(ms));
    if (Number.isNaN(d.getTime())) return '';
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }

  function localInputToMs(value) {
    if (!value) return '';
    const ms = new Date(value).getTime();
    return Number.isNaN(ms) ? '' : String(ms);
  }

  function runsFilterForm(filter) {
    const status = h('select', { id: 'runs-status', name: 'status' },
      h('option', { value: '' }, 'any'),
      STATUSES.map((s) => h('option', { value: s, selected: s === filter.status }, s)));
    const workflow = h('input', {
      id: 'runs-workflow', name: 'workflow', type: 'text', placeholder: 'any workflow',
      value: filter.workflow, autocomplete: 'off', spellcheck: 'false',
    });
    const since = h('input', { id: 'runs-since', type: 'datetime-local', value: msToLocalInput(filter.since_ms) });
    const until = h('input', { id: 'runs-until', type: 'datetime-local', value: msToLocalInput(filter.until_ms) });

    const onSubmit = (event) => {
      event.preventDefault();
      go(runsHash({
        status: status.value,
        workflow: workflow.value.trim(),
        since_ms: localInputToMs(since.value),
        until_ms: localInputToMs(until.value),
      }));
    };
    const field = (label, input) => h('label', { class: 'field' }, h('span', null, label), input);
    return h('form', { class: 'filters', id: 'runs-filters', onsubmit: onSubmit },
      field('Status', status), field('Workflow', workflow), field('Since', since), field('Until', until),
      h('div', { class: 'filter-buttons' },
        h('button', { id: 'runs-apply', class: 'btn btn-primary', type: 'submit' }, 'Apply'),
        h('button', { id: 'runs-clear', class: 'btn btn-quiet', type: 'button', onclick: () => go('#/runs') }, 'Clear')));
  }

  function countsBar(counts, filter) {
    // Capped counts cover only the newest 100,000 runs: the total is then a lower bound.
    const capped = Boolean(counts.capped);
    const total = STATUSES.reduce((sum, s) => sum + (Number(counts[s]) || 0), 0);
    const pill = (status, label, count, isActive) => h('button', {
      type: 'button',
      class: `count-pill pill-${status || 'any'}${isActive ? ' active' : ''}`,
      'aria-pressed': String(isActive),
      title: status ? `Show only ${status} runs` : 'Show runs in any status',
      dataset: status ? { status } : { filter: 'any' },
      onclick: () => go(runsHash({
        status: status && !isActive ? status : '',
        workflow: filter.workflow, since_ms: filter.since_ms, until_ms: filter.until_ms,
      })),
    }, h('span', { class: 'count-label' }, label), h('span', { class: 'count-num' }, count));

    return h('div', { id: 'runs-counts', class: 'counts' },
      pill('', 'all', capped ? `${fmtInt(Math.max(total, 100000))}+` : fmtInt(total), !filter.status),
      STATUSES.map((s) => pill(s, s, fmtInt(Number(counts[s]) || 0), filter.status === s)),
      capped ? h('span', { class: 'muted counts-hint', id: 'runs-counts-capped' },
        'only the newest 100,000 runs were counted') : null);
  }

  function outcomeCell(run) {
    if (run.error) return clipped(run.error, 120, 'err');
    if (run.cancel_reason && run.status !== 'completed') return clipped(`cancelled: ${run.cancel_reason}`, 120, 'muted');
    if (run.waiting) return clipped(`waits for ${waitingText(run)}`, 120, 'muted');
    if (run.output !== null && run.output !== undefined) return clipped(compactJson(run.output), 120, 'mono');
    return h('span', { class: 'muted' }, '—');
  }

  function runRow(run) {
    const status = displayStatus(run);
    return h('tr', { dataset: { runId: run.run_id, status } },
      h('td', { class: 'cell-id' }, runLink(run.run_id)),
      h('td', { class: 'cell-workflow' }, clipped(run.workflow, 40)),
      h('td', { class: 'num' }, `v${run.version}`),
      h('td', { class: 'cell-status' }, statusPill(status)),
      h('td', { class: 'cell-time' }, timeEl(run.created_at_ms)),
      h('td', { class: 'cell-time' }, timeEl(run.updated_at_ms)),
      h('td', { class: 'cell-outcome' }, outcomeCell(run)));
  }

  function runsTable(runs, filter) {
    const head = h('thead', null, h('tr', null,
      ['Run id', 'Workflow', 'Version', 'Status', 'Created', 'Updated', 'Output / error']
        .map((title, i) => h('th', { class: i === 2 ? 'num' : null }, title))));
    const body = h('tbody', null, runs.map(runRow));
    if (runs.length === 0) {
      const filtered = filter.status || filter.workflow || filter.since_ms || filter.until_ms;
      body.append(h('tr', { class: 'empty' }, h('td', { colspan: 7 }, filtered ? 'No runs match these filters.' : 'No runs yet.')));
    }
    return h('table', { id: 'runs-table', class: 'table' }, head, body);
  }

  function runsPager(next, filter) {
    const onFirstPage = !filter.before_ms && !filter.before_id;
    const base = { status: filter.status, workflow: filter.workflow, since_ms: filter.since_ms, until_ms: filter.until_ms };
    return h('div', { class: 'pager' },
      onFirstPage ? null : h('button', {
        id: 'runs-newest', class: 'btn', type: 'button', onclick: () => go(runsHash(base)),
      }, '← Newest'),
      next ? h('button', {
        id: 'runs-older', class: 'btn', type: 'button',
        onclick: () => go(runsHash({ ...base, before_ms: next.before_ms, before_id: next.before_id })),
      }, 'Older →') : null);
  }

  async function renderRunsPage(current, stale) {
    const filter = runsFilterFromParams(current.params);
    const onFirstPage = !filter.before_ms && !filter.before_id;
    const toggle = h('input', { id: 'runs-autorefresh', type: 'checkbox', checked: autoRefresh });
    toggle.addEventListener('change', () => { autoRefresh = toggle.checked; });
    const toggleLabel = h('label', {
      class: 'autorefresh', title: onFirstPage ? 'Reload every 5 s while this tab is visible' : 'Only the newest page refreshes',
    }, toggle, ' auto-refresh');

    const root = mount(pageShell('page-runs', 'Runs', toggleLabel));
    const countsSlot = h('div', { class: 'counts-slot' });
    const tableSlot = h('div', { class: 'table-wrap' }, loadingNote());
    const pagerSlot = h('div');
    root.append(runsFilterForm(filter), countsSlot, tableSlot, pagerSlot);

    let busy = false;
    const load = async () => {
      busy = true;
      try {
        const countsQuery = query({ workflow: filter.workflow, since_ms: filter.since_ms, until_ms: filter.until_ms });
        const [counts, page] = await Promise.all([
          apiGet(`/v1/run-counts${countsQuery}`),
          apiGet(`/v1/runs${query({ ...filter, limit: RUNS_PAGE_SIZE })}`),
        ]);
        if (stale()) return;
        fill(countsSlot, countsBar(counts || {}, filter));
        fill(tableSlot, runsTable((page && page.runs) || [], filter));
        fill(pagerSlot, runsPager(page && page.next, filter));
        setLoaded('runs');
      } finally {
        busy = false;
      }
    };
    await load();
    if (onFirstPage) {
      every(AUTO_REFRESH_MS, () => {
        if (!autoRefresh || busy || document.visibilityState !== 'visible' || stale()) return;
        load().catch((err) => { if (!stale()) reportError(err); });
      });
    }
  }

  // ---------------------------------------------------------------------------------------
  // One run: header, actions, input/output

  function fact(label, ...value) {
    return [h('dt', null, label), h('dd', null, ...value)];
  }

  function runFacts(run) {
    const hash = String(run.module_hash || '');
    return h('dl', { class: 'facts', id: 'run-facts' },
      fact('Workflow',
        h('a', { href: runsHash({ workflow: run.workflow }), title: `Runs of ${run.workflow}` }, clipped(run.workflow, 60)),
        h('span', { class: 'muted' }, ` v${run.version}`)),
      fact('Module', h('span', { class: 'mono', title: hash, id: 'run-module-hash' }, hash.slice(0, 12) + (hash.length > 12 ? '…' : ''))),
      fact('Owner', run.owner ? clipped(run.owner, 60, 'mono') : h('span', { class: 'muted' }, '—')),
      fact('Created', timeEl(run.created_at_ms)),
      fact('Updated', timeEl(run.updated_at_ms),
        h('span', { class: 'muted' }, `  (${fmtDuration(Math.max(0, run.updated_at_ms - run.created_at_ms))} after start)`)),
      run.parent_run_id ? fact('Parent', runLink(run.parent_run_id, 80)) : null,
      run.waiting ? fact('Waiting for', h('span', { id: 'run-waiting' }, waitingText(run))) : null,
      run.cancel_reason ? fact('Cancelled', clipped(run.cancel_reason, 200, 'cancel-reason')) : null);
  }

  function runActions(run, reload) {
    const status = displayStatus(run);
    const box = h('div', { class: 'actions' });
    if (run.status === 'stuck') {
      box.append(h('button', {
        id: 'run-retry', class: 'btn btn-primary', type: 'button',
        title: 'Take the run up again where its compensation stopped',
        onclick: (e) => retryRun(run.run_id, e.currentTarget).then((ok) => ok && reload()),
      }, 'Retry'));
    }
    if (run.status === 'running' || status === 'waiting') {
      const form = cancelForm(run, reload);
      box.append(h('button', {
        id: 'run-cancel', class: 'btn btn-danger', type: 'button',
        onclick: (e) => { e.currentTarget.hidden = true; form.hidden = false; form.querySelector('input').focus(); },
      }, 'Cancel…'), form);
    }
    return box;
  }

  /** Shared by the run page and the stuck list; answers whether the retry was accepted. */
  async function retryRun(runId, button) {
    if (button) button.disabled = true;
    try {
      const { data } = await api('POST', `/v1/runs/${encodeURIComponent(runId)}/retry`, {});
      const now = data && data.status ? ` It is now ${displayStatus(data)}.` : '';
      showNotice(`Retry accepted for ${runId}.${now}`);
      return true;
    } catch (err) {
      reportError(err);
      return false;
    } finally {
      if (button) button.disabled = false;
    }
  }

  function cancelForm(run, reload) {
    const reason = h('input', {
      id: 'cancel-reason', type: 'text', required: true, maxlength: 500,
      placeholder: 'Why? e.g. customer left', autocomplete: 'off',
    });
    const form = h('form', { id: 'cancel-form', class: 'cancel-form', hidden: true },
      h('label', { for: 'cancel-reason' }, 'Reason'), reason,
      h('button', { id: 'cancel-confirm', class: 'btn btn-danger', type: 'submit' }, 'Cancel run'),
      h('button', { id: 'cancel-dismiss', class: 'btn btn-quiet', type: 'button', onclick: () => { form.hidden = true; $('run-cancel').hidden = false; } }, 'Keep running'));
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const text = reason.value.trim();
      if (!text) return;
      const confirmButton = $('cancel-confirm');
      confirmButton.disabled = true;
      try {
        const { status, data } = await api('POST', `/v1/runs/${encodeURIComponent(run.run_id)}/cancel`, { reason: text, by: 'console' });
        const children = data && Number(data.children) ? ` and ${data.children} child run(s)` : '';
        showNotice(status === 200
          ? `${run.run_id} was already asked to cancel; it is being undone.`
          : `Cancellation requested for ${run.run_id}${children}: its completed steps will be compensated.`);
        reload();
      } catch (err) {
        reportError(err);
      } finally {
        confirmButton.disabled = false;
      }
    });
    return form;
  }

  function jsonPanel(title, text, cls, id) {
    return h('section', { class: 'panel', id },
      h('h2', null, title), h('pre', { class: `json ${cls || ''}` }, text));
  }

  function runIo(run) {
    let outcome;
    if (run.error) outcome = jsonPanel('Error', String(run.error), 'err', 'run-error');
    else if (run.output !== null && run.output !== undefined) outcome = jsonPanel('Output', prettyJson(run.output), '', 'run-output');
    else outcome = jsonPanel('Output', run.status === 'running' || run.status === 'compensating' ? 'not yet' : 'none', 'muted', 'run-output');
    return h('div', { class: 'io' }, jsonPanel('Input', prettyJson(run.input), '', 'run-input'), outcome);
  }

  async function renderRunPage(current, stale) {
    const runId = current.id;
    const root = mount(h('section', { id: 'page-run', class: 'page' }, loadingNote()));
    const reload = () => { if (!stale()) route(); };
    const journal = await apiGet(`/v1/runs/${encodeURIComponent(runId)}/journal`);
    if (stale()) return;
    const run = journal.run || {};
    const events = Array.isArray(journal.events) ? journal.events : [];
    const status = displayStatus(run);

    fill(root,
      h('div', { class: 'crumbs' }, h('a', { href: '#/runs' }, 'Runs'), ' / run'),
      h('div', { class: 'run-head' },
        h('h1', { class: 'mono run-id', title: run.run_id, id: 'run-id' }, String(run.run_id ?? runId)),
        statusPill(status),
        runActions(run, reload)),
      runFacts(run),
      runIo(run),
      h('section', { class: 'panel timeline-panel' },
        h('h2', null, 'Timeline ', h('span', { class: 'muted h2-note' }, 'click a bar for its request and reply')),
        renderTimeline(buildTimeline(events, run))),
      eventsTable(events));
    spreadMarkers(root);
    setLoaded('run');
  }

  // ---------------------------------------------------------------------------------------
  // Timeline model: pairs journal events into spans

  /**
   * Turns the journal into rows (spans with a start and an end event) and axis markers.
   * Each row keeps its raw events so the detail panel can show exactly what was journaled.
   */
  function buildTimeline(events, run) {
    const items = [];
    const markers = [];
    const steps = new Map();
    const twoPhase = new Map();
    const waits = new Map();
    const openLocks = new Map();
    let compensationCursor = null; // where the next compensation starts: "compensating" or the previous undo

    for (const ev of events) {
      switch (ev.kind) {
        case 'step-intent': {
          const item = { type: 'step', call: ev.call, name: ev.name, start: ev, end: null, intent: ev };
          steps.set(ev.call, item);
          items.push(item);
          break;
        }
        case 'step-done':
        case 'step-failed': {
          const item = steps.get(ev.call);
          if (item && !item.end) item.end = ev;
          break;
        }
        case 'step-resolved': {
          const item = steps.get(ev.call);
          if (item) item.resolved = ev;
          break;
        }
        case 'compensating':
          markers.push(ev);
          compensationCursor = ev;
          break;
        case 'compensation-done': {
          const step = steps.get(ev.call);
          items.push({ type: 'undo', call: ev.call, step, start: compensationCursor || ev, end: ev, cause: compensationCursor });
          if (step) step.undone = ev;
          compensationCursor = ev;
          break;
        }
        case 'completed':
        case 'compensated':
        case 'stuck':
          markers.push(ev);
          break;
        case 'lock-acquired':
        case 'lock-reacquired': {
          const previous = openLocks.get(ev.key);
          if (previous) { previous.end = ev; previous.superseded = true; }
          const item = { type: 'lock', key: ev.key, start: ev, end: null, call: ev.call };
          openLocks.set(ev.key, item);
          items.push(item);
          break;
        }
        case 'lock-released': {
          const item = openLocks.get(ev.key);
          if (item) { item.end = ev; openLocks.delete(ev.key); }
          break;
        }
        case 'lock-failed':
          items.push({ type: 'lock', key: ev.key, start: ev, end: ev, failed: true, call: ev.call });
          break;
        case 'two-phase-started': {
          const item = { type: '2pc', call: ev.call, start: ev, end: null };
          twoPhase.set(ev.call, item);
          items.push(item);
          break;
        }
        case 'two-phase-decided': {
          const item = twoPhase.get(ev.call);
          if (item) item.decided = ev;
          break;
        }
        case 'two-phase-finished': {
          const item = twoPhase.get(ev.call);
          if (item) item.end = ev;
          break;
        }
        case 'wait-started': {
          const item = { type: 'wait', call: ev.call, start: ev, end: null };
          waits.set(ev.call, item);
          items.push(item);
          break;
        }
        case 'wait-ended': {
          const item = waits.get(ev.call);
          if (item) item.end = ev;
          break;
        }
        case 'child-started':
          items.push({ type: 'child', call: ev.call, start: ev, end: ev });
          break;
        default:
          break;
      }
    }

    const pending = pendingCompensation(run, steps, compensationCursor, markers);
    if (pending) items.push(pending);

    // Rows in the order things began; an undo begins right after the event that started it.
    const order = (item) => Number(item.start.seq) + (item.type === 'undo' ? 0.5 : 0);
    items.sort((a, b) => order(a) - order(b));

    const times = events.map((ev) => Number(ev.at_ms)).filter(Number.isFinite);
    const t0 = times.length ? Math.min(...times) : 0;
    const t1 = times.length ? Math.max(...times) : 0;
    return { items, markers, t0, t1, run };
  }

  /**
   * A stuck or compensating run has one compensation that began but has no
   * compensation-done: the newest applied step not yet undone. Showing it makes the
   * failing (or in-flight) undo visible instead of leaving a silent gap.
   */
  function pendingCompensation(run, steps, cursor, markers) {
    if (!cursor || (run.status !== 'stuck' && run.status !== 'compensating')) return null;
    const applied = [...steps.values()].filter((s) => {
      if (s.undone || !s.intent.compensation) return false;
      if (s.end && s.end.kind === 'step-done') return true;
      const resolved = s.resolved && resultOf(s.resolved.outcome);
      return Boolean(resolved && resolved.ok);
    });
    if (applied.length === 0) return null;
    applied.sort((a, b) => b.call - a.call);
    const stuck = markers.find((m) => m.kind === 'stuck');
    return {
      type: 'undo', call: applied[0].call, step: applied[0], start: cursor,
      end: stuck || null, pending: true, failed: Boolean(stuck), stuckEvent: stuck,
    };
  }

  // ---------------------------------------------------------------------------------------
  // Timeline drawing

  function itemLabel(item, runStatus) {
    switch (item.type) {
      case 'step':
        return { main: item.name, sub: callSpecLabel(item.intent.action) };
      case 'undo': {
        const name = item.step ? item.step.name : `call ${item.call}`;
        const spec = item.step && item.step.intent.compensation;
        return { main: `undo ${name}`, sub: callSpecLabel(spec) + (item.failed ? ' — failing' : '') };
      }
      case 'lock':
        return item.failed
          ? { main: `lock ${item.key}`, sub: 'not acquired' }
          : { main: `lock ${item.key}`, sub: `token ${item.start.fencing_token}${item.start.kind === 'lock-reacquired' ? ' (re-acquired)' : ''}` };
      case '2pc':
        return { main: `2PC ${item.start.xid}`, sub: twoPhaseVerdict(item) };
      case 'wait':
        return {
          main: fmtWaitTarget(item.start.wait),
          sub: item.end
            ? fmtWaitOutcome(item.end.outcome)
            // A run that ended without its wait ending was cancelled (or failed) while it waited.
            : ['running', 'compensating'].includes(runStatus) ? 'waiting' : 'ended with the run',
        };
      case 'child':
        return { main: `start child ${item.start.run_id}`, sub: item.start.workflow };
      default:
        return { main: item.type, sub: '' };
    }
  }

  function twoPhaseVerdict(item) {
    if (item.decided) return item.decided.commit ? 'commit' : 'abort';
    if (item.end) return 'abort'; // presumed abort: finished without a decision record
    return 'preparing';
  }

  /** The visual state of a bar: drives its colour. */
  function itemState(item) {
    switch (item.type) {
      case 'step':
        if (!item.end) return 'open';
        return item.end.kind === 'step-done' ? 'ok' : 'failed';
      case 'undo':
        if (item.failed) return 'failed';
        return item.pending ? 'open' : 'undo';
      case 'lock':
        if (item.failed) return 'failed';
        return item.end ? 'lock' : 'open-lock';
      case '2pc': {
        const verdict = twoPhaseVerdict(item);
        if (verdict === 'preparing' || !item.end) return 'open';
        const finished = resultOf(item.end.outcome);
        return verdict === 'commit' && (!finished || finished.ok) ? 'commit' : 'abort';
      }
      case 'wait':
        return item.end ? 'wait' : 'open-wait';
      default:
        return 'child';
    }
  }

  const ROW_CLASS = { step: 'timeline-step', undo: 'timeline-undo', lock: 'timeline-lock', '2pc': 'timeline-2pc', wait: 'timeline-wait', child: 'timeline-child' };

  // Steps that land on round clock values (1 s, 15 s, 5 min, 1 h …), not just powers of ten.
  const TICK_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10_000, 15_000, 30_000,
    60_000, 120_000, 300_000, 600_000, 900_000, 1_800_000, 3_600_000, 7_200_000, 10_800_000,
    21_600_000, 43_200_000, 86_400_000];

  /** The smallest round step that gives at most about seven ticks. */
  function tickStep(span) {
    const wanted = span / 7;
    return TICK_STEPS.find((step) => step >= wanted) || Math.ceil(wanted / 86_400_000) * 86_400_000;
  }

  function renderTimeline(model) {
    const { items, markers, t0, t1 } = model;
    const container = h('div', { id: 'timeline', class: 'timeline' });
    const detail = h('div', { id: 'timeline-detail', class: 'timeline-detail' },
      h('p', { class: 'muted' }, 'Click a bar (or an event marker) to see its request, reply, call number and timing.'));
    if (items.length === 0 && markers.length === 0) {
      container.append(h('p', { class: 'muted' }, 'The journal has nothing to draw yet.'));
      return h('div', { class: 'timeline-wrap' }, container, detail);
    }

    const span = Math.max(t1 - t0, 1);
    const x = (ms) => Math.min(100, Math.max(0, ((Number(ms) - t0) / span) * 100));
    const ctx = { t0, t1, span, x, detail, container, model };

    const rows = h('div', { class: 'tl-rows' });
    rows.append(axisRow(ctx), markerRow(ctx));
    for (const item of items) rows.append(itemRow(item, ctx));
    rows.append(gridOverlay(ctx));
    container.append(rows);

    const wrap = h('div', { class: 'timeline-wrap' }, container, detail);
    // Operators open a failed run to see what failed: show that first, a failing undo above all.
    const failed = items.filter((item) => itemState(item) === 'failed');
    const firstFailed = failed.find((item) => item.type === 'undo') || failed[0];
    if (firstFailed) selectItem(firstFailed, ctx);
    return wrap;
  }

  function axisRow(ctx) {
    const step = tickStep(ctx.span);
    const ticks = h('div', { class: 'tl-plot tl-ticks' });
    for (let ms = 0; ms <= ctx.span + 0.5; ms += step) {
      const pos = ctx.x(ctx.t0 + ms);
      const edge = pos < 3 ? ' tick-first' : pos > 97 ? ' tick-last' : '';
      const tick = h('span', { class: `tick${edge}` }, fmtOffset(ms, step, ctx.span));
      tick.style.left = `${pos}%`;
      ticks.append(tick);
    }
    return h('div', { class: 'tl-row tl-axis' },
      h('div', { class: 'tl-label muted' }, `start ${localTime(ctx.t0)}`),
      h('div', { class: 'tl-dur muted' }, fmtDuration(ctx.t1 - ctx.t0)),
      h('div', { class: 'tl-track' }, ticks));
  }

  const MARKER_TEXT = { completed: 'completed', compensated: 'compensated', stuck: 'stuck', compensating: 'compensating' };

  function markerRow(ctx) {
    const plot = h('div', { class: 'tl-plot tl-markers' });
    const row = h('div', { class: 'tl-row tl-marker-row' },
      h('div', { class: 'tl-label muted' }, 'outcome'), h('div', { class: 'tl-dur' }), h('div', { class: 'tl-track' }, plot));
    for (const ev of ctx.model.markers) {
      const pos = ctx.x(ev.at_ms);
      const flag = h('button', {
        type: 'button',
        class: `tl-marker marker-${ev.kind}${pos > 60 ? ' marker-left' : ''}`,
        dataset: { kind: ev.kind },
        title: `${ev.kind} at +${fmtInt(ev.at_ms - ctx.t0)} ms`,
        onclick: () => selectMarker(ev, flag, ctx),
      }, MARKER_TEXT[ev.kind] || ev.kind);
      flag.style.left = `${pos}%`;
      plot.append(flag);
    }
    if (ctx.model.markers.length === 0) {
      plot.append(h('span', { class: 'muted tl-nomarker' }, ctx.model.run.status === 'stuck' ? '' : 'not ended'));
    }
    return row;
  }

  /** Flags that would overlap move down a lane; they can only be measured once in the DOM. */
  function spreadMarkers(scope) {
    const row = scope.querySelector('.tl-marker-row');
    if (!row) return;
    const flags = [...row.querySelectorAll('.tl-marker')]
      .map((flag) => ({ flag, box: flag.getBoundingClientRect() }))
      .sort((a, b) => a.box.left - b.box.left);
    const laneEnds = [];
    for (const { flag, box } of flags) {
      let lane = laneEnds.findIndex((end) => end + 4 <= box.left);
      if (lane < 0) { lane = laneEnds.length; laneEnds.push(0); }
      laneEnds[lane] = box.right;
      flag.style.top = `${3 + lane * 20}px`;
    }
    row.style.height = `${Math.max(1, laneEnds.length) * 20 + 6}px`;
  }

  function itemRow(item, ctx) {
    const label = itemLabel(item, ctx.model.run.status);
    const state = itemState(item);
    const startMs = Number(item.start.at_ms);
    const open = !item.end;
    const endMs = open ? ctx.t1 : Number(item.end.at_ms);
    const left = ctx.x(startMs);
    const width = Math.max(0, ctx.x(endMs) - left);

    const bar = h('div', { class: `tl-bar state-${state}${open ? ' open' : ''}` });
    // min() keeps instant events visible without letting them run past the right edge.
    bar.style.left = `min(${left}%, calc(100% - 6px))`;
    bar.style.width = `${width}%`;
    if (item.type === '2pc' && item.decided) {
      const tick = h('span', { class: 'tl-decided', title: 'decision journaled' });
      tick.style.left = width > 0 ? `${((ctx.x(item.decided.at_ms) - left) / width) * 100}%` : '50%';
      bar.append(tick);
    }

    // An open item of a live run has lasted until now, not just until the last event.
    const live = open && (ctx.model.run.status === 'running' || ctx.model.run.status === 'compensating');
    const lasted = (live ? Math.max(Date.now(), endMs) : endMs) - startMs;
    const duration = open ? `${fmtDuration(lasted)}…` : fmtDuration(lasted);
    const title = `${label.main} ${label.sub}`.trim();
    const row = h('div', {
      class: `tl-row tl-item ${ROW_CLASS[item.type] || ''}`,
      tabindex: '0', role: 'button', title,
      dataset: {
        step: item.type === 'step' ? item.name : item.type === 'undo' && item.step ? item.step.name : undefined,
        call: item.call ?? undefined,
        state,
      },
    },
    h('div', { class: 'tl-label' },
      h('span', { class: 'tl-main' }, label.main), label.sub ? h('span', { class: 'tl-sub' }, label.sub) : null),
    h('div', { class: 'tl-dur' }, duration),
    h('div', { class: 'tl-track' }, h('div', { class: 'tl-plot' }, bar)));

    item.row = row;
    row.addEventListener('click', () => selectItem(item, ctx));
    row.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' || event.key === ' ') { event.preventDefault(); selectItem(item, ctx); }
    });
    return row;
  }

  /** Vertical grid and marker lines drawn once over all rows, behind the bars. */
  function gridOverlay(ctx) {
    const overlay = h('div', { class: 'tl-overlay', 'aria-hidden': 'true' });
    const step = tickStep(ctx.span);
    for (let ms = 0; ms <= ctx.span + 0.5; ms += step) {
      const line = h('span', { class: 'tl-grid' });
      line.style.left = `${ctx.x(ctx.t0 + ms)}%`;
      overlay.append(line);
    }
    for (const ev of ctx.model.markers) {
      const line = h('span', { class: `tl-grid tl-grid-marker marker-${ev.kind}` });
      line.style.left = `${ctx.x(ev.at_ms)}%`;
      overlay.append(line);
    }
    return overlay;
  }

  function clearSelection(ctx) {
    for (const el of ctx.container.querySelectorAll('.selected')) el.classList.remove('selected');
  }

  function selectItem(item, ctx) {
    clearSelection(ctx);
    if (item.row) item.row.classList.add('selected');
    fill(ctx.detail, itemDetail(item, ctx));
    ctx.detail.dataset.kind = item.type;
  }

  function selectMarker(ev, flag, ctx) {
    clearSelection(ctx);
    flag.classList.add('selected');
    const text = ev.kind === 'completed' ? prettyJsonText(ev.output) : String(ev.cause ?? ev.reason ?? '');
    fill(ctx.detail,
      h('h3', null, ev.kind),
      detailFacts(ctx, [['Seq', ev.seq]], ev, ev),
      jsonBlock(ev.kind === 'completed' ? 'Output' : ev.kind === 'stuck' ? 'Reason' : 'Cause', text, ev.kind === 'completed' ? '' : 'err'));
    ctx.detail.dataset.kind = ev.kind;
  }

  // ---------------------------------------------------------------------------------------
  // Timeline detail panel

  function jsonBlock(title, text, cls) {
    return h('div', { class: 'detail-block' }, h('h4', null, title), h('pre', { class: `json ${cls || ''}` }, text));
  }

  /** Call number, when it started and ended, how long it took. */
  function detailFacts(ctx, extra, startEv, endEv) {
    const rel = (ev) => `+${fmtInt(Number(ev.at_ms) - ctx.t0)} ms`;
    const pairs = [...extra];
    const instant = endEv === startEv;
    pairs.push([instant ? 'At' : 'Started', [timeEl(startEv.at_ms), h('span', { class: 'muted' }, `  ${rel(startEv)}`)]]);
    if (endEv && !instant) {
      pairs.push(['Ended', [timeEl(endEv.at_ms), h('span', { class: 'muted' }, `  ${rel(endEv)}`)]]);
      pairs.push(['Duration', fmtDuration(Number(endEv.at_ms) - Number(startEv.at_ms))]);
    } else if (!endEv) {
      pairs.push(['Ended', h('span', { class: 'muted' }, 'not yet')]);
    }
    return h('dl', { class: 'facts facts-tight' },
      pairs.filter(([, v]) => v !== undefined && v !== null && v !== '')
        .map(([k, v]) => fact(k, ...(Array.isArray(v) ? v : [v]).map((x) => (x instanceof Node ? x : String(x))))));
  }

  function fencingList(tokens) {
    if (!Array.isArray(tokens) || tokens.length === 0) return null;
    return tokens.map(([key, token]) => `${key} → ${token}`).join(', ');
  }

  function itemDetail(item, ctx) {
    const label = itemLabel(item, ctx.model.run.status);
    const heading = h('h3', null, label.main, label.sub ? h('span', { class: 'muted' }, `  ${label.sub}`) : null);
    switch (item.type) {
      case 'step': return [heading, ...stepDetail(item, ctx)];
      case 'undo': return [heading, ...undoDetail(item, ctx)];
      case 'lock': return [heading, ...lockDetail(item, ctx)];
      case '2pc': return [heading, ...twoPhaseDetail(item, ctx)];
      case 'wait': return [heading, ...waitDetail(item, ctx)];
      default: return [heading, ...childDetail(item, ctx)];
    }
  }

  function stepDetail(item, ctx) {
    const intent = item.intent;
    const blocks = [
      detailFacts(ctx, [
        ['Call', intent.call],
        ['Action', callSpecLabel(intent.action)],
        ['Fencing tokens', fencingList(intent.fencing_tokens) || h('span', { class: 'muted' }, 'none')],
        ['Compensation', intent.compensation ? callSpecLabel(intent.compensation) : h('span', { class: 'muted' }, 'none')],
      ], intent, item.end),
      jsonBlock('Request', prettyJsonText(intent.action && intent.action.payload)),
    ];
    if (!item.end) blocks.push(jsonBlock('Reply', 'no reply journaled yet', 'muted'));
    else if (item.end.kind === 'step-done') blocks.push(jsonBlock('Reply', prettyJsonText(item.end.output)));
    else blocks.push(jsonBlock('Error', fmtFailure(item.end.error), 'err'));
    if (item.resolved) blocks.push(jsonBlock('Resolved (repeated to learn the outcome)', fmtResult(item.resolved.outcome)));
    if (intent.compensation) blocks.push(jsonBlock('Compensation request', prettyJsonText(intent.compensation.payload)));
    return blocks;
  }

  function undoDetail(item, ctx) {
    const spec = item.step && item.step.intent.compensation;
    const blocks = [
      detailFacts(ctx, [
        ['Call', item.call],
        ['Undoes', item.step ? item.step.name : `call ${item.call}`],
        ['Compensation', spec ? callSpecLabel(spec) : null],
        ['Step\'s fencing tokens', item.step ? fencingList(item.step.intent.fencing_tokens) : null],
      ], item.start, item.end),
    ];
    if (spec) blocks.push(jsonBlock('Request', prettyJsonText(spec.payload)));
    if (item.stuckEvent) blocks.push(jsonBlock('Error (run stuck)', String(item.stuckEvent.reason ?? ''), 'err'));
    else if (item.pending) blocks.push(jsonBlock('Reply', 'not done yet', 'muted'));
    else blocks.push(jsonBlock('Reply', prettyJsonText(item.end.output)));
    const cause = item.cause && item.cause.kind === 'compensating' ? item.cause : null;
    if (cause) blocks.push(jsonBlock('Why the run is being undone', String(cause.cause ?? ''), 'err'));
    return blocks;
  }

  function lockDetail(item, ctx) {
    const s = item.start;
    if (item.failed) {
      return [detailFacts(ctx, [['Call', s.call], ['Key', s.key], ['TTL', `${fmtInt(s.ttl_ms)} ms`]], s, s),
        jsonBlock('Error', String(s.reason ?? ''), 'err')];
    }
    let released = 'still held at the end of the journal';
    if (item.end && item.superseded) released = 'lease replaced by a re-acquire';
    else if (item.end) released = item.end.call === null || item.end.call === undefined ? 'released by the host at the run\'s end' : `released by call ${item.end.call}`;
    return [detailFacts(ctx, [
      ['Call', s.call],
      ['Key', s.key],
      ['Fencing token', s.fencing_token],
      ['TTL', s.ttl_ms !== undefined ? `${fmtInt(s.ttl_ms)} ms` : null],
      ['Lease expires', s.expires_at_ms ? timeEl(s.expires_at_ms) : null],
      ['Waited', s.waited_ms !== undefined ? `${fmtInt(s.waited_ms)} ms` : null],
      ['Release', released],
    ], s, item.end)];
  }

  function twoPhaseDetail(item, ctx) {
    const s = item.start;
    const blocks = [detailFacts(ctx, [
      ['Call', s.call],
      ['Transaction', s.xid],
      ['Decision', item.decided ? `${item.decided.commit ? 'commit' : 'abort'}${item.decided.reason ? ` — ${item.decided.reason}` : ''}` : 'none journaled (presumed abort)'],
      ['Decided at', item.decided ? `+${fmtInt(item.decided.at_ms - ctx.t0)} ms` : null],
    ], s, item.end)];
    const branches = Array.isArray(s.calls) ? s.calls : [];
    branches.forEach((branch, i) => {
      blocks.push(jsonBlock(`Branch ${i + 1}: ${callSpecLabel(branch)}`, prettyJsonText(branch.payload)));
    });
    if (item.end) {
      const res = resultOf(item.end.outcome);
      if (res && res.ok) blocks.push(jsonBlock('Reply (prepare replies)', prettyJson((res.value || []).map((v) => { try { return parseJson(v); } catch { return v; } }))));
      else blocks.push(jsonBlock('Error', res ? fmtFailure(res.error) : compactJson(item.end.outcome), 'err'));
    }
    return blocks;
  }

  function waitDetail(item, ctx) {
    const s = item.start;
    const blocks = [detailFacts(ctx, [
      ['Call', s.call],
      ['Waits for', fmtWaitTarget(s.wait)],
      ['Due', s.due_ms ? timeEl(s.due_ms) : null],
      ['Ended by', item.end ? fmtWaitOutcome(item.end.outcome) : null],
    ], s, item.end)];
    if (s.wait && s.wait.for === 'child' && s.wait.run_id) {
      blocks.push(h('p', null, 'Child run: ', runLink(s.wait.run_id, 80)));
    }
    const outcome = item.end && item.end.outcome;
    if (outcome && outcome.ended === 'signal') {
      blocks.push(jsonBlock(`Signal ${outcome.signal_id ?? ''}`, prettyJsonText(outcome.payload)));
    } else if (outcome && outcome.ended === 'child') {
      const res = resultOf(outcome.outcome);
      blocks.push(res && !res.ok ? jsonBlock('Child failed', String(res.error), 'err') : jsonBlock('Child output', prettyJsonText(res ? res.value : outcome.outcome)));
    } else if (outcome && outcome.ended === 'due') {
      blocks.push(h('p', { class: 'muted' }, 'The timer came due at ', timeEl(outcome.at_ms), '.'));
    }
    return blocks;
  }

  function childDetail(item, ctx) {
    const s = item.start;
    const res = resultOf(s.outcome);
    return [
      detailFacts(ctx, [['Call', s.call], ['Workflow', s.workflow], ['Started', res && !res.ok ? `failed: ${res.error}` : 'ok']], s, s),
      h('p', null, 'Child run: ', runLink(s.run_id, 80)),
    ];
  }

  // ---------------------------------------------------------------------------------------
  // Raw journal table

  function eventSummary(ev) {
    const c = ev.call !== undefined && ev.call !== null ? `#${ev.call} ` : '';
    switch (ev.kind) {
      case 'started': return `${ev.workflow} ${String(ev.module_hash || '').slice(0, 12)} input ${compactJsonText(ev.input)}`;
      case 'step-intent': return `${c}${ev.name} ${callSpecLabel(ev.action)} ${compactJsonText(ev.action && ev.action.payload)}`;
      case 'step-done': return `${c}→ ${compactJsonText(ev.output)}`;
      case 'step-failed': return `${c}${fmtFailure(ev.error)}`;
      case 'step-resolved': return `${c}${fmtResult(ev.outcome)}`;
      case 'compensating': return String(ev.cause ?? '');
      case 'compensation-done': return `${c}→ ${compactJsonText(ev.output)}`;
      case 'compensated': return String(ev.cause ?? '');
      case 'stuck': return String(ev.reason ?? '');
      case 'completed': return compactJsonText(ev.output);
      case 'lock-acquired': return `${c}${ev.key} token ${ev.fencing_token} ttl ${ev.ttl_ms} ms waited ${ev.waited_ms ?? 0} ms`;
      case 'lock-reacquired': return `${ev.key} token ${ev.fencing_token} ttl ${ev.ttl_ms} ms`;
      case 'lock-released': return `${c}${ev.key} token ${ev.fencing_token}`;
      case 'lock-failed': return `${c}${ev.key}: ${ev.reason}`;
      case 'two-phase-started': return `${c}${ev.xid} ${(ev.calls || []).map(callSpecLabel).join(', ')}`;
      case 'two-phase-decided': return `${c}${ev.commit ? 'commit' : 'abort'}${ev.reason ? ` ${ev.reason}` : ''}`;
      case 'two-phase-finished': return `${c}${fmtResult(ev.outcome)}`;
      case 'wait-started': return `${c}${fmtWaitTarget(ev.wait)}${ev.due_ms ? ` due ${localTime(ev.due_ms)}` : ''}`;
      case 'wait-ended': return `${c}${fmtWaitOutcome(ev.outcome)}`;
      case 'child-started': return `${c}${ev.run_id} (${ev.workflow}) ${fmtResult(ev.outcome)}`;
      case 'log': return `${c}${ev.message}`;
      case 'clock': return `${c}${ev.ms}`;
      case 'random': return `${c}${ev.value}`;
      default: {
        const rest = { ...ev };
        delete rest.seq; delete rest.at_ms; delete rest.kind;
        return compactJson(rest);
      }
    }
  }

  function eventsTable(events) {
    const t0 = events.length ? Math.min(...events.map((e) => Number(e.at_ms))) : 0;
    const rows = events.map((ev) => h('tr', { dataset: { seq: ev.seq, kind: ev.kind } },
      h('td', { class: 'num mono' }, String(ev.seq)),
      h('td', { class: 'num mono' }, `+${fmtInt(Number(ev.at_ms) - t0)}`),
      h('td', { class: 'mono' }, h('span', { class: `kind kind-${kindFamily(ev.kind)}` }, String(ev.kind))),
      h('td', { class: 'cell-summary' }, clipped(eventSummary(ev), 180, 'mono'))));
    return h('details', { class: 'panel events', id: 'events' },
      h('summary', null, `Journal events (${events.length})`),
      h('table', { id: 'events-table', class: 'table table-compact' },
        h('thead', null, h('tr', null, h('th', { class: 'num' }, 'seq'), h('th', { class: 'num' }, '+ms'), h('th', null, 'kind'), h('th', null, 'summary'))),
        h('tbody', null, rows)));
  }

  function kindFamily(kind) {
    if (['step-failed', 'stuck', 'lock-failed', 'compensating'].includes(kind)) return 'bad';
    if (['compensation-done', 'compensated', 'step-resolved'].includes(kind)) return 'undo';
    if (['step-done', 'completed'].includes(kind)) return 'good';
    return 'plain';
  }

  // ---------------------------------------------------------------------------------------
  // Stuck page

  async function renderStuckPage(current, stale) {
    const root = mount(pageShell('page-stuck', 'Stuck runs'));
    root.append(h('p', { class: 'lede' },
      'A stuck run\'s compensation kept failing; fix the cause (a participant down, an account closed), then Retry takes it up where it stopped.'));
    const slot = h('div', { class: 'table-wrap' }, loadingNote());
    root.append(slot);

    const load = async () => {
      const page = await apiGet(`/v1/runs${query({ status: 'stuck', limit: STUCK_LIMIT })}`);
      if (stale()) return;
      const runs = (page && page.runs) || [];
      fill(slot, stuckTable(runs, load), page && page.next
        ? h('p', { class: 'muted' }, `Showing the newest ${STUCK_LIMIT}; `, h('a', { href: runsHash({ status: 'stuck' }) }, 'see all stuck runs'), '.')
        : null);
      setLoaded('stuck');
    };
    await load();
  }

  function stuckTable(runs, reload) {
    const body = h('tbody', null, runs.map((run) => h('tr', { dataset: { runId: run.run_id, status: displayStatus(run) } },
      h('td', { class: 'cell-id' }, runLink(run.run_id)),
      h('td', null, clipped(run.workflow, 40), h('span', { class: 'muted' }, ` v${run.version}`)),
      h('td', { class: 'cell-reason' }, clipped(run.error || '(no reason recorded)', 160, 'err')),
      h('td', { class: 'cell-time' }, timeEl(run.updated_at_ms)),
      h('td', { class: 'cell-actions' },
        h('button', {
          class: 'btn btn-small btn-primary retry', type: 'button', dataset: { runId: run.run_id },
          onclick: async (e) => {
            if (await retryRun(run.run_id, e.currentTarget)) await reload().catch(reportError);
          },
        }, 'Retry'),
        h('a', { class: 'btn btn-small btn-quiet', href: runHref(run.run_id) }, 'Open')))));
    if (runs.length === 0) {
      body.append(h('tr', { class: 'empty' }, h('td', { colspan: 5 }, 'No stuck runs. Nothing needs an operator.')));
    }
    return h('table', { id: 'stuck-table', class: 'table' },
      h('thead', null, h('tr', null, h('th', null, 'Run id'), h('th', null, 'Workflow'), h('th', null, 'Reason'), h('th', null, 'Stuck since'), h('th', null, ''))),
      body);
  }

  // ---------------------------------------------------------------------------------------
  // Workflows page

  const expandedWorkflows = new Set(); // kept across reloads so a rollback does not fold the list

  async function renderWorkflowsPage(current, stale) {
    const root = mount(pageShell('page-workflows', 'Workflows'));
    root.append(h('p', { class: 'lede' },
      'Each workflow\'s active version starts new runs; runs already started keep the module they began with.'));
    const slot = h('div', { class: 'table-wrap' }, loadingNote());
    root.append(slot);

    const load = async () => {
      const data = await apiGet('/v1/workflows');
      if (stale()) return;
      const workflows = (data && data.workflows) || [];
      const ctx = { stale, reload: load };
      fill(slot, workflowsTable(workflows, ctx));
      setLoaded('workflows');
      for (const wf of workflows) {
        if (expandedWorkflows.has(wf.workflow)) toggleVersions(wf.workflow, ctx, true);
      }
    };
    await load();
  }

  function workflowsTable(workflows, ctx) {
    const body = h('tbody');
    for (const wf of workflows) {
      const toggle = h('button', {
        class: 'btn btn-small versions-toggle', type: 'button', 'aria-expanded': 'false',
        dataset: { workflow: wf.workflow },
        onclick: () => toggleVersions(wf.workflow, ctx),
      }, 'Versions ▾');
      const row = h('tr', { class: 'wf-row', dataset: { workflow: wf.workflow } },
        h('td', { class: 'mono' }, clipped(wf.workflow, 60)),
        h('td', { class: 'num' }, `v${wf.version}`),
        h('td', { class: 'mono' }, h('span', { title: wf.hash }, String(wf.hash || '').slice(0, 12))),
        h('td', { class: 'cell-time' }, timeEl(wf.deployed_at_ms)),
        h('td', null, h('a', { href: runsHash({ workflow: wf.workflow }) }, 'runs')),
        h('td', { class: 'cell-actions' }, toggle));
      const detailRow = h('tr', { class: 'wf-versions', hidden: true, dataset: { workflow: wf.workflow } },
        h('td', { colspan: 6 }));
      row.versionsRow = detailRow;
      row.toggle = toggle;
      body.append(row, detailRow);
    }
    if (workflows.length === 0) body.append(h('tr', { class: 'empty' }, h('td', { colspan: 6 }, 'No workflow is deployed.')));
    return h('table', { id: 'workflows-table', class: 'table' },
      h('thead', null, h('tr', null, ['Workflow', 'Active version', 'Hash', 'Deployed', '', ''].map((t, i) => h('th', { class: i === 1 ? 'num' : null }, t)))),
      body);
  }

  function findWorkflowRow(name) {
    return [...document.querySelectorAll('#workflows-table tr.wf-row')].find((r) => r.dataset.workflow === name);
  }

  async function toggleVersions(name, ctx, forceOpen) {
    const row = findWorkflowRow(name);
    if (!row) return;
    const detailRow = row.versionsRow;
    const open = forceOpen || detailRow.hidden;
    detailRow.hidden = !open;
    row.toggle.setAttribute('aria-expanded', String(open));
    row.toggle.textContent = open ? 'Versions ▴' : 'Versions ▾';
    if (!open) { expandedWorkflows.delete(name); return; }
    expandedWorkflows.add(name);
    const cell = detailRow.firstChild;
    fill(cell, loadingNote());
    try {
      const data = await apiGet(`/v1/workflows/${encodeURIComponent(name)}/versions`);
      if (ctx.stale()) return;
      fill(cell, versionsTable(name, (data && data.versions) || [], ctx));
    } catch (err) {
      fill(cell, h('p', { class: 'err' }, 'Could not load versions.'));
      reportError(err);
    }
  }

  function versionsTable(name, versions, ctx) {
    const sorted = [...versions].sort((a, b) => Number(b.version) - Number(a.version));
    const rows = sorted.map((v) => h('tr', { dataset: { version: v.version, active: String(Boolean(v.active)) }, class: v.active ? 'is-active' : null },
      h('td', { class: 'num' }, `v${v.version}`),
      h('td', { class: 'cell-time' }, timeEl(v.deployed_at_ms)),
      h('td', { class: 'mono' }, h('span', { title: v.hash }, String(v.hash || '').slice(0, 16))),
      h('td', null, v.active ? h('span', { class: 'pill pill-completed' }, 'active') : h('span', { class: 'muted' }, '—')),
      h('td', { class: 'cell-actions' }, v.active ? null : h('button', {
        class: 'btn btn-small rollback', type: 'button', dataset: { version: v.version, workflow: name },
        onclick: (e) => rollback(name, v.version, e.currentTarget, ctx),
      }, 'Rollback to this version'))));
    return h('table', { class: 'table table-compact versions-table', dataset: { workflow: name, loaded: 'true' } },
      h('thead', null, h('tr', null, ['Version', 'Deployed', 'Hash', 'Active', ''].map((t, i) => h('th', { class: i === 0 ? 'num' : null }, t)))),
      h('tbody', null, rows));
  }

  async function rollback(name, version, button, ctx) {
    if (!window.confirm(`Make version ${version} the active version of "${name}"?\n\nNew runs will start on version ${version}; runs already started keep their version.`)) return;
    button.disabled = true;
    try {
      const { data } = await api('POST', `/v1/workflows/${encodeURIComponent(name)}/rollback`, { version: Number(version) });
      showNotice(`${name}: version ${data && data.version !== undefined ? data.version : version} is now active.`);
      await ctx.reload();
    } catch (err) {
      reportError(err);
    } finally {
      button.disabled = false;
    }
  }

  // ---------------------------------------------------------------------------------------
  // Accounts page

  function amountCell(n) {
    const negative = Number(n) < 0;
    return h('td', { class: `num mono${negative ? ' negative' : ''}` }, fmtInt(n));
  }

  async function renderAccountsPage(current, stale) {
    const prefix = current.params.get('prefix') || '';
    const after = current.params.get('after') || '';
    const root = mount(pageShell('page-accounts', 'Accounts'));

    const input = h('input', { id: 'accounts-prefix', type: 'text', value: prefix, placeholder: 'account name prefix', autocomplete: 'off', spellcheck: 'false' });
    root.append(h('form', {
      class: 'filters', id: 'accounts-filters',
      onsubmit: (e) => { e.preventDefault(); go(`#/accounts${query({ prefix: input.value.trim() })}`); },
    },
    h('label', { class: 'field' }, h('span', null, 'Prefix'), input),
    h('div', { class: 'filter-buttons' }, h('button', { id: 'accounts-apply', class: 'btn btn-primary', type: 'submit' }, 'Apply'))));
    const slot = h('div', { class: 'table-wrap' }, loadingNote());
    root.append(slot);

    const data = await apiGet(`/v1/ledger/accounts${query({ prefix, after, limit: ACCOUNTS_PAGE_SIZE })}`);
    if (stale()) return;
    const accounts = (data && data.accounts) || [];
    fill(slot, accountsTable(accounts, prefix),
      h('div', { class: 'pager' },
        after ? h('button', { id: 'accounts-first', class: 'btn', type: 'button', onclick: () => go(`#/accounts${query({ prefix })}`) }, '← First') : null,
        data && data.next ? h('button', {
          id: 'accounts-more', class: 'btn', type: 'button',
          onclick: () => go(`#/accounts${query({ prefix, after: data.next })}`),
        }, 'More →') : null));
    setLoaded('accounts');
  }

  function accountsTable(accounts, prefix) {
    const sum = (field) => accounts.reduce((total, a) => total + (Number(a[field]) || 0), 0);
    const body = h('tbody', null, accounts.map((a) => h('tr', { dataset: { account: a.account } },
      h('td', { class: 'mono' }, clipped(a.account, 60)),
      amountCell(a.balance),
      amountCell(a.held),
      amountCell((Number(a.balance) || 0) + (Number(a.held) || 0)))));
    if (accounts.length === 0) {
      body.append(h('tr', { class: 'empty' }, h('td', { colspan: 4 }, prefix ? 'No account starts with this prefix.' : 'The ledger has no accounts.')));
    }
    const foot = h('tfoot', null, h('tr', { id: 'accounts-total' },
      h('th', { class: 'total-label' }, `total on this page (${accounts.length} accounts)`),
      amountCell(sum('balance')), amountCell(sum('held')), amountCell(sum('balance') + sum('held'))));
    return h('table', { id: 'accounts-table', class: 'table' },
      h('thead', null, h('tr', null, h('th', null, 'Account'), h('th', { class: 'num' }, 'Balance'), h('th', { class: 'num' }, 'Held'), h('th', { class: 'num' }, 'Balance + held'))),
      body, foot);
  }

  // ---------------------------------------------------------------------------------------
  // Start

  const PAGES = {
    runs: renderRunsPage,
    run: renderRunPage,
    stuck: renderStuckPage,
    workflows: renderWorkflowsPage,
    accounts: renderAccountsPage,
  };

  function start() {
    $('login-form').addEventListener('submit', submitLogin);
    $('logout').addEventListener('click', logout);
    for (const close of document.querySelectorAll('.banner-close')) {
      close.addEventListener('click', () => { close.parentElement.hidden = true; });
    }
    window.addEventListener('hashchange', () => { clearBanners(); route(); });
    route();
  }

  start();
})();
