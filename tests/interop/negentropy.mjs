// NIP-77 interop: reconciles against nostr-relayd with nostr-tools' own
// negentropy implementation (nostr-tools/lib/esm/nip77.js: TypeScript, not
// built on the Rust crate the relay uses), over the `ws` package (Node 20
// has no global WebSocket).
//
// Run by tests/interop.rs, which starts the relay, publishes the events only
// the relay has (signed by the Rust `nostr` crate) and passes:
//   RELAY_URL          ws://127.0.0.1:port/
//   RELAY_ONLY_NOTES   comma-separated ids of kind-1 events only the relay has
//   RELAY_ONLY_OTHERS  comma-separated ids of other kinds only the relay has
// This script publishes the events both sides have (signed here with
// nostr-tools' finalizeEvent), keeps some only locally, and checks that each
// reconciliation finds exactly the right ids. Exit status 0 on success, 1 on
// any mismatch or error.

import WebSocket from 'ws'
import { finalizeEvent, generateSecretKey, nip77 } from 'nostr-tools'
import { Relay, useWebSocketImplementation } from 'nostr-tools/relay'

const { Negentropy, NegentropyStorageVector, NegentropySync } = nip77

const url = process.env.RELAY_URL
if (!url) {
  console.error('RELAY_URL is not set')
  process.exit(2)
}
const idList = (name) => (process.env[name] || '').split(',').filter((id) => id.length > 0)
const relayOnlyNotes = new Set(idList('RELAY_ONLY_NOTES'))
const relayOnlyOthers = new Set(idList('RELAY_ONLY_OTHERS'))

const TIMEOUT_MS = 20_000

/** A plain WebSocket client: send JSON, await the next matching message. */
class RawClient {
  static async connect(url) {
    const ws = new WebSocket(url)
    await new Promise((resolve, reject) => {
      ws.once('open', resolve)
      ws.once('error', reject)
    })
    return new RawClient(ws)
  }

  constructor(ws) {
    this.ws = ws
    this.queue = []
    this.waiters = []
    this.bytesIn = 0
    this.bytesOut = 0
    ws.on('message', (data) => {
      const text = data.toString()
      this.bytesIn += text.length
      const message = JSON.parse(text)
      const waiter = this.waiters.findIndex((w) => w.match(message))
      if (waiter >= 0) {
        const [w] = this.waiters.splice(waiter, 1)
        clearTimeout(w.timer)
        w.resolve(message)
      } else {
        this.queue.push(message)
      }
    })
  }

  send(message) {
    const text = JSON.stringify(message)
    this.bytesOut += text.length
    this.ws.send(text)
  }

  /** The next message for which `match` is true (queued ones first). */
  next(match, what) {
    const queued = this.queue.findIndex(match)
    if (queued >= 0) return Promise.resolve(this.queue.splice(queued, 1)[0])
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), TIMEOUT_MS)
      this.waiters.push({ match, resolve, timer })
    })
  }

  async publish(events) {
    for (const event of events) this.send(['EVENT', event])
    for (const event of events) {
      const ok = await this.next((m) => m[0] === 'OK' && m[1] === event.id, `OK ${event.id}`)
      if (ok[2] !== true) throw new Error(`relay refused ${event.id}: ${ok[3]}`)
    }
  }

  async fetch(ids) {
    const sub = 'fetch'
    this.send(['REQ', sub, { ids }])
    const events = []
    for (;;) {
      const m = await this.next((m) => m[1] === sub && ['EVENT', 'EOSE', 'CLOSED'].includes(m[0]), 'EOSE')
      if (m[0] === 'EVENT') events.push(m[2])
      else if (m[0] === 'EOSE') break
      else throw new Error(`REQ closed: ${m[2]}`)
    }
    this.send(['CLOSE', sub])
    return events
  }

  close() {
    this.ws.close()
  }
}

const failures = []
function check(what, ok, detail) {
  if (ok) {
    console.log(`ok: ${what}`)
  } else {
    console.log(`FAIL: ${what}${detail ? ` (${detail})` : ''}`)
    failures.push(what)
  }
}

function sameSet(a, b) {
  return a.size === b.size && [...a].every((x) => b.has(x))
}

function describe(got, want) {
  const missing = [...want].filter((x) => !got.has(x)).length
  const extra = [...got].filter((x) => !want.has(x)).length
  return `got ${got.size}, want ${want.size}: ${missing} missing, ${extra} unexpected`
}

function storageOf(events) {
  const storage = new NegentropyStorageVector()
  for (const event of events) storage.insert(event.created_at, event.id)
  storage.seal()
  return storage
}

/** One reconciliation with nostr-tools' Negentropy over the raw socket. */
async function reconcile(client, sub, filter, events) {
  const negentropy = new Negentropy(storageOf(events), 50_000)
  const have = new Set()
  const need = new Set()
  let rounds = 0
  client.send(['NEG-OPEN', sub, filter, negentropy.initiate()])
  for (;;) {
    const m = await client.next((m) => (m[0] === 'NEG-MSG' || m[0] === 'NEG-ERR') && m[1] === sub, `NEG-MSG ${sub}`)
    if (m[0] === 'NEG-ERR') throw new Error(`NEG-ERR: ${m[2]}`)
    rounds += 1
    const next = negentropy.reconcile(
      m[2],
      (id) => have.add(id),
      (id) => need.add(id),
    )
    if (next === null) break
    client.send(['NEG-MSG', sub, next])
  }
  client.send(['NEG-CLOSE', sub])
  return { have, need, rounds }
}

/** The same through nostr-tools' own NIP-77 client wrapper. */
async function reconcileWithSync(events, filter) {
  useWebSocketImplementation(WebSocket)
  const relay = await Relay.connect(url)
  const have = new Set()
  const need = new Set()
  try {
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('NegentropySync timed out')), TIMEOUT_MS)
      const sync = new NegentropySync(relay, storageOf(events), filter, {
        onhave: (id) => have.add(id),
        onneed: (id) => need.add(id),
        onclose: (reason) => {
          clearTimeout(timer)
          if (reason) reject(new Error(`NegentropySync closed: ${reason}`))
          else resolve()
        },
      })
      sync.start().catch(reject)
    })
  } finally {
    relay.close()
  }
  return { have, need }
}

function note(sk, content, created_at, kind = 1) {
  return finalizeEvent({ kind, created_at, tags: [], content }, sk)
}

async function main() {
  const sk = generateSecretKey()
  const base = 1_700_000_000
  // Both sides: 400 notes, three to a second (ties are ordered by id).
  const shared = Array.from({ length: 400 }, (_, i) => note(sk, `shared ${i}`, base + Math.floor(i / 3)))
  // Only here: 60 notes interleaved with the shared ones in time.
  const localOnly = Array.from({ length: 60 }, (_, i) => note(sk, `local ${i}`, base + 2 * i))

  const client = await RawClient.connect(url)
  await client.publish(shared)
  const local = [...shared, ...localOnly]
  const localOnlyIds = new Set(localOnly.map((e) => e.id))
  const everythingRemote = new Set([...relayOnlyNotes, ...relayOnlyOthers])

  // 1. Everything ({}): have = local only; need = everything only the relay has.
  const all = await reconcile(client, 'all', {}, local)
  check('{}: have = the events only the client has', sameSet(all.have, localOnlyIds), describe(all.have, localOnlyIds))
  check('{}: need = the events only the relay has', sameSet(all.need, everythingRemote), describe(all.need, everythingRemote))
  check(`{}: took more than one round (${all.rounds})`, all.rounds > 1)

  // 2. A filter: only kind 1 is compared.
  const notes = await reconcile(client, 'notes', { kinds: [1] }, local)
  check('kinds [1]: have = the local-only notes', sameSet(notes.have, localOnlyIds), describe(notes.have, localOnlyIds))
  check('kinds [1]: need = the relay-only notes', sameSet(notes.need, relayOnlyNotes), describe(notes.need, relayOnlyNotes))

  // 3. nostr-tools' NegentropySync (its NIP-77 client as applications use it).
  const wrapped = await reconcileWithSync(local, {})
  check('NegentropySync: have', sameSet(wrapped.have, localOnlyIds), describe(wrapped.have, localOnlyIds))
  check('NegentropySync: need', sameSet(wrapped.need, everythingRemote), describe(wrapped.need, everythingRemote))

  // 4. Act on the answer: upload what the relay lacks, download what we
  // lack, and the sets are then identical: one round, nothing to do.
  await client.publish(localOnly)
  const downloaded = await client.fetch([...all.need])
  check('every needed id downloads', downloaded.length === all.need.size, `${downloaded.length} of ${all.need.size}`)
  const synced = await reconcile(client, 'again', {}, [...local, ...downloaded])
  check('after syncing: nothing to exchange', synced.have.size === 0 && synced.need.size === 0, `${synced.have.size} have, ${synced.need.size} need`)
  check(`after syncing: one round (${synced.rounds})`, synced.rounds === 1)

  // 5. A bad message gets NEG-ERR, and the connection goes on.
  client.send(['NEG-OPEN', 'bad', {}, 'zz'])
  const err = await client.next((m) => m[0] === 'NEG-ERR' && m[1] === 'bad', 'NEG-ERR bad')
  check('malformed hex: NEG-ERR invalid', String(err[2]).startsWith('invalid:'), err[2])
  const after = await reconcile(client, 'after', { kinds: [1] }, [])
  check('the connection still serves', after.need.size === shared.length + localOnly.length + relayOnlyNotes.size)

  client.close()
  console.log(`bytes: sent ${client.bytesOut}, received ${client.bytesIn}`)
}

try {
  await main()
} catch (error) {
  console.log(`FAIL: ${error.stack || error}`)
  failures.push(String(error))
}
if (failures.length > 0) {
  console.log(`${failures.length} check(s) failed`)
  process.exit(1)
}
console.log('all NIP-77 interop checks passed')
process.exit(0)
