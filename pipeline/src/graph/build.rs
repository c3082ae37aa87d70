//! From graph text to a validated [`Graph`]: every check runs and every
//! problem is collected before anything is reported.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::Path;

use std::sync::Arc;

use super::deser::{closest, deserialize_table, key_path, unknown_key_message};
use super::error::{GraphError, Location, Problem};
use super::options::RunOptions;
use super::parse_options::Parsed;
use super::paths::PathResolver;
use super::source::{describe_value, dotted, index_segment, is_bare_key, Document, Override};
use super::{Graph, Stage};
use crate::engine::{Checks, StageEntry};

const TOP_LEVEL_KEYS: &[&str] = &["run", "stages"];

/// A stage as read, before the graph-wide checks.
struct Pending {
    name: String,
    /// `["stages", name]`.
    path: Vec<String>,
    /// `None` when `type` is missing or unknown.
    ty: Option<&'static StageEntry>,
    inputs: Vec<String>,
    /// Whether the stage table has an `inputs` key at all.
    inputs_given: bool,
    /// `None` when the options had problems or the type is unknown.
    parsed: Option<Parsed>,
}

impl Pending {
    fn inputs_path(&self) -> Vec<String> {
        key_path(&self.path, "inputs")
    }

    fn input_path(&self, i: usize) -> Vec<String> {
        let mut path = self.inputs_path();
        path.push(index_segment(i));
        path
    }
}

/// How much of a graph to check: a runnable graph, or (for the in-process
/// tests of one stage) only its stages' own options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Strictness {
    Whole,
    #[cfg_attr(not(test), allow(dead_code))]
    StagesOnly,
}

pub(crate) fn build<S: AsRef<str>>(
    text: &str,
    file: &Path,
    graph_dir: &Path,
    cwd: &Path,
    overrides: &[S],
    strictness: Strictness,
) -> Result<Graph, GraphError> {
    let mut doc = Document::parse(text, file).map_err(GraphError::new)?;
    let mut problems = Vec::new();
    for arg in overrides {
        if let Err(problem) = Override::parse(arg.as_ref()).and_then(|ov| doc.apply(&ov)) {
            problems.push(problem);
        }
    }

    for key in doc.root.keys() {
        if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
            problems.push(doc.problem(std::slice::from_ref(key), unknown_key_message(key, TOP_LEVEL_KEYS)));
        }
    }
    let run = read_run(&doc, &mut problems);
    let stages = read_stages(&doc, &mut problems);
    let index: HashMap<&str, usize> = stages.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    if strictness == Strictness::Whole {
        check_edges(&doc, &stages, &index, &mut problems);
        check_sink(&doc, &stages, &mut problems);
    }
    check_cycles(&doc, &stages, &index, &mut problems);
    if strictness == Strictness::Whole && problems.is_empty() {
        // A misspelt input leaves its intended source without a consumer:
        // that is one mistake, reported above.
        check_dangling(&doc, &stages, &mut problems);
    }

    if let Some(run) = &run {
        let mut checks = Checks::default();
        run.validate(&mut checks);
        problems.extend(located(&doc, &["run".to_string()], checks));
    }
    for stage in &stages {
        if let Some(parsed) = &stage.parsed {
            let mut checks = Checks::default();
            parsed.options.validate(&mut checks);
            problems.extend(located(&doc, &stage.path, checks));
        }
    }

    let Some(mut run) = run else {
        return Err(GraphError::new(problems));
    };
    if !problems.is_empty() {
        return Err(GraphError::new(problems));
    }

    let resolver =
        |prefix: &[String], output_dir| PathResolver { doc: &doc, prefix: prefix.to_vec(), graph_dir, cwd, output_dir };
    run.resolve_paths(&resolver(&["run".to_string()], None));
    let order = topological_order(&stages, &index);
    let mut slots: Vec<Option<Pending>> = stages.into_iter().map(Some).collect();
    let mut out = Vec::with_capacity(slots.len());
    for i in order {
        let pending = slots[i].take().expect("each stage appears once in the order");
        let mut parsed = pending.parsed.expect("stages without valid options were reported");
        parsed.options.resolve_paths(&resolver(&pending.path, Some(&run.output_dir)));
        out.push(Stage {
            name: pending.name,
            options: parsed.options,
            inputs: pending.inputs,
            non_default: parsed.non_default,
        });
    }
    check_outputs(&doc, &out, &mut problems);
    if !problems.is_empty() {
        return Err(GraphError::new(problems));
    }
    Ok(Graph { file: file.to_path_buf(), run, stages: out, doc: Arc::new(doc) })
}

/// The problems of `checks`, made at `prefix` (a stage or `run`).
fn located(doc: &Document, prefix: &[String], checks: Checks) -> Vec<Problem> {
    checks
        .into_parts()
        .into_iter()
        .map(|(stage, key, message)| {
            let base = match stage {
                Some(name) => vec!["stages".to_string(), name],
                None => prefix.to_vec(),
            };
            doc.problem(&key_path(&base, &key), message)
        })
        .collect()
}

/// No two stages write the same file.
fn check_outputs(doc: &Document, stages: &[Stage], problems: &mut Vec<Problem>) {
    let mut seen: HashMap<std::path::PathBuf, (String, &'static str)> = HashMap::new();
    for stage in stages {
        for (key, path) in stage.options.outputs() {
            match seen.get(path) {
                Some((other, other_key)) => problems.push(doc.problem(
                    &["stages".to_string(), stage.name.clone(), key.to_string()],
                    format!(
                        "{} is also written by stages.{other}.{other_key}; two stages cannot write one file",
                        path.display()
                    ),
                )),
                None => {
                    seen.insert(path.to_path_buf(), (stage.name.clone(), key));
                }
            }
        }
    }
}

/// Every stage that emits something has a consumer: a stage whose output
/// goes nowhere would do its work for nothing (usually a misspelt input).
fn check_dangling(doc: &Document, stages: &[Pending], problems: &mut Vec<Problem>) {
    for stage in stages {
        let Some(ty) = stage.ty else { continue };
        if ty.is_sink() {
            continue;
        }
        let consumed = stages.iter().any(|s| s.inputs.contains(&stage.name));
        if !consumed {
            problems.push(doc.problem(
                &stage.path,
                format!(
                    "the output of `{}` ({}) goes nowhere: no stage lists it in its inputs",
                    stage.name,
                    ty.output.map(|k| k.to_string()).unwrap_or_default()
                ),
            ));
        }
    }
}

/// A problem about the file as a whole, such as a missing table.
fn file_problem(doc: &Document, key: &str, message: impl Into<String>) -> Problem {
    Problem {
        location: Location::File { path: doc.file.clone(), line: None },
        key: key.to_string(),
        message: message.into(),
    }
}

fn read_run(doc: &Document, problems: &mut Vec<Problem>) -> Option<RunOptions> {
    let path = vec!["run".to_string()];
    match doc.root.get("run") {
        None => {
            problems.push(file_problem(doc, "run", "missing the [run] table; it needs at least output_dir"));
            None
        }
        Some(toml::Value::Table(table)) => {
            let keys = super::schema_keys::<RunOptions>();
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            deserialize_table(table.clone(), &keys, &path, doc, problems)
        }
        Some(other) => {
            problems.push(doc.problem(&path, format!("expected a table, got {}", describe_value(other))));
            None
        }
    }
}

fn type_names() -> String {
    StageEntry::all().iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
}

/// Reads each `[stages.<name>]` table, in file order (stages added only by
/// `--set` last).
fn read_stages(doc: &Document, problems: &mut Vec<Problem>) -> Vec<Pending> {
    let table = match doc.root.get("stages") {
        None => {
            problems.push(file_problem(doc, "stages", "missing; a graph needs [stages.<name>] tables"));
            return Vec::new();
        }
        Some(toml::Value::Table(table)) => table,
        Some(other) => {
            problems.push(doc.problem(
                &["stages".to_string()],
                format!("expected a table of stages, got {}", describe_value(other)),
            ));
            return Vec::new();
        }
    };
    let mut stages: Vec<(Option<usize>, Pending)> = table
        .iter()
        .map(|(name, value)| {
            let path = vec!["stages".to_string(), name.clone()];
            (doc.line(&path), read_stage(doc, name, path, value, problems))
        })
        .collect();
    stages.sort_by_key(|(line, _)| (line.is_none(), *line));
    stages.into_iter().map(|(_, stage)| stage).collect()
}

fn read_stage(
    doc: &Document,
    name: &str,
    path: Vec<String>,
    value: &toml::Value,
    problems: &mut Vec<Problem>,
) -> Pending {
    let mut stage =
        Pending { name: name.to_string(), path, ty: None, inputs: Vec::new(), inputs_given: false, parsed: None };
    if !is_bare_key(name) {
        problems.push(doc.problem(&stage.path, "stage names may contain only letters, digits, '_' and '-'"));
    }
    let toml::Value::Table(table) = value else {
        problems.push(
            doc.problem(&stage.path, format!("expected a stage table with a `type`, got {}", describe_value(value))),
        );
        return stage;
    };
    let mut options = table.clone();

    let type_path = key_path(&stage.path, "type");
    match options.remove("type") {
        None => {
            problems.push(doc.problem(&type_path, format!("missing required key; expected one of: {}", type_names())))
        }
        Some(toml::Value::String(ty)) => match StageEntry::lookup(&ty) {
            Some(found) => stage.ty = Some(found),
            None => {
                let names: Vec<&str> = StageEntry::all().iter().map(|t| t.name).collect();
                let mut message = format!("unknown stage type `{ty}`; expected one of: {}", type_names());
                if let Some(close) = closest(&ty, &names) {
                    message.push_str(&format!(" (did you mean `{close}`?)"));
                }
                problems.push(doc.problem(&type_path, message));
            }
        },
        Some(other) => problems.push(
            doc.problem(&type_path, format!("expected a string naming the stage type, got {}", describe_value(&other))),
        ),
    }

    match options.remove("inputs") {
        None => {}
        Some(toml::Value::Array(items)) => {
            stage.inputs_given = true;
            for (i, item) in items.iter().enumerate() {
                match item {
                    toml::Value::String(input) => stage.inputs.push(input.clone()),
                    other => problems.push(doc.problem(
                        &stage.input_path(i),
                        format!("expected a stage name (a string), got {}", describe_value(other)),
                    )),
                }
            }
        }
        Some(other) => {
            stage.inputs_given = true;
            problems.push(doc.problem(
                &stage.inputs_path(),
                format!("expected an array of stage names, like inputs = [\"decode\"]; got {}", describe_value(&other)),
            ));
        }
    }

    if let Some(ty) = stage.ty {
        stage.parsed = (ty.parse)(options, &stage.path, doc, problems);
    }
    stage
}

fn ports_text(ty: &StageEntry) -> String {
    ty.inputs.iter().map(|p| format!("{} ({})", p.name, p.kind)).collect::<Vec<_>>().join(", ")
}

/// Input names exist, counts match the type's ports, sources have no
/// inputs, and each edge carries the kind its port expects.
fn check_edges(doc: &Document, stages: &[Pending], index: &HashMap<&str, usize>, problems: &mut Vec<Problem>) {
    let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
    for stage in stages {
        let inputs_key = dotted(&stage.inputs_path());
        let at_input = |i: usize, message: String| Problem {
            location: doc.locate(&stage.input_path(i)),
            key: inputs_key.clone(),
            message,
        };
        let mut all_exist = true;
        for (i, input) in stage.inputs.iter().enumerate() {
            if !index.contains_key(input.as_str()) {
                all_exist = false;
                let mut message = format!("no stage named `{input}`; the stages are: {}", names.join(", "));
                if let Some(close) = closest(input, &names) {
                    message.push_str(&format!(" (did you mean `{close}`?)"));
                }
                problems.push(at_input(i, message));
            }
        }
        let Some(ty) = stage.ty else { continue };
        if ty.is_source() {
            if stage.inputs_given && !stage.inputs.is_empty() {
                problems
                    .push(doc.problem(&stage.inputs_path(), format!("`{}` is a source and takes no inputs", ty.name)));
            }
            continue;
        }
        if stage.inputs.len() != ty.inputs.len() {
            let wanted = match ty.inputs.len() {
                1 => "1 input".to_string(),
                n => format!("{n} inputs"),
            };
            let message = if stage.inputs_given {
                format!("`{}` takes {wanted}: {}; got {}", ty.name, ports_text(ty), stage.inputs.len())
            } else {
                format!("missing; `{}` takes {wanted}: {}", ty.name, ports_text(ty))
            };
            problems.push(doc.problem(&stage.inputs_path(), message));
            continue;
        }
        if !all_exist {
            continue;
        }
        let sources: Vec<&Pending> = stage.inputs.iter().map(|n| &stages[index[n.as_str()]]).collect();
        // Inputs whose kinds are right but listed in another order get a
        // hint, since ports are matched by position.
        let mut given: Vec<_> = sources.iter().filter_map(|s| s.ty.and_then(|t| t.output)).collect();
        let mut wanted: Vec<_> = ty.inputs.iter().map(|p| p.kind).collect();
        given.sort_by_key(|k| k.to_string());
        wanted.sort_by_key(|k| k.to_string());
        let reordered = given == wanted;
        for (i, (source, port)) in sources.iter().zip(ty.inputs).enumerate() {
            let Some(source_ty) = source.ty else { continue };
            let who = if ty.inputs.len() == 1 {
                format!("`{}`", ty.name)
            } else {
                format!("input `{}` of `{}`", port.name, ty.name)
            };
            match source_ty.output {
                None => problems.push(at_input(
                    i,
                    format!(
                        "{who} expects {}, but stage `{}` is a sink ({}) and has no output",
                        port.kind, source.name, source_ty.name
                    ),
                )),
                Some(kind) if kind != port.kind => {
                    let mut message = format!("{who} expects {}, got {kind} from stage `{}`", port.kind, source.name);
                    if reordered {
                        message.push_str(&format!("; list the inputs in the order {}", ports_text(ty)));
                    }
                    problems.push(at_input(i, message));
                }
                Some(_) => {}
            }
        }
    }
}

/// Edges as successor lists: `succ[i]` holds the stages that take stage
/// `i` as an input, once per edge. Inputs of sources are left out: they are
/// reported as such, and a cycle through them would repeat that report.
fn successors(stages: &[Pending], index: &HashMap<&str, usize>) -> Vec<Vec<usize>> {
    let mut succ = vec![Vec::new(); stages.len()];
    for (to, stage) in stages.iter().enumerate() {
        if stage.ty.is_some_and(StageEntry::is_source) {
            continue;
        }
        for input in &stage.inputs {
            if let Some(&from) = index.get(input.as_str()) {
                succ[from].push(to);
            }
        }
    }
    succ
}

/// Reports each cycle once, naming its stages in data-flow order.
fn check_cycles(doc: &Document, stages: &[Pending], index: &HashMap<&str, usize>, problems: &mut Vec<Problem>) {
    let succ = successors(stages, index);
    for component in strongly_connected(&succ) {
        let start = *component.iter().min().expect("components are not empty");
        let is_cycle = component.len() > 1 || succ[start].contains(&start);
        if !is_cycle {
            continue;
        }
        let members: BTreeSet<usize> = component.iter().copied().collect();
        let cycle = cycle_through(start, &succ, &members);
        let names: Vec<&str> = cycle.iter().map(|&i| stages[i].name.as_str()).collect();
        problems
            .push(doc.problem(&stages[start].inputs_path(), format!("stages form a cycle: {}", names.join(" -> "))));
    }
}

/// Shortest path from `start` back to itself within `members`, as stage
/// indices beginning and ending with `start`.
fn cycle_through(start: usize, succ: &[Vec<usize>], members: &BTreeSet<usize>) -> Vec<usize> {
    let mut previous: HashMap<usize, usize> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for &next in &succ[node] {
            if next == start {
                let mut path = vec![start, node];
                let mut at = node;
                while at != start {
                    at = previous[&at];
                    path.push(at);
                }
                path.reverse();
                return path;
            }
            if members.contains(&next) && !previous.contains_key(&next) {
                previous.insert(next, node);
                queue.push_back(next);
            }
        }
    }
    vec![start]
}

/// Tarjan's strongly connected components.
fn strongly_connected(succ: &[Vec<usize>]) -> Vec<Vec<usize>> {
    struct State<'a> {
        succ: &'a [Vec<usize>],
        next_index: usize,
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        components: Vec<Vec<usize>>,
    }

    fn visit(s: &mut State<'_>, v: usize) {
        s.index[v] = Some(s.next_index);
        s.low[v] = s.next_index;
        s.next_index += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for &w in &s.succ[v] {
            match s.index[w] {
                None => {
                    visit(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(w_index) if s.on_stack[w] => s.low[v] = s.low[v].min(w_index),
                Some(_) => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            s.components.push(component);
        }
    }

    let n = succ.len();
    let mut state = State {
        succ,
        next_index: 0,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        components: Vec::new(),
    };
    for v in 0..n {
        if state.index[v].is_none() {
            visit(&mut state, v);
        }
    }
    state.components
}

fn check_sink(doc: &Document, stages: &[Pending], problems: &mut Vec<Problem>) {
    if stages.is_empty() {
        if doc.root.contains_key("stages") {
            problems.push(doc.problem(&["stages".to_string()], "the graph has no stages"));
        }
        return;
    }
    // A stage whose type is unknown may be the sink the author meant; its
    // own error says enough.
    if stages.iter().any(|s| s.ty.is_none()) {
        return;
    }
    if !stages.iter().any(|s| s.ty.is_some_and(StageEntry::is_sink)) {
        let sinks: Vec<&str> = StageEntry::all().iter().filter(|t| t.is_sink()).map(|t| t.name).collect();
        problems.push(doc.problem(
            &["stages".to_string()],
            format!("the graph has no sink, so it would compute nothing; add a stage of type {}", sinks.join(", ")),
        ));
    }
}

/// Kahn's algorithm, taking among the ready stages the one first in the
/// file, so that the order is stable and follows the file where it can.
/// The graph has been checked to be acyclic.
fn topological_order(stages: &[Pending], index: &HashMap<&str, usize>) -> Vec<usize> {
    let succ = successors(stages, index);
    let mut indegree = vec![0usize; stages.len()];
    for targets in &succ {
        for &t in targets {
            indegree[t] += 1;
        }
    }
    let mut ready: BTreeSet<usize> = (0..stages.len()).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(stages.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &t in &succ[i] {
            indegree[t] -= 1;
            if indegree[t] == 0 {
                ready.insert(t);
            }
        }
    }
    order
}
