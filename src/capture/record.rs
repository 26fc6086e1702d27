//! The recorder: the body of the hidden `megaplan capture-record` process.
//!
//! It reads frames from one AF_PACKET socket per tap (bound to the tap's
//! ifindex, every protocol, both directions) and appends them to a pcap file
//! it was handed as a descriptor. Nothing in the guest; the sockets are
//! passive (no promiscuous mode, nothing sent), so the guests see no change.
//!
//! - Each frame once: with several taps (a network's members) a frame that
//!   crosses the bridge is seen twice (in on the sender's tap, out on the
//!   receiver's; a broadcast once more per member): a frame whose bytes were
//!   recorded in the last [`DEDUPE_WINDOW`] is dropped.
//! - A tap that goes away (its VM replaced) is bound again when a tap of the
//!   same name comes back (names are identities, `identity::tap_name`).
//! - SIGTERM/SIGINT/SIGHUP end it cleanly: the file is flushed and synced.
//!   The file is flushed after every burst of frames, so a check may read it
//!   while the recorder runs.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::{DataLink, Endianness};

use super::CaptureError;

/// The most bytes of a frame kept (a GSO frame from a tap can be 64 KiB).
pub const SNAPLEN: u32 = 262_144;
/// Identical frames within this window are one frame seen on two taps.
pub const DEDUPE_WINDOW: Duration = Duration::from_millis(200);
/// How often a vanished tap is looked for again.
const REBIND_EVERY: Duration = Duration::from_millis(200);

const ETH_P_ALL: u16 = 0x0003;

fn os_err(what: &str) -> CaptureError {
    CaptureError::Os {
        what: what.to_string(),
        source: std::io::Error::last_os_error(),
    }
}

/// One AF_PACKET socket on one interface.
struct Tap {
    name: String,
    sock: Option<OwnedFd>,
}

fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

fn bind(name: &str) -> Result<OwnedFd, CaptureError> {
    let Some(index) = ifindex(name) else {
        return Err(CaptureError::NoInterface(name.to_string()));
    };
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            i32::from(ETH_P_ALL.to_be()),
        )
    };
    if fd < 0 {
        return Err(os_err("socket(AF_PACKET)"));
    }
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let rcvbuf: libc::c_int = 4 << 20;
    // SAFETY: setsockopt with a pointer to a c_int and its size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&rcvbuf as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    // SAFETY: zeroed sockaddr_ll is valid; bind with its exact size.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ALL.to_be();
    sll.sll_ifindex = index as i32;
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(os_err(&format!("bind to {name}")));
    }
    Ok(fd)
}

/// SIGTERM, SIGINT and SIGHUP as a readable descriptor.
fn signal_fd() -> Result<OwnedFd, CaptureError> {
    // SAFETY: sigset manipulation on a local, then signalfd of it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(os_err("sigprocmask"));
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(os_err("signalfd"));
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// The rest of `slice` after one whole record, if it holds one.
fn after_record(slice: &[u8], endianness: Endianness) -> Option<&[u8]> {
    let field: [u8; 4] = slice.get(8..12)?.try_into().ok()?;
    let incl = match endianness {
        Endianness::Big => u32::from_be_bytes(field),
        Endianness::Little => u32::from_le_bytes(field),
    } as usize;
    slice.get(16usize.checked_add(incl)?..)
}

/// The header of an existing capture file and the length of its complete
/// part (a recorder killed mid-write leaves half a record); None when empty.
pub(crate) fn complete_len(file: &mut File) -> Result<Option<(u64, PcapHeader)>, CaptureError> {
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0)).map_err(CaptureError::File)?;
    file.read_to_end(&mut bytes).map_err(CaptureError::File)?;
    if bytes.is_empty() {
        return Ok(None);
    }
    let (mut rest, header) = PcapHeader::from_slice(&bytes)
        .map_err(|e| CaptureError::Format(format!("not a pcap file: {e}")))?;
    while let Some(next) = after_record(rest, header.endianness) {
        rest = next;
    }
    Ok(Some(((bytes.len() - rest.len()) as u64, header)))
}

/// What `PcapWriter` writes into: memory, moved to the file once per burst.
#[derive(Clone, Default)]
struct Shared(Rc<RefCell<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn drain_to(&self, out: &mut File) -> Result<(), CaptureError> {
        let mut b = self.0.borrow_mut();
        if !b.is_empty() {
            out.write_all(&b).map_err(CaptureError::File)?;
            b.clear();
        }
        Ok(())
    }
}

/// Record until a signal. `out` is the capture file (read-write; appended to
/// when it already holds frames); `ready` gets one line once every socket is
/// bound, so the caller knows recording has begun before it goes on.
pub fn record(
    mut out: File,
    ready: Option<File>,
    ifaces: &[String],
    dedupe: bool,
) -> Result<(), CaptureError> {
    let sig = signal_fd()?;
    let mut taps: Vec<Tap> = Vec::new();
    for name in ifaces {
        taps.push(Tap {
            name: name.clone(),
            sock: Some(bind(name)?),
        });
    }
    let header = PcapHeader {
        snaplen: SNAPLEN,
        datalink: DataLink::ETHERNET,
        endianness: Endianness::native(),
        ..PcapHeader::default()
    };
    let (appending, header) = match complete_len(&mut out)? {
        None => (false, header),
        Some((end, old)) => {
            out.set_len(end).map_err(CaptureError::File)?;
            (true, old)
        }
    };
    out.seek(SeekFrom::End(0)).map_err(CaptureError::File)?;
    let sink = Shared::default();
    let mut w = PcapWriter::with_header(sink.clone(), header)
        .map_err(|e| CaptureError::Format(e.to_string()))?;
    if appending {
        sink.0.borrow_mut().clear();
    }
    sink.drain_to(&mut out)?;
    if let Some(mut r) = ready {
        let _ = writeln!(r, "ready {}", std::process::id());
    }

    let mut recent: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut seen: HashMap<u64, usize> = HashMap::new();
    let mut buf = vec![0u8; SNAPLEN as usize];
    let mut last_rebind = Instant::now();
    loop {
        let mut fds = vec![libc::pollfd {
            fd: sig.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let mut which: Vec<usize> = Vec::new();
        for (i, t) in taps.iter().enumerate() {
            if let Some(s) = &t.sock {
                fds.push(libc::pollfd {
                    fd: s.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                which.push(i);
            }
        }
        let missing = which.len() < taps.len();
        let timeout = if missing {
            REBIND_EVERY.as_millis() as i32
        } else {
            -1
        };
        // SAFETY: a valid array of pollfds and its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(CaptureError::Os {
                what: "poll".into(),
                source: e,
            });
        }
        if fds[0].revents != 0 {
            sink.drain_to(&mut out)?;
            out.sync_all().map_err(CaptureError::File)?;
            return Ok(());
        }
        for (slot, &i) in fds[1..].iter().zip(&which) {
            if slot.revents == 0 {
                continue;
            }
            if slot.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                // The tap went down or away: bind again when it is back.
                taps[i].sock = None;
                continue;
            }
            let fd = slot.fd;
            loop {
                // SAFETY: recv into our buffer with its length.
                let got = unsafe {
                    libc::recv(
                        fd,
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_TRUNC | libc::MSG_DONTWAIT,
                    )
                };
                if got < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::WouldBlock
                        && e.kind() != std::io::ErrorKind::Interrupted
                    {
                        taps[i].sock = None;
                    }
                    break;
                }
                let orig = got as usize;
                let data = &buf[..orig.min(buf.len())];
                let now = Instant::now();
                if dedupe {
                    while let Some(&(t, h)) = recent.front() {
                        if now.duration_since(t) <= DEDUPE_WINDOW {
                            break;
                        }
                        recent.pop_front();
                        if let Some(c) = seen.get_mut(&h) {
                            *c -= 1;
                            if *c == 0 {
                                seen.remove(&h);
                            }
                        }
                    }
                    let mut hasher = std::collections::hash_map::DefaultHasher::new();
                    data.hash(&mut hasher);
                    let h = hasher.finish();
                    if seen.contains_key(&h) {
                        continue;
                    }
                    recent.push_back((now, h));
                    *seen.entry(h).or_insert(0) += 1;
                }
                let ts = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default();
                w.write_packet(&PcapPacket::new(ts, orig as u32, data))
                    .map_err(|e| CaptureError::Format(e.to_string()))?;
            }
        }
        sink.drain_to(&mut out)?;
        if taps.iter().any(|t| t.sock.is_none()) && last_rebind.elapsed() >= REBIND_EVERY {
            last_rebind = Instant::now();
            for t in taps.iter_mut().filter(|t| t.sock.is_none()) {
                t.sock = bind(&t.name).ok();
            }
        }
    }
}

/// The raw descriptor number a recorder is handed its file on.
pub const OUT_FD: RawFd = 3;
/// And the descriptor it reports readiness on.
pub const READY_FD: RawFd = 4;
