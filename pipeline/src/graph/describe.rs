//! The topology listing printed by `locvtp-flow check`.

use std::fmt::Write as _;

use super::Graph;

pub(crate) fn describe(graph: &Graph) -> String {
    let mut out = String::new();
    let sinks = graph.stages.iter().filter(|s| s.output().is_none()).count();
    let _ = writeln!(
        out,
        "graph {}: {} stages, {} sink{}",
        graph.file.display(),
        graph.stages.len(),
        sinks,
        if sinks == 1 { "" } else { "s" }
    );
    let run = &graph.run;
    let _ = writeln!(
        out,
        "run: output_dir = {}, seed = {}, max_in_flight = {}, log_every_s = {:?}",
        quoted(&run.output_dir.display().to_string()),
        run.seed,
        run.max_in_flight,
        run.log_every_s
    );
    let _ = writeln!(out, "stages, in topological order:");
    for stage in &graph.stages {
        let ty = stage.entry();
        let inputs = stage
            .inputs
            .iter()
            .zip(ty.inputs)
            .map(|(input, port)| {
                let kind = graph.stage(input).and_then(|s| s.output()).unwrap_or(port.kind);
                format!("{input} ({kind})")
            })
            .collect::<Vec<_>>();
        let output = stage.output().map_or_else(|| "sink".to_string(), |k| k.to_string());
        let _ = if inputs.is_empty() {
            writeln!(out, "  {} [{}] -> {output}", stage.name, ty.name)
        } else {
            writeln!(out, "  {} [{}] <- {} -> {output}", stage.name, ty.name, inputs.join(", "))
        };
        let table = stage.options.to_toml().unwrap_or_default();
        for key in &stage.non_default {
            let value = table.get(key).map_or_else(|| "(unset)".to_string(), ToString::to_string);
            match ty.doc(key) {
                Some(doc) => {
                    let _ = writeln!(out, "      {key} = {value}    # {doc}");
                }
                None => {
                    let _ = writeln!(out, "      {key} = {value}");
                }
            }
        }
    }
    out
}

fn quoted(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}
