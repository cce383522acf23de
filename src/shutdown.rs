//! Graceful shutdown, as in tokio's mini-redis: one [`ShutdownTrigger`] is
//! pulled once, and every task holding a [`Shutdown`] hears it.

use tokio::sync::watch;

/// Pulled once (on SIGINT/SIGTERM, or by a test) to stop the relay.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

/// A task's view of the shutdown: cheap to clone, `recv` waits for it.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A linked trigger and listener.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    /// Tells every [`Shutdown`] to stop.
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    /// Whether shutdown was already requested.
    pub fn is_shutdown(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until shutdown is requested (returns at once if it was). A
    /// dropped trigger counts as a request: nobody is left to stop us.
    pub async fn recv(&mut self) {
        let _ = self.0.wait_for(|stopped| *stopped).await;
    }
}
