//! The deltas on ESXi a pre-copy round or the cutover applies: each opened over ssh (its tables read and checked), what each disk gets, and what a run moved.

use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;

use crate::esx::remote::FileOrder;
use crate::esx::vm::Vm;
use crate::esx::RemoteDelta;
use crate::state::AppliedDelta;
use crate::vmdk::{Chain, Descriptor};

/// One delta opened over ssh, its pieces listed (every table read and checked).
pub(super) struct Opened {
    pub(super) chain: Chain,
    pub(super) pieces: FileOrder,
    /// The extent's path on the host.
    pub(super) extent: String,
    /// Its descriptor, as read from the host.
    pub(super) descriptor: Descriptor,
}

/// What one disk gets: the deltas from `start` in its lineage, each opened.
pub(super) struct DiskWork {
    pub(super) disk: usize,
    pub(super) start: usize,
    pub(super) lineage: Vec<AppliedDelta>,
    /// The deltas' descriptor paths on the host, oldest first.
    pub(super) deltas: Vec<String>,
}

/// Figures of one apply over every disk.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Moved {
    /// The transport the bytes came by: "ssh" or "nc".
    pub(super) over: &'static str,
    pub(super) deltas: usize,
    pub(super) read: u64,
    pub(super) data: u64,
    pub(super) zero: u64,
    pub(super) secs: f64,
}

/// The path on the host of `d`'s one extent.
pub(super) fn extent_of(d: &RemoteDelta) -> Result<String> {
    match d.descriptor.extents.as_slice() {
        [e] => crate::esx::remote_join(
            crate::esx::ssh::folder(&d.path),
            e.file.as_deref().unwrap_or_default(),
            true,
        ),
        _ => bail!(
            "{}: a delta of several extents: not read over ssh:// (ESXi writes one)",
            d.shown
        ),
    }
}

/// Open `d` over ssh and list its pieces (every table read and checked).
pub(super) fn open(vm: &Vm, d: &RemoteDelta) -> Result<Opened> {
    let chain = vm.open_delta(d)?;
    let pieces = FileOrder::new(
        chain
            .pieces()
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{}: reading its tables", d.shown))?,
    );
    let extent = extent_of(d)?;
    Ok(Opened {
        chain,
        pieces,
        extent,
        descriptor: d.descriptor.clone(),
    })
}

/// `f` over `items`, `jobs` threads taking the next item as they finish one; the results in
/// the order they came. A thread that panicked loses its results: callers check for gaps.
pub(super) fn side_by_side<T: Sync, R: Send>(
    items: &[T],
    jobs: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..jobs.clamp(1, items.len().max(1)))
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    while let Some(item) =
                        items.get(next.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
                    {
                        done.push(f(item));
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|t| t.join().unwrap_or_default())
            .collect()
    })
}

/// Open every delta of `wanted` not in `cache` yet, `jobs` at a time.
pub(super) fn open_all(
    vm: &Vm,
    wanted: &[&RemoteDelta],
    cache: &mut HashMap<String, Opened>,
    jobs: usize,
) -> Result<()> {
    let todo: Vec<&RemoteDelta> = wanted
        .iter()
        .filter(|d| !cache.contains_key(&d.path))
        .copied()
        .collect();
    let opened = side_by_side(&todo, jobs, |d| (d.path.clone(), open(vm, d)));
    for (path, o) in opened {
        cache.insert(path, o?);
    }
    ensure!(
        todo.iter().all(|d| cache.contains_key(&d.path)),
        "a thread opening the deltas panicked"
    );
    Ok(())
}
