// moonfork chat -- the browser side of examples/chat (no build step, no dependencies).
//
// Receiving, best first: a WebSocket on GET /ws?since=N (one text frame per message, the same JSON
// as the other transports); after any close (1001 when a worker is reloaded or stopped) it
// reconnects with the last id it saw. When WebSocket is missing, or never opens, or closes 3 times
// in a row without a message between, it falls back to Server-Sent Events from GET /events (the
// browser reconnects by itself and sends Last-Event-ID); when EventSource is missing, or fails
// before it ever opens, or fails 3 times in a row, to long polling GET /poll?since=N. Whichever is
// used, every message is shown once (deduplicated by id) and kept in id order.
// Sending: POST /messages {"user", "text", "key"} -> 201 {"id"} or 400/503 {"error"}. The key is made
// once per message and kept across retries, so a post whose answer was lost is stored once.
//
// Ids: numbers without Redis ("17"), Redis stream ids with it ("1733130000000-0"). Both are compared
// as (ms, seq) pairs, never as strings or floats.
(function () {
  'use strict';

  var NAME_KEY = 'moonfork.chat.name';
  var MAX_WS_FAILURES = 3;       // WebSocket closes in a row (no message between) before SSE
  var WS_OPEN_TIMEOUT_MS = 10000; // a socket that does not open by then counts as failed
  var MAX_SSE_ERRORS = 3;        // errors in a row (without an open between) before long polling
  var SSE_OPEN_TIMEOUT_MS = 10000; // a stream that never opens counts as failed
  var POLL_TIMEOUT_MS = 60000;   // the server answers a poll within ~25 s; this is a safety net
  var HISTORY_TIMEOUT_MS = 10000; // the first GET /messages; the stream catches up after it
  var MAX_SHOWN = 1000;          // messages kept in the page
  var POST_RETRIES = 2;          // a post that got no answer, or 503, is sent again (same key)
  var PRESENCE_MS = 10000;       // "I am here" (POST /presence), which answers who is online

  var $ = function (id) { return document.getElementById(id); };
  var el = {
    status: $('status'), statusText: $('status-text'),
    whoami: $('whoami'), whoamiName: $('whoami-name'), changeName: $('change-name'),
    join: $('join'), joinForm: $('join-form'), nameInput: $('name-input'), joinError: $('join-error'),
    chat: $('chat'), scroll: $('messages-scroll'), list: $('messages'), empty: $('empty'),
    composeForm: $('compose-form'), input: $('message-input'), send: $('send-button'),
    error: $('compose-error'), online: $('online')
  };

  // ---- state -------------------------------------------------------------------------------
  var myName = '';
  var lastId = null;     // highest id delivered by the server's stream/poll (never by our own POST)
  var shown = {};        // id key -> <li>, for dedupe
  var shownIds = [];     // parsed ids in the page, ascending
  var started = false;

  // ---- ids ---------------------------------------------------------------------------------
  // parseId("17") -> {key: "17", ms: 17, seq: 0}; parseId("1733130000000-3") -> {ms: 1733130000000, seq: 3}
  function parseId(v) {
    var m = /^(\d{1,15})(?:-(\d{1,15}))?$/.exec(String(v == null ? '' : v));
    if (!m) return null;
    var id = { ms: Number(m[1]), seq: m[2] === undefined ? 0 : Number(m[2]) };
    if (id.ms === 0 && id.seq === 0) return null;
    id.key = m[2] === undefined ? String(id.ms) : id.ms + '-' + id.seq;
    return id;
  }
  function cmpId(a, b) { return a.ms !== b.ms ? a.ms - b.ms : a.seq - b.seq; }
  function since() { return lastId ? encodeURIComponent(lastId.key) : '0'; }

  // ---- small helpers -----------------------------------------------------------------------
  function storageGet(key) {
    try { return window.localStorage.getItem(key) || ''; } catch (e) { return ''; }
  }
  function storageSet(key, value) {
    try {
      if (value) window.localStorage.setItem(key, value); else window.localStorage.removeItem(key);
    } catch (e) { /* private mode: the name is simply not remembered */ }
  }

  var transport = '';     // 'websocket', 'sse' or 'poll': the one receiving now (data-transport)
  function setStatus(state, text) {
    el.status.setAttribute('data-state', state);
    el.status.setAttribute('data-transport', transport);
    el.statusText.textContent = text;
  }

  function hueOf(name) {
    var h = 0;
    for (var i = 0; i < name.length; i++) h = (h * 31 + name.charCodeAt(i)) >>> 0;
    return h % 360;
  }

  function formatTime(seconds) {
    var d = new Date(seconds * 1000);
    if (isNaN(d.getTime())) d = new Date();
    var now = new Date();
    var sameDay = d.toDateString() === now.toDateString();
    var opts = sameDay ? { hour: '2-digit', minute: '2-digit' }
                       : { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' };
    return { short: d.toLocaleString(undefined, opts), iso: d.toISOString(), full: d.toLocaleString() };
  }

  function nearBottom() {
    var s = el.scroll;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
  }
  function scrollToBottom() { el.scroll.scrollTop = el.scroll.scrollHeight; }

  // ---- rendering -----------------------------------------------------------------------------
  function renderMessage(m) {
    var li = document.createElement('li');
    li.className = 'message' + (m.user === myName ? ' mine' : '');
    li.setAttribute('data-id', m.id.key);
    li.setAttribute('data-testid', 'message');

    var avatar = document.createElement('span');
    avatar.className = 'avatar';
    avatar.setAttribute('aria-hidden', 'true');
    avatar.textContent = (Array.from(m.user.trim())[0] || '?').toUpperCase();
    avatar.style.setProperty('--hue', String(hueOf(m.user)));

    var body = document.createElement('div');
    body.className = 'bubble';

    var meta = document.createElement('p');
    meta.className = 'meta';
    var user = document.createElement('span');
    user.className = 'user';
    user.setAttribute('data-testid', 'message-user');
    user.textContent = m.user;
    var t = formatTime(Number(m.time));
    var time = document.createElement('time');
    time.className = 'time';
    time.setAttribute('datetime', t.iso);
    time.title = t.full;
    time.textContent = t.short;
    meta.appendChild(user);
    meta.appendChild(document.createTextNode(' '));
    meta.appendChild(time);

    var text = document.createElement('p');
    text.className = 'text';
    text.setAttribute('data-testid', 'message-text');
    text.textContent = m.text;

    body.appendChild(meta);
    body.appendChild(text);
    li.appendChild(avatar);
    li.appendChild(body);
    return li;
  }

  // addMessage(m, fromServerStream): show m unless it is already shown; keep id order.
  function addMessage(m, fromStream) {
    if (!m || typeof m !== 'object') return;
    var id = parseId(m.id);
    if (!id) return;
    if (fromStream && (!lastId || cmpId(id, lastId) > 0)) lastId = id;
    if (shown[id.key]) return;
    m = { id: id, user: String(m.user == null ? '' : m.user), text: String(m.text == null ? '' : m.text),
          time: m.time == null ? Date.now() / 1000 : m.time };

    var stick = nearBottom();
    var li = renderMessage(m);
    // find the insertion point from the end (messages nearly always arrive in order)
    var i = shownIds.length;
    while (i > 0 && cmpId(shownIds[i - 1], id) > 0) i--;
    if (i === shownIds.length) el.list.appendChild(li);
    else el.list.insertBefore(li, shown[shownIds[i].key]);
    shownIds.splice(i, 0, id);
    shown[id.key] = li;

    while (shownIds.length > MAX_SHOWN) {
      var old = shownIds.shift();
      var oldLi = shown[old.key];
      if (oldLi && oldLi.parentNode) oldLi.parentNode.removeChild(oldLi);
      // keep a tombstone so a late duplicate of a dropped message is still ignored
      shown[old.key] = true;
    }
    el.empty.hidden = true;
    if (stick || m.user === myName) scrollToBottom();
  }

  function addBatch(list) {
    if (!Array.isArray(list)) return;
    list.filter(function (m) { return m && parseId(m.id); })
      .sort(function (a, b) { return cmpId(parseId(a.id), parseId(b.id)); })
      .forEach(function (m) { addMessage(m, true); });
  }

  // ---- receiving: WebSocket --------------------------------------------------------------------
  var ws = null;
  var wsFailures = 0;      // closes in a row without a message (or an open, the first time) between
  var wsEverOpened = false;
  var wsOpenTimer = null;

  function wsUrl() {
    return (window.location.protocol === 'https:' ? 'wss://' : 'ws://') + window.location.host +
      '/ws?since=' + since();
  }

  function startWS() {
    transport = 'websocket';
    setStatus('connecting', 'Connecting…');
    var sock;
    try { sock = new window.WebSocket(wsUrl()); } catch (e) { wsFailed('WebSocket threw: ' + e); return; }
    ws = sock;
    var opened = false;
    wsOpenTimer = setTimeout(function () {
      if (!opened && ws === sock) { sock.close(); }
    }, WS_OPEN_TIMEOUT_MS);
    sock.onopen = function () {
      opened = wsEverOpened = true;
      clearTimeout(wsOpenTimer);
      setStatus('connected', 'Connected (WebSocket)');
    };
    sock.onmessage = function (ev) {
      var m;
      try { m = JSON.parse(ev.data); } catch (e) { return; }
      wsFailures = 0;
      addMessage(m, true);
    };
    sock.onclose = function (ev) {
      clearTimeout(wsOpenTimer);
      if (ws !== sock) return;
      ws = null;
      if (!opened) wsFailures++;
      else if (ev.code !== 1001 && ev.code !== 1000) wsFailures++;
      if (!wsEverOpened || wsFailures >= MAX_WS_FAILURES) {
        wsFailed(wsEverOpened ? 'the socket closed ' + wsFailures + ' times in a row'
                              : 'the socket could not be opened');
        return;
      }
      // 1001: the worker is going away (reload, stop): come back at once, to one that stays
      setStatus('reconnecting', 'Reconnecting…');
      var delay = ev.code === 1001 ? 100 * Math.random() : 500 * Math.pow(2, wsFailures);
      setTimeout(startWS, delay);
    };
  }

  function wsFailed(why) {
    clearTimeout(wsOpenTimer);
    if (ws) { ws.onopen = ws.onmessage = ws.onclose = null; ws.close(); ws = null; }
    if (window.console) console.info('chat: falling back to Server-Sent Events: ' + why);
    if (typeof window.EventSource === 'function') startSSE(); else startPolling();
  }

  // ---- receiving: Server-Sent Events --------------------------------------------------------
  var es = null;
  var sseErrors = 0;       // consecutive errors since the last open
  var sseEverOpened = false;
  var sseOpenTimer = null;

  function startSSE() {
    transport = 'sse';
    setStatus('connecting', 'Connecting…');
    // ?since= for the first connection; on its own reconnects the browser sends Last-Event-ID
    es = new window.EventSource('/events?since=' + since());
    sseOpenTimer = setTimeout(function () {
      if (!sseEverOpened) sseFailed('the event stream did not open');
    }, SSE_OPEN_TIMEOUT_MS);

    es.onopen = function () {
      sseEverOpened = true;
      sseErrors = 0;
      clearTimeout(sseOpenTimer);
      setStatus('connected', 'Connected');
    };
    es.onmessage = function (ev) {
      var m;
      try { m = JSON.parse(ev.data); } catch (e) { return; }
      if (m && m.id == null && ev.lastEventId) m.id = ev.lastEventId;
      addMessage(m, true);
    };
    es.onerror = function () {
      sseErrors++;
      if (!sseEverOpened || sseErrors >= MAX_SSE_ERRORS) {
        sseFailed(sseEverOpened ? 'the event stream failed ' + sseErrors + ' times in a row'
                                : 'the event stream could not be opened');
        return;
      }
      if (es.readyState === window.EventSource.CLOSED) {
        // the browser gave up on this stream (e.g. a bad answer): open a fresh one ourselves
        es.close();
        setStatus('reconnecting', 'Reconnecting…');
        setTimeout(function () { if (es) startSSE(); }, 1000 * sseErrors);
        return;
      }
      setStatus('reconnecting', 'Reconnecting…');   // the browser retries by itself
    };
  }

  function sseFailed(why) {
    clearTimeout(sseOpenTimer);
    if (es) { es.onopen = es.onmessage = es.onerror = null; es.close(); es = null; }
    if (window.console) console.info('chat: falling back to long polling: ' + why);
    startPolling();
  }

  // ---- receiving: long polling ----------------------------------------------------------------
  var polling = false;
  var pollFailures = 0;

  function startPolling() {
    if (polling) return;
    polling = true;
    transport = 'poll';
    setStatus('polling', 'Long polling');
    pollLoop();
  }

  function pollLoop() {
    var ctl = typeof AbortController === 'function' ? new AbortController() : null;
    var timer = ctl ? setTimeout(function () { ctl.abort(); }, POLL_TIMEOUT_MS) : null;
    fetch('/poll?since=' + since(), { cache: 'no-store', signal: ctl ? ctl.signal : undefined })
      .then(function (res) {
        if (!res.ok) throw new Error('HTTP ' + res.status);
        return res.json();
      })
      .then(function (body) {
        clearTimeout(timer);
        pollFailures = 0;
        setStatus('polling', 'Long polling');
        addBatch(body && body.messages);
        setTimeout(pollLoop, 0);
      })
      .catch(function () {
        clearTimeout(timer);
        pollFailures++;
        setStatus('reconnecting', 'Reconnecting (long polling)…');
        setTimeout(pollLoop, Math.min(15000, 500 * Math.pow(2, pollFailures)));
      });
  }

  // ---- start receiving ---------------------------------------------------------------------------
  function startReceiving() {
    if (started) return;
    started = true;
    // history first (so the page is filled at once), then the live stream from there
    var ctl = typeof AbortController === 'function' ? new AbortController() : null;
    var timer = ctl ? setTimeout(function () { ctl.abort(); }, HISTORY_TIMEOUT_MS) : null;
    fetch('/messages?since=0', { cache: 'no-store', signal: ctl ? ctl.signal : undefined })
      .then(function (res) { return res.ok ? res.json() : null; })
      .then(function (body) { if (body) addBatch(body.messages); })
      .catch(function () { /* the stream will deliver what it can */ })
      .then(function () {
        clearTimeout(timer);
        if (typeof window.WebSocket === 'function') startWS();
        else if (typeof window.EventSource === 'function') startSSE();
        else startPolling();
      });
  }

  // ---- sending -------------------------------------------------------------------------------------
  var sending = false;

  function showError(text) {
    el.error.textContent = text || '';
    el.composeForm.classList.toggle('has-error', !!text);
  }

  // The key of the message being composed: the same text sent again (after an error) keeps it.
  var postKey = null, postKeyText = null;
  function newKey() {
    var a = new Uint32Array(4);
    if (window.crypto && window.crypto.getRandomValues) window.crypto.getRandomValues(a);
    else for (var i = 0; i < 4; i++) a[i] = Math.random() * 4294967296 >>> 0;
    return Array.prototype.map.call(a, function (x) { return x.toString(36); }).join('-');
  }

  // POSTs once; resolves with the body of a 201, rejects with an Error (err.retry: worth sending again).
  function postOnce(text, key) {
    return fetch('/messages', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ user: myName, text: text, key: key })
    }).catch(function () {
      var e = new Error('Could not send the message: the server is unreachable.');
      e.retry = true;
      throw e;
    }).then(function (res) {
      return res.text().then(function (raw) {
        var body = null;
        try { body = JSON.parse(raw); } catch (e) { /* not JSON */ }
        if (!res.ok) {
          var err = new Error((body && body.error) || ('The server answered ' + res.status +
                              (res.statusText ? ' ' + res.statusText : '')));
          err.retry = res.status === 503 || res.status === 502 || res.status === 504;
          throw err;
        }
        return body;
      });
    });
  }

  function postWithRetries(text, key, left) {
    return postOnce(text, key).catch(function (err) {
      if (!err.retry || left <= 0) throw err;
      return new Promise(function (resolve) { setTimeout(resolve, 1000 * (POST_RETRIES - left + 1)); })
        .then(function () { return postWithRetries(text, key, left - 1); });
    });
  }

  function sendMessage() {
    if (sending) return;
    var text = el.input.value;
    if (!text.trim()) { showError('Write something first.'); el.input.focus(); return; }
    sending = true;
    el.send.disabled = true;
    el.composeForm.setAttribute('aria-busy', 'true');
    showError('');
    if (!postKey || postKeyText !== text) { postKey = newKey(); postKeyText = text; }
    postWithRetries(text, postKey, POST_RETRIES)
      .then(function (body) {
        postKey = null;
        el.input.value = '';
        autosize();
        // show it at once; the stream delivers it too and dedupe keeps one copy
        if (body && body.id != null) {
          addMessage({ id: body.id, user: myName, text: text, time: Date.now() / 1000 }, false);
        }
      })
      .catch(function (err) {
        showError((err && err.message) || 'Could not send the message.');
      })
      .then(function () {
        sending = false;
        el.send.disabled = false;
        el.composeForm.removeAttribute('aria-busy');
        el.input.focus();
      });
  }

  function autosize() {
    el.input.style.height = 'auto';
    el.input.style.height = Math.min(el.input.scrollHeight, 200) + 'px';
  }

  el.composeForm.addEventListener('submit', function (ev) { ev.preventDefault(); sendMessage(); });
  el.input.addEventListener('keydown', function (ev) {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); sendMessage(); }
  });
  el.input.addEventListener('input', function () { autosize(); if (el.error.textContent) showError(''); });

  // ---- who is online (kept in the server's shared dicts: the same from every worker) ---------------
  var presenceTimer = null;

  function renderOnline(list) {
    if (!el.online || !list) return;
    var names = list.map(function (u) { return String(u.user); });
    el.online.textContent = 'Online (' + names.length + '): ' + names.join(', ');
    el.online.hidden = false;
  }

  function presence() {
    clearTimeout(presenceTimer);
    fetch('/presence', {
      method: 'POST', cache: 'no-store',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ user: myName })
    })
      .then(function (res) { return res.ok ? res.json() : null; })
      .then(function (body) { if (body) renderOnline(body.online); })
      .catch(function () { /* the next round tries again */ })
      .then(function () { presenceTimer = setTimeout(presence, PRESENCE_MS); });
  }

  // ---- name / join ---------------------------------------------------------------------------------
  function showChat() {
    el.join.hidden = true;
    el.chat.hidden = false;
    el.whoami.hidden = false;
    el.whoamiName.textContent = myName;
    // mark own messages already on the page
    shownIds.forEach(function (id) {
      var li = shown[id.key];
      if (li && li.classList) {
        var u = li.querySelector('.user');
        li.classList.toggle('mine', !!u && u.textContent === myName);
      }
    });
    startReceiving();
    presence();
    scrollToBottom();
    el.input.focus();
  }

  function showJoin() {
    el.chat.hidden = true;
    el.whoami.hidden = true;
    el.join.hidden = false;
    el.nameInput.value = myName;
    el.nameInput.focus();
    el.nameInput.select();
  }

  el.joinForm.addEventListener('submit', function (ev) {
    ev.preventDefault();
    var name = el.nameInput.value.trim();
    if (!name) {
      el.joinError.textContent = 'Please enter a name.';
      el.nameInput.setAttribute('aria-invalid', 'true');
      el.nameInput.focus();
      return;
    }
    if (name.length > 64) {
      el.joinError.textContent = 'Names can be at most 64 characters.';
      el.nameInput.setAttribute('aria-invalid', 'true');
      return;
    }
    el.joinError.textContent = '';
    el.nameInput.removeAttribute('aria-invalid');
    myName = name;
    storageSet(NAME_KEY, name);
    showChat();
  });
  el.changeName.addEventListener('click', showJoin);

  myName = storageGet(NAME_KEY).trim();
  if (myName) showChat(); else showJoin();
})();
