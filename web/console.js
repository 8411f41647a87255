/*
 * The arcp-gateway web console. Plain DOM code: every piece of data is put on
 * the page with textContent or attributes, never parsed as HTML. The stream is
 * followed with ArcpClient (v1/client.js); requests use fetch.
 */
(function () {
  'use strict';

  // The console is served at <base>/, so the base is the page's directory.
  const BASE = location.pathname.replace(/index\.html$/, '').replace(/\/+$/, '');
  const TERMINAL = new Set(['success', 'error', 'cancelled', 'timed_out']);
  const LOG_LIMIT = 200; // lines kept per log
  const KEEP_RESULT_BYTES = 8 * 1024 * 1024; // streamed result bytes kept for checking
  const EXAMPLES = {
    ticker: { count: 20, interval_ms: 500 },
    chunker: { size: 65536, chunk_size: 4096, interval_ms: 100 },
    echo: { message: 'hello from the console' },
    fail: { code: 'INTERNAL_ERROR', message: 'failing on purpose', delay_ms: 1500 },
    spender: { steps: 10, cost: 0.25, currency: 'USD', interval_ms: 300 },
  };
  const STORE_PREFIX = 'arcp-console.';

  const $ = (id) => document.getElementById(id);
  const encoder = new TextEncoder();

  const state = {
    token: '',
    sessionId: null,
    conn: null,
    lastSeq: null,
    features: [],
    agents: [],
    agentSignature: '',
    jobs: new Map(),
  };

  // ---- small helpers -------------------------------------------------------

  function store(key, value) {
    try {
      if (value == null) sessionStorage.removeItem(STORE_PREFIX + key);
      else sessionStorage.setItem(STORE_PREFIX + key, value);
    } catch (error) { /* storage may be unavailable; memory is enough */ }
  }

  function stored(key) {
    try {
      return sessionStorage.getItem(STORE_PREFIX + key);
    } catch (error) {
      return null;
    }
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text != null) node.textContent = text;
    return node;
  }

  function shorten(text, max) {
    return text.length > max ? text.slice(0, max) + '…' : text;
  }

  function formatBytes(n) {
    if (n < 1024) return n + ' B';
    if (n < 1024 * 1024) return (n / 1024).toFixed(1) + ' KiB';
    return (n / (1024 * 1024)).toFixed(2) + ' MiB';
  }

  function time() {
    return new Date().toLocaleTimeString([], { hour12: false });
  }

  function showError(id, message) {
    const node = $(id);
    node.textContent = message || '';
    node.hidden = !message;
  }

  // Appends a line to a log list, dropping the oldest beyond LOG_LIMIT.
  function appendLog(list, text, kind) {
    const line = el('li', kind ? 'log-' + kind : '');
    line.append(el('time', null, time()), el('span', null, text));
    list.append(line);
    while (list.childElementCount > LOG_LIMIT) list.firstElementChild.remove();
    list.scrollTop = list.scrollHeight;
  }

  function streamLog(text, kind) {
    appendLog($('stream-log'), text, kind);
  }

  class ApiError extends Error {
    constructor(status, body) {
      const code = body && body.code ? body.code : 'HTTP_' + status;
      super(code + ': ' + ((body && body.message) || 'request failed'));
      this.status = status;
      this.code = code;
    }
  }

  // One API call. The api token goes in Authorization; same-origin
  // credentials let the gateway's resume cookie be stored and sent.
  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    if (state.token) headers.Authorization = 'Bearer ' + state.token;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const response = await fetch(BASE + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
      cache: 'no-store',
    });
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (error) {
      data = { message: shorten(text, 200) };
    }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  function sessionPath(suffix) {
    return '/v1/sessions/' + encodeURIComponent(state.sessionId) + (suffix || '');
  }

  // ---- header and session panel --------------------------------------------

  function setConnectionState(status) {
    const pill = $('connection-state');
    pill.textContent = status;
    pill.dataset.state = status;
    document.body.dataset.stream = status;
    if (state.conn) $('reconnects').textContent = String(state.conn.reconnects);
  }

  function setSeq(seq) {
    $('event-seq').textContent = seq == null ? '–' : String(seq);
  }

  function showFatal(error) {
    $('fatal').textContent = error.code;
    $('fatal').hidden = false;
    const expired = error.code === 'RESUME_WINDOW_EXPIRED';
    $('fatal-message').textContent = (expired
      ? 'This session can no longer be resumed; the events it missed are gone.'
      : 'The stream cannot continue.') + ' Gateway: ' + error.message + ' (HTTP ' + error.httpStatus + ')';
    $('fatal-banner').hidden = false;
    store('session', null);
    setSessionControls(false);
  }

  function hideFatal() {
    $('fatal').textContent = '';
    $('fatal').hidden = true;
    $('fatal-banner').hidden = true;
  }

  function showCapabilities(payload) {
    const capabilities = (payload && payload.capabilities) || {};
    if (Array.isArray(capabilities.features)) {
      state.features = capabilities.features;
      const list = $('features');
      list.replaceChildren(...capabilities.features.map((name) => el('li', null, name)));
      $('subscribe').disabled = !state.features.includes('subscribe');
    }
    if (Array.isArray(capabilities.agents)) showAgents(capabilities.agents);
    $('session-details').hidden = false;
  }

  function showAgents(agents) {
    // Every stream welcome repeats the inventory; leave the form alone if unchanged.
    const signature = JSON.stringify(agents);
    if (signature === state.agentSignature) return;
    state.agentSignature = signature;
    const rows = agents.map((agent) => {
      const row = el('tr');
      row.append(
        el('td', 'mono', agent.name),
        el('td', 'mono', (agent.versions || []).join(', ')),
        el('td', null, agent.description || ''));
      return row;
    });
    $('agents').replaceChildren(...rows);
    $('agent-count').textContent = String(agents.length);
    state.agents = agents;

    const select = $('agent');
    const previous = select.value;
    const options = [];
    for (const agent of agents) {
      for (const version of agent.versions || []) {
        const value = agent.name + '@' + version;
        const label = value + (version === agent.default ? '  (default)' : '');
        options.push(new Option(label, value));
      }
    }
    select.replaceChildren(...options);
    select.disabled = options.length === 0;
    $('submit-job').disabled = options.length === 0;
    const keep = options.find((option) => option.value === previous);
    const ticker = options.find((option) => option.value.startsWith('ticker@'));
    select.value = (keep || ticker || options[0] || {}).value || '';
    if (!keep) fillExample();
  }

  function fillExample() {
    const name = $('agent').value.split('@')[0];
    const example = Object.prototype.hasOwnProperty.call(EXAMPLES, name) ? EXAMPLES[name] : {};
    $('job-input').value = JSON.stringify(example, null, 2);
    const agent = state.agents.find((candidate) => candidate.name === name);
    $('agent-description').textContent = agent && agent.description ? agent.description : '';
  }

  function setSessionControls(active) {
    $('close-session').disabled = !active;
    $('session-id').textContent = state.sessionId || 'none';
    if (!active) {
      $('submit-job').disabled = true;
      $('subscribe').disabled = true;
    }
  }

  // ---- the stream ------------------------------------------------------------

  function startStream(lastEventSeq) {
    stopStream();
    hideFatal();
    setSeq(lastEventSeq);
    let conn = null; // onStatus runs once inside connect(), before it returns
    conn = ArcpClient.connect({
      sessionId: state.sessionId,
      basePath: BASE,
      lastEventSeq,
      ack: true,
      onEvent: handleEvent,
      onStatus(status) {
        if (conn !== null && state.conn !== conn) return; // an old connection
        setConnectionState(status);
        if (status === 'reconnecting') streamLog('stream lost, reconnecting', 'warn');
        if (status === 'open') streamLog('stream open');
      },
      onGap(info) {
        streamLog('gap: expected event ' + info.expected + ', got ' + info.got, 'error');
      },
      onDuplicate(seq) {
        streamLog('duplicate event ' + seq + ' dropped', 'warn');
      },
      onFatal(error) {
        streamLog('stream ended: ' + error.code + ' ' + error.message, 'error');
        showFatal(error);
      },
    });
    state.conn = conn;
    setConnectionState(conn.status);
  }

  function stopStream() {
    const conn = state.conn;
    state.conn = null;
    if (conn) {
      state.lastSeq = conn.lastSeq;
      conn.close();
    }
  }

  function handleEvent(event) {
    if (event.seq !== null) setSeq(event.seq);
    const payload = (event.data && event.data.payload) || {};
    switch (event.type) {
      case 'session.welcome':
        showCapabilities(payload);
        streamLog('welcome (newest event_seq ' + payload.last_event_seq + ')');
        break;
      case 'session.ping':
        streamLog('ping');
        break;
      case 'session.closed':
        streamLog('session closed' + (payload.reason ? ': ' + payload.reason : ''), 'warn');
        store('session', null);
        setSessionControls(false);
        break;
      default:
        handleJobEvent(event, payload);
    }
  }

  // ---- jobs --------------------------------------------------------------------

  function jobFor(id) {
    let job = state.jobs.get(id);
    if (job) return job;
    const node = $('job-template').content.firstElementChild.cloneNode(true);
    node.dataset.jobId = id;
    job = {
      id,
      agent: '',
      origin: 'seen', // 'submitted' here, 'subscribed', or only seen on the stream
      status: 'pending',
      events: 0,
      progress: null,
      metrics: new Map(),
      chunks: null,
      outcome: null,
      note: '',
      node,
      q: (selector) => node.querySelector(selector),
    };
    job.q('.job-id').textContent = id;
    job.q('.job-id').title = id;
    job.q('.cancel').addEventListener('click', () => cancelJob(job));
    state.jobs.set(id, job);
    $('jobs').prepend(node);
    $('jobs-empty').hidden = true;
    $('job-count').textContent = String(state.jobs.size);
    rememberJobs();
    render(job);
    return job;
  }

  function rememberJobs() {
    const list = [...state.jobs.values()].map((job) => ({ id: job.id, agent: job.agent, origin: job.origin }));
    store('jobs', JSON.stringify(list));
  }

  function setStatus(job, status) {
    if (TERMINAL.has(job.status)) return; // nothing follows a terminal event
    job.status = status;
  }

  function handleJobEvent(event, payload) {
    const data = event.data || {};
    if (!data.job_id) return;
    const job = jobFor(data.job_id);
    const list = job.q('.job-log .log');
    const prefix = '#' + event.seq + ' ';
    job.events += 1;
    if (event.type === 'job.event') {
      setStatus(job, 'running');
      const body = payload.body || {};
      switch (payload.kind) {
        case 'progress':
          job.progress = body;
          appendLog(list, prefix + 'progress ' + body.current + '/' + body.total + (body.units ? ' ' + body.units : ''));
          break;
        case 'metric':
          job.metrics.set(String(body.name), body);
          appendLog(list, prefix + 'metric ' + body.name + ' = ' + body.value + (body.unit ? ' ' + body.unit : ''));
          break;
        case 'log':
          appendLog(list, prefix + (body.level || 'log') + ': ' + body.message, body.level === 'error' ? 'error' : 'warn');
          break;
        case 'status':
          appendLog(list, prefix + 'status ' + (body.phase || '') + (body.message ? ': ' + body.message : ''), 'warn');
          break;
        case 'result_chunk':
          addChunk(job, body);
          appendLog(list, prefix + 'result_chunk ' + body.chunk_seq + ' (' + formatBytes(byteLength(body)) + (body.more ? ', more' : ', last') + ')');
          break;
        default:
          appendLog(list, prefix + payload.kind + ' ' + shorten(JSON.stringify(body), 160));
      }
    } else if (event.type === 'job.result') {
      setStatus(job, payload.final_status || 'success');
      job.outcome = { kind: 'result', payload };
      appendLog(list, prefix + 'job.result ' + (payload.final_status || ''), 'ok');
      if (payload.result_id && job.chunks) verifyChunks(job, payload);
    } else if (event.type === 'job.error') {
      setStatus(job, payload.final_status || 'error');
      job.outcome = { kind: 'error', payload };
      appendLog(list, prefix + 'job.error ' + payload.code + ': ' + payload.message, 'error');
    }
    render(job);
  }

  function byteLength(chunk) {
    const data = typeof chunk.data === 'string' ? chunk.data : '';
    if (chunk.encoding === 'base64') {
      const padding = data.endsWith('==') ? 2 : data.endsWith('=') ? 1 : 0;
      return Math.floor(data.length * 3 / 4) - padding;
    }
    return encoder.encode(data).length;
  }

  function chunkBytes(chunk) {
    if (chunk.encoding === 'base64') return Uint8Array.from(atob(chunk.data), (c) => c.charCodeAt(0));
    return encoder.encode(chunk.data);
  }

  function addChunk(job, body) {
    if (!job.chunks || job.chunks.resultId !== body.result_id) {
      job.chunks = { resultId: body.result_id, count: 0, bytes: 0, parts: [], kept: 0, complete: false, truncated: false, check: '' };
    }
    const chunks = job.chunks;
    const size = byteLength(body);
    chunks.count += 1;
    chunks.bytes += size;
    chunks.encoding = body.encoding;
    if (chunks.kept + size <= KEEP_RESULT_BYTES) {
      chunks.parts.push(body);
      chunks.kept += size;
    } else {
      chunks.truncated = true;
    }
    if (body.more === false) chunks.complete = true;
  }

  // Compares the assembled result with what job.result says about it.
  async function verifyChunks(job, payload) {
    const chunks = job.chunks;
    const notes = [];
    if (typeof payload.result_size === 'number') {
      notes.push(payload.result_size === chunks.bytes ? 'size matches result_size' : 'size differs from result_size ' + payload.result_size);
    }
    const expected = /sha256 ([0-9a-f]{64})/.exec(payload.summary || '');
    if (expected && !chunks.truncated && crypto.subtle) {
      const all = new Uint8Array(chunks.bytes);
      let offset = 0;
      for (const part of chunks.parts) {
        const bytes = chunkBytes(part);
        all.set(bytes, offset);
        offset += bytes.length;
      }
      const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', all));
      const hex = Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
      notes.push(hex === expected[1] ? 'sha256 verified' : 'sha256 MISMATCH');
    }
    chunks.check = notes.join(', ');
    render(job);
  }

  async function cancelJob(job) {
    const button = job.q('.cancel');
    button.disabled = true;
    try {
      await api('POST', sessionPath('/jobs/' + encodeURIComponent(job.id) + '/cancel'));
      job.note = 'cancel requested';
    } catch (error) {
      job.note = error.message;
      button.disabled = false;
    }
    render(job);
  }

  // Rendering is batched per animation frame: fast jobs emit many events.
  const dirty = new Set();
  let frame = 0;

  function render(job) {
    dirty.add(job);
    if (!frame) frame = requestAnimationFrame(flush);
  }

  function flush() {
    frame = 0;
    for (const job of dirty) draw(job);
    dirty.clear();
  }

  function draw(job) {
    const { node, q } = job;
    node.dataset.status = job.status;
    q('.job-agent').textContent = job.agent || 'job';
    q('.tag.subscribed').hidden = job.origin !== 'subscribed';
    const badge = q('.status');
    badge.textContent = job.status.replace('_', ' ');
    badge.dataset.status = job.status;
    q('.cancel').hidden = job.origin === 'subscribed' || TERMINAL.has(job.status);
    q('.event-count').textContent = String(job.events);

    const progress = q('.progress');
    if (job.progress && Number(job.progress.total) > 0) {
      const { current, total, units } = job.progress;
      const ratio = Math.max(0, Math.min(1, current / total));
      q('.fill').style.width = (ratio * 100).toFixed(1) + '%';
      q('.progress-text').textContent = current + ' / ' + total + (units ? ' ' + units : '');
      progress.hidden = false;
    }

    const metrics = q('.metrics');
    if (job.metrics.size > 0) {
      metrics.replaceChildren(...[...job.metrics.values()].map((m) => {
        const value = typeof m.value === 'number' ? Math.round(m.value * 1e6) / 1e6 : m.value;
        return el('li', null, m.name + ' ' + value + (m.unit ? ' ' + m.unit : ''));
      }));
      metrics.hidden = false;
    }

    const chunksBox = q('.chunks');
    if (job.chunks) {
      const c = job.chunks;
      const head = el('div', null, c.count + ' chunk' + (c.count === 1 ? '' : 's') + ', ' + formatBytes(c.bytes) + ' received' +
        (c.complete ? ', complete' : ', streaming…') + (c.check ? ' · ' + c.check : ''));
      const parts = [head];
      if (c.complete) {
        let preview = '';
        let cut = c.truncated;
        for (const part of c.parts) {
          if (preview.length >= 240) {
            cut = true;
            break;
          }
          preview += part.data;
        }
        if (preview.length > 240) cut = true;
        if (c.encoding === 'base64') preview = '(base64 result, ' + c.bytes + ' bytes)';
        else if (cut) preview = preview.slice(0, 240) + '…';
        parts.push(el('pre', 'preview', preview));
      }
      chunksBox.replaceChildren(...parts);
      chunksBox.hidden = false;
    }

    const outcome = q('.outcome');
    if (job.outcome || job.note) {
      const parts = [];
      if (job.outcome && job.outcome.kind === 'result') {
        const p = job.outcome.payload;
        const shown = p.result !== undefined ? p.result : { result_id: p.result_id, result_size: p.result_size, summary: p.summary };
        parts.push(el('div', 'label', 'Result'), el('pre', null, shorten(JSON.stringify(shown, null, 2), 2000)));
      } else if (job.outcome) {
        const p = job.outcome.payload;
        parts.push(el('div', 'label error-text', p.code + (p.retryable ? ' (retryable)' : '')), el('pre', null, p.message || ''));
      }
      if (job.note) parts.push(el('div', 'note', job.note));
      outcome.replaceChildren(...parts);
      outcome.dataset.kind = job.outcome ? job.outcome.kind : 'note';
      outcome.hidden = false;
    }
  }

  // ---- actions --------------------------------------------------------------------

  function resetSession() {
    stopStream();
    state.sessionId = null;
    state.features = [];
    state.agentSignature = '';
    state.jobs.clear();
    $('jobs').replaceChildren();
    $('jobs-empty').hidden = false;
    $('job-count').textContent = '0';
    $('stream-log').replaceChildren();
    $('session-details').hidden = true;
    setSeq(null);
    $('reconnects').textContent = '0';
    setConnectionState('idle');
    store('session', null);
    store('jobs', null);
    setSessionControls(false);
  }

  async function createSession(event) {
    if (event) event.preventDefault();
    showError('session-error', '');
    const token = $('api-token').value.trim();
    if (!token) {
      showError('session-error', 'Enter an API token first.');
      return;
    }
    state.token = token;
    store('token', token);
    const button = $('create-session');
    button.disabled = true;
    try {
      const welcome = await api('POST', '/v1/sessions');
      resetSession();
      state.sessionId = welcome.session_id;
      store('session', state.sessionId);
      setSessionControls(true);
      showCapabilities(welcome.payload);
      streamLog('session ' + state.sessionId + ' created');
      startStream(welcome.payload.last_event_seq || 0);
    } catch (error) {
      showError('session-error', error.message);
    } finally {
      button.disabled = false;
    }
  }

  async function closeSession() {
    if (!state.sessionId) return;
    try {
      await api('DELETE', sessionPath());
      store('session', null); // a reload must not reopen it
      streamLog('close requested');
      setSessionControls(false);
      // The stream normally ends with session.closed; if that event was lost,
      // stop anyway, or the browser's reconnect would reopen the session.
      const conn = state.conn;
      setTimeout(() => {
        if (conn && state.conn === conn && conn.status !== 'closed') conn.close();
      }, 1000);
    } catch (error) {
      showError('session-error', error.message);
    }
  }

  async function submitJob(event) {
    event.preventDefault();
    showError('submit-error', '');
    if (!state.sessionId) return;
    let input;
    try {
      input = JSON.parse($('job-input').value.trim() || 'null');
    } catch (error) {
      showError('submit-error', 'The input is not valid JSON: ' + error.message);
      return;
    }
    const request = { agent: $('agent').value, input };
    const budget = $('budget').value.trim();
    if (budget) request.lease_request = { 'cost.budget': budget.split(/[\s,]+/).filter(Boolean) };
    const maxRuntime = $('max-runtime').value.trim();
    if (maxRuntime) request.max_runtime_sec = Number(maxRuntime);
    const button = $('submit-job');
    button.disabled = true;
    try {
      const accepted = await api('POST', sessionPath('/jobs'), request);
      const job = jobFor(accepted.payload.job_id);
      job.agent = accepted.payload.agent || request.agent;
      job.origin = 'submitted';
      rememberJobs();
      render(job);
    } catch (error) {
      showError('submit-error', error.message);
    } finally {
      button.disabled = false;
    }
  }

  async function subscribe(event) {
    event.preventDefault();
    showError('subscribe-error', '');
    const jobId = $('subscribe-job').value.trim();
    if (!state.sessionId || !jobId) return;
    try {
      const reply = await api('POST', sessionPath('/subscriptions'), { job_id: jobId, history: $('subscribe-history').checked });
      const payload = reply.payload || {};
      const job = jobFor(payload.job_id || jobId);
      job.agent = payload.agent || job.agent;
      if (job.origin !== 'submitted') job.origin = 'subscribed';
      if (payload.current_status && job.status === 'pending') setStatus(job, payload.current_status);
      job.note = 'subscribed from event ' + payload.subscribed_from + ', ' + payload.replayed + ' replayed';
      rememberJobs();
      render(job);
      $('subscribe-job').value = '';
    } catch (error) {
      showError('subscribe-error', error.message);
    }
  }

  // After a reload: follow the same session again (the resume cookie is still
  // there) and ask for the current state of the jobs this tab knew about.
  async function reattach(sessionId) {
    state.sessionId = sessionId;
    setSessionControls(true);
    let known = [];
    try {
      known = JSON.parse(stored('jobs') || '[]');
    } catch (error) {
      known = [];
    }
    for (const item of known) {
      const job = jobFor(item.id);
      job.agent = item.agent;
      job.origin = item.origin;
    }
    streamLog('reattaching to ' + sessionId);
    startStream(null);
    for (const job of state.jobs.values()) {
      api('GET', sessionPath('/jobs/' + encodeURIComponent(job.id))).then((reply) => {
        const p = reply.payload || {};
        job.agent = p.agent || job.agent;
        if (p.status) setStatus(job, p.status);
        if (p.terminal && !job.outcome) {
          job.outcome = { kind: p.terminal.code ? 'error' : 'result', payload: p.terminal };
        }
        render(job);
      }, (error) => {
        job.note = error.message;
        render(job);
      });
    }
  }

  // The Gateway panel: a few aggregate metrics from /metrics (OpenMetrics
  // text), summed over their labels.
  function parseMetrics(text) {
    const samples = [];
    for (const line of text.split('\n')) {
      if (!line || line.startsWith('#')) continue;
      const match = /^([a-z_]+)(\{([^}]*)\})? (\S+)$/.exec(line);
      if (match) samples.push({ name: match[1], labels: match[3] || '', value: Number(match[4]) });
    }
    return samples;
  }

  function total(samples, name, labelTest) {
    return samples
      .filter((s) => s.name === name && (!labelTest || labelTest.test(s.labels)))
      .reduce((sum, s) => sum + s.value, 0);
  }

  async function refreshMetrics() {
    if (!state.token || document.hidden) return;
    try {
      const response = await fetch(BASE + '/metrics', {
        headers: { Authorization: 'Bearer ' + state.token },
        cache: 'no-store',
      });
      if (!response.ok) throw new Error('/metrics answered ' + response.status);
      const samples = parseMetrics(await response.text());
      const p = 'arcp_gateway_';
      $('metric-sessions').textContent = total(samples, p + 'sessions', /state="open"/);
      $('metric-streams').textContent = total(samples, p + 'streams_open');
      $('metric-jobs').textContent = total(samples, p + 'jobs_accepted_total');
      $('metric-failed').textContent =
        total(samples, p + 'jobs_finished_total', /status="(error|timed_out)"/);
      $('metric-events').textContent = total(samples, p + 'events_appended_total');
      $('metric-resumes').textContent = total(samples, p + 'resumes_total', /outcome="ok"/) +
        ' / ' + total(samples, p + 'resumes_total', /outcome="(?!ok")/);
      showError('gateway-error', '');
    } catch (error) {
      showError('gateway-error', error.message);
    }
  }

  function init() {
    $('session-form').addEventListener('submit', createSession);
    $('submit-form').addEventListener('submit', submitJob);
    $('subscribe-form').addEventListener('submit', subscribe);
    $('agent').addEventListener('change', fillExample);
    $('close-session').addEventListener('click', closeSession);
    $('fatal-new-session').addEventListener('click', () => {
      resetSession();
      hideFatal();
      if ($('api-token').value.trim()) createSession();
      else $('api-token').focus();
    });
    $('forget-token').addEventListener('click', () => {
      state.token = '';
      $('api-token').value = '';
      store('token', null);
    });
    window.addEventListener('pagehide', stopStream);
    window.addEventListener('pageshow', (event) => {
      // Back from the back/forward cache: the old stream is gone.
      if (event.persisted && state.sessionId && !state.conn) startStream(state.lastSeq);
    });

    state.token = stored('token') || '';
    $('api-token').value = state.token;
    setConnectionState('idle');
    const sessionId = stored('session');
    if (sessionId) reattach(sessionId);
    refreshMetrics();
    setInterval(refreshMetrics, 2000);
  }

  init();
})();
