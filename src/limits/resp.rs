//! Just enough of Redis's protocol (RESP2) for the shared rate limits:
//! send a command as an array of bulk strings, read one reply. Over TCP
//! (`redis://host:port`) or a Unix socket (`unix:///path`). No TLS, no
//! AUTH: reach Redis over a private network or a socket.

use std::path::PathBuf;
use std::pin::Pin;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufStream};

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// `redis://host:port`.
    Tcp(String),
    /// `unix:///path` (or `redis+unix://`).
    Unix(PathBuf),
}

impl std::str::FromStr for RedisTarget {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(path) = text
            .strip_prefix("unix://")
            .or_else(|| text.strip_prefix("redis+unix://"))
        {
            return Ok(RedisTarget::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = text.strip_prefix("redis://") {
            let hostport = rest.trim_end_matches('/');
            if hostport.contains('@') {
                return Err("credentials in the Redis URL are not supported; use a private network or a Unix socket".into());
            }
            let hostport = if hostport.contains(':') {
                hostport.to_owned()
            } else {
                format!("{hostport}:6379")
            };
            return Ok(RedisTarget::Tcp(hostport));
        }
        Err(format!(
            "`{text}` must be redis://HOST:PORT or unix:///PATH"
        ))
    }
}

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`.
    Status(String),
    /// `-ERR ...`.
    Error(String),
    /// `:1`.
    Int(i64),
    /// `$n`, `$-1` for none.
    Bulk(Option<Vec<u8>>),
    /// `*n`, `*-1` for none.
    Array(Option<Vec<Reply>>),
}

/// Why a command failed at the protocol level.
#[derive(Debug, thiserror::Error)]
pub enum RespError {
    /// The socket failed.
    #[error("redis connection: {0}")]
    Io(#[from] std::io::Error),
    /// Redis said something this client does not understand.
    #[error("redis protocol: {0}")]
    Protocol(String),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One connection.
pub struct Connection {
    stream: BufStream<Box<dyn Io>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connection")
    }
}

impl Connection {
    /// Connects (the caller bounds the time).
    pub async fn open(target: &RedisTarget) -> Result<Connection, RespError> {
        let io: Box<dyn Io> = match target {
            RedisTarget::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr.as_str()).await?;
                stream.set_nodelay(true)?;
                Box::new(stream)
            }
            RedisTarget::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
        };
        Ok(Connection {
            stream: BufStream::new(io),
        })
    }

    /// Sends one command and reads its reply.
    pub async fn command(&mut self, args: &[&[u8]]) -> Result<Reply, RespError> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&out).await?;
        self.stream.flush().await?;
        read_reply(&mut self.stream).await
    }
}

const MAX_BULK: usize = 1 << 20;

fn read_reply<'a>(
    stream: &'a mut BufStream<Box<dyn Io>>,
) -> Pin<Box<dyn std::future::Future<Output = Result<Reply, RespError>> + Send + 'a>> {
    Box::pin(async move {
        let mut line = String::new();
        let n = stream.read_line(&mut line).await?;
        if n == 0 {
            return Err(RespError::Protocol("connection closed".into()));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        let (kind, rest) = line.split_at(line.len().min(1));
        let int = || {
            rest.parse::<i64>()
                .map_err(|_| RespError::Protocol(format!("bad length `{rest}`")))
        };
        match kind {
            "+" => Ok(Reply::Status(rest.to_owned())),
            "-" => Ok(Reply::Error(rest.to_owned())),
            ":" => Ok(Reply::Int(int()?)),
            "$" => {
                let len = int()?;
                if len < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let len = usize::try_from(len)
                    .ok()
                    .filter(|l| *l <= MAX_BULK)
                    .ok_or_else(|| RespError::Protocol("bulk reply too long".into()))?;
                let mut buf = vec![0; len + 2];
                stream.read_exact(&mut buf).await?;
                buf.truncate(len);
                Ok(Reply::Bulk(Some(buf)))
            }
            "*" => {
                let len = int()?;
                if len < 0 {
                    return Ok(Reply::Array(None));
                }
                let len = usize::try_from(len)
                    .ok()
                    .filter(|l| *l <= 1024)
                    .ok_or_else(|| RespError::Protocol("array reply too long".into()))?;
                let mut items = Vec::with_capacity(len);
                for _ in 0..len {
                    items.push(read_reply(stream).await?);
                }
                Ok(Reply::Array(Some(items)))
            }
            other => Err(RespError::Protocol(format!("unknown reply type `{other}`"))),
        }
    })
}
