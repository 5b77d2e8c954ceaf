//! koala-optim
