//! Local directory backend (placeholder until implemented).
