//! The admin socket: binding it safely, reading request lines, dispatching them.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use super::proto::{self, AdminResult, ErrorReply, ReloadResult, Reply, Request, MAX_LINE};
use crate::controller::ControlError;
use crate::daemon::Node;
use crate::snapshot::AdminState;

/// Admin connections served at once; `ctl watch` holds one, an operator rarely more.
const MAX_CLIENTS: usize = 32;
/// How long `disable --kill` waits for the killed relays to end before replying.
const KILL_SETTLE: Duration = Duration::from_secs(2);

/// Why the admin socket cannot be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    #[error("admin socket {path}: directory {dir} does not exist (create it, mode 0700, owned by the service user)")]
    NoDir { path: PathBuf, dir: PathBuf },
    #[error("admin socket {path}: directory {dir} is world-writable (mode {mode:04o}); anyone could replace the socket: use a directory only the service user can write")]
    WorldWritable {
        path: PathBuf,
        dir: PathBuf,
        mode: u32,
    },
    #[error("admin socket {path}: another process is listening on it (a second portico?)")]
    InUse { path: PathBuf },
    #[error("admin socket {path}: exists and is not a socket; refusing to remove it")]
    NotASocket { path: PathBuf },
    #[error("admin socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Binds the admin socket at `path`, mode 0600.
///
/// Refuses a world-writable directory (sticky or not: a socket there could be swapped by
/// anyone before a client connects). A socket file left by a crashed daemon is removed, but
/// only when nothing answers on it. The socket is bound under a temporary name and renamed
/// into place after its mode is set, so it never exists at `path` with looser permissions.
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let io_err = |source| BindError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let meta = match std::fs::metadata(&dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(BindError::NoDir {
                path: path.to_owned(),
                dir,
            })
        }
        Err(e) => return Err(io_err(e)),
    };
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o002 != 0 {
        return Err(BindError::WorldWritable {
            path: path.to_owned(),
            dir,
            mode,
        });
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(BindError::InUse {
                    path: path.to_owned(),
                });
            }
            info!(socket = %path.display(), "removing a stale admin socket (nothing listens on it)");
            std::fs::remove_file(path).map_err(io_err)?;
        }
        Ok(_) => {
            return Err(BindError::NotASocket {
                path: path.to_owned(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| "admin.sock".into());
    let tmp = dir.join(format!(".{file}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let l = std::os::unix::net::UnixListener::bind(&tmp).map_err(io_err)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(e));
    }
    l.set_nonblocking(true).map_err(io_err)?;
    UnixListener::from_std(l).map_err(io_err)
}

/// Serves admin requests until `stop` fires.
pub async fn serve(listener: UnixListener, node: Arc<Node>, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(error) => {
                    warn!(%error, "admin: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            let mut s = stream;
            let _ = s
                .write_all(&proto::encode(&Reply::error(format!(
                    "too many admin connections (at most {MAX_CLIENTS})"
                ))))
                .await;
            continue;
        };
        let (node, stop) = (node.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                r = connection(stream, &node) => if let Err(error) = r {
                    debug!(%error, "admin connection ended");
                },
            }
            drop(permit);
        });
    }
}

/// One client: request lines in, reply lines out, until it closes.
async fn connection(stream: UnixStream, node: &Node) -> io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let n = (&mut rd)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') && line.len() > MAX_LINE {
            // No way to find the next request's start: say why and hang up.
            wr.write_all(&proto::encode(&Reply::error(format!(
                "request line longer than {MAX_LINE} bytes"
            ))))
            .await?;
            return Ok(());
        }
        let reply = match proto::parse_request(&line) {
            Ok(req) => {
                let span = tracing::info_span!("admin.cmd", cmd = ?req);
                dispatch(node, req).instrument(span).await
            }
            Err(e) => Reply::error(e),
        };
        wr.write_all(&proto::encode(&reply)).await?;
    }
}

/// Carries out one request.
pub async fn dispatch(node: &Node, req: Request) -> Reply {
    match req {
        Request::Status => Reply::Status(super::status::build(node)),
        Request::Drain { backend } => set_admin(node, &backend, AdminState::Drain, false).await,
        Request::Disable { backend, kill } => {
            set_admin(node, &backend, AdminState::Disabled, kill).await
        }
        Request::Enable { backend } => set_admin(node, &backend, AdminState::Enabled, false).await,
        Request::Reload => match node.reload().await {
            Ok(o) => Reply::Reload(ReloadResult {
                config: o.source.display().to_string(),
                generation: o.generation,
                added: o.added,
                removed: o.removed,
                health_restarted: o.health_restarted,
                warnings: o.warnings,
            }),
            Err(e) => {
                let lines = e.lines();
                Reply::Error(ErrorReply {
                    error: format!(
                        "reload refused, the previous config stays in force ({} fault{}):",
                        lines.len(),
                        if lines.len() == 1 { "" } else { "s" }
                    ),
                    known: Vec::new(),
                    details: lines,
                })
            }
        },
        Request::Dsr { active } => match node.dsr.get() {
            Some(dsr) => {
                dsr.active
                    .store(active, std::sync::atomic::Ordering::Release);
                Reply::Dsr(super::proto::DsrStatus { active })
            }
            None => Reply::error("dsr: this node forwards no dsr service"),
        },
        Request::Vrrp { action } => match super::vrrp::act(node, action).await {
            Ok(s) => Reply::Vrrp(s),
            Err(e) => Reply::error(e),
        },
    }
}

async fn set_admin(node: &Node, name: &str, to: AdminState, kill: bool) -> Reply {
    let ctl = &node.controller;
    let previous = super::status::admin_of(node, name);
    let r = ctl.set_admin(name, to).and_then(|()| {
        if kill {
            ctl.kill(name).map(|_| ())
        } else {
            Ok(())
        }
    });
    match r {
        Ok(()) => {}
        Err(ControlError::UnknownBackend(n)) => {
            return Reply::Error(ErrorReply {
                error: format!("no backend named {n:?}"),
                known: ctl.backend_names(),
                details: Vec::new(),
            })
        }
        Err(e) => return Reply::error(e.to_string()),
    }
    if kill {
        // Killed relays end on their own threads; give them a moment so the reply shows
        // what is really left.
        let until = tokio::time::Instant::now() + KILL_SETTLE;
        while super::status::backend_counts(node, name).0 > 0 && tokio::time::Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (active, pinned) = super::status::backend_counts(node, name);
    info!(
        backend = name,
        admin = to.as_str(),
        previous = previous.unwrap_or("?"),
        kill,
        connections_remaining = active,
        pinned_clients = pinned,
        "admin state changed"
    );
    Reply::Admin(AdminResult {
        backend: name.to_string(),
        admin: to.as_str().to_string(),
        previous: previous.unwrap_or("unknown").to_string(),
        connections_remaining: active,
        pinned_clients: pinned,
        killed: kill,
    })
}
