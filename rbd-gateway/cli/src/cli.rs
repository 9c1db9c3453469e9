//! Command-line grammar: `rbd`'s verbs, flags and spellings.

use crate::spec::SpecFlags;
use crate::store_select::StoreArgs;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// `rbd-row`: manage redirect-on-write RBD images (rbd-compatible verbs).
#[derive(Debug, Parser)]
#[command(name = "rbd-row", version, about, propagate_version = true)]
#[command(
    after_help = "Example:\n  rbd-row --store /tmp/s create --size 1G rbd/vol1\n  rbd-row -c /etc/ceph/ceph.conf ls -l"
)]
pub struct Cli {
    /// Store selection.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Image selection flags.
    #[command(flatten)]
    pub spec: SpecFlags,
    /// Do not show progress.
    #[arg(long = "no-progress", global = true)]
    pub no_progress: bool,
    /// The verb.
    #[command(subcommand)]
    pub command: Command,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Format {
    /// Human-readable tables.
    #[default]
    Plain,
    /// JSON.
    Json,
    /// XML is not supported (accepted for compatibility, refused).
    Xml,
}

/// `--format` / `--pretty-format`.
#[derive(Debug, Clone, Default, Args)]
pub struct FormatArgs {
    /// Output format (plain or json).
    #[arg(long = "format", value_enum, default_value_t = Format::Plain)]
    pub format: Format,
    /// Pretty-print JSON.
    #[arg(long = "pretty-format")]
    pub pretty: bool,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an empty image.
    #[command(after_help = "Example:\n  rbd-row create --size 10G rbd/vol1")]
    Create {
        /// Image spec `[pool[/namespace]/]image`.
        spec: Option<String>,
        /// Image size (bare number: MiB; suffixes B/K/M/G/T).
        #[arg(short = 's', long = "size")]
        size: Option<String>,
        #[command(flatten)]
        opts: ImageCreateArgs,
    },
    /// List images.
    #[command(
        visible_alias = "list",
        after_help = "Example:\n  rbd-row ls -l --format json rbd"
    )]
    Ls {
        /// Pool spec `[pool[/namespace]]`.
        pool_spec: Option<String>,
        /// Long listing (size, parent, snapshots, lock).
        #[arg(short = 'l', long = "long")]
        long: bool,
        #[command(flatten)]
        fmt: FormatArgs,
    },
    /// Show information about an image.
    #[command(after_help = "Example:\n  rbd-row info rbd/vol1 --format json")]
    Info {
        /// Image spec `[pool[/namespace]/]image[@snap]`.
        spec: Option<String>,
        #[command(flatten)]
        fmt: FormatArgs,
    },
    /// Delete an image.
    #[command(
        visible_alias = "remove",
        after_help = "Example:\n  rbd-row rm rbd/vol1"
    )]
    Rm {
        /// Image spec.
        spec: Option<String>,
    },
    /// Resize (expand or shrink) an image.
    #[command(
        after_help = "Example:\n  rbd-row resize --size 20G rbd/vol1\n  rbd-row resize --size 1G --allow-shrink rbd/vol1"
    )]
    Resize {
        /// Image spec.
        spec: Option<String>,
        /// New size (bare number: MiB).
        #[arg(short = 's', long = "size")]
        size: Option<String>,
        /// Permit shrinking.
        #[arg(long = "allow-shrink")]
        allow_shrink: bool,
    },
    /// Snapshot management.
    #[command(subcommand)]
    Snap(SnapCommand),
    /// Delete now what removed snapshots and rollbacks left behind (an
    /// rbd-row extension). A gateway serving the image does this in the
    /// background; `snap rm` and `snap rollback` run by this tool on an
    /// image nobody serves return after their commit and leave it to the
    /// next writer.
    #[command(after_help = "Example:\n  rbd-row reclaim rbd/vol1")]
    Reclaim {
        /// Image spec.
        spec: Option<String>,
    },
    /// Clone a protected snapshot into a child image.
    #[command(after_help = "Example:\n  rbd-row clone rbd/base@gold rbd/vm1")]
    Clone {
        /// Parent snapshot spec `image@snap`.
        parent: String,
        /// Child image spec.
        child: String,
        #[command(flatten)]
        opts: CloneImageArgs,
    },
    /// Display the children of an image snapshot.
    #[command(after_help = "Example:\n  rbd-row children rbd/base@gold")]
    Children {
        /// Image or snapshot spec.
        spec: Option<String>,
        #[command(flatten)]
        fmt: FormatArgs,
    },
    /// Fill a clone with its parent's data and detach it.
    #[command(after_help = "Example:\n  rbd-row flatten rbd/vm1")]
    Flatten {
        /// Image spec.
        spec: Option<String>,
    },
    /// Rewrite the head's fragmented objects into its newest data objects,
    /// so sequential reads after random overwrites under snapshots take one
    /// RADOS read per object again. Snapshots keep their data; grains they
    /// still hold are stored twice until they are removed. Needs the image
    /// not open elsewhere (a gateway defragments its own images in the
    /// background with --defrag-interval).
    #[command(
        after_help = "Example:\n  rbd-row defrag rbd/vol1\n  rbd-row defrag --min-reads 4 --bytes-per-sec 64M --format json rbd/vol1"
    )]
    Defrag {
        /// Image spec.
        spec: Option<String>,
        /// Rewrite an object when reading all of it takes at least this
        /// many RADOS reads (at least 2).
        #[arg(long = "min-reads", default_value_t = 4)]
        min_reads: usize,
        /// Most bytes rewritten per second (K/M/G suffixes; 0: no limit).
        #[arg(long = "bytes-per-sec", default_value = "0")]
        bytes_per_sec: String,
        #[command(flatten)]
        fmt: FormatArgs,
    },
    /// Print the extents that differ since a snapshot (or image creation).
    #[command(after_help = "Example:\n  rbd-row diff --from-snap s1 --format json rbd/vol1")]
    Diff {
        /// Image or snapshot spec (the end point).
        spec: Option<String>,
        /// Start snapshot (or bookmark).
        #[arg(long = "from-snap")]
        from_snap: Option<String>,
        /// Compare whole objects.
        #[arg(long = "whole-object")]
        whole_object: bool,
        #[command(flatten)]
        fmt: FormatArgs,
    },
    /// Check images for leaked objects, stray keys, unregistered clones and
    /// half-created or half-removed images (an fsck); read-only unless
    /// `--repair`.
    #[command(
        after_help = "Example:\n  rbd-row check\n  rbd-row check --repair --format json rbd/vol1\n\nExit status: 0 when nothing is wrong (info findings are not problems) or\neverything found was repaired; 117 (EUCLEAN) when problems remain; 16\n(EBUSY) when --repair needs an image another client has open."
    )]
    Check {
        /// Image spec, or none for every image of the pool.
        spec: Option<String>,
        /// Repair what is safe to repair: remove leaked objects, records and
        /// stray touch keys, register unregistered clones, drop stale
        /// registrations, restore or finish interrupted creates and removes.
        /// Takes ownership of each image it changes.
        #[arg(long = "repair")]
        repair: bool,
        #[command(flatten)]
        fmt: FormatArgs,
    },
    /// Show disk usage of images and snapshots.
    #[command(
        visible_alias = "disk-usage",
        after_help = "Example:\n  rbd-row du rbd/vol1"
    )]
    Du {
        /// Image spec, or none for every image of the pool.
        spec: Option<String>,
        #[command(flatten)]
        fmt: FormatArgs,
    },
    /// Export an image (or snapshot) to a file or stdout.
    #[command(
        after_help = "Example:\n  rbd-row export rbd/vol1@s1 vol1.raw\n  rbd-row export --export-format 2 rbd/vol1 - > vol1.rbd2"
    )]
    Export {
        /// Image or snapshot spec.
        spec: String,
        /// Output path or `-`.
        path: String,
        /// 1: raw bytes; 2: `rbd image v2` with snapshots.
        #[arg(long = "export-format", default_value_t = 1)]
        export_format: u32,
        /// Raw export to a file: all-zero blocks of this size (B/K/M,
        /// default 4K) become holes; 0 writes every byte. An rbd-row
        /// extension (rbd's export has no such flag); stdout always gets
        /// every byte.
        #[arg(long = "sparse-size")]
        sparse_size: Option<String>,
    },
    /// Import an image from a file or stdin.
    #[command(
        after_help = "Example:\n  rbd-row import vol1.raw rbd/vol1\n  rbd-row import --export-format 2 - rbd/vol1 < vol1.rbd2"
    )]
    Import {
        /// Input path or `-`.
        path: String,
        /// Destination image spec.
        spec: Option<String>,
        /// 1: raw bytes; 2: `rbd image v2` with snapshots.
        #[arg(long = "export-format", default_value_t = 1)]
        export_format: u32,
        #[command(flatten)]
        opts: ImageCreateArgs,
        /// Zero runs of this size (B/K/M, default 4K) are not written;
        /// 0 writes every byte.
        #[arg(long = "sparse-size")]
        sparse_size: Option<String>,
    },
    /// Export the changes between two points as an `rbd diff v1` stream.
    #[command(
        after_help = "Example:\n  rbd-row export-diff --from-snap s1 rbd/vol1@s2 s1-s2.diff"
    )]
    ExportDiff {
        /// Image or snapshot spec (the end point).
        spec: String,
        /// Output path or `-`.
        path: String,
        /// Start snapshot (or bookmark).
        #[arg(long = "from-snap")]
        from_snap: Option<String>,
        /// Compare whole objects.
        #[arg(long = "whole-object")]
        whole_object: bool,
    },
    /// Apply an `rbd diff` (v1 or v2) stream to an image.
    #[command(after_help = "Example:\n  rbd-row import-diff s1-s2.diff rbd/vol1")]
    ImportDiff {
        /// Input path or `-`.
        path: String,
        /// Image spec.
        spec: Option<String>,
    },
    /// Merge two consecutive diffs into one.
    #[command(after_help = "Example:\n  rbd-row merge-diff a-b.diff b-c.diff a-c.diff")]
    MergeDiff {
        /// First diff (`-` for stdin).
        first: String,
        /// Second diff.
        second: String,
        /// Output path or `-`.
        path: String,
    },
    /// Image metadata.
    #[command(subcommand, name = "image-meta")]
    ImageMeta(MetaCommand),
    /// Image locks.
    #[command(subcommand)]
    Lock(LockCommand),
    /// Show the status (owner) of an image.
    #[command(after_help = "Example:\n  rbd-row status rbd/vol1")]
    Status {
        /// Image spec.
        spec: Option<String>,
        #[command(flatten)]
        fmt: FormatArgs,
    },
    /// Simple in-process benchmark.
    #[command(
        after_help = "Example:\n  rbd-row bench --io-type write --io-size 4K --io-threads 16 --io-total 1G --io-pattern rand rbd/vol1"
    )]
    Bench {
        /// Image spec.
        spec: Option<String>,
        /// read, write or readwrite.
        #[arg(long = "io-type")]
        io_type: Option<IoType>,
        #[command(flatten)]
        io: BenchIoArgs,
    },
    /// Simple write benchmark (deprecated in rbd: `bench --io-type write`).
    #[command(
        name = "bench-write",
        after_help = "Example:\n  rbd-row bench-write --io-size 4K --io-threads 16 --io-total 1G --io-pattern rand rbd/vol1"
    )]
    BenchWrite {
        /// Image spec.
        spec: Option<String>,
        #[command(flatten)]
        io: BenchIoArgs,
    },
    /// Bookmarks: diff bases that outlive their snapshot.
    #[command(subcommand)]
    Bookmark(BookmarkCommand),
}

/// rbd's image creation options (`create`, `import`). rbd-row images are
/// always format 2 with plain striping and every feature rbd-row offers;
/// values that ask for something else are refused (see `create_opts`).
#[derive(Debug, Clone, Default, Args)]
pub struct ImageCreateArgs {
    /// Image format: 2 (1 is refused).
    #[arg(long = "image-format")]
    pub image_format: Option<String>,
    /// Use image format 2 (deprecated in rbd).
    #[arg(long = "new-format")]
    pub new_format: bool,
    /// Object order, 12..=25 (deprecated in rbd: use --object-size).
    #[arg(long = "order")]
    pub order: Option<String>,
    /// Object size in B/K/M (bare number: bytes; rounded to a power of two
    /// as rbd does; rbd-row: 64K..32M, default 4M).
    #[arg(long = "object-size")]
    pub object_size: Option<String>,
    /// Image features, repeatable or comma-separated: layering,
    /// exclusive-lock, object-map, fast-diff and deep-flatten are always
    /// provided; journaling, striping, data-pool and operations are refused.
    #[arg(long = "image-feature")]
    pub image_feature: Vec<String>,
    /// Shared image (refused: an rbd-row image has one exclusive owner).
    #[arg(long = "image-shared")]
    pub image_shared: bool,
    /// Stripe unit in B/K/M: only plain striping (stripe unit = object
    /// size, or stripe count 1).
    #[arg(long = "stripe-unit")]
    pub stripe_unit: Option<String>,
    /// Stripe count (see --stripe-unit).
    #[arg(long = "stripe-count")]
    pub stripe_count: Option<String>,
    /// Data pool (refused: data stays in the image's pool).
    #[arg(long = "data-pool")]
    pub data_pool: Option<String>,
    /// Grain size, the unit of the map and of diffs (default 4K; rbd-row).
    #[arg(long = "grain-size")]
    pub grain_size: Option<String>,
}

/// rbd's creation options of `clone` (no format: a clone is format 2). A
/// clone keeps its parent's layout; values meaning another one are refused.
#[derive(Debug, Clone, Default, Args)]
pub struct CloneImageArgs {
    /// Object order, 12..=25 (must give the parent's object size).
    #[arg(long = "order")]
    pub order: Option<String>,
    /// Object size in B/K/M (must be the parent's).
    #[arg(long = "object-size")]
    pub object_size: Option<String>,
    /// Image features (see `create --help`).
    #[arg(long = "image-feature")]
    pub image_feature: Vec<String>,
    /// Shared image (refused).
    #[arg(long = "image-shared")]
    pub image_shared: bool,
    /// Stripe unit in B/K/M (plain striping only).
    #[arg(long = "stripe-unit")]
    pub stripe_unit: Option<String>,
    /// Stripe count (plain striping only).
    #[arg(long = "stripe-count")]
    pub stripe_count: Option<String>,
    /// Data pool (refused).
    #[arg(long = "data-pool")]
    pub data_pool: Option<String>,
}

impl From<CloneImageArgs> for ImageCreateArgs {
    fn from(c: CloneImageArgs) -> Self {
        ImageCreateArgs {
            order: c.order,
            object_size: c.object_size,
            image_feature: c.image_feature,
            image_shared: c.image_shared,
            stripe_unit: c.stripe_unit,
            stripe_count: c.stripe_count,
            data_pool: c.data_pool,
            ..ImageCreateArgs::default()
        }
    }
}

/// `bench` / `bench-write` I/O options.
#[derive(Debug, Clone, Args)]
pub struct BenchIoArgs {
    /// I/O size (default 4K).
    #[arg(long = "io-size", default_value = "4K")]
    pub io_size: String,
    /// Concurrent I/Os (default 16).
    #[arg(long = "io-threads", default_value_t = 16)]
    pub io_threads: usize,
    /// Total bytes (default 1G).
    #[arg(long = "io-total", default_value = "1G")]
    pub io_total: String,
    /// seq, rand or full-seq.
    #[arg(long = "io-pattern", value_enum, default_value_t = IoPattern::Seq)]
    pub io_pattern: IoPattern,
    /// Read percentage for readwrite (default 50).
    #[arg(long = "rw-mix-read", default_value_t = 50)]
    pub rw_mix_read: u32,
}

/// `bench --io-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IoType {
    /// Reads only.
    Read,
    /// Writes only.
    Write,
    /// Mixed.
    Readwrite,
    /// Mixed (rbd spelling).
    Rw,
}

/// `bench --io-pattern`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IoPattern {
    /// Sequential.
    Seq,
    /// Random.
    Rand,
    /// Sequential over the whole image, threads interleaved (rbd's
    /// `full-seq`; rbd-row's `seq` issues the same offsets).
    #[value(name = "full-seq")]
    FullSeq,
}

/// `snap` verbs.
#[derive(Debug, Subcommand)]
pub enum SnapCommand {
    /// Create a snapshot.
    #[command(
        visible_alias = "add",
        after_help = "Example:\n  rbd-row snap create rbd/vol1@s1"
    )]
    Create {
        /// Snapshot spec.
        spec: Option<String>,
    },
    /// List snapshots.
    #[command(
        visible_alias = "list",
        after_help = "Example:\n  rbd-row snap ls rbd/vol1 --format json"
    )]
    Ls {
        /// Image spec.
        spec: Option<String>,
        #[command(flatten)]
        fmt: FormatArgs,
    },
    /// Remove a snapshot.
    #[command(
        visible_alias = "remove",
        after_help = "Example:\n  rbd-row snap rm rbd/vol1@s1"
    )]
    Rm {
        /// Snapshot spec.
        spec: Option<String>,
    },
    /// Rename a snapshot.
    #[command(after_help = "Example:\n  rbd-row snap rename rbd/vol1@s1 rbd/vol1@s2")]
    Rename {
        /// Source snapshot spec.
        src: String,
        /// Destination snapshot spec (or name).
        dest: String,
    },
    /// Roll the image back to a snapshot.
    #[command(
        visible_alias = "revert",
        after_help = "Example:\n  rbd-row snap rollback rbd/vol1@s1"
    )]
    Rollback {
        /// Snapshot spec.
        spec: Option<String>,
        /// Roll back even though another client (e.g. a gateway serving the
        /// image) has it open: the data changes under that client.
        #[arg(long)]
        force: bool,
    },
    /// Protect a snapshot from removal (required before cloning).
    #[command(after_help = "Example:\n  rbd-row snap protect rbd/vol1@s1")]
    Protect {
        /// Snapshot spec.
        spec: Option<String>,
    },
    /// Allow a snapshot to be removed.
    #[command(after_help = "Example:\n  rbd-row snap unprotect rbd/vol1@s1")]
    Unprotect {
        /// Snapshot spec.
        spec: Option<String>,
    },
    /// Remove every unprotected snapshot.
    #[command(after_help = "Example:\n  rbd-row snap purge rbd/vol1")]
    Purge {
        /// Image spec.
        spec: Option<String>,
    },
}

/// `image-meta` verbs.
#[derive(Debug, Subcommand)]
pub enum MetaCommand {
    /// Get a value.
    #[command(after_help = "Example:\n  rbd-row image-meta get rbd/vol1 owner")]
    Get {
        /// Image spec.
        spec: String,
        /// Key.
        key: String,
    },
    /// Set a value.
    #[command(after_help = "Example:\n  rbd-row image-meta set rbd/vol1 owner alice")]
    Set {
        /// Image spec.
        spec: String,
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
    /// List keys and values.
    #[command(
        visible_alias = "ls",
        after_help = "Example:\n  rbd-row image-meta list rbd/vol1"
    )]
    List {
        /// Image spec.
        spec: Option<String>,
        #[command(flatten)]
        fmt: FormatArgs,
    },
    /// Remove a key.
    #[command(
        visible_alias = "rm",
        after_help = "Example:\n  rbd-row image-meta remove rbd/vol1 owner"
    )]
    Remove {
        /// Image spec.
        spec: String,
        /// Key.
        key: String,
    },
}

/// `lock` verbs.
#[derive(Debug, Subcommand)]
pub enum LockCommand {
    /// Show the lock held on an image (its owner).
    #[command(
        visible_alias = "list",
        after_help = "Example:\n  rbd-row lock ls rbd/vol1"
    )]
    Ls {
        /// Image spec.
        spec: Option<String>,
        #[command(flatten)]
        fmt: FormatArgs,
    },
}

/// `bookmark` verbs.
#[derive(Debug, Subcommand)]
pub enum BookmarkCommand {
    /// Keep the diff base of snapshot IMAGE@SNAP as bookmark NAME.
    #[command(after_help = "Example:\n  rbd-row bookmark create rbd/vol1@s1 b1")]
    Create {
        /// Snapshot spec.
        spec: String,
        /// Bookmark name.
        name: String,
    },
    /// List bookmarks.
    #[command(
        visible_alias = "list",
        after_help = "Example:\n  rbd-row bookmark ls rbd/vol1"
    )]
    Ls {
        /// Image spec.
        spec: Option<String>,
        #[command(flatten)]
        fmt: FormatArgs,
    },
    /// Remove a bookmark.
    #[command(
        visible_alias = "remove",
        after_help = "Example:\n  rbd-row bookmark rm rbd/vol1 b1"
    )]
    Rm {
        /// Image spec.
        spec: String,
        /// Bookmark name.
        name: String,
    },
}

/// Where a path argument points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathArg {
    /// stdin / stdout.
    Std,
    /// A file.
    File(PathBuf),
}

impl PathArg {
    /// `-` is stdin/stdout.
    pub fn parse(s: &str) -> Self {
        if s == "-" {
            PathArg::Std
        } else {
            PathArg::File(PathBuf::from(s))
        }
    }
}
