// nostr-relayd's page: the copy button, the live figures from /stats.json,
// and the NIP-86 admin area signed through a NIP-07 extension (NIP-98).
// Data from the relay is only ever written with textContent.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const page = document.querySelector('main.page');

  // ------------------------------------------------------------------ icon

  // An operator's icon that does not load gives way to the built-in mark.
  const icon = $('relay-icon');
  const useMark = () => {
    if (icon.getAttribute('src') !== icon.dataset.fallback) icon.src = icon.dataset.fallback;
  };
  if (icon.complete && icon.naturalWidth === 0) useMark();
  icon.addEventListener('error', useMark);

  // ---------------------------------------------------------------- address

  // Without a configured relay_url the server guessed wss:// from the Host
  // header; the browser knows whether it came over TLS.
  const urlOutput = $('relay-url');
  if (page.dataset.relayUrlDerived === 'true') {
    const scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
    urlOutput.textContent = scheme + location.host + '/';
  }
  const relayUrl = () => urlOutput.textContent.trim();

  const copyButton = $('copy-url');
  copyButton.addEventListener('click', async () => {
    const done = (label) => {
      copyButton.textContent = label;
      setTimeout(() => { copyButton.textContent = 'Copy'; }, 1800);
    };
    try {
      await navigator.clipboard.writeText(relayUrl());
      done('Copied');
    } catch {
      // No clipboard API (plain http): select the text for Ctrl+C.
      const range = document.createRange();
      range.selectNodeContents(urlOutput);
      const selection = getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      done(document.execCommand && document.execCommand('copy') ? 'Copied' : 'Press Ctrl+C');
    }
  });

  // ---------------------------------------------------------- live figures

  const REFRESH_MS = 3000;
  const numbers = new Intl.NumberFormat();
  const status = $('status');

  const bytes = (n) => {
    const units = ['B', 'KB', 'MB', 'GB', 'TB'];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
    return (i === 0 ? n : n.toFixed(n < 10 ? 1 : 0)) + ' ' + units[i];
  };

  const duration = (seconds) => {
    const s = Math.max(0, Math.floor(seconds));
    const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24;
    const m = Math.floor(s / 60) % 60, r = s % 60;
    if (d > 0) return `${d} d ${h} h`;
    if (h > 0) return `${h} h ${m} min`;
    if (m > 0) return `${m} min ${r} s`;
    return `${r} s`;
  };

  const rate = (perSecond) => {
    const n = Number(perSecond) || 0;
    return n < 10 ? n.toFixed(1) : numbers.format(Math.round(n));
  };

  const setStatus = (state, text) => {
    status.dataset.state = state;
    $('status-text').textContent = text;
  };

  let timer = null;
  async function refresh() {
    timer = null;
    try {
      const response = await fetch('/stats.json', { cache: 'no-store' });
      if (!response.ok) throw new Error('HTTP ' + response.status);
      const stats = await response.json();
      $('stat-connections').textContent = numbers.format(stats.connections);
      $('stat-events').textContent = numbers.format(stats.events_stored);
      $('stat-rate').textContent = rate(stats.events_per_second);
      $('stat-uptime').textContent = duration(stats.uptime_seconds);
      $('stat-database').textContent = Number.isFinite(stats.database_bytes)
        ? bytes(stats.database_bytes) + ' on disk' : '';
      $('live-updated').textContent = 'Updated ' + new Date().toLocaleTimeString();
      setStatus('live', 'Online');
    } catch {
      setStatus('down', 'Figures unavailable');
    }
    if (!document.hidden) timer = setTimeout(refresh, REFRESH_MS);
  }
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && timer === null) refresh();
  });
  refresh();

  // ------------------------------------------------------------ admin area

  const admin = $('admin');
  if (!admin) return; // NIP-86 is off on this relay.

  // The URL the NIP-98 event names: the relay's own (the server compares
  // host, port and path, not the scheme).
  const apiUrl = () => relayUrl().replace(/^ws(s?):\/\//i, 'http$1://');

  const utf8 = (text) => new TextEncoder().encode(text);
  const toHex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  const base64 = (bytes) => btoa(Array.from(bytes, (b) => String.fromCharCode(b)).join(''));

  // SHA-256 for the NIP-98 payload tag. crypto.subtle exists only in
  // secure contexts; this works on plain http too.
  const K = new Uint32Array([
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
  ]);
  const ror = (x, n) => (x >>> n) | (x << (32 - n));
  function sha256(data) {
    const H = new Uint32Array([
      0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
    ]);
    const padded = new Uint8Array(((data.length + 72) >> 6) << 6);
    padded.set(data);
    padded[data.length] = 0x80;
    const view = new DataView(padded.buffer);
    view.setUint32(padded.length - 8, Math.floor(data.length / 0x20000000));
    view.setUint32(padded.length - 4, (data.length * 8) >>> 0);
    const w = new Uint32Array(64);
    for (let offset = 0; offset < padded.length; offset += 64) {
      for (let i = 0; i < 16; i++) w[i] = view.getUint32(offset + 4 * i);
      for (let i = 16; i < 64; i++) {
        const s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >>> 3);
        const s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >>> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
      }
      let [a, b, c, d, e, f, g, h] = H;
      for (let i = 0; i < 64; i++) {
        const t1 = (h + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i]) | 0;
        const t2 = ((ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) | 0;
        h = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
      }
      H[0] += a; H[1] += b; H[2] += c; H[3] += d; H[4] += e; H[5] += f; H[6] += g; H[7] += h;
    }
    const out = new Uint8Array(32);
    const outView = new DataView(out.buffer);
    H.forEach((word, i) => outView.setUint32(4 * i, word));
    return out;
  }

  // NIP-19 npub (bech32) for showing keys the API returns in hex.
  const BECH32 = 'qpzry9x8gf2tvdw0s3jn54khce6mua7l';
  function polymod(values) {
    const gen = [0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3];
    let chk = 1;
    for (const v of values) {
      const top = chk >>> 25;
      chk = ((chk & 0x1ffffff) << 5) ^ v;
      for (let i = 0; i < 5; i++) if ((top >>> i) & 1) chk ^= gen[i];
    }
    return chk;
  }
  function npub(hex) {
    if (!/^[0-9a-f]{64}$/.test(hex)) return hex;
    const words = [];
    let acc = 0, bits = 0;
    for (let i = 0; i < 64; i += 2) {
      acc = (acc << 8) | parseInt(hex.slice(i, i + 2), 16);
      bits += 8;
      while (bits >= 5) { bits -= 5; words.push((acc >>> bits) & 31); }
      acc &= (1 << bits) - 1;
    }
    if (bits > 0) words.push((acc << (5 - bits)) & 31);
    const hrp = 'npub';
    const expanded = [...hrp].map((c) => c.charCodeAt(0) >> 5)
      .concat([0], [...hrp].map((c) => c.charCodeAt(0) & 31), words, [0, 0, 0, 0, 0, 0]);
    const mod = polymod(expanded) ^ 1;
    const checksum = [0, 1, 2, 3, 4, 5].map((i) => (mod >>> (5 * (5 - i))) & 31);
    return hrp + '1' + words.concat(checksum).map((v) => BECH32[v]).join('');
  }
  const shortKey = (key) => (key.length > 24 ? key.slice(0, 14) + '…' + key.slice(-8) : key);

  // One NIP-86 call: a fresh NIP-98 event per request, signed by the
  // extension. The relay refuses a replayed event id, and two identical
  // calls within one second would sign the same event: a random nonce tag
  // keeps them apart.
  async function call(method, params) {
    const body = JSON.stringify({ method, params });
    const nonce = toHex(crypto.getRandomValues(new Uint8Array(16)));
    const auth = await window.nostr.signEvent({
      kind: 27235,
      created_at: Math.floor(Date.now() / 1000),
      tags: [
        ['u', apiUrl()],
        ['method', 'POST'],
        ['payload', toHex(sha256(utf8(body)))],
        ['nonce', nonce],
      ],
      content: '',
    });
    const response = await fetch('/', {
      method: 'POST',
      cache: 'no-store',
      headers: {
        'Content-Type': 'application/nostr+json+rpc',
        Authorization: 'Nostr ' + base64(utf8(JSON.stringify(auth))),
      },
      body,
    });
    let answer = {};
    try { answer = await response.json(); } catch { /* not JSON: the status says it */ }
    const error = answer && answer.error ? String(answer.error)
      : response.ok ? null : `the relay answered HTTP ${response.status}`;
    return { status: response.status, result: answer ? answer.result : null, error };
  }

  const show = (element, visible) => { element.hidden = !visible; };
  const message = $('admin-message');
  const say = (text) => { message.textContent = text; show(message, Boolean(text)); };

  // NIP-07 extensions may inject window.nostr a moment after the page loads.
  let extensionChecks = 0;
  function detectExtension() {
    const present = typeof window.nostr === 'object' && window.nostr !== null
      && typeof window.nostr.signEvent === 'function';
    show($('admin-no-extension'), !present);
    if (present) {
      if ($('admin-panel').hidden) show($('admin-signin'), true);
    } else if (extensionChecks++ < 6) {
      setTimeout(detectExtension, 500);
    }
  }
  detectExtension();

  const signin = $('signin');
  signin.addEventListener('click', async () => {
    signin.disabled = true;
    say('');
    try {
      const pubkey = String(await window.nostr.getPublicKey()).toLowerCase();
      const answer = await call('supportedmethods', []);
      if (answer.status === 403) {
        say(`This key (${shortKey(npub(pubkey))}) is not an admin of this relay.`);
      } else if (answer.error || !Array.isArray(answer.result)) {
        say('Sign-in failed: ' + (answer.error || 'unexpected answer'));
      } else {
        openPanel(pubkey, answer.result);
      }
    } catch (error) {
      say('Sign-in failed: ' + (error && error.message ? error.message : String(error)));
    } finally {
      signin.disabled = false;
    }
  });

  $('signout').addEventListener('click', () => {
    show($('admin-panel'), false);
    show($('admin-signin'), true);
    $('banned-list').replaceChildren();
    for (const result of admin.querySelectorAll('.result')) result.textContent = '';
    say('');
  });

  function openPanel(pubkey, methods) {
    const whoami = $('admin-whoami');
    whoami.textContent = npub(pubkey);
    whoami.title = pubkey;
    for (const tool of admin.querySelectorAll('[data-needs]')) {
      show(tool, tool.dataset.needs.split(' ').every((m) => methods.includes(m)));
    }
    show($('admin-signin'), false);
    show($('admin-panel'), true);
    if (methods.includes('listbannedpubkeys')) listBanned(true);
  }

  const report = (element, ok, text) => {
    element.dataset.ok = String(ok);
    element.textContent = (ok ? '✓ ' : '✗ ') + text;
  };

  // What a successful call did, in words.
  function done(method, target) {
    switch (method) {
      case 'banpubkey': return `Banned ${shortKey(target)}: its events are refused from now on.`;
      case 'unbanpubkey': return `Unbanned ${shortKey(target)}.`;
      case 'banevent': return `Banned event ${shortKey(target)}.`;
      case 'allowkind': return `Kind ${target} is allowed.`;
      case 'disallowkind': return `Kind ${target} is refused from now on.`;
      default: return 'Done.';
    }
  }

  for (const form of admin.querySelectorAll('form.tool')) {
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const method = event.submitter && event.submitter.dataset.method;
      if (!method) return;
      const target = form.elements.target.value.trim();
      const params = [method.endsWith('kind') ? Number(target) : target];
      if (form.elements.reason && form.elements.reason.value.trim()) {
        params.push(form.elements.reason.value.trim());
      }
      const result = form.querySelector('.result');
      const buttons = form.querySelectorAll('button');
      buttons.forEach((b) => { b.disabled = true; });
      result.dataset.ok = '';
      result.textContent = 'Signing…';
      try {
        const answer = await call(method, params);
        if (answer.error) report(result, false, answer.error);
        else report(result, true, done(method, target));
        if (!answer.error && method.endsWith('pubkey')) listBanned();
      } catch (error) {
        report(result, false, error && error.message ? error.message : String(error));
      } finally {
        buttons.forEach((b) => { b.disabled = false; });
      }
    });
  }

  // Fills the banned list; `fresh` clears the last result line first.
  async function listBanned(fresh) {
    const list = $('banned-list');
    const result = $('tool-banned').querySelector('.result');
    if (fresh === true) result.textContent = '';
    try {
      const answer = await call('listbannedpubkeys', []);
      if (answer.error) { report(result, false, answer.error); return; }
      const entries = Array.isArray(answer.result) ? answer.result : [];
      const items = entries.map((entry) => {
        const item = document.createElement('li');
        const text = document.createElement('span');
        text.className = 'entry';
        const key = document.createElement('code');
        key.className = 'key';
        key.textContent = npub(String(entry.pubkey));
        key.title = String(entry.pubkey);
        text.append(key);
        if (entry.reason) {
          const reason = document.createElement('span');
          reason.className = 'reason';
          reason.textContent = String(entry.reason);
          text.append(reason);
        }
        const unban = document.createElement('button');
        unban.type = 'button';
        unban.className = 'btn small';
        unban.textContent = 'Unban';
        unban.addEventListener('click', async () => {
          unban.disabled = true;
          const answer = await call('unbanpubkey', [String(entry.pubkey)]).catch((e) => ({ error: e.message }));
          if (answer.error) report(result, false, answer.error);
          else report(result, true, done('unbanpubkey', npub(String(entry.pubkey))));
          listBanned();
        });
        item.append(text, unban);
        return item;
      });
      if (items.length === 0) {
        const empty = document.createElement('li');
        empty.className = 'empty';
        empty.textContent = 'No pubkey is banned.';
        items.push(empty);
      }
      list.replaceChildren(...items);
    } catch (error) {
      report(result, false, error && error.message ? error.message : String(error));
    }
  }
  $('banned-refresh').addEventListener('click', () => listBanned(true));
})();
