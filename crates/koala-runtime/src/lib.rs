//! koala-runtime
