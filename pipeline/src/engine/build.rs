//! Building a prepared graph into one timely dataflow per worker: one
//! generic loop over the stages in topological order.
//!
//! Flow control: a source, or a stage that gathers its whole input, starts
//! a *flow*; the flow ends where its data meets a sink or the next
//! gathering stage. The builder puts a probe on those ends and hands it to
//! the stage that started the flow, which keeps a bounded number of times
//! in flight ahead of it. Per-item errors from every stage go to one log.

use super::prepare::PreparedGraph;
use super::{AnyStream, ClusterShape, Message, Timing};
use crate::graph::{Graph, Stage};
use locvtp_operators::errors::{log_errors, ErrorTally};
use locvtp_operators::{ItemError, RunShared};
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use timely::dataflow::operators::{Concatenate, Probe};
use timely::dataflow::{ProbeHandle, Scope, Stream};

/// What a stage's `build` returns: its output stream, `None` for sinks.
pub type Built<'s> = Option<AnyStream<'s>>;

/// A stage could not be built; only a bug between `prepare` and `build`
/// leads here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stage `{stage}`: {message}")]
pub struct BuildError {
    pub stage: String,
    pub message: String,
}

/// The built streams of a stage's inputs, in port order.
pub struct Inputs<'s> {
    stage: String,
    streams: Vec<Option<AnyStream<'s>>>,
}

impl<'s> Inputs<'s> {
    /// The stream on input `port`, as messages of type `M`.
    pub fn take<M: Message>(&mut self, port: usize) -> Result<Stream<'s, u64, Vec<M>>, BuildError> {
        let error = |message: String| BuildError { stage: self.stage.clone(), message };
        let stream = self
            .streams
            .get_mut(port)
            .and_then(Option::take)
            .ok_or_else(|| error(format!("no stream on input {port}")))?;
        M::unwrap(stream).map_err(|other| error(format!("input {port} carries {}, expected {}", other.kind(), M::KIND)))
    }
}

/// What a stage's `build` may use besides its inputs.
pub struct BuildContext<'a, 's> {
    pub scope: Scope<'s, u64>,
    pub stage: &'a Stage,
    pub graph: &'a Graph,
    pub shape: &'a ClusterShape,
    pub run: &'a Arc<RunShared>,
    flow: Option<ProbeHandle<u64>>,
    errors: &'a mut Vec<Stream<'s, u64, Vec<ItemError>>>,
}

impl<'s> BuildContext<'_, 's> {
    /// This worker's global index.
    pub fn index(&self) -> usize {
        self.scope.index()
    }

    /// Workers in the cluster.
    pub fn peers(&self) -> usize {
        self.scope.peers()
    }

    /// This worker's GPU slot on its machine.
    pub fn device_slot(&self) -> usize {
        self.shape.device_slot(self.index())
    }

    /// The probe at the ends of the flow this stage starts (sources and
    /// gathering stages only): what the flow's ends have completed.
    pub fn flow(&self) -> ProbeHandle<u64> {
        self.flow.clone().expect("only sources and gathering stages start a flow")
    }

    /// Sends items this stage could not use to the run's error log.
    pub fn report_errors(&mut self, errors: Stream<'s, u64, Vec<ItemError>>) {
        self.errors.push(errors);
    }

    /// For sinks: whether this one counts its input's items in the run's
    /// counters and reports the failures that reach it from upstream. When
    /// several sinks read one stream (an HDF5 file and `.npy` files of the
    /// same features), the first of them in the graph's order does, so that
    /// the summary and `errors.jsonl` name each video once.
    pub fn counts_items(&self) -> bool {
        let Some(input) = self.stage.inputs.first() else { return true };
        let first_sink = self.graph.consumers(input).into_iter().find(|s| s.entry().is_sink());
        first_sink.is_none_or(|s| s.name == self.stage.name)
    }

    /// An error naming this stage.
    pub fn error(&self, message: impl Into<String>) -> BuildError {
        BuildError { stage: self.stage.name.clone(), message: message.into() }
    }
}

/// Builds `prepared` in `scope`. `done` ends up probing every sink and the
/// error log, so it is complete exactly when the graph is. The error log
/// writes `errors_path` and counts into `tally` (on worker 0).
pub fn build<'s>(
    scope: Scope<'s, u64>,
    prepared: &PreparedGraph,
    run: &Arc<RunShared>,
    done: &ProbeHandle<u64>,
    errors_path: PathBuf,
    tally: Rc<RefCell<ErrorTally>>,
) -> Result<(), BuildError> {
    let graph = &prepared.graph;
    let mut built: HashMap<&str, AnyStream<'s>> = HashMap::new();
    // The flows each stage's output belongs to, by the stage that started
    // them.
    let mut flows_of: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    let mut flow_probes: HashMap<&str, ProbeHandle<u64>> = HashMap::new();
    let mut errors: Vec<Stream<'s, u64, Vec<ItemError>>> = Vec::new();
    for stage in &graph.stages {
        let entry = stage.options.entry();
        let ends_flows = entry.is_sink() || entry.timing == Timing::Gathers;
        let mut inputs = Vec::with_capacity(stage.inputs.len());
        for name in &stage.inputs {
            let mut stream = built.get(name.as_str()).cloned().ok_or_else(|| BuildError {
                stage: stage.name.clone(),
                message: format!("input `{name}` was not built before it"),
            })?;
            if ends_flows {
                for origin in &flows_of[name.as_str()] {
                    stream = stream.probed(&flow_probes[origin]);
                }
            }
            if entry.is_sink() {
                stream = stream.probed(done);
            }
            inputs.push(Some(stream));
        }
        let starts_flow = entry.is_source() || entry.timing == Timing::Gathers;
        let flow = starts_flow.then(|| flow_probes.entry(stage.name.as_str()).or_default().clone());
        let origins: BTreeSet<&str> = if starts_flow {
            BTreeSet::from([stage.name.as_str()])
        } else {
            stage.inputs.iter().flat_map(|n| flows_of[n.as_str()].iter().copied()).collect()
        };
        let mut ctx = BuildContext { scope, stage, graph, shape: &prepared.shape, run, flow, errors: &mut errors };
        let state = prepared.stages.get(&stage.name).ok_or_else(|| ctx.error("was not prepared"))?;
        let output = stage.options.build(state, &mut ctx, Inputs { stage: stage.name.clone(), streams: inputs })?;
        match (output, entry.output) {
            (Some(stream), Some(kind)) if stream.kind() == kind => {
                built.insert(stage.name.as_str(), stream);
            }
            (None, None) => {}
            (Some(stream), _) => {
                return Err(ctx.error(format!("built a stream of {} for output {:?}", stream.kind(), entry.output)))
            }
            (None, Some(kind)) => return Err(ctx.error(format!("built no stream for its output of {kind}"))),
        }
        flows_of.insert(stage.name.as_str(), origins);
    }
    let all = scope.concatenate(errors).probe_with(done);
    log_errors(all, errors_path, tally);
    Ok(())
}

/// A stage's output and the error streams it reported.
#[cfg(test)]
pub(crate) type BuiltAlone<'s> = (Built<'s>, Vec<Stream<'s, u64, Vec<ItemError>>>);

/// Builds stage `name` of `prepared` alone on `inputs` (in port order),
/// returning its output and the error streams it reported: how the tests
/// of a stage drive its operator. A stage that starts a flow gets a probe
/// that nothing observes, so it runs without back-pressure.
#[cfg(test)]
pub(crate) fn build_stage<'s>(
    scope: Scope<'s, u64>,
    prepared: &PreparedGraph,
    name: &str,
    inputs: Vec<AnyStream<'s>>,
    run: &Arc<RunShared>,
) -> Result<BuiltAlone<'s>, BuildError> {
    let graph = &prepared.graph;
    let stage = graph.stage(name).ok_or_else(|| BuildError { stage: name.into(), message: "no such stage".into() })?;
    let mut errors = Vec::new();
    let mut ctx = BuildContext {
        scope,
        stage,
        graph,
        shape: &prepared.shape,
        run,
        flow: Some(ProbeHandle::new()),
        errors: &mut errors,
    };
    let state = prepared.stages.get(name).ok_or_else(|| ctx.error("was not prepared"))?;
    let built = stage.options.build(
        state,
        &mut ctx,
        Inputs { stage: name.into(), streams: inputs.into_iter().map(Some).collect() },
    )?;
    Ok((built, errors))
}
