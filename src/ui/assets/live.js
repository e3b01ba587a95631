// image-catalog's page, live: the catalog page follows /v3/changes (Server-Sent
// Events, read with fetch so that a 401, 403, 410 or 503 can be told apart), the
// trail page long-polls /v3/audit. Every value goes into the page as text, never as
// HTML. Without this script the pages work; they are just not live.
'use strict';

(function () {
  const body = document.body;
  const data = body.dataset;
  const status = document.getElementById('live');
  const MAX_BACKOFF_MS = 60000;
  let backoff = 1000;

  function say(state, text) {
    if (!status) return;
    status.dataset.state = state;
    status.textContent = text;
  }

  // Waits longer after each failure (1 s, 2 s, ... 60 s, with jitter), so that a
  // wrong password or a server that is down is not hammered: the login throttle
  // counts failures.
  function retry(why, again) {
    const wait = backoff * (0.75 + Math.random() / 2);
    backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
    say('waiting', why + '; trying again in ' + Math.round(wait / 1000) + ' s');
    setTimeout(again, wait);
  }

  function failure(response) {
    switch (response.status) {
      case 401: return 'not signed in (401)';
      case 403: return 'no longer allowed (403)';
      case 429: return 'too many failed sign-ins (429)';
      case 503: return 'the server is busy or stopping (503)';
      default: return 'the server answered ' + response.status;
    }
  }

  // The catalog's order: ids compared as UTF-8 bytes, as the server sorts them.
  const encoder = new TextEncoder();
  function compareIds(a, b) {
    const x = encoder.encode(a);
    const y = encoder.encode(b);
    const n = Math.min(x.length, y.length);
    for (let i = 0; i < n; i++) {
      if (x[i] !== y[i]) return x[i] - y[i];
    }
    return x.length - y.length;
  }

  // The search's rule: ASCII letters in any case, every other character as it is.
  function fold(text) {
    return text.replace(/[A-Z]/g, function (c) { return c.toLowerCase(); });
  }

  function cell(label, child) {
    const td = document.createElement('td');
    td.dataset.label = label;
    if (typeof child === 'string') td.textContent = child;
    else td.appendChild(child);
    return td;
  }

  function code(text) {
    const c = document.createElement('code');
    c.textContent = text;
    return c;
  }

  function imageLink(id) {
    const a = document.createElement('a');
    a.href = 'image/' + encodeURIComponent(id);
    a.appendChild(code(id));
    return a;
  }

  function showRows(table) {
    const empty = document.getElementById('empty');
    const any = table.tBodies[0].rows.length > 0;
    table.hidden = !any;
    if (empty) empty.hidden = any;
  }

  function flash(row) {
    row.classList.remove('fresh');
    // Restarts the animation on a row changed twice.
    void row.offsetWidth;
    row.classList.add('fresh');
  }

  // --- The catalog page -------------------------------------------------------

  function followCatalog() {
    const table = document.getElementById('images');
    const rows = table.tBodies[0];
    let seq = data.seq;

    function belongs(image) {
      if (data.provider !== undefined && image.provider !== data.provider) return false;
      if (data.q !== undefined) {
        const q = data.q;
        if (!fold(image.id).includes(q) && !fold(image.name).includes(q)) return false;
      }
      if (data.after !== undefined && compareIds(image.id, data.after) <= 0) return false;
      if (data.until !== undefined && compareIds(image.id, data.until) > 0) return false;
      return true;
    }

    function rowOf(id) {
      for (const row of rows.rows) {
        if (row.dataset.id === id) return row;
      }
      return null;
    }

    function fill(row, image) {
      row.replaceChildren(
        cell('Id', imageLink(image.id)),
        cell('Provider', image.provider),
        cell('Remote user', code(image.remote_user)),
        cell('Name', image.name)
      );
    }

    function apply(change) {
      const existing = rowOf(change.id);
      const image = change.image;
      if (!image || !belongs(image)) {
        if (existing) existing.remove();
      } else if (existing) {
        fill(existing, image);
        flash(existing);
      } else {
        const row = document.createElement('tr');
        row.dataset.id = image.id;
        fill(row, image);
        let before = null;
        for (const other of rows.rows) {
          if (compareIds(other.dataset.id, image.id) > 0) { before = other; break; }
        }
        rows.insertBefore(row, before);
        flash(row);
      }
      showRows(table);
    }

    // One Server-Sent Events stream: "id:" and "data:" lines, events parted by a
    // blank line, comments (keep-alives) starting with ":".
    async function connect() {
      let response;
      try {
        response = await fetch(data.api + 'changes?after=' + seq, {
          headers: { Accept: 'text/event-stream' },
          cache: 'no-store',
          credentials: 'same-origin'
        });
      } catch (e) {
        return retry('the connection failed', connect);
      }
      if (response.status === 410) {
        // Changes after the page's seq are gone: the page itself is out of date.
        say('waiting', 'this page is out of date; reloading');
        return setTimeout(function () { location.reload(); }, backoff);
      }
      if (!response.ok || !response.body) return retry(failure(response), connect);
      say('live', 'Live');
      const opened = Date.now();
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      try {
        for (;;) {
          const chunk = await reader.read();
          if (chunk.done) break;
          buffer += chunk.value;
          let end;
          while ((end = buffer.indexOf('\n\n')) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            let payload = null;
            for (const line of block.split('\n')) {
              if (line.startsWith('data: ')) payload = line.slice(6);
            }
            if (payload !== null) {
              const change = JSON.parse(payload);
              apply(change);
              seq = change.seq;
              backoff = 1000;
            }
          }
        }
      } catch (e) {
        // A dropped connection: follow on from the last change applied.
      }
      // A stream that served a while ended (a restart): start the waits afresh.
      if (Date.now() - opened > 30000) backoff = 1000;
      retry('the stream ended', connect);
    }

    connect();
  }

  // --- The trail page ---------------------------------------------------------

  function followTrail() {
    const table = document.getElementById('records');
    const rows = table.tBodies[0];
    let seq = data.seq;

    function has(recordSeq) {
      for (const row of rows.rows) {
        if (row.dataset.seq === String(recordSeq)) return true;
      }
      return false;
    }

    function when(time) {
      const t = document.createElement('time');
      t.dateTime = time;
      t.textContent = time.slice(0, 19).replace('T', ' ');
      return t;
    }

    function change(record) {
      const span = document.createElement('span');
      if (record.before === undefined && record.after === undefined) {
        span.className = 'muted';
        span.textContent = '\u2014';
      } else if (!record.before && record.after) {
        span.textContent = 'created: ' + record.after.name;
      } else if (record.before && !record.after) {
        span.textContent = 'deleted: ' + record.before.name;
      } else if (record.before && record.after) {
        const list = document.createElement('ul');
        list.className = 'change';
        for (const field of ['remote_user', 'name']) {
          if (record.before[field] === record.after[field]) continue;
          const item = document.createElement('li');
          const was = document.createElement('del');
          was.textContent = record.before[field];
          const became = document.createElement('ins');
          became.textContent = record.after[field];
          item.append(field + ': ', was, ' \u2192 ', became);
          list.appendChild(item);
        }
        return list;
      } else {
        span.className = 'muted';
        span.textContent = 'not recorded';
      }
      return span;
    }

    function prepend(record) {
      if (has(record.seq)) return;
      const row = document.createElement('tr');
      row.dataset.seq = String(record.seq);
      row.append(
        cell('Seq', String(record.seq)),
        cell('When', when(record.time)),
        cell('Who', record.user),
        cell('What', record.method),
        cell('Image', imageLink(record.id)),
        cell('Change', change(record))
      );
      rows.insertBefore(row, rows.firstChild);
      flash(row);
    }

    async function poll() {
      let response;
      // The poll waits on the server until a record lands: live while it waits.
      say('live', 'Live');
      try {
        response = await fetch(data.api + 'audit?after=' + seq + '&wait=60s&limit=1000', {
          cache: 'no-store',
          credentials: 'same-origin'
        });
      } catch (e) {
        return retry('the connection failed', poll);
      }
      if (response.status === 410) {
        say('waiting', 'this page is out of date; reloading');
        return setTimeout(function () { location.reload(); }, backoff);
      }
      if (!response.ok) return retry(failure(response), poll);
      let records;
      try {
        records = await response.json();
      } catch (e) {
        return retry('the answer was cut off', poll);
      }
      backoff = 1000;
      for (const record of records) {
        prepend(record);
        seq = record.seq;
      }
      showRows(table);
      poll();
    }

    poll();
  }

  if (data.live === 'catalog') followCatalog();
  else if (data.live === 'audit') followTrail();
})();
