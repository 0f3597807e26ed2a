//! A small spinning thread pool for the many short parallel loops of a decode step.
//!
//! A batch-1 step of a 135M model is ~150 parallel loops of 20-300 µs each. Handing each to
//! rayon costs a wake-up of a sleeping worker and a join (about 10 µs, measured as the gap
//! between 1- and 2-thread step times), which is a large share of such loops. Here helper
//! threads spin on an atomic generation counter between loops, claim task indices with one
//! atomic add, and park on a condition variable only after 300 µs without work, so an idle
//! process burns no CPU. As in llama.cpp's thread pool, the caller works too.
//!
//! The pool never changes results: tasks write disjoint outputs and each is computed by the
//! same code whoever runs it.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a helper spins for the next loop before it parks.
const SPIN: Duration = Duration::from_micros(300);

/// The job of one generation: `f(i)` for `i` in `0..n`, as a lifetime-erased pointer that is
/// valid while the submitting [`Pool::run`] call has not returned.
#[derive(Clone, Copy)]
struct Job {
    f: *const (dyn Fn(usize) + Sync),
    n: usize,
    /// Threads that take part (the caller and helpers `1..width`).
    width: usize,
}

struct Shared {
    /// Bumped once per job (after `job` is written).
    generation: AtomicUsize,
    /// The generation whose job no helper may start any more.
    closed: AtomicUsize,
    job: UnsafeCell<Job>,
    next: AtomicUsize,
    done: AtomicUsize,
    /// Helpers inside the current job.
    active: AtomicUsize,
    parked: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    /// One submitter at a time (others run their loop alone).
    submit: Mutex<()>,
    shutdown: AtomicBool,
    /// A task of the current job panicked (caught, so no thread unwinds through the pool).
    panicked: AtomicBool,
}

// SAFETY: `job` is written only by the holder of `submit` while no helper can read it (every
// helper has left the previous job: `active == 0`, and new ones only read it after seeing the
// next generation, which is published after the write, with sequentially consistent atomics).
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

/// A spinning pool of `threads - 1` helpers (the caller is the last thread).
pub struct Pool {
    shared: &'static Shared,
    threads: usize,
}

impl Pool {
    fn new(threads: usize) -> Self {
        let noop: &'static (dyn Fn(usize) + Sync) = &|_| {};
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            generation: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            job: UnsafeCell::new(Job {
                f: noop,
                n: 0,
                width: 1,
            }),
            panicked: AtomicBool::new(false),
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            submit: Mutex::new(()),
            shutdown: AtomicBool::new(false),
        }));
        let mut started = 1;
        for i in 1..threads {
            let ok = std::thread::Builder::new()
                .name(format!("dera-kernel-{i}"))
                .spawn(move || helper(shared, i))
                .is_ok();
            if ok {
                started += 1;
            }
        }
        Pool {
            shared,
            threads: started,
        }
    }

    /// Threads that run a loop (helpers and the caller).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(i)` for every `i` in `0..n` on the helpers and the calling thread, returning
    /// when all are done. If another loop is running (a concurrent caller, or `f` itself
    /// submitting), this one runs on the calling thread alone.
    ///
    /// At most `width` threads take part (the caller and `width - 1` helpers). A task that
    /// panics is caught where it runs; the loop finishes the other tasks and then panics here.
    pub fn run(&self, n: usize, width: usize, f: &(dyn Fn(usize) + Sync)) {
        let s = self.shared;
        let width = width.min(self.threads);
        let guard = match s.submit.try_lock() {
            Ok(g) if width > 1 && n > 1 => g,
            _ => {
                (0..n).for_each(f);
                return;
            }
        };
        // SAFETY: erases the lifetime of `f`; helpers use the pointer only between their
        // entry check below and `active` going back to zero, and this call returns after that.
        let f_static: *const (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(f) };
        // SAFETY: no helper reads `job` now (see `Shared`).
        unsafe {
            *s.job.get() = Job {
                f: f_static,
                n,
                width,
            }
        };
        s.panicked.store(false, SeqCst);
        s.next.store(0, SeqCst);
        s.done.store(0, SeqCst);
        let g = s.generation.fetch_add(1, SeqCst) + 1;
        if s.parked.load(SeqCst) > 0 {
            let _l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        work(s, f, n);
        while s.done.load(SeqCst) < n {
            std::hint::spin_loop();
        }
        s.closed.store(g, SeqCst);
        while s.active.load(SeqCst) > 0 {
            std::hint::spin_loop();
        }
        let panicked = s.panicked.load(SeqCst);
        drop(guard);
        if panicked {
            panic!("a task of a parallel loop panicked");
        }
    }
}

/// Claims and runs tasks of the current job until none is left.
fn work(s: &Shared, f: &(dyn Fn(usize) + Sync), n: usize) {
    loop {
        let i = s.next.fetch_add(1, SeqCst);
        if i >= n {
            return;
        }
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i))).is_err() {
            s.panicked.store(true, SeqCst);
        }
        s.done.fetch_add(1, SeqCst);
    }
}

fn helper(s: &'static Shared, index: usize) {
    let mut seen = s.generation.load(SeqCst);
    loop {
        // Wait for the next generation: spin, then park.
        let start = Instant::now();
        let mut spins = 0u32;
        let g = loop {
            let g = s.generation.load(SeqCst);
            if g != seen {
                break g;
            }
            if s.shutdown.load(SeqCst) {
                return;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(1024) || start.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            let mut l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.parked.fetch_add(1, SeqCst);
            while s.generation.load(SeqCst) == seen && !s.shutdown.load(SeqCst) {
                l = s.wake.wait(l).unwrap_or_else(|e| e.into_inner());
            }
            s.parked.fetch_sub(1, SeqCst);
            drop(l);
        };
        seen = g;
        s.active.fetch_add(1, SeqCst);
        if s.closed.load(SeqCst) != g && s.generation.load(SeqCst) == g {
            // SAFETY: the submitter of generation `g` waits for `active == 0` after closing
            // it, and it had not closed it after we entered: `job` is that job, `f` alive.
            let job = unsafe { *s.job.get() };
            if index < job.width {
                let f = unsafe { &*job.f };
                work(s, f, job.n);
            }
        }
        s.active.fetch_sub(1, SeqCst);
    }
}

/// The process-wide pool, sized as rayon sizes its global pool: `RAYON_NUM_THREADS` when set to
/// a positive number, else every core. A loop uses at most as many threads as the rayon pool
/// it runs in.
pub fn global() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let env = std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n > 0);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Pool::new(env.unwrap_or(cores).min(256))
    })
}

thread_local! {
    static SERIAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with every loop of this thread on this thread alone ([`parallel_for`], [`for_each`],
/// and so every product): for callers that run several independent passes side by side, one
/// per core (the same results: the pool never changes a bit).
pub fn serial<R>(f: impl FnOnce() -> R) -> R {
    let was = SERIAL.with(|s| s.replace(true));
    let out = f();
    SERIAL.with(|s| s.set(was));
    out
}

/// True inside [`serial`] on this thread.
pub fn in_serial() -> bool {
    SERIAL.with(|s| s.get())
}

fn alone() -> bool {
    rayon::current_num_threads() <= 1 || in_serial()
}

/// `f(i)` for `i` in `0..n` over the [`global`] pool, or on this thread alone when the current
/// rayon pool has one thread (a caller's `RAYON_NUM_THREADS=1` or a one-thread pool) or inside
/// [`serial`].
pub fn parallel_for(n: usize, f: &(dyn Fn(usize) + Sync)) {
    if n <= 1 || alone() {
        (0..n).for_each(f);
        return;
    }
    global().run(n, rayon::current_num_threads(), f);
}

/// Runs `f` on every item over the [`global`] pool (see [`parallel_for`]); items are moved to
/// whichever thread runs them (for example disjoint `&mut` chunks of one output).
pub fn for_each<T: Send>(items: Vec<T>, f: impl Fn(T) + Sync) {
    for_each_within(items, usize::MAX, f)
}

/// [`for_each`] on at most `threads` threads (the caller included): a loop too small to pay
/// for waking every helper of a many-core machine takes a few.
pub fn for_each_within<T: Send>(items: Vec<T>, threads: usize, f: impl Fn(T) + Sync) {
    let width = rayon::current_num_threads().min(threads);
    if items.len() <= 1 || width <= 1 || alone() {
        items.into_iter().for_each(f);
        return;
    }
    let slots: Vec<Mutex<Option<T>>> = items.into_iter().map(|t| Mutex::new(Some(t))).collect();
    global().run(slots.len(), width, &|i| {
        let item = slots[i].lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = item {
            f(t);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_within_two_threads_runs_on_at_most_two() {
        let seen = Mutex::new(std::collections::HashSet::new());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        let runs = AtomicUsize::new(0);
        pool.install(|| {
            for_each_within((0..64).collect::<Vec<usize>>(), 2, |_| {
                seen.lock().unwrap().insert(std::thread::current().id());
                runs.fetch_add(1, SeqCst);
                std::thread::sleep(Duration::from_micros(100));
            })
        });
        assert_eq!(runs.load(SeqCst), 64);
        assert!(seen.lock().unwrap().len() <= 2);
    }

    #[test]
    fn every_task_runs_once_under_concurrent_and_nested_submitters() {
        let pool = Pool::new(3);
        let hits: Vec<AtomicUsize> = (0..1000).map(|_| AtomicUsize::new(0)).collect();
        std::thread::scope(|sc| {
            for _ in 0..4 {
                sc.spawn(|| {
                    for _ in 0..50 {
                        pool.run(1000, 3, &|i| {
                            hits[i].fetch_add(1, SeqCst);
                            if i == 7 {
                                // A nested loop runs on this thread.
                                pool.run(3, 3, &|_| {});
                            }
                        });
                    }
                });
            }
        });
        assert!(hits.iter().all(|h| h.load(SeqCst) == 200));
        // After a pause the helpers park, and still wake for the next loop.
        std::thread::sleep(Duration::from_millis(5));
        let count = AtomicUsize::new(0);
        pool.run(64, 3, &|_| {
            count.fetch_add(1, SeqCst);
        });
        assert_eq!(count.load(SeqCst), 64);
    }

    #[test]
    fn serial_loops_stay_on_the_calling_thread() {
        let me = std::thread::current().id();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| {
            let seen = Mutex::new(Vec::new());
            serial(|| {
                parallel_for(16, &|_| {
                    seen.lock().unwrap().push(std::thread::current().id());
                })
            });
            let here = std::thread::current().id();
            assert!(seen.lock().unwrap().iter().all(|&t| t == here));
            let _ = me;
        });
    }

    #[test]
    fn a_panicking_task_finishes_the_loop_then_panics_in_the_caller() {
        let pool = Pool::new(2);
        let count = AtomicUsize::new(0);
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(100, 2, &|i| {
                count.fetch_add(1, SeqCst);
                assert!(i != 37, "task 37 fails");
            })
        }));
        assert!(out.is_err());
        assert_eq!(count.load(SeqCst), 100);
        // The pool still works.
        let again = AtomicUsize::new(0);
        pool.run(10, 2, &|_| {
            again.fetch_add(1, SeqCst);
        });
        assert_eq!(again.load(SeqCst), 10);
    }
}
