//! The two-phase statistics join of batch norm when two threads each run half of the batch
//! through the window (`steps.rs`): at every step each thread sums its rows' columns, the two
//! partial sums are exchanged, and both threads go on with the same total. Batch statistics
//! couple the rows of a step; this lets them be split by rows anyway, with one short wait per
//! statistic instead of the whole step (GEMM aside) on one thread.
//!
//! One exchange = write my partial sums, wait for the other thread, add both partials in a
//! fixed order (thread 0's + thread 1's, so both threads hold bit-identical totals). The
//! buffers alternate between exchanges: a thread can write round k's buffer only after
//! passing round k−1's wait, which the other thread reaches only after it has read round
//! k−2's (the same buffer), so one wait per exchange suffices.

use std::hint::spin_loop;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::tensor::Real;

/// Spins this many times before yielding the core while waiting for the other thread (a
/// step's halves finish within microseconds of each other on a quiet machine).
const SPINS_BEFORE_YIELD: u32 = 1 << 12;

/// A reusable meeting point for exactly two threads. A thread that panics marks it
/// abandoned (`Peer`'s drop), so the other panics too instead of waiting forever.
struct SpinBarrier {
    arrived: AtomicUsize,
    generation: AtomicUsize,
    abandoned: AtomicBool,
}

impl SpinBarrier {
    fn wait(&self) {
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) == 1 {
            // the second to arrive releases the first
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == generation {
            assert!(!self.abandoned.load(Ordering::Relaxed), "the other half of the batch panicked");
            if spins < SPINS_BEFORE_YIELD {
                spins += 1;
                spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// Shared by the two halves of one window.
pub(crate) struct Exchange<T> {
    /// [round parity][thread]: that thread's partial sums in that round.
    parts: [[RwLock<Vec<T>>; 2]; 2],
    barrier: SpinBarrier,
}

impl<T: Real> Exchange<T> {
    pub(crate) fn new() -> Self {
        let v = || RwLock::new(Vec::new());
        Exchange {
            parts: [[v(), v()], [v(), v()]],
            barrier: SpinBarrier {
                arrived: AtomicUsize::new(0),
                generation: AtomicUsize::new(0),
                abandoned: AtomicBool::new(false),
            },
        }
    }

    /// Thread `me`'s end (0 or 1).
    pub(crate) fn peer(&self, me: usize) -> Peer<'_, T> {
        assert!(me < 2);
        Peer { exchange: self, me, round: 0 }
    }
}

/// One thread's end of an `Exchange`. Both threads must make the same sequence of `all_sum`
/// calls (same lengths), or the first to call waits forever.
pub(crate) struct Peer<'a, T> {
    exchange: &'a Exchange<T>,
    pub(crate) me: usize,
    round: usize,
}

impl<T: Real> Peer<'_, T> {
    /// total = (thread 0's `mine`) + (thread 1's `mine`), element by element, on both threads.
    pub(crate) fn all_sum(&mut self, mine: &[T], total: &mut [T]) {
        let ex = self.exchange;
        let p = self.round % 2;
        self.round += 1;
        {
            let mut slot = ex.parts[p][self.me].write().expect("the other half did not panic");
            slot.clear();
            slot.extend_from_slice(mine);
        }
        ex.barrier.wait();
        let a = ex.parts[p][0].read().expect("the other half did not panic");
        let b = ex.parts[p][1].read().expect("the other half did not panic");
        assert_eq!((a.len(), b.len()), (total.len(), total.len()), "both halves exchange the same statistics");
        for ((t, &x), &y) in total.iter_mut().zip(a.iter()).zip(b.iter()) {
            *t = x + y;
        }
    }
}

impl<T> Drop for Peer<'_, T> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.exchange.barrier.abandoned.store(true, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_threads_get_the_same_totals_round_after_round() {
        let ex = Exchange::<f64>::new();
        let run = |me: usize| {
            let mut peer = ex.peer(me);
            let mut out = Vec::new();
            for round in 0..1000 {
                let mine: Vec<f64> = (0..5).map(|j| (me * 1000 + round * 10 + j) as f64).collect();
                let mut total = vec![0.0; 5];
                peer.all_sum(&mine, &mut total);
                out.push(total);
            }
            out
        };
        let (a, b) = std::thread::scope(|s| {
            let h = s.spawn(|| run(1));
            (run(0), h.join().unwrap())
        });
        assert_eq!(a, b);
        for (round, t) in a.iter().enumerate() {
            let want: Vec<f64> = (0..5).map(|j| (1000 + 2 * (round * 10 + j)) as f64).collect();
            assert_eq!(*t, want, "round {round}");
        }
    }
}
