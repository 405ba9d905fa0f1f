//! How the bytes of a file on the ESXi host come here: `dd` ranges over ssh connections of their own, or over plain TCP from `dd | nc` (`--transport nc`), each range checked for its length and, over nc, its token and dd's exit status.

use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Child;
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ssh::{quote, show_output, RemoteRead, Ssh};
use crate::image_read::ImageRead;

/// Connections a base is read over unless `--ssh-connections` says otherwise, and the most.
pub const DEFAULT_CONNECTIONS: usize = 4;
pub const MAX_CONNECTIONS: usize = 16;
/// The port the tool listens on for `--transport nc` unless `--nc-port` says otherwise.
pub const DEFAULT_NC_PORT: u16 = 9001;
/// How long a range's `nc` may take to connect before the ESXi firewall is blamed.
const CONNECT_WAIT: Duration = Duration::from_secs(20);
/// How long a connection may send nothing (its token line, or its bytes) before it is dropped.
const IDLE: Duration = Duration::from_secs(60);
/// What the first line of an nc connection starts with, and its trailer.
const HELLO: &str = "vmdkimport ";
const TRAILER: &str = "vmdkimport-end ";

/// How the bytes travel (`--transport`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// `dd` over ssh, a connection per range.
    Ssh,
    /// `dd | nc ADDRESS PORT` on the host, to a port this tool listens on (0: any free port);
    /// the address ESXi connects to, else the client address its sshd sees.
    Nc { port: u16, address: Option<String> },
}

/// `--ssh-connections` and `--transport`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferOptions {
    pub connections: usize,
    pub transport: Transport,
}

impl Default for TransferOptions {
    fn default() -> Self {
        TransferOptions {
            connections: DEFAULT_CONNECTIONS,
            transport: Transport::Ssh,
        }
    }
}

impl TransferOptions {
    /// `--ssh-connections N`, and `--transport nc` (`nc`) with `--nc-port` and
    /// `--nc-address`, checked.
    pub fn check(
        connections: usize,
        nc: bool,
        nc_port: Option<u16>,
        nc_address: Option<&str>,
    ) -> Result<TransferOptions> {
        ensure!(
            (1..=MAX_CONNECTIONS).contains(&connections),
            "--ssh-connections {connections}: from 1 to {MAX_CONNECTIONS}"
        );
        if !nc {
            ensure!(
                nc_port.is_none() && nc_address.is_none(),
                "--nc-port and --nc-address go with --transport nc"
            );
        }
        if let Some(a) = nc_address {
            ensure!(
                !a.is_empty()
                    && !a.starts_with('-')
                    && a.chars().all(|c| c.is_ascii_alphanumeric() || ".:-_%".contains(c)),
                "--nc-address {a:?}: an IP address or host name (letters, digits, '.', ':', '-', '_')"
            );
        }
        let transport = if nc {
            Transport::Nc {
                port: nc_port.unwrap_or(DEFAULT_NC_PORT),
                address: nc_address.map(str::to_string),
            }
        } else {
            Transport::Ssh
        };
        Ok(TransferOptions {
            connections,
            transport,
        })
    }
}

/// `count` blocks of `bs` bytes of a remote file from block `skip`: `len` bytes, fewer than
/// `count * bs` where the file ends inside the blocks (a range read to the file's end asks
/// for a block more, [`split_to_end`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub bs: u64,
    pub skip: u64,
    pub count: u64,
    pub len: u64,
}

impl Range {
    /// The range's first byte in the file.
    pub fn offset(&self) -> u64 {
        self.bs * self.skip
    }

    /// The `dd` that reads it.
    pub fn dd(&self, path: &str) -> String {
        format!(
            "dd if={} bs={} skip={} count={}",
            quote(path),
            self.bs,
            self.skip,
            self.count
        )
    }
}

/// A file of `file_len` bytes cut into at most `n` ranges of whole `bs`-byte blocks, in order.
pub fn split(file_len: u64, bs: u64, n: usize) -> Vec<Range> {
    let blocks = file_len.div_ceil(bs);
    let per = blocks.div_ceil(n.max(1) as u64).max(1);
    let mut ranges = Vec::new();
    let mut skip = 0;
    while skip < blocks {
        let count = per.min(blocks - skip);
        let len = (count * bs).min(file_len - skip * bs);
        ranges.push(Range {
            bs,
            skip,
            count,
            len,
        });
        skip += count;
    }
    ranges
}

/// [`split`] for a whole file that must end at `file_len`: the last range asks `dd` for one
/// block more, so a longer file gives more bytes than the range holds, which its reader
/// refuses.
pub fn split_to_end(file_len: u64, bs: u64, n: usize) -> Vec<Range> {
    let mut ranges = split(file_len, bs, n);
    if let Some(last) = ranges.last_mut() {
        last.count += 1;
    }
    ranges
}

/// The transport of one run: the ssh control connection, and over nc one listener here.
pub struct Transfer {
    ssh: Arc<Ssh>,
    opts: TransferOptions,
    /// The nc listener, once started; shared by [`Transfer::with_connections`]'s copies.
    nc: Arc<Mutex<Option<Arc<Listener>>>>,
}

impl Transfer {
    pub fn new(ssh: Arc<Ssh>, opts: TransferOptions) -> Transfer {
        Transfer {
            ssh,
            opts,
            nc: Arc::new(Mutex::new(None)),
        }
    }

    /// Everything that can fail before a byte is read, done now: over nc, the listener
    /// started (a port in use fails here, not in the cutover's outage).
    pub fn ready(&self) -> Result<()> {
        if let Transport::Nc { port, .. } = &self.opts.transport {
            self.listener(*port)?;
        }
        Ok(())
    }

    /// The same transport with `n` connections, sharing this one's listener.
    pub fn with_connections(&self, n: usize) -> Transfer {
        Transfer {
            ssh: self.ssh.clone(),
            opts: TransferOptions {
                connections: n,
                transport: self.opts.transport.clone(),
            },
            nc: self.nc.clone(),
        }
    }

    /// The control connection.
    pub fn ssh(&self) -> &Arc<Ssh> {
        &self.ssh
    }

    /// How many ranges go side by side.
    pub fn connections(&self) -> usize {
        self.opts.connections
    }

    pub fn options(&self) -> &TransferOptions {
        &self.opts
    }

    /// "ssh" or "nc", for messages.
    pub fn name(&self) -> &'static str {
        match self.opts.transport {
            Transport::Ssh => "ssh",
            Transport::Nc { .. } => "nc",
        }
    }

    /// Bytes `r` of the file `path` on the host: exactly `r.len` of them, then the end; a
    /// range that ends early, runs long or whose `dd` failed is an error, never short data.
    pub fn read(&self, path: &str, r: Range) -> Result<RangeRead> {
        let what = format!(
            "{}:{path} bytes {}..{}",
            self.ssh.url().host,
            r.offset(),
            r.offset() + r.len
        );
        let source = match &self.opts.transport {
            Transport::Ssh => Source::Ssh(self.ssh.stream_alone(path, &r.dd(path))?),
            Transport::Nc { port, address } => {
                Source::Nc(self.read_nc(path, r, *port, address.as_deref(), &what)?)
            }
        };
        Ok(RangeRead {
            source,
            left: r.len,
            len: r.len,
            what,
            ended: false,
        })
    }

    /// The one listener of the run, started at first use.
    fn listener(&self, port: u16) -> Result<Arc<Listener>> {
        let mut l = self.nc.lock().expect("no panic holding the listener");
        if let Some(l) = &*l {
            return Ok(l.clone());
        }
        let new = Listener::start(port)?;
        *l = Some(new.clone());
        Ok(new)
    }

    /// `{ echo TOKEN; dd; echo TRAILER $?; } | nc` started on the host, and its connection
    /// here once it came.
    fn read_nc(
        &self,
        path: &str,
        r: Range,
        port: u16,
        address: Option<&str>,
        what: &str,
    ) -> Result<NcConn> {
        let l = self.listener(port)?;
        let token = token()?;
        let (tx, rx) = channel();
        l.expect(&token, tx);
        let addr = address.map_or_else(|| "\"${SSH_CONNECTION%% *}\"".to_string(), quote);
        let cmd = format!(
            "{{ echo \"{HELLO}{token}\"; {}; echo \"{TRAILER}$?\"; }} | nc {addr} {}",
            r.dd(path),
            l.port
        );
        let mut child = self.ssh.spawn_quiet(&cmd)?;
        let started = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(sock) => {
                    return Ok(NcConn {
                        sock,
                        child: Some(child),
                        ssh: self.ssh.clone(),
                    })
                }
                Err(RecvTimeoutError::Disconnected) => bail!("{what}: the nc listener stopped"),
                Err(RecvTimeoutError::Timeout) => {}
            }
            let gone = child.try_wait()?.is_some();
            if gone || started.elapsed() > CONNECT_WAIT {
                l.forget(&token);
                let err = finish_child(&self.ssh, &mut child);
                bail!(
                    "{what}: `nc` on {} did not connect to port {} here within {} s ({}): the ESXi firewall lets no unlisted port out: add an outbound rule for TCP port {} (a ruleset in /etc/vmware/firewall/*.xml, then `esxcli network firewall refresh`), give --nc-address when ESXi reaches this host by another address, or use --transport ssh",
                    self.ssh.url().host,
                    l.port,
                    CONNECT_WAIT.as_secs(),
                    err,
                    l.port
                );
            }
        }
    }
}

/// A fresh random token (128 bits, hex) naming one range's connection.
fn token() -> Result<String> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The ssh command of an nc range waited for (killed when it does not end within a few
/// seconds: the bytes were checked already), and what it printed.
fn finish_child(ssh: &Ssh, child: &mut Child) -> String {
    let until = Instant::now() + Duration::from_secs(5);
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let status = child.wait().ok();
    let mut raw = Vec::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_end(&mut raw);
    }
    let code = status
        .and_then(|s| s.code())
        .map_or("a signal".into(), |c| c.to_string());
    format!("exit {code}: {}", show_output(&ssh.stderr_text(&raw)))
}

/// The listener of `--transport nc`: each connection's first line names its range's token.
struct Listener {
    port: u16,
    waiting: Mutex<HashMap<String, Sender<TcpStream>>>,
}

impl Listener {
    fn start(port: u16) -> Result<Arc<Listener>> {
        let sock = TcpListener::bind(("::", port))
            .or_else(|_| TcpListener::bind(("0.0.0.0", port)))
            .with_context(|| format!("--transport nc: listening on TCP port {port}"))?;
        let port = sock.local_addr()?.port();
        log::info!("--transport nc: listening on TCP port {port} (unencrypted)");
        let l = Arc::new(Listener {
            port,
            waiting: Mutex::new(HashMap::new()),
        });
        let me = l.clone();
        std::thread::spawn(move || {
            for conn in sock.incoming().flatten() {
                let me = me.clone();
                std::thread::spawn(move || me.hand_over(conn));
            }
        });
        Ok(l)
    }

    fn expect(&self, token: &str, tx: Sender<TcpStream>) {
        self.waiting
            .lock()
            .expect("no panic holding the tokens")
            .insert(token.to_string(), tx);
    }

    fn forget(&self, token: &str) {
        self.waiting
            .lock()
            .expect("no panic holding the tokens")
            .remove(token);
    }

    /// Read the connection's token line and hand it to its range; a connection with no
    /// token of ours is dropped.
    fn hand_over(&self, mut conn: TcpStream) {
        let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        let _ = conn.set_read_timeout(Some(IDLE));
        let line = read_line(&mut conn).unwrap_or_default();
        let tx = line.strip_prefix(HELLO).and_then(|t| {
            self.waiting
                .lock()
                .expect("no panic holding the tokens")
                .remove(t)
        });
        match tx {
            Some(tx) => {
                let _ = tx.send(conn);
            }
            None => log::warn!(
                "--transport nc: a connection from {peer} named no range of this run: dropped"
            ),
        }
    }
}

/// One line (at most 100 bytes, without its newline), read a byte at a time so nothing
/// after it is taken.
fn read_line(conn: &mut impl Read) -> io::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 100 {
        if conn.read(&mut b)? == 0 {
            break;
        }
        if b[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(b[0]);
    }
    Err(io::Error::other(format!(
        "no line but {:?}",
        String::from_utf8_lossy(&line)
    )))
}

/// One range's nc connection and the ssh command that started its `nc`.
struct NcConn {
    sock: TcpStream,
    child: Option<Child>,
    ssh: Arc<Ssh>,
}

impl NcConn {
    /// After the range's bytes: the trailer, whose status must be 0; the connection closed
    /// here (the host's nc need not close it), the ssh command waited for.
    fn end(&mut self, what: &str) -> io::Result<()> {
        let line = read_line(&mut self.sock).ok();
        let _ = self.sock.shutdown(Shutdown::Both);
        let said = self
            .child
            .take()
            .map(|mut c| finish_child(&self.ssh, &mut c))
            .unwrap_or_default();
        match line.as_deref().and_then(|l| l.strip_prefix(TRAILER)) {
            Some("0") => Ok(()),
            Some(code) => Err(io::Error::other(format!(
                "{what}: dd on the host failed (exit {code}; ssh {said})"
            ))),
            None => Err(io::Error::other(format!(
                "{what}: more bytes than the range holds, and no trailer after them: the file is longer than expected (or grew while it was read; ssh {said})"
            ))),
        }
    }

    /// The range cut short: what the ssh command said.
    fn cut(&mut self) -> String {
        let _ = self.sock.shutdown(Shutdown::Both);
        self.child
            .take()
            .map(|mut c| finish_child(&self.ssh, &mut c))
            .unwrap_or_default()
    }
}

impl Drop for NcConn {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

enum Source {
    Ssh(RemoteRead),
    Nc(NcConn),
}

/// One range's bytes as they come: exactly its length, then the end, checked.
pub struct RangeRead {
    source: Source,
    left: u64,
    len: u64,
    what: String,
    ended: bool,
}

impl RangeRead {
    /// Past the range's bytes: nothing more may come, and the read must have succeeded.
    fn end(&mut self) -> io::Result<()> {
        if self.ended {
            return Ok(());
        }
        self.ended = true;
        match &mut self.source {
            Source::Ssh(r) => {
                let mut one = [0u8; 1];
                if r.read(&mut one)? != 0 {
                    return Err(io::Error::other(format!(
                        "{}: more bytes than the range's {}: the file is longer than expected (or grew while it was read)",
                        self.what, self.len
                    )));
                }
                Ok(())
            }
            Source::Nc(c) => c.end(&self.what),
        }
    }

    fn short(&mut self) -> io::Error {
        let said = match &mut self.source {
            Source::Ssh(r) => {
                let mut rest = Vec::new();
                r.read_to_end(&mut rest).err().map(|e| e.to_string())
            }
            Source::Nc(c) => Some(c.cut()),
        };
        io::Error::other(format!(
            "{}: the transfer ended after {} of {} bytes{}",
            self.what,
            self.len - self.left,
            self.len,
            said.map(|s| format!(" ({s})")).unwrap_or_default()
        ))
    }
}

impl Read for RangeRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            self.end()?;
            return Ok(0);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = match &mut self.source {
            Source::Ssh(r) => r.read(&mut buf[..want]),
            Source::Nc(c) => c.sock.read(&mut buf[..want]),
        };
        let n = match n {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) if matches!(self.source, Source::Nc(_)) => {
                let why = match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                        format!("no byte came over nc for {} s", IDLE.as_secs())
                    }
                    _ => e.to_string(),
                };
                return Err(io::Error::other(format!(
                    "{}: {why} after {} of {} bytes",
                    self.what,
                    self.len - self.left,
                    self.len
                )));
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Err(self.short());
        }
        self.left -= n as u64;
        Ok(n)
    }
}

impl ImageRead for RangeRead {}

#[cfg(test)]
mod tests {
    use super::*;

    /// A range's bytes as nc sends them.
    fn framed(token: &str, data: &[u8], status: i32) -> Vec<u8> {
        let mut v = format!("{HELLO}{token}\n").into_bytes();
        v.extend_from_slice(data);
        v.extend_from_slice(format!("{TRAILER}{status}\n").as_bytes());
        v
    }

    #[test]
    fn ranges_cover_the_file_in_whole_blocks() {
        let r = split(10 * 4096 + 100, 4096, 4);
        assert_eq!(r.len(), 4);
        assert_eq!(r.iter().map(|r| r.len).sum::<u64>(), 10 * 4096 + 100);
        assert_eq!((r[0].skip, r[0].count, r[0].len), (0, 3, 3 * 4096));
        assert_eq!((r[3].skip, r[3].count, r[3].len), (9, 2, 4096 + 100));
        for w in r.windows(2) {
            assert_eq!(w[0].offset() + w[0].len, w[1].offset());
        }
        assert_eq!(split(4096, 4096, 8).len(), 1);
        let whole = split_to_end(10 * 4096, 4096, 4);
        assert_eq!(whole[..3], split(10 * 4096, 4096, 4)[..3]);
        assert_eq!((whole[3].skip, whole[3].count, whole[3].len), (9, 2, 4096));
        assert!(split(0, 4096, 4).is_empty());
        assert_eq!(
            r[1].dd("/vmfs/a b"),
            "dd if='/vmfs/a b' bs=4096 skip=3 count=3"
        );
    }

    #[test]
    fn the_listener_hands_each_connection_to_its_token_and_drops_the_others() {
        use std::io::Write;
        let l = Listener::start(0).unwrap();
        let (tx, rx) = channel();
        l.expect("feed", tx);
        let mut stranger = TcpStream::connect(("127.0.0.1", l.port)).unwrap();
        stranger.write_all(b"vmdkimport f00d\nDATA").unwrap();
        let mut rest = Vec::new();
        stranger
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // Dropped: the listener closes it without a byte.
        assert_eq!(stranger.read_to_end(&mut rest).unwrap_or(0), 0);
        let mut ours = TcpStream::connect(("127.0.0.1", l.port)).unwrap();
        ours.write_all(&framed("feed", b"DATA", 0)).unwrap();
        let mut got = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let mut data = [0u8; 4];
        got.read_exact(&mut data).unwrap();
        assert_eq!(&data, b"DATA");
        assert_eq!(read_line(&mut got).unwrap(), "vmdkimport-end 0");
        assert!(l.waiting.lock().unwrap().is_empty(), "a token is used once");
    }

    #[test]
    fn an_nc_range_that_goes_quiet_or_ends_early_says_so() {
        use std::io::Write;
        let ssh = Arc::new(
            Ssh::new(&super::super::ssh::SshUrl::parse("ssh://esx1/a.vmx").unwrap()).unwrap(),
        );
        let l = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let mut peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (sock, _) = l.accept().unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        peer.write_all(b"0123").unwrap();
        let mut r = RangeRead {
            source: Source::Nc(NcConn {
                sock,
                child: None,
                ssh,
            }),
            left: 10,
            len: 10,
            what: "esx1:/f bytes 0..10".into(),
            ended: false,
        };
        let mut buf = [0u8; 10];
        assert_eq!(r.read(&mut buf).unwrap(), 4);
        let quiet = r.read(&mut buf).unwrap_err().to_string();
        assert!(
            quiet.contains("no byte came over nc") && quiet.contains("after 4 of 10 bytes"),
            "{quiet}"
        );
        drop(peer);
        let short = r.read(&mut buf).unwrap_err().to_string();
        assert!(
            short.contains("the transfer ended after 4 of 10 bytes"),
            "{short}"
        );
    }

    #[test]
    fn a_line_is_read_without_taking_what_follows() {
        let bytes = framed("ab12", b"DATA", 0);
        let mut r = &bytes[..];
        assert_eq!(read_line(&mut r).unwrap(), "vmdkimport ab12");
        let mut data = [0u8; 4];
        r.read_exact(&mut data).unwrap();
        assert_eq!(&data, b"DATA");
        assert_eq!(read_line(&mut r).unwrap(), "vmdkimport-end 0");
        assert!(read_line(&mut &[b'x'; 200][..]).is_err());
    }
}
