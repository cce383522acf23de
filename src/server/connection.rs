//! One WebSocket client: reads its messages, answers them, and forwards the
//! live events its subscriptions match.
//!
//! A REQ is answered without ever missing or repeating an event across EOSE:
//! the subscription is registered in the fan-out first (live events that
//! arrive meanwhile are buffered), then the store is queried; the query
//! reports the newest commit it could see (its snapshot), so after EOSE the
//! buffered and later live events are sent only if committed after it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::AbortHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::Shared;
use crate::fanout::{Deliveries, Delivery, Mailbox, Overflow, SubscriptionKey};
use crate::ingest::Origin;
use crate::nostr::message::{self, quote};
use crate::nostr::{ClientMessage, Filter, Rejection};
use crate::shutdown::Shutdown;
use crate::store::{QueryResult, StoreError};

type Socket = WebSocketStream<TokioIo<Upgraded>>;
type Sink = SplitSink<Socket, Message>;

/// Work finished elsewhere that this connection must answer.
enum Reply {
    /// A ready frame (an `OK`).
    Frame(String),
    /// A REQ's stored events are ready (boxed: the reply queue's slots are
    /// allocated per connection, so every variant is kept pointer-sized).
    Stored(Box<StoredReply>),
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
    /// EOSE sent; live events committed after `snapshot` are forwarded.
    Live { snapshot: u64 },
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
    /// Send this close frame first.
    Close(CloseCode, &'static str),
    /// A write failed or stalled: the socket cannot take even a close
    /// frame, so it is dropped at once.
    Abandon,
}

/// The state of one client connection.
struct Session {
    shared: Arc<Shared>,
    peer: SocketAddr,
    sink: Sink,
    subscriptions: HashMap<String, Subscription>,
    names: HashMap<SubscriptionKey, String>,
    mailbox: Mailbox,
    overflow: Arc<Overflow>,
    replies: mpsc::Sender<Reply>,
    events_in_flight: Arc<Semaphore>,
    next_generation: u64,
    done: mpsc::Sender<()>,
    /// Frames fed to the sink since the last flush.
    unflushed: bool,
    /// Their size, counted in the relay-wide `queued_bytes`.
    unflushed_bytes: usize,
    /// Pubkeys proven on this connection with NIP-42 AUTH.
    authenticated: Vec<[u8; 32]>,
}

/// Serves one upgraded WebSocket until either side closes it or the relay
/// shuts down.
pub async fn serve(
    socket: Socket,
    shared: Arc<Shared>,
    peer: SocketAddr,
    mut shutdown: Shutdown,
    done: mpsc::Sender<()>,
) {
    let (sink, mut stream) = socket.split();
    let network = &shared.config.network;
    let (mailbox, mut deliveries, overflow) = shared.fanout.mailbox(network.send_queue_events);
    let (replies, mut reply_queue) =
        mpsc::channel(network.max_events_in_flight + shared.config.limits.max_subscriptions);
    let ping_period = Duration::from_secs(network.ping_interval_seconds.max(1));
    let mut session = Session {
        events_in_flight: Arc::new(Semaphore::new(network.max_events_in_flight)),
        shared,
        peer,
        sink,
        subscriptions: HashMap::new(),
        names: HashMap::new(),
        mailbox,
        overflow,
        replies,
        next_generation: 0,
        done,
        unflushed: false,
        unflushed_bytes: 0,
        authenticated: Vec::new(),
    };
    let _open = session.shared.counters.websockets.hold();
    tracing::debug!(%peer, "websocket connected");
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_period, ping_period);
    let mut awaiting_pong = false;
    // Handlers are boxed: an idle connection's task then holds only the
    // small futures of this select, not the largest handler's state.
    let exit = loop {
        let step = tokio::select! {
            _ = shutdown.recv() => Err(Exit::Close(CloseCode::Away, "relay shutting down")),
            _ = session.overflow.notify.notified() => Box::pin(session.on_overflow()).await,
            Some(reply) = reply_queue.recv() => Box::pin(session.on_reply(reply)).await,
            Some(delivery) = deliveries.recv() => session.on_delivery(delivery).await,
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
    match exit {
        Exit::Abandon => {}
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
    tracing::debug!(%peer, "websocket closed");
}

/// Longest a write to the socket may stall. A client that stops reading
/// fills its TCP window; without this bound its task (and everything queued
/// for it) would wait forever, even after its live queue overflowed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

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
            Some(Err(error)) => {
                tracing::debug!(peer = %self.peer, %error, "websocket read error");
                Err(Exit::Close(CloseCode::Protocol, "protocol error"))
            }
        }
    }

    async fn on_text(&mut self, text: &str) -> Result<(), Exit> {
        match ClientMessage::parse(text) {
            Ok(ClientMessage::Event(event)) => self.on_event(*event).await,
            Ok(ClientMessage::Req { sub_id, filters }) => self.on_req(sub_id, filters).await,
            Ok(ClientMessage::Close { sub_id }) => {
                self.close_subscription(&sub_id);
                Ok(())
            }
            Err(rejection) => {
                // NIP-01: CLOSED means the subscription "was ended on the server
                // side", so a refused REQ also ends an open one with that id.
                if let Rejection::Closed { sub_id, .. } = &rejection {
                    self.close_subscription(sub_id);
                }
                self.send_text(rejection.to_frame()).await
            }
        }
    }

    /// Runs the EVENT pipeline on its own task so that a slow commit does not
    /// stop this connection from reading; at most `max_events_in_flight` at once.
    async fn on_event(&mut self, event: crate::nostr::Event) -> Result<(), Exit> {
        let Ok(permit) = self.events_in_flight.clone().acquire_owned().await else {
            return Err(Exit::Quietly);
        };
        let shared = self.shared.clone();
        let replies = self.replies.clone();
        let done = self.done.clone();
        let in_flight = self.shared.counters.events_in_flight.hold();
        let origin = Origin {
            address: Some(self.peer.ip()),
            authenticated: self.authenticated.clone(),
        };
        tokio::spawn(async move {
            let _in_flight = in_flight;
            let id = event.id_hex();
            let verdict = shared.ingester.ingest(event, &origin).await;
            drop(permit);
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

    async fn on_req(&mut self, sub_id: String, filters: Vec<Filter>) -> Result<(), Exit> {
        let limits = &self.shared.config.limits;
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
        } else if !self.subscriptions.contains_key(&sub_id)
            && self.subscriptions.len() >= limits.max_subscriptions
        {
            Some(format!(
                "blocked: too many subscriptions (max {})",
                limits.max_subscriptions
            ))
        } else {
            None
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
        let query_limits = self.shared.query_limits;
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
            Phase::Live { snapshot: 0 }
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
        let query_limits = self.shared.query_limits;
        let in_flight = self.shared.counters.queries_in_flight.hold();
        tokio::spawn(async move {
            let _in_flight = in_flight;
            let result = store.query(filters, query_limits).await;
            let reply = StoredReply {
                sub_id,
                generation,
                result,
            };
            let _ = replies.send(Reply::Stored(Box::new(reply))).await;
        })
        .abort_handle()
    }

    async fn on_reply(&mut self, reply: Reply) -> Result<(), Exit> {
        match reply {
            Reply::Frame(frame) => self.send_text(frame).await,
            Reply::Stored(stored) => {
                let StoredReply {
                    sub_id,
                    generation,
                    result,
                } = *stored;
                self.on_stored(sub_id, generation, result).await
            }
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
        let buffered = match std::mem::replace(&mut subscription.phase, Phase::Live { snapshot }) {
            Phase::Loading { buffer, .. } => buffer,
            Phase::Live { .. } => Vec::new(),
        };
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
        match &mut subscription.phase {
            Phase::Loading { buffer, .. } => {
                if buffer.len() >= self.shared.config.network.send_queue_events {
                    let name = name.clone();
                    self.close_subscription(&name);
                    let reason = "error: too many live events arrived while loading stored ones; subscribe again";
                    return self.send_text(message::closed(&name, reason)).await;
                }
                buffer.push(delivery);
                Ok(())
            }
            Phase::Live { snapshot } => {
                if !is_after(&delivery, *snapshot) {
                    return Ok(());
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
        self.shared.counters.queued_bytes.sub(self.unflushed_bytes);
    }
}
