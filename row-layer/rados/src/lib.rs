//! row-rados (to be written).
