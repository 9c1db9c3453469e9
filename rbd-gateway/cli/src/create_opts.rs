//! rbd's image creation options (`--image-format`, `--order`,
//! `--object-size`, `--image-feature`, `--stripe-unit`/`--stripe-count`,
//! `--image-shared`, `--data-pool`) with rbd's parsing and checks
//! (`tools/rbd/ArgumentTypes.cc`, `Utils.cc:get_image_options`, librbd's
//! striping validation), mapped onto what an rbd-row image is: always
//! format 2, plain striping, with the equivalents of layering,
//! exclusive-lock, object-map, fast-diff and deep-flatten built in.
//! Anything else is refused with a clear error before an image exists.

use crate::cli::ImageCreateArgs;
use crate::error::{CliError, CliResult};
use crate::size::parse_size;

/// Features rbd-row always provides (accepted as no-ops).
const PROVIDED: [&str; 5] = [
    "layering",
    "exclusive-lock",
    "object-map",
    "fast-diff",
    "deep-flatten",
];
/// rbd's other feature names (known to rbd, refused by rbd-row).
const REFUSED: [&str; 4] = ["striping", "journaling", "data-pool", "operations"];

/// rbd's error for an option value its parser rejects (exit code 1).
fn invalid(option: &str) -> CliError {
    CliError::msg(
        1,
        format!("rbd-row: the argument for option '--{option}' is invalid"),
    )
}

/// A byte count as rbd's `ImageObjectSize` parses it (bare number: bytes).
pub(crate) fn parse_bytes(option: &str, v: &str) -> CliResult<u64> {
    parse_size(v, 1).map_err(|_| invalid(option))
}

/// The creation options, parsed and checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CreateOpts {
    /// Object size from `--order` or `--object-size`.
    pub(crate) object_size: Option<u64>,
    /// rbd-row's grain size.
    pub(crate) grain_size: Option<u64>,
    /// (stripe unit, stripe count) as given (0 for a missing one).
    stripe: Option<(u64, u64)>,
}

impl CreateOpts {
    /// Parses `a` as rbd does, then refuses what rbd-row cannot honour.
    /// `context` prefixes errors that rbd reports through librbd
    /// (`rbd-row: create error`, `rbd-row: import failed`).
    pub(crate) fn parse(a: &ImageCreateArgs, context: &str) -> CliResult<Self> {
        // Value parsing first (rbd: boost::program_options validators).
        let format = match a.image_format.as_deref() {
            None => None,
            Some("1") => Some(1),
            Some("2") => Some(2),
            Some(_) => return Err(invalid("image-format")),
        };
        let order = match &a.order {
            None => None,
            Some(o) => match o.parse::<u64>() {
                Ok(o) if (12..=25).contains(&o) => Some(o),
                _ => return Err(invalid("order")),
            },
        };
        let object_size = a
            .object_size
            .as_deref()
            .map(|v| parse_bytes("object-size", v))
            .transpose()?;
        let mut features = Vec::new();
        for v in &a.image_feature {
            for f in v.split(',').filter(|f| !f.is_empty()) {
                if !PROVIDED.contains(&f) && !REFUSED.contains(&f) {
                    return Err(invalid("image-feature"));
                }
                features.push(f.to_string());
            }
        }
        let stripe_unit = a
            .stripe_unit
            .as_deref()
            .map(|v| parse_bytes("stripe-unit", v))
            .transpose()?;
        let stripe_count = match &a.stripe_count {
            None => None,
            Some(c) => Some(c.parse::<u64>().map_err(|_| {
                CliError::msg(
                    1,
                    format!("rbd-row: the argument ('{c}') for option '--stripe-count' is invalid"),
                )
            })?),
        };
        let grain_size = a
            .grain_size
            .as_deref()
            .map(|g| parse_size(g, 1))
            .transpose()?;

        // rbd: --order wins over --object-size (and is deprecated); an
        // object size becomes order round(log2(size)).
        let object_size = match (order, object_size) {
            (Some(o), _) => {
                eprintln!("rbd-row: --order is deprecated, use --object-size");
                Some(1u64 << o)
            }
            (None, Some(0)) => return Err(invalid("object-size")),
            (None, Some(s)) => {
                let o = (s as f64).log2().round() as u64;
                if o > 62 {
                    return Err(invalid("object-size"));
                }
                Some(1u64 << o)
            }
            (None, None) => None,
        };
        if a.new_format {
            eprintln!("rbd-row: --new-format is deprecated, use --image-format 2");
        }
        let format = if a.new_format { Some(2) } else { format };

        // rbd's own refusals of format 1 combinations (EINVAL).
        let stripe = (stripe_unit.is_some() || stripe_count.is_some())
            .then(|| (stripe_unit.unwrap_or(0), stripe_count.unwrap_or(0)));
        if format == Some(1) {
            let os = object_size.unwrap_or(4 << 20);
            if !features.is_empty() {
                return Err(CliError::msg(
                    22,
                    "rbd-row: features not allowed with format 1; use --image-format 2",
                ));
            }
            if let Some((su, sc)) = stripe {
                if (su != 0 || sc != 0) && su != os && sc != 1 {
                    return Err(CliError::msg(
                        22,
                        "rbd-row: non-default striping not allowed with format 1; use --image-format 2",
                    ));
                }
            }
            if a.data_pool.is_some() {
                return Err(CliError::msg(
                    22,
                    "rbd-row: data pool not allowed with format 1; use --image-format 2",
                ));
            }
            return Err(unsupported(
                context,
                "image format 1 is not supported: rbd-row images are always format 2 (use --image-format 2)",
            ));
        }
        // What rbd would do and rbd-row cannot (EOPNOTSUPP).
        if let Some(f) = features.iter().find(|f| REFUSED.contains(&f.as_str())) {
            return Err(unsupported(
                context,
                format!(
                    "image feature '{f}' is not supported; rbd-row always provides {}",
                    PROVIDED.join(", ")
                ),
            ));
        }
        if a.image_shared {
            return Err(unsupported(
                context,
                "shared images (--image-shared) are not supported: an rbd-row image always has one exclusive owner",
            ));
        }
        if a.data_pool.is_some() {
            return Err(unsupported(
                context,
                "a separate data pool (--data-pool) is not supported: rbd-row keeps an image's data in its own pool",
            ));
        }
        Ok(CreateOpts {
            object_size,
            grain_size,
            stripe,
        })
    }

    /// librbd's striping checks against the image's final object size,
    /// then rbd-row's: only layouts identical to no striping (stripe unit =
    /// object size, or stripe count 1).
    pub(crate) fn check_striping(&self, object_size: u64, context: &str) -> CliResult<()> {
        let Some((su, sc)) = self.stripe else {
            return Ok(());
        };
        let einval = |detail: &str| {
            let mut e = CliError::errno(context, 22);
            e.detail = Some(detail.to_string());
            e
        };
        if (su == 0) != (sc == 0) {
            return Err(einval(
                "must specify both (or neither) of stripe-unit and stripe-count",
            ));
        }
        if su == 0 {
            return Ok(());
        }
        if su > object_size || !object_size.is_multiple_of(su) {
            return Err(einval("stripe unit is not a factor of the object size"));
        }
        if su < 512 {
            return Err(einval("stripe unit must be at least 512 bytes"));
        }
        if su != object_size && sc != 1 {
            return Err(unsupported(
                context,
                format!(
                    "striping (stripe-unit {su}, stripe-count {sc}) is not supported: rbd-row lays data out as stripe-unit = object size ({object_size}), stripe-count 1"
                ),
            ));
        }
        Ok(())
    }
}

fn unsupported(context: &str, detail: impl Into<String>) -> CliError {
    let mut e = CliError::errno(context, 95);
    e.detail = Some(detail.into());
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(f: impl FnOnce(&mut ImageCreateArgs)) -> ImageCreateArgs {
        let mut a = ImageCreateArgs::default();
        f(&mut a);
        a
    }

    #[test]
    fn rbd_semantics() {
        let p = |a: ImageCreateArgs| CreateOpts::parse(&a, "ctx");
        assert_eq!(p(args(|_| {})).unwrap_or_default(), CreateOpts::default());
        let o = p(args(|a| a.object_size = Some("5000".into()))).unwrap_or_default();
        assert_eq!(o.object_size, Some(4096));
        let o = p(args(|a| a.object_size = Some("3M".into()))).unwrap_or_default();
        assert_eq!(o.object_size, Some(4 << 20));
        let o = p(args(|a| {
            a.order = Some("20".into());
            a.object_size = Some("8M".into());
        }))
        .unwrap_or_default();
        assert_eq!(o.object_size, Some(1 << 20));
        let e = p(args(|a| {
            a.image_feature = vec!["layering,".into(), "x".into()]
        }));
        assert_eq!(e.map_err(|e| e.errno), Err(1));
        let e = p(args(|a| a.image_format = Some("1".into())));
        assert_eq!(e.map_err(|e| e.errno), Err(95));
        let plain = |su: u64, sc: u64, os: u64| {
            CreateOpts {
                stripe: Some((su, sc)),
                ..CreateOpts::default()
            }
            .check_striping(os, "ctx")
            .map_err(|e| e.errno)
        };
        assert_eq!(plain(4 << 20, 1, 4 << 20), Ok(()));
        assert_eq!(plain(4 << 20, 8, 4 << 20), Ok(()));
        assert_eq!(plain(65536, 1, 4 << 20), Ok(()));
        assert_eq!(plain(0, 0, 4 << 20), Ok(()));
        assert_eq!(plain(65536, 2, 4 << 20), Err(95));
        assert_eq!(plain(65536, 0, 4 << 20), Err(22));
        assert_eq!(plain(8 << 20, 1, 4 << 20), Err(22));
        assert_eq!(plain(256, 1, 4 << 20), Err(22));
    }
}
