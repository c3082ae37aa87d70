//! Decode operator: videos arrive sharded by a hash of their id, each is
//! decoded in one sequential pass on a dedicated thread, and its frames flow
//! on in chunks at the video's timestamp. The capability for a video is held
//! until its last chunk has been sent.

use crate::messages::{ErrorStage, FrameMsg, ItemError, Reason, VideoItem};
use crate::run::RunShared;
use crate::stats::RunStats;
use crossbeam_channel::bounded;
use locvtp_media::decode::{decode_video, DecodeOptions};
use std::collections::{HashMap, VecDeque};
use std::ops::ControlFlow;
use std::sync::Arc;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

#[derive(Debug, Clone)]
pub struct DecodeConfig {
    /// The stage's name in the graph, for messages.
    pub stage: String,
    pub options: DecodeOptions,
    /// Videos decoded at once by this worker, each on its own thread.
    pub threads: usize,
    /// Frame chunks buffered between the decoder threads and the dataflow;
    /// a full queue pauses decoding (back-pressure).
    pub queue: usize,
}

pub fn decode<'s>(
    videos: Stream<'s, u64, Vec<VideoItem>>,
    cfg: DecodeConfig,
    run: Arc<RunShared>,
) -> Stream<'s, u64, Vec<FrameMsg>> {
    let scope = videos.scope();
    let worker = scope.worker();
    let pact = Exchange::new(|v: &VideoItem| crate::shard_of(&v.id));
    videos.unary_frontier(pact, "Decode", move |_cap, info| {
        let activator = Arc::new(worker.sync_activator_for(info.address.to_vec()));
        let (job_tx, job_rx) = bounded::<(u64, VideoItem)>(cfg.threads.max(1));
        let (res_tx, res_rx) = bounded::<(u64, FrameMsg)>(cfg.queue.max(1));
        let mut not_started = None;
        for i in 0..cfg.threads.max(1) {
            let (job_rx, res_tx, activator, run) = (job_rx.clone(), res_tx.clone(), activator.clone(), run.clone());
            let options = cfg.options;
            let spawned = std::thread::Builder::new().name(format!("decode-{i}")).spawn(move || {
                for (t, item) in job_rx {
                    let stats = &run.stats;
                    RunStats::add(&stats.decode_passes, 1);
                    let send = |msg: FrameMsg| {
                        let ok = res_tx.send((t, msg)).is_ok();
                        let _ = activator.activate();
                        ok
                    };
                    let result = decode_video(&item.path, &options, |chunk| {
                        RunStats::add(&stats.frames_decoded, chunk.len() as u64);
                        if send(FrameMsg::Chunk { video: item.id.clone(), chunk }) {
                            ControlFlow::Continue(())
                        } else {
                            ControlFlow::Break(())
                        }
                    });
                    let last = match result {
                        Ok(summary) => {
                            RunStats::add(&stats.nvdec_passes, u64::from(summary.nvdec));
                            if summary.corrupt_packets > 0 {
                                // Kept: the frames before and around the damage are real.
                                tracing::warn!(
                                    "{}: {} damaged or unreadable packets skipped, {} frames decoded",
                                    item.id,
                                    summary.corrupt_packets,
                                    summary.frames
                                );
                            }
                            FrameMsg::End { video: item.id.clone(), frames: summary.frames, info: summary.info }
                        }
                        Err(e) => FrameMsg::Failed(ItemError::new(
                            item.id.to_string(),
                            ErrorStage::Decode,
                            Reason::unreadable(&e),
                        )),
                    };
                    if !send(last) {
                        return;
                    }
                }
            });
            if let Err(e) = spawned {
                not_started = Some(format!("cannot start decoder thread {i}: {e}"));
            }
        }
        if let Some(why) = not_started {
            run.fail(&cfg.stage, why);
        }
        drop(res_tx);

        let mut caps: HashMap<u64, Capability<u64>> = HashMap::new();
        let mut backlog: VecDeque<(u64, VideoItem)> = VecDeque::new();
        // Videos in flight by a sequence number (several may share a time),
        // each with the capability for its time.
        let mut next_job = 0u64;
        move |(input, _frontier), output| {
            input.for_each(|cap, data| {
                for item in data.drain(..) {
                    caps.insert(next_job, cap.retain_least(0).expect("extraction times are totally ordered"));
                    backlog.push_back((next_job, item));
                    next_job += 1;
                }
            });
            if crate::feed(&mut backlog, &job_tx).is_err() {
                run.fail(&cfg.stage, "every decoder thread has stopped");
                backlog.clear();
                caps.clear();
            }
            while let Ok((job, msg)) = res_rx.try_recv() {
                let finished = !matches!(msg, FrameMsg::Chunk { .. });
                let cap = caps.get(&job).expect("a capability is held for every video in flight");
                output.session(cap).give(msg);
                if finished {
                    caps.remove(&job);
                }
            }
        }
    })
}
