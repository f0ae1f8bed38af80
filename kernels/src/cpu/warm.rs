//! The pool's workers kept awake through a forward pass.
//!
//! A decode step forks and joins some 40-60 parallel regions of 50-200 µs each, and between
//! two of them the engine's thread does a few µs of work of its own. Rayon's idle workers
//! yield a few dozen times and then sleep, so that nearly every region began by waking a
//! sleeping worker: 65 context switches per decoded token on the bench model, where
//! llama.cpp's polling threads make 0.3. [`warm`] keeps every other worker of the current pool
//! looking for work (running whatever the pass forks) until the pass ends; between passes
//! they sleep as before, so an idle engine takes no CPU time.

use std::sync::atomic::{AtomicBool, Ordering};

/// Runs `f` on this thread while the other workers of its rayon pool poll for the jobs it
/// forks instead of sleeping between them. Outside a pool, or in a pool of one, just `f()`.
pub fn warm<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let threads = rayon::current_num_threads();
    let Some(me) = rayon::current_thread_index() else {
        return f();
    };
    if threads < 2 {
        return f();
    }
    /// Ends the polling when dropped, `f` returned or panicked.
    struct Done<'a>(&'a AtomicBool);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let done = AtomicBool::new(false);
    rayon::scope(|s| {
        for _ in 1..threads {
            s.spawn(|_| {
                // This thread takes a poller left in its own queue only after `f` (under it
                // on this stack) has returned; it must not poll then.
                if rayon::current_thread_index() == Some(me) {
                    return;
                }
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::hint::spin_loop();
                    }
                }
            });
        }
        let _done = Done(&done);
        f()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    /// Inside a pool of several threads, the pass's parallel work runs on the other workers
    /// too, its result comes back, and `warm` returns (the pollers end); a panic in the pass
    /// ends them as well and reaches the caller.
    #[test]
    fn the_pass_runs_on_every_worker_and_the_pollers_end() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| {
            for _ in 0..50 {
                let seen: Vec<Option<usize>> = warm(|| {
                    (0..3000)
                        .into_par_iter()
                        .map(|i| {
                            std::hint::black_box((0..200).sum::<usize>() + i);
                            rayon::current_thread_index()
                        })
                        .collect()
                });
                assert_eq!(seen.len(), 3000);
            }
            let mut workers: Vec<Option<usize>> = warm(|| {
                (0..64)
                    .into_par_iter()
                    .map(|_| {
                        std::thread::sleep(std::time::Duration::from_millis(2));
                        rayon::current_thread_index()
                    })
                    .collect()
            });
            workers.sort();
            workers.dedup();
            assert!(
                workers.len() >= 2,
                "the other workers took no part: {workers:?}"
            );
            let caught = std::panic::catch_unwind(|| warm(|| panic!("in the pass")));
            assert!(caught.is_err());
        });
        // Outside a pool: the closure alone.
        assert_eq!(warm(|| 7), 7);
    }
}
