//! Vertical logistic regression on secret shares (in progress).
