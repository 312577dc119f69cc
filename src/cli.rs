//! What the programs' command lines share: the keepalive flags of the server and
//! the client.

use crate::transport::{DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_TIMEOUT, Keepalive, Seconds};

/// `--keepalive-interval` and `--keepalive-timeout`, for `#[command(flatten)]`.
#[derive(Debug, Clone, clap::Args)]
pub struct KeepaliveArgs {
    /// Seconds the connection may be silent before this side pings the other
    /// (HTTP/2 keepalive).
    #[arg(long, env = "CHITTYCHAT_KEEPALIVE_INTERVAL", value_name = "SECONDS",
          default_value_t = Seconds(DEFAULT_KEEPALIVE_INTERVAL))]
    pub keepalive_interval: Seconds,
    /// Seconds a ping may go unanswered before the other side counts as gone (the
    /// server then announces the participant as having left; the client
    /// reconnects).
    #[arg(long, env = "CHITTYCHAT_KEEPALIVE_TIMEOUT", value_name = "SECONDS",
          default_value_t = Seconds(DEFAULT_KEEPALIVE_TIMEOUT))]
    pub keepalive_timeout: Seconds,
}

impl KeepaliveArgs {
    /// The settings these flags ask for.
    pub fn keepalive(&self) -> Keepalive {
        Keepalive {
            interval: self.keepalive_interval.0,
            timeout: self.keepalive_timeout.0,
        }
    }
}
