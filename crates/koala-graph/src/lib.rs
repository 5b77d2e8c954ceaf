//! koala-graph
