/*
 * ArcpClient: a small browser client for the arcp-gateway event stream.
 *
 * Load it with <script src=".../v1/client.js"></script>; it defines
 * window.ArcpClient. It follows one session's Server-Sent Events stream,
 * hands each job event to the caller exactly once and in event_seq order,
 * reconnects across dropped streams, and can acknowledge what it processed.
 * Credentials are the HttpOnly resume cookie the gateway sets; this script
 * never sees or stores a token. See docs/client-js.md.
 */
(function (root) {
  'use strict';

  var JOB_TYPES = ['job.event', 'job.result', 'job.error'];
  var CONTROL_TYPES = ['session.welcome', 'session.ping', 'session.closed'];
  var ACK_INTERVAL_MS = 500;
  var BACKOFF_FIRST_MS = 1000;
  var BACKOFF_MAX_MS = 30000;

  function noop() {}

  function isCursor(value) {
    return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
  }

  function connect(options) {
    options = options || {};
    if (typeof options.sessionId !== 'string' || options.sessionId === '') {
      throw new TypeError('ArcpClient.connect: sessionId is required');
    }
    if (options.lastEventSeq != null && !isCursor(options.lastEventSeq)) {
      throw new TypeError('ArcpClient.connect: lastEventSeq must be a non-negative integer');
    }
    if (typeof EventSource === 'undefined') {
      throw new Error('ArcpClient.connect: this environment has no EventSource');
    }

    var base = String(options.basePath || '').replace(/\/+$/, '');
    var sessionUrl = base + '/v1/sessions/' + encodeURIComponent(options.sessionId);
    var callbacks = {
      onEvent: options.onEvent || noop,
      onStatus: options.onStatus || noop,
      onGap: options.onGap || noop,
      onDuplicate: options.onDuplicate || noop,
      onFatal: options.onFatal || noop,
    };

    var lastSeq = options.lastEventSeq != null ? options.lastEventSeq : null;
    var reconnects = 0;
    var status = null;
    var source = null; // the current EventSource
    var wasOpen = false; // the current EventSource reached 'open'
    var everOpen = false; // some EventSource reached 'open'
    var stopped = false; // closed, expired or failed: nothing more happens
    var backoff = BACKOFF_FIRST_MS;
    var retryTimer = null;

    // Acknowledgement state.
    var ackEnabled = options.ack === true;
    var ackTimer = null;
    var ackInFlight = false;
    var ackedSeq = -1; // highest seq an ack was sent for (answered or not)
    var lastAckAt = 0;

    // A throwing callback must not break the stream bookkeeping.
    function call(name, arg) {
      try {
        callbacks[name](arg);
      } catch (error) {
        if (root.console) root.console.error('ArcpClient ' + name + ' callback threw', error);
      }
    }

    function setStatus(next) {
      if (status === next) return;
      status = next;
      call('onStatus', next);
    }

    function waitingStatus() {
      return everOpen ? 'reconnecting' : 'connecting';
    }

    function open() {
      retryTimer = null;
      if (stopped) return;
      var url = sessionUrl + '/events';
      if (lastSeq !== null) url += '?last_event_seq=' + lastSeq;
      var es = new EventSource(url, { withCredentials: true });
      source = es;
      wasOpen = false;
      setStatus(waitingStatus());

      es.onopen = function () {
        if (es !== source || stopped) return;
        wasOpen = true;
        everOpen = true;
        backoff = BACKOFF_FIRST_MS;
        setStatus('open');
      };
      es.onerror = function () {
        if (es !== source || stopped) return;
        if (es.readyState === EventSource.CONNECTING) {
          // The browser retries by itself, sending Last-Event-ID.
          if (wasOpen) reconnects += 1;
          wasOpen = false;
          setStatus(waitingStatus());
        } else if (es.readyState === EventSource.CLOSED) {
          // The browser gave up (the gateway refused the reconnect): ask why.
          es.close();
          source = null;
          setStatus(waitingStatus());
          diagnose();
        }
      };
      JOB_TYPES.forEach(function (type) {
        es.addEventListener(type, function (message) {
          if (es === source && !stopped) onJobMessage(type, message);
        });
      });
      CONTROL_TYPES.forEach(function (type) {
        es.addEventListener(type, function (message) {
          if (es === source && !stopped) onControlMessage(type, message);
        });
      });
    }

    function parse(message) {
      try {
        return JSON.parse(message.data);
      } catch (error) {
        if (root.console) root.console.warn('ArcpClient: event data is not JSON', message.data);
        return undefined;
      }
    }

    function onJobMessage(type, message) {
      var data = parse(message);
      if (data === undefined) return;
      var seq = data && isCursor(data.event_seq) ? data.event_seq : Number(message.lastEventId);
      if (!isCursor(seq)) {
        if (root.console) root.console.warn('ArcpClient: job event without event_seq', data);
        return;
      }
      if (lastSeq !== null && seq <= lastSeq) {
        call('onDuplicate', seq);
        return;
      }
      if (lastSeq !== null && seq !== lastSeq + 1) {
        call('onGap', { expected: lastSeq + 1, got: seq });
      }
      lastSeq = seq;
      call('onEvent', { type: type, seq: seq, data: data });
      scheduleAck();
    }

    function onControlMessage(type, message) {
      var data = parse(message);
      if (data === undefined) return;
      call('onEvent', { type: type, seq: null, data: data });
      if (type === 'session.closed' && !stopped) finish('closed');
    }

    // The EventSource was closed for good: look at the session to decide
    // between resuming and giving up.
    function diagnose() {
      if (stopped) return;
      fetch(sessionUrl, {
        credentials: 'include',
        cache: 'no-store',
        headers: { Accept: 'application/json' },
      }).then(function (response) {
        return response.text().then(function (text) {
          var body = null;
          try {
            body = text ? JSON.parse(text) : null;
          } catch (error) {
            body = null;
          }
          judge(response.status, body);
        });
      }, function () {
        // Network trouble: try the stream again later.
        scheduleReopen();
      });
    }

    function judge(httpStatus, body) {
      if (stopped) return;
      if (httpStatus === 200) {
        var payload = (body && body.payload) || {};
        if (lastSeq !== null && isCursor(payload.floor) && lastSeq < payload.floor) {
          fatal('expired', {
            httpStatus: 410,
            code: 'RESUME_WINDOW_EXPIRED',
            message: 'events after ' + lastSeq + ' are no longer retained (the session keeps ' +
              'only events after ' + payload.floor + ')',
          });
        } else if (lastSeq !== null && isCursor(payload.last_event_seq) && lastSeq > payload.last_event_seq) {
          fatal('failed', {
            httpStatus: 400,
            code: 'INVALID_REQUEST',
            message: 'cursor ' + lastSeq + ' is beyond the newest event (' + payload.last_event_seq + ')',
          });
        } else {
          scheduleReopen();
        }
        return;
      }
      var code = body && typeof body.code === 'string' ? body.code : null;
      if (code === null && (httpStatus >= 500 || httpStatus === 408 || httpStatus === 429)) {
        // Not an answer from the gateway (a proxy, a restart): keep trying.
        scheduleReopen();
        return;
      }
      var error = {
        httpStatus: httpStatus,
        code: code || 'HTTP_' + httpStatus,
        message: (body && body.message) || 'the gateway refused the stream',
      };
      fatal(code === 'RESUME_WINDOW_EXPIRED' ? 'expired' : 'failed', error);
    }

    function scheduleReopen() {
      if (stopped || retryTimer !== null) return;
      setStatus(waitingStatus());
      var delay = backoff;
      backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
      retryTimer = setTimeout(open, delay);
    }

    function scheduleAck() {
      if (!ackEnabled || stopped || ackTimer !== null || ackInFlight) return;
      if (lastSeq === null || lastSeq <= ackedSeq) return;
      var wait = Math.max(0, lastAckAt + ACK_INTERVAL_MS - Date.now());
      ackTimer = setTimeout(sendAck, wait);
    }

    function sendAck(keepalive) {
      ackTimer = null;
      if (!ackEnabled || lastSeq === null || lastSeq <= ackedSeq) return;
      var seq = lastSeq;
      ackedSeq = seq; // never resent: the next processed event triggers the next ack
      ackInFlight = true;
      lastAckAt = Date.now();
      fetch(sessionUrl + '/ack', {
        method: 'POST',
        credentials: 'include',
        keepalive: keepalive === true,
        headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
        body: JSON.stringify({ last_processed_seq: seq }),
      }).then(function (response) {
        if (response.status === 400) {
          return response.json().then(function (body) {
            // The session did not negotiate `ack`: stop asking.
            if (body && /not negotiated/.test(body.message || '')) ackEnabled = false;
          }, noop);
        }
      }, noop).then(function () {
        ackInFlight = false;
        scheduleAck();
      });
    }

    function clearTimers() {
      if (retryTimer !== null) clearTimeout(retryTimer);
      if (ackTimer !== null) clearTimeout(ackTimer);
      retryTimer = null;
      ackTimer = null;
    }

    function finish(finalStatus) {
      stopped = true;
      clearTimers();
      if (source) source.close();
      source = null;
      setStatus(finalStatus);
    }

    function fatal(finalStatus, error) {
      finish(finalStatus);
      call('onFatal', error);
    }

    var connection = {
      close: function () {
        if (stopped) return;
        // Hand over what was processed before going quiet.
        if (ackEnabled && !ackInFlight && lastSeq !== null && lastSeq > ackedSeq) sendAck(true);
        finish('closed');
      },
    };
    Object.defineProperties(connection, {
      lastSeq: { get: function () { return lastSeq; }, enumerable: true },
      reconnects: { get: function () { return reconnects; }, enumerable: true },
      status: { get: function () { return status; }, enumerable: true },
    });

    open();
    return connection;
  }

  var ArcpClient = { connect: connect };
  root.ArcpClient = ArcpClient;
  if (typeof module === 'object' && module && module.exports) module.exports = ArcpClient;
})(typeof window !== 'undefined' ? window : this);
