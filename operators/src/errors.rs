//! The run's per-item error log. Every stage sends the items it could not
//! use, as typed [`ItemError`]s, to one sink on worker 0, which appends them
//! to `errors.jsonl` (flushed per line, so the file always parses up to its
//! last complete line) and counts them by type.

use crate::messages::{ErrorStage, ItemError};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;

/// What the error log saw, for the summary.
#[derive(Debug, Default, Clone)]
pub struct ErrorTally {
    /// Videos lost as a whole, by id.
    pub lost_videos: BTreeSet<String>,
    /// Lines written, by stage.
    pub by_stage: BTreeMap<ErrorStage, u64>,
    /// Lines written.
    pub lines: u64,
}

impl ErrorTally {
    pub fn record(&mut self, e: &ItemError) {
        if e.reason.loses_video() {
            self.lost_videos.insert(e.video_id.clone());
        }
        *self.by_stage.entry(e.stage).or_default() += 1;
        self.lines += 1;
    }
}

/// Appends one JSON line per error to a file, opened on first use.
pub struct ErrorLog {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl ErrorLog {
    pub fn new(path: PathBuf) -> Self {
        ErrorLog { path, file: None }
    }

    pub fn append(&mut self, e: &ItemError) {
        tracing::warn!("{e}");
        if self.file.is_none() {
            match std::fs::OpenOptions::new().create(true).append(true).open(&self.path) {
                Ok(f) => self.file = Some(f),
                Err(err) => tracing::error!("{}: cannot write the error log: {err}", self.path.display()),
            }
        }
        if let Some(f) = &mut self.file {
            let mut line = serde_json::to_vec(&e.to_json_line()).unwrap_or_default();
            line.push(b'\n');
            let _ = f.write_all(&line);
            let _ = f.sync_data();
        }
    }
}

/// Sinks every error on worker 0 into `path`; `tally` (read on worker 0
/// when the run is over) counts them.
pub fn log_errors(errors: Stream<'_, u64, Vec<ItemError>>, path: PathBuf, tally: Rc<RefCell<ErrorTally>>) {
    let mut log = ErrorLog::new(path);
    errors.sink(Exchange::new(|_: &ItemError| 0), "ErrorLog", move |(input, _frontier)| {
        input.for_each(|_cap, data| {
            for e in data.drain(..) {
                log.append(&e);
                tally.borrow_mut().record(&e);
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::Reason;
    use timely::dataflow::operators::ToStream;

    #[test]
    fn every_error_becomes_one_line_and_lost_videos_are_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("errors.jsonl");
        let errors = vec![
            ItemError::new("a", ErrorStage::Decode, Reason::Unreadable { message: "moov atom not found".into() }),
            ItemError::new(
                "b",
                ErrorStage::Align,
                Reason::CaptionDropped { start_s: 1.0, end_s: 1.5, why: locvtp_narration::align::DropReason::TooShort },
            ),
            ItemError::new("a", ErrorStage::Write, Reason::Storage { message: "disk full".into() }),
        ];
        let p = path.clone();
        let tally = timely::execute::execute_directly(move |worker| {
            let t = Rc::new(RefCell::new(ErrorTally::default()));
            worker.dataflow::<u64, _, _>(|scope| log_errors(errors.to_stream(scope), p, t.clone()));
            while worker.step_or_park(None) {}
            let tally = t.borrow().clone();
            tally
        });
        assert_eq!(tally.lines, 3);
        assert_eq!(tally.lost_videos.iter().collect::<Vec<_>>(), ["a"]);
        let lines: Vec<serde_json::Value> =
            std::fs::read_to_string(&path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["stage"], "decode");
        assert_eq!(lines[0]["kind"], "unreadable");
        assert_eq!(lines[0]["reason"], "moov atom not found");
        assert_eq!(lines[1]["why"], "too_short");
        assert!(lines[1]["reason"].as_str().unwrap().contains("dropped"));
    }
}
