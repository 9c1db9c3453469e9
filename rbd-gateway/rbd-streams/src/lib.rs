//! rbd-streams (to be written).
