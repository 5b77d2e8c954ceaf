//! The per-step paths allocate nothing on the Rust side once warmed up: a counting global
//! allocator watches the calling thread during `Runner::run` and `Session::run_into`.
//! (ONNX Runtime's own C++ allocations do not go through Rust's allocator and are not counted;
//! they are ORT's business, e.g. its arena.)

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::{fixture, FixedBuffers};
use koala_runtime::{Runner, Session, SessionOptions};

struct Counting;

// Both the switch and the count are per thread: tests run in parallel threads of one process,
// and a shared counter would charge one test with another test's allocations.
thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count_one() {
    if COUNTING.with(Cell::get) {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
    }
}

// SAFETY: forwards to the system allocator; only adds a counter.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Rust-side allocations made by `f` on this thread.
fn allocations_in(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(Cell::get) - before
}

fn many_io() -> Session {
    Session::from_file(&fixture("many_io.onnx"), &SessionOptions::default()).unwrap()
}

#[test]
fn the_counter_sees_allocations() {
    let n = allocations_in(|| drop(std::hint::black_box(vec![0u8; 16])));
    assert_eq!(
        n, 1,
        "the instrument itself must work, or the zeros below mean nothing"
    );
}

#[test]
fn runner_run_allocates_nothing() {
    let mut r = Runner::new(many_io(), &[]).unwrap();
    r.run().unwrap();
    let n = allocations_in(|| {
        for _ in 0..10 {
            r.run().unwrap();
        }
    });
    assert_eq!(n, 0, "Runner::run allocated {n} times in 10 runs");
    assert_eq!(
        r.outputs()[159].f32s().unwrap()[0],
        0.0,
        "ran on zeroed inputs"
    );
}

#[test]
fn run_into_allocates_nothing_after_the_first_call() {
    let mut s = many_io();
    let mut buffers = FixedBuffers::for_session(&s, 1.0);
    // The caller's view lists are built once here; what is measured is run_into itself.
    let (ins, mut outs) = buffers.views();
    s.run_into(&ins, &mut outs).unwrap(); // grows the scratch storage once
    let n = allocations_in(|| {
        for _ in 0..10 {
            s.run_into(&ins, &mut outs).unwrap();
        }
    });
    assert_eq!(n, 0, "run_into allocated {n} times in 10 calls");
    drop((ins, outs));
    assert!(buffers.outputs[159].iter().all(|&y| y == 160.0));
}
