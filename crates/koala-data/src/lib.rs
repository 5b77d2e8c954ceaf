//! koala-data
