// The relay's web page in real headless Chromium (Debian's /usr/bin/chromium,
// driven by playwright-core). Run by tests/browser.rs:
//
//   node tests/browser/run.mjs <url> <outdir> <json>
//
// <url> is a relay with NIP-86 on; <json> says what the page must show and
// carries the test keys: {plainUrl, adminSecret, strangerSecret, banNpub,
// banHex, banEventId, expect: {name, description, nips, adminNpub}}.
//
// Talks to the Rust test over stdio: prints {"step":"figures",
// "events_stored":N} once the page shows live figures, then reads a line
// "published K" after the test has published K events, and expects the page
// to show N+K or more. Ends with one line {"step":"done","failures":[…],
// "checks":[…],"screenshots":{…}} and exits 1 if anything failed.

import { chromium } from 'playwright-core';
import { finalizeEvent, getPublicKey } from 'nostr-tools/pure';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

const [url, outdir, json] = process.argv.slice(2);
if (!url || !outdir || !json) {
  console.error('usage: node run.mjs <url> <outdir> <json>');
  process.exit(2);
}
const spec = JSON.parse(json);
mkdirSync(outdir, { recursive: true });

const checks = [];
const failures = [];
const check = (name, ok, detail = '') => {
  (ok ? checks : failures).push(detail ? `${name}: ${detail}` : name);
};
const say = (message) => process.stdout.write(JSON.stringify(message) + '\n');

const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function readLine(timeoutMs) {
  const line = stdinLines.next();
  const timeout = new Promise((_, reject) =>
    setTimeout(() => reject(new Error('no answer from the test on stdin')), timeoutMs).unref());
  const { value, done } = await Promise.race([line, timeout]);
  if (done) throw new Error('stdin closed');
  return value;
}

const hexToBytes = (hex) => Uint8Array.from(hex.match(/../g), (byte) => parseInt(byte, 16));

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  // Playwright gives every launch a fresh --user-data-dir of its own.
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});

/// A context with an optional stubbed NIP-07 extension signing with `secret`.
async function newContext(options, secret) {
  const context = await browser.newContext(options);
  if (secret) {
    const key = hexToBytes(secret);
    const signed = [];
    await context.exposeFunction('__testNostrPublicKey', () => getPublicKey(key));
    await context.exposeFunction('__testNostrSign', (template) => {
      const event = finalizeEvent(template, key);
      signed.push(event);
      return JSON.parse(JSON.stringify(event));
    });
    await context.addInitScript(() => {
      window.nostr = {
        getPublicKey: () => window.__testNostrPublicKey(),
        signEvent: (template) => window.__testNostrSign(template),
      };
    });
    context.signed = signed;
  }
  return context;
}

/// Opens `target` in a new page of `context`, recording every request and
/// every console error. `allowedErrors` are console errors expected there.
async function open(context, target, label) {
  const page = await context.newPage();
  const origin = new URL(target).origin;
  page.requests = [];
  page.errors = [];
  page.on('request', (request) => page.requests.push(request.url()));
  page.on('console', (message) => {
    if (message.type() === 'error') {
      page.errors.push({ text: message.text(), url: message.location().url });
    }
  });
  page.on('pageerror', (error) => page.errors.push({ text: String(error), url: '' }));
  page.finish = (allowed = () => false) => {
    const foreign = page.requests.filter((u) => new URL(u).origin !== origin);
    check(`${label}: every request goes to the relay`, foreign.length === 0, foreign.join(', '));
    const errors = page.errors.filter((e) => !allowed(e));
    check(`${label}: no console errors`, errors.length === 0, JSON.stringify(errors));
  };
  await page.goto(target, { waitUntil: 'load' });
  return page;
}

const text = (page, selector) => page.locator(selector).first().textContent();
const figure = async (page, id) => Number(((await text(page, id)) || '').replace(/[^0-9]/g, '') || NaN);

/// Waits until `fn(arg)` is true in the page; records the check either way.
async function waitFor(page, what, fn, arg, timeout = 15000) {
  try {
    await page.waitForFunction(fn, arg, { timeout, polling: 100 });
    check(what, true);
    return true;
  } catch {
    check(what, false, 'timed out');
    return false;
  }
}

/// Decodes a PNG in the browser: its size and how many distinct colours
/// (5 bits per channel) it has. A blank or failed render has a handful.
async function inspectPng(path) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const data = readFileSync(path).toString('base64');
  const result = await page.evaluate(async (data) => {
    const image = new Image();
    image.src = 'data:image/png;base64,' + data;
    await image.decode();
    const canvas = document.createElement('canvas');
    canvas.width = image.naturalWidth;
    canvas.height = image.naturalHeight;
    const context = canvas.getContext('2d');
    context.drawImage(image, 0, 0);
    const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
    const colours = new Set();
    for (let i = 0; i < pixels.length; i += 4) {
      colours.add(((pixels[i] >> 3) << 10) | ((pixels[i + 1] >> 3) << 5) | (pixels[i + 2] >> 3));
    }
    return { width: canvas.width, height: canvas.height, colours: colours.size };
  }, data);
  await context.close();
  return result;
}

const screenshots = {};
async function screenshot(page, name, viewportWidth) {
  const path = join(outdir, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  const png = await inspectPng(path);
  screenshots[name] = { path, ...png };
  check(`${name} screenshot decodes at the viewport's width`, png.width === viewportWidth,
    `${png.width}x${png.height}`);
  check(`${name} screenshot is not blank`, png.colours >= 64, `${png.colours} colours`);
}

async function signIn(page) {
  await page.locator('#signin').click();
}

/// Runs one part of the walk-through; an exception fails that part only.
async function section(name, run) {
  try {
    await run();
  } catch (error) {
    check(`${name}: ran to the end`, false, error && error.stack ? error.stack : String(error));
  }
}

await section('desktop, admin', async () => {
  const desktop = await newContext({ viewport: { width: 1280, height: 800 }, colorScheme: 'light' },
    spec.adminSecret);
  await desktop.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: new URL(url).origin });
  const page = await open(desktop, url, 'desktop');

  check('the name is shown', (await text(page, 'h1')) === spec.expect.name, await text(page, 'h1'));
  check('the title names the relay', (await page.title()).startsWith(spec.expect.name), await page.title());
  const description = await text(page, '#relay-description');
  check('the description is shown as text', description === spec.expect.description, description);
  check('nothing operator-supplied became markup',
    await page.evaluate(() => document.querySelectorAll('#relay-description *, h1 *').length === 0
      && window.__xss === undefined));
  const nips = await page.locator('.nip-number').allTextContents();
  const wanted = spec.expect.nips.map((n) => 'NIP-' + String(n).padStart(2, '0'));
  check('the supported NIPs are listed', JSON.stringify(nips) === JSON.stringify(wanted), nips.join(' '));
  const hrefs = await page.locator('a.nip').evaluateAll((links) => links.map((a) => a.href));
  check('each NIP links to its text',
    hrefs.length === wanted.length && hrefs.every((h) => h.startsWith('https://github.com/nostr-protocol/nips/blob/master/')),
    hrefs.join(' '));
  const about = await text(page, '#about');
  check('the admin npub is shown', about.includes(spec.expect.adminNpub), about);
  check('software and version are shown', about.includes('nostr-relayd') && /\d+\.\d+\.\d+/.test(about));
  const limits = await text(page, '#limits');
  check('the limits are shown', limits.includes('Largest message') && limits.includes('KiB'), limits);

  const wsUrl = 'ws://' + new URL(url).host + '/';
  check('the relay URL is the ws:// address', (await text(page, '#relay-url')) === wsUrl,
    await text(page, '#relay-url'));
  await page.locator('#copy-url').click();
  await waitFor(page, 'the copy button confirms', () => document.getElementById('copy-url').textContent === 'Copied');
  const copied = await page.evaluate(() => navigator.clipboard.readText());
  check('the copy button copies the relay URL', copied === wsUrl, copied);

  // Live figures.
  if (await waitFor(page, 'live figures appear', () => document.getElementById('status').dataset.state === 'live')) {
    const before = await figure(page, '#stat-events');
    check('events stored is a number', Number.isFinite(before), String(before));
    say({ step: 'figures', events_stored: before });
    const answer = await readLine(30000);
    const published = Number(/^published (\d+)$/.exec(answer.trim())?.[1]);
    check('the test published events', published > 0, answer);
    await waitFor(page, `events stored goes from ${before} to ${before + published} or more`,
      (target) => Number(document.getElementById('stat-events').textContent.replace(/[^0-9]/g, '')) >= target,
      before + published, 20000);
    check('connections and uptime are shown',
      Number.isFinite(await figure(page, '#stat-connections')) && (await text(page, '#stat-uptime')).trim() !== '–');
  } else {
    say({ step: 'figures', events_stored: null });
  }

  // Admin: sign in, ban a pubkey typed as npub, see it listed.
  check('the sign-in button is offered', await page.locator('#signin').isVisible());
  await signIn(page);
  if (await waitFor(page, 'an admin sees the admin tools', () => !document.getElementById('admin-panel').hidden)) {
    const whoami = await text(page, '#admin-whoami');
    check('the signed-in key is shown as npub', whoami === spec.expect.adminNpub, whoami);
    const tool = page.locator('#tool-pubkey');
    await tool.locator('input[name=target]').fill(spec.banNpub);
    await tool.locator('input[name=reason]').fill('spam <b>test</b>');
    await tool.locator('button[data-method=banpubkey]').click();
    if (!await waitFor(page, 'the ban is confirmed', () => document.querySelector('#tool-pubkey .result').dataset.ok === 'true')) {
      check('the ban result', false, await text(page, '#tool-pubkey .result'));
    }
    const listed = await waitFor(page, 'the banned pubkey is listed',
      (hex) => [...document.querySelectorAll('#banned-list code')].some((c) => c.title === hex),
      spec.banHex);
    if (listed) {
      const shown = await page.locator('#banned-list code').allTextContents();
      check('the banned pubkey is listed as npub', shown.includes(spec.banNpub), shown.join(' '));
      check('the reason is shown as text', (await text(page, '#banned-list .reason')) === 'spam <b>test</b>');
    }
    // An event id, through the event tool.
    const events = page.locator('#tool-event');
    await events.locator('input[name=target]').fill(spec.banEventId);
    await events.locator('button[data-method=banevent]').click();
    await waitFor(page, 'banning an event is confirmed',
      () => document.querySelector('#tool-event .result').dataset.ok === 'true');
    // A kind, through the kind tool.
    const kinds = page.locator('#tool-kind');
    await kinds.locator('input[name=target]').fill('30402');
    await kinds.locator('button[data-method=disallowkind]').click();
    await waitFor(page, 'disallowing a kind is confirmed',
      () => /Kind 30402 is refused/.test(document.querySelector('#tool-kind .result').textContent));
    const auth = desktop.signed.filter((e) => e.kind === 27235);
    const tags = auth.length ? Object.fromEntries(auth[0].tags.map((t) => [t[0], t[1]])) : {};
    check('every call is signed as NIP-98', auth.length >= 3
      && tags.method === 'POST' && /^[0-9a-f]{64}$/.test(tags.payload || '')
      && new URL(tags.u).host === new URL(url).host, JSON.stringify(tags));
  }
  await page.mouse.move(0, 0);
  await screenshot(page, 'desktop', 1280);
  const lightBackground = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  await page.emulateMedia({ colorScheme: 'dark' });
  const darkBackground = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  check('dark mode changes the colours', lightBackground !== darkBackground, `${lightBackground} / ${darkBackground}`);
  await screenshot(page, 'desktop-dark', 1280);
  page.finish();
});

await section('phone', async () => {
  const phone = await newContext({
    viewport: { width: 390, height: 844 },
    deviceScaleFactor: 2,
    isMobile: true,
    hasTouch: true,
    colorScheme: 'light',
  }, spec.adminSecret);
  const mobile = await open(phone, url, 'phone');
  await waitFor(mobile, 'phone: live figures appear', () => document.getElementById('status').dataset.state === 'live');
  await mobile.locator('#signin').tap();
  await waitFor(mobile, 'phone: the admin tools open', () => !document.getElementById('admin-panel').hidden
    && document.querySelectorAll('#banned-list li').length > 0);
  for (const width of [390, 360]) {
    await mobile.setViewportSize({ width, height: 844 });
    const { scrollWidth, innerWidth } = await mobile.evaluate(() => ({
      scrollWidth: document.documentElement.scrollWidth,
      innerWidth: window.innerWidth,
    }));
    check(`phone ${width} px: no horizontal scrolling`, scrollWidth <= innerWidth,
      `scrollWidth ${scrollWidth}, viewport ${innerWidth}`);
  }
  await mobile.setViewportSize({ width: 390, height: 844 });
  await screenshot(mobile, 'phone', 390 * 2);
  await mobile.emulateMedia({ colorScheme: 'dark' });
  await screenshot(mobile, 'phone-dark', 390 * 2);
  mobile.finish();
});

await section('no extension', async () => {
  const bare = await newContext({ viewport: { width: 1280, height: 800 } });
  const plainPage = await open(bare, url, 'no extension');
  await plainPage.waitForTimeout(3500); // past the page's checks for a late extension
  check('without an extension the page says to install one',
    (await plainPage.locator('#admin-no-extension').isVisible())
      && /install a NIP-07 extension to sign in/i.test(await text(plainPage, '#admin-no-extension')));
  check('without an extension there is no sign-in button', !(await plainPage.locator('#signin').isVisible()));
  plainPage.finish();
});

await section('a key that is not an admin', async () => {
  const strangerContext = await newContext({ viewport: { width: 1280, height: 800 } }, spec.strangerSecret);
  const stranger = await open(strangerContext, url, 'not an admin');
  await signIn(stranger);
  if (await waitFor(stranger, 'a non-admin key is told so', () => !document.getElementById('admin-message').hidden)) {
    const message = await text(stranger, '#admin-message');
    check('the message says the key is not an admin', /not an admin of this relay/.test(message), message);
  }
  check('a non-admin key gets no admin tools', !(await stranger.locator('#admin-panel').isVisible()));
  // The API's 403 for this key is the one console line expected here.
  stranger.finish((e) => /status of 403/.test(e.text) && new URL(e.url).pathname === '/');
});

await section('NIP-86 off', async () => {
  const offContext = await newContext({ viewport: { width: 1280, height: 800 } }, spec.adminSecret);
  const off = await open(offContext, spec.plainUrl, 'NIP-86 off');
  check('without NIP-86 there is no admin area', (await off.locator('#admin').count()) === 0);
  const offNips = await off.locator('.nip-number').allTextContents();
  check('without NIP-86 it is not listed', !offNips.includes('NIP-86'), offNips.join(' '));
  off.finish();
});
await browser.close().catch(() => {});

say({ step: 'done', failures, checks, screenshots });
process.exit(failures.length === 0 ? 0 : 1);
