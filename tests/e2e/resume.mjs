#!/usr/bin/env node
// Browser end-to-end check: headless Chromium -> nginx -> the arcp-gateway
// binary, all on loopback. tests/it/browser.rs starts the gateway and nginx
// and runs this script once per scenario; docs/browser-e2e.md explains it.
//
//   node tests/e2e/resume.mjs --scenario resume|expiry \
//       --base-url http://127.0.0.1:PORT      nginx, the browser's origin
//       --base-path /arcp                     the gateway's --base-path
//       --gateway-url http://127.0.0.1:PORT   the gateway itself, bypassing nginx
//       --nginx-bin /usr/sbin/nginx --nginx-conf FILE --nginx-prefix DIR
//       --nginx-pid-file FILE --nginx-error-log FILE
//       [--gateway-log FILE]                  the gateway's stderr (debug log)
//       [--resume-window-sec N]               the gateway's --resume-window-sec
//       [--chromium /usr/bin/chromium]
//   The dev api token comes from $ARCP_E2E_TOKEN (or --token).
//
// Scenario `resume`: a page that uses only native
// `new EventSource(url, {withCredentials: true})`, with no reconnect logic of
// its own, follows a session while its stream is cut again and again:
//   - nginx's proxy_read_timeout (2 s in the test) fires while a slow job is
//     quiet and the gateway's heartbeat (5 s) is too far apart to prevent it;
//   - the gateway ends streams itself (--max-stream-duration-sec);
//   - nginx worker processes are killed mid-stream (the master respawns them),
//     which the browser sees as a network error.
// The browser reconnects by itself, sending Last-Event-ID and the HttpOnly
// resume cookie; the page must end up with every job event exactly once, in
// order, through each job's job.result.
//
// Scenario `expiry`: a page using the gateway's /v1/client.js is cut off from
// the gateway (nginx stopped) for longer than the resume window. When nginx
// is back, the page must report RESUME_WINDOW_EXPIRED, show the 'expired'
// status, and stop: no reconnect loop.
//
// Prints one JSON summary on stdout; exits 0 when every check passed, 1 when
// one failed, 2 on bad arguments.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';

import { chromium } from 'playwright-core';

const JOB_EVENT_TYPES = ['job.event', 'job.result', 'job.error'];

// ---------------------------------------------------------------- arguments

function parseArgs(argv) {
  const options = {};
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (!arg.startsWith('--')) usage(`unexpected argument ${JSON.stringify(arg)}`);
    const eq = arg.indexOf('=');
    if (eq !== -1) {
      options[arg.slice(2, eq)] = arg.slice(eq + 1);
    } else {
      if (i + 1 >= argv.length) usage(`${arg} needs a value`);
      options[arg.slice(2)] = argv[i + 1];
      i += 1;
    }
  }
  return options;
}

function usage(message) {
  process.stderr.write(`resume.mjs: ${message}\n(see the comment at the top of tests/e2e/resume.mjs)\n`);
  process.exit(2);
}

const args = parseArgs(process.argv.slice(2));
const scenario = args.scenario || 'resume';
const baseUrl = (args['base-url'] || process.env.ARCP_E2E_BASE_URL || '').replace(/\/$/, '');
const basePath = (args['base-path'] ?? process.env.ARCP_E2E_BASE_PATH ?? '').replace(/\/$/, '');
const gatewayUrl = (args['gateway-url'] || process.env.ARCP_E2E_GATEWAY_URL || '').replace(/\/$/, '');
const token = args.token || process.env.ARCP_E2E_TOKEN || '';
const chromiumPath = args.chromium || process.env.ARCP_E2E_CHROMIUM || '/usr/bin/chromium';
const nginx = {
  bin: args['nginx-bin'],
  conf: args['nginx-conf'],
  prefix: args['nginx-prefix'],
  pidFile: args['nginx-pid-file'],
  errorLog: args['nginx-error-log'],
};
const gatewayLog = args['gateway-log'] || null;
const resumeWindowSec = Number(args['resume-window-sec'] || 3);

if (!['resume', 'expiry'].includes(scenario)) usage(`unknown --scenario ${scenario}`);
if (!baseUrl) usage('--base-url is required');
if (!token) usage('the api token is required ($ARCP_E2E_TOKEN or --token)');
for (const [name, value] of Object.entries(nginx)) {
  if (!value) usage(`--nginx-${name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} is required`);
}
if (scenario === 'expiry' && !gatewayUrl) usage('--gateway-url is required for --scenario expiry');
const nginxPort = Number(new URL(baseUrl).port);

// ------------------------------------------------------------------ helpers

const started = Date.now();
const elapsed = () => Date.now() - started;
const progress = (message) => process.stderr.write(`[e2e ${scenario} +${(elapsed() / 1000).toFixed(1)}s] ${message}\n`);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class CheckFailed extends Error {}

/** Polls `probe` until it returns something truthy, or fails after `timeoutMs`. */
async function waitFor(what, probe, timeoutMs, intervalMs = 100) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new CheckFailed(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

const checks = [];
function check(name, ok, detail) {
  checks.push({ name, ok: Boolean(ok), detail });
  if (!ok) progress(`CHECK FAILED: ${name} ${detail === undefined ? '' : JSON.stringify(detail)}`);
  return Boolean(ok);
}

/** State letter of a process (`R`, `S`, `Z`, ...) or null when it is gone. */
function processState(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
  } catch {
    return null;
  }
}
const isAlive = (pid) => {
  const state = processState(pid);
  return state !== null && state !== 'Z' && state !== 'X';
};

/** Live children of `parent`, read from /proc. */
function childrenOf(parent) {
  const children = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[1]) === parent && fields[0] !== 'Z') children.push(Number(entry));
    } catch {
      // the process ended while we looked
    }
  }
  return children;
}

function readPidFile() {
  try {
    const pid = Number(fs.readFileSync(nginx.pidFile, 'utf8').trim());
    return Number.isInteger(pid) && pid > 0 ? pid : null;
  } catch {
    return null;
  }
}

function portAccepts(port) {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    const done = (result) => {
      socket.destroy();
      resolve(result);
    };
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
    socket.setTimeout(1000, () => done(false));
  });
}

function countInFile(file, needle) {
  if (!file) return null;
  try {
    return fs.readFileSync(file, 'utf8').split('\n').filter((line) => line.includes(needle)).length;
  } catch {
    return null;
  }
}

function tail(file, lines = 40) {
  if (!file) return null;
  try {
    return fs.readFileSync(file, 'utf8').split('\n').slice(-lines).join('\n');
  } catch (error) {
    return `(cannot read ${file}: ${error.message})`;
  }
}

/** Kills every nginx worker with SIGKILL and waits for the master to respawn one. */
async function killNginxWorkers() {
  const master = readPidFile();
  if (!master || !isAlive(master)) throw new CheckFailed('nginx master is not running');
  const workers = childrenOf(master);
  if (workers.length === 0) throw new CheckFailed('nginx master has no worker to kill');
  for (const worker of workers) process.kill(worker, 'SIGKILL');
  const respawned = await waitFor(
    'nginx to respawn a worker',
    () => {
      const fresh = childrenOf(master).filter((pid) => !workers.includes(pid));
      return fresh.length > 0 ? fresh : null;
    },
    10_000,
    50,
  );
  return { master, killed: workers, respawned };
}

/** Fast shutdown of nginx (SIGTERM to the master); waits until the port refuses. */
async function stopNginx() {
  const master = readPidFile();
  if (!master || !isAlive(master)) throw new CheckFailed('nginx master is not running');
  process.kill(master, 'SIGTERM');
  await waitFor('nginx to exit', () => !isAlive(master), 10_000, 50);
  await waitFor('the nginx port to refuse connections', async () => !(await portAccepts(nginxPort)), 10_000, 50);
  return master;
}

/** nginx processes this script started; stopped when the script ends. */
const startedNginx = [];

/** Starts nginx again with the same configuration (it runs in the foreground). */
async function startNginx() {
  const child = spawn(nginx.bin, ['-c', nginx.conf, '-p', nginx.prefix], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  startedNginx.push(child);
  let stderr = '';
  child.stderr.on('data', (chunk) => {
    stderr += chunk;
  });
  let exited = null;
  child.once('exit', (code, signal) => {
    exited = { code, signal };
  });
  await waitFor(
    'the restarted nginx to accept connections',
    async () => {
      if (exited) throw new CheckFailed(`restarted nginx exited (${JSON.stringify(exited)}): ${stderr}`);
      return portAccepts(nginxPort);
    },
    10_000,
    50,
  );
  return child.pid;
}

function stopStartedNginx() {
  for (const child of startedNginx) {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(child.pid, 'SIGTERM');
      } catch {
        // already gone
      }
    }
  }
}
process.on('exit', stopStartedNginx);
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    stopStartedNginx();
    process.exit(1);
  });
}

// --------------------------------------------------------- browser helpers

async function launchBrowser() {
  // chromium.launch gives the browser a fresh, temporary user-data dir.
  return chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: [
      '--headless=new',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-quic',
    ],
  });
}

function watchPage(page, sink) {
  page.on('console', (message) => sink.push(`console.${message.type()}: ${message.text()}`));
  page.on('pageerror', (error) => sink.push(`pageerror: ${error.message}`));
  page.on('requestfailed', (request) => {
    sink.push(`requestfailed: ${request.method()} ${request.url()} ${request.failure()?.errorText ?? ''}`);
  });
}

/** POST /v1/sessions from the page (sets the HttpOnly resume cookie). */
async function createSession(page) {
  const created = await page.evaluate(
    async ({ basePath, token }) => {
      const response = await fetch(`${basePath}/v1/sessions`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${token}` },
        credentials: 'same-origin',
      });
      const body = await response.json();
      return {
        status: response.status,
        sessionId: body.session_id,
        resumeWindowSec: body.payload ? body.payload.resume_window_sec : null,
        cookieVisibleToScript: document.cookie.includes('arcp_resume'),
      };
    },
    { basePath, token },
  );
  if (created.status !== 201 || !created.sessionId) {
    throw new CheckFailed(`POST ${basePath}/v1/sessions answered ${JSON.stringify(created)}`);
  }
  return created;
}

/** The resume cookie as the browser stores it. */
async function resumeCookie(context, sessionId) {
  const cookies = await context.cookies(`${baseUrl}${basePath}/v1/sessions/${sessionId}/events`);
  return cookies.find((cookie) => cookie.name === 'arcp_resume') || null;
}

async function checkCookie(context, created) {
  const cookie = await resumeCookie(context, created.sessionId);
  check('session creation set the resume cookie', cookie !== null);
  if (!cookie) return;
  check('the resume cookie is HttpOnly', cookie.httpOnly && !created.cookieVisibleToScript, {
    httpOnly: cookie.httpOnly,
    visibleToScript: created.cookieVisibleToScript,
  });
  check('the resume cookie is SameSite=Strict', cookie.sameSite === 'Strict', cookie.sameSite);
  check(
    'the resume cookie is scoped to the session path under the base path',
    cookie.path === `${basePath}/v1/sessions/${created.sessionId}`,
    cookie.path,
  );
}

/** POST /v1/sessions/{id}/jobs from the page; returns the job id. */
async function submitJob(page, sessionId, body) {
  const answer = await page.evaluate(
    async ({ basePath, token, sessionId, body }) => {
      const response = await fetch(`${basePath}/v1/sessions/${sessionId}/jobs`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
        credentials: 'same-origin',
        body: JSON.stringify(body),
      });
      return { status: response.status, body: await response.json() };
    },
    { basePath, token, sessionId, body },
  );
  const jobId = answer.body && answer.body.payload && answer.body.payload.job_id;
  if (answer.status !== 202 || !jobId) {
    throw new CheckFailed(`job submission answered ${JSON.stringify(answer)}`);
  }
  return jobId;
}

// ------------------------------------------------------- scenario: resume

async function scenarioResume(summary, diagnostics) {
  const browser = await launchBrowser();
  try {
    const context = await browser.newContext();
    const page = await context.newPage();
    watchPage(page, diagnostics.browser);
    await page.goto(`${baseUrl}/e2e/page.html`);
    const created = await createSession(page);
    summary.session_id = created.sessionId;
    await checkCookie(context, created);

    const events = () => page.evaluate(() => window.__events);
    const opens = (list) => list.filter((event) => event.type === 'open').length;
    const terminalOf = (list, jobId) =>
      list.find((event) => event.job_id === jobId && (event.type === 'job.result' || event.type === 'job.error'));

    await page.evaluate((url) => window.startStream(url), `${basePath}/v1/sessions/${created.sessionId}/events`);
    await waitFor('the stream to open with a welcome', async () => {
      const list = await events();
      return opens(list) >= 1 && list.some((event) => event.type === 'session.welcome');
    }, 10_000);
    progress('stream open');

    // Phase 1: a busy job (an event every 250 ms). Streams end at the
    // gateway's max duration; two are cut by killing nginx's worker.
    const fast = { agent: 'ticker', input: { count: 60, interval_ms: 250 } };
    const fastJob = await submitJob(page, created.sessionId, fast);
    summary.jobs.push({ job_id: fastJob, ...fast });
    progress(`submitted ${fastJob}`);
    const kills = [];
    for (let round = 0; round < 2; round += 1) {
      // Cut a connection that is established and mid-flow: open for a
      // second and delivering job events.
      await waitFor('an established stream delivering events', async () => {
        const list = await events();
        const lastOpen = list.map((event) => event.type).lastIndexOf('open');
        if (lastOpen === -1 || list[list.length - 1].readyState !== 1) return false;
        const since = list.slice(lastOpen);
        const delivered = since.filter((event) => JOB_EVENT_TYPES.includes(event.type)).length;
        return delivered >= 2 && Date.now() - list[lastOpen].t >= 1000 && !terminalOf(list, fastJob);
      }, 20_000, 50);
      const before = await events();
      const killed = await killNginxWorkers();
      const seqBefore = before.filter((event) => event.event_seq !== null).map((event) => event.event_seq).pop();
      progress(`killed nginx worker(s) ${killed.killed.join(',')} after event ${seqBefore}`);
      await waitFor('the browser to reconnect after the worker was killed', async () => {
        return opens(await events()) > opens(before);
      }, 15_000, 50);
      kills.push({ ...killed, after_event_seq: seqBefore ?? null, at_ms: elapsed() });
    }
    summary.drops.nginx_worker_kills = kills;
    await waitFor(`the job.result of ${fastJob}`, async () => terminalOf(await events(), fastJob), 60_000);
    progress(`${fastJob} finished`);

    // Phase 2: a quiet job (an event every 3 s): nginx's 2 s
    // proxy_read_timeout cuts the silent stream before the 5 s heartbeat.
    const slow = { agent: 'ticker', input: { count: 4, interval_ms: 3000 } };
    const slowJob = await submitJob(page, created.sessionId, slow);
    summary.jobs.push({ job_id: slowJob, ...slow });
    progress(`submitted ${slowJob}`);
    await waitFor(`the job.result of ${slowJob}`, async () => terminalOf(await events(), slowJob), 40_000);
    progress(`${slowJob} finished`);

    const list = await events();
    await page.evaluate(() => window.__source.close());
    const sources = await page.evaluate(() => window.__sources);
    // Give nginx and the gateway a moment to log the final close.
    await sleep(300);
    verifyResume(summary, list, sources, [
      { jobId: fastJob, count: fast.input.count },
      { jobId: slowJob, count: slow.input.count },
    ]);
  } finally {
    await browser.close();
  }
}

function verifyResume(summary, list, sources, jobs) {
  const jobEvents = list.filter((event) => JOB_EVENT_TYPES.includes(event.type));
  const seqs = jobEvents.map((event) => event.event_seq);
  const counts = new Map();
  for (const seq of seqs) counts.set(seq, (counts.get(seq) || 0) + 1);
  const duplicates = [...counts].filter(([, n]) => n > 1).map(([seq]) => seq);
  const terminalSeq = seqs.length ? Math.max(...seqs.filter(Number.isInteger)) : 0;
  const missing = [];
  for (let seq = 1; seq <= terminalSeq; seq += 1) if (!counts.has(seq)) missing.push(seq);
  const inOrder = seqs.every((seq, index) => seq === index + 1);

  const opens = list.filter((event) => event.type === 'open').length;
  const errors = list.filter((event) => event.type === 'error');
  const welcomes = list.filter((event) => event.type === 'session.welcome').length;
  const proxyTimeouts = countInFile(nginx.errorLog, 'upstream timed out');
  const maxDurationEnds = countInFile(gatewayLog, 'maximum stream duration reached');
  const streamsAttached = countInFile(gatewayLog, 'stream attached');
  const workerKills = (summary.drops.nginx_worker_kills || []).length;

  Object.assign(summary.observed, {
    job_events: jobEvents.length,
    first_seq: seqs[0] ?? null,
    terminal_seq: terminalSeq,
    duplicates,
    missing,
    opens,
    reconnects: opens - 1,
    errors: errors.length,
    welcomes,
    event_source_objects: sources,
    untyped_message_events: list.filter((event) => event.type === 'message').length,
    streams_attached_at_gateway: streamsAttached,
  });
  summary.drops.nginx_proxy_read_timeouts = proxyTimeouts;
  summary.drops.gateway_max_stream_duration_ends = maxDurationEnds;

  check('every job event arrived exactly once', duplicates.length === 0 && missing.length === 0, { duplicates, missing });
  const ordered = inOrder && seqs[0] === 1;
  check('job events arrived in order, from event_seq 1 with no gap', ordered, ordered ? undefined : seqs);
  check(
    'lastEventId of every job event equals its event_seq',
    jobEvents.every((event) => event.lastEventId === String(event.event_seq)),
  );
  let expectedTotal = 0;
  for (const { jobId, count } of jobs) {
    const own = jobEvents.filter((event) => event.job_id === jobId);
    const last = own[own.length - 1];
    expectedTotal += count + 1;
    check(`${jobId}: ${count} progress events then one job.result (success)`,
      own.length === count + 1
        && own.slice(0, -1).every((event) => event.type === 'job.event' && event.kind === 'progress')
        && last && last.type === 'job.result' && last.final_status === 'success',
      { events: own.length, last_type: last && last.type, last_seq: last && last.event_seq });
  }
  check('the stream ends with the last job\'s job.result', terminalSeq === expectedTotal
    && jobEvents[jobEvents.length - 1]?.type === 'job.result'
    && jobEvents[jobEvents.length - 1]?.job_id === jobs[jobs.length - 1].jobId, { terminalSeq, expectedTotal });
  check('the page created exactly one EventSource (reconnects were native)', sources === 1, sources);
  check('the browser reconnected more than 3 times', opens > 3, opens);
  check('the EventSource never gave up (no error while CLOSED)', errors.every((event) => event.readyState !== 2),
    errors.filter((event) => event.readyState === 2));
  check('no untyped message events', summary.observed.untyped_message_events === 0);
  check('nginx killed a silent stream at least once (proxy_read_timeout)', proxyTimeouts >= 1, proxyTimeouts);
  check('nginx workers were killed mid-stream at least twice', workerKills >= 2, workerKills);
  if (gatewayLog) {
    check('the gateway ended a stream at --max-stream-duration-sec at least once', maxDurationEnds >= 1, maxDurationEnds);
  }
}

// ------------------------------------------------------- scenario: expiry

async function scenarioExpiry(summary, diagnostics) {
  const browser = await launchBrowser();
  try {
    const context = await browser.newContext();
    const page = await context.newPage();
    watchPage(page, diagnostics.browser);
    await page.goto(`${baseUrl}/e2e/client.html?base=${encodeURIComponent(basePath)}`);
    try {
      summary.observed.client_js = await page.evaluate(() => window.__clientReady);
    } catch (error) {
      throw new CheckFailed(`${basePath}/v1/client.js is not usable: ${error.message}`);
    }
    const created = await createSession(page);
    summary.session_id = created.sessionId;
    check('the session advertises the configured resume window', created.resumeWindowSec === resumeWindowSec, created.resumeWindowSec);
    await checkCookie(context, created);

    const state = () =>
      page.evaluate(() => ({
        created: window.__sourcesCreated.length,
        open: window.__sourcesCreated.filter((entry) => entry.source.readyState === 1).length,
        notClosed: window.__openSources(),
        errors: window.__sourceErrors,
        statuses: window.__statuses.map((entry) => entry.status),
        fatal: window.__fatal,
        events: window.__clientEvents,
        fatalText: document.getElementById('fatal').textContent,
        statusText: document.getElementById('status').textContent,
      }));

    await page.evaluate((sessionId) => window.connectClient(sessionId), created.sessionId);
    await waitFor('client.js to open its EventSource', async () => (await state()).open >= 1, 10_000);
    const jobId = await submitJob(page, created.sessionId, { agent: 'echo', input: { from: 'browser-e2e' } });
    await waitFor('client.js to deliver the echo job.result to onEvent', async () => {
      return (await state()).events.some((event) => event.type === 'job.result');
    }, 10_000);
    const connected = await state();
    summary.observed.statuses_while_connected = connected.statuses;
    progress(`connected; statuses ${JSON.stringify(connected.statuses)}; job ${jobId} delivered`);

    // Cut the browser off from the gateway: stop nginx entirely. The
    // browser's reconnects now fail with network errors, which EventSource
    // retries natively; the gateway sees the stream end and starts the
    // session's resume window.
    const stoppedAt = Date.now();
    const master = await stopNginx();
    progress(`stopped nginx (master ${master})`);

    // Wait past the window and the sweep, then make sure the gateway itself
    // (asked directly, not through nginx) has forgotten the session.
    await sleep((resumeWindowSec + 1) * 1000 + 500);
    let lastAnswer = null;
    await waitFor('the gateway to sweep the session after its resume window', async () => {
      const response = await fetch(`${gatewayUrl}${basePath}/v1/sessions/${created.sessionId}`, {
        headers: { Authorization: `Bearer ${token}` },
      });
      lastAnswer = { status: response.status, body: await response.text() };
      return response.status === 404;
    }, (resumeWindowSec + 15) * 1000, 200).catch((error) => {
      throw new CheckFailed(`${error.message}; the gateway last answered ${JSON.stringify(lastAnswer)}`);
    });
    const whileDown = await state();
    summary.observed.down_ms = Date.now() - stoppedAt;
    summary.observed.native_reconnect_errors_while_down = whileDown.errors - connected.errors;
    summary.observed.statuses_while_down = whileDown.statuses.slice(connected.statuses.length);
    check('the browser kept retrying natively while nginx was down', whileDown.errors - connected.errors >= 2,
      whileDown.errors - connected.errors);
    check('nothing was fatal while the browser could not reach the gateway', whileDown.fatal.length === 0, whileDown.fatal);

    const restarted = await startNginx();
    progress(`started nginx again (master ${restarted})`);
    const fatalAt = await waitFor('onFatal to report why the stream ended', async () => {
      const now = await state();
      return now.fatal.length > 0 ? now : null;
    }, 15_000);
    progress(`fatal: ${JSON.stringify(fatalAt.fatal[0])}`);
    const fatal = fatalAt.fatal[0];
    check('onFatal reported RESUME_WINDOW_EXPIRED', fatal.code === 'RESUME_WINDOW_EXPIRED', fatal);
    check('onFatal reported HTTP 410', fatal.httpStatus === 410, fatal.httpStatus);
    check('the page shows RESUME_WINDOW_EXPIRED', fatalAt.fatalText.includes('RESUME_WINDOW_EXPIRED'), fatalAt.fatalText);

    // No loop: over the next seconds nothing reconnects.
    await sleep(3000);
    const after = await state();
    summary.observed.statuses = after.statuses;
    summary.observed.fatal = after.fatal;
    summary.observed.event_sources_created = after.created;
    summary.observed.event_sources_created_after_fatal = after.created - fatalAt.created;
    summary.observed.errors_after_fatal = after.errors - fatalAt.errors;
    check('the status is expired', after.statuses[after.statuses.length - 1] === 'expired' && after.statusText === 'expired',
      { statuses: after.statuses, shown: after.statusText });
    check('onFatal fired once', after.fatal.length === 1, after.fatal.length);
    check('no EventSource was created after the fatal report', after.created === fatalAt.created,
      after.created - fatalAt.created);
    check('the page created few EventSources in all (no reconnect loop)', after.created <= 3, after.created);
    check('every EventSource is closed', after.notClosed === 0, after.notClosed);
    check('no connection attempts after the fatal report', after.errors === fatalAt.errors, after.errors - fatalAt.errors);
  } finally {
    await browser.close();
  }
}

// --------------------------------------------------------------------- main

async function main() {
  const summary = {
    scenario,
    ok: false,
    failed: [],
    base_url: baseUrl,
    base_path: basePath,
    session_id: null,
    jobs: [],
    drops: {},
    observed: {},
    checks,
    duration_ms: 0,
  };
  const diagnostics = { browser: [] };
  let failure = null;
  try {
    if (scenario === 'resume') await scenarioResume(summary, diagnostics);
    else await scenarioExpiry(summary, diagnostics);
  } catch (error) {
    failure = error instanceof CheckFailed ? error.message : (error && error.stack) || String(error);
    check('the scenario ran to the end', false, failure);
  }
  summary.duration_ms = elapsed();
  summary.ok = failure === null && checks.length > 0 && checks.every((entry) => entry.ok);
  summary.failed = checks.filter((entry) => !entry.ok).map((entry) => entry.name);
  if (!summary.ok) {
    summary.diagnostics = {
      browser: diagnostics.browser.slice(-60),
      nginx_error_log: tail(nginx.errorLog),
      gateway_log: tail(gatewayLog),
    };
  }
  process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
  stopStartedNginx();
  process.exitCode = summary.ok ? 0 : 1;
}

await main();
