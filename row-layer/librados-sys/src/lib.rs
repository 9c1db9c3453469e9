//! librados-sys (to be written).
