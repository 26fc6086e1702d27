//! A recorded resource, typed: what the delete phase (and a mirror's update)
//! reads of a record's attributes, decoded once with serde and checked.
//!
//! Invariants:
//! - A record's attribute map is untrusted (a state file, or a saved plan's
//!   `before`). Each field read here is decoded into its type; an interface
//!   name passes the check the state's loader applies
//!   ([`crate::state::ifname_problem`]) and a disk's file is a plain name
//!   ([`crate::validate::name_problem`]). A field of the wrong type or with a
//!   bad value is a [`RecordError`] that names the field, never a default.
//! - A field that old states, orphans or engines that choose their own names
//!   do not record is `None` (`#[serde(default)]`), never "".
//! - Keys not named here are ignored: a record holds every attribute of its
//!   spec, and only these reach an effect.

use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::state::Attrs;

/// An interface name megaplan could have made (checked on decode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfName(String);

impl IfName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<IfName> for String {
    fn from(n: IfName) -> String {
        n.0
    }
}

impl<'de> Deserialize<'de> for IfName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match crate::state::ifname_problem(&s) {
            None => Ok(IfName(s)),
            Some(p) => Err(de::Error::custom(format!("'{}': {p}", s.escape_debug()))),
        }
    }
}

/// A plain file name (no `/`, not `.` or `..`): a disk's file in `disks/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileName(String);

impl From<FileName> for String {
    fn from(n: FileName) -> String {
        n.0
    }
}

impl<'de> Deserialize<'de> for FileName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match crate::validate::name_problem(&s) {
            None => Ok(FileName(s)),
            Some(p) => Err(de::Error::custom(format!(
                "'{}' is not a plain file name: {p}",
                s.escape_debug()
            ))),
        }
    }
}

/// A network's record: its bridge. An orphan link's record (made by the
/// planner from what refresh saw) carries the link's `name` instead.
#[derive(Debug, Deserialize)]
pub struct RecordedNetwork {
    #[serde(default)]
    bridge: Option<IfName>,
    #[serde(default)]
    name: Option<IfName>,
    /// The interface an engine made for the host on this network, as it
    /// recorded it (minimega's host tap, a computed attribute).
    #[serde(default)]
    pub host_tap: Option<IfName>,
}

impl RecordedNetwork {
    /// The bridge to delete: the recorded bridge, or an orphan's link name.
    pub fn bridge(&self) -> Option<IfName> {
        self.bridge.clone().or_else(|| self.name.clone())
    }
}

/// A tap's record (an orphan's too): its interface name, if one was chosen
/// before apply.
#[derive(Debug, Deserialize)]
pub struct RecordedTap {
    #[serde(default)]
    pub name: Option<IfName>,
}

/// A mirror's record: the taps it joins, if they were named before apply.
#[derive(Debug, Deserialize)]
pub struct RecordedMirror {
    #[serde(default)]
    pub source_tap: Option<IfName>,
    #[serde(default)]
    pub dest_tap: Option<IfName>,
}

/// A VM's record: whether it ran on snapshots (an orphan's record has none).
#[derive(Debug, Deserialize)]
pub struct RecordedVm {
    #[serde(default)]
    pub snapshot: Option<bool>,
}

/// A disk's record: its image's file in the state folder's `disks/`.
#[derive(Debug, Deserialize)]
pub struct RecordedDisk {
    pub file: FileName,
}

/// Why a record does not decode: the field (None: the record as a whole) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    pub field: Option<String>,
    pub why: String,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(k) => write!(f, "{k}: {}", self.why),
            None => f.write_str(&self.why),
        }
    }
}

impl std::error::Error for RecordError {}

impl de::Error for RecordError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        RecordError {
            field: None,
            why: msg.to_string(),
        }
    }

    fn missing_field(field: &'static str) -> Self {
        RecordError {
            field: Some(field.to_string()),
            why: "is missing".into(),
        }
    }
}

/// Decode a typed view of `attrs` (the error names the field).
pub fn decode<T: DeserializeOwned>(attrs: &Attrs) -> Result<T, RecordError> {
    T::deserialize(Record(attrs))
}

/// `attrs` as a serde map whose values' errors carry their key.
struct Record<'a>(&'a Attrs);

impl<'de> Deserializer<'de> for Record<'de> {
    type Error = RecordError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, RecordError> {
        visitor.visit_map(Fields {
            iter: Box::new(self.0.iter()),
            value: None,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

type Entries<'a> = Box<dyn Iterator<Item = (&'a String, &'a Value)> + 'a>;

struct Fields<'a> {
    iter: Entries<'a>,
    /// The entry whose key was just handed out.
    value: Option<(&'a str, &'a Value)>,
}

impl<'de> MapAccess<'de> for Fields<'de> {
    type Error = RecordError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, RecordError> {
        let Some((k, v)) = self.iter.next() else {
            return Ok(None);
        };
        self.value = Some((k, v));
        seed.deserialize(k.as_str().into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, RecordError> {
        let (k, v) = self.value.take().ok_or_else(|| RecordError {
            field: None,
            why: "a value without its key".into(),
        })?;
        seed.deserialize(v).map_err(|e| RecordError {
            field: Some(k.to_string()),
            why: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs(v: Value) -> Attrs {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_record_decodes_to_its_typed_view() {
        let n: RecordedNetwork = decode(&attrs(
            json!({"bridge": "mpb1", "host_address": "10.0.0.1/24"}),
        ))
        .unwrap();
        assert_eq!(n.bridge().unwrap().as_str(), "mpb1");
        // An orphan link's record names the link.
        let n: RecordedNetwork = decode(&attrs(json!({"name": "mpb2"}))).unwrap();
        assert_eq!(n.bridge().unwrap().as_str(), "mpb2");
        // An engine that names its own bridges records none.
        let n: RecordedNetwork = decode(&attrs(json!({}))).unwrap();
        assert!(n.bridge().is_none());
        let v: RecordedVm = decode(&attrs(json!({"snapshot": false, "memory": "64M"}))).unwrap();
        assert_eq!(v.snapshot, Some(false));
        let d: RecordedDisk = decode(&attrs(json!({"file": "data.qcow2"}))).unwrap();
        assert_eq!(String::from(d.file), "data.qcow2");
    }

    #[test]
    fn a_bad_field_is_refused_by_name() {
        let e = decode::<RecordedTap>(&attrs(json!({"name": "../etc"}))).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("name"));
        assert!(e.why.contains("not a valid interface name"), "{e}");
        let e =
            decode::<RecordedTap>(&attrs(json!({"name": "much-too-long-for-linux"}))).unwrap_err();
        assert!(e.why.contains("1 to 15 bytes"), "{e}");
        let e = decode::<RecordedMirror>(&attrs(json!({"source_tap": 7}))).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("source_tap"));
        assert!(e.why.contains("invalid type: integer `7`"), "{e}");
        let e = decode::<RecordedVm>(&attrs(json!({"snapshot": "no"}))).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("snapshot"));
        let e = decode::<RecordedDisk>(&attrs(json!({"file": "../../etc/passwd"}))).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("file"));
        let e = decode::<RecordedDisk>(&attrs(json!({}))).unwrap_err();
        assert_eq!(e.to_string(), "file: is missing");
    }
}
