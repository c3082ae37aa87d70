//! In-process tests of one stage: its options from a graph snippet, its
//! `prepare`, and its `build` on streams the test makes, driven through
//! timely on one worker, capturing what it emits and the errors it reports.

use crate::engine::{build_stage, prepare, AnyStream, ClusterShape, Message, Mode};
use crate::graph::Graph;
use locvtp_operators::{ItemError, RunShared};
use std::path::Path;
use std::sync::Arc;
use timely::dataflow::operators::capture::Event;
use timely::dataflow::operators::Capture;
use timely::dataflow::Scope;

/// A temporary folder holding a graph's files and outputs.
pub struct TestGraph {
    pub dir: tempfile::TempDir,
}

impl TestGraph {
    pub fn new() -> TestGraph {
        TestGraph { dir: tempfile::tempdir().expect("temporary folder") }
    }

    /// The stages of `stages` (TOML `[stages.x]` tables) with a `[run]`
    /// table writing into this folder's `out`; each stage's options are
    /// checked, not how the stages connect.
    pub fn graph(&self, stages: &str) -> Graph {
        let text = format!("[run]\noutput_dir = \"{}\"\n\n{stages}", self.dir.path().join("out").display());
        crate::graph::parse_stages(&text, &self.dir.path().join("graph.toml"), self.dir.path())
            .unwrap_or_else(|e| panic!("test graph:\n{e}"))
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

/// The repository's `configs/<name>`.
pub fn config(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs").join(name)
}

/// What one stage emitted and reported.
pub struct StageRun<M> {
    /// `(time, item)` in time order.
    pub items: Vec<(u64, M)>,
    pub errors: Vec<ItemError>,
}

/// Prepares `graph` and builds stage `name` on the streams `inputs` makes
/// (in port order); runs to completion on one worker.
pub fn run_stage<M: Message + Send>(
    graph: &Graph,
    name: &str,
    inputs: impl for<'s> Fn(Scope<'s, u64>) -> Vec<AnyStream<'s>> + Send + Sync + 'static,
) -> StageRun<M> {
    let prepared = prepare(graph, &ClusterShape::single(), Mode::Run).unwrap_or_else(|e| panic!("prepare:\n{e}"));
    let name = name.to_string();
    let run = Arc::new(RunShared::default());
    let shared = run.clone();
    let (items, errors) = timely::execute::execute_directly(move |worker| {
        let (items, errors) = worker.dataflow::<u64, _, _>(|scope| {
            let streams = inputs(scope);
            let (built, errors) = build_stage(scope, &prepared, &name, streams, &shared).expect("the stage builds");
            let items = built.map(|s| M::unwrap(s).unwrap_or_else(|_| panic!("{name} emits another kind")).capture());
            let errors: Vec<_> = errors.into_iter().map(|e| e.capture()).collect();
            (items, errors)
        });
        while worker.step_or_park(None) {}
        let items: Vec<(u64, M)> = items.map(drain).unwrap_or_default();
        let errors: Vec<ItemError> = errors.into_iter().flat_map(|r| drain(r).into_iter().map(|(_, e)| e)).collect();
        (items, errors)
    });
    // As a run does once it has succeeded: outputs waiting for the run's
    // outcome go in place.
    if let Some(failure) = run.settle_outputs(!run.failed() && !run.cut_short()) {
        panic!("{failure}");
    }
    StageRun { items, errors }
}

/// What a captured stream carried, `(time, item)`, ordered by time.
fn drain<D>(events: std::sync::mpsc::Receiver<Event<u64, Vec<D>>>) -> Vec<(u64, D)> {
    let mut out: Vec<(u64, D)> = events
        .try_iter()
        .flat_map(|e| match e {
            Event::Messages(stamp, data) => {
                let t = *stamp.least().expect("a message has a time");
                data.into_iter().map(|d| (t, d)).collect()
            }
            Event::Progress(_) => Vec::new(),
        })
        .collect();
    out.sort_by_key(|(t, _)| *t);
    out
}

/// A stream carrying each `(time, item)` at its time (times ascending).
pub fn at_times<D: Clone + 'static>(
    scope: Scope<'_, u64>,
    mut items: Vec<(u64, D)>,
) -> timely::dataflow::Stream<'_, u64, Vec<D>> {
    use timely::container::CapacityContainerBuilder;
    use timely::dataflow::operators::generic::source;
    items.sort_by_key(|(t, _)| *t);
    source::<u64, CapacityContainerBuilder<Vec<D>>, _, _>(scope, "AtTimes", move |cap, info| {
        let activator = scope.activator_for(info.address.clone());
        activator.activate();
        let mut cap = Some(cap);
        let mut items = Some(items);
        move |output| {
            if let (Some(mut held), Some(items)) = (cap.take(), items.take()) {
                for (t, item) in items {
                    held.downgrade(&t);
                    output.session(&held).give(item);
                }
            }
        }
    })
}
