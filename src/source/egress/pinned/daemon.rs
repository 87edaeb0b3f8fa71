//! git:// (the git daemon protocol) to the checked addresses: one TCP connection per fetch,
//! opened with the request line libgit2 would send, then read and written as is.

use std::io::{Read, Write};

use git2::transport::{Service, SmartSubtransportStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Session, net_error};

const DEFAULT_PORT: u16 = 9418;

pub(super) struct Daemon {
    session: Session,
}

impl Daemon {
    pub(super) fn new(session: Session) -> Self {
        Self { session }
    }

    /// Stateful protocol: libgit2 asks for the ref list once and goes on on the same stream.
    pub(super) fn action(
        &self,
        _url: &str,
        action: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, git2::Error> {
        if action != Service::UploadPackLs {
            return Err(git2::Error::from_str(
                "git:// continues on the ref list's connection",
            ));
        }
        let pinned = &self.session.pinned;
        let connect = async {
            let connecting = TcpStream::connect(&pinned.addrs[..]);
            let mut conn = tokio::time::timeout(pinned.connect, connecting)
                .await
                .map_err(|_| net_error(format!("failed to connect to {}: timed out", pinned.host)))?
                .map_err(|e| net_error(format!("failed to connect to {}: {e}", pinned.host)))?;
            conn.write_all(&request(&pinned.remote, &pinned.host))
                .await?;
            Ok(conn)
        };
        let conn = pinned
            .wait(connect)
            .map_err(|e| git2::Error::from_str(&e.to_string()))?;
        Ok(Box::new(Conn {
            session: self.session.clone(),
            conn,
        }))
    }
}

/// `git-upload-pack <path>\0host=<host>[:<port>]\0` as one pkt-line.
fn request(remote: &url::Url, host: &str) -> Vec<u8> {
    let path = remote.path();
    // "/~user/repo" names a user's repository: sent as "~user/repo".
    let path = path
        .strip_prefix('/')
        .filter(|p| p.starts_with('~'))
        .unwrap_or(path);
    let host = match (host.contains(':'), remote.port()) {
        (true, Some(port)) if port != DEFAULT_PORT => format!("[{host}]:{port}"),
        (false, Some(port)) if port != DEFAULT_PORT => format!("{host}:{port}"),
        (true, _) => format!("[{host}]"),
        (false, _) => host.to_owned(),
    };
    let line = format!("git-upload-pack {path}\0host={host}\0");
    let mut out = format!("{:04x}", line.len() + 4).into_bytes();
    out.extend_from_slice(line.as_bytes());
    out
}

struct Conn {
    session: Session,
    conn: TcpStream,
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let (pinned, conn) = (&self.session.pinned, &mut self.conn);
        pinned.wait(conn.read(buf))
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (pinned, conn) = (&self.session.pinned, &mut self.conn);
        pinned.wait(conn.write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(url: &str, host: &str) -> String {
        let url = url::Url::parse(url).expect("url");
        String::from_utf8(request(&url, host)).expect("utf8")
    }

    #[test]
    fn the_request_line_names_the_path_and_host() {
        assert_eq!(
            line("git://git.example/acme/app.git", "git.example"),
            "0033git-upload-pack /acme/app.git\0host=git.example\0"
        );
        assert_eq!(
            line("git://git.example:9999/~me/app.git", "git.example"),
            "0036git-upload-pack ~me/app.git\0host=git.example:9999\0"
        );
        assert_eq!(
            line("git://[::1]:9999/a.git", "::1"),
            "002bgit-upload-pack /a.git\0host=[::1]:9999\0"
        );
    }
}
