//! Links over rtnetlink: bridges, persistent taps, host addresses.
//!
//! Every object this driver creates carries an ownership marker, its interface
//! alias (`megaplan:EXPERIMENT:ADDRESS`, see SPEC "Identity and naming"). The
//! driver never changes or removes a link whose alias is not the marker the
//! caller expects: `create_*` on an existing unmarked link and `delete_link` on a
//! link with another alias are errors, not silent successes.
//!
//! Names are validated before any syscall (at most 15 bytes, no '/', ':',
//! whitespace or control characters), so a bad name is an error, never a panic
//! or a half-done kernel change.
//!
//! Everything here acts in the network namespace of the thread that called
//! [`Netlink::connect`] (for the netlink socket) and of the thread that calls
//! [`Netlink::create_tap`] (for `/dev/net/tun`).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::str::FromStr;

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage, State,
};
use rtnetlink::{Handle, LinkBridge, LinkUnspec};

/// Every megaplan marker starts with this.
pub const MARKER_PREFIX: &str = "megaplan:";

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// Longest interface alias Linux accepts (IFALIASZ - 1).
pub const MAX_ALIAS_LEN: usize = 255;

const EEXIST: i32 = libc::EEXIST;
const ENODEV: i32 = libc::ENODEV;

/// Errors of the link driver.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid interface alias {alias:?}: {reason}")]
    InvalidAlias { alias: String, reason: &'static str },
    #[error("invalid address {input:?}: {reason}")]
    InvalidCidr { input: String, reason: &'static str },
    #[error("invalid MAC address {0:?} (expected six hex octets, aa:bb:cc:dd:ee:ff)")]
    InvalidMac(String),
    #[error("cannot open a netlink socket: {0}")]
    Connect(#[source] std::io::Error),
    #[error("Netlink::connect must be called inside a tokio runtime")]
    NoRuntime,
    #[error("netlink {op} {name}: {source}")]
    Request {
        op: &'static str,
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tap {name}: {op}: {source}")]
    Tun {
        op: &'static str,
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("interface {0} does not exist")]
    NotFound(String),
    #[error("setting {path}: {source}")]
    Sysctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "interface {name} exists but is not ours (alias {found:?}, expected {expected:?}); \
         megaplan never changes or removes an interface without its marker"
    )]
    NotOurs {
        name: String,
        expected: String,
        found: Option<String>,
    },
    #[error("interface {name} carries our marker but is a {found}, not a {expected}")]
    KindMismatch {
        name: String,
        expected: LinkKind,
        found: LinkKind,
    },
}

impl NetlinkError {
    /// The errno of a failed kernel request, if that is what this is.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Request { source, .. } | Self::Tun { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    pub(crate) fn request(op: &'static str, name: &str, e: rtnetlink::Error) -> Self {
        let source = match &e {
            rtnetlink::Error::NetlinkError(msg) if msg.raw_code() != 0 => msg.to_io(),
            _ => std::io::Error::other(e.to_string()),
        };
        Self::Request {
            op,
            name: name.to_string(),
            source,
        }
    }
}

/// Check an interface name the way the kernel does (`dev_valid_name`), plus no
/// control characters. Call before any syscall.
pub fn validate_ifname(name: &str) -> Result<(), NetlinkError> {
    let bad = |reason| {
        Err(NetlinkError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_IFNAME_LEN {
        return bad("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are reserved");
    }
    if name.contains('/') {
        return bad("contains '/'");
    }
    if name.contains(':') {
        return bad("contains ':'");
    }
    if name.chars().any(char::is_whitespace) {
        return bad("contains whitespace");
    }
    if name.chars().any(char::is_control) {
        return bad("contains a control character");
    }
    Ok(())
}

/// Check an interface alias (our marker): non-empty, at most 255 bytes, no NUL
/// or other control characters.
pub fn validate_alias(alias: &str) -> Result<(), NetlinkError> {
    let bad = |reason| {
        Err(NetlinkError::InvalidAlias {
            alias: alias.to_string(),
            reason,
        })
    };
    if alias.is_empty() {
        return bad("empty");
    }
    if alias.len() > MAX_ALIAS_LEN {
        return bad("longer than 255 bytes");
    }
    if alias.chars().any(char::is_control) {
        return bad("contains a control character");
    }
    Ok(())
}

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The MAC to give the host side of a guest's tap: the guest's MAC with the
    /// first octet set to 0xfe (as libvirt does). A tap must NOT carry the
    /// guest's own MAC: the bridge treats its ports' MACs as local, so frames
    /// for the guest would go to the host stack instead of the tap. 0xfe also
    /// keeps the bridge from adopting the tap's MAC as its own.
    pub fn tap_for_guest(guest: MacAddr) -> MacAddr {
        let mut m = guest.0;
        m[0] = 0xfe;
        MacAddr(m)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = NetlinkError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || NetlinkError::InvalidMac(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let p = parts.next().ok_or_else(err)?;
            if p.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

/// An interface address with its prefix length, e.g. `10.0.0.1/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Cidr {
    type Err = NetlinkError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| NetlinkError::InvalidCidr {
            input: s.to_string(),
            reason,
        };
        let (a, p) = s.split_once('/').ok_or_else(|| bad("missing /PREFIX"))?;
        let addr: IpAddr = a.parse().map_err(|_| bad("not an IP address"))?;
        let prefix_len: u8 = p.parse().map_err(|_| bad("prefix is not a number"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(bad("prefix too long for the address family"));
        }
        Ok(Cidr { addr, prefix_len })
    }
}

/// Write one value to an existing sysctl file (never created, never
/// through a symlink). The calling thread's network namespace decides which
/// interface it is.
fn write_sysctl(path: &str, value: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.write_all(value.as_bytes())
}

/// What kind of link it is, as far as megaplan cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkKind {
    Bridge,
    /// A tun-driver device in tap (Ethernet) mode.
    Tap,
    /// A tun-driver device in tun (IP) mode.
    Tun,
    Veth,
    /// Anything else; the kernel's kind string, empty for a kind-less link (lo, eth0).
    Other(String),
}

impl fmt::Display for LinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkKind::Bridge => f.write_str("bridge"),
            LinkKind::Tap => f.write_str("tap"),
            LinkKind::Tun => f.write_str("tun"),
            LinkKind::Veth => f.write_str("veth"),
            LinkKind::Other(k) if k.is_empty() => f.write_str("device"),
            LinkKind::Other(k) => f.write_str(k),
        }
    }
}

/// One link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub name: String,
    pub index: u32,
    pub kind: LinkKind,
    pub alias: Option<String>,
    pub mac: Option<MacAddr>,
    /// The bridge this link is a port of.
    pub controller_index: Option<u32>,
    pub controller_name: Option<String>,
    /// IFF_UP: administratively up.
    pub admin_up: bool,
    /// IFF_LOWER_UP: carrier (a tap has carrier only while a process holds it open).
    pub carrier: bool,
    /// Operational state UP.
    pub oper_up: bool,
    /// Every address on the link, IPv6 link-local included.
    pub addresses: Vec<Cidr>,
}

/// A handle on rtnetlink in the current network namespace.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Open a netlink socket and spawn its connection task on the current tokio
    /// runtime (must be called inside one). The socket belongs to the network
    /// namespace of the calling thread.
    pub fn connect() -> Result<Self, NetlinkError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| NetlinkError::NoRuntime)?;
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        rt.spawn(conn);
        Ok(Self { handle })
    }

    /// The underlying rtnetlink handle (the tc driver shares it).
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Every link in the namespace.
    pub async fn list_links(&self) -> Result<Vec<LinkInfo>, NetlinkError> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::request("dump links", "", e))?;
        let mut addrs = self.addresses(None).await?;
        let names: HashMap<u32, String> = msgs
            .iter()
            .filter_map(|m| link_name(m).map(|n| (m.header.index, n)))
            .collect();
        Ok(msgs
            .into_iter()
            .map(|m| {
                let mut info = parse_link(m);
                info.addresses = addrs.remove(&info.index).unwrap_or_default();
                info.controller_name = info.controller_index.and_then(|i| names.get(&i).cloned());
                info
            })
            .collect())
    }

    /// Every link whose alias starts with `prefix` (e.g. `megaplan:tap-mirror:`),
    /// sorted by name. This is how refresh finds our objects.
    pub async fn list_marked(&self, prefix: &str) -> Result<Vec<LinkInfo>, NetlinkError> {
        let mut links: Vec<LinkInfo> = self
            .list_links()
            .await?
            .into_iter()
            .filter(|l| l.alias.as_deref().is_some_and(|a| a.starts_with(prefix)))
            .collect();
        links.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(links)
    }

    /// One link by name, marked or not; `None` if there is none.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        validate_ifname(name)?;
        let Some(msg) = self.get_link_msg(name).await? else {
            return Ok(None);
        };
        let mut info = parse_link(msg);
        info.addresses = self
            .addresses(Some(info.index))
            .await?
            .remove(&info.index)
            .unwrap_or_default();
        if let Some(ci) = info.controller_index {
            info.controller_name = self.name_of_index(ci).await?;
        }
        Ok(Some(info))
    }

    /// The name of the link with this index, if there is one.
    pub async fn name_of_index(&self, index: u32) -> Result<Option<String>, NetlinkError> {
        let res: Result<Vec<LinkMessage>, _> = self
            .handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_collect()
            .await;
        match res {
            Ok(msgs) => Ok(msgs.iter().find_map(link_name)),
            Err(e) if is_errno(&e, ENODEV) => Ok(None),
            Err(e) => Err(NetlinkError::request("get link", &index.to_string(), e)),
        }
    }

    /// The index of the link with this name.
    pub async fn index_of(&self, name: &str) -> Result<u32, NetlinkError> {
        validate_ifname(name)?;
        match self.get_link_msg(name).await? {
            Some(m) => Ok(m.header.index),
            None => Err(NetlinkError::NotFound(name.to_string())),
        }
    }

    /// Create a bridge carrying `alias` and bring it up. If a bridge of that
    /// name already carries exactly this alias, make sure it is up and return it;
    /// a link of that name without this alias is refused.
    pub async fn create_bridge(&self, name: &str, alias: &str) -> Result<LinkInfo, NetlinkError> {
        validate_ifname(name)?;
        validate_alias(alias)?;
        if let Some(existing) = self.link_by_name(name).await? {
            return self
                .converge_existing(existing, alias, LinkKind::Bridge, None, None)
                .await;
        }
        let msg = LinkBridge::new(name).alias(alias).build();
        match self.handle.link().add(msg).execute().await {
            Ok(()) => {}
            Err(e) if is_errno(&e, EEXIST) => {
                // Lost a race with someone creating the same name: judge what is there.
                let existing = self
                    .link_by_name(name)
                    .await?
                    .ok_or_else(|| NetlinkError::NotFound(name.to_string()))?;
                return self
                    .converge_existing(existing, alias, LinkKind::Bridge, None, None)
                    .await;
            }
            Err(e) => return Err(NetlinkError::request("create bridge", name, e)),
        }
        // We created it: from here on, undo on failure.
        let result = async {
            let info = self
                .link_by_name(name)
                .await?
                .ok_or_else(|| NetlinkError::NotFound(name.to_string()))?;
            if info.alias.as_deref() != Some(alias) {
                self.set_link(info.index, name, "set alias", |b| b.alias(alias))
                    .await?;
            }
            if !info.admin_up {
                self.set_link(info.index, name, "set up", |b| b.up())
                    .await?;
            }
            self.link_by_name(name)
                .await?
                .ok_or_else(|| NetlinkError::NotFound(name.to_string()))
        }
        .await;
        if result.is_err()
            && let Ok(Some(m)) = self.get_link_msg(name).await
        {
            let _ = self.handle.link().del(m.header.index).execute().await;
        }
        result
    }

    /// Create a persistent tap named `name` carrying `alias`, with MAC `mac`
    /// (the host side's MAC, see [`MacAddr::tap_for_guest`]; `None` lets the
    /// kernel choose), as a port of `bridge` (which must carry a megaplan
    /// marker), and bring it up.
    ///
    /// rtnetlink cannot create taps (EOPNOTSUPP), so this uses the tun ioctls
    /// (`TUNSETIFF` with `IFF_TAP|IFF_NO_PI|IFF_VNET_HDR`, then `TUNSETPERSIST`),
    /// sets the alias first, then the rest; if any step fails, the new tap is
    /// destroyed again. An existing tap with exactly this alias is brought to
    /// the requested MAC, bridge and up state; an unmarked one is refused.
    pub async fn create_tap(
        &self,
        name: &str,
        mac: Option<MacAddr>,
        alias: &str,
        bridge: Option<&str>,
    ) -> Result<LinkInfo, NetlinkError> {
        validate_ifname(name)?;
        validate_alias(alias)?;
        if let Some(b) = bridge {
            validate_ifname(b)?;
        }
        let bridge_index = match bridge {
            None => None,
            Some(b) => {
                let info = self
                    .link_by_name(b)
                    .await?
                    .ok_or_else(|| NetlinkError::NotFound(b.to_string()))?;
                if info.kind != LinkKind::Bridge {
                    return Err(NetlinkError::KindMismatch {
                        name: b.to_string(),
                        expected: LinkKind::Bridge,
                        found: info.kind,
                    });
                }
                if !info
                    .alias
                    .as_deref()
                    .is_some_and(|a| a.starts_with(MARKER_PREFIX))
                {
                    return Err(NetlinkError::NotOurs {
                        name: b.to_string(),
                        expected: format!("{MARKER_PREFIX}…"),
                        found: info.alias,
                    });
                }
                Some(info.index)
            }
        };
        if let Some(existing) = self.link_by_name(name).await? {
            return self
                .converge_existing(existing, alias, LinkKind::Tap, mac, bridge_index)
                .await;
        }
        let fd = match tun_create_persistent(name) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                // Someone created it between our look-up and the ioctl.
                let existing = self
                    .link_by_name(name)
                    .await?
                    .ok_or_else(|| NetlinkError::NotFound(name.to_string()))?;
                return self
                    .converge_existing(existing, alias, LinkKind::Tap, mac, bridge_index)
                    .await;
            }
            Err(source) => {
                return Err(NetlinkError::Tun {
                    op: "create (TUNSETIFF)",
                    name: name.to_string(),
                    source,
                });
            }
        };
        let result = async {
            let index = self.index_of(name).await?;
            // The marker first, so that even a crash right after leaves an object we own.
            self.set_link(index, name, "set alias", |b| b.alias(alias))
                .await?;
            self.set_link(index, name, "configure", |mut b| {
                if let Some(m) = mac {
                    b = b.address(m.0.to_vec());
                }
                if let Some(c) = bridge_index {
                    b = b.controller(c);
                }
                b.up()
            })
            .await
        }
        .await;
        if result.is_err() {
            // Not persistent any more: the tap disappears when the fd closes.
            // SAFETY: TUNSETPERSIST takes an integer argument by value.
            unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETPERSIST, 0 as libc::c_ulong) };
        }
        drop(fd);
        result?;
        self.link_by_name(name)
            .await?
            .ok_or_else(|| NetlinkError::NotFound(name.to_string()))
    }

    /// Add a host address (e.g. "10.0.0.254/24") to a link carrying
    /// `expected_alias`. Already present: Ok.
    pub async fn set_address(
        &self,
        name: &str,
        expected_alias: &str,
        cidr: &str,
    ) -> Result<(), NetlinkError> {
        validate_ifname(name)?;
        let cidr: Cidr = cidr.parse()?;
        let info = self.owned_link(name, expected_alias).await?;
        if info.addresses.contains(&cidr) {
            return Ok(());
        }
        match self
            .handle
            .address()
            .add(info.index, cidr.addr, cidr.prefix_len)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, EEXIST) => Ok(()),
            Err(e) => Err(NetlinkError::request("add address", name, e)),
        }
    }

    /// Remove a host address from a link carrying `expected_alias`. Returns
    /// whether it was there.
    pub async fn remove_address(
        &self,
        name: &str,
        expected_alias: &str,
        cidr: &str,
    ) -> Result<bool, NetlinkError> {
        validate_ifname(name)?;
        let cidr: Cidr = cidr.parse()?;
        let info = self.owned_link(name, expected_alias).await?;
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(info.index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::request("dump addresses", name, e))?;
        for m in msgs {
            if m.header.index == info.index && parse_address(&m) == Some(cidr) {
                return match self.handle.address().del(m).execute().await {
                    Ok(()) => Ok(true),
                    Err(e) if is_errno(&e, libc::EADDRNOTAVAIL) => Ok(false),
                    Err(e) => Err(NetlinkError::request("delete address", name, e)),
                };
            }
        }
        Ok(false)
    }

    /// Keep the host's other addresses out of reach through this interface
    /// (a link carrying `expected_alias`): it answers ARP only for its own
    /// addresses (`arp_ignore=1`), announces only its own as ARP source
    /// (`arp_announce=2`), and forwards nothing it receives (IPv4 and IPv6
    /// `forwarding=0`; writing the host-wide `ip_forward` later resets the
    /// IPv4 one, which the bridge's isolation filter covers). IPv6 settings
    /// are skipped when the host has no IPv6.
    pub async fn isolate(&self, name: &str, expected_alias: &str) -> Result<(), NetlinkError> {
        validate_ifname(name)?;
        self.owned_link(name, expected_alias).await?;
        for (path, value) in [
            (format!("/proc/sys/net/ipv4/conf/{name}/arp_ignore"), "1"),
            (format!("/proc/sys/net/ipv4/conf/{name}/arp_announce"), "2"),
            (format!("/proc/sys/net/ipv4/conf/{name}/forwarding"), "0"),
            (format!("/proc/sys/net/ipv6/conf/{name}/forwarding"), "0"),
        ] {
            if path.starts_with("/proc/sys/net/ipv6/")
                && !std::path::Path::new("/proc/sys/net/ipv6").exists()
            {
                continue;
            }
            write_sysctl(&path, value).map_err(|source| NetlinkError::Sysctl { path, source })?;
        }
        Ok(())
    }

    /// Delete a link, but only if its alias is exactly `expected_alias`.
    /// Returns false if there was no such link (already gone), an error if
    /// the link exists without that marker.
    pub async fn delete_link(
        &self,
        name: &str,
        expected_alias: &str,
    ) -> Result<bool, NetlinkError> {
        validate_ifname(name)?;
        validate_alias(expected_alias)?;
        let Some(msg) = self.get_link_msg(name).await? else {
            return Ok(false);
        };
        let info = parse_link(msg);
        if info.alias.as_deref() != Some(expected_alias) {
            return Err(NetlinkError::NotOurs {
                name: name.to_string(),
                expected: expected_alias.to_string(),
                found: info.alias,
            });
        }
        // By index: if the name was reused meanwhile, this fails instead of
        // deleting someone else's link.
        match self.handle.link().del(info.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if is_errno(&e, ENODEV) => Ok(false),
            Err(e) => Err(NetlinkError::request("delete link", name, e)),
        }
    }

    /// Bring a link carrying `expected_alias` up or down.
    pub async fn set_up(
        &self,
        name: &str,
        expected_alias: &str,
        up: bool,
    ) -> Result<(), NetlinkError> {
        let info = self.owned_link(name, expected_alias).await?;
        self.set_link(
            info.index,
            name,
            if up { "set up" } else { "set down" },
            |b| {
                if up { b.up() } else { b.down() }
            },
        )
        .await
    }

    // ---- internals ----

    async fn owned_link(&self, name: &str, expected_alias: &str) -> Result<LinkInfo, NetlinkError> {
        validate_alias(expected_alias)?;
        let info = self
            .link_by_name(name)
            .await?
            .ok_or_else(|| NetlinkError::NotFound(name.to_string()))?;
        if info.alias.as_deref() != Some(expected_alias) {
            return Err(NetlinkError::NotOurs {
                name: name.to_string(),
                expected: expected_alias.to_string(),
                found: info.alias,
            });
        }
        Ok(info)
    }

    /// An existing link of the name we want to create: ours (same alias, same
    /// kind) is brought to the wanted settings; anything else is refused.
    async fn converge_existing(
        &self,
        existing: LinkInfo,
        alias: &str,
        kind: LinkKind,
        mac: Option<MacAddr>,
        controller: Option<u32>,
    ) -> Result<LinkInfo, NetlinkError> {
        let name = existing.name.clone();
        if existing.alias.as_deref() != Some(alias) {
            return Err(NetlinkError::NotOurs {
                name,
                expected: alias.to_string(),
                found: existing.alias,
            });
        }
        if existing.kind != kind {
            return Err(NetlinkError::KindMismatch {
                name,
                expected: kind,
                found: existing.kind,
            });
        }
        let want_mac = mac.filter(|m| existing.mac != Some(*m));
        let want_ctl = controller.filter(|c| existing.controller_index != Some(*c));
        if want_mac.is_some() || want_ctl.is_some() || !existing.admin_up {
            self.set_link(existing.index, &name, "configure", |mut b| {
                if let Some(m) = want_mac {
                    b = b.address(m.0.to_vec());
                }
                if let Some(c) = want_ctl {
                    b = b.controller(c);
                }
                b.up()
            })
            .await?;
            return self
                .link_by_name(&name)
                .await?
                .ok_or(NetlinkError::NotFound(name));
        }
        Ok(existing)
    }

    async fn set_link(
        &self,
        index: u32,
        name: &str,
        op: &'static str,
        f: impl FnOnce(
            rtnetlink::LinkMessageBuilder<LinkUnspec>,
        ) -> rtnetlink::LinkMessageBuilder<LinkUnspec>,
    ) -> Result<(), NetlinkError> {
        let msg = f(LinkUnspec::new_with_index(index)).build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| NetlinkError::request(op, name, e))
    }

    async fn get_link_msg(&self, name: &str) -> Result<Option<LinkMessage>, NetlinkError> {
        let res: Result<Vec<LinkMessage>, _> = self
            .handle
            .link()
            .get()
            .match_name(name)
            .execute()
            .try_collect()
            .await;
        match res {
            Ok(mut msgs) => Ok(msgs.pop()),
            Err(e) if is_errno(&e, ENODEV) => Ok(None),
            Err(e) => Err(NetlinkError::request("get link", name, e)),
        }
    }

    async fn addresses(&self, index: Option<u32>) -> Result<HashMap<u32, Vec<Cidr>>, NetlinkError> {
        let mut req = self.handle.address().get();
        if let Some(i) = index {
            req = req.set_link_index_filter(i);
        }
        let msgs: Vec<AddressMessage> = req
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::request("dump addresses", "", e))?;
        let mut out: HashMap<u32, Vec<Cidr>> = HashMap::new();
        for m in msgs {
            if let Some(c) = parse_address(&m) {
                out.entry(m.header.index).or_default().push(c);
            }
        }
        Ok(out)
    }
}

pub(crate) fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

fn link_name(m: &LinkMessage) -> Option<String> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

fn parse_address(m: &AddressMessage) -> Option<Cidr> {
    let mut address = None;
    let mut local = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Address(ip) => address = Some(*ip),
            AddressAttribute::Local(ip) => local = Some(*ip),
            _ => {}
        }
    }
    // IFA_LOCAL is the interface's own address on IPv4 (IFA_ADDRESS may be a peer).
    local.or(address).map(|addr| Cidr {
        addr,
        prefix_len: m.header.prefix_len,
    })
}

fn parse_link(m: LinkMessage) -> LinkInfo {
    let flags = m.header.flags;
    let mut info = LinkInfo {
        name: String::new(),
        index: m.header.index,
        kind: LinkKind::Other(String::new()),
        alias: None,
        mac: None,
        controller_index: None,
        controller_name: None,
        admin_up: flags.contains(LinkFlags::Up),
        carrier: flags.contains(LinkFlags::LowerUp),
        oper_up: false,
        addresses: Vec::new(),
    };
    let mut tun_type: Option<u8> = None;
    for attr in m.attributes {
        match attr {
            LinkAttribute::IfName(n) => info.name = n,
            LinkAttribute::IfAlias(a) if !a.is_empty() => info.alias = Some(a),
            LinkAttribute::Address(a) if a.len() == 6 => {
                let mut b = [0u8; 6];
                b.copy_from_slice(&a);
                info.mac = Some(MacAddr(b));
            }
            LinkAttribute::Controller(c) if c != 0 => info.controller_index = Some(c),
            LinkAttribute::OperState(s) => {
                info.oper_up = s == State::Up || (s == State::Unknown && info.carrier)
            }
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        NlLinkInfo::Kind(k) => {
                            info.kind = match k {
                                InfoKind::Bridge => LinkKind::Bridge,
                                InfoKind::Tun => LinkKind::Tap,
                                InfoKind::Veth => LinkKind::Veth,
                                other => LinkKind::Other(other.to_string()),
                            }
                        }
                        NlLinkInfo::Data(InfoData::Tun(d)) => {
                            use netlink_packet_core::Nla;
                            for nla in d {
                                // IFLA_TUN_TYPE (1): IFF_TUN = 1, IFF_TAP = 2.
                                if nla.kind() == 1 && nla.value_len() == 1 {
                                    let mut v = [0u8; 1];
                                    nla.emit_value(&mut v);
                                    tun_type = Some(v[0]);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if info.kind == LinkKind::Tap && tun_type == Some(libc::IFF_TUN as u8) {
        info.kind = LinkKind::Tun;
    }
    info
}

/// Create a persistent tap through /dev/net/tun, in the calling thread's
/// network namespace. Returns the still-open fd; closing it leaves the tap.
fn tun_create_persistent(name: &str) -> std::io::Result<OwnedFd> {
    // SAFETY: plain open(2) of a constant NUL-terminated path.
    let raw = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: raw is a freshly opened fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // TUNSETIFF attaches to an existing tap of that name instead of failing, so
    // refuse if the name exists (callers check first; this narrows the race).
    // SAFETY: if_nametoindex reads a NUL-terminated name (ifr_name is zeroed past it).
    if unsafe { libc::if_nametoindex(ifr.ifr_name.as_ptr()) } != 0 {
        return Err(std::io::Error::from_raw_os_error(libc::EBUSY));
    }
    // SAFETY: TUNSETIFF reads and writes a struct ifreq we own.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: TUNSETPERSIST takes an integer argument by value.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifname_validation() {
        assert!(validate_ifname("mptabc0123456789").is_err()); // 16 bytes
        assert!(validate_ifname("mptabc012345678").is_ok()); // 15 bytes
        for bad in [
            "", ".", "..", "a/b", "a b", "a\tb", "a\nb", "a:b", "a\u{7f}b",
        ] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn connect_outside_a_runtime_is_an_error() {
        assert!(matches!(Netlink::connect(), Err(NetlinkError::NoRuntime)));
    }

    #[test]
    fn mac_and_cidr_parse() {
        let m: MacAddr = "02:00:0a:0B:ff:01".parse().unwrap();
        assert_eq!(m.to_string(), "02:00:0a:0b:ff:01");
        assert_eq!(MacAddr::tap_for_guest(m).to_string(), "fe:00:0a:0b:ff:01");
        assert!("02:00:0a:0b:ff".parse::<MacAddr>().is_err());
        assert!("02:00:0a:0b:ff:01:02".parse::<MacAddr>().is_err());
        let c: Cidr = "10.0.0.1/24".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.1/24");
        assert!("10.0.0.1/33".parse::<Cidr>().is_err());
        assert!("10.0.0.1".parse::<Cidr>().is_err());
        assert!("fd00::1/64".parse::<Cidr>().is_ok());
    }
}
