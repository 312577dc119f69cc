//! Connection settings shared by server and client: HTTP/2 keepalive, the request
//! size limit, TLS files and the join secret.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use subtle::ConstantTimeEq;

/// How long a connection may stay silent before its peer is sent an HTTP/2 ping.
///
/// With [`DEFAULT_KEEPALIVE_TIMEOUT`] a peer that vanished without closing TCP
/// (cable pulled, laptop lid shut, packets dropped) is noticed within 20 s, so the
/// others see it leave within half a minute; a ping every 10 s on an idle
/// connection costs a few bytes.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// How long an HTTP/2 ping may go unanswered before the connection counts as dead.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest request, in bytes once encoded, the server decodes.
///
/// The largest valid request is a Publish of 128 characters of at most 4 UTF-8
/// bytes each plus a token and a timestamp, under 600 bytes; 4 KiB leaves room for
/// fields a newer client may add while nobody can make the server buffer megabytes.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 4096;

/// How long a TLS handshake may take before the server drops the connection, so
/// a peer that opens TCP and never speaks holds nothing for long.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The request metadata key under which a client presents the join secret to Join.
pub const JOIN_SECRET_METADATA: &str = "chittychat-join-secret";

/// The response metadata key under which Join returns the session token.
pub const SESSION_TOKEN_METADATA: &str = "chittychat-session-token";

/// The most past events a Join may ask for, and the most one History call returns,
/// so that one request cannot make the server read the whole log at once.
pub const MAX_HISTORY_PAGE: u32 = 1000;

/// The response metadata key under which Join returns the log's epoch (32 hex
/// digits), which a client presents again to resume.
pub const LOG_EPOCH_METADATA: &str = "chittychat-log-epoch";

/// The response metadata key that says whether Join resumed the feed it was asked
/// to resume (`true`), or could not (`false`: see `chittychat-missed`); absent when
/// Join was not asked to resume.
pub const RESUMED_METADATA: &str = "chittychat-resumed";

/// The response metadata key that says how many events a resuming client missed
/// for good: the log no longer holds them. Absent when nothing was missed, and
/// when the count is unknown (the resume point was from another log).
pub const MISSED_METADATA: &str = "chittychat-missed";

/// The response metadata key that says how many past events the feed replays as
/// history before the join notice.
pub const HISTORY_METADATA: &str = "chittychat-history";

/// The status metadata key under which a rate-limited Publish learns how many
/// milliseconds to wait before it is accepted.
pub const RETRY_AFTER_MS_METADATA: &str = "chittychat-retry-after-ms";

/// The status metadata key (value `true`) that marks an `UNAVAILABLE` as the
/// server shutting down, rather than a connection that failed: a client tells the
/// two apart by this, not by the message's wording.
pub const SHUTTING_DOWN_METADATA: &str = "chittychat-shutting-down";

/// HTTP/2 keepalive: how often a silent peer is pinged and how long it has to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Silence before a ping is sent.
    pub interval: Duration,
    /// How long the ping may go unanswered.
    pub timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Self {
            interval: DEFAULT_KEEPALIVE_INTERVAL,
            timeout: DEFAULT_KEEPALIVE_TIMEOUT,
        }
    }
}

impl Keepalive {
    /// The longest a dead peer can go unnoticed: a full interval, then the timeout.
    pub fn detection_bound(&self) -> Duration {
        self.interval + self.timeout
    }
}

/// A server's TLS identity: its certificate chain and private key, in PEM.
#[derive(Clone)]
pub struct TlsIdentity {
    /// The certificate chain, leaf first, in PEM.
    pub cert_pem: Vec<u8>,
    /// The private key, in PEM.
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsIdentity(<certificate and key>)")
    }
}

impl TlsIdentity {
    /// Reads the certificate chain and key from PEM files.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, FileError> {
        Ok(Self {
            cert_pem: read(cert, "TLS certificate")?,
            key_pem: read(key, "TLS key")?,
        })
    }
}

/// The shared secret a server may require of everyone who joins.
///
/// `Debug` hides it, and [`JoinSecret::matches`] compares in constant time, so
/// neither a log nor the server's response time tells it.
#[derive(Clone)]
pub struct JoinSecret(Vec<u8>);

impl fmt::Debug for JoinSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinSecret(<redacted>)")
    }
}

impl JoinSecret {
    /// A secret from its text; surrounding whitespace (a file's final newline) is
    /// dropped. What is left must be printable ASCII, since it travels in request
    /// metadata (an HTTP/2 header).
    pub fn new(text: &str) -> Result<Self, BadJoinSecret> {
        let text = text.trim();
        if text.is_empty() {
            return Err(BadJoinSecret::Empty);
        }
        if !text.bytes().all(|b| (b' '..=b'~').contains(&b)) {
            return Err(BadJoinSecret::NotPrintable);
        }
        Ok(Self(text.as_bytes().to_vec()))
    }

    /// Reads a secret from a file, as [`JoinSecret::new`] does from text.
    pub fn from_file(path: &Path) -> Result<Self, FileError> {
        let bytes = read(path, "join secret")?;
        let failed = |reason: String| FileError {
            what: "join secret",
            path: path.to_owned(),
            reason,
        };
        let text = String::from_utf8(bytes).map_err(|_| failed("it is not UTF-8 text".into()))?;
        Self::new(&text).map_err(|err| failed(err.to_string()))
    }

    /// Whether `presented` is this secret, in time that depends only on the lengths.
    pub fn matches(&self, presented: &[u8]) -> bool {
        bool::from(self.0.as_slice().ct_eq(presented))
    }

    /// The secret's text, to send to the server.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

/// Why a text cannot be a join secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadJoinSecret {
    /// Nothing but whitespace.
    #[error("the join secret is empty")]
    Empty,
    /// It could not travel in an HTTP/2 header.
    #[error("the join secret must be printable ASCII (letters, digits, punctuation, spaces)")]
    NotPrintable,
}

/// A duration written in seconds, whole or fractional ("10", "0.5"), as the command
/// line takes it; at least a millisecond, at most [`LONGEST_SECONDS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub Duration);

/// The longest duration the command line takes, in seconds: a century. Far beyond
/// any timeout or age worth setting, and far enough from the clocks' limits that a
/// deadline made by adding it to the time now cannot overflow (as 10^19 s did,
/// which stopped the server at its first connection).
pub const LONGEST_SECONDS: u64 = 100 * 365 * 24 * 60 * 60;

impl std::str::FromStr for Seconds {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let seconds: f64 = text
            .trim()
            .parse()
            .map_err(|_| format!("\"{text}\" is not a number of seconds"))?;
        match Duration::try_from_secs_f64(seconds) {
            Ok(duration)
                if duration >= Duration::from_millis(1)
                    && duration <= Duration::from_secs(LONGEST_SECONDS) =>
            {
                Ok(Self(duration))
            }
            _ => Err(format!(
                "{text} s is out of range; give from 0.001 to {LONGEST_SECONDS} seconds"
            )),
        }
    }
}

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.as_secs_f64())
    }
}

/// A settings file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot use the {what} file {}: {reason}", .path.display())]
pub struct FileError {
    /// What the file should hold.
    pub what: &'static str,
    /// The file.
    pub path: PathBuf,
    /// Why it cannot be used.
    pub reason: String,
}

/// Reads a whole settings file, with an error that names it.
pub fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, FileError> {
    std::fs::read(path).map_err(|err| FileError {
        what,
        path: path.to_owned(),
        reason: err.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_secret_trims_and_compares_whole() {
        let secret = JoinSecret::new("  open sesame\n").unwrap();
        assert!(secret.matches(b"open sesame"));
        assert!(!secret.matches(b"open sesam"));
        assert!(!secret.matches(b"open sesame!"));
        assert!(!secret.matches(b""));
        assert!(JoinSecret::new(" \n").is_err());
        assert!(JoinSecret::new("caf\u{e9}").is_err());
        assert!(!format!("{secret:?}").contains("sesame"));
    }

    #[test]
    fn seconds_parse_whole_and_fractional() {
        let parse = |text: &str| text.parse::<Seconds>().map(|s| s.0);
        assert_eq!(parse("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("0.25"), Ok(Duration::from_millis(250)));
        assert!(parse("0").is_err());
        assert!(parse("-1").is_err());
        assert!(parse("soon").is_err());
        assert!(parse("inf").is_err());
        assert_eq!(
            parse(&LONGEST_SECONDS.to_string()),
            Ok(Duration::from_secs(LONGEST_SECONDS))
        );
        assert!(parse("1e19").is_err());
        assert_eq!(Seconds(Duration::from_millis(1500)).to_string(), "1.5");
    }

    #[test]
    fn the_default_keepalive_notices_a_dead_peer_within_30_seconds() {
        assert!(Keepalive::default().detection_bound() <= Duration::from_secs(30));
    }
}
