//! Where things live: object names and the image geometry.
//!
//! Names (inside one pool/namespace):
//! - `rbd_row_directory`: omap `name.<image>` → image id (for `ls`).
//! - `rbd_row_id.<image name>`: the image id; created exclusively, so two
//!   clients can never create the same name.
//! - `rbd_row_header.<id>`: the header record (payload); omap `touch.<epoch>.<obj>`
//!   keys naming the data objects of the open epoch, and `meta.<key>` image-meta.
//! - `rbd_row_epoch.<id>.<epoch>`: the sealed record of one epoch (its deltas).
//! - `rbd_row_ckpt.<id>.<epoch>`: the newest checkpoint of open epoch `epoch`
//!   (its delta as of a registration generation), so that open lists only the
//!   objects registered since (`checkpoint.rs`).
//! - `rbd_row_data.<id>.<object>.<epoch>`: grains of logical object `object`
//!   written in `epoch`, each at its natural offset; omap `<grain>` → `D` | `Z`.
//! - `rbd_row_children.<id>`: omap `<snap id>.<child id>` for clones of a snapshot.

use crate::error::{Error, Result};
use crate::ids::{Epoch, ImageId, ObjectNo, SnapId};

/// The pool-wide image directory object.
pub const DIRECTORY: &str = "rbd_row_directory";
/// Lock name on the header object held by the image owner.
pub const OWNER_LOCK: &str = "rbd_row_owner";

/// Object holding the id of the image called `name`.
pub fn id_object(name: &str) -> String {
    format!("rbd_row_id.{name}")
}
/// The header object of an image.
pub fn header_object(id: &ImageId) -> String {
    format!("rbd_row_header.{id}")
}
/// The sealed record of one epoch.
pub fn epoch_object(id: &ImageId, e: Epoch) -> String {
    format!("rbd_row_epoch.{id}.{:016x}", e.0)
}
/// The head checkpoint of open epoch `e`.
pub fn ckpt_object(id: &ImageId, e: Epoch) -> String {
    format!("rbd_row_ckpt.{id}.{:016x}", e.0)
}
/// Prefix of every checkpoint object of an image.
pub fn ckpt_prefix(id: &ImageId) -> String {
    format!("rbd_row_ckpt.{id}.")
}
/// Prefix of every data object of an image.
pub fn data_prefix(id: &ImageId) -> String {
    format!("rbd_row_data.{id}.")
}
/// The data object for logical object `o` in epoch `e`.
pub fn data_object(id: &ImageId, o: ObjectNo, e: Epoch) -> String {
    format!("rbd_row_data.{id}.{:016x}.{:016x}", o.0, e.0)
}
/// Clone registry of an image's snapshots.
pub fn children_object(id: &ImageId) -> String {
    format!("rbd_row_children.{id}")
}
/// Key in the parent's children registry for clone `child` of snapshot `snap`.
pub fn children_key(snap: SnapId, child: &ImageId) -> String {
    format!("{:016x}.{child}", snap.0)
}
/// Prefix of the children registry keys of snapshot `snap`.
pub fn children_prefix(snap: SnapId) -> String {
    format!("{:016x}.", snap.0)
}
/// The (snapshot, child) a children registry key names.
pub fn parse_children_key(key: &str) -> Result<(SnapId, ImageId)> {
    let bad = || Error::corrupt(format!("bad children key {key:?}"));
    let (s, c) = key.split_once('.').ok_or_else(bad)?;
    let snap = u64::from_str_radix(s, 16).map_err(|_| bad())?;
    if s.len() != 16 || c.is_empty() {
        return Err(bad());
    }
    Ok((SnapId(snap), ImageId(c.to_string())))
}
/// Header omap key recording that object `o` has a data object in open epoch `e`
/// (generation 0: the format of images that were never checkpointed).
pub fn touch_key(e: Epoch, o: ObjectNo) -> String {
    format!("touch.{:016x}.{:016x}", e.0, o.0)
}
/// Touch key of object `o` registered in open epoch `e` under registration
/// generation `g`. Generation 0 is the plain [`touch_key`]; later ones sort
/// after every plain key (`g` follows the hex digits) and by generation, so
/// that recovery can page only the generations a checkpoint does not cover.
pub fn touch_key_gen(e: Epoch, g: u64, o: ObjectNo) -> String {
    if g == 0 {
        return touch_key(e, o);
    }
    format!("touch.{:016x}.g{g:016x}.{:016x}", e.0, o.0)
}
/// The omap position just before the first touch key of generation `g` of
/// epoch `e` (a `start_after` for paging).
pub fn touch_gen_start(e: Epoch, g: u64) -> String {
    format!("touch.{:016x}.g{g:016x}", e.0)
}
/// Prefix of the touch keys of epoch `e`.
pub fn touch_prefix(e: Epoch) -> String {
    format!("touch.{:016x}.", e.0)
}
/// Parses the epoch and object number out of a touch key of any generation.
pub fn parse_touch_key(key: &str) -> Result<(Epoch, ObjectNo)> {
    parse_touch_key_gen(key).map(|(e, _, o)| (e, o))
}
/// Parses (epoch, generation, object) out of a touch key.
pub fn parse_touch_key_gen(key: &str) -> Result<(Epoch, u64, ObjectNo)> {
    let bad = |what: &str| Error::corrupt(format!("malformed {what} in touch key {key:?}"));
    let hex = |s: &str, what: &str| {
        if s.len() != 16 {
            return Err(bad(what));
        }
        u64::from_str_radix(s, 16).map_err(|_| bad(what))
    };
    let parts: Vec<&str> = key.split('.').collect();
    match parts.as_slice() {
        ["touch", e, o] => Ok((Epoch(hex(e, "epoch")?), 0, ObjectNo(hex(o, "object")?))),
        ["touch", e, g, o] => {
            let g = g.strip_prefix('g').ok_or_else(|| bad("generation"))?;
            let g = hex(g, "generation")?;
            if g == 0 {
                return Err(bad("generation"));
            }
            Ok((Epoch(hex(e, "epoch")?), g, ObjectNo(hex(o, "object")?)))
        }
        _ => Err(Error::corrupt(format!("malformed touch key {key:?}"))),
    }
}
/// Data-object omap key for grain `g` (index within the object).
pub fn grain_key(g: u32) -> String {
    format!("{g:06x}")
}
/// Parses a data-object omap key.
pub fn parse_grain_key(key: &str, grains_per_object: u32) -> Result<u32> {
    let g = u32::from_str_radix(key, 16)
        .map_err(|_| Error::corrupt(format!("malformed grain key {key:?}")))?;
    if key.len() != 6 || g >= grains_per_object {
        return Err(Error::corrupt(format!("grain key {key:?} out of range")));
    }
    Ok(g)
}
/// Image-meta omap key.
pub fn meta_key(k: &str) -> String {
    format!("meta.{k}")
}

/// Checks an image or snapshot name the way rbd would accept it.
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 255 {
        return Err(Error::invalid(format!(
            "{what} name must be 1 to 255 bytes, got {:?}",
            name
        )));
    }
    if name.contains(['/', '@', '\0']) || name.starts_with('.') {
        return Err(Error::invalid(format!(
            "{what} name {name:?} may not contain '/', '@' or NUL nor start with '.'"
        )));
    }
    Ok(())
}

/// Sizes that fix how bytes map to objects and grains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Bytes per logical object (power of two, 64 KiB .. 32 MiB).
    pub object_size: u64,
    /// Bytes per grain (power of two, 4 KiB .. 64 KiB, ≤ object size).
    pub grain_size: u64,
}

impl Geometry {
    /// Validates sizes the way `rbd create` would.
    pub fn new(object_size: u64, grain_size: u64) -> Result<Self> {
        if !object_size.is_power_of_two() || !(65536..=32 << 20).contains(&object_size) {
            return Err(Error::invalid(format!(
                "object size {object_size} must be a power of two from 64 KiB to 32 MiB"
            )));
        }
        if !grain_size.is_power_of_two() || !(4096..=65536).contains(&grain_size) {
            return Err(Error::invalid(format!(
                "grain size {grain_size} must be a power of two from 4 KiB to 64 KiB"
            )));
        }
        if grain_size > object_size {
            return Err(Error::invalid("grain size larger than object size"));
        }
        Ok(Geometry {
            object_size,
            grain_size,
        })
    }
    /// Grains in one object.
    pub fn grains_per_object(&self) -> u32 {
        (self.object_size / self.grain_size) as u32
    }
    /// The object holding grain `g`.
    pub fn object_of(&self, g: u64) -> ObjectNo {
        ObjectNo(g / u64::from(self.grains_per_object()))
    }
    /// First grain of object `o`.
    pub fn first_grain(&self, o: ObjectNo) -> u64 {
        o.0 * u64::from(self.grains_per_object())
    }
    /// Number of grains covering `bytes`.
    pub fn grains_for(&self, bytes: u64) -> u64 {
        bytes.div_ceil(self.grain_size)
    }
    /// The object order (log2 of object size), as rbd reports it.
    pub fn order(&self) -> u32 {
        self.object_size.trailing_zeros()
    }
}
