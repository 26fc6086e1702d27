//! Tap mirrors with tc: a `clsact` qdisc on the source, and per mirrored side a
//! u32 match-all filter (`match u32 0 0`) whose action is `mirred egress mirror`
//! to the destination — the kernel-side equivalent of
//! `tc filter add dev SRC ingress|egress prio P protocol all u32 match u32 0 0
//!  action mirred egress mirror dev DST continue`.
//!
//! Choices worth knowing:
//! - The mirred action's control is `continue` (TC_ACT_UNSPEC), not `pipe`: with
//!   `pipe` the first matching filter ends classification and a second mirror on
//!   the same source would never fire.
//! - Each mirror (destination, side) gets its own filter priority, derived from a
//!   hash of the destination's name (`PRIO_BASE + 2*slot + side`, probing to the
//!   next free slot on collision), so several mirrors coexist on one source and
//!   are removed one by one. On clsact the ingress and egress u32 filters share
//!   their hash tables (a listing of one side shows the other side's filters of
//!   the same priority), so a priority is never reused across sides.
//! - Ownership: every action we install carries a 16-byte tc action cookie,
//!   `megaplan` + side byte + 7 bytes of a hash of the destination name.
//!   [`Tc::list_mirrors`] reports only those, and `remove_mirror` only removes
//!   those; the cookie also names the destination after that device is gone (the
//!   kernel then reports ifindex 0).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use netlink_packet_core::DefaultNla;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirror, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcBpfFlags, TcFilterBpf, TcFilterBpfOption, TcFilterU32,
    TcFilterU32Option, TcHandle, TcMessage, TcMirror, TcMirrorActionType, TcOption, TcU32Key,
    TcU32Selector, TcU32SelectorFlags,
};
use rtnetlink::Handle;

use super::netlink::{Cidr, Netlink, NetlinkError, validate_ifname};

/// First filter priority megaplan uses for mirrors.
pub const PRIO_BASE: u16 = 0x2000;
/// Number of (ingress, egress) priority pairs available to mirrors.
pub const PRIO_SLOTS: u16 = 2048;
/// Filter priorities of a bridge's isolation ([`Tc::isolate_bridge`]): IPv4
/// and IPv6, below the mirrors' range.
pub const PRIO_ISOLATE_V4: u16 = 0x1f00;
pub const PRIO_ISOLATE_V6: u16 = 0x1f01;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// How many taps' filters [`Tc::list_mirrors_of`] dumps at once.
pub const LIST_CONCURRENCY: usize = 16;

const COOKIE_MAGIC: &[u8; 8] = b"megaplan";
const ETH_P_ALL: u16 = 0x0003;
const CLSACT_PARENT: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0xfff1,
};
const CLSACT_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};

/// Errors of the mirror driver.
#[derive(Debug, thiserror::Error)]
pub enum TcError {
    #[error(transparent)]
    Link(#[from] NetlinkError),
    #[error("tc {op} on {ifname}: {source}")]
    Request {
        op: &'static str,
        ifname: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot mirror {0} into itself")]
    SelfMirror(String),
    #[error(
        "{ifname} has an '{kind}' qdisc at ffff: that is not clsact; \
         megaplan will not replace it"
    )]
    ForeignQdisc { ifname: String, kind: String },
    #[error("no free mirror priority left on {0}")]
    NoFreePriority(String),
}

impl TcError {
    fn request(op: &'static str, ifname: &str, e: rtnetlink::Error) -> Self {
        let source = match &e {
            rtnetlink::Error::NetlinkError(msg) if msg.raw_code() != 0 => msg.to_io(),
            _ => std::io::Error::other(e.to_string()),
        };
        Self::Request {
            op,
            ifname: ifname.to_string(),
            source,
        }
    }

    /// The errno of a failed kernel request, if that is what this is.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Request { source, .. } => source.raw_os_error(),
            Self::Link(e) => e.errno(),
            _ => None,
        }
    }
}

/// Which traffic of the source a mirror copies. Ingress is what the kernel
/// receives from the tap (frames the guest sends); egress is what the kernel
/// sends into the tap (frames the guest receives).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress,
    Egress,
    Both,
}

impl Direction {
    /// The single sides this direction covers.
    pub fn sides(self) -> &'static [Direction] {
        match self {
            Direction::Ingress => &[Direction::Ingress],
            Direction::Egress => &[Direction::Egress],
            Direction::Both => &[Direction::Ingress, Direction::Egress],
        }
    }

    fn parent(self) -> TcHandle {
        TcHandle {
            major: 0xffff,
            minor: match self {
                Direction::Egress => TcHandle::MIN_EGRESS,
                _ => TcHandle::MIN_INGRESS,
            },
        }
    }

    fn cookie_byte(self) -> u8 {
        match self {
            Direction::Egress => b'e',
            _ => b'i',
        }
    }
}

/// One mirror filter megaplan installed on a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorInfo {
    /// `Ingress` or `Egress` (a `Both` mirror is two filters).
    pub direction: Direction,
    /// The destination's current ifindex; `None` if the destination device is
    /// gone (the mirror is then dead until re-created).
    pub dst_ifindex: Option<u32>,
    /// The destination's name, if it still exists.
    pub dst_name: Option<String>,
    /// Filter priority (unique per mirror and side on this source).
    pub priority: u16,
    /// u32 filter handle (e.g. 0x80000800 = 800::800).
    pub handle: u32,
    /// The 7-byte destination-name hash from the cookie.
    dst_key: [u8; 7],
}

impl MirrorInfo {
    /// Whether this mirror's cookie names `dst_ifname` as its destination.
    pub fn is_for(&self, dst_ifname: &str) -> bool {
        self.dst_key == dst_key(dst_ifname)
    }
}

/// One filter seen in a dump (ours or not).
#[derive(Debug, Clone)]
struct RawFilter {
    side: Direction,
    priority: u16,
    protocol: u16,
    handle: u32,
    mirror: Option<MirrorInfo>,
}

/// The tc driver; shares the netlink connection of a [`Netlink`].
#[derive(Debug, Clone)]
pub struct Tc {
    nl: Netlink,
}

impl Tc {
    pub fn new(nl: &Netlink) -> Self {
        Self { nl: nl.clone() }
    }

    fn handle(&self) -> Handle {
        self.nl.handle().clone()
    }

    /// Mirror `src`'s traffic (the chosen sides) into `dst`. Idempotent: a side
    /// already mirrored to the current `dst` is left alone; a stale one (dst was
    /// re-created, so its ifindex changed) is replaced.
    pub async fn add_mirror(
        &self,
        src: &str,
        dst: &str,
        direction: Direction,
    ) -> Result<(), TcError> {
        validate_ifname(src)?;
        validate_ifname(dst)?;
        if src == dst {
            return Err(TcError::SelfMirror(src.to_string()));
        }
        let src_index = self.nl.index_of(src).await?;
        let dst_index = self.nl.index_of(dst).await?;
        self.ensure_clsact(src, src_index).await?;
        let filters = self.dump_filters(src, src_index).await?;
        let mut used: BTreeSet<u16> = filters.iter().map(|f| f.priority).collect();
        let key = dst_key(dst);
        for &side in direction.sides() {
            let mut present = false;
            for f in &filters {
                let Some(m) = &f.mirror else { continue };
                if m.direction != side || m.dst_key != key {
                    continue;
                }
                if m.dst_ifindex == Some(dst_index) && !present {
                    present = true;
                } else {
                    // Stale (dst re-created) or a duplicate: remove.
                    self.delete_filter(src, src_index, f).await?;
                }
            }
            if present {
                continue;
            }
            let prio = pick_priority(&used, dst, side)
                .ok_or_else(|| TcError::NoFreePriority(src.to_string()))?;
            used.insert(prio);
            self.add_filter(src, src_index, side, prio, dst, dst_index)
                .await?;
        }
        // Drop tps left empty by removed stale filters.
        self.remove_empty_tps(src, src_index).await?;
        Ok(())
    }

    /// The mirrors megaplan installed on `src`, sorted by priority. Empty if
    /// `src` has no clsact qdisc or does not exist.
    pub async fn list_mirrors(&self, src: &str) -> Result<Vec<MirrorInfo>, TcError> {
        validate_ifname(src)?;
        let Some(info) = self.nl.link_by_name(src).await? else {
            return Ok(Vec::new());
        };
        let mut all = self
            .list_mirrors_of(&[(src.to_string(), info.index)], &HashMap::new())
            .await?;
        Ok(all.remove(src).unwrap_or_default())
    }

    /// The mirrors megaplan installed on each of `taps` (name, ifindex), by tap
    /// name, each sorted by priority; taps without mirrors are left out.
    /// Refresh's batched form of [`Tc::list_mirrors`]: one qdisc dump for the
    /// whole host instead of one per tap, then the filter dumps of the taps
    /// that have a clsact qdisc, up to [`LIST_CONCURRENCY`] at once on the
    /// shared connection. `names` maps ifindexes to names for destinations
    /// (the caller's link listing); others are looked up.
    pub async fn list_mirrors_of(
        &self,
        taps: &[(String, u32)],
        names: &HashMap<u32, String>,
    ) -> Result<BTreeMap<String, Vec<MirrorInfo>>, TcError> {
        use futures::{StreamExt, TryStreamExt};
        if taps.is_empty() {
            return Ok(BTreeMap::new());
        }
        let with_clsact = self.clsact_indices().await?;
        let listed: Vec<(String, Vec<MirrorInfo>)> =
            futures::stream::iter(taps.iter().filter(|(_, i)| with_clsact.contains(i)))
                .map(|(name, index)| async move {
                    let raw = self.dump_filters_raw(name, *index).await?;
                    Ok::<_, TcError>((
                        name.clone(),
                        raw.into_iter().filter_map(|f| f.mirror).collect(),
                    ))
                })
                .buffer_unordered(LIST_CONCURRENCY)
                .try_collect()
                .await?;
        let mut out = BTreeMap::new();
        for (name, mut mirrors) in listed {
            if mirrors.is_empty() {
                continue;
            }
            for m in &mut mirrors {
                if let Some(i) = m.dst_ifindex {
                    m.dst_name = match names.get(&i) {
                        Some(n) => Some(n.clone()),
                        None => self.nl.name_of_index(i).await?,
                    };
                }
            }
            mirrors.sort_by_key(|m| (m.priority, m.handle));
            out.insert(name, mirrors);
        }
        Ok(out)
    }

    /// Remove the mirrors of `src` into `dst` on the chosen sides (matched by
    /// our cookie, so this works after `dst` is gone). Removes the clsact qdisc
    /// when no filter at all is left on it. Returns how many filters were
    /// removed; a missing `src` is 0, not an error.
    pub async fn remove_mirror(
        &self,
        src: &str,
        dst: &str,
        direction: Direction,
    ) -> Result<usize, TcError> {
        validate_ifname(src)?;
        validate_ifname(dst)?;
        let Some(info) = self.nl.link_by_name(src).await? else {
            return Ok(0);
        };
        let key = dst_key(dst);
        let sides = direction.sides();
        let mut removed = 0;
        for f in self.dump_filters(src, info.index).await? {
            let Some(m) = &f.mirror else { continue };
            if m.dst_key == key && sides.contains(&m.direction) {
                self.delete_filter(src, info.index, &f).await?;
                removed += 1;
            }
        }
        self.remove_empty_tps(src, info.index).await?;
        if self.dump_filters(src, info.index).await?.is_empty() {
            self.delete_clsact(src, info.index).await?;
        }
        Ok(removed)
    }

    /// Remove every mirror of `src` by deleting its clsact qdisc (and with it
    /// every filter on it). The caller must own `src` (checked its marker).
    /// Returns whether there was a clsact qdisc.
    pub async fn clear_mirrors(&self, src: &str) -> Result<bool, TcError> {
        validate_ifname(src)?;
        let Some(info) = self.nl.link_by_name(src).await? else {
            return Ok(false);
        };
        self.delete_clsact(src, info.index).await
    }

    /// Keep what arrives at the host through bridge `bridge` from reaching
    /// any host address but its own: on the bridge's clsact ingress (what
    /// its ports hand up to the host, not what it forwards between them), an
    /// IPv4 packet passes only to one of `own`, its subnet broadcast,
    /// 255.255.255.255 or a multicast group, and an IPv6 packet only to one
    /// of `own`, a link-local or a multicast address; any other is dropped.
    /// So a guest cannot reach another network's host address (or any other
    /// address of the host) through this bridge, nor be routed anywhere by
    /// the host. The filters are classic BPF programs in direct-action mode
    /// (this kernel has no gact), at [`PRIO_ISOLATE_V4`]/[`PRIO_ISOLATE_V6`],
    /// replaced on each call. The caller must own `bridge`.
    pub async fn isolate_bridge(&self, bridge: &str, own: &[Cidr]) -> Result<(), TcError> {
        validate_ifname(bridge)?;
        let index = self.nl.index_of(bridge).await?;
        self.ensure_clsact(bridge, index).await?;
        for f in self.dump_filters(bridge, index).await? {
            if matches!(f.priority, PRIO_ISOLATE_V4 | PRIO_ISOLATE_V6) {
                let whole = RawFilter { handle: 0, ..f };
                self.delete_filter(bridge, index, &whole).await?;
            }
        }
        for (prio, proto, prog) in [
            (PRIO_ISOLATE_V4, ETH_P_IP, isolation_program_v4(own)),
            (PRIO_ISOLATE_V6, ETH_P_IPV6, isolation_program_v6(own)),
        ] {
            self.add_bpf_filter(bridge, index, prio, proto, &prog)
                .await?;
        }
        Ok(())
    }

    /// Whether `ifname` has a clsact qdisc.
    pub async fn has_clsact(&self, ifname: &str) -> Result<bool, TcError> {
        validate_ifname(ifname)?;
        let Some(info) = self.nl.link_by_name(ifname).await? else {
            return Ok(false);
        };
        Ok(self
            .ingress_qdisc_kind(ifname, info.index)
            .await?
            .as_deref()
            == Some("clsact"))
    }

    // ---- internals ----

    async fn request(
        &self,
        op: &'static str,
        ifname: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<TcMessage>, TcError> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = flags;
        let mut handle = self.handle();
        let mut stream = handle
            .request(req)
            .map_err(|e| TcError::request(op, ifname, e))?;
        let mut out = Vec::new();
        use futures::StreamExt;
        while let Some(msg) = stream.next().await {
            match msg.payload {
                NetlinkPayload::Error(err) if err.raw_code() != 0 => {
                    return Err(TcError::request(
                        op,
                        ifname,
                        rtnetlink::Error::NetlinkError(err),
                    ));
                }
                NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::NewQueueDiscipline(m)
                    | RouteNetlinkMessage::NewTrafficFilter(m),
                ) => out.push(m),
                _ => {}
            }
        }
        Ok(out)
    }

    /// Kind of the qdisc at ffff: (clsact or ingress), if any.
    async fn ingress_qdisc_kind(
        &self,
        ifname: &str,
        index: u32,
    ) -> Result<Option<String>, TcError> {
        Ok(self
            .ingress_qdiscs(index as i32, ifname)
            .await?
            .remove(&(index as i32)))
    }

    /// The ifindexes of every device on the host with a clsact qdisc.
    async fn clsact_indices(&self) -> Result<BTreeSet<u32>, TcError> {
        Ok(self
            .ingress_qdiscs(0, "*")
            .await?
            .into_iter()
            .filter(|(_, kind)| kind == "clsact")
            .map(|(i, _)| i as u32)
            .collect())
    }

    /// The kind of the qdisc at the ingress/clsact parent, by ifindex. A dump
    /// of every device's qdiscs, filtered here: a non-dump GET ignores
    /// tcm_parent and answers with the root qdisc. `index` only goes into
    /// the request header (0 = any); `what` names the device in errors.
    async fn ingress_qdiscs(
        &self,
        index: i32,
        what: &str,
    ) -> Result<HashMap<i32, String>, TcError> {
        let msg = TcMessage::with_index(index);
        let qdiscs = self
            .request(
                "dump qdiscs",
                what,
                RouteNetlinkMessage::GetQueueDiscipline(msg),
                NLM_F_REQUEST | NLM_F_DUMP,
            )
            .await?;
        Ok(qdiscs
            .into_iter()
            .filter(|q| q.header.parent == CLSACT_PARENT)
            .filter_map(|q| {
                let index = q.header.index;
                q.attributes.into_iter().find_map(|a| match a {
                    TcAttribute::Kind(k) => Some((index, k)),
                    _ => None,
                })
            })
            .collect())
    }

    async fn ensure_clsact(&self, ifname: &str, index: u32) -> Result<(), TcError> {
        match self.ingress_qdisc_kind(ifname, index).await?.as_deref() {
            Some("clsact") => return Ok(()),
            Some(other) => {
                return Err(TcError::ForeignQdisc {
                    ifname: ifname.to_string(),
                    kind: other.to_string(),
                });
            }
            None => {}
        }
        // rtnetlink's qdisc builder only knows `ingress`: build clsact by hand.
        let mut msg = TcMessage::with_index(index as i32);
        msg.header.parent = CLSACT_PARENT;
        msg.header.handle = CLSACT_HANDLE;
        msg.attributes.push(TcAttribute::Kind("clsact".to_string()));
        let res = self
            .request(
                "add clsact qdisc",
                ifname,
                RouteNetlinkMessage::NewQueueDiscipline(msg),
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            )
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == Some(libc::EEXIST) => {
                // Raced with another creator: accept only a clsact.
                match self.ingress_qdisc_kind(ifname, index).await?.as_deref() {
                    Some("clsact") => Ok(()),
                    other => Err(TcError::ForeignQdisc {
                        ifname: ifname.to_string(),
                        kind: other.unwrap_or("?").to_string(),
                    }),
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn delete_clsact(&self, ifname: &str, index: u32) -> Result<bool, TcError> {
        if self.ingress_qdisc_kind(ifname, index).await?.as_deref() != Some("clsact") {
            return Ok(false);
        }
        let mut msg = TcMessage::with_index(index as i32);
        msg.header.parent = CLSACT_PARENT;
        msg.header.handle = CLSACT_HANDLE;
        msg.attributes.push(TcAttribute::Kind("clsact".to_string()));
        match self
            .request(
                "delete clsact qdisc",
                ifname,
                RouteNetlinkMessage::DelQueueDiscipline(msg),
                NLM_F_REQUEST | NLM_F_ACK,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.errno(), Some(libc::ENOENT) | Some(libc::EINVAL)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every filter on both clsact sides (nothing if there is no clsact).
    async fn dump_filters(&self, ifname: &str, index: u32) -> Result<Vec<RawFilter>, TcError> {
        if self.ingress_qdisc_kind(ifname, index).await?.as_deref() != Some("clsact") {
            return Ok(Vec::new());
        }
        self.dump_filters_raw(ifname, index).await
    }

    /// The filters on both sides of a device known to have a clsact qdisc.
    async fn dump_filters_raw(&self, ifname: &str, index: u32) -> Result<Vec<RawFilter>, TcError> {
        let mut out: Vec<RawFilter> = Vec::new();
        for side in [Direction::Ingress, Direction::Egress] {
            let mut msg = TcMessage::with_index(index as i32);
            msg.header.parent = side.parent();
            let msgs = self
                .request(
                    "dump filters",
                    ifname,
                    RouteNetlinkMessage::GetTrafficFilter(msg),
                    NLM_F_REQUEST | NLM_F_DUMP,
                )
                .await?;
            for m in msgs {
                let f = parse_filter(side, m);
                // The two sides share u32 hash tables: the same filter can show
                // up in both listings. Keep the first sighting; an owned
                // filter's side comes from its cookie.
                if !out
                    .iter()
                    .any(|o| o.priority == f.priority && o.handle == f.handle)
                {
                    out.push(f);
                }
            }
        }
        Ok(out)
    }

    async fn add_filter(
        &self,
        ifname: &str,
        index: u32,
        side: Direction,
        prio: u16,
        dst: &str,
        dst_index: u32,
    ) -> Result<(), TcError> {
        let mut msg = TcMessage::with_index(index as i32);
        msg.header.parent = side.parent();
        // info = priority << 16 | protocol (network byte order).
        msg.header.info = u32::from(TcHandle {
            major: prio,
            minor: ETH_P_ALL.to_be(),
        });

        let mut sel = TcU32Selector::default();
        sel.flags = TcU32SelectorFlags::Terminal;
        sel.nkeys = 1;
        sel.keys = vec![TcU32Key::default()]; // match u32 0 0 at 0

        let mut mirror = TcMirror::default();
        mirror.generic.action = TcActionType::Unspec; // "continue": later mirrors still run
        mirror.eaction = TcMirrorActionType::EgressMirror;
        mirror.ifindex = dst_index;

        let mut action = TcAction::default();
        action.attributes = vec![
            TcActionAttribute::Kind(TcActionMirror::KIND.to_string()),
            TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
                mirror,
            ))]),
            TcActionAttribute::Cookie(cookie(side, dst).to_vec()),
        ];
        msg.attributes = vec![
            TcAttribute::Kind(TcFilterU32::KIND.to_string()),
            TcAttribute::Options(vec![
                TcOption::U32(TcFilterU32Option::Selector(sel)),
                TcOption::U32(TcFilterU32Option::Action(vec![action])),
            ]),
        ];
        self.request(
            "add mirror filter",
            ifname,
            RouteNetlinkMessage::NewTrafficFilter(msg),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .await?;
        Ok(())
    }

    /// A classic BPF filter in direct-action mode on the ingress side.
    async fn add_bpf_filter(
        &self,
        ifname: &str,
        index: u32,
        prio: u16,
        protocol: u16,
        prog: &[SockFilter],
    ) -> Result<(), TcError> {
        const TCA_BPF_OPS_LEN: u16 = 4;
        const TCA_BPF_OPS: u16 = 5;
        let mut msg = TcMessage::with_index(index as i32);
        msg.header.parent = Direction::Ingress.parent();
        msg.header.info = u32::from(TcHandle {
            major: prio,
            minor: protocol.to_be(),
        });
        let ops: Vec<u8> = prog.iter().flat_map(|i| i.to_bytes()).collect();
        let len = u16::try_from(prog.len()).expect("a short program");
        msg.attributes = vec![
            TcAttribute::Kind(TcFilterBpf::KIND.to_string()),
            TcAttribute::Options(vec![
                TcOption::Bpf(TcFilterBpfOption::Other(DefaultNla::new(
                    TCA_BPF_OPS_LEN,
                    len.to_ne_bytes().to_vec(),
                ))),
                TcOption::Bpf(TcFilterBpfOption::Other(DefaultNla::new(TCA_BPF_OPS, ops))),
                TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
            ]),
        ];
        self.request(
            "add isolation filter",
            ifname,
            RouteNetlinkMessage::NewTrafficFilter(msg),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .await?;
        Ok(())
    }

    /// Delete one filter (handle != 0) or a whole priority (handle 0).
    async fn delete_filter(&self, ifname: &str, index: u32, f: &RawFilter) -> Result<(), TcError> {
        let mut msg = TcMessage::with_index(index as i32);
        msg.header.parent = f.side.parent();
        msg.header.handle = f.handle.into();
        msg.header.info = u32::from(TcHandle {
            major: f.priority,
            minor: f.protocol,
        });
        match self
            .request(
                "delete filter",
                ifname,
                RouteNetlinkMessage::DelTrafficFilter(msg),
                NLM_F_REQUEST | NLM_F_ACK,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.errno(), Some(libc::ENOENT) | Some(libc::EINVAL)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deleting a u32 filter leaves its priority's (now empty) filter instance
    /// behind when the other clsact side still uses the shared hash tables:
    /// delete our priorities that have no filter node left.
    async fn remove_empty_tps(&self, ifname: &str, index: u32) -> Result<(), TcError> {
        let filters = self.dump_filters(ifname, index).await?;
        let in_range = |p: u16| (PRIO_BASE..PRIO_BASE + 2 * PRIO_SLOTS).contains(&p);
        let prios: BTreeSet<(u16, u16)> = filters
            .iter()
            .filter(|f| in_range(f.priority))
            .map(|f| (f.priority, f.protocol))
            .collect();
        for (prio, protocol) in prios {
            // A u32 node handle has a non-zero node id (low 12 bits); a hash
            // table entry (e.g. 800:) does not.
            let has_node = filters
                .iter()
                .any(|f| f.priority == prio && f.handle & 0xfff != 0);
            if has_node {
                continue;
            }
            let side = if (prio - PRIO_BASE).is_multiple_of(2) {
                Direction::Ingress
            } else {
                Direction::Egress
            };
            let whole = RawFilter {
                side,
                priority: prio,
                protocol,
                handle: 0,
                mirror: None,
            };
            self.delete_filter(ifname, index, &whole).await?;
        }
        Ok(())
    }
}

fn parse_filter(side: Direction, m: TcMessage) -> RawFilter {
    let info = TcHandle::from(m.header.info);
    let mut f = RawFilter {
        side,
        priority: info.major,
        protocol: info.minor,
        handle: m.header.handle.into(),
        mirror: None,
    };
    let mut is_u32 = false;
    for attr in m.attributes {
        match attr {
            TcAttribute::Kind(k) => is_u32 = k == TcFilterU32::KIND,
            TcAttribute::Options(opts) if is_u32 => {
                for opt in opts {
                    let TcOption::U32(TcFilterU32Option::Action(actions)) = opt else {
                        continue;
                    };
                    for a in actions {
                        if let Some(mi) = parse_mirror_action(&a, f.priority, f.handle) {
                            f.side = mi.direction;
                            f.mirror = Some(mi);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    f
}

fn parse_mirror_action(a: &TcAction, priority: u16, handle: u32) -> Option<MirrorInfo> {
    let mut is_mirred = false;
    let mut parms: Option<&TcMirror> = None;
    let mut cookie: Option<&[u8]> = None;
    for attr in &a.attributes {
        match attr {
            TcActionAttribute::Kind(k) => is_mirred = k == TcActionMirror::KIND,
            TcActionAttribute::Options(opts) => {
                for o in opts {
                    if let TcActionOption::Mirror(TcActionMirrorOption::Parms(p)) = o {
                        parms = Some(p);
                    }
                }
            }
            TcActionAttribute::Cookie(c) => cookie = Some(c),
            _ => {}
        }
    }
    let (parms, cookie) = (parms?, cookie?);
    if !is_mirred || cookie.len() != 16 || &cookie[..8] != COOKIE_MAGIC {
        return None;
    }
    let direction = match cookie[8] {
        b'i' => Direction::Ingress,
        b'e' => Direction::Egress,
        _ => return None,
    };
    let mut key = [0u8; 7];
    key.copy_from_slice(&cookie[9..16]);
    Some(MirrorInfo {
        direction,
        dst_ifindex: (parms.ifindex != 0).then_some(parms.ifindex),
        dst_name: None,
        priority,
        handle,
        dst_key: key,
    })
}

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SockFilter {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

impl SockFilter {
    fn to_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..2].copy_from_slice(&self.code.to_ne_bytes());
        b[2] = self.jt;
        b[3] = self.jf;
        b[4..].copy_from_slice(&self.k.to_ne_bytes());
        b
    }
}

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_AND_K: u16 = 0x54;
const BPF_RET_K: u16 = 0x06;
/// Classic BPF loads relative to the network header (`SKF_NET_OFF`).
const SKF_NET_OFF: i32 = -0x10_0000;
const TC_ACT_SHOT: u32 = 2;
/// `TC_ACT_UNSPEC` (-1): not decided here, the next filter runs.
const TC_ACT_UNSPEC: u32 = u32::MAX;

fn ld_net(offset: i32) -> SockFilter {
    SockFilter {
        code: BPF_LD_W_ABS,
        jt: 0,
        jf: 0,
        k: (SKF_NET_OFF + offset) as u32,
    }
}
fn and(k: u32) -> SockFilter {
    SockFilter {
        code: BPF_AND_K,
        jt: 0,
        jf: 0,
        k,
    }
}
fn jeq(k: u32, jt: u8, jf: u8) -> SockFilter {
    SockFilter {
        code: BPF_JEQ_K,
        jt,
        jf,
        k,
    }
}
fn ret(k: u32) -> SockFilter {
    SockFilter {
        code: BPF_RET_K,
        jt: 0,
        jf: 0,
        k,
    }
}

/// Ends a program whose "pass" jumps all aim past the end: `drop`, `pass`,
/// with each placeholder jump (jt == u8::MAX) pointed at `pass`.
fn finish(mut prog: Vec<SockFilter>) -> Vec<SockFilter> {
    prog.push(ret(TC_ACT_SHOT));
    let pass = prog.len();
    prog.push(ret(TC_ACT_UNSPEC));
    for (i, ins) in prog.iter_mut().enumerate() {
        if ins.code == BPF_JEQ_K && ins.jt == u8::MAX {
            ins.jt = u8::try_from(pass - i - 1).expect("a short program");
        }
    }
    prog
}

/// IPv4 destinations allowed: each own address and its subnet broadcast,
/// 255.255.255.255, 224.0.0.0/4.
fn isolation_program_v4(own: &[Cidr]) -> Vec<SockFilter> {
    let mut ok: Vec<u32> = vec![u32::MAX];
    for c in own {
        if let std::net::IpAddr::V4(a) = c.addr {
            let a = u32::from(a);
            ok.push(a);
            if c.prefix_len < 31 {
                ok.push(a | (u32::MAX >> c.prefix_len));
            }
        }
    }
    let mut prog = vec![ld_net(16)];
    prog.extend(ok.iter().map(|&v| jeq(v, u8::MAX, 0)));
    prog.push(and(0xf000_0000));
    prog.push(jeq(0xe000_0000, u8::MAX, 0));
    finish(prog)
}

/// IPv6 destinations allowed: each own address, fe80::/10, ff00::/8.
fn isolation_program_v6(own: &[Cidr]) -> Vec<SockFilter> {
    let mut prog = vec![
        ld_net(24),
        and(0xffc0_0000),
        jeq(0xfe80_0000, u8::MAX, 0),
        ld_net(24),
        and(0xff00_0000),
        jeq(0xff00_0000, u8::MAX, 0),
    ];
    for c in own {
        if let std::net::IpAddr::V6(a) = c.addr {
            let o = a.octets();
            for w in 0..4 {
                let word = u32::from_be_bytes(o[4 * w..4 * w + 4].try_into().expect("4 bytes"));
                prog.push(ld_net(24 + 4 * w as i32));
                // On a mismatch, skip the rest of this address's 8 instructions.
                let last = w == 3;
                prog.push(jeq(word, if last { u8::MAX } else { 0 }, (6 - 2 * w) as u8));
            }
        }
    }
    finish(prog)
}

fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn dst_key(dst: &str) -> [u8; 7] {
    let mut k = [0u8; 7];
    k.copy_from_slice(&fnv1a64(dst.as_bytes()).to_be_bytes()[1..]);
    k
}

fn cookie(side: Direction, dst: &str) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[..8].copy_from_slice(COOKIE_MAGIC);
    c[8] = side.cookie_byte();
    c[9..].copy_from_slice(&dst_key(dst));
    c
}

/// The priority for (dst, side): its hashed slot, or the next free one.
fn pick_priority(used: &BTreeSet<u16>, dst: &str, side: Direction) -> Option<u16> {
    let start = (fnv1a64(dst.as_bytes()) % u64::from(PRIO_SLOTS)) as u16;
    let side_bit = u16::from(side == Direction::Egress);
    (0..PRIO_SLOTS)
        .map(|i| PRIO_BASE + 2 * ((start + i) % PRIO_SLOTS) + side_bit)
        .find(|p| !used.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_are_deterministic_and_distinct() {
        let used = BTreeSet::new();
        let a = pick_priority(&used, "mpt0", Direction::Ingress).unwrap();
        let b = pick_priority(&used, "mpt0", Direction::Egress).unwrap();
        assert_eq!(a, pick_priority(&used, "mpt0", Direction::Ingress).unwrap());
        assert_eq!(a + 1, b);
        assert!(a.is_multiple_of(2));
        let used: BTreeSet<u16> = [a].into();
        let c = pick_priority(&used, "mpt0", Direction::Ingress).unwrap();
        assert_ne!(c, a);
        assert!(c.is_multiple_of(2));
        assert_eq!(b, pick_priority(&used, "mpt0", Direction::Egress).unwrap());
    }

    /// Runs a program of the instructions the isolation programs use on a
    /// packet given from its network header.
    fn run(prog: &[SockFilter], net: &[u8]) -> u32 {
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                BPF_LD_W_ABS => {
                    let off = (i.k as i32 - SKF_NET_OFF) as usize;
                    a = u32::from_be_bytes(net[off..off + 4].try_into().unwrap());
                }
                BPF_AND_K => a &= i.k,
                BPF_JEQ_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
                BPF_RET_K => return i.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    fn v4_to(dst: &str) -> Vec<u8> {
        let mut h = vec![0x45; 20];
        h[16..20].copy_from_slice(&dst.parse::<std::net::Ipv4Addr>().unwrap().octets());
        h
    }

    fn v6_to(dst: &str) -> Vec<u8> {
        let mut h = vec![0x60; 40];
        h[24..40].copy_from_slice(&dst.parse::<std::net::Ipv6Addr>().unwrap().octets());
        h
    }

    #[test]
    fn isolation_passes_only_own_broadcast_and_multicast() {
        let own: Vec<Cidr> = vec![
            "10.0.0.254/24".parse().unwrap(),
            "fd00::fe/64".parse().unwrap(),
        ];
        let v4 = isolation_program_v4(&own);
        for ok in ["10.0.0.254", "10.0.0.255", "255.255.255.255", "224.0.0.251"] {
            assert_eq!(run(&v4, &v4_to(ok)), TC_ACT_UNSPEC, "{ok}");
        }
        for no in ["10.0.1.254", "10.0.0.1", "192.168.1.1", "10.0.0.253"] {
            assert_eq!(run(&v4, &v4_to(no)), TC_ACT_SHOT, "{no}");
        }
        let v6 = isolation_program_v6(&own);
        for ok in ["fd00::fe", "fe80::1", "febf::1", "ff02::1:ff00:fe"] {
            assert_eq!(run(&v6, &v6_to(ok)), TC_ACT_UNSPEC, "{ok}");
        }
        for no in [
            "fd00::fd",
            "fd00:0:0:1::fe",
            "fd01::fe",
            "2001:db8::1",
            "fec0::1",
        ] {
            assert_eq!(run(&v6, &v6_to(no)), TC_ACT_SHOT, "{no}");
        }
        // No host address: only broadcast and multicast.
        let bare = isolation_program_v4(&[]);
        assert_eq!(run(&bare, &v4_to("10.0.0.254")), TC_ACT_SHOT);
        assert_eq!(run(&bare, &v4_to("255.255.255.255")), TC_ACT_UNSPEC);
    }

    #[test]
    fn cookie_round_trip() {
        let c = cookie(Direction::Egress, "mptdst");
        let mut mirror = TcMirror::default();
        mirror.ifindex = 7;
        let mut a = TcAction::default();
        a.attributes = vec![
            TcActionAttribute::Kind("mirred".into()),
            TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
                mirror,
            ))]),
            TcActionAttribute::Cookie(c.to_vec()),
        ];
        let m = parse_mirror_action(&a, 9, 0x8000_0800).unwrap();
        assert_eq!(m.direction, Direction::Egress);
        assert_eq!(m.dst_ifindex, Some(7));
        assert!(m.is_for("mptdst"));
        assert!(!m.is_for("mptother"));
    }
}
