//! The seeded random fault schedule: which fault comes next, on which nodes, for how long. The same seed gives
//! the same faults in the same order with the same durations and gaps (what the nodes do meanwhile is up to them).

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Which way a cut between a set of nodes and the rest goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    Both,
    /// The set's packets to the rest are lost; the rest's reach it.
    Outbound,
    /// The rest's packets to the set are lost.
    Inbound,
}

#[derive(Debug, Clone)]
pub enum Fault {
    /// SIGKILL, down for a while, then started again on the same configuration.
    Kill { node: usize, down: Duration },
    /// SIGSTOP, then SIGCONT.
    Freeze { node: usize, lasting: Duration },
    /// `side` cut from every other node (gossip and links).
    Partition {
        side: Vec<usize>,
        way: Way,
        lasting: Duration,
    },
    /// One pair cut (gossip and links).
    PairCut {
        a: usize,
        b: usize,
        way: Way,
        lasting: Duration,
    },
    /// `side`'s links to every other node cut both ways while gossip flows.
    LinksOnly { side: Vec<usize>, lasting: Duration },
    /// Every packet from or to `node` delayed.
    Delay {
        node: usize,
        delay: Duration,
        lasting: Duration,
    },
    /// A sixth process with the cluster id and seeds but another secret, running for a while.
    WrongSecret { lasting: Duration },
    /// Every node stopped (SIGTERM) and started again, one at a time.
    RollingRestart,
}

impl Fault {
    /// The nodes whose traffic or process the fault touches.
    pub fn nodes(&self, count: usize) -> Vec<usize> {
        match self {
            Fault::Kill { node, .. } | Fault::Freeze { node, .. } | Fault::Delay { node, .. } => vec![*node],
            Fault::Partition { side, .. } | Fault::LinksOnly { side, .. } => side.clone(),
            Fault::PairCut { a, b, .. } => vec![*a, *b],
            Fault::WrongSecret { .. } => Vec::new(),
            Fault::RollingRestart => (0..count).collect(),
        }
    }
}

/// The durations faults are drawn from, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Ranges {
    pub freeze: (u64, u64),
    pub partition: (u64, u64),
    pub down: (u64, u64),
    pub gap: (u64, u64),
}

impl Ranges {
    /// The ranges: freezes of 1–10 s, partitions of 1–15 s.
    pub const FULL: Ranges = Ranges {
        freeze: (1_000, 10_000),
        partition: (1_000, 15_000),
        down: (500, 3_000),
        gap: (200, 1_500),
    };
    /// The bounded CI run's: the same kinds, shorter (still past failure detection, about 2 s, at the top).
    pub const SHORT: Ranges = Ranges {
        freeze: (1_000, 4_000),
        partition: (1_000, 4_000),
        down: (300, 2_000),
        gap: (200, 1_000),
    };
}

pub struct Schedule {
    random: StdRng,
    ranges: Ranges,
    nodes: usize,
    /// The first faults: one of each kind, in a seeded order, so that a short run covers them all.
    first: Vec<u8>,
    drawn: usize,
    /// Every this many faults, a rolling restart (beyond the first one).
    rolling_every: usize,
}

const KINDS: u8 = 8;

impl Schedule {
    pub fn new(seed: u64, ranges: Ranges, nodes: usize, rolling_every: usize) -> Schedule {
        let mut random = StdRng::seed_from_u64(seed);
        let mut first: Vec<u8> = (0..KINDS).collect();
        first.shuffle(&mut random);
        Schedule {
            random,
            ranges,
            nodes,
            first,
            drawn: 0,
            rolling_every,
        }
    }

    fn millis(&mut self, (low, high): (u64, u64)) -> Duration {
        Duration::from_millis(self.random.random_range(low..=high))
    }

    /// Nodes on one side of a partition: one or two (a minority of five).
    fn side(&mut self) -> Vec<usize> {
        let mut all: Vec<usize> = (0..self.nodes).collect();
        all.shuffle(&mut self.random);
        let size = self.random.random_range(1..=2);
        all.truncate(size);
        all.sort_unstable();
        all
    }

    fn way(&mut self) -> Way {
        match self.random.random_range(0..3) {
            0 => Way::Both,
            1 => Way::Outbound,
            _ => Way::Inbound,
        }
    }

    /// The next fault and the pause before it.
    pub fn next_fault(&mut self) -> (Duration, Fault) {
        let kind = if self.drawn < self.first.len() {
            self.first[self.drawn]
        } else if self.drawn.is_multiple_of(self.rolling_every) {
            7
        } else {
            // Rolling restarts only on their turn; the other kinds evenly.
            self.random.random_range(0..KINDS - 1)
        };
        self.drawn += 1;
        let gap = self.millis(self.ranges.gap);
        let node = self.random.random_range(0..self.nodes);
        let partition = self.ranges.partition;
        let fault = match kind {
            0 => Fault::Kill {
                node,
                down: self.millis(self.ranges.down),
            },
            1 => Fault::Freeze {
                node,
                lasting: self.millis(self.ranges.freeze),
            },
            2 => Fault::Partition {
                side: self.side(),
                way: self.way(),
                lasting: self.millis(partition),
            },
            3 => {
                let other = (node + self.random.random_range(1..self.nodes)) % self.nodes;
                Fault::PairCut {
                    a: node,
                    b: other,
                    way: self.way(),
                    lasting: self.millis(partition),
                }
            }
            4 => Fault::LinksOnly {
                side: self.side(),
                lasting: self.millis(partition),
            },
            5 => Fault::Delay {
                node,
                delay: self.millis((20, 100)),
                lasting: self.millis(self.ranges.freeze),
            },
            6 => Fault::WrongSecret {
                lasting: self.millis((3_000, 8_000)),
            },
            _ => Fault::RollingRestart,
        };
        (gap, fault)
    }
}
