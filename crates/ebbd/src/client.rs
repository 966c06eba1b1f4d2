//! A client of the ebbd socket, for Rust users (the `ebb` CLI, the app-switch benchmark).
//!
//! ```no_run
//! let mut c = ebbd::client::Client::connect("/run/ebbd.sock")?;
//! c.mark(4242, "cached")?;
//! println!("{}", c.status()?["compactions"]);
//! # Ok::<(), ebbd::client::Error>(())
//! ```

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

/// A request to ebbd failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No daemon answers on the socket.
    #[error(
        "connecting to ebbd at {path}: {source} (is ebbd running, and may you open its socket?)"
    )]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Talking to it failed.
    #[error("talking to ebbd: {0}")]
    Io(#[from] std::io::Error),
    /// It answered something that is not JSON.
    #[error("ebbd answered something that is not JSON: {0}")]
    Reply(#[from] serde_json::Error),
    /// It refused the request.
    #[error("ebbd refused: {0}")]
    Refused(String),
}

/// A connection to ebbd.
#[derive(Debug)]
pub struct Client {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Client {
    /// Connects to the socket at `path`.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client, Error> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).map_err(|source| Error::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Client {
            writer: stream,
            reader,
        })
    }

    /// Sends one request and returns the reply; `{"ok":false}` becomes [`Error::Refused`].
    pub fn request(&mut self, req: &Value) -> Result<Value, Error> {
        writeln!(self.writer, "{req}")?;
        self.writer.flush()?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "ebbd closed the connection",
            )));
        }
        let v: Value = serde_json::from_str(&line)?;
        if v.get("ok") == Some(&Value::Bool(true)) {
            Ok(v)
        } else {
            Err(Error::Refused(
                v.get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given")
                    .to_string(),
            ))
        }
    }

    /// Marks `pid` with `band` (`foreground|visible|perceptible|cached|normal`).
    pub fn mark(&mut self, pid: u32, band: &str) -> Result<(), Error> {
        self.request(&json!({"cmd": "mark", "pid": pid, "band": band}))?;
        Ok(())
    }

    /// The daemon's status (see the contract for its fields).
    pub fn status(&mut self) -> Result<Value, Error> {
        self.request(&json!({"cmd": "status"}))
    }
}
