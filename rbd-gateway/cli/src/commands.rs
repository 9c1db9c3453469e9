//! The verbs, over [`row_layer`] and [`rbd_streams`].

use crate::cli::{
    BenchIoArgs, BookmarkCommand, Cli, Command, Format, FormatArgs, IoPattern, IoType, LockCommand,
    MetaCommand, PathArg, SnapCommand,
};
use crate::create_opts::CreateOpts;
use crate::ctx::{finish, Ctx};
use crate::error::{CliError, CliResult};
use crate::size::{format_bytes, parse_size, MIB};
use crate::spec::{self, ImageSpec, SnapMode};
use crate::store_select::{self, Stores};
use crate::streams;
use crate::util::{ctime, json, table, Align, Progress};
use row_layer::layout;
use row_layer::records::HeaderRecord;
use row_layer::OwnerRequest;
use row_layer::{CreateOptions, ErrorKind, Store};
use serde_json::{json, Value};
use std::io::Write;

/// Runs a parsed command line, writing normal output to `out`.
pub fn run(cli: Cli, out: &mut dyn Write) -> CliResult<()> {
    let target = store_select::select(&cli.store, &|k| std::env::var(k).ok())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::io("rbd-row: starting the runtime", &e))?;
    let ctx = Ctx {
        stores: Stores::new(target),
        flags: cli.spec.clone(),
        progress: !cli.no_progress,
        open: std::sync::Mutex::new(Vec::new()),
    };
    let r = rt.block_on(async {
        tokio::select! {
            r = execute(&ctx, cli.command, out) => r,
            _ = tokio::signal::ctrl_c() => {
                let open = std::mem::take(&mut *ctx.open.lock().unwrap_or_else(|p| p.into_inner()));
                for img in open {
                    let _ = img.close().await;
                }
                Err(CliError::msg(130, "rbd-row: interrupted"))
            }
        }
    });
    let _ = out.flush();
    r
}

fn text(out: &mut dyn Write, s: &str) -> CliResult<()> {
    out.write_all(s.as_bytes())
        .map_err(|e| CliError::io("rbd-row: writing output", &e))
}

fn check_format(f: &FormatArgs) -> CliResult<bool> {
    match f.format {
        Format::Plain => Ok(false),
        Format::Json => Ok(true),
        Format::Xml => Err(CliError::usage("rbd-row: xml output is not supported")),
    }
}

/// Reads an image's header without opening it (no ownership needed).
pub(crate) async fn peek_header(store: &Store, name: &str) -> row_layer::Result<HeaderRecord> {
    let id = store.image_id(name).await?;
    row_layer::header_format::read_header(&**store.backend(), &id).await
}

async fn peek(store: &Store, spec: &ImageSpec) -> CliResult<HeaderRecord> {
    peek_header(store, &spec.image)
        .await
        .map_err(|e| CliError::row(format!("rbd-row: error opening image {}", spec.image), &e))
}

async fn lock_owners(store: &Store, h: &HeaderRecord) -> Vec<row_layer::backend::LockOwner> {
    store
        .backend()
        .lock_owners(&layout::header_object(&h.id), layout::OWNER_LOCK)
        .await
        .unwrap_or_default()
}

/// (parent image name, parent snap name, overlap) of a clone.
async fn parent_of(store: &Store, h: &HeaderRecord) -> Option<(String, String, u64)> {
    let p = h.parent.as_ref()?;
    let list = store.list().await.ok()?;
    let name = list.into_iter().find(|e| e.id == p.image)?.name;
    let ph = peek_header(store, &name).await.ok()?;
    let snap = ph.snapshots.iter().find(|s| s.id == p.snap)?.name.clone();
    Some((name, snap, p.overlap))
}

fn order_of(object_size: u64) -> u32 {
    63 - object_size.max(1).leading_zeros()
}

fn size_arg(s: &Option<String>, what: &str) -> CliResult<u64> {
    match s {
        Some(s) => parse_size(s, MIB),
        None => Err(CliError::usage(format!(
            "rbd-row: must specify {what} <M/G/T>"
        ))),
    }
}

async fn execute(ctx: &Ctx, cmd: Command, out: &mut dyn Write) -> CliResult<()> {
    match cmd {
        Command::Create {
            spec,
            size,
            opts: a,
        } => {
            const C: &str = "rbd-row: create error";
            let co = CreateOpts::parse(&a, C)?;
            let spec = ctx.spec(spec.as_deref(), SnapMode::None)?;
            let size = size_arg(&size, "--size")?;
            let mut opts = CreateOptions::with_size(size);
            if let Some(o) = co.object_size {
                opts.object_size = o;
            }
            if let Some(g) = co.grain_size {
                opts.grain_size = g;
            }
            co.check_striping(opts.object_size, C)?;
            let store = ctx.store(&spec, true).await?;
            store
                .create(&spec.image, opts)
                .await
                .map_err(|e| CliError::row(C, &e))?;
            Ok(())
        }
        Command::Ls {
            pool_spec,
            long,
            fmt,
        } => ls(ctx, pool_spec, long, &fmt, out).await,
        Command::Info { spec, fmt } => info(ctx, spec, &fmt, out).await,
        Command::Rm { spec } => {
            let spec = ctx.spec(spec.as_deref(), SnapMode::None)?;
            let store = ctx.store(&spec, false).await?;
            let h = peek(&store, &spec).await?;
            if !h.snapshots.is_empty() {
                return Err(CliError::msg(
                    39,
                    "rbd-row: image has snapshots - these must be deleted with 'rbd-row snap purge' before the image can be removed.",
                ));
            }
            let p = Progress::new("Removing image", 1, ctx.progress);
            let r = store.remove(&spec.image).await;
            p.finish(r.is_ok());
            r.map_err(|e| {
                if e.kind() == ErrorKind::Busy {
                    let mut c = CliError::errno("rbd-row: error: image still has watchers", 16);
                    c.detail = Some(e.message().to_string());
                    c
                } else {
                    CliError::row("rbd-row: delete error", &e)
                }
            })
        }
        Command::Resize {
            spec,
            size,
            allow_shrink,
        } => {
            let spec = ctx.spec(spec.as_deref(), SnapMode::None)?;
            let size = size_arg(&size, "--size")?;
            let store = ctx.store(&spec, false).await?;
            let current = peek(&store, &spec).await?.size;
            if size < current && !allow_shrink {
                return Err(CliError::usage(
                    "rbd-row: shrinking an image is only allowed with the --allow-shrink flag",
                ));
            }
            let p = Progress::new("Resizing image", 1, ctx.progress);
            let r = ctx
                .owner_request(&spec, OwnerRequest::Resize(size), "rbd-row: resize error")
                .await;
            p.finish(r.is_ok());
            r
        }
        Command::Snap(s) => snap(ctx, s, out).await,
        Command::Clone {
            parent,
            child,
            opts,
        } => {
            const C: &str = "rbd-row: clone error";
            let co = CreateOpts::parse(&opts.into(), C)?;
            let p = ctx.spec(Some(&parent), SnapMode::Required)?;
            let c = ctx.spec(Some(&child), SnapMode::None)?;
            if (&p.pool, &p.namespace) != (&c.pool, &c.namespace) {
                return Err(CliError::errno(
                    "rbd-row: clone across pools or namespaces is not supported",
                    18,
                ));
            }
            let store = ctx.store(&p, false).await?;
            let snap = p.snap.as_deref().unwrap_or_default();
            if co != CreateOpts::default() {
                // A clone has its parent's layout: options must describe it.
                let os = peek(&store, &p).await?.object_size;
                if co.object_size.is_some_and(|o| o != os) {
                    let mut e = CliError::errno(C, 95);
                    e.detail = Some(format!(
                        "a clone keeps its parent's object size ({os} bytes); another object size is not supported"
                    ));
                    return Err(e);
                }
                co.check_striping(os, C)?;
            }
            store
                .clone_image(&p.image, snap, &c.image)
                .await
                .map_err(|e| CliError::row(C, &e))?;
            Ok(())
        }
        Command::Children { spec, fmt } => {
            let js = check_format(&fmt)?;
            let spec = ctx.spec(spec.as_deref(), SnapMode::Permitted)?;
            let store = ctx.store(&spec, false).await?;
            let kids = store
                .children(&spec.image, spec.snap.as_deref())
                .await
                .map_err(|e| CliError::row("rbd-row: listing children failed", &e))?;
            if js {
                let v: Vec<Value> = kids
                    .iter()
                    .map(|(_, n)| json!({"pool": spec.pool, "pool_namespace": spec.namespace, "image": n}))
                    .collect();
                text(out, &json(&Value::Array(v), fmt.pretty))
            } else {
                let mut s = String::new();
                for (_, n) in kids {
                    let c = ImageSpec {
                        image: n,
                        snap: None,
                        ..spec.clone()
                    };
                    s.push_str(&c.pool_path());
                    s.push('\n');
                }
                text(out, &s)
            }
        }
        Command::Reclaim { spec } => {
            let spec = ctx.spec(spec.as_deref(), SnapMode::None)?;
            let (_, img) = ctx.open_head(&spec).await?;
            let p = Progress::new("Reclaiming", 1, ctx.progress);
            let r = img.reclaim().await;
            p.finish(r.is_ok());
            let r = r.map_err(|e| CliError::row("rbd-row: reclaim error", &e));
            finish(img, r).await
        }
        Command::Flatten { spec } => {
            let spec = ctx.spec(spec.as_deref(), SnapMode::None)?;
            let (_, img) = ctx.open_head(&spec).await?;
            let p = Progress::new("Image flatten", 1, ctx.progress);
            let r = img.flatten().await;
            p.finish(r.is_ok());
            let r = r.map_err(|e| CliError::row("rbd-row: flatten error", &e));
            finish(img, r).await
        }
        Command::Diff {
            spec,
            from_snap,
            whole_object,
            fmt,
        } => {
            let js = check_format(&fmt)?;
            let spec = ctx.spec(spec.as_deref(), SnapMode::Permitted)?;
            let (_, img) = ctx.open_view(&spec).await?;
            let r = streams::check_from_not_newer(
                &img,
                spec.snap.as_deref(),
                from_snap.as_deref(),
                "rbd-row: diff error",
            )
            .and_then(|()| {
                img.diff(from_snap.as_deref())
                    .map_err(|e| CliError::row("rbd-row: diff error", &e))
            });
            let r = finish(img.clone(), r).await?;
            let ext = if whole_object {
                streams::whole_object(&r, img.info().object_size, img.size())
            } else {
                r
            };
            if js {
                let v: Vec<Value> = ext
                    .iter()
                    .map(|e| json!({"offset": e.offset, "length": e.length, "exists": if e.exists {"true"} else {"false"}}))
                    .collect();
                text(out, &json(&Value::Array(v), fmt.pretty))
            } else {
                let rows: Vec<Vec<String>> = ext
                    .iter()
                    .map(|e| {
                        vec![
                            e.offset.to_string(),
                            e.length.to_string(),
                            if e.exists { "data" } else { "zero" }.to_string(),
                        ]
                    })
                    .collect();
                text(
                    out,
                    &table(
                        &[
                            ("Offset", Align::Left),
                            ("Length", Align::Left),
                            ("Type", Align::Left),
                        ],
                        &rows,
                    ),
                )
            }
        }
        Command::Du { spec, fmt } => du(ctx, spec, &fmt, out).await,
        Command::Defrag {
            spec,
            min_reads,
            bytes_per_sec,
            fmt,
        } => defrag(ctx, spec, min_reads, &bytes_per_sec, &fmt, out).await,
        Command::Check { spec, repair, fmt } => check(ctx, spec, repair, &fmt, out).await,
        Command::Export {
            spec,
            path,
            export_format,
            sparse_size,
        } => {
            let sparse = sparse_arg(&sparse_size)?;
            if sparse > 32 << 20 {
                // Export reads whole sparse blocks; keep them bounded.
                return Err(CliError::usage(
                    "rbd-row: export --sparse-size must be at most 32M",
                ));
            }
            let spec = ctx.spec(Some(&spec), SnapMode::Permitted)?;
            streams::export(
                ctx,
                &spec,
                PathArg::parse(&path),
                export_format,
                sparse,
                out,
            )
            .await
        }
        Command::Import {
            path,
            spec,
            export_format,
            opts,
            sparse_size,
        } => {
            let co = CreateOpts::parse(&opts, "rbd-row: import failed")?;
            let sparse = sparse_arg(&sparse_size)?;
            let spec = match spec {
                Some(s) => ctx.spec(Some(&s), SnapMode::None)?,
                None if ctx.flags.image.is_some() => ctx.spec(None, SnapMode::None)?,
                None => {
                    // rbd names the image after the file.
                    let base = std::path::Path::new(&path)
                        .file_name()
                        .and_then(|s| s.to_str())
                        .filter(|_| path != "-")
                        .ok_or_else(|| {
                            CliError::usage("rbd-row: destination image name was not specified")
                        })?
                        .to_string();
                    ctx.spec(Some(&base), SnapMode::None)?
                }
            };
            streams::import(
                ctx,
                &spec,
                PathArg::parse(&path),
                export_format,
                &co,
                sparse,
            )
            .await
        }
        Command::ExportDiff {
            spec,
            path,
            from_snap,
            whole_object,
        } => {
            let spec = ctx.spec(Some(&spec), SnapMode::Permitted)?;
            streams::export_diff(
                ctx,
                &spec,
                from_snap.as_deref(),
                whole_object,
                PathArg::parse(&path),
                out,
            )
            .await
        }
        Command::ImportDiff { path, spec } => {
            let spec = ctx.spec(spec.as_deref(), SnapMode::None)?;
            streams::import_diff(ctx, &spec, PathArg::parse(&path)).await
        }
        Command::MergeDiff {
            first,
            second,
            path,
        } => streams::merge_diff(
            ctx,
            PathArg::parse(&first),
            PathArg::parse(&second),
            PathArg::parse(&path),
            out,
        ),
        Command::ImageMeta(m) => meta(ctx, m, out).await,
        Command::Lock(LockCommand::Ls { spec, fmt }) => {
            let js = check_format(&fmt)?;
            let spec = ctx.spec(spec.as_deref(), SnapMode::None)?;
            let store = ctx.store(&spec, false).await?;
            let h = peek(&store, &spec).await?;
            let owners = lock_owners(&store, &h).await;
            if js {
                let v: Vec<Value> = owners
                    .iter()
                    .map(|o| json!({"id": o.cookie, "locker": o.client, "address": o.address}))
                    .collect();
                return text(out, &json(&Value::Array(v), fmt.pretty));
            }
            if owners.is_empty() {
                return Ok(());
            }
            let mut s = format!("There is {} exclusive lock on this image.\n", owners.len());
            let rows: Vec<Vec<String>> = owners
                .iter()
                .map(|o| vec![o.client.clone(), o.cookie.clone(), o.address.clone()])
                .collect();
            s.push_str(&table(
                &[
                    ("Locker", Align::Left),
                    ("ID", Align::Left),
                    ("Address", Align::Left),
                ],
                &rows,
            ));
            text(out, &s)
        }
        Command::Status { spec, fmt } => {
            let js = check_format(&fmt)?;
            let spec = ctx.spec(spec.as_deref(), SnapMode::None)?;
            let store = ctx.store(&spec, false).await?;
            let h = peek(&store, &spec).await?;
            let owners = lock_owners(&store, &h).await;
            if js {
                let v: Vec<Value> = owners
                    .iter()
                    .map(|o| json!({"address": o.address, "client": o.client, "cookie": o.cookie}))
                    .collect();
                return text(out, &json(&json!({ "watchers": v }), fmt.pretty));
            }
            if owners.is_empty() {
                return text(out, "Watchers: none\n");
            }
            let mut s = "Watchers:\n".to_string();
            for o in owners {
                s.push_str(&format!(
                    "\twatcher={} {} cookie={}\n",
                    o.address, o.client, o.cookie
                ));
            }
            text(out, &s)
        }
        Command::Bench { spec, io_type, io } => {
            let spec = ctx.spec(spec.as_deref(), SnapMode::None)?;
            let io_type =
                io_type.ok_or_else(|| CliError::usage("rbd-row: --io-type must be specified"))?;
            bench(ctx, &spec, io_type, io, out).await
        }
        Command::BenchWrite { spec, io } => {
            eprintln!("rbd-row: bench-write is deprecated, use rbd-row bench --io-type write ...");
            let spec = ctx.spec(spec.as_deref(), SnapMode::None)?;
            bench(ctx, &spec, IoType::Write, io, out).await
        }
        Command::Bookmark(b) => bookmark(ctx, b, out).await,
    }
}

/// `--sparse-size` (B/K/M, bare number: bytes; default 4K, 0: not sparse).
fn sparse_arg(s: &Option<String>) -> CliResult<u64> {
    match s {
        None => Ok(4096),
        Some(v) => crate::create_opts::parse_bytes("sparse-size", v),
    }
}

async fn bench(
    ctx: &Ctx,
    spec: &ImageSpec,
    io_type: IoType,
    io: BenchIoArgs,
    out: &mut dyn Write,
) -> CliResult<()> {
    let io_size = parse_size(&io.io_size, 1)?;
    let io_total = parse_size(&io.io_total, 1)?;
    if io_size == 0 || io.io_threads == 0 || io.rw_mix_read > 100 {
        return Err(CliError::usage("rbd-row: invalid bench parameters"));
    }
    crate::bench::bench(
        ctx,
        spec,
        crate::bench::BenchArgs {
            io_type,
            io_size,
            io_threads: io.io_threads,
            io_total,
            random: io.io_pattern == IoPattern::Rand,
            pattern: match io.io_pattern {
                IoPattern::Rand => "random",
                IoPattern::Seq => "sequential",
                IoPattern::FullSeq => "full sequential",
            },
            rw_mix_read: io.rw_mix_read,
        },
        out,
    )
    .await
}

async fn ls(
    ctx: &Ctx,
    pool_spec: Option<String>,
    long: bool,
    fmt: &FormatArgs,
    out: &mut dyn Write,
) -> CliResult<()> {
    let js = check_format(fmt)?;
    let (mut pool, mut ns) = (ctx.flags.pool.clone(), ctx.flags.namespace.clone());
    if let Some(p) = pool_spec {
        match p.split_once('/') {
            Some((a, b)) => {
                pool = Some(a.to_string());
                ns = Some(b.to_string());
            }
            None => pool = Some(p),
        }
    }
    let spec = ImageSpec {
        pool: pool.unwrap_or_else(|| spec::DEFAULT_POOL.to_string()),
        namespace: ns.unwrap_or_default(),
        image: String::new(),
        snap: None,
    };
    let Some(store) = ctx.stores.get(&spec.pool, &spec.namespace, false).await? else {
        return text(out, if js { "[]\n" } else { "" });
    };
    let list = store
        .list()
        .await
        .map_err(|e| CliError::row("rbd-row: listing images failed", &e))?;
    if !long {
        if js {
            let v: Vec<Value> = list.iter().map(|e| json!(e.name)).collect();
            return text(out, &json(&Value::Array(v), fmt.pretty));
        }
        let mut s = String::new();
        for e in list {
            s.push_str(&e.name);
            s.push('\n');
        }
        return text(out, &s);
    }
    let mut rows = Vec::new();
    let mut items = Vec::new();
    for e in list {
        let Ok(h) = peek_header(&store, &e.name).await else {
            continue;
        };
        let locked = !lock_owners(&store, &h).await.is_empty();
        let parent = parent_of(&store, &h).await;
        let pstr = parent
            .as_ref()
            .map(|(i, s, _)| {
                ImageSpec {
                    image: format!("{i}@{s}"),
                    ..spec.clone()
                }
                .pool_path()
            })
            .unwrap_or_default();
        let pjson = parent.as_ref().map(|(i, s, _)| {
            json!({"pool": spec.pool, "pool_namespace": spec.namespace, "image": i, "snapshot": s})
        });
        rows.push(vec![
            e.name.clone(),
            format_bytes(h.size),
            pstr.clone(),
            "2".into(),
            String::new(),
            if locked { "excl".into() } else { String::new() },
        ]);
        let mut o = json!({"image": e.name, "id": h.id.0, "size": h.size, "format": 2});
        if let Some(p) = &pjson {
            o["parent"] = p.clone();
        }
        if locked {
            o["lock_type"] = json!("exclusive");
        }
        items.push(o);
        for s in &h.snapshots {
            rows.push(vec![
                format!("{}@{}", e.name, s.name),
                format_bytes(s.size),
                pstr.clone(),
                "2".into(),
                if s.protected {
                    "yes".into()
                } else {
                    String::new()
                },
                String::new(),
            ]);
            let mut o = json!({"image": e.name, "id": h.id.0, "snapshot": s.name, "snapshot_id": s.id.0,
                "size": s.size, "format": 2, "protected": if s.protected {"true"} else {"false"}});
            if let Some(p) = &pjson {
                o["parent"] = p.clone();
            }
            items.push(o);
        }
    }
    if js {
        return text(out, &json(&Value::Array(items), fmt.pretty));
    }
    if rows.is_empty() {
        return Ok(());
    }
    text(
        out,
        &table(
            &[
                ("NAME", Align::Left),
                ("SIZE", Align::Right),
                ("PARENT", Align::Left),
                ("FMT", Align::Right),
                ("PROT", Align::Left),
                ("LOCK", Align::Left),
            ],
            &rows,
        ),
    )
}

async fn info(
    ctx: &Ctx,
    spec: Option<String>,
    fmt: &FormatArgs,
    out: &mut dyn Write,
) -> CliResult<()> {
    let js = check_format(fmt)?;
    let spec = ctx.spec(spec.as_deref(), SnapMode::Permitted)?;
    let store = ctx.store(&spec, false).await?;
    let h = peek(&store, &spec).await?;
    let snap = match &spec.snap {
        Some(s) => Some(h.snap(s).cloned().ok_or_else(|| {
            CliError::errno(
                format!("rbd-row: error opening image {}@{s}", spec.image),
                2,
            )
        })?),
        None => None,
    };
    let size = snap.as_ref().map_or(h.size, |s| s.size);
    let objects = size.div_ceil(h.object_size.max(1));
    let order = order_of(h.object_size);
    let parent = parent_of(&store, &h).await;
    let features = ["layering"];
    let prefix = format!("rbd_row_data.{}", h.id.0);
    if js {
        let mut v = json!({
            "name": spec.image, "id": h.id.0, "size": size, "objects": objects, "order": order,
            "object_size": h.object_size, "grain_size": h.grain_size,
            "snapshot_count": h.snapshots.len(), "block_name_prefix": prefix, "format": 2,
            "features": features, "op_features": [], "flags": [],
            "create_timestamp": ctime(h.created.secs),
        });
        if let Some(s) = &snap {
            v["protected"] = json!(if s.protected { "true" } else { "false" });
        }
        if let Some((i, s, ov)) = &parent {
            v["parent"] = json!({"pool": spec.pool, "pool_namespace": spec.namespace, "image": i,
                "id": h.parent.as_ref().map(|p| p.image.0.clone()), "snapshot": s, "trash": false, "overlap": ov});
        }
        return text(out, &json(&v, fmt.pretty));
    }
    let mut s = format!("rbd image '{}':\n", spec.image);
    s.push_str(&format!(
        "\tsize {} in {objects} objects\n\torder {order} ({} objects)\n",
        format_bytes(size),
        format_bytes(h.object_size)
    ));
    s.push_str(&format!("\tgrain_size: {}\n", format_bytes(h.grain_size)));
    s.push_str(&format!("\tsnapshot_count: {}\n", h.snapshots.len()));
    s.push_str(&format!(
        "\tid: {}\n\tblock_name_prefix: {prefix}\n\tformat: 2\n",
        h.id.0
    ));
    s.push_str(&format!(
        "\tfeatures: {}\n\top_features: \n\tflags: \n",
        features.join(", ")
    ));
    s.push_str(&format!("\tcreate_timestamp: {}\n", ctime(h.created.secs)));
    if let Some(sn) = &snap {
        s.push_str(&format!(
            "\tprotected: {}\n",
            if sn.protected { "True" } else { "False" }
        ));
    }
    if let Some((i, sn, ov)) = &parent {
        let p = ImageSpec {
            image: format!("{i}@{sn}"),
            ..spec.clone()
        };
        s.push_str(&format!(
            "\tparent: {}\n\toverlap: {}\n",
            p.pool_path(),
            format_bytes(*ov)
        ));
    }
    text(out, &s)
}

/// Exit status of `check` when problems remain (EUCLEAN, "Structure needs
/// cleaning", as fsck-like tools report it).
const EUCLEAN: i32 = 117;

/// `defrag [--min-reads N] [--bytes-per-sec B] IMAGE`: one
/// defragmentation pass (`row_layer::defrag`) on an image nobody serves.
async fn defrag(
    ctx: &Ctx,
    spec: Option<String>,
    min_reads: usize,
    bytes_per_sec: &str,
    fmt: &FormatArgs,
    out: &mut dyn Write,
) -> CliResult<()> {
    let js = check_format(fmt)?;
    if min_reads < 2 {
        return Err(CliError::usage("rbd-row: --min-reads must be at least 2"));
    }
    let opts = row_layer::DefragOptions {
        min_reads,
        bytes_per_sec: crate::size::parse_size(bytes_per_sec, 1)?,
    };
    let spec = ctx.spec(spec.as_deref(), SnapMode::None)?;
    let (_, img) = ctx.open_head(&spec).await?;
    let p = Progress::new("Image defrag", 1, ctx.progress);
    let r = img.defragment(&opts).await;
    p.finish(r.is_ok());
    let r = r.map_err(|e| CliError::row("rbd-row: defrag error", &e));
    let r = match r {
        Ok(r) => r,
        Err(e) => return finish(img, Err(e)).await,
    };
    let printed = if js {
        let v = json!({
            "objects_examined": r.objects_examined,
            "objects_rewritten": r.objects_rewritten,
            "bytes_rewritten": r.bytes_rewritten,
            "reads_before": r.reads_before,
            "reads_after": r.reads_after,
        });
        text(out, &json(&v, fmt.pretty))
    } else {
        text(
            out,
            &format!(
                "rewrote {} of {} candidate objects ({} bytes); reading them takes {} RADOS reads, was {}\n",
                r.objects_rewritten, r.objects_examined, r.bytes_rewritten, r.reads_after, r.reads_before
            ),
        )
    };
    finish(img, printed).await
}

/// `check [--repair] [IMAGE]`: the engine's fsck (`row_layer::fsck`).
async fn check(
    ctx: &Ctx,
    spec: Option<String>,
    repair: bool,
    fmt: &FormatArgs,
    out: &mut dyn Write,
) -> CliResult<()> {
    use row_layer::fsck::{check_store, CheckReport};
    let js = check_format(fmt)?;
    let one = spec.is_some() || ctx.flags.image.is_some();
    let report = if one {
        let s = ctx.spec(spec.as_deref(), SnapMode::None)?;
        let store = ctx.store(&s, false).await?;
        check_store(&store, Some(&s.image), repair)
            .await
            .map_err(|e| CliError::row(format!("rbd-row: error checking image {}", s.image), &e))?
    } else {
        let pool = ctx
            .flags
            .pool
            .clone()
            .unwrap_or_else(|| spec::DEFAULT_POOL.into());
        let ns = ctx.flags.namespace.clone().unwrap_or_default();
        match ctx.stores.get(&pool, &ns, false).await? {
            Some(store) => check_store(&store, None, repair)
                .await
                .map_err(|e| CliError::row("rbd-row: error checking the pool", &e))?,
            None => CheckReport::default(),
        }
    };
    if js {
        let findings: Vec<Value> = report
            .findings
            .iter()
            .map(|f| {
                json!({
                    "image": f.image,
                    "image_id": f.image_id.as_ref().map(|i| i.0.clone()),
                    "severity": f.severity().as_str(),
                    "kind": f.kind.as_str(),
                    "object": f.object,
                    "key": f.key,
                    "detail": f.detail,
                    "repaired": f.repaired,
                })
            })
            .collect();
        let errors: Vec<Value> = report
            .errors
            .iter()
            .map(|e| {
                json!({
                    "image": e.image,
                    "errno": e.error.kind().errno(),
                    "message": e.error.message(),
                })
            })
            .collect();
        let v = json!({
            "images": report.images,
            "problems": report.problems(),
            "repaired": report.repaired(),
            "clean": report.is_clean(),
            "findings": findings,
            "errors": errors,
        });
        text(out, &json(&v, fmt.pretty))?;
    } else {
        let mut s = String::new();
        for f in &report.findings {
            let image = f
                .image
                .clone()
                .or_else(|| f.image_id.as_ref().map(|i| format!("id {i}")))
                .unwrap_or_else(|| "-".into());
            let key = f
                .key
                .as_ref()
                .map(|k| format!(" key {k}"))
                .unwrap_or_default();
            let done = if f.repaired { " [repaired]" } else { "" };
            s.push_str(&format!(
                "{image}: {}: {}: {}{key}: {}{done}\n",
                f.severity().as_str(),
                f.kind,
                f.object,
                f.detail
            ));
        }
        let info = report.findings.len() - report.problems() - report.repaired();
        s.push_str(&format!(
            "{} image{} checked: {} problem{}, {} repaired, {} info\n",
            report.images,
            if report.images == 1 { "" } else { "s" },
            report.problems(),
            if report.problems() == 1 { "" } else { "s" },
            report.repaired(),
            info
        ));
        text(out, &s)?;
    }
    if let Some(e) = report
        .errors
        .iter()
        .find(|e| e.error.kind() == ErrorKind::Busy)
        .or(report.errors.first())
    {
        let mut err = CliError::errno(
            format!("rbd-row: check --repair: cannot repair image {}", e.image),
            e.error.kind().errno(),
        );
        err.detail = Some(e.error.message().to_string());
        return Err(err);
    }
    if report.problems() > 0 {
        let hint = if repair {
            "; the rest needs an operator"
        } else {
            "; run with --repair to fix the repairable ones"
        };
        return Err(CliError::errno(
            format!(
                "rbd-row: check found {} problem{}{hint}",
                report.problems(),
                if report.problems() == 1 { "" } else { "s" }
            ),
            EUCLEAN,
        ));
    }
    Ok(())
}

async fn du(
    ctx: &Ctx,
    spec: Option<String>,
    fmt: &FormatArgs,
    out: &mut dyn Write,
) -> CliResult<()> {
    let js = check_format(fmt)?;
    let (pool_spec, names) = match spec.as_deref().or(ctx.flags.image.as_deref()) {
        Some(_) => {
            let s = ctx.spec(spec.as_deref(), SnapMode::Permitted)?;
            let n = vec![s.image.clone()];
            (s, Some(n))
        }
        None => (
            ImageSpec {
                pool: ctx
                    .flags
                    .pool
                    .clone()
                    .unwrap_or_else(|| spec::DEFAULT_POOL.into()),
                namespace: ctx.flags.namespace.clone().unwrap_or_default(),
                image: String::new(),
                snap: None,
            },
            None,
        ),
    };
    let whole_pool = names.is_none();
    let names = match names {
        Some(n) => n,
        None => match ctx
            .stores
            .get(&pool_spec.pool, &pool_spec.namespace, false)
            .await?
        {
            Some(st) => st
                .list()
                .await
                .map_err(|e| CliError::row("rbd-row: listing images failed", &e))?
                .into_iter()
                .map(|e| e.name)
                .collect(),
            None => Vec::new(),
        },
    };
    let (mut rows, mut items) = (Vec::new(), Vec::new());
    let (mut tot_prov, mut tot_used) = (0u64, 0u64);
    for name in names {
        let s = ImageSpec {
            image: name.clone(),
            snap: None,
            ..pool_spec.clone()
        };
        let (_, img) = match ctx.open_head_read_only(&s).await {
            Ok(x) => x,
            Err(e) if whole_pool => {
                eprintln!("{}", e.message);
                continue;
            }
            Err(e) => return Err(e),
        };
        let id = img.info().id.0;
        let snap_ids: std::collections::HashMap<String, u64> = img
            .snap_list()
            .into_iter()
            .map(|s| (s.name, s.id.0))
            .collect();
        let u = img
            .space_usage()
            .map_err(|e| CliError::row("rbd-row: du failed", &e));
        let u = finish(img, u).await?;
        let want_snap = pool_spec.snap.clone();
        for (sn, size, used) in &u.snapshots {
            if want_snap.as_ref().is_some_and(|w| w != sn) {
                continue;
            }
            rows.push(vec![
                format!("{name}@{sn}"),
                format_bytes(*size),
                format_bytes(*used),
            ]);
            items.push(
                json!({"name": name, "id": id, "snapshot": sn, "snapshot_id": snap_ids.get(sn),
                "provisioned_size": size, "used_size": used}),
            );
            tot_used += used;
        }
        if want_snap.is_none() {
            rows.push(vec![
                name.clone(),
                format_bytes(u.provisioned),
                format_bytes(u.head_used),
            ]);
            items.push(json!({"name": name, "id": id, "provisioned_size": u.provisioned, "used_size": u.head_used}));
            tot_used += u.head_used;
            tot_prov += u.provisioned;
        }
    }
    if js {
        let mut v = json!({ "images": items });
        if whole_pool {
            v["total_provisioned_size"] = json!(tot_prov);
            v["total_used_size"] = json!(tot_used);
        }
        return text(out, &json(&v, fmt.pretty));
    }
    if rows.len() > 1 {
        rows.push(vec![
            "<TOTAL>".into(),
            format_bytes(tot_prov),
            format_bytes(tot_used),
        ]);
    }
    text(
        out,
        &table(
            &[
                ("NAME", Align::Left),
                ("PROVISIONED", Align::Right),
                ("USED", Align::Right),
            ],
            &rows,
        ),
    )
}

async fn snap(ctx: &Ctx, cmd: SnapCommand, out: &mut dyn Write) -> CliResult<()> {
    match cmd {
        SnapCommand::Ls { spec, fmt } => {
            let js = check_format(&fmt)?;
            let spec = ctx.spec(spec.as_deref(), SnapMode::None)?;
            let store = ctx.store(&spec, false).await?;
            let h = peek(&store, &spec).await?;
            if js {
                let v: Vec<Value> = h
                    .snapshots
                    .iter()
                    .map(|s| json!({"id": s.id.0, "name": s.name, "size": s.size,
                        "protected": if s.protected {"true"} else {"false"}, "timestamp": ctime(s.created.secs)}))
                    .collect();
                return text(out, &json(&Value::Array(v), fmt.pretty));
            }
            if h.snapshots.is_empty() {
                return Ok(());
            }
            let rows: Vec<Vec<String>> = h
                .snapshots
                .iter()
                .map(|s| {
                    vec![
                        s.id.0.to_string(),
                        s.name.clone(),
                        format_bytes(s.size),
                        if s.protected {
                            "yes".into()
                        } else {
                            String::new()
                        },
                        ctime(s.created.secs),
                    ]
                })
                .collect();
            text(
                out,
                &table(
                    &[
                        ("SNAPID", Align::Right),
                        ("NAME", Align::Left),
                        ("SIZE", Align::Right),
                        ("PROTECTED", Align::Left),
                        ("TIMESTAMP", Align::Left),
                    ],
                    &rows,
                ),
            )
        }
        SnapCommand::Purge { spec } => {
            let spec = ctx.spec(spec.as_deref(), SnapMode::None)?;
            let (_, img) = ctx.open_head(&spec).await?;
            let r = async {
                let snaps = img.snap_list();
                let p = Progress::new("Removing all snapshots", snaps.len() as u64, ctx.progress);
                let mut protected = Vec::new();
                for (i, s) in snaps.iter().enumerate() {
                    if s.protected {
                        protected.push(s.name.clone());
                        continue;
                    }
                    if let Err(e) = img.snap_remove(&s.name).await {
                        p.finish(false);
                        return Err(CliError::row("rbd-row: removing snaps failed", &e));
                    }
                    p.set(i as u64 + 1);
                }
                p.finish(protected.is_empty());
                if !protected.is_empty() {
                    return Err(CliError::msg(
                        16,
                        format!(
                            "rbd-row: error removing snapshot(s) '{}', which is protected - these must be unprotected with `rbd-row snap unprotect`.",
                            protected.join(", ")
                        ),
                    ));
                }
                Ok(())
            }
            .await;
            finish(img, r).await
        }
        SnapCommand::Rename { src, dest } => {
            let s = ctx.spec(Some(&src), SnapMode::Required)?;
            let d = if dest.contains('@') {
                let d = ctx.spec(Some(&dest), SnapMode::Required)?;
                if (&d.pool, &d.namespace, &d.image) != (&s.pool, &s.namespace, &s.image) {
                    return Err(CliError::usage(
                        "rbd-row: source and destination image names must be the same",
                    ));
                }
                d.snap.unwrap_or_default()
            } else {
                dest
            };
            let from = s.snap.clone().unwrap_or_default();
            ctx.owner_request(
                &s,
                OwnerRequest::SnapRename(from, d),
                "rbd-row: rename error",
            )
            .await
        }
        other => {
            let (spec, req, what, progress) = match other {
                SnapCommand::Create { spec } => (
                    spec,
                    0,
                    "rbd-row: failed to create snapshot",
                    "Creating snap",
                ),
                SnapCommand::Rm { spec } => (
                    spec,
                    1,
                    "rbd-row: failed to remove snapshot",
                    "Removing snap",
                ),
                SnapCommand::Rollback { spec, force } => (
                    spec,
                    if force { 5 } else { 2 },
                    "rbd-row: rollback failed",
                    "Rolling back to snapshot",
                ),
                SnapCommand::Protect { spec } => (spec, 3, "rbd-row: protecting snap failed", ""),
                SnapCommand::Unprotect { spec } => {
                    (spec, 4, "rbd-row: unprotecting snap failed", "")
                }
                _ => return Ok(()),
            };
            let spec = ctx.spec(spec.as_deref(), SnapMode::Required)?;
            let name = spec.snap.clone().unwrap_or_default();
            if req == 1 {
                let store = ctx.store(&spec, false).await?;
                let h = peek(&store, &spec).await?;
                if h.snapshots.iter().any(|s| s.name == name && s.protected) {
                    return Err(CliError::msg(
                        16,
                        format!("rbd-row: snapshot '{name}' is protected from removal."),
                    ));
                }
            }
            let req = match req {
                0 => OwnerRequest::SnapCreate(name),
                1 => OwnerRequest::SnapRemove(name),
                2 | 5 => OwnerRequest::SnapRollback {
                    name,
                    force: req == 5,
                },
                3 => OwnerRequest::SnapProtect(name, true),
                _ => OwnerRequest::SnapProtect(name, false),
            };
            let p = (!progress.is_empty()).then(|| Progress::new(progress, 1, ctx.progress));
            let r = ctx.owner_request(&spec, req, what).await;
            if let Some(p) = p {
                p.finish(r.is_ok());
            }
            r
        }
    }
}

async fn meta(ctx: &Ctx, cmd: MetaCommand, out: &mut dyn Write) -> CliResult<()> {
    match cmd {
        MetaCommand::Get { spec, key } => {
            let spec = ctx.spec(Some(&spec), SnapMode::None)?;
            let store = ctx.store(&spec, false).await?;
            match store.meta_get(&spec.image, &key).await {
                Ok(Some(v)) => text(out, &format!("{v}\n")),
                Ok(None) => Err(CliError::errno("rbd-row: getting metadata failed", 2)),
                Err(e) => Err(CliError::row("rbd-row: getting metadata failed", &e)),
            }
        }
        MetaCommand::Set { spec, key, value } => {
            let spec = ctx.spec(Some(&spec), SnapMode::None)?;
            let store = ctx.store(&spec, false).await?;
            store
                .meta_set(&spec.image, &key, &value)
                .await
                .map_err(|e| CliError::row("rbd-row: setting metadata failed", &e))
        }
        MetaCommand::Remove { spec, key } => {
            let spec = ctx.spec(Some(&spec), SnapMode::None)?;
            let store = ctx.store(&spec, false).await?;
            store
                .meta_remove(&spec.image, &key)
                .await
                .map_err(|e| CliError::row("rbd-row: removing metadata failed", &e))
        }
        MetaCommand::List { spec, fmt } => {
            let js = check_format(&fmt)?;
            let spec = ctx.spec(spec.as_deref(), SnapMode::None)?;
            let store = ctx.store(&spec, false).await?;
            let kv = store
                .meta_list(&spec.image)
                .await
                .map_err(|e| CliError::row("rbd-row: listing metadata failed", &e))?;
            if js {
                let m: serde_json::Map<String, Value> =
                    kv.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
                return text(out, &json(&Value::Object(m), fmt.pretty));
            }
            if kv.is_empty() {
                return text(out, "There are 0 metadata on this image.\n");
            }
            let mut s = if kv.len() == 1 {
                "There is 1 metadatum on this image:\n\n".to_string()
            } else {
                format!("There are {} metadata on this image:\n\n", kv.len())
            };
            let rows: Vec<Vec<String>> = kv.into_iter().map(|(k, v)| vec![k, v]).collect();
            s.push_str(&table(
                &[("Key", Align::Left), ("Value", Align::Left)],
                &rows,
            ));
            text(out, &s)
        }
    }
}

async fn bookmark(ctx: &Ctx, cmd: BookmarkCommand, out: &mut dyn Write) -> CliResult<()> {
    match cmd {
        BookmarkCommand::Create { spec, name } => {
            let spec = ctx.spec(Some(&spec), SnapMode::Required)?;
            let snap = spec.snap.clone().unwrap_or_default();
            ctx.owner_request(
                &spec,
                OwnerRequest::BookmarkCreate(snap, name),
                "rbd-row: failed to create bookmark",
            )
            .await
        }
        BookmarkCommand::Rm { spec, name } => {
            let spec = ctx.spec(Some(&spec), SnapMode::None)?;
            ctx.owner_request(
                &spec,
                OwnerRequest::BookmarkRemove(name),
                "rbd-row: failed to remove bookmark",
            )
            .await
        }
        BookmarkCommand::Ls { spec, fmt } => {
            let js = check_format(&fmt)?;
            let spec = ctx.spec(spec.as_deref(), SnapMode::None)?;
            let store = ctx.store(&spec, false).await?;
            let h = peek(&store, &spec).await?;
            if js {
                let v: Vec<Value> = h
                    .bookmarks
                    .iter()
                    .map(|b| json!({"name": b.name, "size": b.size, "timestamp": ctime(b.created.secs)}))
                    .collect();
                return text(out, &json(&Value::Array(v), fmt.pretty));
            }
            if h.bookmarks.is_empty() {
                return Ok(());
            }
            let rows: Vec<Vec<String>> = h
                .bookmarks
                .iter()
                .map(|b| vec![b.name.clone(), format_bytes(b.size), ctime(b.created.secs)])
                .collect();
            text(
                out,
                &table(
                    &[
                        ("NAME", Align::Left),
                        ("SIZE", Align::Right),
                        ("TIMESTAMP", Align::Left),
                    ],
                    &rows,
                ),
            )
        }
    }
}
