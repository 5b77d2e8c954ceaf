//! The two ONNX Runtime C calls the zero-copy paths need, used directly.
//!
//! Why not `ort`'s safe API for the hot path? In rc.15:
//! * `IoBinding::bind_input` with a borrowed `TensorRef` deadlocks (it clones the view through
//!   a cached identity session under a global lock, and that copy binds a borrowed view again,
//!   re-taking the same lock), so inputs cannot be bound as views of Rust buffers;
//! * `Session::run` returns outputs that ONNX Runtime allocated, which would have to be copied
//!   into the caller's buffers, and preallocated outputs (`OutputSelector::preallocate`) must
//!   be owned `Value`s, not views of caller memory;
//! * every call builds name strings and `Arc`-wrapped values for each of the ~320 tensors of a
//!   training step.
//!
//! The C API has none of these limits: `CreateTensorWithDataAsOrtValue` wraps a caller buffer
//! without copying, and `Run` accepts non-null output values as preallocated outputs that it
//! writes in place. So koala wraps Rust buffers in [`RawValue`]s and calls `Run` with name and
//! value pointer arrays it keeps between calls.

use std::ffi::{c_char, c_void};
use std::ptr::{self, NonNull};

use ort::memory::MemoryInfo;
use ort::sys::{ONNXTensorElementDataType, OrtValue};
use ort::AsPointer;

/// An `OrtValue` that koala created over one of its buffers, released on drop.
///
/// It does not own the buffer; whoever creates it promises the buffer outlives it.
pub(crate) struct RawValue(NonNull<OrtValue>);

// SAFETY: an OrtValue is plain data plus a pointer to a buffer; nothing in it is tied to a thread.
unsafe impl Send for RawValue {}

impl RawValue {
    /// Wraps `bytes` bytes at `data` as a tensor of `shape` and `element_type`, without copying.
    ///
    /// # Safety
    /// `data` must point to `bytes` valid bytes that stay valid, and are not accessed from Rust
    /// while ONNX Runtime writes them, for as long as the returned value is used.
    pub(crate) unsafe fn over(
        memory: &MemoryInfo,
        data: *mut c_void,
        bytes: usize,
        shape: &[i64],
        element_type: ONNXTensorElementDataType,
    ) -> Result<RawValue, ort::Error> {
        let mut out: *mut OrtValue = ptr::null_mut();
        // SAFETY: all pointers are valid for the call; ORT copies `shape`.
        let status = unsafe {
            (ort::api().CreateTensorWithDataAsOrtValue)(
                memory.ptr(),
                data,
                bytes,
                shape.as_ptr(),
                shape.len(),
                element_type,
                &mut out,
            )
        };
        // SAFETY: `status` was just returned by ORT and is consumed here.
        unsafe { ort::Error::result_from_status(status) }?;
        NonNull::new(out)
            .map(RawValue)
            .ok_or_else(|| ort::Error::new("CreateTensorWithDataAsOrtValue returned null"))
    }

    pub(crate) fn ptr(&self) -> *mut OrtValue {
        self.0.as_ptr()
    }
}

impl Drop for RawValue {
    fn drop(&mut self) {
        // SAFETY: the value was created by ORT and is released exactly once.
        unsafe { (ort::api().ReleaseValue)(self.0.as_ptr()) }
    }
}

/// Name and value pointer arrays for one `Run` call.
pub(crate) struct RunArgs<'a> {
    pub in_names: &'a [*const c_char],
    pub in_values: &'a [*const OrtValue],
    pub out_names: &'a [*const c_char],
    pub out_values: &'a mut [*mut OrtValue],
}

/// Calls `OrtApi::Run`. Non-null `out_values` are written in place; null ones are allocated by
/// ONNX Runtime and returned in the slice (the caller must then release them).
///
/// # Safety
/// Every name pointer must be a valid C string and every value pointer a live `OrtValue` whose
/// buffer is valid (and, for outputs, writable) for the duration of the call.
pub(crate) unsafe fn run(
    session: &mut ort::session::Session,
    args: RunArgs<'_>,
) -> Result<(), ort::Error> {
    assert_eq!(args.in_names.len(), args.in_values.len());
    assert_eq!(args.out_names.len(), args.out_values.len());
    // SAFETY: the caller guarantees the pointers; `&mut Session` guarantees no concurrent Run.
    let status = unsafe {
        (ort::api().Run)(
            session.ptr().cast_mut(),
            ptr::null(),
            args.in_names.as_ptr(),
            args.in_values.as_ptr(),
            args.in_values.len(),
            args.out_names.as_ptr(),
            args.out_names.len(),
            args.out_values.as_mut_ptr(),
        )
    };
    // SAFETY: `status` was just returned by ORT and is consumed here.
    unsafe { ort::Error::result_from_status(status) }
}
