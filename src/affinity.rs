//! Client affinity: the stick table. Pure: no I/O, `now` is passed in.
