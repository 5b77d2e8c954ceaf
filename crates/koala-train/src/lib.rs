//! koala-train
