//! Maglev consistent hashing (Eisenbud et al., NSDI 2016). Pure: no I/O.
