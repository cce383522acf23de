//! One WebSocket client: reads its messages, answers them, and forwards the
//! live events its subscriptions match.
//!
//! A REQ is answered without ever missing or repeating an event across EOSE:
//! the subscription is registered in the fan-out first (live events that
//! arrive meanwhile are buffered), then the store is queried; the query
//! reports the newest commit it could see (its snapshot), so after EOSE the
//! buffered and later live events are sent only if committed after it.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use negentropy::{Id, Negentropy, NegentropyStorageVector};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::AbortHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::Shared;
use crate::auth;
use crate::fanout::{Deliveries, Delivery, Interruptions, Mailbox, Overflow, SubscriptionKey};
use crate::ingest::Origin;
use crate::nostr::message::{self, quote};
use crate::nostr::{ClientMessage, Filter, Rejection};
use crate::privacy::Readers;
use crate::rate_limit::OpenConnection;
use crate::reload::Live;
use crate::shutdown::Shutdown;
use crate::store::negentropy::NegItems;
use crate::store::unix_now;
use crate::store::{CountResult, QueryResult, StoreError};

type Socket = WebSocketStream<TokioIo<Upgraded>>;
type Sink = SplitSink<Socket, Message>;
type Source = SplitStream<Socket>;

/// Work finished elsewhere that this connection must answer.
enum Reply {
    /// An EVENT's `OK`, ready to send (counted in `events_pending`).
    Frame(String),
    /// A REQ's stored events are ready (boxed: the reply queue's slots are
    /// allocated per connection, so every variant is kept pointer-sized).
    Stored(Box<StoredReply>),
    /// A COUNT's answer is ready (NIP-45).
    Counted(Box<CountReply>),
    /// A NEG-OPEN's records are read and its first answer made.
    Neg(Box<NegReply>),
}

/// The outcome of one NEG-OPEN.
struct NegReply {
    sub_id: String,
    generation: u64,
    outcome: NegOutcome,
}

enum NegOutcome {
    /// The session, and its answer to the initial message.
    Ready {
        negentropy: Box<Reconciler>,
        answer: Vec<u8>,
    },
    /// `NEG-ERR` with this reason (and the record cap, when that is why).
    Refused {
        reason: String,
        max_records: Option<usize>,
    },
}

/// The relay's side of one negentropy session; it owns its records.
type Reconciler = Negentropy<'static, NegentropyStorageVector>;

/// A NIP-77 session; its ids are a namespace apart from REQ's.
struct NegSession {
    /// Distinguishes this NEG-OPEN from an earlier one with the same id.
    generation: u64,
    phase: NegPhase,
}

enum NegPhase {
    /// The records are being read; the task is aborted if the session ends.
    Loading { task: AbortHandle },
    /// Waiting for the client's NEG-MSG; closed when idle past
    /// `negentropy.idle_seconds`.
    Open {
        negentropy: Box<Reconciler>,
        last_active: tokio::time::Instant,
    },
    /// A NEG-MSG is being answered on a blocking thread (linear in the
    /// records: up to ~30 ms at 500,000), which hands the session back.
    Answering,
}

impl Drop for NegSession {
    /// A session closed or replaced while its records load cancels the read.
    fn drop(&mut self) {
        if let NegPhase::Loading { task } = &self.phase {
            task.abort();
        }
    }
}

/// The outcome of one COUNT.
struct CountReply {
    sub_id: String,
    /// Which running COUNT this answers.
    number: u64,
    result: Result<CountResult, StoreError>,
}

/// The outcome of one REQ's query.
struct StoredReply {
    sub_id: String,
    generation: u64,
    result: Result<QueryResult, StoreError>,
}

/// Where a subscription stands relative to its EOSE.
enum Phase {
    /// The store is being queried; live events wait here.
    Loading {
        buffer: Vec<Delivery>,
        /// The query's task, aborted if the subscription ends first.
        query: AbortHandle,
    },
    /// EOSE sent; live events committed after `snapshot` are forwarded,
    /// except, for a while, those the stored query already sent.
    Live {
        snapshot: u64,
        sent: Option<Box<SentIds>>,
    },
}

/// The ids a stored query sent, when the store has no single commit order
/// to compare with (PostgreSQL, several nodes): a live event committed
/// before the query's snapshot may still be on its way from another node
/// through NATS, and must not reach the client a second time. Kept for
/// [`SENT_IDS_WINDOW`] after EOSE, far longer than NATS takes.
struct SentIds {
    ids: HashSet<[u8; 32]>,
    until: Instant,
}

/// How long a subscription remembers the ids its stored query sent.
const SENT_IDS_WINDOW: Duration = Duration::from_secs(10);

impl SentIds {
    fn new(ids: Vec<[u8; 32]>) -> Option<Box<SentIds>> {
        (!ids.is_empty()).then(|| {
            Box::new(SentIds {
                ids: ids.into_iter().collect(),
                until: Instant::now() + SENT_IDS_WINDOW,
            })
        })
    }

    fn holds(&self, id: &[u8; 32]) -> bool {
        self.ids.contains(id)
    }
}

struct Subscription {
    key: SubscriptionKey,
    /// The id as a JSON string literal, quoted once.
    quoted_id: String,
    /// Distinguishes this REQ from an earlier one with the same id.
    generation: u64,
    phase: Phase,
}

impl Drop for Subscription {
    /// A subscription closed, replaced or left behind by its connection
    /// before its stored events arrived cancels its query: a client that
    /// reconnects in a loop must not queue work nobody will read.
    fn drop(&mut self) {
        if let Phase::Loading { query, .. } = &self.phase {
            query.abort();
        }
    }
}

/// Why the loop ended and how to close the socket.
enum Exit {
    /// The client closed, or is gone: close our side normally.
    Quietly,
    /// The connection ended without a closing handshake (the client
    /// vanished, or reset it): there is no one to send a close frame to.
    Gone,
    /// Send this close frame first.
    Close(CloseCode, &'static str),
    /// A write failed or stalled: the socket cannot take even a close
    /// frame, so it is dropped at once.
    Abandon,
}

/// The state of one client connection.
struct Session {
    shared: Arc<Shared>,
    /// The settings in force (see `reload`), refreshed every loop turn.
    live: Arc<Live>,
    peer: SocketAddr,
    sink: Sink,
    subscriptions: HashMap<String, Subscription>,
    names: HashMap<SubscriptionKey, String>,
    /// NIP-77 sessions by subscription id (not REQ's namespace).
    neg_sessions: HashMap<String, NegSession>,
    mailbox: Mailbox,
    overflow: Arc<Overflow>,
    replies: mpsc::Sender<Reply>,
    events_in_flight: Arc<Semaphore>,
    /// EVENTs whose `OK` has not been sent yet: a drain waits for them.
    events_pending: usize,
    next_generation: u64,
    done: mpsc::Sender<()>,
    /// Frames fed to the sink since the last flush.
    unflushed: bool,
    /// Their size, counted in the relay-wide `queued_bytes`.
    unflushed_bytes: usize,
    /// Pubkeys proven on this connection with NIP-42 AUTH.
    authenticated: Vec<[u8; 32]>,
    /// The NIP-42 challenge sent when the connection opened.
    challenge: Option<String>,
    /// The URL an AUTH event must name: `relay_url`, or this request's Host.
    relay_url: Arc<str>,
    /// What this connection may read of the private kinds.
    readers: Readers,
    /// The client's address (see [`Peer`]).
    address: IpAddr,
    /// Rate-limit refusals in the current minute, and when it began.
    refusals: (u32, tokio::time::Instant),
    /// COUNTs whose answer has not arrived (number, id, task): each is a
    /// running query.
    counts: Vec<(u64, String, AbortHandle)>,
    /// What this connection did, for its one log line at close.
    tally: Tally,
    _open: OpenConnection,
}

/// A connection's activity, logged once when it closes (never per message:
/// the log stays quiet under load).
#[derive(Default)]
struct Tally {
    /// EVENT messages that parsed.
    events: u64,
    /// Of those, the ones answered `OK true` (counted by the ingest tasks).
    accepted: Arc<AtomicU64>,
    /// REQ messages that parsed, refused or not.
    reqs: u64,
    /// Payload bytes of the text and binary frames received and sent.
    bytes_in: u64,
    bytes_out: u64,
}

impl Session {
    /// The connection's one `info` line (target `nostr_relayd::connection`;
    /// `RUST_LOG=info,nostr_relayd::connection=warn` silences it).
    fn log_closed(&self, opened: tokio::time::Instant, close: &str) {
        let tally = &self.tally;
        tracing::info!(
            target: "nostr_relayd::connection",
            ip = %self.address,
            duration_ms = u64::try_from(opened.elapsed().as_millis()).unwrap_or(u64::MAX),
            events = tally.events,
            accepted = tally.accepted.load(Ordering::Relaxed),
            reqs = tally.reqs,
            bytes_in = tally.bytes_in,
            bytes_out = tally.bytes_out,
            close,
            "connection closed"
        );
    }
}

/// Who is at the other end of a connection.
pub struct Peer {
    /// The socket's peer (perhaps a reverse proxy): for logs.
    pub socket: SocketAddr,
    /// The client's address, after trusted proxies' headers: for rate
    /// limits, access lists and the write plugin.
    pub address: IpAddr,
    /// The URL this client knows the relay by (NIP-42, NIP-62).
    pub relay_url: String,
    /// Counts this connection against its address while it lives.
    pub open: OpenConnection,
}

/// Serves one upgraded WebSocket until either side closes it or the relay
/// shuts down.
pub async fn serve(
    socket: Socket,
    shared: Arc<Shared>,
    peer: Peer,
    mut shutdown: Shutdown,
    done: mpsc::Sender<()>,
) {
    let (sink, mut stream) = socket.split();
    let live = shared.live.load_full();
    let network = &live.config.network;
    let (mailbox, mut deliveries, overflow) = shared.fanout.mailbox(network.send_queue_events);
    let interruptions = deliveries.interruptions();
    let (replies, mut reply_queue) = mpsc::channel(
        network.max_events_in_flight
            + live.config.limits.max_subscriptions
            + live.config.negentropy.max_sessions,
    );
    let ping_period = Duration::from_secs(network.ping_interval_seconds.max(1));
    let mut session = Session {
        events_in_flight: Arc::new(Semaphore::new(network.max_events_in_flight)),
        events_pending: 0,
        peer: peer.socket,
        sink,
        subscriptions: HashMap::new(),
        names: HashMap::new(),
        neg_sessions: HashMap::new(),
        mailbox,
        overflow,
        replies,
        next_generation: 0,
        done,
        unflushed: false,
        unflushed_bytes: 0,
        authenticated: Vec::new(),
        challenge: None,
        relay_url: peer.relay_url.into(),
        readers: Readers::new(&live.config.auth.private_kinds, &[]),
        address: peer.address,
        refusals: (0, tokio::time::Instant::now()),
        counts: Vec::new(),
        tally: Tally::default(),
        _open: peer.open,
        live,
        shared,
    };
    let _open = session.shared.counters.websockets.hold();
    crate::metrics::global().connection_opened();
    let peer = session.peer;
    let opened = tokio::time::Instant::now();
    tracing::debug!(target: "nostr_relayd::connection", ip = %session.address, %peer, "connection opened");
    if session.live.config.auth.enabled {
        // NIP-42: offered at once, so a client can authenticate before it
        // needs to; reading public events never requires it by default.
        let challenge = auth::new_challenge();
        let sent = session.send_text(message::auth_challenge(&challenge)).await;
        if sent.is_err() || session.flush().await.is_err() {
            session.log_closed(opened, "write failed");
            return;
        }
        session.challenge = Some(challenge);
    }
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_period, ping_period);
    let mut awaiting_pong = false;
    // Handlers are boxed: an idle connection's task then holds only the
    // small futures of this select, not the largest handler's state.
    let exit = loop {
        session.refresh_live();
        let neg_idle_at = session.neg_idle_deadline();
        let step = tokio::select! {
            _ = shutdown.recv() => Err(Box::pin(session.drain(&mut stream, &mut reply_queue)).await),
            _ = session.overflow.notify.notified() => Box::pin(session.on_overflow()).await,
            _ = interruptions.notify.notified() => Box::pin(session.on_interrupted(&interruptions)).await,
            Some(reply) = reply_queue.recv() => Box::pin(session.on_reply(reply)).await,
            Some(delivery) = deliveries.recv() => session.on_delivery(delivery).await,
            _ = tokio::time::sleep_until(neg_idle_at.unwrap_or_else(tokio::time::Instant::now)),
                if neg_idle_at.is_some() => Box::pin(session.close_idle_neg_sessions()).await,
            _ = ping.tick() => {
                if awaiting_pong {
                    Err(Exit::Close(CloseCode::Policy, "no pong received"))
                } else {
                    awaiting_pong = true;
                    session.send(Message::Ping(Default::default())).await
                }
            }
            frame = stream.next() => {
                if matches!(frame, Some(Ok(Message::Pong(_)))) {
                    awaiting_pong = false;
                }
                Box::pin(session.on_frame(frame)).await
            }
        };
        // Answer whatever else is already waiting, then write it all with
        // one flush: under load, one syscall carries many OKs and EVENTs.
        let step = match step {
            Ok(()) => Box::pin(session.drain_ready(&mut reply_queue, &mut deliveries)).await,
            Err(exit) => Err(exit),
        };
        let step = match step {
            Ok(()) => session.flush().await,
            Err(exit) => Err(exit),
        };
        if let Err(exit) = step {
            break exit;
        }
    };
    let close = match &exit {
        Exit::Abandon => "write failed",
        Exit::Quietly => "client closed",
        Exit::Gone => "client gone",
        Exit::Close(_, reason) => reason,
    };
    session.log_closed(opened, close);
    match exit {
        Exit::Abandon | Exit::Gone => {}
        Exit::Quietly => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.sink.close()).await;
        }
        Exit::Close(code, reason) => {
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            let _ = tokio::time::timeout(
                CLOSE_TIMEOUT,
                session.sink.send(Message::Close(Some(frame))),
            )
            .await;
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.sink.close()).await;
        }
    }
    session.unsubscribe_all();
}

/// Longest a write to the socket may stall. A client that stops reading
/// fills its TCP window; without this bound its task (and everything queued
/// for it) would wait forever, even after its live queue overflowed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Most pubkeys one connection may authenticate as (NIP-42 allows several).
const MAX_AUTHENTICATED: usize = 16;

/// Longest the closing handshake may take once the session is over.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How many ready replies or deliveries one loop turn handles before it
/// flushes and looks at the socket again.
const DRAIN_BATCH: usize = 256;

impl Session {
    /// Queues a frame; [`Session::flush`] writes it out. The sink writes
    /// by itself once its buffer is full, so this too can wait on a client
    /// that does not read.
    async fn send(&mut self, message: Message) -> Result<(), Exit> {
        let bytes = message.len();
        self.tally.bytes_out += bytes as u64;
        self.unflushed = true;
        self.unflushed_bytes += bytes;
        self.shared.counters.queued_bytes.add(bytes);
        let write = tokio::time::timeout(WRITE_TIMEOUT, self.sink.feed(message));
        Self::stalled_unless(write, &self.overflow, self.peer).await
    }

    async fn flush(&mut self) -> Result<(), Exit> {
        if !self.unflushed {
            return Ok(());
        }
        self.unflushed = false;
        let write = tokio::time::timeout(WRITE_TIMEOUT, self.sink.flush());
        Self::stalled_unless(write, &self.overflow, self.peer).await?;
        self.shared.counters.queued_bytes.sub(self.unflushed_bytes);
        self.unflushed_bytes = 0;
        Ok(())
    }

    /// Waits for a write unless it fails, takes longer than
    /// [`WRITE_TIMEOUT`], or the live queue overflows meanwhile: a client
    /// that stopped reading is dropped as soon as its queue is full, not
    /// after the timeout.
    async fn stalled_unless<W>(write: W, overflow: &Overflow, peer: SocketAddr) -> Result<(), Exit>
    where
        W: std::future::Future<Output = Result<Result<(), WsError>, tokio::time::error::Elapsed>>,
    {
        tokio::select! {
            written = write => match written {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(Exit::Abandon),
                Err(_) => {
                    tracing::info!(%peer, "dropping a connection whose writes stalled for {} s", WRITE_TIMEOUT.as_secs());
                    Err(Exit::Abandon)
                }
            },
            // Only an overflow notifies, and it sets the flag first.
            _ = overflow.notify.notified() => {
                tracing::info!(%peer, "dropping a connection that stopped reading its live events");
                Err(Exit::Abandon)
            }
        }
    }

    async fn drain_ready(
        &mut self,
        replies: &mut mpsc::Receiver<Reply>,
        deliveries: &mut Deliveries,
    ) -> Result<(), Exit> {
        for _ in 0..DRAIN_BATCH {
            match replies.try_recv() {
                Ok(reply) => self.on_reply(reply).await?,
                Err(_) => break,
            }
        }
        for _ in 0..DRAIN_BATCH {
            match deliveries.try_recv() {
                Some(delivery) => self.on_delivery(delivery).await?,
                None => break,
            }
        }
        Ok(())
    }

    async fn send_text(&mut self, text: String) -> Result<(), Exit> {
        self.send(Message::text(text)).await
    }

    async fn on_frame(&mut self, frame: Option<Result<Message, WsError>>) -> Result<(), Exit> {
        if let Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) = &frame {
            self.tally.bytes_in += message.len() as u64;
        }
        match frame {
            None => Err(Exit::Quietly),
            Some(Ok(Message::Text(text))) => self.on_text(text.as_str()).await,
            Some(Ok(Message::Binary(_))) => {
                let notice =
                    message::notice("invalid: binary messages are not supported; send JSON text");
                self.send_text(notice).await
            }
            // tungstenite answers pings itself; pongs are handled by the caller.
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(()),
            Some(Ok(Message::Close(_))) => {
                // Flush the close reply tungstenite queued.
                let _ = tokio::time::timeout(WRITE_TIMEOUT, self.sink.flush()).await;
                Err(Exit::Quietly)
            }
            Some(Err(WsError::Utf8(_))) => Err(Exit::Close(
                CloseCode::Invalid,
                "invalid UTF-8 in a text frame",
            )),
            Some(Err(WsError::Capacity(_))) => Err(Exit::Close(CloseCode::Size, "message too big")),
            Some(Err(
                WsError::Io(_)
                | WsError::ConnectionClosed
                | WsError::AlreadyClosed
                | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake),
            )) => Err(Exit::Gone),
            Some(Err(error)) => {
                tracing::debug!(peer = %self.peer, %error, "websocket read error");
                Err(Exit::Close(CloseCode::Protocol, "protocol error"))
            }
        }
    }

    async fn on_text(&mut self, text: &str) -> Result<(), Exit> {
        let parsed = ClientMessage::parse(text);
        crate::metrics::global().message(crate::metrics::Verb::of(&parsed));
        match parsed {
            Ok(ClientMessage::Event(event)) => self.on_event(*event).await,
            Ok(ClientMessage::Auth(event)) => self.on_auth(*event).await,
            Ok(ClientMessage::Req { sub_id, filters }) => self.on_req(sub_id, filters).await,
            Ok(ClientMessage::Count {
                sub_id,
                filters,
                hll_offset,
            }) => self.on_count(sub_id, filters, hll_offset).await,
            Ok(ClientMessage::Close { sub_id }) => {
                self.close_subscription(&sub_id);
                Ok(())
            }
            Ok(ClientMessage::NegOpen {
                sub_id,
                filter,
                message,
            }) => self.on_neg_open(sub_id, *filter, message).await,
            Ok(ClientMessage::NegMsg { sub_id, message }) => self.on_neg_msg(sub_id, message).await,
            Ok(ClientMessage::NegClose { sub_id }) => {
                self.neg_sessions.remove(&sub_id);
                Ok(())
            }
            Err(rejection) => {
                if let Rejection::Ok { reason, .. } = &rejection {
                    self.shared.monitor.event_answered(false, reason);
                }
                // NIP-01: CLOSED means the subscription "was ended on the server
                // side", so a refused REQ also ends an open one with that id.
                if let Rejection::Closed { sub_id, .. } = &rejection {
                    self.close_subscription(sub_id);
                }
                // NIP-77: after a NEG-ERR the session is closed.
                if let Rejection::NegErr { sub_id, .. } = &rejection {
                    self.neg_sessions.remove(sub_id);
                }
                self.send_text(rejection.to_frame()).await
            }
        }
    }

    /// Runs the EVENT pipeline on its own task so that a slow commit does not
    /// stop this connection from reading; at most `max_events_in_flight` at once.
    async fn on_event(&mut self, event: crate::nostr::Event) -> Result<(), Exit> {
        self.tally.events += 1;
        // NIP-62 requests are honoured "regardless of the user's status".
        if self.live.config.auth.required_for_write
            && self.authenticated.is_empty()
            && event.kind != crate::nostr::kind::REQUEST_TO_VANISH
        {
            let reason = "auth-required: this relay accepts events only from authenticated clients";
            self.shared.monitor.event_answered(false, reason);
            return self
                .send_text(message::ok(&event.id_hex(), false, reason))
                .await;
        }
        let Ok(permit) = self.events_in_flight.clone().acquire_owned().await else {
            return Err(Exit::Quietly);
        };
        let shared = self.shared.clone();
        let replies = self.replies.clone();
        let done = self.done.clone();
        let in_flight = self.shared.counters.events_in_flight.hold();
        let accepted = self.tally.accepted.clone();
        let author = self
            .authenticated
            .contains(&event.pubkey)
            .then_some(&event.pubkey);
        if let Err(reason) = self.shared.rate_limits.allow_event(self.address, author) {
            self.shared.monitor.event_answered(false, &reason);
            self.count_refusal()?;
            return self
                .send_text(message::ok(&event.id_hex(), false, &reason))
                .await;
        }
        let origin = Origin {
            address: Some(self.address),
            authenticated: self.authenticated.clone(),
            relay_url: self.relay_url.clone(),
        };
        self.events_pending += 1;
        tokio::spawn(async move {
            let _in_flight = in_flight;
            let id = event.id_hex();
            let verdict = shared.ingester.ingest(event, &origin).await;
            drop(permit);
            shared
                .monitor
                .event_answered(verdict.accepted, &verdict.reason);
            if verdict.accepted {
                accepted.fetch_add(1, Ordering::Relaxed);
            }
            let _ = replies
                .send(Reply::Frame(message::ok(
                    &id,
                    verdict.accepted,
                    &verdict.reason,
                )))
                .await;
            drop(done);
        });
        Ok(())
    }

    /// Counts a rate-limit refusal; a client that keeps going after many
    /// in one minute is closed (it is never banned: it may reconnect).
    fn count_refusal(&mut self) -> Result<(), Exit> {
        let now = tokio::time::Instant::now();
        let (count, since) = &mut self.refusals;
        if now.duration_since(*since) > Duration::from_secs(60) {
            *count = 0;
            *since = now;
        }
        *count += 1;
        if *count > self.shared.rate_limits.max_refusals_per_minute() {
            tracing::info!(peer = %self.peer, address = %self.address, "closing a connection that kept going past its rate limits");
            return Err(Exit::Close(
                CloseCode::Policy,
                "rate limits exceeded repeatedly",
            ));
        }
        Ok(())
    }

    /// Subscriptions whose stored events are still being read, negentropy
    /// sessions whose records are, and COUNTs not yet answered.
    fn queries_running(&self) -> usize {
        self.subscriptions
            .values()
            .filter(|s| matches!(s.phase, Phase::Loading { .. }))
            .count()
            + self
                .neg_sessions
                .values()
                .filter(|s| matches!(s.phase, NegPhase::Loading { .. }))
                .count()
            + self.counts.len()
    }

    /// The per-connection cap on running queries (`usize::MAX`: none).
    fn max_queries(&self) -> usize {
        match self.shared.rate_limits.max_concurrent_queries() {
            0 => usize::MAX,
            n => n,
        }
    }

    /// NIP-42: a signed answer to this connection's challenge adds its
    /// pubkey to the ones this connection speaks for.
    async fn on_auth(&mut self, event: crate::nostr::Event) -> Result<(), Exit> {
        let id = event.id_hex();
        // Each AUTH costs a signature check: it counts as an EVENT.
        if let Err(reason) = self.shared.rate_limits.allow_event(self.address, None) {
            self.count_refusal()?;
            return self.send_text(message::ok(&id, false, &reason)).await;
        }
        let proven = match &self.challenge {
            None => Err("invalid: this relay does not use NIP-42 AUTH".to_owned()),
            Some(challenge) => auth::verify(&event, challenge, &self.relay_url, unix_now()),
        };
        let proven = proven.and_then(|pubkey| {
            if self.authenticated.contains(&pubkey) || self.authenticated.len() < MAX_AUTHENTICATED
            {
                Ok(pubkey)
            } else {
                Err(format!(
                    "blocked: at most {MAX_AUTHENTICATED} pubkeys may authenticate on one connection"
                ))
            }
        });
        match proven {
            Ok(pubkey) => {
                if !self.authenticated.contains(&pubkey) {
                    self.authenticated.push(pubkey);
                    self.readers =
                        Readers::new(&self.live.config.auth.private_kinds, &self.authenticated);
                }
                self.send_text(message::ok(&id, true, "")).await
            }
            Err(reason) => self.send_text(message::ok(&id, false, &reason)).await,
        }
    }

    async fn on_req(&mut self, sub_id: String, filters: Vec<Filter>) -> Result<(), Exit> {
        self.tally.reqs += 1;
        let limits = &self.live.config.limits;
        let refusal = if sub_id.is_empty() {
            Some("invalid: subscription id must not be empty".to_owned())
        } else if sub_id.chars().count() > limits.max_subid_length {
            Some(format!(
                "invalid: subscription id is longer than {} characters",
                limits.max_subid_length
            ))
        } else if filters.len() > limits.max_filters {
            Some(format!(
                "blocked: too many filters in one REQ (max {})",
                limits.max_filters
            ))
        } else if let Some(reason) = search_refusal(&filters, "REQ", &self.shared.config) {
            Some(reason)
        } else if !self.subscriptions.contains_key(&sub_id)
            && self.subscriptions.len() >= limits.max_subscriptions
        {
            Some(format!(
                "blocked: too many subscriptions (max {})",
                limits.max_subscriptions
            ))
        } else {
            self.read_refusal(&filters)?
        };
        // A REQ with an id already open replaces that subscription; a refused
        // one ends it (CLOSED says the subscription is over).
        self.close_subscription(&sub_id);
        if let Some(reason) = refusal {
            return self.send_text(message::closed(&sub_id, &reason)).await;
        }
        let filters: Arc<[Filter]> = filters.into();
        let key = self
            .shared
            .fanout
            .subscribe(self.mailbox.clone(), filters.clone());
        self.next_generation += 1;
        let generation = self.next_generation;
        let query_limits = self.live.query_limits;
        let needs_query = filters
            .iter()
            .any(|f| query_limits.effective(f) > 0 && !f.is_unsatisfiable());
        let quoted_id = quote(&sub_id);
        self.names.insert(key, sub_id.clone());
        let phase = if needs_query {
            Phase::Loading {
                buffer: Vec::new(),
                query: self.spawn_query(sub_id.clone(), generation, filters),
            }
        } else {
            Phase::Live {
                snapshot: 0,
                sent: None,
            }
        };
        let eose = (!needs_query).then(|| message::eose(&quoted_id));
        self.subscriptions.insert(
            sub_id,
            Subscription {
                key,
                quoted_id,
                generation,
                phase,
            },
        );
        match eose {
            Some(eose) => self.send_text(eose).await,
            None => Ok(()),
        }
    }

    /// Runs a REQ's query on its own task; its result comes back as a
    /// [`Reply::Stored`]. Aborted through the handle if the subscription ends.
    fn spawn_query(&self, sub_id: String, generation: u64, filters: Arc<[Filter]>) -> AbortHandle {
        let store = self.shared.store.clone();
        let replies = self.replies.clone();
        let query_limits = self.live.query_limits;
        let readers = self.readers.clone();
        let in_flight = self.shared.counters.queries_in_flight.hold();
        tokio::spawn(async move {
            let _in_flight = in_flight;
            let result = store.query(filters, readers, query_limits).await;
            let reply = StoredReply {
                sub_id,
                generation,
                result,
            };
            let _ = replies.send(Reply::Stored(Box::new(reply))).await;
        })
        .abort_handle()
    }

    /// NIP-45: counts in the database what a REQ with these filters would
    /// return to this connection without limits, under the same rules as a
    /// REQ (query cost, rate limits, concurrent queries, authentication,
    /// private kinds, time budget); every refusal is a CLOSED.
    async fn on_count(
        &mut self,
        sub_id: String,
        filters: Vec<Filter>,
        hll_offset: Option<u8>,
    ) -> Result<(), Exit> {
        let limits = &self.live.config.limits;
        let refusal = if sub_id.is_empty() {
            Some("invalid: query id must not be empty".to_owned())
        } else if sub_id.chars().count() > limits.max_subid_length {
            Some(format!(
                "invalid: query id is longer than {} characters",
                limits.max_subid_length
            ))
        } else if filters.len() > limits.max_filters {
            Some(format!(
                "blocked: too many filters in one COUNT (max {})",
                limits.max_filters
            ))
        } else if self.counts.len() >= limits.max_subscriptions {
            // A memory bound, kept even without rate limits: each running
            // COUNT holds a task and a slot of the reply queue.
            Some(format!(
                "blocked: too many COUNTs running at once (max {})",
                limits.max_subscriptions
            ))
        } else if let Some(reason) = search_refusal(&filters, "COUNT", &self.shared.config) {
            Some(reason)
        } else {
            self.read_refusal(&filters)?
        };
        if let Some(reason) = refusal {
            // As for any CLOSED: a subscription with this id is over too.
            self.close_subscription(&sub_id);
            return self.send_text(message::closed(&sub_id, &reason)).await;
        }
        self.next_generation += 1;
        let number = self.next_generation;
        let store = self.shared.store.clone();
        let replies = self.replies.clone();
        let readers = self.readers.clone();
        let in_flight = self.shared.counters.queries_in_flight.hold();
        let id = sub_id.clone();
        let task = tokio::spawn(async move {
            let _in_flight = in_flight;
            let result = store.count(filters.into(), readers, hll_offset).await;
            let reply = CountReply {
                sub_id,
                number,
                result,
            };
            let _ = replies.send(Reply::Counted(Box::new(reply))).await;
        });
        self.counts.push((number, id, task.abort_handle()));
        Ok(())
    }

    /// The refusals a REQ, COUNT and NEG-OPEN share, in one order: query
    /// cost, the REQ rate, running queries, `auth.required_for_read`, and a
    /// read of only private kinds by a connection that has not authenticated.
    /// `Err` when the client has kept going past its rate limits.
    fn read_refusal(&mut self, filters: &[Filter]) -> Result<Option<String>, Exit> {
        let limits = &self.live.config.limits;
        let refusal = if let Some(reason) = query_cost_refusal(filters, limits) {
            Some(reason)
        } else if let Err(reason) = self.shared.rate_limits.allow_req(self.address) {
            self.count_refusal()?;
            Some(reason)
        } else if self.queries_running() >= self.max_queries() {
            self.count_refusal()?;
            Some(format!(
                "rate-limited: at most {} queries may run at once on one connection; wait for one to finish",
                self.max_queries()
            ))
        } else if self.live.config.auth.required_for_read && self.authenticated.is_empty() {
            Some("auth-required: this relay serves only authenticated clients".to_owned())
        } else if filters.iter().all(|f| self.readers.needs_auth_for(f)) {
            Some(if self.challenge.is_some() {
                "auth-required: these kinds are served only to their author or recipients; authenticate first"
                    .to_owned()
            } else {
                "restricted: these kinds are served only to their authenticated author or recipients, and this relay does not offer AUTH"
                    .to_owned()
            })
        } else {
            None
        };
        Ok(refusal)
    }

    /// Sends a COUNT's answer, or CLOSED if the count failed.
    async fn on_counted(&mut self, reply: CountReply) -> Result<(), Exit> {
        let CountReply {
            sub_id,
            number,
            result,
        } = reply;
        self.counts.retain(|(n, _, _)| *n != number);
        match result {
            Ok(counted) => {
                let hll = counted.hll.as_ref().map(|r| r.to_hex());
                let frame = message::count_frame(&quote(&sub_id), counted.count, hll.as_deref());
                self.send_text(frame).await
            }
            Err(error) => {
                if error == StoreError::Timeout {
                    tracing::debug!(peer = %self.peer, %error, "count failed");
                } else {
                    tracing::warn!(peer = %self.peer, %error, "count failed");
                }
                self.close_subscription(&sub_id);
                self.send_text(message::closed(&sub_id, &format!("error: {error}")))
                    .await
            }
        }
    }

    async fn on_reply(&mut self, reply: Reply) -> Result<(), Exit> {
        match reply {
            Reply::Frame(frame) => {
                self.events_pending = self.events_pending.saturating_sub(1);
                self.send_text(frame).await
            }
            Reply::Counted(counted) => self.on_counted(*counted).await,
            Reply::Stored(stored) => {
                let StoredReply {
                    sub_id,
                    generation,
                    result,
                } = *stored;
                self.on_stored(sub_id, generation, result).await
            }
            Reply::Neg(reply) => self.on_neg_ready(*reply).await,
        }
    }

    /// Sends a REQ's stored events, EOSE, then what arrived live meanwhile.
    async fn on_stored(
        &mut self,
        sub_id: String,
        generation: u64,
        result: Result<QueryResult, StoreError>,
    ) -> Result<(), Exit> {
        let Some(subscription) = self
            .subscriptions
            .get_mut(&sub_id)
            .filter(|s| s.generation == generation)
        else {
            return Ok(()); // closed or replaced meanwhile
        };
        let result = match result {
            Ok(result) => result,
            Err(error) => {
                tracing::warn!(peer = %self.peer, %error, "query failed");
                self.close_subscription(&sub_id);
                return self
                    .send_text(message::closed(&sub_id, &format!("error: {error}")))
                    .await;
            }
        };
        let snapshot = result.snapshot;
        let sent = SentIds::new(result.sent_ids);
        let buffered = match std::mem::replace(
            &mut subscription.phase,
            Phase::Live {
                snapshot,
                sent: None,
            },
        ) {
            Phase::Loading { buffer, .. } => buffer,
            Phase::Live { .. } => Vec::new(),
        };
        let buffered: Vec<Delivery> = match &sent {
            Some(sent) => buffered
                .into_iter()
                .filter(|d| !sent.holds(&d.event.event.id))
                .collect(),
            None => buffered,
        };
        subscription.phase = Phase::Live { snapshot, sent };
        let quoted_id = subscription.quoted_id.clone();
        for json in &result.events {
            self.send_text(message::event_frame(&quoted_id, json))
                .await?;
        }
        self.send_text(message::eose(&quoted_id)).await?;
        for delivery in buffered.iter().filter(|d| is_after(d, snapshot)) {
            self.send_text(message::event_frame(&quoted_id, &delivery.event.json))
                .await?;
        }
        Ok(())
    }

    async fn on_delivery(&mut self, delivery: Delivery) -> Result<(), Exit> {
        let Some(name) = self.names.get(&delivery.key) else {
            return Ok(()); // closed since the event was published
        };
        let Some(subscription) = self.subscriptions.get_mut(name) else {
            return Ok(());
        };
        if !self.readers.may_read(&delivery.event.event) {
            return Ok(()); // a private kind this connection may not see
        }
        match &mut subscription.phase {
            Phase::Loading { buffer, .. } => {
                if buffer.len() >= self.live.config.network.send_queue_events {
                    let name = name.clone();
                    self.close_subscription(&name);
                    let reason = "error: too many live events arrived while loading stored ones; subscribe again";
                    return self.send_text(message::closed(&name, reason)).await;
                }
                buffer.push(delivery);
                Ok(())
            }
            Phase::Live { snapshot, sent } => {
                if !is_after(&delivery, *snapshot) {
                    return Ok(());
                }
                if let Some(ids) = sent {
                    if ids.until <= Instant::now() {
                        *sent = None;
                    } else if ids.holds(&delivery.event.event.id) {
                        return Ok(());
                    }
                }
                let frame = message::event_frame(&subscription.quoted_id, &delivery.event.json);
                self.send_text(frame).await
            }
        }
    }

    /// A live queue overflowed: this client reads slower than events arrive.
    async fn on_overflow(&mut self) -> Result<(), Exit> {
        if !self.overflow.happened.load(Ordering::Relaxed) {
            return Ok(());
        }
        tracing::info!(peer = %self.peer, "dropping a connection too slow to keep up with its live events");
        let notice = message::notice(
            "error: this connection is too slow to keep up with its subscriptions; closing",
        );
        let _ = self.send_text(notice).await;
        Err(Exit::Close(CloseCode::Policy, "too slow"))
    }

    /// The relay ended some of this connection's subscriptions
    /// (`Fanout::interrupt_all`: they may have missed live events): each
    /// gets `CLOSED` with the reason, so that its client subscribes again.
    async fn on_interrupted(&mut self, interruptions: &Interruptions) -> Result<(), Exit> {
        for (key, reason) in interruptions.take() {
            // A key no longer named was closed or replaced meanwhile.
            let Some(sub_id) = self.names.get(&key).cloned() else {
                continue;
            };
            self.close_subscription(&sub_id);
            self.send_text(message::closed(&sub_id, &reason)).await?;
        }
        Ok(())
    }

    fn close_subscription(&mut self, sub_id: &str) {
        if let Some(subscription) = self.subscriptions.remove(sub_id) {
            self.shared.fanout.unsubscribe(subscription.key);
            self.names.remove(&subscription.key);
        }
    }

    fn unsubscribe_all(&mut self) {
        for (_, subscription) in self.subscriptions.drain() {
            self.shared.fanout.unsubscribe(subscription.key);
        }
        self.names.clear();
    }
}

/// The connection's side of a reload (SIGHUP) and of a drain (SIGTERM).
impl Session {
    /// Takes the settings of the last reload, if there was one since the
    /// previous turn; a new `auth.private_kinds` changes what this
    /// connection may read at once.
    fn refresh_live(&mut self) {
        let current = self.shared.live.load();
        if Arc::ptr_eq(&current, &self.live) {
            return;
        }
        let current = arc_swap::Guard::into_inner(current);
        if current.config.auth.private_kinds != self.live.config.auth.private_kinds {
            self.readers = Readers::new(&current.config.auth.private_kinds, &self.authenticated);
        }
        self.live = current;
    }

    /// The relay is stopping. Within `network.shutdown_timeout_seconds`
    /// (past it the connection is dropped): the messages the client sent
    /// before the stop, already in the socket's buffer, are handled, so
    /// that an EVENT among them is answered too; every subscription and
    /// running COUNT ends with `CLOSED "error: shutting down"`, every
    /// NIP-77 session with `NEG-ERR`; the `OK`s of the EVENTs still being
    /// checked or committed are sent; then the close frame, 1001.
    async fn drain(&mut self, stream: &mut Source, replies: &mut mpsc::Receiver<Reply>) -> Exit {
        let grace = Duration::from_secs(self.live.config.network.shutdown_timeout_seconds);
        match tokio::time::timeout(grace, self.drain_within(stream, replies)).await {
            Ok(Ok(())) => Exit::Close(CloseCode::Away, "relay shutting down"),
            Ok(Err(exit)) => exit,
            Err(_) => Exit::Abandon,
        }
    }

    async fn drain_within(
        &mut self,
        stream: &mut Source,
        replies: &mut mpsc::Receiver<Reply>,
    ) -> Result<(), Exit> {
        // Only what is already there: never waits for the client.
        while let Some(frame) = stream.next().now_or_never() {
            self.on_frame(frame).await?;
        }
        const SHUTTING_DOWN: &str = "error: shutting down";
        let ids: Vec<String> = self.subscriptions.keys().cloned().collect();
        for id in ids {
            self.close_subscription(&id);
            self.send_text(message::closed(&id, SHUTTING_DOWN)).await?;
        }
        for (_, id, count) in std::mem::take(&mut self.counts) {
            count.abort();
            self.send_text(message::closed(&id, SHUTTING_DOWN)).await?;
        }
        let negs: Vec<String> = self.neg_sessions.drain().map(|(id, _)| id).collect();
        for id in negs {
            let reason = "closed: the relay is shutting down";
            self.send_text(message::neg_err(&id, reason, None)).await?;
        }
        self.flush().await?;
        while self.events_pending > 0 {
            match replies.recv().await {
                Some(ok @ Reply::Frame(_)) => {
                    self.on_reply(ok).await?;
                    self.flush().await?;
                }
                // The answer of a query ended above.
                Some(_) => {}
                None => break,
            }
        }
        Ok(())
    }
}

/// NIP-77 negentropy: NEG-OPEN is read like a REQ without a limit (the same
/// checks, in the same order), its records are read on a reader thread, and
/// the session, kept here, then answers each NEG-MSG on a blocking thread
/// until NEG-CLOSE, a NEG-ERR, or `negentropy.idle_seconds` without a NEG-MSG.
impl Session {
    async fn on_neg_open(
        &mut self,
        sub_id: String,
        filter: Filter,
        initial: Vec<u8>,
    ) -> Result<(), Exit> {
        // NIP-77: "If a NEG-OPEN is issued for a currently open subscription
        // ID, the existing subscription is first closed."
        self.neg_sessions.remove(&sub_id);
        let live = self.live.clone();
        let config = &live.config;
        let limits = &config.limits;
        let neg = &config.negentropy;
        let refusal = if !neg.enabled {
            Some("blocked: negentropy (NIP-77) is disabled on this relay".to_owned())
        } else if sub_id.is_empty() {
            Some("invalid: subscription id must not be empty".to_owned())
        } else if sub_id.chars().count() > limits.max_subid_length {
            Some(format!(
                "invalid: subscription id is longer than {} characters",
                limits.max_subid_length
            ))
        } else if let Some(reason) =
            search_refusal(std::slice::from_ref(&filter), "NEG-OPEN", config)
        {
            Some(reason)
        } else if filter.search.is_some() {
            // A NIP-50 search is ranked and limited, not a set to reconcile.
            Some("unsupported: a search (NIP-50) filter cannot be synced with NIP-77".to_owned())
        } else if self.neg_sessions.len() >= neg.max_sessions {
            Some(format!(
                "blocked: too many negentropy sessions on one connection (max {})",
                neg.max_sessions
            ))
        } else {
            self.read_refusal(std::slice::from_ref(&filter))?
        };
        if let Some(reason) = refusal {
            return self
                .send_text(message::neg_err(&sub_id, &reason, None))
                .await;
        }
        self.next_generation += 1;
        let generation = self.next_generation;
        let task = self.spawn_neg_open(sub_id.clone(), generation, filter, initial);
        self.neg_sessions.insert(
            sub_id,
            NegSession {
                generation,
                phase: NegPhase::Loading { task },
            },
        );
        Ok(())
    }

    /// Reads a NEG-OPEN's records and answers its initial message on a
    /// task of its own; the outcome comes back as a [`Reply::Neg`].
    fn spawn_neg_open(
        &self,
        sub_id: String,
        generation: u64,
        filter: Filter,
        initial: Vec<u8>,
    ) -> AbortHandle {
        let store = self.shared.store.clone();
        let replies = self.replies.clone();
        let readers = self.readers.clone();
        let max_records = self.live.config.negentropy.max_records;
        let frame_size_limit = self.live.config.negentropy.frame_size_limit;
        let in_flight = self.shared.counters.queries_in_flight.hold();
        tokio::spawn(async move {
            let _in_flight = in_flight;
            let outcome = match store.negentropy_items(filter, readers, max_records).await {
                Ok(NegItems::TooMany) => NegOutcome::Refused {
                    reason: format!("blocked: this query is too big (max {max_records} records)"),
                    max_records: Some(max_records),
                },
                // Sorting up to max_records records is CPU work: not on
                // the threads that serve connections.
                Ok(NegItems::Found(items)) => tokio::task::spawn_blocking(move || {
                    open_neg_session(items, frame_size_limit, &initial)
                })
                .await
                .unwrap_or_else(|_| NegOutcome::Refused {
                    reason: "error: the negentropy session could not be opened".into(),
                    max_records: None,
                }),
                Err(error) => NegOutcome::Refused {
                    reason: format!("error: {error}"),
                    max_records: None,
                },
            };
            let reply = NegReply {
                sub_id,
                generation,
                outcome,
            };
            let _ = replies.send(Reply::Neg(Box::new(reply))).await;
        })
        .abort_handle()
    }

    async fn on_neg_ready(&mut self, reply: NegReply) -> Result<(), Exit> {
        let NegReply {
            sub_id,
            generation,
            outcome,
        } = reply;
        let Some(session) = self
            .neg_sessions
            .get_mut(&sub_id)
            .filter(|s| s.generation == generation)
        else {
            return Ok(()); // closed or replaced meanwhile
        };
        match outcome {
            NegOutcome::Ready { negentropy, answer } => {
                session.phase = NegPhase::Open {
                    negentropy,
                    last_active: tokio::time::Instant::now(),
                };
                self.send_text(message::neg_msg(&sub_id, &answer)).await
            }
            NegOutcome::Refused {
                reason,
                max_records,
            } => {
                if reason.starts_with("error:") {
                    tracing::warn!(peer = %self.peer, %reason, "negentropy session failed");
                }
                self.neg_sessions.remove(&sub_id);
                self.send_text(message::neg_err(&sub_id, &reason, max_records))
                    .await
            }
        }
    }

    async fn on_neg_msg(&mut self, sub_id: String, payload: Vec<u8>) -> Result<(), Exit> {
        let Some(session) = self.neg_sessions.get_mut(&sub_id) else {
            let reason = "closed: no negentropy session is open with this id";
            return self
                .send_text(message::neg_err(&sub_id, reason, None))
                .await;
        };
        let generation = session.generation;
        match std::mem::replace(&mut session.phase, NegPhase::Answering) {
            NegPhase::Open { negentropy, .. } => {
                self.spawn_neg_answer(sub_id, generation, negentropy, payload);
                Ok(())
            }
            waiting => {
                // The client spoke out of turn: the relay's answer is due.
                session.phase = waiting;
                self.neg_sessions.remove(&sub_id);
                let reason = "invalid: NEG-MSG sent before the relay answered the previous message";
                self.send_text(message::neg_err(&sub_id, reason, None))
                    .await
            }
        }
    }

    /// Answers a NEG-MSG on a blocking thread; the session comes back as a
    /// [`Reply::Neg`] (a stale one, for a session closed meanwhile, is
    /// dropped by its generation).
    fn spawn_neg_answer(
        &self,
        sub_id: String,
        generation: u64,
        mut negentropy: Box<Reconciler>,
        payload: Vec<u8>,
    ) {
        let replies = self.replies.clone();
        tokio::spawn(async move {
            let outcome =
                tokio::task::spawn_blocking(move || match reconcile(&mut negentropy, &payload) {
                    Ok(answer) => NegOutcome::Ready { negentropy, answer },
                    Err(reason) => NegOutcome::Refused {
                        reason,
                        max_records: None,
                    },
                })
                .await
                .unwrap_or_else(|_| NegOutcome::Refused {
                    reason: "error: the negentropy message could not be processed".into(),
                    max_records: None,
                });
            let reply = NegReply {
                sub_id,
                generation,
                outcome,
            };
            let _ = replies.send(Reply::Neg(Box::new(reply))).await;
        });
    }

    /// When the next open session falls idle, if any is open.
    fn neg_idle_deadline(&self) -> Option<tokio::time::Instant> {
        let idle = Duration::from_secs(self.live.config.negentropy.idle_seconds);
        self.neg_sessions
            .values()
            .filter_map(|s| match &s.phase {
                NegPhase::Open { last_active, .. } => Some(*last_active + idle),
                NegPhase::Loading { .. } | NegPhase::Answering => None,
            })
            .min()
    }

    /// Closes the sessions without a NEG-MSG for `negentropy.idle_seconds`.
    async fn close_idle_neg_sessions(&mut self) -> Result<(), Exit> {
        let seconds = self.live.config.negentropy.idle_seconds;
        let now = tokio::time::Instant::now();
        let idle: Vec<String> = self
            .neg_sessions
            .iter()
            .filter(|(_, s)| match &s.phase {
                NegPhase::Open { last_active, .. } => {
                    *last_active + Duration::from_secs(seconds) <= now
                }
                NegPhase::Loading { .. } | NegPhase::Answering => false,
            })
            .map(|(id, _)| id.clone())
            .collect();
        for sub_id in idle {
            self.neg_sessions.remove(&sub_id);
            let reason = format!("closed: no NEG-MSG for {seconds} seconds");
            self.send_text(message::neg_err(&sub_id, &reason, None))
                .await?;
        }
        Ok(())
    }
}

/// Builds a session's storage from its records and answers the initial
/// message. Runs on a blocking thread (the sort is O(n log n)).
fn open_neg_session(
    items: Vec<(u64, [u8; 32])>,
    frame_size_limit: u64,
    initial: &[u8],
) -> NegOutcome {
    let failed = |error: negentropy::Error| NegOutcome::Refused {
        reason: format!("error: negentropy: {error}"),
        max_records: None,
    };
    let mut storage = NegentropyStorageVector::with_capacity(items.len());
    for (created_at, id) in items {
        if let Err(error) = storage.insert(created_at, Id::from_byte_array(id)) {
            return failed(error);
        }
    }
    if let Err(error) = storage.seal() {
        return failed(error);
    }
    let mut negentropy = match Negentropy::owned(storage, frame_size_limit) {
        Ok(negentropy) => Box::new(negentropy),
        Err(error) => return failed(error),
    };
    match reconcile(&mut negentropy, initial) {
        Ok(answer) => NegOutcome::Ready { negentropy, answer },
        Err(reason) => NegOutcome::Refused {
            reason,
            max_records: None,
        },
    }
}

/// The relay's answer to one negentropy message. The message comes from
/// the network: a fault in it is the client's (`invalid:`), and should
/// the library ever panic on one, that ends this session, not the task.
fn reconcile(negentropy: &mut Reconciler, query: &[u8]) -> Result<Vec<u8>, String> {
    let run = std::panic::AssertUnwindSafe(|| negentropy.reconcile(query));
    match std::panic::catch_unwind(run) {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(error)) => Err(format!("invalid: not a negentropy V1 message ({error})")),
        Err(_) => Err("error: the negentropy message could not be processed".to_owned()),
    }
}

/// NIP-50 `search` is answered by REQ alone (ranked stored events), and only
/// when `[search] enabled`; COUNT and NEG-OPEN would otherwise ignore it and
/// count or reconcile every event the rest of the filter matches.
fn search_refusal(filters: &[Filter], verb: &str, config: &crate::Config) -> Option<String> {
    if filters.iter().all(|f| f.search.is_none()) {
        None
    } else if verb != "REQ" {
        Some(format!(
            "unsupported: search (NIP-50) is not supported in {verb}"
        ))
    } else if !config.search.enabled {
        Some("unsupported: search (NIP-50) is not enabled on this relay".to_owned())
    } else {
        None
    }
}

/// The bounds on how much one REQ may ask of the database: each list of a
/// filter, and the tag values of all its filters together. Each value is
/// an index range the query reads, so these bound its cost up front (the
/// time budget, `query_timeout_ms`, bounds the rest).
fn query_cost_refusal(filters: &[Filter], limits: &crate::config::Limits) -> Option<String> {
    let max = limits.max_filter_values;
    let mut tag_values = 0;
    for filter in filters {
        let lists = [
            ("ids", filter.ids.as_ref().map_or(0, Vec::len)),
            ("authors", filter.authors.as_ref().map_or(0, Vec::len)),
            ("kinds", filter.kinds.as_ref().map_or(0, Vec::len)),
        ];
        for (name, len) in lists {
            if len > max {
                return Some(format!("blocked: a filter may list at most {max} {name}"));
            }
        }
        for condition in &filter.tags {
            if condition.values.len() > max {
                return Some(format!(
                    "blocked: a filter may list at most {max} #{} values",
                    condition.letter
                ));
            }
            tag_values += condition.values.len();
        }
    }
    (tag_values > limits.max_tag_values).then(|| {
        format!(
            "blocked: a REQ may list at most {} tag values in all",
            limits.max_tag_values
        )
    })
}

/// Whether a live event was committed after the snapshot a query saw.
/// Ephemeral events have no sequence number and are always new.
fn is_after(delivery: &Delivery, snapshot: u64) -> bool {
    delivery.seq.is_none_or(|seq| seq.get() > snapshot)
}

impl Drop for Session {
    /// Also runs if a bug panics this task: no subscription outlives it,
    /// and the bytes it never wrote leave the relay-wide count.
    fn drop(&mut self) {
        self.unsubscribe_all();
        // Counts nobody will read are not run (or stopped).
        for (_, _, count) in self.counts.drain(..) {
            count.abort();
        }
        self.shared.counters.queued_bytes.sub(self.unflushed_bytes);
    }
}
