//! The client side of the admin socket, for `portico ctl` and the drills.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use super::proto::{self, Reply, Request};

/// How long a reply may take (a reload reads a file and binds sockets; a kill waits 2 s).
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest reply line read (a status of hundreds of backends fits many times).
const MAX_REPLY: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("no admin socket at {0} (is portico running? is [admin] socket set to another path? try --config FILE or --socket PATH)")]
    Missing(PathBuf),
    #[error("admin socket {0} refuses connections: portico is not running (a stale socket file)")]
    Refused(PathBuf),
    #[error("admin socket {0}: permission denied (run as the service user or root)")]
    Denied(PathBuf),
    #[error("admin socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("admin socket {0}: the daemon closed the connection without a reply")]
    Closed(PathBuf),
    #[error("admin socket {0}: no reply within {REPLY_TIMEOUT:?}")]
    Timeout(PathBuf),
    #[error("admin socket {path}: unreadable reply: {reason}")]
    BadReply { path: PathBuf, reason: String },
}

/// One connection to the admin socket; requests go one at a time.
pub struct AdminClient {
    path: PathBuf,
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
    line: Vec<u8>,
}

impl AdminClient {
    pub async fn connect(path: &Path) -> Result<AdminClient, ClientError> {
        let s = UnixStream::connect(path)
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => ClientError::Missing(path.to_owned()),
                io::ErrorKind::ConnectionRefused => ClientError::Refused(path.to_owned()),
                io::ErrorKind::PermissionDenied => ClientError::Denied(path.to_owned()),
                _ => ClientError::Io {
                    path: path.to_owned(),
                    source: e,
                },
            })?;
        let (rd, wr) = s.into_split();
        Ok(AdminClient {
            path: path.to_owned(),
            rd: BufReader::new(rd),
            wr,
            line: Vec::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends `req` and reads its reply.
    pub async fn call(&mut self, req: &Request) -> Result<Reply, ClientError> {
        let io = |source| ClientError::Io {
            path: self.path.clone(),
            source,
        };
        self.wr.write_all(&proto::encode(req)).await.map_err(io)?;
        self.line.clear();
        let mut limited = tokio::io::AsyncReadExt::take(&mut self.rd, MAX_REPLY as u64);
        let read = limited.read_until(b'\n', &mut self.line);
        let n = tokio::time::timeout(REPLY_TIMEOUT, read)
            .await
            .map_err(|_| ClientError::Timeout(self.path.clone()))?
            .map_err(|source| ClientError::Io {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            return Err(ClientError::Closed(self.path.clone()));
        }
        serde_json::from_slice(&self.line).map_err(|e| ClientError::BadReply {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }
}

/// Connects, sends one request, returns its reply.
pub async fn request(path: &Path, req: &Request) -> Result<Reply, ClientError> {
    AdminClient::connect(path).await?.call(req).await
}
