//! What the programs' command lines share: the keepalive flags of the server and
//! the client, and the flags of the client and the bench for a server that serves
//! TLS or requires a join secret.

use crate::transport::{
    DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_TIMEOUT, JoinSecret, Keepalive, Seconds,
};
use anyhow::Context as _;
use std::path::PathBuf;

/// The environment variable that may hold the join secret, instead of
/// `--join-secret-file`.
pub const JOIN_SECRET_ENV: &str = "CHITTYCHAT_JOIN_SECRET";

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

/// `--tls-ca` and `--join-secret-file`, for `#[command(flatten)]`: what a client
/// needs to get into a server that serves TLS or requires a join secret.
#[derive(Debug, Clone, clap::Args)]
pub struct AccessArgs {
    /// For https:// URLs: the certificate authority (PEM) that signed the server's
    /// certificate. Without it, the system's trusted roots are used.
    #[arg(long, env = "CHITTYCHAT_TLS_CA", value_name = "PEM_FILE")]
    pub tls_ca: Option<PathBuf>,
    /// A file holding the server's join secret, for servers that require one. The
    /// secret may instead be given in the environment variable CHITTYCHAT_JOIN_SECRET.
    #[arg(long, env = "CHITTYCHAT_JOIN_SECRET_FILE", value_name = "FILE")]
    pub join_secret_file: Option<PathBuf>,
}

impl AccessArgs {
    /// The certificate authority `--tls-ca` names, read; `None` without the flag.
    pub fn tls_ca(&self) -> anyhow::Result<Option<Vec<u8>>> {
        let read = |path| crate::transport::read(path, "TLS certificate authority");
        Ok(self.tls_ca.as_deref().map(read).transpose()?)
    }

    /// The join secret: from `--join-secret-file`, else from [`JOIN_SECRET_ENV`];
    /// `None` without either.
    pub fn join_secret(&self) -> anyhow::Result<Option<JoinSecret>> {
        if let Some(path) = &self.join_secret_file {
            return Ok(Some(JoinSecret::from_file(path)?));
        }
        match std::env::var(JOIN_SECRET_ENV) {
            Ok(text) => Ok(Some(
                JoinSecret::new(&text).with_context(|| JOIN_SECRET_ENV.to_owned())?,
            )),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                anyhow::bail!("{JOIN_SECRET_ENV} is not valid Unicode")
            }
        }
    }
}
