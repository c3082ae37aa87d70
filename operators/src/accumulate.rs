//! Per-timestamp state. Most operators here gather what arrives for one
//! time (a video, a training step) and act once the frontier says that time
//! is complete; [`PerTime`] is that pattern, written once.

use std::collections::BTreeMap;
use timely::dataflow::operators::{Capability, InputCapability};
use timely::progress::frontier::MutableAntichain;

/// State of type `S` for each open time, with a capability for that time on
/// output 0 so that results can still be sent when the time completes.
#[derive(Debug)]
pub struct PerTime<S> {
    open: BTreeMap<u64, (Capability<u64>, S)>,
}

impl<S> Default for PerTime<S> {
    fn default() -> Self {
        PerTime { open: BTreeMap::new() }
    }
}

impl<S: Default> PerTime<S> {
    /// The state of `cap`'s time, created on first use.
    pub fn entry(&mut self, cap: &InputCapability<u64>) -> &mut S {
        let time = *cap.least().expect("times are totally ordered");
        &mut self.open.entry(time).or_insert_with(|| (cap.delayed(&time, 0), S::default())).1
    }
}

impl<S> PerTime<S> {
    /// Removes and returns, oldest first, every time the frontier has
    /// passed: nothing more can arrive for them.
    pub fn drain_complete(&mut self, frontier: &MutableAntichain<u64>) -> Vec<(Capability<u64>, S)> {
        let mut done = Vec::new();
        while let Some(entry) = self.open.first_entry() {
            if frontier.less_equal(entry.key()) {
                break;
            }
            done.push(entry.remove());
        }
        done
    }

    /// The oldest open time and its state, if any.
    pub fn first(&mut self) -> Option<(u64, &mut S)> {
        self.open.iter_mut().next().map(|(t, (_, s))| (*t, s))
    }

    /// Removes the oldest open time whatever the frontier says.
    pub fn pop_first(&mut self) -> Option<(Capability<u64>, S)> {
        self.open.pop_first().map(|(_, v)| v)
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use timely::dataflow::channels::pact::Pipeline;
    use timely::dataflow::operators::generic::Operator;
    use timely::dataflow::operators::{Capture, Input, Probe};

    /// Sums the values of each time and emits the sum once the time is
    /// complete, whatever order the inputs arrive in.
    #[test]
    fn each_time_is_released_once_and_in_order() {
        let captured = timely::example(|scope| {
            let (mut input, stream) = scope.new_input::<Vec<u64>>();
            let probe = timely::dataflow::ProbeHandle::new();
            let sums = stream
                .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<(u64, u64)>>, _, _, _>(
                    Pipeline,
                    "Sum",
                    |_, _| {
                        let mut acc: PerTime<u64> = PerTime::default();
                        move |(input, frontier), output| {
                            input.for_each(|cap, data| {
                                *acc.entry(&cap) += data.iter().sum::<u64>();
                            });
                            for (cap, sum) in acc.drain_complete(frontier) {
                                output.session(&cap).give((*cap.time(), sum));
                            }
                        }
                    },
                )
                .probe_with(&probe);
            for t in 0..3u64 {
                input.send(t + 1);
                input.send(10 * (t + 1));
                input.advance_to(t + 1);
            }
            sums.capture()
        });
        let got: Vec<(u64, u64)> =
            timely::dataflow::operators::capture::Extract::extract(captured).into_iter().flat_map(|(_, v)| v).collect();
        assert_eq!(got, vec![(0, 11), (1, 22), (2, 33)]);
    }
}
