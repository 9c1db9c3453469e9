//! row-nbd (to be written).
